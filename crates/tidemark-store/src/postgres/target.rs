//! A PostgreSQL schema as the target of a restore (B3, B4), and the lock
//! that keeps restores and running servers apart.
//!
//! Invariants:
//! - A running DB server holds a *shared* advisory lock on its schema
//!   ([`PgStore::hold_server_lock`]) for as long as it runs; a restore takes
//!   the same lock *exclusively* for its whole run. So a restore is refused
//!   while any server uses the schema, and a server cannot start during a
//!   restore. PostgreSQL drops a dead session's locks: a `kill -9`ed holder
//!   never leaves it stuck.
//! - PostgreSQL also drops the lock when it restarts under a running server:
//!   the server's store then refuses use (unavailable) until a new
//!   connection holds the lock again; if a restore took it meanwhile, the
//!   store refuses everything until the server restarts.
//! - The restored data is staged in a schema of its own and swapped in by
//!   one transaction ([`super::snapshot::swap_in`]).

use super::{engine_error, PgStore};
use crate::store::Store;
use crate::StoreError;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

const LOCK_KEY: &str = "hashtext('tidemark:' || $1)";

/// No server lock asked for (tools, tests): the store is always usable.
pub(super) const LOCK_NOT_WANTED: u8 = 0;
/// The server lock is held.
pub(super) const LOCK_HELD: u8 = 1;
/// The lock's connection broke; it is being re-taken. Meanwhile a restore
/// could start, so the store refuses use (as unavailable: retry).
pub(super) const LOCK_RETAKING: u8 = 2;
/// A restore took the lock while it was down: this process's view of the
/// store may be stale, so it refuses everything until restarted.
pub(super) const LOCK_LOST_TO_RESTORE: u8 = 3;

/// Whether the store may be used now, as the server lock allows.
pub(super) fn check_lock(inner: &super::Inner) -> Result<(), StoreError> {
    match inner.lock_state.load(Ordering::SeqCst) {
        LOCK_RETAKING => Err(StoreError::Unavailable(format!(
            "the connection to PostgreSQL broke; re-taking this server's lock on schema '{}' before serving again",
            inner.schema_name
        ))),
        LOCK_LOST_TO_RESTORE => Err(StoreError::Refused(format!(
            "a restore took PostgreSQL schema '{}' while this server was reconnecting; its view of the data may be stale: restart this server",
            inner.schema_name
        ))),
        _ => Ok(()),
    }
}

/// A connection, and a task that ends when the connection does.
async fn connect_watched(
    url: &str,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), StoreError> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(engine_error)?;
    let ended = tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "PostgreSQL lock connection ended");
        }
    });
    Ok((client, ended))
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, StoreError> {
    Ok(connect_watched(url).await?.0)
}

/// Who holds `schema`'s server lock, as PostgreSQL sees it: the sessions
/// holding it and where from (every instance of a cluster holds one), and
/// the pid the instance started last recorded.
async fn holders(client: &tokio_postgres::Client, schema: &str) -> String {
    let sessions = client
        .query_one(
            &format!(
                "SELECT count(*), coalesce(string_agg(DISTINCT coalesce(host(a.client_addr), 'a local socket'), ', '), '') \
                 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
                 WHERE l.locktype = 'advisory' AND l.granted AND l.pid <> pg_backend_pid() \
                 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                 AND l.classid::bigint = (({LOCK_KEY})::bigint >> 32) & 4294967295 \
                 AND l.objid::bigint = ({LOCK_KEY})::bigint & 4294967295"
            ),
            &[&schema],
        )
        .await
        .ok()
        .map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1)));
    let last = client
        .query_opt(
            &format!("SELECT value FROM \"{schema}\".tm_meta WHERE name = 'process'"),
            &[],
        )
        .await
        .ok()
        .flatten()
        .and_then(|r| r.get::<_, Option<String>>(0))
        .and_then(|p| serde_json::from_str::<serde_json::Value>(&p).ok())
        .and_then(|p| p["pid"].as_u64());
    let last = last.map(|p| format!("the instance started last recorded pid {p}"));
    match (sessions, last) {
        (Some((n, from)), last) if n > 0 => {
            let who = if n == 1 {
                "1 PostgreSQL session".to_owned()
            } else {
                format!("{n} PostgreSQL sessions")
            };
            match last {
                Some(last) => format!("{who} from {from} hold it; {last}"),
                None => format!("{who} from {from} hold it"),
            }
        }
        (_, Some(last)) => last,
        _ => "a DB server or another restore".to_owned(),
    }
}

async fn try_lock_shared(
    client: &tokio_postgres::Client,
    schema: &str,
) -> Result<bool, StoreError> {
    Ok(client
        .query_one(
            &format!("SELECT pg_try_advisory_lock_shared({LOCK_KEY})"),
            &[&schema],
        )
        .await
        .map_err(engine_error)?
        .get(0))
}

impl PgStore {
    /// Takes the shared server lock of this store's schema on a connection
    /// of its own, kept for the life of the store. When that connection
    /// breaks (PostgreSQL restarted), the store refuses use until a new
    /// connection has the lock again, so a restore can never slip in under
    /// a running server.
    pub async fn hold_server_lock(&self, url: &str) -> Result<(), StoreError> {
        let (client, ended) = connect_watched(url).await?;
        if !try_lock_shared(&client, &self.inner.schema_name).await? {
            return Err(StoreError::Locked {
                place: format!("PostgreSQL schema '{}'", self.inner.schema_name),
                holder: "a restore in progress".into(),
            });
        }
        // The store was read before the lock: a restore may have swapped
        // in other data (another epoch, flags, schema) since.
        self.reload_all().await?;
        self.inner.lock_state.store(LOCK_HELD, Ordering::SeqCst);
        let task = tokio::spawn(keep_lock(
            Arc::downgrade(&self.inner),
            url.to_owned(),
            client,
            ended,
        ));
        if let Some(old) = self.inner.lock_task.lock().replace(task) {
            old.abort();
        }
        Ok(())
    }
}

/// Holds the lock; after its connection ends, re-takes it on a new one.
async fn keep_lock(
    inner: Weak<super::Inner>,
    url: String,
    client: tokio_postgres::Client,
    mut ended: tokio::task::JoinHandle<()>,
) {
    // Keeps the connection (and with it the lock) open.
    let mut held = Some(client);
    loop {
        let _ = (&mut ended).await;
        let Some(store) = inner.upgrade() else { return };
        if store.closed.load(Ordering::SeqCst) {
            return;
        }
        store.lock_state.store(LOCK_RETAKING, Ordering::SeqCst);
        let schema = store.schema_name.clone();
        drop(store);
        tracing::warn!(schema = %schema, "lost the PostgreSQL connection holding the server lock; re-taking it (orders are refused meanwhile)");
        let mut delay = Duration::from_millis(50);
        let mut told = false;
        loop {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
            let Some(store) = inner.upgrade() else { return };
            let attempt = async {
                let (c, e) = connect_watched(&url).await?;
                if !try_lock_shared(&c, &schema).await? {
                    return Ok(None);
                }
                let restored =
                    restored_meanwhile(&c, &schema, store.epoch.load(Ordering::SeqCst)).await?;
                Ok::<_, StoreError>(Some((c, e, restored)))
            };
            match attempt.await {
                Ok(Some((c, e, false))) => {
                    drop(held.replace(c));
                    ended = e;
                    store.lock_state.store(LOCK_HELD, Ordering::SeqCst);
                    tracing::info!(schema = %schema, "server lock re-taken");
                    break;
                }
                Ok(Some((_, _, true))) => {
                    // A restore ran while the lock was down (every restore
                    // starts a new epoch): what this server holds is stale.
                    store
                        .lock_state
                        .store(LOCK_LOST_TO_RESTORE, Ordering::SeqCst);
                    tracing::error!(schema = %schema, "a restore ran on the schema while this server's lock was down: its data may be stale; it refuses every request until restarted");
                    return;
                }
                Ok(None) => {
                    // Held exclusively: an offline backup, a cleanup or a
                    // restore. Only a restore changes the data, which the
                    // epoch tells once the lock is ours again; until then
                    // requests are refused as unavailable.
                    if !told {
                        told = true;
                        tracing::warn!(schema = %schema, "another process holds the schema's lock (an offline backup, a cleanup or a restore); waiting for it");
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "re-taking the server lock failed; retrying");
                }
            }
        }
    }
}

/// Whether the schema's epoch is no longer `epoch`: a restore ran.
async fn restored_meanwhile(
    client: &tokio_postgres::Client,
    schema: &str,
    epoch: u64,
) -> Result<bool, StoreError> {
    let now: Option<String> = client
        .query_opt(
            &format!("SELECT value FROM \"{schema}\".tm_meta WHERE name = 'epoch'"),
            &[],
        )
        .await
        .map_err(engine_error)?
        .map(|r| r.get(0));
    Ok(now.and_then(|v| v.parse::<u64>().ok()) != Some(epoch))
}

/// What dropping `schema` would take besides Tidemark's own tables (those
/// named `tm_*` and those `tm_tables` lists, with their indexes): other
/// relations and functions in it, and objects elsewhere that depend on
/// its tables (views, foreign keys). Empty if the schema does not exist.
async fn foreign_objects(
    client: &tokio_postgres::Client,
    schema: &str,
) -> Result<Vec<String>, StoreError> {
    let listed = client
        .query_opt(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = 'tm_tables' AND c.relkind = 'r'",
            &[&schema],
        )
        .await
        .map_err(engine_error)?
        .is_some();
    let ours: Vec<String> = if listed {
        client
            .query(&format!("SELECT name FROM \"{schema}\".tm_tables"), &[])
            .await
            .map_err(engine_error)?
            .iter()
            .map(|r| r.get(0))
            .collect()
    } else {
        Vec::new()
    };
    let rows = client
        .query(
            "SELECT format('%s %I', CASE c.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' WHEN 'S' THEN 'sequence' WHEN 'f' THEN 'foreign table' ELSE 'table' END, c.relname) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') \
               AND c.relname NOT LIKE 'tm\\_%' AND NOT (c.relkind = 'r' AND c.relname = ANY($2)) \
             UNION ALL \
             SELECT format('function %I', p.proname) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = $1 \
             UNION ALL \
             SELECT DISTINCT format('%s.%s (depends on %I)', dn.nspname, dc.relname, t.relname) \
             FROM pg_depend d \
             JOIN pg_class t ON t.oid = d.refobjid AND d.refclassid = 'pg_class'::regclass \
             JOIN pg_namespace tn ON tn.oid = t.relnamespace \
             LEFT JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND r.oid = d.objid \
             LEFT JOIN pg_constraint k ON d.classid = 'pg_constraint'::regclass AND k.oid = d.objid \
             JOIN pg_class dc ON dc.oid = coalesce(r.ev_class, k.conrelid) \
             JOIN pg_namespace dn ON dn.oid = dc.relnamespace \
             WHERE tn.nspname = $1 AND dn.nspname <> $1 \
             ORDER BY 1",
            &[&schema, &ours],
        )
        .await
        .map_err(engine_error)?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// A name for the store in PostgreSQL database `url`, schema `schema`, that
/// backups record as their source: the same for every backup of it
/// (offline, safety), and without credentials (a manifest is not a secret).
pub fn source_name(url: &str, schema: &str) -> String {
    use tokio_postgres::config::Host;
    let Ok(config) = url.parse::<tokio_postgres::Config>() else {
        return format!("postgres schema {schema}");
    };
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}:{port}/{} schema {schema}",
        hosts.join(","),
        config.get_dbname().unwrap_or("")
    )
}

/// The longest schema a DB server may live in: a restore stages beside it
/// as `{schema}_restoring`, and its sessions are named
/// [`application_name`], both within PostgreSQL's 63 bytes.
pub const MAX_SCHEMA_LEN: usize = 53;

/// Why `schema` cannot hold a DB server's store (a server and a restore
/// refuse the same names), or `None`.
pub fn unusable_schema(schema: &str) -> Option<String> {
    if !tidemark_api::schema::is_identifier(schema) || schema.len() > MAX_SCHEMA_LEN {
        return Some(format!(
            "--pg-schema '{schema}' is not a schema name Tidemark can use: give lowercase letters, digits and '_', starting with a letter (not 'tm_'), at most {MAX_SCHEMA_LEN} characters (a restore stages beside it as '<name>_restoring')"
        ));
    }
    if schema.ends_with(STAGING_SUFFIX) {
        // A restore into the schema without the suffix would drop it.
        return Some(format!(
            "--pg-schema '{schema}' ends in '{STAGING_SUFFIX}', the name a restore into '{}' stages in and drops: give another name",
            schema.trim_end_matches(STAGING_SUFFIX)
        ));
    }
    None
}

/// What a restore into schema `X` stages in: `X_restoring`.
pub const STAGING_SUFFIX: &str = "_restoring";

/// The `application_name` of the sessions a store on `schema` opens (at
/// most 62 bytes: schema names are at most [`MAX_SCHEMA_LEN`]).
pub fn application_name(schema: &str) -> String {
    format!("tidemark:{schema}")
}

/// How many sessions of a store on `schema` PostgreSQL holds, other than
/// this one's. The lock alone does not tell a live server whose lock's
/// connection is being re-taken (PostgreSQL restarted a moment ago): its
/// pool is connected all the same.
async fn server_sessions(client: &tokio_postgres::Client, schema: &str) -> Result<i64, StoreError> {
    Ok(client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database() AND pid <> pg_backend_pid()",
            &[&application_name(schema)],
        )
        .await
        .map_err(engine_error)?
        .get(0))
}

/// A schema being restored: held exclusively until dropped.
pub struct RestoreTarget {
    url: String,
    schema: String,
    staging: String,
    _lock: tokio_postgres::Client,
}

impl RestoreTarget {
    /// Takes the exclusive lock of `schema`; refused while a DB server (or
    /// another restore) uses it.
    pub async fn lock(url: &str, schema: &str) -> Result<RestoreTarget, StoreError> {
        let client = connect(url).await?;
        let staging = format!("{schema}{STAGING_SUFFIX}");
        // The staging schema is dropped and loaded: held too, so a DB server
        // of an older version that runs on such a name refuses the restore.
        Self::hold(&client, schema).await?;
        Self::hold(&client, &staging).await?;
        Ok(RestoreTarget {
            url: url.to_owned(),
            schema: schema.to_owned(),
            staging,
            _lock: client,
        })
    }

    /// Takes the exclusive lock of `schema` on `client`; refused while a DB
    /// server (or another restore) uses it.
    async fn hold(client: &tokio_postgres::Client, schema: &str) -> Result<(), StoreError> {
        // A DB server killed a moment ago still holds its lock until
        // PostgreSQL sees its connection close: a few tries, briefly.
        let patience = std::time::Instant::now() + std::time::Duration::from_secs(3);
        let got = loop {
            let got: bool = client
                .query_one(
                    &format!("SELECT pg_try_advisory_lock({LOCK_KEY})"),
                    &[&schema],
                )
                .await
                .map_err(engine_error)?
                .get(0);
            if got || std::time::Instant::now() >= patience {
                break got;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        if !got {
            return Err(StoreError::Locked {
                place: format!("PostgreSQL schema '{schema}'"),
                holder: holders(client, schema).await,
            });
        }
        // A server whose lock's connection is down, re-taking it, is still
        // connected (B2, B4); one killed a moment ago is gone once
        // PostgreSQL sees its connections close.
        let patience = std::time::Instant::now() + std::time::Duration::from_secs(3);
        loop {
            let live = server_sessions(client, schema).await?;
            if live == 0 {
                break;
            }
            if std::time::Instant::now() >= patience {
                return Err(StoreError::Locked {
                    place: format!("PostgreSQL schema '{schema}'"),
                    holder: format!(
                        "a DB server whose lock is being re-taken ({live} PostgreSQL sessions named '{}')",
                        application_name(schema)
                    ),
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Refuses a restore that would drop what is not Tidemark's: the swap
    /// drops the live schema and the load the staging one (B4), so neither
    /// may hold anything but Tidemark's own tables (the drops themselves
    /// refuse it too, atomically; this says so before any work), and the
    /// staging schema's name must not be cut to the live one's.
    pub async fn refuse_foreign(&self) -> Result<(), StoreError> {
        if !tidemark_api::schema::is_identifier(&self.staging) {
            // PostgreSQL would cut it to 63 bytes: the live schema's name.
            return Err(StoreError::Refused(format!(
                "a restore stages into schema '{}', which is too long for PostgreSQL (63 bytes); keep --pg-schema to at most {MAX_SCHEMA_LEN} characters",
                self.staging
            )));
        }
        for name in [&self.schema, &self.staging] {
            let foreign = foreign_objects(&self._lock, name).await?;
            if !foreign.is_empty() {
                return Err(StoreError::Refused(format!(
                    "PostgreSQL schema '{name}' holds objects that are not Tidemark's, or that other schemas depend on: {}; a restore replaces the whole schema, so it would drop them. Move them out of the schema, or restore into a schema of Tidemark's own (--pg-schema)",
                    foreign.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// The live store, if the schema holds one.
    pub async fn open_live(&self) -> Result<Option<Arc<dyn Store>>, StoreError> {
        let client = connect(&self.url).await?;
        let exists = client
            .query_opt(
                "SELECT 1 FROM information_schema.tables WHERE table_schema = $1 AND table_name = 'tm_meta'",
                &[&self.schema],
            )
            .await
            .map_err(engine_error)?
            .is_some();
        if !exists {
            return Ok(None);
        }
        Ok(Some(Arc::new(
            PgStore::connect(&self.url, &self.schema).await?,
        )))
    }

    /// Loads the snapshot file into the staging schema.
    pub async fn stage(&self, snapshot: &Path) -> Result<Arc<dyn Store>, StoreError> {
        Ok(Arc::new(
            super::snapshot::load_into(&self.url, &self.staging, snapshot).await?,
        ))
    }

    /// Makes the staged schema the live one, in one transaction.
    pub async fn swap_in(&self) -> Result<(), StoreError> {
        super::snapshot::swap_in(&self.url, &self.staging, &self.schema).await
    }

    /// What backups of it record as their source ([`source_name`]).
    pub fn source_name(&self) -> String {
        source_name(&self.url, &self.schema)
    }

    /// A name for reports.
    pub fn describe(&self) -> String {
        format!("PostgreSQL schema '{}'", self.schema)
    }
}

#[cfg(test)]
mod tests {

    /// A schema a restore stages in (and drops) can hold no store: a
    /// restore into `aud` once dropped a live store in `aud_restoring`.
    #[test]
    fn a_staging_name_is_no_schema_for_a_store() {
        assert!(super::unusable_schema("aud").is_none());
        assert!(super::unusable_schema("restoring").is_none());
        let why = super::unusable_schema("aud_restoring").unwrap();
        assert!(why.contains("'aud'"), "{why}");
    }

    #[test]
    fn a_source_name_has_no_credentials() {
        for url in [
            "postgres://tm:s3cret@db:5433/prod?sslmode=disable",
            "host=db port=5433 user=tm password=s3cret dbname=prod",
            "postgres://db:5433/prod?password=s3cret",
        ] {
            let name = super::source_name(url, "tidemark");
            assert_eq!(name, "postgres://db:5433/prod schema tidemark", "{url}");
        }
    }
}
