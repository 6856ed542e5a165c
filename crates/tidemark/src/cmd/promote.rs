//! `tidemark promote --server URL`: a planned switchover to that standby (S5).

use crate::cli::PromoteArgs;
use tidemark_api::{ClientError, DbClient};

pub async fn run(args: PromoteArgs) -> anyhow::Result<()> {
    let client = DbClient::new(&args.server);
    let state = match client.state().await {
        Ok(s) => s,
        Err(ClientError::Transport { .. }) => anyhow::bail!(
            "promote refused: {} cannot be reached (stopped, or not an instance of this cluster); 'tidemark status --server OTHER_INSTANCE' lists the live members",
            args.server
        ),
        // The state read is a reader's; promote itself is an admin's.
        Err(e) if e.status() == Some(401) => anyhow::bail!(
            "promote refused: {} took no valid token ({e}); promote needs an 'admin' token: pass it with --token (or TIDEMARK_TOKEN)",
            args.server
        ),
        Err(e) => return Err(e.into()),
    };
    if state.store == "sqlite" {
        anyhow::bail!(
            "promote refused: {} runs the embedded engine, which has one instance and no standby; high availability needs the PostgreSQL engine (--store postgres)",
            args.server
        );
    }
    let before = state.primary.clone();
    // On stdout: a refusal is then the one line on stderr (CONTRACT.md).
    println!(
        "promoting {} (primary now: {})…",
        args.server,
        before.as_deref().unwrap_or("none")
    );
    let answer: serde_json::Value = client
        .post_json("/v1/cluster/promote", &serde_json::json!({}))
        .await
        .map_err(|e| anyhow::anyhow!("promote refused: {e}"))?;
    let term = answer["term"].as_u64().unwrap_or_default();
    if answer["already_primary"].as_bool() == Some(true) {
        println!("{} is already the primary (term {term})", args.server);
    } else {
        println!(
            "{} is now the primary (term {term}); {} serves as a standby",
            args.server,
            before.as_deref().unwrap_or("the old primary")
        );
    }
    Ok(())
}
