//! Batch validation shared by every engine: it runs before a transaction
//! opens, so an invalid batch never touches the store.

use crate::store::ApplyOutcome;
use crate::StoreError;
use tidemark_api::schema::{validate_key, validate_source, InvalidInput};
use tidemark_api::{Op, Order, Schema};

/// Checks every order of a batch against the schema.
pub fn validate_batch(schema: &Schema, orders: &[Order]) -> Result<(), StoreError> {
    for (index, order) in orders.iter().enumerate() {
        let invalid = |error: InvalidInput| StoreError::Invalid {
            index,
            source_name: order.source.clone(),
            seq: order.seq,
            error: Box::new(error),
        };
        validate_source(&order.source).map_err(invalid)?;
        if order.seq == 0 {
            return Err(invalid(InvalidInput::ZeroSeq));
        }
        if order.seq > tidemark_api::schema::MAX_SEQ {
            return Err(invalid(InvalidInput::SeqTooLarge(order.seq)));
        }
        validate_key(&order.key).map_err(invalid)?;
        match order.op {
            Op::Upsert => schema
                .validate_fields(&order.table, &order.fields)
                .map_err(invalid)?,
            Op::Delete => {
                schema.table(&order.table).map_err(invalid)?;
                if !order.fields.is_empty() {
                    return Err(invalid(InvalidInput::DeleteWithFields));
                }
            }
        }
    }
    Ok(())
}

/// Each batch of a group checked on its own: `Some(Err)` for a batch refused
/// before any transaction opens, `None` for one still to run.
pub fn validate_group<T>(
    schema: &Schema,
    batches: &[Vec<Order>],
) -> Vec<Option<Result<T, StoreError>>> {
    batches
        .iter()
        .map(|b| validate_batch(schema, b).err().map(Err))
        .collect()
}

/// Re-checks, once the writer is held, the batches of a group that were
/// validated against a catalog a publish or rollback has since replaced
/// (the catalog is swapped under the writer, so the one seen under it is
/// the one the transaction runs against). A batch that no longer fits is
/// refused with its own code (`unknown_column`, `unknown_table`), never
/// run into an engine error (S9: a change of version never fails an order
/// with a retryable 500).
pub fn revalidate<T>(
    schema: &Schema,
    batches: &[Vec<Order>],
    out: &mut [Option<Result<T, StoreError>>],
) {
    for (b, r) in batches.iter().zip(out.iter_mut()) {
        if r.is_none() {
            if let Err(e) = validate_batch(schema, b) {
                *r = Some(Err(e));
            }
        }
    }
}

/// How far ahead of its source's high-water mark an order may be. A seq
/// further ahead cannot have been numbered by an OpS counting one by one,
/// and accepting it would lock the source out.
pub const MAX_SEQ_GAP: u64 = 1_000_000;

/// How far ahead of its source's high-water mark a schedule entry may be:
/// every order since the backup (a busy OpS makes millions between daily
/// backups), but not a seq no OpS could reach (a flag nothing clears would
/// keep the recovery open for good).
pub const MAX_SCHEDULE_GAP: u64 = 1 << 40;

/// Whether `order` skips ahead of its source's high-water mark `hw` where
/// that is refused: while recovering (`strict`), a live order must follow
/// `hw` without a gap, so it cannot pass difference data not yet replayed
/// (P10). A replay (an order with its `origin`) may skip: `ops recover`
/// sends its source's journal in order, and a seq missing there was never
/// used (the contract lets a source skip seqs), so waiting for it would
/// keep the key flagged for good.
pub fn skips_ahead(order: &Order, hw: u64, strict: bool) -> bool {
    strict && order.origin.is_none() && order.seq != hw + 1
}

/// Fills `tm_pruned` (per source, the highest seq whose change was pruned
/// from the log) for a store whose log was pruned before the table existed,
/// or whose table did not travel (a restore across engines): each source's
/// seqs below the oldest the log still holds count as pruned, as they did
/// before. A no-op once the table has rows, and while the log is whole
/// (nothing pruned). The same SQL for both engines.
pub const PRUNED_BACKFILL: &str = "INSERT INTO tm_pruned (source, through_seq) SELECT s.source, coalesce((SELECT min(c.source_seq) - 1 FROM tm_changes c WHERE c.source = s.source), s.high_water) FROM tm_sources s WHERE NOT EXISTS (SELECT 1 FROM tm_pruned) AND NOT EXISTS (SELECT 1 FROM tm_changes WHERE seq = 1) ON CONFLICT (source) DO NOTHING";

/// How an order that is at or below its source's high-water mark, and not
/// in the log, is answered: acknowledged as applied long ago if its change
/// was pruned (`pruned_through`: the source's highest pruned seq), refused
/// as out of order otherwise (it was never applied: acknowledging it would
/// drop it without a word).
pub fn was_pruned(order: &Order, pruned_through: Option<i64>) -> bool {
    pruned_through.is_some_and(|t| order.seq as i64 <= t)
}

/// Refuses an order too far ahead of its source's high-water mark `hw`.
pub fn check_gap(index: usize, order: &Order, hw: u64) -> Result<(), StoreError> {
    if order.seq > hw.saturating_add(MAX_SEQ_GAP) {
        return Err(StoreError::TooFarAhead {
            index,
            source_name: order.source.clone(),
            seq: order.seq,
            high_water: hw,
        });
    }
    Ok(())
}

/// Checks a chunk of the recovery schedule list against the schema, before
/// any transaction opens (the same for every engine).
/// Refuses a source name no OpS could have (empty, over 128 bytes, control
/// characters).
pub fn validate_source_name(source: &str) -> Result<(), StoreError> {
    if source.is_empty() || source.len() > 128 || source.chars().any(char::is_control) {
        return Err(StoreError::BadSchedule(format!(
            "source must be 1 to 128 printable bytes, got {}; name the OpS source whose orders the list covers",
            source.len()
        )));
    }
    Ok(())
}

/// The refusal of sources expected after the schedule list went final.
pub fn expected_too_late(sources: &[String]) -> StoreError {
    StoreError::BadSchedule(format!(
        "the schedule list is final already, so it is too late to expect {}: their keys were answered as current meanwhile. Send their lists now (ops recover with their journals), and pass --expect-source in the first run next time",
        sources.join(", ")
    ))
}

pub fn validate_schedule(
    schema: &Schema,
    source: &str,
    entries: &[crate::FlagEntry],
    without: &[String],
) -> Result<(), StoreError> {
    validate_source_name(source)?;
    if without.iter().any(|w| w == source) {
        return Err(StoreError::BadSchedule(format!(
            "source '{source}' cannot waive itself: its final chunk says its list is complete and its replay follows; remove it from without_sources"
        )));
    }
    for (i, e) in entries.iter().enumerate() {
        let entry = |err| StoreError::ScheduleEntry {
            index: i,
            table: e.table.clone(),
            key: e.key.clone(),
            error: Box::new(err),
        };
        schema.table(&e.table).map_err(entry)?;
        validate_key(&e.key).map_err(entry)?;
        if e.through_seq == 0 {
            return Err(StoreError::BadSchedule(format!(
                "entry {i} ({}/{:?}): through_seq must be 1 or more: the seq of the last order of this source that changed the key (seqs start at 1); nothing of the chunk was taken",
                e.table, e.key
            )));
        }
    }
    Ok(())
}

/// Why a waiver of `source` (a final chunk's `without_sources`) is
/// refused: no such source in the restored data, or (`known`) one that
/// sent its own final chunk, whose replay is under way: waived, its keys
/// would lose their flags before their difference data arrived.
pub fn waiver_refused(source: &str, known: bool) -> StoreError {
    StoreError::BadSchedule(if known {
        format!("source '{source}' already sent its final chunk and is being replayed; a waiver would drop the flags of keys still waiting for their data. Remove it from without_sources")
    } else {
        format!("source '{source}' had no applied orders in the restored data, so there is nothing to waive; remove it from without_sources")
    })
}

/// The results of a group whose transaction did not commit (or, with the
/// connection lost, whose outcome is unknown): every batch not refused on
/// its own fails with the group's error. A fenced writer (`NotPrimary`),
/// an unreachable engine (`Unavailable`) and a full disk (`Full`) are
/// passed on as they are, so each batch is answered for what happened;
/// anything else is a failed transaction.
pub fn group_failed(
    out: Vec<Option<Result<ApplyOutcome, StoreError>>>,
    cause: StoreError,
) -> Vec<Result<ApplyOutcome, StoreError>> {
    let msg = cause.to_string();
    let each = || match &cause {
        StoreError::NotPrimary => StoreError::NotPrimary,
        StoreError::Unavailable(detail) => StoreError::Unavailable(detail.clone()),
        StoreError::Full(detail) => StoreError::Full(detail.clone()),
        _ => StoreError::Engine(format!(
            "the transaction of this batch's group failed ({msg}); nothing of the batch was applied"
        )),
    };
    out.into_iter()
        .map(|r| match r {
            // Refused on its own (invalid, a conflict): that answer stands.
            Some(Err(e)) if !matches!(e, StoreError::Engine(_)) => Err(e),
            _ => Err(each()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source with a control character is an invalid order, and says
    /// why (not that its length is wrong).
    #[test]
    fn a_source_with_a_control_character_is_named_as_such() {
        let order = Order {
            source: "a\0b".into(),
            seq: 1,
            table: "subscriber".into(),
            key: "k".into(),
            op: Op::Upsert,
            fields: Default::default(),
            origin: None,
        };
        let err = validate_batch(&Schema::default_schema(), &[order]).unwrap_err();
        let api = tidemark_api::ApiError::from(match err {
            StoreError::Invalid { error, .. } => *error,
            other => panic!("{other:?}"),
        });
        assert_eq!(api.code, tidemark_api::ErrorCode::InvalidOrder);
        assert!(api.message.contains("control character"), "{}", api.message);
    }
}
