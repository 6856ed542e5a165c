//! The store's history id (`HelloEvent::history`): versions compare only
//! within one history. A restore whose live data was lost counts its epoch
//! from the backup's, so a second restore from the same backup reuses an
//! epoch (and its versions); a DB server started over on an empty store
//! begins again at epoch 1. Service servers trust nothing they cached from
//! another history, which could otherwise look newer than the DB server's
//! data (CONTRACT.md: a newer cached copy is kept).
//!
//! Invariant: the id changes exactly when the store is another one, or was
//! restored: it is kept in a note with the epoch and the recovery start
//! (set by every restore) it was made for, and made anew when they differ
//! (a restore) or when there is no note (a new store). Notes travel with
//! backups, so a restored note names its old epoch and start. On
//! PostgreSQL, where several instances start at once after a restore, the
//! id is not drawn but derived from the store's cluster id (made once per
//! store, atomically) and that epoch and start, so every instance tells
//! the same one.

use tidemark_store::{RecoveryMeta, Store, StoreError, StoreMeta};

const NOTE: &str = "history";

/// What the id was made for.
fn mark(meta: &StoreMeta, recovery: &RecoveryMeta) -> String {
    format!(
        "{} {}",
        meta.epoch,
        recovery.started_at.as_deref().unwrap_or("-")
    )
}

/// The id in `note` if it was made for `mark`.
fn id_for<'n>(note: Option<&'n str>, mark: &str) -> Option<&'n str> {
    note?
        .split_once(' ')
        .filter(|(_, m)| *m == mark)
        .map(|(id, _)| id)
}

/// The store's history id: with `cluster_id` (PostgreSQL), derived from it;
/// otherwise made (and noted) if this is a new history.
pub async fn current(
    store: &dyn Store,
    meta: &StoreMeta,
    recovery: &RecoveryMeta,
    cluster_id: Option<&str>,
) -> Result<String, StoreError> {
    let mark = mark(meta, recovery);
    if let Some(cluster) = cluster_id {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(format!("{cluster} {mark}").as_bytes());
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let id = format!("h{hex}");
        // Noted too (every instance derives the same), so backups name the
        // store they were taken of (`backup prune` keeps stores apart).
        let noted = format!("{id} {mark}");
        if store.note(NOTE).await?.as_deref() != Some(noted.as_str()) {
            store.set_note(NOTE, Some(noted)).await?;
        }
        return Ok(id);
    }
    if let Some(id) = id_for(store.note(NOTE).await?.as_deref(), &mark) {
        return Ok(id.to_owned());
    }
    let id = format!("h{:016x}", rand::random::<u64>());
    store.set_note(NOTE, Some(format!("{id} {mark}"))).await?;
    tracing::info!(history = %id, epoch = meta.epoch, "a new store history (a new store, or a restore)");
    // Another instance of a cluster may have noted its own meanwhile: the
    // noted one is the history (a rare race costs service servers one
    // cache refill, nothing else).
    Ok(id_for(store.note(NOTE).await?.as_deref(), &mark)
        .map(str::to_owned)
        .unwrap_or(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::upsert;
    use tidemark_store::SqliteStore;

    /// The id stays across restarts, and changes with a restore, even one
    /// that reuses the epoch, and with a new store.
    #[tokio::test]
    async fn the_history_changes_with_every_restore_and_store_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), "test").unwrap();
        store.apply(vec![upsert("o", 1, "a", "x")]).await.unwrap();
        let now = async |s: &SqliteStore| {
            current(
                s,
                &s.meta().await.unwrap(),
                &s.recovery_meta().await.unwrap(),
                None,
            )
            .await
            .unwrap()
        };
        let first = now(&store).await;
        assert_eq!(now(&store).await, first, "kept across restarts");
        store.mark_restored(2).await.unwrap();
        let restored = now(&store).await;
        assert_ne!(restored, first);
        assert_eq!(now(&store).await, restored);
        // The same epoch again (a second restore from the same backup).
        store.mark_restored(2).await.unwrap();
        assert_ne!(now(&store).await, restored, "an epoch reused");
        let other = tempfile::tempdir().unwrap();
        let fresh = SqliteStore::open(other.path(), "test").unwrap();
        assert_ne!(now(&fresh).await, first, "a new store");
        // Derived from a cluster id: the same on every instance, and new
        // with a restore.
        let derived = async |s: &SqliteStore, c: &str| {
            let (meta, recovery) = (s.meta().await.unwrap(), s.recovery_meta().await.unwrap());
            current(s, &meta, &recovery, Some(c)).await.unwrap()
        };
        let a = derived(&store, "c1").await;
        assert_eq!(derived(&store, "c1").await, a);
        // Noted, so a backup of the store names it.
        let noted = store.note(NOTE).await.unwrap().unwrap();
        assert_eq!(noted.split_whitespace().next(), Some(a.as_str()));
        assert_ne!(derived(&store, "c2").await, a);
        store.mark_restored(2).await.unwrap();
        assert_ne!(derived(&store, "c1").await, a);
    }
}
