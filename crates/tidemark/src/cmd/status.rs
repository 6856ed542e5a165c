//! `tidemark status`.

use crate::cli::StatusArgs;
use tidemark_api::{DbClient, RecoveryStatus, ServerState};

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let client = DbClient::new(&args.server);
    let mut state: ServerState = client.state().await?;
    let recovery: RecoveryStatus = client.get_json("/v1/recovery").await?;
    if args.json {
        // `/v1/state` as it is (`.state` is "normal", …), with the
        // recovery's progress.
        state.recovery = Some(recovery);
        println!("{}", serde_json::to_string(&state)?);
        return Ok(());
    }
    println!("server        {}", args.server);
    println!("state         {}", state.state.as_str());
    println!("role          {}", state.role.as_str());
    println!("epoch         {}", state.epoch);
    println!("commit seq    {}", state.seq);
    println!("store         {}", state.store);
    println!("schema        version {}", state.schema_version);
    println!(
        "recovery      {}: {} flagged, {} cleared, {} remaining{}{}{}",
        recovery.state.as_str(),
        recovery.flagged,
        recovery.cleared,
        recovery.remaining,
        recovery
            .started_at
            .map(|s| format!(", started {s}"))
            .unwrap_or_default(),
        if recovery.state == tidemark_api::RecoveryState::Recovering && !recovery.schedule_final {
            if recovery.waiting_for_sources.is_empty() {
                ", waiting for the schedule list (every read is answered as recovering)".to_owned()
            } else {
                format!(
                    ", waiting for the schedule list of {} (every read is answered as recovering)",
                    recovery.waiting_for_sources.join(", ")
                )
            }
        } else {
            String::new()
        },
        recovery
            .estimated_end
            .map(|s| format!(", estimated end {s}"))
            .unwrap_or_default()
    );
    match state.quiesce {
        Some(q) => println!(
            "quiesce       offline in {}s ({}): {}",
            q.seconds_left, q.deadline, q.message
        ),
        None => println!("quiesce       none"),
    }
    if let Some(term) = state.term {
        println!(
            "cluster       term {term}, primary {}",
            state
                .primary
                .as_deref()
                .unwrap_or("none online (failover in progress)")
        );
        for m in &state.members {
            println!(
                "  member      {} {} term {} v{} heartbeat {} ms ago{}",
                m.url,
                if m.alive {
                    m.role.as_str()
                } else {
                    "DOWN (no heartbeat)"
                },
                m.term,
                m.version,
                m.heartbeat_age_ms,
                m.quiesce
                    .as_ref()
                    .map(|q| format!(", quiescing: offline in {}s", q.seconds_left))
                    .unwrap_or_default()
            );
        }
    }
    Ok(())
}
