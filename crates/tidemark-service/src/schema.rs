//! Adopting the DB server's schema without a restart (S2), and refusing a
//! schema this build cannot understand (S10).
//!
//! The watcher asks for a refresh on every `hello` (a new stream: the
//! schema may have changed while we were away), `schema` event (a publish)
//! and `epoch` event (a restore brings back its own schema). The worker
//! here then fetches `GET /v1/schema`, checks it, revalidates the cache if
//! the version changed (so records cached before a new column read it as
//! null, as the DB server does), and reports the version it runs
//! (`POST /v1/schema/ack`), which `tidemark schema publish` waits for.
//!
//! A schema with a column type this build does not know is *skew*: the
//! server refuses to start, or, found later, answers reads with
//! `503 schema_skew`, unless started with `--ignore-schema-skew`.

use crate::shared::Shared;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tidemark_api::schema_change::SchemaAck;
use tidemark_api::ColumnType;

/// Checks that every column type of `schema` (as `GET /v1/schema` sends
/// it) is one this build knows. Returns the version, or what it does not
/// understand.
pub fn understand(schema: &serde_json::Value) -> Result<u64, String> {
    let version = schema["version"].as_u64().unwrap_or(0);
    let Some(tables) = schema["tables"].as_object() else {
        return Err(format!(
            "the DB server's schema version {version} has no 'tables' this build can read"
        ));
    };
    for (table, t) in tables {
        for c in t["columns"].as_array().into_iter().flatten() {
            let ty = c["type"].as_str().unwrap_or("");
            if ColumnType::from_name(ty).is_none() {
                return Err(format!(
                    "the DB server runs schema version {version}, whose column '{table}.{}' has type '{ty}', which this tidemark build does not know",
                    c["name"].as_str().unwrap_or("?")
                ));
            }
        }
    }
    Ok(version)
}

fn skew_message(detail: &str) -> String {
    format!("{detail}; upgrade this service server to a tidemark build that knows it, or start it with --ignore-schema-skew to serve records as the DB server sends them")
}

/// Fetches the schema and adopts it. Errors are what to log.
pub async fn adopt(shared: &Shared) -> anyhow::Result<()> {
    let schema: serde_json::Value = shared.client.get_json("/v1/schema").await?;
    let version = match understand(&schema) {
        Ok(v) => {
            if shared.skew.lock().take().is_some() {
                tracing::info!(version = v, "the DB server's schema is understood again");
            }
            v
        }
        Err(detail) if shared.config.ignore_schema_skew => {
            tracing::warn!(%detail, "schema skew ignored (--ignore-schema-skew)");
            schema["version"].as_u64().unwrap_or(0)
        }
        Err(detail) => {
            let msg = skew_message(&detail);
            tracing::error!(%msg, "schema skew: refusing reads");
            *shared.skew.lock() = Some(msg);
            return Ok(());
        }
    };
    // The version is stored after the generation moves (a snapshot reads
    // it first, see `snapshot::save_now`); only this worker adopts.
    let before = shared.schema_version.load(Ordering::SeqCst);
    if before != version {
        if let Some(tables) = schema["tables"].as_object() {
            let gone = shared.cache.retain_tables(|t| tables.contains_key(t));
            if gone > 0 {
                tracing::info!(
                    gone,
                    "cached records of tables the schema no longer has dropped"
                );
            }
        }
    }
    if before != 0 && before != version {
        let generation = shared.cache.bump_generation();
        tracing::info!(
            from = before,
            to = version,
            generation,
            "schema adopted: cached records will be revalidated on their next read"
        );
    } else if before != version {
        tracing::info!(version, "schema adopted");
    }
    shared.schema_version.store(version, Ordering::SeqCst);
    if before != version {
        // After the store: a snapshot records the version (and skips
        // while there is none), so the tick after this one saves.
        shared.changes.fetch_add(1, Ordering::Relaxed);
    }
    // The version only grows (S6, S7), except when a restore had no newer
    // store to carry versions from (the store was lost): say so loudly,
    // and tell the DB server, which shows it in `schema status`. Told at
    // every report until the version is back, so neither a report refused
    // (the stream not yet open there) nor a DB server restarted loses it.
    if before > version {
        shared
            .schema_went_back_from
            .fetch_max(before, Ordering::SeqCst);
        tracing::error!(
            from = before,
            to = version,
            "the DB server's schema went back from version {before} to {version}: a restore brought back an older schema (the store was lost, so no newer version could be carried forward); stage and publish the newer schema again ('tidemark schema stage', 'tidemark schema publish') before 'ops recover' replays orders naming its columns"
        );
    }
    let ran = shared.schema_went_back_from.load(Ordering::SeqCst);
    let previous = (ran > version).then_some(ran);
    let _: serde_json::Value = shared
        .client
        .post_json(
            "/v1/schema/ack",
            &SchemaAck {
                subscriber: shared.config.id.clone(),
                version,
                previous,
            },
        )
        .await?;
    Ok(())
}

/// How long the start waits for the DB server's schema.
const START_CHECK: Duration = Duration::from_secs(5);

/// At start: refuses to run on a schema this build cannot understand. A DB
/// server that cannot be reached is not a refusal (the watcher adopts the
/// schema once it can).
pub async fn check_at_start(shared: &Shared) -> anyhow::Result<()> {
    // Bounded: the listener is bound but answers nothing until this is
    // done, and an instance that takes connections without answering (a
    // paused one) would otherwise hold even `/healthz` for 30 s.
    let read = tokio::time::timeout(START_CHECK, shared.client.get_json("/v1/schema")).await;
    let schema: serde_json::Value = match read {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot read the DB server's schema at start; checking it once the watch stream opens");
            return Ok(());
        }
        Err(_) => {
            tracing::warn!(
                secs = START_CHECK.as_secs(),
                "the DB server did not answer the schema read at start; checking it once the watch stream opens"
            );
            return Ok(());
        }
    };
    match understand(&schema) {
        Ok(_) => Ok(()),
        Err(detail) if shared.config.ignore_schema_skew => {
            tracing::warn!(%detail, "schema skew ignored (--ignore-schema-skew)");
            Ok(())
        }
        Err(detail) => anyhow::bail!("service server refused to start: {}", skew_message(&detail)),
    }
}

/// Adopts the schema each time the watcher asks, until shutdown. A failed
/// adoption (or report) is tried again with backoff until it succeeds, so
/// `tidemark schema publish` does not wait on a report lost in a failover.
pub async fn worker(shared: Arc<Shared>) {
    let mut retry: Option<Duration> = None;
    loop {
        let wait = async {
            match retry {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = shared.schema_refresh.notified() => {}
            _ = wait => {}
        }
        match adopt(&shared).await {
            Ok(()) => retry = None,
            Err(e) => {
                let next = retry.map_or(Duration::from_millis(500), |d| {
                    (d * 2).min(Duration::from_secs(10))
                });
                tracing::warn!(error = %e, retry_in_ms = next.as_millis() as u64, "could not adopt the DB server's schema; retrying");
                retry = Some(next);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_unknown_column_type_is_skew() {
        let ok = json!({"version": 3, "tables": {"subscriber": {"columns": [{"name": "plan", "type": "string"}]}}});
        assert_eq!(understand(&ok), Ok(3));
        let newer = json!({"version": 4, "tables": {"subscriber": {"columns": [{"name": "price", "type": "decimal"}]}}});
        let err = understand(&newer).unwrap_err();
        assert!(
            err.contains("subscriber.price") && err.contains("decimal"),
            "{err}"
        );
    }
}
