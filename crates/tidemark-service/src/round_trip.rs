//! The watched DB server's clock against ours, timed by round trips.
//!
//! A `lease` says when it was sent on the server's clock (`sent_ms`). How
//! late it arrived needs the two clocks' offset. The least (arrival − sent)
//! of the last minute ([`crate::shared::LeaseClock`]) is the offset plus
//! the least delay, so a link that became slow and stayed slow looks
//! timely again within a minute, and the cache is vouched for as far
//! behind as the delay. A round trip tells them apart: `GET /healthz`
//! answers with the server's clock (`clock_ms`), read between our asking
//! and its answer, so the offset lies between two bounds that no delay of
//! the link can move ([`RoundTrip::note`]). A lease is then late by at most
//! (arrival − sent + the upper bound): a steady delay is seen as late for
//! as long as it lasts. A server clock that steps (its host paused) is
//! seen by the next round trip, which contradicts the older ones and
//! replaces them, so readiness comes back within one.
//!
//! [`run`] asks once a second while a stream is open, at once when a
//! stream opens, and when a lease arrives late (the clock may have
//! stepped). Until a round trip to the stream's server boot has answered,
//! its leases vouch for nothing ([`Judged::NotYet`]); where the server
//! tells no clock (an older one) or round trips keep failing, the lease
//! clock judges ([`Judged::Untimed`]).

use crate::shared::{mono_ms, Shared};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

/// How long a round trip bounds the offset: clocks drift apart slowly
/// (a few ms a minute at most), so older ones are dropped.
const KEEP_MS: u64 = 60_000;
/// At most this many round trips are kept (up to a few a second while
/// leases come late: a minute's).
const MAX_SAMPLES: usize = 256;
/// How often a round trip is timed while a stream is open.
const EVERY: Duration = Duration::from_secs(1);
/// At least this long between two round trips (late leases ask for them).
const MIN_GAP: Duration = Duration::from_millis(100);
/// A round trip not answered in this long tells nothing worth keeping.
const PATIENCE: Duration = Duration::from_secs(2);

/// One round trip: bounds on (server clock − ours), in ms.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// When it was answered (ours).
    at: u64,
    lo: i128,
    hi: i128,
}

/// The round trips to one server boot (the stream's `hello` names it).
#[derive(Debug, Default)]
pub struct RoundTrip {
    boot: String,
    samples: VecDeque<Sample>,
    /// Round trips to `boot` that told no clock (an older server, one at
    /// its connection limit) or failed, in a row.
    untimed: u32,
}

/// How a lease is judged ([`RoundTrip::judge`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judged {
    /// Late by at most this many ms, by a round trip.
    Late(u64),
    /// No round trip to this boot has answered yet: a stream's first
    /// moments. Vouching from the lease clock would take a delay present
    /// from the start for the clocks' offset, so nothing is vouched for.
    NotYet,
    /// The server tells no clock, or round trips keep failing: the lease
    /// clock judges (a steady delay is not seen).
    Untimed,
}

/// Round trips that tell nothing, in a row, before the lease clock judges.
const UNTIMED_AFTER: u32 = 3;

impl RoundTrip {
    /// Starts over for `boot` if the round trips so far were another's.
    fn for_boot(&mut self, boot: &str) {
        if self.boot != boot {
            self.boot = boot.to_owned();
            self.samples.clear();
            self.untimed = 0;
        }
    }

    /// Notes a round trip to server boot `boot`: asked at `asked` (our
    /// clock), answered at `answered` (ours), with the server's clock
    /// reading `server` in between. Each clock is read in whole ms, hence
    /// the 1 ms of slack on each side.
    pub fn note(&mut self, boot: &str, asked: u64, server: u64, answered: u64) {
        self.for_boot(boot);
        self.untimed = 0;
        // In i128: a hostile or broken `clock_ms` cannot overflow.
        let s = Sample {
            at: answered,
            lo: server as i128 - answered as i128 - 1,
            hi: server as i128 + 1 - asked as i128,
        };
        // A round trip whose bounds exclude an older one's: a clock has
        // stepped since (a paused host), and the older ones hold no more.
        self.samples
            .retain(|o| o.lo <= s.hi && s.lo <= o.hi && answered.saturating_sub(o.at) < KEEP_MS);
        if self.samples.len() >= MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(s);
    }

    /// Notes a round trip to `boot` that told no clock, or failed. Returns
    /// true the once the lease clock starts judging (to be said).
    pub fn note_untimed(&mut self, boot: &str) -> bool {
        self.for_boot(boot);
        self.untimed = self.untimed.saturating_add(1);
        self.untimed == UNTIMED_AFTER
    }

    /// Whether leases of `boot` are judged yet: a round trip to it told
    /// its clock, or round trips have left it to the lease clock.
    pub fn timed(&self, boot: &str) -> bool {
        self.boot == boot && (!self.samples.is_empty() || self.untimed >= UNTIMED_AFTER)
    }

    /// How late a lease of server boot `boot`, sent at `sent` (its clock),
    /// arrived at `now` (ours).
    pub fn judge(&self, boot: &str, sent: u64, now: u64) -> Judged {
        if self.boot != boot {
            return Judged::NotYet;
        }
        let hi = self
            .samples
            .iter()
            .filter(|s| now.saturating_sub(s.at) < KEEP_MS)
            .map(|s| s.hi)
            .min();
        match hi {
            // Sent at (sent − offset) on our clock, the offset at most
            // `hi`; `now` read in whole ms.
            Some(hi) => {
                let late = now as i128 + 1 - sent as i128 + hi;
                Judged::Late(late.clamp(0, u64::MAX as i128) as u64)
            }
            None if self.untimed >= UNTIMED_AFTER => Judged::Untimed,
            None => Judged::NotYet,
        }
    }

    /// [`RoundTrip::judge`] as a lateness, where a round trip tells it.
    #[cfg(test)]
    pub fn late_ms(&self, boot: &str, sent: u64, now: u64) -> Option<u64> {
        match self.judge(boot, sent, now) {
            Judged::Late(l) => Some(l),
            _ => None,
        }
    }
}

/// What the DB server's `GET /healthz` says (an older one: `status` only).
#[derive(Debug, serde::Deserialize)]
pub(crate) struct Liveness {
    pub boot: Option<String>,
    pub clock_ms: Option<u64>,
}

/// Asks the DB server at `base` for `GET /healthz`: its answer, and when
/// it was asked and answered ([`mono_ms`]).
pub(crate) async fn liveness(
    shared: &Shared,
    base: &str,
) -> Result<(Liveness, u64, u64), reqwest::Error> {
    let url = format!("{base}/healthz");
    let asked = mono_ms();
    let resp = shared
        .client
        .http()
        .get(&url)
        .timeout(PATIENCE)
        .send()
        .await?;
    let live = resp.error_for_status()?.json::<Liveness>().await?;
    Ok((live, asked, mono_ms()))
}

/// Times a round trip to the stream's DB server now and then (see the
/// module's text), until shutdown.
pub async fn run(shared: Arc<Shared>) {
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = shared.time_round_trip.notified() => {}
            _ = tokio::time::sleep(EVERY) => {}
        }
        let boot = shared.stream_boot.lock().clone();
        if !boot.is_empty() {
            tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                _ = time_one(&shared, &boot) => {}
            }
        }
        tokio::time::sleep(MIN_GAP).await;
    }
}

/// One round trip to the instance the stream is open at, noted if that
/// instance is still the boot the stream's `hello` named.
async fn time_one(shared: &Shared, boot: &str) {
    let base = shared.stream_base.lock().clone();
    let answer = liveness(shared, &base).await;
    let mut round_trip = shared.round_trip.lock();
    // The stream may have moved on meanwhile: only its own boot counts.
    if *shared.stream_boot.lock() != boot {
        return;
    }
    let untimed = match answer {
        Ok((
            Liveness {
                boot: Some(b),
                clock_ms: Some(server),
            },
            asked,
            answered,
        )) if b == boot => {
            round_trip.note(&b, asked, server, answered);
            shared
                .metrics
                .round_trip_ms
                .set(answered.saturating_sub(asked) as i64);
            return;
        }
        // Another boot behind the same address: a restart (the stream
        // will end), or a proxy or balancer that sends `/healthz` to
        // another process than the stream; counted, so the second does not
        // leave the stream unjudged for good.
        Ok((Liveness { boot: Some(b), .. }, _, _)) if b != boot => {
            format!("GET {base}/healthz names another process (boot {b}) than the watch stream's ({boot}): a proxy or balancer in between may send them to different DB-server processes")
        }
        Ok(_) => "the DB server does not tell its clock on /healthz (an older version, or one at its connection limit)".to_owned(),
        Err(e) => format!("GET {base}/healthz failed: {e}"),
    };
    if round_trip.note_untimed(boot) {
        tracing::warn!(why = %untimed, "cannot time round trips to the DB server: its leases are judged by their own clock meanwhile, which takes a link slow from the start for the clocks' offset");
    }
}

#[cfg(test)]
mod tests {
    use super::RoundTrip;
    use crate::shared::LeaseClock;

    /// The server's clock runs 50 s ahead of ours in these tests.
    const AHEAD: u64 = 50_000;

    /// A link that is slow from the first byte on, and stays slow: the
    /// lease clock takes the delay for the offset and calls every lease
    /// timely; a round trip sees each one as late as the delay.
    #[test]
    fn a_steady_delay_is_late_by_the_round_trip_however_long_it_lasts() {
        let mut leases = LeaseClock::default();
        let mut rt = RoundTrip::default();
        // Asking is fast, answers and pushes take 300 ms.
        rt.note("b", 1_000, 1_000 + AHEAD, 1_300);
        for i in 0..400u64 {
            let sent = 2_000 + AHEAD + i * 300;
            let arrived = 2_300 + i * 300;
            if i % 10 == 0 {
                // Round trips go on, as slow as the leases.
                rt.note("b", arrived, arrived + AHEAD, arrived + 300);
            }
            assert_eq!(leases.late_ms(sent, arrived), 0, "the lease clock");
            let late = rt.late_ms("b", sent, arrived).unwrap();
            assert!((300..=302).contains(&late), "{late}");
        }
        // A timely link: a few ms at most.
        let late = rt.late_ms("b", 120_000 + AHEAD, 120_000).unwrap();
        assert!(late <= 2, "{late}");
    }

    /// The DB host's clock stopped for 2 s (a VM paused): leases look late
    /// until the next round trip, which replaces the contradicted ones.
    #[test]
    fn a_server_clock_that_steps_back_is_followed_at_the_next_round_trip() {
        let mut rt = RoundTrip::default();
        rt.note("b", 1_000, 1_000 + AHEAD, 1_001);
        rt.note("b", 2_000, 2_000 + AHEAD, 2_001);
        // From here on the server's clock is 2 s behind where it was.
        let behind = AHEAD - 2_000;
        let late = rt.late_ms("b", 5_000 + behind, 5_000).unwrap();
        assert!(late >= 2_000, "{late}");
        rt.note("b", 5_100, 5_100 + behind, 5_101);
        let late = rt.late_ms("b", 5_200 + behind, 5_200).unwrap();
        assert!(late <= 2, "{late}");
    }

    /// Our own clock stopped (this host paused): the server's now reads
    /// ahead of every older bound, and those are dropped, so leases are
    /// not judged earlier than they were sent.
    #[test]
    fn a_server_clock_that_steps_ahead_drops_the_older_round_trips() {
        let mut rt = RoundTrip::default();
        rt.note("b", 1_000, 1_000 + AHEAD, 1_001);
        let ahead = AHEAD + 3_000;
        rt.note("b", 2_000, 2_000 + ahead, 2_001);
        // A lease 500 ms late by the new offset: the old one would call
        // it 3.5 s early and clamp it to timely.
        let late = rt.late_ms("b", 4_000 + ahead, 4_500).unwrap();
        assert!((500..=502).contains(&late), "{late}");
    }

    /// Only round trips to the stream's own server boot count, and only
    /// for a minute.
    #[test]
    fn a_round_trip_counts_only_for_its_boot_and_a_minute() {
        let mut rt = RoundTrip::default();
        assert_eq!(rt.late_ms("b", AHEAD, 0), None, "none yet");
        rt.note("b", 1_000, 1_000 + AHEAD, 1_001);
        assert!(rt.late_ms("b", 1_500 + AHEAD, 1_500).is_some());
        assert_eq!(rt.late_ms("c", 1_500 + AHEAD, 1_500), None, "another boot");
        assert_eq!(rt.late_ms("b", 70_000 + AHEAD, 70_000), None, "too old");
        // A round trip to another boot starts over.
        rt.note("c", 2_000, 2_000, 2_001);
        assert_eq!(rt.late_ms("b", 2_500 + AHEAD, 2_500), None);
        assert!(rt.late_ms("c", 2_500, 2_500).is_some());
    }

    /// Until a round trip answers, nothing is judged timely; round trips
    /// that tell no clock (an older server), three in a row, hand the
    /// judging to the lease clock, and one that tells it takes it back.
    #[test]
    fn round_trips_that_tell_no_clock_leave_it_to_the_lease_clock() {
        use super::Judged;
        let mut rt = RoundTrip::default();
        assert_eq!(rt.judge("b", AHEAD, 0), Judged::NotYet);
        assert!(!rt.note_untimed("b"));
        assert!(!rt.note_untimed("b"));
        assert_eq!(rt.judge("b", AHEAD, 0), Judged::NotYet);
        assert!(rt.note_untimed("b"), "said once");
        assert_eq!(rt.judge("b", AHEAD, 0), Judged::Untimed);
        assert!(!rt.note_untimed("b"));
        assert_eq!(rt.judge("c", AHEAD, 0), Judged::NotYet, "another boot");
        rt.note("b", 1_000, 1_000 + AHEAD, 1_001);
        assert!(matches!(
            rt.judge("b", 1_500 + AHEAD, 1_500),
            Judged::Late(_)
        ));
    }

    /// Of several round trips, the tightest bound counts: a slow one does
    /// not make leases look later than a fast one showed they are.
    #[test]
    fn the_fastest_round_trip_of_the_minute_bounds_the_offset() {
        let mut rt = RoundTrip::default();
        rt.note("b", 1_000, 1_000 + AHEAD, 1_002);
        // Asked, then this process stalled 800 ms before the answer.
        rt.note("b", 2_000, 2_001 + AHEAD, 2_800);
        let late = rt.late_ms("b", 3_000 + AHEAD, 3_010).unwrap();
        assert!((10..=12).contains(&late), "{late}");
    }
}
