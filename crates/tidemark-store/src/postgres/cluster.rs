//! The lease and the member list of several DB-server instances on one
//! PostgreSQL (S3, S5, S8, S10).
//!
//! Invariants:
//! - One row, `tm_lease`, names the primary and its *term*. The term only
//!   grows: every change of holder increments it.
//! - Expiry is judged by PostgreSQL's clock (`now()`), never by an
//!   instance's, so clock skew between instances cannot make two holders.
//! - Fencing: once [`PgStore::set_fence`] is set, every write transaction
//!   first takes the lease row `FOR KEY SHARE` and checks its term and
//!   holder (see `write.rs`). Changing the holder first takes the row
//!   `FOR UPDATE` in its own transaction, so it waits for every write
//!   transaction of the old term to end, and every later one of the old
//!   holder finds the new term and commits nothing. Two writing primaries
//!   are impossible by construction. A renewal changes only the expiry (no
//!   `FOR UPDATE`): it never waits for write transactions, so overlapping
//!   ones (pipelined commits) cannot starve it.

use super::{engine_error, PgStore};
use crate::StoreError;
use std::sync::atomic::Ordering;

pub(super) const CLUSTER_DDL: &str = "
CREATE TABLE IF NOT EXISTS tm_lease (id integer PRIMARY KEY CHECK (id = 1), term bigint NOT NULL, holder text, url text, expires_at timestamptz NOT NULL);
INSERT INTO tm_lease (id, term, holder, url, expires_at) VALUES (1, 0, NULL, NULL, now()) ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS tm_members (url text PRIMARY KEY, id text NOT NULL, role text NOT NULL, term bigint NOT NULL, version text NOT NULL, schema_version bigint NOT NULL, started_at timestamptz NOT NULL, heartbeat timestamptz NOT NULL, quiesce text, services text);
CREATE TABLE IF NOT EXISTS tm_vouches (id text PRIMARY KEY, seen_seq bigint NOT NULL, shared_gen bigint NOT NULL, expires_at timestamptz NOT NULL);
INSERT INTO tm_meta (name, value) VALUES ('shared_gen', '0') ON CONFLICT (name) DO NOTHING;
";

/// What a primary must wait for before it acknowledges (see
/// [`PgStore::vouch_check`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VouchCheck {
    /// The lowest change-log seq published among live vouches, if any.
    pub seen_seq: Option<u64>,
    /// The lowest shared-state generation followed among live vouches.
    pub shared_gen: Option<u64>,
}

/// The payload of a notice that a standby renewed its vouch.
pub const VOUCH_NOTICE: &str = "vouch";

/// The lease as the database holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub term: u64,
    /// The instance id of the primary, if any holds it.
    pub holder: Option<String>,
    /// The primary's advertised URL.
    pub url: Option<String>,
    /// Milliseconds until it expires (negative: expired).
    pub expires_in_ms: i64,
}

impl Lease {
    /// Whether `me` holds it now, by the database's clock.
    pub fn held_by(&self, me: &str) -> bool {
        self.holder.as_deref() == Some(me) && self.expires_in_ms > 0
    }
}

/// One instance, as it last reported itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Member {
    pub id: String,
    pub url: String,
    pub role: String,
    pub term: u64,
    /// The program version it runs.
    pub version: String,
    pub schema_version: u64,
    pub started_at: String,
    pub heartbeat: String,
    /// Milliseconds since its last heartbeat, by the database's clock.
    pub heartbeat_age_ms: i64,
    /// Its quiesce notice, if any (JSON).
    pub quiesce: Option<String>,
    /// The service servers whose watch streams are open at it, with the
    /// schema versions they reported (JSON), if any.
    pub services: Option<String>,
}

/// What an instance reports of itself on every heartbeat.
#[derive(Debug, Clone)]
pub struct MemberReport<'a> {
    pub id: &'a str,
    pub url: &'a str,
    pub role: &'a str,
    pub term: u64,
    pub version: &'a str,
    pub schema_version: u64,
    pub quiesce: Option<String>,
    pub services: Option<String>,
}

fn lease_from(row: &tokio_postgres::Row) -> Lease {
    Lease {
        term: row.get::<_, i64>(0) as u64,
        holder: row.get(1),
        url: row.get(2),
        expires_in_ms: row.get::<_, f64>(3) as i64,
    }
}

const LEASE_COLUMNS: &str =
    "term, holder, url, (extract(epoch from (expires_at - now())) * 1000)::float8";

/// A transaction that may change the lease's holder: it holds the lease row
/// `FOR UPDATE`, so every write transaction of the old term has ended, and
/// none of the old holder's can begin until it commits. The change itself
/// must be its next statement, which sees the row as it is now.
async fn holder_change(
    client: &mut deadpool_postgres::Client,
) -> Result<deadpool_postgres::Transaction<'_>, StoreError> {
    let tx = client.transaction().await.map_err(engine_error)?;
    tx.execute("SELECT 1 FROM tm_lease WHERE id = 1 FOR UPDATE", &[])
        .await
        .map_err(engine_error)?;
    Ok(tx)
}

impl PgStore {
    /// Makes every later write transaction check that `holder` holds the
    /// lease at `term` (`None`: this instance may not write at all).
    pub fn set_fence(&self, fence: Option<(u64, String)>) {
        *self.inner.fence.write() = fence;
        self.inner.fenced.store(true, Ordering::SeqCst);
    }

    /// The lease now.
    pub async fn lease(&self) -> Result<Lease, StoreError> {
        let client = self.lease_client().await?;
        let row = client
            .query_one(
                &format!("SELECT {LEASE_COLUMNS} FROM tm_lease WHERE id = 1"),
                &[],
            )
            .await
            .map_err(engine_error)?;
        Ok(lease_from(&row))
    }

    /// Takes the lease for `me` if it is free or expired, or already ours;
    /// returns the new lease (a new term) or `None` if another holds it.
    /// Waits for the old holder's write transactions to end (fencing).
    pub async fn lease_acquire(
        &self,
        me: &str,
        url: &str,
        ttl_ms: u64,
    ) -> Result<Option<Lease>, StoreError> {
        let mut client = self.lease_client().await?;
        let tx = holder_change(&mut client).await?;
        let row = tx
            .query_opt(
                &format!(
                    "UPDATE tm_lease SET term = term + 1, holder = $1, url = $2, expires_at = now() + make_interval(secs => $3::float8 / 1000) \
                     WHERE id = 1 AND (holder IS NULL OR expires_at < now()) RETURNING {LEASE_COLUMNS}"
                ),
                &[&me, &url, &(ttl_ms as f64)],
            )
            .await
            .map_err(engine_error)?;
        tx.commit().await.map_err(engine_error)?;
        Ok(row.as_ref().map(lease_from))
    }

    /// Extends the lease `me` holds at `term`; false if it was lost.
    pub async fn lease_renew(&self, me: &str, term: u64, ttl_ms: u64) -> Result<bool, StoreError> {
        let client = self.lease_client().await?;
        let n = client
            .execute(
                "UPDATE tm_lease SET expires_at = now() + make_interval(secs => $3::float8 / 1000) \
                 WHERE id = 1 AND term = $1 AND holder = $2 AND expires_at > now()",
                &[&(term as i64), &me, &(ttl_ms as f64)],
            )
            .await
            .map_err(engine_error)?;
        Ok(n == 1)
    }

    /// Hands the lease `me` holds at `term` to `to` (a planned switchover):
    /// one step, under a new term. Waits for our write transactions of
    /// `term` to end; after it, none of ours can commit. False if we no
    /// longer held it.
    pub async fn lease_hand_over(
        &self,
        me: &str,
        term: u64,
        to: &str,
        to_url: &str,
        ttl_ms: u64,
    ) -> Result<bool, StoreError> {
        // Our groups overlap without a break under load, each holding the
        // row FOR KEY SHARE, and key-share locks never queue behind the
        // FOR UPDATE below: drain them and hold new ones back first.
        let mut client = self.lease_client().await?;
        let _alone = self.alone().await;
        let tx = holder_change(&mut client).await?;
        let n = tx
            .execute(
                "UPDATE tm_lease SET term = term + 1, holder = $3, url = $4, expires_at = now() + make_interval(secs => $5::float8 / 1000) \
                 WHERE id = 1 AND term = $1 AND holder = $2",
                &[&(term as i64), &me, &to, &to_url, &(ttl_ms as f64)],
            )
            .await
            .map_err(engine_error)?;
        tx.commit().await.map_err(engine_error)?;
        Ok(n == 1)
    }

    /// Gives up the lease `me` holds at `term` at once (a clean shutdown),
    /// so a standby need not wait for it to expire.
    pub async fn lease_release(&self, me: &str, term: u64) -> Result<bool, StoreError> {
        let mut client = self.lease_client().await?;
        let tx = holder_change(&mut client).await?;
        let n = tx
            .execute(
                "UPDATE tm_lease SET term = term + 1, holder = NULL, url = NULL, expires_at = now() WHERE id = 1 AND term = $1 AND holder = $2",
                &[&(term as i64), &me],
            )
            .await
            .map_err(engine_error)?;
        tx.commit().await.map_err(engine_error)?;
        Ok(n == 1)
    }

    /// Records this instance's heartbeat.
    pub async fn heartbeat(&self, m: &MemberReport<'_>) -> Result<(), StoreError> {
        let client = self.lease_client().await?;
        client
            .execute(
                "INSERT INTO tm_members (id, url, role, term, version, schema_version, started_at, heartbeat, quiesce, services) \
                 VALUES ($1, $2, $3, $4, $5, $6, now(), now(), $7, $8) \
                 ON CONFLICT (url) DO UPDATE SET id = excluded.id, started_at = CASE WHEN tm_members.id = excluded.id THEN tm_members.started_at ELSE now() END, role = excluded.role, term = excluded.term, \
                 version = excluded.version, schema_version = excluded.schema_version, heartbeat = now(), quiesce = excluded.quiesce, services = excluded.services",
                &[
                    &m.id,
                    &m.url,
                    &m.role,
                    &(m.term as i64),
                    &m.version,
                    &(m.schema_version as i64),
                    &m.quiesce,
                    &m.services,
                ],
            )
            .await
            .map_err(engine_error)?;
        Ok(())
    }

    /// Forgets an instance (it stopped cleanly).
    pub async fn leave(&self, id: &str) -> Result<(), StoreError> {
        let client = self.lease_client().await?;
        client
            .execute("DELETE FROM tm_members WHERE id = $1", &[&id])
            .await
            .map_err(engine_error)?;
        client
            .execute("DELETE FROM tm_vouches WHERE id = $1", &[&id])
            .await
            .map_err(engine_error)?;
        Ok(())
    }

    /// Every instance that reported within `within_ms`, oldest first.
    pub async fn members(&self, within_ms: u64) -> Result<Vec<Member>, StoreError> {
        let client = self.lease_client().await?;
        let rows = client
            .query(
                "SELECT id, url, role, term, version, schema_version, to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"'), \
                 to_char(heartbeat AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"'), \
                 (extract(epoch from (now() - heartbeat)) * 1000)::float8, quiesce, services \
                 FROM tm_members WHERE heartbeat > now() - make_interval(secs => $1::float8 / 1000) ORDER BY started_at, id",
                &[&(within_ms as f64)],
            )
            .await
            .map_err(engine_error)?;
        Ok(rows
            .iter()
            .map(|r| Member {
                id: r.get(0),
                url: r.get(1),
                role: r.get(2),
                term: r.get::<_, i64>(3) as u64,
                version: r.get(4),
                schema_version: r.get::<_, i64>(5) as u64,
                started_at: r.get(6),
                heartbeat: r.get(7),
                heartbeat_age_ms: r.get::<_, f64>(8) as i64,
                quiesce: r.get(9),
                services: r.get(10),
            })
            .collect())
    }

    /// A standby's vouch (S3, P9): it has published every change up to
    /// `seen_seq` and followed the shared state up to `shared_gen`, and
    /// vouches so for `ttl_ms` by the database's clock. True if its row was
    /// live when this ran, so the vouch went on without a break. Wakes the
    /// primary's waiting commits ([`VOUCH_NOTICE`]).
    pub async fn vouch_renew(
        &self,
        me: &str,
        seen_seq: u64,
        shared_gen: u64,
        ttl_ms: u64,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "WITH old AS (SELECT expires_at > clock_timestamp() AS live FROM tm_vouches WHERE id = $1) \
                 INSERT INTO tm_vouches (id, seen_seq, shared_gen, expires_at) \
                 VALUES ($1, $2, $3, clock_timestamp() + make_interval(secs => $4::float8 / 1000)) \
                 ON CONFLICT (id) DO UPDATE SET seen_seq = excluded.seen_seq, shared_gen = excluded.shared_gen, expires_at = excluded.expires_at \
                 RETURNING coalesce((SELECT live FROM old), false), pg_notify($5, $6)::text",
                &[
                    &me,
                    &(seen_seq as i64),
                    &(shared_gen as i64),
                    &(ttl_ms as f64),
                    &self.channel(),
                    &VOUCH_NOTICE,
                ],
            )
            .await
            .map_err(engine_error)?;
        Ok(row.get(0))
    }

    /// The shared state's generation: every write of it (recovery state,
    /// flags, tokens, schema) adds one, in its own transaction.
    pub async fn shared_gen(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT value::bigint FROM tm_meta WHERE name = 'shared_gen'",
                &[],
            )
            .await
            .map_err(engine_error)?;
        Ok(row.map_or(0, |r| r.get::<_, i64>(0) as u64))
    }

    /// Withdraws `me`'s vouch (it became the primary, or stops).
    pub async fn vouch_drop(&self, me: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute("DELETE FROM tm_vouches WHERE id = $1", &[&me])
            .await
            .map_err(engine_error)?;
        Ok(())
    }

    /// The live vouches of every instance but `me`, a row counting as live
    /// until `grace_ms` past its expiry (a renewal that ran before the
    /// expiry may become visible only after it). A primary acknowledges a
    /// commit only once each covers it.
    pub async fn vouch_check(&self, me: &str, grace_ms: u64) -> Result<VouchCheck, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT min(seen_seq), min(shared_gen) FROM tm_vouches \
                 WHERE id <> $1 AND expires_at + make_interval(secs => $2::float8 / 1000) > clock_timestamp()",
                &[&me, &(grace_ms as f64)],
            )
            .await
            .map_err(engine_error)?;
        Ok(VouchCheck {
            seen_seq: row.get::<_, Option<i64>>(0).map(|v| v as u64),
            shared_gen: row.get::<_, Option<i64>>(1).map(|v| v as u64),
        })
    }

    /// Drops vouches expired for over a minute (instances gone).
    pub async fn vouch_prune(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM tm_vouches WHERE expires_at < clock_timestamp() - interval '1 minute'",
                &[],
            )
            .await
            .map_err(engine_error)?;
        Ok(())
    }

    /// Re-reads what another instance may have changed: the flag count and
    /// the schema (a standby, or an instance just promoted).
    pub async fn refresh_shared(&self) -> Result<(), StoreError> {
        self.reload_all().await
    }
}

impl PgStore {
    /// A name for this store that every instance reads alike, made once:
    /// watch event ids carry it, so they mean the same on each instance.
    pub async fn cluster_id(&self) -> Result<String, StoreError> {
        let client = self.client().await?;
        let fresh = format!("c{:016x}", rand_id());
        client
            .execute(
                "INSERT INTO tm_meta (name, value) VALUES ('cluster_id', $1) ON CONFLICT (name) DO NOTHING",
                &[&fresh],
            )
            .await
            .map_err(engine_error)?;
        let row = client
            .query_one("SELECT value FROM tm_meta WHERE name = 'cluster_id'", &[])
            .await
            .map_err(engine_error)?;
        Ok(row.get(0))
    }

    /// The NOTIFY channel of this store's commits (the payload: the seq
    /// reached, or [`SHARED_NOTICE`]).
    pub(crate) fn channel(&self) -> String {
        format!("tidemark_changes_{}", self.inner.schema_name)
    }

    /// Listens for this store's commits on a connection of its own: a
    /// [`Notice`] arrives on the receiver after each commit and shared
    /// write (this instance's own among them), and after each standby's
    /// vouch renewal. Only a wake-up:
    /// notifications are lost with a dropped connection (the receiver then
    /// closes) or a full queue, so callers poll as well.
    pub async fn listen_commits(
        &self,
        url: &str,
    ) -> Result<tokio::sync::mpsc::Receiver<Notice>, StoreError> {
        use futures::StreamExt;
        let (client, mut conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .map_err(engine_error)?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        let (up_tx, up_rx) = tokio::sync::oneshot::channel::<()>();
        let closed = tx.clone();
        tokio::spawn(async move {
            let _up = up_tx;
            while let Some(m) = messages.next().await {
                match m {
                    Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                        let _ = tx.try_send(match n.payload() {
                            SHARED_NOTICE => Notice::Shared,
                            VOUCH_NOTICE => Notice::Vouch,
                            _ => Notice::Commit,
                        });
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "PostgreSQL LISTEN connection ended");
                        break;
                    }
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN \"{}\"", self.channel()))
            .await
            .map_err(engine_error)?;
        // The client lives until the listener is dropped or the connection ends.
        tokio::spawn(async move {
            tokio::select! {
                _ = closed.closed() => {}
                _ = up_rx => {}
            }
            drop(client);
        });
        Ok(rx)
    }
}

/// The payload of a notice that the shared state changed.
pub const SHARED_NOTICE: &str = "shared";

/// What another instance did (see [`PgStore::listen_commits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// Committed records.
    Commit,
    /// Changed the shared state (recovery state, flags, tokens, schema).
    Shared,
    /// Renewed its vouch (a standby).
    Vouch,
}

/// 64 bits that differ between calls and processes.
fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    h.finish()
}
