//! Backups, restore and cleanup (B1-B6, P4, P5) with real processes: the
//! round trip under load, the corruption matrix, the lock, crashes at each
//! step of restore, and cleanup.

use crate::harness::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tidemark_backup::Manifest;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs `tidemark ARGS`, returning (success, stdout, stderr).
fn tm(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = run(dir, args, None, env);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(dir: &Path, args: &[&str]) -> String {
    run_ok(dir, args)
}

/// Sends one batch of orders; returns (key, fields or None for delete, seq) per order.
async fn send(
    db: &str,
    source: &str,
    first: u64,
    n: u64,
    round: u64,
) -> Vec<(String, Option<Value>, u64)> {
    let mut orders = Vec::new();
    for i in 0..n {
        let seq = first + i;
        let key = format!("+8190{:04}", (seq * 7 + round) % 50);
        let (op, fields) = if seq.is_multiple_of(5) {
            ("delete", json!({}))
        } else {
            (
                "upsert",
                json!({"plan": format!("p{seq}"), "credit_limit": seq}),
            )
        };
        orders.push(json!({"source": source, "seq": seq, "table": "subscriber", "key": key, "op": op, "fields": fields}));
    }
    let (status, body) = post_raw(
        &format!("{db}/v1/orders"),
        json!({ "orders": orders }).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().expect("results");
    orders
        .iter()
        .zip(results)
        .map(|(o, r)| {
            let key = o["key"].as_str().unwrap().to_owned();
            let fields = (o["op"] == "upsert").then(|| o["fields"].clone());
            (key, fields, r["version"]["seq"].as_u64().expect("version"))
        })
        .collect()
}

async fn submit_some(dir: &Path, db: &str, keys: std::ops::Range<u32>) {
    let input: String = keys
        .map(|i| order_line(&format!("+8130{i:06}"), json!({"plan": format!("v{i}")})))
        .collect();
    ops_submit(dir, db, &input, &["--again"]);
}

/// Hashes every file under `dir` (symlinks by target), except the LOCK
/// file, whose content names its last holder.
fn tree_digest(dir: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let ty = e.file_type().unwrap();
            if ty.is_symlink() {
                out.insert(
                    rel,
                    format!("-> {}", std::fs::read_link(&p).unwrap().display()),
                );
            } else if ty.is_dir() {
                walk(root, &p, out);
            } else if rel != "LOCK" {
                let bytes = std::fs::read(&p).unwrap();
                out.insert(rel, blake3::hash(&bytes).to_hex().to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn copy_tree(from: &Path, to: &Path) {
    let st = std::process::Command::new("cp")
        .args(["-a", s(from), s(to)])
        .status()
        .unwrap();
    assert!(st.success());
}

/// Runs a command that is expected to exit by itself; kills it after 20 s
/// (so a server that wrongly starts fails the test instead of hanging it).
fn run_briefly(dir: &Path, args: &[&str]) -> (bool, String) {
    let err = dir.join("briefly.stderr");
    let mut child = std::process::Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    (status.is_some_and(|s| s.success()), stderr)
}

async fn state(url: &str) -> (u64, u64) {
    let (_, st) = get_json(&format!("{url}/v1/state")).await;
    (st["epoch"].as_u64().unwrap(), st["seq"].as_u64().unwrap())
}

/// B1, B5: an online backup is one consistent point, configuration included.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn online_backup_under_load_restores_exactly_its_point() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut db = db_server(dir, &[]).await;
    submit_some(dir, &db.url, 0..100).await;

    // Orders stream in from a second source while the backup runs.
    let stop = Arc::new(AtomicBool::new(false));
    let url = db.url.clone();
    let flag = stop.clone();
    let streamer = tokio::spawn(async move {
        let mut sent = Vec::new();
        let mut next = 1;
        let mut round = 0;
        // Goes on for a few batches after the backup has finished.
        let mut after = 0;
        while after < 3 {
            if flag.load(Ordering::SeqCst) {
                after += 1;
            }
            sent.extend(send(&url, "stream", next, 10, round).await);
            next += 10;
            round += 1;
        }
        sent
    });
    // Wait until the stream is under way, then back up.
    eventually(20, "orders streaming", || async {
        (get_json(&format!("{}/v1/sources", db.url)).await.1["stream"].as_u64() >= Some(50))
            .then_some(())
    })
    .await;
    let bk = dir.join("backups/b1");
    let url = db.url.clone();
    let dir2 = dir.to_owned();
    let bk2 = bk.clone();
    let out = tokio::task::spawn_blocking(move || {
        ok(
            &dir2,
            &["backup", "create", "--to", s(&bk2), "--server", &url],
        )
    })
    .await
    .unwrap();
    assert!(out.contains("created"), "{out}");
    stop.store(true, Ordering::SeqCst);
    let sent = streamer.await.unwrap();
    let manifest = Manifest::load(&bk).unwrap();
    let point = manifest.seq;
    let (_, now) = state(&db.url).await;
    assert!(
        point < now,
        "orders went on after the backup ({point} < {now})"
    );

    // The expected store at the backup's point, from what the server answered.
    let mut expected: BTreeMap<String, Option<(Value, u64)>> = BTreeMap::new();
    let mut stream_hw = 0;
    for (i, (key, fields, seq)) in sent.iter().enumerate() {
        if *seq <= point {
            expected.insert(key.clone(), fields.clone().map(|f| (f, *seq)));
            stream_hw = i as u64 + 1;
        }
    }
    assert!(stream_hw > 0, "the backup holds some streamed orders");
    assert_eq!(
        manifest.high_water,
        BTreeMap::from([
            ("ops-1".to_string(), 100),
            ("stream".to_string(), stream_hw)
        ])
    );
    assert_eq!(manifest.kind, tidemark_backup::Kind::Online);
    let verify = ok(dir, &["backup", "verify", s(&bk)]);
    assert!(verify.contains("verifies"), "{verify}");

    db.terminate();
    let out = ok(
        dir,
        &[
            "restore",
            "--from",
            s(&bk),
            "--data-dir",
            s(&dir.join("data")),
        ],
    );
    assert!(out.contains("safety backup"), "{out}");
    let db = db_server(dir, &[]).await;
    assert_eq!(
        state(&db.url).await,
        (2, point),
        "epoch raised, seq at the point"
    );
    let (_, sources) = get_json(&format!("{}/v1/sources", db.url)).await;
    assert_eq!(sources, json!({"ops-1": 100, "stream": stream_hw}));
    for i in 0..100 {
        let (status, r) = get_json(&key_url(&db.url, &format!("+8130{i:06}"))).await;
        assert_eq!(status, 200);
        assert_eq!(r["fields"]["plan"], format!("v{i}"));
    }
    for i in 0..50 {
        let key = format!("+8190{i:04}");
        let (status, r) = get_json(&key_url(&db.url, &key)).await;
        match expected.get(&key) {
            Some(Some((fields, seq))) => {
                assert_eq!(status, 200, "{key}: {r}");
                assert_eq!(r["fields"]["plan"], fields["plan"], "{key}");
                assert_eq!(r["fields"]["credit_limit"], fields["credit_limit"], "{key}");
                assert_eq!(r["version"], json!({"epoch": 1, "seq": seq}), "{key}");
            }
            Some(None) => assert_eq!(status, 404, "{key} was deleted before the point: {r}"),
            None => assert_eq!(status, 404, "{key} did not exist at the point: {r}"),
        }
    }
    // The safety backup holds the state just before the restore, and verifies.
    let safety_root = dir.join("data.safety");
    let listed = ok(dir, &["backup", "list", s(&safety_root)]);
    assert!(
        listed.contains(&format!(" {now} ")) && listed.contains("ok"),
        "{listed}"
    );
}

/// For every file of a backup: flip a byte, truncate it, delete it. Each
/// case is refused by `verify` and `restore`, naming the file, and the live
/// data stays byte-for-byte unchanged.
#[tokio::test(flavor = "multi_thread")]
async fn every_damaged_backup_is_refused_and_nothing_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("data");
    let config = dir.join("tidemark.toml");
    std::fs::write(&config, "[server]\nchange_log_keep = 5000\n").unwrap();
    let mut db = Proc::start(
        "db",
        dir,
        &["--config", s(&config), "server", "--data-dir", s(&data)],
        &[],
    );
    db.wait_ok("/readyz").await;
    submit_some(dir, &db.url, 0..50).await;
    let good = dir.join("good");
    ok(
        dir,
        &["backup", "create", "--to", s(&good), "--server", &db.url],
    );
    submit_some(dir, &db.url, 50..60).await;
    db.terminate();
    let manifest = Manifest::load(&good).unwrap();
    let mut files: Vec<String> = manifest.files.iter().map(|f| f.path.clone()).collect();
    files.push("manifest.json".into());
    assert_eq!(
        files.len(),
        4,
        "db, effective config, config file, manifest: {files:?}"
    );
    let content = std::fs::read_to_string(good.join("config/config.toml")).unwrap();
    assert!(content.contains("change_log_keep = 5000"));
    let before = tree_digest(&data);
    assert!(
        before.keys().any(|k| k.ends_with("tidemark.db")),
        "{before:?}"
    );

    let cases = dir.join("cases");
    std::fs::create_dir(&cases).unwrap();
    for file in &files {
        for damage in ["flip", "truncate", "delete"] {
            let case = cases.join(format!("{}-{damage}", file.replace('/', "_")));
            copy_tree(&good, &case);
            let path = case.join(file);
            let mut bytes = std::fs::read(&path).unwrap();
            match damage {
                "flip" => {
                    let at = bytes.len() / 2;
                    bytes[at] ^= 0x10;
                    std::fs::write(&path, &bytes).unwrap();
                }
                "truncate" => std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap(),
                _ => std::fs::remove_file(&path).unwrap(),
            }
            let what = format!("{file} {damage}");
            let (success, _, stderr) = tm(dir, &["backup", "verify", s(&case)], &[]);
            assert!(!success, "verify accepted {what}");
            let named = if file == "manifest.json" && damage == "delete" {
                "manifest.json".to_owned()
            } else {
                file.clone()
            };
            assert!(stderr.contains(&named), "{what}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "{what}: one line: {stderr}");
            let (success, _, stderr) = tm(
                dir,
                &["restore", "--from", s(&case), "--data-dir", s(&data)],
                &[],
            );
            assert!(!success, "restore accepted {what}");
            assert!(stderr.contains(&named), "{what}: {stderr}");
            assert_eq!(tree_digest(&data), before, "{what} changed the live data");
            assert!(
                !dir.join("data.safety").exists(),
                "{what}: no safety backup taken"
            );
        }
    }
    // `list` shows every damaged copy as bad.
    let (success, listed, _) = tm(dir, &["backup", "list", s(&cases)], &[]);
    assert!(success);
    assert_eq!(listed.matches("BAD").count(), files.len() * 3, "{listed}");

    // A wrong version, a foreign manifest, and no backup at all.
    let mut forged: Value = serde_json::to_value(&manifest).unwrap();
    forged["format_version"] = json!(99);
    let wrong = cases.join("wrong-version");
    copy_tree(&good, &wrong);
    std::fs::write(
        wrong.join("manifest.json"),
        tidemark_backup::manifest::encode_value(&forged),
    )
    .unwrap();
    let foreign = cases.join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(
        foreign.join("manifest.json"),
        br#"{"format": "other-tool", "files": []}"#,
    )
    .unwrap();
    for (case, says) in [
        (wrong, "format version 99"),
        (foreign, "foreign"),
        (dir.join("nothing-here"), "does not exist"),
    ] {
        for args in [
            vec!["backup", "verify", s(&case)],
            vec!["restore", "--from", s(&case), "--data-dir", s(&data)],
        ] {
            let (success, _, stderr) = tm(dir, &args, &[]);
            assert!(!success, "{args:?} accepted");
            assert!(stderr.contains(says), "{args:?}: {stderr}");
        }
        assert_eq!(tree_digest(&data), before);
    }

    // The good backup still restores, configuration included.
    ok(
        dir,
        &["restore", "--from", s(&good), "--data-dir", s(&data)],
    );
    let restored = std::fs::read_to_string(data.join("current/config/config.toml")).unwrap();
    assert_eq!(restored, content);
    assert!(data.join("current/config/effective.json").exists());
}

/// B3, B4: restore runs only with the servers stopped.
#[tokio::test(flavor = "multi_thread")]
async fn restore_is_refused_while_a_server_runs_and_allowed_after_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("data");
    let mut db = db_server(dir, &[]).await;
    submit_some(dir, &db.url, 0..10).await;
    let bk = dir.join("b");
    ok(
        dir,
        &["backup", "create", "--to", s(&bk), "--server", &db.url],
    );
    submit_some(dir, &db.url, 10..20).await;

    let (success, _, stderr) = tm(
        dir,
        &["restore", "--from", s(&bk), "--data-dir", s(&data)],
        &[],
    );
    assert!(!success);
    assert!(
        stderr.contains("restore refused") && stderr.contains("in use"),
        "{stderr}"
    );
    assert!(stderr.contains("server"), "names the holder: {stderr}");
    // One line (CONTRACT.md): the note on recorded settings came first.
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    // Nor through the generation in use, nor as an offline backup there:
    // its own lock is not the one the server holds.
    let inside = data.join("current");
    for args in [
        vec!["restore", "--from", s(&bk), "--data-dir", s(&inside)],
        vec![
            "backup",
            "create",
            "--to",
            s(&dir.join("off-inside")),
            "--offline",
            "--data-dir",
            s(&inside),
        ],
    ] {
        let (success, _, stderr) = tm(dir, &args, &[]);
        assert!(
            !success && stderr.contains("inside the data directory"),
            "{args:?}: {stderr}"
        );
        assert!(
            stderr.contains(&format!("--data-dir {}", data.display())),
            "{stderr}"
        );
    }
    // A bare relative name, from inside it, too (it has only "" above it).
    let (success, _, stderr) = tm(
        &inside,
        &["restore", "--from", s(&bk), "--data-dir", "newdir"],
        &[],
    );
    assert!(
        !success && stderr.contains("inside the data directory"),
        "{stderr}"
    );
    let (success, _, stderr) = tm(
        dir,
        &[
            "backup",
            "create",
            "--to",
            s(&dir.join("off")),
            "--offline",
            "--data-dir",
            s(&data),
        ],
        &[],
    );
    assert!(
        !success && stderr.contains("in use"),
        "offline backup refused: {stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    let (success, _, stderr) = tm(dir, &["cleanup", "--data-dir", s(&data)], &[]);
    assert!(
        !success && stderr.contains("in use"),
        "cleanup refused: {stderr}"
    );
    assert_eq!(state(&db.url).await, (1, 20), "the server went on serving");

    db.kill9();
    ok(dir, &["restore", "--from", s(&bk), "--data-dir", s(&data)]);
    let db = db_server(dir, &[]).await;
    assert_eq!(state(&db.url).await, (2, 10));
    // The safety backup holds what the killed server had committed.
    let listed = ok(
        dir,
        &["backup", "list", "--json", s(&dir.join("data.safety"))],
    );
    let rows: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(rows[0]["seq"], 20, "{rows}");
    assert_eq!(rows[0]["ok"], true, "{rows}");
    // Safety backups are kept, a full copy each: past three, the restore
    // says how to prune them (and before, nothing).
    let mut db = db;
    for n in 2..=4 {
        db.kill9();
        let (success, _, stderr) = tm(
            dir,
            &["restore", "--from", s(&bk), "--data-dir", s(&data)],
            &[],
        );
        assert!(success, "{stderr}");
        assert_eq!(
            stderr.contains("backup prune"),
            n > 3,
            "restore {n} with {n} safety backups: {stderr}"
        );
        db = db_server(dir, &[]).await;
    }
}

/// B3, B4, P4: restore is atomic whatever step it dies at.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_at_any_step_of_restore_leaves_the_old_or_the_new_state() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("data");
    let mut db = db_server(dir, &[]).await;
    submit_some(dir, &db.url, 0..10).await;
    let bk = dir.join("b");
    ok(
        dir,
        &["backup", "create", "--to", s(&bk), "--server", &db.url],
    );
    submit_some(dir, &db.url, 10..15).await;
    db.terminate();
    let original = dir.join("original");
    copy_tree(&data, &original);
    let old = (1, 15);
    let new = (2, 10);
    let restore = [
        "restore",
        "--from",
        s(&bk),
        "--data-dir",
        s(&data),
        "--no-safety-backup",
    ];

    // (failpoint, whether the new state is in use after the crash)
    let steps = [
        ("restore.after_verify", false),
        ("restore.after_stage", false),
        ("restore.after_safety", false),
        ("restore.after_mark", false),
        ("restore.before_swap", false),
        ("layout.swap.before_rename", false),
        ("layout.swap.after_rename", true),
        ("restore.after_swap", true),
    ];
    for (fp, swapped) in steps {
        let _ = std::fs::remove_dir_all(&data);
        copy_tree(&original, &data);
        let spec = format!("{fp}=1");
        let (success, _, stderr) = tm(dir, &restore, &[("TIDEMARK_FAILPOINTS", &spec)]);
        assert!(!success, "{fp}: the failpoint did not fire: {stderr}");
        assert!(
            stderr.contains(&format!("failpoint {fp} hit")),
            "{fp}: {stderr}"
        );
        let mut db = db_server(dir, &[]).await;
        let got = state(&db.url).await;
        let want = if swapped { new } else { old };
        assert_eq!(got, want, "after a crash at {fp}");
        // A record agrees with the state: key 12 exists only in the old one.
        let (status, _) = get_json(&key_url(&db.url, "+8130000012")).await;
        assert_eq!(status, if swapped { 404 } else { 200 }, "{fp}");
        db.terminate();
        // Whatever the crash left behind, restore runs again and succeeds,
        // leaving one generation.
        ok(dir, &restore);
        let gens: Vec<_> = std::fs::read_dir(&data)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("gen-"))
            .collect();
        assert_eq!(gens.len(), 1, "{fp}: {:?}", tree_digest(&data));
        let db = db_server(dir, &[]).await;
        assert_eq!(state(&db.url).await.1, 10, "{fp}: restored after the rerun");
    }

    // The disaster case: the data directory is gone and the first restore
    // into it is killed while staging. A server started then begins empty
    // (it never takes the half-staged generation for data), and a rerun of
    // the restore succeeds; before, every rerun was refused for good.
    let killed_while_staging = || {
        let _ = std::fs::remove_dir_all(&data);
        let fp = [("TIDEMARK_FAILPOINTS", "restore.after_stage=1")];
        assert!(!tm(dir, &restore, &fp).0, "the failpoint fired");
    };
    killed_while_staging();
    let mut db = db_server(dir, &[]).await;
    assert_eq!(
        state(&db.url).await,
        (1, 0),
        "an empty store, not the half-staged one"
    );
    db.terminate();
    killed_while_staging();
    ok(dir, &restore);
    let db = db_server(dir, &[]).await;
    assert_eq!(state(&db.url).await, new, "restored by the rerun");
}

/// B6: process information left by an online backup must be cleaned first.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_refuses_uncleaned_data_until_cleanup_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("data");
    let mut db = db_server(dir, &[]).await;
    submit_some(dir, &db.url, 0..5).await;
    let bk = dir.join("b");
    ok(
        dir,
        &["backup", "create", "--to", s(&bk), "--server", &db.url],
    );
    let m = Manifest::load(&bk).unwrap();
    assert!(m.needs_cleanup);
    db.terminate();

    let (success, _, stderr) = tm(
        dir,
        &[
            "restore",
            "--from",
            s(&bk),
            "--data-dir",
            s(&data),
            "--no-cleanup",
            "--no-safety-backup",
        ],
        &[],
    );
    assert!(success, "{stderr}");
    assert!(stderr.contains("warning: --no-safety-backup"), "{stderr}");
    assert!(stderr.contains("tidemark cleanup --data-dir"), "{stderr}");
    let (success, stderr) = run_briefly(
        dir,
        &["server", "--data-dir", s(&data), "--listen", "127.0.0.1:0"],
    );
    assert!(!success, "the server started on uncleaned data");
    assert!(
        stderr.contains(&format!(
            "holds process information restored from an online backup; run 'tidemark cleanup --data-dir {}' first",
            data.display()
        )),
        "{stderr}"
    );
    let out = ok(dir, &["cleanup", "--data-dir", s(&data)]);
    assert!(out.contains("removed the process information"), "{out}");
    let out = ok(dir, &["cleanup", "--data-dir", s(&data)]);
    assert!(out.contains("no process information"), "idempotent: {out}");
    let db = db_server(dir, &[]).await;
    assert_eq!(state(&db.url).await, (2, 5));
}

/// B2: offline backups of a stopped server; retention.
#[tokio::test(flavor = "multi_thread")]
async fn offline_backups_retention_and_interrupted_backups() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("data");
    let root = dir.join("backups");
    let mut db = db_server(dir, &[]).await;
    submit_some(dir, &db.url, 0..5).await;

    // A backup that dies half-way leaves nothing that looks like a backup.
    let half = root.join("half");
    let (success, _, stderr) = tm(
        dir,
        &["backup", "create", "--to", s(&half), "--server", &db.url],
        &[("TIDEMARK_FAILPOINTS", "backup.create.before_manifest=1")],
    );
    assert!(!success && stderr.contains("failpoint"), "{stderr}");
    assert!(!half.exists());
    // So does one whose client dies while the snapshot streams in; the
    // server leaves no snapshot file behind and goes on serving.
    let (success, _, stderr) = tm(
        dir,
        &[
            "backup",
            "create",
            "--to",
            s(&root.join("cut")),
            "--server",
            &db.url,
        ],
        &[("TIDEMARK_FAILPOINTS", "backup.online.chunk=1")],
    );
    assert!(!success && stderr.contains("failpoint"), "{stderr}");
    eventually(20, "the server drops the snapshot file", || async {
        let left: Vec<_> = std::fs::read_dir(&data)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("snapshot-"))
            .collect();
        left.is_empty().then_some(())
    })
    .await;
    assert_eq!(state(&db.url).await, (1, 5));
    let listed = ok(dir, &["backup", "list", s(&root)]);
    assert!(listed.contains("no backups"), "{listed}");
    db.terminate();

    let mut names: Vec<PathBuf> = Vec::new();
    for i in 0..4 {
        let to = root.join(format!("off-{i}"));
        let out = ok(
            dir,
            &[
                "backup",
                "create",
                "--to",
                s(&to),
                "--offline",
                "--data-dir",
                s(&data),
                "--keep",
                "3",
            ],
        );
        assert!(out.contains("offline"), "{out}");
        names.push(to);
    }
    assert!(!names[0].exists(), "the oldest went");
    for n in &names[1..] {
        assert!(n.exists());
    }
    std::fs::create_dir(root.join("not-a-backup")).unwrap();
    ok(dir, &["backup", "prune", s(&root), "--keep", "1"]);
    assert!(names[3].exists() && !names[2].exists() && !names[1].exists());
    // A backup of a damaged store passes its checksums (they are of what
    // was read) but not its integrity check: it prunes nothing, so the
    // last good backup stays (before, --keep 1 removed it).
    let db_file = data.join("current").join("tidemark.db");
    let mut bytes = std::fs::read(&db_file).unwrap();
    let page = 4096;
    let pages = bytes.len() / page;
    assert!(pages > 3, "a store of more than three pages");
    // The last page: no table the backup itself reads.
    bytes[(pages - 1) * page..pages * page].fill(0xAB);
    let intact = std::fs::read(&db_file).unwrap();
    std::fs::write(&db_file, &bytes).unwrap();
    let bad = root.join("off-damaged");
    let (success, _, err) = tm(
        dir,
        &[
            "backup",
            "create",
            "--to",
            s(&bad),
            "--offline",
            "--data-dir",
            s(&data),
            "--keep",
            "1",
        ],
        &[],
    );
    assert!(!success && err.contains("integrity check"), "{err}");
    assert!(names[3].exists(), "the last good backup stays: {err}");
    // `backup prune` alone does not count it as kept either (before, it
    // passed its checksums and the last good backup went).
    assert!(bad.exists(), "the damaged backup is left to look at");
    let (success, out, err) = tm(dir, &["backup", "prune", s(&root), "--keep", "1"], &[]);
    assert!(success, "{err}");
    assert!(out.contains("removed 0"), "{out}");
    assert!(names[3].exists(), "the last good backup stays: {out}");
    assert!(
        err.contains("off-damaged") && err.contains("fails verification"),
        "{err}"
    );
    std::fs::write(&db_file, &intact).unwrap();
    std::fs::remove_dir_all(&bad).unwrap();
    assert!(
        root.join("not-a-backup").exists(),
        "prune only removes backups"
    );
    let m = Manifest::load(&names[3]).unwrap();
    assert_eq!(
        (m.kind, m.seq, m.needs_cleanup),
        (tidemark_backup::Kind::Offline, 5, false)
    );
    let listed = ok(dir, &["backup", "list", "--deep", s(&root)]);
    assert!(
        listed.contains("off-3") && listed.contains(" ok"),
        "{listed}"
    );
    assert!(
        listed.contains("not-a-backup") && listed.contains("BAD"),
        "{listed}"
    );
    let (success, _, stderr) = tm(
        dir,
        &[
            "backup",
            "create",
            "--to",
            s(&names[3]),
            "--offline",
            "--data-dir",
            s(&data),
        ],
        &[],
    );
    assert!(!success && stderr.contains("already exists"), "{stderr}");

    // B1, B3: an offline backup and a restore's safety backup carry the
    // server's configuration (its --config file, secrets redacted); they
    // carried only files an earlier restore had left.
    let conf = dir.join("server.toml");
    std::fs::write(
        &conf,
        "[server]\ndatabase_url = \"postgres://tm:s3cret@db/tm\"\n",
    )
    .unwrap();
    let with_conf = root.join("with-config");
    ok(
        dir,
        &[
            "--config",
            s(&conf),
            "backup",
            "create",
            "--to",
            s(&with_conf),
            "--offline",
            "--data-dir",
            s(&data),
        ],
    );
    let carried = std::fs::read_to_string(with_conf.join("config/config.toml")).unwrap();
    assert!(carried.contains("postgres://tm:***@db/tm"), "{carried}");
    // The settings recorded are the server's with the data directory the
    // command was given (it recorded the command's default, ./tidemark-data).
    let effective = std::fs::read_to_string(with_conf.join("config/effective.json")).unwrap();
    let effective: serde_json::Value = serde_json::from_str(&effective).unwrap();
    assert_eq!(effective["data_dir"], s(&data), "{effective}");
    assert_eq!(effective["store"], "sqlite", "{effective}");
    let safety = dir.join("safety");
    ok(
        dir,
        &[
            "--config",
            s(&conf),
            "restore",
            "--from",
            s(&names[3]),
            "--data-dir",
            s(&data),
            "--safety-dir",
            s(&safety),
        ],
    );
    assert!(
        safety.join("config/config.toml").exists(),
        "the safety backup carries the configuration"
    );
}

/// A full disk while the backup is written (simulated with a file-size
/// limit on the backup process: writes past it fail with EFBIG, as they
/// would with ENOSPC) leaves no backup, not even a hidden half one.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_during_backup_leaves_no_half_backup() {
    use std::os::unix::process::CommandExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let root = dir.join("backups");
    std::fs::create_dir(&root).unwrap();
    let db = db_server(dir, &[]).await;
    submit_some(dir, &db.url, 0..3000).await;
    let to = root.join("full");
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["backup", "create", "--to", s(&to), "--server", &db.url])
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            // An ignored SIGXFSZ stays ignored across exec; writes then fail.
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: 32 * 1024,
                rlim_max: 32 * 1024,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the backup fit in 32 KiB; make the store bigger"
    );
    assert!(
        stderr.contains("tidemark.db.zst"),
        "names the file: {stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let left: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "nothing left behind: {left:?}");
    let listed = ok(dir, &["backup", "list", s(&root)]);
    assert!(listed.contains("no backups"), "{listed}");
    // With room again, the same command succeeds.
    ok(
        dir,
        &["backup", "create", "--to", s(&to), "--server", &db.url],
    );
    ok(dir, &["backup", "verify", s(&to)]);
}

/// Issue 13, item 5: restore never deletes what it did not create. A data
/// directory whose `current` link is lost, or an unrelated folder, is
/// refused (with what to do), and left exactly as it was.
#[tokio::test(flavor = "multi_thread")]
async fn restore_refuses_a_directory_it_cannot_account_for() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut db = db_server(dir, &[]).await;
    submit_some(dir, &db.url, 0..20).await;
    let backup = dir.join("b1");
    ok(
        dir,
        &["backup", "create", "--to", s(&backup), "--server", &db.url],
    );
    db.kill9();
    let data = dir.join("data");
    std::fs::remove_file(data.join("current")).unwrap();
    let before = tree_digest(&data);
    let (success, _, stderr) = tm(
        dir,
        &["restore", "--from", s(&backup), "--data-dir", s(&data)],
        &[],
    );
    assert!(!success, "refused");
    assert!(
        stderr.contains("gen-000001") && stderr.contains("ln -s"),
        "{stderr}"
    );
    assert_eq!(tree_digest(&data), before, "nothing was deleted");

    let other = dir.join("photos");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("holiday.jpg"), b"not tidemark").unwrap();
    let (success, _, stderr) = tm(
        dir,
        &["restore", "--from", s(&backup), "--data-dir", s(&other)],
        &[],
    );
    assert!(!success && stderr.contains("holiday.jpg"), "{stderr}");
    assert_eq!(
        std::fs::read(other.join("holiday.jpg")).unwrap(),
        b"not tidemark"
    );
    let names = |d: &std::path::Path| -> Vec<String> {
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(names(&other), ["holiday.jpg"], "not even a lock file");
    // A restore that fails into a folder it made leaves no folder behind.
    let damaged = backup;
    let db_file = damaged.join("tidemark.db.zst");
    let mut bytes = std::fs::read(&db_file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&db_file, bytes).unwrap();
    let fresh = dir.join("fresh");
    let (success, _, stderr) = tm(
        dir,
        &["restore", "--from", s(&damaged), "--data-dir", s(&fresh)],
        &[],
    );
    assert!(!success, "a damaged backup is refused: {stderr}");
    assert!(!fresh.exists(), "{:?}", names(&fresh));
}

/// A backup or a safety copy is never written inside a data directory:
/// before, a restore's safety copy there was deleted with the generation it
/// guarded, and a backup left there made every later restore refuse the
/// folder. Refused at once, nothing written.
#[tokio::test(flavor = "multi_thread")]
async fn no_backup_is_written_inside_a_data_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut db = db_server(dir, &[]).await;
    ops_submit(dir, &db.url, &order_line("k", json!({"plan": "gold"})), &[]);
    let backup = backup_online(dir, &db.url);
    let data = dir.join("data");
    // Refused, saying the place lies inside `what`, and nothing written.
    let refused_inside = |args: &[&str], place: &Path, what: &str| {
        let (ok, _, err) = tm(dir, args, &[]);
        assert!(!ok, "{args:?}");
        assert!(
            err.contains(&format!("inside the {what}")),
            "{args:?}: {err}"
        );
        assert!(!place.exists(), "{args:?} wrote {}", place.display());
    };
    let refused = |args: &[&str], place: &Path| refused_inside(args, place, "data directory");
    for to in [data.join("bk"), data.join("current").join("bk")] {
        refused(
            &["backup", "create", "--to", s(&to), "--server", &db.url],
            &to,
        );
    }
    db.terminate();
    let to = data.join("bk-offline");
    refused(
        &[
            "backup",
            "create",
            "--to",
            s(&to),
            "--data-dir",
            s(&data),
            "--offline",
        ],
        &to,
    );
    let safety = data.join("current").join("sf");
    refused(
        &[
            "restore",
            "--from",
            s(&backup),
            "--data-dir",
            s(&data),
            "--safety-dir",
            s(&safety),
        ],
        &safety,
    );
    // Nor is a restore written inside the backup it reads: its data
    // directory, or its safety copy (before, both were).
    let inner = backup.join("restored");
    let sf = backup.join("sf");
    refused_inside(
        &["restore", "--from", s(&backup), "--data-dir", s(&inner)],
        &inner,
        "backup",
    );
    refused_inside(
        &[
            "restore",
            "--from",
            s(&backup),
            "--data-dir",
            s(&data),
            "--safety-dir",
            s(&sf),
        ],
        &sf,
        "backup",
    );
    ok(dir, &["backup", "verify", s(&backup)]);
    // Nothing changed: the store serves what it held.
    let db = db_server(dir, &[]).await;
    let (status, body) = get_json(&key_url(&db.url, "k")).await;
    assert_eq!(
        (status, body["fields"]["plan"].as_str()),
        (200, Some("gold")),
        "{body}"
    );
}
