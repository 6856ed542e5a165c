//! `tidemark bench recovery`: the recovery figures.
//!
//! 1. Generates a store of N records in-process (fast, no HTTP), plus the
//!    "missing" orders for F of its keys, and marks it restored — as
//!    `tidemark restore` would leave it. `--store postgres` does this in
//!    PostgreSQL (`--database-url`, or a temporary cluster started here).
//! 2. Starts a real DB server and a real `latest-only` service server on it.
//! 3. Times the schedule list for F keys (`POST /v1/recovery/schedule`),
//!    then the replay of the F missing orders (`POST /v1/orders`).
//! 4. Meanwhile, S terminal reads wait on the service server; afterwards its
//!    metrics say how many DB requests they cost per flagged key. A naive
//!    client polling the DB server every 10 ms for S other keys shows what
//!    the same wait costs without pushes.

use super::key_of;
use super::load::fields_of;
use clap::Args;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidemark_api::state::{ScheduleChunk, ScheduleEntry};
use tidemark_api::{DbClient, Order};
use tidemark_ops::submit::{send_encoded, EncodedBatch};
use tidemark_store::{PgStore, SqliteStore, Store};
use tidemark_testkit::orders::upsert;
use tidemark_testkit::Program;

/// The engine the benchmark's DB server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    Sqlite,
    Postgres,
}

#[derive(Debug, Args, Clone)]
pub struct RecoveryArgs {
    /// Records in the store.
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Keys changed after the backup (flagged, then replayed).
    #[arg(long, default_value_t = 100_000)]
    pub flag: u64,
    /// Orders per replay request.
    #[arg(long, default_value_t = 10_000)]
    pub batch: u64,
    /// Schedule-list entries per request.
    #[arg(long, default_value_t = 50_000)]
    pub chunk: u64,
    /// Terminal reads that wait on the latest-only service server (and
    /// keys polled naively).
    #[arg(long, default_value_t = 500)]
    pub sample: u64,
    /// Work folder (default: a temporary one, removed afterwards).
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// Measure the schedule list only: no replay, no waiting reads.
    #[arg(long)]
    pub flag_only: bool,
    /// Only generate the store (into `--dir` or `--database-url`), marked
    /// restored, and stop: copies of it serve several `--reuse` runs.
    #[arg(long)]
    pub generate_only: bool,
    /// The store already holds `--records` records, marked restored (a
    /// copy of one made with `--generate-only`): do not generate it.
    #[arg(long, conflicts_with = "generate_only")]
    pub reuse: bool,
    /// The DB server's store.
    #[arg(long, value_enum, default_value_t = Engine::Sqlite)]
    pub store: Engine,
    /// With `--store postgres`: an empty database to use (default: a
    /// temporary cluster started here, `fsync=off`).
    #[arg(long)]
    pub database_url: Option<String>,
    #[command(flatten)]
    pub common: super::Common,
}

pub(crate) fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub async fn run(args: RecoveryArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.flag <= args.records,
        "--flag must not exceed --records"
    );
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_owned());
    std::fs::create_dir_all(&dir)?;
    let data = dir.join("data");
    let source = "bench-gen";

    // 1. The store as a restore leaves it.
    let (url, _cluster) = match args.store {
        Engine::Sqlite => (None, None),
        Engine::Postgres => {
            let (url, cluster) =
                super::postgres_database(args.database_url.as_deref(), "recovery")?;
            (Some(url), cluster)
        }
    };
    let t = Instant::now();
    match &url {
        _ if args.reuse => {}
        None => generate(&SqliteStore::open(&data, "bench")?, &args, source).await?,
        Some(u) => generate(&PgStore::connect(u, "tidemark").await?, &args, source).await?,
    }
    let gen_secs = t.elapsed().as_secs_f64();
    eprintln!("generated {} records in {gen_secs:.1}s", args.records);
    if args.generate_only {
        return Ok(());
    }

    // 2. Real processes.
    let tidemark = Program::current_exe()?;
    let data_dir = data.to_str().unwrap_or("");
    let server_args: Vec<&str> = match &url {
        None => vec!["server", "--data-dir", data_dir],
        Some(u) => vec!["server", "--store", "postgres", "--database-url", u],
    };
    let db = tidemark.start("db", &dir, &server_args, &[], "127.0.0.1:0")?;
    let db_pid = db.pid;
    let db_url = db.url.clone();
    db.wait_ok("/readyz").await?;
    let service_args = [
        "service",
        "--db",
        &db_url,
        "--id",
        "bench-latest",
        "--policy",
        "latest-only",
        "--latest-deadline-ms",
        "600000",
    ];
    let svc = tidemark.start("svc", &dir, &service_args, &[], "127.0.0.1:0")?;
    let svc_url = svc.url.clone();
    svc.wait_ok("/readyz").await?;
    let client = DbClient::new(&db_url);

    // Terminal reads that wait (keys 0..S), and a naive poller (keys S..2S).
    let sample = if args.flag_only {
        0
    } else {
        args.sample.min(args.flag / 2).max(1)
    };
    let mut waiting = Vec::new();
    for k in 0..sample {
        let url = format!(
            "{svc_url}/v1/records/subscriber/{}",
            tidemark_api::client::encode_path(&key_of(k))
        );
        waiting.push(tokio::spawn(async move {
            reqwest::get(url).await.map(|r| r.status().as_u16())
        }));
    }
    let polls = Arc::new(AtomicU64::new(0));
    let mut pollers = Vec::new();
    for k in sample..2 * sample {
        let (client, polls) = (client.clone(), polls.clone());
        pollers.push(tokio::spawn(async move {
            loop {
                polls.fetch_add(1, Ordering::Relaxed);
                match client.get_record("subscriber", &key_of(k), None).await {
                    Ok(r) if !r.answer.recovering => return,
                    _ => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        }));
    }

    // 3a. The schedule list.
    let first = args.records; // the missing orders are seqs records+1 ..= records+flag
    let t = Instant::now();
    let chunk = args.chunk.max(1);
    let chunks = (0..args.flag).step_by(chunk as usize).map(|k| {
        let hi = (k + chunk).min(args.flag);
        ScheduleChunk {
            without_sources: Vec::new(),
            expect_sources: Vec::new(),
            source: source.into(),
            entries: (k..hi)
                .map(|i| ScheduleEntry {
                    table: "subscriber".into(),
                    key: key_of(i),
                    through_seq: first + i + 1,
                })
                .collect(),
            final_chunk: hi == args.flag,
        }
    });
    tidemark_ops::schedule::send_schedule(&client, chunks, |_, _| {}).await?;
    let flag_secs = t.elapsed().as_secs_f64();
    eprintln!("flagged {} keys in {flag_secs:.2}s", args.flag);
    if args.flag_only {
        let result = serde_json::json!({
            "scenario": "recovery-flagging", "store": format!("{:?}", args.store).to_lowercase(),
            "records": args.records, "flagged": args.flag, "generate_seconds": gen_secs,
            "flag_seconds": flag_secs, "flag_keys_per_sec": args.flag as f64 / flag_secs,
            "db_rss_mb": rss_mb(db_pid, "VmRSS:"), "db_peak_rss_mb": rss_mb(db_pid, "VmHWM:"),
        });
        println!("{result}");
        return Ok(());
    }

    // 3b. The replay, as `ops recover` sends it: one batch at a time, the
    // next one encoded while the one before is on its way.
    let t = Instant::now();
    let batch = args.batch.max(1);
    let encoded = |k: u64| {
        let orders: Vec<Order> = (k..(k + batch).min(args.flag))
            .map(|i| {
                let mut f = fields_of(i);
                f.insert("plan".into(), serde_json::json!("replayed"));
                upsert(source, first + i + 1, key_of(i), f)
            })
            .collect();
        EncodedBatch::new(&orders)
    };
    let mut next = (args.flag > 0).then(|| encoded(0)).transpose()?;
    let mut k = 0;
    while let Some(body) = next.take() {
        k += batch;
        let (sent, following) = tokio::join!(send_encoded(&client, &body), async {
            (k < args.flag).then(|| encoded(k)).transpose()
        });
        sent?;
        next = following?;
    }
    let replay_secs = t.elapsed().as_secs_f64();
    let _: serde_json::Value = client
        .post_json("/v1/recovery/complete", &serde_json::json!({}))
        .await?;

    // 4. What the waiting reads cost.
    let mut served = 0;
    for w in waiting {
        if w.await?? == 200 {
            served += 1;
        }
    }
    for p in pollers {
        p.await?;
    }
    let m = reqwest::get(format!("{svc_url}/metrics"))
        .await?
        .text()
        .await?;
    let fetches = metric(&m, "tidemark_service_db_fetches_total");
    let per_key = fetches as f64 / sample as f64;
    let naive = polls.load(Ordering::Relaxed) as f64 / sample as f64;
    let state: serde_json::Value = client.get_json("/v1/recovery").await?;
    let (db_rss, db_peak) = (rss_mb(db_pid, "VmRSS:"), rss_mb(db_pid, "VmHWM:"));
    drop((svc, db));

    let result = serde_json::json!({
        "scenario": "recovery", "store": format!("{:?}", args.store).to_lowercase(),
        "records": args.records, "flagged": args.flag,
        "generate_seconds": gen_secs,
        "flag_seconds": flag_secs, "flag_keys_per_sec": args.flag as f64 / flag_secs,
        "replay_seconds": replay_secs, "replay_orders_per_sec": args.flag as f64 / replay_secs,
        "latest_only_reads": sample, "latest_only_served": served,
        "db_requests_per_flagged_key_push": per_key, "db_requests_per_flagged_key_naive_10ms_polling": naive,
        "final_state": state["state"], "db_rss_mb": db_rss, "db_peak_rss_mb": db_peak,
    });
    if args.common.json {
        println!("{result}");
    } else {
        println!(
            "{:?} store of {} records, {} keys changed after the backup",
            args.store, args.records, args.flag
        );
        println!(
            "  schedule list: {} keys flagged in {flag_secs:.2}s ({:.0} keys/s)",
            args.flag,
            args.flag as f64 / flag_secs
        );
        println!(
            "  replay: {} orders in {replay_secs:.2}s ({:.0} orders/s, batches of {})",
            args.flag,
            args.flag as f64 / replay_secs,
            args.batch
        );
        println!(
            "  latest-only reads of flagged keys: {served}/{sample} served current data; DB requests per key: {per_key:.2} with pushes, {naive:.1} for a client polling every 10 ms"
        );
        println!("  final state: {}", state["state"]);
        println!("  DB server RSS at the end: {db_rss} MB (peak {db_peak} MB)");
    }
    anyhow::ensure!(
        served == sample,
        "{} waiting reads did not get current data",
        sample - served
    );
    Ok(())
}

/// Fills `store` with the benchmark's records, as one source's orders, and
/// marks it restored.
async fn generate(store: &impl Store, args: &RecoveryArgs, source: &str) -> anyhow::Result<()> {
    super::load::fill(store, args.records, source).await?;
    let epoch = store.meta().await?.epoch;
    store.mark_restored(epoch + 1).await?;
    store.close().await?;
    Ok(())
}

/// A `/proc/PID/status` memory line (`VmRSS:`, `VmHWM:`) in MB; 0 if unreadable.
fn rss_mb(pid: u32, field: &str) -> u64 {
    super::rss_kb(pid, field) / 1024
}
