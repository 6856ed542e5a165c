//! The service server's configuration.

use crate::Policy;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Settings of `tidemark service` (TOML section `[service]`, environment
/// `TIDEMARK_SERVICE__*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceConfig {
    /// Address to listen on.
    pub listen: String,
    /// URL of the DB server.
    pub db: String,
    /// This service server's name; the DB server pushes to it by this name.
    pub id: String,
    /// `latest-only` or `accept-stale`.
    pub policy: Policy,
    /// Most records held in the cache.
    pub cache_capacity: usize,
    /// How long a `latest-only` read waits for current data before it
    /// answers 503, in milliseconds.
    pub latest_deadline_ms: u64,
    /// How late the DB server's leases may arrive, in milliseconds, judged
    /// by round trips to it, for the cache to be served as current: over
    /// it, `latest-only` reads ask the DB server. Over a link steadily this
    /// slow the cache may serve a record up to about this much behind (a
    /// push still on its way); while the link stalls, up to 1 s, or this
    /// plus 0.6 s where that is longer (a lease vouches that long).
    pub max_push_lag_ms: u64,
    /// First retry delay of a waiting read, in milliseconds (doubles, with jitter).
    pub retry_initial_ms: u64,
    /// Longest retry delay, in milliseconds.
    pub retry_max_ms: u64,
    /// While the watch stream is open, a read waiting for a flagged key is
    /// woken by the key's `recovered` push (or an `epoch` event), so it asks
    /// the DB server again only this rarely, as a safety net, in milliseconds.
    pub recovering_poll_ms: u64,
    /// If set, the cache and the watch position are saved here, so a
    /// restarted service server resumes with `Last-Event-ID`.
    pub cache_dir: Option<PathBuf>,
    /// Seconds between cache snapshots (with `cache_dir`).
    pub snapshot_interval_secs: u64,
    /// Seconds that in-flight requests get to finish after a shutdown signal.
    pub shutdown_grace_secs: u64,
    /// Run even on a DB-server schema this build cannot understand (S10):
    /// records are served as the DB server sends them. Off: such a server
    /// refuses to start, or refuses reads with `503 schema_skew`.
    pub ignore_schema_skew: bool,
    /// PEM certificate chain: with `tls_key`, the service server serves https.
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<std::path::PathBuf>,
    /// With https: serve only terminals with a certificate signed by this
    /// CA (PEM).
    pub tls_client_ca: Option<std::path::PathBuf>,
    /// Connections served at once; one more is answered
    /// `503 too_many_connections`.
    pub max_connections: usize,
    /// Seconds for a TLS handshake and for each request's headers (and
    /// for an idle keep-alive connection) before the connection is closed.
    pub header_timeout_secs: u64,
    /// Seconds for a whole request body, from its headers, before the
    /// request is answered `408 request_timeout`.
    pub body_timeout_secs: u64,
}

impl ServiceConfig {
    /// What the front door holds every connection to.
    pub fn front_door(&self) -> tidemark_serve::Settings {
        tidemark_serve::Settings {
            max_connections: self.max_connections,
            header_timeout: std::time::Duration::from_secs(self.header_timeout_secs),
            body_timeout: std::time::Duration::from_secs(self.body_timeout_secs),
            fast_path: tidemark_serve::fast_path_from_env(),
        }
    }
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7080".into(),
            db: "http://127.0.0.1:7070".into(),
            id: String::new(),
            policy: Policy::LatestOnly,
            cache_capacity: 1_000_000,
            latest_deadline_ms: 5_000,
            max_push_lag_ms: 100,
            retry_initial_ms: 20,
            retry_max_ms: 1_000,
            recovering_poll_ms: 10_000,
            cache_dir: None,
            snapshot_interval_secs: 1,
            shutdown_grace_secs: 10,
            ignore_schema_skew: false,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            max_connections: 4096,
            header_timeout_secs: 10,
            body_timeout_secs: 30,
        }
    }
}
