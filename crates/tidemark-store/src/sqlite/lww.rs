//! The SQLite side of the recovery ordering rule ([`crate::recovery_rule`]):
//! while the store recovers, each order is applied field by field, last
//! writer by logical version wins; the per-key logical history lives in
//! `tm_lww`, which is emptied when recovery begins and when it ends.

use super::catalog::TableSql;
use super::values;
use super::SqliteStore;
use crate::recovery_rule::{decide, encode, logical_version, Effect, KeyState};
use crate::StoreError;
use rusqlite::{params, CachedStatement, Connection, OptionalExtension};
use tidemark_api::{Fields, Order, Version};

pub const DDL: &str = "CREATE TABLE IF NOT EXISTS tm_lww (tbl TEXT NOT NULL, key TEXT NOT NULL, upsert_v TEXT, delete_v TEXT, fields TEXT NOT NULL, PRIMARY KEY (tbl, key)) WITHOUT ROWID;";

/// The rule's two statements, prepared once per batch: rusqlite's statement
/// cache hashes the SQL text at every use.
pub(super) struct Stmts<'c> {
    load: CachedStatement<'c>,
    save: CachedStatement<'c>,
}

impl<'c> Stmts<'c> {
    pub(super) fn prepare(tx: &'c Connection) -> Result<Self, StoreError> {
        Ok(Self {
            load: tx.prepare_cached(
                "SELECT upsert_v, delete_v, fields FROM tm_lww WHERE tbl = ?1 AND key = ?2",
            )?,
            save: tx.prepare_cached(
                "INSERT INTO tm_lww (tbl, key, upsert_v, delete_v, fields) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(tbl, key) DO UPDATE SET upsert_v = excluded.upsert_v, delete_v = excluded.delete_v, fields = excluded.fields",
            )?,
        })
    }

    fn load(&mut self, table: &str, key: &str) -> Result<KeyState, StoreError> {
        let row: Option<(Option<String>, Option<String>, String)> = self
            .load
            .query_row(params![table, key], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        let Some((u, d, f)) = row else {
            return Ok(KeyState::default());
        };
        KeyState::from_parts(u.as_deref(), d.as_deref(), &f)
            .ok_or_else(|| StoreError::Format(format!("tm_lww of key {key:?} is damaged")))
    }

    fn save(&mut self, table: &str, key: &str, st: &KeyState) -> Result<(), StoreError> {
        self.save.execute(params![
            table,
            key,
            encode(st.upsert),
            encode(st.delete),
            st.fields_json()
        ])?;
        Ok(())
    }
}

/// Applies `order` at commit `version` under the recovery rule. Returns the
/// record after it (`None` if the key is missing).
pub fn apply(
    tx: &Connection,
    stmts: &mut Stmts<'_>,
    t: &TableSql,
    order: &Order,
    version: Version,
) -> Result<Option<Fields>, StoreError> {
    let lv = logical_version(order, version);
    let mut st = stmts.load(&order.table, &order.key)?;
    let effect = decide(&mut st, order.op, &order.fields, &t.column_names, lv);
    stmts.save(&order.table, &order.key, &st)?;
    match effect {
        Effect::Upsert(set) => SqliteStore::upsert(tx, t, &order.key, &set, version).map(Some),
        Effect::Delete => {
            tx.prepare_cached(&t.delete)?.execute(params![order.key])?;
            tombstone(tx, &order.table, &order.key, version)?;
            Ok(None)
        }
        Effect::ClearFields(names) => {
            let mut sql = format!("UPDATE {} SET tm_epoch = ?1, tm_seq = ?2", t.quoted);
            for n in &names {
                // Column names come from the validated schema only.
                sql.push_str(&format!(", \"{n}\" = NULL"));
            }
            sql.push_str(" WHERE tm_key = ?3");
            tx.execute(
                &sql,
                params![version.epoch as i64, version.seq as i64, order.key],
            )?;
            read_fields(tx, t, &order.key)
        }
        Effect::Touch => {
            let n = tx
                .prepare_cached(&format!(
                    "UPDATE {} SET tm_epoch = ?1, tm_seq = ?2 WHERE tm_key = ?3",
                    t.quoted
                ))?
                .execute(params![version.epoch as i64, version.seq as i64, order.key])?;
            if n == 0 {
                tombstone(tx, &order.table, &order.key, version)?;
                return Ok(None);
            }
            read_fields(tx, t, &order.key)
        }
    }
}

fn tombstone(tx: &Connection, table: &str, key: &str, v: Version) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO tm_tombstones (tbl, key, epoch, seq) VALUES (?1, ?2, ?3, ?4) ON CONFLICT(tbl, key) DO UPDATE SET epoch = excluded.epoch, seq = excluded.seq",
    )?
    .execute(params![table, key, v.epoch as i64, v.seq as i64])?;
    Ok(())
}

fn read_fields(tx: &Connection, t: &TableSql, key: &str) -> Result<Option<Fields>, StoreError> {
    let mut stmt = tx.prepare_cached(&t.select)?;
    let mut rows = stmt.query(params![key])?;
    let Some(row) = rows.next()? else {
        return Ok(None);
    };
    let mut fields = Fields::new();
    for (i, c) in t.columns.iter().enumerate() {
        let v = values::from_sql(c.ty, row.get_ref(i + 2)?).map_err(StoreError::Format)?;
        fields.insert(c.name.clone(), v);
    }
    Ok(Some(fields))
}

/// Forgets every key's logical history (a recovery ends).
pub fn clear(tx: &Connection) -> Result<(), StoreError> {
    tx.execute("DELETE FROM tm_lww", [])?;
    Ok(())
}
