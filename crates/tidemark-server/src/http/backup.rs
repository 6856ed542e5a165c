//! Online backup through the running server (B1, B5).
//!
//! `POST /v1/backup` takes one consistent snapshot ([`Store::snapshot`]:
//! SQLite streams its pages from one read transaction, writers go on; an
//! engine that writes a scratch file unlinks it as soon as it is open, so
//! nothing is left behind even if the client goes away) and streams it back
//! as the body; what the snapshot holds comes in the `Tidemark-Snapshot`
//! header as JSON. `GET /v1/backup/config` returns the server's
//! configuration.
//!
//! [`Store::snapshot`]: tidemark_store::Store::snapshot

use super::error::HttpError;
use super::AppState;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::Arc;
use tidemark_api::ErrorCode;

/// The response header carrying the snapshot's metadata.
pub const SNAPSHOT_HEADER: &str = "tidemark-snapshot";

/// JSON with every non-ASCII character escaped, so it fits in a header.
fn ascii_json(value: &impl serde::Serialize) -> String {
    let text = serde_json::to_string(value).unwrap_or_default();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut buf = [0u16; 2];
            for unit in c.encode_utf16(&mut buf) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// `POST /v1/backup`: the raw snapshot as the body.
#[tracing::instrument(skip_all)]
pub async fn snapshot(
    State(app): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<super::guard::Caller>,
) -> Result<Response, HttpError> {
    let Ok(permit) = app.backups.clone().try_acquire_owned() else {
        return Err(HttpError::new(
            ErrorCode::TooManyStreams,
            format!(
                "{} backup streams are being served already (max_backup_streams); wait for one to finish",
                app.config.max_backup_streams
            ),
        )
        .retry_after(10));
    };
    // A scratch snapshot file goes beside the data (same filesystem,
    // cleaned by the next start); an engine without a data directory uses
    // the temporary folder.
    let scratch = match app.store.engine() {
        "sqlite" => app.config.data_dir.clone(),
        _ => std::env::temp_dir(),
    };
    let snapshot = app.store.snapshot(&scratch).await?;
    let info = snapshot.info;
    tracing::info!(
        epoch = info.epoch,
        seq = info.seq,
        bytes = info.bytes,
        "online backup snapshot taken"
    );
    app.audit
        .record(
            &caller.0,
            "backup",
            serde_json::json!({"epoch": info.epoch, "seq": info.seq, "bytes": info.bytes}),
        )
        .await;
    let meta = HeaderValue::from_str(&ascii_json(&info))
        .map_err(|e| HttpError::new(ErrorCode::Internal, format!("snapshot metadata: {e}")))?;
    let body = Body::from_stream(relay(
        snapshot.reader,
        std::time::Duration::from_secs(app.config.backup_stall_secs.max(1)),
        permit,
    ));
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(info.bytes));
    h.insert(SNAPSHOT_HEADER, meta);
    Ok(resp)
}

/// The snapshot stream as a body that ends (and releases the snapshot and
/// its place) once the client has not taken a chunk for `stall`: an unread
/// stream cannot pin a read transaction or a deleted snapshot for ever.
fn relay(
    mut snapshot: Box<dyn std::io::Read + Send>,
    stall: std::time::Duration,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    const CHUNK: usize = 1 << 20;
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let runtime = tokio::runtime::Handle::current();
    // The snapshot is a blocking reader: read on a blocking thread, handed
    // over with the stall limit.
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        loop {
            let mut chunk = vec![0u8; CHUNK];
            let chunk = match snapshot.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => {
                    chunk.truncate(n);
                    Ok(bytes::Bytes::from(chunk))
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
            let failed = chunk.is_err();
            match runtime.block_on(tokio::time::timeout(stall, tx.send(chunk))) {
                Ok(Ok(())) if !failed => {}
                Ok(_) => return,
                Err(_) => {
                    tracing::warn!(
                        stall_secs = stall.as_secs(),
                        "backup stream unread; closing it and releasing its snapshot"
                    );
                    let _ = tx.try_send(Err(std::io::Error::other(
                        "backup stream unread for too long",
                    )));
                    return;
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// `GET /v1/backup/config`: the effective configuration and the `--config`
/// file the server started with, if any, both with secrets redacted.
pub async fn config(
    State(app): State<Arc<AppState>>,
) -> Result<Json<serde_json::Value>, HttpError> {
    crate::backup_config::for_backup(&app.config)
        .await
        .map(Json)
        .map_err(|e| {
            HttpError::new(
                ErrorCode::Internal,
                format!("{e}; restore it, or restart the server without --config"),
            )
        })
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    #[tokio::test]
    async fn an_unread_backup_stream_ends_and_frees_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap");
        std::fs::write(&path, vec![7u8; 4 << 20]).unwrap();
        let places = std::sync::Arc::new(tokio::sync::Semaphore::new(1));
        let permit = places.clone().try_acquire_owned().unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let stall = std::time::Duration::from_millis(100);
        let mut body = Box::pin(super::relay(Box::new(file), stall, permit));
        let first = body.next().await.unwrap().unwrap();
        assert!(!first.is_empty());
        assert_eq!(places.available_permits(), 0, "held while streaming");
        // The client stops reading for longer than the stall limit.
        tokio::time::sleep(stall * 4).await;
        let mut total = first.len();
        let mut failed = false;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(c) => total += c.len(),
                Err(_) => failed = true,
            }
        }
        assert!(total < 4 << 20 || failed, "the stream was cut short");
        assert_eq!(places.available_permits(), 1, "its place is free again");
    }

    #[test]
    fn header_json_is_ascii_and_still_json() {
        let text = super::ascii_json(&serde_json::json!({"source": "ops-é😀"}));
        assert!(text.is_ascii());
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["source"], "ops-é😀");
    }
}
