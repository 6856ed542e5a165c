//! Service orders as the OpS receives them: one JSON object a line,
//! `{"table", "key", "op", "fields"}`. The OpS adds `source` and `seq`.

use serde::{Deserialize, Serialize};
use tidemark_api::{Fields, Op};

/// An order before the OpS numbers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputOrder {
    pub table: String,
    pub key: String,
    pub op: Op,
    /// Absent or `null`: none (a delete).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub fields: Fields,
}

/// Absent or `null` as no fields; a field named twice is refused, as the
/// DB server refuses it (the journal must not keep a guess of which).
fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Fields, D::Error> {
    struct Unique(Fields);
    impl<'de> Deserialize<'de> for Unique {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            tidemark_api::order::unique_fields(d).map(Unique)
        }
    }
    Ok(Option::<Unique>::deserialize(d)?
        .map(|u| u.0)
        .unwrap_or_default())
}

/// Why the input was refused. Nothing is journaled if any line is bad.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("line {line}: {detail}; each line must be {{\"table\": \"subscriber\", \"key\": \"…\", \"op\": \"upsert\"|\"delete\", \"fields\": {{…}}}}; nothing was journaled")]
    Line { line: usize, detail: String },
}

/// Parses every non-blank line. All or nothing.
pub fn parse(text: &str) -> Result<Vec<InputOrder>, InputError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let order: InputOrder = serde_json::from_str(line).map_err(|e| InputError::Line {
            line: i + 1,
            detail: e.to_string(),
        })?;
        // The key as the DB server checks it: one it would refuse must not
        // reach the journal, where it would block the source (each later
        // run sends the journal's unsent orders first).
        if let Err(e) = tidemark_api::schema::validate_key(&order.key) {
            return Err(InputError::Line {
                line: i + 1,
                detail: e.to_string(),
            });
        }
        out.push(order);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_and_names_the_bad_one() {
        let ok = "{\"table\":\"subscriber\",\"key\":\"a\",\"op\":\"upsert\",\"fields\":{\"plan\":\"x\"}}\n\n{\"table\":\"subscriber\",\"key\":\"a\",\"op\":\"delete\"}\n{\"table\":\"subscriber\",\"key\":\"a\",\"op\":\"delete\",\"fields\":null}\n";
        let parsed = parse(ok).unwrap();
        assert_eq!(parsed.len(), 3);
        assert!(parsed[2].fields.is_empty(), "null fields are none");
        let bad = "{\"table\":\"subscriber\",\"key\":\"a\",\"op\":\"upsert\"}\n{\"table\":\"subscriber\",\"key\":\"a\",\"op\":\"merge\"}\n";
        let err = parse(bad).unwrap_err().to_string();
        assert!(err.starts_with("line 2:"), "{err}");
        // Keys the DB server refuses: empty, `.`/`..`, NUL.
        for key in ["", ".", "..", "a\\u0000b"] {
            let line = format!("{{\"table\":\"subscriber\",\"key\":\"{key}\",\"op\":\"delete\"}}");
            let err = parse(&line).unwrap_err().to_string();
            assert!(
                err.starts_with("line 1: ") && err.contains("key"),
                "{key}: {err}"
            );
        }
        // A field named twice: refused, not journaled as the last one.
        let twice = "{\"table\":\"subscriber\",\"key\":\"a\",\"op\":\"upsert\",\"fields\":{\"plan\":\"a\",\"plan\":\"b\"}}";
        let err = parse(twice).unwrap_err().to_string();
        assert!(err.contains("named twice"), "{err}");
    }
}
