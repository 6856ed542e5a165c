//! The PostgreSQL write path: group commit of order batches in one
//! transaction, a savepoint per batch when several share it.
//!
//! Invariants (as in the SQLite engine):
//! - A batch is all or nothing; orders are idempotent by `(source, seq)`.
//! - The seq counter is read `FOR UPDATE` inside the transaction that uses
//!   it, so two writers can never hand out the same seq, and a crash leaves
//!   either the whole group or none of it.
//! - While recovering, orders apply under the recovery ordering rule
//!   ([`crate::recovery_rule`]).

use super::catalog::{Catalog, PgArray, PgValue, TableSql};
use super::pipeline::ChainState;
use super::PgStore;
use crate::recovery_rule::{decide, logical_version, Effect, KeyState};
use crate::store::{ApplyOutcome, Change};
use crate::StoreError;
use deadpool_postgres::Transaction;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tidemark_api::{Fields, Op, Order, OrderResult, Version};
use tokio_postgres::types::{Json, ToSql};

/// The running state of a group transaction, rolled back per batch.
#[derive(Clone)]
pub(super) struct GroupState {
    pub(super) epoch: u64,
    pub(super) seq: u64,
    pub(super) check_flags: bool,
    pub(super) strict: bool,
    /// Recovering and the schedule list not yet complete (read in this
    /// transaction): every change is flagged.
    pub(super) blanket: bool,
    pub(super) flags_cleared: u64,
    /// Source to (high-water mark, changed in this group).
    pub(super) high_water: HashMap<String, (u64, bool)>,
}

pub(super) fn pg(e: tokio_postgres::Error) -> StoreError {
    super::engine_error(e)
}

// Every statement of the write path is prepared once per connection (the
// pool keeps each connection's statement cache): one round trip, not two.

async fn exec(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, tokio_postgres::Error> {
    let st = tx.prepare_cached(sql).await?;
    tx.execute(&st, params).await
}

async fn q_one(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<tokio_postgres::Row, tokio_postgres::Error> {
    let st = tx.prepare_cached(sql).await?;
    tx.query_one(&st, params).await
}

async fn q_opt(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<tokio_postgres::Row>, tokio_postgres::Error> {
    let st = tx.prepare_cached(sql).await?;
    tx.query_opt(&st, params).await
}

impl PgStore {
    pub(super) async fn apply_group_pg(
        &self,
        batches: Vec<Vec<Order>>,
    ) -> Vec<Result<ApplyOutcome, StoreError>> {
        let mut catalog = self.catalog();
        let mut out = crate::apply::validate_group(&catalog.schema, &batches);
        let (mut chain, _all) = self.alone().await;
        // A publish swaps the catalog under this lock (see `revalidate`).
        let now = self.catalog();
        if !Arc::ptr_eq(&now, &catalog) {
            crate::apply::revalidate(&now.schema, &batches, &mut out);
            catalog = now;
        }
        let term = self.fence_term();
        match self.group_tx(&catalog, &batches, &mut out).await {
            Ok(Some(st)) if !st.strict && !st.blanket && term == self.fence_term() => {
                // The plain state, committed: later groups may pipeline on it.
                chain.state = Some(ChainState {
                    seq: st.seq,
                    high_water: st
                        .high_water
                        .into_iter()
                        .map(|(s, (hw, _))| (s, hw))
                        .collect(),
                    term,
                });
            }
            Ok(_) => {}
            Err(e) => return crate::apply::group_failed(out, e),
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(StoreError::Engine("batch skipped".into()))))
            .collect()
    }

    async fn group_tx(
        &self,
        catalog: &Catalog,
        batches: &[Vec<Order>],
        out: &mut [Option<Result<ApplyOutcome, StoreError>>],
    ) -> Result<Option<GroupState>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        // Several instances: only the lease holder of the current term
        // commits (the lease row stays key-share-locked until the commit).
        self.check_fence(&tx, None).await?;
        // The counter and the recovery state in one round trip; the lock on
        // the counter orders writers.
        let meta: HashMap<String, String> = tx
            .query(
                "SELECT name, value FROM tm_meta WHERE name IN ('seq', 'recovery_state', 'schedule_final') FOR UPDATE",
                &[],
            )
            .await
            .map_err(pg)?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let seq = meta.get("seq").cloned().unwrap_or_default();
        let state = meta.get("recovery_state");
        let schedule_final = meta.get("schedule_final");
        let mut st = GroupState {
            blanket: state.map(String::as_str) == Some("recovering")
                && schedule_final.map(String::as_str) != Some("1"),
            epoch: self.inner.epoch.load(Ordering::SeqCst),
            seq: seq
                .parse()
                .map_err(|_| StoreError::Format(format!("tm_meta.seq is not a number: {seq}")))?,
            check_flags: self.inner.flag_rows.load(Ordering::SeqCst) > 0
                || self.inner.flags_unknown.load(Ordering::SeqCst),
            strict: state.map(String::as_str) == Some("recovering"),
            flags_cleared: 0,
            high_water: HashMap::new(),
        };
        let pending = out.iter().filter(|r| r.is_none()).count();
        let mut tx = tx;
        for (i, orders) in batches.iter().enumerate() {
            if out[i].is_some() {
                continue;
            }
            if pending == 1 {
                // A lone batch needs no savepoint: its failure rolls back all.
                let r = apply_batch(catalog, &tx, orders, &mut st).await;
                let failed = r.is_err();
                out[i] = Some(r);
                if failed {
                    // Nothing committed.
                    return Ok(None);
                }
                continue;
            }
            let saved = st.clone();
            let sp = tx.savepoint("batch").await.map_err(pg)?;
            let r = apply_batch(catalog, &sp, orders, &mut st).await;
            match r {
                Ok(outcome) => {
                    sp.commit().await.map_err(pg)?;
                    out[i] = Some(Ok(outcome));
                }
                Err(e) => {
                    sp.rollback().await.map_err(pg)?;
                    st = saved;
                    out[i] = Some(Err(e));
                }
            }
        }
        let moved: Vec<(&str, u64)> = st
            .high_water
            .iter()
            .filter(|(_, (_, dirty))| *dirty)
            .map(|(s, (hw, _))| (s.as_str(), *hw))
            .collect();
        self.finish_group(&tx, &moved, st.seq).await.map_err(pg)?;
        if let Err(e) = tx.commit().await {
            if st.flags_cleared > 0 {
                self.flags_in_doubt();
            }
            return Err(pg(e));
        }
        self.inner.seq.store(st.seq, Ordering::SeqCst);
        // Under the writer lock (this group runs alone).
        self.flags_cleared(st.flags_cleared);
        Ok(Some(st))
    }
}

/// The marks a group moved (`$1` sources, `$2` marks) and the seq counter
/// (`$3`), as a statement's leading CTEs.
macro_rules! marks_and_seq {
    () => {
        "WITH s AS (INSERT INTO tm_sources (source, high_water) SELECT * FROM unnest($1::text[], $2::bigint[]) ON CONFLICT (source) DO UPDATE SET high_water = excluded.high_water), m AS (UPDATE tm_meta SET value = $3 WHERE name = 'seq')"
    };
}

impl PgStore {
    /// A group's last statement before its commit, in one round trip: the
    /// marks of the sources it moved, the seq counter, and (several
    /// instances) the notice that wakes the other instances' tails.
    pub(super) async fn finish_group(
        &self,
        tx: &Transaction<'_>,
        moved: &[(&str, u64)],
        seq: u64,
    ) -> Result<(), tokio_postgres::Error> {
        let sources: Vec<&str> = moved.iter().map(|(s, _)| *s).collect();
        let marks: Vec<i64> = moved.iter().map(|(_, hw)| *hw as i64).collect();
        let seq = seq.to_string();
        if self.inner.fenced.load(Ordering::SeqCst) {
            const SQL: &str = concat!(marks_and_seq!(), " SELECT pg_notify($4, $3)");
            q_one(tx, SQL, &[&sources, &marks, &seq, &self.channel()]).await?;
        } else {
            const SQL: &str = concat!(marks_and_seq!(), " SELECT 1");
            q_one(tx, SQL, &[&sources, &marks, &seq]).await?;
        }
        Ok(())
    }
}

/// The high-water mark of `source` as this group sees it (read once).
pub(super) async fn high_water(
    tx: &Transaction<'_>,
    st: &mut GroupState,
    source: &str,
) -> Result<u64, StoreError> {
    if let Some((hw, _)) = st.high_water.get(source) {
        return Ok(*hw);
    }
    let hw: i64 = q_opt(
        tx,
        "SELECT high_water FROM tm_sources WHERE source = $1",
        &[&source],
    )
    .await
    .map_err(pg)?
    .map_or(0, |r| r.get(0));
    st.high_water.insert(source.to_owned(), (hw as u64, false));
    Ok(hw as u64)
}

/// One batch inside the group transaction: pipelined where it can be,
/// one statement after another where an order depends on what the store
/// answers (duplicates, flags, the recovery rule).
async fn apply_batch(
    catalog: &Catalog,
    tx: &Transaction<'_>,
    orders: &[Order],
    st: &mut GroupState,
) -> Result<ApplyOutcome, StoreError> {
    let bulk = if !st.strict && !st.check_flags {
        apply_pipelined(catalog, tx, orders, st).await?
    } else {
        super::replay::apply_flagged(catalog, tx, orders, st).await?
    };
    if let Some(out) = bulk {
        return Ok(out);
    }
    apply_one_by_one(catalog, tx, orders, st).await
}

/// The common case, with no recovery in progress and no order at or below
/// its source's high-water mark: every order's statement is sent without
/// waiting for the one before (PostgreSQL runs them in the order sent, so
/// two orders of one key still apply in order), then every change-log row.
/// `None` (nothing done) when the batch needs the one-by-one path.
async fn apply_pipelined(
    catalog: &Catalog,
    tx: &Transaction<'_>,
    orders: &[Order],
    st: &mut GroupState,
) -> Result<Option<ApplyOutcome>, StoreError> {
    for order in orders {
        if !st.high_water.contains_key(&order.source) {
            high_water(tx, st, &order.source).await?;
        }
    }
    let Some(planned) = plan_batch(orders, st.epoch, &mut st.seq, &mut st.high_water)? else {
        return Ok(None);
    };
    execute_plain(catalog, tx, orders, planned).await.map(Some)
}

/// Seqs and versions of a batch on the plain path, in memory. `None` if an
/// order is at or below its source's high-water mark (a duplicate
/// candidate: the batch needs the one-by-one path). `seq` and `marks` change
/// only when versions are returned; every source of the batch must be in
/// `marks` (source to mark and whether this group moved it).
pub(super) fn plan_batch(
    orders: &[Order],
    epoch: u64,
    seq: &mut u64,
    marks: &mut HashMap<String, (u64, bool)>,
) -> Result<Option<Vec<Version>>, StoreError> {
    let mut running: HashMap<&str, u64> = HashMap::new();
    for order in orders {
        let hw = running
            .get(order.source.as_str())
            .copied()
            .unwrap_or_else(|| marks[&order.source].0);
        if order.seq <= hw {
            return Ok(None);
        }
        running.insert(&order.source, order.seq);
    }
    running.clear();
    let mut next = *seq;
    let mut planned = Vec::with_capacity(orders.len());
    for (index, order) in orders.iter().enumerate() {
        let hw = running
            .get(order.source.as_str())
            .copied()
            .unwrap_or_else(|| marks[&order.source].0);
        crate::apply::check_gap(index, order, hw)?;
        next += 1;
        planned.push(Version::new(epoch, next));
        running.insert(&order.source, order.seq);
    }
    *seq = next;
    for (source, hw) in running {
        marks.insert(source.to_owned(), (hw, true));
    }
    Ok(Some(planned))
}

/// A planned batch's statements: its records, then its change-log rows.
pub(super) async fn execute_plain(
    catalog: &Catalog,
    tx: &Transaction<'_>,
    orders: &[Order],
    planned: Vec<Version>,
) -> Result<ApplyOutcome, StoreError> {
    // Keys distinct within the batch (the common case): one multi-row
    // statement per table and column set; otherwise one statement per
    // order, pipelined (PostgreSQL runs them in the order sent, so two
    // orders of one key still apply in order).
    let mut seen = HashSet::with_capacity(orders.len());
    let distinct = orders
        .iter()
        .all(|o| seen.insert((o.table.as_str(), o.key.as_str())));
    let records = if distinct {
        bulk_records(catalog, tx, orders, &planned).await?
    } else {
        pipelined_records(catalog, tx, orders, &planned).await?
    };
    let unflagged = vec![(false, false); orders.len()];
    bulk_changes(tx, orders, &planned, &records, &unflagged).await?;
    Ok(outcome(orders, planned, records, unflagged))
}

/// A batch's answer: each order's result and change, from its version, the
/// record after it, and `(cleared_flag, flagged)`.
pub(super) fn outcome(
    orders: &[Order],
    planned: Vec<Version>,
    records: Vec<Option<Fields>>,
    flags: Vec<(bool, bool)>,
) -> ApplyOutcome {
    let results = orders
        .iter()
        .zip(&planned)
        .map(|(o, v)| OrderResult {
            source: o.source.clone(),
            seq: o.seq,
            version: Some(*v),
            duplicate: false,
        })
        .collect();
    let changes = orders
        .iter()
        .zip(planned)
        .zip(records)
        .zip(flags)
        .map(|(((o, v), fields), (cleared_flag, flagged))| Change {
            table: o.table.clone(),
            key: o.key.clone(),
            fields,
            version: v,
            cleared_flag,
            flagged,
        })
        .collect();
    ApplyOutcome { results, changes }
}

/// One statement per order, pipelined; the record after each order.
async fn pipelined_records(
    catalog: &Catalog,
    tx: &Transaction<'_>,
    orders: &[Order],
    planned: &[Version],
) -> Result<Vec<Option<Fields>>, StoreError> {
    futures::future::try_join_all(orders.iter().zip(planned).map(|(order, v)| {
        let t = &catalog.tables[&order.table];
        let v = *v;
        async move {
            match order.op {
                Op::Upsert => upsert(tx, t, &order.key, &order.fields, v).await.map(Some),
                Op::Delete => {
                    let keys = [order.key.as_str()];
                    let seqs = [v.seq as i64];
                    exec(
                        tx,
                        &t.bulk_delete,
                        &[&&keys[..], &&seqs[..], &order.table, &(v.epoch as i64)],
                    )
                    .await
                    .map_err(pg)?;
                    Ok(None)
                }
            }
        }
    }))
    .await
}

/// Orders of distinct keys: one multi-row upsert per table and column set,
/// one multi-row delete (with its tombstones) per table, all pipelined.
/// Returns the record after each order.
async fn bulk_records(
    catalog: &Catalog,
    tx: &Transaction<'_>,
    orders: &[Order],
    planned: &[Version],
) -> Result<Vec<Option<Fields>>, StoreError> {
    let mut upserts: HashMap<(&str, Vec<usize>), Vec<usize>> = HashMap::new();
    let mut deletes: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, o) in orders.iter().enumerate() {
        match o.op {
            Op::Upsert => {
                let t = &catalog.tables[&o.table];
                let set: Vec<usize> = (0..t.columns.len())
                    .filter(|&c| o.fields.contains_key(&t.columns[c].name))
                    .collect();
                upserts.entry((o.table.as_str(), set)).or_default().push(i);
            }
            Op::Delete => deletes.entry(o.table.as_str()).or_default().push(i),
        }
    }
    let Some(first) = planned.first() else {
        return Ok(Vec::new());
    };
    let epoch = first.epoch as i64;
    let ups = futures::future::try_join_all(upserts.iter().map(|((table, set), idx)| async move {
        let t = &catalog.tables[*table];
        let keys: Vec<&str> = idx.iter().map(|&i| orders[i].key.as_str()).collect();
        let seqs: Vec<i64> = idx.iter().map(|&i| planned[i].seq as i64).collect();
        let columns: Vec<PgArray> = set
            .iter()
            .map(|&c| {
                let col = &t.columns[c];
                let mut a = PgArray::new(col.ty, idx.len());
                for &i in idx {
                    a.push(
                        orders[i]
                            .fields
                            .get(&col.name)
                            .unwrap_or(&serde_json::Value::Null),
                    );
                }
                a
            })
            .collect();
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&keys, &epoch, &seqs];
        params.extend(columns.iter().map(|c| c as &(dyn ToSql + Sync)));
        let st = tx.prepare_cached(&t.bulk_upsert(set)).await.map_err(pg)?;
        let rows = tx.query(&st, &params).await.map_err(pg)?;
        let mut after: HashMap<String, Fields> = HashMap::with_capacity(rows.len());
        for row in &rows {
            after.insert(row.get(0), t.fields(row, 1)?);
        }
        idx.iter()
            .map(|&i| {
                after
                    .remove(&orders[i].key)
                    .map(|f| (i, Some(f)))
                    .ok_or_else(|| {
                        StoreError::Engine(format!(
                            "the upsert of key {:?} returned no row",
                            orders[i].key
                        ))
                    })
            })
            .collect::<Result<Vec<_>, StoreError>>()
    }));
    let dels = futures::future::try_join_all(deletes.iter().map(|(table, idx)| async move {
        let t = &catalog.tables[*table];
        let keys: Vec<&str> = idx.iter().map(|&i| orders[i].key.as_str()).collect();
        let seqs: Vec<i64> = idx.iter().map(|&i| planned[i].seq as i64).collect();
        exec(tx, &t.bulk_delete, &[&keys, &seqs, table, &epoch])
            .await
            .map_err(pg)?;
        Ok::<_, StoreError>(())
    }));
    let (ups, _) = futures::future::try_join(ups, dels).await?;
    let mut out: Vec<Option<Fields>> = vec![None; orders.len()];
    for (i, f) in ups.into_iter().flatten() {
        out[i] = f;
    }
    Ok(out)
}

/// The change-log rows of a batch in one statement.
pub(super) async fn bulk_changes(
    tx: &Transaction<'_>,
    orders: &[Order],
    planned: &[Version],
    records: &[Option<Fields>],
    marks: &[(bool, bool)],
) -> Result<(), StoreError> {
    let Some(first) = planned.first() else {
        return Ok(());
    };
    let epoch = first.epoch as i64;
    let seqs: Vec<i64> = planned.iter().map(|v| v.seq as i64).collect();
    let tables: Vec<&str> = orders.iter().map(|o| o.table.as_str()).collect();
    let keys: Vec<&str> = orders.iter().map(|o| o.key.as_str()).collect();
    let fields: Vec<Option<Json<&Fields>>> = records.iter().map(|f| f.as_ref().map(Json)).collect();
    let sources: Vec<&str> = orders.iter().map(|o| o.source.as_str()).collect();
    let source_seqs: Vec<i64> = orders.iter().map(|o| o.seq as i64).collect();
    let digests: Vec<String> = orders.iter().map(Order::digest).collect();
    let cleared: Vec<bool> = marks.iter().map(|m| m.0).collect();
    let flagged: Vec<bool> = marks.iter().map(|m| m.1).collect();
    exec(
        tx,
        "INSERT INTO tm_changes (seq, epoch, tbl, key, fields, source, source_seq, digest, cleared, flagged) SELECT u.s, $1, u.t, u.k, u.f, u.src, u.ss, u.d, u.c, u.fl FROM unnest($2::bigint[], $3::text[], $4::text[], $5::jsonb[], $6::text[], $7::bigint[], $8::text[], $9::bool[], $10::bool[]) AS u(s, t, k, f, src, ss, d, c, fl)",
        &[&epoch, &seqs, &tables, &keys, &fields, &sources, &source_seqs, &digests, &cleared, &flagged],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

/// Every order in turn, each statement waiting for the one before.
async fn apply_one_by_one(
    catalog: &Catalog,
    tx: &Transaction<'_>,
    orders: &[Order],
    st: &mut GroupState,
) -> Result<ApplyOutcome, StoreError> {
    let mut results = Vec::with_capacity(orders.len());
    let mut changes = Vec::with_capacity(orders.len());
    for (index, order) in orders.iter().enumerate() {
        let hw = high_water(tx, st, &order.source).await?;
        let digest = order.digest();
        if order.seq <= hw {
            results.push(duplicate(tx, index, order, &digest, hw).await?);
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
        let version = Version::new(st.epoch, st.seq);
        let t = &catalog.tables[&order.table];
        let fields = if st.strict {
            apply_recovering(tx, t, order, version).await?
        } else {
            match order.op {
                Op::Upsert => Some(upsert(tx, t, &order.key, &order.fields, version).await?),
                Op::Delete => {
                    let removed = exec(tx, &t.delete, &[&order.key]).await.map_err(pg)?;
                    if removed > 0 {
                        tombstone(tx, &order.table, &order.key, version).await?;
                    }
                    None
                }
            }
        };
        let (cleared, flagged) = if st.check_flags {
            let n = exec(tx,
                    "DELETE FROM tm_flags WHERE tbl = $1 AND key = $2 AND source = $3 AND through_seq <= $4",
                    &[&order.table, &order.key, &order.source, &(order.seq as i64)],
                )
                .await
                .map_err(pg)?;
            st.flags_cleared += n;
            let left: i64 = q_one(
                tx,
                "SELECT count(*) FROM tm_flags WHERE tbl = $1 AND key = $2",
                &[&order.table, &order.key],
            )
            .await
            .map_err(pg)?
            .get(0);
            (n > 0 && left == 0, left > 0 || st.blanket)
        } else {
            (false, st.blanket)
        };
        let fields_json = fields.clone().map(serde_json::Value::Object);
        exec(tx,
            "INSERT INTO tm_changes (seq, epoch, tbl, key, fields, source, source_seq, digest, cleared, flagged) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                &(version.seq as i64),
                &(version.epoch as i64),
                &order.table,
                &order.key,
                &fields_json,
                &order.source,
                &(order.seq as i64),
                &digest,
                &cleared,
                &flagged,
            ],
        )
        .await
        .map_err(pg)?;
        st.high_water
            .insert(order.source.clone(), (order.seq, true));
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

async fn upsert(
    tx: &Transaction<'_>,
    t: &TableSql,
    key: &str,
    fields: &Fields,
    version: Version,
) -> Result<Fields, StoreError> {
    let mut set = Vec::new();
    let mut values: Vec<PgValue> = Vec::new();
    for (i, c) in t.columns.iter().enumerate() {
        if let Some(v) = fields.get(&c.name) {
            set.push(i);
            values.push(PgValue::of(c.ty, v));
        }
    }
    let sql = t.upsert(&set);
    let (epoch, seq) = (version.epoch as i64, version.seq as i64);
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&key, &epoch, &seq];
    for v in &values {
        params.push(v);
    }
    let row = q_one(tx, &sql, &params).await.map_err(pg)?;
    t.fields(&row, 0)
}

async fn tombstone(
    tx: &Transaction<'_>,
    table: &str,
    key: &str,
    v: Version,
) -> Result<(), StoreError> {
    exec(tx,
        "INSERT INTO tm_tombstones (tbl, key, epoch, seq) VALUES ($1, $2, $3, $4) ON CONFLICT (tbl, key) DO UPDATE SET epoch = excluded.epoch, seq = excluded.seq",
        &[&table, &key, &(v.epoch as i64), &(v.seq as i64)],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

async fn read_fields(
    tx: &Transaction<'_>,
    t: &TableSql,
    key: &str,
) -> Result<Option<Fields>, StoreError> {
    match q_opt(tx, &t.select, &[&key]).await.map_err(pg)? {
        Some(row) => Ok(Some(t.fields(&row, 2)?)),
        None => Ok(None),
    }
}

/// Applies `order` under the recovery ordering rule; returns the record
/// after it (`None` if the key is missing).
async fn apply_recovering(
    tx: &Transaction<'_>,
    t: &TableSql,
    order: &Order,
    version: Version,
) -> Result<Option<Fields>, StoreError> {
    let lv = logical_version(order, version);
    let row = q_opt(
        tx,
        "SELECT upsert_v, delete_v, fields FROM tm_lww WHERE tbl = $1 AND key = $2",
        &[&order.table, &order.key],
    )
    .await
    .map_err(pg)?;
    let mut st = match row {
        None => KeyState::default(),
        Some(r) => {
            let (u, d, f): (Option<String>, Option<String>, String) =
                (r.get(0), r.get(1), r.get(2));
            KeyState::from_parts(u.as_deref(), d.as_deref(), &f).ok_or_else(|| {
                StoreError::Format(format!("tm_lww of key {:?} is damaged", order.key))
            })?
        }
    };
    let columns: Vec<String> = t.columns.iter().map(|c| c.name.clone()).collect();
    let effect = decide(&mut st, order.op, &order.fields, &columns, lv);
    exec(tx,
        "INSERT INTO tm_lww (tbl, key, upsert_v, delete_v, fields) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tbl, key) DO UPDATE SET upsert_v = excluded.upsert_v, delete_v = excluded.delete_v, fields = excluded.fields",
        &[
            &order.table,
            &order.key,
            &crate::recovery_rule::encode(st.upsert),
            &crate::recovery_rule::encode(st.delete),
            &st.fields_json(),
        ],
    )
    .await
    .map_err(pg)?;
    let (epoch, seq) = (version.epoch as i64, version.seq as i64);
    match effect {
        Effect::Upsert(set) => upsert(tx, t, &order.key, &set, version).await.map(Some),
        Effect::Delete => {
            exec(tx, &t.delete, &[&order.key]).await.map_err(pg)?;
            tombstone(tx, &order.table, &order.key, version).await?;
            Ok(None)
        }
        Effect::ClearFields(names) => {
            let mut sql = format!("UPDATE {} SET tm_epoch = $1, tm_seq = $2", t.quoted);
            for n in &names {
                // Column names come from the validated schema only.
                sql.push_str(&format!(", \"{n}\" = NULL"));
            }
            sql.push_str(" WHERE tm_key = $3");
            exec(tx, &sql, &[&epoch, &seq, &order.key])
                .await
                .map_err(pg)?;
            read_fields(tx, t, &order.key).await
        }
        Effect::Touch => {
            let n = exec(
                tx,
                &format!(
                    "UPDATE {} SET tm_epoch = $1, tm_seq = $2 WHERE tm_key = $3",
                    t.quoted
                ),
                &[&epoch, &seq, &order.key],
            )
            .await
            .map_err(pg)?;
            if n == 0 {
                tombstone(tx, &order.table, &order.key, version).await?;
                return Ok(None);
            }
            read_fields(tx, t, &order.key).await
        }
    }
}

/// An order at or below its source's high-water mark: acknowledge it if it
/// is the same order, refuse it otherwise.
async fn duplicate(
    tx: &Transaction<'_>,
    index: usize,
    order: &Order,
    digest: &str,
    hw: u64,
) -> Result<OrderResult, StoreError> {
    let seen = q_opt(
        tx,
        "SELECT seq, epoch, digest FROM tm_changes WHERE source = $1 AND source_seq = $2",
        &[&order.source, &(order.seq as i64)],
    )
    .await
    .map_err(pg)?;
    let ack = |version| OrderResult {
        source: order.source.clone(),
        seq: order.seq,
        version,
        duplicate: true,
    };
    match seen {
        Some(r) if r.get::<_, String>(2) == digest => Ok(ack(Some(Version::new(
            r.get::<_, i64>(1) as u64,
            r.get::<_, i64>(0) as u64,
        )))),
        Some(_) => Err(StoreError::Conflict {
            index,
            source_name: order.source.clone(),
            seq: order.seq,
            high_water: hw,
        }),
        None => {
            let through: Option<i64> = q_one(
                tx,
                "SELECT (SELECT through_seq FROM tm_pruned WHERE source = $1)",
                &[&order.source],
            )
            .await
            .map_err(pg)?
            .get(0);
            if crate::apply::was_pruned(order, through) {
                // Applied long ago; its change was pruned since.
                return Ok(ack(None));
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
