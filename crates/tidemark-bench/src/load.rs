//! `tidemark bench load`: bulk-load records through the orders API.

use super::key_of;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::time::Instant;
use tidemark_api::{DbClient, Fields, Order};
use tidemark_testkit::orders::upsert;

#[derive(Debug, Args, Clone)]
pub struct LoadArgs {
    /// URL of the DB server.
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    pub db: String,
    /// Records to write (keys 0..N).
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Orders per batch.
    #[arg(long, default_value_t = 1000)]
    pub batch: u64,
    /// Concurrent writers (batches still commit one at a time).
    #[arg(long, default_value_t = 2)]
    pub writers: u64,
    /// OpS source name prefix; writer W numbers its orders as source PREFIX-W.
    #[arg(long, default_value = "bench-load")]
    pub source: String,
    #[command(flatten)]
    pub common: super::Common,
}

/// The fields of benchmark record `i`.
pub fn fields_of(i: u64) -> Fields {
    let plan = ["basic", "gold", "platinum"][(i % 3) as usize];
    serde_json::json!({
        "plan": plan,
        "status": "active",
        "services": {"voice": true, "sms": i.is_multiple_of(2)},
        "roaming": i.is_multiple_of(5),
        "credit_limit": (i % 100) as i64 * 1000,
    })
    .as_object()
    .cloned()
    .unwrap_or_default()
}

/// Fills `store` with records `0..records` (fields [`fields_of`]), as orders
/// `1..=records` of `source` applied in-process in batches of 10,000: the
/// fast way every benchmark builds its store (no HTTP).
pub async fn fill<S: tidemark_store::Store + ?Sized>(
    store: &S,
    records: u64,
    source: &str,
) -> anyhow::Result<()> {
    let mut i = 0u64;
    while i < records {
        let hi = (i + 10_000).min(records);
        let orders: Vec<Order> = (i..hi)
            .map(|k| upsert(source, k + 1, key_of(k), fields_of(k)))
            .collect();
        store.apply(orders).await?;
        i = hi;
    }
    Ok(())
}

pub async fn run(args: LoadArgs) -> anyhow::Result<()> {
    let client = DbClient::new(&args.db);
    let marks: std::collections::BTreeMap<String, u64> = client.get_json("/v1/sources").await?;
    let batches = args.records.div_ceil(args.batch);
    let bar = ProgressBar::new(args.records);
    bar.set_style(
        ProgressStyle::with_template("loading [{bar:40}] {pos}/{len} ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    // Orders of one source must arrive in seq order, so each writer numbers
    // its own source; batches of different writers overlap (one parses while
    // another commits).
    let writers = args.writers.max(1);
    for w in 0..writers {
        let (client, bar, args) = (client.clone(), bar.clone(), args.clone());
        let source = format!("{}-{w}", args.source);
        let mut seq = marks.get(&source).copied().unwrap_or(0);
        tasks.push(tokio::spawn(async move {
            let mut b = w;
            while b < batches {
                let lo = b * args.batch;
                let hi = ((b + 1) * args.batch).min(args.records);
                let orders: Vec<Order> = (lo..hi)
                    .map(|i| {
                        seq += 1;
                        upsert(&source, seq, key_of(i), fields_of(i))
                    })
                    .collect();
                tidemark_ops::submit::send_with_retry(&client, &orders).await?;
                bar.inc(hi - lo);
                b += writers;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let rate = args.records as f64 / secs;
    if args.common.json {
        println!(
            "{}",
            serde_json::json!({"scenario": "load", "records": args.records, "batch": args.batch, "seconds": secs, "orders_per_sec": rate})
        );
    } else {
        println!(
            "loaded {} records in batches of {} in {secs:.2}s: {rate:.0} orders/s",
            args.records, args.batch
        );
    }
    Ok(())
}
