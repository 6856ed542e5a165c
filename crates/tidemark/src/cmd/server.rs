//! `tidemark server`.

use crate::cli::ServerArgs;
use tidemark_server::config::Secret;
use tidemark_server::{Server, ServerConfig, StoreKind};
use tokio_util::sync::CancellationToken;

pub async fn run(mut config: ServerConfig, args: ServerArgs) -> anyhow::Result<()> {
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    if let Some(s) = args.store {
        config.store = super::store_kind(&s)?;
    }
    if let Some(u) = args.database_url {
        config.database_url = Some(Secret(u));
    }
    if let Some(s) = args.pg_schema {
        config.pg_schema = s;
    }
    if args.tls_cert.is_some() {
        config.tls_cert = args.tls_cert;
        config.tls_key = args.tls_key;
    }
    if args.front_door.tls_client_ca.is_some() {
        config.tls_client_ca = args.front_door.tls_client_ca;
    }
    if let Some(n) = args.front_door.max_connections {
        config.max_connections = n;
    }
    config.front_door().check()?;
    if let Err(e) = config.check_tls() {
        super::usage!("{e:#}");
    }
    if let Some(a) = args.advertise {
        config.advertise = Some(a);
    }
    if config.advertise.is_some() && config.store != StoreKind::Postgres {
        // Said, not silent (flag, file or environment): it only tells the
        // other instances of a cluster.
        tidemark_telemetry::say(
            tidemark_telemetry::Said::Warning,
            "--advertise (advertise) is used with --store postgres only (it tells the other instances of a cluster how to reach this one); the embedded engine ignores it",
        );
    }
    if let Some(w) = args.failover_wait {
        config.failover_wait_secs = w;
    }
    if let Some(t) = args.lease_ttl_ms {
        if !(100..=60_000).contains(&t) {
            super::usage!("--lease-ttl-ms must be from 100 to 60000 (a minute): a failover waits for a dead primary's lease to run out");
        }
        config.lease_ttl_ms = t;
    }
    if args.allow_version_skew {
        config.allow_version_skew = true;
    }
    if config.store == StoreKind::Postgres {
        super::database_url(None, &config)?;
    }
    let shutdown = crate::signals::shutdown_token();
    let scheme = if config.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let listener = super::bind_quietly(&config.listen, "DB server").await?;
    // The port is bound first: until the store is open (PostgreSQL may be
    // unreachable for a while) the probes answer, alive but not ready, so
    // it is announced at once. The embedded store opens at once: it is
    // announced once open, so a refusal to start (the data in use, a
    // cleanup due, no token on a public address) never follows it.
    let early_announce = config.store == StoreKind::Postgres;
    if early_announce {
        super::announce(&listener, scheme)?;
    }
    if config.advertise.is_none() {
        config.advertise = Some(format!("{scheme}://{}", listener.local_addr()?));
    }
    let listener = listener.into_std()?;
    let early = tokio::net::TcpListener::from_std(listener.try_clone()?)?;
    let opened = CancellationToken::new();
    let probes = tokio::spawn(not_ready_yet(early, opened.clone(), config.store));
    let server = Server::open(config.clone(), shutdown).await;
    opened.cancel();
    let _ = probes.await;
    let server = server?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    if !early_announce {
        super::announce(&listener, scheme)?;
    }
    server.run(listener).await
}

/// Serves `/healthz` (alive) and `503 not_ready` for everything else, until
/// `opened` is cancelled.
async fn not_ready_yet(
    listener: tokio::net::TcpListener,
    opened: CancellationToken,
    store: StoreKind,
) {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    let app = axum::Router::new()
        .route(
            "/healthz",
            axum::routing::get(|| async { axum::Json(serde_json::json!({"status": "starting"})) }),
        )
        .fallback(move || async move {
            let message = match tidemark_server::server::opening_problem() {
                Some(why) => format!("the DB server cannot open its store yet: {why}; it retries by itself (if this does not mend by itself, fix it: see the server's log)"),
                None if store == StoreKind::Postgres => "the DB server is opening its store (PostgreSQL may not be reachable yet); retry shortly".to_owned(),
                None => "the DB server is opening its store; retry shortly".to_owned(),
            };
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "1"), (header::CONTENT_TYPE, "application/json")],
                serde_json::json!({"error": {"code": "not_ready", "message": message}}).to_string(),
            )
                .into_response()
        });
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move { opened.cancelled().await })
        .await;
}
