//! The storage test suite, unchanged, on the PostgreSQL engine, against a
//! real temporary PostgreSQL cluster (skipped where PostgreSQL is not
//! installed, unless TIDEMARK_REQUIRE_POSTGRES=1).

use tidemark_store::{PgStore, Store};
use tidemark_testkit::postgres::PgCluster;

async fn store(test: &str) -> Option<PgStore> {
    let cluster = PgCluster::shared(test)?;
    let url = cluster.database(test).expect("a test database");
    Some(PgStore::connect(&url, "tidemark").await.expect("connect"))
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
    let Some(cluster) = PgCluster::shared("reopen") else {
        return;
    };
    let url = cluster.database("reopen").unwrap();
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
    let Some(cluster) = PgCluster::shared("newer") else {
        return;
    };
    let url = cluster.database("newer").unwrap();
    {
        let s = PgStore::connect(&url, "tidemark").await.unwrap();
        s.close().await.unwrap();
    }
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
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
    let Some(cluster) = PgCluster::shared("cross") else {
        return;
    };
    let url = cluster.database("cross").unwrap();
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
}
