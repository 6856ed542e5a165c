//! Opening the store, serving, and shutting down in a fixed order.

use crate::config::{ServerConfig, StoreKind};
use crate::http::{self, AppState};
use anyhow::Context;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tidemark_store::{PgStore, ProcessInfo, SqliteStore, Store, StoreError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A DB server with its store open, ready to serve.
pub struct Server {
    state: Arc<AppState>,
    worker: crate::committer::Worker,
}

impl Server {
    /// Opens the store named by `config`. Fails with a message that says
    /// what to do if the data directory is unusable or locked.
    pub async fn open(config: ServerConfig, shutdown: CancellationToken) -> anyhow::Result<Self> {
        // Wide enough that a restart never draws its predecessor's.
        let boot = format!("{:016x}", rand::random::<u64>());
        let (store, cluster): (Arc<dyn Store>, _) = match config.store {
            StoreKind::Sqlite => {
                let dir = config.data_dir.clone();
                // A store not made yet holds no token: refused before it
                // is made (and before anything is logged).
                if !listens_on_loopback(&config.listen)
                    && matches!(tidemark_store::layout::existing_db_dir(&dir), Ok(None))
                {
                    return Err(no_token_yet(&config.listen));
                }
                let store = tokio::task::spawn_blocking(move || SqliteStore::open(&dir, "server"))
                    .await
                    .context("opening the store")??;
                (Arc::new(store), None)
            }
            StoreKind::Postgres => {
                let store = connect_postgres(&config, &shutdown).await?;
                let cluster = Arc::new(join_cluster(store.clone(), &config, &boot).await?);
                (Arc::new(store), Some(cluster))
            }
        };
        record_process(store.as_ref(), &config, &boot).await?;
        // Waited for (as a standby that has seen nothing yet) from before
        // it reads its state: a change committed meanwhile is not
        // acknowledged until its first pass followed it (S3).
        if let Some(c) = &cluster {
            crate::cluster::vouch::register_at_start(c).await;
        }
        let opened = async {
            let (state, worker) =
                AppState::new(store, config, boot, cluster.clone(), shutdown).await?;
            if !listens_on_loopback(&state.config.listen) && !state.auth.any() {
                return Err(no_token_yet(&state.config.listen));
            }
            if state.auth.any() && !state.auth.any_admin() {
                tracing::warn!("no admin token exists yet: programs on this host may create tokens without one until an admin token is created ('tidemark token create --role admin --name NAME')");
            }
            Ok(Self { state, worker })
        }
        .await;
        if let (Err(_), Some(c)) = (&opened, &cluster) {
            // It will not start: waited for no more.
            let _ = c.store.vouch_drop(&c.id).await;
        }
        opened
    }

    /// Serves on `listener` until `shutdown` is cancelled, then: stops
    /// accepting, lets in-flight requests finish within the grace period,
    /// stops the workers, and closes the store.
    pub async fn run(self, listener: TcpListener) -> anyhow::Result<()> {
        let state = self.state;
        let committer = tokio::spawn(self.worker.run(state.shutdown.clone()));
        let shutdown = state.shutdown.clone();
        let addr = listener.local_addr()?;
        let workers = tokio::spawn(prune_worker(state.clone()));
        let (looked, first_look) = tokio::sync::oneshot::channel();
        let cluster_tasks = state.cluster.clone().map(|c| {
            let gate = c.clone();
            let shutdown = state.shutdown.clone();
            tokio::spawn(async move {
                let vouches = crate::cluster::vouch::PgVouches {
                    store: gate.store.clone(),
                    me: gate.id.clone(),
                };
                gate.gate.run(vouches, shutdown).await
            });
            (
                tokio::spawn(crate::cluster::lease::run(state.clone(), c.clone(), looked)),
                tokio::spawn(crate::cluster::tail::run(state.clone(), c)),
            )
        });
        let app = http::router(state.clone());
        // A publish a crash left unfinished ends on one version before we
        // serve (in a cluster, the instance that becomes primary does it).
        if state.cluster.is_none() {
            crate::schema_publish::resume_logged(&state).await;
        } else {
            // Ready once the lease was looked at: a lone instance is then
            // the primary, a second one follows it. A look that hangs
            // (PostgreSQL stalled) does not keep the server from serving.
            let _ = tokio::time::timeout(FIRST_LOOK_PATIENCE, first_look).await;
        }
        state.ready.store(true, Ordering::SeqCst);
        let meta = state.store.meta().await?;
        tracing::info!(%addr, store = state.store.engine(), epoch = meta.epoch, seq = meta.seq, boot = %state.boot, recovery = ?state.recovery.state(), "DB server ready");

        let grace = Duration::from_secs(state.config.shutdown_grace_secs);
        let c = &state.config;
        let tls = tidemark_serve::tls::configured(
            c.tls_cert.as_deref(),
            c.tls_key.as_deref(),
            c.tls_client_ca.as_deref(),
        )?;
        let stats = tidemark_serve::Stats::register(&state.metrics.registry, "tidemark");
        // Warm point reads take the hot route; the rest the router.
        let hot = tidemark_serve::hot::HotRoute::new(state.clone(), app, http::hot::warm_read);
        let serve = tokio::spawn(tidemark_serve::serve(
            listener,
            tls,
            c.front_door(),
            stats,
            move |peer| hot.for_peer(peer),
            shutdown.clone(),
        ));
        shutdown.cancelled().await;
        state.ready.store(false, Ordering::SeqCst);
        tracing::info!("shutdown: no longer accepting; waiting for requests in flight");
        match tokio::time::timeout(grace, serve).await {
            Ok(r) => r.context("server task")?,
            Err(_) => tracing::warn!(
                grace_secs = grace.as_secs(),
                "requests still in flight after the grace period; closing anyway"
            ),
        }
        let _ = workers.await;
        if let Some((lease, tail)) = cluster_tasks {
            // Gives the lease up (a standby takes over at once).
            let _ = lease.await;
            let _ = tail.await;
        }
        // Batches already accepted are committed before the store closes.
        let _ = committer.await;
        state.store.close().await.context("closing the store")?;
        tracing::info!("shutdown complete: store closed cleanly");
        Ok(())
    }
}

/// The refusal to serve beyond loopback in protected mode.
fn no_token_yet(listen: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "refusing to listen on {listen} with no token created: anyone who can reach it could change or copy every record; start it on 127.0.0.1 first, create an admin token ('tidemark token create --server http://127.0.0.1:PORT --role admin --name NAME'), then restart it on {listen}"
    )
}

/// Whether `listen` names a loopback address (protected mode allows only those).
fn listens_on_loopback(listen: &str) -> bool {
    match listen.parse::<std::net::SocketAddr>() {
        Ok(a) => a.ip().to_canonical().is_loopback(),
        Err(_) => listen.starts_with("localhost:"),
    }
}

/// How long a starting cluster member waits for its first look at the lease
/// before it reports ready anyway.
const FIRST_LOOK_PATIENCE: Duration = Duration::from_secs(10);

/// How long a starting server waits for a restore's lock to go.
const LOCK_PATIENCE: Duration = Duration::from_secs(10);

/// Why the store has not opened yet, while a start retries (shown by the
/// probes that answer meanwhile, so a cause that will not mend by itself,
/// such as a missing role, is not only in the log).
static OPENING_PROBLEM: parking_lot::Mutex<Option<String>> = parking_lot::Mutex::new(None);

/// The last reason the store could not be opened yet, if any.
pub fn opening_problem() -> Option<String> {
    OPENING_PROBLEM.lock().clone()
}

/// Connects to PostgreSQL, retrying with backoff while it is unreachable
/// (it may start after us); a refusal that retrying cannot mend (a newer
/// store format, missing rights, a bad URL) ends the start at once.
async fn connect_postgres(
    config: &ServerConfig,
    shutdown: &CancellationToken,
) -> anyhow::Result<PgStore> {
    let url = config
        .database_url
        .as_ref()
        .map(|s| s.0.clone())
        .context("--store postgres needs --database-url URL")?;
    if let Some(why) = tidemark_store::postgres::target::unusable_schema(&config.pg_schema) {
        anyhow::bail!("{why}");
    }
    let mut delay = Duration::from_millis(200);
    loop {
        match PgStore::connect(&url, &config.pg_schema).await {
            Ok(store) => {
                // Held while the server runs: a restore is refused meanwhile.
                // A restore that just ended may hold it a moment longer (its
                // PostgreSQL session is still closing): wait a little.
                let until = tokio::time::Instant::now() + LOCK_PATIENCE;
                loop {
                    match store.hold_server_lock(&url).await {
                        Ok(()) => return Ok(store),
                        Err(StoreError::Locked { .. }) if tokio::time::Instant::now() < until => {
                            tracing::info!("the PostgreSQL schema is locked by a restore; waiting for it to end");
                            tokio::time::sleep(Duration::from_millis(250)).await;
                        }
                        Err(e) => {
                            return Err(e).context("locking the PostgreSQL schema for this server")
                        }
                    }
                }
            }
            Err(e @ (StoreError::Unavailable(_) | StoreError::Engine(_))) => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "PostgreSQL is not reachable yet; retrying (the server is not ready until it connects)");
                *OPENING_PROBLEM.lock() = Some(e.to_string());
                tokio::select! {
                    _ = shutdown.cancelled() => anyhow::bail!("shut down before PostgreSQL could be reached"),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e).context("opening the PostgreSQL store"),
        }
    }
}

/// This instance's place among the instances on one PostgreSQL. Refuses
/// to join live instances that run another program version, unless told.
async fn join_cluster(
    store: PgStore,
    config: &ServerConfig,
    boot: &str,
) -> anyhow::Result<crate::cluster::Cluster> {
    let url = config
        .advertise
        .clone()
        .unwrap_or_else(|| format!("http://{}", config.listen));
    let ttl = Duration::from_millis(config.lease_ttl_ms);
    let cluster = crate::cluster::Cluster::new(
        store.clone(),
        url.clone(),
        boot,
        config
            .database_url
            .as_ref()
            .map(|s| s.0.clone())
            .unwrap_or_default(),
        ttl,
        Duration::from_secs(config.failover_wait_secs),
    );
    let live = store
        .members(crate::cluster::lease::live_within_ms(&cluster))
        .await
        .context("reading the cluster's members")?;
    let mine = env!("CARGO_PKG_VERSION");
    let skewed: Vec<String> = live
        .iter()
        .filter(|m| m.version != mine && m.url != url)
        .map(|m| format!("{} runs {}", m.url, m.version))
        .collect();
    if !skewed.is_empty() {
        if config.allow_version_skew {
            tracing::warn!(others = ?skewed, mine, "joining instances of another version (--allow-version-skew)");
        } else {
            anyhow::bail!(
                "refusing to join the cluster: this is tidemark {mine} but {}; run the same version on every instance (upgrade one at a time with --allow-version-skew only if the versions are compatible)",
                skewed.join(", ")
            );
        }
    }
    if let Some(other) = live.iter().find(|m| m.url == url) {
        // A predecessor that died beats no more; a live instance beats at
        // least every 1.5 s (three ticks). Two live instances under one URL
        // would send every write to whichever holds the lease's name.
        tracing::info!(url = %url, previous = %other.id, "an instance with this URL was live recently; checking that it is gone");
        let wait = Duration::from_secs(3);
        tokio::time::sleep(wait).await;
        let now = store
            .members(crate::cluster::lease::live_within_ms(&cluster))
            .await
            .context("reading the cluster's members")?;
        if let Some(alive) = now.iter().find(|m| {
            m.url == url && m.id == other.id && m.heartbeat_age_ms < wait.as_millis() as i64
        }) {
            anyhow::bail!(
                "refusing to join the cluster: a live instance (started {}) already advertises {url}; give this one its own --advertise URL (or --listen address), or stop that one first",
                alive.started_at
            );
        }
        tracing::info!(url = %url, previous = %other.id, "taking the place of an instance with this URL that is gone");
    }
    Ok(cluster)
}

/// Refuses data restored from an online backup that still needs cleanup
/// (B6), then records this process in the store, so an online backup
/// carries it.
async fn record_process(
    store: &dyn Store,
    config: &ServerConfig,
    boot: &str,
) -> anyhow::Result<()> {
    if store.needs_cleanup().await? {
        if config.store == StoreKind::Postgres {
            let schema = &config.pg_schema;
            anyhow::bail!(
                "PostgreSQL schema '{schema}' holds process information restored from an online backup; run 'tidemark cleanup --store postgres --database-url URL --pg-schema {schema}' first"
            );
        }
        let dir = config.data_dir.display();
        anyhow::bail!(
            "data directory {dir} holds process information restored from an online backup; run 'tidemark cleanup --data-dir {dir}' first"
        );
    }
    store
        .record_process(&ProcessInfo {
            pid: std::process::id(),
            boot: boot.to_owned(),
            started_at: chrono::Utc::now().to_rfc3339(),
            listen: config.listen.clone(),
        })
        .await
        .context("recording the process information")?;
    Ok(())
}

/// Ticks between sweeps for idle subscribers: every 30 s, or twice per
/// `forget_idle_secs` where that is shorter, so none is kept much past it.
fn sweep_every(forget_idle_secs: u64) -> u64 {
    (forget_idle_secs / 2).clamp(1, 30)
}

/// Keeps the change log bounded, forgets the interest of subscribers gone
/// for `forget_idle_subscriber_secs`, moves `recovered` back to `normal`, and,
/// once the OpS asked to complete, settles flags whose orders were applied
/// to another key (`Recovery::maybe_finish`) once a second.
async fn prune_worker(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if n.is_multiple_of(2) {
            if let Ok(m) = state.store.recovery_meta().await {
                let now = chrono::Utc::now().timestamp_millis();
                state.progress.sample(m.state, m.remaining, now);
            }
        }
        if n.is_multiple_of(sweep_every(state.config.forget_idle_subscriber_secs)) {
            // Every instance holds the interest of the streams it serves.
            let forgotten = state.hub.forget_idle(Duration::from_secs(
                state.config.forget_idle_subscriber_secs,
            ));
            state.metrics.subscribers_forgotten.add(forgotten as u64);
        }
        if state.cluster.as_ref().is_some_and(|c| !c.is_primary()) {
            // The primary's job.
            n += 1;
            continue;
        }
        if let Err(e) = state
            .recovery
            .settle(Duration::from_secs(state.config.recovered_hold_secs))
            .await
        {
            tracing::warn!(error = %e, "recovery state update failed; will retry");
        }
        if state.recovery.completion_requested() {
            if let Err(e) = state.recovery.maybe_finish().await {
                tracing::warn!(error = %e, "recovery state check failed; will retry");
            }
            state.recovery.announce_settled(&state.hub).await;
        }
        n += 1;
        if !n.is_multiple_of(30) {
            continue;
        }
        match state
            .store
            .prune_changes(state.config.change_log_keep)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::debug!(pruned = n, "change log pruned"),
            Err(e) => tracing::warn!(error = %e, "change-log pruning failed; will retry"),
        }
    }
}
