//! Who may call what: the role each endpoint needs, checked before any
//! handler runs (CONTRACT.md, Authentication).

use super::error::HttpError;
use super::AppState;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::sync::Arc;
use tidemark_api::auth::AccessRole;
use tidemark_api::ErrorCode;

/// Who made a request: a token's name, or `loopback` in protected mode.
#[derive(Debug, Clone)]
pub struct Caller(pub String);

/// The role an endpoint needs; `None` for the probes.
pub fn required_role(method: &Method, path: &str) -> Option<AccessRole> {
    let get = method == Method::GET || method == Method::HEAD;
    match path {
        "/healthz" | "/readyz" | "/metrics" | "/openapi.json" => None,
        // The console page holds no data; its feed needs a reader.
        "/console" if get => None,
        "/v1/watch"
        | "/v1/state"
        | "/v1/sources"
        | "/v1/schema"
        | "/v1/recovery"
        | "/v1/recovery/flags"
        | "/v1/console/events"
        | "/v1/schema/versions"
        | "/v1/schema/pending"
        | "/v1/schema/plan"
        | "/v1/schema/publish"
        | "/v1/services"
            if get =>
        {
            Some(AccessRole::Reader)
        }
        p if get && p.starts_with("/v1/records/") => Some(AccessRole::Reader),
        // A service server's own interest, like its watch stream.
        "/v1/watch/interest" if method == Method::POST => Some(AccessRole::Reader),
        // A service server reports the schema version it runs.
        "/v1/schema/ack" if method == Method::POST => Some(AccessRole::Reader),
        // And how it runs (policy, cache size), for the console.
        "/v1/services/report" if method == Method::POST => Some(AccessRole::Reader),
        "/v1/orders" | "/v1/recovery/schedule" | "/v1/recovery/complete"
            if method == Method::POST =>
        {
            Some(AccessRole::Ops)
        }
        _ => Some(AccessRole::Admin),
    }
}

/// The middleware.
pub async fn guard(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(need) = required_role(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    let bearer = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned());
    if !app.auth.any() {
        // Protected mode: no token exists yet.
        if peer.ip().is_loopback() {
            req.extensions_mut().insert(Caller("loopback".into()));
            return next.run(req).await;
        }
        return HttpError::new(
            ErrorCode::Unauthenticated,
            "this server has no token yet, so it serves loopback clients only; create one from the server's host: 'tidemark token create --server http://127.0.0.1:PORT --role admin --name NAME'",
        )
        .into_response();
    }
    let Some(token) = bearer else {
        return HttpError::new(
            ErrorCode::Unauthenticated,
            format!(
                "this needs a token with role '{}' or higher: send 'Authorization: Bearer TOKEN' (the tidemark commands take --token or TIDEMARK_TOKEN)",
                need.as_str()
            ),
        )
        .into_response();
    };
    match app.auth.check(&token) {
        None => HttpError::new(
            ErrorCode::Unauthenticated,
            "the token is unknown or was revoked; ask an admin for a new one ('tidemark token create')",
        )
        .into_response(),
        Some((name, role)) if role >= need => {
            req.extensions_mut().insert(Caller(name));
            next.run(req).await
        }
        Some((name, role)) => HttpError::new(
            ErrorCode::Forbidden,
            format!(
                "this needs a token with role '{}' or higher; token '{name}' has role '{}'",
                need.as_str(),
                role.as_str()
            ),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_needs_the_role_the_contract_names() {
        use AccessRole::*;
        let cases = [
            (Method::GET, "/healthz", None),
            (Method::GET, "/readyz", None),
            (Method::GET, "/metrics", None),
            (Method::GET, "/openapi.json", None),
            (Method::GET, "/v1/records/subscriber/k", Some(Reader)),
            (Method::GET, "/v1/watch", Some(Reader)),
            (Method::GET, "/v1/state", Some(Reader)),
            (Method::GET, "/v1/recovery", Some(Reader)),
            (Method::POST, "/v1/orders", Some(Ops)),
            (Method::POST, "/v1/recovery/schedule", Some(Ops)),
            (Method::POST, "/v1/recovery/complete", Some(Ops)),
            (Method::POST, "/v1/recovery/abort", Some(Admin)),
            (Method::POST, "/v1/backup", Some(Admin)),
            (Method::GET, "/v1/backup/config", Some(Admin)),
            (Method::POST, "/v1/quiesce", Some(Admin)),
            (Method::DELETE, "/v1/quiesce", Some(Admin)),
            (Method::POST, "/v1/tokens", Some(Admin)),
            (Method::GET, "/v1/tokens", Some(Admin)),
            (Method::GET, "/v1/audit", Some(Admin)),
            (Method::POST, "/v1/records/subscriber/k", Some(Admin)),
            (Method::GET, "/v1/schema", Some(Reader)),
            (Method::GET, "/v1/schema/versions", Some(Reader)),
            (Method::GET, "/v1/schema/pending", Some(Reader)),
            (Method::GET, "/v1/schema/plan", Some(Reader)),
            (Method::GET, "/v1/schema/publish", Some(Reader)),
            (Method::POST, "/v1/schema/ack", Some(Reader)),
            (Method::POST, "/v1/services/report", Some(Reader)),
            (Method::GET, "/v1/services", Some(Reader)),
            (Method::PUT, "/v1/schema/pending", Some(Admin)),
            (Method::DELETE, "/v1/schema/pending", Some(Admin)),
            (Method::POST, "/v1/schema/publish", Some(Admin)),
            (Method::POST, "/v1/schema/rollback", Some(Admin)),
        ];
        for (m, p, want) in cases {
            assert_eq!(required_role(&m, p), want, "{m} {p}");
        }
    }
}
