//! The DB server's metrics.

use std::sync::Arc;
use tidemark_telemetry::{Counter, Gauge, Histogram, Registry};

/// Every metric the DB server exports at `/metrics`.
#[derive(Debug, Clone)]
pub struct ServerMetrics {
    pub registry: Registry,
    pub reads: Arc<Counter>,
    pub reads_recovering: Arc<Counter>,
    pub read_cache_hits: Arc<Counter>,
    pub read_latency: Arc<Histogram>,
    pub order_batches: Arc<Counter>,
    pub orders_applied: Arc<Counter>,
    pub orders_duplicate: Arc<Counter>,
    pub orders_refused: Arc<Counter>,
    pub order_latency: Arc<Histogram>,
    pub pushes: Arc<Counter>,
    pub watchers: Arc<Gauge>,
    pub subscriber_names: Arc<Gauge>,
    pub subscribers_forgotten: Arc<Counter>,
    pub errors: Arc<Counter>,
    /// The 5xx among them: what to alert on (a 4xx, a missing record
    /// included, is the caller's).
    pub server_errors: Arc<Counter>,
    pub seq: Arc<Gauge>,
    pub epoch: Arc<Gauge>,
    pub recovery_state: Arc<Gauge>,
    pub recovery_flagged: Arc<Gauge>,
    pub recovery_remaining: Arc<Gauge>,
    /// When the gauges read from the store were last refreshed: at most
    /// once a second, however often `/metrics` (which needs no token) is
    /// asked.
    pub store_gauges_at: Arc<parking_lot::Mutex<Option<std::time::Instant>>>,
}

impl ServerMetrics {
    pub fn new() -> Self {
        let r = Registry::new();
        Self {
            reads: r.counter("tidemark_reads_total", "Record reads answered.", ""),
            reads_recovering: r.counter(
                "tidemark_reads_recovering_total",
                "Reads answered with the recovering identifier.",
                "",
            ),
            read_cache_hits: r.counter(
                "tidemark_read_cache_hits_total",
                "Reads answered from the DB server's read cache.",
                "",
            ),
            read_latency: r.histogram(
                "tidemark_read_seconds",
                "Record read latency inside the server.",
                "",
            ),
            order_batches: r.counter(
                "tidemark_order_batches_total",
                "Order batches committed.",
                "",
            ),
            orders_applied: r.counter("tidemark_orders_applied_total", "Orders applied.", ""),
            orders_duplicate: r.counter(
                "tidemark_orders_duplicate_total",
                "Orders acknowledged as already applied.",
                "",
            ),
            orders_refused: r.counter(
                "tidemark_order_batches_refused_total",
                "Order batches refused.",
                "",
            ),
            order_latency: r.histogram(
                "tidemark_order_batch_seconds",
                "Order batch latency, durable commit included.",
                "",
            ),
            pushes: r.counter(
                "tidemark_pushes_total",
                "Events pushed to watch streams.",
                "",
            ),
            watchers: r.gauge("tidemark_watchers", "Open watch streams.", ""),
            subscribers_forgotten: r.counter(
                "tidemark_subscribers_forgotten_total",
                "Subscribers whose interest was dropped after forget_idle_subscriber_secs without a watch stream.",
                "",
            ),
            subscriber_names: r.gauge(
                "tidemark_subscriber_names",
                "Subscriber (service server) names known since start; a growing count means new --id names keep arriving.",
                "",
            ),
            errors: r.counter(
                "tidemark_http_errors_total",
                "Requests answered with an error (4xx or 5xx; a record not found included).",
                "",
            ),
            server_errors: r.counter(
                "tidemark_http_server_errors_total",
                "Requests answered with a server-side error (5xx).",
                "",
            ),
            seq: r.gauge("tidemark_commit_seq", "Last committed change-log seq.", ""),
            epoch: r.gauge(
                "tidemark_epoch",
                "Current epoch (grows with every restore).",
                "",
            ),
            recovery_state: r.gauge(
                "tidemark_recovery_state",
                "Recovery state: 0 normal, 1 recovering, 2 recovered.",
                "",
            ),
            recovery_flagged: r.gauge(
                "tidemark_recovery_flagged",
                "Flags set since the recovery started.",
                "",
            ),
            recovery_remaining: r.gauge("tidemark_recovery_remaining", "Flags still set.", ""),
            store_gauges_at: Default::default(),
            registry: r,
        }
    }
}

impl Default for ServerMetrics {
    fn default() -> Self {
        Self::new()
    }
}
