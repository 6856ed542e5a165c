//! Recovery under faults (issue 8, P8–P11): several OpS sources with
//! overlapping keys, live writers during recovery, a source missing at the
//! final chunk, service servers whose watch stream is down or that restart
//! from a cache snapshot, and a DB server that is unreachable.
//!
//! Every answer is checked against a model of the latest acknowledged data
//! *at the time the read started* (an order in flight may or may not show);
//! an answer not marked `recovering` that shows anything else is outdated
//! data served as current, the one thing Tidemark must never do.

use crate::harness::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

fn key(i: usize) -> String {
    format!("+8130{i:07}")
}

type Rec = Option<tidemark_api::Fields>;

/// One state of a key: what an order made it, when the order was sent (it
/// may show from then on) and when it was acknowledged (it is the latest
/// from then on, until the next one).
#[derive(Debug, Clone)]
struct State {
    rec: Rec,
    sent: Instant,
    acked: Option<Instant>,
}

/// The history of every key, in commit order: the latest acknowledged data.
/// Each state is the test kit's one model of the latest data (upserts merge
/// fields, deletes remove the record) after that order.
#[derive(Default)]
struct History(Mutex<(Model, BTreeMap<String, Vec<State>>)>);

impl History {
    /// Folds an order into the key's latest state. Returns the index of the
    /// new state.
    fn apply(&self, k: &str, op: &str, fields: &Value, sent: Instant) -> usize {
        let mut h = self.0.lock().unwrap();
        let (model, states) = &mut *h;
        model.line(k, op, fields.clone());
        let rec = model.latest(k).cloned();
        let states = states.entry(k.to_owned()).or_default();
        states.push(State {
            rec,
            sent,
            acked: None,
        });
        states.len() - 1
    }

    fn ack(&self, k: &str, idx: usize, at: Instant) {
        self.0.lock().unwrap().1.get_mut(k).unwrap()[idx].acked = Some(at);
    }

    /// Whether an answer to a read that ran from `t0` to `t1` shows data
    /// that was the latest at `t0`, or that an order in flight during the
    /// read produced.
    fn valid(&self, k: &str, t0: Instant, t1: Instant, status: u16, body: &Value) -> bool {
        let h = self.0.lock().unwrap();
        let empty = Vec::new();
        let states = h.1.get(k).unwrap_or(&empty);
        let latest_at_t0 = states
            .iter()
            .rposition(|s| s.acked.is_some_and(|a| a <= t0));
        let shows = |rec: &Rec| match rec {
            Some(r) => {
                status == 200 && body["found"] == true && body["fields"].as_object() == Some(r)
            }
            None => status == 404 && body["found"] == false,
        };
        let base = latest_at_t0.map_or(&None, |i| &states[i].rec);
        if shows(base) {
            return true;
        }
        states
            .iter()
            .enumerate()
            .any(|(i, s)| Some(i) > latest_at_t0 && s.sent <= t1 && shows(&s.rec))
    }
}

/// Submits `orders` (key, op, fields) as one `ops submit` of `source` with
/// its journal in `journal`, recording each in the history.
fn submit(
    dir: &Path,
    db: &str,
    journal: &Path,
    source: &str,
    history: &History,
    orders: &[(String, &str, Value)],
) {
    let sent = Instant::now();
    let mut input = String::new();
    let mut idx = Vec::new();
    for (k, op, f) in orders {
        idx.push(history.apply(k, op, f, sent));
        input += &if *op == "delete" {
            json!({"table": "subscriber", "key": k, "op": "delete"}).to_string()
        } else {
            json!({"table": "subscriber", "key": k, "op": "upsert", "fields": f}).to_string()
        };
        input.push('\n');
    }
    let out = run(
        dir,
        &[
            "ops",
            "submit",
            "--db",
            db,
            "--journal",
            journal.to_str().unwrap(),
            "--source",
            source,
            "-",
        ],
        Some(input.as_bytes()),
        &[],
    );
    assert!(
        out.status.success(),
        "ops submit {source}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let acked = Instant::now();
    for ((k, _, _), i) in orders.iter().zip(idx) {
        history.ack(k, i, acked);
    }
}

/// An answer that was not the latest data although it did not say so.
#[derive(Debug)]
#[allow(dead_code)] // read through Debug, in the failure message
struct Outdated {
    from: String,
    key: String,
    status: u16,
    body: Value,
}

/// Terminals reading `keys` from every server in `targets` until stopped;
/// answers marked recovering (and 503s) are allowed, anything else must be
/// the latest data at the time the read started.
struct Readers {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    outdated: Arc<Mutex<Vec<Outdated>>>,
    answers: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl Readers {
    fn start(targets: &[(&str, String)], keys: &[String], history: Arc<History>) -> Readers {
        let stop = Arc::new(AtomicBool::new(false));
        let outdated = Arc::new(Mutex::new(Vec::new()));
        let answers = Arc::new(Mutex::new(BTreeMap::new()));
        let mut tasks = Vec::new();
        for (name, base) in targets {
            for t in 0..2usize {
                let (stop, outdated, answers, history) = (
                    stop.clone(),
                    outdated.clone(),
                    answers.clone(),
                    history.clone(),
                );
                let (name, base, keys) = (name.to_string(), base.clone(), keys.to_vec());
                tasks.push(tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    let mut i = t * 31;
                    while !stop.load(Ordering::SeqCst) {
                        let k = &keys[i % keys.len()];
                        i += 1;
                        let t0 = Instant::now();
                        let Ok(r) = client.get(key_url(&base, k)).send().await else {
                            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                            continue;
                        };
                        let status = r.status().as_u16();
                        let body: Value = r.json().await.unwrap_or(Value::Null);
                        let t1 = Instant::now();
                        *answers.lock().unwrap().entry(name.clone()).or_default() += 1;
                        if status == 503 || body["recovering"] == true {
                            continue;
                        }
                        if !history.valid(k, t0, t1, status, &body) {
                            outdated.lock().unwrap().push(Outdated {
                                from: name.clone(),
                                key: k.clone(),
                                status,
                                body,
                            });
                        }
                    }
                }));
            }
        }
        Readers {
            stop,
            tasks,
            outdated,
            answers,
        }
    }

    /// Stops the readers; fails the test if any answer was outdated.
    async fn finish(self, what: &str) -> BTreeMap<String, u64> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        let outdated = self.outdated.lock().unwrap();
        assert!(
            outdated.is_empty(),
            "{what}: {} outdated answers served as current, e.g. {:?}",
            outdated.len(),
            &outdated[..outdated.len().min(3)]
        );
        let answers = self.answers.lock().unwrap().clone();
        eprintln!("{what}: answers checked per server {answers:?}, 0 outdated");
        answers
    }
}

fn recover(
    dir: &Path,
    db: &str,
    backup: &Path,
    journals: &[&Path],
    extra: &[&str],
) -> std::process::Output {
    let mut args = vec![
        "ops",
        "recover",
        "--db",
        db,
        "--backup",
        backup.to_str().unwrap(),
    ];
    for j in journals {
        args.push("--journal");
        args.push(j.to_str().unwrap());
    }
    args.extend_from_slice(&["--batch", "7", "--json"]);
    args.extend_from_slice(extra);
    run(dir, &args, None, &[])
}

/// Waits until every key reads as its latest data from `base`, unflagged.
async fn converged(base: &str, keys: &[String], history: &History, what: &str) {
    let model = history.0.lock().unwrap().0.clone();
    for k in keys {
        let url = key_url(base, k);
        let model = &model;
        eventually(20, what, || {
            let url = url.clone();
            async move {
                let (s, b) = get_json(&url).await;
                (b["recovering"] == false && model.is_latest(k, s, &b)).then_some(())
            }
        })
        .await;
    }
}

/// After the backup both sources change keys 0..60, alternating: keys
/// 0..30 are written last by ops-1, keys 30..60 last by ops-2; ops-2 also
/// sets a field ops-1 never touches, and deletes a key ops-1 recreates.
fn two_sources_change_the_same_keys(dir: &Path, db: &str, j1: &Path, j2: &Path, history: &History) {
    for round in 2..5 {
        let tail = |src: &str| -> Vec<(String, &'static str, Value)> {
            (0..60)
                .map(|i| {
                    (
                        key(i),
                        "upsert",
                        json!({"plan": format!("a-{round}-{src}"), "credit_limit": round * 100 + i as i64}),
                    )
                })
                .collect()
        };
        let mut ops2 = tail("ops-2");
        ops2.push((key(3), "upsert", json!({"status": format!("s-{round}")})));
        if round == 3 {
            ops2.push((key(5), "delete", json!({})));
        }
        let (first, first_j, first_o, second, second_j, second_o) = if round % 2 == 0 {
            ("ops-2", j2, ops2, "ops-1", j1, tail("ops-1"))
        } else {
            ("ops-1", j1, tail("ops-1"), "ops-2", j2, ops2)
        };
        submit(dir, db, first_j, first, history, &first_o);
        submit(dir, db, second_j, second, history, &second_o);
    }
    // Round 4 ended with ops-1: make keys 30..60 end with ops-2.
    let last2: Vec<_> = (30..60)
        .map(|i| (key(i), "upsert", json!({"plan": "a-9-ops-2"})))
        .collect();
    submit(dir, db, j2, "ops-2", history, &last2);
}

/// Issue 8, cases 1 and 5: two sources updated the same keys after the
/// backup, in both orders; their journals are recovered in separate runs,
/// ops-1 first; a live writer changes keys between the runs whose older
/// ops-2 orders are replayed after it. The first run alone must not finish
/// the recovery (the backup knows ops-2), and the end state must follow the
/// original commit order across sources, live writes included.
#[tokio::test(flavor = "multi_thread")]
async fn several_sources_and_live_writes_end_in_the_original_commit_order() {
    for engine in engines("several_sources_and_live_writes_end_in_the_original_commit_order") {
        several_sources_and_live_writes_end_in_the_original_commit_order_on(engine).await;
    }
}

async fn several_sources_and_live_writes_end_in_the_original_commit_order_on(engine: Engine) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (j1, j2, jl) = (dir.join("j1"), dir.join("j2"), dir.join("jlive"));
    let history = Arc::new(History::default());
    let mut db = db_server_on(dir, engine, &[]).await;
    let latest = service(
        dir,
        "svc-latest",
        &db.url,
        "latest-only",
        &["--latest-deadline-ms", "200"],
    )
    .await;
    let stale = service(dir, "svc-stale", &db.url, "accept-stale", &[]).await;
    let keys: Vec<String> = (0..80).map(key).collect();
    let load = |range: std::ops::Range<usize>, tag: &str| -> Vec<(String, &'static str, Value)> {
        range
            .map(|i| {
                (
                    key(i),
                    "upsert",
                    json!({"plan": format!("{tag}"), "credit_limit": i}),
                )
            })
            .collect()
    };
    submit(dir, &db.url, &j1, "ops-1", &history, &load(0..40, "a-1"));
    submit(dir, &db.url, &j2, "ops-2", &history, &load(40..80, "a-1"));
    for k in &keys {
        get_json(&key_url(&latest.url, k)).await;
        get_json(&key_url(&stale.url, k)).await;
    }
    let backup = backup_online(dir, &db.url);

    two_sources_change_the_same_keys(dir, &db.url, &j1, &j2, &history);
    converged(&latest.url, &keys, &history, "pushes before the disaster").await;

    let readers = Readers::start(
        &[
            ("latest", latest.url.clone()),
            ("stale", stale.url.clone()),
            ("db", db.url.clone()),
        ],
        &keys,
        history.clone(),
    );
    db = lose_restore_restart(dir, engine, &mut db, &backup, &[]).await;

    // ops-1's journal alone: its list and replay go through, but the DB
    // server still waits for ops-2, which the backup knows (case 5).
    let out = recover(dir, &db.url, &backup, &[&j1], &[]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ops-2") && stderr.contains("--without-source"),
        "{stderr}"
    );
    let (_, r) = get_json(&format!("{}/v1/recovery", db.url)).await;
    assert_eq!(r["state"], "recovering", "{r}");
    assert_eq!(r["schedule_final"], false, "{r}");
    assert_eq!(r["waiting_for_sources"], json!(["ops-2"]), "{r}");
    let (s, b) = get_json(&key_url(&db.url, &key(45))).await;
    assert_eq!(
        (s, b["recovering"].clone()),
        (200, json!(true)),
        "ops-2's keys stay flagged: {b}"
    );
    let (_, r) = post_raw(&format!("{}/v1/recovery/complete", db.url), "{}").await;
    assert_eq!(r["error"]["code"], "schedule_incomplete", "{r}");

    // A live writer (a source the backup does not know) changes keys whose
    // older ops-2 orders are still to be replayed.
    let live: Vec<_> = (50..70)
        .map(|i| (key(i), "upsert", json!({"plan": "live", "roaming": true})))
        .collect();
    submit(dir, &db.url, &jl, "ops-live", &history, &live);

    let out = recover(dir, &db.url, &backup, &[&j2], &[]);
    assert!(
        out.status.success(),
        "ops recover ops-2: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["state"], "recovered", "{report}");

    for (name, base) in [
        ("DB server", &db.url),
        ("latest-only", &latest.url),
        ("accept-stale", &stale.url),
    ] {
        converged(
            base,
            &keys,
            &history,
            &format!("{name} to hold the latest data"),
        )
        .await;
    }
    let answers = readers.finish("two sources, live writes").await;
    assert!(
        answers.values().all(|n| *n > 0),
        "every server was read: {answers:?}"
    );
}

/// Issue 8, cases 2, 3 and 4: after the DB server is restored and
/// restarted, service servers whose watch stream is still down, or that
/// restart from a cache snapshot (while the DB server is down, and while it
/// recovers), must not serve their cache as current; accept-stale marks
/// what it cannot vouch for, also when the DB server is unreachable.
#[tokio::test(flavor = "multi_thread")]
async fn a_cache_without_a_synced_stream_is_never_served_as_current() {
    for engine in engines("a_cache_without_a_synced_stream_is_never_served_as_current") {
        a_cache_without_a_synced_stream_is_never_served_as_current_on(engine).await;
    }
}

async fn a_cache_without_a_synced_stream_is_never_served_as_current_on(engine: Engine) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let journal = dir.join("journal");
    let history = Arc::new(History::default());
    let mut db = db_server_on(dir, engine, &[]).await;
    let db_url = db.url.clone();
    let snap = |name: &str| dir.join(format!("cache-{name}"));
    let start_service = |name: &'static str, policy: &'static str| {
        let cache = snap(name);
        let db_url = db_url.clone();
        async move {
            let p = Proc::start(
                name,
                dir,
                &[
                    "service",
                    "--db",
                    db_url.as_str(),
                    "--id",
                    name,
                    "--policy",
                    policy,
                    "--latest-deadline-ms",
                    "150",
                    "--cache-dir",
                    cache.to_str().unwrap(),
                ],
                &[],
            );
            p.wait_ok("/healthz").await;
            p
        }
    };
    let mut latest = start_service("svc-latest", "latest-only").await;
    let mut stale = start_service("svc-stale", "accept-stale").await;
    latest.wait_ok("/readyz").await;
    stale.wait_ok("/readyz").await;
    let keys: Vec<String> = (0..100).map(key).collect();
    let orders = |tag: &str| -> Vec<(String, &'static str, Value)> {
        keys.iter()
            .map(|k| (k.clone(), "upsert", json!({"plan": tag})))
            .collect()
    };
    submit(dir, &db.url, &journal, "ops-1", &history, &orders("f3-1"));
    for k in &keys {
        get_json(&key_url(&latest.url, k)).await;
        get_json(&key_url(&stale.url, k)).await;
    }
    let backup = backup_online(dir, &db.url);
    submit(dir, &db.url, &journal, "ops-1", &history, &orders("f3-2"));
    submit(dir, &db.url, &journal, "ops-1", &history, &orders("f3-3"));
    converged(&latest.url, &keys, &history, "pushes to svc-latest").await;
    converged(&stale.url, &keys, &history, "pushes to svc-stale").await;
    // Both snapshots hold f3-3 (the service servers write one per second
    // while the cache changes, and one at shutdown).
    assert!(latest.terminate().success() && stale.terminate().success());

    // Disaster. The service servers restart from their snapshots while the
    // DB server is down: they can vouch for nothing (case 3), and cannot
    // ask (case 4).
    let addr = db.url.trim_start_matches("http://").to_owned();
    db.kill9();
    lose_data(dir, engine).await;
    latest = start_service("svc-latest", "latest-only").await;
    stale = start_service("svc-stale", "accept-stale").await;
    let (l, s) = (latest.url.clone(), stale.url.clone());
    let (st, _) = get_json(&format!("{l}/readyz")).await;
    assert_eq!(st, 503, "no stream, not ready");
    for k in &keys[..10] {
        let (code, b) = get_json(&key_url(&l, k)).await;
        assert_eq!(
            code, 503,
            "latest-only must not serve its snapshot without the DB server: {b}"
        );
        let (code, b) = get_json(&key_url(&s, k)).await;
        assert_eq!(
            (code, b["recovering"].clone(), b["fields"]["plan"].clone()),
            (200, json!(true), json!("f3-3")),
            "accept-stale serves its snapshot, marked: {b}"
        );
    }

    let readers = Readers::start(
        &[("latest", l.clone()), ("stale", s.clone())],
        &keys,
        history.clone(),
    );
    // Restore and restart; a live source changes every key during the
    // recovery (case 2: the caches' f3-3 is no longer the latest).
    run_ok(dir, &strs(&restore_args(dir, engine, &backup)));
    db = Proc::start_at("db-restored", dir, &strs(&server_args(dir, engine)), &addr);
    db.wait_ok("/readyz").await;
    submit(
        dir,
        &db.url,
        &dir.join("jlive"),
        "ops-live",
        &history,
        &orders("f3-4"),
    );
    // Sweep while the streams may still be reconnecting.
    let mut unsynced_reads = 0;
    for k in &keys[..30] {
        for base in [&l, &s] {
            let connected = get_json(&format!("{base}/v1/state")).await.1["connected"] == true;
            let t0 = Instant::now();
            let (code, b) = get_json(&key_url(base, k)).await;
            let t1 = Instant::now();
            if !connected {
                unsynced_reads += 1;
            }
            assert!(
                code == 503 || b["recovering"] == true || history.valid(k, t0, t1, code, &b),
                "outdated data served as current by {base} (stream synced before the read: {connected}): {b}"
            );
        }
    }
    eprintln!("reads while a stream was not synced: {unsynced_reads}");

    // Case 4: the DB server goes away again mid-recovery. Whatever the
    // caches hold now is not vouched for: marked, or not served.
    let addr2 = db.url.trim_start_matches("http://").to_owned();
    db.kill9();
    eventually(10, "streams to notice", || async {
        let a = get_json(&format!("{l}/v1/state")).await.1["connected"] == false;
        let b = get_json(&format!("{s}/v1/state")).await.1["connected"] == false;
        (a && b).then_some(())
    })
    .await;
    for k in &keys[..20] {
        let (code, b) = get_json(&key_url(&s, k)).await;
        assert!(
            code == 200 && b["recovering"] == true,
            "accept-stale, DB unreachable: {b}"
        );
        let (code, _) = get_json(&key_url(&l, k)).await;
        assert_eq!(code, 503);
    }
    db = Proc::start_at(
        "db-restarted",
        dir,
        &strs(&server_args(dir, engine)),
        &addr2,
    );
    db.wait_ok("/readyz").await;

    let out = recover(dir, &db.url, &backup, &[&journal], &[]);
    assert!(
        out.status.success(),
        "ops recover: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    converged(&l, &keys, &history, "latest-only to hold the latest data").await;
    converged(&s, &keys, &history, "accept-stale to hold the latest data").await;
    readers
        .finish("streams down, snapshots, DB unreachable")
        .await;
}

/// Issue 8, case 5, the explicit way out: a source whose journal is lost is
/// named with --without-source, which ends the wait (and the server logs
/// it); a name the backup does not know is refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_source_is_waived_only_explicitly() {
    for engine in engines("a_lost_source_is_waived_only_explicitly") {
        a_lost_source_is_waived_only_explicitly_on(engine).await;
    }
}

async fn a_lost_source_is_waived_only_explicitly_on(engine: Engine) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (j1, j2) = (dir.join("j1"), dir.join("j2"));
    let history = History::default();
    let mut db = db_server_on(dir, engine, &[]).await;
    let rows = |tag: &str| -> Vec<(String, &'static str, Value)> {
        (0..10)
            .map(|i| (key(i), "upsert", json!({"plan": tag})))
            .collect()
    };
    submit(dir, &db.url, &j1, "ops-1", &history, &rows("x1"));
    submit(dir, &db.url, &j2, "ops-2", &history, &rows("y1"));
    let backup = backup_online(dir, &db.url);
    submit(dir, &db.url, &j1, "ops-1", &history, &rows("x2"));
    db = lose_restore_restart(dir, engine, &mut db, &backup, &[]).await;

    let out = recover(
        dir,
        &db.url,
        &backup,
        &[&j1],
        &["--without-source", "ops-9"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ops-9"));
    let (_, r) = get_json(&format!("{}/v1/recovery", db.url)).await;
    assert_eq!(
        r["schedule_final"], false,
        "a refused waiver changes nothing: {r}"
    );

    let out = recover(
        dir,
        &db.url,
        &backup,
        &[&j1],
        &["--without-source", "ops-2"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, r) = get_json(&format!("{}/v1/recovery", db.url)).await;
    assert_eq!(r["state"], "recovered", "{r}");
    assert_eq!(r["waived_sources"], json!(["ops-2"]), "{r}");
    assert!(db.log_text().contains("WAIVED"), "the waiver is logged");
    converged(
        &db.url,
        &(0..10).map(key).collect::<Vec<_>>(),
        &history,
        "ops-1's data",
    )
    .await;
}

/// Issue 8, case 1 as first reported: both sources' journals in one
/// directory, one `ops recover`. The old replay went source by source in
/// name order, so ops-1's older orders overwrote ops-2's newer ones.
#[tokio::test(flavor = "multi_thread")]
async fn one_run_over_two_sources_follows_the_original_commit_order() {
    for engine in engines("one_run_over_two_sources_follows_the_original_commit_order") {
        one_run_over_two_sources_follows_the_original_commit_order_on(engine).await;
    }
}

async fn one_run_over_two_sources_follows_the_original_commit_order_on(engine: Engine) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let journal = dir.join("journal");
    let history = History::default();
    let mut db = db_server_on(dir, engine, &[]).await;
    let keys: Vec<String> = (0..60).map(key).collect();
    for (src, range) in [("ops-1", 0..30), ("ops-2", 30..60)] {
        let rows: Vec<_> = range
            .map(|i| (key(i), "upsert", json!({"plan": "a-1"})))
            .collect();
        submit(dir, &db.url, &journal, src, &history, &rows);
    }
    let backup = backup_online(dir, &db.url);
    two_sources_change_the_same_keys(dir, &db.url, &journal, &journal, &history);
    db = lose_restore_restart(dir, engine, &mut db, &backup, &[]).await;
    let out = recover(dir, &db.url, &backup, &[&journal], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    converged(
        &db.url,
        &keys,
        &history,
        "the original commit order across sources",
    )
    .await;
}

/// P9: a latest-only service server stops taking its cached copies as
/// current within a lease once its single DB server's stream goes silent
/// (here: the DB server paused, as a half-open connection would look).
/// Before, only a clustered DB server sent `lease` events, and a single
/// one's stream was vouched for until 35 s of silence ended it.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_single_db_server_stops_vouching_for_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let db = db_server(dir, &[]).await;
    let svc = service(
        dir,
        "svc",
        &db.url,
        "latest-only",
        &["--latest-deadline-ms", "300"],
    )
    .await;
    ops_submit(
        dir,
        &db.url,
        &format!(
            "{}\n",
            json!({"table": "subscriber", "key": "v", "op": "upsert", "fields": {"plan": "a"}})
        ),
        &[],
    );
    let url = key_url(&svc.url, "v");
    eventually(10, "the record served from the cache", || async {
        let (s, b) = get_json(&url).await;
        (s == 200 && b["source"] == "cache").then_some(())
    })
    .await;
    // SAFETY: kill(2) on the pid of a child we have not reaped.
    unsafe { libc::kill(db.pid as libc::pid_t, libc::SIGSTOP) };
    let outcome = eventually(10, "the cache no longer vouched for", || async {
        let (s, b) = get_json(&url).await;
        (s == 503).then_some(b)
    })
    .await;
    // Its readiness says the same, at once: not ready while the cache is
    // not served as current (before, it said ready until the stream broke).
    let (s, ready) = get_json(&format!("{}/readyz", svc.url)).await;
    // SAFETY: as above.
    unsafe { libc::kill(db.pid as libc::pid_t, libc::SIGCONT) };
    assert_eq!(s, 503, "{ready}");
    assert!(
        ready["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("stopped vouching"),
        "{ready}"
    );
    assert!(
        outcome["error"]["code"] == "stale_data" || outcome["error"]["code"] == "db_unavailable",
        "{outcome}"
    );
    // It says why the copy it holds was not served.
    let message = outcome["error"]["message"].as_str().unwrap_or_default();
    assert!(
        outcome["error"]["code"] == "stale_data"
            || message.contains("cached copy cannot be confirmed current"),
        "{outcome}"
    );
    eventually(10, "the cache vouched for again", || async {
        let (s, b) = get_json(&url).await;
        (s == 200 && b["source"] == "cache").then_some(())
    })
    .await;
}

/// P6, P8: a source that began after the backup, whose journal a later
/// `ops recover` run recovers, is named with --expect-source in the first:
/// the DB server then keeps answering every record as recovering until its
/// list arrives, and only the second run ends the recovery. Before, the
/// first run lifted the blanket and ended the recovery, and the late
/// source's keys were served as current, outdated, in between.
#[tokio::test(flavor = "multi_thread")]
async fn a_source_recovered_in_a_later_run_is_expected_by_the_first() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let engine = Engine::Sqlite;
    let (j1, j2) = (dir.join("j1"), dir.join("j2"));
    let history = History::default();
    let mut db = db_server_on(dir, engine, &[]).await;
    // Keys `ks` set to `v` by `source` (journal `j`).
    let set = |j: &Path, source: &str, ks: std::ops::Range<usize>, v: i64| {
        let orders: Vec<_> = ks
            .map(|k| (key(k), "upsert", json!({"credit_limit": v})))
            .collect();
        submit(dir, &db.url, j, source, &history, &orders);
    };
    set(&j1, "ops-1", 0..10, 1);
    let backup = backup_online(dir, &db.url);
    // After the backup: ops-1 changes keys 0..5, and ops-2 begins, with
    // keys 10..15.
    set(&j1, "ops-1", 0..5, 2);
    set(&j2, "ops-2", 10..15, 3);
    let db = lose_restore_restart(dir, engine, &mut db, &backup, &[]).await;

    let out = recover(dir, &db.url, &backup, &[&j1], &["--expect-source", "ops-2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("ops-2") && stderr.contains("--expect-source"),
        "{stderr}"
    );
    let (_, r) = get_json(&format!("{}/v1/recovery", db.url)).await;
    assert_eq!(r["state"], "recovering", "{r}");
    assert_eq!(r["waiting_for_sources"], json!(["ops-2"]), "{r}");
    // The late source's key is not answered as current meanwhile.
    let (_, b) = get_json(&key_url(&db.url, &key(10))).await;
    assert_eq!(b["recovering"], true, "{b}");

    let out = recover(dir, &db.url, &backup, &[&j2], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keys: Vec<String> = (0..15).map(key).collect();
    converged(
        &db.url,
        &keys,
        &history,
        "every key current after the second run",
    )
    .await;
    let (_, r) = get_json(&format!("{}/v1/recovery", db.url)).await;
    assert_ne!(r["state"], "recovering", "{r}");
}

/// A DB-server address that takes connections and never answers (a paused
/// instance, a host gone without a reset) holds the service server's watch
/// stream for a bounded time only: it moves on to the instance that
/// answers, and pushes resume. Before, the stream waited on the silent
/// address for good, and the service server stayed unready, every read
/// going to the DB server.
#[tokio::test(flavor = "multi_thread")]
async fn an_address_that_never_answers_does_not_hold_the_watch_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (hung_url, connections) = silent_address();
    let mut db = db_server(dir, &[]).await;
    let addr = db.url.trim_start_matches("http://").to_owned();
    let svc = service(
        dir,
        "svc-hung",
        &format!("{},{hung_url}", db.url),
        "latest-only",
        &[],
    )
    .await;
    let order = |seq: u64, plan: &str| {
        json!({"orders": [{"source": "ops-h", "seq": seq, "table": "subscriber",
                           "key": "h", "op": "upsert", "fields": {"plan": plan}}]})
        .to_string()
    };
    assert_eq!(
        post_raw(&format!("{}/v1/orders", db.url), order(1, "gold"))
            .await
            .0,
        200
    );
    let record = format!("{}/v1/records/subscriber/h", svc.url);
    assert_eq!(get_json(&record).await.1["fields"]["plan"], "gold");

    // The DB server dies: the service server tries the next address, which
    // takes the connection and says nothing.
    db.kill9();
    let connections = tokio::task::spawn_blocking(move || {
        connections
            .recv_timeout(tidemark_testkit::process::PATIENCE)
            .expect("the service server to try the silent address");
        connections
    })
    .await
    .unwrap();
    let db = Proc::start_at(
        "db-again",
        dir,
        &strs(&server_args(dir, Engine::Sqlite)),
        &addr,
    );
    db.wait_ok("/readyz").await;
    assert_eq!(
        post_raw(&format!("{}/v1/orders", db.url), order(2, "silver"))
            .await
            .0,
        200
    );
    // Back on the DB server that answers, within the watch stream's answer
    // deadline (tidemark_api::client::WATCH_ANSWER) and a retry.
    let limit = tidemark_api::client::WATCH_ANSWER.as_secs() * 3;
    let svc_url = svc.url.clone();
    eventually(
        limit,
        "the service server's stream back on the live DB server",
        || {
            let u = svc_url.clone();
            async move { (get_json(&format!("{u}/readyz")).await.0 == 200).then_some(()) }
        },
    )
    .await;
    eventually(20, "the push of the change to the cached record", || {
        let u = record.clone();
        async move { (get_json(&u).await.1["fields"]["plan"] == "silver").then_some(()) }
    })
    .await;
    drop(connections);
}

/// An address that accepts every connection, reads nothing and answers
/// nothing (a paused instance); the receiver hears of each connection.
fn silent_address() -> (String, std::sync::mpsc::Receiver<()>) {
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", hung.local_addr().unwrap());
    let (arrived, connections) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in hung.incoming().flatten() {
            held.push(conn);
            if arrived.send(()).is_err() {
                return;
            }
        }
    });
    (url, connections)
}

/// A service server whose DB server takes connections and never answers
/// starts serving its probes within a few seconds (not ready, saying why),
/// instead of holding even `/healthz` for the 30 s of a request timeout.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_db_address_does_not_hold_the_service_servers_start() {
    let tmp = tempfile::tempdir().unwrap();
    let (hung_url, _connections) = silent_address();
    let svc = Proc::start(
        "svc-silent",
        tmp.path(),
        &[
            "service",
            "--db",
            &hung_url,
            "--id",
            "svc-silent",
            "--policy",
            "latest-only",
        ],
        &[],
    );
    // Each probe gives up after 2 s, so a held one cannot pass late.
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(2))
        .build()
        .unwrap();
    let probe = |path: &'static str| {
        let (client, url) = (client.clone(), format!("{}{path}", svc.url));
        async move {
            client
                .get(url)
                .send()
                .await
                .ok()
                .map(|r| r.status().as_u16())
        }
    };
    eventually(15, "/healthz to answer", || async {
        (probe("/healthz").await == Some(200)).then_some(())
    })
    .await;
    assert_eq!(probe("/readyz").await, Some(503));
}
