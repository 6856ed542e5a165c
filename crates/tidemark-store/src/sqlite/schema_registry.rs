//! The schema registry of the embedded engine (S1, S9): every published
//! version in `tm_schema_versions`, and the publish transaction.

use super::catalog::{self, Catalog};
use super::values::column_ddl;
use super::{meta_set, meta_u64, SqliteStore};
use crate::schema_ddl::{self, Dialect};
use crate::StoreError;
use rusqlite::{params, Connection, TransactionBehavior};
use std::sync::Arc;
use tidemark_api::schema_change::{SchemaDiff, SchemaVersionInfo};
use tidemark_api::{ColumnType, Schema, TableSchema};

pub(super) struct Sqlite;

impl Dialect for Sqlite {
    fn create_table(&self, name: &str, t: &TableSchema) -> Result<String, StoreError> {
        catalog::create_table_sql(name, t)
    }
    fn column(&self, name: &str, ty: ColumnType) -> String {
        column_ddl(name, ty)
    }
}

/// Records a fresh store's first version. Runs in the caller's transaction.
pub(super) fn record_initial(conn: &Connection, schema: &Schema) -> Result<(), StoreError> {
    let (text, at) = schema_ddl::initial_row(schema)?;
    conn.execute(
        "INSERT OR IGNORE INTO tm_schema_versions (version, schema, published_by, published_at) VALUES (?1, ?2, 'initial', ?3)",
        params![schema.version as i64, text, at],
    )?;
    Ok(())
}

pub(super) fn versions(s: &SqliteStore) -> Result<Vec<SchemaVersionInfo>, StoreError> {
    let mut out = s.with_reader(|c| {
        let mut stmt = c.prepare(
            "SELECT version, schema, published_by, published_at, changes FROM tm_schema_versions ORDER BY version",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (version, schema, by, at, changes) = row?;
            out.push(SchemaVersionInfo {
                version: version as u64,
                published_at: at,
                published_by: by,
                changes: serde_json::from_str(&changes)?,
                schema: serde_json::from_str(&schema)?,
            });
        }
        Ok(out)
    })?;
    // A store older than the registry: its version in force, as it is.
    let current = s.catalog().schema.clone();
    if !out.iter().any(|v| v.version == current.version) {
        out.push(SchemaVersionInfo {
            version: current.version,
            published_at: None,
            published_by: "initial".into(),
            changes: Vec::new(),
            schema: (*current).clone(),
        });
        out.sort_by_key(|v| v.version);
    }
    Ok(out)
}

pub(super) fn ddl(s: &SqliteStore, target: &Schema) -> Result<Vec<String>, StoreError> {
    schema_ddl::ddl(&Sqlite, &s.catalog().schema, target)
}

pub(super) async fn publish(
    s: &SqliteStore,
    target: Schema,
    by: String,
) -> Result<bool, StoreError> {
    s.blocking(move |s| {
        // The writer lock is held until the new catalog is in place, so no
        // batch is applied against a catalog that does not match the database.
        let mut conn = s.inner.writer.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let in_force = meta_u64(&tx, "schema_version")?;
        if in_force >= target.version {
            return Ok(false);
        }
        if target.version != in_force + 1 {
            return Err(StoreError::SchemaRefused(format!(
                "the store is at schema version {in_force}, so it cannot publish version {} next; stage the schema again",
                target.version
            )));
        }
        let current = catalog::load(&tx, in_force)?;
        for (what, sql) in schema_ddl::emptiness_checks(&current, &target) {
            let rows: i64 = tx.query_row(&sql, [], |r| r.get(0))?;
            if rows > 0 {
                return Err(schema_ddl::not_empty(&what, rows, in_force));
            }
        }
        for stmt in schema_ddl::ddl(&Sqlite, &current, &target)? {
            tx.execute_batch(&stmt)?;
        }
        let diff = SchemaDiff::between(&current, &target);
        for t in &diff.dropped_tables {
            tx.execute("DELETE FROM tm_tombstones WHERE tbl = ?1", params![t])?;
        }
        tx.execute_batch("DELETE FROM tm_columns; DELETE FROM tm_tables;")?;
        for (name, t) in &target.tables {
            catalog::insert_rows(&tx, name, t)?;
        }
        tx.execute(
            "INSERT INTO tm_schema_versions (version, schema, published_by, published_at, changes) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                target.version as i64,
                serde_json::to_string(&target)?,
                by,
                chrono::Utc::now().to_rfc3339(),
                serde_json::to_string(&diff.describe())?
            ],
        )?;
        meta_set(&tx, "schema_version", &target.version.to_string())?;
        tidemark_failpoint::hit("schema.ddl.before_commit");
        tx.commit()?;
        *s.inner.catalog.write() = Arc::new(Catalog::new(target));
        Ok(true)
    })
    .await
}

pub(super) async fn reload(s: &SqliteStore) -> Result<(), StoreError> {
    s.blocking(|s| {
        let conn = s.inner.writer.lock();
        let schema = catalog::load(&conn, meta_u64(&conn, "schema_version")?)?;
        *s.inner.catalog.write() = Arc::new(Catalog::new(schema));
        Ok(())
    })
    .await
}
