//! Online backup through the running server (B1, B5).
//!
//! `POST /v1/backup` takes one consistent snapshot (SQLite online backup
//! API, one read transaction: writers go on) into a temporary file in the
//! data directory and streams it back as the body; what the snapshot holds
//! comes in the `Tidemark-Snapshot` header as JSON. The file is unlinked as
//! soon as it is open, so nothing is left behind even if the client goes
//! away. `GET /v1/backup/config` returns the server's configuration.

use super::error::HttpError;
use super::AppState;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::Arc;
use tidemark_api::ErrorCode;
use tidemark_store::layout::SNAPSHOT_PREFIX;

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
    // The snapshot file goes beside the data (same filesystem, cleaned by
    // the next start); an engine without a data directory uses the
    // temporary folder.
    let scratch = match app.store.engine() {
        "sqlite" => app.config.data_dir.clone(),
        _ => std::env::temp_dir(),
    };
    let tmp = scratch.join(format!(
        "{SNAPSHOT_PREFIX}{:016x}.tmp",
        rand::random::<u64>()
    ));
    let info = app.store.snapshot_to(&tmp).await?;
    let file = tokio::fs::File::open(&tmp).await;
    // Unlinked while open: the handle keeps the data until the body is sent.
    let _ = tokio::fs::remove_file(&tmp).await;
    let file = file.map_err(|e| {
        HttpError::new(
            ErrorCode::StoreFailure,
            format!("cannot read the snapshot {}: {e}; retry", tmp.display()),
        )
    })?;
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
        file,
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

/// The snapshot file as a body that ends (and releases the file and its
/// place) once the client has not taken a chunk for `stall`: an unread
/// stream cannot pin a deleted snapshot for ever.
fn relay(
    file: tokio::fs::File,
    stall: std::time::Duration,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    use futures::StreamExt;
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        let _permit = permit;
        let mut chunks = tokio_util::io::ReaderStream::with_capacity(file, 1 << 16);
        while let Some(chunk) = chunks.next().await {
            match tokio::time::timeout(stall, tx.send(chunk)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
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

/// `GET /v1/backup/config`: the effective configuration (secrets
/// redacted) and the `--config` file the server started with, if any.
pub async fn config(
    State(app): State<Arc<AppState>>,
) -> Result<Json<serde_json::Value>, HttpError> {
    let mut effective = serde_json::to_value(&app.config).unwrap_or_default();
    if let Some(url) = effective.get_mut("database_url") {
        if !url.is_null() {
            *url = "***".into();
        }
    }
    let file = match &app.config.config_file {
        Some(path) => {
            let content = tokio::fs::read_to_string(path).await.map_err(|e| {
                HttpError::new(
                    ErrorCode::Internal,
                    format!(
                        "cannot read the server's config file {}: {e}; restore it, or restart the server without --config",
                        path.display()
                    ),
                )
            })?;
            serde_json::json!({"path": path.display().to_string(), "content": content})
        }
        None => serde_json::Value::Null,
    };
    Ok(Json(
        serde_json::json!({"effective": effective, "file": file}),
    ))
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
        let file = tokio::fs::File::open(&path).await.unwrap();
        let stall = std::time::Duration::from_millis(100);
        let mut body = Box::pin(super::relay(file, stall, permit));
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
