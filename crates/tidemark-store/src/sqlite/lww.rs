//! Applying orders while the store recovers (P10, P11): field by field,
//! last writer wins by the order's *logical version*.
//!
//! After a restore, difference data arrives from several OpS sources (and
//! `ops recover` runs) in any interleaving, and live orders keep arriving.
//! Applying them in arrival order would let a replay of an old order undo a
//! newer one. So while recovering, each order has a logical version: its
//! `origin` (the version it was first acknowledged with) for a replay, its
//! own commit version for a live order. The store remembers, per key, the
//! logical version that last set each field, the newest upsert and the
//! newest delete (`tm_lww`), and an order changes only what nothing newer
//! has changed.
//!
//! Invariant: the record after any set of orders equals applying them one
//! by one in logical-version order (upserts merge fields, deletes remove the
//! record), whatever order they arrived in. Every order still produces a new
//! version of the key, even when nothing newer lets it change a field, so
//! versions stay monotone and every order is in the change log.
//!
//! `tm_lww` is emptied when recovery begins and when it ends.

use super::catalog::TableSql;
use super::values;
use super::SqliteStore;
use crate::StoreError;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::BTreeMap;
use tidemark_api::{Fields, Op, Order, Version};

pub const DDL: &str = "CREATE TABLE IF NOT EXISTS tm_lww (tbl TEXT NOT NULL, key TEXT NOT NULL, upsert_v TEXT, delete_v TEXT, fields TEXT NOT NULL, PRIMARY KEY (tbl, key)) WITHOUT ROWID;";

/// What the store knows of one key's logical history during recovery.
#[derive(Debug, Default, Clone, PartialEq)]
struct KeyState {
    upsert: Option<Version>,
    delete: Option<Version>,
    /// Field name to the logical version that last set it. A field without
    /// an entry was last set before the recovery began, so any order of the
    /// recovery is newer.
    fields: BTreeMap<String, Version>,
}

fn enc(v: Option<Version>) -> Option<String> {
    v.map(|v| format!("{}.{}", v.epoch, v.seq))
}

fn dec(s: Option<String>) -> Result<Option<Version>, StoreError> {
    let Some(s) = s else { return Ok(None) };
    let parsed = s
        .split_once('.')
        .and_then(|(e, q)| Some(Version::new(e.parse().ok()?, q.parse().ok()?)));
    parsed
        .map(Some)
        .ok_or_else(|| StoreError::Format(format!("tm_lww holds a bad version {s:?}")))
}

fn load(tx: &Connection, table: &str, key: &str) -> Result<KeyState, StoreError> {
    let row: Option<(Option<String>, Option<String>, String)> = tx
        .prepare_cached(
            "SELECT upsert_v, delete_v, fields FROM tm_lww WHERE tbl = ?1 AND key = ?2",
        )?
        .query_row(params![table, key], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    let Some((u, d, f)) = row else {
        return Ok(KeyState::default());
    };
    let raw: BTreeMap<String, String> = serde_json::from_str(&f)?;
    let mut fields = BTreeMap::new();
    for (name, v) in raw {
        if let Some(v) = dec(Some(v))? {
            fields.insert(name, v);
        }
    }
    Ok(KeyState {
        upsert: dec(u)?,
        delete: dec(d)?,
        fields,
    })
}

fn save(tx: &Connection, table: &str, key: &str, st: &KeyState) -> Result<(), StoreError> {
    let fields: BTreeMap<&str, String> = st
        .fields
        .iter()
        .map(|(k, v)| (k.as_str(), format!("{}.{}", v.epoch, v.seq)))
        .collect();
    tx.prepare_cached(
        "INSERT INTO tm_lww (tbl, key, upsert_v, delete_v, fields) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(tbl, key) DO UPDATE SET upsert_v = excluded.upsert_v, delete_v = excluded.delete_v, fields = excluded.fields",
    )?
    .execute(params![
        table,
        key,
        enc(st.upsert),
        enc(st.delete),
        serde_json::to_string(&fields)?
    ])?;
    Ok(())
}

/// What an order may still change, given what is newer.
#[derive(Debug, PartialEq)]
enum Effect {
    /// Set these fields (creating the record if it is missing).
    Upsert(Fields),
    /// Remove the record.
    Delete,
    /// A delete older than an upsert already applied: the record stays, but
    /// every field the upsert did not set is cleared.
    ClearFields(Vec<String>),
    /// Nothing newer lets the order change anything: only a new version.
    Touch,
}

/// Decides an order's effect and updates the key's state. Pure, so the
/// ordering rule is tested without a database.
fn decide(st: &mut KeyState, op: Op, fields: &Fields, columns: &[String], lv: Version) -> Effect {
    if st.delete.is_some_and(|d| lv <= d) {
        // A delete at least as new as this order already removed whatever
        // it would have written (or deleted).
        return Effect::Touch;
    }
    match op {
        Op::Upsert => {
            st.upsert = st.upsert.max(Some(lv));
            let mut set = Fields::new();
            for (name, value) in fields {
                if st.fields.get(name).is_none_or(|v| lv > *v) {
                    st.fields.insert(name.clone(), lv);
                    set.insert(name.clone(), value.clone());
                }
            }
            Effect::Upsert(set)
        }
        Op::Delete => {
            st.delete = Some(lv);
            if st.upsert.is_some_and(|u| u > lv) {
                let cleared: Vec<String> = columns
                    .iter()
                    .filter(|c| st.fields.get(*c).is_none_or(|v| *v < lv))
                    .cloned()
                    .collect();
                st.fields.retain(|_, v| *v > lv);
                Effect::ClearFields(cleared)
            } else {
                st.fields.clear();
                Effect::Delete
            }
        }
    }
}

/// Applies `order` at commit `version` under the recovery rule. Returns the
/// record after it (`None` if the key is missing).
pub fn apply(
    tx: &Connection,
    t: &TableSql,
    order: &Order,
    version: Version,
) -> Result<Option<Fields>, StoreError> {
    // An origin can only be older than now; a forged future one would let a
    // replay override live orders, so it is capped at the commit version.
    let lv = order.origin.map_or(version, |o| o.min(version));
    let mut st = load(tx, &order.table, &order.key)?;
    let columns: Vec<String> = t.columns.iter().map(|c| c.name.clone()).collect();
    let effect = decide(&mut st, order.op, &order.fields, &columns, lv);
    save(tx, &order.table, &order.key, &st)?;
    match effect {
        Effect::Upsert(set) => {
            let filtered = Order {
                fields: set,
                ..order.clone()
            };
            SqliteStore::upsert(tx, t, &filtered, version).map(Some)
        }
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

/// Forgets every key's logical history (recovery begins or ends).
pub fn clear(tx: &Connection) -> Result<(), StoreError> {
    tx.execute("DELETE FROM tm_lww", [])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    const COLS: [&str; 3] = ["a", "b", "c"];

    #[derive(Debug, Clone)]
    struct Op1 {
        lv: u64,
        delete: bool,
        fields: Vec<(usize, i64)>,
    }

    fn cols() -> Vec<String> {
        COLS.iter().map(|c| c.to_string()).collect()
    }

    fn fields_of(o: &Op1) -> Fields {
        o.fields
            .iter()
            .map(|(c, v)| (COLS[*c].to_owned(), json!(v)))
            .collect()
    }

    /// The record as restored from the backup, older than every order.
    fn restored(base: bool) -> Option<BTreeMap<String, Value>> {
        base.then(|| COLS.iter().map(|c| (c.to_string(), json!(-1))).collect())
    }

    /// The record after applying `ops` one by one in logical order: the
    /// meaning of "the latest data".
    fn sequential(base: bool, ops: &[Op1]) -> Option<BTreeMap<String, Value>> {
        let mut sorted = ops.to_vec();
        sorted.sort_by_key(|o| o.lv);
        let mut rec = restored(base);
        for o in &sorted {
            if o.delete {
                rec = None;
            } else {
                let r = rec.get_or_insert_with(BTreeMap::new);
                for (k, v) in fields_of(o) {
                    r.insert(k, v);
                }
            }
        }
        rec
    }

    /// The record after applying the effects of `ops` in arrival order.
    fn by_effects(base: bool, ops: &[Op1]) -> Option<BTreeMap<String, Value>> {
        let mut st = KeyState::default();
        let mut rec = restored(base);
        for o in ops {
            let op = if o.delete { Op::Delete } else { Op::Upsert };
            match decide(&mut st, op, &fields_of(o), &cols(), Version::new(1, o.lv)) {
                Effect::Upsert(set) => {
                    let r = rec.get_or_insert_with(BTreeMap::new);
                    r.extend(set);
                }
                Effect::Delete => rec = None,
                Effect::ClearFields(names) => {
                    if let Some(r) = rec.as_mut() {
                        for n in names {
                            r.remove(&n);
                        }
                    }
                }
                Effect::Touch => {}
            }
        }
        rec
    }

    fn ops() -> impl Strategy<Value = Vec<Op1>> {
        // Distinct logical versions: no two orders were committed at once.
        prop::collection::vec(
            (
                any::<bool>(),
                prop::collection::vec((0usize..3, 0i64..100), 0..3),
            ),
            1..8,
        )
        .prop_flat_map(|v| {
            let n = v.len();
            (
                Just(v),
                Just((1..=n as u64).collect::<Vec<_>>()).prop_shuffle(),
            )
        })
        .prop_map(|(v, lvs)| {
            v.into_iter()
                .zip(lvs)
                .map(|((delete, fields), lv)| Op1 {
                    lv,
                    delete,
                    fields: if delete { vec![] } else { fields },
                })
                .collect()
        })
    }

    proptest! {
        /// P10/P11: whatever order replays and live orders arrive in, the
        /// record equals the one applying them in logical order gives.
        #[test]
        fn any_arrival_order_gives_the_logical_order_result(base in any::<bool>(), ops in ops()) {
            prop_assert_eq!(by_effects(base, &ops), sequential(base, &ops));
        }
    }

    #[test]
    fn an_older_replay_never_undoes_a_newer_order() {
        // ops-2's order (v1.10) arrives first, ops-1's older one (v1.5) after.
        let newer = Op1 {
            lv: 10,
            delete: false,
            fields: vec![(0, 4)],
        };
        let older = Op1 {
            lv: 5,
            delete: false,
            fields: vec![(0, 3), (1, 7)],
        };
        let got = by_effects(true, &[newer, older]).unwrap();
        assert_eq!(got["a"], json!(4), "the newer value stays");
        assert_eq!(got["b"], json!(7), "a field nothing newer set is applied");
    }
}
