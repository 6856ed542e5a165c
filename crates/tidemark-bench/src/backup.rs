//! `tidemark bench backup`: backup, verify and restore throughput against
//! `cp` of the database file and `sqlite3 .backup`, on a store of N records
//! built in a scratch folder.
//!
//! Figures are MB/s of the live database's size (MB = 10^6 bytes). The
//! files are fresh, so reads mostly hit the page cache; every write path
//! fsyncs as it does in production (cp and sqlite3 do not).

use clap::Args;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tidemark_backup::restore::RestoreOptions;
use tidemark_store::{SqliteStore, Store};

#[derive(Debug, Args, Clone)]
pub struct BackupArgs {
    /// Records in the store.
    #[arg(long, default_value_t = 200_000)]
    pub records: u64,
    /// Scratch folder [default: a temporary folder, removed afterwards].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Use the store already in `--dir` (left by an earlier run) instead of
    /// building one; its restores leave it as it was (same records).
    #[arg(long, requires = "dir")]
    pub reuse: bool,
    #[command(flatten)]
    pub common: super::Common,
}

struct Row {
    name: &'static str,
    secs: f64,
    out_bytes: Option<u64>,
}

fn dir_size(p: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(p) else {
        return std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                dir_size(&p)
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            }
        })
        .sum()
}

fn timed_cmd(program: &str, args: &[&str]) -> anyhow::Result<Option<f64>> {
    let started = Instant::now();
    match std::process::Command::new(program).args(args).status() {
        Ok(st) if st.success() => Ok(Some(started.elapsed().as_secs_f64())),
        Ok(st) => anyhow::bail!("{program} {args:?} failed: {st}"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub async fn run(a: BackupArgs) -> anyhow::Result<()> {
    let scratch = tempfile::Builder::new()
        .prefix("tidemark-bench-backup-")
        .tempdir()?;
    let root = a.dir.clone().unwrap_or_else(|| scratch.path().to_owned());
    std::fs::create_dir_all(&root)?;
    let data = root.join("data");
    let started = Instant::now();
    let built = tidemark_store::layout::existing_db_dir(&data)?.is_some();
    if !(a.reuse && built) {
        anyhow::ensure!(
            !built,
            "{} already holds a store; give --reuse to measure it, or another --dir",
            data.display()
        );
        let store = SqliteStore::open(&data, "bench")?;
        super::load::fill(&store, a.records, "bench").await?;
        store.close().await?;
    }
    // Scratch output of an earlier run.
    for old in [
        "cp.db",
        "sqlite3-backup.db",
        "backups",
        "restored",
        "safety",
    ] {
        let p = root.join(old);
        let _ = std::fs::remove_file(&p);
        let _ = std::fs::remove_dir_all(&p);
    }
    let db_file = tidemark_store::layout::existing_db_dir(&data)?
        .map(|d| d.join(tidemark_store::sqlite::DB_FILE))
        .ok_or_else(|| anyhow::anyhow!("no database in {}", data.display()))?;
    let db_bytes = std::fs::metadata(&db_file)?.len();
    eprintln!(
        "built {} records ({:.1} MB) in {:.1} s",
        a.records,
        db_bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );

    let mut rows = Vec::new();
    let cp_out = root.join("cp.db");
    if let Some(secs) = timed_cmd(
        "cp",
        &[
            db_file.to_str().unwrap_or_default(),
            cp_out.to_str().unwrap_or_default(),
        ],
    )? {
        rows.push(Row {
            name: "cp (database file)",
            secs,
            out_bytes: Some(db_bytes),
        });
    }
    let sq_out = root.join("sqlite3-backup.db");
    let dot = format!(".backup '{}'", sq_out.display());
    match timed_cmd("sqlite3", &[db_file.to_str().unwrap_or_default(), &dot])? {
        Some(secs) => rows.push(Row {
            name: "sqlite3 .backup",
            secs,
            out_bytes: Some(dir_size(&sq_out)),
        }),
        None => eprintln!("sqlite3 is not installed; skipping its row"),
    }

    let bk = root.join("backups/b1");
    let t = Instant::now();
    let m = tidemark_backup::create::offline(&data, &bk, None, &|_| {}).await?;
    rows.push(Row {
        name: "tidemark backup create --offline",
        secs: t.elapsed().as_secs_f64(),
        out_bytes: Some(m.total_size()),
    });

    let t = Instant::now();
    tidemark_backup::verify::full(&bk, &|_| {})?;
    rows.push(Row {
        name: "tidemark backup verify",
        secs: t.elapsed().as_secs_f64(),
        out_bytes: None,
    });

    let fresh = root.join("restored");
    let t = Instant::now();
    tidemark_backup::restore::run(
        &RestoreOptions {
            from: bk.clone(),
            data_dir: fresh,
            safety_to: None,
            cleanup: true,
            integrity_check: false,
            min_epoch: 0,
            live_config: None,
        },
        &|_| {},
    )
    .await?;
    rows.push(Row {
        name: "tidemark restore (empty data dir)",
        secs: t.elapsed().as_secs_f64(),
        out_bytes: None,
    });

    let t = Instant::now();
    tidemark_backup::restore::run(
        &RestoreOptions {
            from: bk,
            data_dir: data.clone(),
            safety_to: Some(root.join("safety")),
            cleanup: true,
            integrity_check: false,
            min_epoch: 0,
            live_config: None,
        },
        &|_| {},
    )
    .await?;
    rows.push(Row {
        name: "tidemark restore (with safety backup)",
        secs: t.elapsed().as_secs_f64(),
        out_bytes: None,
    });

    let mbs = |secs: f64| db_bytes as f64 / 1e6 / secs.max(1e-9);
    if a.common.json {
        let out: Vec<_> = rows
            .iter()
            .map(|r| serde_json::json!({"name": r.name, "secs": r.secs, "mb_per_s": mbs(r.secs), "out_bytes": r.out_bytes}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"records": a.records, "db_bytes": db_bytes, "results": out})
        );
    } else {
        println!(
            "store: {} records, database {:.1} MB",
            a.records,
            db_bytes as f64 / 1e6
        );
        println!(
            "{:<40} {:>9} {:>10} {:>12}",
            "operation", "seconds", "MB/s", "output MB"
        );
        for r in &rows {
            println!(
                "{:<40} {:>9.3} {:>10.1} {:>12}",
                r.name,
                r.secs,
                mbs(r.secs),
                r.out_bytes
                    .map(|b| format!("{:.1}", b as f64 / 1e6))
                    .unwrap_or_else(|| "-".into())
            );
        }
    }
    Ok(())
}
