//! `tidemark ops submit` and `tidemark ops recover`.

use crate::cli::{OpsCommand, OpsSubmitArgs};
use crate::config::OpsConfig;
use anyhow::Context;
use std::io::{IsTerminal, Read};
use tidemark_ops::{submit, SubmitOptions};

pub async fn run(config: OpsConfig, cmd: OpsCommand) -> anyhow::Result<()> {
    match cmd {
        OpsCommand::Submit(args) => run_submit(config, args).await,
        OpsCommand::Recover(_) => super::not_yet(
            "ops recover",
            "issue 'Disaster recovery … and tidemark demo'",
        ),
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
        std::fs::read(&args.file).with_context(|| format!("reading orders from {}", args.file))?
    };
    let opts = SubmitOptions {
        db: args.db.unwrap_or(config.db),
        journal: args.journal.unwrap_or(config.journal),
        source: args.source.unwrap_or(config.source),
        batch: args.batch.unwrap_or(config.batch),
        again: args.again,
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
    Ok(())
}
