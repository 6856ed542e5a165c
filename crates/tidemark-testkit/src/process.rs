//! Starting real `tidemark` processes.
//!
//! A server is started with `--listen ADDR` (port 0 for a free one); the
//! starter reads the bound address from its first stdout line (`listening
//! on URL`) and [`Proc::wait_ok`] polls `/readyz` (or any path), never a
//! fixed sleep. Each process's stderr goes to `DIR/NAME.log`.

use anyhow::Context;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a process may take to report its address, to answer 200, or to
/// exit after SIGTERM.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The `tidemark` program to start: the integration tests pass
/// `env!("CARGO_BIN_EXE_tidemark")`, the demo and the benches
/// [`Program::current_exe`] (the program that runs them).
#[derive(Debug, Clone)]
pub struct Program {
    bin: PathBuf,
    /// The cores every process started from here is pinned to (benches).
    cpus: Option<Vec<usize>>,
}

impl Program {
    /// The program at `bin`.
    pub fn new(bin: impl Into<PathBuf>) -> Self {
        Self {
            bin: bin.into(),
            cpus: None,
        }
    }

    /// The running program.
    pub fn current_exe() -> anyhow::Result<Self> {
        let bin = std::env::current_exe().context("finding the tidemark program")?;
        Ok(Self::new(bin))
    }

    /// The same program, whose processes start pinned to `cpus`
    /// (`sched_setaffinity` before `exec`; see [`crate::affinity`]).
    pub fn pinned(mut self, cpus: Option<Vec<usize>>) -> Self {
        self.cpus = cpus;
        self
    }

    /// Starts `tidemark ARGS --listen LISTEN` in `dir` with `env` added to
    /// its environment, and returns once it has reported the address it
    /// bound. Its stderr is appended to `dir/NAME.log`.
    pub fn start(
        &self,
        name: &str,
        dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        listen: &str,
    ) -> anyhow::Result<Proc> {
        let log = log_path(dir, name);
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("creating the log file {}", log.display()))?;
        let mut cmd = Command::new(&self.bin);
        if let Some(cpus) = &self.cpus {
            crate::affinity::pin_command(&mut cmd, cpus);
        }
        let mut child = cmd
            .args(args)
            .args(["--listen", listen])
            .current_dir(dir)
            // It stops by itself if this process dies without stopping it
            // (SIGKILL): see `signals` in the tidemark crate.
            .env("TIDEMARK_PARENT_PID", std::process::id().to_string())
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {} for {name}", self.bin.display()))?;
        let stdout = child.stdout.take().context("the child's stdout")?;
        // Read the first line on a thread, so a process that hangs before
        // printing it cannot hang the caller; then keep draining stdout so
        // the process never blocks on a full pipe.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = rx.recv_timeout(PATIENCE).ok();
        let url = line
            .as_deref()
            .and_then(|l| l.trim().strip_prefix("listening on "))
            .map(str::to_owned);
        let Some(url) = url else {
            let _ = child.kill();
            let _ = child.wait();
            match line {
                Some(line) => anyhow::bail!(
                    "{name} printed {line:?} where its address ('listening on URL') was expected; see its log {}",
                    log.display()
                ),
                None => anyhow::bail!(
                    "{name} did not report its address within {} s; see its log {}",
                    PATIENCE.as_secs(),
                    log.display()
                ),
            }
        };
        Ok(Proc {
            name: name.to_owned(),
            pid: child.id(),
            child: Some(child),
            url,
            log,
        })
    }

    /// Runs `tidemark ARGS` in `dir` to completion, with `stdin` as its
    /// input (none: an empty input) and `env` added to its environment.
    pub fn run(
        &self,
        dir: &Path,
        args: &[&str],
        stdin: Option<&[u8]>,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Output> {
        let what = || format!("tidemark {}", args.join(" "));
        let mut child = Command::new(&self.bin)
            .args(args)
            .current_dir(dir)
            .envs(env.iter().copied())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", what()))?;
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().context("the child's stdin")?;
            pipe.write_all(input)
                .with_context(|| format!("writing the input of {}", what()))?;
        }
        child
            .wait_with_output()
            .with_context(|| format!("waiting for {}", what()))
    }
}

/// A running `tidemark` process: killed (`-9`) when dropped. Its log is
/// printed when it is dropped during a panic, or always with `TEST_LOG` set.
pub struct Proc {
    /// The name it was started under; its log is `DIR/NAME.log`.
    pub name: String,
    /// `None` once it has been stopped.
    pub child: Option<Child>,
    /// The process id, kept after it has been stopped.
    pub pid: u32,
    /// Its base URL, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    /// Its log file.
    pub log: PathBuf,
}

impl Proc {
    /// Waits until `GET {url}{path}` answers 200, for at most [`PATIENCE`].
    pub async fn wait_ok(&self, path: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + PATIENCE;
        // Trusts TIDEMARK_CA_CERT, for servers that serve https.
        let client = tidemark_api::client::tls_builder().build()?;
        loop {
            if let Ok(r) = client.get(format!("{}{path}", self.url)).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} never answered 200 on {path} within {} s; see its log {}",
                self.name,
                PATIENCE.as_secs(),
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `kill -9`, and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then its exit status; `kill -9` if it has not exited within
    /// [`PATIENCE`].
    pub fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        self.stop_with(libc::SIGTERM)
    }

    /// `signal` (SIGTERM, SIGINT, SIGHUP), then its exit status; `kill -9`
    /// if it has not exited within [`PATIENCE`].
    pub fn stop_with(&mut self, signal: libc::c_int) -> anyhow::Result<ExitStatus> {
        let mut c = self
            .child
            .take()
            .with_context(|| format!("{} is not running", self.name))?;
        // SAFETY: kill(2) on the pid of a child we have not reaped yet.
        unsafe {
            libc::kill(c.id() as libc::pid_t, signal);
        }
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = c.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                anyhow::bail!(
                    "{} did not stop within {} s of signal {signal}; see its log {}",
                    self.name,
                    PATIENCE.as_secs(),
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything it has logged so far.
    pub fn log_text(&self) -> String {
        read_log(&self.log)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() || std::env::var_os("TEST_LOG").is_some() {
            eprintln!("----- log of {} -----\n{}", self.name, self.log_text());
        }
    }
}

/// Where [`Program::start`] sends the stderr of the process `name`.
pub fn log_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.log"))
}

/// The text of a log file; empty if it cannot be read.
pub fn read_log(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    s
}

/// Runs the shell command `script` once this process has ended, however
/// it ends (a SIGKILL included): a watchdog shell polls for it twice a
/// second. For what must not outlive it (a temporary cluster, a folder).
/// `args` are the script's `$1`, `$2`, …: paths go there, never into the
/// script's text, where a space or a quote would change what it does.
pub fn after_exit(script: &str, args: &[&std::ffi::OsStr]) -> std::io::Result<()> {
    let watch = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {script}",
        pid = std::process::id()
    );
    Command::new("sh")
        .arg("-c")
        .arg(watch)
        .arg("tidemark-watchdog") // $0
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(drop)
}

/// The child processes of `pid` (by the parent field of `/proc/*/stat`).
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // ppid is the 2nd field after the ")" that closes the command name.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// Whether `pid` runs: a zombie (ended, not reaped yet), or no such
/// process, does not.
pub fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // `sh -c SCRIPT --listen ADDR` runs SCRIPT with `--listen` as $0 and ADDR as $1.
    fn sh() -> Program {
        Program::new("/bin/sh")
    }

    #[test]
    fn start_reads_the_address_and_sends_stderr_to_the_log() {
        let dir = tempfile::tempdir().unwrap();
        // stderr first: by the time the address is read, the log holds it.
        let script = "echo \"x=$X\" >&2; echo \"listening on http://$1\"; exec sleep 30";
        let mut p = sh()
            .start(
                "srv",
                dir.path(),
                &["-c", script],
                &[("X", "1")],
                "127.0.0.1:9",
            )
            .unwrap();
        assert_eq!(p.url, "http://127.0.0.1:9");
        assert_eq!(p.log, log_path(dir.path(), "srv"));
        let status = p.terminate().unwrap();
        assert!(!status.success(), "stopped by SIGTERM: {status:?}");
        assert_eq!(p.log_text(), "x=1\n");
        assert!(p.terminate().is_err(), "it is no longer running");
    }

    #[test]
    fn a_process_that_prints_no_address_is_an_error_naming_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let e = sh()
            .start("bad", dir.path(), &["-c", "echo nope"], &[], "x")
            .err()
            .unwrap();
        let msg = format!("{e:#}");
        assert!(msg.contains("\"nope\"") && msg.contains("bad.log"), "{msg}");
        let e = sh()
            .start("mute", dir.path(), &["-c", "exit 3"], &[], "x")
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("did not report its address"));
    }

    #[test]
    fn run_passes_input_and_environment() {
        let dir = tempfile::tempdir().unwrap();
        let out = sh()
            .run(
                dir.path(),
                &["-c", "cat; echo $X"],
                Some(b"in "),
                &[("X", "env")],
            )
            .unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "in env\n");
        let out = sh().run(dir.path(), &["-c", "exit 4"], None, &[]).unwrap();
        assert_eq!(out.status.code(), Some(4));
    }
}
