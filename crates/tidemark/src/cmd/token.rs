//! `tidemark token create|list|revoke` and `tidemark audit`.

use crate::cli::{AuditArgs, TokenCommand};
use tidemark_api::auth::{AccessRole, AuditEntry, TokenCreated, TokenInfo, TokenRequest};
use tidemark_api::DbClient;
use tidemark_telemetry::{say, Said};

pub async fn run(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create { server, role, name } => {
            let role: AccessRole = match role.parse() {
                Ok(r) => r,
                Err(e) => super::usage!("--role: {e}"),
            };
            let client = DbClient::new(&server);
            let created: TokenCreated = client
                .post_json("/v1/tokens", &TokenRequest { name, role })
                .await?;
            say(
                Said::Step,
                format_args!(
                    "token '{}' ({}) created; it is shown only now: keep it secret",
                    created.name,
                    created.role.as_str()
                ),
            );
            println!("{}", created.token);
            Ok(())
        }
        TokenCommand::List { server, json } => {
            let tokens: Vec<TokenInfo> = DbClient::new(&server).get_json("/v1/tokens").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tokens)?);
            } else if tokens.is_empty() {
                println!("no tokens: the server serves loopback clients only (protected mode)");
            } else {
                for t in tokens {
                    println!(
                        "{:<24} {:<7} created {}",
                        t.name,
                        t.role.as_str(),
                        t.created_at
                    );
                }
            }
            Ok(())
        }
        TokenCommand::Revoke { server, name } => {
            let client = DbClient::new(&server);
            let url = client.url(&format!(
                "/v1/tokens/{}",
                tidemark_api::client::encode_path(&name)
            ));
            let resp = client
                .http()
                .delete(&url)
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("could not reach {url}: {e}"))?;
            if !resp.status().is_success() {
                let body: serde_json::Value = resp.json().await.unwrap_or_default();
                anyhow::bail!(
                    "revoke refused: {}",
                    body["error"]["message"].as_str().unwrap_or("unknown error")
                );
            }
            println!("token '{name}' revoked");
            Ok(())
        }
    }
}

pub async fn audit(args: AuditArgs) -> anyhow::Result<()> {
    let entries: Vec<AuditEntry> = DbClient::new(&args.server).get_json("/v1/audit").await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    for e in entries {
        println!("{}  {:<16} {:<16} {}", e.at, e.who, e.action, e.detail);
    }
    Ok(())
}
