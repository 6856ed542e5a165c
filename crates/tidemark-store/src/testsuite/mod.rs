//! The storage test suite: one function that takes an opened, empty store,
//! so every engine runs exactly the same checks.
//!
//! It panics on the first failed check (it is meant to be called from tests).
//! Every method of [`Store`] is exercised; the store is closed at the end.
//! Compiled only with the `testsuite` feature (tests enable it).
//!
//! - `data`: reads, writes, idempotency, atomic batches, the change log,
//!   group commit (P1, P3);
//! - `recovery`: restore marking, schedule lists, flags, replays (P5-P10);
//! - `schema`: the schema registry: publish, old records, rollback (S1, S9);
//! - `flag_pages`: pages of flags by table, key prefix and cursor;
//! - `admin`: engine and schema, notes, snapshots, process information,
//!   cleanup, close (B1-B6, S4).

mod admin;
mod data;
mod flag_pages;
mod recovery;
mod schema;

use crate::Store;
use serde_json::json;
use tidemark_api::{Fields, Op, Order};

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

/// Applies one order, which must be accepted.
async fn apply_ok(store: &dyn Store, o: Order) -> crate::ApplyOutcome {
    store.apply(vec![o]).await.unwrap()
}

/// The record of `key` in `subscriber`, which must exist.
async fn record(store: &dyn Store, key: &str) -> tidemark_api::Record {
    let found = store.get("subscriber", key).await.unwrap();
    found.record.unwrap_or_else(|| panic!("{key} is missing"))
}

/// Runs every check against `store`, which must be freshly created.
pub async fn run(store: &dyn Store) {
    data::reads_and_writes(store).await;
    admin::engine_and_schema(store).await;
    data::idempotency(store).await;
    data::atomic_batches(store).await;
    data::change_log(store).await;
    data::changes_carry_the_record_after(store).await;
    data::group_commit(store).await;
    recovery::recovery_flags(store).await;
    recovery::replays_follow_the_original_order(store).await;
    recovery::replays_in_batches(store).await;
    recovery::clearing_flags(store).await;
    recovery::settling_flags(store).await;
    recovery::schedule_sent_again(store).await;
    recovery::expected_sources(store).await;
    recovery::replays_skip_unused_seqs(store).await;
    schema::registry(store).await;
    flag_pages::pages(store).await;
    admin::notes(store).await;
    admin::snapshots(store).await;
    admin::process_info_and_cleanup(store).await;
    admin::closing(store).await;
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
        let r = record(store, &format!("r{i}")).await;
        assert_eq!(r.fields["plan"], json!(format!("p{i}")));
        assert_eq!(r.version.seq, i);
    }
    assert_eq!(store.high_water_marks().await.unwrap()["ops-r"], 10);
    assert_eq!(store.meta().await.unwrap().seq, 10);
}
