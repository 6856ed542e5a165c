//! The recovery state and flags (P5-P10): marking a restored copy,
//! schedule chunks, the state machine's persisted state, and operators'
//! views of the flags.
//!
//! Invariants: `flag_rows` is the row count of `tm_flags`, or above it
//! while flags are being added or cleared, never below (reads skip the flag
//! lookup while it is zero); `recovering` mirrors
//! `tm_meta.recovery_state`; `tm_lww` is emptied whenever a recovery ends,
//! and kept by a restore: empty in a backup taken outside a recovery, it
//! holds the history the replays need in one taken during one.

use super::{lww, meta_get, meta_set, meta_u64, SqliteStore};
use crate::store::{Flag, FlagEntry, FlagsAdded, RecoveryMeta};
use crate::StoreError;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::sync::atomic::Ordering;
use tidemark_api::RecoveryState;

pub(super) async fn mark_restored(s: &SqliteStore, new_epoch: u64) -> Result<(), StoreError> {
    s.blocking(move |s| {
        let mut conn = s.inner.writer.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        meta_set(&tx, "epoch", &new_epoch.to_string())?;
        meta_set(&tx, "recovery_state", "recovering")?;
        meta_set(&tx, "schedule_final", "0")?;
        meta_set(&tx, "recovery_started_at", &chrono::Utc::now().to_rfc3339())?;
        meta_set(&tx, "complete_requested", "0")?;
        // `tm_lww` is kept: a backup taken during a recovery holds which
        // logical version last set each field; emptied, a replayed order
        // older than a field's last writer would overwrite it.
        // Every source with applied orders at the backup point must send
        // its final schedule chunk (or be waived) before the blanket lifts.
        tx.execute("DELETE FROM tm_recovery_sources", [])?;
        tx.execute(
            "INSERT INTO tm_recovery_sources (source, final, waived) SELECT source, 0, 0 FROM tm_sources WHERE high_water > 0",
            [],
        )?;
        // Flags the backup held stay: their orders are after its high-water mark.
        let rows: i64 = tx.query_row("SELECT count(*) FROM tm_flags", [], |r| r.get(0))?;
        meta_set(&tx, "recovery_flagged", &rows.to_string())?;
        tx.commit()?;
        s.inner.epoch.store(new_epoch, Ordering::SeqCst);
        s.inner.recovering.store(true, Ordering::SeqCst);
        Ok(())
    })
    .await
}

pub(super) fn recovery_meta(s: &SqliteStore) -> Result<RecoveryMeta, StoreError> {
    s.with_reader(|c| {
        let state = match meta_get(c, "recovery_state")?.as_deref() {
            None | Some("normal") => RecoveryState::Normal,
            Some("recovering") => RecoveryState::Recovering,
            Some("recovered") => RecoveryState::Recovered,
            Some(other) => {
                return Err(StoreError::Format(format!(
                    "unknown recovery state {other:?} in tm_meta"
                )))
            }
        };
        Ok(RecoveryMeta {
            state,
            schedule_final: meta_u64(c, "schedule_final")? == 1,
            complete_requested: meta_u64(c, "complete_requested")? == 1,
            started_at: meta_get(c, "recovery_started_at")?,
            flagged_total: meta_u64(c, "recovery_flagged")?,
            remaining: s.inner.flag_rows.load(Ordering::SeqCst),
            settled: meta_u64(c, "flags_settled")?,
            waiting_for_sources: sources_where(c, "final = 0 AND waived = 0")?,
            waived_sources: sources_where(c, "waived = 1")?,
        })
    })
}

pub(super) async fn expect_sources(
    s: &SqliteStore,
    sources: Vec<String>,
) -> Result<(), StoreError> {
    for src in &sources {
        crate::apply::validate_source_name(src)?;
    }
    s.blocking(move |s| {
        let mut conn = s.inner.writer.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if meta_get(&tx, "recovery_state")?.as_deref() != Some("recovering") {
            return Err(StoreError::NotRecovering);
        }
        // Sources awaited or heard from already need nothing (a run
        // resumed after the schedule went final names them again).
        let mut new = Vec::new();
        for src in &sources {
            let known: i64 = tx.query_row(
                "SELECT count(*) FROM tm_recovery_sources WHERE source = ?1",
                params![src],
                |r| r.get(0),
            )?;
            if known == 0 && !new.contains(src) {
                new.push(src.clone());
            }
        }
        if new.is_empty() {
            return Ok(());
        }
        if meta_get(&tx, "schedule_final")?.as_deref() == Some("1") {
            return Err(crate::apply::expected_too_late(&new));
        }
        for src in &new {
            tx.execute(
                "INSERT INTO tm_recovery_sources (source, final, waived) VALUES (?1, 0, 0) ON CONFLICT(source) DO NOTHING",
                params![src],
            )?;
        }
        tx.commit()?;
        Ok(())
    })
    .await
}

pub(super) async fn add_flags(
    s: &SqliteStore,
    source: &str,
    entries: Vec<FlagEntry>,
    final_chunk: bool,
    without: Vec<String>,
) -> Result<FlagsAdded, StoreError> {
    crate::apply::validate_schedule(&s.catalog().schema, source, &entries, &without)?;
    let source = source.to_owned();
    s.blocking(move |s| {
        let mut conn = s.inner.writer.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if meta_get(&tx, "recovery_state")?.as_deref() != Some("recovering") {
            return Err(StoreError::NotRecovering);
        }
        let hw: u64 = tx
            .query_row("SELECT high_water FROM tm_sources WHERE source = ?1", params![source], |r| r.get::<_, i64>(0))
            .optional()?
            .unwrap_or(0) as u64;
        let mut added = FlagsAdded::default();
        let mut dropped = 0u64;
        let mut rows = Vec::with_capacity(entries.len());
        for e in &entries {
            if e.through_seq > hw.saturating_add(crate::apply::MAX_SCHEDULE_GAP) {
                return Err(StoreError::BadSchedule(format!(
                    "key {:?}: through_seq {} is more than {} ahead of source '{source}''s high-water mark {hw}; send the seqs the OpS journal holds",
                    e.key, e.through_seq, crate::apply::MAX_SCHEDULE_GAP
                )));
            }
            if e.through_seq <= hw {
                added.skipped += 1;
                continue;
            }
            rows.push((e.table.as_str(), e.key.as_str(), e.through_seq as i64));
        }
        // In key order, so the inserts walk the index once.
        rows.sort_unstable();
        added.flagged = write_flags(&tx, &source, &rows)?;
        let total = meta_u64(&tx, "recovery_flagged")? + added.flagged;
        meta_set(&tx, "recovery_flagged", &total.to_string())?;
        if final_chunk {
            for w in &without {
                // Not one that sent its own final chunk (unless waived
                // before: a resent chunk).
                let waived = tx.execute(
                    "UPDATE tm_recovery_sources SET waived = 1 WHERE source = ?1 AND (final = 0 OR waived = 1)",
                    params![w],
                )?;
                if waived == 0 {
                    let known: i64 = tx.query_row(
                        "SELECT count(*) FROM tm_recovery_sources WHERE source = ?1",
                        params![w],
                        |r| r.get(0),
                    )?;
                    return Err(crate::apply::waiver_refused(w, known > 0));
                }
                // No replay will come for a waived source: its flags could never clear.
                dropped += tx.execute("DELETE FROM tm_flags WHERE source = ?1", params![w])? as u64;
            }
            tx.execute(
                "INSERT INTO tm_recovery_sources (source, final, waived) VALUES (?1, 1, 0) ON CONFLICT(source) DO UPDATE SET final = 1",
                params![source],
            )?;
            let waiting: i64 = tx.query_row(
                "SELECT count(*) FROM tm_recovery_sources WHERE final = 0 AND waived = 0",
                [],
                |r| r.get(0),
            )?;
            if waiting == 0 {
                meta_set(&tx, "schedule_final", "1")?;
            }
        } else if meta_get(&tx, "schedule_final")?.as_deref() != Some("1") {
            // A source that began its list is awaited until its final
            // chunk, known to the restored data or not: every read stays
            // recovering until then (P6).
            tx.execute(
                "INSERT INTO tm_recovery_sources (source, final, waived) VALUES (?1, 0, 0) ON CONFLICT(source) DO NOTHING",
                params![source],
            )?;
        }
        // Counted before the flags are visible, uncounted after they are
        // gone: a read that finds no flag rows skips the lookup, so the
        // count may run high but never low (a reader that saw this commit's
        // `schedule_final` lift the blanket must also see its flags).
        s.inner.flag_rows.fetch_add(added.flagged, Ordering::SeqCst);
        if let Err(e) = tx.commit() {
            s.inner.flag_rows.fetch_sub(added.flagged, Ordering::SeqCst);
            return Err(e.into());
        }
        s.inner.flag_rows.fetch_sub(dropped, Ordering::SeqCst);
        Ok(added)
    })
    .await
}

pub(super) async fn set_recovery_state(
    s: &SqliteStore,
    state: RecoveryState,
    complete_requested: bool,
) -> Result<RecoveryMeta, StoreError> {
    s.blocking(move |s| {
        let mut conn = s.inner.writer.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        meta_set(&tx, "recovery_state", state.as_str())?;
        meta_set(
            &tx,
            "complete_requested",
            if complete_requested { "1" } else { "0" },
        )?;
        if state != RecoveryState::Recovering {
            lww::clear(&tx)?;
        }
        tx.commit()?;
        s.inner
            .recovering
            .store(state == RecoveryState::Recovering, Ordering::SeqCst);
        Ok(())
    })
    .await?;
    recovery_meta(s)
}

pub(super) fn list_flags(s: &SqliteStore, limit: usize) -> Result<Vec<Flag>, StoreError> {
    s.with_reader(|c| {
        let mut stmt = c.prepare_cached(
            "SELECT f.tbl, f.key, f.source, f.through_seq, coalesce(s.high_water, 0) FROM tm_flags f LEFT JOIN tm_sources s ON s.source = f.source ORDER BY f.tbl, f.key, f.source LIMIT ?1",
        )?;
        let rows = stmt.query_map(params![limit as i64], |r| {
            Ok(Flag {
                table: r.get(0)?,
                key: r.get(1)?,
                source: r.get(2)?,
                through_seq: r.get::<_, i64>(3)? as u64,
                high_water: r.get::<_, i64>(4)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    })
}

pub(super) async fn clear_flags(s: &SqliteStore) -> Result<u64, StoreError> {
    s.blocking(|s| {
        let conn = s.inner.writer.lock();
        let n = conn.execute("DELETE FROM tm_flags", [])?;
        s.inner.flag_rows.store(0, Ordering::SeqCst);
        Ok(n as u64)
    })
    .await
}

pub(super) async fn settle_flags(s: &SqliteStore) -> Result<u64, StoreError> {
    s.blocking(|s| {
        let mut conn = s.inner.writer.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "DELETE FROM tm_flags WHERE through_seq <= coalesce((SELECT high_water FROM tm_sources WHERE tm_sources.source = tm_flags.source), 0)",
            [],
        )? as u64;
        if n > 0 {
            let times = meta_u64(&tx, "flags_settled")? + 1;
            meta_set(&tx, "flags_settled", &times.to_string())?;
        }
        tx.commit()?;
        if n > 0 {
            s.inner.flag_rows.fetch_sub(n, Ordering::SeqCst);
        }
        Ok(n)
    })
    .await
}

/// Flags per multi-row insert (3 parameters each, plus the source).
const FLAG_ROWS: usize = 500;

/// Writes `(table, key, through_seq)` flags of `source`, keeping the higher
/// `through_seq` where a key is flagged already; returns how many are new.
/// A key is inserted in multi-row `INSERT OR IGNORE`s; only a group in
/// which some row was ignored (flagged before, or twice in the chunk) runs
/// the per-row raise, which leaves a row just inserted unchanged.
fn write_flags(
    tx: &rusqlite::Transaction<'_>,
    source: &str,
    rows: &[(&str, &str, i64)],
) -> Result<u64, StoreError> {
    let mut raise = tx.prepare_cached(
        "UPDATE tm_flags SET through_seq = ?4 WHERE tbl = ?1 AND key = ?2 AND source = ?3 AND through_seq < ?4",
    )?;
    static FULL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let mut full = tx.prepare_cached(FULL.get_or_init(|| insert_flags_sql(FLAG_ROWS)))?;
    let mut inserted = 0u64;
    for group in rows.chunks(FLAG_ROWS) {
        // The last, shorter group is prepared once (not cached).
        let mut short;
        let insert = if group.len() == FLAG_ROWS {
            &mut full
        } else {
            short = tx.prepare(&insert_flags_sql(group.len()))?;
            &mut short
        };
        insert.raw_bind_parameter(1, source)?;
        for (i, (table, key, seq)) in group.iter().enumerate() {
            insert.raw_bind_parameter(3 * i + 2, table)?;
            insert.raw_bind_parameter(3 * i + 3, key)?;
            insert.raw_bind_parameter(3 * i + 4, seq)?;
        }
        let n = insert.raw_execute()?;
        inserted += n as u64;
        if n < group.len() {
            for (table, key, seq) in group {
                raise.execute(params![table, key, source, seq])?;
            }
        }
    }
    Ok(inserted)
}

/// `INSERT OR IGNORE` of `n` flags: `?1` is the source, then
/// `(table, key, through_seq)` per row.
fn insert_flags_sql(n: usize) -> String {
    let mut sql =
        String::from("INSERT OR IGNORE INTO tm_flags (tbl, key, source, through_seq) VALUES ");
    for i in 0..n {
        let p = 3 * i + 2;
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("(?{p}, ?{}, ?1, ?{})", p + 1, p + 2));
    }
    sql
}

/// Recovery sources matching a fixed condition, by name.
fn sources_where(conn: &Connection, condition: &'static str) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT source FROM tm_recovery_sources WHERE {condition} ORDER BY source"
    ))?;
    let names = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(names)
}
