//! `POST /v1/orders` (P3, P10): validated, atomic, idempotent, durable.

use super::error::HttpError;
use super::AppState;
use crate::cluster::vouch::Covers;
use crate::committer::SubmitError;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::Json;
use std::sync::Arc;
use std::time::Instant;
use tidemark_api::{ErrorCode, OrdersRequest, OrdersResponse};

/// Applies a batch of orders, then pushes the changes to the holders.
#[tracing::instrument(skip_all, fields(orders))]
pub async fn post_orders(
    State(app): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<OrdersResponse>, HttpError> {
    let started = Instant::now();
    let result = match body {
        Ok(body) => apply(&app, body).await,
        Err(rejection) if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
            Err(HttpError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the request body is larger than {} bytes; send fewer orders per batch",
                    app.config.max_body_bytes
                ),
            ))
        }
        Err(rejection) => Err(HttpError::new(
            ErrorCode::BadRequest,
            format!("cannot read the request body: {rejection}"),
        )),
    };
    match &result {
        Ok(_) => app.metrics.order_latency.observe(started.elapsed()),
        Err(e) => {
            app.metrics.orders_refused.inc();
            // Debug-quoted: the message names client-given tables and
            // columns, which must not forge log lines.
            tracing::info!(code = e.error.code.as_str(), reason = ?e.error.message, "order batch refused");
        }
    }
    result.map(Json)
}

async fn apply(app: &AppState, body: Bytes) -> Result<OrdersResponse, HttpError> {
    let req: OrdersRequest = serde_json::from_slice(&body).map_err(|e| {
        HttpError::new(
            ErrorCode::BadJson,
            format!(
                "the body is not a valid order batch: {e}; send {{\"orders\": [{{\"source\", \"seq\", \"table\", \"key\", \"op\", \"fields\"}}]}}"
            ),
        )
    })?;
    tracing::Span::current().record("orders", req.orders.len());
    if req.orders.len() > app.config.max_batch_orders {
        return Err(HttpError::new(
            ErrorCode::BatchTooLarge,
            format!(
                "the batch holds {} orders, at most {} are accepted; split it into smaller batches",
                req.orders.len(),
                app.config.max_batch_orders
            ),
        ));
    }
    if !app.ready.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(HttpError::new(
            ErrorCode::NotReady,
            "the server is shutting down; resubmit to the restarted server",
        )
        .retry_after(1));
    }
    if app.quiesce.offline() {
        return Err(super::quiesce::offline_error());
    }
    // The committer has applied, cache-invalidated and published the batch.
    let outcome = app
        .committer
        .submit(req.orders)
        .await
        .map_err(|e| match e {
            // An order naming a column that is only staged says so.
            SubmitError::Store(e) => match app.schema.explain(e, app.store.schema().version) {
                Ok(refusal) => HttpError::from(refusal),
                Err(e) => HttpError::from(e),
            },
            SubmitError::Stopped(s) => {
                HttpError::new(ErrorCode::NotReady, s.to_string()).retry_after(1)
            }
        })?;
    let applied = outcome.changes.len() as u64;
    let cleared = outcome.changes.iter().any(|c| c.cleared_flag);
    let duplicates = outcome.results.len() as u64 - applied;
    if let Some(last) = outcome.changes.last() {
        app.metrics.seq.set(last.version.seq as i64);
    }
    // (A flag of another key that an applied order settles is dropped by
    // the maintenance tick, once a second: `Recovery::maybe_finish`.)
    if cleared {
        if let Err(e) = app.recovery.after_clear().await {
            tracing::warn!(error = %e, "could not update the recovery state after clearing flags; it will be retried");
        }
        app.recovery.announce_settled(&app.hub).await;
    }
    app.metrics.order_batches.inc();
    app.metrics.orders_applied.add(applied);
    app.metrics.orders_duplicate.add(duplicates);
    // A duplicate too (its first answer may have been this wait's 503):
    // up to everything published here so far.
    let seq = outcome
        .changes
        .last()
        .map_or_else(|| app.hub.watermark(), |c| c.version.seq);
    // Pushed already: a replay's thousands are freed after the answer.
    let changes = outcome.changes.len();
    tidemark_store::dropper::drop_later(outcome.changes, changes);
    super::confirm::standbys_confirmed(app, Covers::Log(seq)).await?;
    Ok(OrdersResponse {
        results: outcome.results,
    })
}
