//! Lines of JSON that carry their own checksum, so a journal or an
//! acknowledgement file damaged on disk (a flipped bit, a block of another
//! file) is refused instead of replayed with other values. A value that
//! still parses is the danger: `"plan":"gold"` read back as `"plan":"gole"`
//! would be sent as difference data without a word.
//!
//! A sealed line is the object's JSON with one last member added,
//! `"check":"H"`, H being the first 8 bytes (hex) of the BLAKE3 digest of
//! the JSON without it. Readers that do not know it ignore the member.
//! Lines written before this existed carry none and are taken as they are,
//! but only before a file's first sealed line: after it, every line must be
//! sealed ([`Reader`]).

/// What goes between the object's JSON and its closing brace.
const PREFIX: &[u8] = b",\"check\":\"";
/// Hex digits of the check.
const HEX: usize = 16;
/// `PREFIX`, the digits, the closing quote and brace.
const SUFFIX_LEN: usize = PREFIX.len() + HEX + 2;

/// The check of `json` followed by `tail`: lowercase hex, no allocation
/// (a journal of millions of lines is checked whole when opened).
fn check_of(json: &[u8], tail: &[u8]) -> [u8; HEX] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digest = blake3::Hasher::new().update(json).update(tail).finalize();
    let mut out = [0u8; HEX];
    for (i, b) in digest.as_bytes()[..HEX / 2].iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0x0f)];
    }
    out
}

/// Appends `value` as one sealed line (with its newline) to `out`.
pub fn write_line<T: serde::Serialize>(out: &mut Vec<u8>, value: &T) -> serde_json::Result<()> {
    let start = out.len();
    serde_json::to_writer(&mut *out, value)?;
    let check = check_of(&out[start..], b"");
    // An object's JSON ends with its closing brace: the check goes before it.
    debug_assert_eq!(out.last(), Some(&b'}'), "only objects are sealed");
    out.pop();
    out.extend_from_slice(PREFIX);
    out.extend_from_slice(&check);
    out.extend_from_slice(b"\"}\n");
    Ok(())
}

/// Why a line was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Damage {
    /// It has a check, and its content does not match it.
    Mismatch,
    /// It has none, after a line that had one.
    Unsealed,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::Mismatch => f.write_str("its checksum does not match its content"),
            Damage::Unsealed => {
                f.write_str("it has no checksum, though the lines before it had one")
            }
        }
    }
}

/// Reads one file's lines in order: checks each sealed line, and refuses
/// an unsealed line once a sealed one was seen.
#[derive(Debug, Default)]
pub struct Reader {
    sealed_seen: bool,
}

impl Reader {
    /// Checks `line` (without its newline); returns it for parsing.
    pub fn check<'l>(&mut self, line: &'l [u8]) -> Result<&'l [u8], Damage> {
        let Some((json, check)) = split(line) else {
            return if self.sealed_seen {
                Err(Damage::Unsealed)
            } else {
                Ok(line)
            };
        };
        self.sealed_seen = true;
        // The JSON the check was taken of: the object closed without it.
        if check_of(json, b"}") == check {
            Ok(line)
        } else {
            Err(Damage::Mismatch)
        }
    }
}

/// A sealed line's JSON before the check, and the check's digits.
fn split(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let n = line.len();
    if n < SUFFIX_LEN || !line.ends_with(b"\"}") {
        return None;
    }
    let at = n - SUFFIX_LEN;
    if &line[at..at + PREFIX.len()] != PREFIX {
        return None;
    }
    Some((&line[..at], &line[at + PREFIX.len()..n - 2]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sealed(v: &serde_json::Value) -> Vec<u8> {
        let mut out = Vec::new();
        write_line(&mut out, v).unwrap();
        assert_eq!(out.pop(), Some(b'\n'));
        out
    }

    #[test]
    fn a_sealed_line_reads_back_as_its_value_with_the_check_beside_it() {
        let v = json!({"seq": 1, "fields": {"plan": "gold \"x\" }"}});
        let line = sealed(&v);
        let back = Reader::default().check(&line).unwrap();
        let mut parsed: serde_json::Value = serde_json::from_slice(back).unwrap();
        assert_eq!(parsed["check"].as_str().map(str::len), Some(HEX));
        parsed.as_object_mut().unwrap().remove("check");
        assert_eq!(parsed, v);
    }

    /// Every single changed byte of a sealed line is caught, whether the
    /// line still parses or not.
    #[test]
    fn any_changed_byte_is_refused() {
        let line = sealed(&json!({"seq": 7, "key": "+8130", "fields": {"plan": "gold"}}));
        for i in 0..line.len() {
            let mut bad = line.clone();
            bad[i] ^= 0x01;
            let mut r = Reader { sealed_seen: true };
            assert!(r.check(&bad).is_err(), "byte {i} changed, line taken");
        }
    }

    #[test]
    fn unsealed_lines_are_taken_only_before_the_first_sealed_one() {
        let old = br#"{"seq":1}"#;
        let new = sealed(&json!({"seq": 2}));
        let mut r = Reader::default();
        assert!(r.check(old).is_ok(), "a line from before checks");
        assert!(r.check(&new).is_ok());
        assert_eq!(r.check(old), Err(Damage::Unsealed));
    }
}
