//! Disaster recovery end to end (P4–P11): load, online backup, more orders,
//! disaster, restore, recovery — with terminals reading both service servers
//! throughout.

use crate::harness::*;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

fn key(i: usize) -> String {
    format!("+8131{i:06}")
}

struct World {
    engine: Engine,
    db: Proc,
    latest: Proc,
    stale: Proc,
    model: Model,
    backup: std::path::PathBuf,
    keys: Vec<String>,
    /// Orders submitted after the backup.
    after_backup: usize,
}

/// Load, back up online, change more (updates, several per key, creates,
/// deletes), then lose the DB server and its data.
async fn disaster_on(dir: &Path, engine: Engine) -> World {
    let db = db_server_on(dir, engine, &[]).await;
    let latest = service(
        dir,
        "svc-latest",
        &db.url,
        "latest-only",
        &["--latest-deadline-ms", "30000"],
    )
    .await;
    let stale = service(dir, "svc-stale", &db.url, "accept-stale", &[]).await;
    let mut model = Model::default();
    let mut input = String::new();
    for i in 0..120 {
        input += &model.line(
            &key(i),
            "upsert",
            json!({"plan": "basic", "credit_limit": i, "roaming": false}),
        );
    }
    ops_submit(dir, &db.url, &input, &[]);
    let keys: Vec<String> = (0..150).map(key).collect();
    for k in &keys {
        get_json(&key_url(&latest.url, k)).await;
        get_json(&key_url(&stale.url, k)).await;
    }
    let backup = backup_online(dir, &db.url);
    let mut input = String::new();
    for round in 0..3 {
        for i in 0..40 {
            input += &model.line(
                &key(i),
                "upsert",
                json!({"plan": format!("gold-{round}"), "credit_limit": 1000 * round + i as i64}),
            );
        }
    }
    for i in 120..150 {
        input += &model.line(
            &key(i),
            "upsert",
            json!({"plan": "new", "status": "active"}),
        );
    }
    for i in 100..110 {
        input += &model.line(&key(i), "delete", json!({}));
    }
    let after_backup = input.lines().count();
    ops_submit(dir, &db.url, &input, &[]);
    // Both service servers hold the latest data by push before the disaster.
    for k in &keys {
        for base in [&latest.url, &stale.url] {
            until_latest(&model, base, k, "pushes to reach the cache").await;
        }
    }
    World {
        engine,
        db,
        latest,
        stale,
        model,
        backup,
        keys,
        after_backup,
    }
}

/// Waits (10 s at most) until `base` answers `key` as `model` holds it.
async fn until_latest(model: &Model, base: &str, key: &str, what: &str) {
    let url = key_url(base, key);
    eventually(10, what, || {
        let url = url.clone();
        async move {
            let (s, b) = get_json(&url).await;
            model.is_latest(key, s, &b).then_some(())
        }
    })
    .await;
}

#[derive(Debug, Clone)]
struct Answer {
    service: &'static str,
    key: String,
    status: u16,
    body: Value,
}

/// Terminals reading every key from both service servers until stopped.
fn terminals(
    w: &World,
    stop: Arc<AtomicBool>,
) -> (Arc<Mutex<Vec<Answer>>>, Vec<tokio::task::JoinHandle<()>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (service, base) in [
        ("latest", w.latest.url.clone()),
        ("stale", w.stale.url.clone()),
    ] {
        for t in 0..3 {
            let (log, stop, keys, base) = (log.clone(), stop.clone(), w.keys.clone(), base.clone());
            tasks.push(tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut i = t * 17;
                while !stop.load(Ordering::SeqCst) {
                    let k = keys[i % keys.len()].clone();
                    i += 1;
                    let Ok(r) = client.get(key_url(&base, &k)).send().await else {
                        continue;
                    };
                    let status = r.status().as_u16();
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    log.lock().unwrap().push(Answer {
                        service,
                        key: k,
                        status,
                        body,
                    });
                }
            }));
        }
    }
    (log, tasks)
}

async fn restore_and_restart(dir: &Path, w: &mut World) -> Proc {
    restore_and_restart_with(dir, w, &[]).await
}

/// Loses the data, restores `w.backup` with `extra` flags, and restarts.
async fn restore_and_restart_with(dir: &Path, w: &mut World, extra: &[&str]) -> Proc {
    lose_restore_restart(dir, w.engine, &mut w.db, &w.backup, extra).await
}

fn recover(dir: &Path, db: &str, backup: &Path, env: &[(&str, &str)]) -> std::process::Output {
    let journal = dir.join("journal");
    run(
        dir,
        &[
            "ops",
            "recover",
            "--db",
            db,
            "--journal",
            journal.to_str().unwrap(),
            "--backup",
            backup.to_str().unwrap(),
            "--batch",
            "25",
            "--json",
        ],
        None,
        env,
    )
}

/// P6, P8: `ops recover --backup` naming a newer backup than the one
/// restored still flags every key changed since the restored point: the
/// list starts at the lower of the backup's and the server's marks. It
/// started at the named backup's, so keys changed in between were left
/// out and their restored, outdated copies served as current.
#[tokio::test(flavor = "multi_thread")]
async fn a_recovery_given_a_newer_backup_than_the_one_restored_flags_every_changed_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut w = disaster_on(dir, Engine::Sqlite).await;
    let newer = dir.join("backups").join("b2");
    run_ok(
        dir,
        &[
            "backup",
            "create",
            "--to",
            newer.to_str().unwrap(),
            "--server",
            &w.db.url,
        ],
    );
    let db = restore_and_restart(dir, &mut w).await;
    let out = recover(dir, &db.url, &newer, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    // Keys 0..40 (three rounds), 120..150 (new) and 100..110 (deleted).
    assert_eq!(report["flagged"], 80, "{report}");
    for k in &w.keys {
        let (s, b) = get_json(&key_url(&db.url, k)).await;
        assert!(
            w.model.is_latest(k, s, &b) && b["recovering"] != true,
            "{k}: {s} {b}"
        );
    }
}

/// P4–P11: restore, the schedule list flags (P6, P7), flagged answers carry the identifier (P8), latest-only waits and accept-stale serves marked (P9), the difference data clears the flags (P10), and both end current (P11).
#[tokio::test(flavor = "multi_thread")]
async fn latest_only_never_serves_outdated_data_through_a_disaster() {
    for engine in engines("latest_only_never_serves_outdated_data_through_a_disaster") {
        latest_only_never_serves_outdated_data_through_a_disaster_on(engine).await;
    }
}

async fn latest_only_never_serves_outdated_data_through_a_disaster_on(engine: Engine) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut w = disaster_on(dir, engine).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (log, tasks) = terminals(&w, stop.clone());
    let db = restore_and_restart(dir, &mut w).await;

    // Right after the restore: recovering, and every read is flagged.
    let (_, r) = get_json(&format!("{}/v1/recovery", db.url)).await;
    assert_eq!(r["state"], "recovering");
    assert_eq!(r["schedule_final"], false);
    let (s, b) = get_json(&key_url(&db.url, &key(115))).await;
    assert_eq!(
        (s, b["recovering"].as_bool()),
        (200, Some(true)),
        "before the schedule list every read is recovering"
    );
    // The accept-stale server keeps answering, marked recovering.
    eventually(
        10,
        "accept-stale to serve restored data marked recovering",
        || async {
            let (s, b) = get_json(&key_url(&w.stale.url, &key(1))).await;
            (s == 200 && b["recovering"] == true).then_some(())
        },
    )
    .await;
    // What it held, newer than the restored copy, stands (marked) against
    // it: it does not go back to the backup's value (an outside audit saw
    // the restored copy served, then the newer one again). Keys 0..40 were
    // changed after the backup, 120..150 created.
    for k in w.keys.iter().take(40).chain(w.keys.iter().skip(120)) {
        let (s, b) = get_json(&key_url(&w.stale.url, k)).await;
        assert!(
            w.model.is_latest(k, s, &b) && b["recovering"] == true,
            "accept-stale went back to the restored copy of {k}: {s} {b}"
        );
    }

    let out = recover(dir, &db.url, &w.backup, &[]);
    assert!(
        out.status.success(),
        "ops recover: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["state"], "recovered", "{report}");
    assert_eq!(
        report["sources"][0]["replayed"].as_u64(),
        Some(w.after_backup as u64),
        "exactly the orders after the backup are replayed: {report}"
    );

    // Both service servers end with the latest data.
    for k in &w.keys {
        for base in [&w.latest.url, &w.stale.url] {
            let url = key_url(base, k);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                let (s, b) = get_json(&url).await;
                if w.model.is_latest(k, s, &b) && b["recovering"] != true {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{url} is not current after recovery: {s} {b}; latest is {:?}",
                    w.model.0.get(k)
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let log = log.lock().unwrap().clone();
    let latest: Vec<&Answer> = log.iter().filter(|a| a.service == "latest").collect();
    let stale: Vec<&Answer> = log.iter().filter(|a| a.service == "stale").collect();
    assert!(
        latest.len() > 100 && stale.len() > 100,
        "terminals kept reading: {} / {}",
        latest.len(),
        stale.len()
    );
    for a in &latest {
        if a.status == 503 {
            continue;
        }
        assert!(
            w.model.is_latest(&a.key, a.status, &a.body),
            "latest-only served outdated data: {a:?}"
        );
        assert_ne!(a.body["recovering"], true);
    }
    assert!(
        stale.iter().all(|a| a.status == 200 || a.status == 404),
        "accept-stale kept answering"
    );
    assert!(
        stale.iter().any(|a| a.body["recovering"] == true),
        "accept-stale served flagged data marked recovering during the recovery"
    );
    let (_, r) = get_json(&format!("{}/v1/recovery", db.url)).await;
    assert_eq!(
        (r["state"].as_str(), r["remaining"].as_u64()),
        (Some("recovered"), Some(0))
    );
    assert!(
        r["flagged"].as_u64().unwrap() > 0 && r["flagged"] == r["cleared"],
        "{r}"
    );
}

/// P5, P10: a recovery survives kill -9 of the DB server and the OpS.
#[tokio::test(flavor = "multi_thread")]
async fn killed_db_server_and_ops_during_recovery_end_in_the_journal_state() {
    for engine in engines("killed_db_server_and_ops_during_recovery_end_in_the_journal_state") {
        killed_db_server_and_ops_during_recovery_end_in_the_journal_state_on(engine).await;
    }
}

async fn killed_db_server_and_ops_during_recovery_end_in_the_journal_state_on(engine: Engine) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut w = disaster_on(dir, engine).await;
    let mut db = restore_and_restart(dir, &mut w).await;
    let addr = db.url.trim_start_matches("http://").to_owned();

    // The OpS dies after two replay batches.
    let out = recover(
        dir,
        &db.url,
        &w.backup,
        &[("TIDEMARK_FAILPOINTS", "ops.recover.after_batch=2")],
    );
    assert!(!out.status.success());
    let (_, r) = get_json(&format!("{}/v1/recovery", db.url)).await;
    assert_eq!(r["state"], "recovering");
    let remaining = r["remaining"].as_u64().unwrap();
    assert!(remaining > 0);
    let (_, flags) = get_json(&format!("{}/v1/recovery/flags?limit=5", db.url)).await;
    assert_eq!(
        flags["flags"].as_array().unwrap().len(),
        5,
        "operators can see what is still flagged and why"
    );
    assert!(
        flags["flags"][0]["through_seq"].as_u64().unwrap()
            > flags["flags"][0]["high_water"].as_u64().unwrap()
    );

    // The DB server dies too, and comes back still recovering, flags intact.
    db.kill9();
    let db = Proc::start_at("db-again", dir, &strs(&server_args(dir, w.engine)), &addr);
    db.wait_ok("/readyz").await;
    let (_, r) = get_json(&format!("{}/v1/recovery", db.url)).await;
    assert_eq!(
        (r["state"].as_str(), r["remaining"].as_u64()),
        (Some("recovering"), Some(remaining))
    );
    // A gap is refused while recovering.
    let (s, b) = post_raw(
        &format!("{}/v1/orders", db.url),
        json!({"orders": [{"source": "ops-1", "seq": 100000, "table": "subscriber", "key": "x", "op": "upsert", "fields": {}}]}).to_string(),
    )
    .await;
    assert_eq!((s, b["error"]["code"].as_str()), (409, Some("order_gap")));

    // Re-running the OpS finishes the job; a third run has nothing to do.
    let out = recover(dir, &db.url, &w.backup, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = recover(dir, &db.url, &w.backup, &[]);
    assert!(out.status.success());
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["already_done"],
        true
    );
    for k in &w.keys {
        let (s, b) = get_json(&key_url(&db.url, k)).await;
        assert!(w.model.is_latest(k, s, &b), "{k}: {s} {b}");
        assert_eq!(b["recovering"], false);
    }
}

/// P5, P6: schedule lists and completion are refused outside recovery.
#[tokio::test(flavor = "multi_thread")]
async fn recovery_requests_in_the_wrong_state_are_refused() {
    for engine in engines("recovery_requests_in_the_wrong_state_are_refused") {
        recovery_requests_in_the_wrong_state_are_refused_on(engine).await;
    }
}

async fn recovery_requests_in_the_wrong_state_are_refused_on(engine: Engine) {
    let tmp = tempfile::tempdir().unwrap();
    let db = db_server_on(tmp.path(), engine, &[]).await;
    let u = &db.url;
    let chunk = json!({"source": "ops-1", "entries": [{"table": "subscriber", "key": "k", "through_seq": 1}], "final": true});
    let (s, b) = post_raw(&format!("{u}/v1/recovery/schedule"), chunk.to_string()).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (409, Some("not_recovering"))
    );
    let (s, b) = post_raw(&format!("{u}/v1/recovery/complete"), "{}").await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (409, Some("not_recovering"))
    );
    let (s, b) = post_raw(&format!("{u}/v1/recovery/schedule"), "{\"entries\": 3}").await;
    assert_eq!((s, b["error"]["code"].as_str()), (400, Some("bad_json")));
    let (s, b) = post_raw(&format!("{u}/v1/recovery/abort"), "{}").await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "abort needs a reason"
    );
    let (_, r) = get_json(&format!("{u}/v1/recovery")).await;
    assert_eq!(r["state"], "normal");
}

/// P5: the only way out besides completion is an explicit, logged abort.
#[tokio::test(flavor = "multi_thread")]
async fn an_operator_can_end_a_recovery_explicitly() {
    for engine in engines("an_operator_can_end_a_recovery_explicitly") {
        an_operator_can_end_a_recovery_explicitly_on(engine).await;
    }
}

async fn an_operator_can_end_a_recovery_explicitly_on(engine: Engine) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut w = disaster_on(dir, engine).await;
    let db = restore_and_restart(dir, &mut w).await;
    let u = &db.url;
    // A chunk with a bad entry is refused whole, naming the entry.
    for (bad, status, code) in [
        (
            json!({"table": "nope", "key": "k", "through_seq": 5}),
            404,
            "unknown_table",
        ),
        (
            json!({"table": "subscriber", "key": "", "through_seq": 5}),
            400,
            "invalid_key",
        ),
        (
            json!({"table": "subscriber", "key": "k", "through_seq": 0}),
            400,
            "bad_request",
        ),
    ] {
        let chunk = json!({"source": "ops-1", "entries": [{"table": "subscriber", "key": key(2), "through_seq": 999}, bad], "final": false});
        let (s, b) = post_raw(&format!("{u}/v1/recovery/schedule"), chunk.to_string()).await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (status, Some(code)),
            "{b}"
        );
        let message = b["error"]["message"].as_str().unwrap();
        assert!(message.contains("entry 1"), "{message}");
        let (_, r) = get_json(&format!("{u}/v1/recovery")).await;
        assert_eq!(r["flagged"], 0, "nothing of the chunk was taken: {r}");
    }
    // The schedule list arrives but the OpS never completes.
    let chunk = json!({"source": "ops-1", "entries": [{"table": "subscriber", "key": key(1), "through_seq": 999}], "final": false});
    let (s, _) = post_raw(&format!("{u}/v1/recovery/schedule"), chunk.to_string()).await;
    assert_eq!(s, 200);
    let (s, b) = post_raw(&format!("{u}/v1/recovery/complete"), "{}").await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (409, Some("schedule_incomplete"))
    );
    let out = run(
        dir,
        &[
            "recovery",
            "abort",
            "--server",
            u,
            "--reason",
            "OpS journal lost",
        ],
        None,
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, r) = get_json(&format!("{u}/v1/recovery")).await;
    assert_eq!(r["state"], "normal");
    assert_eq!(r["waiting_for_sources"], json!([]), "nothing waits: {r}");
    let (s, b) = get_json(&key_url(u, &key(1))).await;
    assert_eq!((s, b["recovering"].as_bool()), (200, Some(false)));
    assert!(
        db.log_text().contains("OpS journal lost"),
        "the abort and its reason are logged"
    );
}

/// P9, P11: a resumed stream sends current records, never logged intermediate ones.
#[tokio::test(flavor = "multi_thread")]
async fn a_service_server_resuming_mid_recovery_never_takes_an_intermediate_record_as_current() {
    for engine in engines(
        "a_service_server_resuming_mid_recovery_never_takes_an_intermediate_record_as_current",
    ) {
        a_service_server_resuming_mid_recovery_never_takes_an_intermediate_record_as_current_on(
            engine,
        )
        .await;
    }
}

async fn a_service_server_resuming_mid_recovery_never_takes_an_intermediate_record_as_current_on(
    engine: Engine,
) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut w = disaster_on(dir, engine).await;
    let db = restore_and_restart(dir, &mut w).await;
    let cache = dir.join("resume-cache");
    let extra = [
        "--cache-dir",
        cache.to_str().unwrap(),
        "--latest-deadline-ms",
        "300",
    ];
    let mut svc = service(dir, "svc-resume", &db.url, "latest-only", &extra).await;
    // Key 0 gets three orders after the backup. Register interest in it
    // (the answer is "recovering": latest-only answers 503), then wait for
    // a snapshot and kill the service server.
    let k0 = key(0);
    let (s, _) = get_json(&key_url(&svc.url, &k0)).await;
    assert_eq!(s, 503);
    snapshot_taken(&svc.url, None).await;
    svc.kill9();
    // Part of the difference data is replayed while it is down: key 0 now
    // holds its second order of three, still flagged.
    let out = recover(
        dir,
        &db.url,
        &w.backup,
        &[("TIDEMARK_FAILPOINTS", "ops.recover.after_batch=2")],
    );
    assert!(!out.status.success());
    let (_, direct) = get_json(&key_url(&db.url, &k0)).await;
    assert_eq!(
        direct["recovering"], true,
        "key 0 is still flagged: {direct}"
    );
    // The restarted service server resumes from its snapshot's event id and
    // is sent the replayed changes; none may make key 0 look current.
    let svc = service(dir, "svc-resume", &db.url, "latest-only", &extra).await;
    eventually(10, "the resumed stream to catch up", || async {
        let (_, s) = get_json(&format!("{}/v1/state", svc.url)).await;
        (s["connected"] == true).then_some(())
    })
    .await;
    assert!(
        svc.log_text().contains("resumed=true"),
        "the stream was resumed with Last-Event-ID"
    );
    for _ in 0..10 {
        let (s, b) = get_json(&key_url(&svc.url, &k0)).await;
        assert!(
            s == 503 || w.model.is_latest(&k0, s, &b),
            "latest-only served an intermediate record: {s} {b}"
        );
    }
    // Finishing the recovery makes it current.
    assert!(recover(dir, &db.url, &w.backup, &[]).status.success());
    until_latest(&w.model, &svc.url, &k0, "key 0 to be current").await;
}

/// P10: an order whose acknowledgement was lost before the disaster (the
/// OpS died between the answer and recording it) is replayed as older than
/// every order made during the recovery: a live change to its key made
/// during the recovery stands (it used to count as the newest order). And
/// a second restore from the same backup ends the same way (the replay
/// used to record its own version as the order's place), once it is given
/// an epoch above every one handed out before (`ops recover` refuses a
/// reused one and names the `--min-epoch` to restore with).
#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_order_whose_acknowledgement_was_lost_never_beats_a_live_one() {
    for engine in engines("a_replayed_order_whose_acknowledgement_was_lost_never_beats_a_live_one")
    {
        a_replayed_order_whose_acknowledgement_was_lost_never_beats_a_live_one_on(engine).await;
    }
}

async fn a_replayed_order_whose_acknowledgement_was_lost_never_beats_a_live_one_on(engine: Engine) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut w = disaster_on(dir, engine).await;
    // The last order submitted (a delete of key 109) lost its
    // acknowledgement: its line leaves the acknowledgements file.
    let acks = acks_file(dir);
    let text = std::fs::read_to_string(&acks).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.pop().expect("acknowledgements");
    std::fs::write(&acks, lines.join("\n") + "\n").unwrap();
    w.db = restore_and_restart(dir, &mut w).await;
    // During the recovery, another source (journaled too) recreates it.
    let live = format!(
        "{}\n",
        json!({"table": "subscriber", "key": key(109), "op": "upsert", "fields": {"plan": "silver"}})
    );
    ops_submit(dir, &w.db.url, &live, &["--source", "live"]);
    for round in ["first", "second"] {
        let out = recover(dir, &w.db.url, &w.backup, &[]);
        assert!(
            out.status.success(),
            "ops recover ({round} restore): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (s, b) = get_json(&key_url(&w.db.url, &key(109))).await;
        assert_eq!(
            (s, b["fields"]["plan"].as_str()),
            (200, Some("silver")),
            "{round} restore: the live order is newer than the replayed delete: {b}"
        );
        if round == "first" {
            // Disaster again, the data directory lost again: the same
            // backup restored once more would reuse the epoch, which
            // `ops recover` refuses, naming the epoch to restore with.
            let (_, state) = get_json(&format!("{}/v1/state", w.db.url)).await;
            let epoch = state["epoch"].as_u64().unwrap();
            w.db = restore_and_restart(dir, &mut w).await;
            let out = recover(dir, &w.db.url, &w.backup, &[]);
            let err = String::from_utf8_lossy(&out.stderr);
            let min_epoch = format!("--min-epoch {}", epoch + 1);
            assert!(!out.status.success() && err.contains(&min_epoch), "{err}");
            w.db =
                restore_and_restart_with(dir, &mut w, &["--min-epoch", &(epoch + 1).to_string()])
                    .await;
        }
    }
}

/// The OpS's acknowledgements file in `dir/journal` (one source).
fn acks_file(dir: &Path) -> std::path::PathBuf {
    std::fs::read_dir(dir.join("journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "acks"))
        .expect("an acknowledgements file")
}

/// P10: orders whose acknowledgements were all lost (a batch, or a whole
/// run, killed before it recorded them) replay in their journal order. Key
/// 0 got three upserts after the backup (gold-0, gold-1, gold-2): with one
/// shared origin they tied, and the first won.
#[tokio::test(flavor = "multi_thread")]
async fn orders_whose_acknowledgements_were_all_lost_replay_in_journal_order() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut w = disaster_on(dir, Engine::Sqlite).await;
    let acks = acks_file(dir);
    let text = std::fs::read_to_string(&acks).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let kept = &lines[..lines.len() - w.after_backup];
    std::fs::write(&acks, kept.join("\n") + "\n").unwrap();
    w.db = restore_and_restart(dir, &mut w).await;
    // A new order of the source before its recovery is journaled but not
    // sent: it would send the source's missing orders as the newest writes.
    let new = w.model.line(&key(0), "upsert", json!({"plan": "after"}));
    let journal = dir.join("journal");
    let journal = journal.to_str().unwrap();
    let submit = [
        "ops",
        "submit",
        "--db",
        &w.db.url,
        "--journal",
        journal,
        "-",
    ];
    let refused = || {
        let out = run(dir, &submit, Some(new.as_bytes()), &[]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success() && err.contains("ops recover"),
            "{err}"
        );
    };
    refused();
    // Nor after a recover killed mid-replay (its final chunks sent, so no
    // source is waited for any more): before, this submit sent the rest of
    // the difference data as the newest writes.
    let fp = [("TIDEMARK_FAILPOINTS", "ops.recover.after_batch=1")];
    assert!(!recover(dir, &w.db.url, &w.backup, &fp).status.success());
    refused();
    let out = recover(dir, &w.db.url, &w.backup, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Recovered, the same submit sends it.
    let out = run(dir, &submit, Some(new.as_bytes()), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for k in &w.keys {
        let (s, b) = get_json(&key_url(&w.db.url, k)).await;
        assert!(w.model.is_latest(k, s, &b), "{k}: {s} {b}");
    }
}

/// An `ops submit` killed between the server's answer and the journal's
/// record leaves applied orders without acknowledgements; the next run
/// sends them again and records the versions the server applied them with
/// (its duplicate answers), so a later recovery has their places.
#[tokio::test(flavor = "multi_thread")]
async fn lost_acknowledgements_are_learned_again_by_the_next_submit() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let db = db_server(dir, &[]).await;
    let mut model = Model::default();
    let mut input = String::new();
    for i in 0..5 {
        input += &model.line(&key(i), "upsert", json!({"plan": "a"}));
    }
    ops_submit(dir, &db.url, &input, &[]);
    let acks = acks_file(dir);
    let before = std::fs::read_to_string(&acks).unwrap();
    let lines: Vec<&str> = before.lines().collect();
    std::fs::write(&acks, lines[..2].join("\n") + "\n").unwrap();
    let more = model.line(&key(5), "upsert", json!({"plan": "b"}));
    ops_submit(dir, &db.url, &more, &[]);
    let after = std::fs::read_to_string(&acks).unwrap();
    for line in &lines {
        assert!(after.contains(line), "{line} learned again: {after}");
    }
    // The same input again, after it went through, is a new order (see
    // data_path::the_same_order_given_again_later_is_applied_again): one
    // more acknowledgement.
    ops_submit(dir, &db.url, &more, &[]);
    let again = std::fs::read_to_string(&acks).unwrap();
    assert_eq!(again.lines().count(), after.lines().count() + 1, "{again}");
}

/// CONTRACT.md: "a key stays flagged until the order (source, through_seq)
/// has been applied". A schedule entry that names another key than that
/// order changed (x9 waits for ops-x seq 3, which changed a2) no longer
/// keeps the recovery from ending: once completion is requested, such a
/// flag is dropped when its order has been applied, whether the orders
/// arrive before the completion or after it. Before, x9 stayed recovering
/// for good.
#[tokio::test(flavor = "multi_thread")]
async fn a_flag_naming_another_key_than_its_order_clears_once_that_order_is_applied() {
    for engine in engines("a_flag_naming_another_key_than_its_order_clears") {
        for complete_first in [false, true] {
            a_flag_naming_another_key_clears_on(engine, complete_first).await;
        }
    }
}

async fn a_flag_naming_another_key_clears_on(engine: Engine, complete_first: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut db = db_server_on(dir, engine, &[]).await;
    let upsert = |seq: u64, key: &str| {
        json!({"orders": [{"source": "ops-x", "seq": seq, "table": "subscriber", "key": key,
                           "op": "upsert", "fields": {"plan": format!("p{seq}")}}]})
        .to_string()
    };
    let (s, b) = post_raw(&format!("{}/v1/orders", db.url), upsert(1, "a0")).await;
    assert_eq!(s, 200, "{b}");
    let backup = backup_online(dir, &db.url);
    let db = lose_restore_restart(dir, engine, &mut db, &backup, &[]).await;
    let u = db.url.clone();
    let schedule = json!({"source": "ops-x", "entries": [
        {"table": "subscriber", "key": "a1", "through_seq": 2},
        {"table": "subscriber", "key": "x9", "through_seq": 3}], "final": true});
    let (s, b) = post_raw(&format!("{u}/v1/recovery/schedule"), schedule.to_string()).await;
    assert_eq!((s, b["flagged"].as_u64()), (200, Some(2)), "{b}");
    let complete = || async {
        let (s, b) = post_raw(&format!("{u}/v1/recovery/complete"), "{}").await;
        assert_eq!(s, 200, "{b}");
    };
    if complete_first {
        complete().await;
    }
    for (seq, key) in [(2, "a1"), (3, "a2")] {
        let (s, b) = post_raw(&format!("{u}/v1/orders"), upsert(seq, key)).await;
        assert_eq!(s, 200, "{b}");
    }
    if !complete_first {
        complete().await;
    }
    // At the completion at once; after it, at the next maintenance tick
    // (once a second).
    let recovery = format!("{u}/v1/recovery");
    eventually(10, "the recovery to complete", || {
        let recovery = recovery.clone();
        async move {
            let (_, r) = get_json(&recovery).await;
            (r["state"] == "recovered").then_some(())
        }
    })
    .await;
    let (s, b) = get_json(&key_url(&u, "x9")).await;
    assert_eq!((s, b["recovering"].as_bool()), (404, Some(false)), "{b}");
    assert!(
        db.log_text().contains("was applied to another key"),
        "{}",
        db.log_text()
    );
}

/// P5, P8: `ops recover` does not report success while flags remain that
/// none of its journals can clear (here a key flagged by another source's
/// list whose order never comes): it exits non-zero, says how many, and
/// names the ways on (`recovery flags`, more journals, `recovery abort`).
/// Before, it exited 0 with the recovery still running.
#[tokio::test(flavor = "multi_thread")]
async fn ops_recover_fails_while_flags_remain_that_its_journals_cannot_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut w = disaster_on(dir, Engine::Sqlite).await;
    let db = restore_and_restart(dir, &mut w).await;
    let u = &db.url;
    // Before any schedule list, no key is flagged but every read is
    // answered as recovering: `recovery flags` says so, not just "0 keys".
    let text = run_ok(dir, &["recovery", "flags", "--server", u]);
    assert!(
        text.contains("0 keys still flagged")
            && text.contains("not complete yet, so every read is answered as recovering"),
        "{text}"
    );
    let chunk = json!({"source": "ops-elsewhere", "entries": [{"table": "subscriber", "key": key(1), "through_seq": 7}], "final": true});
    let (s, b) = post_raw(&format!("{u}/v1/recovery/schedule"), chunk.to_string()).await;
    assert_eq!(s, 200, "{b}");
    let out = recover(dir, u, &w.backup, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (_, r) = get_json(&format!("{u}/v1/recovery")).await;
    assert_eq!(r["state"], "recovering", "{r}");
    assert_eq!(report["remaining"], r["remaining"], "{report} {r}");
    assert!(r["remaining"].as_u64().unwrap() >= 1, "{r}");
    // It names the source whose orders the flags wait for.
    for hint in [
        "still flagged",
        "of source(s) ops-elsewhere",
        "recovery flags",
        "recovery abort",
    ] {
        assert!(stderr.contains(hint), "{hint}: {stderr}");
    }
    // The journals' own keys were recovered all the same.
    let (s, b) = get_json(&key_url(u, &key(2))).await;
    assert_eq!((s, b["recovering"].as_bool()), (200, Some(false)), "{b}");
}

/// The OpS after a recovery (DR chaos audit): an `ops submit` killed
/// mid-run, whose orders the recovery then replayed, is resumed when the
/// same input is given again, so nothing is applied twice (it was taken for
/// new orders and undid newer writes); and a source whose orders a restore
/// lost, left out of the recovery, does not send them as new writes with
/// its next input (they undid newer ones): refused, or left out with
/// `--skip-lost`.
#[tokio::test(flavor = "multi_thread")]
async fn after_a_recovery_the_ops_sends_nothing_twice_and_nothing_lost_as_new() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut db = db_server(dir, &[]).await;
    let line = |k: &str, plan: &str| {
        format!(
            "{}\n",
            json!({"table": "subscriber", "key": k, "op": "upsert", "fields": {"plan": plan}})
        )
    };
    let first_url = db.url.clone();
    let submit_as = |source: &str, input: &str, extra: &[&str], env: &[(&str, &str)]| {
        submit_as_db(dir, &first_url, source, input, extra, env)
    };
    assert!(submit_as("ops-1", &line("k0", "a"), &[], &[])
        .status
        .success());
    assert!(submit_as("ops-2", &line("k9", "a"), &[], &[])
        .status
        .success());
    let backup = backup_online(dir, &db.url);
    // ops-1: a run of five orders killed after its second batch.
    let input: String = (1..=5).map(|i| line(&format!("k{i}"), "x")).collect();
    let out = submit_as(
        "ops-1",
        &input,
        &["--batch", "1"],
        &[("TIDEMARK_FAILPOINTS", "ops.submit.after_batch=2")],
    );
    assert!(!out.status.success(), "the failpoint stops the run");
    // ops-2: an acknowledged order the restore will lose.
    assert!(submit_as("ops-2", &line("k9", "lost"), &[], &[])
        .status
        .success());
    let db = lose_restore_restart(dir, Engine::Sqlite, &mut db, &backup, &[]).await;
    run_ok(
        dir,
        &[
            "ops",
            "recover",
            "--db",
            &db.url,
            "--journal",
            dir.join("journal-ops-1").to_str().unwrap(),
            "--backup",
            backup.to_str().unwrap(),
            "--without-source",
            "ops-2",
        ],
    );
    // Newer writes by another source, after the recovery.
    let newest = line("k1", "newest") + &line("k9", "newest");
    let out = submit_as_db(dir, &db.url, "ops-3", &newest, &[], &[]);
    assert!(out.status.success());
    // The killed run given again: resumed, nothing applied twice.
    let report = report_of(submit_as_db(dir, &db.url, "ops-1", &input, &[], &[]));
    assert_eq!(report["applied"], 0, "{report}");
    let (_, r) = get_json(&key_url(&db.url, "k1")).await;
    assert_eq!(r["fields"]["plan"], "newest", "{r}");
    // ops-2's next input: its lost order would undo the newer write.
    let out = submit_as_db(dir, &db.url, "ops-2", &line("k8", "b"), &[], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--skip-lost") && err.contains("ops recover"),
        "{err}"
    );
    let report = report_of(submit_as_db(
        dir,
        &db.url,
        "ops-2",
        &line("k8", "b"),
        &["--skip-lost"],
        &[],
    ));
    assert_eq!(report["applied"], 1, "only the new order: {report}");
    let (_, r) = get_json(&key_url(&db.url, "k9")).await;
    assert_eq!(r["fields"]["plan"], "newest", "{r}");
    let (_, r) = get_json(&key_url(&db.url, "k8")).await;
    assert_eq!(r["fields"]["plan"], "b", "{r}");
}

/// The `--json` report of an `ops submit` that must have succeeded.
fn report_of(out: std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `ops submit --json` of `input` as `source` (journal `dir/journal-SOURCE`),
/// with `extra` flags and `env` added.
fn submit_as_db(
    dir: &Path,
    db: &str,
    source: &str,
    input: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    let journal = dir.join(format!("journal-{source}"));
    let mut args = vec![
        "ops",
        "submit",
        "--db",
        db,
        "--journal",
        journal.to_str().unwrap(),
        "--source",
        source,
        "--json",
    ];
    args.extend_from_slice(extra);
    args.push("-");
    run(dir, &args, Some(input.as_bytes()), env)
}
