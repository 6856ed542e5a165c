//! The quiesce notice (S4): "this server goes offline in N seconds".
//!
//! A notice is announced to every watch stream (service servers show the
//! time left to their users), kept in the store so a restart does not lose
//! it, and cancellable. Once its deadline passes the server is offline:
//! `/readyz`, reads and orders answer `503 quiescing` with `Retry-After`.
//! A server that starts with an expired notice drops it: the restart was
//! the maintenance the notice announced.

use crate::hub::{Hub, Push};
use chrono::{DateTime, Utc};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tidemark_api::event::QuiesceEvent;
use tidemark_api::state::QuiesceNotice;
use tidemark_store::{Store, StoreError};

const NOTE: &str = "quiesce";

/// A notice as a store note holds it (this server's, and a service
/// server's by name: `service_quiesce.rs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Stored {
    pub(crate) deadline: DateTime<Utc>,
    pub(crate) message: String,
}

impl Stored {
    /// As `/v1/state`, events and answers show it, counted down to now.
    pub(crate) fn view(&self) -> QuiesceNotice {
        let left = (self.deadline - Utc::now()).to_std().unwrap_or_default();
        QuiesceNotice::with_left(self.deadline.to_rfc3339(), left, self.message.clone())
    }
}

/// The notice in force, if any.
#[derive(Debug, Default)]
pub struct Quiesce {
    notice: RwLock<Option<Stored>>,
    /// The store note it lives under: one per instance of a cluster.
    note: String,
}

impl Quiesce {
    /// The notice of this server; `instance` names it within a cluster
    /// (each instance has its own notice).
    pub async fn load(store: &dyn Store, instance: Option<&str>) -> Result<Self, StoreError> {
        let note = match instance {
            Some(url) => format!("{NOTE}@{url}"),
            None => NOTE.to_owned(),
        };
        let stored = match store.note(&note).await? {
            Some(text) => serde_json::from_str::<Stored>(&text).ok(),
            None => None,
        };
        let notice = match stored {
            Some(s) if s.deadline > Utc::now() => Some(s),
            Some(_) => {
                tracing::info!("dropping an expired quiesce notice from before the restart");
                store.set_note(&note, None).await?;
                None
            }
            None => None,
        };
        Ok(Self {
            notice: RwLock::new(notice),
            note,
        })
    }

    /// The notice for `/v1/state` and events.
    pub fn notice(&self) -> Option<QuiesceNotice> {
        self.notice.read().as_ref().map(Stored::view)
    }

    /// True once a notice's deadline has passed: the server is offline.
    pub fn offline(&self) -> bool {
        self.notice
            .read()
            .as_ref()
            .is_some_and(|s| s.deadline <= Utc::now())
    }

    /// Announces that the server goes offline in `seconds`.
    pub async fn announce(
        &self,
        store: &dyn Store,
        hub: &Hub,
        seconds: u64,
        message: String,
    ) -> Result<QuiesceNotice, StoreError> {
        let stored = Stored {
            deadline: Utc::now() + chrono::Duration::seconds(seconds as i64),
            message,
        };
        store
            .set_note(&self.note, Some(serde_json::to_string(&stored)?))
            .await?;
        *self.notice.write() = Some(stored);
        let notice = self.notice().expect("just set");
        // Debug-quoted: an operator's message must not forge log lines.
        tracing::warn!(seconds, notice = ?notice.message, deadline = %notice.deadline, "quiesce notice sent");
        hub.publish(Push::Quiesce(QuiesceEvent {
            notice: Some(notice.clone()),
            cancelled: false,
        }));
        Ok(notice)
    }

    /// Cancels the notice in force. Returns false if there was none.
    pub async fn cancel(&self, store: &dyn Store, hub: &Hub) -> Result<bool, StoreError> {
        if self.notice.read().is_none() {
            return Ok(false);
        }
        store.set_note(&self.note, None).await?;
        *self.notice.write() = None;
        tracing::info!("quiesce notice cancelled: the server stays online");
        hub.publish(Push::Quiesce(QuiesceEvent {
            notice: None,
            cancelled: true,
        }));
        Ok(true)
    }
}
