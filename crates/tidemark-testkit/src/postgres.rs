//! A temporary PostgreSQL cluster for tests: `initdb` in a folder of its
//! own, `postgres` on a free loopback port with `fsync=off`, a database per
//! test. As root, both run as the `postgres` user (`initdb` refuses root).
//!
//! Where no PostgreSQL server binaries exist, [`PgCluster::shared`] says so
//! and tests skip; with `TIDEMARK_REQUIRE_POSTGRES=1` they fail instead.
//! A watchdog stops the cluster when the test process ends, so none is left
//! behind.

use anyhow::Context;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Where the server binaries are: `TIDEMARK_PG_BIN`, or Debian's PostgreSQL 15.
pub fn bin_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("TIDEMARK_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"));
    (dir.join("initdb").exists() && dir.join("postgres").exists()).then_some(dir)
}

/// Whether a missing PostgreSQL must fail the run.
pub fn required() -> bool {
    std::env::var("TIDEMARK_REQUIRE_POSTGRES").is_ok_and(|v| v == "1")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn as_postgres(bin: &Path, tool: &str) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(bin.join(tool));
        c
    } else {
        Command::new(bin.join(tool))
    }
}

/// A running cluster.
pub struct PgCluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    child: Mutex<Option<Child>>,
    next_db: AtomicU32,
}

impl PgCluster {
    /// The cluster of this test process, started on first use; `None` (after
    /// printing that the test is skipped) where PostgreSQL is not installed,
    /// unless it is required.
    pub fn shared(test: &str) -> Option<&'static PgCluster> {
        static CLUSTER: OnceLock<Option<PgCluster>> = OnceLock::new();
        let c = CLUSTER.get_or_init(|| {
            bin_dir()
                .map(|bin| PgCluster::start(&bin).expect("starting a temporary PostgreSQL cluster"))
        });
        if c.is_none() {
            assert!(
                !required(),
                "{test}: TIDEMARK_REQUIRE_POSTGRES=1 but no PostgreSQL server binaries were found (install the 'postgresql' package, or set TIDEMARK_PG_BIN)"
            );
            eprintln!("{test}: skipped: no PostgreSQL server binaries (install 'postgresql' or set TIDEMARK_PG_BIN)");
        }
        c.as_ref()
    }

    /// Starts a cluster in a new temporary folder.
    pub fn start(bin: &Path) -> anyhow::Result<PgCluster> {
        let dir = std::env::temp_dir().join(format!(
            "tidemark-pg-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir)?;
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()?
                .success();
            anyhow::ensure!(ok, "cannot give {} to the postgres user", dir.display());
        }
        let data = dir.join("data");
        let out = as_postgres(bin, "initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .context("running initdb")?;
        anyhow::ensure!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let cluster = PgCluster {
            bin: bin.to_owned(),
            dir,
            port,
            child: Mutex::new(None),
            next_db: AtomicU32::new(0),
        };
        cluster.run_server()?;
        cluster.watchdog()?;
        Ok(cluster)
    }

    fn run_server(&self) -> anyhow::Result<()> {
        let data = self.dir.join("data");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("postgres.log"))?;
        let child = as_postgres(&self.bin, "postgres")
            .arg("-D")
            .arg(&data)
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(&self.dir)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-c", "max_connections=300", "-c", "shared_buffers=128MB"])
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .context("starting postgres")?;
        *self.child.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "postgres did not become ready; see {}",
                self.dir.join("postgres.log").display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the cluster when this test process ends, however it ends.
    fn watchdog(&self) -> anyhow::Result<()> {
        let as_pg = if is_root() {
            "setpriv --reuid=postgres --regid=postgres --init-groups -- "
        } else {
            ""
        };
        let pg_ctl = self.bin.join("pg_ctl");
        let data = self.dir.join("data");
        crate::process::after_exit(
            &format!(r#"{as_pg}"$1" stop -D "$2" -m immediate >/dev/null 2>&1; rm -rf -- "$3""#),
            &[pg_ctl.as_os_str(), data.as_os_str(), self.dir.as_os_str()],
        )
        .context("starting the cluster's watchdog")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A new, empty database; returns its URL.
    pub fn database(&self, prefix: &str) -> anyhow::Result<String> {
        let n = self.next_db.fetch_add(1, Ordering::SeqCst);
        let name = format!(
            "{}_{n}",
            prefix.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        );
        let out = Command::new(self.bin.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                &name,
            ])
            .output()
            .context("running createdb")?;
        anyhow::ensure!(
            out.status.success(),
            "createdb {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(self.url(&name))
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// `pg_ctl stop -m immediate`: PostgreSQL dies as in a crash.
    pub fn stop_immediate(&self) -> anyhow::Result<()> {
        let ok = as_postgres(&self.bin, "pg_ctl")
            .arg("stop")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate"])
            .stdout(Stdio::null())
            .status()?
            .success();
        anyhow::ensure!(ok, "pg_ctl stop failed");
        if let Some(mut c) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = c.wait();
        }
        Ok(())
    }

    /// Pauses (SIGSTOP) or resumes (SIGCONT) PostgreSQL and every process
    /// it started: connections stay open and answer nothing, as behind a
    /// network partition.
    pub fn freeze(&self, frozen: bool) -> anyhow::Result<()> {
        let postmaster = self
            .child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|c| c.id())
            .context("PostgreSQL is not running")?;
        let mut pids = vec![postmaster.to_string()];
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // "pid (comm) state ppid ...": comm may hold spaces, not ") ".
            let ppid = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.split(' ').nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(postmaster) {
                pids.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        let ok = Command::new("kill")
            .arg(if frozen { "-STOP" } else { "-CONT" })
            .args(&pids)
            .status()?
            .success();
        anyhow::ensure!(ok, "kill failed");
        Ok(())
    }

    /// Starts the stopped cluster again on the same port.
    pub fn restart(&self) -> anyhow::Result<()> {
        self.run_server()
    }
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}
