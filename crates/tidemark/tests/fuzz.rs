//! Fuzz-style tests on the stable toolchain (issue 13): every parser and
//! validator that takes input from the network or the disk, fed arbitrary
//! bytes and arbitrary JSON. Each must answer (accept or refuse), never
//! panic, and what it accepts must be what it was given.

use proptest::prelude::*;
use serde_json::Value;
use tidemark_api::sse::SseParser;
use tidemark_api::state::ScheduleChunk;
use tidemark_api::{OrdersRequest, Schema};
use tidemark_store::{FlagEntry, StoreError};

/// Arbitrary JSON, a few levels deep, with keys and strings drawn from the
/// names the API uses (so parsers get far) and from anything at all.
fn json() -> impl Strategy<Value = Value> {
    let word = prop_oneof![
        Just("orders".to_owned()),
        Just("source".to_owned()),
        Just("seq".to_owned()),
        Just("table".to_owned()),
        Just("subscriber".to_owned()),
        Just("key".to_owned()),
        Just("op".to_owned()),
        Just("upsert".to_owned()),
        Just("delete".to_owned()),
        Just("fields".to_owned()),
        Just("plan".to_owned()),
        Just("credit_limit".to_owned()),
        Just("entries".to_owned()),
        Just("through_seq".to_owned()),
        Just("final".to_owned()),
        Just("tables".to_owned()),
        Just("columns".to_owned()),
        Just("name".to_owned()),
        Just("type".to_owned()),
        Just("string".to_owned()),
        Just("integer".to_owned()),
        ".{0,12}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        word.clone().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(word.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Orders: arbitrary bytes or JSON either fail to parse or validate to
    /// an answer; an accepted batch keeps every order as sent.
    #[test]
    fn orders_parse_and_validate_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..512), v in json()) {
        let schema = Schema::default_schema();
        for body in [bytes, serde_json::to_vec(&serde_json::json!({"orders": [v.clone()]})).unwrap(), serde_json::to_vec(&v).unwrap()] {
            if let Ok(req) = serde_json::from_slice::<OrdersRequest>(&body) {
                match tidemark_store::apply::validate_batch(&schema, &req.orders) {
                    Ok(()) => {
                        for o in &req.orders {
                            prop_assert!(schema.table(&o.table).is_ok());
                            prop_assert!(tidemark_api::schema::validate_key(&o.key).is_ok());
                        }
                    }
                    Err(StoreError::Invalid { index, .. }) => prop_assert!(index < req.orders.len()),
                    Err(e) => prop_assert!(!e.to_string().is_empty()),
                }
            }
        }
    }

    /// Schedule lists: parsed or refused; a refusal says why.
    #[test]
    fn schedule_chunks_parse_and_validate_without_panicking(v in json(), bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let schema = Schema::default_schema();
        for body in [serde_json::to_vec(&v).unwrap(), bytes] {
            if let Ok(chunk) = serde_json::from_slice::<ScheduleChunk>(&body) {
                let entries: Vec<FlagEntry> = chunk
                    .entries
                    .iter()
                    .map(|e| FlagEntry { table: e.table.clone(), key: e.key.clone(), through_seq: e.through_seq })
                    .collect();
                if let Err(e) = tidemark_store::apply::validate_schedule(&schema, &chunk.source, &entries, &chunk.without_sources) {
                    prop_assert!(!e.to_string().is_empty());
                }
            }
        }
    }

    /// Schema documents: whatever parses round-trips through JSON.
    #[test]
    fn schema_documents_parse_without_panicking(v in json()) {
        if let Ok(schema) = serde_json::from_value::<Schema>(v) {
            let back: Schema = serde_json::from_value(serde_json::to_value(&schema).unwrap()).unwrap();
            prop_assert_eq!(back, schema);
        }
    }

    /// Staging: any document that parses is staged or refused with a code,
    /// never a panic; a staged one is the next version and keeps every
    /// column of the version in force.
    #[test]
    fn staged_schema_documents_are_checked_without_panicking(v in json()) {
        let v = match v {
            serde_json::Value::Object(m) if !m.contains_key("tables") => serde_json::json!({"tables": m}),
            other => other,
        };
        if let Ok(doc) = serde_json::from_value::<tidemark_api::schema_change::SchemaDocument>(v) {
            let current = Schema::default_schema();
            if let Ok(staged) = tidemark_api::schema_change::stage(&current, &doc) {
                prop_assert_eq!(staged.version, current.version + 1);
                for c in &current.tables["subscriber"].columns {
                    prop_assert_eq!(staged.tables["subscriber"].column(&c.name), Some(c));
                }
            }
        }
    }

    /// The SSE parser: any bytes, split anywhere, give the same events as
    /// the same bytes fed at once.
    #[test]
    fn the_sse_parser_takes_any_bytes_split_anywhere(bytes in prop::collection::vec(any::<u8>(), 0..1024), cut in any::<prop::sample::Index>()) {
        let mut whole = SseParser::new();
        let all = whole.feed(&bytes);
        let at = cut.index(bytes.len() + 1);
        let mut split = SseParser::new();
        let mut parts = split.feed(&bytes[..at]);
        parts.extend(split.feed(&bytes[at..]));
        prop_assert_eq!(all, parts);
    }

    /// Backup manifests: a manifest file of arbitrary bytes (or a
    /// well-formed one of arbitrary content) is refused with a reason,
    /// never taken for a backup, and never panics.
    #[test]
    fn backup_manifests_of_any_content_are_refused_or_read(bytes in prop::collection::vec(any::<u8>(), 0..512), v in json()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(tidemark_backup::manifest::MANIFEST_FILE);
        for content in [bytes, tidemark_backup::manifest::encode_value(&v)] {
            std::fs::write(&path, &content).unwrap();
            if let Err(e) = tidemark_backup::manifest::Manifest::load(dir.path()) {
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }
}
