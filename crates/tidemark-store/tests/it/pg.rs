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
