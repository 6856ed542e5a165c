//! The recovery endpoints (P5–P7, P10): schedule list, complete, progress,
//! flags, and the operator's explicit abort.

use super::error::HttpError;
use super::guard::Caller;
use super::AppState;
use crate::recovery::CompleteError;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Extension;
use axum::Json;
use serde::Deserialize;
use std::sync::Arc;
use tidemark_api::state::{FlagInfo, ScheduleAnswer, ScheduleChunk};
use tidemark_api::{ErrorCode, RecoveryStatus};

/// Most entries accepted in one schedule chunk.
const MAX_CHUNK: usize = 200_000;

/// `GET /v1/recovery`.
pub async fn status(State(app): State<Arc<AppState>>) -> Result<Json<RecoveryStatus>, HttpError> {
    let epoch = app.store.meta().await?.epoch;
    Ok(Json(app.recovery.status(epoch).await?))
}

/// `POST /v1/recovery/schedule`: one chunk of the schedule list.
#[tracing::instrument(skip_all, fields(source, entries, final_chunk))]
pub async fn schedule(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Json<ScheduleAnswer>, HttpError> {
    let chunk: ScheduleChunk = serde_json::from_slice(&body).map_err(|e| {
        HttpError::new(
            ErrorCode::BadJson,
            format!("the body is not a schedule chunk: {e}; send {{\"source\", \"entries\": [{{\"table\", \"key\", \"through_seq\"}}], \"final\"}}"),
        )
    })?;
    let span = tracing::Span::current();
    span.record("source", chunk.source.as_str());
    span.record("entries", chunk.entries.len());
    span.record("final_chunk", chunk.final_chunk);
    if chunk.entries.len() > MAX_CHUNK {
        return Err(HttpError::new(
            ErrorCode::BatchTooLarge,
            format!("the chunk holds {} entries, at most {MAX_CHUNK} are accepted; send the list in more chunks", chunk.entries.len()),
        ));
    }
    if !chunk.expect_sources.is_empty() {
        // Checked like the chunk's own source first: nothing of a chunk
        // that is refused stays behind.
        for s in &chunk.expect_sources {
            tidemark_store::apply::validate_source_name(s).map_err(HttpError::from)?;
        }
        app.recovery.expect(&chunk.expect_sources).await?;
        // Keeping the blanket up is an operator's decision, as a waiver is.
        app.audit
            .record(
                &caller.0,
                "expect_sources",
                serde_json::json!({"source": chunk.source, "expect_sources": chunk.expect_sources}),
            )
            .await;
    }
    let (final_chunk, source, without) = (
        chunk.final_chunk,
        chunk.source.clone(),
        chunk.without_sources.clone(),
    );
    let added = app
        .recovery
        .schedule(
            &app.hub,
            &chunk.source,
            chunk.entries,
            chunk.final_chunk,
            chunk.without_sources,
        )
        .await?;
    tracing::info!(
        flagged = added.flagged,
        skipped = added.skipped,
        "schedule chunk applied"
    );
    // Keys flagged here are not served as current by any standby's
    // service server once this is answered.
    super::confirm::shared_confirmed(&app).await?;
    if final_chunk {
        app.audit
            .record(
                &caller.0,
                "schedule_final",
                serde_json::json!({"source": source, "without_sources": without}),
            )
            .await;
    }
    Ok(Json(ScheduleAnswer {
        flagged: added.flagged,
        skipped: added.skipped,
        final_chunk: chunk.final_chunk,
    }))
}

/// `POST /v1/recovery/complete`.
pub async fn complete(State(app): State<Arc<AppState>>) -> Result<Json<RecoveryStatus>, HttpError> {
    match app.recovery.complete().await {
        Ok(_) => {}
        Err(e @ CompleteError::ScheduleIncomplete(_)) => {
            return Err(HttpError::new(ErrorCode::ScheduleIncomplete, e.to_string()))
        }
        Err(CompleteError::Store(e)) => return Err(e.into()),
    }
    app.recovery.announce_settled(&app.hub).await;
    status(State(app)).await
}

#[derive(Debug, Deserialize)]
pub struct FlagsQuery {
    limit: Option<usize>,
    /// Only this table.
    table: Option<String>,
    /// Only keys that start with this.
    prefix: Option<String>,
    /// The `next` of the previous page.
    after: Option<String>,
}

/// `GET /v1/recovery/flags?limit=N[&table=T][&prefix=P][&after=CURSOR]`:
/// which keys are still flagged, and the order each waits for; one page,
/// in key order, read from the flags' index, with `next` for the page
/// after (null at the end).
pub async fn flags(
    State(app): State<Arc<AppState>>,
    query: Result<Query<FlagsQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, HttpError> {
    let Query(q) = query.map_err(|e| {
        HttpError::new(
            ErrorCode::BadRequest,
            format!(
                "{}; 'limit' is a whole number (a page holds 1 to 10000 flags: a larger one is cut to 10000), 'table', 'prefix' and 'after' are text",
                e.body_text()
            ),
        )
    })?;
    // A page of none would say nothing and give no `next`: refused, not
    // taken as 1 (a larger one is cut, as documented).
    if q.limit == Some(0) {
        return Err(HttpError::new(
            ErrorCode::BadRequest,
            "'limit' is 0; a page holds 1 to 10000 flags: give 1 or more, or leave it out for 100",
        ));
    }
    let limit = q.limit.unwrap_or(100).min(10_000);
    let mut after = match &q.after {
        Some(c) => Some(cursor::decode(c).ok_or_else(|| {
            HttpError::new(
                ErrorCode::BadRequest,
                "'after' is not a cursor this server gave (use the 'next' of the previous page, or leave it out to start again)",
            )
        })?),
        None => None,
    };
    // No engine stores NUL, so none can match it (and PostgreSQL refuses
    // it in a query).
    let texts = [q.table.as_deref(), q.prefix.as_deref()];
    let cursor_texts = after
        .iter()
        .flat_map(|(t, k, s)| [t.as_str(), k.as_str(), s.as_str()]);
    if texts
        .into_iter()
        .flatten()
        .chain(cursor_texts)
        .any(|t| t.contains('\0'))
    {
        return Err(HttpError::new(
            ErrorCode::BadRequest,
            "'table', 'prefix' and 'after' cannot contain the NUL character (U+0000): no stored key holds it; remove it",
        ));
    }
    // A table the schema lacks holds no flags: said, as a record read
    // says it, not answered with an empty page.
    if let Some(t) = &q.table {
        app.store
            .schema()
            .table(t)
            .map_err(|e| HttpError::from(tidemark_api::ApiError::from(e)))?;
    }
    // A prefix is searched table by table, each through its own index.
    let tables: Vec<Option<String>> = match (&q.table, &q.prefix) {
        (Some(t), _) => vec![Some(t.clone())],
        (None, Some(_)) => app
            .store
            .schema()
            .tables
            .keys()
            .cloned()
            .map(Some)
            .collect(),
        (None, None) => vec![None],
    };
    let mut flags = Vec::new();
    for table in tables {
        if let (Some(t), Some((at, _, _))) = (&table, &after) {
            if t < at {
                continue;
            }
        }
        let page = tidemark_store::FlagPage {
            after: after
                .take()
                .filter(|(at, _, _)| table.as_ref().is_none_or(|t| t == at)),
            table,
            prefix: q.prefix.clone(),
            limit: limit - flags.len(),
        };
        flags.extend(app.store.flag_page(&page).await?);
        if flags.len() >= limit {
            break;
        }
    }
    let next = (flags.len() >= limit)
        .then(|| flags.last())
        .flatten()
        .map(|f| cursor::encode(&f.table, &f.key, &f.source));
    let flags: Vec<FlagInfo> = flags
        .into_iter()
        .map(|f| FlagInfo {
            table: f.table,
            key: f.key,
            source: f.source,
            through_seq: f.through_seq,
            high_water: f.high_water,
        })
        .collect();
    let remaining = app.store.recovery_meta().await?.remaining;
    Ok(Json(
        serde_json::json!({"remaining": remaining, "flags": flags, "next": next}),
    ))
}

/// Page cursors: the last flag's `(table, key, source)`, as hex of its
/// JSON, so any key survives a URL.
mod cursor {
    pub fn encode(table: &str, key: &str, source: &str) -> String {
        let json = serde_json::json!([table, key, source]).to_string();
        json.bytes().map(|b| format!("{b:02x}")).collect()
    }

    pub fn decode(c: &str) -> Option<(String, String, String)> {
        if !c.len().is_multiple_of(2) || c.len() > 4096 {
            return None;
        }
        let bytes: Option<Vec<u8>> = (0..c.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(c.get(i..i + 2)?, 16).ok())
            .collect();
        serde_json::from_slice(&bytes?).ok()
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn a_cursor_round_trips_any_key_and_junk_is_refused() {
            let c = super::encode("subscriber", "+81 3/é\"", "ops-1");
            assert_eq!(
                super::decode(&c),
                Some(("subscriber".into(), "+81 3/é\"".into(), "ops-1".into()))
            );
            assert_eq!(super::decode("zz"), None);
            assert_eq!(super::decode("5b"), None);
            assert_eq!(super::decode(&c[1..]), None);
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbortBody {
    reason: Option<String>,
}

/// `POST /v1/recovery/abort`: an operator ends a recovery the OpS will never
/// complete. Explicit and logged; requires a reason.
pub async fn abort(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, HttpError> {
    let reason = serde_json::from_slice::<AbortBody>(&body)
        .ok()
        .and_then(|b| b.reason)
        .filter(|r| !r.trim().is_empty())
        .ok_or_else(|| {
            HttpError::new(
                ErrorCode::BadRequest,
                "ending a recovery drops every recovery flag, so outdated records will be served as current; send {\"reason\": \"…\"} to confirm",
            )
        })?;
    let dropped = app.recovery.abort(&app.hub, &reason).await?;
    app.audit
        .record(
            &caller.0,
            "recovery_abort",
            serde_json::json!({"reason": reason, "dropped_flags": dropped}),
        )
        .await;
    Ok(Json(
        serde_json::json!({"dropped_flags": dropped, "state": "normal", "reason": reason}),
    ))
}
