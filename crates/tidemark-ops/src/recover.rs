//! `tidemark ops recover`: patent steps 3 and 8 of the recovery after a restore.
//!
//! 1. Read the backup's manifest: the applied-order high-water mark of each
//!    source at the backup point. Every journaled order above it is missing
//!    from the restored store.
//! 2. Send the recovery schedule list: each key touched by a missing order,
//!    with the seq of the *last* missing order that touches it (P6), in
//!    chunks; the last chunk says `final`.
//! 3. Re-send exactly the missing orders (P10), merged across sources by
//!    the version each was first acknowledged with, each carrying that
//!    version as its `origin` so the server applies them in the original
//!    commit order whatever order they arrive in.
//! 4. Say complete, once the server waits for no other source: every source
//!    the backup knows must be recovered (its journal given, in this run or
//!    another) or explicitly waived with `--without-source`.
//!
//! Every step is idempotent, so a killed run is simply run again: the server
//! skips schedule entries it already holds, and orders are idempotent by
//! `(source, seq)`; replay resumes at the server's high-water mark.

use crate::journal::Journal;
use crate::schedule::send_schedule;
use crate::submit::{get_with_retry, send_encoded, EncodedBatch};
use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use tidemark_api::state::{ScheduleChunk, ScheduleEntry};
use tidemark_api::{DbClient, Order, RecoveryState, RecoveryStatus, Version};

/// What `ops recover` is asked to do.
#[derive(Debug, Clone)]
pub struct RecoverOptions {
    pub db: String,
    /// Journal directories; every `SOURCE.journal` in them is recovered
    /// (a source may appear in one directory only).
    pub journals: Vec<PathBuf>,
    pub backup: PathBuf,
    /// Sources the backup knows whose journals are lost: the operator says
    /// so explicitly, and the DB server stops waiting for them (logged).
    pub without_sources: Vec<String>,
    /// Sources the backup does not know (they began after it) whose
    /// journals another run recovers: the DB server waits for their lists
    /// too, answering every record as recovering until they arrive.
    pub expect_sources: Vec<String>,
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
    /// Sources the DB server still waits for (their journals were not
    /// given): the recovery is not complete until they are recovered too.
    pub waiting_for_sources: Vec<String>,
    /// Flags still set once all was sent: their orders are in no journal
    /// given, so the recovery is not complete.
    pub remaining: u64,
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
    if !dir.is_dir() {
        anyhow::bail!(
            "journal directory {} does not exist; point --journal at the OpS journal directory",
            dir.display()
        );
    }
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

/// Opens every journal in `dirs`; a source found twice is refused.
fn open_journals(dirs: &[PathBuf]) -> anyhow::Result<Vec<Journal>> {
    let mut journals: Vec<Journal> = Vec::new();
    for dir in dirs {
        for s in journal_sources(dir)? {
            if journals.iter().any(|j| j.source() == s) {
                anyhow::bail!(
                    "source '{s}' has a journal in {} and in another --journal directory; give each source's journal once",
                    dir.display()
                );
            }
            journals.push(Journal::open(dir, &s)?);
        }
    }
    if journals.is_empty() {
        anyhow::bail!(
            "no journal (*.journal) in {}; point --journal at the OpS journal directory",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    journals.sort_by(|a, b| a.source().cmp(b.source()));
    Ok(journals)
}

/// The replay order: every missing order of every source, by the version
/// it was first acknowledged with, so the DB server sees them roughly in
/// their original commit order. Within a source the order stays by seq (the
/// server requires it); an order without a recorded acknowledgement, and
/// every later one of its source, sorts after all acknowledged ones. The
/// server does not rely on this order for correctness (it applies by
/// `origin`); it keeps intermediate states close to the original history.
/// The schedule list as chunks of at most `chunk` entries: every source's
/// entries first, none final, then an empty final chunk per source (the
/// first carries `waivers`). The server lifts the blanket once every source
/// the restored data knows has sent its final chunk; a source that began
/// after the backup is unknown to it, so its flags must all be in before
/// any final chunk, or its keys would read as current in between. Sources
/// whose lists another run sends (`expect`) go with the very first chunk,
/// so the server waits for them before any final chunk can lift it.
fn schedule_chunks(
    lists: &[(String, Vec<ScheduleEntry>)],
    chunk: usize,
    waivers: Vec<String>,
    expect: Vec<String>,
) -> Vec<ScheduleChunk> {
    let mut out = Vec::new();
    for (source, entries) in lists {
        for part in entries.chunks(chunk.max(1)) {
            out.push(ScheduleChunk {
                source: source.clone(),
                entries: part.to_vec(),
                final_chunk: false,
                without_sources: Vec::new(),
                expect_sources: Vec::new(),
            });
        }
    }
    let mut waivers = Some(waivers);
    for (source, _) in lists {
        out.push(ScheduleChunk {
            source: source.clone(),
            entries: Vec::new(),
            final_chunk: true,
            without_sources: waivers.take().unwrap_or_default(),
            expect_sources: Vec::new(),
        });
    }
    if let Some(first) = out.first_mut() {
        first.expect_sources = expect;
    }
    out
}

fn replay_plan(journals: &[Journal], from: &[u64]) -> Vec<(usize, usize)> {
    let mut plan: Vec<((u64, u64), usize, usize)> = Vec::new();
    for (j_idx, j) in journals.iter().enumerate() {
        let mut floor = (0u64, 0u64);
        for e_idx in from[j_idx] as usize..j.entries().len() {
            let seq = j.entries()[e_idx].seq;
            let key = j
                .ack(seq)
                .map_or((u64::MAX, u64::MAX), |v| (v.epoch, v.seq))
                .max(floor);
            floor = key;
            plan.push((key, j_idx, e_idx));
        }
    }
    plan.sort();
    plan.into_iter().map(|(_, j, e)| (j, e)).collect()
}

/// The origin each planned order is sent with: the version it was first
/// acknowledged with, or, for an order whose acknowledgement was never
/// recorded (it was made before the restore), a place of its own.
/// - Followed in its source by an acknowledged order, it committed between
///   the acknowledged orders around it, each such order on a seq of its own:
///   it gets free seqs (no other order's) just below the next acknowledged one, so it stays
///   older than the orders its source made after it.
/// - Otherwise (the source's tail), it is older than every order of the
///   recovery (the restored epoch) and newer than every acknowledged one:
///   the end of the epoch before, one place each in plan order. Orders of
///   one batch whose acknowledgements were lost together must not tie, or
///   a later one (an upsert after a delete) loses to an earlier one. A
///   rerun gives the rest the same places: they are the tail of the plan.
fn origins(journals: &[Journal], plan: &[(usize, usize)], epoch: u64) -> Vec<Option<Version>> {
    let ack = |j: usize, e: usize| journals[j].ack(journals[j].entries()[e].seq);
    let mut out: Vec<Option<Version>> = plan.iter().map(|&(j, e)| ack(j, e)).collect();
    // Every version some order holds already: no place may tie with one.
    let mut taken: HashSet<Version> = journals
        .iter()
        .flat_map(|j| j.acks().map(|(_, v)| v))
        .collect();
    let mut by_source: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, &(j, _)) in plan.iter().enumerate() {
        by_source.entry(j).or_default().push(i);
    }
    for (&j, idx) in &by_source {
        let mut run: Vec<usize> = Vec::new();
        for &i in idx {
            let Some(next) = out[i] else {
                run.push(i);
                continue;
            };
            if let Some(&first) = run.first() {
                // The nearest acknowledged order before the run.
                let prev = (0..plan[first].1)
                    .rev()
                    .find_map(|e| ack(j, e))
                    .unwrap_or_default();
                if let Some(places) = between(prev, next, run.len() as u64, &taken) {
                    for (&r, v) in run.iter().zip(places) {
                        out[r] = Some(v);
                        taken.insert(v);
                    }
                }
                run.clear();
            }
        }
    }
    let mut left = out.iter().filter(|o| o.is_none()).count() as u64;
    for o in out.iter_mut().filter(|o| o.is_none()) {
        *o = (epoch > 0).then(|| Version::new(epoch - 1, i64::MAX as u64 - left));
        left -= 1;
    }
    out
}

/// `count` versions above `prev` and below `next`, none of them `taken`
/// (another order's acknowledged version: a tie would let arrival order
/// decide between the two): the highest free ones just below `next` in its
/// epoch, or, where `next` opened its epoch, in the middle of the epoch
/// before (below the tails' places at its end). `None` if they do not fit.
fn between(
    prev: Version,
    next: Version,
    count: u64,
    taken: &HashSet<Version>,
) -> Option<Vec<Version>> {
    let run = |epoch: u64, end: u64| {
        let mut found: Vec<Version> = (1..end)
            .rev()
            .map(|s| Version::new(epoch, s))
            .take_while(|v| *v > prev)
            .filter(|v| !taken.contains(v))
            .take(count as usize)
            .collect();
        found.reverse();
        (found.len() as u64 == count).then_some(found)
    };
    run(next.epoch, next.seq).or_else(|| run(next.epoch.checked_sub(1)?, i64::MAX as u64 / 2))
}

/// Places in the replay plan: (journal, entry).
type Places<'p> = &'p [(usize, usize)];

/// The orders of one replay batch (`batch`: its places in the replay plan),
/// each with the origin it is given, and their request body.
fn replay_batch<'p>(
    journals: &[Journal],
    origins: &mut impl Iterator<Item = Option<Version>>,
    batch: Places<'p>,
) -> anyhow::Result<(Places<'p>, Vec<Order>, EncodedBatch)> {
    let orders: Vec<Order> = batch
        .iter()
        .map(|&(j, e)| {
            let entry = &journals[j].entries()[e];
            let mut o = entry.order(journals[j].source());
            o.origin = origins.next().flatten();
            o
        })
        .collect();
    let body = EncodedBatch::new(&orders)?;
    Ok((batch, orders, body))
}

/// Runs the recovery.
pub async fn recover(opts: &RecoverOptions) -> anyhow::Result<RecoverReport> {
    let client = DbClient::new(&opts.db);
    let marks = backup_high_water(&opts.backup)?;
    let mut journals = open_journals(&opts.journals)?;
    for w in &opts.without_sources {
        if journals.iter().any(|j| j.source() == w) {
            anyhow::bail!("--without-source {w}: its journal was given too; drop one of them");
        }
        if opts.expect_sources.contains(w) {
            anyhow::bail!("--without-source {w} and --expect-source {w}: a source is either lost or recovered later; drop one of them");
        }
    }
    let server_marks: BTreeMap<String, u64> = get_with_retry(&client, "/v1/sources").await?;
    let status: RecoveryStatus = get_with_retry(&client, "/v1/recovery").await?;
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
            "the DB server is {:?}, not recovering, but it lacks journaled orders of {}: the recovery ended without them, so they can only be put in their original order by another one (restore again with 'tidemark restore', then run this with every journal); 'tidemark ops submit' refuses to send the acknowledged ones as new writes unless told to leave them out (--skip-lost)",
            status.state,
            behind.join(", ")
        );
    }
    // An acknowledgement the restored DB server cannot have given: of a
    // later epoch, or of its own epoch for an order it does not hold. The
    // data directory was lost after an earlier restore, and the restore
    // reused an epoch: service servers may hold versions of it that would
    // look newer than the DB server's answers.
    let reused = journals
        .iter()
        .flat_map(|j| {
            let mark = server_marks.get(j.source()).copied().unwrap_or(0);
            j.acks()
                .filter(move |(seq, v)| {
                    v.epoch > status.epoch || (v.epoch == status.epoch && *seq > mark)
                })
                .map(|(_, v)| v.epoch)
        })
        .max();
    if let Some(seen) = reused {
        anyhow::bail!(
            "the journals hold orders acknowledged in epoch {seen} that this DB server (epoch {}) never applied: its store (data directory or PostgreSQL schema) was lost after an earlier restore and the epoch was reused, so service servers could keep copies that look newer than the DB server's; restore again with 'tidemark restore --min-epoch {}'",
            status.epoch,
            seen + 1
        );
    }
    let unknown_waivers: Vec<&String> = opts
        .without_sources
        .iter()
        .filter(|w| !status.waiting_for_sources.contains(w) && !status.waived_sources.contains(w))
        .collect();
    if !unknown_waivers.is_empty() {
        anyhow::bail!(
            "--without-source {:?}: the DB server does not wait for such a source (it waits for {:?}); name only sources the backup knows",
            unknown_waivers,
            status.waiting_for_sources
        );
    }

    // The schedule list: per source, each key with the last missing seq.
    let mut lists: Vec<(String, Vec<ScheduleEntry>)> = Vec::new();
    let mut from = Vec::new();
    for j in &journals {
        let named_hw = marks.get(j.source()).copied().unwrap_or(0);
        // The server holds what was restored (and replayed since): a mark
        // below the backup's says --backup names another, newer backup
        // than the one restored. The list starts at the lower of the two,
        // so no key changed in between is left out (entries the server
        // holds already are skipped by it).
        let held = server_marks.get(j.source()).copied().unwrap_or(0);
        if held < named_hw {
            tracing::warn!(
                source = j.source(),
                backup = named_hw,
                server = held,
                "--backup holds this source further than the DB server does: it is not the backup that was restored; the schedule list starts from the server's mark"
            );
        }
        let backup_hw = named_hw.min(held);
        if backup_hw > j.last_seq() {
            anyhow::bail!(
                "the backup holds source '{}' up to seq {backup_hw} but the journal ends at seq {}; this journal does not belong to that backup",
                j.source(),
                j.last_seq()
            );
        }
        from.push(backup_hw);
        let mut last: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for e in &j.entries()[backup_hw as usize..] {
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
            backup_high_water: backup_hw,
            journal_last_seq: j.last_seq(),
            scheduled_keys: entries.len() as u64,
            replayed: 0,
        });
        lists.push((j.source().to_owned(), entries));
    }

    let total: u64 = lists.iter().map(|(_, e)| e.len() as u64).sum();
    let b = bar(opts.progress, total, "flagging ");
    let bodies = schedule_chunks(
        &lists,
        opts.chunk,
        opts.without_sources.clone(),
        opts.expect_sources.clone(),
    );
    send_schedule(&client, bodies, |n, answer| {
        report.flagged += answer.flagged;
        report.skipped += answer.skipped;
        b.inc(n as u64);
    })
    .await
    .context("sending the recovery schedule list; run the same command again to resume")?;
    b.finish_and_clear();
    tracing::info!(
        keys = total,
        flagged = report.flagged,
        skipped = report.skipped,
        "recovery schedule list sent"
    );

    // The difference data, from where the server stands now, each order
    // with the version it was first acknowledged with.
    let server_marks: BTreeMap<String, u64> = get_with_retry(&client, "/v1/sources").await?;
    let from: Vec<u64> = journals
        .iter()
        .map(|j| {
            server_marks
                .get(j.source())
                .copied()
                .unwrap_or(0)
                .min(j.last_seq())
        })
        .collect();
    let plan = replay_plan(&journals, &from);
    let mut origins = origins(&journals, &plan, status.epoch).into_iter();
    let b = bar(opts.progress, plan.len() as u64, "replaying");
    let mut batches = plan.chunks(opts.batch.max(1));
    // Each batch is built and encoded while the one before is on its way
    // (nothing of it is recorded or sent before that one is answered).
    let mut next = batches
        .next()
        .map(|batch| replay_batch(&journals, &mut origins, batch))
        .transpose()?;
    while let Some((batch, orders, body)) = next.take() {
        // The first acknowledgement stays: it is the order's place in the
        // original commit order, which a later recovery from the same backup
        // needs again (the replay's own version is not). One never recorded
        // is recorded as the place it is given, before it is sent, so no
        // later run can record the replay's version for it instead.
        let mut places: BTreeMap<usize, Vec<(u64, Version)>> = BTreeMap::new();
        for (&(j, _), o) in batch.iter().zip(&orders) {
            if let (None, Some(origin)) = (journals[j].ack(o.seq), o.origin) {
                places.entry(j).or_default().push((o.seq, origin));
            }
        }
        for (j, acks) in places {
            journals[j].record_acks(&acks)?;
        }
        let (resp, following) = tokio::join!(send_encoded(&client, &body), async {
            batches
                .next()
                .map(|batch| replay_batch(&journals, &mut origins, batch))
                .transpose()
        });
        let resp = resp?;
        next = following?;
        for &(j, _) in batch.iter().take(resp.results.len()) {
            report.sources[j].replayed += 1;
        }
        b.inc(orders.len() as u64);
        tidemark_failpoint::hit("ops.recover.after_batch");
    }
    b.finish_and_clear();

    let status: RecoveryStatus = get_with_retry(&client, "/v1/recovery").await?;
    if !status.waiting_for_sources.is_empty() {
        // The blanket stays: every read is answered as recovering until the
        // missing sources are recovered or waived.
        report.waiting_for_sources = status.waiting_for_sources;
        report.state = Some(status.state);
        return Ok(report);
    }
    let mut status: RecoveryStatus = client
        .post_json("/v1/recovery/complete", &serde_json::json!({}))
        .await
        .context("telling the DB server that all difference data was sent")?;
    // Flags an applied order settled for another key are dropped by the
    // server's maintenance tick (once a second): what remains after a few
    // ticks, no journal given can clear.
    // It waits while the count still falls (a busy server's tick is late).
    let mut progress_at = std::time::Instant::now();
    while status.state == RecoveryState::Recovering && progress_at.elapsed() < SETTLE_PATIENCE {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let before = status.remaining;
        status = get_with_retry(&client, "/v1/recovery").await?;
        if status.remaining < before {
            progress_at = std::time::Instant::now();
        }
    }
    report.state = Some(status.state);
    report.remaining = status.remaining;
    Ok(report)
}

/// How long `recover` waits, after saying complete, for the flags the
/// server settles by itself to fall further.
const SETTLE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(4);

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(n: u64) -> Vec<ScheduleEntry> {
        (0..n)
            .map(|i| ScheduleEntry {
                table: "subscriber".into(),
                key: format!("k{i}"),
                through_seq: i + 1,
            })
            .collect()
    }

    fn journal(dir: &std::path::Path, source: &str, n: usize, acks: &[(u64, Version)]) -> Journal {
        let orders: Vec<crate::input::InputOrder> = (0..n)
            .map(|i| crate::input::InputOrder {
                table: "subscriber".into(),
                key: format!("k{i}"),
                op: tidemark_api::Op::Upsert,
                fields: Default::default(),
            })
            .collect();
        let mut j = Journal::open(dir, source).unwrap();
        j.append("input", 0, &orders).unwrap();
        j.record_acks(acks).unwrap();
        j
    }

    #[test]
    fn an_unacknowledged_order_stays_older_than_the_later_orders_of_its_source() {
        // P10/P11: "a" lost the acknowledgements of seqs 2-3 and 6, not of
        // 4-5; "b" lost its last one. Before, 2-3 were placed at the end of
        // epoch 1, after 4 and 5, so a replay of 2 undid 4 on a shared field.
        let dir = tempfile::tempdir().unwrap();
        let v = Version::new;
        let a = journal(
            dir.path(),
            "a",
            6,
            &[(1, v(1, 10)), (4, v(1, 20)), (5, v(1, 21))],
        );
        let b = journal(dir.path(), "b", 2, &[(1, v(1, 11))]);
        let journals = vec![a, b];
        let plan = replay_plan(&journals, &[0, 0]);
        let got = origins(&journals, &plan, 2);
        let of = |j: usize, seq: u64| {
            let i = plan
                .iter()
                .position(|&(pj, e)| pj == j && journals[pj].entries()[e].seq == seq);
            got[i.unwrap()].unwrap()
        };
        assert_eq!(
            of(0, 1),
            v(1, 10),
            "an acknowledged order keeps its version"
        );
        assert!(v(1, 10) < of(0, 2) && of(0, 2) < of(0, 3) && of(0, 3) < v(1, 20));
        assert_eq!(of(0, 4), v(1, 20));
        // Tails: after every acknowledged order, below the restored epoch,
        // one place each.
        let tails = [of(0, 6), of(1, 2)];
        for t in tails {
            assert!(t > v(1, 21) && t < v(2, 0), "{t:?}");
        }
        assert_ne!(tails[0], tails[1]);
        // No room below the next acknowledgement (it opened epoch 2 with
        // seq 1): the end of epoch 1, still between the two.
        let c = journal(dir.path(), "c", 3, &[(1, v(1, 30)), (3, v(2, 1))]);
        let journals = vec![c];
        let plan = replay_plan(&journals, &[0]);
        let got = origins(&journals, &plan, 3);
        let i = plan.iter().position(|&(_, e)| e == 1).unwrap();
        assert!(got[i].unwrap() > v(1, 30) && got[i].unwrap() < v(2, 1));
        // Out of order around: no place between, so the tail's.
        let none = HashSet::new();
        assert!(
            between(v(1, 5), v(1, 6), 1, &none).is_none(),
            "no seq between 5 and 6"
        );
        assert!(between(v(2, 5), v(1, 6), 1, &none).is_none());
        assert_eq!(between(v(1, 5), v(1, 7), 1, &none), Some(vec![v(1, 6)]));
        // Another order's version is skipped, never tied with.
        let taken: HashSet<Version> = [v(1, 9)].into_iter().collect();
        assert_eq!(
            between(v(1, 5), v(1, 10), 2, &taken),
            Some(vec![v(1, 7), v(1, 8)])
        );
        assert!(between(v(1, 5), v(1, 8), 2, &[v(1, 6)].into_iter().collect()).is_none());
    }

    #[test]
    fn every_flag_of_every_source_goes_before_any_final_chunk() {
        // "ops-1" is known to the backup; "ops-2" began after it, and its
        // one chunk used to be its final one, sent after "ops-1"'s.
        let lists = vec![
            ("ops-1".to_owned(), entries(5)),
            ("ops-2".to_owned(), entries(2)),
        ];
        let chunks = schedule_chunks(&lists, 2, vec!["lost".into()], vec!["later".into()]);
        let first_final = chunks.iter().position(|c| c.final_chunk).unwrap();
        assert!(chunks[..first_final].iter().all(|c| !c.final_chunk));
        assert!(chunks[first_final..]
            .iter()
            .all(|c| c.final_chunk && c.entries.is_empty()));
        let sent: usize = chunks.iter().map(|c| c.entries.len()).sum();
        assert_eq!(sent, 7, "every entry once");
        let finals: Vec<&str> = chunks[first_final..]
            .iter()
            .map(|c| c.source.as_str())
            .collect();
        assert_eq!(finals, ["ops-1", "ops-2"], "a final chunk per source");
        assert_eq!(chunks[first_final].without_sources, ["lost"]);
        assert!(chunks[first_final + 1].without_sources.is_empty());
        // Sources another run sends go first of all, before any final.
        assert_eq!(chunks[0].expect_sources, ["later"]);
        assert!(chunks[1..].iter().all(|c| c.expect_sources.is_empty()));
        // A source with nothing to flag still ends with its final chunk.
        let chunks = schedule_chunks(
            &[("ops-1".to_owned(), Vec::new())],
            2,
            Vec::new(),
            Vec::new(),
        );
        assert_eq!(chunks.len(), 1);
        assert!(chunks[0].final_chunk);
    }
}
