//! A page of flags for operators (the console's search and paging), read
//! from `tm_flags`' primary key `(tbl, key, source)`.

use super::SqliteStore;
use crate::store::{Flag, FlagPage};
use crate::StoreError;
use rusqlite::{params, Row};

const COLUMNS: &str = "SELECT f.tbl, f.key, f.source, f.through_seq, coalesce(s.high_water, 0) FROM tm_flags f LEFT JOIN tm_sources s ON s.source = f.source";

pub(super) fn flag_page(s: &SqliteStore, page: &FlagPage) -> Result<Vec<Flag>, StoreError> {
    let (at_t, at_k, at_s) = page.after.clone().unwrap_or_default();
    let limit = page.limit as i64;
    s.with_reader(|c| {
        let rows = match &page.table {
            Some(table) => {
                // Keys compare as bytes (BINARY): every key that starts with
                // the prefix lies in [prefix, prefix + U+10FFFF).
                let prefix = page.prefix.clone().unwrap_or_default();
                let upper = format!("{prefix}{}", char::MAX);
                let mut stmt = c.prepare_cached(&format!("{COLUMNS} WHERE f.tbl = ?1 AND f.key >= ?2 AND f.key < ?3 AND (f.tbl, f.key, f.source) > (?4, ?5, ?6) ORDER BY f.tbl, f.key, f.source LIMIT ?7"))?;
                let rows = stmt.query_map(
                    params![table, prefix, upper, at_t, at_k, at_s, limit],
                    flag,
                )?;
                rows.collect::<Result<Vec<_>, _>>()?
            }
            None => {
                let mut stmt = c.prepare_cached(&format!("{COLUMNS} WHERE (f.tbl, f.key, f.source) > (?1, ?2, ?3) ORDER BY f.tbl, f.key, f.source LIMIT ?4"))?;
                let rows = stmt.query_map(params![at_t, at_k, at_s, limit], flag)?;
                rows.collect::<Result<Vec<_>, _>>()?
            }
        };
        Ok(rows)
    })
}

fn flag(r: &Row<'_>) -> rusqlite::Result<Flag> {
    Ok(Flag {
        table: r.get(0)?,
        key: r.get(1)?,
        source: r.get(2)?,
        through_seq: r.get::<_, i64>(3)? as u64,
        high_water: r.get::<_, i64>(4)? as u64,
    })
}
