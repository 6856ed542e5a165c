//! `tidemark bench ceiling-server`: the HTTP ceilings of `bench compare`.
//!
//! Both answer `GET /v1/records/{table}/{key}` with JSON pre-rendered into
//! a `HashMap` at start, with the headers a Tidemark cache hit carries:
//! - the default, a trivial axum handler: the least work an HTTP/1 server
//!   on Tidemark's stack (tokio, hyper, axum) does per read. A Tidemark
//!   server near it spends its time in HTTP, not in its own logic;
//! - `--raw` (`raw`): one thread, one event loop, no runtime and no HTTP
//!   library, the way Redis serves: about the least an HTTP server can do
//!   per read on this machine's kernel (it checks nothing a real server
//!   must). What separates it from Redis is mostly the protocol, so a goal
//!   above its ratio to Redis is beyond what HTTP reads reach here.

mod raw;

use super::{key_of, load::fields_of};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use clap::Args;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Args, Clone)]
pub struct CeilingArgs {
    /// Records pre-rendered (keys as `bench load` writes them).
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7090")]
    pub listen: String,
    /// Serve from a single-threaded event loop with no runtime or HTTP
    /// library (the raw ceiling) instead of axum.
    #[arg(long)]
    pub raw: bool,
}

/// The body a service server answers for record `i` from its cache.
pub fn body_of(i: u64) -> Bytes {
    Bytes::from(
        serde_json::to_vec(
            &json!({"table": "subscriber", "key": key_of(i), "found": true,
            "fields": fields_of(i), "version": {"epoch": 1, "seq": i + 1}, "recovering": false,
            "source": "cache"}),
        )
        .unwrap_or_default(),
    )
}

async fn record(
    State(map): State<Arc<HashMap<String, Bytes>>>,
    Path((_table, key)): Path<(String, String)>,
) -> Response {
    match map.get(&key) {
        Some(b) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            b.clone(),
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "application/json")],
            Bytes::from_static(b"{\"found\":false}"),
        )
            .into_response(),
    }
}

pub async fn run(args: CeilingArgs) -> anyhow::Result<()> {
    let map: HashMap<String, Bytes> = (0..args.records).map(|i| (key_of(i), body_of(i))).collect();
    if args.raw {
        let listener = std::net::TcpListener::bind(&args.listen)?;
        println!("listening on http://{}", listener.local_addr()?);
        return tokio::task::spawn_blocking(move || raw::serve(listener, &map)).await?;
    }
    let app = axum::Router::new()
        .route("/v1/records/{table}/{key}", get(record))
        .route("/readyz", get(|| async { "ready" }))
        .with_state(Arc::new(map));
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
