//! Writing a schedule chunk's flags (P7) in one pass.
//!
//! The common chunk names keys its source has not flagged yet: they go
//! straight into `tm_flags` with one binary `COPY`, inside a savepoint (no
//! per-key conflict check; the rows arrive in key order, so the primary
//! key's index grows at its right edge). A chunk that names a key already
//! flagged for the source (one sent again) makes the `COPY` fail on the
//! primary key; the savepoint is rolled back and one multi-row upsert keeps
//! the higher `through_seq`. Either way the result is the row-by-row upsert's.

use super::engine_error;
use futures::pin_mut;
use std::collections::BTreeMap;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};

/// A chunk's flags after its checks: `(table, key) -> through_seq`, one
/// entry per key (the highest `through_seq` the chunk names for it).
pub(super) type Wanted<'a> = BTreeMap<(&'a str, &'a str), i64>;

/// Writes `wanted` for `source` in `tx`; returns how many flags are new.
/// The caller holds the store's write lock, so no other writer touches
/// `tm_flags` meanwhile.
pub(super) async fn write(
    tx: &tokio_postgres::Transaction<'_>,
    source: &str,
    wanted: &Wanted<'_>,
) -> Result<u64, crate::StoreError> {
    tx.batch_execute("SAVEPOINT tm_flags_copy")
        .await
        .map_err(engine_error)?;
    match copy(tx, source, wanted).await {
        Ok(rows) => {
            tx.batch_execute("RELEASE SAVEPOINT tm_flags_copy")
                .await
                .map_err(engine_error)?;
            Ok(rows)
        }
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            tx.batch_execute(
                "ROLLBACK TO SAVEPOINT tm_flags_copy; RELEASE SAVEPOINT tm_flags_copy",
            )
            .await
            .map_err(engine_error)?;
            upsert(tx, source, wanted).await
        }
        Err(e) => Err(engine_error(e)),
    }
}

async fn copy(
    tx: &tokio_postgres::Transaction<'_>,
    source: &str,
    wanted: &Wanted<'_>,
) -> Result<u64, tokio_postgres::Error> {
    let sink = tx
        .copy_in("COPY tm_flags (tbl, key, source, through_seq) FROM STDIN (FORMAT binary)")
        .await?;
    let writer = BinaryCopyInWriter::new(sink, &[Type::TEXT, Type::TEXT, Type::TEXT, Type::INT8]);
    pin_mut!(writer);
    for ((table, key), seq) in wanted {
        let row: [&(dyn ToSql + Sync); 4] = [table, key, &source, seq];
        writer.as_mut().write(&row).await?;
    }
    writer.finish().await
}

async fn upsert(
    tx: &tokio_postgres::Transaction<'_>,
    source: &str,
    wanted: &Wanted<'_>,
) -> Result<u64, crate::StoreError> {
    let mut tables = Vec::with_capacity(wanted.len());
    let mut keys = Vec::with_capacity(wanted.len());
    let mut seqs = Vec::with_capacity(wanted.len());
    for ((t, k), s) in wanted {
        tables.push(*t);
        keys.push(*k);
        seqs.push(*s);
    }
    let inserted: i64 = tx
        .query_one(
            "WITH up AS (INSERT INTO tm_flags (tbl, key, source, through_seq) SELECT u.t, u.k, $4, u.s FROM unnest($1::text[], $2::text[], $3::bigint[]) AS u(t, k, s) ON CONFLICT (tbl, key, source) DO UPDATE SET through_seq = GREATEST(tm_flags.through_seq, excluded.through_seq) RETURNING (xmax = 0) AS fresh) SELECT count(*) FILTER (WHERE fresh) FROM up",
            &[&tables, &keys, &seqs, &source],
        )
        .await
        .map_err(engine_error)?
        .get(0);
    Ok(inserted as u64)
}
