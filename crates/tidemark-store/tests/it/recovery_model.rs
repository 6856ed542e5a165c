//! Property test of the recovery protocol at the store: over random
//! interleavings of schedule chunks, replayed orders and reads, a read that
//! is not answered as recovering always shows the latest data (P7, P8, P10).
//! "Recovering" here is what the DB server answers: the key is flagged, or
//! the final chunk of the schedule list has not arrived yet (the blanket).

use proptest::prelude::*;
use serde_json::json;
use std::collections::BTreeMap;
use tidemark_api::{Fields, Op, Order};
use tidemark_store::{FlagEntry, SqliteStore, Store};

#[derive(Debug, Clone)]
enum Step {
    Chunk,
    Replay,
    Read(u8),
}

fn orders(spec: &[(u8, bool, i64)]) -> Vec<Order> {
    spec.iter()
        .enumerate()
        .map(|(i, (k, delete, v))| Order {
            origin: None,
            source: "ops-1".into(),
            seq: i as u64 + 1,
            table: "subscriber".into(),
            key: format!("k{k}"),
            op: if *delete { Op::Delete } else { Op::Upsert },
            fields: if *delete {
                Fields::new()
            } else {
                json!({"credit_limit": v}).as_object().unwrap().clone()
            },
        })
        .collect()
}

fn latest(orders: &[Order]) -> BTreeMap<String, Option<i64>> {
    let mut m = BTreeMap::new();
    for o in orders {
        m.insert(
            o.key.clone(),
            (o.op == Op::Upsert).then(|| o.fields["credit_limit"].as_i64().unwrap()),
        );
    }
    m
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]
    #[test]
    fn unflagged_reads_are_always_latest(
        spec in proptest::collection::vec((0u8..8, proptest::bool::weighted(0.2), -50i64..50), 2..40),
        backup_frac in 0.0f64..1.0,
        chunk in 1usize..4,
        steps in proptest::collection::vec(prop_oneof![1 => Just(Step::Chunk), 2 => Just(Step::Replay), 3 => (0u8..8).prop_map(Step::Read)], 0..80),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let journal = orders(&spec);
            let backup_at = ((journal.len() as f64) * backup_frac) as usize;
            let dir = tempfile::tempdir().unwrap();
            let store = SqliteStore::open(dir.path(), "test").unwrap();
            store.apply(journal[..backup_at].to_vec()).await.unwrap();
            store.mark_restored(2).await.unwrap();
            let truth = latest(&journal);

            // The schedule list: each key after the backup, with its last seq.
            let mut last: BTreeMap<String, u64> = BTreeMap::new();
            for o in &journal[backup_at..] {
                last.insert(o.key.clone(), o.seq);
            }
            let entries: Vec<FlagEntry> = last.into_iter().map(|(key, through_seq)| FlagEntry { table: "subscriber".into(), key, through_seq }).collect();
            let chunks: Vec<Vec<FlagEntry>> = entries.chunks(chunk).map(|c| c.to_vec()).collect();
            let (mut sent, mut replayed, mut final_sent) = (0usize, backup_at, false);
            let send_chunk = |sent: &mut usize, final_sent: &mut bool| {
                let c = chunks.get(*sent).cloned().unwrap_or_default();
                *sent += 1;
                let fin = *sent >= chunks.len();
                *final_sent |= fin;
                (c, fin)
            };

            let all = steps.into_iter().chain(std::iter::repeat_n(Step::Chunk, chunks.len() + 1)).chain(std::iter::repeat_n(Step::Replay, journal.len()));
            for s in all {
                match s {
                    Step::Chunk => {
                        if final_sent { continue; }
                        let (c, fin) = send_chunk(&mut sent, &mut final_sent);
                        store.add_flags("ops-1", c, fin, vec![]).await.unwrap();
                    }
                    Step::Replay => {
                        if replayed < journal.len() {
                            store.apply(vec![journal[replayed].clone()]).await.unwrap();
                            replayed += 1;
                        }
                    }
                    Step::Read(k) => {
                        let key = format!("k{k}");
                        let got = store.get("subscriber", &key).await.unwrap();
                        let recovering = got.flagged || !final_sent;
                        if !recovering {
                            let value = got.record.map(|r| r.fields["credit_limit"].as_i64().unwrap());
                            prop_assert_eq!(value, truth.get(&key).cloned().flatten(), "unflagged read of {} is not the latest", key);
                        }
                    }
                }
            }
            let m = store.recovery_meta().await.unwrap();
            prop_assert_eq!(m.remaining, 0, "every flag clears once all difference data is applied");
            for (key, value) in &truth {
                let got = store.get("subscriber", key).await.unwrap();
                prop_assert!(!got.flagged);
                prop_assert_eq!(got.record.map(|r| r.fields["credit_limit"].as_i64().unwrap()), *value);
            }
            Ok(())
        })?;
    }
}
