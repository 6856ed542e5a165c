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
    // It holds every record: its owner's only, whatever the umask.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&snap).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");
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

/// `n` upserts of source "s" from seq `from`, each with a `size`-byte plan.
fn big_batch(from: u64, n: u64, size: usize) -> Vec<tidemark_api::Order> {
    (from..from + n)
        .map(|i| {
            crate::testsuite::order(
                "s",
                i,
                &format!("k{i}"),
                tidemark_api::Op::Upsert,
                serde_json::json!({"plan": "x".repeat(size)}),
            )
        })
        .collect()
}

/// Caps the writer's database at its pages now plus `extra` (SQLite's page
/// limit stands in for a full disk: `SQLITE_FULL`). Returns the pages now.
fn cap_pages(store: &SqliteStore, extra: i64) -> i64 {
    let conn = store.inner.writer.lock();
    let n: i64 = conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    conn.query_row(&format!("PRAGMA max_page_count = {}", n + extra), [], |r| {
        r.get::<_, i64>(0)
    })
    .unwrap();
    n
}

/// A full disk refuses the batch as `Full` (the HTTP layer's `507
/// storage_full`), not as a generic engine failure, and applies nothing of
/// it: once there is room, the same batch is applied whole, at the seqs the
/// refused one would have had.
#[tokio::test]
async fn a_full_disk_refuses_the_batch_whole_and_the_same_batch_goes_in_later() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), "test").unwrap();
    store.apply(big_batch(1, 50, 500)).await.unwrap();
    let pages = cap_pages(&store, 0);
    let before = store.meta().await.unwrap().seq;
    let refused = store.apply(big_batch(51, 50, 500)).await;
    assert!(matches!(refused, Err(StoreError::Full(_))), "{refused:?}");
    assert!(refused.unwrap_err().to_string().contains("free space"));
    assert_eq!(store.meta().await.unwrap().seq, before, "nothing applied");
    assert!(store
        .get("subscriber", "k51")
        .await
        .unwrap()
        .record
        .is_none());
    cap_pages(&store, pages * 100);
    let out = store.apply(big_batch(51, 50, 500)).await.unwrap();
    assert_eq!(out.results.len(), 50);
    assert_eq!(out.results[0].version.unwrap().seq, before + 1);
    assert!(out.results.iter().all(|r| !r.duplicate));
}

/// A full disk in the middle of a group of batches (one commit for all):
/// each batch answered as applied is there, after a reopen too, and each
/// refused one is not; the refused ones go in whole once there is room.
/// SQLite may roll the whole transaction back by itself on a full disk:
/// then no batch of the group may be answered as applied, and nothing may
/// run after it outside a transaction (before, the next batch did, and was
/// kept though answered as failed).
#[tokio::test]
async fn a_full_disk_in_a_group_answers_each_batch_as_it_stands() {
    let dir = tempfile::tempdir().unwrap();
    let group: Vec<Vec<tidemark_api::Order>> =
        (0..4).map(|b| big_batch(1 + b * 40, 40, 700)).collect();
    let answered = {
        let store = SqliteStore::open(dir.path(), "test").unwrap();
        cap_pages(&store, 40);
        let out = store.apply_group(group.clone()).await;
        assert!(
            out.iter().any(|r| matches!(r, Err(StoreError::Full(_)))),
            "the page limit is reached: {out:?}"
        );
        let oks: Vec<bool> = out.iter().map(Result::is_ok).collect();
        // The in-memory seq and the store agree.
        let applied = oks.iter().filter(|ok| **ok).count() as u64 * 40;
        assert_eq!(store.meta().await.unwrap().seq, applied, "{oks:?}");
        store.close().await.unwrap();
        oks
    };
    let store = SqliteStore::open(dir.path(), "test").unwrap();
    for (b, ok) in answered.iter().enumerate() {
        for o in &group[b] {
            let there = store
                .get("subscriber", &o.key)
                .await
                .unwrap()
                .record
                .is_some();
            assert_eq!(there, *ok, "batch {b} answered ok={ok}, key {}", o.key);
        }
    }
    // With room, the refused batches go in, in order, whole.
    for (b, ok) in answered.iter().enumerate() {
        let out = store.apply(group[b].clone()).await.unwrap();
        assert!(out.results.iter().all(|r| r.duplicate == *ok), "batch {b}");
    }
    assert_eq!(store.meta().await.unwrap().seq, 160);
}
