//! `tidemark bench compare`: Tidemark side by side with Redis and
//! PostgreSQL on the same machine, in the same run.
//!
//! Every peer is started here on loopback and loaded with the same data;
//! every scenario runs each target with the same connection count, key
//! distribution and duration, interleaved in rounds (target order rotates)
//! to cancel machine drift. The result is a table of ratios
//! (Tidemark ÷ peer), optionally JSON and a PNG chart.
//!
//! - `peers`: starting Redis and a temporary PostgreSQL cluster.
//! - `driver`: the one load loop all targets share.
//! - `redis`: a minimal RESP client. `pg`: the PostgreSQL statements.
//! - `chart`: the PNG chart.

mod chart;
mod driver;
mod peers;
mod pg;
mod redis;

use super::http1::Conn;
use super::{key_of, load::fields_of};
use bytes::Bytes;
use clap::Args;
use driver::{drive, Keys, Measured, Op};
use rand::rngs::SmallRng;
use rand::Rng;
use serde_json::json;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use tidemark_testkit::Program;

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
    /// Rounds that interleave the targets.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Key distribution: uniform or zipf.
    #[arg(long, default_value = "uniform")]
    pub distribution: String,
    /// Hot keys for the cache-hit scenario.
    #[arg(long, default_value_t = 100_000)]
    pub hot: u64,
    /// Only these scenarios (comma-separated: reads,cache,write1,write1000,mixed,push).
    #[arg(long)]
    pub only: Option<String>,
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

struct HttpGet {
    conn: Conn,
}

impl Op for HttpGet {
    fn run(&mut self, i: u64, _: &mut SmallRng) -> OpFuture<'_> {
        Box::pin(async move {
            let path = format!(
                "/v1/records/subscriber/{}",
                tidemark_api::client::encode_path(&key_of(i))
            );
            let (s, _) = self.conn.get(&path, &[]).await?;
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
    r: redis::Redis,
}

impl Op for RedisGet {
    fn run(&mut self, i: u64, _: &mut SmallRng) -> OpFuture<'_> {
        Box::pin(async move {
            self.r.cmd(&[b"GET", key_of(i).as_bytes()]).await?;
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
    svc: String,
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
        let source = format!("cmp-{}-{scenario}-{c}", self.run_id);
        Ok(match (target, scenario) {
            ("tidemark-db", "reads") => Box::new(HttpGet {
                conn: Conn::open(&self.db).await?,
            }),
            ("tidemark-service", "cache") => Box::new(HttpGet {
                conn: Conn::open(&self.svc).await?,
            }),
            ("tidemark-db", "write1" | "write1000") => Box::new(HttpOrders {
                conn: Conn::open(&self.db).await?,
                source,
                seq: 0,
                batch,
                records: self.records,
            }),
            ("tidemark-db", "mixed") => Box::new(Mixed {
                read: Box::new(HttpGet {
                    conn: Conn::open(&self.db).await?,
                }),
                write: Box::new(HttpOrders {
                    conn: Conn::open(&self.db).await?,
                    source,
                    seq: 0,
                    batch: 1,
                    records: self.records,
                }),
            }),
            ("redis", "reads" | "cache") => Box::new(RedisGet {
                r: redis::Redis::connect(&self.redis).await?,
            }),
            ("redis", "write1" | "write1000") => Box::new(RedisSet {
                r: redis::Redis::connect(&self.redis).await?,
                batch,
                records: self.records,
            }),
            ("redis", "mixed") => Box::new(Mixed {
                read: Box::new(RedisGet {
                    r: redis::Redis::connect(&self.redis).await?,
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

/// (scenario, title, targets: first is Tidemark, then peers)
const SCENARIOS: &[(&str, &str, &[&str])] = &[
    (
        "reads",
        "point reads",
        &["tidemark-db", "redis", "postgres"],
    ),
    ("cache", "cache-hit reads", &["tidemark-service", "redis"]),
    (
        "write1",
        "single durable writes",
        &["tidemark-db", "redis", "postgres"],
    ),
    (
        "write1000",
        "batched writes (1000)",
        &["tidemark-db", "redis", "postgres"],
    ),
    (
        "mixed",
        "mixed 90% reads / 10% writes",
        &["tidemark-db", "redis", "postgres"],
    ),
];

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
    let only: Option<Vec<String>> = args
        .only
        .as_ref()
        .map(|s| s.split(',').map(|x| x.trim().to_owned()).collect());
    let wanted = |s: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == s));

    eprintln!("starting peers in {}", dir.display());
    let data = dir.join("tidemark-data");
    let tidemark = Program::current_exe()?;
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
    let redis_proc = peers::redis(dir).await?;
    let (pg_proc, pg_port) = peers::postgres(dir, &args.pg_bin).await?;

    eprintln!("loading {} records into each target", args.records);
    super::load::run(super::load::LoadArgs {
        db: db.url.clone(),
        records: args.records,
        batch: 1000,
        writers: 2,
        source: "cmp-load".into(),
        common: super::Common { json: false },
    })
    .await?;
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
        let ops: Vec<Box<dyn Op>> = {
            let mut v: Vec<Box<dyn Op>> = Vec::new();
            for _ in 0..args.connections {
                v.push(Box::new(HttpGet {
                    conn: Conn::open(&svc.url).await?,
                }));
            }
            v
        };
        drive(ops, hot, (args.hot as f64 / 20_000.0).clamp(2.0, 30.0)).await?;
    }

    let env = Env {
        db: db.url.clone(),
        svc: svc.url.clone(),
        redis: redis_proc.addr.clone(),
        pg_port,
        records: args.records,
        run_id: format!("{:06x}", rand::random::<u32>() & 0xffffff),
    };
    let mut results: Vec<(String, String, Measured)> = Vec::new();
    let per_round = args.duration / args.rounds.max(1) as f64;
    for round in 0..args.rounds.max(1) {
        for (scenario, title, targets) in SCENARIOS {
            if !wanted(scenario) {
                continue;
            }
            let n = targets.len();
            for k in 0..n {
                let target = targets[(k + round) % n];
                eprintln!("round {}: {title}: {target}", round + 1);
                let ops = env.ops(target, scenario, args.connections).await?;
                let m = drive(
                    ops,
                    if *scenario == "cache" { hot } else { keys },
                    per_round,
                )
                .await?;
                match results
                    .iter_mut()
                    .find(|(s, t, _)| s == scenario && t == target)
                {
                    Some((_, _, acc)) => acc.add(m),
                    None => results.push((scenario.to_string(), target.to_string(), m)),
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
        "redis": peers::peak_rss(redis_proc.pid), "postgres": peers::peak_rss(pg_proc.pid),
    });
    report(&args, &results, push.as_ref(), &memory)?;
    drop((svc, db, redis_proc, pg_proc));
    Ok(())
}

fn report(
    args: &CompareArgs,
    results: &[(String, String, Measured)],
    push: Option<&hdrhistogram::Histogram<u64>>,
    memory: &serde_json::Value,
) -> anyhow::Result<()> {
    let ms = |m: &Measured, q: f64| m.hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "\n{:<30} {:<17} {:>12} {:>8} {:>8} {:>8} {:>10}",
        "scenario", "target", "per second", "p50 ms", "p99 ms", "p999 ms", "peak RSS"
    );
    let mut rows = Vec::new();
    for (scenario, target, m) in results {
        let title = SCENARIOS
            .iter()
            .find(|s| s.0 == scenario)
            .map(|s| s.1)
            .unwrap_or("");
        let rss = memory[target.as_str()].as_u64().unwrap_or(0);
        println!(
            "{:<30} {:<17} {:>12.0} {:>8.3} {:>8.3} {:>8.3} {:>8} MB",
            title,
            target,
            m.per_sec(),
            ms(m, 0.5),
            ms(m, 0.99),
            ms(m, 0.999),
            rss / 1_000_000
        );
        rows.push(json!({"scenario": scenario, "title": title, "target": target, "per_sec": m.per_sec(),
            "p50_ms": ms(m, 0.5), "p99_ms": ms(m, 0.99), "p999_ms": ms(m, 0.999), "peak_rss_bytes": rss}));
    }
    if let Some(h) = push {
        println!(
            "{:<30} {:<17} {:>12} {:>8.3} {:>8.3} {:>8.3}   (redis has no equivalent here)",
            "push to 2 service servers",
            "tidemark-db",
            "-",
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.value_at_quantile(0.999) as f64 / 1000.0
        );
    }
    let rate = |s: &str, t: &str| {
        results
            .iter()
            .find(|r| r.0 == s && r.1 == t)
            .map(|r| r.2.per_sec())
    };
    println!("\nratios (Tidemark ÷ peer):");
    let mut ratios = Vec::new();
    for (scenario, title, targets) in SCENARIOS {
        let Some(ours) = rate(scenario, targets[0]) else {
            continue;
        };
        for peer in &targets[1..] {
            if let Some(theirs) = rate(scenario, peer) {
                let goal = match (*scenario, *peer) {
                    ("reads", "redis") => Some(1.0),
                    ("cache", "redis") => Some(1.2),
                    ("reads", "postgres") => Some(3.0),
                    _ => None,
                };
                let r = ours / theirs;
                println!(
                    "  {title:<30} {} ÷ {peer:<9} = {r:>5.2}{}",
                    targets[0],
                    goal.map(|g| format!(
                        "   (goal ≥ {g}: {})",
                        if r >= g { "met" } else { "not met" }
                    ))
                    .unwrap_or_default()
                );
                ratios.push(json!({"scenario": scenario, "tidemark": targets[0], "peer": peer, "ratio": r, "goal": goal}));
            }
        }
    }
    if let Some(m) = results
        .iter()
        .find(|r| r.0 == "reads" && r.1 == "tidemark-db")
    {
        let p99 = ms(&m.2, 0.99);
        println!(
            "  p99 of tidemark-db point reads = {p99:.3} ms   (goal < 1 ms: {})",
            if p99 < 1.0 { "met" } else { "not met" }
        );
    }
    let doc = json!({
        "machine": machine(),
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
