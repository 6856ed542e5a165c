//! `tidemark status`: of a DB server, or of a service server.

use crate::cli::StatusArgs;
use anyhow::Context;
use tidemark_api::state::{QuiesceNotice, ServiceState};
use tidemark_api::{DbClient, RecoveryStatus, ServerState};

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let client = DbClient::new(&args.server);
    let raw: serde_json::Value = client.get_json("/v1/state").await?;
    let mut state: ServerState = match serde_json::from_value(raw.clone()) {
        Ok(state) => state,
        Err(not_db) => {
            return match serde_json::from_value::<ServiceState>(raw) {
                Ok(service_state) => service(&args, service_state).await,
                Err(_) => Err(not_db).with_context(|| {
                    format!(
                        "unexpected answer from {}/v1/state; check that the URL names a Tidemark DB server or service server of this version",
                        args.server
                    )
                }),
            }
        }
    };
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
            q.seconds_left,
            q.deadline,
            super::printable(&q.message)
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

/// `tidemark status` of a service server: its own state, and the recovery
/// progress of its DB server where that answers.
async fn service(args: &StatusArgs, st: ServiceState) -> anyhow::Result<()> {
    if args.json {
        println!("{}", serde_json::to_string(&st)?);
        return Ok(());
    }
    println!("server        {} (service server '{}')", args.server, st.id);
    println!("policy        {}", st.policy);
    println!(
        "DB server     {} ({})",
        st.db,
        if st.connected {
            match &st.stream_instance {
                Some(at) => format!("watch stream connected to {at}"),
                None => "watch stream connected".into(),
            }
        } else {
            "not connected: serving per its policy, reconnecting".into()
        }
    );
    println!(
        "epoch         {} (the DB server's, as last seen)",
        st.db_epoch
    );
    println!("schema        version {}", st.schema_version);
    println!("cache         {} records", st.cache_entries);
    // Where the DB server answers (its first URL), its recovery progress.
    let db = st.db.split(',').next().unwrap_or_default();
    match DbClient::new(db)
        .get_json::<RecoveryStatus>("/v1/recovery")
        .await
    {
        Ok(r) => println!(
            "recovery      {} (the DB server's): {} flagged, {} cleared, {} remaining",
            r.state.as_str(),
            r.flagged,
            r.cleared,
            r.remaining
        ),
        Err(e) => println!("recovery      unknown: the DB server did not answer ({e})"),
    }
    let notice = |n: &QuiesceNotice| {
        let when = if n.seconds_left == 0 {
            "offline".to_owned()
        } else {
            format!("offline in {}s", n.seconds_left)
        };
        format!("{when} ({}): {}", n.deadline, super::printable(&n.message))
    };
    match &st.own_quiesce {
        Some(n) if st.own_quiesce_by_name => println!(
            "quiesce       this server: {} (sent by name through the DB server; cancel it there)",
            notice(n)
        ),
        Some(n) => println!("quiesce       this server: {}", notice(n)),
        None => println!("quiesce       this server: none"),
    }
    match st.quiesce.as_ref().and_then(|q| q.notice.as_ref()) {
        Some(n) => println!("              the DB server: {}", notice(n)),
        None => println!("              the DB server: none"),
    }
    Ok(())
}
