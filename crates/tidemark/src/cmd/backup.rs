//! `tidemark backup create|verify|list|prune` (B1, B2, B5).

use crate::cli::{
    BackupCommand, BackupCreateArgs, BackupListArgs, BackupPruneArgs, BackupVerifyArgs,
};
use anyhow::Context;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::path::Path;
use tidemark_backup::create::BackupWriter;
use tidemark_backup::{Kind, Manifest};
use tidemark_server::ServerConfig;
use tidemark_store::SnapshotInfo;
use tidemark_telemetry::{say, Said};

pub async fn run(config: ServerConfig, cmd: BackupCommand) -> anyhow::Result<()> {
    match cmd {
        BackupCommand::Create(a) => create(config, a).await,
        BackupCommand::Verify(a) => verify(a),
        BackupCommand::List(a) => list(a),
        BackupCommand::Prune(a) => prune(&a),
    }
}

/// A byte-progress bar on stderr when it is a terminal; hidden otherwise.
pub(super) fn progress_bar(what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg}: {bytes} ({bytes_per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(what.to_owned());
    bar
}

/// The store a backup or restore command was pointed at.
pub(super) enum Pointed<'a> {
    DataDir(&'a std::path::Path),
    Postgres { url: &'a str, schema: &'a str },
}

/// The server configuration an offline or safety backup records (B1, B3):
/// the config file's (`--config`) with the store this command was pointed
/// at. Without `--config` it is what this command sees (defaults and
/// TIDEMARK_SERVER__* variables), not necessarily the server's: a note
/// says so.
pub(super) async fn config_for_backup(
    mut config: ServerConfig,
    pointed: Pointed<'_>,
) -> anyhow::Result<serde_json::Value> {
    match pointed {
        Pointed::DataDir(dir) => {
            config.store = tidemark_server::StoreKind::Sqlite;
            config.data_dir = dir.to_owned();
        }
        Pointed::Postgres { url, schema } => {
            config.store = tidemark_server::StoreKind::Postgres;
            config.database_url = Some(tidemark_server::config::Secret(url.to_owned()));
            config.pg_schema = schema.to_owned();
        }
    }
    Ok(tidemark_server::backup_config::for_backup(&config).await?)
}

/// After a backup that recorded the settings of `config` succeeded: a
/// note if they are not the server's own file. Printed only then, so a
/// failure stays one line.
pub(super) fn note_settings_source(config: &ServerConfig) {
    if config.config_file.is_none() {
        say(Said::Note, "no --config given, so the backup records the settings this command sees (defaults and TIDEMARK_SERVER__* variables), not the server's own config file; give the server's --config FILE to keep it with the backup");
    }
}

/// `12.3 MiB`.
pub(super) fn human(bytes: u64) -> String {
    indicatif::HumanBytes(bytes).to_string()
}

/// Refuses a backup (or safety copy) at `to` inside a data directory:
/// Tidemark would take it for its own files there, or delete it with an
/// old generation.
pub(super) fn outside_data_dirs(to: &std::path::Path, flag: &str) -> anyhow::Result<()> {
    if let Some(dir) = tidemark_store::lock::data_dir_holding(to) {
        anyhow::bail!(
            "{flag} {} is inside the data directory {}, which only Tidemark manages (a backup there is lost with the data it guards); choose a folder outside it",
            to.display(),
            dir.display()
        );
    }
    Ok(())
}

async fn create(config: ServerConfig, a: BackupCreateArgs) -> anyhow::Result<()> {
    outside_data_dirs(&a.to, "--to")?;
    // An offline backup records this command's settings (see below).
    let settings = a.offline.then(|| config.clone());
    let bar = progress_bar("backing up");
    let progress = |n: u64| bar.set_position(n);
    // Without --server or --offline, `[client] server` (or
    // TIDEMARK_CLIENT__SERVER) names the server, as for every client command.
    let server = a.server.clone().or_else(|| {
        (!a.offline)
            .then(|| std::env::var("TIDEMARK_CLIENT__SERVER").ok())
            .flatten()
    });
    let made = match (&server, a.offline) {
        (Some(url), false) => online(url, &a.to, &progress).await,
        (None, true) => {
            // --database-url or --pg-schema name a PostgreSQL store, and
            // --data-dir an embedded one.
            let engine = a.store.clone().unwrap_or_else(|| {
                if a.database_url.is_some() || a.pg_schema.is_some() {
                    "postgres".to_owned()
                } else if a.data_dir.is_some() {
                    "sqlite".to_owned()
                } else {
                    config.store_name().to_owned()
                }
            });
            let postgres = super::store_kind(&engine)? == tidemark_server::StoreKind::Postgres;
            if postgres && a.data_dir.is_some() {
                super::usage!("--data-dir names a data directory, but the store is PostgreSQL (--store postgres); give one or the other; nothing was done");
            }
            if !postgres && (a.database_url.is_some() || a.pg_schema.is_some()) {
                super::usage!("--database-url and --pg-schema need --store postgres; nothing was done");
            }
            if postgres {
                let url = super::database_url(a.database_url.clone(), &config)?;
                let schema = a.pg_schema.clone().unwrap_or(config.pg_schema.clone());
                let pointed = Pointed::Postgres {
                    url: &url,
                    schema: &schema,
                };
                let files = config_for_backup(config.clone(), pointed).await?;
                tidemark_backup::create::offline_pg(&url, &schema, &a.to, Some(&files), &progress)
                    .await
                    .map_err(anyhow::Error::from)
            } else {
                let dir = a.data_dir.clone().unwrap_or(config.data_dir.clone());
                let files = config_for_backup(config, Pointed::DataDir(&dir)).await?;
                tidemark_backup::create::offline(&dir, &a.to, Some(&files), &progress)
                    .await
                    .map_err(anyhow::Error::from)
            }
        }
        _ => super::usage!(
            "backup create needs either --server URL (online) or --offline [--data-dir DIR]; nothing was done"
        ),
    };
    let manifest = made.with_context(|| {
        format!(
            "backup {} not created (nothing partial was kept)",
            a.to.display()
        )
    })?;
    bar.finish_and_clear();
    if let Some(c) = &settings {
        note_settings_source(c);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&manifest)?);
    } else {
        println!(
            "backup {} created: {} {}, epoch {}, seq {}, {} files, {}",
            a.to.display(),
            match manifest.kind {
                Kind::Online => "online",
                Kind::Offline => "offline",
            },
            manifest.created_at,
            manifest.epoch,
            manifest.seq,
            manifest.files.len(),
            human(manifest.total_size())
        );
        // The backup is checksummed as written; SQLite's check of every
        // page is left to `verify`, off the backup's path.
        println!(
            "check it deeply (SQLite's integrity check of every page): tidemark backup verify {}",
            a.to.display()
        );
    }
    if let Some(keep) = a.keep {
        // Older backups go only once this one is known restorable whole:
        // a backup of a damaged store passes its checksums (they are of
        // what was read), and pruning for it left no good backup at all.
        let bar = progress_bar("checking the new backup before pruning");
        let checked = tidemark_backup::verify::full(&a.to, &|n| bar.set_position(n));
        bar.finish_and_clear();
        if let Err(e) = checked {
            anyhow::bail!(
                "the new backup {} fails its integrity check ({e}), so no older backup was removed (--keep {keep}); the store it was taken from may be damaged: check it, and keep the older backups",
                a.to.display()
            );
        }
        let root = match a.to.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => std::path::PathBuf::from("."),
        };
        let pruned = tidemark_backup::list::prune(
            &root,
            keep as usize,
            Some(&a.to),
            Some(&manifest.source),
            // The new backup was checked whole above; the others kept
            // beside it by their checksums.
            false,
        )?;
        for dir in &pruned.removed {
            say(
                Said::Step,
                format_args!("removed old backup {} (--keep {keep})", dir.display()),
            );
        }
        print_failing(&pruned.failing);
    }
    Ok(())
}

/// The body of an error answer, for the message.
async fn error_text(resp: reqwest::Response) -> String {
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    match body["error"]["message"].as_str() {
        Some(m) => format!("{status}: {m}"),
        None => status.to_string(),
    }
}

/// Online backup through the server: the snapshot is compressed and hashed
/// as it streams in; it never sits uncompressed on this side.
async fn online(
    url: &str,
    to: &Path,
    progress: tidemark_backup::Progress<'_>,
) -> anyhow::Result<Manifest> {
    let url = url.trim_end_matches('/');
    // Sends --token, trusts --ca-cert, presents --client-cert.
    let db = tidemark_api::client::DbClient::new(url);
    let client = db.http();
    let unreachable =
        || format!("cannot reach the DB server at {url}; check --server and that it runs");
    // The destination first: one that cannot be used is said before the
    // server is asked anything.
    let mut writer = BackupWriter::begin(to)?;
    let resp = client
        .get(format!("{url}/v1/backup/config"))
        .send()
        .await
        .with_context(unreachable)?;
    if !resp.status().is_success() {
        anyhow::bail!(
            "the server refused to give its configuration: {}",
            error_text(resp).await
        );
    }
    let config: serde_json::Value = resp
        .json()
        .await
        .context("reading the server's configuration")?;

    let resp = client
        .post(format!("{url}/v1/backup"))
        .send()
        .await
        .with_context(unreachable)?;
    if !resp.status().is_success() {
        anyhow::bail!("the server refused the backup: {}", error_text(resp).await);
    }
    let info: SnapshotInfo = resp
        .headers()
        .get("tidemark-snapshot")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| serde_json::from_str(v).ok())
        .with_context(|| {
            format!("{url} sent no snapshot metadata; is it a Tidemark DB server of this version?")
        })?;
    let mut sink = writer.db_sink()?;
    let mut received = 0u64;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk =
            chunk.context("the server stopped sending the snapshot; nothing was kept, retry")?;
        sink.write_all(&chunk).with_context(|| {
            format!(
                "writing {} failed (is the disk full?)",
                writer
                    .tmp_dir()
                    .join(tidemark_backup::manifest::DB_FILE)
                    .display()
            )
        })?;
        received += chunk.len() as u64;
        progress(received);
        tidemark_failpoint::hit("backup.online.chunk");
    }
    if received != info.bytes {
        anyhow::bail!(
            "the snapshot arrived incomplete ({received} of {} bytes); nothing was kept, retry",
            info.bytes
        );
    }
    writer.finish_db(sink)?;
    let mut manifest = Manifest::new(Kind::Online, url.to_owned(), &info);
    tidemark_backup::create::add_config(&mut writer, &mut manifest, &config)?;
    Ok(writer.commit(manifest)?)
}

fn verify(a: BackupVerifyArgs) -> anyhow::Result<()> {
    let bar = progress_bar("verifying");
    let progress = |n: u64| bar.set_position(n);
    let (manifest, decoded) = if a.quick {
        (
            tidemark_backup::verify::checksums(&a.dir, &progress)?,
            false,
        )
    } else {
        (tidemark_backup::verify::full(&a.dir, &progress)?.0, true)
    };
    bar.finish_and_clear();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&manifest)?);
    } else {
        println!(
            "backup {} verifies: {} files, {}, every checksum matches{}; epoch {}, seq {}, taken {}",
            a.dir.display(),
            manifest.files.len(),
            human(manifest.total_size()),
            if decoded { ", the data decodes and passes SQLite's integrity check" } else { "" },
            manifest.epoch,
            manifest.seq,
            manifest.created_at
        );
    }
    Ok(())
}

fn list(a: BackupListArgs) -> anyhow::Result<()> {
    let listed = tidemark_backup::list::list(&a.root, a.deep)?;
    if a.json {
        let rows: Vec<_> = listed
            .iter()
            .map(|l| {
                serde_json::json!({
                    "dir": l.dir.display().to_string(),
                    "created_at": l.manifest.as_ref().map(|m| m.created_at.clone()),
                    "kind": l.manifest.as_ref().map(|m| m.kind),
                    "epoch": l.manifest.as_ref().map(|m| m.epoch),
                    "seq": l.manifest.as_ref().map(|m| m.seq),
                    "size": l.manifest.as_ref().map(|m| m.total_size()),
                    "ok": l.problem.is_none(),
                    "checked": if a.deep { "full" } else { "checksums" },
                    "problem": l.problem,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if listed.is_empty() {
        println!("no backups under {}", a.root.display());
        return Ok(());
    }
    println!(
        "{:<24} {:<26} {:<8} {:>6} {:>10} {:>10}  STATUS",
        "NAME", "CREATED", "KIND", "EPOCH", "SEQ", "SIZE"
    );
    for l in &listed {
        let name = l
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        // Without --deep only the checksums were checked: damage the data
        // had before it was backed up passes them (`backup verify` sees it).
        let status = match &l.problem {
            None if a.deep => "ok".to_owned(),
            None => "checksums ok (--deep: every page)".to_owned(),
            Some(p) => format!("BAD: {p}"),
        };
        match &l.manifest {
            Some(m) => println!(
                "{:<24} {:<26} {:<8} {:>6} {:>10} {:>10}  {status}",
                name,
                m.created_at,
                format!("{:?}", m.kind).to_lowercase(),
                m.epoch,
                m.seq,
                human(m.total_size())
            ),
            None => println!(
                "{:<24} {:<26} {:<8} {:>6} {:>10} {:>10}  {status}",
                name, "-", "-", "-", "-", "-"
            ),
        }
    }
    Ok(())
}

fn prune(a: &BackupPruneArgs) -> anyhow::Result<()> {
    // Only backups that pass the full check count as kept: the newest of
    // a damaged store must not cost the last good one.
    let pruned = tidemark_backup::list::prune(&a.root, a.keep as usize, None, None, true)?;
    for dir in &pruned.removed {
        println!("removed {}", dir.display());
    }
    for dir in &pruned.abandoned {
        println!(
            "removed {} (an interrupted backup's temporary directory)",
            dir.display()
        );
    }
    println!(
        "kept the newest {} backups of each server that verify under {}; removed {}",
        a.keep,
        a.root.display(),
        pruned.removed.len()
    );
    print_failing(&pruned.failing);
    Ok(())
}

/// Backups prune neither counted nor removed, because they fail.
fn print_failing(failing: &[(std::path::PathBuf, String)]) {
    for (dir, why) in failing {
        say(
            Said::Warning,
            format_args!(
                "{} fails verification and was left alone (not counted as kept): {why}",
                dir.display()
            ),
        );
    }
}
