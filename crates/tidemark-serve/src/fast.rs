//! The fast path of a plain-HTTP connection: requests the hot route
//! answers whole are parsed and answered here, without hyper, and so are
//! the record reads it leaves to the router (a miss, a read that waits):
//! the router's answer is collected and written the same way. The first
//! other request hands the connection, with every byte read so far, to
//! hyper for good.
//!
//! Invariants:
//! - only a `GET` over HTTP/1.1 whose head says it has no body (no
//!   `content-length`, `transfer-encoding`, `expect`, `upgrade` or
//!   `connection`) and parses whole is taken here; anything else, and
//!   anything malformed, is hyper's to answer or refuse, from its first
//!   byte, exactly as before;
//! - answers go out in request order (pipelined requests included), with
//!   the headers hyper would add (`content-length`, `date`); an answer
//!   that says `connection: close` closes the connection after it, as
//!   hyper does;
//! - the header deadline, eviction and shutdown hold as in hyper: a head
//!   must arrive within `header_timeout` of the previous answer (or of the
//!   connection), and an idle connection closes when its slot is taken or
//!   the server shuts down.

mod answer;
mod head;
mod prefixed;

/// Writes an answer as the fast path does (status line, headers, `date`).
pub(crate) use answer::encode as encode_response;
pub use prefixed::Prefixed;

use crate::hot::HotRoute;
use crate::slots::Slot;
use crate::Stats;
use answer::{closes, encode};
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::request::Parts;
use axum::http::{Request, Response};
use bytes::{Bytes, BytesMut};
use head::{parse, Head};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// A head longer than this is refused (`414` or `431`, with the JSON
/// error; hyper's own refusals have an empty body).
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// The largest routed answer collected here (a record's answer is far
/// smaller; past it the connection closes, as a failed body does).
const MAX_ROUTED_BODY: usize = 64 * 1024 * 1024;

/// The JSON error for a head refused here, closing the connection: one
/// that is not HTTP (`400`), or too long (`414`, `431`).
fn refusal(code: tidemark_api::ErrorCode, why: &str) -> Response<Bytes> {
    let status = axum::http::StatusCode::from_u16(code.status())
        .unwrap_or(axum::http::StatusCode::BAD_REQUEST);
    let message = match code {
        tidemark_api::ErrorCode::BadRequest => {
            format!("{why}; send a well-formed HTTP/1.1 request")
        }
        _ => why.to_owned(),
    };
    crate::json_errors::closing_error(status, code, message)
}

/// How the fast path left a connection.
pub enum Left {
    /// Closed: the peer left, its head came too slowly, it was chosen to
    /// make room, or the server shuts down.
    Closed,
    /// Hyper's from here, given the bytes already read, which it must see
    /// first.
    Handoff(Bytes),
}

/// Serves `stream` while its requests are record reads (answered by the
/// hot route, or by the router through it).
pub async fn serve<T>(
    stream: &mut TcpStream,
    peer: SocketAddr,
    route: &HotRoute<T>,
    header_timeout: Duration,
    stats: &Stats,
    slot: &Slot,
    shutdown: &CancellationToken,
) -> Left
where
    T: Clone + Send + Sync + 'static,
{
    let mut buf = BytesMut::with_capacity(4096);
    let mut out = Vec::with_capacity(4096);
    // The whole next head is due by then (not each read of it: a head
    // trickling in a byte at a time must not hold the connection).
    let mut due = tokio::time::Instant::now() + header_timeout;
    // Armed once per connection, not per request: the timer is moved to
    // `due` only when it fires before it (at most once per
    // `header_timeout`), and the two cancellations stay registered, so a
    // request costs no timer-wheel or waiter-list update.
    let timer = tokio::time::sleep_until(due);
    let evicted = slot.conn.evict.cancelled();
    let stopping = shutdown.cancelled();
    tokio::pin!(timer, evicted, stopping);
    let mut reads = 0u32;
    loop {
        // Answer every whole head read, in order.
        loop {
            let head = match parse(&buf) {
                Head::Partial if buf.len() >= MAX_HEAD => head::too_long(&buf),
                head => head,
            };
            match head {
                Head::Partial => break,
                Head::Hyper => return handoff(stream, &mut out, buf).await,
                Head::Bad(code, why) => {
                    // Earlier answers first, then this one, then close.
                    stats.refused_heads.inc();
                    encode(&refusal(code, &why), &mut out);
                    if flush(stream, &mut out).await.is_ok() {
                        let _ = stream.shutdown().await;
                    }
                    return Left::Closed;
                }
                Head::Plain(head, len) => {
                    slot.conn.busy();
                    let resp = match route.answer(&head) {
                        Some(resp) => resp,
                        None if head.uri.path().starts_with(crate::hot::RECORDS) => {
                            // The router may take a while: earlier answers
                            // go out first.
                            if flush(stream, &mut out).await.is_err() {
                                return Left::Closed;
                            }
                            match routed(route, head, peer).await {
                                Some(resp) => resp,
                                None => return Left::Closed,
                            }
                        }
                        None => return handoff(stream, &mut out, buf).await,
                    };
                    encode(&resp, &mut out);
                    let _ = buf.split_to(len);
                    if closes(&resp) {
                        let _ = flush(stream, &mut out).await;
                        return Left::Closed;
                    }
                }
            }
        }
        if !out.is_empty() {
            if flush(stream, &mut out).await.is_err() {
                return Left::Closed;
            }
            slot.conn.answered(false);
            due = tokio::time::Instant::now() + header_timeout;
        }
        // The next head (or the rest of this one), under the deadline. A
        // read that is ready goes first; eviction and shutdown are looked
        // at whenever it waits, and every 32nd read, so a peer that never
        // stops sending cannot hold them off.
        reads = reads.wrapping_add(1);
        if reads.is_multiple_of(32) && (slot.conn.evict.is_cancelled() || shutdown.is_cancelled()) {
            return Left::Closed;
        }
        let read = loop {
            tokio::select! {
                biased;
                r = stream.read_buf(&mut buf) => break Some(r),
                _ = &mut evicted => return Left::Closed,
                _ = &mut stopping => return Left::Closed,
                _ = &mut timer => {
                    if tokio::time::Instant::now() >= due {
                        break None;
                    }
                    timer.as_mut().reset(due);
                }
            }
        };
        match read {
            Some(Ok(0)) | Some(Err(_)) => return Left::Closed,
            Some(Ok(_)) => slot.conn.heard(),
            None => {
                stats.timed_out.inc();
                tracing::debug!(%peer, "request headers too slow; connection closed");
                return Left::Closed;
            }
        }
    }
}

/// The router's whole answer to a record read; `None` if its body failed
/// or is too large (hyper would cut the connection too).
async fn routed<T>(
    route: &HotRoute<T>,
    mut head: Parts,
    peer: SocketAddr,
) -> Option<Response<Bytes>>
where
    T: Clone + Send + Sync + 'static,
{
    head.extensions.insert(ConnectInfo(peer));
    let resp = match route.route(Request::from_parts(head, Body::empty())).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    };
    let (parts, body) = resp.into_parts();
    match axum::body::to_bytes(body, MAX_ROUTED_BODY).await {
        Ok(bytes) => Some(Response::from_parts(parts, bytes)),
        Err(e) => {
            tracing::debug!(%peer, error = %e, "a routed answer's body failed; connection closed");
            None
        }
    }
}

/// Writes the answers not yet written, if any.
async fn flush(stream: &mut TcpStream, out: &mut Vec<u8>) -> std::io::Result<()> {
    if !out.is_empty() {
        stream.write_all(out).await?;
        out.clear();
    }
    Ok(())
}

/// Writes the answers so far, then gives the connection to hyper.
async fn handoff(stream: &mut TcpStream, out: &mut Vec<u8>, buf: BytesMut) -> Left {
    match flush(stream, out).await {
        Ok(()) => Left::Handoff(buf.freeze()),
        Err(_) => Left::Closed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Settings, Stats};
    use axum::http::{header, HeaderValue};
    use tidemark_telemetry::Registry;
    use tokio::net::TcpListener;

    /// A front door whose hot route answers `GET /hot` and whose router
    /// answers `GET /routed`; returns its address.
    async fn front_door(fast_path: bool) -> SocketAddr {
        front_door_with(fast_path, Duration::from_secs(5)).await
    }

    /// The same, with a head deadline of `header_timeout`.
    async fn front_door_with(fast_path: bool, header_timeout: Duration) -> SocketAddr {
        fn hit(_: &(), _: SocketAddr, head: &Parts) -> Option<Response<Bytes>> {
            if head.uri.path() != "/hot" {
                return None;
            }
            let mut r = Response::new(Bytes::from_static(b"{\"hot\":true}"));
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            h.insert("x-tidemark-test", HeaderValue::from_static("1"));
            Some(r)
        }
        let router = axum::Router::new()
            .route("/routed", axum::routing::get(|| async { "routed" }))
            .route(
                "/v1/records/{table}/{key}",
                axum::routing::get(|| async {
                    tokio::task::yield_now().await;
                    ([("x-tidemark-routed", "1")], "a routed record")
                }),
            )
            .route(
                "/v1/records/closing/{key}",
                axum::routing::get(|| async { ([(header::CONNECTION, "close")], "bye") }),
            );
        let route = HotRoute::new((), router, hit);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let settings = Settings {
            max_connections: 8,
            header_timeout,
            body_timeout: Duration::from_secs(5),
            fast_path,
        };
        let stats = Stats::register(&Registry::new(), "t");
        tokio::spawn(crate::serve(
            listener,
            None,
            settings,
            stats,
            move |peer| route.for_peer(peer),
            CancellationToken::new(),
        ));
        addr
    }

    /// Sends `requests` in one write; reads `n` answers (each whole by its
    /// content-length), returned with their `date` values blanked.
    async fn exchange(addr: SocketAddr, requests: &[u8], n: usize) -> Vec<String> {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(requests).await.unwrap();
        let mut buf = Vec::new();
        let mut answers = Vec::new();
        while answers.len() < n {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut resp = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(head)) = resp.parse(&buf) {
                let len: usize = resp
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                    .expect("a content-length");
                if buf.len() >= head + len {
                    let text = String::from_utf8(buf.drain(..head + len).collect()).unwrap();
                    let blanked: Vec<String> = text
                        .split("\r\n")
                        .map(|l| match l.strip_prefix("date: ") {
                            Some(_) => "date: -".to_owned(),
                            None => l.to_owned(),
                        })
                        .collect();
                    answers.push(blanked.join("\r\n"));
                    continue;
                }
            }
            let mut chunk = [0u8; 4096];
            let got = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
                .await
                .expect("answers in time")
                .unwrap();
            assert!(got > 0, "closed after {} answers", answers.len());
            buf.extend_from_slice(&chunk[..got]);
        }
        answers
    }

    /// Pipelined hot and routed requests are answered in order, and a hot
    /// answer is byte for byte what hyper sends for it (but the date).
    #[tokio::test]
    async fn hot_answers_match_hypers_and_keep_their_order() {
        let hot = b"GET /hot HTTP/1.1\r\nHost: x\r\n\r\n";
        let routed = b"GET /routed HTTP/1.1\r\nHost: x\r\n\r\n";
        let record = b"GET /v1/records/t/k HTTP/1.1\r\nHost: x\r\n\r\n";
        let all = [
            &hot[..],
            hot,
            record,
            hot,
            routed,
            hot,
            b"GET /missing HTTP/1.1\r\n\r\n",
        ]
        .concat();
        let fast = exchange(front_door(true).await, &all, 7).await;
        let hyper = exchange(front_door(false).await, &all, 7).await;
        assert_eq!(fast, hyper);
        assert!(fast[2].contains("x-tidemark-routed: 1\r\n"), "{}", fast[2]);
        assert!(fast[2].ends_with("a routed record"), "{}", fast[2]);
        // An answer that closes its connection closes it, on both paths.
        let closing = [&b"GET /v1/records/closing/k HTTP/1.1\r\n\r\n"[..], hot].concat();
        for fast_path in [true, false] {
            let mut s = TcpStream::connect(front_door(fast_path).await)
                .await
                .unwrap();
            s.write_all(&closing).await.unwrap();
            let mut got = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
                .await
                .expect("closed in time")
                .unwrap();
            let text = String::from_utf8_lossy(&got);
            assert!(text.ends_with("bye"), "fast path {fast_path}: {text}");
        }
        assert!(fast[0].starts_with("HTTP/1.1 200 OK\r\n"), "{}", fast[0]);
        assert!(fast[0].contains("x-tidemark-test: 1\r\n"), "{}", fast[0]);
        assert!(fast[0].ends_with("{\"hot\":true}"), "{}", fast[0]);
        assert!(fast[4].ends_with("routed"), "{}", fast[4]);
        assert!(fast[5].ends_with("{\"hot\":true}"), "{}", fast[5]);
        assert!(fast[6].starts_with("HTTP/1.1 404"), "{}", fast[6]);
        // A head split across writes is read whole.
        let addr = front_door(true).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /hot HTTP/1.1\r\nHo").await.unwrap();
        s.flush().await.unwrap();
        tokio::task::yield_now().await;
        s.write_all(b"st: x\r\n\r\n").await.unwrap();
        let mut chunk = [0u8; 1024];
        let n = s.read(&mut chunk).await.unwrap();
        let text = String::from_utf8_lossy(&chunk[..n]);
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    }

    /// The head deadline counts from the previous answer: a connection
    /// that was answered lives on past its first deadline (the timer,
    /// armed once, moves when it fires early), and a head that then does
    /// not come whole in time is still cut off.
    #[tokio::test]
    async fn the_head_deadline_moves_with_each_answer() {
        let timeout = Duration::from_millis(2000);
        let addr = front_door_with(true, timeout).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let hot = b"GET /hot HTTP/1.1\r\nHost: x\r\n\r\n";
        let started = tokio::time::Instant::now();
        let mut chunk = [0u8; 1024];
        // Answered at about 1.2 s and 2.3 s: the second past the first
        // deadline (2 s; a sleep never ends early), inside the one the
        // first answer set (3.2 s), with most of a second to spare each way
        // on a busy machine.
        for at in [1200, 2300] {
            tokio::time::sleep_until(started + Duration::from_millis(at)).await;
            s.write_all(hot).await.unwrap();
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
                .await
                .expect("answered in time")
                .unwrap();
            let text = String::from_utf8_lossy(&chunk[..n]);
            assert!(text.starts_with("HTTP/1.1 200 OK"), "at {at} ms: {text}");
        }
        // Half a head, never finished: closed about a second later.
        s.write_all(b"GET /hot HTTP/1.1\r\n").await.unwrap();
        let sent = tokio::time::Instant::now();
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("closed in time")
            .unwrap();
        assert_eq!(n, 0, "closed without an answer");
        assert!(sent.elapsed() >= timeout / 2, "{:?}", sent.elapsed());
    }

    /// Heads hyper would refuse with an empty body (a very long path, a
    /// very long head, too many headers) get the JSON error here, and the
    /// connection closes; hyper still takes more headers than the hot
    /// route does.
    #[tokio::test]
    async fn overlong_heads_get_the_json_error() {
        let addr = front_door(true).await;
        let long_path = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(MAX_HEAD));
        let long_head = format!(
            "GET /hot HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n",
            "b".repeat(MAX_HEAD)
        );
        let many: String = (0..=head::MOST_HEADERS)
            .map(|i| format!("x-h{i}: 1\r\n"))
            .collect();
        let many = format!("GET /hot HTTP/1.1\r\n{many}\r\n");
        for (request, status, code) in [
            (long_path, "414", "uri_too_long"),
            (long_head, "431", "headers_too_large"),
            (many, "431", "headers_too_large"),
        ] {
            let answer = exchange(addr, request.as_bytes(), 1).await.remove(0);
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {status} ")),
                "{answer}"
            );
            assert!(answer.contains("connection: close\r\n"), "{answer}");
            let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
            let v: serde_json::Value = serde_json::from_str(body).expect(body);
            assert_eq!(v["error"]["code"], code, "{body}");
        }
        // Forty headers: more than the hot route takes, fewer than hyper's limit.
        let some: String = (0..40).map(|i| format!("x-h{i}: 1\r\n")).collect();
        let answer = exchange(
            addr,
            format!("GET /hot HTTP/1.1\r\n{some}\r\n").as_bytes(),
            1,
        )
        .await;
        assert!(answer[0].starts_with("HTTP/1.1 200 OK"), "{}", answer[0]);
    }
}
