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
use crate::shared::{Asked, Shared};
use bytes::Bytes;
use rand::Rng;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tidemark_api::client::RecordRead;
use tidemark_api::{ClientError, DbClient, ErrorCode, RecordAnswer, Source};
use tokio::sync::Notify;
// Tokio's clock: the wait logic is tested with a paused clock.
use tokio::time::Instant;

/// Where a read the cache cannot answer goes: the DB server.
#[async_trait::async_trait]
pub trait Upstream: Send + Sync + 'static {
    /// `GET /v1/records/{table}/{key}`, registering interest as `subscriber`.
    async fn get_record(
        &self,
        table: &str,
        key: &str,
        subscriber: &str,
    ) -> Result<RecordRead, ClientError>;
}

#[async_trait::async_trait]
impl Upstream for DbClient {
    async fn get_record(
        &self,
        table: &str,
        key: &str,
        subscriber: &str,
    ) -> Result<RecordRead, ClientError> {
        DbClient::get_record(self, table, key, Some(subscriber)).await
    }
}

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
            body: e.body(),
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
    live && e.generation() == generation && (!e.recovering || freshness == Freshness::StaleOk)
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
    let live = shared.vouched();
    shared
        .cache
        .read(table, key, |e| {
            // The generation is read after the entry, as before this read
            // went under the lock: an `epoch` event that lands in between
            // makes the entry suspect rather than served.
            let generation = shared.cache.generation();
            usable(e, generation, live, freshness).then(|| Served::from_entry(e))
        })
        .flatten()
}

/// What a DB server's answer, asked for at `asked`, gives a read: the
/// answer to serve, or `None` when the read must wait (a `latest` read of
/// data flagged recovering). The answer is cached as current only if the
/// stream synced when it was asked for still is, so its later changes
/// arrive (a stream opened since, perhaps on another instance, may not
/// know of the interest the fetch registered).
pub(crate) fn take_answer(
    shared: &Shared,
    answer: &RecordAnswer,
    asked: Asked,
    freshness: Freshness,
) -> Option<Served> {
    let asked_in = asked.generation;
    let entry = if asked.same_stream(shared) {
        shared.changes.fetch_add(1, Ordering::Relaxed);
        let entry = shared.cache.offer(
            answer,
            Origin::Fetch {
                db_epoch: shared.db_epoch.load(Ordering::SeqCst),
                generation: asked_in,
            },
        );
        if !asked.same_stream(shared) {
            // The stream ended between the check and the offer (and may
            // have declared the cache's keys elsewhere without this one):
            // not current after all.
            shared
                .cache
                .demote(&answer.table, &answer.key, entry.version());
        }
        entry
    } else {
        // Not vouched for by a stream, so not served from the cache later;
        // but an answer older than a version this server already holds or
        // served in the same epoch is known to be outdated (an instance of
        // a cluster that lags): the newer one is served instead. A newer
        // copy also stands, marked, against a flagged answer, even one from
        // an earlier history, as `Cache::offer` keeps it once a stream
        // vouches: while it holds the newer copy, a read is not given the
        // restored copy and then the newer one. The DB server's answer is
        // remembered (suspect) as a floor for the next one.
        let entry = match shared.cache.get(&answer.table, &answer.key) {
            Some(cached)
                if cached.version() > answer.version
                    && (answer.recovering
                        || (cached.version().map(|v| v.epoch)
                            == answer.version.map(|v| v.epoch)
                            && !shared.cache.is_foreign(&cached))) =>
            {
                Entry::new(
                    &cached.answer(tidemark_api::Source::Cache),
                    cached.recovering || answer.recovering,
                    asked_in,
                )
            }
            _ => Entry::new(answer, answer.recovering, asked_in),
        };
        shared.cache.remember(answer);
        entry
    };
    if entry.recovering && freshness == Freshness::Latest {
        return None;
    }
    if entry.recovering {
        shared.metrics.stale_served.inc();
    }
    Some(if entry.version() == answer.version {
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

/// A `latest` read whose deadline passed while its record was recovering.
fn stale_data(table: &str, key: &str) -> ReadError {
    ReadError {
        code: ErrorCode::StaleData,
        status: 503,
        message: format!(
            "{table}/{key} is being recovered on the DB server and this server serves only the latest data; retry later, or send 'Tidemark-Freshness: stale-ok' to accept data that may be outdated"
        ),
        retry_after: Some(1),
    }
}

/// Why a read the DB server did not answer gets nothing from the cache:
/// it holds no copy, or the read takes only the latest data and the copy
/// cannot be confirmed current.
fn no_fallback(shared: &Shared, table: &str, key: &str, freshness: Freshness) -> &'static str {
    if freshness == Freshness::Latest && shared.cache.get(table, key).is_some() {
        "this read takes only the latest data, and the cached copy cannot be confirmed current without the DB server (send 'Tidemark-Freshness: stale-ok' to accept data that may be outdated)"
    } else {
        "this read has no cached answer to fall back on"
    }
}

/// A read whose deadline passed with the DB server not answering (counted
/// with the reads that gave up waiting).
fn db_unavailable(shared: &Shared, table: &str, key: &str, freshness: Freshness) -> ReadError {
    shared.metrics.deadline_503.inc();
    ReadError {
        code: ErrorCode::DbUnavailable,
        status: 503,
        message: format!(
            "the DB server did not answer within this read's deadline ({} ms, latest_deadline_ms) and {}; retry later",
            shared.config.latest_deadline_ms,
            no_fallback(shared, table, key, freshness)
        ),
        retry_after: Some(1),
    }
}

/// A read the DB server kept refusing (a 503: quiescing, no primary, not
/// ready) until its deadline, or past it by its own `Retry-After`: its
/// refusal and its `Retry-After`, not a claim that it did not answer.
fn still_refused(
    shared: &Shared,
    refusal: &(String, Option<u64>),
    table: &str,
    key: &str,
    freshness: Freshness,
) -> ReadError {
    shared.metrics.deadline_503.inc();
    ReadError {
        code: ErrorCode::DbUnavailable,
        status: 503,
        message: format!(
            "{}; {}; retry later",
            refusal.0,
            no_fallback(shared, table, key, freshness)
        ),
        retry_after: refusal.1.or(Some(1)),
    }
}

/// A read the DB server refused because of this service server's own
/// token: said at once, without the DB server's details.
fn credentials_refused(why: &str) -> ReadError {
    ReadError {
        code: ErrorCode::DbUnavailable,
        status: 503,
        message: format!("the DB server refused this service server's token, and {why}; the operator must give the service server a valid token (its log says more); retry later"),
        retry_after: Some(5),
    }
}

/// Returns once the client no longer uses the instance `base`.
async fn moved_from(shared: &Shared, base: &str) {
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if shared.client.base() != base {
            return;
        }
    }
}

/// How long a `stale-ok` read with a cached copy waits for the DB server
/// before it serves the copy marked recovering.
const STALE_OK_WAIT: Duration = Duration::from_millis(500);

/// After a `stale-ok` read waited [`STALE_OK_WAIT`] in vain, how long the
/// next ones with a cached copy serve it at once, without asking; then one
/// of them asks again while the others still do not wait.
const SILENT_FOR: Duration = Duration::from_secs(2);

/// Whether a `stale-ok` read with a cached copy serves it at once, the DB
/// server having been silent a moment ago. Once [`SILENT_FOR`] has passed,
/// the first read to come asks again (and waits up to [`STALE_OK_WAIT`]),
/// and the silence is counted on meanwhile: a hung DB server holds one
/// read that long per [`SILENT_FOR`], not every read that comes then.
fn db_silent(shared: &Shared) -> bool {
    let mut until = shared.db_silent_until.lock();
    let now = tokio::time::Instant::now();
    match *until {
        Some(t) if now < t => true,
        Some(_) => {
            // This read asks; an answer ends the silence.
            *until = Some(now + SILENT_FOR);
            false
        }
        None => false,
    }
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
    if freshness == Freshness::StaleOk
        && shared.cache.read(table, key, |_| ()).is_some()
        && db_silent(shared)
    {
        // Each such read would wait as long in vain (the DB server hangs).
        if let Some(served) = fallback(shared, table, key, freshness) {
            return Ok(served);
        }
    }
    let deadline = Instant::now() + Duration::from_millis(shared.config.latest_deadline_ms);
    let mut delay = Duration::from_millis(shared.config.retry_initial_ms.max(1));
    let max_delay = Duration::from_millis(shared.config.retry_max_ms.max(1));
    let waiter = Waiter::new(shared, table, key);
    let mut waited = false;
    // Why the last try failed: the DB server (unreachable, 503), or the
    // record was still being recovered; and the DB server's refusal, if it
    // answered one.
    let mut db_failed = false;
    let mut refusal: Option<(String, Option<u64>)> = None;
    loop {
        let notified = waiter.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if waited {
            // A push may have made the cached copy current: no request needed.
            if let Some(served) = from_cache(shared, table, key, freshness) {
                return Ok(served);
            }
            if Instant::now() >= deadline {
                // Woken at the deadline: a request now would have no time
                // to be answered (and its timeout would blame the DB server).
                return Err(if db_failed {
                    match &refusal {
                        Some(r) => still_refused(shared, r, table, key, freshness),
                        None => db_unavailable(shared, table, key, freshness),
                    }
                } else {
                    shared.metrics.deadline_503.inc();
                    stale_data(table, key)
                });
            }
        }
        let mut hint = None;
        // Whether the answer's key has a stream that will push its change.
        let mut pushed_to_us = false;
        let asked = Asked::now(shared);
        shared.metrics.db_fetches.inc();
        // The DB server's answer is awaited no longer than the read's
        // deadline, and a read that may fall back on its cached copy waits
        // only briefly: a DB server that hangs (a partition) does not hang
        // the terminals (P4, P9).
        let full = deadline.saturating_duration_since(Instant::now());
        let mut budget = full;
        if freshness == Freshness::StaleOk && shared.cache.read(table, key, |_| ()).is_some() {
            budget = budget.min(STALE_OK_WAIT);
        }
        let base = shared.client.base().to_owned();
        let answer = tokio::select! {
            a = tokio::time::timeout(
                budget,
                shared.upstream.get_record(table, key, &shared.config.id),
            ) => a,
            // The watcher gave this instance up (it stopped vouching: paused,
            // or cut off): asked again at once where the client went, rather
            // than held to the deadline by an instance that will not answer.
            () = moved_from(shared, &base), if shared.client.bases().len() > 1 => continue,
        };
        let Ok(answer) = answer else {
            if budget < full {
                *shared.db_silent_until.lock() = Some(tokio::time::Instant::now() + SILENT_FOR);
            }
            if budget == full && shared.client.move_on(&base) {
                // The instance did not answer within a whole deadline: the
                // next read (and the stream) try another.
                tracing::warn!(from = %base, to = %shared.client.base(), "DB-server instance did not answer a read in time; moving to another");
            }
            if let Some(served) = fallback(shared, table, key, freshness) {
                return Ok(served);
            }
            return Err(db_unavailable(shared, table, key, freshness));
        };
        match answer {
            Ok(read) => {
                *shared.db_silent_until.lock() = None;
                db_failed = false;
                refusal = None;
                // Another instance answered (the client moved on in the
                // read): its interest is not the stream's, which may stay
                // where it is.
                let asked = match &read.base {
                    Some(b) if *b != *shared.stream_base.lock() => asked.elsewhere(),
                    _ => asked,
                };
                pushed_to_us = asked.same_stream(shared);
                if let Some(history) = &read.history {
                    crate::watcher::heard_history(shared, history);
                }
                if let Some(served) = take_answer(shared, &read.answer, asked, freshness) {
                    return Ok(served);
                }
                hint = read.retry_after;
                tracing::debug!(%table, %key, version = ?read.answer.version, "DB answered recovering; waiting");
            }
            // The terminal's own mistakes (a bad key, an unknown table)
            // are its answer. The rest is this server's trouble with the
            // DB server (its token refused, a limit, a store failure): a
            // cached copy is served where the read allows, or the read
            // retries as on a 503, and the terminal is not told about a
            // token it never sent.
            Err(ClientError::Api {
                status,
                error,
                retry_after,
            }) if matches!(status, 400 | 404 | 405 | 413) => {
                return Err(ReadError {
                    code: error.code,
                    status,
                    message: error.message,
                    retry_after,
                });
            }
            Err(e) => {
                if let ClientError::Api { status, error, .. } = &e {
                    // Once per 10 s at most: every read retries it.
                    static WARNED_MS: std::sync::atomic::AtomicU64 =
                        std::sync::atomic::AtomicU64::new(0);
                    let now = crate::shared::mono_ms() + 10_000;
                    let last = WARNED_MS.load(Ordering::Relaxed);
                    if *status != 503
                        && now >= last + 10_000
                        && WARNED_MS
                            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                            .is_ok()
                    {
                        tracing::warn!(status, code = error.code.as_str(), reason = %error.message, "the DB server refused a read; check this service server's token and the DB server's log");
                    }
                }
                db_failed = true;
                if let Some(served) = fallback(shared, table, key, freshness) {
                    return Ok(served);
                }
                if let ClientError::Api { status, error, .. } = &e {
                    // Its own credentials (no token, an unknown one, one
                    // without the role; not a name another token holds):
                    // waiting out the deadline would not mend them, only
                    // hold the terminal.
                    let name_taken = error.message.starts_with("subscriber '");
                    if *status == 401 || (*status == 403 && !name_taken) {
                        return Err(credentials_refused(no_fallback(
                            shared, table, key, freshness,
                        )));
                    }
                }
                refusal = match &e {
                    ClientError::Api { retry_after, .. } => {
                        hint = *retry_after;
                        Some((e.to_string(), *retry_after))
                    }
                    _ => None,
                };
                // Past the deadline, or told to come back after it (a
                // quiesced DB server's `Retry-After: 30`): answered now.
                let back_at = Instant::now() + Duration::from_secs(hint.unwrap_or(0));
                if back_at >= deadline {
                    let r = refusal.unwrap_or_else(|| (e.to_string(), Some(1)));
                    return Err(still_refused(shared, &r, table, key, freshness));
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
            return Err(stale_data(table, key));
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
        // Only a stream that vouches for the key sends its `recovered`
        // push (an answer from another instance, or a vouch run out,
        // does not): otherwise polling is the only way to learn it.
        if pushed_to_us && hint.is_some() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServiceConfig;
    use crate::service::Service;
    use crate::watcher;
    use std::sync::atomic::AtomicUsize;
    use tidemark_api::event::{HelloEvent, SyncedEvent};
    use tidemark_api::sse::SseEvent;
    use tidemark_api::{ApiError, Version, WatchEvent};
    use tokio_util::sync::CancellationToken;

    /// A DB server that answers by call number.
    struct Scripted {
        calls: AtomicUsize,
        answer: Box<dyn Fn(usize) -> Result<RecordRead, ClientError> + Send + Sync>,
    }

    /// A DB server that never answers (a partition that drops packets).
    struct Hung;

    #[async_trait::async_trait]
    impl Upstream for Hung {
        async fn get_record(&self, _: &str, _: &str, _: &str) -> Result<RecordRead, ClientError> {
            std::future::pending().await
        }
    }

    /// A hung DB server holds a read no longer than its deadline, and a
    /// stale-ok read with a cached copy serves it, marked, after a moment.
    #[tokio::test(start_paused = true)]
    async fn a_hung_db_server_holds_reads_no_longer_than_their_deadline() {
        let config = ServiceConfig {
            id: "svc".into(),
            ..ServiceConfig::default()
        };
        let svc = Service::with_upstream(config, CancellationToken::new(), Arc::new(Hung)).unwrap();
        let started = Instant::now();
        let err = read(&svc.shared, "subscriber", "k", Freshness::Latest)
            .await
            .unwrap_err();
        assert_eq!((err.status, err.code), (503, ErrorCode::DbUnavailable));
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(svc.shared.config.latest_deadline_ms)
        );
        // Counted with the reads that gave up waiting.
        assert_eq!(svc.shared.metrics.deadline_503.get(), 1);
        svc.shared.cache.offer(&record(3, false), Origin::Push);
        let started = Instant::now();
        let served = read(&svc.shared, "subscriber", "k", Freshness::StaleOk)
            .await
            .unwrap();
        assert!(served.recovering, "served marked: it could not be checked");
        assert_eq!(started.elapsed(), STALE_OK_WAIT);
        // The next ones do not wait as long in vain: served at once, marked,
        // for a while (before, each waited 0.5 s: an outside audit).
        let started = Instant::now();
        let served = read(&svc.shared, "subscriber", "k", Freshness::StaleOk)
            .await
            .unwrap();
        assert!(served.recovering);
        assert_eq!(started.elapsed(), Duration::ZERO);
        // Then the DB server is asked again, by one read: the others that
        // come meanwhile are still served at once (before, each waited).
        tokio::time::advance(SILENT_FOR).await;
        let started = Instant::now();
        let shared = svc.shared.clone();
        let asking =
            tokio::spawn(async move { read(&shared, "subscriber", "k", Freshness::StaleOk).await });
        tokio::task::yield_now().await;
        for _ in 0..3 {
            let served = read(&svc.shared, "subscriber", "k", Freshness::StaleOk)
                .await
                .unwrap();
            assert!(served.recovering);
            assert_eq!(started.elapsed(), Duration::ZERO);
        }
        asking.await.unwrap().unwrap();
        assert_eq!(started.elapsed(), STALE_OK_WAIT);
        // And, still silent, not again before another SILENT_FOR.
        let started = Instant::now();
        read(&svc.shared, "subscriber", "k", Freshness::StaleOk)
            .await
            .unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    /// The first instance asked never answers (paused); the next does.
    struct PausedFirst(AtomicUsize);

    #[async_trait::async_trait]
    impl Upstream for PausedFirst {
        async fn get_record(&self, _: &str, _: &str, _: &str) -> Result<RecordRead, ClientError> {
            if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
                std::future::pending::<()>().await;
            }
            Ok(RecordRead {
                answer: record(4, false),
                retry_after: None,
                base: None,
                history: None,
            })
        }
    }

    /// A read held by an instance the watcher gives up (it stopped
    /// vouching for its stream) is asked again at once where the client
    /// went, not held to its deadline and answered 503.
    #[tokio::test(start_paused = true)]
    async fn a_read_follows_the_client_off_an_instance_given_up() {
        let config = ServiceConfig {
            id: "svc".into(),
            db: "http://a.invalid:1,http://b.invalid:1".into(),
            ..ServiceConfig::default()
        };
        let up = Arc::new(PausedFirst(AtomicUsize::new(0)));
        let svc = Service::with_upstream(config, CancellationToken::new(), up.clone()).unwrap();
        let shared = svc.shared.clone();
        let give_up = Duration::from_millis(1200);
        tokio::spawn(async move {
            tokio::time::sleep(give_up).await;
            // What the watcher does when the lease runs out.
            shared.client.move_on("http://a.invalid:1");
        });
        let started = Instant::now();
        let served = read(&svc.shared, "subscriber", "k", Freshness::Latest)
            .await
            .unwrap();
        assert_eq!(served.answer().unwrap().version, Some(Version::new(2, 4)));
        assert!(started.elapsed() < give_up + Duration::from_millis(100));
        assert_eq!(up.0.load(Ordering::SeqCst), 2);
    }

    #[async_trait::async_trait]
    impl Upstream for Scripted {
        async fn get_record(&self, _: &str, _: &str, _: &str) -> Result<RecordRead, ClientError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            (self.answer)(n)
        }
    }

    /// The version a served answer carries.
    fn version(s: &Served) -> Option<Version> {
        serde_json::from_slice::<RecordAnswer>(&s.body)
            .unwrap()
            .version
    }

    fn record(seq: u64, recovering: bool) -> RecordAnswer {
        let mut fields = tidemark_api::Fields::new();
        fields.insert("plan".into(), serde_json::json!(seq));
        RecordAnswer {
            table: "subscriber".into(),
            key: "k".into(),
            found: true,
            fields: Some(fields),
            version: Some(Version::new(2, seq)),
            recovering,
            source: None,
        }
    }

    fn flagged(_: usize) -> Result<RecordRead, ClientError> {
        Ok(RecordRead {
            answer: record(1, true),
            retry_after: Some(1),
            base: None,
            history: None,
        })
    }

    fn unreachable(_: usize) -> Result<RecordRead, ClientError> {
        Err(ClientError::Api {
            status: 503,
            error: ApiError::new(ErrorCode::NotReady, "down"),
            retry_after: None,
        })
    }

    fn service(
        answer: fn(usize) -> Result<RecordRead, ClientError>,
        synced: bool,
    ) -> (Service, Arc<Scripted>) {
        let up = Arc::new(Scripted {
            calls: AtomicUsize::new(0),
            answer: Box::new(answer),
        });
        let config = ServiceConfig {
            id: "svc".into(),
            ..ServiceConfig::default()
        };
        let svc = Service::with_upstream(config, CancellationToken::new(), up.clone()).unwrap();
        if synced {
            stream_synced(&svc, false);
        }
        (svc, up)
    }

    /// A watch stream opens (`resumed`: it replays what was missed) and syncs.
    fn stream_synced(svc: &Service, resumed: bool) {
        let hello_declares = resumed;
        let ev = |e: WatchEvent| SseEvent {
            id: Some("2-0-b".into()),
            event: e.name().into(),
            data: e.data(),
        };
        let hello = HelloEvent {
            epoch: 2,
            seq: 0,
            boot: "b".into(),
            resumed,
            declare: hello_declares,
            vouches: hello_declares,
            history: String::new(),
            schema_version: 0,
        };
        watcher::apply(&svc.shared, &ev(WatchEvent::Hello(hello)));
        watcher::apply(&svc.shared, &ev(WatchEvent::Synced(SyncedEvent { seq: 0 })));
        if hello_declares {
            // An instance of a cluster vouches for its stream.
            let lease = tidemark_api::event::LeaseEvent {
                valid_for_ms: 3_600_000,
                sent_ms: None,
            };
            watcher::apply(&svc.shared, &ev(WatchEvent::Lease(lease)));
        }
    }

    fn quiesced(_: usize) -> Result<RecordRead, ClientError> {
        Err(ClientError::Api {
            status: 503,
            error: ApiError::new(ErrorCode::Quiescing, "offline for maintenance"),
            retry_after: Some(30),
        })
    }

    /// A DB server that refuses and says to come back after the read's
    /// deadline (a quiesced one, `Retry-After: 30`) is answered for at once,
    /// with its refusal and its `Retry-After`; one that refuses with no
    /// such hint is retried until the deadline, and then its refusal is
    /// what the terminal is told (before: "did not answer within this
    /// read's deadline", `Retry-After: 1`, both times after the deadline).
    #[tokio::test(start_paused = true)]
    async fn a_refusing_db_server_is_reported_as_refusing() {
        let (svc, up) = service(quiesced, false);
        let started = Instant::now();
        let err = read(&svc.shared, "subscriber", "k", Freshness::Latest)
            .await
            .unwrap_err();
        assert_eq!((err.status, err.code), (503, ErrorCode::DbUnavailable));
        assert_eq!(err.retry_after, Some(30));
        assert!(
            err.message.contains("offline for maintenance"),
            "{}",
            err.message
        );
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(up.calls.load(Ordering::SeqCst), 1);

        let (svc, up) = service(unreachable, false);
        let started = Instant::now();
        let err = read(&svc.shared, "subscriber", "k", Freshness::Latest)
            .await
            .unwrap_err();
        assert_eq!((err.status, err.code), (503, ErrorCode::DbUnavailable));
        assert!(err.message.contains("down"), "{}", err.message);
        assert!(!err.message.contains("did not answer"), "{}", err.message);
        assert!(started.elapsed() <= Duration::from_millis(svc.shared.config.latest_deadline_ms));
        assert!(up.calls.load(Ordering::SeqCst) > 1, "retried meanwhile");
        assert_eq!(svc.shared.metrics.deadline_503.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_latest_read_of_a_flagged_key_asks_once_then_answers_503_at_its_deadline() {
        // P9: it never serves the flagged data; with the stream synced it
        // waits for a push rather than polling (one request per flagged
        // key: none at the deadline itself, which has no time left).
        let (svc, up) = service(flagged, true);
        let started = Instant::now();
        let err = read(&svc.shared, "subscriber", "k", Freshness::Latest)
            .await
            .unwrap_err();
        assert_eq!((err.status, err.code), (503, ErrorCode::StaleData));
        assert_eq!(err.retry_after, Some(1));
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(svc.shared.config.latest_deadline_ms)
        );
        assert_eq!(up.calls.load(Ordering::SeqCst), 1);
    }

    /// Without a stream the read polls, and its last wake-up falls on the
    /// deadline: it answers `stale_data`, not a request with no time left
    /// whose timeout blamed the DB server (`db_unavailable`, and a move to
    /// another instance), as a third of such reads did.
    /// A DB server that takes 5 ms to answer that the key is recovering.
    struct Slow;

    #[async_trait::async_trait]
    impl Upstream for Slow {
        async fn get_record(&self, _: &str, _: &str, _: &str) -> Result<RecordRead, ClientError> {
            tokio::time::sleep(Duration::from_millis(5)).await;
            flagged(0)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_that_polls_to_its_deadline_answers_stale_data() {
        let config = ServiceConfig {
            id: "svc".into(),
            ..ServiceConfig::default()
        };
        let svc = Service::with_upstream(config, CancellationToken::new(), Arc::new(Slow)).unwrap();
        let base = svc.shared.client.base().to_owned();
        let err = read(&svc.shared, "subscriber", "k", Freshness::Latest)
            .await
            .unwrap_err();
        assert_eq!(
            (err.status, err.code),
            (503, ErrorCode::StaleData),
            "{}",
            err.message
        );
        assert_eq!(
            svc.shared.client.base(),
            base,
            "no move to another instance"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_recovered_push_wakes_a_waiting_read() {
        let (svc, up) = service(flagged, true);
        let shared = svc.shared.clone();
        let waiting =
            tokio::spawn(async move { read(&shared, "subscriber", "k", Freshness::Latest).await });
        while up.calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let started = Instant::now();
        let push = WatchEvent::Recovered(record(7, false));
        watcher::apply(
            &svc.shared,
            &SseEvent {
                id: Some("2-7-b".into()),
                event: push.name().into(),
                data: push.data(),
            },
        );
        let served = waiting.await.unwrap().unwrap();
        assert!(!served.recovering && served.source == Source::Cache);
        assert_eq!(started.elapsed(), Duration::ZERO, "woken, not polled");
        assert_eq!(up.calls.load(Ordering::SeqCst), 1);
    }

    /// Two instances of a cluster, the second lagging: answers 9 then 5.
    fn current_then_lagging(n: usize) -> Result<RecordRead, ClientError> {
        Ok(RecordRead {
            answer: record(if n == 0 { 9 } else { 5 }, false),
            retry_after: None,
            base: None,
            history: None,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn between_streams_a_read_never_goes_back_to_a_lagging_instance() {
        // No stream vouches for anything (the service server is moving to
        // another instance): reads go to the DB server every time, and the
        // one answered after a newer answer was served must not go back.
        let (svc, up) = service(current_then_lagging, false);
        let first = read(&svc.shared, "subscriber", "k", Freshness::Latest)
            .await
            .unwrap();
        assert_eq!(version(&first), Some(Version::new(2, 9)));
        let second = read(&svc.shared, "subscriber", "k", Freshness::Latest)
            .await
            .unwrap();
        assert_eq!(up.calls.load(Ordering::SeqCst), 2, "both asked the DB");
        assert_eq!(version(&second), Some(Version::new(2, 9)), "not 5");
        // What it remembered is suspect: no read is served from it without
        // asking the DB server, once a stream is back either.
        let kept = svc.shared.cache.get("subscriber", "k").unwrap();
        assert_eq!(kept.version(), Some(Version::new(2, 9)));
        assert_ne!(kept.generation(), svc.shared.cache.generation());
    }

    /// After a restore, a copy newer than the restored one stands, marked
    /// recovering, against the DB server's flagged answer whether or not a
    /// stream vouches yet: a read is not given the restored copy first and
    /// the newer one after (an outside audit saw 1.1, then 1.2).
    #[tokio::test(start_paused = true)]
    async fn a_newer_copy_from_before_a_restore_stands_against_a_flagged_answer_with_or_without_a_stream(
    ) {
        fn restored(_: usize) -> Result<RecordRead, ClientError> {
            Ok(RecordRead {
                answer: record(5, true),
                retry_after: Some(1),
                base: None,
                history: None,
            })
        }
        let (svc, up) = service(restored, false);
        svc.shared.cache.offer(&record(9, false), Origin::Push);
        svc.shared.cache.begin_history();
        let unvouched = read(&svc.shared, "subscriber", "k", Freshness::StaleOk)
            .await
            .unwrap();
        assert_eq!(
            up.calls.load(Ordering::SeqCst),
            1,
            "the DB server was asked"
        );
        assert_eq!(version(&unvouched), Some(Version::new(2, 9)), "not 5");
        assert!(unvouched.recovering);
        stream_synced(&svc, false);
        let vouched = read(&svc.shared, "subscriber", "k", Freshness::StaleOk)
            .await
            .unwrap();
        assert_eq!(version(&vouched), Some(Version::new(2, 9)));
        assert!(vouched.recovering);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_asked_for_under_another_stream_is_not_cached_as_current() {
        // The fetch registered interest with the instance it asked; the
        // stream moved (perhaps to another instance, resumed, so nothing
        // else marks the cache) before the answer came: nothing will push
        // the key's next change, so the answer must not be served from the
        // cache later.
        let (svc, _up) = service(flagged, true);
        let asked = Asked::now(&svc.shared);
        watcher::stream_down(&svc.shared);
        stream_synced(&svc, true);
        let served = take_answer(&svc.shared, &record(3, false), asked, Freshness::Latest);
        assert!(served.is_some(), "the answer itself is served");
        assert!(
            from_cache(&svc.shared, "subscriber", "k", Freshness::Latest).is_none(),
            "but not cached as current"
        );
        // Asked for under the stream that is synced now, it is.
        let asked = Asked::now(&svc.shared);
        take_answer(&svc.shared, &record(4, false), asked, Freshness::Latest).unwrap();
        assert!(from_cache(&svc.shared, "subscriber", "k", Freshness::Latest).is_some());
    }

    /// Answered by another instance than the stream's (the client moved on
    /// in the read): it registered interest there, so it is served but not
    /// cached as current; the stream may stay where it is, and nothing
    /// would push the key's next change.
    #[tokio::test(start_paused = true)]
    async fn an_answer_from_another_instance_than_the_streams_is_not_cached_as_current() {
        fn from(base: &str) -> Result<RecordRead, ClientError> {
            Ok(RecordRead {
                answer: record(3, false),
                retry_after: None,
                base: Some(base.into()),
                history: None,
            })
        }
        // Asked twice: from another instance, both go to the DB server;
        // from the stream's, the second comes from the cache.
        type Answer = fn(usize) -> Result<RecordRead, ClientError>;
        let cases: [(Answer, usize); 2] = [
            (|_| from("http://other:7400"), 2),
            (|_| from("http://streamed:7400"), 1),
        ];
        for (answer, asked) in cases {
            let (svc, up) = service(answer, true);
            stream_synced(&svc, true);
            *svc.shared.stream_base.lock() = "http://streamed:7400".into();
            for _ in 0..2 {
                read(&svc.shared, "subscriber", "k", Freshness::Latest)
                    .await
                    .unwrap();
            }
            assert_eq!(up.calls.load(Ordering::SeqCst), asked);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_cache_is_current_only_while_its_instance_vouches_for_the_stream() {
        // P9 across a failover: a paused instance's stream stays open but
        // sends no `lease`; once the last one runs out, nothing cached is
        // served as current.
        let (svc, _up) = service(flagged, true);
        stream_synced(&svc, true);
        svc.shared.cache.offer(&record(3, false), Origin::Push);
        assert!(from_cache(&svc.shared, "subscriber", "k", Freshness::Latest).is_some());
        let lease = |valid_for_ms| SseEvent {
            id: None,
            event: "lease".into(),
            data: WatchEvent::Lease(tidemark_api::event::LeaseEvent {
                valid_for_ms,
                sent_ms: None,
            })
            .data(),
        };
        watcher::apply(&svc.shared, &lease(0));
        assert!(from_cache(&svc.shared, "subscriber", "k", Freshness::Latest).is_none());
        // A cluster instance without lease events (an older one) says so
        // in its hello: it is vouched for while synced, as before.
        let old = HelloEvent {
            epoch: 2,
            seq: 0,
            boot: "b".into(),
            resumed: true,
            declare: true,
            vouches: false,
            history: String::new(),
            schema_version: 0,
        };
        let ev = |e: WatchEvent| SseEvent {
            id: Some("2-0-b".into()),
            event: e.name().into(),
            data: e.data(),
        };
        watcher::apply(&svc.shared, &ev(WatchEvent::Hello(old)));
        watcher::apply(&svc.shared, &ev(WatchEvent::Synced(SyncedEvent { seq: 0 })));
        assert!(from_cache(&svc.shared, "subscriber", "k", Freshness::Latest).is_some());
        // A new stream (hello, synced, then its lease) vouches again.
        stream_synced(&svc, true);
        assert!(from_cache(&svc.shared, "subscriber", "k", Freshness::Latest).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn without_the_db_server_latest_backs_off_and_stale_ok_is_marked() {
        let (svc, up) = service(unreachable, false);
        svc.shared.cache.offer(&record(3, false), Origin::Push);
        let served = read(&svc.shared, "subscriber", "k", Freshness::StaleOk)
            .await
            .unwrap();
        assert!(
            served.recovering,
            "a cached entry nobody vouches for is marked"
        );
        let before = up.calls.load(Ordering::SeqCst);
        let err = read(&svc.shared, "subscriber", "k", Freshness::Latest)
            .await
            .unwrap_err();
        assert_eq!((err.status, err.code), (503, ErrorCode::DbUnavailable));
        let polls = up.calls.load(Ordering::SeqCst) - before;
        // 20 ms doubling to 1 s (with jitter) within a 5 s deadline.
        assert!(
            (4..=15).contains(&polls),
            "backoff, not a hammer: {polls} requests"
        );
    }
}
