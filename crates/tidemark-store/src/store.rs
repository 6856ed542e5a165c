//! The storage trait and its value types.

use crate::StoreError;
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use tidemark_api::schema_change::SchemaVersionInfo;
use tidemark_api::{Fields, Order, OrderResult, Record, RecoveryState, Schema, Version};

/// A group of batches after [`Store::begin_group`].
pub enum Begun {
    /// Running on its own; it commits only after every group begun before
    /// it has committed.
    Running(futures::future::BoxFuture<'static, Ended>),
    /// It must run alone: let every running group end, then
    /// [`Store::apply_group`] it.
    Alone(Vec<Vec<Order>>),
}

/// How a running group ended.
pub enum Ended {
    /// Its results, in batch order, as [`Store::apply_group`] gives them.
    Done(Vec<Result<ApplyOutcome, StoreError>>),
    /// Rolled back, nothing applied (a group begun before it failed, or it
    /// needs the engine's careful path): apply it alone, in its place in the
    /// order, once the groups begun before it have ended. Every group
    /// running after it ends the same way.
    Again(Vec<Vec<Order>>),
}

/// The recovery state as the store keeps it (P5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryMeta {
    pub state: RecoveryState,
    /// The final chunk of the schedule list has arrived.
    pub schedule_final: bool,
    /// The OpS has said it sent everything.
    pub complete_requested: bool,
    pub started_at: Option<String>,
    /// Flags set since the recovery started.
    pub flagged_total: u64,
    /// Flags still set.
    pub remaining: u64,
    /// How many times flags were settled (dropped, their order applied to
    /// another key) in this store's life: a standby that sees it grow
    /// sends `flags_settled`, as the primary did.
    pub settled: u64,
    /// Sources the restored data knows whose final chunk has not arrived
    /// and that were not waived: the blanket stays until none is left.
    pub waiting_for_sources: Vec<String>,
    /// Sources an operator declared lost.
    pub waived_sources: Vec<String>,
}

/// One entry of the recovery schedule list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagEntry {
    pub table: String,
    pub key: String,
    pub through_seq: u64,
}

/// What a schedule chunk did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlagsAdded {
    pub flagged: u64,
    /// Entries whose order the store already holds.
    pub skipped: u64,
}

/// A flag still set, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    pub table: String,
    pub key: String,
    pub source: String,
    pub through_seq: u64,
    /// The source's applied-order high-water mark now.
    pub high_water: u64,
}

/// Which flags [`Store::flag_page`] lists.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlagPage {
    /// Only this table (a `prefix` needs one).
    pub table: Option<String>,
    /// Only keys that start with this, within `table`.
    pub prefix: Option<String>,
    /// Start after this `(table, key, source)`.
    pub after: Option<(String, String, String)>,
    pub limit: usize,
}

/// One applied change, as kept in the change log and pushed to watchers.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub table: String,
    pub key: String,
    /// The whole record after the change; `None` for a delete.
    pub fields: Option<Fields>,
    pub version: Version,
    /// True if applying this change cleared the key's last recovery flag.
    pub cleared_flag: bool,
    /// True if the key is still flagged after this change (more orders of
    /// the recovery schedule are still to come for it), or the schedule list
    /// was not yet complete when it committed. The change log keeps it as
    /// committed, so a reader of the log learns what the committer pushed.
    pub flagged: bool,
}

/// A point read: the record, or the version of its delete, and whether the
/// key carries a recovery flag.
#[derive(Debug, Clone, PartialEq)]
pub struct Lookup {
    pub record: Option<Record>,
    /// For a missing key: the version of the delete that removed it, if known.
    pub tombstone: Option<Version>,
    pub flagged: bool,
}

/// What a batch of orders produced.
#[derive(Debug, Clone)]
pub struct ApplyOutcome {
    /// One result per order, in request order.
    pub results: Vec<OrderResult>,
    /// The changes committed, in commit order (duplicates produce none).
    pub changes: Vec<Change>,
}

/// The store's position: epoch, last committed seq, schema version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreMeta {
    pub epoch: u64,
    pub seq: u64,
    pub schema_version: u64,
    /// The oldest seq still in the change log (`seq + 1` if it is empty).
    pub log_floor: u64,
}

/// What a snapshot holds, read from the snapshot itself (B1).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotInfo {
    /// The store's on-disk format version.
    pub store_format: u64,
    pub epoch: u64,
    /// Last committed seq in the snapshot: the backup's point.
    pub seq: u64,
    pub schema_version: u64,
    /// Applied-order high-water mark per OpS source.
    pub high_water: BTreeMap<String, u64>,
    /// The process information (`tm_meta.process`) the snapshot carries:
    /// present when the snapshot was taken from a running server (B6).
    pub process: Option<serde_json::Value>,
    /// Size of the snapshot file in bytes.
    pub bytes: u64,
    /// The id of the store history it was taken in (the `history` note):
    /// backups of different stores served under one URL or path tell apart
    /// by it. `None` before the store noted one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<String>,
}

/// One consistent snapshot, handed over as a stream of bytes in the
/// snapshot format (see [`crate::engine`]), with what it holds.
pub struct Snapshot {
    pub info: SnapshotInfo,
    /// Exactly `info.bytes` bytes.
    pub reader: Box<dyn std::io::Read + Send>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("info", &self.info)
            .finish()
    }
}

/// The process information a running server records in its store (B6).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessInfo {
    pub pid: u32,
    pub boot: String,
    pub started_at: String,
    pub listen: String,
}

/// What a publish runs, in order: the first `before_transaction`
/// statements one at a time (PostgreSQL builds the new indexes of existing
/// tables concurrently, outside any transaction), the rest in one
/// transaction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SchemaDdl {
    pub statements: Vec<String>,
    pub before_transaction: usize,
}

/// An engine. Every method is atomic: it either happens whole or not at all.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `sqlite` or `postgres`.
    fn engine(&self) -> &'static str;

    /// The schema in force. Cheap: kept in memory.
    fn schema(&self) -> Arc<Schema>;

    /// Epoch, seq and schema version.
    async fn meta(&self) -> Result<StoreMeta, StoreError>;

    /// Whether the engine answers now (the readiness probe). An embedded
    /// engine always does; a remote one is asked a trivial query.
    async fn reachable(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Point read of one record (P1). The table must be in the schema.
    async fn get(&self, table: &str, key: &str) -> Result<Lookup, StoreError>;

    /// Validates and applies a batch of orders in one durable transaction:
    /// all or nothing, idempotent by `(source, seq)` (P3, P10).
    async fn apply(&self, orders: Vec<Order>) -> Result<ApplyOutcome, StoreError>;

    /// Applies several batches in one durable commit, each batch still all
    /// or nothing (group commit). Results are in batch order; changes of a
    /// later batch come after those of an earlier one.
    async fn apply_group(&self, batches: Vec<Vec<Order>>) -> Vec<Result<ApplyOutcome, StoreError>> {
        let mut out = Vec::with_capacity(batches.len());
        for b in batches {
            out.push(self.apply(b).await);
        }
        out
    }

    /// Begins a group of batches: its place in the commit order is fixed
    /// when this returns. An engine that can overlap groups returns
    /// [`Begun::Running`]: it commits after every group begun before it. The
    /// default overlaps nothing: the caller applies the group alone.
    async fn begin_group(&self, batches: Vec<Vec<Order>>) -> Begun {
        Begun::Alone(batches)
    }

    /// How many begun groups may run at once (1: none overlap).
    fn group_depth(&self) -> usize {
        1
    }

    /// Changes with seq greater than `after`, oldest first, at most `limit`.
    async fn changes_since(&self, after: u64, limit: usize) -> Result<Vec<Change>, StoreError>;

    /// The applied-order high-water mark of every source.
    async fn high_water_marks(&self) -> Result<BTreeMap<String, u64>, StoreError>;

    /// Drops change-log entries so that at most `keep` remain, in chunks of
    /// [`crate::PRUNE_CHUNK`] rows with a pause between them: writers wait
    /// for one chunk at most, never for the whole backlog (10M rows after a
    /// bulk load took the writer for 20 s in one statement).
    async fn prune_changes(&self, keep: u64) -> Result<u64, StoreError>;

    /// Makes everything durable and releases the engine.
    async fn close(&self) -> Result<(), StoreError>;

    // --- recovery (P5-P10) ---

    /// Called by restore on the freshly restored copy, before it is swapped
    /// in: sets the epoch to `new_epoch` and the recovery state to
    /// `recovering` with no schedule list received yet, so the server starts
    /// answering every read as recovering (P5, patent step 2).
    async fn mark_restored(&self, new_epoch: u64) -> Result<(), StoreError>;

    /// The persisted recovery state and progress.
    async fn recovery_meta(&self) -> Result<RecoveryMeta, StoreError>;

    /// Flags keys named in a chunk of the recovery schedule list (P7). An
    /// entry whose order `(source, through_seq)` the store already holds is
    /// skipped: the restored data is current for it. `final_chunk` records
    /// that `source`'s whole list has arrived, and waives the sources in
    /// `without` (known to the restored data, journals lost). The schedule
    /// is final once every source the restored data knows has sent its
    /// final chunk or been waived. Time is proportional to the chunk.
    async fn add_flags(
        &self,
        source: &str,
        entries: Vec<FlagEntry>,
        final_chunk: bool,
        without: Vec<String>,
    ) -> Result<FlagsAdded, StoreError>;

    /// Makes the schedule wait for `sources` too (sources the restored data
    /// does not know, whose lists another run sends): it is not final until
    /// each has sent its final chunk or been waived. Refused outside a
    /// recovery, and once the schedule is final. Idempotent.
    async fn expect_sources(&self, sources: &[String]) -> Result<(), StoreError>;

    /// Sets the recovery state and the "OpS said complete" mark.
    async fn set_recovery_state(
        &self,
        state: RecoveryState,
        complete_requested: bool,
    ) -> Result<RecoveryMeta, StoreError>;

    /// Up to `limit` flags still set, in key order, for operators.
    async fn list_flags(&self, limit: usize) -> Result<Vec<Flag>, StoreError>;

    /// One page of flags in `(table, key, source)` order, after `after`:
    /// of `table` only, and then only keys starting with `prefix`, if
    /// given. Served from the flags' primary key, so a page costs the same
    /// with a million flags (the console's search and paging).
    async fn flag_page(&self, page: &FlagPage) -> Result<Vec<Flag>, StoreError>;

    /// Drops every flag (an operator ending a recovery the OpS will never
    /// complete). Returns how many were dropped.
    async fn clear_flags(&self) -> Result<u64, StoreError>;

    /// Drops every flag whose order has been applied: its `through_seq` is
    /// at or below its source's high-water mark. A flag is cleared with the
    /// order of its own key; one whose order changed another key (a
    /// schedule entry naming the wrong key) would otherwise stay for good.
    /// Returns how many were dropped. Scans every flag: call it when few
    /// remain.
    async fn settle_flags(&self) -> Result<u64, StoreError>;

    // --- the schema registry (S1, S9) ---

    /// Every published version of the schema, oldest first, with who
    /// published it and when.
    async fn schema_versions(&self) -> Result<Vec<SchemaVersionInfo>, StoreError>;

    /// The statements that would take the store from the schema in force to
    /// `target`, for this engine: what a publish of `target` runs.
    fn schema_ddl(&self, target: &Schema) -> Result<SchemaDdl, StoreError>;

    /// Publishes `target` (version = the version in force + 1) in one
    /// transaction: the DDL, the catalog, the registry row (`by`, now) and
    /// the version bump; then serves it. Columns or tables `target` lacks
    /// are dropped only if they hold no data (a rollback), else
    /// [`StoreError::SchemaRefused`]. Returns false, changing nothing, if
    /// the store already is at `target.version` or later (a resumed job).
    async fn publish_schema(&self, target: &Schema, by: &str) -> Result<bool, StoreError>;

    /// Reads the schema in force from the database again: for an instance
    /// that did not run the publish itself (another instance over the same
    /// PostgreSQL).
    async fn reload_schema(&self) -> Result<(), StoreError>;

    // --- operational state (S4) ---

    /// A small piece of operational state kept with the data (e.g. the
    /// quiesce notice under `quiesce`). `None` removes it.
    async fn set_note(&self, name: &str, value: Option<String>) -> Result<(), StoreError>;

    /// Reads what [`Store::set_note`] wrote.
    async fn note(&self, name: &str) -> Result<Option<String>, StoreError>;

    // --- backup (B1-B6) ---

    /// Writes one consistent snapshot of the whole store, in the snapshot
    /// format (see [`crate::engine`]), to the new file `path` (one read
    /// transaction: writers are not blocked, and the copy is never a file
    /// being written). Returns what the snapshot holds.
    async fn snapshot_to(&self, path: &Path) -> Result<SnapshotInfo, StoreError>;

    /// Takes one consistent snapshot and hands it over as a stream: what
    /// backups read. The engine may put a temporary file in the directory
    /// `scratch`; nothing is left there when this returns (the stream keeps
    /// the file open). The default writes the file with
    /// [`Store::snapshot_to`]; an engine that produces the format as it
    /// reads overrides it.
    async fn snapshot(&self, scratch: &Path) -> Result<Snapshot, StoreError> {
        snapshot_via_file(self, scratch).await
    }

    /// Records the running server's process information (B6); an online
    /// snapshot carries it, and `cleanup` removes it after a restore.
    async fn record_process(&self, info: &ProcessInfo) -> Result<(), StoreError>;

    /// Whether the store holds process information restored from an online
    /// backup that `cleanup` has not normalised yet (B6).
    async fn needs_cleanup(&self) -> Result<bool, StoreError>;

    /// Marks the store as needing cleanup (restore of an online backup).
    async fn mark_needs_cleanup(&self) -> Result<(), StoreError>;

    /// Normalises process information (B6): removes the recorded process
    /// and any quiesce notice, and clears the needs-cleanup mark. Returns
    /// the names of the entries removed.
    async fn cleanup_process_info(&self) -> Result<Vec<String>, StoreError>;
}

/// [`Store::snapshot`] through a scratch file written by
/// [`Store::snapshot_to`], unlinked while open: the handle keeps the data
/// until it is read.
pub(crate) async fn snapshot_via_file<S: Store + ?Sized>(
    store: &S,
    scratch: &Path,
) -> Result<Snapshot, StoreError> {
    let path = crate::layout::scratch_snapshot(scratch);
    let info = store.snapshot_to(&path).await?;
    let file = std::fs::File::open(&path);
    let _ = std::fs::remove_file(&path);
    let file = file.map_err(|e| StoreError::DataDir {
        path: path.display().to_string(),
        detail: format!("cannot read the snapshot just written: {e}"),
    })?;
    Ok(Snapshot {
        info,
        reader: Box::new(file),
    })
}
