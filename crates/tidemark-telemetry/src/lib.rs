//! Logging and metrics shared by every Tidemark role.
//!
//! # Layout
//! - [`logging`]: `tracing-subscriber` set-up with `EnvFilter`, plain or JSON.
//! - [`metrics`]: lock-free counters, gauges and histograms rendered in the
//!   Prometheus text format at `/metrics`.

pub mod logging;
pub mod metrics;

pub use logging::{init_logging, LogFormat};
pub use metrics::{Counter, Gauge, Histogram, Registry};
