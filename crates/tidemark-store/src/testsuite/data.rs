//! Reads and writes (P1, P3): point reads, upserts and deletes,
//! idempotency by `(source, seq)`, all-or-nothing batches, the change log,
//! group commit.

use super::{apply_ok, fields, order, record};
use crate::{Store, StoreError};
use serde_json::json;
use tidemark_api::{Op, Order, Version};

pub(super) async fn reads_and_writes(store: &dyn Store) {
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

    let out = apply_ok(store, order(
            "ops-1",
            1,
            "+81312345678",
            Op::Upsert,
            json!({"plan": "gold", "services": {"voice": true}, "roaming": false, "credit_limit": 5000}),
        )).await;
    let v1 = out.results[0].version.unwrap();
    assert_eq!(v1, Version::new(epoch, 1));
    assert_eq!(out.changes.len(), 1);

    let got = record(store, "+81312345678").await;
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
    apply_ok(
        store,
        order(
            "ops-1",
            2,
            "+81312345678",
            Op::Upsert,
            json!({"status": "active"}),
        ),
    )
    .await;
    let got = record(store, "+81312345678").await;
    assert_eq!(got.fields["plan"], json!("gold"));
    assert_eq!(got.fields["status"], json!("active"));
    assert_eq!(got.version, Version::new(epoch, 2));

    // Keys are case-sensitive and may hold any UTF-8.
    apply_ok(
        store,
        order("ops-1", 3, "Key/é", Op::Upsert, json!({"plan": "x"})),
    )
    .await;
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
    let out = apply_ok(store, order("ops-1", 4, "Key/é", Op::Delete, json!({}))).await;
    let dv = out.results[0].version.unwrap();
    let gone = store.get("subscriber", "Key/é").await.unwrap();
    assert!(gone.record.is_none());
    assert_eq!(gone.tombstone, Some(dv));
    apply_ok(
        store,
        order("ops-1", 5, "Key/é", Op::Upsert, json!({"plan": "y"})),
    )
    .await;
    let back = store.get("subscriber", "Key/é").await.unwrap();
    assert_eq!(back.record.unwrap().fields["plan"], json!("y"));
    assert_eq!(back.tombstone, None);
}

pub(super) async fn idempotency(store: &dyn Store) {
    let before = store.meta().await.unwrap().seq;
    let o = order("ops-2", 1, "dup", Op::Upsert, json!({"plan": "a"}));
    let first = apply_ok(store, o.clone()).await;
    let again = apply_ok(store, o.clone()).await;
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
    assert_eq!(record(store, "dup").await.fields["plan"], json!("a"));

    // A gap is allowed going forward; filling it later is out of order.
    apply_ok(
        store,
        order("ops-2", 5, "dup", Op::Upsert, json!({"plan": "c"})),
    )
    .await;
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

    // Below the first order a source sent, with nothing ever pruned from
    // the log: never applied, so refused, not acknowledged and dropped.
    apply_ok(
        store,
        order("ops-2b", 10, "first-10", Op::Upsert, json!({"plan": "a"})),
    )
    .await;
    assert!(matches!(
        store
            .apply(vec![order("ops-2b", 5, "first-5", Op::Upsert, json!({}))])
            .await,
        Err(StoreError::OutOfOrder { seq: 5, .. })
    ));
    // The same inside one batch: nothing of it is applied.
    assert!(matches!(
        store
            .apply(vec![
                order("ops-2c", 3, "batch-3", Op::Upsert, json!({})),
                order("ops-2c", 2, "batch-2", Op::Upsert, json!({})),
            ])
            .await,
        Err(StoreError::OutOfOrder { index: 1, .. })
    ));
    for key in ["first-5", "batch-3", "batch-2"] {
        let got = store.get("subscriber", key).await.unwrap();
        assert!(got.record.is_none(), "{key} was not applied");
    }
    assert!(!store
        .high_water_marks()
        .await
        .unwrap()
        .contains_key("ops-2c"));
}

pub(super) async fn atomic_batches(store: &dyn Store) {
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

pub(super) async fn change_log(store: &dyn Store) {
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
    let again = apply_ok(
        store,
        order("ops-4", 1, "log-1", Op::Upsert, json!({"credit_limit": 1})),
    )
    .await;
    assert!(again.results[0].duplicate);
    assert_eq!(store.meta().await.unwrap().seq, seq);
    // Once the log was pruned, an order below the first of a source none
    // of whose changes were pruned is still refused: it was never applied
    // (it was taken for a pruned one, acknowledged and dropped).
    apply_ok(store, order("ops-late", 3, "late-3", Op::Upsert, json!({}))).await;
    assert!(matches!(
        store
            .apply(vec![order("ops-late", 2, "late-2", Op::Upsert, json!({}))])
            .await,
        Err(StoreError::OutOfOrder { seq: 2, .. })
    ));
    assert!(store
        .get("subscriber", "late-2")
        .await
        .unwrap()
        .record
        .is_none());

    // A backlog of several pruning chunks (after a bulk load) goes in one call.
    let backlog = 2 * crate::PRUNE_CHUNK + 100;
    let orders: Vec<Order> = (1..=backlog)
        .map(|i| order("ops-4b", i, &format!("bulk-{i}"), Op::Upsert, json!({})))
        .collect();
    for batch in orders.chunks(1000) {
        store.apply(batch.to_vec()).await.unwrap();
    }
    let seq = store.meta().await.unwrap().seq;
    let pruned = store.prune_changes(20).await.unwrap();
    assert_eq!(
        pruned,
        backlog + 1,
        "the whole backlog (and ops-late's change) but the newest 20 is pruned"
    );
    assert_eq!(store.meta().await.unwrap().log_floor, seq - 19);
    assert_eq!(store.changes_since(0, 1000).await.unwrap().len(), 20);
}

/// Every change-log entry carries the record after its order, exactly as
/// the order's own outcome and a read give it: every column type, nulls,
/// partial upserts of existing records, deletes.
pub(super) async fn changes_carry_the_record_after(store: &dyn Store) {
    store
        .apply(vec![
            order(
                "ops-rec",
                1,
                "rec-1",
                Op::Upsert,
                json!({"plan": "gold", "credit_limit": -5}),
            ),
            order("ops-rec", 2, "rec-2", Op::Upsert, json!({"plan": "x"})),
        ])
        .await
        .unwrap();
    let start = store.meta().await.unwrap().seq;
    let batch = vec![
        // A partial upsert of an existing record: the entry holds all of it.
        order(
            "ops-rec",
            3,
            "rec-1",
            Op::Upsert,
            json!({"roaming": true, "services": {"voice": true, "list": [1, "two", null, {"deep": 1.5}], "text": "é\"\\"}}),
        ),
        order(
            "ops-rec",
            4,
            "rec-3",
            Op::Upsert,
            json!({"plan": null, "status": "active", "credit_limit": i64::MAX, "roaming": false, "services": "just a string"}),
        ),
        order("ops-rec", 5, "rec-2", Op::Delete, json!({})),
        order("ops-rec", 6, "rec-4", Op::Upsert, json!({})),
    ];
    let out = store.apply(batch.clone()).await.unwrap();
    let logged = store.changes_since(start, 100).await.unwrap();
    assert_eq!(logged.len(), batch.len());
    for ((o, c), from_outcome) in batch.iter().zip(&logged).zip(&out.changes) {
        assert_eq!(
            c.fields, from_outcome.fields,
            "{}: the log holds the outcome's record",
            o.key
        );
        let read = store.get("subscriber", &o.key).await.unwrap().record;
        assert_eq!(
            c.fields,
            read.map(|r| r.fields),
            "{}: the log holds what a read gives",
            o.key
        );
    }
}

pub(super) async fn group_commit(store: &dyn Store) {
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
    assert_eq!(record(store, "g1").await.fields["plan"], json!("d"));
    assert_eq!(store.high_water_marks().await.unwrap()["ops-g"], 3);
}
