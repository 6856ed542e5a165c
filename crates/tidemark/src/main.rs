//! `tidemark`: the one program, with a subcommand per role and tool.
//!
//! # Layout
//! - `cli`: every subcommand and flag (clap).
//! - `config`: the TOML file and `TIDEMARK_*` environment layering.
//! - `signals`: SIGINT/SIGTERM to a cancellation token.
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
    let cli = cli::Cli::parse();
    let format = match cli.log_format.as_deref().unwrap_or("plain").parse() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    tidemark_telemetry::init_logging(format, "info");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cmd::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: what failed, why, what to do.
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {msg}");
            if e.downcast_ref::<cmd::Usage>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}
