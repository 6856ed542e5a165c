//! The PostgreSQL engine under faults (issue 10): PostgreSQL killed
//! (`pg_ctl stop -m immediate`) under order load and restarted.

use crate::harness::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tidemark_testkit::postgres::{bin_dir, required, PgCluster};

/// A PostgreSQL cluster of the test's own (it stops, restarts or freezes
/// it) and a database `name` on it; `None`: PostgreSQL is not installed
/// and not required, so the test is skipped.
fn own_cluster(name: &str) -> Option<(PgCluster, String)> {
    let Some(bin) = bin_dir() else {
        assert!(
            !required(),
            "TIDEMARK_REQUIRE_POSTGRES=1 but PostgreSQL is not installed"
        );
        eprintln!("skipped: no PostgreSQL server binaries");
        return None;
    };
    let cluster = PgCluster::start(&bin).expect("a PostgreSQL cluster");
    let url = cluster.database(name).unwrap();
    Some((cluster, url))
}

/// A DB server on the PostgreSQL database `url`.
fn pg_server(dir: &std::path::Path, url: &str) -> Proc {
    Proc::start(
        "db",
        dir,
        &["server", "--store", "postgres", "--database-url", url],
        &[],
    )
}

/// Every order acknowledged across a PostgreSQL crash is present exactly
/// once afterwards; in-flight orders get 503 with Retry-After, never a
/// half-applied batch; the server reconnects by itself.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_killed_under_load_loses_no_acknowledged_order() {
    // A cluster of its own: this test stops it.
    let Some((cluster, url)) = own_cluster("crash") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let db = pg_server(tmp.path(), &url);
    db.wait_ok("/readyz").await;
    let acked: Arc<Mutex<BTreeSet<(usize, u64)>>> = Default::default();
    let statuses: Arc<Mutex<BTreeSet<u16>>> = Default::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..3usize {
        let (acked, statuses, stop, base) = (
            acked.clone(),
            statuses.clone(),
            stop.clone(),
            db.url.clone(),
        );
        writers.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut seq = 1u64;
            // Each writer is one source; a batch is resent as it is until
            // acknowledged (orders are idempotent), then the next one.
            while !stop.load(Ordering::SeqCst) || seq <= 3 {
                let orders: Vec<Value> = (0..5)
                    .map(|i| {
                        json!({"source": format!("w{w}"), "seq": seq + i, "table": "subscriber",
                               "key": format!("w{w}-k{}", (seq + i) % 17), "op": "upsert",
                               "fields": {"credit_limit": seq + i}})
                    })
                    .collect();
                let r = client
                    .post(format!("{base}/v1/orders"))
                    .json(&json!({ "orders": orders }))
                    .timeout(std::time::Duration::from_secs(10))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().is_success() => {
                        let mut a = acked.lock().unwrap();
                        for i in 0..5 {
                            a.insert((w, seq + i));
                        }
                        seq += 5;
                    }
                    Ok(r) => {
                        let s = r.status().as_u16();
                        if s == 503 {
                            assert!(
                                r.headers().contains_key("retry-after"),
                                "503 carries Retry-After"
                            );
                        }
                        statuses.lock().unwrap().insert(s);
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
                }
            }
        }));
    }
    let before = |n: usize| {
        let acked = acked.clone();
        async move {
            eventually(30, "orders to be acknowledged", || {
                let acked = acked.clone();
                async move { (acked.lock().unwrap().len() >= n).then_some(()) }
            })
            .await
        }
    };
    before(60).await;
    cluster.stop_immediate().expect("pg_ctl stop -m immediate");
    let (s, b) = post_raw(&format!("{}/v1/orders", db.url), r#"{"orders": [{"source": "probe", "seq": 1, "table": "subscriber", "key": "p", "op": "upsert", "fields": {}}]}"#).await;
    // The store is unreachable; once the lease lapses, the instance holds
    // writes as in a failover and then says no primary is online.
    assert!(
        s == 503
            && matches!(
                b["error"]["code"].as_str(),
                Some("store_unavailable" | "no_primary")
            ),
        "{s} {b}"
    );
    let while_down = acked.lock().unwrap().len();
    cluster.restart().expect("PostgreSQL back");
    before(while_down + 60).await;
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }
    assert!(
        statuses.lock().unwrap().iter().all(|s| *s == 503),
        "only 503s while PostgreSQL was away: {:?}",
        statuses.lock().unwrap()
    );

    // Exactly once: every acknowledged (source, seq) is in the change log,
    // and no order is in it twice.
    let client = pg_client(&url).await;
    let rows = client
        .query("SELECT source, source_seq, count(*) FROM tidemark.tm_changes GROUP BY source, source_seq", &[])
        .await
        .unwrap();
    let mut logged = BTreeSet::new();
    for r in &rows {
        let (src, seq, n): (String, i64, i64) = (r.get(0), r.get(1), r.get(2));
        assert_eq!(n, 1, "{src} seq {seq} applied {n} times");
        if let Some(w) = src.strip_prefix('w') {
            logged.insert((w.parse::<usize>().unwrap(), seq as u64));
        }
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.is_subset(&logged), "an acknowledged order is missing");
    let (_, marks) = get_json(&format!("{}/v1/sources", db.url)).await;
    for w in 0..3 {
        let hw = marks[format!("w{w}")].as_u64().unwrap();
        let last_acked = acked
            .iter()
            .filter(|(x, _)| *x == w)
            .map(|(_, s)| *s)
            .max()
            .unwrap();
        // A batch in flight when the writers stopped may have committed
        // without its answer arriving: at most one batch more.
        assert!(
            (last_acked..=last_acked + 5).contains(&hw),
            "w{w}: high-water mark {hw}, last acknowledged {last_acked}"
        );
    }
}

/// B4 on PostgreSQL, and the migration path: a backup of the embedded
/// engine restores into PostgreSQL (refused while a DB server uses the
/// schema), and the OpS recovers it there.
#[tokio::test(flavor = "multi_thread")]
async fn a_sqlite_backup_moves_to_postgres_and_restore_waits_for_the_server_to_stop() {
    if !engines("migration").contains(&Engine::Postgres) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let lite = db_server(dir, &[]).await;
    let mut model = Model::default();
    let mut input = String::new();
    for i in 0..50 {
        input += &model.line(
            &format!("k{i}"),
            "upsert",
            json!({"plan": "a", "credit_limit": i}),
        );
    }
    ops_submit(dir, &lite.url, &input, &[]);
    let backup = backup_online(dir, &lite.url);
    let mut input = String::new();
    for i in 0..10 {
        input += &model.line(&format!("k{i}"), "upsert", json!({"plan": "b"}));
    }
    ops_submit(dir, &lite.url, &input, &[]);

    let mut pg = db_server_on(dir, Engine::Postgres, &[]).await;
    let mut restore: Vec<String> = vec![
        "restore".into(),
        "--from".into(),
        backup.display().to_string(),
    ];
    restore.extend(store_args(dir, Engine::Postgres));
    let restore: Vec<&str> = restore.iter().map(String::as_str).collect();
    // Schema names a restore cannot own, or that are no names, are refused
    // before anything is read, each saying why.
    for (name, says) in [
        ("public", "without its owner"),
        ("My-Schema", "not a schema name"),
        (&"s".repeat(60)[..], "at most 53"),
    ] {
        let mut args = restore.clone();
        args.extend(["--pg-schema", name]);
        let out = run(dir, &args, None, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(says), "{name}: {stderr}");
    }
    // A server refuses the names a restore could not stage beside, so no
    // store is made that no restore can replace.
    let mut server: Vec<String> = vec!["server".into()];
    server.extend(store_args(dir, Engine::Postgres));
    let long = "s".repeat(60);
    server.extend([
        "--pg-schema".into(),
        long,
        "--listen".into(),
        "127.0.0.1:0".into(),
    ]);
    let server: Vec<&str> = server.iter().map(String::as_str).collect();
    let out = run(dir, &server, None, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("at most 53"), "{stderr}");
    let out = run(dir, &restore, None, &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("PostgreSQL schema 'tidemark'"), "{stderr}");
    pg.kill9();
    let out = run(dir, &restore, None, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut args = vec!["server".to_owned()];
    args.extend(store_args(dir, Engine::Postgres));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut pg = Proc::start("db-pg", dir, &args, &[]);
    pg.wait_ok("/readyz").await;
    let (_, r) = get_json(&format!("{}/v1/recovery", pg.url)).await;
    assert_eq!(r["state"], "recovering", "{r}");
    let out = run(
        dir,
        &[
            "ops",
            "recover",
            "--db",
            &pg.url,
            "--journal",
            dir.join("journal").to_str().unwrap(),
            "--backup",
            backup.to_str().unwrap(),
            "--json",
        ],
        None,
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 0..50 {
        let k = format!("k{i}");
        let (s, b) = get_json(&key_url(&pg.url, &k)).await;
        assert!(
            model.is_latest(&k, s, &b) && b["recovering"] == false,
            "{k}: {b}"
        );
    }

    // B6 on PostgreSQL: restored without its cleanup, the server refuses
    // to start and names the cleanup to run; after it, it starts. Before,
    // cleanup knew only data directories.
    pg.terminate();
    let mut no_cleanup = restore.clone();
    no_cleanup.push("--no-cleanup");
    let out = run(dir, &no_cleanup, None, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("tidemark cleanup --store postgres"),
        "{stderr}"
    );
    let out = run(dir, &args, None, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("tidemark cleanup --store postgres"),
        "{stderr}"
    );
    let mut cleanup = vec!["cleanup".to_owned()];
    cleanup.extend(store_args(dir, Engine::Postgres));
    let printed = run_ok(dir, &strs(&cleanup));
    assert!(printed.contains("removed"), "{printed}");
    let pg = Proc::start("db-pg", dir, &args, &[]);
    pg.wait_ok("/readyz").await;
}

/// B2 on PostgreSQL: `backup create --offline --store postgres` backs up
/// the schema of a stopped cluster, and is refused while a DB server uses
/// it; the backup restores (here into the embedded engine) with every
/// record. Before, --offline read only a data directory.
#[tokio::test(flavor = "multi_thread")]
async fn an_offline_backup_of_postgres_waits_for_the_server_to_stop() {
    if !engines("offline_pg_backup").contains(&Engine::Postgres) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut pg = db_server_on(dir, Engine::Postgres, &[]).await;
    let mut model = Model::default();
    let mut input = String::new();
    for i in 0..30 {
        input += &model.line(&format!("k{i}"), "upsert", json!({"credit_limit": i}));
    }
    assert!(ops_submit(dir, &pg.url, &input, &[]).status.success());
    let backup = dir.join("offline");
    let mut create = vec![
        "backup".to_owned(),
        "create".into(),
        "--offline".into(),
        "--to".into(),
        backup.display().to_string(),
        "--store".into(),
        "postgres".into(),
    ];
    create.extend(store_args(dir, Engine::Postgres).into_iter().skip(2));
    let out = run(dir, &strs(&create), None, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("stop it first"), "{stderr}");
    assert!(!backup.exists(), "nothing partial is left");
    pg.terminate();
    let printed = run_ok(dir, &strs(&create));
    assert!(printed.contains("offline"), "{printed}");
    run_ok(dir, &["backup", "verify", backup.to_str().unwrap()]);

    let lite = dir.join("lite");
    run_ok(
        dir,
        &[
            "restore",
            "--from",
            backup.to_str().unwrap(),
            "--data-dir",
            lite.to_str().unwrap(),
        ],
    );
    let db = Proc::start(
        "lite",
        dir,
        &["server", "--data-dir", lite.to_str().unwrap()],
        &[],
    );
    db.wait_ok("/readyz").await;
    for i in 0..30 {
        let k = format!("k{i}");
        let (s, b) = get_json(&key_url(&db.url, &k)).await;
        assert!(model.is_latest(&k, s, &b), "{k}: {s} {b}");
    }
}

/// `tidemark demo --store postgres` tells the whole story on PostgreSQL,
/// starting a temporary cluster itself, and exits 0 only if every check held.
#[tokio::test(flavor = "multi_thread")]
async fn the_demo_runs_on_postgres() {
    if !engines("demo").contains(&Engine::Postgres) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = run(tmp.path(), &["demo", "--store", "postgres"], None, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all checks held") && !stdout.contains("FAIL"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A database that does not exist: the server names PostgreSQL's own
/// reason and what to do (it logged just "db error" before), and is not
/// ready.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_database_is_named_with_what_to_do() {
    let Some(pg) = tidemark_testkit::postgres::PgCluster::shared("nodb") else {
        eprintln!("skipped: no PostgreSQL");
        return;
    };
    let url = pg.url("tidemark_no_such_database");
    let tmp = tempfile::tempdir().unwrap();
    let db = pg_server(tmp.path(), &url);
    db.wait_ok("/healthz").await;
    eventually(10, "the refusal logged with its reason", || async {
        let log = db.log_text();
        (log.contains("\"tidemark_no_such_database\" does not exist")
            && log.contains("check the user, password and database in --database-url"))
        .then_some(())
    })
    .await;
    let (s, b) = get_json(&format!("{}/readyz", db.url)).await;
    assert_eq!(s, 503, "{b}");
}

/// PostgreSQL unreachable at start: the server says so, keeps retrying,
/// answers `/readyz` with 503 meanwhile, and is ready once it connects
/// and holds the lease: the first order after ready is accepted.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_waits_for_postgres_and_is_not_ready_meanwhile() {
    let Some((cluster, url)) = own_cluster("late") else {
        return;
    };
    cluster.stop_immediate().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let db = pg_server(tmp.path(), &url);
    db.wait_ok("/healthz").await;
    let (s, b) = get_json(&format!("{}/readyz", db.url)).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (503, Some("not_ready")),
        "{b}"
    );
    eventually(10, "a retry logged", || async {
        db.log_text()
            .contains("PostgreSQL is not reachable yet")
            .then_some(())
    })
    .await;
    // The probes say why, not only the log.
    let (_, b) = get_json(&format!("{}/v1/state", db.url)).await;
    let message = b["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("cannot open its store yet") && message.contains("retries by itself"),
        "{b}"
    );
    cluster.restart().unwrap();
    db.wait_ok("/readyz").await;
    // Ready means able to write: a lone instance is the primary by then
    // (it used to report ready a lease tick before it took the lease, and
    // an order sent at once got 503 no_primary).
    let (s, b) = get_json(&format!("{}/v1/state", db.url)).await;
    assert_eq!((s, b["role"].as_str()), (200, Some("primary")), "{b}");
    let order = json!({"orders": [{"source": "ops", "seq": 1, "table": "subscriber",
        "key": "k", "op": "upsert", "fields": {"plan": "basic"}}]});
    let (s, b) = post_raw(&format!("{}/v1/orders", db.url), order.to_string()).await;
    assert_eq!(s, 200, "the first order after ready: {b}");
    let (s, _) = get_json(&key_url(&db.url, "k")).await;
    assert_eq!(s, 200, "serving once connected");
}

/// `tidemark server` on `url`, run to its end (it is expected to refuse).
fn server_refusal(dir: &std::path::Path, url: &str) -> String {
    let out = run(
        dir,
        &[
            "server",
            "--store",
            "postgres",
            "--database-url",
            url,
            "--listen",
            "127.0.0.1:0",
        ],
        None,
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "refused: {stderr}");
    stderr
}

/// Missing rights: a role that may not create the schema, then one that
/// may not use an existing schema, is refused with the exact GRANT to run;
/// running that GRANT is all it takes.
#[tokio::test(flavor = "multi_thread")]
async fn a_role_without_rights_is_refused_with_the_grant_to_run() {
    let Some(cluster) = PgCluster::shared("rights") else {
        return;
    };
    let url = cluster.database("rights").unwrap();
    let db = url.rsplit('/').next().unwrap().to_owned();
    let su = pg_client(&url).await;
    su.batch_execute(
        "DO $$ BEGIN CREATE ROLE tm_limited LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$",
    )
    .await
    .unwrap();
    let limited = url.replace("postgres://postgres@", "postgres://tm_limited@");
    let tmp = tempfile::tempdir().unwrap();

    let err = server_refusal(tmp.path(), &limited);
    assert!(
        err.contains(&format!(
            "GRANT CREATE ON DATABASE \"{db}\" TO \"tm_limited\""
        )),
        "{err}"
    );
    // The schema exists, made by another role, without grants.
    su.batch_execute("CREATE SCHEMA tidemark").await.unwrap();
    let err = server_refusal(tmp.path(), &limited);
    assert!(
        err.contains("GRANT USAGE, CREATE ON SCHEMA \"tidemark\" TO \"tm_limited\""),
        "{err}"
    );
    su.batch_execute("GRANT USAGE, CREATE ON SCHEMA tidemark TO tm_limited")
        .await
        .unwrap();
    let db = Proc::start(
        "db",
        tmp.path(),
        &["server", "--store", "postgres", "--database-url", &limited],
        &[],
    );
    db.wait_ok("/readyz").await;
    let (s, _) = post_raw(&format!("{}/v1/orders", db.url), r#"{"orders": [{"source": "o", "seq": 1, "table": "subscriber", "key": "k", "op": "upsert", "fields": {"plan": "a"}}]}"#).await;
    assert_eq!(s, 200, "serving after the GRANT");
}

/// A schema left by a newer Tidemark (a higher store format in tm_meta):
/// the server refuses to start, says there is no override, and leaves the
/// schema as it found it.
#[tokio::test(flavor = "multi_thread")]
async fn a_schema_from_a_newer_tidemark_keeps_the_server_from_starting() {
    let Some(cluster) = PgCluster::shared("newer_it") else {
        return;
    };
    let url = cluster.database("newer_it").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut db = pg_server(tmp.path(), &url);
    db.wait_ok("/readyz").await;
    assert!(db.terminate().success());
    let su = pg_client(&url).await;
    su.batch_execute(
        "UPDATE tidemark.tm_meta SET value = '2' WHERE name = 'format'; DROP TABLE tidemark.tm_lww",
    )
    .await
    .unwrap();
    let err = server_refusal(tmp.path(), &url);
    assert!(
        err.contains("holds store format 2, written by a newer Tidemark")
            && err.contains("no override"),
        "{err}"
    );
    let untouched = su
        .query_one(
            "SELECT to_regclass('tidemark.tm_lww') IS NULL AND (SELECT value FROM tidemark.tm_meta WHERE name = 'format') = '2'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, bool>(0);
    assert!(untouched, "the refused start changed the newer schema");
}

/// After PostgreSQL restarts under a running server, the server re-takes
/// its shared lock before it takes orders again, so a restore stays
/// refused until the server stops.
#[tokio::test(flavor = "multi_thread")]
async fn after_postgres_restarts_under_a_running_server_restore_is_still_refused() {
    // A cluster of its own: this test restarts it.
    let Some((cluster, url)) = own_cluster("relock") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut db = pg_server(dir, &url);
    db.wait_ok("/readyz").await;
    let order = |seq: u64| {
        format!(
            r#"{{"orders": [{{"source": "o", "seq": {seq}, "table": "subscriber", "key": "k{seq}", "op": "upsert", "fields": {{"plan": "a"}}}}]}}"#
        )
    };
    let (s, _) = post_raw(&format!("{}/v1/orders", db.url), order(1)).await;
    assert_eq!(s, 200);
    let backup = backup_online(dir, &db.url);

    cluster.stop_immediate().unwrap();
    // Not ready while PostgreSQL is down: every read and order would be
    // refused (it answered ready before). The probe asks the store at
    // most once a second.
    let readyz = format!("{}/readyz", db.url);
    let b = eventually(10, "not ready while PostgreSQL is down", || {
        let readyz = readyz.clone();
        async move {
            let (s, b) = get_json(&readyz).await;
            (s == 503).then_some(b)
        }
    })
    .await;
    assert_eq!(b["error"]["code"], "not_ready", "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("PostgreSQL"),
        "{b}"
    );
    cluster.restart().unwrap();
    db.wait_ok("/readyz").await;
    // Orders are taken again only once the lock is back.
    let orders_url = format!("{}/v1/orders", db.url);
    eventually(30, "orders accepted after the restart", || {
        let (u, body) = (orders_url.clone(), order(2));
        async move { (post_raw(&u, body).await.0 == 200).then_some(()) }
    })
    .await;
    let restore = [
        "restore",
        "--from",
        backup.to_str().unwrap(),
        "--store",
        "postgres",
        "--database-url",
        &url,
    ];
    let out = run(dir, &restore, None, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "restore under a live server: {stderr}"
    );
    assert!(stderr.contains("PostgreSQL schema 'tidemark'"), "{stderr}");
    assert!(
        db.log_text().contains("server lock re-taken"),
        "{}",
        db.log_text()
    );
    assert!(db.terminate().success());
    let out = run(dir, &restore, None, &[]);
    assert!(
        out.status.success(),
        "restore once the server stopped: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A primary cut off from PostgreSQL (its connections open but answering
/// nothing, as behind a partition) stops answering from its read cache
/// once its lease may have run out: another instance may be committing by
/// then. Once PostgreSQL answers again, it serves again. (Before, the
/// lease renewal waited on the hung connection for good, so the instance
/// stayed primary and served what it had cached.)
#[tokio::test(flavor = "multi_thread")]
async fn a_primary_cut_off_from_postgres_stops_answering_from_its_read_cache() {
    // A cluster of its own: this test freezes it.
    let Some((cluster, url)) = own_cluster("cutoff") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let db = Proc::start(
        "db",
        tmp.path(),
        &[
            "server",
            "--store",
            "postgres",
            "--database-url",
            &url,
            "--lease-ttl-ms",
            "1000",
        ],
        &[],
    );
    db.wait_ok("/readyz").await;
    let order = json!({"orders": [{"source": "ops", "seq": 1, "table": "subscriber",
        "key": "k", "op": "upsert", "fields": {"plan": "basic"}}]});
    let (s, b) = post_raw(&format!("{}/v1/orders", db.url), order.to_string()).await;
    assert_eq!(s, 200, "{b}");
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(300))
        .build()
        .unwrap();
    let key = key_url(&db.url, "k");
    let read = || async {
        client
            .get(&key)
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    };
    // The second read is a cache hit.
    assert_eq!((read().await, read().await), (Some(200), Some(200)));
    cluster.freeze(true).unwrap();
    eventually(10, "no more answers from the read cache", || async {
        (read().await != Some(200)).then_some(())
    })
    .await;
    for _ in 0..5 {
        assert_ne!(read().await, Some(200), "a cached answer while cut off");
    }
    cluster.freeze(false).unwrap();
    eventually(30, "serving again once PostgreSQL answers", || async {
        (read().await == Some(200)).then_some(())
    })
    .await;
}
