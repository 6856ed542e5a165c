//! `tidemark quiesce` (S4, S8).

use crate::cli::QuiesceArgs;
use tidemark_api::state::QuiesceNotice;
use tidemark_api::DbClient;

pub async fn run(args: QuiesceArgs) -> anyhow::Result<()> {
    if let Some(name) = &args.service {
        return by_name(&args, name).await;
    }
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

/// S8, by name, remotely: the notice goes to the DB server, which sends it
/// down the named service server's watch stream (an instance of a cluster
/// asks the others, one of which has it open). Several `--server` URLs are
/// tried in turn until one answers.
async fn by_name(args: &QuiesceArgs, name: &str) -> anyhow::Result<()> {
    if !tidemark_api::schema::is_service_name(name) {
        return Err(super::Usage(format!(
            "--service {name:?} is not a service server's name (1 to 128 printable characters, not . or ..)"
        ))
        .into());
    }
    let path = tidemark_api::client::service_quiesce_path(name);
    let shown = super::printable(name);
    let body = serde_json::json!({"seconds": args.in_secs.unwrap_or(0), "message": args.message});
    let what = if args.cancel {
        "cancel"
    } else {
        "quiesce notice"
    };
    let all = DbClient::new(&args.server);
    let mut unreachable = Vec::new();
    for base in all.bases() {
        let client = DbClient::new(base);
        let url = client.url(&path);
        let req = if args.cancel {
            client.http().delete(&url)
        } else {
            client.http().post(&url).json(&body)
        };
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                unreachable.push(format!("could not reach {url}: {e}"));
                continue;
            }
        };
        let status = resp.status();
        let answer: serde_json::Value = resp.json().await.unwrap_or_default();
        if !status.is_success() {
            let message = answer["error"]["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("{url} answered {status}"));
            anyhow::bail!("{what} refused: {message}");
        }
        let streams = answer["streams"].as_u64().unwrap_or(0);
        if args.cancel {
            let unreached: Vec<&str> = answer["unreached"]
                .as_array()
                .map(|a| a.iter().filter_map(|u| u.as_str()).collect())
                .unwrap_or_default();
            if !unreached.is_empty() {
                eprintln!(
                    "warning: these DB-server instances could not be told: {}; if {shown} streams from one of them it still holds the notice until its stream opens again: run the cancel again once they answer",
                    unreached.join(", ")
                );
            }
            if answer["had"] == false {
                println!("no quiesce notice of service server {shown} sent by name was stored; its {streams} open stream(s) were told none is in force");
            } else if streams == 0 {
                println!("quiesce notice cancelled: service server {shown} is told when its watch stream next opens");
            } else {
                println!("quiesce notice cancelled: service server {shown} stays online");
            }
            return Ok(());
        }
        if streams > 1 {
            eprintln!(
                "note: {streams} watch streams of {shown} took the notice (two service servers under one --id, or one reconnecting)"
            );
        }
        let notice = &answer["notice"];
        println!(
            "quiesce notice sent through {base}: service server {shown} goes offline in {}s (at {}): {}",
            notice["seconds_left"],
            notice["deadline"].as_str().unwrap_or("?"),
            super::printable(notice["message"].as_str().unwrap_or(""))
        );
        println!(
            "restarting it before then does not end the notice; 'tidemark quiesce --server {} --service {shown} --cancel' does",
            args.server
        );
        return Ok(());
    }
    anyhow::bail!(
        "{what} for service server {shown} not delivered: {}",
        unreachable.join("; ")
    )
}
