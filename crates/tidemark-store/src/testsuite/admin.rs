//! Administration (B1-B6, S4): the engine's name and schema, notes,
//! snapshots, process information and cleanup, close.

use super::{apply_ok, order};
use crate::{Engine, ProcessInfo, Store};
use serde_json::json;
use tidemark_api::Op;

pub(super) async fn engine_and_schema(store: &dyn Store) {
    assert!(
        Engine::ALL.iter().any(|e| e.name() == store.engine()),
        "unknown engine name {:?}",
        store.engine()
    );
    let schema = store.schema();
    assert_eq!(schema.version, store.meta().await.unwrap().schema_version);
    assert!(schema.table("subscriber").is_ok());
}

/// Operational state kept with the data (S4).
pub(super) async fn notes(store: &dyn Store) {
    assert_eq!(store.note("quiesce").await.unwrap(), None);
    store
        .set_note("quiesce", Some("{\"until\":1}".into()))
        .await
        .unwrap();
    store.set_note("other", Some("x".into())).await.unwrap();
    store.set_note("other", Some("y".into())).await.unwrap();
    assert_eq!(
        store.note("quiesce").await.unwrap().as_deref(),
        Some("{\"until\":1}")
    );
    assert_eq!(store.note("other").await.unwrap().as_deref(), Some("y"));
    store.set_note("other", None).await.unwrap();
    assert_eq!(store.note("other").await.unwrap(), None);
    assert!(store.note("quiesce").await.unwrap().is_some());
}

fn process_info() -> ProcessInfo {
    ProcessInfo {
        pid: 4121,
        boot: "b00t".into(),
        started_at: "2024-01-01T00:00:00Z".into(),
        listen: "127.0.0.1:0".into(),
    }
}

/// B1, B5: a snapshot holds one consistent point, says what it holds, and
/// any engine can take it in (the snapshot format is shared).
pub(super) async fn snapshots(store: &dyn Store) {
    let scratch = tempfile::tempdir().unwrap();
    store.record_process(&process_info()).await.unwrap();
    // The history note (`ID MARK`) names the store in every backup of it.
    store
        .set_note("history", Some("h-1234 1 -".into()))
        .await
        .unwrap();
    let path = scratch.path().join("snap");
    let info = store.snapshot_to(&path).await.unwrap();
    assert_eq!(info.history.as_deref(), Some("h-1234"));
    let meta = store.meta().await.unwrap();
    assert_eq!(
        (info.epoch, info.seq, info.schema_version),
        (meta.epoch, meta.seq, meta.schema_version)
    );
    assert_eq!(info.high_water, store.high_water_marks().await.unwrap());
    assert_eq!(
        info.process,
        Some(serde_json::to_value(process_info()).unwrap())
    );
    assert_eq!(info.bytes, std::fs::metadata(&path).unwrap().len());
    assert_eq!(crate::inspect_snapshot(&path).unwrap(), info);
    assert!(
        store.snapshot_to(&path).await.is_err(),
        "a snapshot never overwrites a file"
    );

    // The stream holds its point from the moment it is opened: a write
    // between opening and reading is not in it.
    let mut streamed = store.snapshot(scratch.path()).await.unwrap();
    apply_ok(
        store,
        order("ops-s", 1, "s1", Op::Upsert, json!({"plan": "after"})),
    )
    .await;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut streamed.reader, &mut bytes).unwrap();
    assert_eq!(bytes.len() as u64, streamed.info.bytes);
    let left: Vec<_> = std::fs::read_dir(scratch.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec!["snap"], "the stream leaves nothing behind");
    // What the stream says it holds is what the bytes hold, and they are a
    // sound database: the same snapshot as the file.
    let decoded = scratch.path().join("streamed");
    std::fs::write(&decoded, &bytes).unwrap();
    crate::check_snapshot_integrity(&decoded).unwrap();
    assert_eq!(crate::inspect_snapshot(&decoded).unwrap(), streamed.info);
    let same_point = crate::SnapshotInfo {
        bytes: info.bytes,
        ..streamed.info.clone()
    };
    assert_eq!(same_point, info, "the stream and the file hold one point");
    std::fs::remove_file(&decoded).unwrap();

    // Later writes are not in the file either.
    assert_eq!(crate::inspect_snapshot(&path).unwrap().seq, meta.seq);

    let copy_dir = scratch.path().join("copy");
    std::fs::create_dir(&copy_dir).unwrap();
    let copy = Engine::default().load_snapshot(&path, &copy_dir).unwrap();
    let copied = copy.meta().await.unwrap();
    assert_eq!((copied.epoch, copied.seq), (meta.epoch, meta.seq));
    assert_eq!(copied.log_floor, meta.log_floor);
    assert_eq!(copy.high_water_marks().await.unwrap(), info.high_water);
    assert_eq!(
        copy.recovery_meta().await.unwrap(),
        store.recovery_meta().await.unwrap()
    );
    for key in ["+81312345678", "Key/é", "dup", "g1", "o1", "o2", "o3", "f1"] {
        assert_eq!(
            copy.get("subscriber", key).await.unwrap(),
            store.get("subscriber", key).await.unwrap(),
            "key {key}"
        );
    }
    assert!(copy.get("subscriber", "s1").await.unwrap().record.is_none());
    // The schema and its registry travel with the data (indexes included).
    assert_eq!(copy.schema(), store.schema());
    assert_eq!(
        copy.schema_versions().await.unwrap(),
        store.schema_versions().await.unwrap()
    );
    assert_eq!(
        copy.changes_since(0, 10_000).await.unwrap(),
        store.changes_since(0, 10_000).await.unwrap()[..(meta.seq + 1 - meta.log_floor) as usize]
    );
    copy.close().await.unwrap();
}

/// B6: process information restored from an online backup is normalised
/// before a server starts; other notes stay.
pub(super) async fn process_info_and_cleanup(store: &dyn Store) {
    store.record_process(&process_info()).await.unwrap();
    store.set_note("quiesce", Some("{}".into())).await.unwrap();
    // A service server's notice by name (S8): one cancelled after the
    // backup must not come back with it.
    store
        .set_note("service_quiesce/svc-1", Some("{}".into()))
        .await
        .unwrap();
    store.set_note("keep", Some("k".into())).await.unwrap();
    assert!(!store.needs_cleanup().await.unwrap());
    store.mark_needs_cleanup().await.unwrap();
    assert!(store.needs_cleanup().await.unwrap());
    let removed = store.cleanup_process_info().await.unwrap();
    assert_eq!(removed.len(), 3, "{removed:?}");
    assert!(removed.iter().any(|n| n.contains("process")), "{removed:?}");
    assert!(
        removed.iter().any(|n| n.ends_with(".quiesce")),
        "{removed:?}"
    );
    assert!(
        removed.iter().any(|n| n.contains("service_quiesce/svc-1")),
        "{removed:?}"
    );
    assert!(!store.needs_cleanup().await.unwrap());
    assert_eq!(store.note("quiesce").await.unwrap(), None);
    assert_eq!(store.note("service_quiesce/svc-1").await.unwrap(), None);
    assert_eq!(store.note("keep").await.unwrap().as_deref(), Some("k"));
    assert!(store.cleanup_process_info().await.unwrap().is_empty());
    let scratch = tempfile::tempdir().unwrap();
    let info = store
        .snapshot_to(&scratch.path().join("snap"))
        .await
        .unwrap();
    assert_eq!(
        info.process, None,
        "cleanup removed the process information"
    );
}

/// Closing makes everything durable; the store then refuses writes.
pub(super) async fn closing(store: &dyn Store) {
    store.close().await.unwrap();
    store.close().await.unwrap();
    assert!(store
        .apply(vec![order("ops-z", 1, "z", Op::Upsert, json!({}))])
        .await
        .is_err());
    assert!(store
        .apply_group(vec![vec![order("ops-z", 1, "z", Op::Upsert, json!({}))]])
        .await
        .iter()
        .all(|r| r.is_err()));
}
