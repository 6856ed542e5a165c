//! Everything the handlers and the workers of one DB server share.

use crate::committer::{AfterCommit, AfterUnknown, Committer, Worker};
use crate::config::ServerConfig;
use crate::hub::{Hub, Push};
use crate::metrics::ServerMetrics;
use crate::quiesce::Quiesce;
use crate::read_cache::ReadCache;
use crate::recovery::Recovery;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tidemark_api::event::EventId;
use tidemark_store::{Change, Store, StoreError};
use tokio_util::sync::CancellationToken;

/// The state of one DB server. Built without any HTTP, so the read rule,
/// watch streams and recovery can be tested on a store directly.
pub struct AppState {
    pub store: Arc<dyn Store>,
    /// Interest registry and push queue; shared with the committer.
    pub hub: Arc<Hub>,
    pub recovery: Recovery,
    pub quiesce: Quiesce,
    /// Serialised answers, used only in the `normal` state; `None` if off.
    pub read_cache: Option<Arc<ReadCache>>,
    /// The group-commit queue.
    pub committer: Committer,
    pub metrics: ServerMetrics,
    pub config: ServerConfig,
    /// Tokens and roles.
    pub auth: crate::auth::Auth,
    /// Who did which admin action.
    pub audit: crate::audit::Audit,
    /// The staged schema and who runs which schema version.
    pub schema: crate::schema_publish::SchemaPublication,
    /// The service servers heard from (their reports).
    pub services: crate::services::Services,
    /// Remaining flags over time, for the console's chart.
    pub progress: crate::progress::Progress,
    /// Names this process.
    pub boot: String,
    /// The store's history (`history.rs`), told in every `hello`.
    pub history: String,
    /// The same, as the `Tidemark-History` header of record answers (made
    /// once: warm reads add it to every answer).
    pub history_header: axum::http::HeaderValue,
    /// Part of every watch event id: `HISTORY.BOOT` of this process, or
    /// with several instances the cluster's, so an id means the same on
    /// each.
    pub stream_id: String,
    /// A single server's store's boots, this one last (`boots.rs`): how far
    /// an earlier boot's stream ids may resume here. Empty in a cluster.
    pub boots: crate::boots::Boots,
    /// With the PostgreSQL engine: this instance's place in the cluster.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Open watch streams per caller (token name), for the per-token limit.
    pub streams: crate::limits::Streams,
    /// Request bodies arriving, per token (`guard::MAX_BODIES_PER_TOKEN`).
    pub bodies: crate::limits::Streams,
    /// Backup streams being served.
    pub backups: Arc<tokio::sync::Semaphore>,
    /// False until the server serves, and again once shutdown begins.
    pub ready: AtomicBool,
    /// The store's last answer to the readiness probe (`None`: it answers)
    /// and when it was asked: reused for a second, one probe asking at a
    /// time, so probes take no pool connections from reads and orders.
    pub store_ready: tokio::sync::Mutex<Option<(tokio::time::Instant, Option<String>)>>,
    pub shutdown: CancellationToken,
}

impl AppState {
    /// The state over an open store, and the committer's worker (run it
    /// with [`Worker::run`]).
    pub async fn new(
        store: Arc<dyn Store>,
        config: ServerConfig,
        boot: String,
        cluster: Option<Arc<crate::cluster::Cluster>>,
        shutdown: CancellationToken,
    ) -> Result<(Arc<AppState>, Worker), StoreError> {
        let metrics = ServerMetrics::new();
        let meta = store.meta().await?;
        metrics.seq.set(meta.seq as i64);
        metrics.epoch.set(meta.epoch as i64);
        let hub = Arc::new(Hub::new(
            config.push_queue,
            config.max_interest_per_subscriber,
        ));
        hub.start_at(meta.seq);
        let read_cache =
            ReadCache::new(config.read_cache_entries, config.read_cache_bytes).map(Arc::new);
        let after_commit: AfterCommit = {
            let (hub, read_cache) = (hub.clone(), read_cache.clone());
            Arc::new(move |changes: &[Change]| {
                if let Some(cache) = &read_cache {
                    for c in changes {
                        cache.invalidate(&c.table, &c.key);
                    }
                }
                hub.publish_changes(changes);
            })
        };
        let after_unknown: AfterUnknown = {
            let (hub, read_cache) = (hub.clone(), read_cache.clone());
            Arc::new(move || {
                if let Some(cache) = &read_cache {
                    cache.clear();
                }
                hub.publish(Push::Resync);
            })
        };
        let (committer, worker) = Committer::new(store.clone(), after_commit, after_unknown);
        let recovery = Recovery::load(store.clone()).await?;
        if recovery.state() == tidemark_api::RecoveryState::Recovering {
            // A revalidation may have been pushed before this process
            // started, by it or by another instance (see `hub.rs`).
            crate::resume_floor::restore(store.as_ref(), &hub, &meta, &recovery.meta()).await?;
        }
        let quiesce =
            Quiesce::load(store.as_ref(), cluster.as_ref().map(|c| c.url.as_str())).await?;
        if cluster.is_none() {
            // A crash between the last flag clear and the state change is
            // mended here (in a cluster, by whoever becomes primary).
            recovery.maybe_finish().await?;
        }
        let cluster_id = match &cluster {
            Some(c) => Some(c.store.cluster_id().await?),
            None => None,
        };
        let history = crate::history::current(
            store.as_ref(),
            &meta,
            &recovery.meta(),
            cluster_id.as_deref(),
        )
        .await?;
        // A cluster's ids resume at any instance (with a declaration); a
        // single server's name this boot, after its store history, so a
        // later boot can tell an id of its own store's (`watch::open`).
        let boots = if cluster_id.is_none() {
            // Before any stream: where the boot before this one ended.
            // Nothing above adds to the change log (`maybe_finish` changes
            // only the recovery state), so the seq read here is where the
            // boot before this one left it.
            let seq = store.meta().await?.seq;
            crate::boots::record(store.as_ref(), &boot, seq).await?
        } else {
            Default::default()
        };
        let stream_id = cluster_id.unwrap_or_else(|| EventId::single_stream(&history, &boot));
        let auth = crate::auth::Auth::load(store.clone(), config.max_subscribers_per_token).await?;
        let audit = crate::audit::Audit::new(store.clone());
        let backups = Arc::new(tokio::sync::Semaphore::new(
            config.max_backup_streams.max(1),
        ));
        let schema = crate::schema_publish::SchemaPublication::load(store.as_ref()).await?;
        let state = Arc::new(AppState {
            auth,
            audit,
            schema,
            services: Default::default(),
            progress: Default::default(),
            store,
            hub,
            recovery,
            quiesce,
            read_cache,
            committer,
            metrics,
            config,
            boot,
            history_header: axum::http::HeaderValue::from_str(&history)
                .expect("a history id is ASCII"),
            history,
            stream_id,
            boots,
            cluster,
            streams: Default::default(),
            bodies: Default::default(),
            backups,
            ready: AtomicBool::new(false),
            store_ready: tokio::sync::Mutex::new(None),
            shutdown,
        });
        Ok((state, worker))
    }
}
