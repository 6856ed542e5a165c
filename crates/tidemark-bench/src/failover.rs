//! `tidemark bench failover`: how long orders stop when the primary dies.
//!
//! Two DB-server instances on one PostgreSQL (a temporary cluster unless
//! `--database-url` names one); one writer sends single-order batches to
//! both instances in turn, each batch resent until acknowledged. Each
//! cycle kills the primary with `kill -9` and measures the time from the
//! kill to the first order acknowledged under the new primary's term, and
//! how many orders were held (sent, not yet answered) meanwhile; then the
//! killed instance is restarted as a standby.

use crate::stats;
use clap::Args;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidemark_testkit::Program;

#[derive(Debug, Args)]
pub struct FailoverArgs {
    /// Kill -9 cycles.
    #[arg(long, default_value_t = 20)]
    pub cycles: u32,
    /// The primary's lease in ms (--lease-ttl-ms of both instances).
    #[arg(long, default_value_t = 1200)]
    pub lease_ttl_ms: u64,
    /// PostgreSQL to use [default: a temporary cluster started here].
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    #[command(flatten)]
    pub common: crate::Common,
}

fn free_addr() -> anyhow::Result<String> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .to_string())
}

async fn role(client: &reqwest::Client, url: &str) -> Option<(String, u64)> {
    let s: serde_json::Value = client
        .get(format!("{url}/v1/state"))
        .timeout(Duration::from_millis(500))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    Some((s["role"].as_str()?.to_owned(), s["term"].as_u64()?))
}

pub async fn run(args: FailoverArgs) -> anyhow::Result<()> {
    let (url, _cluster) = super::postgres_database(args.database_url.as_deref(), "failover")?;
    let dir = tempfile::tempdir()?;
    let tidemark = Program::current_exe()?;
    let ttl = args.lease_ttl_ms.to_string();
    let addrs = [free_addr()?, free_addr()?];
    let start = |i: usize, n: u32| {
        tidemark.start(
            &format!("db{i}-{n}"),
            dir.path(),
            &[
                "server",
                "--store",
                "postgres",
                "--database-url",
                &url,
                "--lease-ttl-ms",
                &ttl,
            ],
            &[],
            &addrs[i],
        )
    };
    let mut procs = vec![start(0, 0)?, start(1, 0)?];
    let urls: Vec<String> = procs.iter().map(|p| p.url.clone()).collect();
    for p in &procs {
        p.wait_ok("/readyz").await?;
    }
    let client = reqwest::Client::new();

    // The writer: acknowledged orders, each with the term of the instance
    // that answered it.
    let acked = Arc::new(AtomicU64::new(0));
    let held = Arc::new(AtomicU64::new(0));
    // The last acknowledgement: when, and the term that committed it.
    let last_ack = Arc::new(parking_lot::Mutex::new((Instant::now(), 0u64)));
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = {
        let (acked, held, last_ack, stop, urls, client) = (
            acked.clone(),
            held.clone(),
            last_ack.clone(),
            stop.clone(),
            urls.clone(),
            client.clone(),
        );
        tokio::spawn(async move {
            let mut seq = 1u64;
            let mut turn = 0usize;
            while !stop.is_cancelled() {
                turn += 1;
                let base = &urls[turn % urls.len()];
                held.fetch_add(1, Ordering::SeqCst);
                let r = client
                    .post(format!("{base}/v1/orders"))
                    .json(&json!({"orders": [{"source": "bench", "seq": seq, "table": "subscriber",
                        "key": crate::key_of(seq % 1000), "op": "upsert", "fields": {"credit_limit": seq}}]}))
                    .timeout(Duration::from_secs(20))
                    .send()
                    .await;
                held.fetch_sub(1, Ordering::SeqCst);
                if let Ok(r) = &r {
                    if r.status().is_success() {
                        let term = r
                            .headers()
                            .get("tidemark-term")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        acked.fetch_add(1, Ordering::SeqCst);
                        *last_ack.lock() = (Instant::now(), term);
                        seq += 1;
                    }
                }
            }
        })
    };

    let mut hist = stats::histogram();
    let mut gaps = Vec::new();
    let mut held_max = Vec::new();
    for cycle in 0..args.cycles {
        // Who is primary now.
        let primary = loop {
            let mut p = None;
            for (i, u) in urls.iter().enumerate() {
                if let Some((r, _)) = role(&client, u).await {
                    if r == "primary" {
                        p = Some(i);
                    }
                }
            }
            if let Some(p) = p {
                break p;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // Orders are flowing.
        let before = acked.load(Ordering::SeqCst);
        while acked.load(Ordering::SeqCst) < before + 20 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let old_term = role(&client, &urls[primary])
            .await
            .map(|r| r.1)
            .unwrap_or(0);
        let killed_at = Instant::now();
        procs[primary].kill9();
        let mut max_held = 0;
        // The first acknowledgement after the kill comes from the new primary.
        loop {
            max_held = max_held.max(held.load(Ordering::SeqCst));
            let (at, term) = *last_ack.lock();
            if at > killed_at && term > old_term {
                break;
            }
            if killed_at.elapsed() > Duration::from_secs(60) {
                anyhow::bail!("no order was acknowledged within 60 s of killing the primary; see the logs in {}", dir.path().display());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let gap = last_ack.lock().0 - killed_at;
        stats::record(&mut hist, gap);
        gaps.push(gap.as_secs_f64() * 1000.0);
        held_max.push(max_held);
        if !args.common.json {
            eprintln!(
                "cycle {:>2}: first order acknowledged {:>6.0} ms after kill -9 of the primary ({} held meanwhile)",
                cycle + 1,
                gap.as_secs_f64() * 1000.0,
                max_held
            );
        }
        procs[primary] = start(primary, cycle + 1)?;
        procs[primary].wait_ok("/readyz").await?;
    }
    stop.cancel();
    let _ = writer.await;
    let p = stats::percentiles(&hist);
    let result = json!({
        "bench": "failover",
        "cycles": args.cycles,
        "lease_ttl_ms": args.lease_ttl_ms,
        "kill_to_first_ack_ms": p,
        "held_max": held_max.iter().max(),
        "acknowledged": acked.load(Ordering::SeqCst),
        "patroni_defaults": "ttl 30 s, loop_wait 10 s: 30-45 s in practice",
    });
    if args.common.json {
        println!("{result}");
    } else {
        println!(
            "failover over {} kill -9 cycles (lease {} ms): kill -> first order acknowledged by the new primary p50 {} ms, p99 {} ms, max {} ms; at most {} orders held meanwhile, none lost (each resent until acknowledged). Patroni's defaults (ttl 30 s, loop_wait 10 s) fail over in 30-45 s.",
            args.cycles,
            args.lease_ttl_ms,
            p["p50_ms"], p["p99_ms"], p["max_ms"],
            held_max.iter().max().copied().unwrap_or(0)
        );
    }
    Ok(())
}
