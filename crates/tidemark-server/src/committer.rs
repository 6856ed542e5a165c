//! Group commit: one task applies the order batches that are waiting, all
//! in one durable transaction, then publishes their changes in commit order.
//!
//! Concurrent requests therefore share one fsync instead of queueing for one
//! each. Every batch stays all-or-nothing (a savepoint each, in the store).
//! On shutdown the task drains what was already accepted before it stops.

use crate::http::AppState;
use std::sync::Arc;
use tidemark_api::Order;
use tidemark_store::{ApplyOutcome, StoreError};
use tokio::sync::{mpsc, oneshot};

/// Most orders, and requests, committed together.
const MAX_ORDERS: usize = 20_000;
const MAX_JOBS: usize = 512;

/// One request's batch and where its result goes.
pub struct Job {
    pub orders: Vec<Order>,
    pub reply: oneshot::Sender<Result<ApplyOutcome, StoreError>>,
}

pub fn channel() -> (mpsc::Sender<Job>, mpsc::Receiver<Job>) {
    mpsc::channel(4096)
}

/// Runs until shutdown, then commits what is still queued.
pub async fn run(app: Arc<AppState>, mut rx: mpsc::Receiver<Job>) {
    loop {
        let first = tokio::select! {
            j = rx.recv() => j,
            _ = app.shutdown.cancelled() => None,
        };
        let Some(first) = first else { break };
        let mut total = first.orders.len();
        let mut jobs = vec![first];
        while total < MAX_ORDERS && jobs.len() < MAX_JOBS {
            match rx.try_recv() {
                Ok(j) => {
                    total += j.orders.len();
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        commit(&app, jobs).await;
    }
    rx.close();
    while let Some(j) = rx.recv().await {
        commit(&app, vec![j]).await;
    }
}

async fn commit(app: &AppState, mut jobs: Vec<Job>) {
    let batches = jobs
        .iter_mut()
        .map(|j| std::mem::take(&mut j.orders))
        .collect();
    let results = app.store.apply_group(batches).await;
    for (job, result) in jobs.into_iter().zip(results) {
        if let Ok(outcome) = &result {
            // After the commit, before anyone can be told of it.
            if let Some(cache) = &app.read_cache {
                for c in &outcome.changes {
                    cache.invalidate(&c.table, &c.key);
                }
            }
            app.hub.publish_changes(&outcome.changes);
        }
        let _ = job.reply.send(result);
    }
}
