//! The schema registry of the PostgreSQL engine (S1, S9): every published
//! version in `tm_schema_versions`, and the publish transaction.
//!
//! The publish runs under the same advisory lock as the bootstrap, and
//! reads the version in force inside its transaction: of several instances
//! over one database, one publishes a version and the others find it done.
//! Indexes on existing tables are built before it, concurrently (see
//! `schema_ddl::staged`), and its DDL waits for table locks only briefly,
//! retrying, so it never queues the table's reads and writes behind a long
//! transaction.

use super::catalog::{self, Catalog};
use super::{engine_error, meta_u64, PgStore, META_SET};
use crate::schema_ddl::{self, Dialect};
use crate::StoreError;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidemark_api::schema_change::{SchemaDiff, SchemaVersionInfo};
use tidemark_api::{ColumnType, Schema, TableSchema};
use tokio_postgres::error::SqlState;

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

/// How long the catalog transaction waits for a table lock before it
/// gives way and tries again. `ALTER TABLE` needs the table's ACCESS
/// EXCLUSIVE lock; queued behind a long transaction (an online backup's
/// snapshot) it would make every read and write of the table queue behind
/// it, so it waits briefly, steps back (releasing the writer) and retries.
const LOCK_WAIT: &str = "SET LOCAL lock_timeout = '250ms'";
/// How long the publish keeps retrying for its locks.
const LOCK_PATIENCE: Duration = Duration::from_secs(300);

/// Why one attempt of the catalog transaction did not commit.
enum Attempt {
    /// A table lock was not free within [`LOCK_WAIT`]: try again.
    LockBusy,
    Failed(StoreError),
}

impl From<StoreError> for Attempt {
    fn from(e: StoreError) -> Self {
        Attempt::Failed(e)
    }
}

impl From<serde_json::Error> for Attempt {
    fn from(e: serde_json::Error) -> Self {
        Attempt::Failed(e.into())
    }
}

fn ddl_error(e: tokio_postgres::Error) -> Attempt {
    if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) {
        Attempt::LockBusy
    } else {
        Attempt::Failed(engine_error(e))
    }
}

/// Publishes `target` (S9): the indexes of existing tables first, built
/// concurrently (writes go on), then the catalog transaction. Every step is
/// idempotent, so a job resumed after a crash anywhere runs it again.
pub(super) async fn publish(s: &PgStore, target: &Schema, by: &str) -> Result<bool, StoreError> {
    build_indexes(s, target).await?;
    tidemark_failpoint::hit("schema.ddl.after_indexes");
    let started = Instant::now();
    let mut pause = Duration::from_millis(50);
    loop {
        match publish_tx(s, target, by).await {
            Ok(done) => return Ok(done),
            Err(Attempt::Failed(e)) => return Err(e),
            Err(Attempt::LockBusy) if started.elapsed() < LOCK_PATIENCE => {
                tracing::info!(
                    version = target.version,
                    "schema publish: a table lock is held by another transaction; retrying"
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(Attempt::LockBusy) => {
                return Err(StoreError::Unavailable(format!(
                    "schema version {} could not take its table locks for {} s: a long transaction (an online backup?) holds them; the job stays 'applying' and is retried by the next 'tidemark schema publish'",
                    target.version,
                    LOCK_PATIENCE.as_secs()
                )))
            }
        }
    }
}

/// The indexes `target` adds to existing tables, each built with `CREATE
/// INDEX CONCURRENTLY IF NOT EXISTS` outside any transaction and without
/// this process's writer, so orders keep committing meanwhile. An INVALID
/// index of the same name (a build that died with its server) is dropped
/// and built again. Nothing to do once the version is in force.
async fn build_indexes(s: &PgStore, target: &Schema) -> Result<(), StoreError> {
    let client = s.client().await?;
    let in_force = meta_u64(&client, "schema_version").await?;
    if in_force >= target.version {
        return Ok(());
    }
    if s.catalog().schema.version != in_force {
        s.reload_from_db().await?;
    }
    let current = s.catalog().schema.clone();
    let staged = schema_ddl::staged(&Postgres, &current, target)?;
    for step in &staged.before {
        if let schema_ddl::Before::Index { name, .. } = step {
            let invalid = client
                .query_opt(
                    "SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema() AND c.relname = $1 AND NOT i.indisvalid",
                    &[name],
                )
                .await
                .map_err(engine_error)?
                .is_some();
            if invalid {
                tracing::warn!(index = %name, "dropping an invalid index left by an interrupted build; building it again");
                client
                    .batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS \"{name}\""))
                    .await
                    .map_err(engine_error)?;
            }
        }
        let started = Instant::now();
        client
            .batch_execute(step.sql())
            .await
            .map_err(engine_error)?;
        tracing::info!(
            statement = step.sql(),
            seconds = started.elapsed().as_secs_f64(),
            "schema publish: built before the version commits"
        );
    }
    Ok(())
}

async fn publish_tx(s: &PgStore, target: &Schema, by: &str) -> Result<bool, Attempt> {
    // This process's writes wait until the new catalog is in place.
    let _w = s.alone().await;
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
        ))
        .into());
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
            return Err(schema_ddl::not_empty(&what, rows, in_force).into());
        }
    }
    tx.batch_execute(LOCK_WAIT).await.map_err(engine_error)?;
    for stmt in schema_ddl::staged(&Postgres, &current, target)?.tx {
        tx.batch_execute(&stmt).await.map_err(ddl_error)?;
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
