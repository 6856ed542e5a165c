//! What a command tells its operator on standard error outside the log:
//! its failure, warnings, notes and steps.
//!
//! Plain (the default): the line as written, after its prefix (`error: `,
//! `warning: `, `note: `; a step has none). With `--log-format json`: one
//! JSON object per line, shaped as the log's own lines (`timestamp`,
//! `level`, `message`), so a log pipeline parses every line the process
//! writes, the one that says why it stopped included.

use crate::LogFormat;
use std::io::Write;
use std::sync::OnceLock;

static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// Set once, by [`crate::init_logging`].
pub(crate) fn set_format(format: LogFormat) {
    let _ = FORMAT.set(format);
}

/// What kind of line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Said {
    Error,
    Warning,
    Note,
    /// Progress or an outcome, with no prefix.
    Step,
}

impl Said {
    fn prefix(self) -> &'static str {
        match self {
            Said::Error => "error: ",
            Said::Warning => "warning: ",
            Said::Note => "note: ",
            Said::Step => "",
        }
    }

    fn level(self) -> &'static str {
        match self {
            Said::Error => "ERROR",
            Said::Warning => "WARN",
            Said::Note | Said::Step => "INFO",
        }
    }
}

/// Writes one line to standard error in the process's log format. A
/// closed standard error loses it, as it does the log's lines, without a
/// panic (a client command, which takes SIGPIPE, ends there quietly).
pub fn say(kind: Said, message: impl std::fmt::Display) {
    let line = render(
        FORMAT.get().copied().unwrap_or_default(),
        kind,
        &message.to_string(),
        chrono::Utc::now(),
    );
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

fn render(
    format: LogFormat,
    kind: Said,
    message: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> String {
    match format {
        LogFormat::Plain => format!("{}{message}", kind.prefix()),
        LogFormat::Json => serde_json::json!({
            "timestamp": now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "level": kind.level(),
            "message": message,
        })
        .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_keeps_the_line_and_json_is_one_parsable_object() {
        let now = chrono::Utc::now();
        assert_eq!(
            render(LogFormat::Plain, Said::Note, "run it again", now),
            "note: run it again"
        );
        assert_eq!(render(LogFormat::Plain, Said::Step, "done", now), "done");
        let line = render(LogFormat::Json, Said::Error, "a \"quoted\"\nline", now);
        assert!(!line.contains('\n'), "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "ERROR");
        assert_eq!(v["message"], "a \"quoted\"\nline");
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    }
}
