//! The SQLite engine's tests: the storage test suite, reopening, the lock,
//! snapshots, and refusing what is not a Tidemark store.

use super::{SqliteStore, DB_FILE};
use crate::{ProcessInfo, Store, StoreError};
use rusqlite::{Connection, OpenFlags};
use std::collections::BTreeMap;
use std::path::Path;

#[tokio::test]
async fn sqlite_passes_the_store_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), "test").unwrap();
    crate::testsuite::run(&store).await;
}

#[tokio::test]
async fn reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SqliteStore::open(dir.path(), "test").unwrap();
        crate::testsuite::load_some(&store).await;
        store.close().await.unwrap();
    }
    let store = SqliteStore::open(dir.path(), "test").unwrap();
    crate::testsuite::check_some(&store).await;
}

/// A store whose log was pruned before `tm_pruned` existed (an older
/// build, or a restore across engines) is given it at open, from what the
/// log still holds: a pruned order is acknowledged as before, one never
/// applied is refused.
#[tokio::test]
async fn a_log_pruned_before_tm_pruned_existed_is_read_as_before() {
    use tidemark_api::Op;
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SqliteStore::open(dir.path(), "test").unwrap();
        let orders = (1..=10)
            .map(|i| {
                crate::testsuite::order(
                    "old",
                    i,
                    &format!("k{i}"),
                    Op::Upsert,
                    serde_json::json!({}),
                )
            })
            .collect();
        store.apply(orders).await.unwrap();
        store.prune_changes(3).await.unwrap();
        store.close().await.unwrap();
    }
    let db = dir.path().join(crate::layout::CURRENT).join(DB_FILE);
    let db = if db.exists() {
        db
    } else {
        dir.path().join(DB_FILE)
    };
    Connection::open(&db)
        .unwrap()
        .execute_batch("DROP TABLE tm_pruned")
        .unwrap();
    let store = SqliteStore::open(dir.path(), "test").unwrap();
    let again = crate::testsuite::order("old", 2, "k2", Op::Upsert, serde_json::json!({}));
    let out = store.apply(vec![again]).await.unwrap();
    assert!(out.results[0].duplicate && out.results[0].version.is_none());
    let logged = crate::testsuite::order("old", 9, "k9", Op::Upsert, serde_json::json!({}));
    assert!(store.apply(vec![logged]).await.unwrap().results[0].duplicate);
}

/// A steady stream of commits does not grow the WAL without end: past its
/// bound the checkpointer copies the rest between two transactions, the
/// next one starts the WAL over, and the file is trimmed back to the bound.
/// (Before, a replay of 1 M orders left a 500 MB WAL.)
#[tokio::test]
async fn back_to_back_commits_do_not_grow_the_wal_without_end() {
    let bound = 256 << 10;
    super::open::TEST_WAL_BOUND.with(|c| c.set(Some(bound)));
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), "test").unwrap();
    let mut wal = store.db_path().as_os_str().to_owned();
    wal.push("-wal");
    let wal_len = || std::fs::metadata(&wal).map_or(0, |m| m.len());
    let plan = "x".repeat(200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let (mut seq, mut longest) = (0u64, 0u64);
    loop {
        let batch: Vec<_> = (0..200)
            .map(|i| {
                seq += 1;
                crate::testsuite::order(
                    "ops-w",
                    seq,
                    &format!("k{}", i % 1000),
                    tidemark_api::Op::Upsert,
                    serde_json::json!({ "plan": plan }),
                )
            })
            .collect();
        store.apply(batch).await.unwrap();
        let len = wal_len();
        if len < longest {
            // Started over and trimmed.
            assert!(
                len <= bound,
                "trimmed to {len} bytes, past the bound of {bound}"
            );
            break;
        }
        longest = len;
        assert!(
            std::time::Instant::now() < deadline,
            "the WAL grew to {longest} bytes over a minute of commits and never started over"
        );
    }
    assert!(
        longest > bound,
        "it had outgrown its bound ({longest} bytes)"
    );
}

#[test]
fn a_locked_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = SqliteStore::open(dir.path(), "server").unwrap();
    let err = SqliteStore::open(dir.path(), "server").unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
}

#[tokio::test]
async fn a_snapshot_holds_everything_and_cleanup_normalises_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("data"), "test").unwrap();
    crate::testsuite::load_some(&store).await;
    let info = ProcessInfo {
        pid: 7,
        boot: "b".into(),
        started_at: "now".into(),
        listen: "x".into(),
    };
    store.record_process(&info).await.unwrap();
    let snap = dir.path().join("snap.db");
    let got = store.snapshot_to(&snap).await.unwrap();
    let meta = store.meta().await.unwrap();
    assert_eq!(got.seq, meta.seq);
    assert_eq!(got.epoch, meta.epoch);
    assert_eq!(got.high_water, store.high_water_marks().await.unwrap());
    assert_eq!(got.process, Some(serde_json::to_value(&info).unwrap()));
    assert!(store.snapshot_to(&snap).await.is_err(), "never overwrites");

    let private = dir.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::copy(&snap, private.join(DB_FILE)).unwrap();
    let copy = SqliteStore::open_with_lock(&private, None).unwrap();
    crate::testsuite::check_some(&copy).await;
    copy.mark_needs_cleanup().await.unwrap();
    assert!(copy.needs_cleanup().await.unwrap());
    assert_eq!(copy.cleanup_process_info().await.unwrap(), vec!["process"]);
    assert!(!copy.needs_cleanup().await.unwrap());
    assert!(!private.join(crate::layout::CURRENT).exists());
}

/// Every row of every table, as text, for comparing two databases.
fn dump(path: &Path) -> BTreeMap<String, Vec<String>> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    tables.sort();
    let mut out = BTreeMap::new();
    for t in tables {
        let mut stmt = conn.prepare(&format!("SELECT * FROM \"{t}\"")).unwrap();
        let n = stmt.column_count();
        let mut rows: Vec<String> = stmt
            .query_map([], |r| {
                Ok((0..n)
                    .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                    .collect::<Vec<_>>()
                    .join("|"))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        rows.sort();
        out.insert(t, rows);
    }
    out
}

#[tokio::test]
async fn a_snapshot_equals_its_source_in_every_table_flags_included() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("data"), "test").unwrap();
    crate::testsuite::load_some(&store).await;
    {
        let w = store.inner.writer.lock();
        w.execute(
            "INSERT INTO tm_flags (tbl, key, source, through_seq) VALUES ('subscriber', 'k', 'ops-1', 9)",
            [],
        )
        .unwrap();
    }
    let snap = dir.path().join("snap.db");
    store.snapshot_to(&snap).await.unwrap();
    store.close().await.unwrap();
    let source = dump(store.db_path());
    assert!(source["tm_flags"].len() == 1 && !source["tm_changes"].is_empty());
    assert_eq!(dump(&snap), source);
}

/// The streamed snapshot (pages read inside one transaction) is this
/// build's path, not the scratch-file fallback, and its bytes are a
/// self-contained rollback-journal database equal to the source.
#[tokio::test]
async fn a_streamed_snapshot_equals_its_source_and_stands_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("data"), "test").unwrap();
    crate::testsuite::load_some(&store).await;
    assert!(
        super::page_stream::available(&store.inner.writer.lock()),
        "sqlite_dbpage is compiled in (.cargo/config.toml)"
    );
    let scratch = tempfile::tempdir().unwrap();
    let mut snap = store.snapshot(scratch.path()).await.unwrap();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut snap.reader, &mut bytes).unwrap();
    assert_eq!(
        std::fs::read_dir(scratch.path()).unwrap().count(),
        0,
        "no scratch file"
    );
    assert_eq!((bytes[18], bytes[19]), (1, 1), "rollback-journal header");
    let file = dir.path().join("streamed.db");
    std::fs::write(&file, &bytes).unwrap();
    let conn = Connection::open_with_flags(&file, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete");
    drop(conn);
    store.close().await.unwrap();
    assert_eq!(dump(&file), dump(store.db_path()));
}

#[test]
fn a_foreign_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(DB_FILE),
        b"this is not a database, just text",
    )
    .unwrap();
    let err = SqliteStore::open(dir.path(), "server").unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Format(_) | StoreError::DataDir { .. } | StoreError::Engine(_)
        ),
        "{err}"
    );
}

/// P6: a source with more than a million orders since the backup can be
/// scheduled (the order gap limit refused every chunk of it), while a seq
/// no OpS could reach is still refused.
#[tokio::test]
async fn a_schedule_reaches_millions_of_orders_past_the_backup() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), "test").unwrap();
    let epoch = store.meta().await.unwrap().epoch;
    store.mark_restored(epoch + 1).await.unwrap();
    let entry = |key: &str, through_seq| crate::FlagEntry {
        table: "subscriber".into(),
        key: key.into(),
        through_seq,
    };
    let added = store
        .add_flags("busy", vec![entry("k", 5_000_000)], false, vec![])
        .await
        .unwrap();
    assert_eq!(added.flagged, 1);
    assert!(matches!(
        store
            .add_flags("busy", vec![entry("j", u64::MAX)], false, vec![])
            .await,
        Err(StoreError::BadSchedule(_))
    ));
}
