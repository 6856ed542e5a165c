//! The write path: batches of orders applied in one durable transaction
//! (group commit), each batch all or nothing, idempotent by `(source, seq)`.
//!
//! Invariants: seqs stay contiguous across the batches of a group (a
//! refused batch gives its seqs back); a source's high-water mark is
//! written once per group; while recovering, orders go through
//! [`super::lww`] and each source's seqs must come without gaps.

use super::catalog::{Catalog, TableSql};
use super::{lww, meta_set, values, SqliteStore};
use crate::store::{ApplyOutcome, Change};
use crate::StoreError;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tidemark_api::{Fields, Op, Order, OrderResult, Version};

/// The running state of a group transaction, rolled back per batch.
struct GroupState {
    epoch: u64,
    seq: u64,
    check_flags: bool,
    strict: bool,
    /// Recovering and the schedule list not yet complete (read in this
    /// transaction): every change is flagged.
    blanket: bool,
    flags_cleared: u64,
    /// Source to (high-water mark, changed in this group).
    high_water: HashMap<String, (u64, bool)>,
}

/// Why writes fail once the store is closed.
fn closed() -> StoreError {
    StoreError::Engine(
        "the store is closed (server shutting down); retry on the restarted server".into(),
    )
}

pub(super) async fn apply(s: &SqliteStore, orders: Vec<Order>) -> Result<ApplyOutcome, StoreError> {
    if s.inner.closed.load(Ordering::SeqCst) {
        return Err(closed());
    }
    let mut out = apply_group(s, vec![orders]).await;
    out.pop()
        .unwrap_or_else(|| Err(StoreError::Engine("no result".into())))
}

pub(super) async fn apply_group(
    s: &SqliteStore,
    batches: Vec<Vec<Order>>,
) -> Vec<Result<ApplyOutcome, StoreError>> {
    if s.inner.closed.load(Ordering::SeqCst) {
        return batches.iter().map(|_| Err(closed())).collect();
    }
    let n = batches.len();
    match s
        .blocking(move |s| {
            let out = s.apply_group_blocking(&batches);
            let orders = batches.iter().map(Vec::len).sum();
            crate::dropper::drop_later(batches, orders);
            Ok(out)
        })
        .await
    {
        Ok(out) => out,
        Err(e) => {
            let msg = e.to_string();
            (0..n)
                .map(|_| Err(StoreError::Engine(msg.clone())))
                .collect()
        }
    }
}

pub(super) async fn prune_changes(s: &SqliteStore, keep: u64) -> Result<u64, StoreError> {
    let below = s.inner.seq.load(Ordering::SeqCst).saturating_sub(keep);
    crate::prune_in_chunks(|| {
        s.blocking(move |s| {
            let mut conn = s.inner.writer.lock();
            // `seq` is the rowid: the oldest chunk is a range scan, with
            // constant bounds (a subquery in the bound made SQLite take a
            // second per chunk instead of milliseconds).
            let oldest: Option<i64> =
                conn.query_row("SELECT min(seq) FROM tm_changes", [], |r| r.get(0))?;
            let Some(oldest) = oldest.filter(|&o| o as u64 <= below) else {
                return Ok(0);
            };
            let upto = below.min(oldest as u64 + crate::PRUNE_CHUNK - 1);
            // Each source's highest pruned seq goes with the changes it
            // outlives, in one transaction (see `apply::was_pruned`).
            let tx = conn.transaction()?;
            tx.execute(
                "INSERT INTO tm_pruned (source, through_seq) SELECT source, max(source_seq) FROM tm_changes WHERE seq <= ?1 GROUP BY source ON CONFLICT(source) DO UPDATE SET through_seq = max(tm_pruned.through_seq, excluded.through_seq)",
                params![upto as i64],
            )?;
            let n = tx.execute(
                "DELETE FROM tm_changes WHERE seq <= ?1",
                params![upto as i64],
            )?;
            tx.commit()?;
            Ok(n as u64)
        })
    })
    .await
}

impl SqliteStore {
    /// Applies several batches in one transaction (one durable commit, so
    /// concurrent requests share one fsync). Each batch runs under its own
    /// savepoint: a refused batch is rolled back alone and the others
    /// stand, so every batch stays all-or-nothing.
    fn apply_group_blocking(
        &self,
        batches: &[Vec<Order>],
    ) -> Vec<Result<ApplyOutcome, StoreError>> {
        let mut catalog = self.catalog();
        let mut out = crate::apply::validate_group(&catalog.schema, batches);
        let mut conn = self.inner.writer.lock();
        let now = self.catalog();
        if !Arc::ptr_eq(&now, &catalog) {
            crate::apply::revalidate(&now.schema, batches, &mut out);
            catalog = now;
        }
        let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) => return crate::apply::group_failed(out, e.into()),
        };
        let mut st = GroupState {
            epoch: self.inner.epoch.load(Ordering::SeqCst),
            seq: self.inner.seq.load(Ordering::SeqCst),
            check_flags: self.inner.flag_rows.load(Ordering::SeqCst) > 0,
            strict: self.inner.recovering.load(Ordering::SeqCst),
            blanket: self.inner.recovering.load(Ordering::SeqCst)
                && super::meta_get(&tx, "schedule_final")
                    .ok()
                    .flatten()
                    .as_deref()
                    != Some("1"),
            flags_cleared: 0,
            high_water: HashMap::new(),
        };
        // A savepoint makes SQLite journal every statement (a quarter of the
        // apply time in a profile), so it is used only when batches share
        // the transaction; a lone batch that fails rolls the whole of it back.
        let pending = out.iter().filter(|r| r.is_none()).count();
        if pending == 1 {
            let i = out.iter().position(|r| r.is_none()).unwrap_or(0);
            match Self::apply_in_tx(&catalog, &tx, &batches[i], &mut st) {
                Ok(outcome) => out[i] = Some(Ok(outcome)),
                Err(e) => {
                    drop(tx); // rolls back
                    out[i] = Some(Err(e));
                    return out
                        .into_iter()
                        .map(|r| {
                            r.unwrap_or_else(|| Err(StoreError::Engine("batch skipped".into())))
                        })
                        .collect();
                }
            }
        }
        for (i, orders) in batches.iter().enumerate() {
            if out[i].is_some() {
                continue;
            }
            let saved = (st.seq, st.flags_cleared, st.high_water.clone());
            let result = tx
                .execute_batch("SAVEPOINT batch")
                .map_err(StoreError::from)
                .and_then(|_| Self::apply_in_tx(&catalog, &tx, orders, &mut st));
            let result = match result {
                Ok(outcome) => tx
                    .execute_batch("RELEASE batch")
                    .map(|_| outcome)
                    .map_err(StoreError::from),
                Err(e) => {
                    let _ = tx.execute_batch("ROLLBACK TO batch; RELEASE batch");
                    (st.seq, st.flags_cleared, st.high_water) = saved;
                    if tx.is_autocommit() {
                        // SQLite rolled the whole transaction back itself
                        // (a full disk, an I/O error): the batches before
                        // went with it, and nothing more may run outside it.
                        return crate::apply::group_failed(out, e);
                    }
                    Err(e)
                }
            };
            out[i] = Some(result);
        }
        let finish = (|| {
            for (source, (hw, dirty)) in &st.high_water {
                if *dirty {
                    tx.prepare_cached(
                        "INSERT INTO tm_sources (source, high_water) VALUES (?1, ?2) ON CONFLICT(source) DO UPDATE SET high_water = excluded.high_water",
                    )?
                    .execute(params![source, *hw as i64])?;
                }
            }
            meta_set(&tx, "seq", &st.seq.to_string())?;
            tx.commit()?;
            Ok::<(), StoreError>(())
        })();
        if let Err(e) = finish {
            // Nothing of the group is durable: every batch failed.
            return crate::apply::group_failed(out, e);
        }
        self.inner.seq.store(st.seq, Ordering::SeqCst);
        if st.flags_cleared > 0 {
            self.inner
                .flag_rows
                .fetch_sub(st.flags_cleared, Ordering::SeqCst);
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(StoreError::Engine("batch skipped".into()))))
            .collect()
    }

    /// One batch inside the group transaction.
    fn apply_in_tx(
        catalog: &Catalog,
        tx: &Connection,
        orders: &[Order],
        st: &mut GroupState,
    ) -> Result<ApplyOutcome, StoreError> {
        let mut results = Vec::with_capacity(orders.len());
        let mut changes = Vec::with_capacity(orders.len());
        // The statements every order runs, prepared once per batch
        // (rusqlite's statement cache hashes the SQL text at every use).
        // `lww_stmts` is there exactly when the store is strict.
        let mut lww_stmts = st.strict.then(|| lww::Stmts::prepare(tx)).transpose()?;
        let mut flag_stmts = st
            .check_flags
            .then(|| {
                Ok::<_, StoreError>((
                    tx.prepare_cached("DELETE FROM tm_flags WHERE tbl = ?1 AND key = ?2 AND source = ?3 AND through_seq <= ?4")?,
                    tx.prepare_cached("SELECT count(*) FROM tm_flags WHERE tbl = ?1 AND key = ?2")?,
                ))
            })
            .transpose()?;
        let mut change_insert = tx.prepare_cached(
            "INSERT INTO tm_changes (seq, epoch, tbl, key, fields, source, source_seq, digest, cleared, flagged) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        for (index, order) in orders.iter().enumerate() {
            let hw = match st.high_water.get(&order.source) {
                Some((hw, _)) => *hw,
                None => {
                    let hw: Option<i64> = tx
                        .prepare_cached("SELECT high_water FROM tm_sources WHERE source = ?1")?
                        .query_row(params![order.source], |r| r.get(0))
                        .optional()?;
                    let hw = hw.unwrap_or(0) as u64;
                    st.high_water.insert(order.source.clone(), (hw, false));
                    hw
                }
            };
            let digest = order.digest();
            if order.seq <= hw {
                results.push(Self::duplicate(tx, index, order, &digest, hw)?);
                continue;
            }
            crate::apply::check_gap(index, order, hw)?;
            if crate::apply::skips_ahead(order, hw, st.strict) {
                return Err(StoreError::Gap {
                    index,
                    source_name: order.source.clone(),
                    seq: order.seq,
                    expected: hw + 1,
                });
            }
            st.seq += 1;
            let seq = st.seq;
            let version = Version::new(st.epoch, seq);
            let t = &catalog.tables[&order.table];
            let fields = match (lww_stmts.as_mut(), order.op) {
                // While recovering, replays and live orders interleave: the
                // last writer by logical version wins, field by field.
                (Some(stmts), _) => lww::apply(tx, stmts, t, order, version)?,
                (None, Op::Upsert) => {
                    Some(Self::upsert(tx, t, &order.key, &order.fields, version)?)
                }
                (None, Op::Delete) => {
                    let removed = tx.prepare_cached(&t.delete)?.execute(params![order.key])?;
                    if removed > 0 {
                        tx.prepare_cached(
                            "INSERT INTO tm_tombstones (tbl, key, epoch, seq) VALUES (?1, ?2, ?3, ?4) ON CONFLICT(tbl, key) DO UPDATE SET epoch = excluded.epoch, seq = excluded.seq",
                        )?
                        .execute(params![order.table, order.key, st.epoch as i64, seq as i64])?;
                    }
                    None
                }
            };
            let (cleared, flagged) = if let Some((clear, count)) = flag_stmts.as_mut() {
                let n = clear.execute(params![
                    order.table,
                    order.key,
                    order.source,
                    order.seq as i64
                ])?;
                st.flags_cleared += n as u64;
                let left: i64 = count.query_row(params![order.table, order.key], |r| r.get(0))?;
                (n > 0 && left == 0, left > 0 || st.blanket)
            } else {
                (false, st.blanket)
            };
            let fields_text = fields.as_ref().map(serde_json::to_string).transpose()?;
            change_insert.execute(params![
                seq as i64,
                st.epoch as i64,
                order.table,
                order.key,
                fields_text,
                order.source,
                order.seq as i64,
                digest,
                cleared,
                flagged
            ])?;
            // Present since the top of the loop: no new key to allocate.
            let entry = st.high_water.get_mut(&order.source);
            debug_assert!(entry.is_some(), "the source's mark was read above");
            if let Some(hw) = entry {
                *hw = (order.seq, true);
            }
            results.push(OrderResult {
                source: order.source.clone(),
                seq: order.seq,
                version: Some(version),
                duplicate: false,
            });
            changes.push(Change {
                table: order.table.clone(),
                key: order.key.clone(),
                fields,
                version,
                cleared_flag: cleared,
                flagged,
            });
        }
        Ok(ApplyOutcome { results, changes })
    }

    pub(super) fn upsert(
        conn: &Connection,
        t: &TableSql,
        key: &str,
        set: &Fields,
        version: Version,
    ) -> Result<Fields, StoreError> {
        // Parameters in column order, matching the SQL for this column set.
        // Validation guarantees every field names a column.
        let mut args: Vec<rusqlite::types::Value> = Vec::with_capacity(set.len() + 3);
        args.push(key.to_owned().into());
        args.push((version.epoch as i64).into());
        args.push((version.seq as i64).into());
        let mut mask = 0u128;
        let mut names = Vec::new();
        for (i, c) in t.columns.iter().enumerate() {
            if let Some(v) = set.get(&c.name) {
                if i < 128 {
                    mask |= 1u128 << i;
                }
                names.push(c.name.as_str());
                args.push(values::to_sql(c.ty, v));
            }
        }
        let sql: std::sync::Arc<str> = if t.columns.len() <= 128 {
            t.upsert_for(mask)
        } else {
            t.upsert(&names).into()
        };
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
        let row = rows
            .next()?
            .ok_or_else(|| StoreError::Engine("upsert returned no row".into()))?;
        let mut fields = Fields::new();
        for (i, c) in t.columns.iter().enumerate() {
            let v = values::from_sql(c.ty, row.get_ref(i)?).map_err(StoreError::Format)?;
            fields.insert(c.name.clone(), v);
        }
        // A tombstone left behind is harmless: it is read only while the key
        // is missing, and the next delete overwrites it.
        Ok(fields)
    }

    /// An order at or below its source's high-water mark: acknowledge it if
    /// it is the same order, refuse it otherwise.
    fn duplicate(
        conn: &Connection,
        index: usize,
        order: &Order,
        digest: &str,
        hw: u64,
    ) -> Result<OrderResult, StoreError> {
        let seen: Option<(i64, i64, String)> = conn
            .prepare_cached(
                "SELECT seq, epoch, digest FROM tm_changes WHERE source = ?1 AND source_seq = ?2",
            )?
            .query_row(params![order.source, order.seq as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        match seen {
            Some((seq, epoch, d)) if d == digest => Ok(OrderResult {
                source: order.source.clone(),
                seq: order.seq,
                version: Some(Version::new(epoch as u64, seq as u64)),
                duplicate: true,
            }),
            Some(_) => Err(StoreError::Conflict {
                index,
                source_name: order.source.clone(),
                seq: order.seq,
                high_water: hw,
            }),
            None => {
                let through: Option<i64> = conn
                    .prepare_cached("SELECT through_seq FROM tm_pruned WHERE source = ?1")?
                    .query_row(params![order.source], |r| r.get(0))
                    .optional()?;
                if crate::apply::was_pruned(order, through) {
                    // Applied long ago; its change was pruned since.
                    return Ok(OrderResult {
                        source: order.source.clone(),
                        seq: order.seq,
                        version: None,
                        duplicate: true,
                    });
                }
                Err(StoreError::OutOfOrder {
                    index,
                    source_name: order.source.clone(),
                    seq: order.seq,
                    high_water: hw,
                })
            }
        }
    }
}
