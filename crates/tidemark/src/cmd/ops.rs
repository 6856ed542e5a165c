//! `tidemark ops submit` and `tidemark ops recover`.

use crate::cli::{OpsCommand, OpsRecoverArgs, OpsSubmitArgs};
use crate::config::OpsConfig;
use anyhow::Context;
use std::io::{IsTerminal, Read};
use tidemark_ops::{recover, submit, RecoverOptions, SubmitOptions};
use tidemark_telemetry::{say, Said};

pub async fn run(config: OpsConfig, cmd: OpsCommand) -> anyhow::Result<()> {
    match cmd {
        OpsCommand::Submit(args) => run_submit(config, args).await,
        OpsCommand::Recover(args) => run_recover(config, args).await,
    }
}

async fn run_submit(config: OpsConfig, args: OpsSubmitArgs) -> anyhow::Result<()> {
    let raw = if args.file == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading orders from standard input")?;
        buf
    } else {
        std::fs::read(&args.file).map_err(|e| {
            anyhow::anyhow!(
                "cannot read orders from {}: {e}; give a file of JSON lines (one order a line), or - for standard input",
                args.file
            )
        })?
    };
    let opts = SubmitOptions {
        db: checked_db(args.db.unwrap_or(config.db))?,
        journal: args.journal.unwrap_or(config.journal),
        source: args.source.unwrap_or(config.source),
        batch: args.batch.unwrap_or(config.batch),
        again: args.again,
        skip_lost: args.skip_lost,
        progress: std::io::stderr().is_terminal(),
    };
    let report = submit(&opts, &raw).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "source {}: {} orders in the input ({} journaled earlier); submitted {}: {} applied, {} already applied; high-water mark {}",
            report.source,
            report.input_orders,
            report.already_journaled,
            report.submitted,
            report.applied,
            report.duplicates,
            report.high_water
        );
    }
    if report.input_orders > 0 && report.already_journaled == report.input_orders {
        say(Said::Note, "this input was journaled before, so it was resumed, not sent as new orders; to send the same orders again as new ones, add --again");
    }
    Ok(())
}

async fn run_recover(config: OpsConfig, args: OpsRecoverArgs) -> anyhow::Result<()> {
    let opts = RecoverOptions {
        db: checked_db(args.db.unwrap_or(config.db))?,
        journals: if args.journal.is_empty() {
            vec![config.journal]
        } else {
            args.journal
        },
        backup: args.backup,
        without_sources: args.without_source,
        expect_sources: args.expect_source,
        chunk: args.chunk,
        batch: args.batch.unwrap_or(config.batch),
        progress: std::io::stderr().is_terminal(),
    };
    let report = recover(&opts).await?;
    let stuck =
        report.state == Some(tidemark_api::RecoveryState::Recovering) && report.remaining > 0;
    let waiting = if !report.waiting_for_sources.is_empty() {
        Some(anyhow::anyhow!(
            "recovery is not complete: the DB server still waits for source(s) {} (known to the backup, or expected with --expect-source), and answers every read as recovering until then; run 'tidemark ops recover' again with their journals (--journal DIR), or, if a journal is lost, name the source with --without-source NAME",
            report.waiting_for_sources.join(", ")
        ))
    } else if stuck {
        let server = opts.db.split(',').next().unwrap_or_default();
        let sources = flagged_sources(&opts.db).await;
        Some(anyhow::anyhow!(
            "recovery is not complete: {} key(s) are still flagged, waiting for orders{sources} that no journal given holds, so their records are answered as recovering; rerun 'tidemark ops recover' with the journals of those sources (--journal DIR; a recover killed midway resumes), or, only if they are lost, end the recovery with 'tidemark recovery abort --server {server} --reason TEXT' (their records are then served as current, as restored); 'tidemark recovery flags --server {server}' lists them",
            report.remaining,
        ))
    } else {
        None
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return waiting.map_or(Ok(()), Err);
    }
    if report.already_done {
        println!(
            "nothing to do: the DB server is {} and holds every journaled order",
            report
                .state
                .unwrap_or(tidemark_api::RecoveryState::Normal)
                .as_str()
        );
        return Ok(());
    }
    for s in &report.sources {
        println!(
            "source {}: backup holds seq {}, journal ends at {}: {} keys scheduled, {} orders replayed",
            s.source, s.backup_high_water, s.journal_last_seq, s.scheduled_keys, s.replayed
        );
    }
    println!(
        "schedule list: {} flags set, {} entries already current; recovery state now {}",
        report.flagged,
        report.skipped,
        report
            .state
            .unwrap_or(tidemark_api::RecoveryState::Recovering)
            .as_str()
    );
    waiting.map_or(Ok(()), Err)
}

/// The DB-server URL from the config file, checked as `--db` is.
fn checked_db(db: String) -> anyhow::Result<String> {
    match crate::cli::db_urls(&db) {
        Ok(db) => Ok(db),
        Err(e) => super::usage!("db: {e}"),
    }
}

/// " of source(s) A, B": the sources the first flags still wait for (empty
/// if the DB server does not say).
async fn flagged_sources(db: &str) -> String {
    let page: Option<serde_json::Value> = tidemark_api::DbClient::new(db)
        .get_json("/v1/recovery/flags?limit=1000")
        .await
        .ok();
    let flags: Vec<tidemark_api::state::FlagInfo> = page
        .and_then(|mut p| serde_json::from_value(p["flags"].take()).ok())
        .unwrap_or_default();
    let mut sources: Vec<String> = flags.into_iter().map(|f| f.source).collect();
    sources.sort();
    sources.dedup();
    if sources.is_empty() {
        String::new()
    } else {
        format!(" of source(s) {}", sources.join(", "))
    }
}
