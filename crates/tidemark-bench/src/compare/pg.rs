//! The PostgreSQL side: schema, data load, and the statements compared.

use tokio_postgres::{Client, NoTls};

pub async fn connect(port: u16) -> anyhow::Result<Client> {
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=postgres dbname=postgres"),
        NoTls,
    )
    .await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// The same table and data as Tidemark's `subscriber` after `bench load`.
pub async fn load(client: &Client, records: u64) -> anyhow::Result<()> {
    client
        .batch_execute(
            "CREATE TABLE subscriber (key text PRIMARY KEY, plan text, status text, services jsonb, roaming boolean,
                                      credit_limit bigint, epoch bigint NOT NULL, seq bigint NOT NULL);",
        )
        .await?;
    client
        .execute(
            "INSERT INTO subscriber
             SELECT '+8130' || lpad(i::text, 8, '0'), (ARRAY['basic','gold','platinum'])[i % 3 + 1], 'active',
                    jsonb_build_object('voice', true, 'sms', i % 2 = 0), i % 5 = 0, (i % 100) * 1000, 1, i + 1
             FROM generate_series(0, $1::bigint - 1) AS i",
            &[&(records as i64)],
        )
        .await?;
    client.batch_execute("VACUUM ANALYZE subscriber").await?;
    Ok(())
}

/// The primary-key read.
pub const SELECT: &str = "SELECT plan, status, services::text, roaming, credit_limit, epoch, seq FROM subscriber WHERE key = $1";
/// A single upsert (autocommit: one durable commit each).
pub const UPSERT: &str = "INSERT INTO subscriber (key, credit_limit, epoch, seq) VALUES ($1, $2, 1, 0)
     ON CONFLICT (key) DO UPDATE SET credit_limit = excluded.credit_limit, seq = subscriber.seq + 1";
/// A batch of upserts in one statement (one durable commit).
pub const UPSERT_MANY: &str = "INSERT INTO subscriber (key, credit_limit, epoch, seq)
     SELECT k, c, 1, 0 FROM unnest($1::text[], $2::bigint[]) AS t(k, c)
     ON CONFLICT (key) DO UPDATE SET credit_limit = excluded.credit_limit, seq = subscriber.seq + 1";
