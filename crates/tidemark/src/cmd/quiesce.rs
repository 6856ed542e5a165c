//! `tidemark quiesce` (S4).

use crate::cli::QuiesceArgs;
use tidemark_api::state::QuiesceNotice;
use tidemark_api::DbClient;

pub async fn run(args: QuiesceArgs) -> anyhow::Result<()> {
    let client = DbClient::new(&args.server);
    if args.cancel {
        let url = client.url("/v1/quiesce");
        let resp = client
            .http()
            .delete(&url)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("could not reach {url}: {e}"))?;
        if !resp.status().is_success() {
            let body: serde_json::Value = resp.json().await.unwrap_or_default();
            anyhow::bail!(
                "cancel refused: {}",
                body["error"]["message"].as_str().unwrap_or("unknown error")
            );
        }
        println!("quiesce notice cancelled: {} stays online", args.server);
        return Ok(());
    }
    let seconds = args.in_secs.unwrap_or(0);
    let body = serde_json::json!({"seconds": seconds, "message": args.message});
    let notice: QuiesceNotice = client.post_json("/v1/quiesce", &body).await?;
    println!(
        "quiesce notice sent: {} goes offline in {}s (at {}): {}",
        args.server,
        notice.seconds_left,
        notice.deadline,
        super::printable(&notice.message)
    );
    Ok(())
}
