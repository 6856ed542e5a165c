//! The answer to a connection over `max_connections`.

use std::time::Duration;
use tidemark_api::error::{ApiError, ErrorBody, ErrorCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Answers `503 too_many_connections` and closes, within about a second.
/// Reads what the client sent first, so closing does not reset the
/// connection before the answer is read.
pub async fn too_many(mut stream: TcpStream) {
    let body = serde_json::to_string(&ErrorBody {
        error: ApiError::new(
            ErrorCode::TooManyConnections,
            "the server holds its most connections (max_connections); retry after Retry-After, or reuse connections",
        ),
    })
    .unwrap_or_default();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut buf = [0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await;
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}
