//! The answer to a connection over `max_connections`.

use std::time::Duration;
use tidemark_api::error::{ApiError, ErrorBody, ErrorCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Whether the head read so far asks for the liveness probe, which is
/// answered even at the limit: a server that is full is alive, and an
/// orchestrator that took the refusal for death would restart a healthy
/// server (readiness, `/readyz`, is refused: it takes no more clients).
fn asks_liveness(head: &[u8]) -> bool {
    ["GET /healthz", "HEAD /healthz"].iter().any(|p| {
        head.strip_prefix(p.as_bytes())
            .and_then(|rest| rest.first())
            .is_some_and(|c| matches!(c, b' ' | b'?'))
    })
}

/// Answers `503 too_many_connections` (or the liveness probe, `200`) and
/// closes, within about a second. Reads what the client sent first, so
/// closing does not reset the connection before the answer is read.
pub async fn too_many(mut stream: TcpStream) {
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0);
    let answer = if asks_liveness(&buf[..n]) {
        let body = r#"{"status":"ok"}"#;
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    } else {
        let body = serde_json::to_string(&ErrorBody {
            error: ApiError::new(
                ErrorCode::TooManyConnections,
                "the server holds its most connections (max_connections); retry after Retry-After, or reuse connections",
            ),
        })
        .unwrap_or_default();
        format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    answer_and_close(&mut stream, answer.as_bytes(), false).await;
}

/// Writes `answer` and closes, within about a second; with `drain`, reads
/// what the client sent first (up to 200 ms), so closing does not reset
/// the connection before the answer is read.
pub(crate) async fn answer_and_close(stream: &mut TcpStream, answer: &[u8], drain: bool) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        if drain {
            let mut sink = [0u8; 4096];
            let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut sink)).await;
        }
        stream.write_all(answer).await?;
        stream.shutdown().await
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::asks_liveness;

    #[test]
    fn only_the_liveness_probe_is_answered_at_the_limit() {
        assert!(asks_liveness(b"GET /healthz HTTP/1.1\r\n"));
        assert!(asks_liveness(b"GET /healthz?x=1 HTTP/1.1\r\n"));
        assert!(asks_liveness(b"HEAD /healthz HTTP/1.1\r\n"));
        assert!(!asks_liveness(b"GET /healthzz HTTP/1.1\r\n"));
        assert!(!asks_liveness(b"GET /readyz HTTP/1.1\r\n"));
        assert!(!asks_liveness(b"GET /healthz"));
        assert!(!asks_liveness(b""));
    }
}
