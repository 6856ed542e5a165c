//! A page of flags for operators (the console's search and paging), read
//! from `tm_flags`' primary key `(tbl, key, source)`.

use super::{engine_error, PgStore};
use crate::store::{Flag, FlagPage};
use crate::StoreError;

const COLUMNS: &str = "SELECT f.tbl, f.key, f.source, f.through_seq, coalesce(s.high_water, 0) FROM tm_flags f LEFT JOIN tm_sources s ON s.source = f.source";

pub(super) async fn flag_page(s: &PgStore, page: &FlagPage) -> Result<Vec<Flag>, StoreError> {
    let client = s.client().await?;
    let (at_t, at_k, at_s) = page.after.clone().unwrap_or_default();
    let limit = page.limit as i64;
    let rows = match &page.table {
        Some(table) => {
            // `key >= prefix` starts the index scan at the prefix in any
            // collation; `starts_with` keeps only the keys that have it.
            let prefix = page.prefix.clone().unwrap_or_default();
            let sql = format!("{COLUMNS} WHERE f.tbl = $1 AND f.key >= $2 AND starts_with(f.key, $2) AND (f.tbl, f.key, f.source) > ($3, $4, $5) ORDER BY f.tbl, f.key, f.source LIMIT $6");
            client
                .query(&sql, &[table, &prefix, &at_t, &at_k, &at_s, &limit])
                .await
        }
        None => {
            let sql = format!("{COLUMNS} WHERE (f.tbl, f.key, f.source) > ($1, $2, $3) ORDER BY f.tbl, f.key, f.source LIMIT $4");
            client.query(&sql, &[&at_t, &at_k, &at_s, &limit]).await
        }
    }
    .map_err(engine_error)?;
    Ok(rows
        .iter()
        .map(|r| Flag {
            table: r.get(0),
            key: r.get(1),
            source: r.get(2),
            through_seq: r.get::<_, i64>(3) as u64,
            high_water: r.get::<_, i64>(4) as u64,
        })
        .collect())
}
