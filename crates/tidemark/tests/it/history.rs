//! A DB server whose store is another history than the one a service
//! server cached from: a second restore from the same backup (whose live
//! data was lost, so it reuses the epoch the first one gave), or a store
//! started over empty. Versions of the old history can look newer than the
//! DB server's data while they are outdated; no service server may serve
//! them as current (P9, P11). Both were found by an outside chaos audit.

use crate::harness::*;
use serde_json::json;
use std::path::Path;

/// `plan` of `key` as `base` answers it, with the status and whether it
/// was marked recovering.
async fn plan(base: &str, key: &str) -> (u16, Option<String>, bool) {
    let (s, r) = get_json(&key_url(base, key)).await;
    (
        s,
        r["fields"]["plan"].as_str().map(str::to_owned),
        r["recovering"] == true,
    )
}

/// `ops submit` of one upsert of `k`, journaled in `dir/journal`.
fn write(dir: &Path, db: &str, value: &str) {
    ops_submit(dir, db, &order_line("k", json!({ "plan": value })), &[]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_started_over_empty_is_not_outranked_by_copies_from_the_old_one() {
    for engine in engines("store_started_over") {
        a_store_started_over_empty_is_not_outranked_on(engine).await;
    }
}

async fn a_store_started_over_empty_is_not_outranked_on(engine: Engine) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut db = db_server_on(dir, engine, &[]).await;
    let latest = service(dir, "svc-l", &db.url, "latest-only", &[]).await;
    let stale = service(dir, "svc-s", &db.url, "accept-stale", &[]).await;
    for _ in 0..3 {
        write(dir, &db.url, "old");
    }
    for svc in [&latest, &stale] {
        let url = key_url(&svc.url, "k");
        eventually(10, "k cached", || async {
            let (_, r) = get_json(&url).await;
            (r["source"] == "cache" && r["fields"]["plan"] == "old").then_some(())
        })
        .await;
    }
    // The disk is swapped and the server starts over, empty, at the same
    // address; another OpS writes k anew, at a version below the copies'.
    let addr = db.url.trim_start_matches("http://").to_owned();
    db.kill9();
    lose_data(dir, engine).await;
    let db = Proc::start_at("db-empty", dir, &strs(&server_args(dir, engine)), &addr);
    db.wait_ok("/readyz").await;
    let other = dir.join("ops-2");
    std::fs::create_dir_all(&other).unwrap();
    write(&other, &db.url, "new");
    assert_eq!(plan(&db.url, "k").await, (200, Some("new".into()), false));
    for svc in [&latest, &stale] {
        eventually(15, "the new store's data served", || async {
            let (s, p, recovering) = plan(&svc.url, "k").await;
            assert!(
                !(s == 200 && p.as_deref() == Some("old") && !recovering),
                "{engine:?}: the old store's copy served as current by {}",
                svc.url
            );
            (p.as_deref() == Some("new")).then_some(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_restore_that_reuses_an_epoch_is_not_outranked_by_copies_from_the_first() {
    for engine in engines("restore_reuses_epoch") {
        a_second_restore_that_reuses_an_epoch_on(engine).await;
    }
}

async fn a_second_restore_that_reuses_an_epoch_on(engine: Engine) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut db = db_server_on(dir, engine, &[]).await;
    write(dir, &db.url, "v1");
    let backup = backup_online(dir, &db.url);
    write(dir, &db.url, "v2");
    // The first disaster: restored (epoch 2), recovered, and k written in
    // epoch 2, which a service server with a cache snapshot caches.
    let mut db = lose_restore_restart(dir, engine, &mut db, &backup, &[]).await;
    run_ok(
        dir,
        &[
            "ops",
            "recover",
            "--db",
            &db.url,
            "--journal",
            dir.join("journal").to_str().unwrap(),
            "--backup",
            backup.to_str().unwrap(),
        ],
    );
    write(dir, &db.url, "v3");
    let cache_dir = dir.join("svc-cache");
    let extra = [
        "--cache-dir",
        cache_dir.to_str().unwrap(),
        "--latest-deadline-ms",
        "300",
    ];
    let mut svc = service(dir, "svc-l", &db.url, "latest-only", &extra).await;
    let url = key_url(&svc.url, "k");
    eventually(10, "v3 cached", || async {
        let (_, r) = get_json(&url).await;
        (r["source"] == "cache" && r["fields"]["plan"] == "v3").then_some(())
    })
    .await;
    snapshot_taken(&svc.url, None).await;
    svc.kill9();
    write(dir, &db.url, "v4");
    // The second disaster, restored from the same backup: the live data is
    // lost, so the epoch is counted from the backup's again.
    let db = lose_restore_restart(dir, engine, &mut db, &backup, &[]).await;
    let (_, state) = get_json(&format!("{}/v1/state", db.url)).await;
    assert_eq!(state["epoch"], 2, "the epoch reused: {state}");
    let svc = service(dir, "svc-l", &db.url, "latest-only", &extra).await;
    // Until the difference data comes, the DB server answers every read as
    // recovering: the snapshot's v3 (a version of the first epoch 2) must
    // not be served as current.
    let (s, p, _) = plan(&svc.url, "k").await;
    assert_eq!(
        s, 503,
        "{engine:?}: served {p:?} while the DB server recovers"
    );
    let (s, p, recovering) = plan(&db.url, "k").await;
    assert_eq!((s, p.as_deref(), recovering), (200, Some("v1"), true));
}
