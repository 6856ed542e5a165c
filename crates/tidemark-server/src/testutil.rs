//! A DB server's state over a SQLite store in a temporary folder, with its
//! committer running: for unit tests of the read rule, watch streams and
//! recovery, without HTTP.

use crate::config::ServerConfig;
use crate::state::AppState;
use serde_json::json;
use std::sync::Arc;
use tidemark_api::{Op, Order};
use tidemark_store::{SqliteStore, Store};
use tokio_util::sync::CancellationToken;

pub struct TestServer {
    pub app: Arc<AppState>,
    pub store: Arc<dyn Store>,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl TestServer {
    /// A fresh store; `prepare` may change it (orders, a restore) before
    /// the server state is built over it.
    pub async fn open(prepare: impl AsyncFnOnce(&dyn Store)) -> TestServer {
        Self::open_with(ServerConfig::default(), prepare).await
    }

    /// The same, with `config`.
    pub async fn open_with(
        config: ServerConfig,
        prepare: impl AsyncFnOnce(&dyn Store),
    ) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path(), "test").unwrap());
        prepare(store.as_ref()).await;
        let shutdown = CancellationToken::new();
        let (app, worker) = AppState::new(
            store.clone(),
            config,
            "boot1".into(),
            None,
            shutdown.clone(),
        )
        .await
        .unwrap();
        tokio::spawn(worker.run(shutdown.clone()));
        TestServer {
            app,
            store,
            shutdown,
            _dir: dir,
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An upsert of `plan` on `key`.
pub fn upsert(source: &str, seq: u64, key: &str, plan: &str) -> Order {
    Order {
        source: source.into(),
        seq,
        table: "subscriber".into(),
        key: key.into(),
        op: Op::Upsert,
        fields: json!({ "plan": plan })
            .as_object()
            .cloned()
            .unwrap_or_default(),
        origin: None,
    }
}
