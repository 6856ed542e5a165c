//! Tables, typed columns and the validation of keys and fields.
//!
//! Identifiers that reach SQL come only from a validated [`Schema`]: a table
//! or column name is accepted only if it matches [`is_identifier`], and input
//! names are looked up in the schema, never spliced into SQL.

use crate::Fields;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Longest key in bytes.
pub const MAX_KEY_BYTES: usize = 256;

/// The type of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    String,
    Integer,
    Boolean,
    /// An RFC 3339 timestamp, kept as text.
    Timestamp,
    /// Any JSON value, kept as JSON text.
    Json,
}

impl ColumnType {
    pub fn name(self) -> &'static str {
        match self {
            ColumnType::String => "string",
            ColumnType::Integer => "integer",
            ColumnType::Boolean => "boolean",
            ColumnType::Timestamp => "timestamp",
            ColumnType::Json => "json",
        }
    }

    /// The type named `name` (as [`ColumnType::name`] writes it).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "string" => ColumnType::String,
            "integer" => ColumnType::Integer,
            "boolean" => ColumnType::Boolean,
            "timestamp" => ColumnType::Timestamp,
            "json" => ColumnType::Json,
            _ => return None,
        })
    }
}

/// A nullable, typed column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: ColumnType,
}

/// A secondary index of a table, over one or more of its columns in order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Index {
    pub columns: Vec<String>,
}

/// A table: its columns in order, and its indexes. Every table is keyed by
/// the terminal ID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSchema {
    pub columns: Vec<Column>,
    #[serde(default)]
    pub indexes: Vec<Index>,
}

impl TableSchema {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    fn column_names(&self) -> String {
        self.columns
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The whole schema, with the version it was published as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schema {
    pub version: u64,
    pub tables: BTreeMap<String, TableSchema>,
}

/// Why a key, a table or a field was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidInput {
    /// The key is empty or longer than [`MAX_KEY_BYTES`].
    #[error("key must be 1 to {MAX_KEY_BYTES} bytes of UTF-8, got {0} bytes; send the terminal ID as the key")]
    Key(usize),
    /// The table is not in the schema.
    #[error("table '{table}' is not in the schema (known tables: {known}); check the table name or publish a schema that adds it")]
    UnknownTable { table: String, known: String },
    /// A field names a column the table does not have.
    #[error("column '{column}' is not in table '{table}' (known columns: {known}); remove the field or publish a schema that adds the column")]
    UnknownColumn {
        table: String,
        column: String,
        known: String,
    },
    /// A field's value does not fit its column's type.
    #[error("field '{column}' of table '{table}' must be {expected} or null, got {got}")]
    FieldType {
        table: String,
        column: String,
        expected: &'static str,
        got: String,
    },
    /// A delete that carries fields.
    #[error("a delete must not carry fields; send op \"upsert\" to change fields")]
    DeleteWithFields,
    /// The order's source name is empty or too long.
    #[error("source must be 1 to 128 bytes, got {0} bytes; name the OpS that numbers the orders")]
    Source(usize),
    /// The order's source name holds a control character.
    #[error("source {0:?} holds a control character; a source name is 1 to 128 printable characters, naming the OpS that numbers the orders")]
    SourceChars(String),
    /// Order seqs start at 1.
    #[error("seq must be 1 or more; the OpS numbers its orders from 1")]
    ZeroSeq,
    /// A seq beyond what any source can have numbered.
    #[error("seq {0} is beyond {MAX_SEQ}; the OpS numbers its orders from 1, one by one")]
    SeqTooLarge(u64),
    /// A key that cannot be addressed in a URL path.
    #[error("the keys '.' and '..' cannot be addressed in a URL path (HTTP clients normalise them away); use another terminal ID")]
    DotKey,
    /// A string or JSON field larger than [`MAX_FIELD_BYTES`].
    #[error("field '{column}' is {bytes} bytes; a field holds at most {MAX_FIELD_BYTES} bytes")]
    FieldTooLarge { column: String, bytes: usize },
    /// A key with the NUL character, which PostgreSQL cannot store: refused
    /// on every engine, so that any store can move to any other.
    #[error("a key cannot contain the NUL character (U+0000): PostgreSQL cannot store it, so no Tidemark engine takes it; send the terminal ID without it")]
    NulInKey,
    /// A string (or a string inside a JSON value) with the NUL character.
    #[error("field '{column}' contains the NUL character (U+0000): PostgreSQL cannot store it, so no Tidemark engine takes it; remove it, or encode the value (base64, hex)")]
    NulInField { column: String },
    /// A JSON value with a whole number past 64 bits, which would be kept
    /// rounded (JSON numbers are held as 64-bit integers or doubles).
    #[error("field '{column}' holds a whole number past 64 bits, which would be kept rounded, not as sent; send it as a string")]
    InexactNumber { column: String },
    /// A JSON value nested deeper than [`MAX_FIELD_DEPTH`].
    #[error("field '{column}' nests arrays and objects more than {MAX_FIELD_DEPTH} levels deep; flatten the value")]
    TooDeep { column: String },
    /// A name with control characters or of the wrong size.
    #[error("a {what} name is 1 to 128 printable characters, got {got:?}")]
    BadName { what: &'static str, got: String },
}

/// The largest seq an order may carry (what the stores keep as a signed
/// 64-bit integer).
pub const MAX_SEQ: u64 = i64::MAX as u64;
/// The largest string or JSON value one field may hold, in bytes.
pub const MAX_FIELD_BYTES: usize = 64 * 1024;
/// The deepest a field's JSON value may nest arrays and objects: well
/// inside what a batch of orders may nest as a whole (JSON parsers stop at
/// 128), so an order `ops submit` journals is one the DB server can read.
pub const MAX_FIELD_DEPTH: usize = 64;

/// A source or subscriber name: 1 to 128 bytes, no control characters (it
/// goes into logs and headers).
pub fn validate_name(what: &'static str, name: &str) -> Result<(), InvalidInput> {
    if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        return Err(InvalidInput::BadName {
            what,
            got: truncate(name),
        });
    }
    Ok(())
}

/// A service server's name (its `--id`, the subscriber of its watch
/// stream): a name ([`validate_name`]) a URL path can carry, so not `.` or
/// `..` (a path naming them is another path once normalised:
/// `/v1/services/../quiesce` is the DB server's own quiesce notice).
pub fn is_service_name(name: &str) -> bool {
    validate_name("subscriber", name).is_ok() && name != "." && name != ".."
}

impl Schema {
    /// The built-in schema: table `subscriber` (CONTRACT.md, Records).
    pub fn default_schema() -> Self {
        let col = |name: &str, ty| Column {
            name: name.to_owned(),
            ty,
        };
        let subscriber = TableSchema {
            columns: vec![
                col("plan", ColumnType::String),
                col("status", ColumnType::String),
                col("services", ColumnType::Json),
                col("roaming", ColumnType::Boolean),
                col("credit_limit", ColumnType::Integer),
            ],
            indexes: Vec::new(),
        };
        Schema {
            version: 1,
            tables: BTreeMap::from([("subscriber".to_owned(), subscriber)]),
        }
    }

    pub fn table(&self, name: &str) -> Result<&TableSchema, InvalidInput> {
        self.tables
            .get(name)
            .ok_or_else(|| InvalidInput::UnknownTable {
                table: truncate(name),
                known: self.tables.keys().cloned().collect::<Vec<_>>().join(", "),
            })
    }

    /// Checks an upsert's fields against the table: every field must be a
    /// column and fit its type (null is always allowed).
    pub fn validate_fields(&self, table: &str, fields: &Fields) -> Result<(), InvalidInput> {
        let t = self.table(table)?;
        for (name, value) in fields {
            let column = t.column(name).ok_or_else(|| InvalidInput::UnknownColumn {
                table: table.to_owned(),
                column: truncate(name),
                known: t.column_names(),
            })?;
            let bytes = match value {
                serde_json::Value::String(s) => s.len(),
                serde_json::Value::Array(_) | serde_json::Value::Object(_) => {
                    value.to_string().len()
                }
                _ => 0,
            };
            if bytes > MAX_FIELD_BYTES {
                return Err(InvalidInput::FieldTooLarge {
                    column: name.clone(),
                    bytes,
                });
            }
            if depth(value) > MAX_FIELD_DEPTH {
                return Err(InvalidInput::TooDeep {
                    column: name.clone(),
                });
            }
            if holds_nul(value) {
                return Err(InvalidInput::NulInField {
                    column: name.clone(),
                });
            }
            if column.ty == ColumnType::Json && holds_inexact(value) {
                return Err(InvalidInput::InexactNumber {
                    column: name.clone(),
                });
            }
            if !value_fits(column.ty, value) {
                return Err(InvalidInput::FieldType {
                    table: table.to_owned(),
                    column: name.clone(),
                    expected: column.ty.name(),
                    got: describe(value),
                });
            }
        }
        Ok(())
    }
}

/// Checks an OpS source name: 1 to 128 bytes, no control character.
pub fn validate_source(source: &str) -> Result<(), InvalidInput> {
    if source.is_empty() || source.len() > 128 {
        return Err(InvalidInput::Source(source.len()));
    }
    if source.chars().any(char::is_control) {
        return Err(InvalidInput::SourceChars(source.chars().take(64).collect()));
    }
    Ok(())
}

/// Checks a key: 1 to 256 bytes (UTF-8 is guaranteed by `&str`).
pub fn validate_key(key: &str) -> Result<(), InvalidInput> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(InvalidInput::Key(key.len()));
    }
    if key == "." || key == ".." {
        return Err(InvalidInput::DotKey);
    }
    if key.contains('\0') {
        return Err(InvalidInput::NulInKey);
    }
    Ok(())
}

/// How deep a value nests arrays and objects (a scalar: 0).
fn depth(value: &serde_json::Value) -> usize {
    use serde_json::Value;
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Whether a value holds the NUL character in a string or an object key,
/// at any depth.
fn holds_nul(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// Whether a value holds, at any depth, a whole number too large for 64
/// bits: read as a double, so kept rounded.
fn holds_inexact(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::Number(n) => !n.is_i64() && !n.is_u64() && n.as_f64().is_some_and(past_64_bits),
        Value::Array(items) => items.iter().any(holds_inexact),
        Value::Object(map) => map.values().any(holds_inexact),
        _ => false,
    }
}

/// Whether `f`, a number serde_json read as a double, was most likely a
/// whole number written out past 64 bits (below `i64::MIN`, at or above
/// 2^64), such as a 20- to 22-digit identifier (an ICCID). serde_json does
/// not keep how it was written, so `1e20` looks the same; past 22 digits a
/// whole double is taken for a float written so (`6.02e23` is one a JSON
/// column may hold).
fn past_64_bits(f: f64) -> bool {
    f.fract() == 0.0
        && (f >= 18_446_744_073_709_551_616.0 || f <= -9_223_372_036_854_775_808.0)
        && f.abs() < 1e22
}

/// A name that may become an SQL identifier: `[a-z][a-z0-9_]{0,62}`, not
/// starting with the reserved prefix `tm_`.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && name.len() <= 63
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && !name.starts_with("tm_")
}

fn value_fits(ty: ColumnType, value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (ty, value) {
        (_, Value::Null) => true,
        (ColumnType::String, Value::String(_)) => true,
        (ColumnType::Integer, Value::Number(n)) => n.is_i64(),
        (ColumnType::Boolean, Value::Bool(_)) => true,
        (ColumnType::Timestamp, Value::String(s)) => {
            chrono::DateTime::parse_from_rfc3339(s).is_ok()
        }
        (ColumnType::Json, _) => true,
        _ => false,
    }
}

fn describe(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::Null => "null".into(),
        Value::Bool(_) => "a boolean".into(),
        Value::Number(n) if n.is_i64() => "an integer".into(),
        // Past i64: an integer all the same, but not one a column holds.
        Value::Number(n) if n.is_u64() => {
            "an integer above 9223372036854775807 (integer columns are 64-bit signed)".into()
        }
        // Past u64: serde_json reads it as a float, integral or not.
        Value::Number(n) if n.as_f64().is_some_and(past_64_bits) => {
            "an integer beyond 64 bits (integer columns are 64-bit signed)".into()
        }
        Value::Number(_) => "a non-integer number".into(),
        Value::String(s) => format!("the string {:?}", truncate(s)),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// Names echoed back in errors are cut so an error stays one readable line.
fn truncate(s: &str) -> String {
    if s.len() <= 64 {
        return s.to_owned();
    }
    let mut end = 64;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: serde_json::Value) -> Fields {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn default_schema_accepts_typed_fields() {
        let s = Schema::default_schema();
        let f = fields(
            json!({"plan": "gold", "status": null, "services": ["voice"], "roaming": true, "credit_limit": 5000}),
        );
        assert_eq!(s.validate_fields("subscriber", &f), Ok(()));
    }

    #[test]
    fn refuses_unknown_table_column_and_wrong_types() {
        let s = Schema::default_schema();
        assert!(matches!(
            s.validate_fields("nope", &Fields::new()),
            Err(InvalidInput::UnknownTable { .. })
        ));
        assert!(matches!(
            s.validate_fields("subscriber", &fields(json!({"colour": "red"}))),
            Err(InvalidInput::UnknownColumn { .. })
        ));
        for bad in [
            json!({"roaming": "yes"}),
            json!({"credit_limit": 1.5}),
            json!({"plan": 3}),
        ] {
            assert!(matches!(
                s.validate_fields("subscriber", &fields(bad)),
                Err(InvalidInput::FieldType { .. })
            ));
        }
        // An integer past 64 bits is named as one, not as a fraction.
        let huge: serde_json::Value = serde_json::from_str("123456789012345678901").unwrap();
        let err = s
            .validate_fields("subscriber", &fields(json!({"credit_limit": huge})))
            .unwrap_err()
            .to_string();
        assert!(err.contains("an integer beyond 64 bits"), "{err}");
        // Nor inside a JSON value, where it would be kept rounded.
        let nested = json!({"services": {"n": [1, huge], "ok": 18446744073709551615u64, "f": 1.5}});
        let err = s
            .validate_fields("subscriber", &fields(nested))
            .unwrap_err()
            .to_string();
        assert!(err.contains("past 64 bits"), "{err}");
        // Below i64::MIN too.
        let low: serde_json::Value = serde_json::from_str("-10000000000000000001").unwrap();
        let err = s
            .validate_fields("subscriber", &fields(json!({"services": {"n": low}})))
            .unwrap_err()
            .to_string();
        assert!(err.contains("past 64 bits"), "{err}");
        // Floats written with an exponent, and whole floats, are floats.
        let big: serde_json::Value = serde_json::from_str("6.02e23").unwrap();
        let vast: serde_json::Value = serde_json::from_str("1e300").unwrap();
        let fine = json!({"services": {"ok": 18446744073709551615u64, "f": 1.5, "neg": -9223372036854775808i64, "big": big, "vast": vast}});
        s.validate_fields("subscriber", &fields(fine)).unwrap();
        let err = s
            .validate_fields("subscriber", &fields(json!({"credit_limit": 5.0})))
            .unwrap_err()
            .to_string();
        assert!(
            !err.contains("64 bits"),
            "5.0 is no integer past 64 bits: {err}"
        );
    }

    #[test]
    fn key_bounds() {
        assert!(validate_key("").is_err());
        assert!(validate_key(&"x".repeat(256)).is_ok());
        assert!(validate_key(&"x".repeat(257)).is_err());
        assert!(validate_key("+81312345678").is_ok());
    }

    #[test]
    fn identifiers() {
        assert!(is_identifier("subscriber"));
        assert!(!is_identifier("Subscriber"));
        assert!(!is_identifier("a;drop table x"));
        assert!(!is_identifier("tm_changes"));
        assert!(!is_identifier(""));
    }
}
