//! A model-based property test of the service server's serving rule (P9,
//! P11; ARCHITECTURE.md, "What a service server may serve").
//!
//! A model DB server and OpS drive the real cache, watcher, read decisions
//! and snapshot code through random interleavings of commits, backups,
//! restores (with a restart of the DB server, so interest and stream
//! positions are lost), schedule lists, replays, stream disconnects and
//! resumes, service restarts from a snapshot, and reads with the DB server
//! reachable or not. The DB server's own rule (flag what differs from the
//! latest data) is the model's; the property is the service server's:
//!
//! Invariant: every answer not marked `recovering` shows the latest data,
//! and a `latest` read is never served data marked `recovering`.

use crate::config::ServiceConfig;
use crate::fetch::{self, Served};
use crate::policy::Freshness;
use crate::service::Service;
use crate::{snapshot, watcher};
use proptest::prelude::*;
use std::collections::BTreeSet;
use tidemark_api::event::{EpochEvent, EpochReason, HelloEvent, SyncedEvent};
use tidemark_api::sse::SseEvent;
use tidemark_api::{RecordAnswer, Version, WatchEvent};
use tokio_util::sync::CancellationToken;

const KEYS: usize = 3;

#[derive(Debug, Clone)]
enum Step {
    /// The OpS changes a key; the DB server applies it.
    Commit(usize),
    Backup,
    /// The DB server is restored from the last backup and restarted.
    Restore,
    /// The whole schedule list has arrived: the blanket lifts.
    ScheduleFinal,
    /// The difference data of a key is applied again.
    Replay(usize),
    Disconnect,
    Reconnect,
    /// The service server writes its snapshot.
    SaveSnapshot,
    /// The service server is killed and restarted from its last snapshot.
    RestartService,
    Read {
        key: usize,
        stale_ok: bool,
        db_reachable: bool,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..KEYS).prop_map(Step::Commit),
        1 => Just(Step::Backup),
        1 => Just(Step::Restore),
        1 => Just(Step::ScheduleFinal),
        2 => (0..KEYS).prop_map(Step::Replay),
        2 => Just(Step::Disconnect),
        2 => Just(Step::Reconnect),
        1 => Just(Step::SaveSnapshot),
        1 => Just(Step::RestartService),
        8 => (0..KEYS, any::<bool>(), any::<bool>()).prop_map(|(key, stale_ok, db_reachable)| {
            Step::Read { key, stale_ok, db_reachable }
        }),
    ]
}

/// The model DB server and the latest data.
struct Db {
    /// The latest acknowledged value of each key (what the OpS journals imply).
    truth: Vec<u64>,
    /// What the DB server holds: value and version.
    held: Vec<(u64, Version)>,
    backup: Vec<(u64, Version)>,
    epoch: u64,
    seq: u64,
    boot: u64,
    blanket: bool,
    /// Change log of this boot: seq and key.
    log: Vec<(u64, usize)>,
    /// Keys the service server registered interest in, this boot.
    interest: BTreeSet<usize>,
    /// Whether the service server's stream is open.
    stream_up: bool,
    next_value: u64,
}

fn key_name(k: usize) -> String {
    format!("k{k}")
}

impl Db {
    fn new() -> Self {
        let held = vec![(0, Version::new(1, 0)); KEYS];
        Db {
            truth: vec![0; KEYS],
            backup: held.clone(),
            held,
            epoch: 1,
            seq: 0,
            boot: 1,
            blanket: false,
            log: Vec::new(),
            interest: BTreeSet::new(),
            stream_up: false,
            next_value: 1,
        }
    }

    /// The DB server's answer: flagged while it is not the latest data.
    fn answer(&self, k: usize) -> RecordAnswer {
        let (v, version) = self.held[k];
        let mut fields = tidemark_api::Fields::new();
        fields.insert("plan".into(), serde_json::json!(v));
        RecordAnswer {
            table: "subscriber".into(),
            key: key_name(k),
            found: true,
            fields: Some(fields),
            version: Some(version),
            recovering: self.blanket || v != self.truth[k],
            source: None,
        }
    }

    fn event(&self, ev: WatchEvent, seq: u64) -> SseEvent {
        SseEvent {
            id: Some(format!("{}-{}-b{}", self.epoch, seq, self.boot)),
            event: ev.name().into(),
            data: ev.data(),
        }
    }

    /// Applies a value to a key and pushes it if the stream is up.
    fn write(&mut self, k: usize, value: u64, svc: &Service) {
        self.seq += 1;
        self.held[k] = (value, Version::new(self.epoch, self.seq));
        self.log.push((self.seq, k));
        if self.stream_up && self.interest.contains(&k) {
            let ev = self.event(WatchEvent::Update(self.answer(k)), self.seq);
            watcher::apply(&svc.shared, &ev);
        }
    }
}

fn value_of(s: &Served) -> (bool, Option<u64>) {
    let a = s.answer().expect("a served body is a record answer");
    (
        a.recovering,
        a.fields
            .and_then(|f| f.get("plan").and_then(|v| v.as_u64())),
    )
}

fn new_service(dir: &std::path::Path) -> Service {
    let config = ServiceConfig {
        id: "svc-model".into(),
        db: "http://127.0.0.1:9".into(),
        cache_dir: Some(dir.to_owned()),
        ..ServiceConfig::default()
    };
    Service::new(config, CancellationToken::new()).expect("service")
}

fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut svc = new_service(dir.path());
    let mut db = Db::new();
    for step in steps {
        match step {
            Step::Commit(k) => {
                let v = db.next_value;
                db.next_value += 1;
                db.truth[k] = v;
                db.write(k, v, &svc);
            }
            Step::Backup => db.backup = db.held.clone(),
            Step::Restore => {
                // Kill, restore, restart: a new boot and epoch, no interest,
                // the stream cut; every answer flagged until the list is in.
                db.held = db.backup.clone();
                db.epoch += 1;
                db.boot += 1;
                db.blanket = true;
                db.log.clear();
                db.interest.clear();
                db.stream_up = false;
                watcher::stream_down(&svc.shared);
            }
            Step::ScheduleFinal => {
                if db.blanket {
                    db.blanket = false;
                    if db.stream_up {
                        let ev = WatchEvent::Epoch(EpochEvent {
                            epoch: db.epoch,
                            reason: EpochReason::ScheduleComplete,
                        });
                        watcher::apply(&svc.shared, &db.event(ev, db.seq));
                    }
                }
            }
            Step::Replay(k) => {
                if db.held[k].0 != db.truth[k] {
                    let v = db.truth[k];
                    db.write(k, v, &svc);
                }
            }
            Step::Disconnect => {
                db.stream_up = false;
                watcher::stream_down(&svc.shared);
            }
            Step::Reconnect if !db.stream_up => {
                // What GET /v1/watch does with Last-Event-ID.
                let last = svc.shared.last_event_id.lock().clone();
                let cursor = last.as_deref().and_then(|id| {
                    let mut p = id.splitn(3, '-');
                    let epoch: u64 = p.next()?.parse().ok()?;
                    let seq: u64 = p.next()?.parse().ok()?;
                    let boot = p.next()?;
                    (epoch == db.epoch && boot == format!("b{}", db.boot)).then_some(seq)
                });
                let hello = |resumed| {
                    WatchEvent::Hello(HelloEvent {
                        epoch: db.epoch,
                        seq: cursor.unwrap_or(db.seq),
                        boot: format!("b{}", db.boot),
                        resumed,
                        declare: false,
                        vouches: false,
                        history: String::new(),
                        schema_version: 0,
                    })
                };
                db.stream_up = true;
                match cursor {
                    Some(c) => {
                        watcher::apply(&svc.shared, &db.event(hello(true), c));
                        let missed: Vec<(u64, usize)> =
                            db.log.iter().copied().filter(|(s, _)| *s > c).collect();
                        for (s, k) in missed {
                            if db.interest.contains(&k) {
                                let ev = WatchEvent::Update(db.answer(k));
                                watcher::apply(&svc.shared, &db.event(ev, s));
                            }
                        }
                    }
                    None => {
                        watcher::apply(&svc.shared, &db.event(hello(false), db.seq));
                        if last.is_some() {
                            let ev = WatchEvent::Epoch(EpochEvent {
                                epoch: db.epoch,
                                reason: EpochReason::CannotResume,
                            });
                            watcher::apply(&svc.shared, &db.event(ev, db.seq));
                        }
                    }
                }
                let synced = WatchEvent::Synced(SyncedEvent { seq: db.seq });
                watcher::apply(&svc.shared, &db.event(synced, db.seq));
            }
            Step::Reconnect => {}
            Step::SaveSnapshot => snapshot::save_now(&svc.shared).expect("snapshot"),
            Step::RestartService => {
                db.stream_up = false;
                svc = new_service(dir.path());
            }
            Step::Read {
                key,
                stale_ok,
                db_reachable,
            } => {
                let (table, name) = ("subscriber", key_name(key));
                let freshness = if stale_ok {
                    Freshness::StaleOk
                } else {
                    Freshness::Latest
                };
                let served = match fetch::from_cache(&svc.shared, table, &name, freshness) {
                    Some(s) => Some(s),
                    None if db_reachable => {
                        // The read rule: register interest, then read.
                        db.interest.insert(key);
                        let asked = crate::shared::Asked::now(&svc.shared);
                        fetch::take_answer(&svc.shared, &db.answer(key), asked, freshness)
                    }
                    None => fetch::fallback(&svc.shared, table, &name, freshness),
                };
                if let Some(s) = served {
                    let (recovering, value) = value_of(&s);
                    prop_assert!(
                        !(recovering && freshness == Freshness::Latest),
                        "a latest read was served flagged data"
                    );
                    if !recovering {
                        prop_assert_eq!(
                            value,
                            Some(db.truth[key]),
                            "outdated data served as current (from {:?})",
                            s.source
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn nothing_outdated_is_ever_served_as_current(steps in prop::collection::vec(step(), 1..60)) {
        run(steps)?;
    }
}
