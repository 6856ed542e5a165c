//! The PostgreSQL engine: everything the embedded engine keeps, in one
//! PostgreSQL schema (`tidemark` by default), through a connection pool.
//!
//! Invariants:
//! - Every table lives in the configured schema (each connection's
//!   `search_path`), so several Tidemark deployments can share a database.
//! - Each commit is one transaction; the seq counter is taken `FOR UPDATE`
//!   inside it (see `write.rs`).
//! - The bootstrap (creating the schema and tables) runs under an advisory
//!   lock, so instances starting together cannot race.
//! - A store left by a newer Tidemark (refused before any DDL touches it),
//!   a PostgreSQL older than 13, or a role without the rights it needs, is
//!   refused with a message that says what to do (naming the GRANT).

mod catalog;
pub mod cluster;
mod flag_page;
mod flags;
mod pipeline;
mod replay;
mod schema_registry;
pub mod snapshot;
pub mod target;
mod write;

use crate::store::{
    ApplyOutcome, Change, Flag, FlagEntry, FlagsAdded, Lookup, ProcessInfo, RecoveryMeta,
    SnapshotInfo, Store, StoreMeta,
};
use crate::StoreError;
use async_trait::async_trait;
use catalog::Catalog;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tidemark_api::schema::is_identifier;
use tidemark_api::{Order, Record, RecoveryState, Schema, Version};

/// The on-disk format this build reads and writes (same numbering as the
/// embedded engine's).
pub const FORMAT_VERSION: u64 = 1;

/// The CTE that counts a change of the shared state (its generation,
/// which standbys register as followed).
macro_rules! count_shared_gen {
    () => {
        "g AS (UPDATE tm_meta SET value = (value::bigint + 1)::text WHERE name = 'shared_gen')"
    };
}

/// Counts a change of the shared state and wakes the other instances to
/// follow it: `$1` the channel, `$2` [`cluster::SHARED_NOTICE`].
const SHARED_CHANGED: &str = concat!("WITH ", count_shared_gen!(), " SELECT pg_notify($1, $2)");

/// Notes the other instances follow (tokens, subscriber bindings): a write
/// of one counts the shared generation and wakes them.
const SHARED_NOTES: &[&str] = &["note.tokens", "note.subscribers"];

/// Columns added to the internal tables since format 1: (table, column,
/// type with its default).
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("tm_changes", "flagged", "boolean NOT NULL DEFAULT false"),
    ("tm_members", "services", "text"),
];
/// How long PostgreSQL lets a pooled connection sit idle inside a transaction.
const IDLE_TX_LIMIT_MS: u64 = 1000;
/// How long PostgreSQL lets a statement of the lease's own connections run,
/// or wait for a lock.
const LEASE_STATEMENT_LIMIT_MS: u64 = 2000;
/// The oldest PostgreSQL this engine runs on.
const MIN_SERVER_VERSION: i32 = 130000;

/// The PostgreSQL engine. Cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    /// The lease's own connections (the lease loop, and the cluster
    /// endpoints' lease and member reads and handovers): a renewal never
    /// waits behind orders and reads for a pooled connection (under load
    /// it used to, past the lease, and the holder stepped down and took
    /// it again).
    lease_pool: Pool,
    schema_name: String,
    catalog: RwLock<Arc<Catalog>>,
    /// Mirrors `tm_meta.epoch`.
    epoch: AtomicU64,
    /// Mirrors `tm_meta.seq` after this process's last commit.
    seq: AtomicU64,
    /// Rows in `tm_flags`: while it is zero, groups skip the flag checks
    /// and may run pipelined. It changes only under the writer lock, after
    /// the commit that changed the rows, and is recounted only with no
    /// group running ([`PgStore::recount_flags`]), so it is exact whenever
    /// the lock is free. (Counted outside the lock, a recount racing a
    /// commit that cleared flags subtracted them twice.)
    flag_rows: AtomicU64,
    /// A commit that changed flags failed with its outcome unknown: the
    /// next recovery read counts them again.
    flags_unknown: AtomicBool,
    /// One writer per process; the database's row lock orders processes.
    /// It also guards where the commit pipeline stands (`pipeline.rs`).
    write: tokio::sync::Mutex<pipeline::Chain>,
    /// A permit per pipelined group running; all of them: none runs.
    running: Arc<tokio::sync::Semaphore>,
    /// A pipelined group failed: the next group runs alone.
    poisoned: AtomicBool,
    closed: AtomicBool,
    /// Set once this store serves one instance of several (see
    /// `cluster.rs`): every write transaction then checks the lease.
    fenced: AtomicBool,
    /// The term and holder id a write transaction must find in the lease;
    /// `None`: this instance may not write.
    fence: RwLock<Option<(u64, String)>>,
    /// The server lock's state (`target::LOCK_*`): whether this store may be
    /// used while a restore could be running (see `target.rs`).
    lock_state: std::sync::atomic::AtomicU8,
    /// The task that holds the server lock and re-takes it after a
    /// reconnect.
    lock_task: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("schema", &self.inner.schema_name)
            .finish()
    }
}

/// A PostgreSQL error as a store error. Connection failures say what to do.
pub(crate) fn engine_error(e: tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        if db.code() == &tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE {
            return StoreError::Refused(format!(
                "PostgreSQL refused: {}; grant the Tidemark user CREATE on the database and USAGE, CREATE on its schema (GRANT CREATE ON DATABASE ... TO ...; GRANT USAGE, CREATE ON SCHEMA ... TO ...), or run it as the owner of both",
                db.message()
            ));
        }
        if db.code() == &tokio_postgres::error::SqlState::DISK_FULL {
            return StoreError::Full(format!("PostgreSQL: {}", db.message()));
        }
        let class = &db.code().code()[..2];
        if class == "57" || class == "08" {
            // Shutdown, crash recovery, or a broken connection.
            return StoreError::Unavailable(format!("PostgreSQL: {}", db.message()));
        }
        return StoreError::Engine(format!("PostgreSQL: {}", db.message()));
    }
    // No answer from the server: the connection broke or never came up.
    StoreError::Unavailable(format!("PostgreSQL: {e}"))
}

/// A pool of at most `size` connections to `config`.
fn build_pool(config: tokio_postgres::Config, size: usize) -> Result<Pool, StoreError> {
    let manager = Manager::from_config(
        config,
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .build()
        .map_err(|e| StoreError::Engine(format!("cannot build the PostgreSQL pool: {e}")))
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    // A refusal by PostgreSQL itself (no such database or role, a bad
    // password) displays as just "db error": name PostgreSQL's reason.
    let refused = match &e {
        deadpool_postgres::PoolError::Backend(pe) => pe.as_db_error().map(|db| {
            format!(
                "PostgreSQL refused the connection: {} (SQLSTATE {})",
                db.message(),
                db.code().code()
            )
        }),
        _ => None,
    };
    match refused {
        Some(reason) => StoreError::Unavailable(format!(
            "{reason}; check the user, password and database in --database-url, or create them"
        )),
        None => StoreError::Unavailable(format!(
            "cannot get a PostgreSQL connection: {e}; check that PostgreSQL runs and --database-url is right"
        )),
    }
}

async fn meta_u64(client: &deadpool_postgres::Client, name: &str) -> Result<u64, StoreError> {
    let v: Option<String> = client
        .query_opt("SELECT value FROM tm_meta WHERE name = $1", &[&name])
        .await
        .map_err(engine_error)?
        .map(|r| r.get(0));
    match v {
        None => Ok(0),
        Some(v) => v
            .parse()
            .map_err(|_| StoreError::Format(format!("tm_meta.{name} is not a number: {v:?}"))),
    }
}

/// Refuses a PostgreSQL older than [`MIN_SERVER_VERSION`], given its
/// `server_version_num` (e.g. 150004 for 15.4, 90624 for 9.6.24).
pub(crate) fn check_server_version(num: i32) -> Result<(), StoreError> {
    if num >= MIN_SERVER_VERSION {
        return Ok(());
    }
    // Before 10 the major version had two parts (9.6), after it one (15).
    let shown = if num >= 100_000 {
        format!("{}.{}", num / 10_000, num % 10_000)
    } else {
        format!("{}.{}.{}", num / 10_000, num / 100 % 100, num % 100)
    };
    Err(StoreError::Refused(format!(
        "PostgreSQL {shown} is too old: Tidemark needs PostgreSQL {} or newer (it uses features of 13); upgrade the PostgreSQL server, or keep the embedded engine (--store sqlite)",
        MIN_SERVER_VERSION / 10_000
    )))
}

/// Why a store of format `found` is refused by this build.
fn format_refusal(schema: &str, found: u64) -> String {
    if found > FORMAT_VERSION {
        format!(
            "PostgreSQL schema '{schema}' holds store format {found}, written by a newer Tidemark; this build reads format {FORMAT_VERSION} only and refuses to start, since it cannot know what the newer format changed and writing to it could damage it (there is no override); run the newer tidemark version, or restore a backup into another --pg-schema"
        )
    } else {
        format!(
            "PostgreSQL schema '{schema}' holds store format {found}, which this build (format {FORMAT_VERSION}) does not know; it was not written by Tidemark or is damaged; point --pg-schema elsewhere, or restore a backup into it"
        )
    }
}

/// Checks, before touching anything, that the connected role may create
/// (or use) the store's schema, and names the GRANT that is missing.
async fn check_rights(client: &deadpool_postgres::Client, schema: &str) -> Result<(), StoreError> {
    let row = client
        .query_one(
            "SELECT current_user::text, current_database()::text, has_database_privilege(current_database(), 'CREATE'), (SELECT nspname IS NOT NULL FROM pg_namespace WHERE nspname = $1)",
            &[&schema],
        )
        .await
        .map_err(engine_error)?;
    let (user, db, create_db, exists): (String, String, bool, Option<bool>) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    if exists != Some(true) {
        if create_db {
            return Ok(());
        }
        return Err(StoreError::Refused(format!(
            "PostgreSQL user '{user}' may not create the schema '{schema}' in database '{db}'; as the database owner or a superuser run: GRANT CREATE ON DATABASE \"{db}\" TO \"{user}\"; (or create the schema for it: CREATE SCHEMA \"{schema}\" AUTHORIZATION \"{user}\";)"
        )));
    }
    let row = client
        .query_one(
            "SELECT has_schema_privilege($1, 'USAGE') AND has_schema_privilege($1, 'CREATE'), (SELECT c.oid IS NOT NULL FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = 'tm_meta')",
            &[&schema],
        )
        .await
        .map_err(engine_error)?;
    let (usage_create, has_meta): (bool, Option<bool>) = (row.get(0), row.get(1));
    if !usage_create {
        return Err(StoreError::Refused(format!(
            "PostgreSQL user '{user}' lacks USAGE or CREATE on the schema '{schema}' in database '{db}'; as its owner or a superuser run: GRANT USAGE, CREATE ON SCHEMA \"{schema}\" TO \"{user}\";"
        )));
    }
    if has_meta == Some(true) {
        let ok: bool = client
            .query_one(
                "SELECT has_table_privilege(format('%I.tm_meta', $1::text), 'SELECT, INSERT, UPDATE, DELETE')",
                &[&schema],
            )
            .await
            .map_err(engine_error)?
            .get(0);
        if !ok {
            return Err(StoreError::Refused(format!(
                "PostgreSQL user '{user}' may not read and write the Tidemark tables in schema '{schema}' (they belong to another role); run Tidemark as the role that created them, or as a superuser run: REASSIGN OWNED BY <that role> TO \"{user}\"; (in database '{db}')"
            )));
        }
    }
    Ok(())
}

const META_SET: &str = "INSERT INTO tm_meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = excluded.value";

impl PgStore {
    /// A point read with the given catalog.
    async fn get_with(
        &self,
        catalog: &Catalog,
        table: &str,
        key: &str,
    ) -> Result<Lookup, StoreError> {
        catalog
            .schema
            .table(table)
            .map_err(|e| StoreError::Input(Box::new(e)))?;
        tidemark_api::schema::validate_key(key).map_err(|e| StoreError::Input(Box::new(e)))?;
        let t = &catalog.tables[table];
        let client = self.client().await?;
        // One statement: the record, its tombstone and its flag are read in
        // one snapshot, so a commit between them cannot pair an old record
        // with a cleared flag.
        let st = client
            .prepare_cached(&t.lookup)
            .await
            .map_err(engine_error)?;
        let row = client
            .query_one(&st, &[&key, &table])
            .await
            .map_err(engine_error)?;
        let n = t.columns.len();
        let record = match row.get::<_, Option<i64>>(0) {
            Some(epoch) => Some(Record {
                version: Version::new(epoch as u64, row.get::<_, i64>(1) as u64),
                fields: t.fields(&row, 2)?,
            }),
            None => None,
        };
        let tombstone = match (&record, row.get::<_, Option<i64>>(n + 2)) {
            (None, Some(epoch)) => {
                Some(Version::new(epoch as u64, row.get::<_, i64>(n + 3) as u64))
            }
            _ => None,
        };
        let flagged: bool = row.get(n + 4);
        Ok(Lookup {
            record,
            tombstone,
            flagged,
        })
    }

    /// Connects to `url` and opens (creating if needed) the store in
    /// PostgreSQL schema `schema`.
    pub async fn connect(url: &str, schema: &str) -> Result<Self, StoreError> {
        if !is_identifier(schema) {
            return Err(StoreError::Database {
                what: format!("--pg-schema {schema}"),
                detail:
                    "the PostgreSQL schema name must be a plain identifier (letters, digits, '_')"
                        .into(),
            });
        }
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| StoreError::Database {
            what: "--database-url".into(),
            detail: format!("not a PostgreSQL URL ({e}); use postgres://USER@HOST:PORT/DATABASE"),
        })?;
        // A transaction left idle (its instance paused or cut off mid-commit)
        // is ended by PostgreSQL after a second, so it cannot hold the lease
        // row and stall a failover (see `cluster.rs`); long reads opt out.
        // Notices ("relation ... already exists, skipping" from each
        // instance's IF NOT EXISTS at start) are not worth a log line.
        let session = format!(
            "-c search_path={schema} -c idle_in_transaction_session_timeout={IDLE_TX_LIMIT_MS} -c client_min_messages=warning"
        );
        config.options(&session);
        if config.get_application_name().is_none() {
            // Names the schema: a restore or offline backup refuses while
            // sessions under it live (`target::server_sessions`).
            config.application_name(target::application_name(schema));
        }
        let pool = build_pool(config.clone(), 16)?;
        // A lease statement its caller gave up on (half a lease) must not
        // hold one of the two connections for long: PostgreSQL ends it.
        let mut lease_config = config;
        lease_config.options(format!(
            "{session} -c statement_timeout={LEASE_STATEMENT_LIMIT_MS} -c lock_timeout={LEASE_STATEMENT_LIMIT_MS}"
        ));
        let lease_pool = build_pool(lease_config, 2)?;
        let store = PgStore {
            inner: Arc::new(Inner {
                pool,
                lease_pool,
                schema_name: schema.to_owned(),
                catalog: RwLock::new(Arc::new(Catalog::new(Schema::default_schema()))),
                epoch: AtomicU64::new(0),
                seq: AtomicU64::new(0),
                flag_rows: AtomicU64::new(0),
                flags_unknown: AtomicBool::new(false),
                write: tokio::sync::Mutex::new(pipeline::Chain::default()),
                running: Arc::new(tokio::sync::Semaphore::new(pipeline::DEPTH)),
                poisoned: AtomicBool::new(false),
                closed: AtomicBool::new(false),
                fenced: AtomicBool::new(false),
                fence: RwLock::new(None),
                lock_state: std::sync::atomic::AtomicU8::new(target::LOCK_NOT_WANTED),
                lock_task: parking_lot::Mutex::new(None),
            }),
        };
        store.bootstrap().await?;
        Ok(store)
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.usable()?;
        self.inner.pool.get().await.map_err(pool_error)
    }

    /// A connection of the lease loop's own (`Inner::lease_pool`).
    async fn lease_client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.usable()?;
        self.inner.lease_pool.get().await.map_err(pool_error)
    }

    /// Whether the store was closed (the server is stopping).
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }

    fn usable(&self) -> Result<(), StoreError> {
        if self.is_closed() {
            return Err(StoreError::Engine(
                "the store is closed (server shutting down); retry on the restarted server".into(),
            ));
        }
        target::check_lock(&self.inner)
    }

    fn catalog(&self) -> Arc<Catalog> {
        self.inner.catalog.read().clone()
    }

    /// Creates what is missing, checks the format and loads the schema.
    async fn bootstrap(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let version: i32 = client
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .await
            .map_err(engine_error)?
            .get(0);
        check_server_version(version)?;
        let schema = &self.inner.schema_name;
        check_rights(&client, schema).await?;
        let tx = client.transaction().await.map_err(engine_error)?;
        // One bootstrap at a time per database (instances may start together).
        tx.execute("SELECT pg_advisory_xact_lock(7413020)", &[])
            .await
            .map_err(engine_error)?;
        // A store of another format is refused before any DDL touches it.
        let format: Option<String> = tx
            .query_one(
                "SELECT CASE WHEN to_regclass(format('%I.tm_meta', $1::text)) IS NULL THEN NULL ELSE 'exists' END",
                &[schema],
            )
            .await
            .map_err(engine_error)?
            .get(0);
        if format.is_some() {
            let found = tx
                .query_opt("SELECT value FROM tm_meta WHERE name = 'format'", &[])
                .await
                .map_err(engine_error)?
                .map(|r| r.get::<_, String>(0));
            if let Some(found) = found {
                let n = found.parse().unwrap_or(u64::MAX);
                if n != FORMAT_VERSION {
                    return Err(StoreError::Format(format_refusal(schema, n)));
                }
            }
        }
        // Only when missing: CREATE SCHEMA IF NOT EXISTS needs CREATE on the
        // database even where the schema exists.
        let missing = tx
            .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[schema])
            .await
            .map_err(engine_error)?
            .is_none();
        if missing {
            tx.batch_execute(&format!("CREATE SCHEMA \"{schema}\""))
                .await
                .map_err(engine_error)?;
        }
        tx.batch_execute(catalog::INTERNAL_DDL)
            .await
            .map_err(engine_error)?;
        tx.batch_execute(cluster::CLUSTER_DDL)
            .await
            .map_err(engine_error)?;
        // Columns added since format 1, each with a default, so older and
        // newer builds share a store. Only when missing: ALTER TABLE would
        // wait for every open transaction on the table.
        // Bounded: an ALTER waits for every open transaction on the table (a
        // backup streaming, say) and holds up every write meanwhile; a
        // lock timeout fails this start, which is retried.
        tx.batch_execute("SET LOCAL lock_timeout = '5s'")
            .await
            .map_err(engine_error)?;
        for (table, column, ty) in ADDED_COLUMNS {
            let present = tx
                .query_opt(
                    "SELECT 1 FROM pg_attribute WHERE attrelid = $1::text::regclass AND attname = $2 AND NOT attisdropped",
                    &[table, column],
                )
                .await
                .map_err(engine_error)?
                .is_some();
            if !present {
                tx.batch_execute(&format!("ALTER TABLE {table} ADD COLUMN {column} {ty}"))
                    .await
                    .map_err(engine_error)?;
            }
        }
        tx.execute(crate::apply::PRUNED_BACKFILL, &[])
            .await
            .map_err(engine_error)?;
        let fresh = tx
            .query_opt("SELECT value FROM tm_meta WHERE name = 'format'", &[])
            .await
            .map_err(engine_error)?
            .is_none();
        if fresh {
            let schema = Schema::default_schema();
            for (n, v) in [
                ("format", FORMAT_VERSION.to_string()),
                ("epoch", "1".into()),
                ("seq", "0".into()),
                ("schema_version", schema.version.to_string()),
            ] {
                tx.execute(META_SET, &[&n, &v])
                    .await
                    .map_err(engine_error)?;
            }
            for (name, t) in &schema.tables {
                tx.batch_execute(&catalog::create_table_sql(name, t)?)
                    .await
                    .map_err(engine_error)?;
                tx.execute("INSERT INTO tm_tables (name) VALUES ($1)", &[name])
                    .await
                    .map_err(engine_error)?;
                for (i, c) in t.columns.iter().enumerate() {
                    tx.execute(
                        "INSERT INTO tm_columns (tbl, name, type, ordinal) VALUES ($1, $2, $3, $4)",
                        &[name, &c.name, &c.ty.name(), &(i as i32)],
                    )
                    .await
                    .map_err(engine_error)?;
                }
            }
            schema_registry::record_initial(&tx, &schema).await?;
        }
        tx.commit().await.map_err(engine_error)?;
        drop(client);
        self.reload_all().await
    }

    /// Reloads the schema and the meta mirrors: the catalog, epoch and
    /// seq, not the flag count (see [`Self::reload_all`]).
    pub(crate) async fn reload_from_db(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        self.reload(&client).await
    }

    /// [`Self::reload_from_db`] and the flag count: after opening or
    /// loading the store, or where another instance may have written.
    /// Never call it holding the writer lock.
    pub(crate) async fn reload_all(&self) -> Result<(), StoreError> {
        self.reload_from_db().await?;
        self.recount_flags().await
    }

    /// Reloads the schema and the meta mirrors from the database.
    async fn reload(&self, client: &deadpool_postgres::Client) -> Result<(), StoreError> {
        let tables: Vec<String> = client
            .query("SELECT name FROM tm_tables", &[])
            .await
            .map_err(engine_error)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let columns = client
            .query(
                "SELECT tbl, name, type FROM tm_columns ORDER BY tbl, ordinal",
                &[],
            )
            .await
            .map_err(engine_error)?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let version = meta_u64(client, "schema_version").await?;
        let mut schema = catalog::schema_from_rows(version, tables, columns)?;
        let registry: Option<String> = client
            .query_opt(
                "SELECT schema FROM tm_schema_versions WHERE version = $1",
                &[&(version as i64)],
            )
            .await
            .map_err(engine_error)?
            .map(|r| r.get(0));
        crate::schema_ddl::attach_indexes(&mut schema, registry.as_deref());
        *self.inner.catalog.write() = Arc::new(Catalog::new(schema));
        self.inner
            .epoch
            .store(meta_u64(client, "epoch").await?, Ordering::SeqCst);
        self.inner
            .seq
            .store(meta_u64(client, "seq").await?, Ordering::SeqCst);
        Ok(())
    }

    /// Counts `tm_flags` again, with no group running (see
    /// `Inner::flag_rows`): after opening or loading the store, and on an
    /// instance that follows another's writes. Never call it holding the
    /// writer lock.
    pub(crate) async fn recount_flags(&self) -> Result<(), StoreError> {
        let _w = self.alone().await;
        // The doubt stands until a count succeeds.
        let client = self.client().await?;
        let r = client
            .query_one("SELECT count(*) FROM tm_flags", &[])
            .await
            .map_err(engine_error)?;
        self.inner
            .flag_rows
            .store(r.get::<_, i64>(0) as u64, Ordering::SeqCst);
        self.inner.flags_unknown.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Takes `n` flags off the count, under the writer lock, after the
    /// commit that cleared them.
    pub(super) fn flags_cleared(&self, n: u64) {
        // Never wraps: a count that ran low would read as no flags left.
        let _ = self
            .inner
            .flag_rows
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| {
                Some(c.saturating_sub(n))
            });
    }

    /// A commit that would have changed the flags failed: whether it
    /// committed is unknown, so the count is not trusted until recounted.
    pub(super) fn flags_in_doubt(&self) {
        self.inner.flags_unknown.store(true, Ordering::SeqCst);
    }

    /// The writer lock with no pipelined group running: each one begun has
    /// ended, and the next group learns the seq and marks afresh. (A
    /// running group never takes the writer lock, so this cannot deadlock.)
    async fn alone(
        &self,
    ) -> (
        tokio::sync::MutexGuard<'_, pipeline::Chain>,
        tokio::sync::SemaphorePermit<'_>,
    ) {
        let mut chain = self.inner.write.lock().await;
        let all = self
            .inner
            .running
            .acquire_many(pipeline::DEPTH as u32)
            .await
            .expect("the semaphore is never closed");
        chain.reset();
        self.inner.poisoned.store(false, Ordering::SeqCst);
        (chain, all)
    }

    /// Runs `f` in one transaction under the writer lock.
    async fn write_tx<T>(
        &self,
        f: impl for<'a> FnOnce(
            &'a deadpool_postgres::Transaction<'a>,
        ) -> futures::future::BoxFuture<'a, Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.write_tx_then(f, |_| {}).await
    }

    /// [`Self::write_tx`], then `after` with its outcome, still under the
    /// writer lock: where a change of the flags is counted. If the commit
    /// fails, the flags are in doubt (its outcome is unknown).
    async fn write_tx_then<T>(
        &self,
        f: impl for<'a> FnOnce(
            &'a deadpool_postgres::Transaction<'a>,
        ) -> futures::future::BoxFuture<'a, Result<T, StoreError>>,
        after: impl FnOnce(&T),
    ) -> Result<T, StoreError> {
        let _w = self.alone().await;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(engine_error)?;
        self.check_fence(&tx, None).await?;
        let out = f(&tx).await?;
        if self.inner.fenced.load(Ordering::SeqCst) {
            // Wakes the other instances to follow it at once (a flag added
            // after the list was final: `flags_added`).
            // And counts the shared state's generation, which standbys
            // register as followed (`vouch_renew`).
            tx.execute(SHARED_CHANGED, &[&self.channel(), &cluster::SHARED_NOTICE])
                .await
                .map_err(engine_error)?;
        }
        if let Err(e) = tx.commit().await {
            self.flags_in_doubt();
            return Err(engine_error(e));
        }
        after(&out);
        Ok(out)
    }

    /// With fencing on (several instances), holds the lease row
    /// `FOR KEY SHARE` for the rest of `tx` (a change of holder waits for
    /// it; a renewal does not) and fails unless this instance holds the
    /// lease at its term (see `cluster.rs`), and, if `planned` names one,
    /// unless that term is still the current one.
    pub(crate) async fn check_fence(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        planned: Option<u64>,
    ) -> Result<(), StoreError> {
        if !self.inner.fenced.load(Ordering::SeqCst) {
            return Ok(());
        }
        let fence = self.inner.fence.read().clone();
        let Some((term, me)) = fence else {
            return Err(StoreError::NotPrimary);
        };
        if planned.is_some_and(|p| p != term) {
            return Err(StoreError::NotPrimary);
        }
        let st = tx
            .prepare_cached(
                "SELECT 1 FROM tm_lease WHERE id = 1 AND term = $1 AND holder = $2 FOR KEY SHARE",
            )
            .await
            .map_err(engine_error)?;
        let held = tx
            .query_opt(&st, &[&(term as i64), &me])
            .await
            .map_err(engine_error)?;
        match held {
            Some(_) => Ok(()),
            None => Err(StoreError::NotPrimary),
        }
    }

    async fn sources_where(
        client: &deadpool_postgres::Client,
        condition: &'static str,
    ) -> Result<Vec<String>, StoreError> {
        Ok(client
            .query(
                &format!(
                    "SELECT source FROM tm_recovery_sources WHERE {condition} ORDER BY source"
                ),
                &[],
            )
            .await
            .map_err(engine_error)?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }
}

#[async_trait]
impl Store for PgStore {
    fn engine(&self) -> &'static str {
        "postgres"
    }

    async fn reachable(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(engine_error)?;
        Ok(())
    }

    fn schema(&self) -> Arc<Schema> {
        self.catalog().schema.clone()
    }

    async fn meta(&self) -> Result<StoreMeta, StoreError> {
        let client = self.client().await?;
        let seq = meta_u64(&client, "seq").await?;
        let floor: Option<i64> = client
            .query_one("SELECT min(seq) FROM tm_changes", &[])
            .await
            .map_err(engine_error)?
            .get(0);
        Ok(StoreMeta {
            epoch: self.inner.epoch.load(Ordering::SeqCst),
            seq,
            schema_version: self.catalog().schema.version,
            log_floor: floor.map(|f| f as u64).unwrap_or(seq + 1),
        })
    }

    async fn get(&self, table: &str, key: &str) -> Result<Lookup, StoreError> {
        let catalog = self.catalog();
        match self.get_with(&catalog, table, key).await {
            // A rollback may have dropped a column or table under the read
            // (S9). Its DDL commits before this process swaps its catalog,
            // under the write lock: wait for that swap; if the catalog is
            // still the one read with (another instance changed the
            // schema), load it from the database. Then read again with the
            // version in force; an error that was not the schema stands.
            Err(e @ StoreError::Engine(_)) => {
                if Arc::ptr_eq(&catalog, &self.catalog()) {
                    drop(self.inner.write.lock().await);
                }
                if Arc::ptr_eq(&catalog, &self.catalog()) {
                    self.reload_from_db().await?;
                }
                if catalog.schema.version == self.catalog().schema.version {
                    return Err(e);
                }
                self.get_with(&self.catalog(), table, key).await
            }
            r => r,
        }
    }

    async fn apply(&self, orders: Vec<Order>) -> Result<ApplyOutcome, StoreError> {
        let mut out = self.apply_group_pg(vec![orders]).await;
        out.pop()
            .unwrap_or_else(|| Err(StoreError::Engine("no result".into())))
    }

    async fn apply_group(&self, batches: Vec<Vec<Order>>) -> Vec<Result<ApplyOutcome, StoreError>> {
        self.apply_group_pg(batches).await
    }

    async fn begin_group(&self, batches: Vec<Vec<Order>>) -> crate::store::Begun {
        self.begin_group_pg(batches).await
    }

    fn group_depth(&self) -> usize {
        pipeline::DEPTH
    }

    async fn changes_since(&self, after: u64, limit: usize) -> Result<Vec<Change>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT seq, epoch, tbl, key, fields, cleared, flagged FROM tm_changes WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&(after as i64), &(limit as i64)],
            )
            .await
            .map_err(engine_error)?;
        rows.iter()
            .map(|r| {
                let seq: i64 = r.get(0);
                let fields = match r.get::<_, Option<serde_json::Value>>(4) {
                    None => None,
                    Some(serde_json::Value::Object(m)) => Some(m),
                    Some(_) => {
                        return Err(StoreError::Format(format!(
                            "change {seq} holds non-object fields"
                        )))
                    }
                };
                Ok(Change {
                    table: r.get(2),
                    key: r.get(3),
                    fields,
                    version: Version::new(r.get::<_, i64>(1) as u64, seq as u64),
                    cleared_flag: r.get(5),
                    flagged: r.get(6),
                })
            })
            .collect()
    }

    async fn high_water_marks(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let client = self.client().await?;
        Ok(client
            .query("SELECT source, high_water FROM tm_sources", &[])
            .await
            .map_err(engine_error)?
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64))
            .collect())
    }

    async fn prune_changes(&self, keep: u64) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let below = meta_u64(&client, "seq").await?.saturating_sub(keep) as i64;
        drop(client);
        crate::prune_in_chunks(|| async move {
            let client = self.client().await?;
            let oldest: Option<i64> = client
                .query_one("SELECT min(seq) FROM tm_changes", &[])
                .await
                .map_err(engine_error)?
                .get(0);
            let Some(oldest) = oldest.filter(|&o| o <= below) else {
                return Ok(0);
            };
            let upto = below.min(oldest + crate::PRUNE_CHUNK as i64 - 1);
            // Each source's highest pruned seq goes with the changes it
            // outlives, in one transaction (see `apply::was_pruned`).
            let mut client = client;
            let tx = client.transaction().await.map_err(engine_error)?;
            tx.execute(
                "INSERT INTO tm_pruned (source, through_seq) SELECT source, max(source_seq) FROM tm_changes WHERE seq <= $1 GROUP BY source ON CONFLICT (source) DO UPDATE SET through_seq = greatest(tm_pruned.through_seq, excluded.through_seq)",
                &[&upto],
            )
            .await
            .map_err(engine_error)?;
            let n = tx
                .execute("DELETE FROM tm_changes WHERE seq <= $1", &[&upto])
                .await
                .map_err(engine_error)?;
            tx.commit().await.map_err(engine_error)?;
            Ok(n)
        })
        .await
    }

    async fn close(&self) -> Result<(), StoreError> {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        // Wait for the commits in progress, then let the pool go.
        let _w = self.alone().await;
        self.inner.pool.close();
        self.inner.lease_pool.close();
        if let Some(task) = self.inner.lock_task.lock().take() {
            task.abort();
        }
        Ok(())
    }

    async fn mark_restored(&self, new_epoch: u64) -> Result<(), StoreError> {
        let now = chrono::Utc::now().to_rfc3339();
        self.write_tx_then(
            |tx| {
                Box::pin(async move {
                    for (n, v) in [
                        ("epoch", new_epoch.to_string()),
                        ("recovery_state", "recovering".into()),
                        ("schedule_final", "0".into()),
                        ("recovery_started_at", now),
                        ("complete_requested", "0".into()),
                    ] {
                        tx.execute(META_SET, &[&n, &v]).await.map_err(engine_error)?;
                    }
                    tx.batch_execute(
                        // `tm_lww` is kept (see `sqlite/recovery.rs`).
                        "DELETE FROM tm_recovery_sources; INSERT INTO tm_recovery_sources (source, final, waived) SELECT source, false, false FROM tm_sources WHERE high_water > 0",
                    )
                    .await
                    .map_err(engine_error)?;
                    let rows: i64 = tx
                        .query_one("SELECT count(*) FROM tm_flags", &[])
                        .await
                        .map_err(engine_error)?
                        .get(0);
                    tx.execute(META_SET, &[&"recovery_flagged", &rows.to_string()])
                        .await
                        .map_err(engine_error)?;
                    Ok(rows)
                })
            },
            |rows| {
                self.inner.epoch.store(new_epoch, Ordering::SeqCst);
                self.inner.flag_rows.store(*rows as u64, Ordering::SeqCst);
            },
        )
        .await?;
        Ok(())
    }

    async fn recovery_meta(&self) -> Result<RecoveryMeta, StoreError> {
        if self.inner.flags_unknown.load(Ordering::SeqCst) {
            self.recount_flags().await?;
        }
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT name, value FROM tm_meta WHERE name IN ('recovery_state', 'schedule_final', 'complete_requested', 'recovery_started_at', 'recovery_flagged', 'flags_settled')",
                &[],
            )
            .await
            .map_err(engine_error)?;
        let m: BTreeMap<String, String> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let state = match m.get("recovery_state").map(String::as_str) {
            None | Some("normal") => RecoveryState::Normal,
            Some("recovering") => RecoveryState::Recovering,
            Some("recovered") => RecoveryState::Recovered,
            Some(other) => {
                return Err(StoreError::Format(format!(
                    "unknown recovery state {other:?} in tm_meta"
                )))
            }
        };
        let flag = |n: &str| m.get(n).map(String::as_str) == Some("1");
        Ok(RecoveryMeta {
            state,
            schedule_final: flag("schedule_final"),
            complete_requested: flag("complete_requested"),
            started_at: m.get("recovery_started_at").cloned(),
            flagged_total: m
                .get("recovery_flagged")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            remaining: self.inner.flag_rows.load(Ordering::SeqCst),
            settled: m
                .get("flags_settled")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            waiting_for_sources: Self::sources_where(&client, "NOT final AND NOT waived").await?,
            waived_sources: Self::sources_where(&client, "waived").await?,
        })
    }

    async fn add_flags(
        &self,
        source: &str,
        entries: Vec<FlagEntry>,
        final_chunk: bool,
        without: Vec<String>,
    ) -> Result<FlagsAdded, StoreError> {
        crate::apply::validate_schedule(&self.catalog().schema, source, &entries, &without)?;
        let source = source.to_owned();
        let (added, _) = self
            .write_tx_then(
                |tx| {
                Box::pin(async move {
                    let state: Option<String> = tx
                        .query_opt("SELECT value FROM tm_meta WHERE name = 'recovery_state'", &[])
                        .await
                        .map_err(engine_error)?
                        .map(|r| r.get(0));
                    if state.as_deref() != Some("recovering") {
                        return Err(StoreError::NotRecovering);
                    }
                    let hw: i64 = tx
                        .query_opt("SELECT high_water FROM tm_sources WHERE source = $1", &[&source])
                        .await
                        .map_err(engine_error)?
                        .map_or(0, |r| r.get(0));
                    let mut added = FlagsAdded::default();
                    // Every entry is checked before any is written; then the
                    // chunk's flags are written in one pass, one row per key
                    // (the highest through_seq of the chunk wins, as the
                    // row-by-row upsert would leave it).
                    let mut wanted = flags::Wanted::new();
                    for e in &entries {
                        if e.through_seq > (hw as u64).saturating_add(crate::apply::MAX_SCHEDULE_GAP) {
                            return Err(StoreError::BadSchedule(format!(
                                "key {:?}: through_seq {} is more than {} ahead of source '{source}''s high-water mark {hw}; send the seqs the OpS journal holds",
                                e.key, e.through_seq, crate::apply::MAX_SCHEDULE_GAP
                            )));
                        }
                        if e.through_seq as i64 <= hw {
                            added.skipped += 1;
                            continue;
                        }
                        let w = wanted.entry((e.table.as_str(), e.key.as_str())).or_insert(0);
                        *w = (*w).max(e.through_seq as i64);
                    }
                    if !wanted.is_empty() {
                        added.flagged += flags::write(tx, &source, &wanted).await?;
                    }
                    let total: i64 = tx
                        .query_opt("SELECT value::bigint FROM tm_meta WHERE name = 'recovery_flagged'", &[])
                        .await
                        .map_err(engine_error)?
                        .map_or(0, |r| r.get(0));
                    tx.execute(
                        META_SET,
                        &[&"recovery_flagged", &(total as u64 + added.flagged).to_string()],
                    )
                    .await
                    .map_err(engine_error)?;
                    let mut dropped = 0u64;
                    if final_chunk {
                        for w in &without {
                            // As on SQLite: not a source that sent its own
                            // final chunk, unless waived before.
                            let waived = tx
                                .execute("UPDATE tm_recovery_sources SET waived = true WHERE source = $1 AND (NOT final OR waived)", &[w])
                                .await
                                .map_err(engine_error)?;
                            if waived == 0 {
                                let known: i64 = tx
                                    .query_one("SELECT count(*) FROM tm_recovery_sources WHERE source = $1", &[w])
                                    .await
                                    .map_err(engine_error)?
                                    .get(0);
                                return Err(crate::apply::waiver_refused(w, known > 0));
                            }
                            dropped += tx
                                .execute("DELETE FROM tm_flags WHERE source = $1", &[w])
                                .await
                                .map_err(engine_error)?;
                        }
                        tx.execute(
                            "INSERT INTO tm_recovery_sources (source, final, waived) VALUES ($1, true, false) ON CONFLICT (source) DO UPDATE SET final = true",
                            &[&source],
                        )
                        .await
                        .map_err(engine_error)?;
                        let waiting: i64 = tx
                            .query_one("SELECT count(*) FROM tm_recovery_sources WHERE NOT final AND NOT waived", &[])
                            .await
                            .map_err(engine_error)?
                            .get(0);
                        if waiting == 0 {
                            tx.execute(META_SET, &[&"schedule_final", &"1"])
                                .await
                                .map_err(engine_error)?;
                        }
                    } else {
                        // As on SQLite: a source that began its list is
                        // awaited until its final chunk (P6).
                        tx.execute(
                            "INSERT INTO tm_recovery_sources (source, final, waived) SELECT $1, false, false WHERE NOT EXISTS (SELECT 1 FROM tm_meta WHERE name = 'schedule_final' AND value = '1') ON CONFLICT (source) DO NOTHING",
                            &[&source],
                        )
                        .await
                        .map_err(engine_error)?;
                    }
                    Ok((added, dropped))
                })
                },
                |(added, dropped): &(FlagsAdded, u64)| {
                    self.inner
                        .flag_rows
                        .fetch_add(added.flagged, Ordering::SeqCst);
                    self.flags_cleared(*dropped);
                },
            )
            .await?;
        Ok(added)
    }

    async fn expect_sources(&self, sources: &[String]) -> Result<(), StoreError> {
        for src in sources {
            crate::apply::validate_source_name(src)?;
        }
        let sources = sources.to_vec();
        self.write_tx(|tx| {
            Box::pin(async move {
                let meta: BTreeMap<String, String> = tx
                    .query(
                        "SELECT name, value FROM tm_meta WHERE name IN ('recovery_state', 'schedule_final') FOR UPDATE",
                        &[],
                    )
                    .await
                    .map_err(engine_error)?
                    .iter()
                    .map(|r| (r.get(0), r.get(1)))
                    .collect();
                if meta.get("recovery_state").map(String::as_str) != Some("recovering") {
                    return Err(StoreError::NotRecovering);
                }
                // Sources awaited or heard from already need nothing (a
                // run resumed after the schedule went final names them
                // again).
                let known: Vec<String> = tx
                    .query(
                        "SELECT source FROM tm_recovery_sources WHERE source = ANY($1)",
                        &[&sources],
                    )
                    .await
                    .map_err(engine_error)?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                let mut new: Vec<String> = Vec::new();
                for src in &sources {
                    if !known.contains(src) && !new.contains(src) {
                        new.push(src.clone());
                    }
                }
                if new.is_empty() {
                    return Ok(());
                }
                if meta.get("schedule_final").map(String::as_str) == Some("1") {
                    return Err(crate::apply::expected_too_late(&new));
                }
                for src in &new {
                    tx.execute(
                        "INSERT INTO tm_recovery_sources (source, final, waived) VALUES ($1, false, false) ON CONFLICT (source) DO NOTHING",
                        &[src],
                    )
                    .await
                    .map_err(engine_error)?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn set_recovery_state(
        &self,
        state: RecoveryState,
        complete_requested: bool,
    ) -> Result<RecoveryMeta, StoreError> {
        self.write_tx(|tx| {
            Box::pin(async move {
                tx.execute(META_SET, &[&"recovery_state", &state.as_str()])
                    .await
                    .map_err(engine_error)?;
                let c = if complete_requested { "1" } else { "0" };
                tx.execute(META_SET, &[&"complete_requested", &c])
                    .await
                    .map_err(engine_error)?;
                if state != RecoveryState::Recovering {
                    tx.execute("DELETE FROM tm_lww", &[])
                        .await
                        .map_err(engine_error)?;
                }
                Ok(())
            })
        })
        .await?;
        self.recovery_meta().await
    }

    async fn flag_page(&self, page: &crate::FlagPage) -> Result<Vec<Flag>, StoreError> {
        flag_page::flag_page(self, page).await
    }

    async fn list_flags(&self, limit: usize) -> Result<Vec<Flag>, StoreError> {
        let client = self.client().await?;
        Ok(client
            .query(
                "SELECT f.tbl, f.key, f.source, f.through_seq, coalesce(s.high_water, 0) FROM tm_flags f LEFT JOIN tm_sources s ON s.source = f.source ORDER BY f.tbl, f.key, f.source LIMIT $1",
                &[&(limit as i64)],
            )
            .await
            .map_err(engine_error)?
            .iter()
            .map(|r| Flag {
                table: r.get(0),
                key: r.get(1),
                source: r.get(2),
                through_seq: r.get::<_, i64>(3) as u64,
                high_water: r.get::<_, i64>(4) as u64,
            })
            .collect())
    }

    async fn clear_flags(&self) -> Result<u64, StoreError> {
        self.write_tx_then(
            |tx| {
                Box::pin(async move {
                    tx.execute("DELETE FROM tm_flags", &[])
                        .await
                        .map_err(engine_error)
                })
            },
            |_| self.inner.flag_rows.store(0, Ordering::SeqCst),
        )
        .await
    }

    async fn settle_flags(&self) -> Result<u64, StoreError> {
        self.write_tx_then(
            |tx| {
                Box::pin(async move {
                    let n = tx.execute(
                        "DELETE FROM tm_flags WHERE through_seq <= coalesce((SELECT high_water FROM tm_sources WHERE tm_sources.source = tm_flags.source), 0)",
                        &[],
                    )
                    .await
                    .map_err(engine_error)?;
                    if n > 0 {
                        // Counted, for standbys to relay (`RecoveryMeta::settled`).
                        tx.execute(
                            "INSERT INTO tm_meta (name, value) VALUES ('flags_settled', '1') ON CONFLICT (name) DO UPDATE SET value = (tm_meta.value::bigint + 1)::text",
                            &[],
                        )
                        .await
                        .map_err(engine_error)?;
                    }
                    Ok(n)
                })
            },
            |n| self.flags_cleared(*n),
        )
        .await
    }

    async fn schema_versions(
        &self,
    ) -> Result<Vec<tidemark_api::schema_change::SchemaVersionInfo>, StoreError> {
        schema_registry::versions(self).await
    }

    fn schema_ddl(&self, target: &Schema) -> Result<crate::SchemaDdl, StoreError> {
        let staged =
            crate::schema_ddl::staged(&schema_registry::Postgres, &self.catalog().schema, target)?;
        Ok(crate::SchemaDdl {
            before_transaction: staged.before.len(),
            statements: staged.all(),
        })
    }

    async fn publish_schema(&self, target: &Schema, by: &str) -> Result<bool, StoreError> {
        schema_registry::publish(self, target, by).await
    }

    async fn reload_schema(&self) -> Result<(), StoreError> {
        self.reload_from_db().await
    }

    async fn set_note(&self, name: &str, value: Option<String>) -> Result<(), StoreError> {
        let name = format!("note.{name}");
        let client = self.client().await?;
        let shared =
            self.inner.fenced.load(Ordering::SeqCst) && SHARED_NOTES.contains(&name.as_str());
        // One statement: the generation's row is locked only while it runs
        // (a standby that froze mid-transaction would hold every write).
        match (value, shared) {
            (Some(v), false) => client.execute(META_SET, &[&name, &v]).await,
            (None, false) => {
                client
                    .execute("DELETE FROM tm_meta WHERE name = $1", &[&name])
                    .await
            }
            (Some(v), true) => {
                client
                    .execute(
                        concat!(
                            "WITH n AS (INSERT INTO tm_meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = excluded.value), ",
                            count_shared_gen!(),
                            " SELECT pg_notify($3, $4)"
                        ),
                        &[&name, &v, &self.channel(), &cluster::SHARED_NOTICE],
                    )
                    .await
            }
            (None, true) => {
                client
                    .execute(
                        concat!(
                            "WITH n AS (DELETE FROM tm_meta WHERE name = $1), ",
                            count_shared_gen!(),
                            " SELECT pg_notify($2, $3)"
                        ),
                        &[&name, &self.channel(), &cluster::SHARED_NOTICE],
                    )
                    .await
            }
        }
        .map_err(engine_error)?;
        Ok(())
    }

    async fn note(&self, name: &str) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        Ok(client
            .query_opt(
                "SELECT value FROM tm_meta WHERE name = $1",
                &[&format!("note.{name}")],
            )
            .await
            .map_err(engine_error)?
            .map(|r| r.get(0)))
    }

    async fn snapshot_to(&self, path: &Path) -> Result<SnapshotInfo, StoreError> {
        self.snapshot_pg(path).await
    }

    async fn record_process(&self, info: &ProcessInfo) -> Result<(), StoreError> {
        let text = serde_json::to_string(info)?;
        let client = self.client().await?;
        client
            .execute(META_SET, &[&"process", &text])
            .await
            .map_err(engine_error)?;
        Ok(())
    }

    async fn needs_cleanup(&self) -> Result<bool, StoreError> {
        let client = self.client().await?;
        Ok(client
            .query_opt(
                "SELECT value FROM tm_meta WHERE name = 'needs_cleanup'",
                &[],
            )
            .await
            .map_err(engine_error)?
            .is_some_and(|r| r.get::<_, String>(0) == "1"))
    }

    async fn mark_needs_cleanup(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(META_SET, &[&"needs_cleanup", &"1"])
            .await
            .map_err(engine_error)?;
        Ok(())
    }

    async fn cleanup_process_info(&self) -> Result<Vec<String>, StoreError> {
        self.write_tx(|tx| {
            Box::pin(async move {
                let names: Vec<String> = tx
                    .query(
                        "DELETE FROM tm_meta WHERE name = 'process' OR name LIKE 'quiesce%' OR name LIKE 'note.quiesce%' OR name LIKE 'note.service_quiesce/%' RETURNING name",
                        &[],
                    )
                    .await
                    .map_err(engine_error)?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                tx.execute(META_SET, &[&"needs_cleanup", &"0"])
                    .await
                    .map_err(engine_error)?;
                let mut names = names;
                names.sort();
                Ok(names)
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The version check on `server_version_num` values (faking an old
    /// PostgreSQL server in a test is not practical; this is the function
    /// `connect` calls with the server's own value).
    #[test]
    fn postgresql_older_than_13_is_refused_with_what_to_do() {
        for ok in [130000, 130014, 140010, 150004, 160000, 170002] {
            assert!(check_server_version(ok).is_ok(), "{ok}");
        }
        for (old, shown) in [(120017, "12.17"), (100023, "10.23"), (90624, "9.6.24")] {
            let e = check_server_version(old).unwrap_err().to_string();
            assert!(e.contains(&format!("PostgreSQL {shown} is too old")), "{e}");
            assert!(e.contains("13 or newer") && e.contains("upgrade"), "{e}");
        }
    }

    #[test]
    fn a_newer_format_names_the_way_out_and_no_override() {
        let e = format_refusal("tidemark", FORMAT_VERSION + 1);
        assert!(
            e.contains("newer Tidemark") && e.contains("no override"),
            "{e}"
        );
        assert!(format_refusal("x", 0).contains("does not know"));
    }
}
