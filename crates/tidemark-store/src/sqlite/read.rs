//! Reads: point reads, the change log, the store's position and the
//! high-water marks. Point reads run inline on a reader connection (a few
//! microseconds, cheaper than a hop to the blocking pool); in WAL mode they
//! never wait on the writer.

use super::catalog::TableSql;
use super::{values, SqliteStore};
use crate::store::{Change, Lookup, StoreMeta};
use crate::StoreError;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use tidemark_api::{Fields, Record, Version};

pub(super) fn meta(s: &SqliteStore) -> Result<StoreMeta, StoreError> {
    let seq = s.inner.seq.load(Ordering::SeqCst);
    let floor: Option<i64> =
        s.with_reader(|c| Ok(c.query_row("SELECT min(seq) FROM tm_changes", [], |r| r.get(0))?))?;
    Ok(StoreMeta {
        epoch: s.inner.epoch.load(Ordering::SeqCst),
        seq,
        schema_version: s.catalog().schema.version,
        log_floor: floor.map(|f| f as u64).unwrap_or(seq + 1),
    })
}

pub(super) fn get(s: &SqliteStore, table: &str, key: &str) -> Result<Lookup, StoreError> {
    let catalog = s.catalog();
    match get_with(s, &catalog, table, key) {
        // A rollback may have dropped a column or table under the read: its
        // DDL commits just before the catalog swap, under the writer lock,
        // so wait for the swap (on this error path only), then read again
        // with the version in force (S9: a change of version fails no read).
        Err(e) if !matches!(e, StoreError::Input(_)) => {
            if std::sync::Arc::ptr_eq(&catalog, &s.catalog()) {
                drop(s.inner.writer.lock());
            }
            if catalog.schema.version == s.catalog().schema.version {
                return Err(e);
            }
            get_with(s, &s.catalog(), table, key)
        }
        r => r,
    }
}

fn get_with(
    s: &SqliteStore,
    catalog: &super::catalog::Catalog,
    table: &str,
    key: &str,
) -> Result<Lookup, StoreError> {
    catalog
        .schema
        .table(table)
        .map_err(|e| StoreError::Input(Box::new(e)))?;
    tidemark_api::schema::validate_key(key).map_err(|e| StoreError::Input(Box::new(e)))?;
    let t = &catalog.tables[table];
    // Point reads are a few microseconds; they run inline rather than
    // paying for a blocking-pool hop.
    // Read before the snapshot begins: a flag cleared after it is still
    // seen inside it (the mirror drops only after the clearing commit).
    let flags_may_exist = s.inner.flag_rows.load(Ordering::SeqCst) > 0;
    s.with_reader(|c| {
        // While flags may exist, one read transaction: the record and its
        // flag come from one snapshot, so a commit between them cannot pair
        // an old record with a cleared flag. Otherwise (the common case) no
        // transaction is needed.
        let tx = if flags_may_exist {
            Some(c.unchecked_transaction()?)
        } else {
            None
        };
        let record = read_record(c, t, key)?;
        let tombstone = if record.is_none() {
            c.prepare_cached("SELECT epoch, seq FROM tm_tombstones WHERE tbl = ?1 AND key = ?2")?
                .query_row(params![table, key], |r| {
                    Ok(Version::new(
                        r.get::<_, i64>(0)? as u64,
                        r.get::<_, i64>(1)? as u64,
                    ))
                })
                .optional()?
        } else {
            None
        };
        let flagged = flags_may_exist
            && c.prepare_cached("SELECT 1 FROM tm_flags WHERE tbl = ?1 AND key = ?2 LIMIT 1")?
                .query_row(params![table, key], |_| Ok(()))
                .optional()?
                .is_some();
        if let Some(tx) = tx {
            tx.commit()?;
        }
        Ok(Lookup {
            record,
            tombstone,
            flagged,
        })
    })
}

pub(super) async fn changes_since(
    s: &SqliteStore,
    after: u64,
    limit: usize,
) -> Result<Vec<Change>, StoreError> {
    s.blocking(move |s| {
        s.with_reader(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT seq, epoch, tbl, key, fields, cleared, flagged FROM tm_changes WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![after as i64, limit as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, bool>(5)?,
                    r.get::<_, bool>(6)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, epoch, table, key, fields, cleared, flagged) = row?;
                let fields = match fields {
                    Some(text) => match serde_json::from_str(&text)? {
                        serde_json::Value::Object(m) => Some(m),
                        _ => return Err(StoreError::Format(format!("change {seq} holds non-object fields"))),
                    },
                    None => None,
                };
                out.push(Change { table, key, fields, version: Version::new(epoch as u64, seq as u64), cleared_flag: cleared, flagged });
            }
            Ok(out)
        })
    })
    .await
}

pub(super) fn high_water_marks(s: &SqliteStore) -> Result<BTreeMap<String, u64>, StoreError> {
    s.with_reader(|c| {
        let mut stmt = c.prepare_cached("SELECT source, high_water FROM tm_sources")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })?;
        Ok(rows.collect::<Result<BTreeMap<_, _>, _>>()?)
    })
}

/// The record of `key` in table `t`, if present.
fn read_record(conn: &Connection, t: &TableSql, key: &str) -> Result<Option<Record>, StoreError> {
    let mut stmt = conn.prepare_cached(&t.select)?;
    let mut rows = stmt.query(params![key])?;
    let Some(row) = rows.next()? else {
        return Ok(None);
    };
    let epoch: i64 = row.get(0)?;
    let seq: i64 = row.get(1)?;
    let mut fields = Fields::new();
    for (i, c) in t.columns.iter().enumerate() {
        let v = values::from_sql(c.ty, row.get_ref(i + 2)?)
            .map_err(|e| StoreError::Format(format!("column {} of key {key:?}: {e}", c.name)))?;
        fields.insert(c.name.clone(), v);
    }
    Ok(Some(Record {
        fields,
        version: Version::new(epoch as u64, seq as u64),
    }))
}
