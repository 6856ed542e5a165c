//! The Tidemark service server: answers terminal reads from a bounded cache,
//! fetches misses from the DB server, applies pushed changes by version, and
//! decides by its policy whether data flagged as recovering may be used
//! (P2, P9, P11). Usable as a library ([`Service`]) and as `tidemark service`.
//!
//! # Layout
//! - [`config`]: [`ServiceConfig`], every setting with its default.
//! - [`policy`]: `latest-only` / `accept-stale` and the per-request override.
//! - [`cache`]: the bounded, versioned cache; never replaces newer with older.
//! - [`watcher`]: keeps the watch stream open and applies pushed events.
//! - [`fetch`]: the miss path, and the wait of `latest-only` reads.
//! - [`snapshot`]: the optional on-disk cache snapshot for warm restarts.
//! - [`schema`]: adopting the DB server's schema without a restart; refusing one it cannot understand (S2, S10).
//! - [`round_trip`]: the DB server's clock against ours, timed by round
//!   trips, so a lease a slow link delivers late is seen as late.
//! - [`report`]: tells the DB server its policy, cache size and schema version (for the console).
//! - [`http`]: the terminal-facing HTTP API; `hot`: its cache hits, answered
//!   before the router by the same serving rule.
//! - [`metrics`]: the service server's Prometheus metrics.
//! - [`shared`]: [`shared::Shared`], the state handlers, reads and workers share.
//! - [`service`]: [`Service`]: wiring, `run(listener)`, shutdown.

pub mod cache;
pub mod config;
pub mod fetch;
mod hot;
pub mod http;
pub mod metrics;
pub mod policy;
pub mod quiesce;
pub mod report;
pub mod round_trip;
pub mod schema;
pub mod service;
pub mod shared;
pub mod snapshot;
pub mod watcher;

#[cfg(test)]
mod model_tests;

pub use config::ServiceConfig;
pub use policy::{Freshness, Policy};
pub use service::Service;
