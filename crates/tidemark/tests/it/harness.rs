//! Starting real `tidemark` processes for tests: the test kit's starter
//! (`tidemark_testkit::process`) bound to this build's `tidemark`, failing
//! the test, with the process log, where the kit returns an error.
//!
//! Each process gets `--listen 127.0.0.1:0`; the kit reads the bound
//! address from the first stdout line, and tests wait on `/readyz` (or
//! `/healthz`), never on a fixed sleep. Logs go to a file that is printed if
//! the test fails (or always with TEST_LOG=1).

use std::path::Path;
use std::time::{Duration, Instant};
use tidemark_testkit::process::{log_path, read_log};
use tidemark_testkit::Program;

pub use tidemark_testkit::orders::{key_url, upsert_line as order_line};
pub use tidemark_testkit::Model;

pub const BIN: &str = env!("CARGO_BIN_EXE_tidemark");

fn program() -> Program {
    Program::new(BIN)
}

/// A running `tidemark` process: the test kit's [`tidemark_testkit::Proc`]
/// (fields, `kill9`, `log_text`), with the waits failing the test.
pub struct Proc(tidemark_testkit::Proc);

impl std::ops::Deref for Proc {
    type Target = tidemark_testkit::Proc;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// A free address on this host outside the kernel's ephemeral port range,
/// so a server started there can be restarted there: a port the kernel
/// handed out (`--listen 127.0.0.1:0`) is, once free, the kernel's to give
/// to an outgoing connection meanwhile, and the restart then fails with
/// "Address already in use" (seen once in CI). Ports are taken in turn
/// from a start that differs per process, each checked free by binding it.
pub fn restartable_addr() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    let ephemeral_from: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u32, ephemeral_from.max(10_001));
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id() * 97 % (high - low);
    for _ in 0..(high - low) {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = low + (start + n) % (high - low);
        if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return format!("127.0.0.1:{port}");
        }
    }
    // Every one taken: let the kernel choose.
    "127.0.0.1:0".to_owned()
}

impl Proc {
    /// Starts `tidemark ARGS --listen ADDR` on a free address of its own
    /// ([`restartable_addr`]) and waits for its address.
    pub fn start(name: &str, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Proc {
        Self::spawn(name, dir, args, env, &restartable_addr())
    }

    /// Starts `tidemark ARGS --listen ADDR` (to restart on the same address).
    pub fn start_at(name: &str, dir: &Path, args: &[&str], addr: &str) -> Proc {
        Self::spawn(name, dir, args, &[], addr)
    }

    fn spawn(name: &str, dir: &Path, args: &[&str], env: &[(&str, &str)], listen: &str) -> Proc {
        let mut env_all = vec![("RUST_LOG", "info")];
        env_all.extend_from_slice(env);
        match program().start(name, dir, args, &env_all, listen) {
            Ok(p) => Proc(p),
            Err(e) => panic!("{e:#}; log:\n{}", read_log(&log_path(dir, name))),
        }
    }

    /// Waits until `path` answers 200.
    pub async fn wait_ok(&self, path: &str) {
        if let Err(e) = self.0.wait_ok(path).await {
            panic!("{e:#}; log:\n{}", self.log_text());
        }
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.0
            .terminate()
            .unwrap_or_else(|e| panic!("{e:#}; log:\n{}", self.0.log_text()))
    }
}

/// Runs `tidemark ARGS` to completion with optional stdin.
pub fn run(
    dir: &Path,
    args: &[&str],
    stdin: Option<&[u8]>,
    env: &[(&str, &str)],
) -> std::process::Output {
    program()
        .run(dir, args, stdin, env)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Runs `tidemark ARGS` and returns its standard output; fails the test,
/// with its standard error, if it does not succeed.
pub fn run_ok(dir: &Path, args: &[&str]) -> String {
    run_ok_env(dir, args, &[])
}

/// [`run_ok`] with environment variables set.
pub fn run_ok_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = run(dir, args, None, env);
    assert!(
        out.status.success(),
        "tidemark {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A DB server on the embedded engine in `dir/data`.
pub async fn db_server(dir: &Path, env: &[(&str, &str)]) -> Proc {
    db_server_on(dir, Engine::Sqlite, env).await
}

/// A storage engine a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// The engines a parameterised test runs on: the embedded engine always,
/// PostgreSQL where its binaries are installed (and always with
/// TIDEMARK_REQUIRE_POSTGRES=1; its absence then fails the test).
pub fn engines(test: &str) -> Vec<Engine> {
    let mut out = vec![Engine::Sqlite];
    if tidemark_testkit::postgres::PgCluster::shared(test).is_some() {
        out.push(Engine::Postgres);
    }
    out
}

/// `tidemark server` flags that select `engine` for the test in `dir`: its
/// data directory, or its own PostgreSQL database (created on first use and
/// kept for restarts in the same folder).
pub fn store_args(dir: &Path, engine: Engine) -> Vec<String> {
    match engine {
        Engine::Sqlite => vec!["--data-dir".into(), dir.join("data").display().to_string()],
        Engine::Postgres => {
            let remembered = dir.join("pg-url");
            let url = match std::fs::read_to_string(&remembered) {
                Ok(u) => u,
                Err(_) => {
                    let cluster = tidemark_testkit::postgres::PgCluster::shared("store_args")
                        .expect("a PostgreSQL test without PostgreSQL");
                    let u = cluster.database("it").expect("a test database");
                    std::fs::write(&remembered, &u).expect("remember the database");
                    u
                }
            };
            vec![
                "--store".into(),
                "postgres".into(),
                "--database-url".into(),
                url,
            ]
        }
    }
}

/// `tidemark server` with the flags of `engine` for the test in `dir`.
pub fn server_args(dir: &Path, engine: Engine) -> Vec<String> {
    let mut args = vec!["server".to_owned()];
    args.extend(store_args(dir, engine));
    args
}

/// `tidemark restore --from BACKUP` into `engine`'s store for `dir`.
pub fn restore_args(dir: &Path, engine: Engine, backup: &Path) -> Vec<String> {
    let mut args = vec![
        "restore".to_owned(),
        "--from".into(),
        backup.display().to_string(),
    ];
    args.extend(store_args(dir, engine));
    args
}

/// The disaster: the store's data is lost (the data directory deleted, or
/// Tidemark's PostgreSQL schema dropped).
pub async fn lose_data(dir: &Path, engine: Engine) {
    match engine {
        Engine::Sqlite => std::fs::remove_dir_all(dir.join("data")).expect("remove the data"),
        Engine::Postgres => {
            let url = std::fs::read_to_string(dir.join("pg-url")).expect("the test database");
            let client = pg_client(&url).await;
            client
                .batch_execute("DROP SCHEMA tidemark CASCADE")
                .await
                .expect("drop the schema");
        }
    }
}

/// Borrowed `&str`s of owned arguments.
pub fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// A DB server on `engine`.
pub async fn db_server_on(dir: &Path, engine: Engine, env: &[(&str, &str)]) -> Proc {
    let mut args = vec!["server".to_owned()];
    args.extend(store_args(dir, engine));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = Proc::start("db", dir, &args, env);
    p.wait_ok("/readyz").await;
    p
}

/// A service server with `policy`, connected to `db`.
pub async fn service(dir: &Path, name: &str, db: &str, policy: &str, extra: &[&str]) -> Proc {
    let mut args = vec!["service", "--db", db, "--id", name, "--policy", policy];
    args.extend_from_slice(extra);
    let p = Proc::start(name, dir, &args, &[]);
    p.wait_ok("/readyz").await;
    p
}

/// Polls `check` until it returns Some, or panics after `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {secs} s waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// GET a JSON document: status and body.
pub async fn get_json(url: &str) -> (u16, serde_json::Value) {
    let r = reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status().as_u16();
    let body = r.json().await.unwrap_or(serde_json::Value::Null);
    (status, body)
}

/// POST a raw body: status and JSON body.
pub async fn post_raw(url: &str, body: impl Into<reqwest::Body>) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// The DB server's last committed seq.
pub async fn commit_seq(db: &str) -> u64 {
    get_json(&format!("{db}/v1/state")).await.1["seq"]
        .as_u64()
        .expect("seq in /v1/state")
}

/// `tidemark ops submit` of `input` (JSON lines) with the journal in
/// `dir/journal`, plus `extra` flags; fails the test if it fails.
pub fn ops_submit(dir: &Path, db: &str, input: &str, extra: &[&str]) -> std::process::Output {
    let out = ops_submit_output(dir, db, input, extra);
    assert!(
        out.status.success(),
        "ops submit failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `tidemark ops submit` of `input` (JSON lines) to `db`, journaled in
/// `dir/journal`, whatever its outcome.
pub fn ops_submit_output(
    dir: &Path,
    db: &str,
    input: &str,
    extra: &[&str],
) -> std::process::Output {
    let journal = dir.join("journal");
    let mut args = vec![
        "ops",
        "submit",
        "--db",
        db,
        "--journal",
        journal.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    args.push("-");
    run(dir, &args, Some(input.as_bytes()), &[])
}

/// A new token of `role` named `name`, created with the token `with`
/// (the first one needs none from loopback).
pub fn create_token(
    dir: &std::path::Path,
    db: &str,
    role: &str,
    name: &str,
    token: Option<&str>,
) -> String {
    let mut args = vec![
        "token", "create", "--server", db, "--role", role, "--name", name,
    ];
    if let Some(t) = token {
        args.extend(["--token", t]);
    }
    let out = run(dir, &args, None, &[]);
    assert!(
        out.status.success(),
        "token create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Backs up the DB server `db` online into `dir/backups/b1`.
pub fn backup_online(dir: &Path, db: &str) -> std::path::PathBuf {
    backup_to(dir, db, "b1")
}

/// Backs up the DB server `db` online into `dir/backups/NAME`.
pub fn backup_to(dir: &Path, db: &str, name: &str) -> std::path::PathBuf {
    let backup = dir.join("backups").join(name);
    let out = run(
        dir,
        &[
            "backup",
            "create",
            "--to",
            backup.to_str().unwrap(),
            "--server",
            db,
        ],
        None,
        &[],
    );
    assert!(
        out.status.success(),
        "backup create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every backup is its owner's alone (records, config), whatever the umask.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&backup).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "{}", backup.display());
    backup
}

/// Kills `db`, loses its data, restores `backup` with `extra` flags, and
/// starts a DB server at the same address.
pub async fn lose_restore_restart(
    dir: &Path,
    engine: Engine,
    db: &mut Proc,
    backup: &Path,
    extra: &[&str],
) -> Proc {
    let addr = db.url.trim_start_matches("http://").to_owned();
    db.kill9();
    lose_data(dir, engine).await;
    let mut args = restore_args(dir, engine, backup);
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = run(dir, &strs(&args), None, &[]);
    assert!(
        out.status.success(),
        "restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let db = Proc::start_at("db-restored", dir, &strs(&server_args(dir, engine)), &addr);
    db.wait_ok("/readyz").await;
    db
}

/// The `/metrics` page of the server at `url`.
pub async fn metrics_text(url: &str) -> String {
    reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of metric `name` on the server at `url` (0 if absent).
pub async fn metric(url: &str, name: &str) -> u64 {
    metrics_text(url)
        .await
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or(0)
}

/// Waits until the service server at `svc` has a cache snapshot of all it
/// has applied (holding `entries` records, if given).
pub async fn snapshot_taken(svc: &str, entries: Option<u64>) {
    let state_url = format!("{svc}/v1/state");
    eventually(10, "a cache snapshot of all applied", || async {
        let (_, s) = get_json(&state_url).await;
        (s["snapshot_event_id"].is_string()
            && s["snapshot_event_id"] == s["last_event_id"]
            && entries.is_none_or(|n| s["cache_entries"] == n))
        .then_some(())
    })
    .await;
}

/// A superuser connection to the test database at `url`.
pub async fn pg_client(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to PostgreSQL");
    tokio::spawn(conn);
    client
}

/// A small filesystem of its own (tmpfs), unmounted when dropped; `None`
/// (the test says it is skipped) where this process may not mount (not
/// root).
pub struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    pub fn mount(at: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(at).ok()?;
        if !Self::tmpfs(&format!("size={size}"), at) {
            eprintln!("skipped: cannot mount a tmpfs here (needs root)");
            return None;
        }
        Some(SmallDisk(at.to_owned()))
    }

    pub fn grow(&self, size: &str) {
        let ok = Self::tmpfs(&format!("remount,size={size}"), &self.0);
        assert!(ok, "remount {}", self.0.display());
    }

    /// `mount -t tmpfs -o OPTIONS tmpfs AT`.
    fn tmpfs(options: &str, at: &Path) -> bool {
        std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}
