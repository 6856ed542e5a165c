//! A PostgreSQL schema as the target of a restore (B3, B4), and the lock
//! that keeps restores and running servers apart.
//!
//! Invariants:
//! - A running DB server holds a *shared* advisory lock on its schema
//!   ([`PgStore::hold_server_lock`]) for as long as it runs; a restore takes
//!   the same lock *exclusively* for its whole run. So a restore is refused
//!   while any server uses the schema, and a server cannot start during a
//!   restore. PostgreSQL drops a dead session's locks: a `kill -9`ed holder
//!   never leaves it stuck.
//! - The restored data is staged in a schema of its own and swapped in by
//!   one transaction ([`super::snapshot::swap_in`]).

use super::{engine_error, PgStore};
use crate::store::Store;
use crate::StoreError;
use std::path::Path;
use std::sync::Arc;

const LOCK_KEY: &str = "hashtext('tidemark:' || $1)";

async fn connect(url: &str) -> Result<tokio_postgres::Client, StoreError> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(engine_error)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "PostgreSQL lock connection ended");
        }
    });
    Ok(client)
}

impl PgStore {
    /// Takes the shared server lock of this store's schema on a connection
    /// of its own, kept for the life of the store.
    pub async fn hold_server_lock(&self, url: &str) -> Result<(), StoreError> {
        let client = connect(url).await?;
        let got: bool = client
            .query_one(
                &format!("SELECT pg_try_advisory_lock_shared({LOCK_KEY})"),
                &[&self.inner.schema_name],
            )
            .await
            .map_err(engine_error)?
            .get(0);
        if !got {
            return Err(StoreError::Locked {
                path: format!("PostgreSQL schema '{}'", self.inner.schema_name),
                pid: "a restore in progress".into(),
            });
        }
        *self.inner.lock_conn.lock() = Some(client);
        Ok(())
    }
}

/// A schema being restored: held exclusively until dropped.
pub struct RestoreTarget {
    url: String,
    schema: String,
    staging: String,
    _lock: tokio_postgres::Client,
}

impl RestoreTarget {
    /// Takes the exclusive lock of `schema`; refused while a DB server (or
    /// another restore) uses it.
    pub async fn lock(url: &str, schema: &str) -> Result<RestoreTarget, StoreError> {
        let client = connect(url).await?;
        let got: bool = client
            .query_one(
                &format!("SELECT pg_try_advisory_lock({LOCK_KEY})"),
                &[&schema],
            )
            .await
            .map_err(engine_error)?
            .get(0);
        if !got {
            let pid = client
                .query_opt(
                    &format!("SELECT value FROM \"{schema}\".tm_meta WHERE name = 'process'"),
                    &[],
                )
                .await
                .ok()
                .flatten()
                .and_then(|r| r.get::<_, Option<String>>(0))
                .and_then(|p| serde_json::from_str::<serde_json::Value>(&p).ok())
                .and_then(|p| p["pid"].as_u64())
                .map_or_else(|| "unknown".to_owned(), |p| p.to_string());
            return Err(StoreError::Locked {
                path: format!("PostgreSQL schema '{schema}'"),
                pid,
            });
        }
        Ok(RestoreTarget {
            url: url.to_owned(),
            schema: schema.to_owned(),
            staging: format!("{schema}_restoring"),
            _lock: client,
        })
    }

    /// The live store, if the schema holds one.
    pub async fn open_live(&self) -> Result<Option<Arc<dyn Store>>, StoreError> {
        let client = connect(&self.url).await?;
        let exists = client
            .query_opt(
                "SELECT 1 FROM information_schema.tables WHERE table_schema = $1 AND table_name = 'tm_meta'",
                &[&self.schema],
            )
            .await
            .map_err(engine_error)?
            .is_some();
        if !exists {
            return Ok(None);
        }
        Ok(Some(Arc::new(
            PgStore::connect(&self.url, &self.schema).await?,
        )))
    }

    /// Loads the snapshot file into the staging schema.
    pub async fn stage(&self, snapshot: &Path) -> Result<Arc<dyn Store>, StoreError> {
        Ok(Arc::new(
            super::snapshot::load_into(&self.url, &self.staging, snapshot).await?,
        ))
    }

    /// Makes the staged schema the live one, in one transaction.
    pub async fn swap_in(&self) -> Result<(), StoreError> {
        super::snapshot::swap_in(&self.url, &self.staging, &self.schema).await
    }

    /// A name for reports.
    pub fn describe(&self) -> String {
        format!("PostgreSQL schema '{}'", self.schema)
    }
}
