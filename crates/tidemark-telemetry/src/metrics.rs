//! A small metrics registry rendered in the Prometheus text format.
//!
//! Hot paths only touch atomics; rendering takes a read lock on the list of
//! metrics, which changes only at start-up and when new label sets appear.

use parking_lot::RwLock;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn add(&self, v: i64) {
        self.0.fetch_add(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Latency buckets in seconds, from 50µs to 10s.
const BUCKETS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];

/// A histogram of seconds with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; 16],
    count: AtomicU64,
    /// Sum in nanoseconds.
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

enum Metric {
    Counter(Arc<Counter>),
    Gauge(Arc<Gauge>),
    Histogram(Arc<Histogram>),
}

struct Entry {
    name: String,
    help: String,
    labels: String,
    metric: Metric,
}

/// The metrics of one process.
#[derive(Default, Clone)]
pub struct Registry {
    entries: Arc<RwLock<Vec<Entry>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("metrics", &self.entries.read().len())
            .finish()
    }
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a counter. `labels` is `key="value",...` or empty.
    pub fn counter(&self, name: &str, help: &str, labels: &str) -> Arc<Counter> {
        let c = Arc::new(Counter::default());
        self.push(name, help, labels, Metric::Counter(c.clone()));
        c
    }

    pub fn gauge(&self, name: &str, help: &str, labels: &str) -> Arc<Gauge> {
        let g = Arc::new(Gauge::default());
        self.push(name, help, labels, Metric::Gauge(g.clone()));
        g
    }

    pub fn histogram(&self, name: &str, help: &str, labels: &str) -> Arc<Histogram> {
        let h = Arc::new(Histogram::default());
        self.push(name, help, labels, Metric::Histogram(h.clone()));
        h
    }

    fn push(&self, name: &str, help: &str, labels: &str, metric: Metric) {
        self.entries.write().push(Entry {
            name: name.into(),
            help: help.into(),
            labels: labels.into(),
            metric,
        });
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let entries = self.entries.read();
        let mut out = String::new();
        let mut last_name = "";
        for e in entries.iter() {
            let kind = match e.metric {
                Metric::Counter(_) => "counter",
                Metric::Gauge(_) => "gauge",
                Metric::Histogram(_) => "histogram",
            };
            if e.name != last_name {
                let _ = writeln!(
                    out,
                    "# HELP {} {}\n# TYPE {} {}",
                    e.name, e.help, e.name, kind
                );
                last_name = &e.name;
            }
            let lb = |extra: &str| -> String {
                match (e.labels.is_empty(), extra.is_empty()) {
                    (true, true) => String::new(),
                    (true, false) => format!("{{{extra}}}"),
                    (false, true) => format!("{{{}}}", e.labels),
                    (false, false) => format!("{{{},{extra}}}", e.labels),
                }
            };
            match &e.metric {
                Metric::Counter(c) => {
                    let _ = writeln!(out, "{}{} {}", e.name, lb(""), c.get());
                }
                Metric::Gauge(g) => {
                    let _ = writeln!(out, "{}{} {}", e.name, lb(""), g.get());
                }
                Metric::Histogram(h) => {
                    let mut cumulative = 0;
                    for (i, b) in BUCKETS.iter().enumerate() {
                        cumulative += h.buckets[i].load(Ordering::Relaxed);
                        let _ = writeln!(
                            out,
                            "{}_bucket{} {}",
                            e.name,
                            lb(&format!("le=\"{b}\"")),
                            cumulative
                        );
                    }
                    let count = h.count();
                    let _ = writeln!(out, "{}_bucket{} {}", e.name, lb("le=\"+Inf\""), count);
                    let _ = writeln!(
                        out,
                        "{}_sum{} {}",
                        e.name,
                        lb(""),
                        h.sum_ns.load(Ordering::Relaxed) as f64 / 1e9
                    );
                    let _ = writeln!(out, "{}_count{} {}", e.name, lb(""), count);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn renders_counters_and_histograms() {
        let r = Registry::new();
        let c = r.counter("tm_requests_total", "Requests.", "route=\"get\"");
        c.add(3);
        let h = r.histogram("tm_latency_seconds", "Latency.", "");
        h.observe(Duration::from_micros(70));
        h.observe(Duration::from_millis(3));
        let text = r.render();
        assert!(
            text.contains("tm_requests_total{route=\"get\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("tm_latency_seconds_bucket{le=\"0.0001\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tm_latency_seconds_bucket{le=\"0.005\"} 2"),
            "{text}"
        );
        assert!(text.contains("tm_latency_seconds_count 2"), "{text}");
    }
}
