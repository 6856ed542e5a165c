//! Log set-up: one call at program start.

use std::io::IsTerminal;
use std::str::FromStr;
use tracing_subscriber::EnvFilter;

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Plain,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "plain" => Ok(LogFormat::Plain),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "log format must be 'plain' or 'json', not '{other}'"
            )),
        }
    }
}

/// Installs the global subscriber. The filter comes from `RUST_LOG`, else
/// `default_filter` (e.g. `info`). Safe to call twice: the second call is a
/// no-op.
pub fn init_logging(format: LogFormat, default_filter: &str) {
    crate::say::set_format(format);
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A closed stderr (a log collector restarting) loses lines; the
        // default reports that with `eprintln!`, which panics the task
        // that logged (a signal handler, a watch stream) and leaves the
        // process half-alive.
        .log_internal_errors(false)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Plain => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
