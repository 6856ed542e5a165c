//! Wiring of a service server: building its state, the workers, and the
//! shutdown order.

use crate::cache::{Cache, Origin};
use crate::config::ServiceConfig;
use crate::fetch::{self, Served, Upstream};
use crate::metrics::ServiceMetrics;
use crate::policy::Freshness;
pub use crate::shared::Shared;
use crate::{http, snapshot, watcher};
use anyhow::Context;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tidemark_api::DbClient;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A service server. Embed it with [`Service::new`] and [`Service::run`],
/// or read through it directly with [`Service::read`].
#[derive(Clone)]
pub struct Service {
    pub(crate) shared: Arc<Shared>,
}

impl Service {
    /// Builds a service server; loads the cache snapshot if `cache_dir` has one.
    pub fn new(config: ServiceConfig, shutdown: CancellationToken) -> anyhow::Result<Self> {
        // Reads and the watch stream share one client, so they use the same
        // instance of a cluster: interest registered by a read is known to
        // the instance that pushes.
        let client = DbClient::new(&config.db);
        let upstream = Arc::new(client.clone());
        Self::build(config, shutdown, upstream, client)
    }

    /// Builds a service server whose reads ask `upstream` (the DB server;
    /// unit tests give a scripted one to drive the wait logic in time).
    pub fn with_upstream(
        config: ServiceConfig,
        shutdown: CancellationToken,
        upstream: Arc<dyn Upstream>,
    ) -> anyhow::Result<Self> {
        let client = DbClient::new(&config.db);
        Self::build(config, shutdown, upstream, client)
    }

    fn build(
        config: ServiceConfig,
        shutdown: CancellationToken,
        upstream: Arc<dyn Upstream>,
        client: DbClient,
    ) -> anyhow::Result<Self> {
        if !tidemark_api::schema::is_service_name(&config.id) {
            anyhow::bail!("a service server needs --id NAME (1 to 128 bytes, not . or ..): the DB server pushes changes to it, and quiesces it, by this name");
        }
        let cache = Cache::new(config.cache_capacity);
        let mut last_event_id = None;
        let mut history = String::new();
        let mut schema_version = 0;
        if let Some(dir) = &config.cache_dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating cache directory {}", dir.display()))?;
            if let Some(snap) = snapshot::load(dir, &config.id)? {
                for a in &snap.answers {
                    cache.offer(a, Origin::Push);
                }
                tracing::info!(entries = snap.answers.len(), last_event_id = ?snap.last_event_id, "cache snapshot loaded");
                last_event_id = snap.last_event_id;
                history = snap.history;
                schema_version = snap.schema_version;
            }
        }
        let stream_base = client.base().to_owned();
        Ok(Self {
            shared: Arc::new(Shared {
                client,
                upstream,
                cache,
                metrics: ServiceMetrics::new(),
                connected: AtomicBool::new(false),
                vouched_until_ms: AtomicU64::new(u64::MAX),
                timely_leases: std::sync::atomic::AtomicU32::new(crate::shared::READY_AFTER_TIMELY),
                ticked_ms: AtomicU64::new(crate::shared::mono_ms()),
                db_silent_until: Mutex::new(None),
                lease_clock: Mutex::new(Default::default()),
                round_trip: Mutex::new(Default::default()),
                stream_boot: Mutex::new(String::new()),
                time_round_trip: tokio::sync::Notify::new(),
                lease_alive_until_ms: AtomicU64::new(u64::MAX),
                stream_serial: AtomicU64::new(0),
                stream_base: Mutex::new(stream_base),
                last_event_id: Mutex::new(last_event_id),
                waiters: Mutex::new(HashMap::new()),
                changes: AtomicU64::new(0),
                snapshot_event_id: Mutex::new(None),
                db_epoch: AtomicU64::new(0),
                history: Mutex::new(history),
                // The snapshot's, until a schema is adopted: a different
                // one revalidates what it brought (see the watcher's hello).
                schema_version: AtomicU64::new(schema_version),
                schema_went_back_from: AtomicU64::new(0),
                skew: Mutex::new(None),
                schema_refresh: tokio::sync::Notify::new(),
                quiesce: Mutex::new(None),
                // Until a server says otherwise (a restart from a snapshot
                // may resume at an instance of a cluster).
                declare: AtomicBool::new(true),
                quiesce_at: Mutex::new(None),
                own_quiesce: Mutex::new(Default::default()),
                own_quiesce_set: AtomicBool::new(false),
                shutdown,
                config,
            }),
        })
    }

    /// Reads a record as a terminal would, applying `freshness`.
    pub async fn read(
        &self,
        table: &str,
        key: &str,
        freshness: Freshness,
    ) -> Result<Served, fetch::ReadError> {
        fetch::read(&self.shared, table, key, freshness).await
    }

    /// True while the watch stream is open.
    pub fn connected(&self) -> bool {
        self.shared.connected.load(Ordering::SeqCst)
    }

    /// Serves on `listener` until shutdown: then stops accepting, lets reads
    /// finish within the grace period, stops the watcher and writes a final
    /// cache snapshot.
    pub async fn run(self, listener: TcpListener) -> anyhow::Result<()> {
        let shared = self.shared.clone();
        let addr = listener.local_addr()?;
        crate::schema::check_at_start(&shared).await?;
        let schema = tokio::spawn(crate::schema::worker(shared.clone()));
        let watch = tokio::spawn(watcher::run(shared.clone()));
        let snap = tokio::spawn(snapshot::worker(shared.clone()));
        let report = tokio::spawn(crate::report::worker(shared.clone()));
        let round_trip = tokio::spawn(crate::round_trip::run(shared.clone()));
        crate::shared::pause_watch(&shared);
        // Cache hits answered before the router (`hot.rs`), inside the
        // front door: connection limits, deadlines and TLS apply alike.
        let app = tidemark_serve::hot::HotRoute::new(
            shared.clone(),
            http::router(shared.clone()),
            crate::hot::cache_hit,
        );
        // Serving; ready (`/readyz`) while its watch stream vouches.
        tracing::info!(%addr, id = %shared.config.id, policy = shared.config.policy.as_str(), db = %shared.config.db, "service server listening (ready, on /readyz, while its watch stream to the DB server vouches for the cache)");
        let signal = shared.shutdown.clone();
        let grace = Duration::from_secs(shared.config.shutdown_grace_secs);
        let c = &shared.config;
        let tls = tidemark_serve::tls::configured(
            c.tls_cert.as_deref(),
            c.tls_key.as_deref(),
            c.tls_client_ca.as_deref(),
        )?;
        let stats = tidemark_serve::Stats::register(&shared.metrics.registry, "tidemark_service");
        let serve = tokio::spawn(tidemark_serve::serve(
            listener,
            tls,
            c.front_door(),
            stats,
            move |peer| app.for_peer(peer),
            signal,
        ));
        shared.shutdown.cancelled().await;
        tracing::info!("shutdown: no longer accepting; waiting for reads in flight");
        match tokio::time::timeout(grace, serve).await {
            Ok(r) => r.context("server task")?,
            Err(_) => {
                tracing::warn!("reads still in flight after the grace period; closing anyway")
            }
        }
        let _ = watch.await;
        let _ = snap.await;
        let _ = report.await;
        let _ = round_trip.await;
        let _ = schema.await;
        if shared.config.cache_dir.is_some() {
            snapshot::save_now(&shared).context("writing the final cache snapshot")?;
        }
        tracing::info!("shutdown complete");
        Ok(())
    }
}
