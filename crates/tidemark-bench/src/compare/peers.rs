//! Starting the peers on loopback: Redis (Debian's `redis-server`) and a
//! temporary PostgreSQL cluster (Tidemark itself is started with the test
//! kit's starter). Nothing is installed here: a missing tool is reported
//! with the command that installs it.

use anyhow::Context;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tidemark_testkit::affinity;

/// A process we started; killed on drop.
pub struct Spawned {
    pub child: Child,
    pub pid: u32,
    /// `host:port`.
    pub addr: String,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.pid as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Checks that the peers can be started; says how to install what is missing.
pub fn check(pg_bin: &Path) -> anyhow::Result<()> {
    let mut missing = Vec::new();
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        missing.push("redis-server (apt-get install redis-server)");
    }
    if !pg_bin.join("postgres").exists() || !pg_bin.join("initdb").exists() {
        missing
            .push("PostgreSQL server binaries (apt-get install postgresql, or pass --pg-bin DIR)");
    }
    if !missing.is_empty() {
        anyhow::bail!(
            "bench compare needs {}; it installs nothing by itself",
            missing.join(" and ")
        );
    }
    Ok(())
}

/// Redis with persistence that matches Tidemark's durable acknowledgements:
/// an append-only file synced on every write.
pub async fn redis(dir: &Path, cpus: Option<&[usize]>) -> anyhow::Result<Spawned> {
    let port = free_port()?;
    let rdir = dir.join("redis");
    std::fs::create_dir_all(&rdir)?;
    let mut cmd = Command::new("redis-server");
    if let Some(cpus) = cpus {
        affinity::pin_command(&mut cmd, cpus);
    }
    let child = cmd
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
        ])
        .args([
            "--appendfsync",
            "always",
            "--dir",
            rdir.to_str().unwrap_or("."),
            "--protected-mode",
            "no",
        ])
        .stdout(Stdio::from(std::fs::File::create(dir.join("redis.log"))?))
        .stderr(Stdio::null())
        .spawn()
        .context("starting redis-server")?;
    let s = Spawned {
        pid: child.id(),
        child,
        addr: format!("127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut r) = super::redis::Redis::connect(&s.addr).await {
            if r.cmd(&[b"PING"]).await.is_ok() {
                return Ok(s);
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "redis-server did not start; see redis.log"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn as_postgres(bin: &Path, tool: &str) -> Command {
    // initdb refuses to run as root: run the cluster as the postgres user.
    if unsafe { libc::geteuid() } == 0 {
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

/// A temporary PostgreSQL cluster, durable like Tidemark (fsync on,
/// synchronous commit).
pub async fn postgres(
    dir: &Path,
    bin: &Path,
    cpus: Option<&[usize]>,
) -> anyhow::Result<(Spawned, u16)> {
    let data: PathBuf = dir.join("pg");
    std::fs::create_dir_all(&data)?;
    if unsafe { libc::geteuid() } == 0 {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir)
            .status()?;
        anyhow::ensure!(status.success(), "chown of the PostgreSQL directory failed");
    }
    let out = as_postgres(bin, "initdb")
        .args([
            "-D",
            data.to_str().unwrap_or(""),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ])
        .output()
        .context("running initdb")?;
    anyhow::ensure!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port()?;
    let mut cmd = as_postgres(bin, "postgres");
    if let Some(cpus) = cpus {
        // Every backend is forked from the postmaster and inherits its set.
        affinity::pin_command(&mut cmd, cpus);
    }
    let child = cmd
        .args([
            "-D",
            data.to_str().unwrap_or(""),
            "-p",
            &port.to_string(),
            "-k",
            data.to_str().unwrap_or(""),
        ])
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "shared_buffers=512MB",
            "-c",
            "max_connections=200",
        ])
        .args(["-c", "fsync=on", "-c", "synchronous_commit=on"])
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(
            dir.join("postgres.log"),
        )?))
        .spawn()
        .context("starting postgres")?;
    let s = Spawned {
        pid: child.id(),
        child,
        addr: format!("127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if super::pg::connect(port).await.is_ok() {
            return Ok((s, port));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "postgres did not start; see postgres.log"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// CPU seconds used by a process and its children (live, or reaped).
pub fn tree_cpu(pid: u32) -> f64 {
    let mut total = affinity::cpu_seconds(pid).unwrap_or(0.0);
    for child in tidemark_testkit::process::children_of(pid) {
        total += affinity::cpu_seconds(child).unwrap_or(0.0);
    }
    total
}

/// Peak resident memory (VmHWM) of a process and all its children, in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    hwm(pid)
        + tidemark_testkit::process::children_of(pid)
            .into_iter()
            .map(hwm)
            .sum::<u64>()
}

fn hwm(pid: u32) -> u64 {
    crate::rss_kb(pid, "VmHWM:") * 1024
}
