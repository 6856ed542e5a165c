//! The DB server's configuration.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Which engine holds the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// Embedded SQLite in `data_dir` (the default).
    #[default]
    Sqlite,
    /// PostgreSQL at `database_url`.
    Postgres,
}

/// A value that never shows in `Debug` output or logs.
#[derive(Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

/// Settings of `tidemark server` (TOML section `[server]`, environment
/// `TIDEMARK_SERVER__*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: String,
    /// Data directory of the embedded engine; holds the LOCK file.
    pub data_dir: PathBuf,
    /// Storage engine.
    pub store: StoreKind,
    /// PostgreSQL connection URL, for `store = "postgres"`.
    pub database_url: Option<Secret>,
    /// PostgreSQL schema that holds Tidemark's tables, for `store = "postgres"`.
    pub pg_schema: String,
    /// PEM certificate chain: with `tls_key`, the server serves https.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// With https: serve only clients with a certificate signed by this CA
    /// (PEM), e.g. service servers and operators (mTLS).
    pub tls_client_ca: Option<PathBuf>,
    /// Connections served at once; one more is answered
    /// `503 too_many_connections`.
    pub max_connections: usize,
    /// Seconds for a TLS handshake and for each request's headers (and
    /// for an idle keep-alive connection) before the connection is closed.
    pub header_timeout_secs: u64,
    /// Seconds for a whole request body, from its headers, before the
    /// request is answered `408 request_timeout`.
    pub body_timeout_secs: u64,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Most orders accepted in one `POST /v1/orders`.
    pub max_batch_orders: usize,
    /// Change-log entries kept for watch resumption and idempotency checks.
    pub change_log_keep: u64,
    /// Seconds that in-flight requests get to finish after a shutdown signal.
    pub shutdown_grace_secs: u64,
    /// Capacity of the in-memory push queue per process; a watcher that
    /// falls further behind is served from the change log (and told of a
    /// skipped `epoch` event as one, so it revalidates).
    pub push_queue: usize,
    /// Seconds the state stays `recovered` before it returns to `normal`.
    pub recovered_hold_secs: u64,
    /// Record answers kept in memory in front of the store (0 turns the
    /// cache off). Used only while no recovery is in progress.
    pub read_cache_entries: usize,
    /// Bytes the read cache may hold at most (answers are evicted, least
    /// recently used first, to stay under it).
    pub read_cache_bytes: usize,
    /// How the other instances and clients reach this one, with the
    /// PostgreSQL engine (several instances form one cluster); defaults to
    /// the address it listens on.
    pub advertise: Option<String>,
    /// How long the primary's lease lasts without renewal, in ms: a dead
    /// primary is replaced about this long after it stopped renewing.
    pub lease_ttl_ms: u64,
    /// Seconds a write is held while no primary is online (a failover),
    /// before it is answered `503 no_primary`.
    pub failover_wait_secs: u64,
    /// Start even though other live instances run another program version
    /// (a rolling upgrade you have checked is compatible).
    pub allow_version_skew: bool,
    /// Watch streams one token (or, in protected mode, the loopback) may
    /// hold open at once.
    pub max_watch_per_token: usize,
    /// Watch subscriber names one token may claim (each service server
    /// uses one; its interest costs memory here). Past it a new name is
    /// refused `429 too_many_subscribers`; names are freed by revoking the
    /// token, so give service servers stable names (`--id`).
    pub max_subscribers_per_token: usize,
    /// Keys one service server may hold interest in here (about 150 bytes
    /// each): every key it read since its stream last started afresh, so
    /// more than it caches. One over it (a terminal reading random keys)
    /// loses all its interest and revalidates its cache. Keep it well over
    /// the service servers' cache capacity.
    pub max_interest_per_subscriber: usize,
    /// Seconds a subscriber may go without a watch stream before its
    /// interest is dropped (a service server that went away for good, or
    /// was replaced under a new `--id`, would hold it for ever). One that
    /// comes back later revalidates what it cached.
    pub forget_idle_subscriber_secs: u64,
    /// Backup snapshot streams served at once.
    pub max_backup_streams: usize,
    /// Seconds a backup stream may go unread before it is closed (its
    /// snapshot file is released).
    pub backup_stall_secs: u64,
    /// The `--config` file the server was started with, if any; online
    /// backups include its content. Not a setting: filled in by the program.
    #[serde(skip)]
    pub config_file: Option<PathBuf>,
}

impl ServerConfig {
    /// Loads the TLS files the settings name, as serving will: a start
    /// checks them before it announces anything, so a certificate that
    /// cannot be used never follows `listening on https://…`.
    pub fn check_tls(&self) -> anyhow::Result<()> {
        tidemark_serve::tls::configured(
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
            self.tls_client_ca.as_deref(),
        )
        .map(drop)
    }

    /// What the front door holds every connection to.
    pub fn front_door(&self) -> tidemark_serve::Settings {
        tidemark_serve::Settings {
            max_connections: self.max_connections,
            header_timeout: std::time::Duration::from_secs(self.header_timeout_secs),
            body_timeout: std::time::Duration::from_secs(self.body_timeout_secs),
            fast_path: tidemark_serve::fast_path_from_env(),
        }
    }

    /// The engine's name, as `--store` takes it.
    pub fn store_name(&self) -> &'static str {
        match self.store {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Postgres => "postgres",
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7070".into(),
            data_dir: PathBuf::from("./tidemark-data"),
            store: StoreKind::Sqlite,
            database_url: None,
            pg_schema: "tidemark".into(),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            max_connections: 1024,
            header_timeout_secs: 10,
            body_timeout_secs: 30,
            max_body_bytes: 16 * 1024 * 1024,
            max_batch_orders: 10_000,
            change_log_keep: 1_000_000,
            shutdown_grace_secs: 10,
            push_queue: 65_536,
            recovered_hold_secs: 300,
            read_cache_entries: 1_000_000,
            read_cache_bytes: 128 * 1024 * 1024,
            max_watch_per_token: 64,
            max_subscribers_per_token: 256,
            max_interest_per_subscriber: 4_000_000,
            forget_idle_subscriber_secs: 3600,
            max_backup_streams: 2,
            backup_stall_secs: 60,
            advertise: None,
            lease_ttl_ms: 1200,
            failover_wait_secs: 10,
            allow_version_skew: false,
            config_file: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_show_in_debug() {
        let c = ServerConfig {
            database_url: Some(Secret("postgres://u:hunter2@h/db".into())),
            ..Default::default()
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
