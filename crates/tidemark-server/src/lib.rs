//! The Tidemark DB server: owns the records, the change log and the
//! recovery flags, answers reads, applies orders and pushes every change to
//! the service servers that hold the key (P1, P3).
//!
//! # Layout
//! - [`auth`]: tokens with roles (stored hashed), protected mode.
//! - [`audit`]: the audit trail of admin actions.
//! - [`cluster`]: several instances on one PostgreSQL: the lease and roles, the standby's change-log tail, write forwarding.
//! - [`committer`]: group commit of concurrent order batches, in commit order.
//! - [`config`]: [`ServerConfig`], every setting with its default.
//! - [`server`]: [`Server`]: opens the store, builds the router, runs until shutdown.
//! - [`state`]: [`state::AppState`], everything handlers and workers share (no HTTP in it).
//! - [`history`]: the store's history id, new with every store and restore (told in `hello`).
//! - [`hub`]: who holds which key, and the ordered fan-out of committed changes.
//! - [`limits`]: open streams per caller.
//! - [`metrics`]: the server's Prometheus metrics.
//! - [`progress`]: remaining flags over time since the recovery started (the console's chart).
//! - [`quiesce`]: the quiesce notice (S4): announce, cancel, go offline.
//! - [`read`]: the read rule: interest first, then cache or store, flag or blanket.
//! - [`read_cache`]: serialised answers in front of the store (normal state only).
//! - [`recovery`]: the recovery state machine, flags and the blanket window (P5–P10).
//! - [`schema_publish`]: the staged schema, the plan, and the publish job kept in the store (S1, S9); [`schema_publish::resume_publish`].
//! - [`services`]: the service servers heard from (policy, cache size), for the console.
//! - [`service_quiesce`]: quiesce notices for service servers by name, sent down their watch streams (S8).
//! - [`watch`]: one subscriber's push stream: resume, replay, `synced`, live pushes.
//! - [`http`]: one module per group of endpoints, and the one error shape; served through `tidemark_serve` (TLS, connection limit, header and body deadlines).

#![recursion_limit = "256"]

pub mod audit;
pub mod auth;
pub mod backup_config;
pub mod boots;
pub mod cluster;
pub mod committer;
pub mod config;
pub mod history;
pub mod http;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod progress;
pub mod quiesce;
pub mod read;
pub mod read_cache;
pub mod recovery;
pub mod resume_floor;
pub mod schema_publish;
pub mod server;
pub mod service_quiesce;
pub mod services;
pub mod state;
pub mod watch;

#[cfg(test)]
mod testutil;

pub use config::{ServerConfig, StoreKind};
pub use server::Server;
