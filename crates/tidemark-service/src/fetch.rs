//! The read path: cache, then DB server, then (for `latest-only`) waiting
//! until the data is current (P2, P9).
//!
//! Invariant: a `latest-only` read never returns an entry the DB server
//! flagged as recovering, nor a suspect entry (older cache generation), nor
//! any cached entry while the watch stream is not synced, without
//! revalidating it; a `stale-ok` read that cannot revalidate serves the
//! cached entry marked `recovering`. A waiting read registers for the key's push
//! *before* it asks the DB server, so a push that lands in between wakes it.

use crate::cache::{Entry, Origin};
use crate::policy::Freshness;
use crate::service::Shared;
use bytes::Bytes;
use rand::Rng;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidemark_api::{ClientError, ErrorCode, RecordAnswer, Source};
use tokio::sync::Notify;

/// A read's answer.
#[derive(Debug, Clone)]
pub struct Served {
    pub body: Bytes,
    pub found: bool,
    pub recovering: bool,
    pub source: Source,
}

impl Served {
    fn from_entry(e: &Entry) -> Self {
        Served {
            body: e.body.clone(),
            found: e.found,
            recovering: e.recovering,
            source: Source::Cache,
        }
    }

    /// A cached entry served as possibly outdated (`recovering: true`).
    fn marked(e: &Entry) -> Self {
        if e.recovering {
            return Self::from_entry(e);
        }
        let mut a = e.answer(Source::Cache);
        a.recovering = true;
        Served {
            body: Bytes::from(serde_json::to_vec(&a).unwrap_or_default()),
            found: e.found,
            recovering: true,
            source: Source::Cache,
        }
    }

    fn from_db(e: &Entry) -> Self {
        let mut a = e.answer(Source::Db);
        a.recovering = e.recovering;
        let body = Bytes::from(serde_json::to_vec(&a).unwrap_or_default());
        Served {
            body,
            found: e.found,
            recovering: e.recovering,
            source: Source::Db,
        }
    }

    /// The decoded answer (for library users).
    pub fn answer(&self) -> Option<RecordAnswer> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// Why a read got no answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ReadError {
    pub code: ErrorCode,
    pub status: u16,
    pub message: String,
    pub retry_after: Option<u64>,
}

/// Whether a cached entry may be served without asking the DB server: the
/// stream is live (synced), the entry is not suspect, and it is current or
/// the read accepts stale data. See ARCHITECTURE.md, "What a service server
/// may serve".
fn usable(e: &Entry, generation: u64, live: bool, freshness: Freshness) -> bool {
    live && e.generation == generation && (!e.recovering || freshness == Freshness::StaleOk)
}

struct Waiter<'a> {
    shared: &'a Shared,
    slot: String,
    notify: Arc<Notify>,
}

impl<'a> Waiter<'a> {
    fn new(shared: &'a Shared, table: &str, key: &str) -> Self {
        let slot = tidemark_api::keyslot::KeySlot::new(table, key).into_string();
        let notify = shared
            .waiters
            .lock()
            .entry(slot.clone())
            .or_insert_with(|| Arc::new(Notify::new()))
            .clone();
        Waiter {
            shared,
            slot,
            notify,
        }
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut w = self.shared.waiters.lock();
        // The map holds one reference and we hold one: nobody else waits.
        if Arc::strong_count(&self.notify) <= 2 {
            w.remove(&self.slot);
        }
    }
}

/// The cached answer, if the cache may give it without asking the DB
/// server (see [`usable`]).
pub(crate) fn from_cache(
    shared: &Shared,
    table: &str,
    key: &str,
    freshness: Freshness,
) -> Option<Served> {
    let e = shared.cache.get(table, key)?;
    let live = shared.connected.load(Ordering::SeqCst);
    usable(&e, shared.cache.generation(), live, freshness).then(|| Served::from_entry(&e))
}

/// What a DB server's answer, asked for when the cache generation was
/// `asked_in`, gives a read: the answer to serve, or `None` when the read
/// must wait (a `latest` read of data flagged recovering). The answer is
/// cached only while the stream is synced, so its later changes arrive.
pub(crate) fn take_answer(
    shared: &Shared,
    answer: &RecordAnswer,
    asked_in: u64,
    freshness: Freshness,
) -> Option<Served> {
    let entry = if shared.connected.load(Ordering::SeqCst) {
        shared.changes.fetch_add(1, Ordering::Relaxed);
        shared.cache.offer(
            answer,
            Origin::Fetch {
                db_epoch: shared.db_epoch.load(Ordering::SeqCst),
                generation: asked_in,
            },
        )
    } else {
        Arc::new(Entry::new(answer, answer.recovering, asked_in))
    };
    if entry.recovering && freshness == Freshness::Latest {
        return None;
    }
    if entry.recovering {
        shared.metrics.stale_served.inc();
    }
    Some(if entry.version == answer.version {
        Served::from_db(&entry)
    } else {
        Served::from_entry(&entry)
    })
}

/// When the DB server cannot be asked: a `stale-ok` read gets the cached
/// entry marked recovering (it could not be vouched for, or it would have
/// been served from the cache); a `latest` read gets nothing.
pub(crate) fn fallback(
    shared: &Shared,
    table: &str,
    key: &str,
    freshness: Freshness,
) -> Option<Served> {
    if freshness != Freshness::StaleOk {
        return None;
    }
    let cached = shared.cache.get(table, key)?;
    shared.metrics.stale_served.inc();
    Some(Served::marked(&cached))
}

/// Reads `table/key` with the given freshness.
pub async fn read(
    shared: &Shared,
    table: &str,
    key: &str,
    freshness: Freshness,
) -> Result<Served, ReadError> {
    if let Some(served) = from_cache(shared, table, key, freshness) {
        shared.metrics.hits.inc();
        if served.recovering {
            shared.metrics.stale_served.inc();
        }
        return Ok(served);
    }
    shared.metrics.misses.inc();
    let deadline = Instant::now() + Duration::from_millis(shared.config.latest_deadline_ms);
    let mut delay = Duration::from_millis(shared.config.retry_initial_ms.max(1));
    let max_delay = Duration::from_millis(shared.config.retry_max_ms.max(1));
    let waiter = Waiter::new(shared, table, key);
    let mut waited = false;
    loop {
        let notified = waiter.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if waited {
            // A push may have made the cached copy current: no request needed.
            if let Some(served) = from_cache(shared, table, key, freshness) {
                return Ok(served);
            }
        }
        let mut hint = None;
        let asked_in = shared.cache.generation();
        shared.metrics.db_fetches.inc();
        match shared
            .client
            .get_record(table, key, Some(&shared.config.id))
            .await
        {
            Ok(read) => {
                if let Some(served) = take_answer(shared, &read.answer, asked_in, freshness) {
                    return Ok(served);
                }
                hint = read.retry_after;
                tracing::debug!(%table, %key, version = ?read.answer.version, "DB answered recovering; waiting");
            }
            Err(ClientError::Api {
                status,
                error,
                retry_after,
            }) if status != 503 => {
                return Err(ReadError {
                    code: error.code,
                    status,
                    message: error.message,
                    retry_after,
                });
            }
            Err(e) => {
                if let Some(served) = fallback(shared, table, key, freshness) {
                    return Ok(served);
                }
                if Instant::now() >= deadline {
                    return Err(ReadError {
                        code: ErrorCode::DbUnavailable,
                        status: 503,
                        message: format!(
                            "{e}; this read has no cached answer to fall back on, retry later"
                        ),
                        retry_after: Some(1),
                    });
                }
                if let ClientError::Api { retry_after, .. } = e {
                    hint = retry_after;
                }
            }
        }
        if !waited {
            shared.metrics.waits.inc();
            waited = true;
        }
        let now = Instant::now();
        if now >= deadline {
            shared.metrics.deadline_503.inc();
            return Err(ReadError {
                code: ErrorCode::StaleData,
                status: 503,
                message: format!(
                    "{table}/{key} is being recovered on the DB server and this server serves only the latest data; retry later, or send 'Tidemark-Freshness: stale-ok' to accept data that may be outdated"
                ),
                retry_after: Some(1),
            });
        }
        // Exponential backoff with jitter, at least the server's hint. While
        // the watch stream is open the key's push (or an `epoch` event) wakes
        // us, so polling is only a rare safety net.
        let jittered = Duration::from_micros(
            rand::thread_rng().gen_range(delay.as_micros() as u64 / 2..=delay.as_micros() as u64),
        );
        let mut pause = hint
            .map(Duration::from_secs)
            .unwrap_or_default()
            .max(jittered);
        if shared.connected.load(Ordering::SeqCst) && hint.is_some() {
            pause = pause.max(Duration::from_millis(shared.config.recovering_poll_ms));
        }
        let pause = pause.min(deadline - now);
        tokio::select! {
            _ = &mut notified => tracing::debug!(%table, %key, "woken"),
            _ = tokio::time::sleep(pause) => {}
            _ = shared.shutdown.cancelled() => {
                return Err(ReadError { code: ErrorCode::NotReady, status: 503, message: "the service server is shutting down; retry on another".into(), retry_after: Some(1) });
            }
        }
        delay = (delay * 2).min(max_delay);
    }
}
