//! The program's command line: help, exit codes, configuration layering.

use crate::harness::*;

#[test]
fn every_subcommand_has_help() {
    let tmp = tempfile::tempdir().unwrap();
    for cmd in [
        vec!["--help"],
        vec!["server", "--help"],
        vec!["service", "--help"],
        vec!["ops", "submit", "--help"],
        vec!["ops", "recover", "--help"],
        vec!["status", "--help"],
        vec!["bench", "reads", "--help"],
    ] {
        let out = run(tmp.path(), &cmd, None, &[]);
        assert_eq!(out.status.code(), Some(0), "{cmd:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{cmd:?}"
        );
    }
}

/// A client command whose output reader has gone (`| head`, `| true`)
/// ends quietly: no panic, no backtrace, as any Unix tool.
#[test]
fn a_client_command_piped_into_a_closed_reader_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let tmp = tempfile::tempdir().unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader); // every write to the pipe now fails (EPIPE)
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(["backup", "list"])
        .arg(tmp.path())
        .arg("--json")
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
        "{:?}: {err}",
        out.status
    );
}

#[test]
fn bad_usage_exits_2_and_failures_exit_1() {
    let tmp = tempfile::tempdir().unwrap();
    // A config file that does not parse, or names a key that is not one,
    // is bad usage as a missing one is, in one line.
    for (name, text) in [
        ("bad.toml", "[server\n"),
        ("unknown.toml", "[server]\nlisten_on = \"x\"\n"),
    ] {
        let path = tmp.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = run(
            tmp.path(),
            &["status", "--config", path.to_str().unwrap()],
            None,
            &[],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains("invalid configuration"), "{name}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{name}: {err}");
    }
    // A wrong value names its key as the operator wrote it: in the file
    // (`[server] max_connections`, and which file) or in the environment.
    let wrong = tmp.path().join("wrong.toml");
    std::fs::write(&wrong, "[server]\nmax_connections = \"many\"\n").unwrap();
    let wrong = wrong.to_str().unwrap();
    for (args, env, named) in [
        (
            &["server", "--config", wrong][..],
            &[][..],
            "[server] max_connections in ",
        ),
        (
            &["server"][..],
            &[("TIDEMARK_SERVER__MAX_CONNECTIONS", "abc")][..],
            "TIDEMARK_SERVER__MAX_CONNECTIONS: ",
        ),
    ] {
        let out = run(tmp.path(), args, None, env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(named), "{named}: {err}");
    }
    assert_eq!(
        run(tmp.path(), &["no-such-command"], None, &[])
            .status
            .code(),
        Some(2)
    );
    let out = run(tmp.path(), &["server", "--no-such-flag"], None, &[]);
    assert_eq!(out.status.code(), Some(2));
    // Numbers past what the command can use: a quiesce more than a day
    // ahead (the server refuses it), an epoch no store comes near (one
    // near 2^64 wrapped to 0, ordering every record first).
    for args in [
        &["quiesce", "--server", "http://127.0.0.1:9", "--in", "86401"][..],
        &[
            "restore",
            "--from",
            "no-such-backup",
            "--min-epoch",
            "18446744073709551615",
        ],
    ] {
        let out = run(tmp.path(), args, None, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("is not in 0..="), "{args:?}: {err}");
    }
    // One line, as every failure (clap printed its error, usage and a tip).
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("--no-such-flag") && err.contains("--help"),
        "{err}"
    );
    let out = run(
        tmp.path(),
        &["status", "--server", "http://127.0.0.1:1"],
        None,
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("could not reach"), "{err}");
    let out = run(
        tmp.path(),
        &[
            "service",
            "--db",
            "http://127.0.0.1:1",
            "--listen",
            "127.0.0.1:0",
        ],
        None,
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "a service server without --id is bad usage"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--id"));
    // Bad values that clap cannot see are bad usage too (exit 2), each
    // with one line naming the flag.
    for (args, flag) in [
        (
            &["service", "--id", "s", "--policy", "bogus"][..],
            "--policy",
        ),
        (&["server", "--store", "bogus"][..], "--store"),
        (&["server", "--store", "postgres"][..], "--database-url"),
        (
            &["restore", "--from", "nowhere", "--store", "bogus"][..],
            "--store",
        ),
        (
            &["token", "create", "--role", "bogus", "--name", "n"][..],
            "--role",
        ),
        (&["backup", "create", "--to", "nowhere"][..], "--offline"),
        (&["server", "--listen", "notanaddr"][..], "--listen"),
        // A subcommand missing: which there are, on one line (the whole
        // help was printed).
        (&["ops"][..], "submit, recover"),
        (&["backup"][..], "create"),
        // A CA file that is missing, or holds no certificate, is refused
        // before anything is sent (it was reported, then ignored).
        (
            &[
                "status",
                "--server",
                "https://127.0.0.1:1",
                "--ca-cert",
                "nosuch.pem",
            ][..],
            "--ca-cert",
        ),
        (
            &[
                "status",
                "--server",
                "https://127.0.0.1:1",
                "--ca-cert",
                "not-pem.txt",
            ][..],
            "--ca-cert",
        ),
        // A DB-server URL that is not one (a service server retried it for
        // good).
        (&["status", "--server", "notaurl"][..], "--server"),
        (&["status", "--server", "ftp://h"][..], "--server"),
        (&["service", "--id", "s", "--db", "notaurl"][..], "--db"),
        // A client certificate with another's key, or not PEM at all: the
        // commands panicked, or went on without it.
        (
            &[
                "status",
                "--server",
                "https://127.0.0.1:1",
                "--client-cert",
                "a.pem",
                "--client-key",
                "b.key",
            ][..],
            "client certificate a.pem",
        ),
        (
            &[
                "service",
                "--id",
                "s",
                "--client-cert",
                "not-pem.txt",
                "--client-key",
                "not-pem.txt",
            ][..],
            "client certificate not-pem.txt",
        ),
        // A server certificate with another's key: refused before it says
        // it listens (it announced https, then exited).
        (
            &[
                "server",
                "--data-dir",
                "srv",
                "--listen",
                "127.0.0.1:0",
                "--tls-cert",
                "a.pem",
                "--tls-key",
                "b.key",
            ][..],
            "--tls-cert",
        ),
    ] {
        std::fs::write(tmp.path().join("not-pem.txt"), "[client]\n").unwrap();
        for name in ["a", "b"] {
            let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
            std::fs::write(tmp.path().join(format!("{name}.pem")), c.cert.pem()).unwrap();
            std::fs::write(
                tmp.path().join(format!("{name}.key")),
                c.key_pair.serialize_pem(),
            )
            .unwrap();
        }
        let out = run(tmp.path(), args, None, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(flag) && err.trim().lines().count() == 1,
            "{args:?}: {err}"
        );
        assert!(out.stdout.is_empty(), "{args:?}: nothing announced");
    }
    let out = run(
        tmp.path(),
        &["--config", "missing.toml", "status"],
        None,
        &[],
    );
    // A --config path that names no file is bad usage, like a missing
    // --ca-cert file (CONTRACT.md: exit 2); it exited 1.
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

#[tokio::test(flavor = "multi_thread")]
async fn file_then_environment_then_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let from_file = tmp.path().join("from-file");
    let from_env = tmp.path().join("from-env");
    std::fs::write(
        tmp.path().join("tidemark.toml"),
        format!(
            "[server]\ndata_dir = \"{}\"\nchange_log_keep = 5\n",
            from_file.display()
        ),
    )
    .unwrap();
    let db = Proc::start(
        "db",
        tmp.path(),
        &["--config", "tidemark.toml", "server"],
        &[],
    );
    db.wait_ok("/readyz").await;
    assert!(
        from_file.join("LOCK").exists(),
        "the file's data_dir is used"
    );
    drop(db);
    let db = Proc::start(
        "db",
        tmp.path(),
        &["--config", "tidemark.toml", "server"],
        &[("TIDEMARK_SERVER__DATA_DIR", from_env.to_str().unwrap())],
    );
    db.wait_ok("/readyz").await;
    assert!(
        from_env.join("LOCK").exists(),
        "the environment overrides the file"
    );
    drop(db);
    let from_flag = tmp.path().join("from-flag");
    let db = Proc::start(
        "db",
        tmp.path(),
        &[
            "--config",
            "tidemark.toml",
            "server",
            "--data-dir",
            from_flag.to_str().unwrap(),
        ],
        &[("TIDEMARK_SERVER__DATA_DIR", from_env.to_str().unwrap())],
    );
    db.wait_ok("/readyz").await;
    assert!(from_flag.join("LOCK").exists(), "the flag overrides both");
    let (_, doc) = get_json(&format!("{}/openapi.json", db.url)).await;
    assert_eq!(doc["openapi"], "3.0.3");
    assert!(doc["paths"]["/v1/orders"].is_object());
    for path in [
        "/v1/schema/versions",
        "/v1/schema/pending",
        "/v1/schema/plan",
        "/v1/schema/publish",
        "/v1/schema/rollback",
        "/v1/schema/ack",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is documented");
    }
    let codes = doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]
        ["enum"]
        .to_string();
    for code in ["schema_drop_refused", "rollback_refused", "schema_skew"] {
        assert!(codes.contains(code), "{code} is documented");
    }
    let metrics = metrics_text(&db.url).await;
    assert!(metrics.contains("# TYPE tidemark_reads_total counter"));
}

/// Client commands take their server, token and CA from `[client]` in
/// the file, the environment overrides it and the flag both (they read
/// only their flags before, so `status --config` went to the default
/// address).
#[tokio::test(flavor = "multi_thread")]
async fn client_commands_take_server_and_token_from_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let db = db_server(dir, &[]).await;
    let admin = create_token(dir, &db.url, "admin", "root", None);
    std::fs::write(
        dir.join("client.toml"),
        format!("[client]\nserver = \"{}\"\ntoken = \"{admin}\"\n", db.url),
    )
    .unwrap();
    // `token list` needs the admin token: both come from the file.
    let listed = run_ok(dir, &["--config", "client.toml", "token", "list"]);
    assert!(listed.contains("root"), "{listed}");
    // The environment beats the file.
    let dead = "http://127.0.0.1:9";
    let env = [("TIDEMARK_CLIENT__SERVER", dead)];
    let out = run(dir, &["--config", "client.toml", "status"], None, &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("127.0.0.1:9"), "{stderr}");
    // The flag beats both.
    run_ok_env(
        dir,
        &["--config", "client.toml", "status", "--server", &db.url],
        &env,
    );
    // An online backup takes its server from the file too.
    run_ok(
        dir,
        &["--config", "client.toml", "backup", "create", "--to", "b1"],
    );
    // TIDEMARK_CLIENT__TOKEN stands for the section's token.
    std::fs::write(
        dir.join("server-only.toml"),
        format!("[client]\nserver = \"{}\"\n", db.url),
    )
    .unwrap();
    run_ok_env(
        dir,
        &["--config", "server-only.toml", "token", "list"],
        &[("TIDEMARK_CLIENT__TOKEN", admin.as_str())],
    );
    // A wrong key in the section is bad usage, naming it, even where the
    // file was to give a required --server.
    std::fs::write(dir.join("bad.toml"), "[client]\nsrever = \"x\"\n").unwrap();
    for args in [
        &["--config", "bad.toml", "status", "--server", &db.url][..],
        &["--config", "bad.toml", "quiesce", "--cancel"][..],
    ] {
        let out = run(dir, args, None, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("srever"), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
    }
}

/// Starts `tidemark ARGS --listen 127.0.0.1:0` with its stderr going into
/// a pipe nobody reads any more (a log collector that went away): every
/// log line it writes fails. Returns it and its URL.
fn start_with_stderr_gone(args: &[&str]) -> (std::process::Child, String) {
    use std::io::BufRead;
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut child = std::process::Command::new(BIN)
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(writer)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{args:?} printed {line:?}, not its address"))
        .to_owned();
    (child, url)
}

/// SIGTERM, then the exit status within the test kit's patience.
async fn terminate(child: &mut std::process::Child, what: &str) -> std::process::ExitStatus {
    // SAFETY: kill(2) on the pid of a child not reaped yet.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    exit_of(child, &format!("{what} to stop on SIGTERM")).await
}

/// The exit status of `child`, within the test kit's patience; past it,
/// the child is killed (not left running) and the test fails.
async fn exit_of(child: &mut std::process::Child, what: &str) -> std::process::ExitStatus {
    let patience = tidemark_testkit::process::PATIENCE;
    let deadline = std::time::Instant::now() + patience;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "timed out after {} s waiting for {what}",
                patience.as_secs()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A role whose stderr reader has gone (a log collector restarting) loses
/// its log lines, not its work: it serves, pushes, and stops on SIGTERM.
/// Before, the first line it failed to write panicked the task that
/// logged it (the signal handler, so SIGTERM was never acted on; a watch
/// stream, left connected but dead).
#[tokio::test(flavor = "multi_thread")]
async fn a_role_whose_stderr_reader_has_gone_serves_and_stops_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (mut db, db_url) =
        start_with_stderr_gone(&["server", "--data-dir", data.to_str().unwrap()]);
    eventually(20, "the DB server to be ready", || {
        let u = format!("{db_url}/readyz");
        async move { reqwest::get(u).await.ok().filter(|r| r.status() == 200) }
    })
    .await;
    let (mut svc, svc_url) = start_with_stderr_gone(&[
        "service",
        "--db",
        &db_url,
        "--id",
        "svc-quiet",
        "--policy",
        "latest-only",
    ]);
    eventually(20, "the service server to be ready", || {
        let u = format!("{svc_url}/readyz");
        async move { reqwest::get(u).await.ok().filter(|r| r.status() == 200) }
    })
    .await;
    let order = |plan: &str| {
        serde_json::json!({"orders": [{"source": "quiet", "seq": if plan == "gold" { 1 } else { 2 },
            "table": "subscriber", "key": "k", "op": "upsert", "fields": {"plan": plan}}]})
        .to_string()
    };
    let record = format!("{svc_url}/v1/records/subscriber/k");
    assert_eq!(
        post_raw(&format!("{db_url}/v1/orders"), order("gold"))
            .await
            .0,
        200
    );
    assert_eq!(get_json(&record).await.1["fields"]["plan"], "gold");
    // The change reaches the cached record: the watch stream lives.
    assert_eq!(
        post_raw(&format!("{db_url}/v1/orders"), order("silver"))
            .await
            .0,
        200
    );
    eventually(20, "the push of the change to the cached record", || {
        let u = record.clone();
        async move { (get_json(&u).await.1["fields"]["plan"] == "silver").then_some(()) }
    })
    .await;
    for (child, what) in [(&mut svc, "the service server"), (&mut db, "the DB server")] {
        let status = terminate(child, what).await;
        assert!(status.success(), "{what} ended {status:?}");
    }
}

/// A client command stopped by a signal says so in one line (exit 130) and
/// keeps nothing half-done: an online backup interrupted while it waits
/// for the DB server leaves no hidden temporary directory, and the same
/// command run again makes the backup. Before, SIGINT ended it without a
/// word and its `.NAME.tmp-PID` stayed.
#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_backup_says_so_and_keeps_nothing() {
    use std::os::unix::process::ExitStatusExt;
    let tmp = tempfile::tempdir().unwrap();
    let db = db_server(tmp.path(), &[]).await;
    // The DB server frozen: the backup waits for it, half-begun.
    // SAFETY: kill(2) on a child's pid.
    unsafe { libc::kill(db.pid as libc::pid_t, libc::SIGSTOP) };
    let target = tmp.path().join("b1");
    let backup = [
        "backup",
        "create",
        "--to",
        target.to_str().unwrap(),
        "--server",
        &db.url,
    ];
    let mut child = std::process::Command::new(BIN)
        .args(backup)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let partial = tmp.path().join(format!(".b1.tmp-{}", child.id()));
    eventually(20, "the backup to begin its temporary directory", || {
        let there = partial.exists();
        async move { there.then_some(()) }
    })
    .await;
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let status = exit_of(&mut child, "the interrupted backup to end").await;
    unsafe { libc::kill(db.pid as libc::pid_t, libc::SIGCONT) };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(
        status.code(),
        Some(130),
        "{status:?} (signal {:?}): {err}",
        status.signal()
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: interrupted by SIGINT"), "{err}");
    assert!(!partial.exists() && !target.exists(), "nothing kept: {err}");
    run_ok(tmp.path(), &backup);
    assert!(target.join("manifest.json").exists());
}

/// `tidemark demo` stopped by SIGTERM sent to it alone (not its process
/// group) stops the servers it started and removes its folder. Before,
/// its service servers ran on, orphaned, and the folder stayed.
#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_demo_stops_its_servers_and_removes_its_files() {
    interrupted_demo(libc::SIGTERM).await;
}

/// The same after SIGKILL, which the demo cannot act on: its servers stop
/// by themselves (`TIDEMARK_PARENT_PID`), and a watchdog shell it left
/// removes the folder once nothing works in it. Before, both stayed.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_demo_leaves_no_server_and_no_folder() {
    interrupted_demo(libc::SIGKILL).await;
}

/// Starts `tidemark demo`, sends `signal` to it alone once its three
/// servers run, and checks that none of them outlives it, nor its folder.
async fn interrupted_demo(signal: libc::c_int) {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(BIN)
        .arg("demo")
        .env("TMPDIR", tmp.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut first).unwrap();
    // The rest of the timeline is drained, as a terminal would take it.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let dir = std::path::PathBuf::from(
        first
            .trim()
            .strip_prefix("Tidemark demo in ")
            .unwrap_or_else(|| panic!("the demo began with {first:?}")),
    );
    let demo = child.id();
    // Its three servers: the DB server and two service servers (its other
    // child, the watchdog shell that removes its folder after a SIGKILL,
    // is not one).
    let servers = eventually(60, "the demo to start its three servers", || {
        let kids: Vec<u32> = tidemark_testkit::process::children_of(demo)
            .into_iter()
            .filter(|p| {
                std::fs::read_link(format!("/proc/{p}/exe"))
                    .is_ok_and(|exe| exe.file_name() == std::path::Path::new(BIN).file_name())
            })
            .collect();
        async move { (kids.len() >= 3).then_some(kids) }
    })
    .await;
    // SAFETY: kill(2) on a child's pid.
    unsafe { libc::kill(demo as libc::pid_t, signal) };
    let status = exit_of(&mut child, "the interrupted demo to end").await;
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    if signal == libc::SIGKILL {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
        // Nothing ran in the demo after the signal: its servers and the
        // watchdog do the rest (the servers within their check and grace,
        // the watchdog once no process works in the folder).
        eventually(30, "the demo's servers to stop by themselves", || {
            let left = servers
                .iter()
                .any(|p| tidemark_testkit::process::running(*p));
            async move { (!left).then_some(()) }
        })
        .await;
        eventually(70, "the watchdog to remove the demo's folder", || {
            let gone = !dir.exists();
            async move { gone.then_some(()) }
        })
        .await;
        return;
    }
    assert_eq!(status.code(), Some(130), "{status:?}: {err}");
    assert!(err.contains("interrupted by SIGTERM"), "{err}");
    let left: Vec<u32> = servers
        .into_iter()
        .filter(|p| tidemark_testkit::process::running(*p))
        .collect();
    assert!(left.is_empty(), "servers left running: {left:?}");
    assert!(!dir.exists(), "{} was left behind", dir.display());
}

/// A DB server told SIGHUP (its terminal closed) stops cleanly and says
/// why, as on SIGTERM. Before, it ended at once without a word (exit 129).
#[tokio::test(flavor = "multi_thread")]
async fn a_server_stops_cleanly_on_sighup() {
    let tmp = tempfile::tempdir().unwrap();
    let mut db = db_server(tmp.path(), &[]).await;
    let status = db.stop_with(libc::SIGHUP).unwrap();
    assert!(status.success(), "{status:?}: {}", db.log_text());
    let log = db.log_text();
    assert!(log.contains("SIGHUP received"), "{log}");
    assert!(log.contains("shutdown complete"), "{log}");
}

/// README's configuration reference lists every setting of both servers
/// with its default, so it cannot fall behind the code.
#[test]
fn the_readme_lists_every_server_and_service_setting_with_its_default() {
    let readme = include_str!("../../../../README.md");
    let sections = [
        (
            "server",
            serde_json::to_value(tidemark_server::ServerConfig::default()).unwrap(),
        ),
        (
            "service",
            serde_json::to_value(tidemark_service::ServiceConfig::default()).unwrap(),
        ),
    ];
    for (section, defaults) in sections {
        let table = readme
            .split(&format!("`[{section}]` (environment"))
            .nth(1)
            .unwrap_or_else(|| panic!("README has no [{section}] reference"));
        let rows: std::collections::BTreeMap<String, String> = table
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .filter_map(|l| {
                let cells: Vec<&str> = l.split(" | ").collect();
                let name = cells.first()?.trim_start_matches("| ").strip_prefix('`')?;
                Some((
                    name.strip_suffix('`')?.to_owned(),
                    cells.get(1)?.to_string(),
                ))
            })
            .collect();
        let expected: std::collections::BTreeMap<String, String> = defaults
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k != "config_file")
            .map(|(k, v)| {
                let shown = match v {
                    serde_json::Value::Null => "–".to_owned(),
                    serde_json::Value::String(s) if s.is_empty() => "(required)".to_owned(),
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), shown)
            })
            .collect();
        // The README writes numbers with thousands separators, and sizes
        // also in MiB.
        let readme_rows: std::collections::BTreeMap<String, String> = rows
            .into_iter()
            .map(|(k, v)| {
                let v = v.split(" (").next().unwrap_or(&v).replace(',', "");
                (k, v)
            })
            .collect();
        assert_eq!(readme_rows, expected, "README's [{section}] reference");
    }
}

/// With `--log-format json` every line a process writes to stderr is one
/// JSON object with one `message`: the log's lines (a refused batch's
/// reason was a second `message` key, so parsers kept one or dropped the
/// line), and a command's failure (it was plain text).
#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_one_object_per_line_with_one_message() {
    let tmp = tempfile::tempdir().unwrap();
    let db = db_server(tmp.path(), &[("TIDEMARK_LOG_FORMAT", "json")]).await;
    let refused = serde_json::json!({"orders": [{"source": "j", "seq": 1, "table": "subscriber",
        "key": "k", "op": "upsert", "fields": {"no_such_column": 1}}]});
    assert_eq!(
        post_raw(&format!("{}/v1/orders", db.url), refused.to_string())
            .await
            .0,
        400
    );
    let log = eventually(20, "the refusal in the log", || {
        let log = db.log_text();
        async move { log.contains("order batch refused").then_some(log) }
    })
    .await;
    let out = run(
        tmp.path(),
        &[
            "status",
            "--server",
            "http://127.0.0.1:9",
            "--log-format",
            "json",
        ],
        None,
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let failure = String::from_utf8_lossy(&out.stderr).into_owned();
    for line in log.lines().chain(failure.lines()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert_eq!(line.matches("\"message\":").count(), 1, "{line}");
        assert!(v["level"].is_string(), "{line}");
    }
    let last: serde_json::Value = serde_json::from_str(failure.trim()).unwrap();
    assert_eq!(last["level"], "ERROR", "{failure}");
    assert!(
        last["message"].as_str().unwrap().contains("127.0.0.1:9"),
        "{failure}"
    );
}

/// A second SIGTERM stops a server at once, without waiting out the
/// grace period of a request still in flight (here a body that never
/// finishes arriving, with 60 s of grace); before, it waited it out.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_sigterm_stops_a_server_at_once() {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let mut db = db_server(
        tmp.path(),
        &[
            ("TIDEMARK_SERVER__SHUTDOWN_GRACE_SECS", "60"),
            ("TIDEMARK_SERVER__BODY_TIMEOUT_SECS", "60"),
        ],
    )
    .await;
    let addr = db.url.trim_start_matches("http://").to_owned();
    let mut held = std::net::TcpStream::connect(&addr).unwrap();
    held.write_all(b"POST /v1/orders HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 100\r\nexpect: 100-continue\r\n\r\n")
        .unwrap();
    // Readiness: the server asks for the body once the request is being
    // handled, so it is in flight; then the body never finishes.
    let mut got = [0u8; 64];
    let n = std::io::Read::read(&mut held, &mut got).unwrap();
    assert!(
        got[..n].starts_with(b"HTTP/1.1 100"),
        "{:?}",
        String::from_utf8_lossy(&got[..n])
    );
    held.write_all(b"{\"orders\"").unwrap();
    let pid = db.pid as libc::pid_t;
    // SAFETY: kill(2) on a child's pid.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    eventually(20, "the first SIGTERM to be taken", || {
        let log = db.log_text();
        async move { log.contains("SIGTERM received").then_some(()) }
    })
    .await;
    let status = db.stop_with(libc::SIGTERM).unwrap();
    assert_eq!(status.code(), Some(130), "{status:?}: {}", db.log_text());
    assert!(db.log_text().contains("received again: stopping now"));
    drop(held);
}

/// A server started with `nohup` (SIGHUP ignored) outlives its terminal:
/// SIGHUP is not watched there. Without a `nohup`, it stops cleanly on
/// SIGHUP (`a_server_stops_cleanly_on_sighup`).
#[tokio::test(flavor = "multi_thread")]
async fn a_server_started_with_nohup_ignores_sighup() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let log = std::fs::File::create(tmp.path().join("db.log")).unwrap();
    let mut child = std::process::Command::new("nohup")
        .arg(BIN)
        .args([
            "server",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();
    // SAFETY: kill(2) on a child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGHUP) };
    // Still serving after it; then stopped by SIGTERM, which it names.
    for _ in 0..3 {
        assert_eq!(get_json(&format!("{url}/healthz")).await.0, 200);
    }
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = exit_of(&mut child, "the server to stop on SIGTERM").await;
    let text = std::fs::read_to_string(tmp.path().join("db.log")).unwrap();
    assert!(status.success(), "{status:?}: {text}");
    assert!(
        text.contains("SIGTERM received") && !text.contains("SIGHUP"),
        "{text}"
    );
}

/// A server started by a shell that names itself its starter
/// (`TIDEMARK_PARENT_PID`), logging to `log_path`; the shell, the server's
/// pid and URL, and a guard that kills the server if it outlives the test
/// (and leaves its pid, perhaps another process's by then, once it is gone).
struct ShellStarted {
    starter: std::process::Child,
    pid: u32,
    url: String,
    _reap: Reap,
}

struct Reap(u32);

impl Drop for Reap {
    fn drop(&mut self) {
        if tidemark_testkit::process::running(self.0) {
            // SAFETY: kill(2) on a pid this test started, still running.
            unsafe { libc::kill(self.0 as libc::pid_t, libc::SIGKILL) };
        }
    }
}

fn shell_started(
    data: &std::path::Path,
    log_path: &std::path::Path,
    env: &[(&str, &str)],
) -> ShellStarted {
    use std::io::BufRead;
    let log = std::fs::File::create(log_path).unwrap();
    // The starter: a shell that starts the server as its child, naming
    // itself as the parent to outlive, and prints the server's pid.
    let script = r#"TIDEMARK_PARENT_PID=$$ "$0" server --data-dir "$1" --listen 127.0.0.1:0 & echo "pid $!"; wait"#;
    let mut starter = std::process::Command::new("sh")
        .args(["-c", script, BIN, data.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    // Two lines in either order: the server's pid and its address.
    let mut lines = std::io::BufReader::new(starter.stdout.take().unwrap()).lines();
    let (mut pid, mut url) = (None, None);
    for _ in 0..2 {
        let line = lines.next().unwrap().unwrap();
        if let Some(p) = line.strip_prefix("pid ") {
            pid = p.trim().parse::<u32>().ok();
        } else if let Some(u) = line.trim().strip_prefix("listening on ") {
            url = Some(u.to_owned());
        }
    }
    let pid = pid.unwrap();
    ShellStarted {
        starter,
        pid,
        url: url.unwrap(),
        _reap: Reap(pid),
    }
}

/// A server whose starter dies without stopping it (SIGKILL: the demo, a
/// bench or a test harness killed) stops by itself, cleanly, once that
/// starter (`TIDEMARK_PARENT_PID`) is no longer its parent. Before, it ran
/// on, orphaned, holding its port and data directory.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_stops_once_the_process_that_started_it_is_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let log_path = tmp.path().join("db.log");
    let ShellStarted {
        mut starter,
        pid,
        url,
        _reap,
    } = shell_started(&data, &log_path, &[]);
    assert_eq!(get_json(&format!("{url}/healthz")).await.0, 200);
    starter.kill().unwrap(); // SIGKILL: the starter stops nothing itself
    starter.wait().unwrap();
    eventually(20, "the orphaned server to stop", || async move {
        (!tidemark_testkit::process::running(pid)).then_some(())
    })
    .await;
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        text.contains("(TIDEMARK_PARENT_PID) has exited: shutting down")
            && text.contains("shutdown complete"),
        "{text}"
    );
}

/// A starter that sends SIGTERM and then exits (the demo does, and a
/// killed test harness may) does not cut the graceful stop short: the
/// starter's end, after the signal, is not taken for a second signal, and
/// the requests in flight get their grace period. Watched naively it would
/// stop the server at once, as a second SIGTERM does.
#[tokio::test(flavor = "multi_thread")]
async fn a_starter_gone_after_its_sigterm_leaves_the_graceful_stop_whole() {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let log_path = tmp.path().join("db.log");
    let ShellStarted {
        mut starter,
        pid,
        url,
        _reap,
    } = shell_started(
        &data,
        &log_path,
        &[("TIDEMARK_SERVER__SHUTDOWN_GRACE_SECS", "2")],
    );
    assert_eq!(get_json(&format!("{url}/healthz")).await.0, 200);
    // A request in flight: its body never comes whole.
    let addr = url.trim_start_matches("http://");
    let mut held = std::net::TcpStream::connect(addr).unwrap();
    let head = format!("POST /v1/orders HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"orders\"");
    held.write_all(head.as_bytes()).unwrap();
    // Taken (the probe's own connection is the other one).
    eventually(10, "the held connection to be taken", || async {
        (metric(&url, "tidemark_connections_open").await >= 2).then_some(())
    })
    .await;
    // SAFETY: kill(2) on the server this test started.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let log_text = || std::fs::read_to_string(&log_path).unwrap_or_default();
    eventually(10, "the graceful stop to begin", || async {
        log_text()
            .contains("SIGTERM received: shutting down")
            .then_some(())
    })
    .await;
    starter.kill().unwrap();
    starter.wait().unwrap();
    eventually(20, "the server to stop", || async move {
        (!tidemark_testkit::process::running(pid)).then_some(())
    })
    .await;
    let text = log_text();
    assert!(
        !text.contains("stopping now") && text.contains("closing anyway"),
        "the grace period waited out: {text}"
    );
    drop(held);
}

/// A `TIDEMARK_PARENT_PID` naming a running process that is not the
/// server's parent (a wrapper in between, a variable inherited from
/// further up) is not watched, and the log says why: watched, the server
/// would take it for a starter gone and stop at its first check, 250 ms
/// after the start.
#[tokio::test(flavor = "multi_thread")]
async fn a_starter_that_is_not_the_parent_is_not_watched() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let other = std::process::Command::new("sleep")
        .arg("120")
        .spawn()
        .unwrap();
    // Ended however the test ends.
    struct Ended(std::process::Child);
    impl Drop for Ended {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let pid = other.id().to_string();
    let _other = Ended(other);
    let db = Proc::start(
        "db",
        dir,
        &strs(&server_args(dir, Engine::Sqlite)),
        &[("TIDEMARK_PARENT_PID", pid.as_str())],
    );
    db.wait_ok("/readyz").await;
    eventually(10, "the log to say it is not watched", || async {
        db.log_text()
            .contains("not this one's parent; not watched")
            .then_some(())
    })
    .await;
    // Eight checks' worth: still serving.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while std::time::Instant::now() < until {
        assert_eq!(get_json(&format!("{}/healthz", db.url)).await.0, 200);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(!db.log_text().contains("has exited: shutting down"));
}

/// A server whose standard output is closed before it says its address
/// (a starter that died, a pipe nobody reads) serves on, the address in
/// its log; before, printing it panicked and the server ended.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_serves_on_when_its_standard_output_is_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let log_path = tmp.path().join("db.log");
    // A pipe whose read end is closed before the server starts.
    let mut ends = [0 as libc::c_int; 2];
    // SAFETY: pipe(2) fills the two descriptors, which we then own.
    assert_eq!(unsafe { libc::pipe(ends.as_mut_ptr()) }, 0);
    let (read_end, write_end) = unsafe {
        use std::os::fd::FromRawFd;
        (
            std::os::fd::OwnedFd::from_raw_fd(ends[0]),
            std::os::fd::OwnedFd::from_raw_fd(ends[1]),
        )
    };
    drop(read_end);
    let mut child = std::process::Command::new(BIN)
        .args(["server", "--data-dir", data.to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::from(write_end))
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let url = eventually(20, "the address in the log", || {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        async move {
            let line = text
                .lines()
                .find(|l| l.contains("which standard output did not take"))?;
            let at = line.find("listening on ")? + "listening on ".len();
            Some(line[at..].split([',', ' ']).next()?.to_owned())
        }
    })
    .await;
    assert_eq!(get_json(&format!("{url}/healthz")).await.0, 200);
    // SAFETY: kill(2) on a child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = exit_of(&mut child, "the server to stop on SIGTERM").await;
    assert!(status.success(), "{status:?}");
}
