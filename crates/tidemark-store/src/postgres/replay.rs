//! The write path while flags exist or the store recovers (P7, P10, P11),
//! in bulk: a batch costs a few round trips, not six per order.
//!
//! 1. The per-key recovery state (`tm_lww`) and the flags of every key the
//!    batch names are read in two statements.
//! 2. The ordering rule ([`decide`]) and the flag clearing run in memory,
//!    order by order, in the batch's order.
//! 3. Each order's record write is sent without waiting for the one before
//!    (PostgreSQL runs them in the order sent, so two orders of one key
//!    apply in order); the final per-key state, the cleared flags and the
//!    change-log rows are one statement each.
//!
//! Invariant: the outcome equals the one-by-one path's for the same batch.
//! That holds because the caller holds the store's write lock and the seq
//! row's lock: nothing else changes `tm_lww` or `tm_flags` between the
//! read and the writes. A batch with a duplicate or a gap is left to the
//! one-by-one path (`None`), which answers it order by order.

use super::catalog::{Catalog, PgValue, TableSql};
use super::write::{bulk_changes, high_water, outcome, pg, GroupState};
use crate::recovery_rule::{decide, logical_version, Effect, KeyState};
use crate::store::ApplyOutcome;
use crate::StoreError;
use deadpool_postgres::Transaction;
use std::collections::HashMap;
use tidemark_api::{Fields, Op, Order, Version};
use tokio_postgres::types::ToSql;
use tokio_postgres::Statement;

/// What one order writes to its record.
enum Write {
    /// Set these fields, creating the record if missing.
    Upsert(Fields),
    /// Remove the record and write its tombstone (the recovery rule's
    /// delete: the tombstone is written even if the record is missing).
    Delete,
    /// Remove the record; a tombstone only if there was one to remove.
    DeleteIfPresent,
    /// Clear these fields (a new version; the record stays).
    Clear(Vec<String>),
    /// Only a new version: of the record if present, else of its tombstone.
    Touch,
}

type Key = (String, String);

/// Applies `orders` (no duplicate, no gap) with flags checked and, while
/// recovering, under the ordering rule. `None`: the batch needs the
/// one-by-one path; nothing was written.
pub(super) async fn apply_flagged(
    catalog: &Catalog,
    tx: &Transaction<'_>,
    orders: &[Order],
    st: &mut GroupState,
) -> Result<Option<ApplyOutcome>, StoreError> {
    // Plan without changing `st` until the batch is known to fit.
    let mut marks: HashMap<&str, u64> = HashMap::new();
    for (index, order) in orders.iter().enumerate() {
        let hw = match marks.get(order.source.as_str()) {
            Some(hw) => *hw,
            None => high_water(tx, st, &order.source).await?,
        };
        if order.seq <= hw || crate::apply::skips_ahead(order, hw, st.strict) {
            return Ok(None);
        }
        crate::apply::check_gap(index, order, hw)?;
        marks.insert(&order.source, order.seq);
    }
    let mut planned = Vec::with_capacity(orders.len());
    for order in orders {
        st.seq += 1;
        planned.push(Version::new(st.epoch, st.seq));
        st.high_water
            .insert(order.source.clone(), (order.seq, true));
    }

    let mut keys: Vec<Key> = orders
        .iter()
        .map(|o| (o.table.clone(), o.key.clone()))
        .collect();
    keys.sort();
    keys.dedup();
    let (mut states, mut flags) = futures::future::try_join(
        read_states(tx, &keys, st.strict),
        read_flags(tx, &keys, st.check_flags),
    )
    .await?;

    // The rule and the flags, in memory, in the batch's order.
    let mut writes = Vec::with_capacity(orders.len());
    let mut cleared = Vec::with_capacity(orders.len());
    let mut flagged = Vec::with_capacity(orders.len());
    let mut unflag: Vec<(&str, &str, String)> = Vec::new();
    // Each table's column names, for the rule.
    let mut names: HashMap<&str, Vec<String>> = HashMap::new();
    for (order, v) in orders.iter().zip(&planned) {
        let key = (order.table.clone(), order.key.clone());
        writes.push(if st.strict {
            let columns = names.entry(&order.table).or_insert_with(|| {
                let t = &catalog.tables[&order.table];
                t.columns.iter().map(|c| c.name.clone()).collect()
            });
            let state = states.entry(key.clone()).or_default();
            match decide(
                state,
                order.op,
                &order.fields,
                columns,
                logical_version(order, *v),
            ) {
                Effect::Upsert(set) => Write::Upsert(set),
                Effect::Delete => Write::Delete,
                Effect::ClearFields(names) => Write::Clear(names),
                Effect::Touch => Write::Touch,
            }
        } else {
            match order.op {
                Op::Upsert => Write::Upsert(order.fields.clone()),
                Op::Delete => Write::DeleteIfPresent,
            }
        });
        let list = flags.entry(key).or_default();
        let before = list.len();
        list.retain(|(source, through)| {
            let gone = *source == order.source && *through <= order.seq as i64;
            if gone {
                unflag.push((&order.table, &order.key, source.clone()));
            }
            !gone
        });
        let n = (before - list.len()) as u64;
        st.flags_cleared += n;
        cleared.push(n > 0 && list.is_empty());
        flagged.push(!list.is_empty() || st.blanket);
    }

    let records = write_records(catalog, tx, orders, &planned, &writes);
    let lww = write_states(tx, &states, st.strict);
    let unflagged = delete_flags(tx, &unflag);
    let (records, _, _) = futures::future::try_join3(records, lww, unflagged).await?;
    let marks: Vec<(bool, bool)> = cleared.into_iter().zip(flagged).collect();
    bulk_changes(tx, orders, &planned, &records, &marks).await?;
    Ok(Some(outcome(orders, planned, records, marks)))
}

/// The rows `sql` selects for `keys`, given as `$1` (tables) and `$2`
/// (keys), two parallel text arrays.
async fn rows_of_keys(
    tx: &Transaction<'_>,
    sql: &str,
    keys: &[Key],
) -> Result<Vec<tokio_postgres::Row>, StoreError> {
    let (tables, names): (Vec<&str>, Vec<&str>) =
        keys.iter().map(|(t, k)| (t.as_str(), k.as_str())).unzip();
    let st = tx.prepare_cached(sql).await.map_err(pg)?;
    tx.query(&st, &[&tables, &names]).await.map_err(pg)
}

/// The recovery state of `keys` (only while recovering).
async fn read_states(
    tx: &Transaction<'_>,
    keys: &[Key],
    strict: bool,
) -> Result<HashMap<Key, KeyState>, StoreError> {
    let mut out = HashMap::new();
    if !strict {
        return Ok(out);
    }
    let sql = "SELECT l.tbl, l.key, l.upsert_v, l.delete_v, l.fields FROM tm_lww l JOIN unnest($1::text[], $2::text[]) AS u(t, k) ON l.tbl = u.t AND l.key = u.k";
    for r in rows_of_keys(tx, sql, keys).await? {
        let (tbl, key): (String, String) = (r.get(0), r.get(1));
        let (u, d, f): (Option<String>, Option<String>, String) = (r.get(2), r.get(3), r.get(4));
        let state = KeyState::from_parts(u.as_deref(), d.as_deref(), &f)
            .ok_or_else(|| StoreError::Format(format!("tm_lww of key {key:?} is damaged")))?;
        out.insert((tbl, key), state);
    }
    Ok(out)
}

/// The flags of `keys`: source and `through_seq` per key (only if any
/// flag exists in the store).
async fn read_flags(
    tx: &Transaction<'_>,
    keys: &[Key],
    check: bool,
) -> Result<HashMap<Key, Vec<(String, i64)>>, StoreError> {
    let mut out: HashMap<Key, Vec<(String, i64)>> = HashMap::new();
    if !check {
        return Ok(out);
    }
    let sql = "SELECT f.tbl, f.key, f.source, f.through_seq FROM tm_flags f JOIN unnest($1::text[], $2::text[]) AS u(t, k) ON f.tbl = u.t AND f.key = u.k";
    for r in rows_of_keys(tx, sql, keys).await? {
        out.entry((r.get(0), r.get(1)))
            .or_default()
            .push((r.get(2), r.get(3)));
    }
    Ok(out)
}

/// The final recovery state of every key the batch touched, in one statement.
async fn write_states(
    tx: &Transaction<'_>,
    states: &HashMap<Key, KeyState>,
    strict: bool,
) -> Result<(), StoreError> {
    if !strict || states.is_empty() {
        return Ok(());
    }
    let mut tables = Vec::with_capacity(states.len());
    let mut keys = Vec::with_capacity(states.len());
    let mut ups = Vec::with_capacity(states.len());
    let mut dels = Vec::with_capacity(states.len());
    let mut fields = Vec::with_capacity(states.len());
    for ((t, k), s) in states {
        tables.push(t.as_str());
        keys.push(k.as_str());
        ups.push(crate::recovery_rule::encode(s.upsert));
        dels.push(crate::recovery_rule::encode(s.delete));
        fields.push(s.fields_json());
    }
    let st = tx
        .prepare_cached("INSERT INTO tm_lww (tbl, key, upsert_v, delete_v, fields) SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) ON CONFLICT (tbl, key) DO UPDATE SET upsert_v = excluded.upsert_v, delete_v = excluded.delete_v, fields = excluded.fields")
        .await
        .map_err(pg)?;
    tx.execute(&st, &[&tables, &keys, &ups, &dels, &fields])
        .await
        .map_err(pg)?;
    Ok(())
}

/// Removes the flags the batch cleared (each known by its primary key).
async fn delete_flags(
    tx: &Transaction<'_>,
    unflag: &[(&str, &str, String)],
) -> Result<(), StoreError> {
    if unflag.is_empty() {
        return Ok(());
    }
    let tables: Vec<&str> = unflag.iter().map(|u| u.0).collect();
    let keys: Vec<&str> = unflag.iter().map(|u| u.1).collect();
    let sources: Vec<&str> = unflag.iter().map(|u| u.2.as_str()).collect();
    let st = tx
        .prepare_cached("DELETE FROM tm_flags f USING unnest($1::text[], $2::text[], $3::text[]) AS u(t, k, s) WHERE f.tbl = u.t AND f.key = u.k AND f.source = u.s")
        .await
        .map_err(pg)?;
    tx.execute(&st, &[&tables, &keys, &sources])
        .await
        .map_err(pg)?;
    Ok(())
}

/// The columns a write returns: every column (or the key, for a table
/// without columns, so a row still comes back).
fn returning(t: &TableSql) -> String {
    if t.columns.is_empty() {
        return "tm_key".into();
    }
    t.columns
        .iter()
        .map(|c| format!("\"{}\"", c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The statement of one write and whether it returns the record.
fn sql_of(t: &TableSql, w: &Write) -> (String, bool) {
    let tomb = "INSERT INTO tm_tombstones (tbl, key, epoch, seq) VALUES ($4, $3, $1, $2) ON CONFLICT (tbl, key) DO UPDATE SET epoch = excluded.epoch, seq = excluded.seq";
    let q = &t.quoted;
    match w {
        Write::Upsert(_) => (String::new(), true),
        Write::Delete => (
            format!("WITH d AS (DELETE FROM {q} WHERE tm_key = $3) {tomb}"),
            false,
        ),
        Write::DeleteIfPresent => (
            format!("WITH d AS (DELETE FROM {q} WHERE tm_key = $3 RETURNING tm_key) INSERT INTO tm_tombstones (tbl, key, epoch, seq) SELECT $4, tm_key, $1, $2 FROM d ON CONFLICT (tbl, key) DO UPDATE SET epoch = excluded.epoch, seq = excluded.seq"),
            false,
        ),
        Write::Clear(names) => {
            let mut sql = format!("UPDATE {q} SET tm_epoch = $1, tm_seq = $2");
            for n in names {
                // Column names come from the validated schema only.
                sql.push_str(&format!(", \"{n}\" = NULL"));
            }
            sql.push_str(&format!(" WHERE tm_key = $3 RETURNING {}", returning(t)));
            (sql, true)
        }
        Write::Touch => (
            format!(
                "WITH u AS (UPDATE {q} SET tm_epoch = $1, tm_seq = $2 WHERE tm_key = $3 RETURNING {r}), tb AS (INSERT INTO tm_tombstones (tbl, key, epoch, seq) SELECT $4, $3, $1, $2 WHERE NOT EXISTS (SELECT 1 FROM u) ON CONFLICT (tbl, key) DO UPDATE SET epoch = excluded.epoch, seq = excluded.seq) SELECT {r} FROM u",
                r = returning(t)
            ),
            true,
        ),
    }
}

/// Every order's record write, pipelined in the batch's order; the record
/// after each (`None` when the key has none).
async fn write_records(
    catalog: &Catalog,
    tx: &Transaction<'_>,
    orders: &[Order],
    planned: &[Version],
    writes: &[Write],
) -> Result<Vec<Option<Fields>>, StoreError> {
    // Every statement is prepared before the first is sent: a future that
    // still had to prepare would let a later one overtake it.
    let mut prepared: HashMap<String, Statement> = HashMap::new();
    let mut plan = Vec::with_capacity(orders.len());
    for (order, w) in orders.iter().zip(writes) {
        let t = &catalog.tables[&order.table];
        let (sql, returns) = match w {
            Write::Upsert(set) => {
                let cols: Vec<usize> = (0..t.columns.len())
                    .filter(|&c| set.contains_key(&t.columns[c].name))
                    .collect();
                (t.upsert(&cols).to_string(), true)
            }
            w => sql_of(t, w),
        };
        if !prepared.contains_key(&sql) {
            let st = tx.prepare_cached(&sql).await.map_err(pg)?;
            prepared.insert(sql.clone(), st);
        }
        plan.push((sql, returns));
    }
    let sends = orders.iter().zip(planned).zip(writes).zip(&plan).map(
        |(((order, v), w), (sql, returns))| {
            let t = &catalog.tables[&order.table];
            let st = &prepared[sql];
            let (epoch, seq) = (v.epoch as i64, v.seq as i64);
            async move {
                let rows = match w {
                    Write::Upsert(set) => {
                        let values: Vec<PgValue> = t
                            .columns
                            .iter()
                            .filter_map(|c| set.get(&c.name).map(|v| PgValue::of(c.ty, v)))
                            .collect();
                        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&order.key, &epoch, &seq];
                        params.extend(values.iter().map(|v| v as &(dyn ToSql + Sync)));
                        tx.query(st, &params).await
                    }
                    _ => {
                        // A statement takes the first of these it needs.
                        let params: [&(dyn ToSql + Sync); 4] =
                            [&epoch, &seq, &order.key, &order.table];
                        tx.query(st, &params[..st.params().len()]).await
                    }
                }
                .map_err(pg)?;
                match rows.first() {
                    Some(row) if *returns => t.fields(row, 0).map(Some),
                    _ => Ok(None),
                }
            }
        },
    );
    futures::future::try_join_all(sends).await
}
