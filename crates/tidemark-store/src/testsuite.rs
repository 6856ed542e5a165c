//! The storage test suite: one function that takes an opened, empty store,
//! so every engine runs exactly the same checks.
//!
//! It panics on the first failed check (it is meant to be called from tests).

use crate::{Store, StoreError};
use serde_json::json;
use tidemark_api::{Fields, Op, Order, Version};

fn fields(v: serde_json::Value) -> Fields {
    v.as_object().cloned().unwrap_or_default()
}

/// An order of source `src` for `subscriber`.
pub fn order(src: &str, seq: u64, key: &str, op: Op, f: serde_json::Value) -> Order {
    Order {
        origin: None,
        source: src.into(),
        seq,
        table: "subscriber".into(),
        key: key.into(),
        op,
        fields: fields(f),
    }
}

/// Runs every check against `store`, which must be freshly created.
pub async fn run(store: &dyn Store) {
    reads_and_writes(store).await;
    idempotency(store).await;
    atomic_batches(store).await;
    change_log(store).await;
    group_commit(store).await;
    recovery_flags(store).await;
    replays_follow_the_original_order(store).await;
}

/// P10, P11: while recovering, a replayed order takes effect only where
/// nothing newer (by original version, or a live order) has been applied,
/// so sources replayed in any order, and live writers, end in the state of
/// the original commit order.
async fn replays_follow_the_original_order(store: &dyn Store) {
    use crate::ApplyOutcome;
    use tidemark_api::RecoveryState;
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
        store
            .apply(vec![order(
                "live",
                1,
                "o1",
                Op::Upsert,
                json!({"plan": "live"}),
            )])
            .await
            .unwrap(),
    );
    // ...is not undone by a replay of an older order, which still sets the
    // field nothing newer set.
    step(
        store
            .apply(vec![replay(
                "ops-r",
                1,
                "o1",
                Op::Upsert,
                json!({"plan": "old", "roaming": true}),
                1_000,
            )])
            .await
            .unwrap(),
    );
    let got = store.get("subscriber", "o1").await.unwrap().record.unwrap();
    assert_eq!(
        (got.fields["plan"].clone(), got.fields["roaming"].clone()),
        (json!("live"), json!(true))
    );
    // Two sources replayed newest first: ops-r deleted o2 after ops-q set it.
    step(
        store
            .apply(vec![replay("ops-r", 2, "o2", Op::Delete, json!({}), 1_002)])
            .await
            .unwrap(),
    );
    let out = step(
        store
            .apply(vec![replay(
                "ops-q",
                1,
                "o2",
                Op::Upsert,
                json!({"plan": "q"}),
                1_001,
            )])
            .await
            .unwrap(),
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
        store
            .apply(vec![replay(
                "ops-q",
                2,
                "o3",
                Op::Upsert,
                json!({"status": "new"}),
                1_010,
            )])
            .await
            .unwrap(),
    );
    step(
        store
            .apply(vec![replay("ops-r", 3, "o3", Op::Delete, json!({}), 1_005)])
            .await
            .unwrap(),
    );
    let o3 = store.get("subscriber", "o3").await.unwrap().record.unwrap();
    assert_eq!(o3.fields["status"], json!("new"));
    assert_eq!(o3.fields["plan"], json!(null));
    store
        .set_recovery_state(RecoveryState::Normal, false)
        .await
        .unwrap();
}

async fn group_commit(store: &dyn Store) {
    let before = store.meta().await.unwrap().seq;
    let out = store
        .apply_group(vec![
            vec![order("ops-g", 1, "g1", Op::Upsert, json!({"plan": "a"}))],
            // Refused in the store (a conflict found mid-transaction): rolled back alone.
            vec![
                order("ops-g2", 1, "g2", Op::Upsert, json!({"plan": "b"})),
                order("ops-g2", 1, "g2", Op::Upsert, json!({"plan": "c"})),
            ],
            // Refused before the transaction (invalid).
            vec![order("ops-g3", 1, "g3", Op::Upsert, json!({"colour": 1}))],
            vec![
                order("ops-g", 2, "g1", Op::Upsert, json!({"plan": "d"})),
                order("ops-g", 3, "g4", Op::Delete, json!({})),
            ],
        ])
        .await;
    assert_eq!(out.len(), 4);
    assert!(out[0].is_ok() && out[3].is_ok());
    assert!(
        matches!(out[1], Err(StoreError::Conflict { .. })),
        "{:?}",
        out[1]
    );
    assert!(
        matches!(out[2], Err(StoreError::Invalid { .. })),
        "{:?}",
        out[2]
    );
    let seqs: Vec<u64> = out
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .flat_map(|o| o.changes.iter().map(|c| c.version.seq))
        .collect();
    assert_eq!(
        seqs,
        vec![before + 1, before + 2, before + 3],
        "seqs stay contiguous around a refused batch"
    );
    assert_eq!(store.meta().await.unwrap().seq, before + 3);
    assert!(
        store
            .get("subscriber", "g2")
            .await
            .unwrap()
            .record
            .is_none(),
        "the refused batch left nothing"
    );
    assert!(!store
        .high_water_marks()
        .await
        .unwrap()
        .contains_key("ops-g2"));
    assert_eq!(
        store
            .get("subscriber", "g1")
            .await
            .unwrap()
            .record
            .unwrap()
            .fields["plan"],
        json!("d")
    );
    assert_eq!(store.high_water_marks().await.unwrap()["ops-g"], 3);
}

async fn recovery_flags(store: &dyn Store) {
    use crate::FlagEntry;
    use tidemark_api::RecoveryState;
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
    store
        .apply(vec![order(
            "ops-f",
            1,
            "f0",
            Op::Upsert,
            json!({"plan": "old"}),
        )])
        .await
        .unwrap();
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
        Err(StoreError::Input(_))
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
    let out = store
        .apply(vec![Order {
            key: "f2".into(),
            ..order("ops-f", 2, "f2", Op::Upsert, json!({"plan": "new"}))
        }])
        .await
        .unwrap();
    assert!(out.changes[0].cleared_flag && !out.changes[0].flagged);
    assert!(!store.get("subscriber", "f2").await.unwrap().flagged);
    let out = store
        .apply(vec![order(
            "ops-f",
            3,
            "f1",
            Op::Upsert,
            json!({"plan": "new"}),
        )])
        .await
        .unwrap();
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
    store
        .apply(vec![order("ops-f", 9, "f9", Op::Upsert, json!({}))])
        .await
        .unwrap();
}

async fn reads_and_writes(store: &dyn Store) {
    let meta = store.meta().await.unwrap();
    assert_eq!(meta.seq, 0, "a new store starts at seq 0");
    let epoch = meta.epoch;

    assert!(
        matches!(store.get("nope", "k").await, Err(StoreError::Input(_))),
        "unknown table is refused"
    );
    assert!(
        matches!(store.get("subscriber", "").await, Err(StoreError::Input(_))),
        "empty key is refused"
    );
    let miss = store.get("subscriber", "+81312345678").await.unwrap();
    assert!(miss.record.is_none() && miss.tombstone.is_none() && !miss.flagged);

    let out = store
        .apply(vec![order(
            "ops-1",
            1,
            "+81312345678",
            Op::Upsert,
            json!({"plan": "gold", "services": {"voice": true}, "roaming": false, "credit_limit": 5000}),
        )])
        .await
        .unwrap();
    let v1 = out.results[0].version.unwrap();
    assert_eq!(v1, Version::new(epoch, 1));
    assert_eq!(out.changes.len(), 1);

    let got = store
        .get("subscriber", "+81312345678")
        .await
        .unwrap()
        .record
        .unwrap();
    assert_eq!(got.version, v1);
    assert_eq!(got.fields["plan"], json!("gold"));
    assert_eq!(got.fields["services"], json!({"voice": true}));
    assert_eq!(got.fields["roaming"], json!(false));
    assert_eq!(got.fields["credit_limit"], json!(5000));
    assert_eq!(
        got.fields["status"],
        json!(null),
        "columns not given are null"
    );

    // An upsert sets only the fields it names.
    store
        .apply(vec![order(
            "ops-1",
            2,
            "+81312345678",
            Op::Upsert,
            json!({"status": "active"}),
        )])
        .await
        .unwrap();
    let got = store
        .get("subscriber", "+81312345678")
        .await
        .unwrap()
        .record
        .unwrap();
    assert_eq!(got.fields["plan"], json!("gold"));
    assert_eq!(got.fields["status"], json!("active"));
    assert_eq!(got.version, Version::new(epoch, 2));

    // Keys are case-sensitive and may hold any UTF-8.
    store
        .apply(vec![order(
            "ops-1",
            3,
            "Key/é",
            Op::Upsert,
            json!({"plan": "x"}),
        )])
        .await
        .unwrap();
    assert!(store
        .get("subscriber", "key/é")
        .await
        .unwrap()
        .record
        .is_none());
    assert!(store
        .get("subscriber", "Key/é")
        .await
        .unwrap()
        .record
        .is_some());

    // A delete leaves a tombstone with its version; a re-create removes it.
    let out = store
        .apply(vec![order("ops-1", 4, "Key/é", Op::Delete, json!({}))])
        .await
        .unwrap();
    let dv = out.results[0].version.unwrap();
    let gone = store.get("subscriber", "Key/é").await.unwrap();
    assert!(gone.record.is_none());
    assert_eq!(gone.tombstone, Some(dv));
    store
        .apply(vec![order(
            "ops-1",
            5,
            "Key/é",
            Op::Upsert,
            json!({"plan": "y"}),
        )])
        .await
        .unwrap();
    let back = store.get("subscriber", "Key/é").await.unwrap();
    assert_eq!(back.record.unwrap().fields["plan"], json!("y"));
    assert_eq!(back.tombstone, None);
}

async fn idempotency(store: &dyn Store) {
    let before = store.meta().await.unwrap().seq;
    let o = order("ops-2", 1, "dup", Op::Upsert, json!({"plan": "a"}));
    let first = store.apply(vec![o.clone()]).await.unwrap();
    let again = store.apply(vec![o.clone()]).await.unwrap();
    assert!(again.results[0].duplicate);
    assert_eq!(
        again.results[0].version, first.results[0].version,
        "a duplicate answers the original version"
    );
    assert!(again.changes.is_empty());
    assert_eq!(
        store.meta().await.unwrap().seq,
        before + 1,
        "a duplicate is not applied twice"
    );

    let mut different = o.clone();
    different.fields = fields(json!({"plan": "b"}));
    assert!(matches!(
        store.apply(vec![different]).await,
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(
        store
            .get("subscriber", "dup")
            .await
            .unwrap()
            .record
            .unwrap()
            .fields["plan"],
        json!("a")
    );

    // A gap is allowed going forward; filling it later is out of order.
    store
        .apply(vec![order(
            "ops-2",
            5,
            "dup",
            Op::Upsert,
            json!({"plan": "c"}),
        )])
        .await
        .unwrap();
    assert!(matches!(
        store
            .apply(vec![order(
                "ops-2",
                3,
                "dup",
                Op::Upsert,
                json!({"plan": "d"})
            )])
            .await,
        Err(StoreError::OutOfOrder { .. })
    ));
    assert_eq!(store.high_water_marks().await.unwrap()["ops-2"], 5);
}

async fn atomic_batches(store: &dyn Store) {
    let before = store.meta().await.unwrap().seq;
    let hw = store.high_water_marks().await.unwrap();
    let bad_batches = vec![
        vec![
            order("ops-3", 1, "atom-a", Op::Upsert, json!({"plan": "a"})),
            order("ops-3", 2, "atom-b", Op::Upsert, json!({"colour": "red"})),
        ],
        vec![
            order("ops-3", 1, "atom-a", Op::Upsert, json!({"plan": "a"})),
            order("ops-3", 2, "atom-b", Op::Upsert, json!({"roaming": "yes"})),
        ],
        vec![
            order("ops-3", 1, "atom-a", Op::Upsert, json!({"plan": "a"})),
            order("ops-3", 2, "", Op::Upsert, json!({})),
        ],
        vec![order(
            "ops-3",
            1,
            "atom-a",
            Op::Delete,
            json!({"plan": "a"}),
        )],
        vec![order("ops-3", 0, "atom-a", Op::Upsert, json!({}))],
        vec![
            order("ops-3", 1, "atom-a", Op::Upsert, json!({"plan": "a"})),
            Order {
                origin: None,
                table: "nope".into(),
                ..order("ops-3", 2, "atom-b", Op::Upsert, json!({}))
            },
        ],
        // Same (source, seq) twice with different content inside one batch.
        vec![
            order("ops-3", 1, "atom-a", Op::Upsert, json!({"plan": "a"})),
            order("ops-3", 1, "atom-a", Op::Upsert, json!({"plan": "b"})),
        ],
    ];
    for batch in bad_batches {
        let err = store
            .apply(batch.clone())
            .await
            .expect_err("an invalid batch is refused");
        assert!(
            matches!(
                err,
                StoreError::Invalid { .. } | StoreError::Conflict { .. }
            ),
            "unexpected error {err:?} for {batch:?}"
        );
        assert!(
            store
                .get("subscriber", "atom-a")
                .await
                .unwrap()
                .record
                .is_none(),
            "nothing of a refused batch is applied"
        );
        assert_eq!(store.meta().await.unwrap().seq, before);
        assert_eq!(store.high_water_marks().await.unwrap(), hw);
    }
}

async fn change_log(store: &dyn Store) {
    let start = store.meta().await.unwrap().seq;
    let batch: Vec<Order> = (1..=50)
        .map(|i| {
            order(
                "ops-4",
                i,
                &format!("log-{}", i % 7),
                Op::Upsert,
                json!({"credit_limit": i}),
            )
        })
        .collect();
    store.apply(batch).await.unwrap();
    let changes = store.changes_since(start, 1000).await.unwrap();
    assert_eq!(changes.len(), 50);
    for (i, c) in changes.iter().enumerate() {
        assert_eq!(
            c.version.seq,
            start + 1 + i as u64,
            "changes come back in commit order"
        );
        assert_eq!(
            c.fields.as_ref().unwrap()["credit_limit"],
            json!(i as u64 + 1)
        );
    }
    assert_eq!(store.changes_since(start, 10).await.unwrap().len(), 10);
    let seq = store.meta().await.unwrap().seq;
    store.prune_changes(20).await.unwrap();
    let meta = store.meta().await.unwrap();
    assert_eq!(meta.log_floor, seq - 19, "pruning keeps the newest entries");
    assert_eq!(store.changes_since(0, 1000).await.unwrap().len(), 20);
    // An order whose log entry was pruned is still acknowledged, not reapplied.
    let again = store
        .apply(vec![order(
            "ops-4",
            1,
            "log-1",
            Op::Upsert,
            json!({"credit_limit": 1}),
        )])
        .await
        .unwrap();
    assert!(again.results[0].duplicate);
    assert_eq!(store.meta().await.unwrap().seq, seq);
}

/// Writes a small known data set, for reopen tests.
pub async fn load_some(store: &dyn Store) {
    let batch: Vec<Order> = (1..=10)
        .map(|i| {
            order(
                "ops-r",
                i,
                &format!("r{i}"),
                Op::Upsert,
                json!({"plan": format!("p{i}")}),
            )
        })
        .collect();
    store.apply(batch).await.unwrap();
}

/// Checks what [`load_some`] wrote.
pub async fn check_some(store: &dyn Store) {
    for i in 1..=10u64 {
        let r = store
            .get("subscriber", &format!("r{i}"))
            .await
            .unwrap()
            .record
            .unwrap();
        assert_eq!(r.fields["plan"], json!(format!("p{i}")));
        assert_eq!(r.version.seq, i);
    }
    assert_eq!(store.high_water_marks().await.unwrap()["ops-r"], 10);
    assert_eq!(store.meta().await.unwrap().seq, 10);
}
