//! `tidemark`: the one program, with a subcommand per role and tool.
//!
//! # Layout
//! - `cli`: every subcommand and flag (clap).
//! - `config`: the TOML file and `TIDEMARK_*` environment layering.
//! - `signals`: SIGINT, SIGTERM and SIGHUP: a graceful stop for the roles,
//!   a stop where it stands (one line, exit 130) for every other command.
//! - `cmd`: one module per subcommand.
//!
//! `tidemark bench …` runs the load generators of the `tidemark-bench` crate.

mod cli;
mod cmd;
mod config;
mod signals;

use clap::Parser;
use std::process::ExitCode;

// Order batches, JSON and record answers allocate many small objects;
// mimalloc measurably beats the system allocator on that (bench recovery).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Err(e) = config::client_settings_into_env(&args) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let cli = match cli::Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let format = match cli.log_format.as_deref().unwrap_or("plain").parse() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // The roles log what they do; a client command logs only what the
    // operator must act on (warnings): its failure is the one line below
    // (CONTRACT.md), not the retries and steps before it (RUST_LOG shows
    // those).
    let role = matches!(
        &cli.command,
        cli::Command::Server(_)
            | cli::Command::Service(_)
            | cli::Command::Demo(_)
            | cli::Command::Bench(_)
    );
    tidemark_telemetry::init_logging(format, if role { "info" } else { "warn" });
    if !role {
        quiet_on_closed_output();
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if !role {
        builder.on_thread_start(sigpipe_as_error);
    }
    let runtime = match builder.build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    // The roles stop gracefully on a signal by themselves. Every other
    // command stops where it is and says so in one line
    // (`signals::stop_client`).
    let stops_by_itself = matches!(
        &cli.command,
        cli::Command::Server(_) | cli::Command::Service(_)
    );
    let outcome = runtime.block_on(async {
        if stops_by_itself {
            return cmd::run(cli).await;
        }
        let (stopped, stop) = tokio::sync::oneshot::channel();
        let watch = tokio::spawn(signals::stop_client(stopped));
        // The command first: one that finished as the signal came is not
        // reported as interrupted (nor told to run again).
        let r = tokio::select! {
            biased;
            r = cmd::run(cli) => r,
            Ok(signal) = stop => Err(anyhow::Error::new(cmd::Interrupted(signal))),
        };
        signals::client_finished();
        watch.abort();
        r
    });
    // An interrupted command's blocking work still running is not waited
    // for.
    if matches!(&outcome, Err(e) if e.downcast_ref::<cmd::Interrupted>().is_some()) {
        runtime.shutdown_background();
    }
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: what failed, why, what to do (in the log's
            // format, so a JSON log pipeline reads why the process stopped).
            tidemark_telemetry::say(tidemark_telemetry::Said::Error, one_line(&e));
            if e.downcast_ref::<cmd::Usage>().is_some() {
                ExitCode::from(2)
            } else if e.downcast_ref::<cmd::Interrupted>().is_some() {
                ExitCode::from(130)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// An error and its causes on one line, each said once (an error that
/// already quotes its cause is not followed by it again), with what to do
/// when the disk is full.
fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let said = cause.to_string().replace('\n', " ");
        if !parts.iter().any(|p| p.ends_with(&said)) {
            parts.push(said);
        }
    }
    // The file system's own error, or SQLite's (`SQLITE_FULL`).
    let full = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::StorageFull)
            || c.to_string().contains("database or disk is full")
    });
    let mut line = parts.join(": ");
    if full {
        line.push_str("; the file system is full: free space on it (or choose another place) and run the command again");
    }
    line
}

/// A client command whose output goes into a reader that stopped early
/// (`| head`) ends there, quietly, as any Unix tool does; Rust ignores
/// SIGPIPE, so the print would fail and panic instead. The roles keep
/// ignoring it (a peer that left is their business, not a reason to die).
/// Only the main thread, which prints, takes the signal: the runtime's
/// threads block it ([`sigpipe_as_error`]).
fn quiet_on_closed_output() {
    // SAFETY: sets the disposition of one signal to its default, before
    // any thread that could depend on it is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Blocks SIGPIPE on a runtime thread of a client command: a write there
/// to a peer that left fails with `EPIPE`, which is handled, instead of
/// killing the process without a word. TCP is written with MSG_NOSIGNAL,
/// but a Unix socket (PostgreSQL at `host=/var/run/postgresql`) is not.
fn sigpipe_as_error() {
    // SAFETY: changes only this thread's signal mask, with a set built
    // here.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Bad usage: clap's first line and where to look, on one line, exit 2
/// (CONTRACT.md: every failure prints one line). `--help` and `--version`
/// print in full, exit 0.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        // `tidemark ops` alone: which subcommands there are, on one line.
        let help = e.render().to_string();
        let usage = help
            .lines()
            .find_map(|l| l.trim().strip_prefix("Usage: "))
            .unwrap_or("tidemark <COMMAND>");
        let commands: Vec<&str> = help
            .lines()
            .skip_while(|l| l.trim() != "Commands:")
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|c| *c != "help")
            .collect();
        let command = usage
            .split(" [")
            .next()
            .unwrap_or(usage)
            .replace(" <COMMAND>", "");
        eprintln!(
            "error: '{command}' needs a subcommand: {}; see '{command} --help'",
            commands.join(", ")
        );
        return ExitCode::from(2);
    }
    // Every line of clap's message (what is wrong, the missing arguments,
    // possible values, a tip, the usage) but its pointer to --help.
    let rendered = e.render().to_string();
    let parts: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
        .collect();
    eprintln!("{}; see --help", parts.join("; ").replace(":;", ":"));
    ExitCode::from(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each cause is said once, and a full disk says what to do.
    #[test]
    fn an_error_line_says_each_cause_once() {
        let io = std::io::Error::from(std::io::ErrorKind::StorageFull);
        let said = io.to_string();
        let e = anyhow::Error::new(io).context(format!("/data/gen-000002: {said}"));
        let line = one_line(&e);
        assert_eq!(line.matches(&said).count(), 1, "{line}");
        assert!(line.contains("free space"), "{line}");
        // SQLite's own word for it (SQLITE_FULL).
        let e = anyhow::anyhow!("database or disk is full").context("applying orders");
        assert!(one_line(&e).contains("free space"));
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(one_line(&e), "outer: inner");
    }
}
