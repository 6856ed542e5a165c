//! Tidemark's storage engines behind one trait.
//!
//! A store keeps, in one database and so in one transaction: the schema,
//! the records (one real SQL table per schema table) with their versions,
//! the change log, the applied-order high-water mark per OpS source, and the
//! recovery flags.
//!
//! # Layout
//! - [`store`]: the [`Store`] trait every engine implements, and its value types.
//! - [`engine`]: [`Engine`]: opening a store and loading or inspecting a
//!   snapshot without naming the engine; the snapshot format every engine shares.
//! - [`error`]: [`StoreError`], what callers branch on.
//! - [`sqlite`]: the embedded engine (rusqlite, WAL), one module per job.
//! - [`postgres`]: the PostgreSQL engine (tokio-postgres, a deadpool pool), one schema.
//! - [`recovery_rule`]: the engine-neutral ordering rule for orders during recovery.
//! - [`layout`]: `current -> gen-N` generations and the atomic swap restore uses.
//! - [`lock`]: the data-directory lock that a crashed holder cannot leave stuck.
//! - `schema_ddl`: the schema registry's engine-neutral part: DDL from one version to the next.
//! - [`apply`]: batch validation and the idempotency rules shared by engines.
//! - [`dropper`]: large batches freed off the path that answers.
//! - `testsuite` (feature `testsuite`, tests only): the one test suite every
//!   engine runs.

pub mod apply;
pub mod dropper;
pub mod engine;
pub mod error;
pub mod layout;
pub mod lock;
pub mod postgres;
pub mod recovery_rule;
pub(crate) mod schema_ddl;
pub mod sqlite;
pub mod store;
#[cfg(any(test, feature = "testsuite"))]
pub mod testsuite;

pub use engine::{check_snapshot_integrity, inspect_snapshot, Engine};
pub use error::StoreError;
pub use lock::DataDirLock;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;
pub use store::{
    ApplyOutcome, Begun, Change, Ended, Flag, FlagEntry, FlagPage, FlagsAdded, Lookup, ProcessInfo,
    RecoveryMeta, SchemaDdl, Snapshot, SnapshotInfo, Store, StoreMeta,
};

/// Change-log rows one pruning statement deletes at most.
pub const PRUNE_CHUNK: u64 = 5_000;
/// The pause between two pruning chunks, in which writers go first.
pub const PRUNE_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// Runs `chunk` (which deletes at most [`PRUNE_CHUNK`] of the oldest
/// change-log rows and says how many) until a chunk comes up short, pausing
/// [`PRUNE_PAUSE`] between chunks; the rows deleted in all.
pub(crate) async fn prune_in_chunks<F, Fut>(mut chunk: F) -> Result<u64, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64, StoreError>>,
{
    let mut total = 0;
    loop {
        let n = chunk().await?;
        total += n;
        if n < PRUNE_CHUNK {
            return Ok(total);
        }
        tokio::time::sleep(PRUNE_PAUSE).await;
    }
}
