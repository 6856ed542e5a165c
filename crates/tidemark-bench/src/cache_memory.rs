//! `tidemark bench cache-memory`: the service server's memory per cached
//! record, against the size of the record's JSON answer (issue 14: under
//! 2×).
//!
//! 1. Fills a store with N records in-process (or reuses one made with
//!    `--generate-only`).
//! 2. Starts the real DB server and a service server whose cache holds N.
//! 3. Reads every key once through the service server, so each is cached,
//!    and takes the service server's RSS before and after.
//! 4. Reads a sample again (cache hits) for the mean answer size.

use super::compare::warm;
use super::http1::Conn;
use super::key_of;
use super::recovery::metric;
use super::rss_kb;
use clap::Args;
use std::path::PathBuf;
use std::time::Instant;
use tidemark_store::{SqliteStore, Store};
use tidemark_testkit::Program;

#[derive(Debug, Args, Clone)]
pub struct CacheMemoryArgs {
    /// Records in the store, all of them read (and cached) once.
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Connections the cache is filled over.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Answers read again for the mean answer size.
    #[arg(long, default_value_t = 10_000)]
    pub sample: u64,
    /// Work folder (default: a temporary one, removed afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Only generate the store into `--dir` and stop.
    #[arg(long)]
    pub generate_only: bool,
    /// `--dir` already holds a store of `--records` records.
    #[arg(long)]
    pub reuse: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: CacheMemoryArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.records > 0, "--records must be at least 1");
    anyhow::ensure!(
        !(args.reuse || args.generate_only) || args.dir.is_some(),
        "--reuse and --generate-only need --dir"
    );
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_owned());
    std::fs::create_dir_all(&dir)?;
    let data = dir.join("data");
    if !args.reuse {
        let t = Instant::now();
        let store = SqliteStore::open(&data, "bench")?;
        super::load::fill(&store, args.records, "bench-gen").await?;
        store.close().await?;
        eprintln!(
            "generated {} records in {:.1}s",
            args.records,
            t.elapsed().as_secs_f64()
        );
    }
    if args.generate_only {
        return Ok(());
    }

    let tidemark = Program::current_exe()?;
    let data_dir = data.to_str().unwrap_or("");
    let db = tidemark.start(
        "db",
        &dir,
        &["server", "--data-dir", data_dir],
        &[],
        "127.0.0.1:0",
    )?;
    db.wait_ok("/readyz").await?;
    // Room to spare: each of the cache's shards holds capacity / shards,
    // and keys do not fall evenly (a small run needs the most). Shards grow
    // as they fill, so the capacity itself costs no memory.
    let capacity = (args.records + args.records / 4 + 1024).to_string();
    let svc = tidemark.start(
        "svc",
        &dir,
        &[
            "service",
            "--db",
            &db.url,
            "--id",
            "bench-memory",
            "--cache-capacity",
            &capacity,
        ],
        &[],
        "127.0.0.1:0",
    )?;
    svc.wait_ok("/readyz").await?;
    // One read first, so the baseline includes a served request's buffers.
    let mut conn = Conn::open(&svc.url).await?;
    let path = |i: u64| {
        format!(
            "/v1/records/subscriber/{}",
            tidemark_api::client::encode_path(&key_of(i))
        )
    };
    conn.get(&path(0), &[]).await?;
    let before_kb = rss_kb(svc.pid, "VmRSS:");

    let t = Instant::now();
    warm(&svc.url, args.records, args.connections).await?;
    let fill_secs = t.elapsed().as_secs_f64();
    let metrics = reqwest::get(format!("{}/metrics", svc.url))
        .await?
        .text()
        .await?;
    let cached = metric(&metrics, "tidemark_service_cache_entries");
    anyhow::ensure!(
        cached == args.records,
        "the service server holds {cached} records, not {}: the figure would be wrong",
        args.records
    );
    let after_kb = rss_kb(svc.pid, "VmRSS:");
    let peak_kb = rss_kb(svc.pid, "VmHWM:");

    // A new connection: the first one sat idle past the keep-alive limit.
    let mut conn = Conn::open(&svc.url).await?;
    let step = (args.records / args.sample.max(1)).max(1);
    let (mut n, mut bytes) = (0u64, 0u64);
    let mut i = 0;
    while i < args.records {
        let (status, len) = conn.get(&path(i), &[]).await?;
        anyhow::ensure!(status == 200, "GET {}: status {status}", path(i));
        bytes += len as u64;
        n += 1;
        i += step;
    }
    let json_bytes = bytes as f64 / n as f64;
    let per_record = (after_kb.saturating_sub(before_kb) * 1024) as f64 / args.records as f64;
    let ratio = per_record / json_bytes;
    drop((svc, db));

    let result = serde_json::json!({
        "scenario": "cache-memory", "records": args.records, "cached": cached,
        "fill_seconds": fill_secs, "rss_before_kb": before_kb, "rss_after_kb": after_kb,
        "rss_peak_kb": peak_kb, "bytes_per_record": per_record,
        "answer_json_bytes": json_bytes, "ratio_to_json": ratio,
    });
    if args.json {
        println!("{result}");
    } else {
        println!(
            "service server caching {} records (filled in {fill_secs:.1}s over {} connections)",
            args.records, args.connections
        );
        println!(
            "  RSS {:.1} MB before, {:.1} MB after (peak {:.1} MB)",
            before_kb as f64 / 1024.0,
            after_kb as f64 / 1024.0,
            peak_kb as f64 / 1024.0
        );
        println!(
            "  {per_record:.0} bytes per cached record; a record's JSON answer is {json_bytes:.0} bytes: {ratio:.2}× (goal: under 2×)"
        );
    }
    Ok(())
}
