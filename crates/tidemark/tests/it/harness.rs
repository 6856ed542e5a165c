//! Starting real `tidemark` processes for tests.
//!
//! Each process gets `--listen 127.0.0.1:0`; the harness reads the bound
//! address from the first stdout line and waits on `/readyz` (or `/healthz`),
//! never on a fixed sleep. Logs go to a file that is printed if the test
//! fails (or always with TEST_LOG=1).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_tidemark");

/// A running `tidemark` process.
pub struct Proc {
    pub name: String,
    pub child: Option<Child>,
    pub url: String,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `tidemark ARGS --listen 127.0.0.1:0` and waits for its address.
    pub fn start(name: &str, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Proc {
        Self::spawn(name, dir, args, env, "127.0.0.1:0")
    }

    /// Starts `tidemark ARGS --listen ADDR` (to restart on the same address).
    pub fn start_at(name: &str, dir: &Path, args: &[&str], addr: &str) -> Proc {
        Self::spawn(name, dir, args, &[], addr)
    }

    fn spawn(name: &str, dir: &Path, args: &[&str], env: &[(&str, &str)], listen: &str) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let mut cmd = Command::new(BIN);
        cmd.args(args).args(["--listen", listen]).current_dir(dir);
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .stdin(Stdio::null());
        cmd.env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn tidemark");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!("{name} did not report its address; log:\n{}", read(&log));
            }
        };
        let url = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Proc {
            name: name.to_owned(),
            child: Some(child),
            url,
            log,
        }
    }

    /// Waits until `path` answers 200.
    pub async fn wait_ok(&self, path: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = reqwest::Client::new();
        loop {
            if let Ok(r) = client.get(format!("{}{path}", self.url)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "{} never answered 200 on {path}; log:\n{}",
                    self.name,
                    read(&self.log)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = c.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!(
                    "{} did not stop within 20 s of SIGTERM; log:\n{}",
                    self.name,
                    read(&self.log)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        read(&self.log)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() || std::env::var("TEST_LOG").is_ok() {
            eprintln!("----- log of {} -----\n{}", self.name, read(&self.log));
        }
    }
}

fn read(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    s
}

/// Runs `tidemark ARGS` to completion with optional stdin.
pub fn run(
    dir: &Path,
    args: &[&str],
    stdin: Option<&[u8]>,
    env: &[(&str, &str)],
) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn tidemark");
    if let Some(input) = stdin {
        use std::io::Write;
        let mut s = child.stdin.take().expect("stdin");
        s.write_all(input).expect("write stdin");
    }
    child.wait_with_output().expect("wait tidemark")
}

/// A DB server on the embedded engine in `dir/data`.
pub async fn db_server(dir: &Path, env: &[(&str, &str)]) -> Proc {
    let data = dir.join("data");
    let p = Proc::start(
        "db",
        dir,
        &["server", "--data-dir", data.to_str().unwrap()],
        env,
    );
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

/// The URL of record `key` of table `subscriber` on a server at `base`.
pub fn key_url(base: &str, key: &str) -> String {
    format!(
        "{base}/v1/records/subscriber/{}",
        tidemark_api::client::encode_path(key)
    )
}

/// `tidemark ops submit` of `input` (JSON lines) with the journal in
/// `dir/journal`, plus `extra` flags; fails the test if it fails.
pub fn ops_submit(dir: &Path, db: &str, input: &str, extra: &[&str]) -> std::process::Output {
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
    let out = run(dir, &args, Some(input.as_bytes()), &[]);
    assert!(
        out.status.success(),
        "ops submit failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// One input line for `ops submit`.
pub fn order_line(key: &str, fields: serde_json::Value) -> String {
    serde_json::json!({"table": "subscriber", "key": key, "op": "upsert", "fields": fields})
        .to_string()
        + "\n"
}
