//! The audit trail: who did which admin action, and when (`GET /v1/audit`).
//! Kept in the store (the newest 10,000 entries) and written to the log.

use std::sync::Arc;
use tidemark_api::auth::AuditEntry;
use tidemark_store::{Store, StoreError};

/// Restores carry this note over from the live store
/// (`tidemark_backup::access_forward`).
const NOTE: &str = "audit";
const KEEP: usize = 10_000;

pub struct Audit {
    store: Arc<dyn Store>,
    write: tokio::sync::Mutex<()>,
}

impl Audit {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Audit {
            store,
            write: tokio::sync::Mutex::new(()),
        }
    }

    /// Records an action. A failure to record is logged, never hidden.
    pub async fn record(&self, who: &str, action: &str, detail: serde_json::Value) {
        tracing::info!(audit = true, who = %who.escape_debug(), action, detail = %detail, "admin action");
        let entry = AuditEntry {
            at: chrono::Utc::now().to_rfc3339(),
            who: who.to_owned(),
            action: action.to_owned(),
            detail,
        };
        let _w = self.write.lock().await;
        let result = async {
            let mut all = self.list().await?;
            all.push(entry);
            let drop = all.len().saturating_sub(KEEP);
            all.drain(..drop);
            self.store
                .set_note(NOTE, Some(serde_json::to_string(&all)?))
                .await
        }
        .await;
        if let Err(e) = result {
            tracing::error!(error = %e, action, "could not store an audit entry");
        }
    }

    /// Every entry kept, oldest first.
    pub async fn list(&self) -> Result<Vec<AuditEntry>, StoreError> {
        match self.store.note(NOTE).await? {
            Some(text) => Ok(serde_json::from_str(&text)?),
            None => Ok(Vec::new()),
        }
    }
}
