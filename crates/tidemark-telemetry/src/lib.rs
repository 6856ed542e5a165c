//! Logging and metrics shared by every Tidemark role.
//!
//! # Layout
//! - [`logging`]: `tracing-subscriber` set-up with `EnvFilter`, plain or JSON.
//! - [`say`]: what a command tells its operator outside the log (its
//!   failure, warnings, notes), in the log's format.
//! - [`every`]: log lines an outside caller can cause, said at most once
//!   per period with their count.
//! - [`metrics`]: lock-free counters, gauges and histograms rendered in the
//!   Prometheus text format at `/metrics`.

pub mod every;
pub mod logging;
pub mod metrics;
pub mod say;

pub use every::Every;
pub use logging::{init_logging, LogFormat};
pub use metrics::{Counter, Gauge, Histogram, Registry};
pub use say::{say, Said};
