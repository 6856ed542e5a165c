//! The service server's metrics.

use std::sync::Arc;
use tidemark_telemetry::{Counter, Gauge, Histogram, Registry};

/// Every metric the service server exports at `/metrics`.
#[derive(Debug, Clone)]
pub struct ServiceMetrics {
    pub registry: Registry,
    pub hits: Arc<Counter>,
    pub misses: Arc<Counter>,
    pub db_fetches: Arc<Counter>,
    pub waits: Arc<Counter>,
    pub stale_served: Arc<Counter>,
    pub deadline_503: Arc<Counter>,
    pub pushes: Arc<Counter>,
    pub reconnects: Arc<Counter>,
    pub epochs: Arc<Counter>,
    pub cache_entries: Arc<Gauge>,
    pub connected: Arc<Gauge>,
    pub lease_late_ms: Arc<Gauge>,
    pub round_trip_ms: Arc<Gauge>,
    pub read_latency: Arc<Histogram>,
}

impl ServiceMetrics {
    pub fn new() -> Self {
        let r = Registry::new();
        Self {
            hits: r.counter(
                "tidemark_service_cache_hits_total",
                "Reads answered from the cache.",
                "",
            ),
            misses: r.counter(
                "tidemark_service_cache_misses_total",
                "Reads that went to the DB server.",
                "",
            ),
            db_fetches: r.counter(
                "tidemark_service_db_fetches_total",
                "Requests made to the DB server for records.",
                "",
            ),
            waits: r.counter(
                "tidemark_service_waits_total",
                "Reads that waited for current data (latest-only).",
                "",
            ),
            stale_served: r.counter(
                "tidemark_service_recovering_served_total",
                "Reads answered with recovering data.",
                "",
            ),
            deadline_503: r.counter(
                "tidemark_service_deadline_total",
                "Reads that gave up waiting and answered 503.",
                "",
            ),
            pushes: r.counter(
                "tidemark_service_pushes_total",
                "Pushed events applied.",
                "",
            ),
            reconnects: r.counter(
                "tidemark_service_watch_reconnects_total",
                "Watch stream reconnects.",
                "",
            ),
            epochs: r.counter(
                "tidemark_service_epoch_events_total",
                "Epoch events (cache revalidations).",
                "",
            ),
            cache_entries: r.gauge(
                "tidemark_service_cache_entries",
                "Records in the cache.",
                "",
            ),
            connected: r.gauge(
                "tidemark_service_watch_connected",
                "1 while the watch stream is open.",
                "",
            ),
            lease_late_ms: r.gauge(
                "tidemark_service_lease_late_ms",
                "How late the DB server's last lease arrived, in ms (judged by round trips to it where it tells its clock); over max_push_lag_ms, the cache is not served as current.",
                "",
            ),
            round_trip_ms: r.gauge(
                "tidemark_service_db_round_trip_ms",
                "The last round trip timed to the DB server's /healthz, in ms.",
                "",
            ),
            read_latency: r.histogram(
                "tidemark_service_read_seconds",
                "Terminal read latency.",
                "",
            ),
            registry: r,
        }
    }
}

impl Default for ServiceMetrics {
    fn default() -> Self {
        Self::new()
    }
}
