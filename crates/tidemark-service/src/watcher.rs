//! Keeps the watch stream to the DB server open and applies its events.
//!
//! Reconnects with exponential backoff and jitter, resuming with
//! `Last-Event-ID`. The id is advanced only after its event is applied, so
//! a snapshot never claims an event it does not hold.
//!
//! Invariant (P9, P11): `Shared::connected` is true only between the
//! server's `synced` event and the end of that stream. Only then does the
//! cache answer as current: while the stream is down, or catching up, a
//! change may have been missed. An instance of a cluster must also vouch
//! for its stream (`lease` events): a paused instance's stream stays open
//! but silent while another instance takes over and commits.

use crate::cache::Origin;
use crate::shared::Shared;
use futures::StreamExt;
use rand::Rng;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tidemark_api::sse::SseEvent;
use tidemark_api::WatchEvent;

/// How long past its instance's last vouch a synced stream is kept (the
/// cache answers as current no longer meanwhile) before it is dropped for
/// a new one, perhaps at another instance.
const LEASE_PATIENCE_MS: u64 = 3000;

/// Late leases are said at most every 10 s, with their count.
static LATE_LEASES: tidemark_telemetry::Every =
    tidemark_telemetry::Every::new(Duration::from_secs(10));

/// Runs until shutdown.
pub async fn run(shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(50);
    let mut reported_down = false;
    // `/healthz` unanswered before a stream, in a row (see below).
    let mut unasked = 0u32;
    loop {
        if shared.shutdown.is_cancelled() {
            break;
        }
        let last = shared.last_event_id.lock().clone();
        // A declaration refused for a while (the instance is still opening
        // its store, or unreachable) is tried again after the backoff: a
        // stream opened without it could not resume. The stream opens at
        // the instance that took the declaration: if a read moved the
        // client meanwhile, declare again there first.
        let declared_at = shared.client.base().to_owned();
        // Both requests below give way to shutdown: an instance that
        // takes the connection and never answers must not hold the stop.
        // A cluster's instances want a declaration before every resume; a
        // single DB server only once it restarted (its interest went with
        // the boot before).
        // A server that does not answer `/healthz` is likely down, or just
        // coming up: the stream waits for it a few times, rather than open
        // undeclared on a server that restarted meanwhile (and revalidate).
        let mut wait_for_healthz = false;
        let must_declare = match last.as_deref() {
            None => false,
            Some(_) if shared.declare.load(Ordering::SeqCst) => true,
            Some(id) => match tokio::select! {
                _ = shared.shutdown.cancelled() => break,
                r = restarted_since(&shared, id) => r,
            } {
                Some(restarted) => {
                    unasked = 0;
                    restarted
                }
                None => {
                    unasked += 1;
                    wait_for_healthz = unasked <= 3;
                    false
                }
            },
        };
        let declared = if must_declare {
            tokio::select! {
                _ = shared.shutdown.cancelled() => break,
                d = declare(&shared) => Some(d),
            }
        } else {
            None
        };
        let retry_declaration = declared == Some(Declared::Retry) || wait_for_healthz;
        // Refused for good: the stream opens without resuming (a mark left
        // there by an earlier declaration must not stand in for this one).
        let last = if declared == Some(Declared::Refused) {
            None
        } else {
            last
        };
        let base = shared.client.base().to_owned();
        if base != declared_at && must_declare {
            continue;
        }
        let opened = if retry_declaration {
            Err(None)
        } else {
            tokio::select! {
                _ = shared.shutdown.cancelled() => break,
                o = shared.client.watch(&shared.config.id, last.as_deref(), true) => o.map_err(Some),
            }
        };
        match opened {
            Ok(stream) => {
                *shared.stream_base.lock() = base.clone();
                tokio::pin!(stream);
                let mut check = tokio::time::interval(Duration::from_millis(50));
                loop {
                    let next = tokio::select! {
                        _ = shared.shutdown.cancelled() => break,
                        n = stream.next() => n,
                        _ = check.tick() => {
                            // By arrival: a lease read late (a busy or
                            // paused moment here) says the instance lives.
                            let until = shared.lease_alive_until_ms.load(Ordering::SeqCst);
                            if shared.connected.load(Ordering::SeqCst)
                                && until != u64::MAX
                                && crate::shared::mono_ms() > until.saturating_add(LEASE_PATIENCE_MS)
                            {
                                // Paused, or cut off and not saying so: the
                                // next instance, if there is one.
                                tracing::warn!(base = %base, "the DB-server instance stopped vouching for its watch stream; moving on");
                                shared.client.move_on(&base);
                                break;
                            }
                            if shared.client.base() != base {
                                // Reads moved to another instance (this one
                                // failed or is quiescing): the stream follows.
                                tracing::info!(from = %base, to = %shared.client.base(), "moving the watch stream to another DB-server instance");
                                break;
                            }
                            continue;
                        }
                    };
                    match next {
                        Some(Ok(ev)) => {
                            if apply(&shared, &ev) && reported_down {
                                tracing::info!("watch stream to the DB server is back");
                                reported_down = false;
                            }
                            backoff = Duration::from_millis(50);
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "watch stream broke; reconnecting");
                            break;
                        }
                        None => {
                            tracing::info!("watch stream ended by the DB server; reconnecting");
                            break;
                        }
                    }
                }
            }
            Err(None) => {}
            Err(Some(e)) => {
                if !reported_down {
                    // What the cache may still do without the stream.
                    let meanwhile = match shared.config.policy {
                        crate::policy::Policy::LatestOnly => "reads ask the DB server (503 db_unavailable if it does not answer by the deadline)",
                        crate::policy::Policy::AcceptStale => "reads ask the DB server, and a cached copy is served, marked recovering, if it does not answer within 0.5 s",
                    };
                    tracing::warn!(error = %e, "cannot open the watch stream; retrying, and meanwhile {meanwhile}");
                    reported_down = true;
                }
            }
        }
        stream_down(&shared);
        if shared.shutdown.is_cancelled() {
            break;
        }
        shared.metrics.reconnects.inc();
        let jitter = rand::thread_rng().gen_range(0..=backoff.as_millis() as u64 / 2);
        tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            _ = tokio::time::sleep(backoff + Duration::from_millis(jitter)) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
    stream_down(&shared);
}

/// Tells the instance about to be watched every key the cache holds, so
/// the stream resumes there (it may not have seen our reads).
async fn declare(shared: &Shared) -> Declared {
    // The newest read after the keys: a record that joined the cache
    // meanwhile (a fetch's answer, kept as suspect while no stream is
    // synced) counts too.
    let keys = shared.cache.keys();
    let newest = shared.cache.newest();
    let n = keys.len();
    match shared
        .client
        .declare_interest(&shared.config.id, keys, newest)
        .await
    {
        Ok(()) => {
            tracing::debug!(keys = n, base = %shared.client.base(), "interest declared");
            Declared::Yes
        }
        Err(e) if e.is_retryable() => {
            tracing::info!(error = %e, "could not declare interest yet; retrying before the stream opens");
            Declared::Retry
        }
        Err(e) => {
            tracing::info!(error = %e, "could not declare interest; the stream will not resume and cached records will be revalidated");
            Declared::Refused
        }
    }
}

/// Whether the single DB server that gave the stream id `last` has
/// restarted since: its `/healthz` names another boot than the id's. Its
/// interest in what is cached here went with the boot before; declared
/// anew, it lets the stream resume (the change log holds what was missed)
/// instead of the whole cache being revalidated. An id of a cluster or of
/// an older server (no boot in it), or a server that does not say (an
/// older one): no, and the stream resumes or not as before. `None`: the
/// server did not answer.
async fn restarted_since(shared: &Shared, last: &str) -> Option<bool> {
    let Ok(id) = last.parse::<tidemark_api::event::EventId>() else {
        return Some(false);
    };
    let Some((_, boot)) = id.history_boot() else {
        return Some(false);
    };
    let base = shared.client.base().to_owned();
    match crate::round_trip::liveness(shared, &base).await {
        Ok((live, _, _)) => Some(live.boot.is_some_and(|now| now != boot)),
        Err(_) => None,
    }
}

/// How a declaration of interest went.
#[derive(Debug, PartialEq, Eq)]
enum Declared {
    Yes,
    /// The instance may take it later (starting, unreachable, 503).
    Retry,
    /// Refused for good: the stream opens, and does not resume.
    Refused,
}

/// The stream ended: from now on nothing cached is vouched for.
pub(crate) fn stream_down(shared: &Shared) {
    shared.connected.store(false, Ordering::SeqCst);
    shared.stream_boot.lock().clear();
    shared.stream_serial.fetch_add(1, Ordering::SeqCst);
    shared.metrics.connected.set(0);
}

/// Until when ([`crate::shared::mono_ms`]) a lease sent at `sent` (the
/// server's clock) and read at `now` (ours) vouches for the cache, and
/// whether it came late (over `max_push_lag_ms`). From when it was sent,
/// and for a few leases at most: a lease that waited in the socket (this
/// process paused) or on a slow link vouches for nothing the changes
/// behind it have changed.
fn vouch_of(shared: &Shared, sent: u64, now: u64, valid_for_ms: u64) -> (u64, bool) {
    use crate::round_trip::Judged;
    let by_leases = shared.lease_clock.lock().late_ms(sent, now);
    // A round trip to this boot tells a slow link from the clocks' offset;
    // the lease clock takes a steady delay for offset, so it judges only
    // where none can be timed.
    let judged = shared
        .round_trip
        .lock()
        .judge(&shared.stream_boot.lock(), sent, now);
    let late = match judged {
        Judged::Late(l) => l,
        Judged::Untimed => by_leases,
        // A stream's first moments: nothing vouched, nothing late.
        Judged::NotYet => return (0, false),
    };
    shared.metrics.lease_late_ms.set(late as i64);
    let limit = shared.config.max_push_lag_ms;
    if late <= limit {
        // A lag let up to `limit` must still leave a vouch that outlasts
        // the next lease or two, whatever `limit` an operator set.
        let fresh = valid_for_ms.min(crate::shared::LEASE_FRESH_MS.max(limit + 600));
        return (now.saturating_add(fresh).saturating_sub(late), false);
    }
    if let Judged::Late(late) = judged {
        // Late by the round trip: a slow link, or the server's clock
        // stepped (a paused host), which the next round trip sees.
        shared.time_round_trip.notify_one();
        if let Some(n) = LATE_LEASES.due() {
            tracing::warn!(late_ms = late, limit_ms = shared.config.max_push_lag_ms, times = n, "leases from the DB server arrive late (a slow link, or this process starved): cached records are not served as current until one arrives in time (max_push_lag_ms)");
        }
    }
    // The changes sent in the meantime are queued behind it: nothing is
    // vouched for until a timely one, which comes after them.
    (0, true)
}

/// Notes the DB server's store history, from a `hello` or a record answer
/// (whichever comes first after a restart). Versions of another history
/// do not compare with the DB server's: a copy that looks newer may be
/// outdated, so every cached copy becomes foreign ([`Cache::begin_history`]).
/// Empty: a server that does not say.
///
/// [`Cache::begin_history`]: crate::cache::Cache::begin_history
pub(crate) fn heard_history(shared: &Shared, history: &str) {
    if history.is_empty() {
        return;
    }
    let mut known = shared.history.lock();
    if *known == history {
        return;
    }
    if !known.is_empty() {
        let generation = shared.cache.begin_history();
        shared.changes.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            generation,
            before = %known,
            now = %history,
            "the DB server's store is another history (restored, perhaps reusing an epoch, or started over empty): no cached record is trusted over its answers"
        );
    }
    *known = history.to_owned();
}

/// Applies one event. Returns true for the `hello` that opens a stream.
pub(crate) fn apply(shared: &Shared, ev: &SseEvent) -> bool {
    let decoded = match WatchEvent::decode(&ev.event, &ev.data) {
        Ok(Some(d)) => d,
        Ok(None) => return false,
        Err(e) => {
            tracing::warn!(event = %ev.event, error = %e, "undecodable watch event skipped");
            return false;
        }
    };
    let mut hello = false;
    match decoded {
        WatchEvent::Hello(h) => {
            heard_history(shared, &h.history);
            shared.db_epoch.store(h.epoch, Ordering::SeqCst);
            shared.declare.store(h.declare, Ordering::SeqCst);
            // An instance of a cluster vouches for its stream with `lease`
            // events; until the first, nothing cached is vouched for (and
            // the patience for one counts from here).
            let vouched = if h.vouches {
                crate::shared::mono_ms()
            } else {
                u64::MAX
            };
            shared.vouched_until_ms.store(vouched, Ordering::SeqCst);
            shared.lease_alive_until_ms.store(vouched, Ordering::SeqCst);
            // Another stream: perhaps another server, another clock.
            *shared.lease_clock.lock() = Default::default();
            *shared.stream_boot.lock() = h.boot.clone();
            if h.vouches {
                // Its leases are judged by a round trip as soon as one is timed.
                shared.time_round_trip.notify_one();
            }
            // Cached under another schema version (a snapshot taken before
            // a publish): revalidated, so a record never lacks a column in
            // force. Before `synced`, so nothing is served from the cache
            // meanwhile; the schema worker adopts the version itself.
            let cached_under = shared.schema_version.load(Ordering::SeqCst);
            if h.schema_version != 0 && cached_under != 0 && cached_under != h.schema_version {
                let generation = shared.cache.bump_generation();
                shared.changes.fetch_add(1, Ordering::Relaxed);
                tracing::info!(from = cached_under, to = h.schema_version, generation, "the DB server runs another schema version than the cache was filled under: cached records will be revalidated on their next read");
            }
            if !h.resumed {
                // The server will not replay what we missed (first
                // connection, a cache snapshot it cannot resume, another
                // boot): nothing cached can be vouched for any more.
                let generation = shared.cache.bump_generation();
                shared.changes.fetch_add(1, Ordering::Relaxed);
                tracing::info!(generation, "watch stream not resumed: cached records will be revalidated on their next read");
            }
            tracing::info!(
                epoch = h.epoch,
                seq = h.seq,
                resumed = h.resumed,
                "watch stream open; catching up"
            );
            hello = true;
            // A notice still in force follows the hello (S4); one that
            // ended while we were away, or was another instance's, must
            // not count down for good.
            *shared.quiesce_at.lock() = None;
            *shared.quiesce.lock() = None;
            // The schema may have changed while we were away.
            shared.schema_refresh.notify_one();
        }
        WatchEvent::Synced(s) => {
            // Every change we missed has been applied: from here on the
            // cache is vouched for by the live stream.
            // A serial of this stream's own first, then connected.
            shared.stream_serial.fetch_add(1, Ordering::SeqCst);
            shared.connected.store(true, Ordering::SeqCst);
            shared.metrics.connected.set(1);
            shared.notify_all();
            tracing::info!(seq = s.seq, "watch stream synced: serving from the cache");
        }
        WatchEvent::Update(a) | WatchEvent::Recovered(a) => {
            shared.cache.offer(&a, Origin::Push);
            shared.changes.fetch_add(1, Ordering::Relaxed);
            shared.metrics.pushes.inc();
            shared.notify(&a.table, &a.key);
        }
        WatchEvent::Epoch(e) => {
            let generation = if e.reason == tidemark_api::event::EpochReason::Rewound {
                // Nothing cached may stand for looking newer than the
                // server's answer: its store went back behind it.
                tracing::warn!("the DB server's store went back behind what this server was told (put back by hand?): every cached record is revalidated and replaced by the server's answer");
                shared.cache.begin_history()
            } else {
                shared.cache.bump_generation()
            };
            shared.db_epoch.store(e.epoch, Ordering::SeqCst);
            shared.metrics.epochs.inc();
            shared.changes.fetch_add(1, Ordering::Relaxed);
            tracing::info!(epoch = e.epoch, reason = ?e.reason, generation, "epoch event: cached records will be revalidated on their next read");
            shared.notify_all();
            // A restore brings back the schema of its backup.
            shared.schema_refresh.notify_one();
        }
        WatchEvent::Quiesce(q) => {
            tracing::info!(notice = ?q.notice, cancelled = q.cancelled, "quiesce notice from the DB server");
            *shared.quiesce_at.lock() = match (&q.notice, q.cancelled) {
                // The milliseconds: the seconds are rounded up.
                (Some(n), false) => Some(std::time::Instant::now() + n.left()),
                _ => None,
            };
            if !q.cancelled && q.notice.is_some() && shared.client.bases().len() > 1 {
                // S4, S8: move to another instance before the deadline.
                let base = shared.client.base().to_owned();
                shared.client.move_on(&base);
                tracing::info!(from = %base, to = %shared.client.base(), "DB-server instance quiescing; moving to another");
            }
            *shared.quiesce.lock() = if q.cancelled { None } else { Some(q) };
        }
        WatchEvent::ServiceQuiesce(q) => crate::quiesce::from_db(shared, &q),
        WatchEvent::Lease(l) => {
            let now = crate::shared::mono_ms();
            let (until, late) = match l.sent_ms {
                Some(sent) => vouch_of(shared, sent, now, l.valid_for_ms),
                None => (now.saturating_add(l.valid_for_ms), false),
            };
            shared.vouched_until_ms.store(until, Ordering::SeqCst);
            // `/readyz` follows with a hysteresis (READY_AFTER_TIMELY).
            if late {
                shared.timely_leases.store(0, Ordering::SeqCst);
            } else if until > now {
                let _ =
                    shared
                        .timely_leases
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                            Some(n.saturating_add(1))
                        });
            }
            shared
                .lease_alive_until_ms
                .store(now.saturating_add(l.valid_for_ms), Ordering::SeqCst);
        }
        WatchEvent::Schema(s) => {
            tracing::info!(
                version = s.version,
                "schema published on the DB server; adopting it"
            );
            shared.schema_refresh.notify_one();
        }
    }
    if let Some(id) = &ev.id {
        *shared.last_event_id.lock() = Some(id.clone());
    }
    hello
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServiceConfig;
    use crate::service::Service;
    use tidemark_api::event::{EpochEvent, EpochReason, HelloEvent, QuiesceEvent, SyncedEvent};
    use tidemark_api::state::QuiesceNotice;
    use tidemark_api::{RecordAnswer, Version};
    use tokio_util::sync::CancellationToken;

    fn ev(e: WatchEvent, id: &str) -> SseEvent {
        SseEvent {
            id: Some(id.into()),
            event: e.name().into(),
            data: e.data(),
        }
    }

    /// A service server (no DB server behind it) whose events are applied
    /// by hand.
    fn service() -> Service {
        Service::new(
            ServiceConfig {
                id: "svc".into(),
                ..ServiceConfig::default()
            },
            CancellationToken::new(),
        )
        .unwrap()
    }

    fn hello(resumed: bool) -> WatchEvent {
        WatchEvent::Hello(HelloEvent {
            epoch: 1,
            seq: 0,
            boot: "b".into(),
            resumed,
            declare: false,
            vouches: false,
            history: String::new(),
            schema_version: 0,
        })
    }

    #[test]
    fn the_cache_is_vouched_for_only_between_synced_and_the_end_of_the_stream() {
        let svc = service();
        let s = &svc.shared;
        let g0 = s.cache.generation();
        assert!(apply(s, &ev(hello(false), "1-0-b")));
        assert!(
            !s.connected.load(Ordering::SeqCst),
            "hello alone is not synced"
        );
        assert!(
            s.cache.generation() > g0,
            "an unresumed stream vouches for nothing"
        );
        apply(s, &ev(WatchEvent::Synced(SyncedEvent { seq: 0 }), "1-0-b"));
        assert!(s.connected.load(Ordering::SeqCst));
        let answer = RecordAnswer::missing("subscriber", "k", Some(Version::new(1, 4)), false);
        apply(s, &ev(WatchEvent::Update(answer), "1-4-b"));
        assert!(s.cache.get("subscriber", "k").is_some());
        assert_eq!(s.last_event_id.lock().as_deref(), Some("1-4-b"));
        stream_down(s);
        assert!(!s.connected.load(Ordering::SeqCst));
        // A resumed stream keeps the generation; an epoch event bumps it.
        let g1 = s.cache.generation();
        apply(s, &ev(hello(true), "1-4-b"));
        assert_eq!(s.cache.generation(), g1);
        let epoch = WatchEvent::Epoch(EpochEvent {
            epoch: 2,
            reason: EpochReason::Restore,
        });
        apply(s, &ev(epoch, "2-4-b"));
        assert!(s.cache.generation() > g1);
        assert_eq!(s.db_epoch.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_quiesce_notice_sets_and_a_cancel_clears_the_countdown() {
        let svc = service();
        let s = &svc.shared;
        let notice = QuiesceNotice {
            deadline: "later".into(),
            seconds_left: 30,
            ms_left: Some(29_400),
            message: "maintenance".into(),
        };
        let q = |cancelled: bool| {
            WatchEvent::Quiesce(QuiesceEvent {
                notice: (!cancelled).then(|| notice.clone()),
                cancelled,
            })
        };
        apply(s, &ev(q(false), "1-0-b"));
        assert!(s.quiesce_at.lock().is_some() && s.quiesce.lock().is_some());
        // By the milliseconds left, not the rounded-up seconds.
        let at = s.quiesce_at.lock().unwrap();
        assert!(at <= std::time::Instant::now() + Duration::from_millis(29_400));
        apply(s, &ev(q(true), "1-0-b"));
        assert!(s.quiesce_at.lock().is_none() && s.quiesce.lock().is_none());
        // A new stream's hello ends an old notice: the server sends one
        // still in force right after it.
        apply(s, &ev(q(false), "1-0-b"));
        let hello = WatchEvent::Hello(HelloEvent {
            epoch: 1,
            seq: 0,
            boot: "b".into(),
            resumed: true,
            declare: false,
            vouches: false,
            history: String::new(),
            schema_version: 0,
        });
        apply(s, &ev(hello, "1-0-b"));
        assert!(s.quiesce_at.lock().is_none() && s.quiesce.lock().is_none());
    }

    /// A hello from another store history (a restore that reused its
    /// epoch, a DB server started over empty) makes every cached record
    /// foreign: a copy from the old history could look newer than the DB
    /// server's data and be served as current. The same history keeps
    /// them trusted.
    #[test]
    fn another_store_history_makes_the_cache_foreign() {
        let svc = service();
        let s = &svc.shared;
        let hello_of = |history: &str| {
            WatchEvent::Hello(HelloEvent {
                epoch: 2,
                seq: 0,
                boot: "b".into(),
                resumed: false,
                declare: false,
                vouches: false,
                history: history.into(),
                schema_version: 0,
            })
        };
        let cached = || {
            let answer = RecordAnswer::missing("subscriber", "k", Some(Version::new(2, 3)), false);
            apply(s, &ev(WatchEvent::Update(answer), "2-3-b"));
            assert!(s.cache.get("subscriber", "k").is_some());
        };
        apply(s, &ev(hello_of("h1"), "2-0-b"));
        cached();
        apply(s, &ev(hello_of("h1"), "2-3-b"));
        let kept = |s: &Shared| !s.cache.is_foreign(&s.cache.get("subscriber", "k").unwrap());
        assert!(kept(s), "same history: trusted");
        apply(s, &ev(hello_of(""), "2-3-b"));
        assert!(kept(s), "an older server: trusted");
        let g = s.cache.generation();
        apply(s, &ev(hello_of("h2"), "2-0-b"));
        assert_eq!(*s.history.lock(), "h2");
        let e = s.cache.get("subscriber", "k").unwrap();
        assert!(
            s.cache.is_foreign(&e) && s.cache.generation() > g,
            "another history: foreign"
        );
        // The DB server's own older data, flagged: the copy stands, flagged
        // and still foreign; given as current: it replaces the copy.
        let fetch = crate::cache::Origin::Fetch {
            db_epoch: 2,
            generation: s.cache.generation(),
        };
        let restored = |recovering| {
            RecordAnswer::missing("subscriber", "k", Some(Version::new(1, 1)), recovering)
        };
        let e = s.cache.offer(&restored(true), fetch);
        assert_eq!(
            (e.version(), e.recovering),
            (Some(Version::new(2, 3)), true)
        );
        assert!(s.cache.is_foreign(&e));
        let e = s.cache.offer(&restored(false), fetch);
        assert_eq!(
            (e.version(), e.recovering),
            (Some(Version::new(1, 1)), false)
        );
    }

    /// A stream of server boot `boot` that vouches with leases, synced.
    fn synced_leased(s: &Shared, boot: &str) {
        let WatchEvent::Hello(mut h) = hello(false) else {
            unreachable!()
        };
        h.vouches = true;
        h.boot = boot.into();
        let id = format!("1-0-{boot}");
        apply(s, &ev(WatchEvent::Hello(h), &id));
        apply(s, &ev(WatchEvent::Synced(SyncedEvent { seq: 0 }), &id));
    }

    /// Round trips to server boot `boot` tell no clock (an older server):
    /// its leases are judged by the lease clock.
    fn untimed(s: &Shared, boot: &str) {
        let mut rt = s.round_trip.lock();
        while !rt.note_untimed(boot) {}
    }

    /// Until a round trip to the stream's boot has answered, its leases
    /// vouch for nothing (a delay present from the start would pass for
    /// the clocks' offset); the first round trip makes the next lease count.
    #[test]
    fn leases_vouch_only_once_a_round_trip_to_their_boot_answered() {
        let svc = service();
        let s = &svc.shared;
        synced_leased(s, "b");
        // The server's clock runs 50 s ahead of ours.
        let server = |ms: u64| crate::shared::mono_ms() + 50_000 - ms;
        let lease = || {
            WatchEvent::Lease(tidemark_api::event::LeaseEvent {
                valid_for_ms: 5_000,
                sent_ms: Some(server(0)),
            })
        };
        apply(s, &ev(lease(), "1-0-b"));
        assert!(!s.vouched(), "no round trip yet");
        let now = crate::shared::mono_ms();
        s.round_trip.lock().note("b", now, server(0), now);
        apply(s, &ev(lease(), "1-0-b"));
        assert!(s.vouched(), "timed, and timely");
        // A round trip to another boot (the stream moved on) does not count.
        synced_leased(s, "c");
        apply(s, &ev(lease(), "1-0-c"));
        assert!(!s.vouched(), "boot c not timed yet");
        svc.shared.shutdown.cancel();
    }

    /// A pause of this process is seen by the pause watch: a read before
    /// the watch has run again is not vouched for (the gap since its last
    /// run), and once it runs the last lease vouches no more, until a
    /// timely one comes (which follows the changes queued meanwhile).
    #[test]
    fn a_pause_of_this_process_withdraws_the_vouch_until_a_timely_lease() {
        use std::sync::atomic::Ordering::SeqCst;
        let svc = service();
        let s = &svc.shared;
        synced_leased(s, "b");
        untimed(s, "b");
        let lease = || {
            WatchEvent::Lease(tidemark_api::event::LeaseEvent {
                valid_for_ms: 5_000,
                sent_ms: Some(crate::shared::mono_ms()),
            })
        };
        apply(s, &ev(lease(), "1-0-b"));
        assert!(s.vouched());
        // The watch last ran over PAUSED_MS ago, as after a SIGSTOP.
        s.ticked_ms.store(0, SeqCst);
        while crate::shared::mono_ms() <= crate::shared::PAUSED_MS {
            std::thread::yield_now();
        }
        assert!(!s.vouched(), "a read before the watch runs again");
        crate::shared::pause_watch(s);
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while s.vouched_until_ms.load(SeqCst) != 0 && std::time::Instant::now() < give_up {
            std::thread::yield_now();
        }
        assert_eq!(s.vouched_until_ms.load(SeqCst), 0, "the watch withdrew it");
        assert!(!s.vouched(), "until a timely lease");
        apply(s, &ev(lease(), "1-0-b"));
        assert!(s.vouched(), "a timely lease vouches again");
        svc.shared.shutdown.cancel();
    }

    /// A lease that waited in the socket (this process paused, the changes
    /// behind it not applied yet) vouches only from when it was sent: the
    /// cache is not served as current until a timely one comes. Before, it
    /// vouched from its arrival, and reads right after a 2 s pause got
    /// values superseded seconds before (an outside audit).
    #[test]
    fn a_lease_that_arrives_late_vouches_only_from_when_it_was_sent() {
        let svc = service();
        let s = &svc.shared;
        let hello = WatchEvent::Hello(HelloEvent {
            epoch: 1,
            seq: 0,
            boot: "b".into(),
            resumed: false,
            declare: false,
            vouches: true,
            history: String::new(),
            schema_version: 0,
        });
        apply(s, &ev(hello, "1-0-b"));
        apply(s, &ev(WatchEvent::Synced(SyncedEvent { seq: 0 }), "1-0-b"));
        untimed(s, "b");
        // The server's clock runs 50 s ahead of ours.
        let server = |ms: u64| crate::shared::mono_ms() + 50_000 - ms;
        let lease = |sent: u64| {
            WatchEvent::Lease(tidemark_api::event::LeaseEvent {
                valid_for_ms: 5_000,
                sent_ms: Some(sent),
            })
        };
        apply(s, &ev(lease(server(0)), "1-0-b"));
        assert!(s.vouched(), "a timely lease vouches");
        // Sent 3 s ago, read only now: past the freshness bound.
        apply(s, &ev(lease(server(3_000)), "1-0-b"));
        assert!(!s.vouched(), "a lease 3 s late vouches for nothing");
        apply(s, &ev(lease(server(0)), "1-0-b"));
        assert!(s.vouched(), "until a timely one comes");
        // Late by more than a pause's worth, though within the bound: the
        // changes sent after it may still wait behind it.
        apply(s, &ev(lease(server(300)), "1-0-b"));
        assert!(!s.vouched(), "a lease 300 ms late vouches for nothing");
        apply(s, &ev(lease(server(0)), "1-0-b"));
        assert!(s.vouched());
        // Readiness comes back only after a few timely ones in a row.
        for _ in 1..crate::shared::READY_AFTER_TIMELY {
            assert!(!s.ready(), "not ready yet");
            apply(s, &ev(lease(server(0)), "1-0-b"));
            assert!(s.vouched());
        }
        assert!(s.ready());
        // A short lateness shortens the vouch, no more.
        let mut clock = crate::shared::LeaseClock::default();
        assert_eq!(clock.late_ms(1_000, 11_000), 0);
        assert_eq!(clock.late_ms(1_300, 11_305), 5);
        assert_eq!(clock.late_ms(1_600, 13_600), 2_000);
        assert_eq!(
            clock.late_ms(1_900, 11_898),
            0,
            "a smaller delay is the new least"
        );
    }
}
