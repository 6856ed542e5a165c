//! The one oracle of "is this the latest data" (P4, P11).
//!
//! The latest record of a key is the fold of its orders in commit order: an
//! upsert merges its fields into the record (a new record starts with every
//! column of the default schema null), a delete removes it. An answer is
//! the latest data only if it shows exactly that record, every column, or,
//! for a key deleted or never created, that there is none.

use crate::orders::{delete_line, upsert_line, TABLE};
use serde_json::Value;
use std::collections::BTreeMap;
use tidemark_api::{Fields, Schema};

/// The latest data of the default schema's table, built by recording every
/// order as it is submitted, in the order it is submitted. `0` maps each
/// key an order named to its latest record, `None` once deleted.
#[derive(Debug, Default, Clone)]
pub struct Model(pub BTreeMap<String, Option<Fields>>);

impl Model {
    /// Records an order and returns it as an `ops submit` input line.
    ///
    /// `op` is `"upsert"` (merge `fields` into the record) or `"delete"`
    /// (`fields` is ignored); anything else is a bug in the caller.
    pub fn line(&mut self, key: &str, op: &str, fields: Value) -> String {
        let entry = self.0.entry(key.to_owned()).or_insert(None);
        match op {
            "delete" => {
                *entry = None;
                delete_line(key)
            }
            "upsert" => {
                let record = entry.get_or_insert_with(empty_record);
                for (column, value) in fields.as_object().into_iter().flatten() {
                    record.insert(column.clone(), value.clone());
                }
                upsert_line(key, fields)
            }
            other => panic!("an order's op is \"upsert\" or \"delete\", not {other:?}"),
        }
    }

    /// The latest record of `key`; `None` if it was deleted or never created.
    pub fn latest(&self, key: &str) -> Option<&Fields> {
        self.0.get(key).and_then(Option::as_ref)
    }

    /// Whether an answer to `GET /v1/records/subscriber/KEY` (its status and
    /// JSON body) shows exactly the latest data of `key`.
    pub fn is_latest(&self, key: &str, status: u16, body: &Value) -> bool {
        match self.latest(key) {
            Some(record) => {
                status == 200 && body["found"] == true && body["fields"].as_object() == Some(record)
            }
            None => status == 404 && body["found"] == false,
        }
    }
}

/// A record that has just been created: every column of the table null.
fn empty_record() -> Fields {
    let schema = Schema::default_schema();
    let table = schema
        .table(TABLE)
        .expect("the default schema has the table the test kit writes");
    table
        .columns
        .iter()
        .map(|c| (c.name.clone(), Value::Null))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn found(fields: Value) -> Value {
        json!({"table": "subscriber", "key": "k", "found": true, "fields": fields,
               "version": {"epoch": 1, "seq": 1}, "recovering": false})
    }

    fn not_found() -> Value {
        json!({"table": "subscriber", "key": "k", "found": false, "recovering": false})
    }

    /// A record with `set` and every other column of the default schema null.
    fn record(set: Value) -> Value {
        let mut r = empty_record();
        for (c, v) in set.as_object().unwrap() {
            r.insert(c.clone(), v.clone());
        }
        Value::Object(r)
    }

    #[test]
    fn a_new_record_has_every_column_of_the_default_schema() {
        let mut m = Model::default();
        m.line("k", "upsert", json!({"plan": "basic"}));
        let schema = Schema::default_schema();
        let mut columns: Vec<&str> = schema.tables[TABLE]
            .columns
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        columns.sort();
        let mut got: Vec<&str> = m.latest("k").unwrap().keys().map(String::as_str).collect();
        got.sort();
        assert_eq!(got, columns);
        assert_eq!(m.latest("k").unwrap()["plan"], "basic");
        assert!(columns.len() > 1, "the other columns are there, null");
    }

    #[test]
    fn upserts_merge_and_the_answer_must_match_exactly() {
        let mut m = Model::default();
        m.line("k", "upsert", json!({"plan": "basic", "credit_limit": 5}));
        m.line("k", "upsert", json!({"plan": "gold"}));
        let latest = record(json!({"plan": "gold", "credit_limit": 5}));
        assert!(m.is_latest("k", 200, &found(latest.clone())));
        // An earlier version, a subset of the fields, or a wrong status is not the latest.
        let older = record(json!({"plan": "basic", "credit_limit": 5}));
        assert!(!m.is_latest("k", 200, &found(older)));
        assert!(!m.is_latest("k", 200, &found(json!({"plan": "gold"}))));
        assert!(!m.is_latest("k", 503, &found(latest.clone())));
        let mut extra = latest.clone();
        extra["other"] = json!(1);
        assert!(!m.is_latest("k", 200, &found(extra)));
        assert!(!m.is_latest("k", 404, &not_found()));
    }

    #[test]
    fn deleted_and_never_created_keys_must_be_not_found() {
        let mut m = Model::default();
        m.line("k", "upsert", json!({"plan": "basic"}));
        let before = record(json!({"plan": "basic"}));
        m.line("k", "delete", json!({}));
        assert!(m.latest("k").is_none());
        assert!(m.is_latest("k", 404, &not_found()));
        assert!(!m.is_latest("k", 200, &found(before)));
        assert!(m.is_latest("never", 404, &not_found()));
        assert!(
            !m.is_latest("never", 404, &Value::Null),
            "a 404 without the record shape"
        );
    }

    #[test]
    fn an_upsert_after_a_delete_starts_a_new_record() {
        let mut m = Model::default();
        m.line("k", "upsert", json!({"plan": "basic", "roaming": true}));
        m.line("k", "delete", json!({}));
        m.line("k", "upsert", json!({"status": "active"}));
        assert!(m.is_latest("k", 200, &found(record(json!({"status": "active"})))));
    }

    #[test]
    fn lines_are_the_orders_recorded() {
        let mut m = Model::default();
        assert_eq!(
            m.line("k", "upsert", json!({"plan": "x"})),
            upsert_line("k", json!({"plan": "x"}))
        );
        assert_eq!(m.line("k", "delete", json!({})), delete_line("k"));
    }
}
