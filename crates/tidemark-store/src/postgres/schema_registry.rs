//! The schema registry of the PostgreSQL engine (S1, S9): every published
//! version in `tm_schema_versions`, and the publish transaction.
//!
//! The publish runs under the same advisory lock as the bootstrap, and
//! reads the version in force inside its transaction: of several instances
//! over one database, one publishes a version and the others find it done.

use super::catalog::{self, Catalog};
use super::{engine_error, PgStore, META_SET};
use crate::schema_ddl::{self, Dialect};
use crate::StoreError;
use std::sync::Arc;
use tidemark_api::schema_change::{SchemaDiff, SchemaVersionInfo};
use tidemark_api::{ColumnType, Schema, TableSchema};

pub(super) struct Postgres;

impl Dialect for Postgres {
    fn create_table(&self, name: &str, t: &TableSchema) -> Result<String, StoreError> {
        catalog::create_table_sql(name, t)
    }
    fn column(&self, name: &str, ty: ColumnType) -> String {
        format!("\"{name}\" {}", catalog::sql_type(ty))
    }
}

/// Records a fresh store's first version. Runs in the caller's transaction.
pub(super) async fn record_initial(
    tx: &deadpool_postgres::Transaction<'_>,
    schema: &Schema,
) -> Result<(), StoreError> {
    let (text, at) = schema_ddl::initial_row(schema)?;
    tx.execute(
        "INSERT INTO tm_schema_versions (version, schema, published_by, published_at) VALUES ($1, $2, 'initial', $3) ON CONFLICT DO NOTHING",
        &[&(schema.version as i64), &text, &at],
    )
    .await
    .map_err(engine_error)?;
    Ok(())
}

pub(super) async fn versions(s: &PgStore) -> Result<Vec<SchemaVersionInfo>, StoreError> {
    let client = s.client().await?;
    let rows = client
        .query(
            "SELECT version, schema, published_by, published_at, changes FROM tm_schema_versions ORDER BY version",
            &[],
        )
        .await
        .map_err(engine_error)?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push(SchemaVersionInfo {
            version: r.get::<_, i64>(0) as u64,
            schema: serde_json::from_str(r.get::<_, &str>(1))?,
            published_by: r.get(2),
            published_at: r.get(3),
            changes: serde_json::from_str(r.get::<_, &str>(4))?,
        });
    }
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

pub(super) async fn publish(s: &PgStore, target: &Schema, by: &str) -> Result<bool, StoreError> {
    // This process's writes wait until the new catalog is in place.
    let _w = s.inner.write.lock().await;
    let mut client = s.client().await?;
    let tx = client.transaction().await.map_err(engine_error)?;
    tx.execute("SELECT pg_advisory_xact_lock(7413020)", &[])
        .await
        .map_err(engine_error)?;
    let in_force: u64 = {
        let v: Option<String> = tx
            .query_opt(
                "SELECT value FROM tm_meta WHERE name = 'schema_version' FOR UPDATE",
                &[],
            )
            .await
            .map_err(engine_error)?
            .map(|r| r.get(0));
        v.and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    if in_force >= target.version {
        drop(tx);
        drop(client);
        // Another instance published it: serve it.
        s.reload_from_db().await?;
        return Ok(false);
    }
    if target.version != in_force + 1 {
        return Err(StoreError::SchemaRefused(format!(
            "the store is at schema version {in_force}, so it cannot publish version {} next; stage the schema again",
            target.version
        )));
    }
    let current = {
        let tables: Vec<String> = tx
            .query("SELECT name FROM tm_tables", &[])
            .await
            .map_err(engine_error)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let columns = tx
            .query(
                "SELECT tbl, name, type FROM tm_columns ORDER BY tbl, ordinal",
                &[],
            )
            .await
            .map_err(engine_error)?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let mut schema = catalog::schema_from_rows(in_force, tables, columns)?;
        let registry: Option<String> = tx
            .query_opt(
                "SELECT schema FROM tm_schema_versions WHERE version = $1",
                &[&(in_force as i64)],
            )
            .await
            .map_err(engine_error)?
            .map(|r| r.get(0));
        schema_ddl::attach_indexes(&mut schema, registry.as_deref());
        schema
    };
    for (what, sql) in schema_ddl::emptiness_checks(&current, target) {
        let rows: i64 = tx.query_one(&sql, &[]).await.map_err(engine_error)?.get(0);
        if rows > 0 {
            return Err(schema_ddl::not_empty(&what, rows, in_force));
        }
    }
    for stmt in schema_ddl::ddl(&Postgres, &current, target)? {
        tx.batch_execute(&stmt).await.map_err(engine_error)?;
    }
    let diff = SchemaDiff::between(&current, target);
    for t in &diff.dropped_tables {
        tx.execute("DELETE FROM tm_tombstones WHERE tbl = $1", &[t])
            .await
            .map_err(engine_error)?;
    }
    tx.batch_execute("DELETE FROM tm_columns; DELETE FROM tm_tables;")
        .await
        .map_err(engine_error)?;
    for (name, t) in &target.tables {
        tx.execute("INSERT INTO tm_tables (name) VALUES ($1)", &[name])
            .await
            .map_err(engine_error)?;
        for (i, c) in t.columns.iter().enumerate() {
            tx.execute(
                "INSERT INTO tm_columns (tbl, name, type, ordinal) VALUES ($1, $2, $3, $4)",
                &[name, &c.name, &c.ty.name(), &(i as i32)],
            )
            .await
            .map_err(engine_error)?;
        }
    }
    tx.execute(
        "INSERT INTO tm_schema_versions (version, schema, published_by, published_at, changes) VALUES ($1, $2, $3, $4, $5)",
        &[
            &(target.version as i64),
            &serde_json::to_string(target)?,
            &by,
            &chrono::Utc::now().to_rfc3339(),
            &serde_json::to_string(&diff.describe())?,
        ],
    )
    .await
    .map_err(engine_error)?;
    tx.execute(META_SET, &[&"schema_version", &target.version.to_string()])
        .await
        .map_err(engine_error)?;
    tidemark_failpoint::hit("schema.ddl.before_commit");
    tx.commit().await.map_err(engine_error)?;
    *s.inner.catalog.write() = Arc::new(Catalog::new(target.clone()));
    Ok(true)
}
