//! The resume floor across restarts (P3, P9): no stream resumes from an id
//! given before a revalidation was pushed (see `hub.rs`). The floor lives
//! in memory; a process that starts during a recovery learns it from a
//! note the last push of the recovery left in the store.
//!
//! Invariant: the note names the floor in force after the push and the
//! store's `flagged_total` and epoch then. Keys flagged since (in another
//! epoch too) may have been pushed as `flags_added` by a process that died
//! before writing the note, so the note no longer holds: nothing given up
//! to the store's position resumes. With nothing ever flagged in this
//! recovery, no `flags_added` was pushed at all.

use crate::hub::Hub;
use tidemark_store::{RecoveryMeta, Store, StoreError, StoreMeta};

const NOTE: &str = "resume_floor";

/// What the note holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Kept {
    floor: u64,
    flagged_total: u64,
    epoch: u64,
}

impl Kept {
    fn parse(text: &str) -> Option<Kept> {
        let mut it = text.split(' ').map(str::parse::<u64>);
        let kept = Kept {
            floor: it.next()?.ok()?,
            flagged_total: it.next()?.ok()?,
            epoch: it.next()?.ok()?,
        };
        it.next().is_none().then_some(kept)
    }

    fn text(&self) -> String {
        format!("{} {} {}", self.floor, self.flagged_total, self.epoch)
    }
}

/// The floor a process starting during a recovery sets, from the note.
fn at_start(note: Option<&str>, meta: &StoreMeta, recovery: &RecoveryMeta) -> u64 {
    match note.and_then(Kept::parse) {
        Some(k) if k.flagged_total == recovery.flagged_total && k.epoch == meta.epoch => k.floor,
        _ if recovery.flagged_total == 0 => 0,
        _ => meta.seq + 1,
    }
}

/// Raises `hub`'s floor for a process starting during a recovery.
pub async fn restore(
    store: &dyn Store,
    hub: &Hub,
    meta: &StoreMeta,
    recovery: &RecoveryMeta,
) -> Result<(), StoreError> {
    let note = store.note(NOTE).await?;
    hub.raise_resume_floor(at_start(note.as_deref(), meta, recovery));
    Ok(())
}

/// Keeps `hub`'s floor after a push of the recovery, as of `recovery`'s
/// flags in `epoch`. A failure only makes a later start more careful.
pub async fn keep(store: &dyn Store, hub: &Hub, epoch: u64, recovery: &RecoveryMeta) {
    let kept = Kept {
        floor: hub.resume_floor(),
        flagged_total: recovery.flagged_total,
        epoch,
    };
    if let Err(e) = store.set_note(NOTE, Some(kept.text())).await {
        tracing::warn!(error = %e, "could not keep the resume floor; a restart during this recovery makes every service server revalidate");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(seq: u64, epoch: u64) -> StoreMeta {
        StoreMeta {
            epoch,
            seq,
            schema_version: 1,
            log_floor: 1,
        }
    }

    fn flagged(total: u64) -> RecoveryMeta {
        RecoveryMeta {
            state: tidemark_api::RecoveryState::Recovering,
            schedule_final: true,
            complete_requested: false,
            started_at: None,
            flagged_total: total,
            remaining: total,
            settled: 0,
            waiting_for_sources: vec![],
            waived_sources: vec![],
        }
    }

    #[test]
    fn a_start_keeps_the_noted_floor_only_while_no_flag_was_added_since() {
        let note = Kept {
            floor: 40,
            flagged_total: 7,
            epoch: 3,
        }
        .text();
        assert_eq!(Kept::parse(&note).map(|k| k.floor), Some(40));
        assert_eq!(at_start(Some(&note), &meta(90, 3), &flagged(7)), 40);
        // Flagged since: a flags_added may have gone out unnoted.
        assert_eq!(at_start(Some(&note), &meta(90, 3), &flagged(9)), 91);
        // Another restore since.
        assert_eq!(at_start(Some(&note), &meta(90, 4), &flagged(7)), 91);
        assert_eq!(at_start(None, &meta(90, 3), &flagged(7)), 91);
        assert_eq!(at_start(Some("40 7"), &meta(90, 3), &flagged(7)), 91);
        assert_eq!(at_start(Some("40 7 3 1"), &meta(90, 3), &flagged(7)), 91);
        // Nothing flagged in this recovery: nothing was pushed.
        assert_eq!(at_start(None, &meta(90, 3), &flagged(0)), 0);
    }
}
