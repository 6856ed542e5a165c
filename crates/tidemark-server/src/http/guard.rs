//! Who may call what: the role each endpoint needs, checked before any
//! handler runs (CONTRACT.md, Authentication).

use super::error::HttpError;
use super::AppState;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
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
        // Its script holds none either; `/` and `/console/` lead to it.
        "/console.js" | "/console/" | "/" if get => None,
        // Says only what the presented token is.
        "/v1/whoami" if get => None,
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

/// The bearer token a request presents.
/// `None` for two (the guard refuses those).
pub fn bearer(h: &HeaderMap) -> Option<&str> {
    let mut all = h.get_all(header::AUTHORIZATION).iter();
    let v = all.next()?.to_str().ok()?;
    if all.next().is_some() {
        return None;
    }
    // The scheme's name is case-insensitive (RFC 9110, 11.1).
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

pub use tidemark_serve::local::{foreign_browser, trusted_local, untrusted_local};

/// The middleware.
pub async fn guard(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let answer = check(app, peer, req, next).await;
    // A refusal of a method the path does not take says so (405), as the
    // router would to a caller it let through: the role was never the
    // problem. Only refusals are replaced, so nothing runs unchecked.
    let refused = matches!(
        answer.status(),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
    );
    match refused.then(|| methods_of(&path)).flatten() {
        Some(allowed)
            if !allowed
                .iter()
                .any(|m| *m == method || (method == Method::HEAD && *m == Method::GET)) =>
        {
            not_allowed(&method, &path, allowed)
        }
        _ => answer,
    }
}

/// The methods the documented path `path` takes (`/openapi.json`), if it
/// is one.
fn methods_of(path: &str) -> Option<&'static [Method]> {
    static TABLE: std::sync::OnceLock<Vec<(Vec<String>, Vec<Method>)>> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let doc = super::openapi::document();
        let paths = doc["paths"].as_object().cloned().unwrap_or_default();
        paths
            .iter()
            .map(|(template, ops)| {
                let segments = template.split('/').map(str::to_owned).collect();
                let methods = ops
                    .as_object()
                    .map(|o| {
                        o.keys()
                            .filter_map(|m| {
                                Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok()
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                (segments, methods)
            })
            .collect()
    });
    let parts: Vec<&str> = path.split('/').collect();
    table
        .iter()
        .find(|(segments, _)| {
            segments.len() == parts.len()
                && segments.iter().zip(&parts).all(|(s, p)| {
                    s == p || (s.starts_with('{') && s.ends_with('}') && !p.is_empty())
                })
        })
        .map(|(_, methods)| methods.as_slice())
}

/// `405 method_not_allowed`, with the `Allow` header.
fn not_allowed(method: &Method, path: &str, allowed: &[Method]) -> Response {
    let list: Vec<&str> = allowed.iter().map(Method::as_str).collect();
    let mut resp = HttpError::new(
        ErrorCode::MethodNotAllowed,
        format!(
            "{path} does not take {method}; it takes {}",
            list.join(", ")
        ),
    )
    .into_response();
    if let Ok(v) = axum::http::HeaderValue::from_str(&list.join(", ")) {
        resp.headers_mut().insert(axum::http::header::ALLOW, v);
    }
    resp
}

/// Request bodies one token may be sending at once, at most; a quarter of
/// `max_connections` where that is less (see [`bodies_per_token`]).
pub const MAX_BODIES_PER_TOKEN: usize = 256;

/// Request bodies one token may be sending at once on a server taking
/// `max_connections`: so one token never holds more than a quarter of the
/// connection slots with bodies.
pub fn bodies_per_token(max_connections: usize) -> usize {
    (max_connections / 4).clamp(1, MAX_BODIES_PER_TOKEN)
}

/// Reads the whole body of a request that has one, before the caller is
/// let through: a body may take up to the body deadline to arrive, and a
/// token revoked meanwhile (or protected mode ended by the first token)
/// must not act with it, so the caller is judged again once it is here.
///
/// A caller has at most [`bodies_per_token`] bodies arriving at once:
/// otherwise one token, a reader's, could hold every connection slot with
/// bodies sent slowly, and shut out every other caller for the body
/// deadline.
async fn read_body(app: &AppState, req: Request, caller: &str) -> Result<Request, Response> {
    use tidemark_serve::body::BodyError;
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(req);
    }
    let limit = app.config.max_body_bytes;
    let most = bodies_per_token(app.config.max_connections);
    let Some(_arriving) = app.bodies.take(caller, most) else {
        return Err(HttpError::new(
            ErrorCode::TooManyStreams,
            format!(
                "'{}' is already sending {most} request bodies (a quarter of max_connections, at most {MAX_BODIES_PER_TOKEN}); send each body at once, or fewer requests at a time",
                caller.escape_debug()
            ),
        )
        .retry_after(1)
        .into_response());
    };
    let (parts, body) = req.into_parts();
    match tidemark_serve::body::read_limited(body, limit).await {
        Ok(bytes) => Ok(Request::from_parts(parts, axum::body::Body::from(bytes))),
        // (A body cut by the body deadline is answered 408 around this.)
        Err(BodyError::TooLarge) => Err(HttpError::new(
            ErrorCode::PayloadTooLarge,
            format!("the request body is over this server's limit of {limit} bytes (max_body_bytes); send smaller batches"),
        )
        .into_response()),
        Err(BodyError::Unreadable(e)) => Err(HttpError::new(
            ErrorCode::BadRequest,
            format!("cannot read the request body ({e}); send the request again, whole"),
        )
        .into_response()),
    }
}

/// The guard's decision: the caller's role against what the endpoint needs.
async fn check(app: Arc<AppState>, peer: SocketAddr, req: Request, next: Next) -> Response {
    let Some(need) = required_role(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    if tidemark_serve::named_twice(req.headers(), header::AUTHORIZATION) {
        return HttpError::new(
            ErrorCode::BadRequest,
            "the request has two Authorization headers, so which token is meant cannot be told; send one",
        )
        .into_response();
    }
    let bearer = bearer(req.headers()).map(str::to_owned);
    let loopback = peer.ip().to_canonical().is_loopback();
    let token_create = req.method() == Method::POST && req.uri().path() == "/v1/tokens";
    // Trusted without a token: any request while no token exists
    // (protected mode), and, from this host, making tokens until an admin
    // token exists (the first token may have any role).
    let trusted = |auth: &crate::auth::Auth| {
        !auth.any() || (loopback && bearer.is_none() && token_create && !auth.any_admin())
    };
    if trusted(&app.auth) {
        let no_token = if app.auth.any() {
            "no admin token"
        } else {
            "no token"
        };
        if loopback {
            if let Some(why) = untrusted_local(req.uri(), req.headers()) {
                return HttpError::new(
                    ErrorCode::Forbidden,
                    format!(
                        "this server has {no_token} yet, so it trusts programs on its own host, but not {why}; open the console as http://127.0.0.1:PORT/console, or create a token ('tidemark token create') and use it"
                    ),
                )
                .into_response();
            }
            let mut req = match read_body(&app, req, crate::auth::LOOPBACK).await {
                Ok(req) => req,
                Err(refusal) => return refusal,
            };
            if !trusted(&app.auth) {
                // A token created while this body arrived ended the trust.
                return HttpError::new(
                    ErrorCode::Unauthenticated,
                    if token_create {
                        crate::auth::ADMIN_EXISTS
                    } else {
                        "the first token was created while this request was being sent, so this server now serves only callers with a token; nothing was done: send it again with a token"
                    },
                )
                .into_response();
            }
            req.extensions_mut()
                .insert(Caller(crate::auth::LOOPBACK.into()));
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
    let mut found = app.auth.check(&token);
    if found.is_none() && app.cluster.is_some() && app.auth.reload_for_unknown().await {
        // Created a moment ago through another instance, perhaps.
        found = app.auth.check(&token);
    }
    match found {
        None => HttpError::new(
            ErrorCode::Unauthenticated,
            "the token is unknown or was revoked; ask an admin for a new one ('tidemark token create')",
        )
        .into_response(),
        Some((name, role)) if role >= need => {
            let mut req = match read_body(&app, req, &name).await {
                Ok(req) => req,
                Err(refusal) => return refusal,
            };
            // Revoked (or lowered) while the body arrived: it must not act.
            if app.auth.check(&token).is_none_or(|(_, role)| role < need) {
                return HttpError::new(
                    ErrorCode::Unauthenticated,
                    format!("token '{name}' was revoked while this request was being sent; nothing was done"),
                )
                .into_response();
            }
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
    fn the_bearer_scheme_is_matched_in_any_case() {
        let with = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::AUTHORIZATION, v.parse().unwrap());
            bearer(&m).map(str::to_owned)
        };
        for v in ["Bearer tm_x", "bearer tm_x", "BEARER  tm_x"] {
            assert_eq!(with(v).as_deref(), Some("tm_x"), "{v}");
        }
        assert_eq!(with("Basic dXNlcjpwYXNz"), None);
        assert_eq!(with("Bearertm_x"), None);
        // Two: neither (the guard refuses the request).
        let mut two = HeaderMap::new();
        two.append(header::AUTHORIZATION, "Bearer tm_a".parse().unwrap());
        two.append(header::AUTHORIZATION, "Bearer tm_b".parse().unwrap());
        assert_eq!(bearer(&two), None);
    }

    #[test]
    fn protected_mode_trusts_no_browser_page_of_another_site() {
        let h = |pairs: &[(&str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                let name = axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap();
                m.insert(name, v.parse().unwrap());
            }
            foreign_browser(&m)
        };
        // Programs on the host (curl, the CLI, service servers, raw
        // sockets), under a loopback name or none.
        assert_eq!(h(&[]), None);
        assert_eq!(h(&[("host", "127.0.0.1:7070")]), None);
        assert_eq!(h(&[("host", "localhost")]), None);
        assert_eq!(h(&[("host", "db.localhost:7070")]), None);
        assert_eq!(h(&[("host", "127.0.0.2:7070")]), None);
        assert_eq!(h(&[("host", "[::1]:7070")]), None);
        assert_eq!(h(&[("host", "[::1]")]), None);
        // Text after the bracket is not a port: not a loopback name.
        assert!(h(&[("host", "[::1]evil.example")]).is_some());
        assert!(h(&[("host", "[::1]:7070evil")]).is_some());
        // DNS rebinding: a page of another site, same origin, plain http,
        // a GET with no browser mark but its own name.
        assert!(h(&[("host", "evil.example:7070")]).is_some());
        assert!(h(&[("host", "x")]).is_some());
        assert!(h(&[("host", "localhost.evil.example")]).is_some());
        assert!(h(&[("host", "")]).is_some());
        // The console, same origin, under any loopback name.
        for host in [
            "127.0.0.1:7070",
            "localhost:7070",
            "[::1]:7070",
            "127.0.0.1",
        ] {
            let origin = format!("http://{host}");
            let same = [
                ("host", host),
                ("origin", &origin),
                ("sec-fetch-site", "same-origin"),
            ];
            assert_eq!(h(&same), None, "{host}");
            assert_eq!(h(&[("host", host), ("sec-fetch-mode", "navigate")]), None);
        }
        // Another site's page, in a browser on this host.
        assert!(h(&[
            ("host", "127.0.0.1:7070"),
            ("origin", "https://evil.example")
        ])
        .is_some());
        assert!(h(&[
            ("host", "127.0.0.1:7070"),
            ("origin", "http://127.0.0.1:8000")
        ])
        .is_some());
        assert!(h(&[("host", "127.0.0.1:7070"), ("origin", "null")]).is_some());
        assert!(h(&[("host", "127.0.0.1:7070"), ("sec-fetch-site", "cross-site")]).is_some());
        // DNS rebinding: another name pointed at 127.0.0.1, same origin.
        let rebound = [
            ("host", "evil.example:7070"),
            ("origin", "http://evil.example:7070"),
            ("sec-fetch-site", "same-origin"),
        ];
        assert!(h(&rebound).is_some());
        assert!(h(&[
            ("host", "127.0.0.1.evil.example"),
            ("sec-fetch-mode", "cors")
        ])
        .is_some());
        // Two Host headers: which one counts is anyone's guess.
        let mut two = HeaderMap::new();
        two.append(header::HOST, "127.0.0.1".parse().unwrap());
        two.append(header::HOST, "evil.example".parse().unwrap());
        assert!(foreign_browser(&two).is_some());
        // Two Origin headers, the first one this host's: only one was
        // looked at, and the request served.
        let mut two = HeaderMap::new();
        two.append(header::HOST, "127.0.0.1:7070".parse().unwrap());
        two.append(header::ORIGIN, "http://127.0.0.1:7070".parse().unwrap());
        assert!(foreign_browser(&two).is_none());
        two.append(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(foreign_browser(&two).is_some());
    }

    #[test]
    fn every_endpoint_needs_the_role_the_contract_names() {
        use AccessRole::*;
        let cases = [
            (Method::GET, "/healthz", None),
            (Method::GET, "/readyz", None),
            (Method::GET, "/metrics", None),
            (Method::GET, "/openapi.json", None),
            (Method::GET, "/console", None),
            (Method::GET, "/console.js", None),
            (Method::GET, "/", None),
            (Method::GET, "/console/", None),
            (Method::GET, "/v1/whoami", None),
            (Method::POST, "/console", Some(Admin)),
            (Method::GET, "/v1/console/events", Some(Reader)),
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
            (Method::POST, "/v1/services/svc-1/quiesce", Some(Admin)),
            (Method::DELETE, "/v1/services/svc-1/quiesce", Some(Admin)),
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
