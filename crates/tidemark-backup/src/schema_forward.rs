//! A restore keeps the schema version growing (S1, S9): the restored data
//! gets the schema versions the live store published after the backup.
//!
//! Without this, restoring a backup taken before a publish would put the
//! older schema back over the newer one: service servers and the OpS use
//! the newer columns, and `ops recover` would replay orders naming them
//! only to have them refused. The versions are published on the staged
//! copy, in order, before it is swapped in; one that cannot be (a rollback
//! that would drop a column the older data still fills) stops the carry,
//! with a warning, and the operator publishes again.

use tidemark_api::schema_change::SchemaVersionInfo;
use tidemark_store::{Store, StoreError};

/// The live store's schema registry, or nothing if it cannot be read.
pub async fn live_versions(live: &dyn Store) -> Vec<SchemaVersionInfo> {
    match live.schema_versions().await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the live store's schema versions; the restored data keeps its own schema");
            Vec::new()
        }
    }
}

/// Publishes on `staged` every live version newer than its own. Returns
/// the versions carried.
pub async fn carry_forward(
    staged: &dyn Store,
    live: &[SchemaVersionInfo],
) -> Result<Vec<u64>, StoreError> {
    let mut carried = Vec::new();
    let mut newer: Vec<&SchemaVersionInfo> = live
        .iter()
        .filter(|v| v.version > staged.schema().version)
        .collect();
    newer.sort_by_key(|v| v.version);
    for v in newer {
        let at = staged.schema().version;
        if v.version != at + 1 {
            tracing::warn!(
                restored = at,
                next = v.version,
                "the live schema versions have a gap; the restored data keeps version {at}: stage and publish the schema again"
            );
            break;
        }
        let mut schema = v.schema.clone();
        schema.version = v.version;
        match staged.publish_schema(&schema, &v.published_by).await {
            Ok(_) => carried.push(v.version),
            Err(StoreError::SchemaRefused(why)) => {
                tracing::warn!(version = v.version, %why, "a live schema version cannot be carried onto the restored data; it keeps version {at}: stage and publish the schema again");
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(carried)
}
