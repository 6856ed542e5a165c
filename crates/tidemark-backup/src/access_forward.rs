//! A restore keeps who may use the server: the live store's tokens, the
//! subscriber names they claimed and the audit log go onto the restored
//! data, as the schema versions do (see [`crate::schema_forward`]).
//!
//! Without this, a restore brought back the backup's tokens: one revoked
//! after the backup (because it leaked) worked again, and tokens created
//! since stopped working. Where the live store is gone (the data directory
//! was lost), the backup's are all there is, and the restore says so.

use tidemark_store::{Store, StoreError};

/// The server's notes about access (see `tidemark-server`'s `auth.rs` and
/// `audit.rs`, which name them).
pub const NOTES: &[&str] = &["tokens", "subscribers", "audit"];

/// The live store's access notes, each as it is (absent included); `None`
/// when they cannot be read.
#[derive(Debug, Clone, Default)]
pub struct LiveAccess(Option<Vec<(&'static str, Option<String>)>>);

/// Reads the live store's access notes. A live store that never had a
/// token (a server started once on the emptied data directory before the
/// restore) gives none: the backup's stay.
pub async fn read(live: &dyn Store) -> LiveAccess {
    let mut notes = Vec::new();
    for name in NOTES {
        match live.note(name).await {
            // No tokens (NOTES[0]): nothing to keep.
            Ok(None) if notes.is_empty() => return LiveAccess(None),
            Ok(v) => notes.push((*name, v)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the live store's tokens; the restored data keeps the backup's: check 'tidemark token list' after the restore");
                return LiveAccess(None);
            }
        }
    }
    LiveAccess(Some(notes))
}

/// Writes the live access notes onto `staged`. Returns false when there was
/// no live store to take them from (the backup's stay).
pub async fn carry(staged: &dyn Store, live: &LiveAccess) -> Result<bool, StoreError> {
    let Some(notes) = &live.0 else {
        return Ok(false);
    };
    for (name, value) in notes {
        staged.set_note(name, value.clone()).await?;
    }
    Ok(true)
}
