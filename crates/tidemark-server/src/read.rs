//! The read rule of the DB server (P1, P3, P8), without HTTP.
//!
//! 1. Register the subscriber's interest in the key *before* reading, so a
//!    change committed after the read is always pushed to it.
//! 2. Outside recovery, answer from the read cache, or read the store and
//!    fill the cache only if no commit touched the key meanwhile.
//! 3. During recovery, read the store; the answer is `recovering` if the
//!    key is flagged or the whole schedule list has not arrived (blanket).
//!    A recovering answer is never cached.

use crate::read_cache::Cached;
use crate::state::AppState;
use bytes::Bytes;
use tidemark_api::{ApiError, RecordAnswer, RecoveryState};
use tidemark_store::StoreError;

/// A read's answer, serialised once.
#[derive(Debug, Clone)]
pub struct ReadAnswer {
    pub found: bool,
    /// The record answer as JSON.
    pub body: Bytes,
    /// The recovering identifier (P8).
    pub recovering: bool,
    pub from_cache: bool,
}

/// Why a read has no answer.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Unknown table, or a key that cannot be.
    #[error(transparent)]
    Input(#[from] ApiError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn register(app: &AppState, table: &str, key: &str, subscriber: Option<&str>) {
    if let Some(name) = subscriber.filter(|n| tidemark_api::schema::is_service_name(n)) {
        if let Some(id) = app.hub.subscriber_for_read(name) {
            app.hub.register(id, table, key);
        }
    }
}

/// The read cache, where it may answer and be filled: no recovery in
/// progress, and not on a standby. A standby learns of the primary's
/// commits only through its change-log tail, so its cache would lag behind
/// them, and a client that moves between instances could read a record go
/// back in version; a standby reads the store. Taking over as primary
/// catches the tail up to the end of the log (invalidating what changed)
/// before the cache is used again. Nor on a primary that cannot be sure
/// it still holds the lease (cut off from PostgreSQL, paused): another
/// instance may be committing already.
fn usable_cache(app: &AppState) -> Option<&std::sync::Arc<crate::read_cache::ReadCache>> {
    let cache = app.read_cache.as_ref()?;
    if app.recovery.state() != RecoveryState::Normal {
        return None;
    }
    if app
        .cluster
        .as_ref()
        .is_some_and(|c| !c.may_use_read_cache())
    {
        return None;
    }
    Some(cache)
}

/// The read cache's answer, if [`read`] would give it now: valid input, no
/// recovery in progress, a cached answer. Registers `subscriber`'s interest
/// first, like [`read`] (registering twice is harmless). `None`: ask
/// [`read`].
pub fn cached(
    app: &AppState,
    table: &str,
    key: &str,
    subscriber: Option<&str>,
) -> Option<ReadAnswer> {
    let cache = usable_cache(app)?;
    app.store.schema().table(table).ok()?;
    tidemark_api::schema::validate_key(key).ok()?;
    register(app, table, key, subscriber);
    let hit = cache.get(table, key).ok()?;
    Some(ReadAnswer {
        found: hit.found,
        body: hit.body,
        recovering: false,
        from_cache: true,
    })
}

/// Reads `table/key`; with `subscriber`, records first that it holds the key.
pub async fn read(
    app: &AppState,
    table: &str,
    key: &str,
    subscriber: Option<&str>,
) -> Result<ReadAnswer, ReadError> {
    app.store.schema().table(table).map_err(ApiError::from)?;
    tidemark_api::schema::validate_key(key).map_err(ApiError::from)?;
    register(app, table, key, subscriber);
    let cache = usable_cache(app);
    let ticket = match cache.map(|c| c.get(table, key)) {
        Some(Ok(hit)) => {
            return Ok(ReadAnswer {
                found: hit.found,
                body: hit.body,
                recovering: false,
                from_cache: true,
            })
        }
        Some(Err(ticket)) => Some(ticket),
        None => None,
    };
    // The blanket is read *before* the store: it only ever lifts, and it
    // lifts after the final chunk's flags are committed, so if it is off
    // now the read below sees every flag.
    let blanket = app.recovery.blanket();
    let lookup = app.store.get(table, key).await?;
    let recovering = lookup.flagged || blanket;
    let found = lookup.record.is_some();
    let answer = match lookup.record {
        Some(record) => RecordAnswer::found(table, key, record, recovering),
        None => RecordAnswer::missing(table, key, lookup.tombstone, recovering),
    };
    let body = Bytes::from(serde_json::to_vec(&answer).map_err(StoreError::from)?);
    if let (Some(cache), Some(ticket), false) = (cache, ticket, recovering) {
        cache.fill(
            ticket,
            table,
            key,
            Cached {
                found,
                body: body.clone(),
                version: answer.version,
            },
        );
    }
    Ok(ReadAnswer {
        found,
        body,
        recovering,
        from_cache: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{upsert, TestServer};
    use tidemark_api::state::ScheduleEntry;
    use tidemark_store::Store;

    fn plan(a: &ReadAnswer) -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        v["fields"]["plan"].clone()
    }

    #[tokio::test]
    async fn interest_is_registered_before_the_read_and_only_for_valid_input() {
        let t = TestServer::open(async |_: &dyn Store| {}).await;
        let a = read(&t.app, "subscriber", "k", Some("svc-a"))
            .await
            .unwrap();
        assert!(!a.found && !a.recovering);
        let id = t.app.hub.subscriber("svc-a");
        assert!(t.app.hub.holds(id, "subscriber", "k"));
        assert!(matches!(
            read(&t.app, "nope", "k", Some("svc-a")).await,
            Err(ReadError::Input(_))
        ));
        assert!(!t.app.hub.holds(id, "nope", "k"));
    }

    #[tokio::test]
    async fn the_read_cache_serves_only_what_no_commit_changed() {
        let t = TestServer::open(async |s: &dyn Store| {
            s.apply(vec![upsert("o", 1, "k", "a")]).await.unwrap();
        })
        .await;
        let first = read(&t.app, "subscriber", "k", None).await.unwrap();
        assert!(!first.from_cache);
        let second = read(&t.app, "subscriber", "k", None).await.unwrap();
        assert!(second.from_cache && plan(&second) == "a");
        t.app
            .committer
            .submit(vec![upsert("o", 2, "k", "b")])
            .await
            .unwrap();
        let third = read(&t.app, "subscriber", "k", None).await.unwrap();
        assert_eq!((third.from_cache, plan(&third)), (false, "b".into()));
    }

    #[tokio::test]
    async fn during_recovery_answers_are_flagged_and_never_cached() {
        // P8: before the final chunk every read is recovering (blanket);
        // after it only flagged keys are.
        let t = TestServer::open(async |s: &dyn Store| {
            s.apply(vec![upsert("o", 1, "a", "x"), upsert("o", 2, "b", "y")])
                .await
                .unwrap();
            let epoch = s.meta().await.unwrap().epoch;
            s.mark_restored(epoch + 1).await.unwrap();
        })
        .await;
        for _ in 0..2 {
            let a = read(&t.app, "subscriber", "b", None).await.unwrap();
            assert!(
                a.recovering && !a.from_cache,
                "the blanket covers every key"
            );
        }
        let flag = ScheduleEntry {
            table: "subscriber".into(),
            key: "a".into(),
            through_seq: 3,
        };
        t.app
            .recovery
            .schedule(&t.app.hub, "o", vec![flag], true, vec![])
            .await
            .unwrap();
        assert!(
            read(&t.app, "subscriber", "a", None)
                .await
                .unwrap()
                .recovering
        );
        let b = read(&t.app, "subscriber", "b", None).await.unwrap();
        assert!(
            !b.recovering && !b.from_cache,
            "recovery is not over: no cache"
        );
    }
}
