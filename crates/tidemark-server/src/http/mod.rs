//! The HTTP API of the DB server, one module per group of endpoints.

pub mod backup;
pub mod cluster;
pub mod confirm;
pub mod console;
pub mod error;
pub mod guard;
pub mod hot;
pub mod openapi;
pub mod orders;
pub mod probes;
pub mod quiesce;
pub mod records;
pub mod recovery;
pub mod schema;
pub mod services;
pub mod tokens;
pub mod watch;

pub use crate::state::AppState;
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;

/// The router of every endpoint.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/v1/records/{table}/{key}", get(records::get_record))
        .route("/v1/records/{table}/", get(records::empty_key))
        .route("/v1/orders", post(orders::post_orders))
        .route("/v1/watch", get(watch::watch))
        .route("/v1/watch/interest", post(cluster::declare))
        .route("/v1/cluster/promote", post(cluster::promote))
        .route("/v1/cluster/handover", post(cluster::handover))
        .route("/v1/state", get(probes::state))
        .route("/v1/recovery", get(recovery::status))
        .route("/v1/recovery/schedule", post(recovery::schedule))
        .route("/v1/recovery/complete", post(recovery::complete))
        .route("/v1/recovery/flags", get(recovery::flags))
        .route("/v1/recovery/abort", post(recovery::abort))
        .route("/v1/sources", get(probes::sources))
        .route("/v1/schema", get(probes::schema))
        .route("/v1/schema/versions", get(schema::versions))
        .route(
            "/v1/schema/pending",
            get(schema::get_pending)
                .put(schema::put_pending)
                .delete(schema::delete_pending),
        )
        .route("/v1/schema/plan", get(schema::plan))
        .route(
            "/v1/schema/publish",
            get(schema::status).post(schema::publish),
        )
        .route("/v1/schema/rollback", post(schema::rollback))
        .route("/v1/schema/ack", post(schema::ack))
        .route("/v1/services/report", post(services::report))
        .route("/v1/services", get(services::list))
        .route(
            "/v1/services/{name}/quiesce",
            post(quiesce::announce_service).delete(quiesce::cancel_service),
        )
        .route("/v1/backup", post(backup::snapshot))
        .route("/v1/backup/config", get(backup::config))
        .route(
            "/v1/quiesce",
            post(quiesce::announce).delete(quiesce::cancel),
        )
        .route("/healthz", get(probes::healthz))
        .route("/readyz", get(probes::readyz))
        .route("/metrics", get(probes::metrics))
        .route("/openapi.json", get(openapi::openapi))
        .route("/v1/tokens", post(tokens::create).get(tokens::list))
        .route("/v1/tokens/{name}", axum::routing::delete(tokens::revoke))
        .route("/v1/audit", get(tokens::audit))
        .route("/console", get(console::page))
        .route("/console.js", get(console::script))
        .route("/", get(console::to_console))
        .route("/console/", get(console::to_console))
        .route("/v1/console/events", get(console::events))
        .route("/v1/whoami", get(console::whoami))
        // Inside the guard: a write is forwarded only once its caller is known.
        // Both wrap the routes only: a path no route has is `404` to
        // anyone (it reveals nothing `/openapi.json` does not), not a
        // refusal that names the admin role.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::cluster::forward::forward,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::guard,
        ))
        .fallback(error::not_found)
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(move |req, next| {
            error::refuse_declared_oversize(limit, req, next)
        }))
        .layer(axum::middleware::from_fn(tidemark_serve::json_errors))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_errors,
        ))
        .with_state(state)
}

/// Counts every answer with an error status (`tidemark_http_errors_total`),
/// and the server-side ones apart (`tidemark_http_server_errors_total`).
async fn count_errors(
    axum::extract::State(app): axum::extract::State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let resp = next.run(req).await;
    if resp.status().as_u16() >= 400 {
        app.metrics.errors.inc();
    }
    if resp.status().is_server_error() {
        app.metrics.server_errors.inc();
    }
    resp
}
