//! `tidemark recovery flags|abort`: operator tools for a recovery.

use crate::cli::RecoveryCommand;
use tidemark_api::DbClient;

pub async fn run(cmd: RecoveryCommand) -> anyhow::Result<()> {
    match cmd {
        RecoveryCommand::Flags(a) => {
            let client = DbClient::new(&a.server);
            let v: serde_json::Value = client
                .get_json(&format!("/v1/recovery/flags?limit={}", a.limit))
                .await?;
            if a.json {
                println!("{v}");
                return Ok(());
            }
            println!("{} keys still flagged as recovering", v["remaining"]);
            // Before the whole schedule list is in, every read is answered
            // as recovering, flagged or not: said, so "0 keys" misleads no
            // one.
            let status: tidemark_api::RecoveryStatus = client.get_json("/v1/recovery").await?;
            if status.state == tidemark_api::RecoveryState::Recovering && !status.schedule_final {
                let whose = if status.waiting_for_sources.is_empty() {
                    String::new()
                } else {
                    format!(" of {}", status.waiting_for_sources.join(", "))
                };
                println!("the schedule list{whose} is not complete yet, so every read is answered as recovering: run 'tidemark ops recover' for each source");
            }
            for f in v["flags"].as_array().into_iter().flatten() {
                println!(
                    "  {}/{}: waits for order {} seq {} (applied up to {})",
                    // Keys may hold any character but NUL: escaped.
                    super::printable(f["table"].as_str().unwrap_or("?")),
                    super::printable(f["key"].as_str().unwrap_or("?")),
                    super::printable(f["source"].as_str().unwrap_or("?")),
                    f["through_seq"],
                    f["high_water"]
                );
            }
            Ok(())
        }
        RecoveryCommand::Abort(a) => {
            let client = DbClient::new(&a.server);
            let v: serde_json::Value = client
                .post_json(
                    "/v1/recovery/abort",
                    &serde_json::json!({"reason": a.reason}),
                )
                .await?;
            println!(
                "recovery ended: {} flags dropped; flagged records are now served as current (reason logged on the server)",
                v["dropped_flags"]
            );
            Ok(())
        }
    }
}
