//! The PostgreSQL side: schema, data load, and the statements compared.

use tidemark_api::{ColumnType, Schema};
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

/// The PostgreSQL type that holds a column of `ty`.
fn pg_type(ty: ColumnType) -> &'static str {
    match ty {
        ColumnType::String | ColumnType::Timestamp => "text",
        ColumnType::Integer => "bigint",
        ColumnType::Boolean => "boolean",
        ColumnType::Json => "jsonb",
    }
}

/// The columns of Tidemark's `subscriber` in the default schema.
fn columns() -> anyhow::Result<Vec<tidemark_api::Column>> {
    Ok(Schema::default_schema()
        .table("subscriber")?
        .columns
        .clone())
}

/// The same table and data as Tidemark's `subscriber` after `bench load`.
pub async fn load(client: &Client, records: u64) -> anyhow::Result<()> {
    let columns: Vec<String> = columns()?
        .iter()
        .map(|c| format!("{} {}", c.name, pg_type(c.ty)))
        .collect();
    client
        .batch_execute(&format!(
            "CREATE TABLE subscriber (key text PRIMARY KEY, {}, epoch bigint NOT NULL, seq bigint NOT NULL);",
            columns.join(", ")
        ))
        .await?;
    // The values of `fields_of`, in the schema's column order.
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

/// The primary-key read: every column (JSON as text, as Tidemark answers
/// it) and the version.
pub fn select() -> anyhow::Result<String> {
    let columns: Vec<String> = columns()?
        .iter()
        .map(|c| match c.ty {
            ColumnType::Json => format!("{}::text", c.name),
            _ => c.name.clone(),
        })
        .collect();
    Ok(format!(
        "SELECT {}, epoch, seq FROM subscriber WHERE key = $1",
        columns.join(", ")
    ))
}

/// A single upsert (autocommit: one durable commit each).
pub const UPSERT: &str = "INSERT INTO subscriber (key, credit_limit, epoch, seq) VALUES ($1, $2, 1, 0)
     ON CONFLICT (key) DO UPDATE SET credit_limit = excluded.credit_limit, seq = subscriber.seq + 1";
/// A batch of upserts in one statement (one durable commit).
pub const UPSERT_MANY: &str = "INSERT INTO subscriber (key, credit_limit, epoch, seq)
     SELECT k, c, 1, 0 FROM unnest($1::text[], $2::bigint[]) AS t(k, c)
     ON CONFLICT (key) DO UPDATE SET credit_limit = excluded.credit_limit, seq = subscriber.seq + 1";
