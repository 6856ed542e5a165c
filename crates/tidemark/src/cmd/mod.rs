//! One module per subcommand.

mod backup;
mod cleanup;
mod demo;
mod ops;
mod promote;
mod quiesce;
mod recovery;
mod restore;
mod server;
mod service;
mod status;
mod token;

use crate::cli::{Cli, Command};

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(t) = &cli.token {
        // Every DB-server client this process makes sends it.
        std::env::set_var("TIDEMARK_TOKEN", t);
    }
    if let Some(ca) = &cli.ca_cert {
        std::env::set_var("TIDEMARK_CA_CERT", ca);
    }
    let mut config = crate::config::load(cli.config.as_deref())?;
    config.server.config_file = cli.config.clone();
    match cli.command {
        Command::Server(args) => server::run(config.server, args).await,
        Command::Service(args) => service::run(config.service, args).await,
        Command::Ops(cmd) => ops::run(config.ops, cmd).await,
        Command::Status(args) => status::run(args).await,
        Command::Recovery(cmd) => recovery::run(cmd).await,
        Command::Bench(cmd) => tidemark_bench::run(cmd).await,
        Command::Backup(cmd) => backup::run(config.server, cmd).await,
        Command::Restore(args) => restore::run(config.server, args).await,
        Command::Cleanup(args) => cleanup::run(config.server, args).await,
        Command::Quiesce(args) => quiesce::run(args).await,
        Command::Promote(args) => promote::run(args).await,
        Command::Schema(args) => schema(args).await,
        Command::Demo(args) => demo::run_demo(args).await,
        Command::Token(cmd) => token::run(cmd).await,
        Command::Audit(args) => token::audit(args).await,
    }
}

/// `tidemark schema show --server URL`: the schema in force. Staging and
/// publishing are not built yet.
async fn schema(args: crate::cli::SchemaArgs) -> anyhow::Result<()> {
    let mut it = args.args.iter();
    let sub = it.next().map(String::as_str);
    let mut server = "http://127.0.0.1:7070".to_owned();
    let mut pending = false;
    while let Some(a) = it.next() {
        match a.as_str() {
            "--server" => server = it.next().cloned().unwrap_or_default(),
            "--pending" => pending = true,
            _ => {}
        }
    }
    match sub {
        Some("show") if !pending => {
            let v: serde_json::Value = tidemark_api::DbClient::new(&server)
                .get_json("/v1/schema")
                .await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        Some("show") => not_yet("schema show --pending", "the schema-publication work"),
        Some(other) => not_yet(&format!("schema {other}"), "the schema-publication work"),
        None => anyhow::bail!("usage: tidemark schema show --server URL"),
    }
}

fn not_yet(what: &str, issue: &str) -> anyhow::Result<()> {
    anyhow::bail!(
        "'tidemark {what}' is not built yet in this version (planned in {issue}); nothing was done"
    )
}

/// Binds a listener, printing the bound address on stdout so scripts and
/// tests that pass port 0 can find it.
pub async fn bind(addr: &str, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    bind_scheme(addr, what, "http").await
}

/// [`bind`], printing `scheme://` (https for a TLS server).
pub async fn bind_scheme(
    addr: &str,
    what: &str,
    scheme: &str,
) -> anyhow::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {addr} for the {what}: {e}; choose another address with --listen"
        )
    })?;
    let bound = listener.local_addr()?;
    println!("listening on {scheme}://{bound}");
    Ok(listener)
}
