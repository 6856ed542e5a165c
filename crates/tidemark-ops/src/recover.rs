//! `tidemark ops recover`: steps S3 and S8 of the recovery after a restore.
//!
//! 1. Read the backup's manifest: the applied-order high-water mark of each
//!    source at the backup point. Every journaled order above it is missing
//!    from the restored store.
//! 2. Send the recovery schedule list: each key touched by a missing order,
//!    with the seq of the *last* missing order that touches it (P6), in
//!    chunks; the last chunk says `final`.
//! 3. Re-send exactly the missing orders, in order, in batches (P10).
//! 4. Say complete.
//!
//! Every step is idempotent, so a killed run is simply run again: the server
//! skips schedule entries it already holds, and orders are idempotent by
//! `(source, seq)`; replay resumes at the server's high-water mark.

use crate::journal::Journal;
use crate::submit::send_with_retry;
use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tidemark_api::state::{ScheduleAnswer, ScheduleChunk, ScheduleEntry};
use tidemark_api::{DbClient, RecoveryState, RecoveryStatus};

/// What `ops recover` is asked to do.
#[derive(Debug, Clone)]
pub struct RecoverOptions {
    pub db: String,
    pub journal: PathBuf,
    pub backup: PathBuf,
    /// Schedule entries per request.
    pub chunk: usize,
    /// Orders per replay request.
    pub batch: usize,
    pub progress: bool,
}

/// What happened to one source.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SourceReport {
    pub source: String,
    /// Applied-order high-water mark in the backup.
    pub backup_high_water: u64,
    pub journal_last_seq: u64,
    /// Keys in the schedule list.
    pub scheduled_keys: u64,
    pub replayed: u64,
}

/// What `ops recover` did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RecoverReport {
    pub sources: Vec<SourceReport>,
    pub flagged: u64,
    pub skipped: u64,
    pub state: Option<RecoveryState>,
    /// True when the server had already finished this recovery.
    pub already_done: bool,
}

/// The high-water marks recorded in a backup's manifest (checked against
/// its checksum).
pub fn backup_high_water(backup: &Path) -> anyhow::Result<BTreeMap<String, u64>> {
    let manifest = tidemark_backup::manifest::Manifest::load(backup).with_context(|| {
        format!(
            "--backup {} must name the backup the DB server was restored from",
            backup.display()
        )
    })?;
    Ok(manifest.high_water)
}

/// The sources that have a journal in `dir`.
pub fn journal_sources(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)
        .with_context(|| format!("reading journal directory {}", dir.display()))?
    {
        let name = e?.file_name().to_string_lossy().into_owned();
        if let Some(source) = name.strip_suffix(".journal") {
            out.push(source.to_owned());
        }
    }
    out.sort();
    Ok(out)
}

fn bar(progress: bool, len: u64, what: &str) -> ProgressBar {
    let b = if progress {
        ProgressBar::new(len)
    } else {
        ProgressBar::hidden()
    };
    b.set_style(
        ProgressStyle::with_template(&format!(
            "{what} [{{bar:40}}] {{pos}}/{{len}} ({{per_sec}}, eta {{eta}})"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    b
}

/// Runs the recovery.
pub async fn recover(opts: &RecoverOptions) -> anyhow::Result<RecoverReport> {
    let client = DbClient::new(&opts.db);
    let marks = backup_high_water(&opts.backup)?;
    let sources = journal_sources(&opts.journal)?;
    if sources.is_empty() {
        anyhow::bail!(
            "no journal (*.journal) in {}; point --journal at the OpS journal directory",
            opts.journal.display()
        );
    }
    let mut journals = Vec::new();
    for s in &sources {
        journals.push(Journal::open(&opts.journal, s)?);
    }
    let server_marks: BTreeMap<String, u64> = client.get_json("/v1/sources").await?;
    let status: RecoveryStatus = client.get_json("/v1/recovery").await?;
    let mut report = RecoverReport::default();

    if status.state != RecoveryState::Recovering {
        let behind: Vec<String> = journals
            .iter()
            .filter(|j| server_marks.get(j.source()).copied().unwrap_or(0) < j.last_seq())
            .map(|j| j.source().to_owned())
            .collect();
        if behind.is_empty() {
            report.already_done = true;
            report.state = Some(status.state);
            return Ok(report);
        }
        anyhow::bail!(
            "the DB server is {:?}, not recovering, but it lacks journaled orders of {}; restore it first ('tidemark restore'), or resend with 'tidemark ops submit'",
            status.state,
            behind.join(", ")
        );
    }

    // The schedule list: per source, each key with the last missing seq.
    let mut lists: Vec<(String, Vec<ScheduleEntry>)> = Vec::new();
    for j in &journals {
        let from = marks.get(j.source()).copied().unwrap_or(0);
        if from > j.last_seq() {
            anyhow::bail!(
                "the backup holds source '{}' up to seq {from} but the journal ends at seq {}; this journal does not belong to that backup",
                j.source(),
                j.last_seq()
            );
        }
        let mut last: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for e in &j.entries()[from as usize..] {
            last.insert((e.table.as_str(), e.key.as_str()), e.seq);
        }
        let entries: Vec<ScheduleEntry> = last
            .into_iter()
            .map(|((t, k), seq)| ScheduleEntry {
                table: t.to_owned(),
                key: k.to_owned(),
                through_seq: seq,
            })
            .collect();
        report.sources.push(SourceReport {
            source: j.source().to_owned(),
            backup_high_water: from,
            journal_last_seq: j.last_seq(),
            scheduled_keys: entries.len() as u64,
            replayed: 0,
        });
        lists.push((j.source().to_owned(), entries));
    }

    let total: u64 = lists.iter().map(|(_, e)| e.len() as u64).sum();
    let b = bar(opts.progress, total, "flagging ");
    let chunk = opts.chunk.max(1);
    let last_source = lists.len() - 1;
    for (i, (source, entries)) in lists.iter().enumerate() {
        let mut parts: Vec<&[ScheduleEntry]> = entries.chunks(chunk).collect();
        if parts.is_empty() {
            parts.push(&[]);
        }
        let n = parts.len();
        for (p, part) in parts.into_iter().enumerate() {
            let body = ScheduleChunk {
                source: source.clone(),
                entries: part.to_vec(),
                final_chunk: i == last_source && p + 1 == n,
            };
            let answer: ScheduleAnswer = client
                .post_json("/v1/recovery/schedule", &body)
                .await
                .context(
                    "sending the recovery schedule list; run the same command again to resume",
                )?;
            report.flagged += answer.flagged;
            report.skipped += answer.skipped;
            b.inc(part.len() as u64);
        }
    }
    b.finish_and_clear();
    tracing::info!(
        keys = total,
        flagged = report.flagged,
        skipped = report.skipped,
        "recovery schedule list sent"
    );

    // The difference data, in order, from where the server stands now.
    let server_marks: BTreeMap<String, u64> = client.get_json("/v1/sources").await?;
    let missing: u64 = journals
        .iter()
        .map(|j| {
            j.last_seq()
                .saturating_sub(server_marks.get(j.source()).copied().unwrap_or(0))
        })
        .sum();
    let b = bar(opts.progress, missing, "replaying");
    for (j, r) in journals.iter().zip(report.sources.iter_mut()) {
        let hw = server_marks.get(j.source()).copied().unwrap_or(0);
        for batch in j.entries()[hw.min(j.last_seq()) as usize..].chunks(opts.batch.max(1)) {
            let orders: Vec<_> = batch.iter().map(|e| e.order(j.source())).collect();
            send_with_retry(&client, &orders).await?;
            r.replayed += orders.len() as u64;
            b.inc(orders.len() as u64);
            tidemark_store::failpoint::hit("ops.recover.after_batch");
        }
    }
    b.finish_and_clear();

    let status: RecoveryStatus = client
        .post_json("/v1/recovery/complete", &serde_json::json!({}))
        .await
        .context("telling the DB server that all difference data was sent")?;
    report.state = Some(status.state);
    Ok(report)
}
