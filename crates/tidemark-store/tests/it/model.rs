//! Property test: the SQLite engine against a `BTreeMap` model over random
//! sequences of order batches (including duplicates and invalid batches).

use proptest::prelude::*;
use serde_json::json;
use std::collections::BTreeMap;
use tidemark_api::{Fields, Op, Order};
use tidemark_store::{SqliteStore, Store};

#[derive(Debug, Clone)]
enum Step {
    Upsert {
        key: u8,
        plan: Option<u8>,
        limit: Option<i64>,
    },
    Delete {
        key: u8,
    },
    /// Re-send an earlier order (must be acknowledged, not reapplied).
    Replay {
        back: u8,
    },
    /// A batch whose last order is invalid (must change nothing).
    Poisoned {
        key: u8,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (0u8..12, proptest::option::of(0u8..4), proptest::option::of(-5i64..5))
            .prop_map(|(key, plan, limit)| Step::Upsert { key, plan, limit }),
        2 => (0u8..12).prop_map(|key| Step::Delete { key }),
        1 => any::<u8>().prop_map(|back| Step::Replay { back }),
        1 => (0u8..12).prop_map(|key| Step::Poisoned { key }),
    ]
}

type Model = BTreeMap<String, Fields>;

fn apply_model(model: &mut Model, o: &Order) {
    match o.op {
        Op::Delete => {
            model.remove(&o.key);
        }
        Op::Upsert => {
            let rec = model.entry(o.key.clone()).or_insert_with(|| {
                ["plan", "status", "services", "roaming", "credit_limit"]
                    .iter()
                    .map(|c| (c.to_string(), json!(null)))
                    .collect()
            });
            for (k, v) in &o.fields {
                rec.insert(k.clone(), v.clone());
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn sqlite_matches_the_model(steps in proptest::collection::vec(step(), 1..60), batch in 1usize..6) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let store = SqliteStore::open(dir.path(), "test").unwrap();
            let mut model = Model::new();
            let mut sent: Vec<Order> = Vec::new();
            let mut seq = 0u64;
            let mut pending: Vec<Order> = Vec::new();
            for s in steps {
                match s {
                    Step::Upsert { key, plan, limit } => {
                        seq += 1;
                        let mut f = Fields::new();
                        if let Some(p) = plan { f.insert("plan".into(), json!(format!("p{p}"))); }
                        if let Some(l) = limit { f.insert("credit_limit".into(), json!(l)); }
                        pending.push(Order { origin: None, source: "m".into(), seq, table: "subscriber".into(), key: format!("k{key}"), op: Op::Upsert, fields: f });
                    }
                    Step::Delete { key } => {
                        seq += 1;
                        pending.push(Order { origin: None, source: "m".into(), seq, table: "subscriber".into(), key: format!("k{key}"), op: Op::Delete, fields: Fields::new() });
                    }
                    Step::Replay { back } => {
                        if !sent.is_empty() {
                            let o = sent[sent.len() - 1 - (back as usize % sent.len())].clone();
                            let out = store.apply(vec![o]).await.unwrap();
                            prop_assert!(out.results[0].duplicate);
                        }
                    }
                    Step::Poisoned { key } => {
                        let mut bad = pending.clone();
                        let mut f = Fields::new();
                        f.insert("roaming".into(), json!("not a bool"));
                        bad.push(Order { origin: None, source: "m".into(), seq: seq + 1, table: "subscriber".into(), key: format!("k{key}"), op: Op::Upsert, fields: f });
                        prop_assert!(store.apply(bad).await.is_err());
                    }
                }
                if pending.len() >= batch {
                    store.apply(pending.clone()).await.unwrap();
                    for o in &pending { apply_model(&mut model, o); }
                    sent.append(&mut pending);
                }
            }
            if !pending.is_empty() {
                store.apply(pending.clone()).await.unwrap();
                for o in &pending { apply_model(&mut model, o); }
            }
            for key in 0..12u8 {
                let k = format!("k{key}");
                let got = store.get("subscriber", &k).await.unwrap().record.map(|r| r.fields);
                prop_assert_eq!(got.as_ref(), model.get(&k), "key {}", k);
            }
            Ok(())
        })?;
    }
}
