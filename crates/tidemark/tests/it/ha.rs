//! High availability (issue 11; S3, S5, S8, S10): several DB-server
//! instances on one PostgreSQL, under continuous orders and reads.
//!
//! After each fault: every acknowledged order is in the change log exactly
//! once, the service server ends on the latest record of every key, and
//! its pushes kept arriving.

use crate::harness::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tidemark_testkit::postgres::PgCluster;

/// A fast lease, so failovers in tests take about a second.
const LEASE_MS: &str = "1000";

/// The test's database on the shared cluster, or None (skipped).
fn database(test: &str) -> Option<String> {
    let cluster = PgCluster::shared(test)?;
    Some(cluster.database("ha").expect("a test database"))
}

/// One instance of the cluster on `url`'s database.
fn instance(dir: &Path, name: &str, url: &str, listen: &str) -> Proc {
    instance_leased(dir, name, url, listen, LEASE_MS)
}

/// [`instance`] with a lease of `lease_ms`.
fn instance_leased(dir: &Path, name: &str, url: &str, listen: &str, lease_ms: &str) -> Proc {
    instance_timed(dir, name, url, listen, lease_ms, "15")
}

/// [`instance`] with a lease of `lease_ms` and `--failover-wait` of `wait`.
fn instance_timed(
    dir: &Path,
    name: &str,
    url: &str,
    listen: &str,
    lease_ms: &str,
    wait: &str,
) -> Proc {
    Proc::start_at(
        name,
        dir,
        &[
            "server",
            "--store",
            "postgres",
            "--database-url",
            url,
            "--lease-ttl-ms",
            lease_ms,
            "--failover-wait",
            wait,
        ],
        listen,
    )
}

async fn state(url: &str) -> Option<Value> {
    let r = reqwest::Client::new()
        .get(format!("{url}/v1/state"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    r.json().await.ok()
}

/// Waits until exactly one of `urls` says it is primary and the others
/// agree; returns its index.
async fn primary_of(urls: &[String]) -> usize {
    eventually(20, "one primary that every live instance names", || async {
        let mut primary = None;
        let mut named = BTreeSet::new();
        for (i, u) in urls.iter().enumerate() {
            let s = state(u).await?;
            if s["role"] == "primary" {
                if primary.is_some() {
                    return None;
                }
                primary = Some(i);
            }
            named.insert(s["primary"].as_str()?.to_owned());
        }
        let p = primary?;
        (named.len() == 1 && named.contains(&urls[p])).then_some(p)
    })
    .await
}

/// Orders from `writers` sources, sent round-robin to every instance (a
/// write reaches the primary wherever it is sent), each batch resent until
/// acknowledged. Records what was acknowledged and every refusal.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeSet<(usize, u64)>>>,
    refused: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

const KEYS: u64 = 13;

impl Load {
    fn start(urls: Vec<String>, writers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<Mutex<BTreeSet<(usize, u64)>>> = Default::default();
        let refused: Arc<Mutex<Vec<String>>> = Default::default();
        let mut tasks = Vec::new();
        for w in 0..writers {
            let (stop, acked, refused, urls) =
                (stop.clone(), acked.clone(), refused.clone(), urls.clone());
            tasks.push(tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut seq = 1u64;
                let mut turn = w;
                while !stop.load(Ordering::SeqCst) {
                    let orders: Vec<Value> = (0..4)
                        .map(|i| {
                            json!({"source": format!("w{w}"), "seq": seq + i, "table": "subscriber",
                                   "key": format!("k{}", (seq + i) % KEYS), "op": "upsert",
                                   "fields": {"credit_limit": seq + i, "plan": format!("w{w}")}})
                        })
                        .collect();
                    turn += 1;
                    let base = &urls[turn % urls.len()];
                    let r = client
                        .post(format!("{base}/v1/orders"))
                        .json(&json!({ "orders": orders }))
                        // A paused instance never answers: give up and send
                        // the same batch to the next one.
                        .timeout(Duration::from_secs(3))
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status().is_success() => {
                            let mut a = acked.lock().unwrap();
                            for i in 0..4 {
                                a.insert((w, seq + i));
                            }
                            seq += 4;
                        }
                        Ok(r) => {
                            let s = r.status().as_u16();
                            let body = r.text().await.unwrap_or_default();
                            // Like a client given every instance (`--db
                            // URL1,URL2`): an instance that is starting or
                            // quiescing sends it on to the next.
                            let moved = s == 503
                                && (body.contains("\"not_ready\"")
                                    || body.contains("\"quiescing\""));
                            if !moved {
                                refused.lock().unwrap().push(format!("{s} {body}"));
                            }
                        }
                        // The instance was killed: the same batch goes to the next.
                        Err(_) => {}
                    }
                }
            }));
        }
        Load {
            stop,
            acked,
            refused,
            tasks,
        }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits for `n` more acknowledged orders.
    async fn progress(&self, n: usize, what: &str) {
        let target = self.acked() + n;
        let acked = self.acked.clone();
        eventually(30, what, || {
            let acked = acked.clone();
            async move { (acked.lock().unwrap().len() >= target).then_some(()) }
        })
        .await;
    }

    async fn stop(self) -> (BTreeSet<(usize, u64)>, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        let acked = self.acked.lock().unwrap().clone();
        let refused = self.refused.lock().unwrap().clone();
        (acked, refused)
    }
}

/// Every acknowledged order is in the change log, none twice.
async fn assert_exactly_once(url: &str, acked: &BTreeSet<(usize, u64)>) {
    let client = pg_client(url).await;
    let rows = client
        .query(
            "SELECT source, source_seq, count(*) FROM tidemark.tm_changes GROUP BY source, source_seq",
            &[],
        )
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
    let missing: Vec<_> = acked.difference(&logged).take(5).collect();
    assert!(
        missing.is_empty(),
        "acknowledged orders missing: {missing:?}"
    );
}

/// The latest record of every key, from any instance.
async fn latest(db: &str) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for k in 0..KEYS {
        let (_, r) = get_json(&format!("{db}/v1/records/subscriber/k{k}")).await;
        out.insert(format!("k{k}"), r["version"].clone());
    }
    out
}

/// A `latest-only` service server ends on the latest record of every key.
async fn assert_service_current(svc: &str, db: &str) {
    let want = latest(db).await;
    eventually(20, "the service server to hold the latest records", || {
        let want = want.clone();
        async move {
            for (k, v) in &want {
                let (s, r) = get_json(&format!("{svc}/v1/records/subscriber/{k}")).await;
                if s != 200 || &r["version"] != v || r["recovering"] != false {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;
}

/// Reads every key through a `latest-only` service server in a loop and
/// checks each answer against the commits: a version older than one the
/// same reader already saw acknowledged-and-read is an outdated answer.
struct Reader {
    stop: Arc<AtomicBool>,
    reads: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Reader {
    fn start(svc: String) -> Reader {
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicU64::new(0));
        let (s, n) = (stop.clone(), reads.clone());
        let task = tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut seen: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
            let mut bad = Vec::new();
            let mut k = 0;
            while !s.load(Ordering::SeqCst) {
                k = (k + 1) % KEYS;
                let Ok(r) = client
                    .get(format!("{svc}/v1/records/subscriber/k{k}"))
                    .timeout(Duration::from_secs(20))
                    .send()
                    .await
                else {
                    continue;
                };
                let status = r.status().as_u16();
                let Ok(body) = r.json::<Value>().await else {
                    continue;
                };
                n.fetch_add(1, Ordering::Relaxed);
                if status != 200 {
                    if status != 404 {
                        bad.push(format!("k{k}: {status} {body}"));
                    }
                    continue;
                }
                let v = (
                    body["version"]["epoch"].as_u64().unwrap_or(0),
                    body["version"]["seq"].as_u64().unwrap_or(0),
                );
                if let Some(prev) = seen.get(&k) {
                    // Versions of one key never go back for one reader.
                    if v < *prev {
                        bad.push(format!("k{k}: went back from {prev:?} to {v:?}"));
                    }
                }
                seen.insert(k, v);
            }
            bad
        });
        Reader { stop, reads, task }
    }

    async fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let bad = self.task.await.unwrap();
        (self.reads.load(Ordering::Relaxed), bad)
    }
}

/// Two instances on `url`'s database, both ready: their addresses, URLs
/// and processes (index i listens on `addrs[i]`).
async fn two_instances(dir: &Path, url: &str) -> ([String; 2], Vec<String>, Vec<Proc>) {
    let addrs = [free_addr(), free_addr()];
    let urls: Vec<String> = addrs.iter().map(|a| format!("http://{a}")).collect();
    let procs: Vec<Proc> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| instance(dir, &format!("db{i}"), url, a))
        .collect();
    for p in &procs {
        p.wait_ok("/readyz").await;
    }
    (addrs, urls, procs)
}

/// Sets key `k`'s credit limit through `base`, as order `seq` of "ops".
async fn put_limit(base: String, seq: u64, limit: u64) {
    let (s, b) = post_raw(
        &format!("{base}/v1/orders"),
        json!({"orders": [{"source": "ops", "seq": seq, "table": "subscriber", "key": "k",
                           "op": "upsert", "fields": {"credit_limit": limit}}]})
        .to_string(),
    )
    .await;
    assert_eq!(s, 200, "{b}");
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// S3, S10: kill -9 the primary under load; each time the
/// standby takes over by itself (10 cycles), and the killed instance, restarted,
/// rejoins as a standby. No acknowledged order is lost or doubled; the
/// service server (watching through both instances) ends current.
#[tokio::test(flavor = "multi_thread")]
async fn the_primary_killed_under_load_is_replaced_and_nothing_is_lost() {
    let Some(url) = database("the_primary_killed_under_load_is_replaced_and_nothing_is_lost")
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (addrs, urls, mut procs) = two_instances(tmp.path(), &url).await;
    let first = primary_of(&urls).await;
    let svc = service(tmp.path(), "svc", &urls.join(","), "latest-only", &[]).await;
    let load = Load::start(urls.clone(), 3);
    let reader = Reader::start(svc.url.clone());
    load.progress(100, "orders before the first kill").await;
    let mut primary = first;
    for cycle in 0..10 {
        let killed_at = Instant::now();
        procs[primary].kill9();
        let next = primary_of(&[urls[1 - primary].clone()]).await;
        assert_eq!(next, 0);
        load.progress(40, "orders acknowledged by the new primary")
            .await;
        eprintln!(
            "cycle {cycle}: orders flowing again {} ms after the kill",
            killed_at.elapsed().as_millis()
        );
        // The killed instance comes back and rejoins as a standby.
        procs[primary] = instance(
            tmp.path(),
            &format!("db{primary}-{cycle}"),
            &url,
            &addrs[primary],
        );
        procs[primary].wait_ok("/readyz").await;
        // It rejoins as a standby (unless the busy machine let the lease
        // lapse meanwhile: then exactly one of them is primary anyway).
        let (_, st) = get_json(&format!("{}/v1/state", urls[primary])).await;
        assert!(st["role"].is_string(), "{st}");
        primary = primary_of(&urls).await;
        load.progress(40, "orders with both instances up").await;
    }
    let (acked, refused) = load.stop().await;
    let (reads, bad) = reader.stop().await;
    assert!(reads > 0);
    assert!(bad.is_empty(), "outdated or failed reads: {bad:?}");
    // Orders may be refused only as "retry" (503) while no primary was
    // online; none may be refused otherwise.
    assert!(
        refused.iter().all(|r| r.starts_with("503")),
        "refused: {refused:?}"
    );
    assert_exactly_once(&url, &acked).await;
    assert_service_current(&svc.url, &urls[primary]).await;
}

/// S5: promote back and forth under load: no order is refused or lost,
/// and the old primary serves on as a standby. Promoting the primary
/// says so; promoting an unknown instance, or on the embedded engine, is
/// refused with a message that says what to do.
#[tokio::test(flavor = "multi_thread")]
async fn promote_back_and_forth_refuses_and_loses_nothing() {
    let Some(url) = database("promote_back_and_forth_refuses_and_loses_nothing") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (_, urls, procs) = two_instances(tmp.path(), &url).await;
    let mut primary = primary_of(&urls).await;
    let svc = service(tmp.path(), "svc", &urls.join(","), "latest-only", &[]).await;
    let load = Load::start(urls.clone(), 3);
    let reader = Reader::start(svc.url.clone());
    load.progress(60, "orders before the promote").await;
    let term = |s: Value| s["term"].as_u64().unwrap();
    let first_term = term(state(&urls[primary]).await.unwrap());
    for _ in 0..4 {
        let standby = 1 - primary;
        let out = run(
            tmp.path(),
            &["promote", "--server", &urls[standby]],
            None,
            &[],
        );
        assert!(
            out.status.success(),
            "promote failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(primary_of(&urls).await, standby);
        primary = standby;
        load.progress(40, "orders after the promote").await;
    }
    // One term per promote: none bounced back (a new primary whose first
    // renewal came too late lost the lease to the old one, term + 2).
    assert_eq!(term(state(&urls[primary]).await.unwrap()), first_term + 4);
    // The primary itself: nothing to do.
    let out = run(
        tmp.path(),
        &["promote", "--server", &urls[primary]],
        None,
        &[],
    );
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("already the primary"));
    // An instance that does not run.
    let out = run(
        tmp.path(),
        &["promote", "--server", "http://127.0.0.1:9"],
        None,
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be reached"));
    // A handover to an unknown instance is refused, naming the live standbys.
    let (s, b) = post_raw(
        &format!("{}/v1/cluster/handover", urls[primary]),
        r#"{"to": "http://127.0.0.1:9"}"#,
    )
    .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (409, Some("promote_refused"))
    );
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&urls[1 - primary]),
        "{b}"
    );
    // Any instance promotes another (the console asks its own instance).
    let (s, b) = post_raw(
        &format!("{}/v1/cluster/promote", urls[primary]),
        r#"{"url": "http://127.0.0.1:9"}"#,
    )
    .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (409, Some("promote_refused")),
        "{b}"
    );
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&urls[1 - primary]),
        "{b}"
    );
    // A standby with a quiesce notice in force is refused: it would hand
    // the lease on again at its deadline.
    let standby = &urls[1 - primary];
    run_ok(tmp.path(), &["quiesce", "--server", standby, "--in", "600"]);
    let (s, b) = post_raw(&format!("{standby}/v1/cluster/promote"), "").await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (409, Some("promote_refused")),
        "{b}"
    );
    assert!(
        b["error"]["message"].as_str().unwrap().contains("--cancel"),
        "{b}"
    );
    run_ok(tmp.path(), &["quiesce", "--server", standby, "--cancel"]);
    let (s, b) = post_raw(
        &format!("{}/v1/cluster/promote", urls[primary]),
        json!({"url": urls[1 - primary]}).to_string(),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(primary_of(&urls).await, 1 - primary);
    primary = 1 - primary;
    load.progress(20, "orders after the promote through the other instance")
        .await;
    let (acked, refused) = load.stop().await;
    let (_, bad) = reader.stop().await;
    assert!(
        refused.is_empty(),
        "a switchover refuses nothing: {refused:?}"
    );
    assert!(bad.is_empty(), "outdated or failed reads: {bad:?}");
    assert_exactly_once(&url, &acked).await;
    assert_service_current(&svc.url, &urls[primary]).await;
    let (_, st) = get_json(&format!("{}/v1/state", urls[primary])).await;
    assert_eq!(st["members"].as_array().map(Vec::len), Some(2), "{st}");
    drop(procs);
}

/// S3: a standby is never behind the primary's acknowledged writes. Its
/// read cache would learn of them only through its change-log tail, so a
/// standby reads the store: right after each write is acknowledged, a read
/// of the key on the standby gives the new version (the CI flake of
/// `a_rolling_restart_…`: a read went back in version between instances).
#[tokio::test(flavor = "multi_thread")]
async fn a_standby_read_right_after_a_write_gives_the_new_version() {
    let Some(url) = database("a_standby_read_right_after_a_write_gives_the_new_version") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (_, urls, _procs) = two_instances(tmp.path(), &url).await;
    let primary = primary_of(&urls).await;
    let standby = &urls[1 - primary];
    let read_seq = |base: String| async move {
        let r = reqwest::get(format!("{base}/v1/records/subscriber/rc"))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        v["version"]["seq"].as_u64().unwrap()
    };
    for n in 1..=40u64 {
        let (s, b) = post_raw(
            &format!("{}/v1/orders", urls[primary]),
            json!({"orders": [{"source": "ops-rc", "seq": n, "table": "subscriber", "key": "rc",
                               "op": "upsert", "fields": {"credit_limit": n}}]})
            .to_string(),
        )
        .await;
        assert_eq!(s, 200, "{b}");
        let seq = b["results"][0]["version"]["seq"].as_u64().unwrap();
        // Twice: the first read would have filled a read cache.
        for _ in 0..2 {
            assert_eq!(read_seq(standby.clone()).await, seq, "write {n}");
        }
    }
    assert_eq!(
        metric(standby, "tidemark_read_cache_hits_total").await,
        0,
        "a standby answers from the store"
    );
}

/// S3, S8: a service server whose instance dies moves to another and
/// resumes its stream there with Last-Event-ID: no epoch revalidation, and
/// pushes keep arriving.
#[tokio::test(flavor = "multi_thread")]
async fn a_service_server_moves_to_another_instance_without_revalidating() {
    let Some(url) = database("a_service_server_moves_to_another_instance_without_revalidating")
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (_, urls, mut procs) = two_instances(tmp.path(), &url).await;
    let primary = primary_of(&urls).await;
    let standby = 1 - primary;
    // The service server watches the standby first.
    let svc = service(
        tmp.path(),
        "svc",
        &format!("{},{}", urls[standby], urls[primary]),
        "latest-only",
        &[],
    )
    .await;
    let put = |seq: u64, limit: u64| put_limit(urls[primary].clone(), seq, limit);
    put(1, 10).await;
    let read = |want: u64| {
        let svc = svc.url.clone();
        async move {
            eventually(20, "the service server to serve the change", || {
                let svc = svc.clone();
                async move {
                    let (_, r) = get_json(&format!("{svc}/v1/records/subscriber/k")).await;
                    (r["fields"]["credit_limit"] == want && r["source"] == "cache").then_some(())
                }
            })
            .await
        }
    };
    read(10).await;
    put(2, 20).await;
    read(20).await;
    let epochs = metric(&svc.url, "tidemark_service_epoch_events_total").await;
    // Its instance dies; a change is made meanwhile (reads ask the DB
    // server until the stream is back).
    procs[standby].kill9();
    put(3, 30).await;
    read(30).await;
    eventually(20, "the stream to resume on the other instance", || async {
        svc.log_text()
            .matches("watch stream synced")
            .count()
            .ge(&2)
            .then_some(())
    })
    .await;
    let pushes = metric(&svc.url, "tidemark_service_pushes_total").await;
    let fetches = metric(&svc.url, "tidemark_service_db_fetches_total").await;
    put(4, 40).await;
    read(40).await;
    assert_eq!(
        metric(&svc.url, "tidemark_service_epoch_events_total").await,
        epochs,
        "the stream resumed on the other instance: no revalidation"
    );
    assert!(metric(&svc.url, "tidemark_service_pushes_total").await > pushes);
    assert_eq!(
        metric(&svc.url, "tidemark_service_db_fetches_total").await,
        fetches,
        "the changes arrived as pushes, not fetches"
    );
    let log = svc.log_text();
    assert!(
        log.contains("moving") || log.contains("reconnecting"),
        "{log}"
    );
}

/// S4, S8: a quiesce notice on one instance moves its service servers to
/// another before the deadline; `tidemark status` lists every member.
#[tokio::test(flavor = "multi_thread")]
async fn a_quiesced_instance_loses_its_service_servers_to_another() {
    let Some(url) = database("a_quiesced_instance_loses_its_service_servers_to_another") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (_, urls, procs) = two_instances(tmp.path(), &url).await;
    let svc = service(tmp.path(), "svc", &urls.join(","), "latest-only", &[]).await;
    // Its stream is on the first instance.
    let (_, r) = get_json(&format!("{}/v1/records/subscriber/none", svc.url)).await;
    assert_eq!(r["found"], false);
    let out = run(
        tmp.path(),
        &[
            "quiesce",
            "--server",
            &urls[0],
            "--in",
            "30",
            "--message",
            "maintenance",
        ],
        None,
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(10, "the service server to move", || async {
        svc.log_text()
            .contains("quiescing; moving to another")
            .then_some(())
    })
    .await;
    // Members report their notices with their heartbeat.
    let text = eventually(10, "status to show the quiescing member", || async {
        let out = run(tmp.path(), &["status", "--server", &urls[1]], None, &[]);
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains("quiescing").then_some(text)
    })
    .await;
    for u in &urls {
        assert!(text.contains(u.as_str()), "status lists {u}: {text}");
    }
    drop(procs);
}

/// S8, by name, remotely, in a cluster: a notice for a service server and
/// its cancel, sent to the instance its stream is *not* on, reach it (the
/// instance asks the others). Before, the notice was refused there and a
/// cancel said "cancelled" while the service server still went offline
/// (an outside audit).
#[tokio::test(flavor = "multi_thread")]
async fn a_service_server_is_quiesced_by_name_through_either_instance() {
    let Some(url) = database("a_service_server_is_quiesced_by_name_through_either_instance") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (_, urls, _procs) = two_instances(tmp.path(), &url).await;
    let svc = service(tmp.path(), "svc", &urls.join(","), "latest-only", &[]).await;
    let state = || async {
        let (_, st) = get_json(&format!("{}/v1/state", svc.url)).await;
        st
    };
    let at = eventually(10, "the service server's stream to be open", || async {
        let st = state().await;
        (st["connected"] == true).then(|| st["stream_instance"].as_str().map(str::to_owned))?
    })
    .await;
    let other = urls.iter().find(|u| **u != at).expect("another instance");
    let by_name = |args: &[&str]| {
        let mut all = vec!["quiesce", "--server", other.as_str(), "--service", "svc"];
        all.extend_from_slice(args);
        let out = run(tmp.path(), &all, None, &[]);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    by_name(&["--in", "600", "--message", "svc: update"]);
    eventually(10, "the notice to reach the service server", || async {
        (state().await["own_quiesce"]["message"] == "svc: update").then_some(())
    })
    .await;
    assert_eq!(state().await["own_quiesce_by_name"], true);
    by_name(&["--cancel"]);
    eventually(10, "the cancel to reach the service server", || async {
        state().await["own_quiesce"].is_null().then_some(())
    })
    .await;
    assert_eq!(
        state().await["stream_instance"].as_str(),
        Some(at.as_str()),
        "the stream stayed where it was: the instances passed it on"
    );
}

/// S4, S8: a primary past its quiesce deadline refuses writes, and its
/// standbys forward theirs to it; it hands the lease to a live standby, so
/// the cluster takes writes again through either instance. Before, every
/// write failed 503 quiescing until the quiesced process stopped.
#[tokio::test(flavor = "multi_thread")]
async fn a_primary_past_its_quiesce_deadline_hands_the_lease_on() {
    let Some(url) = database("a_primary_past_its_quiesce_deadline_hands_the_lease_on") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (_, urls, _procs) = two_instances(tmp.path(), &url).await;
    let old = primary_of(&urls).await;
    // Orders to the quiescing primary across its deadline and the handover:
    // held for the next primary, none refused.
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (stop, base) = (stop.clone(), urls[old].clone());
        tokio::spawn(async move {
            let mut refused = Vec::new();
            let mut seq = 0;
            while !stop.load(Ordering::SeqCst) {
                seq += 1;
                let (s, b) = post_raw(
                    &format!("{base}/v1/orders"),
                    json!({"orders": [{"source": "ops-h", "seq": seq, "table": "subscriber", "key": "h",
                                       "op": "upsert", "fields": {"credit_limit": seq}}]})
                    .to_string(),
                )
                .await;
                if s != 200 {
                    refused.push(format!("{s} {b}"));
                }
            }
            (seq, refused)
        })
    };
    run_ok(
        tmp.path(),
        &["quiesce", "--server", &urls[old], "--in", "1"],
    );
    eventually(20, "the other instance to become primary", || async {
        let s = state(&urls[1 - old]).await?;
        (s["role"] == "primary").then_some(())
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let (sent, refused) = sender.await.unwrap();
    assert!(
        refused.is_empty(),
        "{} of {sent} refused, the first: {:?}",
        refused.len(),
        refused.first()
    );
    // Through either instance: the offline one forwards to the new primary.
    for (seq, base) in [(1, &urls[old]), (2, &urls[1 - old])] {
        let (s, b) = post_raw(
            &format!("{base}/v1/orders"),
            json!({"orders": [{"source": "ops-q", "seq": seq, "table": "subscriber", "key": "q",
                               "op": "upsert", "fields": {"credit_limit": seq}}]})
            .to_string(),
        )
        .await;
        assert_eq!(s, 200, "through {base}: {b}");
    }
    // The offline instance does not take the lease back.
    let s = state(&urls[old]).await.unwrap();
    assert_eq!(s["role"], "standby", "{s}");
}

fn signal(p: &Proc, sig: libc::c_int) {
    // SAFETY: kill(2) on the pid of a child we have not reaped.
    unsafe {
        libc::kill(p.pid as libc::pid_t, sig);
    }
}

/// Fencing: a primary paused past its lease (SIGSTOP) is replaced; when it
/// wakes (SIGCONT) it commits nothing under its old term and serves on as
/// a standby by itself, forwarding writes to the new primary.
#[tokio::test(flavor = "multi_thread")]
async fn a_paused_primary_commits_nothing_and_rejoins_as_a_standby() {
    let Some(url) = database("a_paused_primary_commits_nothing_and_rejoins_as_a_standby") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (_, urls, procs) = two_instances(tmp.path(), &url).await;
    let old = primary_of(&urls).await;
    let (_, st) = get_json(&format!("{}/v1/state", urls[old])).await;
    let old_term = st["term"].as_u64().unwrap();
    let load = Load::start(urls.clone(), 3);
    load.progress(60, "orders before the pause").await;
    signal(&procs[old], libc::SIGSTOP);
    let new = primary_of(&[urls[1 - old].clone()]).await;
    assert_eq!(new, 0);
    // The paused one's last heartbeat still says "primary": members are
    // listed by the lease, so one primary, the new one.
    let st = state(&urls[1 - old]).await.unwrap();
    let primaries: Vec<&Value> = st["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "primary")
        .collect();
    assert_eq!(primaries.len(), 1, "{st}");
    assert_eq!(primaries[0]["url"], urls[1 - old].as_str(), "{st}");
    load.progress(
        60,
        "orders committed by the new primary while the old one sleeps",
    )
    .await;
    signal(&procs[old], libc::SIGCONT);
    let (_, st) = eventually(10, "the woken primary to step down", || async {
        let s = state(&urls[old]).await?;
        (s["role"] == "standby" && s["primary"] == urls[1 - old].as_str()).then_some(((), s))
    })
    .await;
    assert!(st["term"].as_u64().unwrap() > old_term, "{st}");
    assert_eq!(primary_of(&urls).await, 1 - old);
    load.progress(60, "orders after the old primary woke").await;
    let (acked, refused) = load.stop().await;
    assert!(
        refused.iter().all(|r| r.starts_with("503")),
        "refused: {refused:?}"
    );
    assert_exactly_once(&url, &acked).await;
    // Nothing of the old term was committed after the new term began: the
    // change log's seqs are one run, and every commit after the takeover
    // carries the new primary's orders only through the fence.
    let log = procs[old].log_text();
    assert!(log.contains("no longer the primary"), "{log}");
}

/// S5, P9 across a failover: a write forwarded to a primary that is
/// paused (SIGSTOP) goes on to the new primary; a service server watching
/// the paused one (its stream stays open, but silent) stops serving its
/// cache as current once the instance no longer vouches for it (`lease`
/// events), so a change the new primary acknowledged is never answered
/// with the record before it. Before, the cache answered as current until
/// 35 s of silence ended the stream.
#[tokio::test(flavor = "multi_thread")]
async fn a_service_server_watching_a_paused_primary_serves_nothing_outdated() {
    let Some(url) = database("a_service_server_watching_a_paused_primary_serves_nothing_outdated")
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let w = Watched::start(tmp.path(), &url, Role::Primary).await;
    let (urls, procs, key, old) = (&w.urls, &w.procs, &w.key, w.primary);
    let new = 1 - old;
    signal(&procs[old], libc::SIGSTOP);
    // Sent at once, to the standby: it forwards it to the paused primary,
    // then, once it has taken over itself, applies it (before, the forward
    // waited 30 s for the paused one, then answered 503 no_primary).
    let sent = Instant::now();
    put_limit(urls[new].clone(), 2, 20).await;
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(primary_of(&[urls[new].clone()]).await, 0);
    // Every read now gives the new record, or none (503); never the old
    // one, cached or not.
    new_record_or_none(key, 20).await;
    // And it moves on: the new record, served from its cache again.
    served_from_cache(
        key,
        20,
        "the service server to serve the new record from its cache",
    )
    .await;
    signal(&procs[old], libc::SIGCONT);
}

/// Two instances, and a latest-only service server whose stream goes to
/// the instance in `watched` (named first), serving record `k` (credit
/// limit 10, order `ops` 1) from its cache.
struct Watched {
    urls: Vec<String>,
    procs: Vec<Proc>,
    primary: usize,
    /// The record's URL at the service server.
    key: String,
    _svc: Proc,
}

#[derive(PartialEq)]
enum Role {
    Primary,
    Standby,
}

impl Watched {
    async fn start(dir: &Path, url: &str, watched: Role) -> Watched {
        let (_, urls, procs) = two_instances(dir, url).await;
        let primary = primary_of(&urls).await;
        let first = if watched == Role::Primary {
            primary
        } else {
            1 - primary
        };
        let svc = service(
            dir,
            "svc",
            &format!("{},{}", urls[first], urls[1 - first]),
            "latest-only",
            &[],
        )
        .await;
        put_limit(urls[primary].clone(), 1, 10).await;
        let key = format!("{}/v1/records/subscriber/k", svc.url);
        served_from_cache(&key, 10, "the service server to cache the record").await;
        Watched {
            urls,
            procs,
            primary,
            key,
            _svc: svc,
        }
    }
}

/// S5: `promote` of a standby while the primary is frozen (SIGSTOP) ends
/// as soon as the frozen primary's lease ran out and this standby took
/// over, rather than waiting out the hand-over it asked of the frozen one.
/// Before, it waited 15 s and then failed `503 no_primary`, although the
/// standby had been the primary for most of that time.
#[tokio::test(flavor = "multi_thread")]
async fn promote_while_the_primary_is_frozen_ends_once_the_standby_took_over() {
    let Some(url) = database("promote_while_the_primary_is_frozen_ends_once_the_standby_took_over")
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (_, urls, procs) = two_instances(tmp.path(), &url).await;
    let primary = primary_of(&urls).await;
    let standby = 1 - primary;
    signal(&procs[primary], libc::SIGSTOP);
    let asked = Instant::now();
    let out = run(
        tmp.path(),
        &["promote", "--server", &urls[standby]],
        None,
        &[],
    );
    let took = asked.elapsed();
    signal(&procs[primary], libc::SIGCONT);
    assert!(
        out.status.success(),
        "promote failed after {took:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Well before the 15 s it gives a hand-over (the lease is 1 s).
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(primary_of(&urls).await, standby);
}

/// CONTRACT.md, writes on a standby: held up to `--failover-wait`, then
/// `503` with `Retry-After`. A primary frozen (SIGSTOP) with a lease much
/// longer than that is not replaced meanwhile; an order forwarded to it is
/// answered `503 no_primary` at `--failover-wait` all the same, and, sent
/// again once the primary wakes, is applied exactly once. Before, it hung
/// for the forward's 30 s timeout.
#[tokio::test(flavor = "multi_thread")]
async fn an_order_forwarded_to_a_frozen_leased_primary_is_answered_at_the_failover_wait() {
    let Some(url) =
        database("an_order_forwarded_to_a_frozen_leased_primary_is_answered_at_the_failover_wait")
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let addrs = [free_addr(), free_addr()];
    let urls: Vec<String> = addrs.iter().map(|a| format!("http://{a}")).collect();
    let procs: Vec<Proc> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| instance_timed(tmp.path(), &format!("db{i}"), &url, a, "30000", "2"))
        .collect();
    for p in &procs {
        p.wait_ok("/readyz").await;
    }
    let primary = primary_of(&urls).await;
    let standby = 1 - primary;
    let order = json!({"orders": [{"source": "ops", "seq": 1, "table": "subscriber", "key": "k",
                                   "op": "upsert", "fields": {"credit_limit": 5}}]});
    signal(&procs[primary], libc::SIGSTOP);
    let asked = Instant::now();
    let r = reqwest::Client::new()
        .post(format!("{}/v1/orders", urls[standby]))
        .json(&order)
        .timeout(Duration::from_secs(40))
        .send()
        .await;
    let took = asked.elapsed();
    signal(&procs[primary], libc::SIGCONT);
    let r = r.unwrap();
    let status = r.status().as_u16();
    let retry_after = r.headers().get("retry-after").is_some();
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("no_primary")),
        "after {took:?}: {body}"
    );
    assert!(retry_after, "{body}");
    assert!(
        took < Duration::from_secs(10),
        "held {took:?}, not about 2 s"
    );
    // Sent again once the primary wakes: applied, once.
    let (s, first) = post_raw(&format!("{}/v1/orders", urls[standby]), order.to_string()).await;
    assert_eq!(s, 200, "{first}");
    let (s, again) = post_raw(&format!("{}/v1/orders", urls[standby]), order.to_string()).await;
    assert_eq!(s, 200, "{again}");
    assert!(first["results"][0]["version"].is_object(), "{first}");
    assert_eq!(
        first["results"][0]["version"], again["results"][0]["version"],
        "one version: {first} {again}"
    );
    let (s, rec) = get_json(&format!("{}/v1/records/subscriber/k", urls[primary])).await;
    assert_eq!(
        (s, &rec["fields"]["credit_limit"]),
        (200, &json!(5)),
        "{rec}"
    );
}

/// S3, S10: a write forwarded to a primary that was killed and restarted
/// at once, and is still opening its store (`503 not_ready`: it took
/// nothing), is held like one sent during a failover, and committed once
/// a primary is online. Before, the standby passed the `503 not_ready` on.
#[tokio::test(flavor = "multi_thread")]
async fn a_write_forwarded_to_a_restarting_primary_is_held() {
    let Some(url) = database("a_write_forwarded_to_a_restarting_primary_is_held") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // A longer lease: the write reaches the restarted one before it ends.
    let addrs = [free_addr(), free_addr()];
    let mut procs: Vec<Proc> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| instance_leased(tmp.path(), &format!("db{i}"), &url, a, "4000"))
        .collect();
    for p in &procs {
        p.wait_ok("/readyz").await;
    }
    let urls: Vec<String> = addrs.iter().map(|a| format!("http://{a}")).collect();
    let primary = primary_of(&urls).await;
    let standby = 1 - primary;
    procs[primary].kill9();
    // Restarted on its address, it cannot reach PostgreSQL (a closed
    // port): it answers, but stays not ready.
    let nowhere = "postgres://postgres@127.0.0.1:1/nowhere";
    let restarted = instance_leased(tmp.path(), "db-restarted", nowhere, &addrs[primary], "4000");
    let (s, b) = get_json(&format!("{}/v1/state", urls[primary])).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (503, Some("not_ready")),
        "{b}"
    );
    let r = reqwest::Client::new()
        .post(format!("{}/v1/orders", urls[standby]))
        .json(
            &json!({"orders": [{"source": "ops", "seq": 1, "table": "subscriber", "key": "k",
                                   "op": "upsert", "fields": {"credit_limit": 1}}]}),
        )
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body = r.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(primary_of(&urls[standby..=standby]).await, 0);
    drop(restarted);
}

/// Three reads of `key`: each the record with `limit`, or `503`.
async fn new_record_or_none(key: &str, limit: u64) {
    for _ in 0..3 {
        let r = reqwest::Client::new()
            .get(key)
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let b: Value = r.json().await.unwrap();
        assert!(
            (status == 200 && b["fields"]["credit_limit"] == limit) || status == 503,
            "{status} {b}"
        );
    }
}

/// Waits until the service server serves `key` with `limit` from its cache.
async fn served_from_cache(key: &str, limit: u64, what: &str) {
    eventually(30, what, || async {
        let (_, r) = get_json(key).await;
        (r["fields"]["credit_limit"] == limit && r["source"] == "cache").then_some(())
    })
    .await;
}

/// S3, P9: a service server watching a standby that freezes (SIGSTOP)
/// right after vouching for its stream never serves a record the primary
/// changed and acknowledged meanwhile. The primary acknowledges a change
/// only once every standby's registered vouch covers it or has run out.
/// Before, the order was acknowledged at once and the service server
/// answered the old record from its cache, as current, until the frozen
/// standby's last vouch ran out (about 0.65 s per stall in an audit).
#[tokio::test(flavor = "multi_thread")]
async fn a_service_server_watching_a_paused_standby_serves_nothing_outdated() {
    let Some(url) = database("a_service_server_watching_a_paused_standby_serves_nothing_outdated")
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let w = Watched::start(tmp.path(), &url, Role::Standby).await;
    let (urls, procs, key, primary) = (&w.urls, &w.procs, &w.key, w.primary);
    let standby = 1 - primary;
    // Twice: the second time after the standby vouches again (its
    // registration expired while it was frozen, and began anew).
    for (seq, limit) in [(2, 20), (4, 40)] {
        signal(&procs[standby], libc::SIGSTOP);
        let sent = Instant::now();
        put_limit(urls[primary].clone(), seq, limit).await;
        // Held back no longer than the frozen standby's vouch lives.
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "{:?}",
            sent.elapsed()
        );
        // Acknowledged: every read now gives the new record, or none (503).
        new_record_or_none(key, limit).await;
        signal(&procs[standby], libc::SIGCONT);
        // The standby vouches again, and the primary waits for it again: a
        // change is acknowledged and then served from the cache, current.
        put_limit(urls[primary].clone(), seq + 1, limit + 5).await;
        served_from_cache(
            key,
            limit + 5,
            "the service server to serve the newest record from its cache",
        )
        .await;
    }
}

/// S4, S8: a rolling restart of every instance, one at a time, under load
/// (quiesce, stop, start): no terminal read fails and no order is lost.
#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_restart_fails_no_read_and_loses_no_order() {
    let Some(url) = database("a_rolling_restart_fails_no_read_and_loses_no_order") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (addrs, urls, mut procs) = two_instances(tmp.path(), &url).await;
    primary_of(&urls).await;
    let svc = service(tmp.path(), "svc", &urls.join(","), "latest-only", &[]).await;
    let load = Load::start(urls.clone(), 2);
    let reader = Reader::start(svc.url.clone());
    load.progress(40, "orders before the restart").await;
    for round in 0..2 {
        for i in 0..2 {
            let out = run(
                tmp.path(),
                &[
                    "quiesce",
                    "--server",
                    &urls[i],
                    "--in",
                    "1",
                    "--message",
                    "rolling restart",
                ],
                None,
                &[],
            );
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            tokio::time::sleep(Duration::from_millis(1200)).await;
            assert!(procs[i].terminate().success(), "a clean stop");
            procs[i] = instance(tmp.path(), &format!("db{i}-{round}"), &url, &addrs[i]);
            procs[i].wait_ok("/readyz").await;
            primary_of(&urls).await;
            load.progress(20, "orders after restarting an instance")
                .await;
        }
    }
    let (acked, refused) = load.stop().await;
    let (reads, bad) = reader.stop().await;
    assert!(reads > 0);
    assert!(bad.is_empty(), "failed or outdated reads: {bad:?}");
    assert!(refused.is_empty(), "refused orders: {refused:?}");
    assert_exactly_once(&url, &acked).await;
    assert_service_current(&svc.url, &urls[0]).await;
}

/// S10: an instance refuses to join live instances of another program
/// version, saying what to do; `--allow-version-skew` overrides it.
#[tokio::test(flavor = "multi_thread")]
async fn an_instance_of_another_version_refuses_to_join() {
    let Some(url) = database("an_instance_of_another_version_refuses_to_join") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let first = instance(tmp.path(), "db0", &url, "127.0.0.1:0");
    first.wait_ok("/readyz").await;
    // A live member that runs another version.
    let client = pg_client(&url).await;
    client
        .execute(
            "INSERT INTO tidemark.tm_members (url, id, role, term, version, schema_version, started_at, heartbeat) \
             VALUES ('http://old:7070', 'http://old:7070#1', 'standby', 1, '0.0.1-old', 1, now(), now() + interval '1 hour')",
            &[],
        )
        .await
        .unwrap();
    let out = run(
        tmp.path(),
        &[
            "server",
            "--store",
            "postgres",
            "--database-url",
            &url,
            "--listen",
            "127.0.0.1:0",
        ],
        None,
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to join")
            && err.contains("0.0.1-old")
            && err.contains("--allow-version-skew"),
        "{err}"
    );
    let second = Proc::start(
        "db1",
        tmp.path(),
        &[
            "server",
            "--store",
            "postgres",
            "--database-url",
            &url,
            "--allow-version-skew",
        ],
        &[],
    );
    second.wait_ok("/readyz").await;
    assert!(second.log_text().contains("--allow-version-skew"));
}

/// PostgreSQL restarted under two instances and continuous orders: both
/// reconnect by themselves, one primary serves again, and every
/// acknowledged order is there exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_restart_under_two_instances_loses_nothing() {
    let Some(bin) = tidemark_testkit::postgres::bin_dir() else {
        assert!(
            !tidemark_testkit::postgres::required(),
            "PostgreSQL is required"
        );
        return;
    };
    let cluster = PgCluster::start(&bin).expect("a PostgreSQL cluster");
    let url = cluster.database("harestart").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (_, urls, procs) = two_instances(tmp.path(), &url).await;
    primary_of(&urls).await;
    let svc = service(tmp.path(), "svc", &urls.join(","), "latest-only", &[]).await;
    let load = Load::start(urls.clone(), 2);
    load.progress(40, "orders before PostgreSQL stops").await;
    cluster.stop_immediate().expect("pg_ctl stop -m immediate");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.restart().expect("PostgreSQL back");
    load.progress(40, "orders after PostgreSQL is back").await;
    primary_of(&urls).await;
    let (acked, refused) = load.stop().await;
    assert!(
        refused.iter().all(|r| r.starts_with("503")),
        "refused: {refused:?}"
    );
    assert_exactly_once(&url, &acked).await;
    assert_service_current(&svc.url, &urls[0]).await;
    drop(procs);
}

/// A TCP relay to PostgreSQL that can be frozen: its connections stay open
/// and carry nothing, as behind a partition that cuts off one instance.
struct Relay {
    port: u16,
    frozen: Arc<AtomicBool>,
}

impl Relay {
    async fn start(to: u16) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new(AtomicBool::new(false));
        let f = frozen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let f = f.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::spawn(relay_one_way(cr, sw, f.clone()));
                    relay_one_way(sr, cw, f).await;
                });
            }
        });
        Relay { port, frozen }
    }
}

/// Copies `from` to `to`, holding what it read while `frozen`.
async fn relay_one_way(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n @ 1..) = from.read(&mut buf).await {
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A partition cuts the primary off from PostgreSQL while its service
/// server still reaches it. The other instance takes over and commits a
/// change; the cut-off instance ends its watch streams and refuses new
/// ones, so the `latest-only` service server moves to the new primary and
/// serves the change (before, the cut-off instance kept its stream alive
/// with keepalives and the service server served the old record for good).
#[tokio::test(flavor = "multi_thread")]
async fn a_primary_cut_off_from_postgres_hands_its_service_servers_on() {
    let test = "a_primary_cut_off_from_postgres_hands_its_service_servers_on";
    let Some(url) = database(test) else {
        return;
    };
    let pg_port = PgCluster::shared(test).unwrap().port();
    let relay = Relay::start(pg_port).await;
    let relayed = url.replace(&format!(":{pg_port}/"), &format!(":{}/", relay.port));
    let tmp = tempfile::tempdir().unwrap();
    let addrs = [free_addr(), free_addr()];
    let urls: Vec<String> = addrs.iter().map(|a| format!("http://{a}")).collect();
    // The first instance, through the relay, takes the lease.
    let a = instance(tmp.path(), "db0", &relayed, &addrs[0]);
    a.wait_ok("/readyz").await;
    let b = instance(tmp.path(), "db1", &url, &addrs[1]);
    b.wait_ok("/readyz").await;
    assert_eq!(primary_of(&urls).await, 0);
    let svc = service(
        tmp.path(),
        "svc",
        &format!("{},{}", urls[0], urls[1]),
        "latest-only",
        &[],
    )
    .await;
    let put = |base: String, seq: u64, plan: &'static str| async move {
        let (s, b) = post_raw(
            &format!("{base}/v1/orders"),
            json!({"orders": [{"source": "ops", "seq": seq, "table": "subscriber", "key": "k",
                               "op": "upsert", "fields": {"plan": plan}}]})
            .to_string(),
        )
        .await;
        assert_eq!(s, 200, "{b}");
    };
    let serves = |plan: &'static str, what: &'static str| {
        let svc = svc.url.clone();
        async move {
            eventually(40, what, || {
                let svc = svc.clone();
                async move {
                    let (_, r) = get_json(&format!("{svc}/v1/records/subscriber/k")).await;
                    (r["fields"]["plan"] == plan && r["source"] == "cache").then_some(())
                }
            })
            .await
        }
    };
    put(urls[0].clone(), 1, "before").await;
    serves("before", "the record cached").await;
    relay.frozen.store(true, Ordering::SeqCst);
    eventually(20, "the other instance to take over", || async {
        (state(&urls[1]).await?["role"] == "primary").then_some(())
    })
    .await;
    put(urls[1].clone(), 2, "after").await;
    serves(
        "after",
        "the service server to serve the new primary's change",
    )
    .await;
    assert!(
        a.log_text().contains("cut off from PostgreSQL"),
        "{}",
        a.log_text()
    );
    relay.frozen.store(false, Ordering::SeqCst);
    drop(b);
}

/// A token created through a standby works on that standby at once: an
/// instance that does not know a token re-reads the tokens before it
/// refuses it (it followed them only every half second, so the token was
/// refused as "unknown or revoked" for a moment).
#[tokio::test(flavor = "multi_thread")]
async fn a_token_created_through_a_standby_works_there_at_once() {
    let Some(url) = database("a_token_created_through_a_standby_works_there_at_once") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_, urls, _procs) = two_instances(dir, &url).await;
    let primary = primary_of(&urls).await;
    let standby = urls[1 - primary].clone();
    let admin = create_token(dir, &urls[primary], "admin", "root", None);
    let status_with = |token: String, base: String| async move {
        reqwest::Client::new()
            .get(format!("{base}/v1/records/subscriber/tk"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    // The standby knows the admin token (and so that tokens exist).
    eventually(10, "the standby to know the admin token", || {
        let (a, s) = (admin.clone(), standby.clone());
        async move { (status_with(a, s).await == 404).then_some(()) }
    })
    .await;
    for n in 0..10 {
        // Over HTTP, and used at once (the CLI's own start-up gave the
        // standby time to follow).
        let created: Value = reqwest::Client::new()
            .post(format!("{standby}/v1/tokens"))
            .bearer_auth(&admin)
            .json(&json!({"name": format!("r{n}"), "role": "reader"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let reader = created["token"].as_str().expect("a token").to_owned();
        assert_eq!(
            status_with(reader, standby.clone()).await,
            404,
            "token r{n}, used on the standby right after it was created there"
        );
    }
}

/// S3: a change of the tokens holds on every instance once it is
/// answered. The first token ends protected mode on the standby, and a
/// revoked token is refused there, at once: the answer waits until every
/// standby followed the tokens. Before, a standby followed them only every
/// half second, and for that long still let anyone on loopback in, or
/// still took the revoked token.
#[tokio::test(flavor = "multi_thread")]
async fn token_changes_hold_on_every_instance_once_answered() {
    let Some(url) = database("token_changes_hold_on_every_instance_once_answered") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (_, urls, _procs) = two_instances(tmp.path(), &url).await;
    let primary = urls[primary_of(&urls).await].clone();
    let standby = urls.iter().find(|u| **u != primary).unwrap().clone();
    let client = reqwest::Client::new();
    let read = |token: Option<String>| {
        let (client, standby) = (client.clone(), standby.clone());
        async move {
            let mut r = client.get(format!("{standby}/v1/records/subscriber/tk"));
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            r.send().await.unwrap().status().as_u16()
        }
    };
    assert_eq!(read(None).await, 404, "protected mode: loopback is let in");
    let token = |r: reqwest::Response| async move {
        let v: Value = r.json().await.unwrap();
        v["token"].as_str().expect("a token").to_owned()
    };
    let admin = token(
        client
            .post(format!("{primary}/v1/tokens"))
            .json(&json!({"name": "root", "role": "admin"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        read(None).await,
        401,
        "the first token ends protected mode at once"
    );
    let reader = token(
        client
            .post(format!("{primary}/v1/tokens"))
            .bearer_auth(&admin)
            .json(&json!({"name": "r", "role": "reader"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        read(Some(reader.clone())).await,
        404,
        "a new token works at once"
    );
    let r = client
        .delete(format!("{primary}/v1/tokens/r"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        read(Some(reader)).await,
        401,
        "a revoked token is refused at once"
    );
}

/// An instance killed (no clean leave) stays in `members`, as down, so an
/// operator sees the redundancy lost; it was dropped from the list once
/// its heartbeat aged past the live window (an outside audit).
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_instance_is_listed_as_down() {
    let Some(url) = database("a_killed_instance_is_listed_as_down") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (_, urls, mut procs) = two_instances(tmp.path(), &url).await;
    let old = primary_of(&urls).await;
    procs[old].kill9();
    let survivor = &urls[1 - old];
    let st = eventually(30, "the killed instance listed as down", || async {
        let st = state(survivor).await?;
        let listed = st["members"].as_array()?.iter().any(|m| {
            m["url"] == urls[old].as_str() && m["alive"] == false && m["role"] == "standby"
        });
        listed.then_some(st)
    })
    .await;
    let members = st["members"].as_array().unwrap();
    assert_eq!(members.len(), 2, "{st}");
    assert!(
        members
            .iter()
            .any(|m| m["url"] == survivor.as_str() && m["alive"] == true && m["role"] == "primary"),
        "{st}"
    );
    let out = run(tmp.path(), &["status", "--server", survivor], None, &[]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("DOWN"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// S4, S5: a standby past its quiesce deadline is not promoted: it would
/// hand the lease on again at once. It said "now the primary" and did that
/// (an outside audit).
#[tokio::test(flavor = "multi_thread")]
async fn a_standby_past_its_quiesce_deadline_is_not_promoted() {
    let Some(url) = database("a_standby_past_its_quiesce_deadline_is_not_promoted") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (_, urls, _procs) = two_instances(tmp.path(), &url).await;
    let primary = primary_of(&urls).await;
    let standby = &urls[1 - primary];
    run_ok(tmp.path(), &["quiesce", "--server", standby, "--in", "1"]);
    let readyz = format!("{standby}/readyz");
    eventually(10, "the standby offline", || {
        let readyz = readyz.clone();
        async move { (reqwest::get(&readyz).await.ok()?.status().as_u16() == 503).then_some(()) }
    })
    .await;
    let out = run(tmp.path(), &["promote", "--server", standby], None, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("quiesce") && err.contains("--cancel"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(primary_of(&urls).await, primary, "the primary stays");
}

/// S5: an instance refuses to join under the URL a live instance already
/// advertises (writes were sent to whichever held the lease's name, and
/// failed for good); it takes the place of one that is gone.
#[tokio::test(flavor = "multi_thread")]
async fn an_instance_refuses_the_url_a_live_instance_advertises() {
    let Some(url) = database("an_instance_refuses_the_url_a_live_instance_advertises") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut first = instance(tmp.path(), "db0", &url, "127.0.0.1:0");
    first.wait_ok("/readyz").await;
    let taken = first.url.clone();
    let args = [
        "server",
        "--store",
        "postgres",
        "--database-url",
        &url,
        "--listen",
        "127.0.0.1:0",
        "--advertise",
        &taken,
    ];
    let out = run(tmp.path(), &args, None, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already advertises") && err.contains("--advertise"),
        "{err}"
    );
    // Once it is gone (killed: its member row stays, unrenewed), the URL is
    // free.
    first.kill9();
    // (Proc::start adds its own --listen.)
    let second = Proc::start("db1", tmp.path(), &[&args[..5], &args[7..]].concat(), &[]);
    second.wait_ok("/readyz").await;
}

/// S5, S9: a publish sent through a standby, whose primary is paused
/// (SIGSTOP) while the publish's DDL waits, ends once the new primary has
/// finished it: the forward answers "outcome unknown" when the primary
/// changes, and the command follows the job. An outside audit found it
/// waited out the forward's 330 s timeout.
#[tokio::test(flavor = "multi_thread")]
async fn a_publish_forwarded_to_a_paused_primary_ends_with_the_takeover() {
    let Some(url) = database("a_publish_forwarded_to_a_paused_primary_ends_with_the_takeover")
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_, urls, procs) = two_instances(dir, &url).await;
    let primary = primary_of(&urls).await;
    let standby = urls[1 - primary].clone();
    let doc = json!({"tables": {"subscriber": {"columns": [
        {"name": "plan", "type": "string"}, {"name": "status", "type": "string"},
        {"name": "services", "type": "json"}, {"name": "roaming", "type": "boolean"},
        {"name": "credit_limit", "type": "integer"}, {"name": "tier", "type": "integer"}
    ]}}});
    let file = dir.join("v2.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    run_ok(
        dir,
        &[
            "schema",
            "stage",
            "--server",
            &standby,
            file.to_str().unwrap(),
        ],
    );
    // A reader of the table holds the publish's DDL until it commits.
    let client = pg_client(&url).await;
    client
        .batch_execute("BEGIN; LOCK TABLE tidemark.subscriber IN ACCESS SHARE MODE")
        .await
        .expect("hold the table");
    let (cli_dir, via) = (dir.to_path_buf(), standby.clone());
    let publish = tokio::task::spawn_blocking(move || {
        run(
            &cli_dir,
            &["schema", "publish", "--server", &via, "--wait", "60"],
            None,
            &[],
        )
    });
    let status = format!("{}/v1/schema/publish", urls[primary]);
    eventually(20, "the publish to wait in its DDL", || async {
        let (_, st) = get_json(&status).await;
        (st["job"]["step"] == "applying").then_some(())
    })
    .await;
    signal(&procs[primary], libc::SIGSTOP);
    client
        .batch_execute("COMMIT")
        .await
        .expect("release the table");
    let out = tokio::time::timeout(Duration::from_secs(120), publish)
        .await
        .expect("the command ends with the takeover, not the forward's timeout")
        .unwrap();
    signal(&procs[primary], libc::SIGCONT);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("is in force"), "{err}");
    let (_, st) = get_json(&format!("{standby}/v1/schema")).await;
    assert_eq!(st["version"], 2, "{st}");
}
