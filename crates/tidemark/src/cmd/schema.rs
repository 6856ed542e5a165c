//! `tidemark schema …`: stage, plan, publish, roll back (S1, S2, S9).

use crate::cli::SchemaCommand;
use anyhow::Context;
use std::io::Read;
use std::time::{Duration, Instant};
use tidemark_api::schema_change::{
    PendingSchema, PublishStatus, PublishStep, SchemaDocument, SchemaPlan, SchemaVersions,
};
use tidemark_api::{DbClient, Schema};
use tidemark_telemetry::{say, Said};

pub async fn run(cmd: SchemaCommand) -> anyhow::Result<()> {
    match cmd {
        SchemaCommand::Show { server, pending } => {
            // Standard output holds the schema document alone (CONTRACT.md:
            // what `schema stage` takes, without `version`); which version
            // it is goes to standard error.
            let client = DbClient::new(&server);
            let tables = if pending {
                let p: PendingSchema = client.get_json("/v1/schema/pending").await?;
                say(
                    Said::Step,
                    format_args!(
                        "staged schema version {} (on version {}), by {} at {}",
                        p.version, p.base_version, p.staged_by, p.staged_at
                    ),
                );
                serde_json::to_value(&p.tables)?
            } else {
                let mut v: serde_json::Value = client.get_json("/v1/schema").await?;
                if let Some(n) = v.get("version") {
                    say(Said::Step, format_args!("schema version {n}"));
                }
                v.get_mut("tables")
                    .map(serde_json::Value::take)
                    .unwrap_or_default()
            };
            let doc = serde_json::json!({ "tables": tables });
            println!("{}", serde_json::to_string_pretty(&doc)?);
            Ok(())
        }
        SchemaCommand::Versions { server, json } => {
            let v: SchemaVersions = DbClient::new(&server)
                .get_json("/v1/schema/versions")
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            for e in &v.versions {
                let mark = if e.version == v.current { "*" } else { " " };
                println!(
                    "{mark} version {:<4} by {:<16} at {}",
                    e.version,
                    e.published_by,
                    e.published_at.as_deref().unwrap_or("-")
                );
                for c in &e.changes {
                    println!("      {c}");
                }
            }
            Ok(())
        }
        SchemaCommand::Stage { server, file } => {
            let text = if file.as_os_str() == "-" {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s)?;
                s
            } else {
                std::fs::read_to_string(&file).with_context(|| {
                    format!("cannot read the schema document {}", file.display())
                })?
            };
            let doc = SchemaDocument::parse(text.as_bytes()).map_err(|e| {
                anyhow::anyhow!(
                    "{} is not a schema document: {e}; write the full desired schema, e.g. the output of 'tidemark schema show' with tables or columns added",
                    file.display()
                )
            })?;
            let p: PendingSchema = DbClient::new(&server)
                .put_json("/v1/schema/pending", &doc)
                .await
                .context("stage refused")?;
            println!(
                "staged schema version {} (on version {}); review it with 'tidemark schema plan --server {server}', then 'tidemark schema publish --server {server}'",
                p.version, p.base_version
            );
            Ok(())
        }
        SchemaCommand::Discard { server } => {
            let v: serde_json::Value = DbClient::new(&server)
                .delete_json("/v1/schema/pending")
                .await?;
            if v["discarded"].as_bool() == Some(true) {
                println!("staged schema discarded");
            } else {
                println!("no schema was staged");
            }
            Ok(())
        }
        SchemaCommand::Plan { server, json } => {
            let plan: SchemaPlan = DbClient::new(&server)
                .get_json("/v1/schema/plan")
                .await
                .context("no plan")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                print_plan(&plan);
            }
            Ok(())
        }
        SchemaCommand::Publish { server, wait } => {
            let client = DbClient::new(&server);
            let st = start(&client, "/v1/schema/publish", "publish").await?;
            let target = target_of(&st);
            if st.current_version >= target {
                println!(
                    "schema version {target} is in force on the DB server; announcing it to the service servers"
                );
            } else {
                // Another run's job, followed before it committed.
                println!(
                    "schema version {target} is being published (version {} is in force until it commits); following it",
                    st.current_version
                );
            }
            follow(&client, st, Duration::from_secs(wait)).await
        }
        SchemaCommand::Rollback { server, wait } => {
            let client = DbClient::new(&server);
            // A rollback discards a staged schema: said, not silent.
            let staged = client
                .get_json::<PublishStatus>("/v1/schema/publish")
                .await
                .ok()
                .and_then(|s| s.pending_version);
            let st = start(&client, "/v1/schema/rollback", "rollback").await?;
            println!(
                "rolled back: schema version {} (the previous version's tables) is in force on the DB server",
                st.current_version
            );
            if staged.is_some() {
                say(Said::Note, "the rollback discarded the schema that was staged; stage it again ('tidemark schema stage') if it is still wanted");
            }
            follow(&client, st, Duration::from_secs(wait)).await
        }
        SchemaCommand::Status { server, json } => {
            let st: PublishStatus = DbClient::new(&server)
                .get_json("/v1/schema/publish")
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print_status(&st);
            }
            Ok(())
        }
    }
}

/// Starts a publish or rollback (`path`). Its DDL runs before the answer,
/// which may take minutes on PostgreSQL (index builds, lock waits); one
/// already running (this command run again, or after its answer was lost)
/// is followed rather than refused. A publish whose answer was lost (the
/// primary died mid-request, and the next one finished the job) is
/// recognised by the version it was to make current.
async fn start(client: &DbClient, path: &str, what: &str) -> anyhow::Result<PublishStatus> {
    // The version a publish makes current: the pending one, or the next
    // (an instance may not show a schema staged through another yet).
    let target = if path.ends_with("/publish") {
        client
            .get_json::<PublishStatus>("/v1/schema/publish")
            .await
            .ok()
            .map(|s| s.pending_version.unwrap_or(s.current_version + 1))
    } else {
        None
    };
    let started = client
        .post_json_within(path, &serde_json::json!({}), Duration::from_secs(360))
        .await;
    match started {
        Err(tidemark_api::ClientError::Api { error, .. })
            if error.code == tidemark_api::ErrorCode::PublishInProgress =>
        {
            say(Said::Step, "a schema job is already running on the DB server; following it");
            Ok(client.get_json("/v1/schema/publish").await?)
        }
        // Never sent: nothing changed (with several instances, an earlier
        // one may have had it before the last could not be reached).
        Err(tidemark_api::ClientError::Transport { url, error })
            if error.is_connect() && client.bases().len() == 1 =>
        {
            anyhow::bail!(
                "could not reach the DB server at {url} ({error}), so nothing was sent and no {what} began; check --server (name a live instance) and run the command again"
            )
        }
        Err(e) if answer_lost(&e) => match outcome(client, target).await {
            Outcome::InForce(v, st) => {
                say(Said::Step, format_args!(
                    "the answer to the publish was lost ({e}), but schema version {v} is in force; following it"
                ));
                Ok(*st)
            }
            Outcome::NotInForce(v) => Err(anyhow::Error::from(e).context(format!(
                "the {what} did not take effect: its answer was lost, and version {v} is still pending with no job running; run the command again"
            ))),
            // A rollback run twice goes back two versions: not resent.
            Outcome::Unknown if target.is_none() => Err(anyhow::Error::from(e).context(format!(
                "could not tell whether the {what} took effect: its answer was lost; see 'tidemark schema status --server URL' (naming another instance if this one is down) before running it again, which would go back one more version"
            ))),
            Outcome::Unknown => Err(anyhow::Error::from(e).context(format!(
                "could not tell whether the {what} took effect: its answer was lost, and the DB server could not say within {} s; see 'tidemark schema status --server URL' (naming another instance if this one is down), then run the {what} again if the version is still pending",
                OUTCOME_PATIENCE.as_secs()
            ))),
            Outcome::Failed(v, why) => Err(anyhow::Error::from(e).context(format!(
                "the {what} of version {v} failed on the DB server: {why}; fix that, then run the command again"
            ))),
        },
        // The server's message may already say what was refused: not
        // said twice (its code stays in the line).
        Err(e)
            if matches!(&e, tidemark_api::ClientError::Api { error, .. }
                if error.message.starts_with(&format!("{what} refused"))) =>
        {
            Err(anyhow::Error::from(e))
        }
        other => other.with_context(|| format!("{what} refused")),
    }
}

/// What became of a publish whose answer was lost.
enum Outcome {
    /// The version it was to make current is in force.
    InForce(u64, Box<PublishStatus>),
    /// No job runs and the version is still pending.
    NotInForce(u64),
    /// Its job failed, saying why.
    Failed(u64, String),
    /// Neither could be told (not a publish, or no answer in time).
    Unknown,
}

/// Whether `e` leaves the outcome open: no answer, or the primary went
/// away while the request was with it.
fn answer_lost(e: &tidemark_api::ClientError) -> bool {
    use tidemark_api::ErrorCode::*;
    match e {
        tidemark_api::ClientError::Transport { .. } => true,
        tidemark_api::ClientError::Api { error, .. } => matches!(
            error.code,
            OutcomeUnknown | NoPrimary | NotReady | StoreUnavailable
        ),
        _ => false,
    }
}

/// How long a publish whose answer was lost is looked for: a failover,
/// and the next primary finishing the job.
const OUTCOME_PATIENCE: Duration = Duration::from_secs(45);

/// Whether `target` came in force, surely did not (no job runs and it is
/// still pending), or could not be told within [`OUTCOME_PATIENCE`].
async fn outcome(client: &DbClient, target: Option<u64>) -> Outcome {
    let Some(target) = target else {
        return Outcome::Unknown;
    };
    let give_up = Instant::now() + OUTCOME_PATIENCE;
    while Instant::now() < give_up {
        if let Ok(st) = client.get_json::<PublishStatus>("/v1/schema/publish").await {
            if st.current_version >= target {
                return Outcome::InForce(target, Box::new(st));
            }
            if let Some(j) = st
                .job
                .as_ref()
                .filter(|j| j.step == PublishStep::Failed && j.to_version == target)
            {
                let why = j.error.clone().unwrap_or_else(|| "no reason given".into());
                return Outcome::Failed(target, why);
            }
            let running = st
                .job
                .as_ref()
                .is_some_and(|j| matches!(j.step, PublishStep::Applying | PublishStep::Announcing));
            if !running && st.pending_version == Some(target) {
                return Outcome::NotInForce(target);
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Outcome::Unknown
}

fn print_plan(p: &SchemaPlan) {
    println!(
        "plan: schema version {} -> {} ({})",
        p.from_version, p.to_version, p.engine
    );
    println!("\n1. object-schema changes");
    for c in &p.changes {
        println!("   {c}");
    }
    println!("\n2. full table/column schema (version {})", p.to_version);
    let schema = Schema {
        version: p.to_version,
        tables: p.tables.clone(),
    };
    for (name, t) in &schema.tables {
        println!("   {name}");
        for c in &t.columns {
            println!("     {:<24} {}", c.name, c.ty.name());
        }
    }
    println!("\n3. index definitions");
    if p.indexes.is_empty() {
        println!("   (none)");
    }
    for ix in &p.indexes {
        println!(
            "   {} ON {} ({}){}",
            ix.name,
            ix.table,
            ix.columns.join(", "),
            if ix.new { "  [new]" } else { "" }
        );
    }
    println!("\n4. new columns not yet in the database");
    if p.new_columns.is_empty() {
        println!("   (none)");
    }
    for c in &p.new_columns {
        println!("   {}.{} {}", c.table, c.name, c.ty.name());
    }
    println!("\n5. new tables not yet in the database");
    if p.new_tables.is_empty() {
        println!("   (none)");
    }
    for t in &p.new_tables {
        println!("   {t}");
    }
    let split = p.ddl_before_transaction.min(p.ddl.len());
    let (before, tx) = p.ddl.split_at(split);
    if !before.is_empty() {
        println!(
            "\nDDL ({}), one statement at a time before the transaction (indexes built without blocking writes):",
            p.engine
        );
        for d in before {
            println!("   {d};");
        }
    }
    println!("\nDDL ({}, one transaction)", p.engine);
    if before.iter().any(|d| d.contains("ADD COLUMN")) {
        println!("   -- ADD COLUMN IF NOT EXISTS is a no-op for a column added above; it is there for a resumed publish");
    }
    for d in tx {
        println!("   {d};");
    }
}

fn print_status(st: &PublishStatus) {
    println!("schema version in force  {}", st.current_version);
    if let Some(p) = st.pending_version {
        println!("pending                  version {p} (staged, not published)");
    }
    if let Some(j) = &st.job {
        println!(
            "last job                 {:?} {} -> {}: {:?}, by {} at {}{}{}",
            j.kind,
            j.from_version,
            j.to_version,
            j.step,
            j.started_by,
            j.started_at,
            if j.resumed > 0 {
                format!(", resumed {} time(s) after a crash", j.resumed)
            } else {
                String::new()
            },
            j.error
                .as_ref()
                .map(|e| format!(", failed: {e}"))
                .unwrap_or_default()
        );
    }
    for s in &st.servers {
        println!(
            "  {:<24} {:<15} version {:<6} {}",
            s.name,
            s.kind,
            s.version.map(|v| v.to_string()).unwrap_or("?".into()),
            if s.kind == tidemark_api::schema_change::KIND_WATCH_STREAM {
                "connected, reports no version (not waited for)"
            } else if s.connected {
                "connected"
            } else {
                "disconnected"
            }
        );
    }
    if st.complete {
        println!(
            "complete: every connected server runs version {}",
            st.current_version
        );
    } else if !st.lagging.is_empty() {
        // While a job runs, the version it makes current (not the one
        // still in force).
        println!(
            "not yet on version {}: {}",
            target_of(st),
            st.lagging.join(", ")
        );
    }
    for w in &st.warnings {
        println!("WARNING: {w}");
    }
}

/// The version a publish or rollback makes current: its job's, while the
/// job has not finished (a job another run started, followed before it
/// committed), else the current one.
fn target_of(st: &PublishStatus) -> u64 {
    st.job
        .as_ref()
        .filter(|j| j.finished_at.is_none() && j.step != PublishStep::Failed)
        .map_or(st.current_version, |j| j.to_version.max(st.current_version))
}

/// Waits until every connected service server reports the version in
/// force, printing each one as it does.
///
/// `st` is the answer to the publish (or rollback), from the primary: its
/// version is the target. The answers after come from `client`'s server,
/// which may be a standby that has not followed yet; until its version in
/// force reaches the target, the publish is not done.
async fn follow(client: &DbClient, mut st: PublishStatus, wait: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + wait;
    let target = target_of(&st);
    let mut shown = std::collections::BTreeSet::new();
    loop {
        for s in &st.servers {
            if s.version == Some(target) && shown.insert(s.name.clone()) {
                println!("  {} runs version {}", s.name, target);
            }
        }
        if let Some(j) = &st.job {
            if j.step == PublishStep::Failed {
                anyhow::bail!(
                    "the job failed and version {} stays in force: {}",
                    st.current_version,
                    j.error.as_deref().unwrap_or("no reason recorded")
                );
            }
        }
        if st.complete && st.current_version >= target {
            println!(
                "done: the DB server and every connected service server run schema version {}",
                st.current_version
            );
            return Ok(());
        }
        if Instant::now() >= deadline {
            let lag: Vec<String> = st
                .servers
                .iter()
                .filter(|s| st.lagging.contains(&s.name))
                .map(|s| {
                    format!(
                        "{} (reports {})",
                        s.name,
                        s.version
                            .map(|v| format!("version {v}"))
                            .unwrap_or("nothing yet".into())
                    )
                })
                .collect();
            anyhow::bail!(
                "schema version {} is in force on the primary, but after {}s these servers have not reported it: {}; check that they run and are connected, then follow with 'tidemark schema status'",
                target,
                wait.as_secs(),
                if lag.is_empty() { "(the announcement is still going out)".to_owned() } else { lag.join(", ") }
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        // A failover while following (no primary for a moment, a standby
        // not ready) is waited out until the deadline, not taken for the
        // publish's failure.
        match client.get_json("/v1/schema/publish").await {
            Ok(next) => st = next,
            Err(e) if answer_lost(&e) && Instant::now() < deadline => {
                tracing::debug!("following the publish: {e}; asking again");
            }
            Err(e) => return Err(e.into()),
        }
    }
}
