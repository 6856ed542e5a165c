//! Tidemark's load generators and benchmarks, run as `tidemark bench …`.
//!
//! The `tidemark` program holds the command line and calls [`run`]; the
//! benchmarks start real `tidemark` processes from the running program
//! (`std::env::current_exe()`), so they are only meaningful from there.
//!
//! # Layout
//! - `http1`: a minimal keep-alive HTTP/1 client on hyper, so the load
//!   generator spends as little CPU as possible per request.
//! - `load`: bulk-loads records through `POST /v1/orders` (orders/s).
//! - `reads`: point reads at N connections against a DB or service server.
//! - `push`: latency from order submission to arrival on watch streams.
//! - `recovery`: schedule-list and replay rates, requests per flagged key.
//! - `cache_memory`: the service server's memory per cached record.
//! - `backup`: backup/verify/restore MB/s against cp and sqlite3 .backup.
//! - `schema_publish`: one column published on a big table under steady
//!   reads and orders; p99 during the publish against without it (issue 12).
//! - `failover`: kill -9 of the primary DB-server instance, time to the next acknowledged order.
//! - `compare`: side by side with Redis and PostgreSQL, pinned to cores.
//! - `ceiling`: the HTTP ceiling `compare` measures against (a trivial
//!   axum handler serving pre-rendered JSON).
//! - `wire`: raw HTTP/1 and RESP request loops for `compare`'s load.
//! - `stats`: latency histograms and the printed report.

mod backup;
mod cache_memory;
mod ceiling;
mod compare;
mod failover;
mod http1;
mod load;
mod push;
mod reads;
mod recovery;
mod schema_publish;
mod security;
mod stats;
mod wire;

use clap::{Args, Subcommand};

/// `tidemark bench …`: one subcommand per benchmark.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Load N subscriber records through POST /v1/orders and report orders/s.
    Load(load::LoadArgs),
    /// Point reads against a DB server or a service server; reports reads/s and latency.
    Reads(reads::ReadsArgs),
    /// Push latency: submit single orders, time their arrival on N watch streams.
    Push(push::PushArgs),
    /// Recovery figures: flagging, replay, DB requests per flagged key.
    Recovery(recovery::RecoveryArgs),
    /// Side by side with Redis and PostgreSQL, started here on loopback; prints ratios.
    Compare(compare::CompareArgs),
    /// Backup, verify and restore MB/s against cp and sqlite3 .backup.
    Backup(backup::BackupArgs),
    /// HA failover: kill -9 the primary instance N times; time to the first order acknowledged by the new one.
    Failover(failover::FailoverArgs),
    /// The HTTP ceiling `compare` starts: pre-rendered JSON from a HashMap.
    CeilingServer(ceiling::CeilingArgs),
    /// Publish one new column on an N-record table under steady reads and orders; p99 against without a publish.
    SchemaPublish(schema_publish::SchemaPublishArgs),
    /// Read throughput with a reader token, and with a token over https, against neither.
    Security(security::SecurityArgs),
    /// The service server's memory per cached record, against the record's JSON answer.
    CacheMemory(cache_memory::CacheMemoryArgs),
}

/// A `/proc/PID/status` memory line (`VmRSS:`, `VmHWM:`) in kB; 0 if
/// unreadable.
pub(crate) fn rss_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0)
}

/// The key of record `i` in benchmark data: a phone-number-like terminal ID.
pub fn key_of(i: u64) -> String {
    format!("+8130{i:08}")
}

/// The PostgreSQL database a benchmark runs on: `given`, or a new one
/// named after `name` in a temporary cluster started here, which lives as
/// long as the returned handle.
pub fn postgres_database(
    given: Option<&str>,
    name: &str,
) -> anyhow::Result<(String, Option<tidemark_testkit::postgres::PgCluster>)> {
    use tidemark_testkit::postgres::{bin_dir, PgCluster};
    if let Some(url) = given {
        return Ok((url.to_owned(), None));
    }
    let bin = bin_dir().ok_or_else(|| {
        anyhow::anyhow!("no PostgreSQL server binaries found (install 'postgresql' or set TIDEMARK_PG_BIN), or pass --database-url")
    })?;
    let cluster = PgCluster::start(&bin)?;
    Ok((cluster.database(name)?, Some(cluster)))
}

/// Flags every benchmark takes.
#[derive(Debug, Args, Clone)]
pub struct Common {
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Runs one benchmark and prints its figures.
pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Load(a) => load::run(a).await,
        BenchCommand::Reads(a) => reads::run(a).await,
        BenchCommand::Push(a) => push::run(a).await,
        BenchCommand::Recovery(a) => recovery::run(a).await,
        BenchCommand::Compare(a) => compare::run(a).await,
        BenchCommand::Backup(a) => backup::run(a).await,
        BenchCommand::Failover(a) => failover::run(a).await,
        BenchCommand::CeilingServer(a) => ceiling::run(a).await,
        BenchCommand::Security(a) => security::run(a).await,
        BenchCommand::SchemaPublish(a) => schema_publish::run(a).await,
        BenchCommand::CacheMemory(a) => cache_memory::run(a).await,
    }
}
