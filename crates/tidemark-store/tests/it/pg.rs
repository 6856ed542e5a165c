//! The storage test suite, unchanged, on the PostgreSQL engine, against a
//! real temporary PostgreSQL cluster (skipped where PostgreSQL is not
//! installed, unless TIDEMARK_REQUIRE_POSTGRES=1).

use tidemark_store::{PgStore, Store};
use tidemark_testkit::postgres::PgCluster;

/// A new database on the shared cluster (`None`: PostgreSQL is not
/// installed and not required, so the test is skipped).
fn database(test: &str) -> Option<String> {
    let cluster = PgCluster::shared(test)?;
    Some(cluster.database(test).expect("a test database"))
}

async fn store(test: &str) -> Option<PgStore> {
    let url = database(test)?;
    Some(PgStore::connect(&url, "tidemark").await.expect("connect"))
}

/// A plain connection to the test database, beside the store's.
async fn sql(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// A store on a new database whose lease "a" (at `http://a`) holds for a minute.
async fn leased(test: &str) -> Option<(String, PgStore, tidemark_store::postgres::cluster::Lease)> {
    let url = database(test)?;
    let s = PgStore::connect(&url, "tidemark").await.unwrap();
    let lease = s
        .lease_acquire("a", "http://a", 60_000)
        .await
        .unwrap()
        .unwrap();
    Some((url, s, lease))
}

/// How many sessions wait on a lock with a query `LIKE pattern`.
async fn waiting_on_locks(watcher: &tokio_postgres::Client, pattern: &str) -> i64 {
    watcher
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE $1",
            &[&pattern],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_passes_the_store_suite() {
    let Some(s) = store("suite").await else {
        return;
    };
    tidemark_store::testsuite::run(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_everything_and_another_schema_is_another_store() {
    let Some(url) = database("reopen") else {
        return;
    };
    {
        let s = PgStore::connect(&url, "tidemark").await.unwrap();
        tidemark_store::testsuite::load_some(&s).await;
        s.close().await.unwrap();
    }
    let s = PgStore::connect(&url, "tidemark").await.unwrap();
    tidemark_store::testsuite::check_some(&s).await;
    let other = PgStore::connect(&url, "other_deployment").await.unwrap();
    assert_eq!(
        other.meta().await.unwrap().seq,
        0,
        "schemas are separate stores"
    );
    assert!(PgStore::connect(&url, "bad name;").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_from_a_newer_tidemark_is_refused() {
    let Some(url) = database("newer") else {
        return;
    };
    {
        let s = PgStore::connect(&url, "tidemark").await.unwrap();
        s.close().await.unwrap();
    }
    sql(&url)
        .await
        .execute(
            "UPDATE tidemark.tm_meta SET value = '99' WHERE name = 'format'",
            &[],
        )
        .await
        .unwrap();
    let err = PgStore::connect(&url, "tidemark")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("newer Tidemark"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_a_clear_error() {
    let err = PgStore::connect("postgres://postgres@127.0.0.1:1/none", "tidemark")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("PostgreSQL"), "{err}");
}

/// Everything a store holds that a restore must keep, comparable.
async fn fingerprint(s: &dyn Store) -> String {
    let meta = s.meta().await.unwrap();
    let changes = s.changes_since(0, 100_000).await.unwrap();
    let mut keys: Vec<(String, String)> = changes
        .iter()
        .map(|c| (c.table.clone(), c.key.clone()))
        .collect();
    keys.sort();
    keys.dedup();
    let mut records = Vec::new();
    for (t, k) in &keys {
        records.push(format!("{t}/{k}: {:?}", s.get(t, k).await.unwrap()));
    }
    format!(
        "epoch {} seq {} floor {} schema {}\nhw {:?}\nflags {:?}\nrecovery {:?}\nchanges {:?}\nrecords {:#?}",
        meta.epoch,
        meta.seq,
        meta.log_floor,
        meta.schema_version,
        s.high_water_marks().await.unwrap(),
        s.list_flags(100_000).await.unwrap(),
        s.recovery_meta().await.unwrap(),
        changes,
        records
    )
}

/// Issue 10: SQLite -> PostgreSQL -> SQLite through the shared snapshot
/// format leaves every record, version, flag and high-water mark equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_cross_engines_and_keep_everything() {
    use tidemark_store::postgres::snapshot::{load_into, swap_in};
    use tidemark_store::{Engine, FlagEntry, SqliteStore};
    let Some(url) = database("cross") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let lite = SqliteStore::open(&dir.path().join("a"), "test").unwrap();
    tidemark_store::testsuite::load_some(&lite).await;
    let epoch = lite.meta().await.unwrap().epoch;
    lite.mark_restored(epoch + 1).await.unwrap();
    let flag = FlagEntry {
        table: "subscriber".into(),
        key: "someone".into(),
        through_seq: 99,
    };
    lite.add_flags("ops-x", vec![flag], false, vec![])
        .await
        .unwrap();
    let want = fingerprint(&lite).await;
    let s1 = dir.path().join("s1");
    lite.snapshot_to(&s1).await.unwrap();

    // Into PostgreSQL, over an existing store there.
    let old = PgStore::connect(&url, "tidemark").await.unwrap();
    old.close().await.unwrap();
    let staged = load_into(&url, "tidemark_staging", &s1).await.unwrap();
    staged.close().await.unwrap();
    swap_in(&url, "tidemark_staging", "tidemark").await.unwrap();
    let pg = PgStore::connect(&url, "tidemark").await.unwrap();
    assert_eq!(fingerprint(&pg).await, want, "SQLite -> PostgreSQL");

    // And back.
    let s2 = dir.path().join("s2");
    pg.snapshot_to(&s2).await.unwrap();
    let back_dir = dir.path().join("b");
    std::fs::create_dir(&back_dir).unwrap();
    let back = Engine::Sqlite.load_snapshot(&s2, &back_dir).unwrap();
    assert_eq!(
        fingerprint(back.as_ref()).await,
        want,
        "PostgreSQL -> SQLite"
    );

    // A snapshot made before the change log kept each change's flag loads
    // on both engines, its changes unflagged.
    let old = dir.path().join("old");
    std::fs::copy(&s1, &old).unwrap();
    rusqlite::Connection::open(&old)
        .unwrap()
        .execute_batch("ALTER TABLE tm_changes DROP COLUMN flagged")
        .unwrap();
    let log = lite.changes_since(0, 100_000).await.unwrap();
    let unflagged: Vec<_> = log
        .into_iter()
        .map(|c| tidemark_store::Change {
            flagged: false,
            ..c
        })
        .collect();
    let staged = load_into(&url, "tidemark_old", &old).await.unwrap();
    assert_eq!(
        fingerprint(&staged).await,
        want,
        "an older snapshot -> PostgreSQL"
    );
    assert_eq!(staged.changes_since(0, 100_000).await.unwrap(), unflagged);
    staged.close().await.unwrap();
    let old_dir = dir.path().join("o");
    std::fs::create_dir(&old_dir).unwrap();
    let reopened = Engine::Sqlite.load_snapshot(&old, &old_dir).unwrap();
    assert_eq!(
        fingerprint(reopened.as_ref()).await,
        want,
        "an older snapshot -> SQLite"
    );
    assert_eq!(reopened.changes_since(0, 100_000).await.unwrap(), unflagged);
}

/// B4: a server that opened its store before a restore swapped in other
/// data, and got the lock after it, works on the restored data: its orders
/// carry the restored epoch. Before, it kept the epoch it had read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_locking_after_a_restore_sees_the_restored_store() {
    use tidemark_store::postgres::target::RestoreTarget;
    let Some(url) = database("lock_after_restore") else {
        return;
    };
    // Named apart: sessions of a store on the schema (a server re-taking
    // its lock) keep a restore out; this one plays a server not started yet.
    let sep = if url.contains('?') { '&' } else { '?' };
    let server = PgStore::connect(&format!("{url}{sep}application_name=starting"), "tidemark")
        .await
        .unwrap();
    let before = server.meta().await.unwrap().epoch;
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap");
    server.snapshot_to(&snap).await.unwrap();

    let target = RestoreTarget::lock(&url, "tidemark").await.unwrap();
    assert!(
        matches!(
            server.hold_server_lock(&url).await,
            Err(tidemark_store::StoreError::Locked { .. })
        ),
        "no server starts during a restore"
    );
    let staged = target.stage(&snap).await.unwrap();
    staged.mark_restored(before + 1).await.unwrap();
    staged.close().await.unwrap();
    target.swap_in().await.unwrap();
    drop(target);

    // The restore's session may still be closing.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while let Err(e) = server.hold_server_lock(&url).await {
        assert!(
            std::time::Instant::now() < until,
            "the lock stays taken: {e}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let out = server
        .apply(vec![tidemark_store::testsuite::order(
            "after",
            1,
            "k",
            tidemark_api::Op::Upsert,
            serde_json::json!({ "plan": "p" }),
        )])
        .await
        .unwrap();
    assert_eq!(
        out.results[0].version.unwrap().epoch,
        before + 1,
        "orders carry the restored epoch"
    );
}

/// P10: the flag count a recovery ends on stays exact while another
/// instance's refresh re-reads the store under clearing orders. Counted
/// outside the writer lock, a re-read racing a commit that cleared flags
/// counted them twice or not at all: a count left high kept the recovery
/// open for good, one left low could end it with keys still flagged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flag_count_stays_exact_under_refreshes() {
    use tidemark_store::FlagEntry;
    let Some(url) = database("flag_count") else {
        return;
    };
    let s = PgStore::connect(&url, "tidemark").await.unwrap();
    let watcher = sql(&url).await;
    let epoch = s.meta().await.unwrap().epoch;
    s.mark_restored(epoch + 1).await.unwrap();
    const KEYS: u64 = 1000;
    let entries = (1..=KEYS)
        .map(|i| FlagEntry {
            table: "subscriber".into(),
            key: format!("k{i}"),
            through_seq: i,
        })
        .collect();
    assert_eq!(
        s.add_flags("ops-c", entries, true, vec![])
            .await
            .unwrap()
            .flagged,
        KEYS
    );

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Several at once, so that some re-read overlaps nearly every commit.
    let refreshers: Vec<_> = (0..4)
        .map(|_| {
            let (s, stop) = (s.clone(), stop.clone());
            tokio::spawn(async move {
                let mut refreshes = 0u64;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    s.refresh_shared().await.unwrap();
                    refreshes += 1;
                }
                refreshes
            })
        })
        .collect();
    for i in 1..=KEYS {
        let out = s
            .apply(vec![tidemark_store::testsuite::order(
                "ops-c",
                i,
                &format!("k{i}"),
                tidemark_api::Op::Upsert,
                serde_json::json!({ "plan": "p" }),
            )])
            .await
            .unwrap();
        assert!(out.results[0].version.is_some(), "{:?}", out.results[0]);
        if i % 100 == 0 {
            let counted = s.recovery_meta().await.unwrap().remaining;
            let rows: i64 = watcher
                .query_one("SELECT count(*) FROM tidemark.tm_flags", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(counted, rows as u64, "after {i} clearing orders");
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for r in refreshers {
        assert!(r.await.unwrap() > 0, "the refreshes ran");
    }
    assert_eq!(s.recovery_meta().await.unwrap().remaining, 0);
}

/// B4: a restore replaces the whole schema, so it is refused while the
/// schema holds anything that is not Tidemark's (it dropped other
/// applications' tables with it), or while another schema depends on its
/// tables; nothing is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_is_refused_where_it_would_drop_what_is_not_tidemarks() {
    use tidemark_store::postgres::target::RestoreTarget;
    let Some(url) = database("foreign_objects") else {
        return;
    };
    let s = PgStore::connect(&url, "tidemark").await.unwrap();
    s.close().await.unwrap();
    drop(s);
    let c = sql(&url).await;
    let check = || async {
        RestoreTarget::lock(&url, "tidemark")
            .await
            .unwrap()
            .refuse_foreign()
            .await
    };
    // Tidemark's own schema alone: a restore may go on.
    check().await.unwrap();

    let refused = |r: Result<(), tidemark_store::StoreError>| match r {
        Err(tidemark_store::StoreError::Refused(m)) => m,
        Err(e) => panic!("refused otherwise: {e}"),
        Ok(()) => panic!("a restore was let through"),
    };
    c.batch_execute("CREATE TABLE tidemark.billing (id int); CREATE FUNCTION tidemark.f() RETURNS int LANGUAGE sql AS 'SELECT 1'")
        .await
        .unwrap();
    let m = refused(check().await);
    assert!(
        m.contains("table billing") && m.contains("function f") && m.contains("--pg-schema"),
        "{m}"
    );
    c.batch_execute("DROP TABLE tidemark.billing; DROP FUNCTION tidemark.f()")
        .await
        .unwrap();
    // A view elsewhere on one of its tables.
    c.batch_execute("CREATE VIEW public.subs AS SELECT tm_key FROM tidemark.subscriber")
        .await
        .unwrap();
    let m = refused(check().await);
    assert!(m.contains("public.subs (depends on subscriber)"), "{m}");
    c.batch_execute("DROP VIEW public.subs").await.unwrap();
    // The staging schema's name taken by something else.
    c.batch_execute(
        "CREATE SCHEMA tidemark_restoring; CREATE TABLE tidemark_restoring.orders (id int)",
    )
    .await
    .unwrap();
    let m = refused(check().await);
    assert!(
        m.contains("'tidemark_restoring'") && m.contains("table orders"),
        "{m}"
    );
    let kept: i64 = c
        .query_one("SELECT count(*) FROM tidemark_restoring.orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 0, "the table is still there");
    c.batch_execute("DROP SCHEMA tidemark_restoring CASCADE")
        .await
        .unwrap();

    // What the early look misses (a type), the drops themselves refuse:
    // the swap changes nothing.
    c.batch_execute("CREATE TYPE tidemark.mood AS ENUM ('ok')")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap");
    let s = PgStore::connect(&url, "tidemark").await.unwrap();
    s.snapshot_to(&snap).await.unwrap();
    s.close().await.unwrap();
    drop(s);
    let target = RestoreTarget::lock(&url, "tidemark").await.unwrap();
    target.refuse_foreign().await.unwrap();
    target.stage(&snap).await.unwrap().close().await.unwrap();
    let m = match target.swap_in().await {
        Err(tidemark_store::StoreError::Refused(m)) => m,
        other => panic!("the swap went on: {:?}", other.err()),
    };
    assert!(
        m.contains("mood") && m.contains("nothing was changed"),
        "{m}"
    );
    let left: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = 'tidemark' AND t.typname IN ('mood', 'tm_meta')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 2, "the type and the live store are still there");
    // And a schema name whose staging name PostgreSQL would cut to it.
    let long = format!("s{}", "x".repeat(55));
    let m = refused(
        RestoreTarget::lock(&url, &long)
            .await
            .unwrap()
            .refuse_foreign()
            .await,
    );
    assert!(m.contains("at most 53"), "{m}");
}

mod pipeline {
    //! Pipelined group commits (issue 10): groups begun one after another
    //! run at once and commit in the order they began.

    use super::store;
    use serde_json::json;
    use tidemark_api::{Op, Order};
    use tidemark_store::testsuite::order;
    use tidemark_store::{Begun, Ended, PgStore, Store};

    fn upsert(src: &str, seq: u64, key: &str, plan: &str) -> Order {
        order(src, seq, key, Op::Upsert, json!({ "plan": plan }))
    }

    async fn running(s: &dyn Store, batches: Vec<Vec<Order>>) -> tokio::task::JoinHandle<Ended> {
        match s.begin_group(batches).await {
            Begun::Running(group) => tokio::spawn(group),
            Begun::Alone(_) => panic!("a plain group on a single instance runs pipelined"),
        }
    }

    /// Every change-log seq from 1 to the store's seq, each once, in order.
    async fn log_is_gap_free(s: &dyn Store) -> Vec<tidemark_store::Change> {
        let seq = s.meta().await.unwrap().seq;
        let changes = s.changes_since(0, 100_000).await.unwrap();
        let seqs: Vec<u64> = changes.iter().map(|c| c.version.seq).collect();
        assert_eq!(seqs, (1..=seq).collect::<Vec<_>>(), "a gap-free log");
        changes
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn groups_begun_together_commit_in_the_order_they_began() {
        let Some(s) = store("pipeline_order").await else {
            return;
        };
        // The first group runs alone and learns the seq and marks.
        s.apply(vec![upsert("a", 1, "k0", "p0")]).await.unwrap();
        let mut groups = std::collections::VecDeque::new();
        let mut begun = Vec::new();
        let mut last = 0;
        let mut settle = |g: usize, ended: Ended| {
            let Ended::Done(results) = ended else {
                panic!("group {g} should commit");
            };
            let outcome = results.into_iter().next().unwrap().unwrap();
            for r in &outcome.results {
                let v = r.version.unwrap().seq;
                assert!(
                    v > last,
                    "group {g} takes seqs after every group begun before it"
                );
                last = v;
            }
        };
        for g in 0..8u64 {
            // As the committer does: at most `group_depth` running.
            if groups.len() == s.group_depth() {
                let (n, h): (usize, tokio::task::JoinHandle<Ended>) = groups.pop_front().unwrap();
                settle(n, h.await.unwrap());
            }
            // Sources a and b alternate; groups 4 and 5 rewrite keys of
            // groups 0 and 1 (and run after them), the rest touch keys of
            // their own.
            let src = if g % 2 == 0 { "a" } else { "b" };
            let first = 10 + g / 2 * 100;
            let key_group = if g == 4 || g == 5 { g - 4 } else { g };
            let batch: Vec<Order> = (0..50)
                .map(|i| {
                    upsert(
                        src,
                        first + i,
                        &format!("k{key_group}-{i}"),
                        &format!("g{g}"),
                    )
                })
                .collect();
            begun.push(batch.clone());
            groups.push_back((g as usize, running(&s, vec![batch]).await));
        }
        for (n, h) in groups {
            settle(n, h.await.unwrap());
        }
        let changes = log_is_gap_free(&s).await;
        assert_eq!(changes.len(), 1 + 8 * 50);
        for g in [0u64, 1, 2, 3, 6, 7] {
            let key_group = if g < 2 { g + 4 } else { g };
            let rec = s
                .get("subscriber", &format!("k{g}-7"))
                .await
                .unwrap()
                .record
                .unwrap();
            assert_eq!(
                rec.fields["plan"],
                json!(format!("g{key_group}")),
                "the later group's write of a shared key stands"
            );
        }
        let marks = s.high_water_marks().await.unwrap();
        assert_eq!(marks["a"], begun[6].last().unwrap().seq);
        assert_eq!(marks["b"], begun[7].last().unwrap().seq);
        // A duplicate resubmitted after the pipeline is acknowledged, not
        // applied twice.
        let again = s.apply(begun[3].clone()).await.unwrap();
        assert!(again.results.iter().all(|r| r.duplicate));
        assert_eq!(log_is_gap_free(&s).await.len(), 1 + 8 * 50);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_group_makes_every_group_after_it_run_again_in_order() {
        let Some(url) = super::database("pipeline_failure") else {
            return;
        };
        let s = PgStore::connect(&url, "tidemark").await.unwrap();
        s.apply(vec![upsert("a", 1, "k0", "p0")]).await.unwrap();
        // A constraint of the DBA's that validation knows nothing of: the
        // first group fails inside PostgreSQL.
        super::sql(&url)
            .await
            .execute(
                "ALTER TABLE tidemark.subscriber ADD CONSTRAINT no_bad CHECK (plan <> 'bad')",
                &[],
            )
            .await
            .unwrap();
        let g1 = running(&s, vec![vec![upsert("a", 2, "k1", "bad")]]).await;
        let g2 = running(&s, vec![vec![upsert("a", 3, "k2", "ok")]]).await;
        let g3 = running(&s, vec![vec![upsert("b", 1, "k3", "ok")]]).await;
        let mut again = Vec::new();
        for (g, h) in [g1, g2, g3].into_iter().enumerate() {
            match h.await.unwrap() {
                Ended::Again(batches) => again.push(batches),
                Ended::Done(_) => panic!(
                    "group {} must run again: nothing commits on top of a failure",
                    g + 1
                ),
            }
        }
        assert!(
            matches!(
                s.begin_group(vec![vec![upsert("b", 2, "k4", "ok")]]).await,
                Begun::Alone(_)
            ),
            "after a failure the next group runs alone"
        );
        // Applied again alone, in order: the bad batch is refused, the others
        // take the seqs right after the last commit.
        let mut results = Vec::new();
        for batches in again {
            results.push(s.apply_group(batches).await.remove(0));
        }
        assert!(results[0].is_err(), "{:?}", results[0]);
        assert!(results[1].is_ok() && results[2].is_ok(), "{results:?}");
        let changes = log_is_gap_free(&s).await;
        let keys: Vec<&str> = changes.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["k0", "k2", "k3"]);
        assert!(s.get("subscriber", "k1").await.unwrap().record.is_none());
        let marks = s.high_water_marks().await.unwrap();
        assert_eq!((marks["a"], marks["b"]), (3, 1));
        // And the pipeline runs again once a group has run alone.
        let g = running(&s, vec![vec![upsert("b", 2, "k4", "ok")]]).await;
        assert!(matches!(g.await.unwrap(), Ended::Done(_)));
        log_is_gap_free(&s).await;
    }

    /// A group planned under one lease term never commits under a later
    /// one, even when this instance holds the lease again by then: another
    /// primary may have changed in between what the plan rests on (flags,
    /// the recovery state, the schema).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_planned_under_an_earlier_term_runs_again() {
        let Some((url, s, lease)) = super::leased("pipeline_term").await else {
            return;
        };
        s.set_fence(Some((lease.term, "a".into())));
        s.apply(vec![upsert("a", 1, "k0", "p0")]).await.unwrap();
        let Begun::Running(group) = s.begin_group(vec![vec![upsert("a", 2, "k1", "p")]]).await
        else {
            panic!("a plain group runs pipelined");
        };
        // Before the group runs, the lease goes to "b" and comes back.
        super::sql(&url)
            .await
            .execute("UPDATE tidemark.tm_lease SET term = term + 2", &[])
            .await
            .unwrap();
        s.set_fence(Some((lease.term + 2, "a".into())));
        let Ended::Again(batches) = group.await else {
            panic!("a group planned under an earlier term must run again");
        };
        let results = s.apply_group(batches).await;
        assert!(results[0].is_ok(), "{results:?}");
        assert_eq!(log_is_gap_free(&s).await.len(), 2);
    }

    /// Pipelined groups overlap without a break, and each holds the lease
    /// row `FOR KEY SHARE`; a key-share lock never queues behind a waiting
    /// `FOR UPDATE`. A handover (a promote) must still get through: it
    /// drains the pipeline and holds new groups back until it is done.
    /// (A smoke test: here the groups leave gaps and the handover got
    /// through without the drain too; it did not show the starvation.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_handover_gets_through_overlapping_groups() {
        let Some((_url, s, lease)) = super::leased("pipeline_handover").await else {
            return;
        };
        s.set_fence(Some((lease.term, "a".into())));
        s.apply(vec![upsert("a", 1, "k0", "p0")]).await.unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let committed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let writer = {
            let (s, stop, committed) = (s.clone(), stop.clone(), committed.clone());
            tokio::spawn(async move {
                // As the committer does: at most `group_depth` running, a
                // new one begun as soon as the oldest has settled.
                let mut groups = std::collections::VecDeque::new();
                let mut seq = 1;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    if groups.len() == s.group_depth() {
                        let h: tokio::task::JoinHandle<Ended> = groups.pop_front().unwrap();
                        if let Ended::Done(r) = h.await.unwrap() {
                            if r[0].is_ok() {
                                committed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            }
                        }
                    }
                    seq += 1;
                    let batch: Vec<Order> = (0..500)
                        .map(|i| upsert("a", seq * 1000 + i, &format!("k{seq}-{i}"), "p"))
                        .collect();
                    match s.begin_group(vec![batch]).await {
                        Begun::Running(g) => groups.push_back(tokio::spawn(g)),
                        Begun::Alone(b) => drop(s.apply_group(b).await),
                    }
                }
                for h in groups {
                    let _ = h.await;
                }
            })
        };
        tokio::time::timeout(std::time::Duration::from_secs(60), async {
            while committed.load(std::sync::atomic::Ordering::SeqCst) < 20 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("20 groups commit");
        let handed = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            s.lease_hand_over("a", lease.term, "b", "http://b", 60_000),
        )
        .await
        .expect("a handover gets through a pipeline that never pauses");
        assert!(handed.unwrap());
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        writer.await.unwrap();
        let now = s.lease().await.unwrap();
        assert_eq!(now.holder.as_deref(), Some("b"));
        // Nothing of "a" committed after the handover: the log stays gap-free.
        log_is_gap_free(&s).await;
    }
}

/// Fencing as a write transaction takes it (`FOR KEY SHARE` on the lease
/// row): the holder's renewal goes through while writes are open, and a
/// change of holder waits until they have ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_never_waits_for_writes_and_a_change_of_holder_always_does() {
    let Some((url, s, lease)) = leased("fence_locks").await else {
        return;
    };
    // A write transaction of the holder, open.
    let mut writer = sql(&url).await;
    let write = writer.transaction().await.unwrap();
    let held = write
        .query_opt(
            "SELECT 1 FROM tidemark.tm_lease WHERE id = 1 AND term = $1 AND holder = 'a' FOR KEY SHARE",
            &[&(lease.term as i64)],
        )
        .await
        .unwrap();
    assert!(held.is_some());
    let renewed = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        s.lease_renew("a", lease.term, 60_000),
    )
    .await
    .expect("a renewal does not wait for the holder's writes");
    assert!(renewed.unwrap());
    let handover = {
        let s = s.clone();
        tokio::spawn(async move {
            s.lease_hand_over("a", lease.term, "b", "http://b", 60_000)
                .await
        })
    };
    // The handover waits on the lease row's lock while the write is open.
    let watcher = sql(&url).await;
    tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while waiting_on_locks(&watcher, "%tm_lease%FOR UPDATE%").await < 1 {
            assert!(
                !handover.is_finished(),
                "the handover went through an open write"
            );
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the handover waits on the lease row");
    assert!(
        !handover.is_finished(),
        "the handover went through an open write"
    );
    write.commit().await.unwrap();
    assert!(
        handover.await.unwrap().unwrap(),
        "handed over once the write ended"
    );
    let now = s.lease().await.unwrap();
    assert_eq!(
        (now.term, now.holder.as_deref()),
        (lease.term + 1, Some("b"))
    );
}

/// The lease has connections of its own: with every pooled connection
/// stuck behind a lock (slow reads under load), the holder still renews,
/// and a standby still reads the lease. Before, the renewal queued for a
/// pooled connection past the lease, and the holder stepped down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_never_waits_for_a_pooled_connection() {
    let Some((url, s, lease)) = leased("lease_pool").await else {
        return;
    };
    let mut locker = sql(&url).await;
    let lock = locker.transaction().await.unwrap();
    lock.execute(
        "LOCK TABLE tidemark.tm_sources IN ACCESS EXCLUSIVE MODE",
        &[],
    )
    .await
    .unwrap();
    // More readers than the pool has connections, each stuck on the lock.
    let readers: Vec<_> = (0..24)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.high_water_marks().await })
        })
        .collect();
    let watcher = sql(&url).await;
    tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while waiting_on_locks(&watcher, "%tm_sources%").await < 16 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("every pooled connection waits on the lock");
    let patience = std::time::Duration::from_secs(10);
    let renewed = tokio::time::timeout(patience, s.lease_renew("a", lease.term, 60_000))
        .await
        .expect("a renewal does not queue behind the pool");
    assert!(renewed.unwrap());
    let now = tokio::time::timeout(patience, s.lease())
        .await
        .expect("reading the lease does not queue behind the pool")
        .unwrap();
    assert_eq!(now.holder.as_deref(), Some("a"));
    lock.commit().await.unwrap();
    for r in readers {
        r.await.unwrap().unwrap();
    }
}

/// B4: a restore refused while DB servers hold the schema says who holds
/// it as PostgreSQL sees it (every instance of a cluster holds the lock;
/// the pid recorded is only the instance started last).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_refused_by_running_servers_names_their_sessions() {
    use tidemark_store::postgres::target::RestoreTarget;
    let Some(url) = database("lock_holders") else {
        return;
    };
    let a = PgStore::connect(&url, "tidemark").await.unwrap();
    a.hold_server_lock(&url).await.unwrap();
    let b = PgStore::connect(&url, "tidemark").await.unwrap();
    b.hold_server_lock(&url).await.unwrap();
    match RestoreTarget::lock(&url, "tidemark").await {
        Err(tidemark_store::StoreError::Locked { place, holder }) => {
            assert_eq!(place, "PostgreSQL schema 'tidemark'");
            assert!(
                holder.starts_with("2 PostgreSQL sessions from "),
                "{holder}"
            );
        }
        Err(e) => panic!("refused otherwise: {e}"),
        Ok(_) => panic!("a restore was let through"),
    }
    a.close().await.unwrap();
    b.close().await.unwrap();
}

/// S3, P9: a standby's registered vouch. A renewal tells whether the
/// row was live (the vouch went on without a break); the primary's check
/// sees only live vouches of others (and for a grace past their expiry),
/// the lowest of each kind; a write of the shared state counts its
/// generation.
#[tokio::test]
async fn a_vouch_is_live_while_renewed_and_starts_anew_after_it_expired() {
    let Some(s) = store("vouch_live_and_renewed").await else {
        return;
    };
    assert!(
        !s.vouch_renew("b", 5, 1, 60_000).await.unwrap(),
        "a new row"
    );
    assert!(s.vouch_renew("b", 6, 2, 60_000).await.unwrap(), "no break");
    // Another standby, behind on the change log; and the checker itself.
    s.vouch_renew("c", 3, 4, 60_000).await.unwrap();
    s.vouch_renew("a", 0, 0, 60_000).await.unwrap();
    let check = s.vouch_check("a", 0).await.unwrap();
    assert_eq!((check.seen_seq, check.shared_gen), (Some(3), Some(2)));
    // "c" lets its vouch run out (it froze): not waited for (past the
    // grace), and its next renewal is a break.
    s.vouch_renew("c", 3, 4, 0).await.unwrap();
    assert_eq!(
        s.vouch_check("a", 60_000).await.unwrap().seen_seq,
        Some(3),
        "within the grace, still waited for"
    );
    let check = s.vouch_check("a", 0).await.unwrap();
    assert_eq!((check.seen_seq, check.shared_gen), (Some(6), Some(2)));
    assert!(!s.vouch_renew("c", 9, 9, 60_000).await.unwrap(), "a break");
    // Withdrawn: waited for no more.
    s.vouch_drop("b").await.unwrap();
    s.vouch_drop("c").await.unwrap();
    let check = s.vouch_check("a", 0).await.unwrap();
    assert_eq!((check.seen_seq, check.shared_gen), (None, None));
}

/// S3: every write of the shared state counts its generation, so a
/// standby can say which it followed.
#[tokio::test]
async fn a_shared_write_counts_the_generation() {
    let Some((_, s, lease)) = leased("shared_gen_counts").await else {
        return;
    };
    s.set_fence(Some((lease.term, "a".into())));
    let before = s.shared_gen().await.unwrap();
    s.mark_restored(2).await.unwrap();
    assert!(s.shared_gen().await.unwrap() > before);
}

/// B2, B4: a store open on the schema without its lock (a server whose
/// lock's connection is being re-taken after PostgreSQL restarted) keeps a
/// restore or offline backup out, naming its sessions; once it is closed,
/// the schema can be locked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_its_lock_still_keeps_a_restore_out() {
    use tidemark_store::postgres::target::RestoreTarget;
    let Some(url) = database("lock_retaking") else {
        return;
    };
    let server = PgStore::connect(&url, "tidemark").await.unwrap();
    server.meta().await.unwrap();
    match RestoreTarget::lock(&url, "tidemark").await {
        Err(tidemark_store::StoreError::Locked { holder, .. }) => {
            assert!(holder.contains("re-taken"), "{holder}");
        }
        Err(e) => panic!("refused otherwise: {e}"),
        Ok(_) => panic!("a restore must not run beside a connected server"),
    }
    server.close().await.unwrap();
    drop(server);
    RestoreTarget::lock(&url, "tidemark").await.unwrap();
}
