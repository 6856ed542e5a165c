//! `tidemark demo`: the whole story of MISSION.md with real processes on
//! the embedded engine, printed as a timeline; exits non-zero if any check
//! fails.

use crate::cli::DemoArgs;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tidemark_testkit::orders::key_url;
use tidemark_testkit::{Model, Program};

/// One terminal read: which service server, key, status, body.
type TerminalAnswer = (&'static str, String, u16, Value);

struct Timeline {
    t0: Instant,
    failed: Vec<String>,
}

impl Timeline {
    fn say(&self, who: &str, what: &str) {
        println!(
            "[{:6.2}s] {who:<12} {what}",
            self.t0.elapsed().as_secs_f64()
        );
    }
    fn step(&self, n: u32, title: &str) {
        println!("\n== {n}. {title}");
    }
    fn check(&mut self, ok: bool, what: &str) {
        println!("           {} {what}", if ok { "PASS" } else { "FAIL" });
        if !ok {
            self.failed.push(what.to_owned());
        }
    }
}

/// Runs `tidemark ARGS` to completion; its trimmed stdout, or why it failed.
fn run(exe: &Program, dir: &Path, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    let out = exe.run(dir, args, stdin.map(str::as_bytes), &[])?;
    if !out.status.success() {
        anyhow::bail!(
            "tidemark {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn key(i: usize) -> String {
    format!("+8131{i:06}")
}

async fn read(base: &str, k: &str) -> (u16, Value) {
    match reqwest::get(key_url(base, k)).await {
        Ok(r) => {
            let s = r.status().as_u16();
            (s, r.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

fn show(status: u16, b: &Value) -> String {
    if status == 503 {
        return format!("503 {}", b["error"]["code"].as_str().unwrap_or(""));
    }
    format!(
        "{status} plan={} version={}.{} recovering={} source={}",
        b["fields"]["plan"],
        b["version"]["epoch"],
        b["version"]["seq"],
        b["recovering"],
        b["source"].as_str().unwrap_or("-")
    )
}

pub async fn run_demo(args: DemoArgs) -> anyhow::Result<()> {
    let exe = Program::current_exe()?;
    let tmp = tempfile::Builder::new()
        .prefix("tidemark-demo-")
        .tempdir()?;
    let dir: PathBuf = if args.keep {
        tmp.keep()
    } else {
        tmp.path().to_owned()
    };
    if !args.keep {
        // Removed after a SIGKILL too (nothing here can run then): once this
        // process is gone and no process works in the folder any more (its
        // servers stop by themselves, `TIDEMARK_PARENT_PID`, within their
        // shutdown grace), or after a minute.
        let script = r#"n=0; while [ $n -lt 120 ]; do busy=; for c in /proc/[0-9]*/cwd; do case "$(readlink "$c" 2>/dev/null)" in "$1"|"$1"/*) busy=1;; esac; done; [ -z "$busy" ] && break; n=$((n+1)); sleep 0.5; done; rm -rf -- "$1""#;
        // As `/proc/PID/cwd` names it.
        let real = std::fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone());
        if let Err(e) = tidemark_testkit::process::after_exit(script, &[real.as_os_str()]) {
            tracing::debug!(error = %e, "no watchdog for the demo folder; a SIGKILL would leave it");
        }
    }
    let mut tl = Timeline {
        t0: Instant::now(),
        failed: Vec::new(),
    };
    println!("Tidemark demo in {}", dir.display());
    let data = dir.join("data");
    // Where the DB server keeps its data: a data directory, or a schema of
    // a PostgreSQL database (given, or of a temporary cluster started here).
    let mut _cluster = None;
    let store: Vec<String> = match super::store_kind(&args.store)? {
        tidemark_server::StoreKind::Sqlite => vec!["--data-dir".into(), data.display().to_string()],
        tidemark_server::StoreKind::Postgres => {
            let url = match &args.database_url {
                Some(u) => u.clone(),
                None => {
                    let bin = tidemark_testkit::postgres::bin_dir().ok_or_else(|| {
                        anyhow::anyhow!("demo --store postgres without --database-url starts a temporary PostgreSQL cluster, and none is installed: apt-get install postgresql, or give --database-url URL")
                    })?;
                    let cluster = tidemark_testkit::postgres::PgCluster::start(&bin)?;
                    let url = cluster.database("demo")?;
                    _cluster = Some(cluster);
                    url
                }
            };
            vec![
                "--store".into(),
                "postgres".into(),
                "--database-url".into(),
                url,
                "--pg-schema".into(),
                "tidemark_demo".into(),
            ]
        }
    };
    let pg_url = (args.store == "postgres").then(|| store[3].clone());
    let mut server_args = vec!["server"];
    server_args.extend(store.iter().map(String::as_str));
    let mut restore_args = vec!["restore", "--from"];
    let journal = dir.join("journal");
    let backup = dir.join("backups/b1");
    let (journal_s, backup_s) = (
        journal.to_str().unwrap_or(""),
        backup.to_str().unwrap_or(""),
    );

    tl.step(
        1,
        "a DB server, a latest-only and an accept-stale service server",
    );
    restore_args.push(backup_s);
    restore_args.extend(store.iter().map(String::as_str));
    let mut db = exe.start("db", &dir, &server_args, &[], "127.0.0.1:0")?;
    db.wait_ok("/readyz").await?;
    tl.say("db", &format!("DB server up at {}", db.url));
    let db_url = db.url.clone();
    let submit = |input: &str| {
        run(
            &exe,
            &dir,
            &[
                "ops",
                "submit",
                "--db",
                &db_url,
                "--journal",
                journal_s,
                "-",
            ],
            Some(input),
        )
    };
    let latest = exe.start(
        "svc-latest",
        &dir,
        &[
            "service",
            "--db",
            &db.url,
            "--id",
            "svc-latest",
            "--policy",
            "latest-only",
            "--latest-deadline-ms",
            "30000",
        ],
        &[],
        "127.0.0.1:0",
    )?;
    let stale = exe.start(
        "svc-stale",
        &dir,
        &[
            "service",
            "--db",
            &db.url,
            "--id",
            "svc-stale",
            "--policy",
            "accept-stale",
        ],
        &[],
        "127.0.0.1:0",
    )?;
    latest.wait_ok("/readyz").await?;
    stale.wait_ok("/readyz").await?;
    tl.say(
        "svc-latest",
        &format!("latest-only service server at {}", latest.url),
    );
    tl.say(
        "svc-stale",
        &format!("accept-stale service server at {}", stale.url),
    );

    tl.step(2, "the OpS loads 60 subscribers");
    let mut model = Model::default();
    let mut input = String::new();
    for i in 0..60 {
        input += &model.line(
            &key(i),
            "upsert",
            json!({"plan": "basic", "status": "active", "credit_limit": 1000}),
        );
    }
    let out = submit(&input)?;
    tl.say("ops", &out);
    let keys: Vec<String> = (0..70).map(key).collect();
    for k in &keys {
        read(&latest.url, k).await;
        read(&stale.url, k).await;
    }
    let (s, b) = read(&latest.url, &key(0)).await;
    tl.say(
        "terminal",
        &format!("svc-latest {} -> {}", key(0), show(s, &b)),
    );

    tl.step(3, "online backup, while the servers keep serving");
    let out = run(
        &exe,
        &dir,
        &["backup", "create", "--to", backup_s, "--server", &db.url],
        None,
    )?;
    tl.say("backup", out.lines().next().unwrap_or(""));

    tl.step(
        4,
        "more orders after the backup: updates (three per key), creates, deletes",
    );
    let mut input = String::new();
    for round in ["silver", "gold", "platinum"] {
        for i in 0..10 {
            input += &model.line(&key(i), "upsert", json!({"plan": round}));
        }
    }
    for i in 60..65 {
        input += &model.line(
            &key(i),
            "upsert",
            json!({"plan": "new", "status": "active"}),
        );
    }
    for i in 40..45 {
        input += &model.line(&key(i), "delete", json!({}));
    }
    let out = submit(&input)?;
    tl.say("ops", &out);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, b) = read(&latest.url, &key(0)).await;
        if model.is_latest(&key(0), s, &b) || Instant::now() > deadline {
            tl.say(
                "terminal",
                &format!(
                    "svc-latest {} -> {} (pushed, no refetch)",
                    key(0),
                    show(s, &b)
                ),
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    tl.step(5, "disaster: the DB server dies and its data is lost");
    let addr = db.url.trim_start_matches("http://").to_owned();
    db.kill9();
    match &pg_url {
        None => {
            std::fs::remove_dir_all(&data)?;
            tl.say("db", "killed (-9); data directory deleted");
        }
        Some(url) => {
            let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            client
                .batch_execute("DROP SCHEMA tidemark_demo CASCADE")
                .await?;
            tl.say("db", "killed (-9); its PostgreSQL schema dropped");
        }
    }
    let (s, b) = read(&stale.url, &key(0)).await;
    tl.say(
        "svc-stale",
        &format!(
            "{} -> {} (keeps serving its cache, marked: with its stream down it cannot vouch for it)",
            key(0),
            show(s, &b)
        ),
    );
    tl.check(
        s == 200 && b["recovering"] == true,
        "accept-stale serves what it cannot vouch for marked recovering (P9)",
    );
    // latest-only waits (up to its deadline) rather than serve a cache it
    // cannot vouch for; the terminal gives up after a moment.
    let waited =
        tokio::time::timeout(Duration::from_millis(1500), read(&latest.url, &key(0))).await;
    let no_current = match &waited {
        Err(_) => true,
        Ok((s, b)) => *s == 503 || b["recovering"] == true,
    };
    tl.say(
        "svc-latest",
        &match waited {
            Err(_) => format!(
                "{} -> no answer within 1.5 s: it waits for the DB server rather than serve its cache as current",
                key(0)
            ),
            Ok((s, b)) => format!("{} -> {}", key(0), show(s, &b)),
        },
    );
    tl.check(
        no_current,
        "latest-only serves nothing it cannot vouch for while the DB server is gone (P9)",
    );

    tl.step(6, "restore from the online backup");
    let out = run(&exe, &dir, &restore_args, None)?;
    for l in out.lines() {
        tl.say("restore", l);
    }
    let db = exe.start("db-restored", &dir, &server_args, &[], &addr)?;
    db.wait_ok("/readyz").await?;
    let (_, r) = read_json(&format!("{}/v1/recovery", db.url)).await;
    tl.say(
        "db",
        &format!(
            "restarted on the restored data: state={} epoch={}",
            r["state"], r["epoch"]
        ),
    );
    tl.check(
        r["state"] == "recovering",
        "the DB server moved to recovering by itself after the restore (P5, patent step 2)",
    );

    // Terminals read every key from both service servers from now on.
    let stop = Arc::new(AtomicBool::new(false));
    let answers: Arc<Mutex<Vec<TerminalAnswer>>> = Arc::new(Mutex::new(Vec::new()));
    let mut terminals = Vec::new();
    for (name, base) in [("latest", latest.url.clone()), ("stale", stale.url.clone())] {
        let (stop, answers, keys) = (stop.clone(), answers.clone(), keys.clone());
        terminals.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let k = keys[i % keys.len()].clone();
                i += 1;
                let (s, b) = read(&base, &k).await;
                answers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((name, k, s, b));
            }
        }));
    }
    let (s, b) = read(&db.url, &key(0)).await;
    tl.say(
        "db",
        &format!(
            "{} -> {} (restored copy, flagged: the schedule list has not arrived)",
            key(0),
            show(s, &b)
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut s, mut b) = read(&stale.url, &key(0)).await;
    while b["recovering"] != true && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        (s, b) = read(&stale.url, &key(0)).await;
    }
    tl.say(
        "svc-stale",
        &format!(
            "{} -> {} (accept-stale serves it, marked recovering)",
            key(0),
            show(s, &b)
        ),
    );
    let waiting_url = latest.url.clone();
    let k0 = key(0);
    let waiting = tokio::spawn(async move {
        let t = Instant::now();
        let r = read(&waiting_url, &k0).await;
        (r, t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    tl.say(
        "svc-latest",
        &format!(
            "{} -> (waiting: latest-only does not serve data it knows to be outdated)",
            key(0)
        ),
    );

    tl.step(
        7,
        "the OpS recovers: schedule list, then the difference data",
    );
    let out = run(
        &exe,
        &dir,
        &[
            "ops",
            "recover",
            "--db",
            &db.url,
            "--journal",
            journal_s,
            "--backup",
            backup_s,
        ],
        None,
    )?;
    for l in out.lines() {
        tl.say("ops", l);
    }
    let ((s, b), waited) = waiting.await?;
    tl.say(
        "svc-latest",
        &format!(
            "{} -> {} after waiting {:.0} ms",
            key(0),
            show(s, &b),
            waited.as_secs_f64() * 1000.0
        ),
    );

    tl.step(8, "verification");
    let mut all_current = true;
    for k in &keys {
        for base in [&latest.url, &stale.url] {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let (s, b) = read(base, k).await;
                if model.is_latest(k, s, &b) && b["recovering"] != true {
                    break;
                }
                if Instant::now() > deadline {
                    all_current = false;
                    tl.say("verify", &format!("{base} {k} -> {}", show(s, &b)));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    for t in terminals {
        let _ = t.await;
    }
    let answers = answers.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let latest_answers: Vec<_> = answers.iter().filter(|a| a.0 == "latest").collect();
    let outdated = latest_answers
        .iter()
        .filter(|(_, k, s, b)| *s != 503 && *s != 0 && !model.is_latest(k, *s, b))
        .count();
    let waits = latest_answers.iter().filter(|a| a.2 == 503).count();
    let stale_answers: Vec<_> = answers.iter().filter(|a| a.0 == "stale").collect();
    let stale_flagged = stale_answers
        .iter()
        .filter(|a| a.3["recovering"] == true)
        .count();
    tl.say(
        "verify",
        &format!(
            "terminals read {} times from svc-latest ({} answered 503 while waiting) and {} times from svc-stale ({} marked recovering)",
            latest_answers.len(),
            waits,
            stale_answers.len(),
            stale_flagged
        ),
    );
    let (_, r) = read_json(&format!("{}/v1/recovery", db.url)).await;
    tl.check(
        outdated == 0,
        &format!("svc-latest never served outdated data ({outdated} outdated answers)"),
    );
    tl.check(
        stale_answers.iter().all(|a| a.2 == 200 || a.2 == 404),
        "svc-stale kept answering throughout",
    );
    tl.check(
        stale_flagged > 0,
        "svc-stale marked flagged data as recovering",
    );
    tl.check(
        all_current,
        "both service servers end with the latest data for every key (P11)",
    );
    tl.check(
        r["state"] == "recovered" && r["remaining"] == 0,
        &format!(
            "the DB server moved to recovered by itself ({} flagged, {} cleared) (P5, patent step 10)",
            r["flagged"], r["cleared"]
        ),
    );
    drop(db);
    drop(latest);
    drop(stale);
    if args.keep {
        println!("\nlogs and data kept in {}", dir.display());
    }
    if tl.failed.is_empty() {
        println!("\nall checks held");
        Ok(())
    } else {
        anyhow::bail!(
            "{} demo check(s) failed: {}",
            tl.failed.len(),
            tl.failed.join("; ")
        )
    }
}

async fn read_json(url: &str) -> (u16, Value) {
    match reqwest::get(url).await {
        Ok(r) => {
            let s = r.status().as_u16();
            (s, r.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}
