//! `tidemark ops submit`: validate, journal (fsync), then submit in batches.
//!
//! Re-running after a crash is safe at any point: the same input is
//! recognised by its digest and not journaled twice, and only journal
//! entries above the DB server's high-water mark for this source are sent
//! (the server would acknowledge the others as duplicates anyway).

use crate::input;
use crate::journal::Journal;
use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use tidemark_api::{DbClient, Schema};

/// What `ops submit` is asked to do.
#[derive(Debug, Clone)]
pub struct SubmitOptions {
    pub db: String,
    pub journal: PathBuf,
    pub source: String,
    /// Orders per request.
    pub batch: usize,
    /// Journal the input as new orders even if the same input was journaled before.
    pub again: bool,
    /// Leave unsent the orders a restore lost that the recovery did not
    /// bring back ([`refuse_lost`]).
    pub skip_lost: bool,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

/// What `ops submit` did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SubmitReport {
    pub source: String,
    /// Orders in the input.
    pub input_orders: usize,
    /// Of those, already in the journal from an earlier run.
    pub already_journaled: usize,
    /// Orders sent to the DB server in this run.
    pub submitted: usize,
    /// Of those, applied now.
    pub applied: usize,
    /// Of those, acknowledged as applied before.
    pub duplicates: usize,
    /// The source's high-water mark on the DB server at the end.
    pub high_water: u64,
}

/// Refuses, before anything is journaled, to send orders an earlier run
/// journaled that the DB server lacks while it is recovering: after a
/// restore they are the difference data, and only `ops recover` replays
/// them in their original order (sent here, they would be taken for the
/// newest writes). The caller holds the source's journal lock.
async fn refuse_during_recovery(
    client: &DbClient,
    source: &str,
    journal: &std::path::Path,
    journaled_before: u64,
    high_water: u64,
) -> anyhow::Result<()> {
    if high_water >= journaled_before {
        return Ok(());
    }
    let status: tidemark_api::RecoveryStatus = client.get_json("/v1/recovery").await?;
    if status.state == tidemark_api::RecoveryState::Recovering
        && !status.waived_sources.iter().any(|s| s == source)
    {
        anyhow::bail!(
            "the DB server is recovering and lacks orders {}..={} of source '{source}' journaled earlier: run 'tidemark ops recover --journal {} --backup BACKUP_DIR' first (it replays them in their original order), then run this again; nothing was journaled",
            high_water + 1,
            journaled_before,
            journal.display()
        );
    }
    Ok(())
}

/// Refuses, outside a recovery, to send orders an earlier run journaled
/// that the DB server acknowledged once and lacks now: a restore lost them
/// and the recovery ended without them (the source was waived, or left out
/// of `ops recover`). Sent now they would be taken for the newest writes
/// and undo newer ones; only a recovery puts them in their original order.
/// With `skip_lost`, returns the seq after which this run may send (past
/// them). Orders journaled but never acknowledged were never applied:
/// sending them is resuming.
fn refuse_lost(
    journal: &Journal,
    high_water: u64,
    journaled_before: u64,
    skip_lost: bool,
) -> anyhow::Result<Option<u64>> {
    let lost: Vec<u64> = (high_water + 1..=journaled_before)
        .filter(|seq| journal.ack(*seq).is_some())
        .collect();
    let (Some(first), Some(last)) = (lost.first(), lost.last()) else {
        return Ok(None);
    };
    if skip_lost {
        tracing::warn!(
            source = journal.source(),
            first,
            last,
            count = lost.len(),
            "leaving out orders a restore lost (--skip-lost); they stay in the journal"
        );
        return Ok(Some(journaled_before));
    }
    anyhow::bail!(
        "the DB server lacks {} orders of source '{}' (seqs {first}..={last}) that it acknowledged before a restore, and the recovery ended without them; sent now they would be taken for the newest writes and undo newer ones. Nothing was journaled. For them to count, restore again and run 'tidemark ops recover' with this journal; to leave them out for good, run this again with --skip-lost (they stay in the journal, unsent)",
        lost.len(),
        journal.source()
    )
}

/// At most this many applied orders without a recorded acknowledgement are
/// sent again to learn their versions (a run killed between the server's
/// answer and the journal's record leaves at most a few batches).
const RESEND_UNACKNOWLEDGED: u64 = 3_000;

/// For an order naming a table or column the schema in force lacks: says
/// so if the DB server has it staged but not published (the schema is
/// fetched for every run, so a published one is always seen).
async fn staged_note(client: &DbClient, e: &tidemark_api::schema::InvalidInput) -> String {
    use tidemark_api::schema::InvalidInput::{UnknownColumn, UnknownTable};
    let (table, column) = match e {
        UnknownColumn { table, column, .. } => (table, Some(column)),
        UnknownTable { table, .. } => (table, None),
        _ => return String::new(),
    };
    let Ok(p) = client
        .get_json::<tidemark_api::schema_change::PendingSchema>("/v1/schema/pending")
        .await
    else {
        return String::new();
    };
    let staged = p
        .tables
        .get(table)
        .is_some_and(|t| column.is_none_or(|c| t.column(c).is_some()));
    if staged {
        format!(
            " ('{table}{}' is staged in pending schema version {}, not published yet: run 'tidemark schema publish' first)",
            column.map(|c| format!(".{c}")).unwrap_or_default(),
            p.version
        )
    } else {
        String::new()
    }
}

/// Runs `ops submit` on the raw input bytes.
pub async fn submit(opts: &SubmitOptions, raw: &[u8]) -> anyhow::Result<SubmitReport> {
    let text = std::str::from_utf8(raw).context("the input is not UTF-8 text; send JSON lines")?;
    let orders = input::parse(text)?;
    let client = DbClient::new(&opts.db);
    let schema: Schema = get_with_retry(&client, "/v1/schema")
        .await
        .context("fetching the schema to validate the orders against (nothing was journaled or submitted: run the same command again once the DB server answers)")?;
    for (i, o) in orders.iter().enumerate() {
        let check = match o.op {
            tidemark_api::Op::Upsert => schema.validate_fields(&o.table, &o.fields),
            tidemark_api::Op::Delete if !o.fields.is_empty() => {
                Err(tidemark_api::schema::InvalidInput::DeleteWithFields)
            }
            tidemark_api::Op::Delete => schema.table(&o.table).map(|_| ()),
        };
        if let Err(e) = check {
            let staged = staged_note(&client, &e).await;
            anyhow::bail!(
                "order {} of the input: {e}{staged}; nothing was journaled or submitted",
                i + 1
            );
        }
    }
    // The input's own digest, --again or not: a run of it that stops
    // half-way is resumed by the next run of the same input (a digest
    // salted for --again matched nothing, so that rerun journaled and
    // applied the whole input a second time).
    let digest = blake3::hash(raw).to_hex().to_string();

    let mut journal = Journal::open(&opts.journal, &opts.source)?;
    let journaled_before = journal.last_seq();
    // The source's mark cannot move while this run holds its journal.
    let marks: BTreeMap<String, u64> = client
        .get_json("/v1/sources")
        .await
        .context("reading the DB server's high-water marks; nothing was journaled")?;
    let high_water = marks.get(&opts.source).copied().unwrap_or(0);
    // The same input as the journal's last run resumes it only while that
    // run is unfinished: not all journaled, or not all applied (a crash).
    // Given again after it went through, it is new orders (a key set back
    // to an earlier value).
    let last_run = journal.journaled_from(&digest);
    if last_run > orders.len() {
        anyhow::bail!("the journal holds {last_run} orders of this input but it has only {}; the journal does not match", orders.len());
    }
    // Applied but not acknowledged here (the answer was lost, or the run
    // was killed before it recorded it) is unfinished too.
    // And one this command did not see through itself: killed, and then
    // completed by a recovery's replay, its orders are applied, not new.
    let unfinished = last_run < orders.len()
        || high_water < journaled_before
        || (journaled_before > 0 && journal.ack(journaled_before).is_none())
        || (last_run > 0 && !journal.finished_last_run(&digest));
    let done = if unfinished && !opts.again {
        last_run
    } else {
        0
    };
    if done > 0 {
        tracing::info!(
            already = done,
            total = orders.len(),
            "this input's last run did not finish; resuming it (use --again to submit it as new orders)"
        );
    }
    // Checked before anything is journaled: refused orders left in the
    // journal would be replayed by a later recovery.
    // Orders go to the server only once journaled: a server ahead of the
    // journal has another journal's orders of this source.
    if high_water > journaled_before {
        anyhow::bail!(
            "the DB server has applied source '{}' up to seq {high_water} but this journal ends at seq {journaled_before}; nothing was journaled. Point --journal at this source's journal, or use another --source",
            opts.source,
        );
    }
    refuse_during_recovery(
        &client,
        &opts.source,
        &opts.journal,
        journaled_before,
        high_water,
    )
    .await?;
    let send_after = refuse_lost(&journal, high_water, journaled_before, opts.skip_lost)?;
    journal.append(&digest, done, &orders[done..])?;
    tidemark_failpoint::hit("ops.submit.after_journal");

    // Orders the server applied whose acknowledgements a killed run never
    // recorded are sent again (the server answers them as duplicates, with
    // the version they were applied with while its log still has it): a
    // later recovery replays them at their places.
    let mut from = high_water;
    while from > 0 && journal.ack(from).is_none() && high_water - from < RESEND_UNACKNOWLEDGED {
        from -= 1;
    }
    let from = if journal.ack(from).is_some() || from == 0 {
        from
    } else {
        high_water
    };
    let from = send_after.map_or(from, |after| from.max(after));
    let pending = journal.entries()[from as usize..].to_vec();
    let bar = if opts.progress {
        ProgressBar::new(pending.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} submitting [{bar:40}] {pos}/{len} orders ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let mut report = SubmitReport {
        source: opts.source.clone(),
        input_orders: orders.len(),
        already_journaled: done,
        high_water,
        ..Default::default()
    };
    for chunk in pending.chunks(opts.batch.max(1)) {
        let batch: Vec<_> = chunk.iter().map(|e| e.order(&opts.source)).collect();
        let resp = send_with_retry(&client, &batch).await.map_err(|e| {
            if opts.again {
                // The same command would submit it a third time.
                e.context("to resume, run the same command without --again")
            } else {
                e
            }
        })?;
        let acks: Vec<_> = resp
            .results
            .iter()
            .filter_map(|r| r.version.map(|v| (r.seq, v)))
            .collect();
        journal.record_acks(&acks)?;
        report.submitted += batch.len();
        for r in &resp.results {
            if r.duplicate {
                report.duplicates += 1;
            } else {
                report.applied += 1;
            }
        }
        report.high_water = chunk.last().map(|e| e.seq).unwrap_or(report.high_water);
        bar.inc(chunk.len() as u64);
        tidemark_failpoint::hit("ops.submit.after_batch");
    }
    bar.finish_and_clear();
    journal.record_finished(&digest)?;
    Ok(report)
}

/// GETs a JSON document, retrying for a while when the DB server is
/// unreachable or not ready yet (starting, or its store reconnecting).
pub async fn get_with_retry<T: serde::de::DeserializeOwned>(
    client: &DbClient,
    path: &str,
) -> Result<T, tidemark_api::ClientError> {
    retrying(
        "the DB server is unreachable or not ready",
        Duration::from_secs(30),
        || client.get_json(path),
    )
    .await
}

/// Whether a wait for the DB server is said as it begins, at warning
/// level: to a person at a terminal, who would otherwise watch a silent
/// wait. A script reading standard error gets the one line of the outcome
/// (CONTRACT.md), and the waits at info level (`RUST_LOG=info`).
fn shown_waiting() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}

/// Calls `f` until it succeeds or fails for good: a retryable failure (the
/// DB server unreachable, busy or restarting) is tried again, with backoff
/// up to 2 s, for up to `patience`; `what` names it in the log, the first
/// time at warning level where [`shown_waiting`].
pub async fn retrying<T, F, Fut>(
    what: &str,
    patience: Duration,
    mut f: F,
) -> Result<T, tidemark_api::ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tidemark_api::ClientError>>,
{
    let mut delay = Duration::from_millis(100);
    let give_up = tokio::time::Instant::now() + patience;
    let mut said = false;
    loop {
        match f().await {
            Err(e) if e.is_retryable() && tokio::time::Instant::now() < give_up => {
                if said || !shown_waiting() {
                    tracing::info!(error = %e, retry_in_ms = delay.as_millis() as u64, "{what}; retrying");
                } else {
                    tracing::warn!(error = %e, "{what}; retrying for up to {} s", patience.as_secs());
                    said = true;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            other => return other,
        }
    }
}

/// A batch of orders encoded as the body of `POST /v1/orders`, so the next
/// one can be encoded while the one before is on its way.
pub struct EncodedBatch {
    body: bytes::Bytes,
    orders: usize,
}

impl EncodedBatch {
    /// `batch`, encoded.
    pub fn new(batch: &[tidemark_api::Order]) -> anyhow::Result<Self> {
        Ok(Self {
            body: tidemark_api::encode_orders(batch).context("encoding a batch of orders")?,
            orders: batch.len(),
        })
    }
}

/// Sends one batch, retrying while the DB server is unreachable or busy.
/// The batch is idempotent, so a retry after a lost answer is harmless.
pub async fn send_with_retry(
    client: &DbClient,
    batch: &[tidemark_api::Order],
) -> anyhow::Result<tidemark_api::OrdersResponse> {
    send_encoded(client, &EncodedBatch::new(batch)?).await
}

/// [`send_with_retry`] of a batch encoded already.
pub async fn send_encoded(
    client: &DbClient,
    batch: &EncodedBatch,
) -> anyhow::Result<tidemark_api::OrdersResponse> {
    let body = batch.body.clone();
    let mut delay = Duration::from_millis(100);
    let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
    // Said once at warning level (see `shown_waiting`), so a DB server
    // that went away is not a silent minute.
    let mut said = false;
    loop {
        match client.post_orders_encoded(body.clone()).await {
            Ok(r) => return Ok(r),
            // Offline on purpose: it will not take orders for a while, so
            // say so at once. With several instances the client moves on
            // by itself, and retrying lets it try the others again.
            Err(e) if e.is_quiescing() && client.bases().len() == 1 => {
                return Err(e).context("the DB server is offline after a quiesce notice; the orders stay journaled: run the same command again once it is back, or name another instance with --db")
            }
            // The same batch would be refused again: only a smaller one
            // helps (`--batch`, or the server's limits).
            Err(e) if e.status() == Some(413) => {
                let size = if batch.orders > 1 {
                    "run the same command again with a smaller --batch (or raise the server's max_batch_orders or max_body_bytes)"
                } else {
                    "this one order alone is over the server's body limit: shorten its fields, or raise the server's max_body_bytes, then run the same command again"
                };
                return Err(e).context(format!(
                    "the DB server refused a batch of {} orders as too large; the orders stay journaled: {size}",
                    batch.orders
                ));
            }
            // Not mended by waiting: space must be freed first.
            Err(e) if e.status() == Some(507) => {
                return Err(e).context("the DB server's disk is full; the orders stay journaled: free space where its data lives, then run the same command again")
            }
            Err(e) if e.is_retryable() && tokio::time::Instant::now() < give_up => {
                if said || !shown_waiting() {
                    tracing::info!(error = %e, retry_in_ms = delay.as_millis() as u64, "submit failed; retrying");
                } else {
                    tracing::warn!(error = %e, "the DB server did not take a batch; retrying for up to 60 s (the orders stay journaled)");
                    said = true;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                return Err(e).context("the DB server did not take the batch; the orders stay journaled, run the same command again to resume")
            }
        }
    }
}
