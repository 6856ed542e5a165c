//! Recovery (P5-P10): marking a restored store, schedule lists and flags,
//! gap-free replays, last writer by logical version, clearing flags.

use super::{apply_ok, order, record};
use crate::{ApplyOutcome, Change, FlagEntry, Store, StoreError};
use serde_json::json;
use tidemark_api::{Op, Order, RecoveryState, Version};

pub(super) async fn recovery_flags(store: &dyn Store) {
    let entry = |key: &str, through_seq| FlagEntry {
        table: "subscriber".into(),
        key: key.into(),
        through_seq,
    };
    assert_eq!(
        store.recovery_meta().await.unwrap().state,
        RecoveryState::Normal
    );
    assert!(
        matches!(
            store
                .add_flags("ops-f", vec![entry("f1", 1)], true, vec![])
                .await,
            Err(StoreError::NotRecovering)
        ),
        "a schedule list is refused outside recovery"
    );
    apply_ok(
        store,
        order("ops-f", 1, "f0", Op::Upsert, json!({"plan": "old"})),
    )
    .await;
    let epoch = store.meta().await.unwrap().epoch;
    store.mark_restored(epoch + 1).await.unwrap();
    assert_eq!(store.meta().await.unwrap().epoch, epoch + 1);
    let m = store.recovery_meta().await.unwrap();
    assert_eq!(
        (m.state, m.schedule_final, m.remaining),
        (RecoveryState::Recovering, false, 0)
    );

    // f0 seq 1 is already held: skipped. f1 (absent) and f2 are flagged.
    let added = store
        .add_flags(
            "ops-f",
            vec![
                entry("f0", 1),
                entry("f1", 3),
                entry("f2", 2),
                entry("f1", 2),
            ],
            false,
            vec![],
        )
        .await
        .unwrap();
    assert_eq!((added.flagged, added.skipped), (2, 1));
    assert!(matches!(
        store
            .add_flags("ops-f", vec![entry("f3", 0)], false, vec![])
            .await,
        Err(StoreError::BadSchedule(_))
    ));
    // A flag no OpS could ever clear (it would keep the recovery open for
    // good) is refused, and nothing of the chunk is kept.
    let before = store.recovery_meta().await.unwrap().remaining;
    assert!(matches!(
        store
            .add_flags(
                "ops-f",
                vec![entry("f4", 2), entry("f5", u64::MAX)],
                false,
                vec![]
            )
            .await,
        Err(StoreError::BadSchedule(_))
    ));
    assert_eq!(store.recovery_meta().await.unwrap().remaining, before);
    assert!(matches!(
        store
            .add_flags(
                "ops-f",
                vec![FlagEntry {
                    table: "nope".into(),
                    key: "k".into(),
                    through_seq: 1
                }],
                false,
                vec![]
            )
            .await,
        Err(StoreError::ScheduleEntry { index: 0, .. })
    ));
    // Every other source with applied orders at the restore point must send
    // its final chunk too, or be waived, before the schedule is final.
    let others: Vec<String> = store
        .high_water_marks()
        .await
        .unwrap()
        .into_iter()
        .filter(|(s, hw)| s != "ops-f" && *hw > 0)
        .map(|(s, _)| s)
        .collect();
    store
        .add_flags("ops-f", vec![], true, vec![])
        .await
        .unwrap();
    let m = store.recovery_meta().await.unwrap();
    assert_eq!(m.waiting_for_sources, others);
    assert_eq!(m.schedule_final, others.is_empty());
    assert!(matches!(
        store
            .add_flags("ops-f", vec![], true, vec!["never-seen".into()])
            .await,
        Err(StoreError::BadSchedule(_))
    ));
    // Nor may a final chunk waive its own source, or one that sent its own
    // final chunk and is being replayed: its flags would go before its
    // data came. Nothing changes.
    let before = store.recovery_meta().await.unwrap();
    for (source, waived) in [("ops-f", "ops-f"), ("ops-late", "ops-f")] {
        let refused = store
            .add_flags(source, vec![], true, vec![waived.into()])
            .await;
        assert!(
            matches!(refused, Err(StoreError::BadSchedule(_))),
            "{source} waiving {waived}: {refused:?}"
        );
    }
    let after = store.recovery_meta().await.unwrap();
    assert_eq!(
        (
            after.remaining,
            after.waived_sources,
            after.waiting_for_sources
        ),
        (
            before.remaining,
            before.waived_sources,
            before.waiting_for_sources
        )
    );
    store
        .add_flags("ops-f", vec![], true, others.clone())
        .await
        .unwrap();
    let m = store.recovery_meta().await.unwrap();
    assert!(m.schedule_final && m.waiting_for_sources.is_empty());
    assert_eq!(m.waived_sources, others);
    assert_eq!((m.flagged_total, m.remaining), (2, 2));
    let missing = store.get("subscriber", "f1").await.unwrap();
    assert!(
        missing.record.is_none() && missing.flagged,
        "a key absent from the restored data can be flagged"
    );
    assert!(!store.get("subscriber", "f0").await.unwrap().flagged);
    let flags = store.list_flags(10).await.unwrap();
    assert_eq!(flags.len(), 2);
    assert_eq!(
        (
            flags[0].key.as_str(),
            flags[0].through_seq,
            flags[0].high_water
        ),
        ("f1", 3, 1)
    );

    // During recovery a source's orders must come without gaps.
    assert!(matches!(
        store
            .apply(vec![order("ops-f", 3, "f1", Op::Upsert, json!({}))])
            .await,
        Err(StoreError::Gap { expected: 2, .. })
    ));
    // Seq 2 is the last order of f2: its flag clears; f1 stays flagged until seq 3.
    let out = apply_ok(
        store,
        Order {
            key: "f2".into(),
            ..order("ops-f", 2, "f2", Op::Upsert, json!({"plan": "new"}))
        },
    )
    .await;
    assert!(out.changes[0].cleared_flag && !out.changes[0].flagged);
    assert!(!store.get("subscriber", "f2").await.unwrap().flagged);
    let out = apply_ok(
        store,
        order("ops-f", 3, "f1", Op::Upsert, json!({"plan": "new"})),
    )
    .await;
    assert!(out.changes[0].cleared_flag);
    assert_eq!(
        out.changes[0].version.epoch,
        epoch + 1,
        "changes after a restore carry the new epoch"
    );
    let m = store.recovery_meta().await.unwrap();
    assert_eq!(m.remaining, 0);
    let m = store
        .set_recovery_state(RecoveryState::Recovered, true)
        .await
        .unwrap();
    assert_eq!(m.state, RecoveryState::Recovered);
    store
        .set_recovery_state(RecoveryState::Normal, false)
        .await
        .unwrap();
    // Outside recovery, gaps are allowed again.
    apply_ok(store, order("ops-f", 9, "f9", Op::Upsert, json!({}))).await;
}

/// P10, P11: while recovering, a replayed order takes effect only where
/// nothing newer (by original version, or a live order) has been applied,
/// so sources replayed in any order, and live writers, end in the state of
/// the original commit order.
pub(super) async fn replays_follow_the_original_order(store: &dyn Store) {
    let epoch = store.meta().await.unwrap().epoch;
    store.mark_restored(epoch + 1).await.unwrap();
    let replay = |src: &str, seq, key: &str, op, f, origin: u64| Order {
        origin: Some(Version::new(epoch, origin)),
        ..order(src, seq, key, op, f)
    };
    let mut last = store.meta().await.unwrap().seq;
    let mut step = |out: ApplyOutcome| {
        for c in &out.changes {
            assert!(c.version.seq > last, "every order produces a newer version");
            last = c.version.seq;
        }
        out
    };
    // A live write during recovery (its own version is the newest)...
    step(
        apply_ok(
            store,
            order("live", 1, "o1", Op::Upsert, json!({"plan": "live"})),
        )
        .await,
    );
    // ...is not undone by a replay of an older order, which still sets the
    // field nothing newer set.
    step(
        apply_ok(
            store,
            replay(
                "ops-r",
                1,
                "o1",
                Op::Upsert,
                json!({"plan": "old", "roaming": true}),
                1_000,
            ),
        )
        .await,
    );
    let got = record(store, "o1").await;
    assert_eq!(
        (got.fields["plan"].clone(), got.fields["roaming"].clone()),
        (json!("live"), json!(true))
    );
    // Two sources replayed newest first: ops-r deleted o2 after ops-q set it.
    step(
        apply_ok(
            store,
            replay("ops-r", 2, "o2", Op::Delete, json!({}), 1_002),
        )
        .await,
    );
    let out = step(
        apply_ok(
            store,
            replay("ops-q", 1, "o2", Op::Upsert, json!({"plan": "q"}), 1_001),
        )
        .await,
    );
    assert!(
        out.changes[0].fields.is_none(),
        "the older upsert does not resurrect o2"
    );
    let gone = store.get("subscriber", "o2").await.unwrap();
    assert!(gone.record.is_none());
    assert_eq!(gone.tombstone, Some(out.changes[0].version));
    // An upsert newer than a delete that arrives later: the record stays,
    // with only what the newer upsert set.
    step(
        apply_ok(
            store,
            replay(
                "ops-q",
                2,
                "o3",
                Op::Upsert,
                json!({"status": "new"}),
                1_010,
            ),
        )
        .await,
    );
    step(
        apply_ok(
            store,
            replay("ops-r", 3, "o3", Op::Delete, json!({}), 1_005),
        )
        .await,
    );
    let o3 = record(store, "o3").await;
    assert_eq!(o3.fields["status"], json!("new"));
    assert_eq!(o3.fields["plan"], json!(null));
    // Restored again from a backup taken during this recovery: the store
    // still knows which version last set each field, so a replay older
    // than o1's live write still does not undo it (a restore that emptied
    // `tm_lww` let it).
    let now = store.meta().await.unwrap().epoch;
    store.mark_restored(now + 1).await.unwrap();
    step(
        apply_ok(
            store,
            replay(
                "ops-r",
                4,
                "o1",
                Op::Upsert,
                json!({"plan": "older"}),
                1_003,
            ),
        )
        .await,
    );
    assert_eq!(record(store, "o1").await.fields["plan"], json!("live"));
    store
        .set_recovery_state(RecoveryState::Normal, false)
        .await
        .unwrap();
}

/// An operator ends a recovery the OpS will never complete (P5).
pub(super) async fn clearing_flags(store: &dyn Store) {
    let epoch = store.meta().await.unwrap().epoch;
    store.mark_restored(epoch + 1).await.unwrap();
    let entries = ["c1", "c2", "c3"]
        .map(|key| FlagEntry {
            table: "subscriber".into(),
            key: key.into(),
            through_seq: 4,
        })
        .to_vec();
    let added = store
        .add_flags("ops-c", entries, false, vec![])
        .await
        .unwrap();
    assert_eq!(added.flagged, 3);
    assert_eq!(store.list_flags(2).await.unwrap().len(), 2, "limit holds");
    assert!(store.get("subscriber", "c2").await.unwrap().flagged);
    assert_eq!(store.clear_flags().await.unwrap(), 3);
    assert_eq!(store.recovery_meta().await.unwrap().remaining, 0);
    assert!(store.list_flags(10).await.unwrap().is_empty());
    assert!(!store.get("subscriber", "c2").await.unwrap().flagged);
    assert_eq!(store.clear_flags().await.unwrap(), 0);
    store
        .set_recovery_state(RecoveryState::Normal, false)
        .await
        .unwrap();
}

/// A flag whose order was applied to another key is dropped by
/// `settle_flags`; one whose order has not come is kept.
pub(super) async fn settling_flags(store: &dyn Store) {
    let epoch = store.meta().await.unwrap().epoch;
    store.mark_restored(epoch + 1).await.unwrap();
    let entries = [("s1", 1), ("s2", 2)]
        .map(|(key, through_seq)| FlagEntry {
            table: "subscriber".into(),
            key: key.into(),
            through_seq,
        })
        .to_vec();
    let added = store
        .add_flags("ops-settle", entries, true, vec![])
        .await
        .unwrap();
    assert_eq!(added.flagged, 2);
    let settled_before = store.recovery_meta().await.unwrap().settled;
    assert_eq!(store.settle_flags().await.unwrap(), 0, "no order yet");
    assert_eq!(store.recovery_meta().await.unwrap().settled, settled_before);
    // ops-settle seq 1 changes another key than the flag named.
    apply_ok(
        store,
        order("ops-settle", 1, "s-other", Op::Upsert, json!({"plan": "x"})),
    )
    .await;
    assert!(store.get("subscriber", "s1").await.unwrap().flagged);
    assert_eq!(store.settle_flags().await.unwrap(), 1);
    assert!(!store.get("subscriber", "s1").await.unwrap().flagged);
    assert!(store.get("subscriber", "s2").await.unwrap().flagged);
    let m = store.recovery_meta().await.unwrap();
    assert_eq!(m.remaining, 1);
    assert_eq!(
        m.settled,
        settled_before + 1,
        "counted, for standbys to relay"
    );
    assert_eq!(store.clear_flags().await.unwrap(), 1);
    store
        .set_recovery_state(RecoveryState::Normal, false)
        .await
        .unwrap();
}

/// A schedule list sent again, in part or whole (an `ops recover` run
/// again): a key already flagged keeps the higher `through_seq` and is not
/// counted as newly flagged; chunks span several write groups.
pub(super) async fn schedule_sent_again(store: &dyn Store) {
    let entry = |key: String, through_seq| FlagEntry {
        table: "subscriber".into(),
        key,
        through_seq,
    };
    let epoch = store.meta().await.unwrap().epoch;
    store.mark_restored(epoch + 1).await.unwrap();
    // s5 twice in one fresh chunk: the higher through_seq wins.
    let first: Vec<FlagEntry> = (0..1234)
        .map(|i| entry(format!("s{i}"), 5))
        .chain([entry("s5".into(), 6)])
        .collect();
    let added = store
        .add_flags("ops-s", first.clone(), false, vec![])
        .await
        .unwrap();
    assert_eq!((added.flagged, added.skipped), (1234, 0));
    let again = store
        .add_flags("ops-s", first, false, vec![])
        .await
        .unwrap();
    assert_eq!(again.flagged, 0, "a chunk sent again flags nothing new");
    // Raised, kept (not lowered), new, and a new key twice in the chunk.
    let added = store
        .add_flags(
            "ops-s",
            vec![
                entry("s1".into(), 9),
                entry("s2".into(), 3),
                entry("s9999".into(), 4),
                entry("s1".into(), 7),
                entry("s9998".into(), 6),
                entry("s9998".into(), 8),
            ],
            false,
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(added.flagged, 2);
    let m = store.recovery_meta().await.unwrap();
    assert_eq!((m.flagged_total, m.remaining), (1236, 1236));
    let flags = store.list_flags(10_000).await.unwrap();
    assert_eq!(flags.len(), 1236);
    let seq_of = |key: &str| {
        flags
            .iter()
            .find(|f| f.key == key && f.source == "ops-s")
            .map(|f| f.through_seq)
    };
    assert_eq!(
        ["s1", "s2", "s5", "s9999", "s9998", "s1233"].map(seq_of),
        [Some(9), Some(5), Some(6), Some(4), Some(8), Some(5)]
    );
    assert!(store.get("subscriber", "s1233").await.unwrap().flagged);
    assert_eq!(store.clear_flags().await.unwrap(), 1236);
    store
        .set_recovery_state(RecoveryState::Normal, false)
        .await
        .unwrap();
}

/// A replay sent in batches (as `ops recover` sends it) ends as the same
/// orders sent one at a time, and as the ordering rule says: the record
/// equals the orders applied in logical-version order; flags clear as the
/// last order of their source arrives, also for a key named several times
/// in one batch (P7, P10, P11).
pub(super) async fn replays_in_batches(store: &dyn Store) {
    use serde_json::{Map, Value};
    use std::collections::BTreeMap;
    const KEYS: u64 = 8;
    const ORDERS: u64 = 120;
    let epoch = store.meta().await.unwrap().epoch;
    store.mark_restored(epoch + 1).await.unwrap();
    // A fixed pseudo-random history over few keys, so keys repeat within
    // a batch; origins are a permutation, so arrival order is not theirs.
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut history = Vec::new();
    for i in 0..ORDERS {
        let op = if next(4) == 0 { Op::Delete } else { Op::Upsert };
        let mut f = Map::new();
        if op == Op::Upsert {
            if next(2) == 0 {
                f.insert("plan".into(), json!(format!("p{i}")));
            }
            if next(2) == 0 || f.is_empty() {
                f.insert("status".into(), json!(format!("s{i}")));
            }
        }
        let origin = (i * 37) % ORDERS + 1;
        history.push((next(2), next(KEYS), op, Value::Object(f), origin));
    }
    let orders = |copy: &str| {
        let mut seqs = [0u64; 2];
        history
            .iter()
            .map(|(src, key, op, f, origin)| {
                seqs[*src as usize] += 1;
                Order {
                    origin: Some(Version::new(epoch, *origin)),
                    ..order(
                        &format!("batch-{copy}{src}"),
                        seqs[*src as usize],
                        &format!("{copy}-{key}"),
                        *op,
                        f.clone(),
                    )
                }
            })
            .collect::<Vec<_>>()
    };
    let mut outcomes = Vec::new();
    for copy in ["one", "many"] {
        let orders = orders(copy);
        // Each key flagged by each source through its last order, and key
        // 0 also by a source that never replays.
        for src in 0..2 {
            let source = format!("batch-{copy}{src}");
            let mut last = BTreeMap::new();
            for o in orders.iter().filter(|o| o.source == source) {
                last.insert(o.key.clone(), o.seq);
            }
            let entries = last
                .into_iter()
                .map(|(key, through_seq)| FlagEntry {
                    table: "subscriber".into(),
                    key,
                    through_seq,
                })
                .collect();
            store
                .add_flags(&source, entries, true, vec![])
                .await
                .unwrap();
        }
        let stuck = FlagEntry {
            table: "subscriber".into(),
            key: format!("{copy}-0"),
            through_seq: 1,
        };
        store
            .add_flags(&format!("batch-{copy}x"), vec![stuck], true, vec![])
            .await
            .unwrap();
        let logged_after = store.meta().await.unwrap().seq;
        let mut changes = Vec::new();
        if copy == "one" {
            for o in orders {
                changes.extend(apply_ok(store, o).await.changes);
            }
        } else {
            for batch in orders.chunks(40) {
                changes.extend(store.apply(batch.to_vec()).await.unwrap().changes);
            }
        }
        // The log keeps each change's flag as committed, so a standby that
        // tails it pushes what the primary pushed, whatever the flags are
        // by the time it reads (S3).
        let logged = store.changes_since(logged_after, 10_000).await.unwrap();
        let marks = |cs: &[Change]| -> Vec<_> {
            cs.iter()
                .map(|c| (c.version, c.cleared_flag, c.flagged))
                .collect()
        };
        assert_eq!(marks(&logged), marks(&changes), "{copy}: the log's flags");
        assert!(changes.iter().any(|c| c.flagged), "some change was flagged");
        let seen: Vec<_> = changes
            .into_iter()
            .map(|c| {
                (
                    c.key.split_once('-').unwrap().1.to_owned(),
                    c.fields,
                    c.cleared_flag,
                    c.flagged,
                )
            })
            .collect();
        outcomes.push(seen);
    }
    assert_eq!(outcomes[0].len(), outcomes[1].len());
    if let Some(i) = (0..outcomes[0].len()).find(|&i| outcomes[0][i] != outcomes[1][i]) {
        panic!(
            "order {i}: one at a time gave {:?}, in batches {:?}",
            outcomes[0][i], outcomes[1][i]
        );
    }
    assert!(outcomes[1].iter().any(|c| c.2), "some flag was cleared");
    assert!(
        outcomes[1].iter().any(|c| c.1.is_none()),
        "some key was deleted"
    );

    // The rule's invariant: the orders applied in logical-version order.
    let mut by_origin: Vec<_> = history.iter().collect();
    by_origin.sort_by_key(|h| h.4);
    let mut model: BTreeMap<u64, Option<Map<String, Value>>> = BTreeMap::new();
    for (_, key, op, f, _) in by_origin {
        let slot = model.entry(*key).or_default();
        match op {
            Op::Upsert => slot
                .get_or_insert_with(Map::new)
                .extend(f.as_object().unwrap().clone()),
            Op::Delete => *slot = None,
        }
    }
    for (key, want) in model {
        for copy in ["one", "many"] {
            let got = store
                .get("subscriber", &format!("{copy}-{key}"))
                .await
                .unwrap();
            let fields = got.record.map(|r| {
                r.fields
                    .into_iter()
                    .filter(|(_, v)| !v.is_null())
                    .collect::<Map<_, _>>()
            });
            assert_eq!(fields, want, "{copy}-{key} after the replay");
            assert_eq!(
                got.flagged,
                key == 0,
                "{copy}-{key}: only the stuck flag is left"
            );
        }
    }
    store.clear_flags().await.unwrap();
    store
        .set_recovery_state(RecoveryState::Normal, false)
        .await
        .unwrap();
}

/// P6, P8: sources the restored data does not know, expected by the OpS
/// (another run sends their lists), keep the schedule from going final
/// until they send their final chunks; expecting one is refused outside a
/// recovery and once the schedule is final.
pub(super) async fn expected_sources(store: &dyn Store) {
    if store.recovery_meta().await.unwrap().state != RecoveryState::Normal {
        store
            .set_recovery_state(RecoveryState::Normal, false)
            .await
            .unwrap();
    }
    assert!(matches!(
        store.expect_sources(&["later".into()]).await,
        Err(StoreError::NotRecovering)
    ));
    let epoch = store.meta().await.unwrap().epoch;
    store.mark_restored(epoch + 1).await.unwrap();
    store
        .expect_sources(&["later".into(), "later".into()])
        .await
        .unwrap();
    assert!(matches!(
        store.expect_sources(&[String::new()]).await,
        Err(StoreError::BadSchedule(_))
    ));
    // Every source the restored data knows sends its final chunk.
    let known: Vec<String> = store
        .recovery_meta()
        .await
        .unwrap()
        .waiting_for_sources
        .into_iter()
        .filter(|s| s != "later")
        .collect();
    for s in &known {
        store.add_flags(s, vec![], true, vec![]).await.unwrap();
    }
    let m = store.recovery_meta().await.unwrap();
    assert_eq!(
        (m.schedule_final, m.waiting_for_sources),
        (false, vec!["later".to_owned()]),
        "the expected source is still awaited"
    );
    // A source nobody named that begins its list is awaited too, until
    // its final chunk.
    store
        .add_flags("unnamed", vec![], false, vec![])
        .await
        .unwrap();
    store
        .add_flags("later", vec![], true, vec![])
        .await
        .unwrap();
    let m = store.recovery_meta().await.unwrap();
    assert_eq!(
        (m.schedule_final, m.waiting_for_sources),
        (false, vec!["unnamed".to_owned()]),
        "a source that began its list is awaited"
    );
    store
        .add_flags("unnamed", vec![], true, vec![])
        .await
        .unwrap();
    let m = store.recovery_meta().await.unwrap();
    assert!(m.schedule_final && m.waiting_for_sources.is_empty());
    assert!(matches!(
        store.expect_sources(&["too-late".into()]).await,
        Err(StoreError::BadSchedule(_))
    ));
    // A resumed first run names it again: nothing new, so no refusal.
    store.expect_sources(&["later".into()]).await.unwrap();
    store
        .set_recovery_state(RecoveryState::Normal, false)
        .await
        .unwrap();
}

/// P10: a source may skip seqs (the contract does not make them
/// consecutive). While recovering, a live order must still follow its
/// source's high-water mark, but a replay (with its `origin`) may skip a
/// seq its source never used, so its key's flag clears and the recovery
/// can complete.
pub(super) async fn replays_skip_unused_seqs(store: &dyn Store) {
    if store.recovery_meta().await.unwrap().state != RecoveryState::Normal {
        store
            .set_recovery_state(RecoveryState::Normal, false)
            .await
            .unwrap();
    }
    apply_ok(store, order("ops-skip", 1, "skip1", Op::Upsert, json!({}))).await;
    let epoch = store.meta().await.unwrap().epoch;
    store.mark_restored(epoch + 1).await.unwrap();
    let others: Vec<String> = store
        .recovery_meta()
        .await
        .unwrap()
        .waiting_for_sources
        .into_iter()
        .filter(|s| s != "ops-skip")
        .collect();
    // Seq 2 was never used: the key was last changed by seq 3.
    let flag = FlagEntry {
        table: "subscriber".into(),
        key: "skip1".into(),
        through_seq: 3,
    };
    store
        .add_flags("ops-skip", vec![flag], true, others)
        .await
        .unwrap();
    let live = order("ops-skip", 3, "skip1", Op::Upsert, json!({"plan": "live"}));
    assert!(
        matches!(
            store.apply(vec![live]).await,
            Err(StoreError::Gap { expected: 2, .. })
        ),
        "a live order still may not pass difference data not yet replayed"
    );
    let replay = Order {
        origin: Some(Version::new(epoch, 2)),
        ..order("ops-skip", 3, "skip1", Op::Upsert, json!({"plan": "three"}))
    };
    let out = apply_ok(store, replay).await;
    assert!(
        out.changes[0].cleared_flag,
        "the replay clears its key's flag"
    );
    let m = store.recovery_meta().await.unwrap();
    assert_eq!(m.remaining, 0);
    assert_eq!(
        record(store, "skip1").await.fields["plan"],
        json!("three"),
        "the replay took effect"
    );
    store
        .set_recovery_state(RecoveryState::Normal, false)
        .await
        .unwrap();
}
