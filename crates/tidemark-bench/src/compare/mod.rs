//! `tidemark bench compare`: Tidemark side by side with Redis and
//! PostgreSQL on the same machine, in the same run.
//!
//! Every peer is started here on loopback and loaded with the same data;
//! every scenario runs each target with the same connection count, key
//! distribution and duration, interleaved in rounds (target order rotates)
//! to cancel machine drift. The result is a table of ratios
//! (Tidemark ÷ peer), each the median of the per-round ratios with their
//! spread, optionally JSON and a PNG chart.
//!
//! Pinned (`--pin`, the default with at least two cores): every server
//! process (Tidemark, Redis, PostgreSQL and its backends, the HTTP ceilings)
//! runs on the first allowed core, and this process, the load generator, on
//! the others, so each figure is per server core and no server is slowed by
//! its own client. The CPU the servers used during each run is measured, so
//! the table shows whether the server core was the limit.
//!
//! Targets: `tidemark-db` (embedded engine), `tidemark-db-pg` (the DB server
//! on the PostgreSQL started here), `tidemark-service` (cache hits),
//! `redis`, `postgres` (primary-key SELECT), `ceiling` (`bench
//! ceiling-server`: a trivial axum handler, the HTTP ceiling of Tidemark's
//! stack) and `raw-ceiling` (`bench ceiling-server --raw`: one event loop
//! with no runtime or HTTP library, about the least an HTTP server does
//! per read on this kernel; its ratio to Redis shows how far a goal
//! against Redis is within reach of HTTP reads at all).
//!
//! - `peers`: starting Redis and a temporary PostgreSQL cluster.
//! - `driver`: the one load loop all targets share.
//! - `redis`: a minimal RESP client. `pg`: the PostgreSQL statements.
//! - `chart`: the PNG chart.

mod chart;
pub(crate) mod driver;
pub(crate) mod peers;
mod pg;
mod redis;

use super::http1::Conn;
use super::wire::{self, Wire};
use super::{key_of, load::fields_of};
use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use driver::{drive, Keys, Measured, Op};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Instant;
use tidemark_testkit::{affinity, Program};

#[derive(Debug, Args, Clone)]
pub struct CompareArgs {
    /// Records loaded into every target (10000000 for the large run).
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Connections per target.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Seconds per scenario and target, split over the rounds.
    #[arg(long, default_value_t = 8.0)]
    pub duration: f64,
    /// Rounds that interleave the targets (ratios: median and spread of
    /// the per-round ratios).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Pin every server to the first allowed core and the load generator to
    /// the others (the default where at least two cores are allowed).
    #[arg(long, conflicts_with = "no_pin")]
    pub pin: bool,
    /// Let servers and load generator share every core.
    #[arg(long)]
    pub no_pin: bool,
    /// Key distribution: uniform or zipf.
    #[arg(long, default_value = "uniform")]
    pub distribution: String,
    /// Hot keys for the cache-hit scenario.
    #[arg(long, default_value_t = 100_000)]
    pub hot: u64,
    /// Only these scenarios (comma-separated: reads,cache,write1,write1000,mixed,push).
    /// Targets can be left out with --skip.
    #[arg(long)]
    pub only: Option<String>,
    /// Leave out these targets (comma-separated, e.g. tidemark-db-pg).
    #[arg(long)]
    pub skip: Option<String>,
    /// PostgreSQL server binaries.
    #[arg(long, default_value = "/usr/lib/postgresql/15/bin")]
    pub pg_bin: PathBuf,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
    /// Draw the throughput chart as PNG here.
    #[arg(long)]
    pub png: Option<PathBuf>,
}

type OpFuture<'a> = Pin<Box<dyn Future<Output = anyhow::Result<u64>> + Send + 'a>>;

/// `GET /v1/records/subscriber/{key}` over a raw keep-alive connection.
struct HttpGet {
    wire: Wire,
    host: String,
}

impl HttpGet {
    async fn open(url: &str) -> anyhow::Result<Self> {
        let host = super::http1::authority(url)?;
        Ok(Self {
            wire: Wire::connect(&host).await?,
            host,
        })
    }
}

impl Op for HttpGet {
    fn run(&mut self, i: u64, _: &mut SmallRng) -> OpFuture<'_> {
        Box::pin(async move {
            let path = format!(
                "/v1/records/subscriber/{}",
                tidemark_api::client::encode_path(&key_of(i))
            );
            let s = self.wire.http(&wire::http_get(&self.host, &path)).await?;
            anyhow::ensure!(s == 200 || s == 404, "GET {path}: status {s}");
            Ok(1)
        })
    }
}

struct HttpOrders {
    conn: Conn,
    source: String,
    seq: u64,
    batch: u64,
    records: u64,
}

impl Op for HttpOrders {
    fn run(&mut self, i: u64, rng: &mut SmallRng) -> OpFuture<'_> {
        let limit: i64 = rng.gen_range(0..100_000);
        Box::pin(async move {
            let mut orders = Vec::with_capacity(self.batch as usize);
            for j in 0..self.batch {
                self.seq += 1;
                orders.push(json!({"source": self.source, "seq": self.seq, "table": "subscriber",
                    "key": key_of((i + j) % self.records), "op": "upsert", "fields": {"credit_limit": limit}}));
            }
            let body = Bytes::from(serde_json::to_vec(&json!({"orders": orders}))?);
            let (s, b) = self.conn.post_json("/v1/orders", body).await?;
            anyhow::ensure!(
                s == 200,
                "POST /v1/orders: {s} {}",
                String::from_utf8_lossy(&b)
            );
            Ok(self.batch)
        })
    }
}

struct RedisGet {
    wire: Wire,
}

impl Op for RedisGet {
    fn run(&mut self, i: u64, _: &mut SmallRng) -> OpFuture<'_> {
        Box::pin(async move {
            self.wire.resp_bulk(&wire::resp_get(&key_of(i))).await?;
            Ok(1)
        })
    }
}

fn redis_value(i: u64) -> Vec<u8> {
    serde_json::to_vec(
        &json!({"table": "subscriber", "key": key_of(i), "found": true, "fields": fields_of(i),
        "version": {"epoch": 1, "seq": i + 1}, "recovering": false}),
    )
    .unwrap_or_default()
}

struct RedisSet {
    r: redis::Redis,
    batch: u64,
    records: u64,
}

impl Op for RedisSet {
    fn run(&mut self, i: u64, _: &mut SmallRng) -> OpFuture<'_> {
        Box::pin(async move {
            let items: Vec<(String, Vec<u8>)> = (0..self.batch)
                .map(|j| (i + j) % self.records)
                .map(|k| (key_of(k), redis_value(k)))
                .collect();
            if self.batch == 1 {
                self.r
                    .cmd(&[b"SET", items[0].0.as_bytes(), &items[0].1])
                    .await?;
            } else {
                let cmds: Vec<Vec<&[u8]>> = items
                    .iter()
                    .map(|(k, v)| vec![&b"SET"[..], k.as_bytes(), v.as_slice()])
                    .collect();
                self.r.pipeline(&cmds).await?;
            }
            Ok(self.batch)
        })
    }
}

struct PgGet {
    c: tokio_postgres::Client,
    stmt: tokio_postgres::Statement,
}

impl Op for PgGet {
    fn run(&mut self, i: u64, _: &mut SmallRng) -> OpFuture<'_> {
        Box::pin(async move {
            self.c.query_opt(&self.stmt, &[&key_of(i)]).await?;
            Ok(1)
        })
    }
}

struct PgUpsert {
    c: tokio_postgres::Client,
    one: tokio_postgres::Statement,
    many: tokio_postgres::Statement,
    batch: u64,
    records: u64,
}

impl Op for PgUpsert {
    fn run(&mut self, i: u64, rng: &mut SmallRng) -> OpFuture<'_> {
        let limit: i64 = rng.gen_range(0..100_000);
        Box::pin(async move {
            if self.batch == 1 {
                self.c.execute(&self.one, &[&key_of(i), &limit]).await?;
            } else {
                let keys: Vec<String> = (0..self.batch)
                    .map(|j| key_of((i + j) % self.records))
                    .collect();
                let limits: Vec<i64> = vec![limit; keys.len()];
                self.c.execute(&self.many, &[&keys, &limits]).await?;
            }
            Ok(self.batch)
        })
    }
}

/// 90 % reads, 10 % single writes.
struct Mixed {
    read: Box<dyn Op>,
    write: Box<dyn Op>,
}

impl Op for Mixed {
    fn run(&mut self, i: u64, rng: &mut SmallRng) -> OpFuture<'_> {
        if rng.gen_range(0..10) == 0 {
            self.write.run(i, rng)
        } else {
            self.read.run(i, rng)
        }
    }
}

struct Env {
    db: String,
    db_pg: Option<String>,
    svc: String,
    ceiling: String,
    raw_ceiling: String,
    redis: String,
    pg_port: u16,
    records: u64,
    run_id: String,
}

impl Env {
    async fn ops(
        &self,
        target: &str,
        scenario: &str,
        n: usize,
    ) -> anyhow::Result<Vec<Box<dyn Op>>> {
        let mut out: Vec<Box<dyn Op>> = Vec::with_capacity(n);
        for c in 0..n {
            out.push(self.op(target, scenario, c).await?);
        }
        Ok(out)
    }

    async fn op(&self, target: &str, scenario: &str, c: usize) -> anyhow::Result<Box<dyn Op>> {
        let batch = if scenario == "write1000" { 1000 } else { 1 };
        let source = format!("cmp-{}-{target}-{scenario}-{c}", self.run_id);
        let db = match target {
            "tidemark-db-pg" => self
                .db_pg
                .as_deref()
                .context("tidemark-db-pg was skipped")?,
            _ => &self.db,
        };
        Ok(match (target, scenario) {
            ("tidemark-db" | "tidemark-db-pg", "reads") => Box::new(HttpGet::open(db).await?),
            ("tidemark-service", "cache") => Box::new(HttpGet::open(&self.svc).await?),
            ("ceiling", "reads" | "cache") => Box::new(HttpGet::open(&self.ceiling).await?),
            ("raw-ceiling", "reads" | "cache") => Box::new(HttpGet::open(&self.raw_ceiling).await?),
            ("tidemark-db" | "tidemark-db-pg", "write1" | "write1000") => Box::new(HttpOrders {
                conn: Conn::open(db).await?,
                source,
                seq: 0,
                batch,
                records: self.records,
            }),
            ("tidemark-db" | "tidemark-db-pg", "mixed") => Box::new(Mixed {
                read: Box::new(HttpGet::open(db).await?),
                write: Box::new(HttpOrders {
                    conn: Conn::open(db).await?,
                    source,
                    seq: 0,
                    batch: 1,
                    records: self.records,
                }),
            }),
            ("redis", "reads" | "cache") => Box::new(RedisGet {
                wire: Wire::connect(&self.redis).await?,
            }),
            ("redis", "write1" | "write1000") => Box::new(RedisSet {
                r: redis::Redis::connect(&self.redis).await?,
                batch,
                records: self.records,
            }),
            ("redis", "mixed") => Box::new(Mixed {
                read: Box::new(RedisGet {
                    wire: Wire::connect(&self.redis).await?,
                }),
                write: Box::new(RedisSet {
                    r: redis::Redis::connect(&self.redis).await?,
                    batch: 1,
                    records: self.records,
                }),
            }),
            ("postgres", "reads") => {
                let c = pg::connect(self.pg_port).await?;
                let stmt = c.prepare(&pg::select()?).await?;
                Box::new(PgGet { c, stmt })
            }
            ("postgres", "write1" | "write1000") => Box::new(self.pg_upsert(batch).await?),
            ("postgres", "mixed") => {
                let c = pg::connect(self.pg_port).await?;
                let stmt = c.prepare(&pg::select()?).await?;
                Box::new(Mixed {
                    read: Box::new(PgGet { c, stmt }),
                    write: Box::new(self.pg_upsert(1).await?),
                })
            }
            (t, s) => anyhow::bail!("no operation for target {t} in scenario {s}"),
        })
    }

    async fn pg_upsert(&self, batch: u64) -> anyhow::Result<PgUpsert> {
        let c = pg::connect(self.pg_port).await?;
        let one = c.prepare(pg::UPSERT).await?;
        let many = c.prepare(pg::UPSERT_MANY).await?;
        Ok(PgUpsert {
            c,
            one,
            many,
            batch,
            records: self.records,
        })
    }
}

/// (scenario, title, targets: Tidemark's first, then the peers)
const SCENARIOS: &[(&str, &str, &[&str])] = &[
    (
        "reads",
        "point reads",
        &[
            "tidemark-db",
            "tidemark-db-pg",
            "redis",
            "postgres",
            "ceiling",
            "raw-ceiling",
        ],
    ),
    (
        "cache",
        "cache-hit reads",
        &["tidemark-service", "redis", "ceiling", "raw-ceiling"],
    ),
    (
        "write1",
        "single durable writes",
        &["tidemark-db", "tidemark-db-pg", "redis", "postgres"],
    ),
    (
        "write1000",
        "batched writes (1000)",
        &["tidemark-db", "tidemark-db-pg", "redis", "postgres"],
    ),
    (
        "mixed",
        "mixed 90% reads / 10% writes",
        &["tidemark-db", "tidemark-db-pg", "redis", "postgres"],
    ),
];

fn is_tidemark(target: &str) -> bool {
    target.starts_with("tidemark")
}

/// Where servers and load run.
#[derive(Debug, Clone)]
pub(crate) struct Placement {
    /// `None`: not pinned.
    pub server: Option<Vec<usize>>,
    pub load: Vec<usize>,
}

impl Placement {
    fn choose(args: &CompareArgs) -> anyhow::Result<Self> {
        Self::new(args.pin, args.no_pin)
    }

    /// Servers on the first allowed core and load on the others, unless
    /// `no_pin` or (without `pin`) fewer than two cores are allowed.
    pub(crate) fn new(pin: bool, no_pin: bool) -> anyhow::Result<Self> {
        let cpus = affinity::allowed();
        if no_pin || (cpus.len() < 2 && !pin) {
            return Ok(Placement {
                server: None,
                load: cpus,
            });
        }
        anyhow::ensure!(
            cpus.len() >= 2,
            "--pin needs at least 2 allowed cores (this process may use {:?}); run with --no-pin",
            cpus
        );
        Ok(Placement {
            server: Some(cpus[..1].to_vec()),
            load: cpus[1..].to_vec(),
        })
    }

    pub(crate) fn describe(&self) -> String {
        match &self.server {
            Some(s) => format!(
                "pinned: every server process on CPU {s:?}, the load generator on CPU {:?} (sched_setaffinity)",
                self.load
            ),
            None => format!(
                "not pinned: servers and the load generator share CPUs {:?}",
                self.load
            ),
        }
    }
}

/// One target's runs in one scenario.
struct Runs {
    total: Measured,
    /// Per round: items per second, and the server CPU busy share.
    rounds: Vec<(f64, f64)>,
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .unwrap_or(0);
    json!({"cpu": cpu, "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), "memory_gib": mem / 1024 / 1024})
}

pub async fn run(args: CompareArgs) -> anyhow::Result<()> {
    peers::check(&args.pg_bin)?;
    let place = Placement::choose(&args)?;
    if place.server.is_some() {
        // This process is the load generator; every thread it starts later
        // inherits the set, and its children are re-pinned before exec.
        affinity::pin_self(&place.load).context("pinning the load generator")?;
    }
    let server_cpus = place.server.as_deref();
    eprintln!("{}", place.describe());
    let tmp = tempfile::Builder::new()
        .prefix("tidemark-compare-")
        .tempdir()?;
    let dir = tmp.path();
    let keys = match args.distribution.as_str() {
        "uniform" => Keys::Uniform(args.records),
        "zipf" => Keys::Zipf(args.records),
        other => anyhow::bail!("--distribution must be uniform or zipf, not {other}"),
    };
    let hot = Keys::Uniform(args.hot.min(args.records));
    let list = |o: &Option<String>| -> Option<Vec<String>> {
        o.as_ref()
            .map(|s| s.split(',').map(|x| x.trim().to_owned()).collect())
    };
    let only = list(&args.only);
    let skip = list(&args.skip).unwrap_or_default();
    let wanted = |s: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == s));
    let skipped = |t: &str| skip.iter().any(|x| x == t);

    eprintln!("starting peers in {}", dir.display());
    let data = dir.join("tidemark-data");
    let tidemark = Program::current_exe()?.pinned(place.server.clone());
    let db = tidemark.start(
        "tidemark-db",
        dir,
        &["server", "--data-dir", data.to_str().unwrap_or("")],
        &[],
        "127.0.0.1:0",
    )?;
    db.wait_ok("/readyz").await?;
    let svc = tidemark.start(
        "tidemark-service",
        dir,
        &[
            "service",
            "--db",
            &db.url,
            "--id",
            "cmp-svc",
            "--policy",
            "latest-only",
            "--cache-capacity",
            &(args.hot * 2).to_string(),
        ],
        &[],
        "127.0.0.1:0",
    )?;
    svc.wait_ok("/readyz").await?;
    // The two HTTP ceilings: axum, and the raw event loop (`--raw`).
    let records = args.records.to_string();
    let start_ceiling = |name: &str, raw: bool| {
        let mut a = vec!["bench", "ceiling-server", "--records", &records];
        a.extend(raw.then_some("--raw"));
        tidemark.start(name, dir, &a, &[], "127.0.0.1:0")
    };
    let ceiling = start_ceiling("ceiling", false)?;
    let raw_ceiling = start_ceiling("raw-ceiling", true)?;
    ceiling.wait_ok("/readyz").await?;
    raw_ceiling.wait_ok("/readyz").await?;
    let redis_proc = peers::redis(dir, server_cpus).await?;
    let (pg_proc, pg_port) = peers::postgres(dir, &args.pg_bin, server_cpus).await?;
    let db_pg = if skipped("tidemark-db-pg") {
        None
    } else {
        let url = format!("postgres://postgres@127.0.0.1:{pg_port}/postgres");
        let p = tidemark.start(
            "tidemark-db-pg",
            dir,
            &[
                "server",
                "--store",
                "postgres",
                "--database-url",
                &url,
                "--data-dir",
                dir.join("tidemark-pg-data").to_str().unwrap_or(""),
            ],
            &[],
            "127.0.0.1:0",
        )?;
        p.wait_ok("/readyz").await?;
        Some(p)
    };

    eprintln!("loading {} records into each target", args.records);
    let mut dbs = vec![db.url.clone()];
    dbs.extend(db_pg.as_ref().map(|p| p.url.clone()));
    for url in dbs {
        super::load::run(super::load::LoadArgs {
            db: url,
            records: args.records,
            batch: 1000,
            writers: 2,
            source: "cmp-load".into(),
            common: super::Common { json: false },
        })
        .await?;
    }
    {
        let mut tasks = Vec::new();
        for w in 0..4u64 {
            let (addr, records) = (redis_proc.addr.clone(), args.records);
            tasks.push(tokio::spawn(async move {
                let mut r = redis::Redis::connect(&addr).await?;
                let mut i = w * 1000;
                while i < records {
                    let items: Vec<(String, Vec<u8>)> = (i..(i + 1000).min(records))
                        .map(|k| (key_of(k), redis_value(k)))
                        .collect();
                    let cmds: Vec<Vec<&[u8]>> = items
                        .iter()
                        .map(|(k, v)| vec![&b"SET"[..], k.as_bytes(), v.as_slice()])
                        .collect();
                    r.pipeline(&cmds).await?;
                    i += 4000;
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
    }
    pg::load(&pg::connect(pg_port).await?, args.records).await?;
    if wanted("cache") {
        eprintln!(
            "warming the service server's cache with {} hot keys",
            args.hot
        );
        // Every hot key once, so the cache-hit runs see hits only (random
        // draws left a quarter of them cold, and later rounds warmer).
        warm(&svc.url, args.hot.min(args.records), args.connections).await?;
    }
    if wanted("reads") {
        // Point reads are measured warm: every key once through each DB
        // server's read cache.
        eprintln!("warming the DB servers' read caches");
        warm(&db.url, args.records, args.connections).await?;
        if let Some(p) = &db_pg {
            warm(&p.url, args.records, args.connections).await?;
        }
    }

    let env = Env {
        db: db.url.clone(),
        db_pg: db_pg.as_ref().map(|p| p.url.clone()),
        svc: svc.url.clone(),
        ceiling: ceiling.url.clone(),
        raw_ceiling: raw_ceiling.url.clone(),
        redis: redis_proc.addr.clone(),
        pg_port,
        records: args.records,
        run_id: format!("{:06x}", rand::random::<u32>() & 0xffffff),
    };
    // The server-side processes of each target, whose CPU time is measured.
    let pids = |target: &str| -> Vec<u32> {
        match target {
            "tidemark-db" => vec![db.pid],
            "tidemark-db-pg" => db_pg.iter().map(|p| p.pid).chain([pg_proc.pid]).collect(),
            "tidemark-service" => vec![svc.pid],
            "ceiling" => vec![ceiling.pid],
            "raw-ceiling" => vec![raw_ceiling.pid],
            "redis" => vec![redis_proc.pid],
            "postgres" => vec![pg_proc.pid],
            _ => Vec::new(),
        }
    };
    let server_cpu = |target: &str| pids(target).into_iter().map(peers::tree_cpu).sum::<f64>();
    let mut results: Vec<(String, String, Runs)> = Vec::new();
    let mut cache_misses = 0u64;
    let per_round = args.duration / args.rounds.max(1) as f64;
    for round in 0..args.rounds.max(1) {
        for (scenario, title, targets) in SCENARIOS {
            if !wanted(scenario) {
                continue;
            }
            let targets: Vec<&str> = targets.iter().copied().filter(|t| !skipped(t)).collect();
            let n = targets.len();
            for k in 0..n {
                let target = targets[(k + round) % n];
                let ops = env.ops(target, scenario, args.connections).await?;
                let misses0 = if target == "tidemark-service" {
                    service_misses(&svc.url).await
                } else {
                    0
                };
                let (cpu0, t0) = (server_cpu(target), Instant::now());
                let m = drive(
                    ops,
                    if *scenario == "cache" { hot } else { keys },
                    per_round,
                )
                .await?;
                let busy = (server_cpu(target) - cpu0) / t0.elapsed().as_secs_f64();
                if target == "tidemark-service" {
                    cache_misses += service_misses(&svc.url).await - misses0;
                }
                eprintln!(
                    "round {}: {title}: {target}: {:.0}/s, server CPU {:.0} %",
                    round + 1,
                    m.per_sec(),
                    busy * 100.0
                );
                let rate = m.per_sec();
                match results
                    .iter_mut()
                    .find(|(s, t, _)| s == scenario && t == target)
                {
                    Some((_, _, acc)) => {
                        acc.total.add(m);
                        acc.rounds.push((rate, busy));
                    }
                    None => results.push((
                        scenario.to_string(),
                        target.to_string(),
                        Runs {
                            total: m,
                            rounds: vec![(rate, busy)],
                        },
                    )),
                }
            }
        }
    }
    let mut push = None;
    if wanted("push") {
        eprintln!("push latency to 2 watch streams");
        push = Some(super::push::measure(&db.url, 2, 2000).await?);
    }

    let memory = json!({
        "tidemark-db": peers::peak_rss(db.pid), "tidemark-service": peers::peak_rss(svc.pid),
        "tidemark-db-pg": db_pg.as_ref().map(|p| peers::peak_rss(p.pid)).unwrap_or(0),
        "ceiling": peers::peak_rss(ceiling.pid), "raw-ceiling": peers::peak_rss(raw_ceiling.pid),
        "redis": peers::peak_rss(redis_proc.pid), "postgres": peers::peak_rss(pg_proc.pid),
    });
    if wanted("cache") {
        eprintln!("cache misses during the cache-hit runs: {cache_misses}");
    }
    report(&args, &place, &results, push.as_ref(), &memory)?;
    drop((svc, db, db_pg, ceiling, raw_ceiling, redis_proc, pg_proc));
    Ok(())
}

/// One target against another over the same rounds: the median of the
/// per-round ratios and their spread, by throughput (`r`) and per server
/// CPU-second (`c`).
struct Ratio {
    r: f64,
    lo: f64,
    hi: f64,
    c: f64,
    clo: f64,
    chi: f64,
    per_round: Vec<f64>,
    per_cpu: Vec<f64>,
}

impl Ratio {
    fn of(a: &Runs, b: &Runs) -> Self {
        let eff = |x: &(f64, f64)| x.0 / x.1.max(1e-9);
        let per_round: Vec<f64> = a
            .rounds
            .iter()
            .zip(&b.rounds)
            .map(|(x, y)| x.0 / y.0.max(1e-9))
            .collect();
        let per_cpu: Vec<f64> = a
            .rounds
            .iter()
            .zip(&b.rounds)
            .map(|(x, y)| eff(x) / eff(y).max(1e-9))
            .collect();
        let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        Self {
            r: median(per_round.clone()),
            lo: min(&per_round),
            hi: max(&per_round),
            c: median(per_cpu.clone()),
            clo: min(&per_cpu),
            chi: max(&per_cpu),
            per_round,
            per_cpu,
        }
    }

    /// `= 0.89 [0.80–0.91]   per CPU-s 0.88 [0.78–0.91]`
    fn shown(&self) -> String {
        format!(
            "= {:>5.2} [{:.2}–{:.2}]   per CPU-s {:>5.2} [{:.2}–{:.2}]",
            self.r, self.lo, self.hi, self.c, self.clo, self.chi
        )
    }

    /// `of` ÷ `peer` in the JSON results (`of` is under "tidemark").
    fn json(&self, scenario: &str, of: &str, peer: &str, goal: Option<f64>) -> serde_json::Value {
        json!({"scenario": scenario, "tidemark": of, "peer": peer, "ratio": self.r,
            "per_round": self.per_round, "per_cpu_second": self.c,
            "per_cpu_second_per_round": self.per_cpu, "goal": goal})
    }
}

/// Reads keys `0..n` once each over `connections` connections.
pub(crate) async fn warm(url: &str, n: u64, connections: usize) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for c in 0..connections as u64 {
        let (url, step) = (url.to_owned(), connections as u64);
        tasks.push(tokio::spawn(async move {
            let mut op = HttpGet::open(&url).await?;
            let mut rng = SmallRng::seed_from_u64(c);
            let mut i = c;
            while i < n {
                op.run(i, &mut rng).await?;
                i += step;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// The service server's cache-miss counter, from its `/metrics`.
async fn service_misses(url: &str) -> u64 {
    let text = match reqwest::get(format!("{url}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => return 0,
    };
    text.lines()
        .find_map(|l| l.strip_prefix("tidemark_service_cache_misses_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

fn report(
    args: &CompareArgs,
    place: &Placement,
    results: &[(String, String, Runs)],
    push: Option<&hdrhistogram::Histogram<u64>>,
    memory: &serde_json::Value,
) -> anyhow::Result<()> {
    let ms = |m: &Measured, q: f64| m.hist.value_at_quantile(q) as f64 / 1000.0;
    println!("\n{}", place.describe());
    println!(
        "{} records, {} connections per target, {} rounds of {:.1} s per target (interleaved), {} keys",
        args.records,
        args.connections,
        args.rounds.max(1),
        args.duration / args.rounds.max(1) as f64,
        args.distribution
    );
    println!(
        "\n{:<30} {:<17} {:>12} {:>9} {:>12} {:>8} {:>8} {:>8} {:>10}",
        "scenario",
        "target",
        "per second",
        "srv CPU",
        "per CPU-s",
        "p50 ms",
        "p99 ms",
        "p999 ms",
        "peak RSS"
    );
    let mut rows = Vec::new();
    for (scenario, target, runs) in results {
        let m = &runs.total;
        let title = SCENARIOS
            .iter()
            .find(|s| s.0 == scenario)
            .map(|s| s.1)
            .unwrap_or("");
        let rss = memory[target.as_str()].as_u64().unwrap_or(0);
        let busy = median(runs.rounds.iter().map(|r| r.1).collect());
        let per_cpu = median(runs.rounds.iter().map(|r| r.0 / r.1.max(1e-9)).collect());
        println!(
            "{:<30} {:<17} {:>12.0} {:>7.0} % {:>12.0} {:>8.3} {:>8.3} {:>8.3} {:>8} MB",
            title,
            target,
            m.per_sec(),
            busy * 100.0,
            per_cpu,
            ms(m, 0.5),
            ms(m, 0.99),
            ms(m, 0.999),
            rss / 1_000_000
        );
        rows.push(json!({"scenario": scenario, "title": title, "target": target, "per_sec": m.per_sec(),
            "rounds_per_sec": runs.rounds.iter().map(|r| r.0).collect::<Vec<_>>(),
            "server_cpu": runs.rounds.iter().map(|r| r.1).collect::<Vec<_>>(),
            "p50_ms": ms(m, 0.5), "p99_ms": ms(m, 0.99), "p999_ms": ms(m, 0.999), "peak_rss_bytes": rss}));
    }
    if place.server.is_some() {
        println!("(srv CPU: the share of the one server core the target's processes used; under 100 %, the load\n generator or other work on the machine was the limit, and 'per CPU-s' (items per CPU-second\n of the server processes) is the fairer per-core figure)");
    }
    if let Some(h) = push {
        println!(
            "{:<30} {:<17} {:>12} {:>9} {:>8.3} {:>8.3} {:>8.3}   (redis has no equivalent here)",
            "push to 2 service servers",
            "tidemark-db",
            "-",
            "",
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.value_at_quantile(0.999) as f64 / 1000.0
        );
    }
    let runs_of = |s: &str, t: &str| results.iter().find(|r| r.0 == s && r.1 == t).map(|r| &r.2);
    println!("\nratios (Tidemark ÷ peer; median of the per-round ratios [min–max]; goals judged on throughput):");
    let mut ratios = Vec::new();
    for (scenario, title, targets) in SCENARIOS {
        for ours in targets.iter().filter(|t| is_tidemark(t)) {
            let Some(a) = runs_of(scenario, ours) else {
                continue;
            };
            for peer in targets.iter().filter(|t| !is_tidemark(t)) {
                let Some(b) = runs_of(scenario, peer) else {
                    continue;
                };
                let ratio = Ratio::of(a, b);
                let goal = match (*scenario, *ours, *peer) {
                    ("reads", "tidemark-db", "redis") => Some(1.0),
                    ("cache", "tidemark-service", "redis") => Some(1.2),
                    // The 3× goal against PostgreSQL is for cold reads; these
                    // are warm, so none is judged here.
                    _ => None,
                };
                println!(
                    "  {title:<30} {ours:<16} ÷ {peer:<11} {}{}",
                    ratio.shown(),
                    goal.map(|g| format!(
                        "   (goal ≥ {g}: {})",
                        if ratio.r >= g { "met" } else { "not met" }
                    ))
                    .unwrap_or_default()
                );
                ratios.push(ratio.json(scenario, ours, peer, goal));
            }
        }
    }
    // What the protocol leaves: the raw ceiling against Redis, the most any
    // HTTP server reached here.
    for (scenario, title, _) in SCENARIOS {
        if let (Some(a), Some(b)) = (runs_of(scenario, "raw-ceiling"), runs_of(scenario, "redis")) {
            let ratio = Ratio::of(a, b);
            println!(
                "  {title:<30} {:<16} ÷ {:<11} {}   (the most an HTTP server did here)",
                "raw-ceiling",
                "redis",
                ratio.shown()
            );
            ratios.push(ratio.json(scenario, "raw-ceiling", "redis", None));
        }
    }
    for (scenario, target) in [("reads", "tidemark-db"), ("cache", "tidemark-service")] {
        if let Some(runs) = runs_of(scenario, target) {
            let p99 = ms(&runs.total, 0.99);
            println!(
                "  p99 of {target} {scenario} = {p99:.3} ms   (goal < 1 ms: {})",
                if p99 < 1.0 { "met" } else { "not met" }
            );
        }
    }
    let doc = json!({
        "machine": machine(),
        "placement": {"pinned": place.server.is_some(), "server_cpus": place.server, "load_cpus": place.load},
        "params": {"records": args.records, "connections": args.connections, "duration_s": args.duration,
                   "rounds": args.rounds, "distribution": args.distribution, "hot": args.hot},
        "results": rows, "ratios": ratios,
        "push_p99_ms": push.map(|h| h.value_at_quantile(0.99) as f64 / 1000.0),
    });
    if let Some(path) = &args.json_out {
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)?;
        eprintln!("results written to {}", path.display());
    }
    if let Some(path) = &args.png {
        match chart::draw(path, &doc) {
            Ok(()) => eprintln!("chart written to {}", path.display()),
            Err(e) => eprintln!("no chart: {e:#}"),
        }
    }
    Ok(())
}
