//! Reading a request body whole, up to a limit, telling a body over the
//! limit from one that could not be read (cut off, timed out).

use bytes::Bytes;

/// Why a body was not read whole.
#[derive(Debug)]
pub enum BodyError {
    /// Over the limit (chunked, or a length the caller did not check).
    TooLarge,
    /// Cut off or unreadable; the reason.
    Unreadable(String),
}

/// The whole of `body`, if it is at most `limit` bytes.
pub async fn read_limited(body: axum::body::Body, limit: usize) -> Result<Bytes, BodyError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        // axum wraps http-body's `LengthLimitError`; its text is all that
        // tells it apart here.
        let text = e.to_string();
        if text.contains("length limit exceeded") {
            BodyError::TooLarge
        } else {
            BodyError::Unreadable(text)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_over_the_limit_is_told_apart() {
        let body = || axum::body::Body::from("0123456789");
        assert_eq!(read_limited(body(), 10).await.unwrap(), "0123456789");
        assert!(matches!(
            read_limited(body(), 9).await,
            Err(BodyError::TooLarge)
        ));
    }
}
