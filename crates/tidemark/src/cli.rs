//! The command line: every subcommand and flag.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Tidemark: terminal record data with disaster recovery that never serves
/// restored-but-outdated data as current.
#[derive(Debug, Parser)]
#[command(name = "tidemark", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// TOML configuration file; TIDEMARK_* environment variables override it,
    /// and flags override both.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format: plain or json [default: plain].
    #[arg(
        long,
        global = true,
        value_name = "FORMAT",
        env = "TIDEMARK_LOG_FORMAT"
    )]
    pub log_format: Option<String>,
    /// The token client commands send to DB servers (Authorization: Bearer);
    /// a service server sends it to its DB server.
    #[arg(
        long,
        global = true,
        value_name = "TOKEN",
        env = "TIDEMARK_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// The CA certificate (PEM) that https DB-server URLs are checked against.
    #[arg(long, global = true, value_name = "FILE", env = "TIDEMARK_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// A client certificate (PEM) to present to DB servers that ask for
    /// one (their --tls-client-ca); with --client-key. A service server
    /// presents it to its DB server.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "TIDEMARK_CLIENT_CERT",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,
    /// The PEM private key of --client-cert.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "TIDEMARK_CLIENT_KEY",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the DB server: owns the records, applies orders, pushes changes.
    #[command(
        after_help = "Every setting, those without a flag included (shutdown_grace_secs, max_body_bytes, read_cache_bytes, ...), can be set in the [server] section of --config FILE or as TIDEMARK_SERVER__NAME (e.g. TIDEMARK_SERVER__LISTEN=0.0.0.0:7070); flags override the environment, which overrides the file. README.md, 'Configuration', lists them all with their defaults."
    )]
    Server(ServerArgs),
    /// Run a service server: caches records and answers terminals by policy.
    #[command(
        after_help = "Every setting, those without a flag included (latest_deadline_ms, snapshot_interval_secs, shutdown_grace_secs, ...), can be set in the [service] section of --config FILE or as TIDEMARK_SERVICE__NAME (e.g. TIDEMARK_SERVICE__POLICY=accept-stale); flags override the environment, which overrides the file. README.md, 'Configuration', lists them all with their defaults."
    )]
    Service(ServiceArgs),
    /// The operation system: journal and submit service orders, drive recovery.
    #[command(subcommand)]
    Ops(OpsCommand),
    /// Show a DB server's state, role, epoch, recovery progress, quiesce and schema version
    /// (or a service server's: policy, connection, epoch, cache, schema, quiesce notices).
    Status(StatusArgs),
    /// Operator tools for a recovery in progress: list flagged keys, or end it.
    #[command(subcommand)]
    Recovery(RecoveryCommand),
    /// Back up a DB server (online) or its data directory (offline).
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Restore a data directory from a backup (refused while a server uses it).
    Restore(RestoreArgs),
    /// Normalise process information left behind by an online backup (B6).
    Cleanup(CleanupArgs),
    /// Send a quiesce notice to a server's users, or cancel it (S4).
    Quiesce(QuiesceArgs),
    /// Make a standby DB server the primary (S5).
    Promote(PromoteArgs),
    /// Stage, plan, publish and roll back schema changes (S1, S2, S9).
    #[command(subcommand)]
    Schema(SchemaCommand),
    /// Create, list or revoke the tokens of a DB server.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Who did which admin action on a DB server, and when.
    Audit(AuditArgs),
    /// Run the whole disaster-recovery story with real processes and check it.
    Demo(DemoArgs),
    /// Load generators and benchmarks.
    #[command(subcommand)]
    Bench(tidemark_bench::BenchCommand),
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Address to listen on [default: 127.0.0.1:7070].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Data directory of the embedded engine [default: ./tidemark-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Storage engine: sqlite or postgres [default: sqlite].
    #[arg(long, value_name = "ENGINE")]
    pub store: Option<String>,
    /// PostgreSQL URL, with --store postgres, e.g.
    /// postgres://tidemark@db-host:5432/tidemark (a multi-host URL with
    /// target_session_attrs=read-write follows PostgreSQL's own failover).
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// PostgreSQL schema that holds Tidemark's tables [default: tidemark].
    #[arg(long, value_name = "NAME")]
    pub pg_schema: Option<String>,
    /// Serve https with this PEM certificate chain (with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    #[command(flatten)]
    pub front_door: FrontDoorArgs,
    /// With --store postgres: how the other instances and clients reach
    /// this one, e.g. http://db-1:7070 [default: the address it listens on].
    /// Several instances on one PostgreSQL form one cluster: one primary
    /// (chosen by a lease in PostgreSQL), the rest standbys.
    #[arg(long, value_name = "URL")]
    pub advertise: Option<String>,
    /// Seconds a write is held while no primary is online (a failover)
    /// before it is answered 503 no_primary [default: 10].
    #[arg(long, value_name = "SECS")]
    pub failover_wait: Option<u64>,
    /// How long the primary's lease lasts without renewal, in ms
    /// [default: 1200]: a dead primary is replaced about this long after.
    #[arg(long, value_name = "MS")]
    pub lease_ttl_ms: Option<u64>,
    /// Start even if other live instances run another tidemark version.
    #[arg(long)]
    pub allow_version_skew: bool,
}

/// How a server holds its connections (issue 13).
#[derive(Debug, Args)]
pub struct FrontDoorArgs {
    /// With https: serve only clients whose certificate is signed by this
    /// CA (PEM): mutual TLS.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Connections served at once; one more is answered 503
    /// too_many_connections [default: 1024 for a DB server, 4096 for a
    /// service server]. Header and body deadlines: header_timeout_secs,
    /// body_timeout_secs in the config file.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
}

#[derive(Debug, Args)]
pub struct ServiceArgs {
    /// URL of the DB server, or the instances of one cluster separated by
    /// commas [default: http://127.0.0.1:7070].
    #[arg(long, value_name = "URL", value_parser = db_urls)]
    pub db: Option<String>,
    /// This service server's name; the DB server pushes changes to it by this name.
    #[arg(long, value_name = "NAME")]
    pub id: Option<String>,
    /// latest-only (never serve data known to be outdated) or accept-stale
    /// [default: latest-only].
    #[arg(long, value_name = "POLICY")]
    pub policy: Option<String>,
    /// Address to listen on [default: 127.0.0.1:7080].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Keep a cache snapshot here, so a restart resumes with Last-Event-ID.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Most records held in the cache [default: 1000000].
    #[arg(long, value_name = "N")]
    pub cache_capacity: Option<usize>,
    /// How long a latest-only read waits for current data, in ms [default: 5000].
    #[arg(long, value_name = "MS")]
    pub latest_deadline_ms: Option<u64>,
    /// Start and serve even if the DB server's schema uses something this build does not understand (S10).
    #[arg(long)]
    pub ignore_schema_skew: bool,
    /// Serve https with this PEM certificate chain (with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    #[command(flatten)]
    pub front_door: FrontDoorArgs,
}

#[derive(Debug, Subcommand)]
pub enum OpsCommand {
    /// Journal (fsync) then submit service orders given as JSON lines.
    ///
    /// Each line: {"table": "subscriber", "key": "…", "op": "upsert"|"delete", "fields": {…}}.
    /// Orders are numbered per source. Re-running the same input after a crash
    /// resumes it; nothing is applied twice.
    Submit(OpsSubmitArgs),
    /// After a restore: send the recovery schedule list, then the difference data.
    Recover(OpsRecoverArgs),
}

#[derive(Debug, Args)]
pub struct OpsSubmitArgs {
    /// URL of the DB server, or the instances of one cluster separated by
    /// commas [default: http://127.0.0.1:7070].
    #[arg(long, value_name = "URL", value_parser = db_urls)]
    pub db: Option<String>,
    /// Journal directory, created if missing [default: ./tidemark-journal].
    #[arg(long, value_name = "DIR")]
    pub journal: Option<PathBuf>,
    /// The OpS source name that numbers the orders [default: ops-1].
    #[arg(long, value_name = "NAME")]
    pub source: Option<String>,
    /// Orders per request [default: 1000].
    #[arg(long, value_name = "N")]
    pub batch: Option<usize>,
    /// Submit this input as new orders even if it is the same as the last run's and that run did not finish (by default the run is resumed, so no order is numbered twice; an input given again after its run finished is always new orders).
    #[arg(long)]
    pub again: bool,
    /// Leave out, unsent, the orders of this source the DB server acknowledged before a restore and lost with it (a recovery that ended without them); by default this run is refused while any are left, since sent now they would undo newer writes. They stay in the journal.
    #[arg(long)]
    pub skip_lost: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Input file of JSON lines, or - for standard input.
    #[arg(value_name = "FILE", default_value = "-")]
    pub file: String,
}

#[derive(Debug, Args)]
pub struct OpsRecoverArgs {
    /// URL of the DB server, or the instances of one cluster separated by
    /// commas [default: http://127.0.0.1:7070].
    #[arg(long, value_name = "URL", value_parser = db_urls)]
    pub db: Option<String>,
    /// Journal directory; every SOURCE.journal in it is recovered. Repeat
    /// it to recover sources whose journals live in different directories.
    /// Give every journal to one run, or name with --expect-source each
    /// source that began after the backup whose journal a later run
    /// recovers: a run ends the recovery once every source the DB server
    /// waits for is in, and such a source, unknown to the backup, would
    /// come too late (its keys served as current meanwhile).
    #[arg(long, value_name = "DIR")]
    pub journal: Vec<PathBuf>,
    /// The backup the DB server was restored from (its manifest says which
    /// orders the restored data already holds).
    #[arg(long, value_name = "DIR")]
    pub backup: PathBuf,
    /// A source the backup knows whose journal is lost. The DB server waits
    /// for every such source before it trusts any record; naming it here
    /// ends that wait, and its changes since the backup are not recovered
    /// (logged on the server). Repeatable.
    #[arg(long, value_name = "NAME")]
    pub without_source: Vec<String>,
    /// A source that began after the backup (so the backup does not know
    /// it) whose journal a later run recovers: the DB server waits for its
    /// list too, answering every record as recovering until it arrives.
    /// Give it in the first run. Repeatable.
    #[arg(long, value_name = "NAME")]
    pub expect_source: Vec<String>,
    /// Schedule-list entries per request.
    #[arg(long, value_name = "N", default_value_t = 50_000)]
    pub chunk: usize,
    /// Orders per replay request [default: the ops batch setting, 1000].
    #[arg(long, value_name = "N")]
    pub batch: Option<usize>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum RecoveryCommand {
    /// List the keys still flagged as recovering, and the order each waits for.
    Flags(RecoveryFlagsArgs),
    /// End a recovery that the OpS will never complete: drops every flag (logged).
    Abort(RecoveryAbortArgs),
}

#[derive(Debug, Args)]
pub struct RecoveryFlagsArgs {
    /// The DB server's URL (or [client] server in --config).
    #[arg(
        long,
        value_name = "URL",
        value_parser = db_urls,
        env = "TIDEMARK_CLIENT__SERVER",
        default_value = "http://127.0.0.1:7070"
    )]
    pub server: String,
    /// Most flags to list.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RecoveryAbortArgs {
    /// The DB server's URL (or [client] server in --config).
    #[arg(
        long,
        value_name = "URL",
        value_parser = db_urls,
        env = "TIDEMARK_CLIENT__SERVER",
        default_value = "http://127.0.0.1:7070"
    )]
    pub server: String,
    /// Why the recovery is ended (required; written to the server log).
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// URL of the DB server (or of a service server).
    #[arg(
        long,
        value_name = "URL",
        value_parser = db_urls,
        env = "TIDEMARK_CLIENT__SERVER",
        default_value = "http://127.0.0.1:7070"
    )]
    pub server: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (this is the only time it is shown).
    /// Needs an admin token, except until a server has one: then a client
    /// on its host may create tokens without one (make the first an admin).
    Create {
        /// URL of the DB server.
        #[arg(
            long,
            value_name = "URL",
            value_parser = db_urls,
            env = "TIDEMARK_CLIENT__SERVER",
            default_value = "http://127.0.0.1:7070"
        )]
        server: String,
        /// reader (records, watch, state), ops (also orders and recovery)
        /// or admin (everything).
        #[arg(long, value_name = "ROLE")]
        role: String,
        /// A name for the token (who did what in the audit trail).
        #[arg(long, value_name = "NAME")]
        name: String,
    },
    /// List the tokens (names and roles, never the secrets).
    List {
        /// The DB server's URL (or [client] server in --config).
        #[arg(
            long,
            value_name = "URL",
            value_parser = db_urls,
            env = "TIDEMARK_CLIENT__SERVER",
            default_value = "http://127.0.0.1:7070"
        )]
        server: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by name.
    Revoke {
        /// The DB server's URL (or [client] server in --config).
        #[arg(
            long,
            value_name = "URL",
            value_parser = db_urls,
            env = "TIDEMARK_CLIENT__SERVER",
            default_value = "http://127.0.0.1:7070"
        )]
        server: String,
        /// The token's name.
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// URL of the DB server.
    #[arg(
        long,
        value_name = "URL",
        value_parser = db_urls,
        env = "TIDEMARK_CLIENT__SERVER",
        default_value = "http://127.0.0.1:7070"
    )]
    pub server: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Take a backup: online through a running server, or --offline from a stopped server's data directory.
    Create(BackupCreateArgs),
    /// Check a backup without restoring it: every checksum, and that the data decodes.
    Verify(BackupVerifyArgs),
    /// List the backups under a folder: time, size, epoch, and whether each one's checksums hold (--deep: the full check of backup verify).
    List(BackupListArgs),
    /// Keep the newest N backups under a folder and remove older ones.
    Prune(BackupPruneArgs),
}

#[derive(Debug, Args)]
pub struct BackupCreateArgs {
    /// The new backup directory (must not exist, or be empty).
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    /// Back up this running DB server online, e.g. http://127.0.0.1:7070.
    #[arg(long, value_name = "URL", value_parser = db_urls, conflicts_with = "offline")]
    pub server: Option<String>,
    /// With --offline: the data directory of a stopped server [default: the server's data_dir].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Back up a stopped server's data directory, or with --store postgres
    /// its PostgreSQL schema (refused while anything uses it).
    #[arg(long)]
    pub offline: bool,
    /// With --offline: the engine of the store, sqlite (a data directory)
    /// or postgres [default: the server's store].
    #[arg(long, value_name = "ENGINE", requires = "offline")]
    pub store: Option<String>,
    /// With --offline --store postgres: the PostgreSQL URL.
    #[arg(long, value_name = "URL", requires = "offline")]
    pub database_url: Option<String>,
    /// With --offline --store postgres: the schema [default: tidemark].
    #[arg(long, value_name = "NAME", requires = "offline")]
    pub pg_schema: Option<String>,
    /// After the backup, keep only the newest N backups of the same server and store beside it (in the parent of --to); other servers' backups there, and backups of another store served at the same URL or path (or of this one before a restore), are left alone. Keep the backup a recovery reads from (ops recover --backup) until the recovery is over.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub keep: Option<u64>,
    /// Print the manifest as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BackupVerifyArgs {
    /// The backup directory.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Check the manifest and checksums only; do not decode the data.
    #[arg(long)]
    pub quick: bool,
    /// Print the manifest as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BackupListArgs {
    /// The folder holding backup directories.
    #[arg(value_name = "ROOT")]
    pub root: PathBuf,
    /// Run the full check of each backup, as `backup verify` does (every
    /// page of its data; slower). Without it only checksums are checked,
    /// which damage the data had before it was backed up passes.
    #[arg(long)]
    pub deep: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BackupPruneArgs {
    /// The folder holding backup directories.
    #[arg(value_name = "ROOT")]
    pub root: PathBuf,
    /// How many of the newest backups to keep, per server and store history (backups name the server or data directory they were taken from, and the store's history: another store served at the same URL or path, or this one before a restore, is counted apart and keeps its backups). Only backups that pass the full check (as `backup verify`) count as kept; backups that fail it are neither counted nor removed.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub keep: u64,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup to restore.
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
    /// The data directory to restore into [default: the server's data_dir].
    /// With --store postgres: where the backup's configuration files go.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Restore into this engine: sqlite (a data directory) or postgres
    /// [default: sqlite]. A backup of either engine restores into either:
    /// this is how to move from the embedded engine to PostgreSQL.
    #[arg(long, value_name = "ENGINE")]
    pub store: Option<String>,
    /// PostgreSQL URL, with --store postgres.
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// PostgreSQL schema to restore into [default: tidemark].
    #[arg(long, value_name = "NAME")]
    pub pg_schema: Option<String>,
    /// Do not back up the current state first (it cannot be recovered afterwards).
    #[arg(long)]
    pub no_safety_backup: bool,
    /// Where the safety backup goes [default: <data-dir>.safety/<timestamp>;
    /// with --store postgres, tidemark-<pg-schema>.safety/<timestamp> in the
    /// current folder].
    #[arg(long, value_name = "DIR", conflicts_with = "no_safety_backup")]
    pub safety_dir: Option<PathBuf>,
    /// Do not run cleanup after restoring an online backup; the server then
    /// refuses to start until 'tidemark cleanup' has run.
    #[arg(long)]
    pub no_cleanup: bool,
    /// Also run SQLite's integrity check of every page before anything
    /// changes (seconds per GB; 'backup verify' runs the same). Without it,
    /// restore trusts the data by its checksums and checks its structure.
    #[arg(long)]
    pub check_integrity: bool,
    /// The restored store's epoch is at least N (by default one above the
    /// lost store's and the backup's). Needed when the data directory was
    /// lost after an earlier restore: 'ops recover' says which N.
    /// At most 2^40 (each restore adds one, so no store comes near it).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(..=1u64 << 40))]
    pub min_epoch: Option<u64>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// The data directory of a stopped server [default: the server's data_dir].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The engine of the store: sqlite (a data directory) or postgres
    /// [default: the server's store].
    #[arg(long, value_name = "ENGINE")]
    pub store: Option<String>,
    /// PostgreSQL URL, with --store postgres.
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// PostgreSQL schema [default: tidemark].
    #[arg(long, value_name = "NAME")]
    pub pg_schema: Option<String>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["in_secs", "cancel"])))]
pub struct QuiesceArgs {
    /// URL of the DB server, or of a service server (S8: application
    /// servers are quiesced one at a time; a service server takes the
    /// notice from its own host only).
    #[arg(long, value_name = "URL", value_parser = db_urls, env = "TIDEMARK_CLIENT__SERVER")]
    pub server: String,
    /// Go offline after this many seconds (at most 86400, a day); users
    /// see the time left.
    #[arg(long = "in", value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(..=86_400))]
    pub in_secs: Option<u64>,
    /// What users are told.
    #[arg(long, value_name = "TEXT", requires = "in_secs")]
    pub message: Option<String>,
    /// Cancel the notice in force.
    #[arg(long, conflicts_with = "in_secs")]
    pub cancel: bool,
    /// Quiesce the service server of this --id remotely, by name (S8):
    /// --server names its DB server (any instance of a cluster; several
    /// are tried in turn), which sends the notice down that service
    /// server's watch stream. Needs an admin token. --cancel then ends
    /// only a notice sent by name.
    #[arg(long, value_name = "NAME")]
    pub service: Option<String>,
}

#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// The standby to make primary (its --advertise URL). The old primary
    /// finishes its commits in flight and becomes a standby; writes sent
    /// meanwhile, to any instance, are held and committed by the new one.
    #[arg(long, value_name = "URL", value_parser = db_urls, env = "TIDEMARK_CLIENT__SERVER")]
    pub server: String,
}

#[derive(Debug, Subcommand)]
pub enum SchemaCommand {
    /// The schema in force (or, with --pending, the staged one), as a schema document.
    Show {
        /// The DB server's URL (or [client] server in --config).
        #[arg(long, value_name = "URL", value_parser = db_urls, env = "TIDEMARK_CLIENT__SERVER")]
        server: String,
        /// Show the staged (not yet published) schema instead.
        #[arg(long)]
        pending: bool,
    },
    /// Every published version: who published it, when, and what it changed.
    Versions {
        /// The DB server's URL (or [client] server in --config).
        #[arg(long, value_name = "URL", value_parser = db_urls, env = "TIDEMARK_CLIENT__SERVER")]
        server: String,
        /// Print the registry as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Store FILE, a schema document (the full desired schema), as the pending version. Unsafe changes are refused.
    Stage {
        /// The DB server's URL (or [client] server in --config).
        #[arg(long, value_name = "URL", value_parser = db_urls, env = "TIDEMARK_CLIENT__SERVER")]
        server: String,
        /// The schema document ('-' reads standard input).
        file: PathBuf,
    },
    /// Drop the staged schema without publishing it.
    Discard {
        /// The DB server's URL (or [client] server in --config).
        #[arg(long, value_name = "URL", value_parser = db_urls, env = "TIDEMARK_CLIENT__SERVER")]
        server: String,
    },
    /// The pending change in S1's five parts, and the DDL for the engine in use.
    Plan {
        /// The DB server's URL (or [client] server in --config).
        #[arg(long, value_name = "URL", value_parser = db_urls, env = "TIDEMARK_CLIENT__SERVER")]
        server: String,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Publish the pending version to every instance and service server; exits 0 once all of them run it (every service server with a watch stream open; one that does not report it by --wait is named, exit 1).
    Publish {
        /// The DB server's URL (or [client] server in --config).
        #[arg(long, value_name = "URL", value_parser = db_urls, env = "TIDEMARK_CLIENT__SERVER")]
        server: String,
        /// How long to wait for the service servers to report the new version.
        #[arg(long, value_name = "SECONDS", default_value_t = 60)]
        wait: u64,
    },
    /// The last publish or rollback, and which server runs which version.
    Status {
        /// The DB server's URL (or [client] server in --config).
        #[arg(long, value_name = "URL", value_parser = db_urls, env = "TIDEMARK_CLIENT__SERVER")]
        server: String,
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Go back to the previous version (as a new version), where that can be undone: added columns and tables still empty.
    Rollback {
        /// The DB server's URL (or [client] server in --config).
        #[arg(long, value_name = "URL", value_parser = db_urls, env = "TIDEMARK_CLIENT__SERVER")]
        server: String,
        /// How long to wait for the service servers to report the new version.
        #[arg(long, value_name = "SECONDS", default_value_t = 60)]
        wait: u64,
    },
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the temporary folder afterwards, and print where it is.
    #[arg(long)]
    pub keep: bool,
    /// Tell the story on this engine: sqlite or postgres.
    #[arg(long, value_name = "ENGINE", default_value = "sqlite")]
    pub store: String,
    /// With --store postgres: the database to use (its schema 'tidemark_demo'
    /// is replaced). Without, the demo starts a temporary PostgreSQL cluster
    /// itself (needs Debian's 'postgresql' package).
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
}

/// Checks a DB-server URL, or the instances of one cluster separated by
/// commas: each an `http://` or `https://` URL with a host (a value that is
/// not one made a service server retry for good, and client commands fail
/// as if the server were down).
pub fn db_urls(s: &str) -> Result<String, String> {
    let mut any = false;
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        any = true;
        let url = reqwest::Url::parse(part).map_err(|e| {
            format!(
                "{part:?} is not a URL ({e}); give the DB server's URL, e.g. http://127.0.0.1:7070"
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(format!(
                "{part:?} is not an http:// or https:// URL with a host; give the DB server's URL, e.g. http://127.0.0.1:7070"
            ));
        }
    }
    if !any {
        return Err("no URL given; give the DB server's URL, e.g. http://127.0.0.1:7070, or several separated by commas".into());
    }
    Ok(s.to_owned())
}
