//! `tidemark bench reads`: point reads at N connections.

use super::http1::Conn;
use super::key_of;
use super::stats;
use clap::Args;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use std::time::{Duration, Instant};

#[derive(Debug, Args, Clone)]
pub struct ReadsArgs {
    /// URL of a DB server or a service server.
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    pub target: String,
    /// Keys are drawn from 0..N (as written by `bench load`).
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Seconds to run (after a 1-second warm-up).
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Key distribution: uniform or zipf.
    #[arg(long, default_value = "uniform")]
    pub distribution: String,
    /// Draw keys only from the first N (e.g. to read only cached keys).
    #[arg(long)]
    pub hot: Option<u64>,
    /// Send Tidemark-Subscriber: NAME (registers interest on a DB server).
    #[arg(long)]
    pub subscriber: Option<String>,
    #[command(flatten)]
    pub common: super::Common,
}

pub async fn run(args: ReadsArgs) -> anyhow::Result<()> {
    let space = args.hot.unwrap_or(args.records).max(1);
    let zipf = match args.distribution.as_str() {
        "uniform" => None,
        "zipf" => Some(Zipf::new(space, 1.0).map_err(|e| anyhow::anyhow!("zipf: {e:?}"))?),
        other => anyhow::bail!("--distribution must be 'uniform' or 'zipf', not '{other}'"),
    };
    let warmup = Duration::from_secs(1);
    let started = Instant::now();
    let measure_from = started + warmup;
    let end = measure_from + Duration::from_secs(args.duration);
    let mut tasks = Vec::new();
    for c in 0..args.connections {
        let args = args.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&args.target).await?;
            let mut rng = rand::rngs::SmallRng::seed_from_u64(c as u64 + 1);
            let mut h = stats::histogram();
            let (mut ok, mut not_found, mut other) = (0u64, 0u64, 0u64);
            let sub = args.subscriber.clone().unwrap_or_default();
            let headers: Vec<(&str, &str)> = if args.subscriber.is_some() {
                vec![("tidemark-subscriber", sub.as_str())]
            } else {
                vec![]
            };
            loop {
                let i = match &zipf {
                    Some(z) => (z.sample(&mut rng) as u64).saturating_sub(1),
                    None => rng.gen_range(0..space),
                };
                let path = format!(
                    "/v1/records/subscriber/{}",
                    tidemark_api::client::encode_path(&key_of(i))
                );
                let t0 = Instant::now();
                let (status, _) = conn.get(&path, &headers).await?;
                let now = Instant::now();
                if now >= end {
                    break;
                }
                if now >= measure_from {
                    stats::record(&mut h, now - t0);
                    match status {
                        200 => ok += 1,
                        404 => not_found += 1,
                        _ => other += 1,
                    }
                }
            }
            anyhow::Ok((h, ok, not_found, other))
        }));
    }
    let mut h = stats::histogram();
    let (mut ok, mut nf, mut other) = (0, 0, 0);
    for t in tasks {
        let (th, o, n, x) = t.await??;
        h.add(th)?;
        ok += o;
        nf += n;
        other += x;
    }
    let total = ok + nf + other;
    let rate = total as f64 / args.duration as f64;
    let p = stats::percentiles(&h);
    if args.common.json {
        println!(
            "{}",
            serde_json::json!({"scenario": "reads", "target": args.target, "connections": args.connections,
                "distribution": args.distribution, "reads_per_sec": rate, "ok": ok, "not_found": nf, "errors": other, "latency": p})
        );
    } else {
        println!(
            "{} reads/s at {} connections ({}): p50 {} ms, p99 {} ms, p999 {} ms; {ok} ok, {nf} not found, {other} other",
            rate.round(),
            args.connections,
            args.distribution,
            p["p50_ms"],
            p["p99_ms"],
            p["p999_ms"]
        );
    }
    if other > 0 {
        anyhow::bail!("{other} reads got an unexpected status");
    }
    Ok(())
}
