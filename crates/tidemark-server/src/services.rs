//! The service servers this instance has heard from: each reports its
//! policy, cache size, schema version and own quiesce notice every few
//! seconds (for the operator console). Kept in memory only; a report older than
//! [`FORGET_AFTER`] is dropped.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tidemark_api::state::{QuiesceNotice, ServiceInfo, ServiceReport};

/// Most service servers remembered (a bound on what reports may hold).
const MAX: usize = 10_000;
const FORGET_AFTER: Duration = Duration::from_secs(300);

#[derive(Debug, Default)]
pub struct Services {
    seen: Mutex<BTreeMap<String, (ServiceReport, Instant)>>,
}

impl Services {
    pub fn report(&self, r: ServiceReport) {
        let mut seen = self.seen.lock();
        seen.retain(|_, (_, at)| at.elapsed() < FORGET_AFTER);
        if seen.len() < MAX || seen.contains_key(&r.subscriber) {
            seen.insert(r.subscriber.clone(), (r, Instant::now()));
        }
    }

    /// Every service server heard from lately, by name; `connected` says
    /// whose watch stream is open here.
    pub fn list(&self, connected: impl Fn(&str) -> bool) -> Vec<ServiceInfo> {
        self.seen
            .lock()
            .iter()
            .filter(|(_, (_, at))| at.elapsed() < FORGET_AFTER)
            .map(|(name, (r, at))| ServiceInfo {
                name: name.clone(),
                policy: r.policy.clone(),
                cache_entries: r.cache_entries,
                schema_version: r.schema_version,
                connected: connected(name),
                report_age_ms: at.elapsed().as_millis() as u64,
                quiesce: r.quiesce.as_ref().map(|q| since(q, at.elapsed())),
            })
            .collect()
    }
}

/// A notice as reported `age` ago, counted down to now.
fn since(q: &QuiesceNotice, age: std::time::Duration) -> QuiesceNotice {
    QuiesceNotice::with_left(
        q.deadline.clone(),
        q.left().saturating_sub(age),
        q.message.clone(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_report_of_each_server_is_listed() {
        let s = Services::default();
        let r = |name: &str, n| ServiceReport {
            subscriber: name.into(),
            policy: "latest-only".into(),
            cache_entries: n,
            schema_version: 1,
            quiesce: None,
        };
        s.report(r("b", 1));
        s.report(r("a", 2));
        s.report(r("b", 3));
        let l = s.list(|n| n == "a");
        assert_eq!(
            l.iter()
                .map(|i| (i.name.as_str(), i.cache_entries, i.connected))
                .collect::<Vec<_>>(),
            [("a", 2, true), ("b", 3, false)]
        );
    }

    /// A reported notice is counted down by the report's age, to 0.
    #[test]
    fn a_reported_notice_is_counted_down_to_now() {
        let q = QuiesceNotice {
            deadline: "2026-12-06T12:00:00Z".into(),
            seconds_left: 10,
            ms_left: Some(9_500),
            message: "m".into(),
        };
        let later = since(&q, Duration::from_millis(4_000));
        assert_eq!((later.ms_left, later.seconds_left), (Some(5_500), 6));
        let past = since(&q, Duration::from_secs(60));
        assert_eq!((past.ms_left, past.seconds_left), (Some(0), 0));
        assert_eq!(past.message, "m");
    }
}
