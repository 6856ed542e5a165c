//! Tells the DB server, every few seconds, how this service server runs
//! (`POST /v1/services/report`: policy, cache size, schema version, its
//! own quiesce notice), for
//! the operator console. A failed report is retried at the next tick.

use crate::shared::Shared;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tidemark_api::state::ServiceReport;

const EVERY: Duration = Duration::from_secs(3);

pub async fn worker(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let report = ServiceReport {
            subscriber: shared.config.id.clone(),
            policy: shared.config.policy.as_str().to_owned(),
            cache_entries: shared.cache.len() as u64,
            schema_version: shared.schema_version.load(Ordering::SeqCst),
            quiesce: shared.own_quiesce.lock().sooner().map(|(n, _)| n.view()),
        };
        let sent: Result<serde_json::Value, _> = shared
            .client
            .post_json("/v1/services/report", &report)
            .await;
        if let Err(e) = sent {
            // An older DB server without the endpoint, or one unreachable:
            // the console simply does not list this server.
            tracing::debug!(error = %e, "could not report to the DB server");
        }
    }
}
