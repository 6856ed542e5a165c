//! One module per subcommand.

mod backup;
mod cleanup;
mod demo;
mod ops;
mod promote;
mod quiesce;
mod recovery;
mod restore;
mod schema;
mod server;
mod service;
mod status;
mod token;

use crate::cli::{Cli, Command};

/// Bad usage found after parsing (a flag's value, a missing setting):
/// the program exits 2, as for what clap refuses.
#[derive(Debug)]
pub struct Usage(pub String);

/// A client command stopped by a signal before it finished (exit 130).
#[derive(Debug)]
pub struct Interrupted(pub &'static str);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "interrupted by {} before it finished: run the same command again, which clears or finishes what this one began (backups and restores keep nothing partial, ops commands resume from their journal, the demo stopped its servers)",
            self.0
        )
    }
}

impl std::error::Error for Interrupted {}

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// Returns early with a [`Usage`] error.
macro_rules! usage {
    ($($arg:tt)*) => {
        return Err(anyhow::Error::new($crate::cmd::Usage(format!($($arg)*))))
    };
}
pub(crate) use usage;

/// The engine a `--store` flag names (bad usage otherwise).
pub(crate) fn store_kind(flag: &str) -> anyhow::Result<tidemark_server::StoreKind> {
    match flag {
        "sqlite" => Ok(tidemark_server::StoreKind::Sqlite),
        "postgres" => Ok(tidemark_server::StoreKind::Postgres),
        other => usage!("--store must be 'sqlite' or 'postgres', not '{other}'"),
    }
}

/// The PostgreSQL URL: `--database-url`, else the configuration's (bad
/// usage if neither).
pub(crate) fn database_url(
    flag: Option<String>,
    config: &tidemark_server::ServerConfig,
) -> anyhow::Result<String> {
    match flag.or_else(|| config.database_url.as_ref().map(|s| s.0.clone())) {
        Some(url) => Ok(url),
        None => {
            usage!("--store postgres needs --database-url URL (or TIDEMARK_SERVER__DATABASE_URL)")
        }
    }
}

/// Runs the parsed command line.
/// Refuses a `--ca-cert` that is not a readable PEM file with at least one
/// certificate, before anything is sent (a bad one was reported, then
/// ignored, and every https request failed as untrusted).
fn check_ca_cert(path: &std::path::Path) -> anyhow::Result<()> {
    let pem = match std::fs::read(path) {
        Ok(pem) => pem,
        Err(e) => usage!(
            "cannot read the --ca-cert file {}: {e}; give the PEM file of the CA that signed the server's certificate",
            path.display()
        ),
    };
    match reqwest::Certificate::from_pem_bundle(&pem) {
        Ok(certs) if !certs.is_empty() => Ok(()),
        Ok(_) | Err(_) => usage!(
            "the --ca-cert file {} holds no PEM certificate ('-----BEGIN CERTIFICATE-----'); give the CA certificate that signed the server's",
            path.display()
        ),
    }
}

/// Refuses a `--client-cert`/`--client-key` pair a client cannot present
/// (unreadable, not PEM, a key that is not the certificate's, an X.509 v1
/// certificate), before anything is sent: it made every command panic, or
/// was reported and then ignored.
fn check_client_identity(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<()> {
    // Building a client is what checks the key against the certificate.
    let checked = tidemark_api::client::client_identity(cert, key).and_then(|id| {
        reqwest::Client::builder()
            .identity(id)
            .build()
            .map(drop)
            .map_err(|e| chain(&e))
    });
    if let Err(why) = checked {
        usage!(
            "cannot use the client certificate {} with key {}: {why}; give a PEM X.509 v3 certificate and the PEM private key that belongs to it",
            cert.display(),
            key.display()
        );
    }
    Ok(())
}

/// An error with its causes, `outer: inner: …`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

/// Text another party wrote (a quiesce message, a key), fit for a
/// terminal: its control characters and bidirectional overrides escaped,
/// so it cannot move the cursor, recolour or retitle the operator's
/// terminal, nor make a line read otherwise than it is.
pub(crate) fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            let bidi = matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
            if c.is_control() || bidi {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(t) = &cli.token {
        // Every DB-server client this process makes sends it.
        std::env::set_var("TIDEMARK_TOKEN", t);
    }
    if let Some(ca) = &cli.ca_cert {
        check_ca_cert(ca)?;
        std::env::set_var("TIDEMARK_CA_CERT", ca);
    }
    if let (Some(cert), Some(key)) = (&cli.client_cert, &cli.client_key) {
        check_client_identity(cert, key)?;
        std::env::set_var("TIDEMARK_CLIENT_CERT", cert);
        std::env::set_var("TIDEMARK_CLIENT_KEY", key);
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
        Command::Schema(cmd) => schema::run(cmd).await,
        Command::Demo(args) => demo::run_demo(args).await,
        Command::Token(cmd) => token::run(cmd).await,
        Command::Audit(args) => token::audit(args).await,
    }
}

/// Binds a listener, printing `listening on scheme://ADDR` on stdout so
/// scripts and tests that pass port 0 can find it (https for a TLS server).
pub async fn bind_scheme(
    addr: &str,
    what: &str,
    scheme: &str,
) -> anyhow::Result<tokio::net::TcpListener> {
    let listener = bind_quietly(addr, what).await?;
    announce(&listener, scheme)?;
    Ok(listener)
}

/// Prints `listening on scheme://ADDR` for `listener`. Standard output
/// closed (a starter that died, a pipe nobody reads) is no reason to stop
/// serving: the address goes to the log as well.
pub fn announce(listener: &tokio::net::TcpListener, scheme: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let line = format!("listening on {scheme}://{}", listener.local_addr()?);
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
        tracing::warn!(error = %e, "{line}, which standard output did not take");
    }
    Ok(())
}

/// Binds a listener without saying so yet ([`announce`]).
pub async fn bind_quietly(addr: &str, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        // Not an address at all: bad usage (exit 2), not a failure.
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => usage!(
            "--listen {addr} is not an address to listen on ({e}); give HOST:PORT, e.g. 127.0.0.1:7070"
        ),
        Err(e) => anyhow::bail!(
            "cannot listen on {addr} for the {what}: {e}; choose another address with --listen"
        ),
    };
    Ok(listener)
}

#[cfg(test)]
mod tests {
    #[test]
    fn printable_escapes_control_characters_only() {
        assert_eq!(
            super::printable("down at 5 \u{1b}[2J\nnow é"),
            "down at 5 \\u{1b}[2J\\nnow é"
        );
        // A right-to-left override would show this key as "key-exe.txt".
        assert_eq!(
            super::printable("key-\u{202e}txt.exe"),
            "key-\\u{202e}txt.exe"
        );
    }
}
