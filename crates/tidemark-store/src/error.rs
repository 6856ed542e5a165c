//! Errors a store reports to its callers.

use tidemark_api::schema::InvalidInput;

/// Why a store operation failed. Every variant leaves the store unchanged.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Order `index` of the batch is invalid; nothing in the batch was applied.
    #[error("order {index} (source '{source_name}' seq {seq}): {error}; nothing in the batch was applied")]
    Invalid {
        index: usize,
        source_name: String,
        seq: u64,
        error: Box<InvalidInput>,
    },
    /// Entry `index` of a schedule chunk names an unknown table or an
    /// invalid key; nothing of the chunk was taken.
    #[error("entry {index} of the schedule chunk ({table}/{key:?}): {error}; nothing of the chunk was taken: fix or remove that entry and send the chunk again")]
    ScheduleEntry {
        index: usize,
        table: String,
        key: String,
        error: Box<InvalidInput>,
    },
    /// A used `(source, seq)` came with different content.
    #[error("order {index}: source '{source_name}' seq {seq} is taken, with different content, by an order already applied or by an earlier order of this batch; give every order its own seq (GET /v1/sources shows each source's high-water mark; {high_water} counts this refused batch); nothing in the batch was applied")]
    Conflict {
        index: usize,
        source_name: String,
        seq: u64,
        high_water: u64,
    },
    /// An order below its source's high-water mark that was never applied.
    #[error("order {index}: source '{source_name}' seq {seq} is below the high-water mark {high_water} but was never applied; orders of one source must arrive in seq order; nothing in the batch was applied")]
    OutOfOrder {
        index: usize,
        source_name: String,
        seq: u64,
        high_water: u64,
    },
    /// During recovery, a live order of a source must follow its high-water
    /// mark without a gap, so it cannot pass difference data not yet
    /// replayed (P10); replays may skip seqs never used.
    #[error("order {index}: source '{source_name}' seq {seq} skips ahead of seq {expected}; the DB server is recovering and applies each source's orders strictly in order; send seq {expected} first (run 'tidemark ops recover', which replays each source's journal), or, if this source never used seq {expected}, send this order again once the recovery has completed; nothing in the batch was applied")]
    Gap {
        index: usize,
        source_name: String,
        seq: u64,
        expected: u64,
    },
    /// A seq implausibly far ahead of its source's high-water mark.
    #[error("order {index}: source '{source_name}' seq {seq} is more than {} ahead of its high-water mark {high_water}; an OpS numbers its orders one by one: check the seq; nothing in the batch was applied", crate::apply::MAX_SEQ_GAP)]
    TooFarAhead {
        index: usize,
        source_name: String,
        seq: u64,
        high_water: u64,
    },
    /// A recovery schedule entry is malformed.
    #[error("{0}")]
    BadSchedule(String),
    /// A recovery request while the server is not recovering.
    #[error("the DB server is not recovering: a schedule list is only taken after a restore ('tidemark restore') and until the recovery completes")]
    NotRecovering,
    /// A schema change the store will not make (a rollback that would lose
    /// data, or a job for a version the store is not next at).
    #[error("{0}")]
    SchemaRefused(String),
    /// A read named something invalid (unknown table, bad key).
    #[error("{0}")]
    Input(Box<InvalidInput>),
    /// The data directory cannot be used.
    #[error("cannot use data directory {path}: {detail}")]
    DataDir { path: String, detail: String },
    /// The PostgreSQL database, or a file made from it, cannot be used as
    /// given: `what` names it (`--database-url`, `--pg-schema NAME`,
    /// `snapshot file PATH`).
    #[error("cannot use {what}: {detail}")]
    Database { what: String, detail: String },
    /// Another process holds the store: `place` says which ("data
    /// directory DIR", "PostgreSQL schema 'NAME'"), `holder` who ("pid N").
    #[error("{place} is in use by another process ({holder}); stop it first, or point --data-dir elsewhere")]
    Locked { place: String, holder: String },
    /// The database is not a Tidemark store or has an unknown format.
    #[error("{0}")]
    Format(String),
    /// The engine refuses to run where it was pointed (a PostgreSQL too old,
    /// missing rights, a server lock lost to a restore); the message names
    /// what to do.
    #[error("{0}")]
    Refused(String),
    /// The engine failed; the operation had no effect.
    #[error("storage engine failed: {0}")]
    Engine(String),
    /// The disk under the store is full; the operation had no effect.
    #[error("the store's disk is full ({0}); nothing was changed: free space where the data lives (the data directory, or PostgreSQL's disk), then do it again (orders are idempotent)")]
    Full(String),
    /// Several instances share the store and this one does not hold the
    /// lease: it may not write (the write belongs to the primary).
    #[error("this DB-server instance is not the primary; send the write to the primary (any instance forwards it)")]
    NotPrimary,
    /// The engine cannot be reached (its connection broke or it is down);
    /// the operation may or may not have taken effect.
    #[error("storage engine unreachable: {0}")]
    Unavailable(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match &e {
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull => {
                StoreError::Full(e.to_string())
            }
            _ => StoreError::Engine(e.to_string()),
        }
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Engine(format!("stored JSON is unreadable: {e}"))
    }
}
