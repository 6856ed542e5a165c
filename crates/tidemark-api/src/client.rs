//! The HTTP client for the DB server API, used by service servers, the OpS
//! and the command-line tools.

use crate::error::{ApiError, ErrorBody};
use crate::sse::{SseEvent, SseParser};
use crate::state::ServerState;
use crate::{encode_orders, headers, Order, OrdersResponse, RecordAnswer};
use futures::{Stream, StreamExt};
use std::time::Duration;

/// Why a call to the DB server failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached (refused, reset, timed out, or its
    /// certificate not trusted).
    /// (`error`, not `source`: its text is in this one's already, and a
    /// source would print it again in an error chain.)
    #[error("could not reach the DB server at {url}: {}", transport_detail(.error))]
    Transport { url: String, error: reqwest::Error },
    /// The server answered with an API error.
    #[error("DB server refused the request ({status} {}): {}", .error.code.as_str(), .error.message)]
    Api {
        status: u16,
        error: ApiError,
        retry_after: Option<u64>,
    },
    /// A server took the connection but did not answer within the time a
    /// live one answers in (paused, hung, or a host gone without a reset).
    #[error("the DB server at {url} took the connection but did not answer within {secs} s (paused, hung or overloaded); check it, or name another instance with --db")]
    Unanswered { url: String, secs: u64 },
    /// A watch stream sent nothing, not even a keepalive, for too long.
    #[error("the watch stream from {url} sent nothing, not even a keepalive, for {secs} s; reconnecting")]
    Silent { url: String, secs: u64 },
    /// The server answered something this client cannot decode.
    #[error("unexpected answer from the DB server at {url} (status {status}): {detail}; check that the URL names a Tidemark DB server (not a service server) of this version")]
    Decode {
        url: String,
        status: u16,
        detail: String,
    },
}

/// What went wrong in reaching a server, and what to do: reqwest's own
/// text repeats the URL, its causes say what failed.
fn transport_detail(e: &reqwest::Error) -> String {
    let mut causes: Vec<String> = Vec::new();
    let mut next = std::error::Error::source(e);
    while let Some(cause) = next {
        let text = cause.to_string();
        if !causes.iter().any(|c| c.contains(&text)) {
            causes.push(text);
        }
        next = cause.source();
    }
    let detail = if causes.is_empty() {
        e.to_string()
    } else {
        causes.join(": ")
    };
    let lower = detail.to_ascii_lowercase();
    // Signed by a CA not given, or by another than the one given.
    if ["unknownissuer", "unknown issuer", "badsignature"]
        .iter()
        .any(|s| lower.contains(s))
    {
        format!("{detail}; its TLS certificate is not trusted here: pass the CA certificate that signed it with --ca-cert FILE (or TIDEMARK_CA_CERT)")
    } else if lower.contains("certificate") {
        // Expired, for another name, or one the server asks of this client.
        format!("{detail}; check the TLS certificates: the server's (its name and dates; --ca-cert), and this client's if the server asks for one (--client-cert, --client-key)")
    } else {
        format!("{detail}; check that it runs and that the URL is right")
    }
}

/// How long a watch stream may stay silent: over twice the DB server's
/// keepalive interval (15 s).
pub const WATCH_SILENCE: Duration = Duration::from_secs(35);

/// How long the head of a watch stream's answer may take: a live DB server
/// sends it once the stream is set up (at most a few seconds on a standby
/// catching up); the backlog follows in the body. Past it, the instance
/// is given up for the next one.
pub const WATCH_ANSWER: Duration = Duration::from_secs(10);

impl ClientError {
    /// The server is offline after a quiesce notice (S4).
    pub fn is_quiescing(&self) -> bool {
        matches!(self, ClientError::Api { error, .. } if error.code == crate::ErrorCode::Quiescing)
    }

    /// The HTTP status of an answer the server gave, if it gave one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } | ClientError::Decode { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True if retrying later may succeed (transport errors, 503s, and a
    /// limit on what is in flight at once: `429 too_many_streams`).
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Transport { .. }
            | ClientError::Silent { .. }
            | ClientError::Unanswered { .. } => true,
            ClientError::Api { status, error, .. } => {
                *status == 503 || (*status == 429 && error.code == crate::ErrorCode::TooManyStreams)
            }
            ClientError::Decode { status, .. } => *status >= 500,
        }
    }
}

/// A record read: the answer plus the status and headers that matter.
#[derive(Debug, Clone)]
pub struct RecordRead {
    pub answer: RecordAnswer,
    /// `Retry-After` seconds, if the server sent one.
    pub retry_after: Option<u64>,
    /// The instance that answered (`None`: not known, the one in use).
    pub base: Option<String>,
    /// The store history the answer is from ([`headers::HISTORY`]; `None`:
    /// a server that does not say).
    pub history: Option<String>,
}

/// The client certificate in PEM file `cert` with its private key in
/// `key`, as a client presents them; why not, naming the file it could not
/// read.
pub fn client_identity(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<reqwest::Identity, String> {
    let read = |path: &std::path::Path, flag: &str| {
        std::fs::read(path)
            .map_err(|e| format!("cannot read the {flag} file {}: {e}", path.display()))
    };
    let mut pem = read(cert, "--client-cert")?;
    pem.push(b'\n');
    pem.extend(read(key, "--client-key")?);
    reqwest::Identity::from_pem(&pem).map_err(|e| e.to_string())
}

/// A client builder that trusts `TIDEMARK_CA_CERT` (every client
/// command's `--ca-cert`) and presents `TIDEMARK_CLIENT_CERT` with
/// `TIDEMARK_CLIENT_KEY` (`--client-cert`/`--client-key`, for servers that
/// ask for client certificates). A file that cannot be used fails every
/// request, after a message naming it.
pub fn tls_builder() -> reqwest::ClientBuilder {
    let mut builder = reqwest::Client::builder();
    if let Some(ca) = std::env::var_os("TIDEMARK_CA_CERT") {
        match std::fs::read(&ca)
            .map_err(|e| e.to_string())
            .and_then(|pem| reqwest::Certificate::from_pem(&pem).map_err(|e| e.to_string()))
        {
            Ok(cert) => builder = builder.add_root_certificate(cert),
            Err(e) => eprintln!(
                "error: cannot use the --ca-cert file {}: {e}",
                std::path::Path::new(&ca).display()
            ),
        }
    }
    let cert = std::env::var_os("TIDEMARK_CLIENT_CERT");
    let key = std::env::var_os("TIDEMARK_CLIENT_KEY");
    if let (Some(cert), Some(key)) = (cert, key) {
        match client_identity(cert.as_ref(), key.as_ref()) {
            Ok(id) => builder = builder.identity(id),
            Err(e) => eprintln!(
                "error: cannot use the client certificate {} with key {}: {e}",
                std::path::Path::new(&cert).display(),
                std::path::Path::new(&key).display()
            ),
        }
    }
    builder
}

/// A client for one DB server, or for the instances of one cluster
/// (`URL1,URL2,…`). Cheap to clone (clones share the instance in use);
/// keeps a connection pool.
///
/// With several instances, it talks to one at a time and moves to the next
/// when that one cannot be reached or says it is not ready or quiescing;
/// a call that failed so is retried on the next instance (every call it
/// makes is idempotent: orders by `(source, seq)`).
#[derive(Debug, Clone)]
pub struct DbClient {
    bases: std::sync::Arc<[String]>,
    active: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    http: reqwest::Client,
    /// How long a watch stream may stay silent ([`WATCH_SILENCE`]).
    silence: Duration,
}

impl DbClient {
    /// `base` is the server's URL, e.g. `http://127.0.0.1:7070`, or several
    /// separated by commas (the instances of one cluster).
    /// Sends `TIDEMARK_TOKEN` (set by every client command's `--token`) as
    /// `Authorization: Bearer`, if it is set.
    pub fn new(base: &str) -> Self {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Ok(token) = std::env::var("TIDEMARK_TOKEN") {
            if let Ok(mut v) =
                reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            {
                v.set_sensitive(true);
                headers.insert(reqwest::header::AUTHORIZATION, v);
            }
        }
        let builder = tls_builder();
        let http = builder
            .default_headers(headers)
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(256)
            // Below the servers' header timeout (10 s by default), which
            // closes idle connections: a pooled one is never reused as the
            // server closes it.
            .pool_idle_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .build()
            .expect("a default reqwest client always builds");
        let mut bases: Vec<String> = base
            .split(',')
            .map(|b| b.trim().trim_end_matches('/').to_owned())
            .filter(|b| !b.is_empty())
            .collect();
        if bases.is_empty() {
            bases.push(String::new());
        }
        Self {
            bases: bases.into(),
            active: Default::default(),
            http,
            silence: WATCH_SILENCE,
        }
    }

    /// The same client, with watch streams that may stay silent for
    /// `silence` instead of [`WATCH_SILENCE`].
    pub fn with_watch_silence(mut self, silence: Duration) -> Self {
        self.silence = silence;
        self
    }

    /// The instance in use.
    pub fn base(&self) -> &str {
        let i = self.active.load(std::sync::atomic::Ordering::Relaxed) % self.bases.len();
        &self.bases[i]
    }

    /// Every instance named.
    pub fn bases(&self) -> &[String] {
        &self.bases
    }

    /// Moves to the next instance if `from` is still the one in use.
    /// Returns whether there is another instance to move to.
    pub fn move_on(&self, from: &str) -> bool {
        if self.bases.len() < 2 {
            return false;
        }
        let i = self.active.load(std::sync::atomic::Ordering::Relaxed) % self.bases.len();
        if self.bases[i] == from {
            let _ = self.active.compare_exchange(
                i,
                (i + 1) % self.bases.len(),
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        true
    }

    /// Whether a failed call should be tried on the next instance.
    fn worth_moving(e: &ClientError) -> bool {
        match e {
            ClientError::Transport { .. } | ClientError::Unanswered { .. } => true,
            ClientError::Api { error, .. } => matches!(
                error.code,
                crate::ErrorCode::NotReady | crate::ErrorCode::Quiescing
            ),
            // Silent only ends a stream already open: its caller reconnects.
            ClientError::Decode { .. } | ClientError::Silent { .. } => false,
        }
    }

    /// Runs `call` against the instance in use, then the others in turn
    /// while it fails in a way another instance may not.
    async fn each<T, F, Fut>(&self, call: F) -> Result<T, ClientError>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let mut tries = self.bases.len();
        loop {
            let base = self.base().to_owned();
            match call(base.clone()).await {
                Err(e) if tries > 1 && Self::worth_moving(&e) => {
                    self.move_on(&base);
                    tries -= 1;
                }
                r => return r,
            }
        }
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base(), path)
    }

    /// `GET /v1/records/{table}/{key}`; registers interest as `subscriber`.
    pub async fn get_record(
        &self,
        table: &str,
        key: &str,
        subscriber: Option<&str>,
    ) -> Result<RecordRead, ClientError> {
        if self.bases.len() > 1 {
            return self
                .each(|base| self.get_record_at(base, table, key, subscriber))
                .await;
        }
        self.get_record_at(self.base().to_owned(), table, key, subscriber)
            .await
    }

    async fn get_record_at(
        &self,
        base: String,
        table: &str,
        key: &str,
        subscriber: Option<&str>,
    ) -> Result<RecordRead, ClientError> {
        let url = format!(
            "{base}/v1/records/{}/{}",
            encode_path(table),
            encode_path(key)
        );
        let mut req = self.http.get(&url).timeout(Duration::from_secs(10));
        if let Some(name) = subscriber {
            req = req.header(headers::SUBSCRIBER, name);
        }
        let resp = req.send().await.map_err(|source| ClientError::Transport {
            url: url.clone(),
            error: source,
        })?;
        let status = resp.status().as_u16();
        let retry_after = retry_after(&resp);
        let history = resp
            .headers()
            .get(headers::HISTORY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = resp
            .bytes()
            .await
            .map_err(|source| ClientError::Transport {
                url: url.clone(),
                error: source,
            })?;
        if status == 200 || status == 404 {
            if let Ok(answer) = serde_json::from_slice::<RecordAnswer>(&bytes) {
                return Ok(RecordRead {
                    answer,
                    retry_after,
                    base: Some(base),
                    history,
                });
            }
        }
        Err(decode_error(&url, status, &bytes, retry_after))
    }

    /// `POST /v1/orders`.
    pub async fn post_orders(&self, orders: &[Order]) -> Result<OrdersResponse, ClientError> {
        let body = encode_orders(orders).map_err(|e| self.encode_error("/v1/orders", e))?;
        self.post_orders_encoded(body).await
    }

    /// `POST /v1/orders` with a body made by [`encode_orders`], so that a
    /// caller sending it again (a retry) encodes it once.
    pub async fn post_orders_encoded(
        &self,
        body: bytes::Bytes,
    ) -> Result<OrdersResponse, ClientError> {
        self.post_body_within("/v1/orders", body, Duration::from_secs(30))
            .await
    }

    /// `GET /v1/state`.
    pub async fn state(&self) -> Result<ServerState, ClientError> {
        self.get_json("/v1/state").await
    }

    /// GET a JSON document.
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<T, ClientError> {
        self.each(|base| async move {
            let url = format!("{base}{path}");
            let resp = self
                .http
                .get(&url)
                .timeout(Duration::from_secs(30))
                .send()
                .await;
            Self::finish(url, resp).await
        })
        .await
    }

    /// POST a JSON document, decode a JSON answer. An instance that does
    /// not answer within 30 s (paused, or a host gone without a reset) is
    /// given up for the next one: orders are idempotent, so one sent again
    /// is applied once.
    pub async fn post_json<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.post_json_within(path, body, Duration::from_secs(30))
            .await
    }

    /// The same, waiting up to `timeout` for the answer (a schema publish
    /// builds indexes before it answers).
    pub async fn post_json_within<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| self.encode_error(path, e))?;
        self.post_body_within(path, body.into(), timeout).await
    }

    fn encode_error(&self, path: &str, e: serde_json::Error) -> ClientError {
        ClientError::Decode {
            url: self.url(path),
            status: 0,
            detail: format!("cannot encode the request: {e}"),
        }
    }

    /// POST an encoded JSON body (sent again as is to the next instance),
    /// decode a JSON answer.
    async fn post_body_within<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: bytes::Bytes,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        self.each(|base| {
            let body = body.clone();
            async move {
                let url = format!("{base}{path}");
                let resp = self
                    .http
                    .post(&url)
                    .timeout(timeout)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                Self::finish(url, resp).await
            }
        })
        .await
    }

    /// `POST /v1/watch/interest` in chunks: declares every key `subscriber`
    /// holds, so its next stream on this instance resumes.
    pub async fn declare_interest(
        &self,
        subscriber: &str,
        keys: Vec<(String, String)>,
        newest: crate::Version,
    ) -> Result<(), ClientError> {
        const CHUNK: usize = 20_000;
        let mut chunks: Vec<Vec<(String, String)>> =
            keys.chunks(CHUNK).map(|c| c.to_vec()).collect();
        if chunks.is_empty() {
            chunks.push(Vec::new());
        }
        let n = chunks.len();
        let base = self.base().to_owned();
        for (i, keys) in chunks.into_iter().enumerate() {
            let url = format!("{base}/v1/watch/interest");
            let body = crate::state::InterestDeclaration {
                subscriber: subscriber.to_owned(),
                keys,
                final_chunk: i + 1 == n,
                newest: (i + 1 == n).then_some(newest),
            };
            let resp = self
                .http
                .post(&url)
                .timeout(Duration::from_secs(60))
                .json(&body)
                .send()
                .await;
            let _: serde_json::Value = Self::finish(url, resp).await?;
        }
        Ok(())
    }

    /// PUT a JSON document, decode a JSON answer.
    pub async fn put_json<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let url = self.url(path);
        let resp = self
            .http
            .put(&url)
            .timeout(Duration::from_secs(120))
            .json(body)
            .send()
            .await;
        Self::finish(url, resp).await
    }

    /// DELETE, decode a JSON answer.
    pub async fn delete_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<T, ClientError> {
        let url = self.url(path);
        let resp = self
            .http
            .delete(&url)
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        Self::finish(url, resp).await
    }

    async fn finish<T: serde::de::DeserializeOwned>(
        url: String,
        resp: Result<reqwest::Response, reqwest::Error>,
    ) -> Result<T, ClientError> {
        let resp = resp.map_err(|source| ClientError::Transport {
            url: url.clone(),
            error: source,
        })?;
        let status = resp.status().as_u16();
        let retry_after = retry_after(&resp);
        let bytes = resp
            .bytes()
            .await
            .map_err(|source| ClientError::Transport {
                url: url.clone(),
                error: source,
            })?;
        if (200..300).contains(&status) {
            return serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
                url,
                status,
                detail: e.to_string(),
            });
        }
        Err(decode_error(&url, status, &bytes, retry_after))
    }

    /// Opens `GET /v1/watch?subscriber=NAME`, resuming after `last_event_id`.
    /// `reports_schema`: the caller reports the schema version it runs (a
    /// service server), so a schema publish waits for it.
    pub async fn watch(
        &self,
        subscriber: &str,
        last_event_id: Option<&str>,
        reports_schema: bool,
    ) -> Result<impl Stream<Item = Result<SseEvent, ClientError>> + Send + 'static, ClientError>
    {
        let url = self.url(&format!("/v1/watch?subscriber={}", encode_path(subscriber)));
        let mut req = self.http.get(&url).header("accept", "text/event-stream");
        if reports_schema {
            // A service server: it reports its schema and takes quiesce
            // notices by name.
            req = req
                .header(headers::REPORTS_SCHEMA, "1")
                .header(headers::TAKES_QUIESCE, "1");
        }
        if let Some(id) = last_event_id {
            req = req.header(headers::LAST_EVENT_ID, id);
        }
        let base = self.base().to_owned();
        let resp = match tokio::time::timeout(WATCH_ANSWER, req.send()).await {
            Ok(Ok(r)) => r,
            Ok(Err(source)) => {
                self.move_on(&base);
                return Err(ClientError::Transport {
                    url: url.clone(),
                    error: source,
                });
            }
            Err(_) => {
                self.move_on(&base);
                return Err(ClientError::Unanswered {
                    url: url.clone(),
                    secs: WATCH_ANSWER.as_secs(),
                });
            }
        };
        let status = resp.status().as_u16();
        if status != 200 {
            let ra = retry_after(&resp);
            let bytes = resp.bytes().await.unwrap_or_default();
            let e = decode_error(&url, status, &bytes, ra);
            if Self::worth_moving(&e) {
                self.move_on(&base);
            }
            return Err(e);
        }
        let mut parser = SseParser::new();
        // A stream that sends nothing, not even the server's keepalive, is
        // dead (a partition, a crashed host): it ends with an error, so
        // the caller reconnects instead of trusting its cache meanwhile.
        let silence = self.silence;
        let chunks = futures::stream::unfold(
            Some(Box::pin(resp.bytes_stream())),
            move |body| async move {
                let mut body = body?;
                match tokio::time::timeout(silence, body.next()).await {
                    Ok(Some(chunk)) => Some((chunk.map_err(Some), Some(body))),
                    Ok(None) => None,
                    // Silent: the error, then the end.
                    Err(_) => Some((Err(None), None)),
                }
            },
        );
        let stream = chunks
            .map(
                move |chunk: Result<bytes::Bytes, Option<reqwest::Error>>| match chunk {
                    Ok(bytes) => Ok(parser.feed(&bytes)),
                    Err(Some(source)) => Err(ClientError::Transport {
                        url: url.clone(),
                        error: source,
                    }),
                    Err(None) => Err(ClientError::Silent {
                        url: url.clone(),
                        secs: silence.as_secs_f64().ceil() as u64,
                    }),
                },
            )
            .flat_map(|r| {
                futures::stream::iter(match r {
                    Ok(events) => events.into_iter().map(Ok).collect::<Vec<_>>(),
                    Err(e) => vec![Err(e)],
                })
            });
        Ok(stream)
    }
}

fn retry_after(resp: &reqwest::Response) -> Option<u64> {
    resp.headers()
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn decode_error(url: &str, status: u16, bytes: &[u8], retry_after: Option<u64>) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(body) => ClientError::Api {
            status,
            error: body.error,
            retry_after,
        },
        Err(_) => ClientError::Decode {
            url: url.to_owned(),
            status,
            detail: String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
        },
    }
}

/// The path of service server `name`'s quiesce notice by name on a DB
/// server (S8); `name` passes [`crate::schema::is_service_name`].
pub fn service_quiesce_path(name: &str) -> String {
    format!("/v1/services/{}/quiesce", encode_path(name))
}

/// Percent-encodes a path segment: keys may hold any UTF-8, including `/`.
pub fn encode_path(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'+' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_on_what_is_in_flight_is_retried_and_other_refusals_are_not() {
        let api = |status, code| ClientError::Api {
            status,
            error: crate::ApiError::new(code, "x"),
            retry_after: Some(1),
        };
        assert!(api(429, crate::ErrorCode::TooManyStreams).is_retryable());
        assert!(api(503, crate::ErrorCode::NotReady).is_retryable());
        assert!(!api(429, crate::ErrorCode::TooManySubscribers).is_retryable());
        assert!(!api(409, crate::ErrorCode::OrderConflict).is_retryable());
    }

    /// A DB server stand-in that answers a watch with the stream's headers,
    /// then sends a keepalive comment every `every` until `until`, then
    /// nothing (the connection stays open).
    async fn keepalives(every: Duration, until: Duration) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf).await.unwrap();
            conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                .await
                .unwrap();
            let end = tokio::time::Instant::now() + until;
            while tokio::time::Instant::now() < end {
                conn.write_all(b"3\r\n:\n\n\r\n").await.unwrap();
                tokio::time::sleep(every).await;
            }
            // Silent, but open: a partition looks like this.
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(conn);
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn a_silent_watch_stream_ends_with_an_error_and_keepalives_keep_it() {
        // Keepalives every 100 ms, 10 to a silence: slack for a busy machine.
        let silence = Duration::from_millis(1000);
        let alive_for = Duration::from_millis(2500);
        let base = keepalives(Duration::from_millis(100), alive_for).await;
        let client = DbClient::new(&base).with_watch_silence(silence);
        let started = tokio::time::Instant::now();
        let stream = client.watch("svc", None, false).await.unwrap();
        futures::pin_mut!(stream);
        let first = stream.next().await.expect("an error, not the end");
        assert!(
            matches!(first, Err(ClientError::Silent { .. })),
            "{first:?}"
        );
        assert!(
            started.elapsed() >= alive_for,
            "keepalives kept the stream: it ended after {:?}",
            started.elapsed()
        );
        assert!(stream.next().await.is_none(), "the stream ends after it");
    }

    #[test]
    fn encodes_reserved_bytes() {
        assert_eq!(encode_path("+81312345678"), "+81312345678");
        assert_eq!(encode_path("a/b c"), "a%2Fb%20c");
        assert_eq!(encode_path("é"), "%C3%A9");
    }
}
