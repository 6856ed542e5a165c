//! Order builders and record URLs for the default schema's table.

use serde_json::{json, Value};
use tidemark_api::{Fields, Op, Order};

/// The table every builder addresses: the default schema's `subscriber`.
pub const TABLE: &str = "subscriber";

/// An `ops submit` input line that upserts `fields` into record `key`.
pub fn upsert_line(key: &str, fields: Value) -> String {
    json!({"table": TABLE, "key": key, "op": "upsert", "fields": fields}).to_string() + "\n"
}

/// An `ops submit` input line that deletes record `key`.
pub fn delete_line(key: &str) -> String {
    json!({"table": TABLE, "key": key, "op": "delete"}).to_string() + "\n"
}

/// An upsert of record `key` numbered `seq` by the OpS `source`, as
/// `POST /v1/orders` takes it.
pub fn upsert(source: &str, seq: u64, key: String, fields: Fields) -> Order {
    Order {
        origin: None,
        source: source.to_owned(),
        seq,
        table: TABLE.to_owned(),
        key,
        op: Op::Upsert,
        fields,
    }
}

/// The URL of record `key` on a DB or service server at `base`.
pub fn key_url(base: &str, key: &str) -> String {
    format!(
        "{base}/v1/records/{TABLE}/{}",
        tidemark_api::client::encode_path(key)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_what_ops_submit_reads() {
        let up: Value = serde_json::from_str(&upsert_line("k", json!({"plan": "gold"}))).unwrap();
        assert_eq!(
            up,
            json!({"table": "subscriber", "key": "k", "op": "upsert", "fields": {"plan": "gold"}})
        );
        let del = delete_line("k");
        assert!(del.ends_with('\n'));
        let del: Value = serde_json::from_str(&del).unwrap();
        assert_eq!(
            del,
            json!({"table": "subscriber", "key": "k", "op": "delete"})
        );
    }

    #[test]
    fn key_urls_escape_the_key() {
        assert_eq!(
            key_url("http://h", "+81 1/2"),
            "http://h/v1/records/subscriber/+81%201%2F2"
        );
    }
}
