//! Snapshots of the PostgreSQL engine in the shared snapshot format (one
//! SQLite file of the store's tables, see [`crate::engine`]), and loading
//! one into PostgreSQL.
//!
//! Invariants:
//! - A snapshot is one consistent point: every table is read in one
//!   `REPEATABLE READ` transaction (writers are not blocked).
//! - A load fills a fresh staging schema, which the caller prepares
//!   (`mark_restored`) and then swaps in with [`swap_in`]: one transaction
//!   renames it over the live schema, so a crash leaves the old store or
//!   the new one, never a mix.

use super::catalog;
use super::{engine_error, PgStore};
use crate::store::SnapshotInfo;
use crate::StoreError;
use futures::{pin_mut, TryStreamExt};
use rusqlite::types::Value as SqlValue;
use std::path::Path;
use std::sync::Arc;
use tidemark_api::{ColumnType, Schema};
use tokio_postgres::binary_copy::{BinaryCopyOutRow, BinaryCopyOutStream};
use tokio_postgres::types::Type;

/// How a column of an internal table converts between the engines.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    Int,
    Bool,
    Json,
}

/// The internal tables and their columns, in both engines' shapes.
const INTERNAL: &[(&str, &[(&str, Kind)])] = &[
    ("tm_meta", &[("name", Kind::Text), ("value", Kind::Text)]),
    (
        "tm_sources",
        &[("source", Kind::Text), ("high_water", Kind::Int)],
    ),
    (
        "tm_changes",
        &[
            ("seq", Kind::Int),
            ("epoch", Kind::Int),
            ("tbl", Kind::Text),
            ("key", Kind::Text),
            ("fields", Kind::Json),
            ("source", Kind::Text),
            ("source_seq", Kind::Int),
            ("digest", Kind::Text),
            ("cleared", Kind::Bool),
            ("flagged", Kind::Bool),
        ],
    ),
    (
        "tm_tombstones",
        &[
            ("tbl", Kind::Text),
            ("key", Kind::Text),
            ("epoch", Kind::Int),
            ("seq", Kind::Int),
        ],
    ),
    (
        "tm_flags",
        &[
            ("tbl", Kind::Text),
            ("key", Kind::Text),
            ("source", Kind::Text),
            ("through_seq", Kind::Int),
        ],
    ),
    (
        "tm_recovery_sources",
        &[
            ("source", Kind::Text),
            ("final", Kind::Bool),
            ("waived", Kind::Bool),
        ],
    ),
    (
        "tm_schema_versions",
        &[
            ("version", Kind::Int),
            ("schema", Kind::Text),
            ("published_by", Kind::Text),
            ("published_at", Kind::Text),
            ("changes", Kind::Text),
        ],
    ),
    (
        "tm_lww",
        &[
            ("tbl", Kind::Text),
            ("key", Kind::Text),
            ("upsert_v", Kind::Text),
            ("delete_v", Kind::Text),
            ("fields", Kind::Text),
        ],
    ),
];

impl Kind {
    /// The PostgreSQL type of a column of this kind (`catalog::pg_type`).
    fn pg_type(self) -> Type {
        match self {
            Kind::Text => Type::TEXT,
            Kind::Int => Type::INT8,
            Kind::Bool => Type::BOOL,
            Kind::Json => Type::JSONB,
        }
    }
}

fn kind_of(ty: ColumnType) -> Kind {
    match ty {
        ColumnType::String | ColumnType::Timestamp => Kind::Text,
        ColumnType::Integer => Kind::Int,
        ColumnType::Boolean => Kind::Bool,
        ColumnType::Json => Kind::Json,
    }
}

/// The columns of every table of `schema`, internal ones first.
fn tables(schema: &Schema) -> Vec<(String, Vec<(String, Kind)>)> {
    let mut out: Vec<(String, Vec<(String, Kind)>)> = INTERNAL
        .iter()
        .map(|(t, cols)| {
            (
                t.to_string(),
                cols.iter().map(|(c, k)| (c.to_string(), *k)).collect(),
            )
        })
        .collect();
    for (name, t) in &schema.tables {
        let mut cols = vec![
            ("tm_key".to_owned(), Kind::Text),
            ("tm_epoch".to_owned(), Kind::Int),
            ("tm_seq".to_owned(), Kind::Int),
        ];
        cols.extend(t.columns.iter().map(|c| (c.name.clone(), kind_of(c.ty))));
        out.push((name.clone(), cols));
    }
    out
}

fn pg_to_sqlite(row: &BinaryCopyOutRow, i: usize, kind: Kind) -> Result<SqlValue, StoreError> {
    let bad = |e: tokio_postgres::Error| StoreError::Format(format!("column {i}: {e}"));
    Ok(match kind {
        Kind::Text => row
            .try_get::<Option<String>>(i)
            .map_err(bad)?
            .map_or(SqlValue::Null, SqlValue::Text),
        Kind::Int => row
            .try_get::<Option<i64>>(i)
            .map_err(bad)?
            .map_or(SqlValue::Null, SqlValue::Integer),
        Kind::Bool => row
            .try_get::<Option<bool>>(i)
            .map_err(bad)?
            .map_or(SqlValue::Null, |b| SqlValue::Integer(i64::from(b))),
        Kind::Json => row
            .try_get::<Option<JsonText>>(i)
            .map_err(bad)?
            .map_or(SqlValue::Null, |v| SqlValue::Text(v.0)),
    })
}

/// A `json`/`jsonb` value's text as PostgreSQL sends it, compacted but not
/// parsed: what the snapshot stores, without a parse and a print per value.
struct JsonText(String);

impl<'a> tokio_postgres::types::FromSql<'a> for JsonText {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let text = if *ty == Type::JSONB {
            // Binary jsonb: a format version byte, then the text.
            match raw.split_first() {
                Some((1, text)) => text,
                _ => return Err("unknown jsonb binary format version".into()),
            }
        } else {
            raw
        };
        Ok(JsonText(compact_json(std::str::from_utf8(text)?)))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSON || *ty == Type::JSONB
    }
}

/// `text` (valid JSON) without the whitespace outside its strings, as
/// `serde_json` prints it (`jsonb` prints `{"a": 1, "b": [1, 2]}`).
fn compact_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !c.is_ascii_whitespace() {
            out.push(c);
        }
    }
    out
}

impl PgStore {
    /// Writes one consistent snapshot of the store to the new file `dest`.
    pub(super) async fn snapshot_pg(&self, dest: &Path) -> Result<SnapshotInfo, StoreError> {
        if dest.exists() {
            // Never overwritten, and never removed on failure below.
            return Err(StoreError::Database {
                what: format!("snapshot file {}", dest.display()),
                detail: "it already exists; remove it".into(),
            });
        }
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(engine_error)?;
        // Long reads with client work between them: exempt from the pool's
        // idle-in-transaction limit (see `PgStore::connect`).
        tx.batch_execute("SET LOCAL idle_in_transaction_session_timeout = 0")
            .await
            .map_err(engine_error)?;
        // The schema as of the snapshot's point, from the same transaction.
        let names: Vec<String> = tx
            .query("SELECT name FROM tm_tables", &[])
            .await
            .map_err(engine_error)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let cols = tx
            .query(
                "SELECT tbl, name, type FROM tm_columns ORDER BY tbl, ordinal",
                &[],
            )
            .await
            .map_err(engine_error)?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let version: String = tx
            .query_one(
                "SELECT value FROM tm_meta WHERE name = 'schema_version'",
                &[],
            )
            .await
            .map_err(engine_error)?
            .get(0);
        let mut schema = catalog::schema_from_rows(version.parse().unwrap_or(0), names, cols)?;
        let registry: Option<String> = tx
            .query_opt(
                "SELECT schema FROM tm_schema_versions WHERE version = $1",
                &[&(schema.version as i64)],
            )
            .await
            .map_err(engine_error)?
            .map(|r| r.get(0));
        crate::schema_ddl::attach_indexes(&mut schema, registry.as_deref());
        // Rows go to a blocking writer in chunks, so memory stays bounded.
        // Each chunk names its table and columns (a store may have columns
        // a snapshot does not carry, each with a default).
        type Chunk = (String, Arc<str>, Vec<Vec<SqlValue>>);
        let (send, mut recv) = tokio::sync::mpsc::channel::<Chunk>(4);
        let writer = {
            let (dest, schema) = (dest.to_owned(), schema.clone());
            tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
                let mut conn = crate::sqlite::create_snapshot_file(&dest, &schema)?;
                let tx = conn.transaction()?;
                // The catalog rows come with tm_tables/tm_columns of the
                // schema just created; everything else from PostgreSQL.
                tx.execute("DELETE FROM tm_meta", [])?;
                while let Some((table, list, rows)) = recv.blocking_recv() {
                    let Some(first) = rows.first() else { continue };
                    let marks = vec!["?"; first.len()].join(", ");
                    let mut stmt = tx.prepare_cached(&format!(
                        "INSERT INTO \"{table}\" ({list}) VALUES ({marks})"
                    ))?;
                    for row in rows {
                        stmt.execute(rusqlite::params_from_iter(row))?;
                    }
                }
                tx.commit()?;
                Ok(())
            })
        };
        let sent = async {
            for (table, cols) in tables(&schema) {
                let list = cols
                    .iter()
                    .map(|(c, _)| format!("\"{c}\""))
                    .collect::<Vec<_>>()
                    .join(", ");
                let list: Arc<str> = list.into();
                // Binary COPY: PostgreSQL's fastest way out, typed as the
                // catalog made the columns.
                let types: Vec<Type> = cols.iter().map(|(_, k)| k.pg_type()).collect();
                let out = tx
                    .copy_out(&format!(
                        "COPY (SELECT {list} FROM \"{table}\") TO STDOUT (FORMAT binary)"
                    ))
                    .await
                    .map_err(engine_error)?;
                let stream = BinaryCopyOutStream::new(out, &types);
                pin_mut!(stream);
                let mut chunk = Vec::with_capacity(10_000);
                while let Some(row) = stream.try_next().await.map_err(engine_error)? {
                    let mut out = Vec::with_capacity(cols.len());
                    for (i, (_, kind)) in cols.iter().enumerate() {
                        out.push(pg_to_sqlite(&row, i, *kind)?);
                    }
                    chunk.push(out);
                    if chunk.len() == 10_000 {
                        let full = std::mem::replace(&mut chunk, Vec::with_capacity(10_000));
                        if send
                            .send((table.clone(), list.clone(), full))
                            .await
                            .is_err()
                        {
                            return Ok(()); // the writer failed; its error is reported
                        }
                    }
                }
                if !chunk.is_empty()
                    && send
                        .send((table.clone(), list.clone(), chunk))
                        .await
                        .is_err()
                {
                    return Ok(());
                }
            }
            Ok::<(), StoreError>(())
        };
        let read = sent.await;
        drop(send);
        let written = writer
            .await
            .map_err(|e| StoreError::Engine(format!("snapshot writer failed: {e}")))?;
        tx.commit().await.map_err(engine_error)?;
        if let Err(e) = read.and(written) {
            let _ = std::fs::remove_file(dest);
            return Err(e);
        }
        std::fs::File::open(dest)
            .and_then(|f| f.sync_all())
            .map_err(|e| StoreError::Database {
                what: format!("snapshot file {}", dest.display()),
                detail: format!("cannot fsync it: {e}"),
            })?;
        crate::engine::inspect_snapshot(dest)
    }
}

/// Loads the snapshot file `snapshot` into the empty staging schema
/// `staging` of the database at `url` (created here, replacing a leftover
/// of a crashed load). Returns the staged store, for the caller to prepare
/// and then [`swap_in`].
pub async fn load_into(url: &str, staging: &str, snapshot: &Path) -> Result<PgStore, StoreError> {
    crate::engine::inspect_snapshot(snapshot)?;
    {
        let (mut client, conn) = connect_raw(url).await?;
        tokio::spawn(conn);
        let tx = client.transaction().await.map_err(engine_error)?;
        drop_schema(&tx, staging).await?;
        tx.commit().await.map_err(engine_error)?;
    }
    let store = PgStore::connect(url, staging).await?;
    let schema = {
        let src = rusqlite::Connection::open_with_flags(
            snapshot,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        crate::sqlite::snapshot_schema(&src)?
    };
    let mut client = store.client().await?;
    let tx = client.transaction().await.map_err(engine_error)?;
    tx.batch_execute("SET LOCAL idle_in_transaction_session_timeout = 0")
        .await
        .map_err(engine_error)?;
    // The fresh store's own rows give way to the snapshot's.
    tx.batch_execute("DELETE FROM tm_meta; DELETE FROM tm_columns; DELETE FROM tm_tables;")
        .await
        .map_err(engine_error)?;
    for name in store.catalog().schema.tables.keys() {
        tx.batch_execute(&format!("DROP TABLE \"{name}\""))
            .await
            .map_err(engine_error)?;
    }
    for (name, t) in &schema.tables {
        tx.batch_execute(&catalog::create_table_sql(name, t)?)
            .await
            .map_err(engine_error)?;
        for ix in &t.indexes {
            tx.batch_execute(&crate::schema_ddl::create_index(name, ix)?)
                .await
                .map_err(engine_error)?;
        }
    }
    // The fresh store's registry row gives way to the snapshot's.
    tx.batch_execute("DELETE FROM tm_schema_versions")
        .await
        .map_err(engine_error)?;
    // Each table's columns as the snapshot has them.
    let present: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> = {
        let src = rusqlite::Connection::open_with_flags(
            snapshot,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        let mut stmt = src.prepare(
            "SELECT m.name, c.name FROM sqlite_master m, pragma_table_info(m.name) c WHERE m.type = 'table'",
        )?;
        let mut present = std::collections::BTreeMap::<_, std::collections::BTreeSet<_>>::new();
        for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
            let (table, column) = row?;
            present.entry(table).or_default().insert(column);
        }
        present
    };
    let mut all = vec![
        (
            "tm_tables".to_owned(),
            vec![("name".to_owned(), Kind::Text)],
        ),
        (
            "tm_columns".to_owned(),
            vec![
                ("tbl".to_owned(), Kind::Text),
                ("name".to_owned(), Kind::Text),
                ("type".to_owned(), Kind::Text),
                ("ordinal".to_owned(), Kind::Int),
            ],
        ),
    ];
    all.extend(tables(&schema));
    // A snapshot older than the schema registry has no tm_schema_versions,
    // and one older than a column loads with the column's default.
    all.retain(|(t, _)| present.contains_key(t));
    for (t, cols) in &mut all {
        cols.retain(|(c, _)| present[t.as_str()].contains(c));
    }
    // As pg_restore does: load without indexes, build them afterwards
    // (one sort per index instead of an index insert per row).
    let mut rebuild = Vec::new();
    for (table, _) in &all {
        let rel = format!("\"{table}\"");
        for r in tx
            .query(
                "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = $1::text::regclass AND contype = 'p'",
                &[&rel],
            )
            .await
            .map_err(engine_error)?
        {
            let (name, def): (String, String) = (r.get(0), r.get(1));
            tx.batch_execute(&format!("ALTER TABLE {rel} DROP CONSTRAINT \"{name}\""))
                .await
                .map_err(engine_error)?;
            rebuild.push(format!("ALTER TABLE {rel} ADD CONSTRAINT \"{name}\" {def}"));
        }
        for r in tx
            .query(
                "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = $1::text::regclass",
                &[&rel],
            )
            .await
            .map_err(engine_error)?
        {
            let (name, def): (String, String) = (r.get(0), r.get(1));
            tx.batch_execute(&format!("DROP INDEX {name}"))
                .await
                .map_err(engine_error)?;
            rebuild.push(def);
        }
    }
    for (table, cols) in all {
        let list = cols
            .iter()
            .map(|(c, _)| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let sink = tx
            .copy_in(&format!(
                "COPY \"{table}\" ({list}) FROM STDIN WITH (FORMAT csv)"
            ))
            .await
            .map_err(engine_error)?;
        pin_mut!(sink);
        // A blocking reader turns the snapshot's rows into CSV chunks.
        let (send, mut recv) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
        let reader = {
            let (path, table, list) = (snapshot.to_owned(), table.clone(), list.clone());
            let cols = cols.clone();
            tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
                let src = rusqlite::Connection::open_with_flags(
                    &path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                )?;
                let mut stmt = src.prepare(&format!("SELECT {list} FROM \"{table}\""))?;
                let mut rows = stmt.query([])?;
                let mut buf = Vec::new();
                while let Some(row) = rows.next()? {
                    for (i, (_, kind)) in cols.iter().enumerate() {
                        if i > 0 {
                            buf.push(b',');
                        }
                        csv_field(&mut buf, row.get_ref(i)?, *kind)?;
                    }
                    buf.push(b'\n');
                    if buf.len() > 1 << 20
                        && send.blocking_send(std::mem::take(&mut buf).into()).is_err()
                    {
                        return Ok(());
                    }
                }
                if !buf.is_empty() {
                    let _ = send.blocking_send(buf.into());
                }
                Ok(())
            })
        };
        while let Some(chunk) = recv.recv().await {
            use futures::SinkExt;
            sink.send(chunk).await.map_err(engine_error)?;
        }
        reader
            .await
            .map_err(|e| StoreError::Engine(format!("snapshot reader failed: {e}")))??;
        sink.as_mut().finish().await.map_err(engine_error)?;
    }
    // A duplicate key in a damaged snapshot fails here, and the load with it.
    for ddl in &rebuild {
        tx.batch_execute(ddl).await.map_err(engine_error)?;
    }
    tx.commit().await.map_err(engine_error)?;
    drop(client);
    store.reload_all().await?;
    Ok(store)
}

/// One CSV field for COPY from a snapshot value: NULL is an unquoted empty
/// field, anything else is quoted. Written straight from the value: JSON
/// text goes as it is stored (PostgreSQL checks it as it parses it, and a
/// damaged value fails the load, which then changes nothing).
fn csv_field(
    buf: &mut Vec<u8>,
    v: rusqlite::types::ValueRef<'_>,
    kind: Kind,
) -> Result<(), StoreError> {
    use rusqlite::types::ValueRef;
    use std::io::Write;
    let bad = || StoreError::Format(format!("snapshot value {v:?} does not fit its column"));
    let quoted = |buf: &mut Vec<u8>, text: &[u8]| {
        buf.push(b'"');
        for &b in text {
            if b == b'"' {
                buf.push(b'"');
            }
            buf.push(b);
        }
        buf.push(b'"');
    };
    match (kind, v) {
        (_, ValueRef::Null) => {}
        (Kind::Text | Kind::Json, ValueRef::Text(t)) => {
            std::str::from_utf8(t).map_err(|_| bad())?;
            quoted(buf, t);
        }
        (Kind::Int, ValueRef::Integer(i)) => {
            let _ = write!(buf, "{i}");
        }
        (Kind::Bool, ValueRef::Integer(i)) => buf.push(if i != 0 { b't' } else { b'f' }),
        _ => return Err(bad()),
    }
    Ok(())
}

/// Makes the staged schema `staging` the live schema `live`, in one
/// transaction; the schema it replaces is dropped (restore took a safety
/// backup of it first).
pub async fn swap_in(url: &str, staging: &str, live: &str) -> Result<(), StoreError> {
    let (mut client, conn) = connect_raw(url).await?;
    tokio::spawn(conn);
    let tx = client.transaction().await.map_err(engine_error)?;
    drop_schema(&tx, live).await?;
    tx.batch_execute(&format!("ALTER SCHEMA \"{staging}\" RENAME TO \"{live}\";"))
        .await
        .map_err(engine_error)?;
    tx.commit().await.map_err(engine_error)?;
    Ok(())
}

/// Drops schema `name`, if it exists, and Tidemark's tables in it (those
/// named `tm_*` and those `tm_tables` lists), without CASCADE: anything
/// else in it, or depending on them from elsewhere, makes PostgreSQL
/// refuse, and nothing is dropped (B4; `RestoreTarget::refuse_foreign`
/// says so earlier, this holds it at the moment of the drop).
async fn drop_schema(
    client: &impl tokio_postgres::GenericClient,
    name: &str,
) -> Result<(), StoreError> {
    let tables: Vec<String> = client
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind = 'r' AND (c.relname LIKE 'tm\\_%' OR c.relname = ANY($2))",
            &[&name, &listed_tables(client, name).await?],
        )
        .await
        .map_err(engine_error)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let refused = |e: tokio_postgres::Error| {
        let detail = e
            .as_db_error()
            .map(|d| match d.detail() {
                Some(more) => format!("{} ({more})", d.message()),
                None => d.message().to_owned(),
            })
            .unwrap_or_else(|| e.to_string());
        StoreError::Refused(format!(
            "PostgreSQL schema '{name}' holds objects that are not Tidemark's, or that other schemas depend on: {detail}; a restore replaces the whole schema, so it would drop them, and nothing was changed. Move them out of the schema, or restore into a schema of Tidemark's own (--pg-schema)"
        ))
    };
    if !tables.is_empty() {
        client
            .batch_execute(&format!("DROP TABLE {}", tables.join(", ")))
            .await
            .map_err(refused)?;
    }
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\""))
        .await
        .map_err(refused)
}

/// The tables `tm_tables` of schema `name` lists (none if it has none).
async fn listed_tables(
    client: &impl tokio_postgres::GenericClient,
    name: &str,
) -> Result<Vec<String>, StoreError> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass(format('%I.tm_tables', $1::text)) IS NOT NULL",
            &[&name],
        )
        .await
        .map_err(engine_error)?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    Ok(client
        .query(&format!("SELECT name FROM \"{name}\".tm_tables"), &[])
        .await
        .map_err(engine_error)?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

async fn connect_raw(
    url: &str,
) -> Result<
    (
        tokio_postgres::Client,
        tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
    ),
    StoreError,
> {
    tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(engine_error)
}

#[cfg(test)]
mod tests {
    use super::compact_json;

    #[test]
    fn compact_json_drops_only_the_whitespace_outside_strings() {
        // As jsonb prints it: spaces after ':' and ','; strings with
        // spaces, escaped quotes and backslashes, and non-ASCII text.
        let pg = r#"{"a": 1, "b": [1, 2.5, null], "c": "x  y\" z\\", "d": {"é": "日本 語"}}"#;
        let compact = compact_json(pg);
        assert_eq!(
            compact,
            r#"{"a":1,"b":[1,2.5,null],"c":"x  y\" z\\","d":{"é":"日本 語"}}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(pg).unwrap();
        assert_eq!(compact, parsed.to_string(), "what serde_json prints");
    }
}
