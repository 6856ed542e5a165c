//! `tidemark bench push`: time from submitting an order to its arrival on
//! N watch streams. Each stream plays a service server: it registers
//! interest in the keys (a read with `Tidemark-Subscriber`), then listens.

use super::stats;
use clap::Args;
use futures::StreamExt;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tidemark_api::{DbClient, WatchEvent};
use tidemark_testkit::orders::upsert;

#[derive(Debug, Args, Clone)]
pub struct PushArgs {
    /// URL of the DB server.
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    pub db: String,
    /// Watch streams (service servers) to push to.
    #[arg(long, default_value_t = 2)]
    pub subscribers: usize,
    /// Orders to submit, one per request, one after another.
    #[arg(long, default_value_t = 2000)]
    pub orders: u64,
    #[command(flatten)]
    pub common: super::Common,
}

pub async fn run(args: PushArgs) -> anyhow::Result<()> {
    let h = measure(&args.db, args.subscribers, args.orders).await?;
    let p = stats::percentiles(&h);
    if args.common.json {
        println!(
            "{}",
            serde_json::json!({"scenario": "push", "subscribers": args.subscribers, "orders": args.orders, "latency": p})
        );
    } else {
        println!(
            "push latency, order submitted -> arrival on each of {} watch streams ({} orders): p50 {} ms, p99 {} ms, p999 {} ms",
            args.subscribers, args.orders, p["p50_ms"], p["p99_ms"], p["p999_ms"]
        );
    }
    Ok(())
}

/// Submits `orders` single orders one after another and records, for each,
/// the time until it arrived on every one of `subscribers` watch streams.
pub async fn measure(
    db: &str,
    subscribers: usize,
    orders: u64,
) -> anyhow::Result<hdrhistogram::Histogram<u64>> {
    let args = PushArgs {
        db: db.to_owned(),
        subscribers,
        orders,
        common: super::Common { json: false },
    };
    let client = DbClient::new(&args.db);
    let run_id = format!("{:06x}", rand::random::<u32>() & 0xffffff);
    let keys: Vec<String> = (0..64).map(|i| format!("push-{run_id}-{i}")).collect();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<(usize, u64, Instant)>();
    let mut ready = Vec::new();
    for s in 0..args.subscribers {
        let name = format!("bench-push-{run_id}-{s}");
        for k in &keys {
            client.get_record("subscriber", k, Some(&name)).await?;
        }
        let stream = client.watch(&name, None, false).await?;
        let (rtx, rrx) = tokio::sync::oneshot::channel();
        ready.push(rrx);
        let done_tx = done_tx.clone();
        tokio::spawn(async move {
            tokio::pin!(stream);
            let mut rtx = Some(rtx);
            while let Some(Ok(ev)) = stream.next().await {
                match WatchEvent::decode(&ev.event, &ev.data) {
                    Ok(Some(WatchEvent::Hello(_))) => {
                        if let Some(r) = rtx.take() {
                            let _ = r.send(());
                        }
                    }
                    Ok(Some(WatchEvent::Update(a))) => {
                        if let Some(v) = a.version {
                            let _ = done_tx.send((s, v.seq, Instant::now()));
                        }
                    }
                    _ => {}
                }
            }
        });
    }
    for r in ready {
        r.await
            .map_err(|_| anyhow::anyhow!("a watch stream closed before it opened"))?;
    }
    let source = format!("bench-push-{run_id}");
    let mut h = stats::histogram();
    let mut pending: HashMap<u64, (Instant, usize)> = HashMap::new();
    for i in 0..args.orders {
        let order = upsert(
            &source,
            i + 1,
            keys[(i % keys.len() as u64) as usize].clone(),
            serde_json::json!({"credit_limit": i})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        let t0 = Instant::now();
        let resp = client.post_orders(&[order]).await?;
        let seq = resp.results[0].version.map(|v| v.seq).unwrap_or(0);
        pending.insert(seq, (t0, 0));
        // Collect arrivals for this order before sending the next one.
        let deadline = Instant::now() + Duration::from_secs(5);
        while pending
            .get(&seq)
            .is_some_and(|(_, n)| *n < args.subscribers)
        {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, done_rx.recv()).await {
                Ok(Some((_, s, at))) => {
                    if let Some((t0, n)) = pending.get_mut(&s) {
                        stats::record(&mut h, at - *t0);
                        *n += 1;
                    }
                }
                _ => {
                    anyhow::bail!("order seq {seq} did not arrive on every watch stream within 5 s")
                }
            }
        }
        pending.remove(&seq);
    }
    Ok(h)
}
