//! What the HTTP handlers, the read path and the workers of one service
//! server share.

use crate::cache::Cache;
use crate::config::ServiceConfig;
use crate::fetch::Upstream;
use crate::metrics::ServiceMetrics;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use tidemark_api::event::QuiesceEvent;
use tidemark_api::keyslot::KeySlot;
use tidemark_api::DbClient;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// State shared by the HTTP handlers and the workers.
pub struct Shared {
    pub config: ServiceConfig,
    /// The watch stream's client.
    pub client: DbClient,
    /// Where reads that the cache cannot answer go.
    pub upstream: Arc<dyn Upstream>,
    pub cache: Cache,
    pub metrics: ServiceMetrics,
    /// True while the watch stream is open *and synced* (every missed
    /// change applied). Only then are cached entries served as current and
    /// fetched records cached, because only then are their later changes
    /// sure to arrive.
    pub connected: AtomicBool,
    /// The id of the last watch event applied.
    pub last_event_id: Mutex<Option<String>>,
    /// Reads waiting for a key to become current, by cache slot.
    pub waiters: Mutex<HashMap<String, Arc<Notify>>>,
    /// The watch-event id of the last snapshot written.
    pub snapshot_event_id: Mutex<Option<String>>,
    /// Bumped on every cache change, so snapshots skip idle periods.
    pub changes: AtomicU64,
    pub db_epoch: AtomicU64,
    pub schema_version: AtomicU64,
    /// Set when the DB server's schema cannot be understood (S10): reads
    /// are refused with this message.
    pub skew: Mutex<Option<String>>,
    /// The watcher asks the schema worker to fetch the schema again.
    pub schema_refresh: Notify,
    pub quiesce: Mutex<Option<QuiesceEvent>>,
    /// The DB server said it is one instance of a cluster: before a stream
    /// resumes, declare what the cache holds (`POST /v1/watch/interest`).
    pub declare: AtomicBool,
    /// When the DB server goes offline, per the quiesce notice in force.
    pub quiesce_at: Mutex<Option<std::time::Instant>>,
    pub shutdown: CancellationToken,
}

impl Shared {
    /// Wakes reads waiting on a key.
    pub fn notify(&self, table: &str, key: &str) {
        let slot = KeySlot::new(table, key).into_string();
        if let Some(n) = self.waiters.lock().get(&slot) {
            n.notify_waiters();
        }
    }

    /// Wakes every waiting read (after an `epoch` event).
    pub fn notify_all(&self) {
        for n in self.waiters.lock().values() {
            n.notify_waiters();
        }
    }
}
