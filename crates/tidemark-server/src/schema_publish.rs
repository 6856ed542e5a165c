//! Schema publication on the DB server (S1, S2, S6, S7, S9): the staged
//! schema, the plan, and the publish job, without HTTP.
//!
//! A publish is a job stored in the database (note `schema.publish`), so
//! that whoever runs the store next (this server after a crash, or the
//! next primary) finishes it:
//!
//! 1. `applying`: the job is recorded; then the DDL, the catalog, the
//!    registry row and the version bump commit in ONE transaction
//!    ([`Store::publish_schema`]). A crash before the commit leaves the old
//!    version; [`resume_publish`] runs the transaction again. A crash after
//!    it leaves the new version; the store answers "already published" and
//!    the job moves on. A transaction that cannot succeed (a rollback whose
//!    column now holds data) marks the job `failed`: the version stays.
//! 2. `announcing`: the version is in force; the pending schema is cleared
//!    and the `schema` watch event goes to every service server.
//! 3. `done`. Service servers fetch the schema and report their version
//!    (`POST /v1/schema/ack`) to the instance their watch stream is open
//!    at; each instance's heartbeat carries what its own service servers
//!    reported, so the job is complete once every connected one, at any
//!    instance, runs it.
//!
//! So every crash ends on exactly one version, the version only grows, and
//! there is no control file: the version in force lives in the store.
//!
//! The HA work calls [`resume_publish`] when an instance becomes primary.

use crate::hub::Push;
use crate::state::AppState;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tidemark_api::event::SchemaEvent;
use tidemark_api::schema::InvalidInput;
use tidemark_api::schema_change::{
    self, index_name, IndexDefinition, NewColumn, PendingSchema, PublishJob, PublishKind,
    PublishStatus, PublishStep, SchemaDiff, SchemaDocument, SchemaPlan, ServerSchemaVersion,
};
use tidemark_api::{ApiError, ErrorCode};
use tidemark_store::{Store, StoreError};

/// The note holding the staged schema.
const PENDING: &str = "schema.pending";
/// The note holding the last publish job.
const JOB: &str = "schema.publish";

/// Why a schema request was refused.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// A refusal the caller can act on (code and message).
    #[error("{0}")]
    Refused(ApiError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SchemaError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        SchemaError::Refused(ApiError::new(code, message))
    }
}

/// What one service server reported.
#[derive(Debug, Clone)]
struct Report {
    version: u64,
    at: String,
}

/// A service server whose watch stream is open at this instance, as its
/// heartbeat tells the other instances.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LocalService {
    pub name: String,
    pub version: Option<u64>,
    pub reported_at: Option<String>,
}

/// The in-memory side of schema publication on one DB server.
#[derive(Default)]
pub struct SchemaPublication {
    /// Serialises stage, publish and rollback within this process.
    lock: tokio::sync::Mutex<()>,
    /// A job is running in this process.
    running: AtomicBool,
    /// The staged schema (mirrors the note, for the order refusal message).
    pending: Mutex<Option<PendingSchema>>,
    /// The version each service server last reported.
    reports: Mutex<BTreeMap<String, Report>>,
    /// Open watch streams per subscriber name.
    connected: Mutex<BTreeMap<String, Streams>>,
    /// Service servers that ran a newer version than this store's before
    /// it was restored (name -> that version), until the next publish.
    ahead: Mutex<BTreeMap<String, u64>>,
    /// The version this instance last told its service servers of. The
    /// store's catalog may be re-read in several places (a standby's
    /// refresh, a read that met a dropped column, a take-over): comparing
    /// with this, not with the version before one of them, none goes
    /// untold.
    announced: std::sync::atomic::AtomicU64,
}

/// The watch streams open under one subscriber name.
#[derive(Debug, Clone, Copy, Default)]
struct Streams {
    open: usize,
    /// Of them, those that said they report the schema version they run
    /// (`Tidemark-Reports-Schema`: a service server).
    reporting: usize,
}

/// Counts an open watch stream until dropped.
pub struct Connection {
    app: Arc<AppState>,
    name: String,
    reporting: bool,
}

impl Drop for Connection {
    fn drop(&mut self) {
        let mut c = self.app.schema.connected.lock();
        if let Some(n) = c.get_mut(&self.name) {
            n.open -= 1;
            n.reporting -= usize::from(self.reporting);
            if n.open == 0 {
                // Reports are kept only while their stream is open: a
                // name that comes and goes leaves nothing behind.
                self.app.schema.reports.lock().remove(&self.name);
                c.remove(&self.name);
            }
        }
    }
}

impl SchemaPublication {
    /// Loads the staged schema from the store.
    pub async fn load(store: &dyn Store) -> Result<Self, StoreError> {
        let me = SchemaPublication::default();
        *me.pending.lock() = read_note(store, PENDING).await?;
        me.announced.store(store.schema().version, Ordering::SeqCst);
        Ok(me)
    }

    /// Marks subscriber `name`'s watch stream open while the guard lives;
    /// `reporting`: it said it reports its schema version (a service
    /// server), so a publish waits for it from the start.
    pub fn connect(app: &Arc<AppState>, name: &str, reporting: bool) -> Connection {
        let mut c = app.schema.connected.lock();
        let n = c.entry(name.to_owned()).or_default();
        n.open += 1;
        n.reporting += usize::from(reporting);
        Connection {
            app: app.clone(),
            name: name.to_owned(),
            reporting,
        }
    }

    /// Whether a publish waits for subscriber `name`: its stream said it
    /// reports its version, or it has reported one (a service server of
    /// an older build). Any other stream (a script reading events) reports
    /// nothing ever, and waiting for it would fail every publish.
    fn waited_for(
        connected: &BTreeMap<String, Streams>,
        reports: &BTreeMap<String, Report>,
        name: &str,
    ) -> bool {
        reports.contains_key(name) || connected.get(name).is_some_and(|n| n.reporting > 0)
    }

    /// Whether subscriber `name`'s watch stream is open here.
    pub fn is_connected(&self, name: &str) -> bool {
        self.connected.lock().contains_key(name)
    }

    /// The service servers whose streams are open here, with what each
    /// reported (for this instance's heartbeat); streams a publish does
    /// not wait for are left out.
    pub fn local_services(&self) -> Vec<LocalService> {
        // Lock order: `connected`, then `reports` (as `report` and a
        // closing stream take them).
        let connected = self.connected.lock();
        let reports = self.reports.lock();
        connected
            .keys()
            .filter(|name| Self::waited_for(&connected, &reports, name))
            .map(|name| {
                let r = reports.get(name);
                LocalService {
                    name: name.clone(),
                    version: r.map(|r| r.version),
                    reported_at: r.map(|r| r.at.clone()),
                }
            })
            .collect()
    }

    /// Records the version a service server reports it runs, and, if it
    /// ran a newer one than this store's before (`previous`), that the
    /// restored store's schema went back. Only while its watch stream is
    /// open here (checked under the same lock its closing takes, so no
    /// report outlives its stream); returns false otherwise.
    pub fn report(
        &self,
        subscriber: &str,
        version: u64,
        previous: Option<u64>,
        current: u64,
    ) -> bool {
        let connected = self.connected.lock();
        if !connected.contains_key(subscriber) {
            return false;
        }
        if let Some(p) = previous.filter(|p| *p > current) {
            tracing::error!(
                subscriber,
                ran = p,
                current,
                "{}",
                went_back(subscriber, p, current)
            );
            self.ahead.lock().insert(subscriber.to_owned(), p);
        }
        self.reports.lock().insert(
            subscriber.to_owned(),
            Report {
                version,
                at: chrono::Utc::now().to_rfc3339(),
            },
        );
        true
    }

    /// The refusal of an order naming a column that is only staged: says
    /// which pending version adds it; or, after a restore brought back an
    /// older schema than service servers ran, says so with the fix. Other
    /// errors pass unchanged. `current` is the version in force.
    pub fn explain(&self, e: StoreError, current: u64) -> Result<ApiError, StoreError> {
        let StoreError::Invalid { error, .. } = &e else {
            return Err(e);
        };
        let InvalidInput::UnknownColumn { table, column, .. } = error.as_ref() else {
            return Err(e);
        };
        let pending = self.pending.lock();
        let Some(p) = pending.as_ref().filter(|p| {
            p.tables
                .get(table)
                .is_some_and(|t| t.column(column).is_some())
        }) else {
            // Not staged: if the store went back to an older schema, the
            // column is probably one of the lost versions'.
            let ahead = self.ahead.lock();
            return match ahead.iter().next() {
                Some((name, v)) => Ok(ApiError::new(
                    ErrorCode::UnknownColumn,
                    format!("{e}; {}", went_back(name, *v, current)),
                )),
                None => Err(e),
            };
        };
        Ok(ApiError::new(
            ErrorCode::UnknownColumn,
            format!(
                "{e}; column '{table}.{column}' is staged in pending schema version {}, which is not published yet: publish it first ('tidemark schema publish'), then resend the batch",
                p.version
            ),
        ))
    }
}

/// The warning of a store whose schema went back below what service
/// server `name` ran, with the fix.
fn went_back(name: &str, ran: u64, current: u64) -> String {
    format!(
        "service server '{name}' ran schema version {ran}, but this store is at version {current}: a restore brought back an older schema (the store was lost, so no newer version could be carried forward); stage and publish the newer schema again ('tidemark schema stage', 'tidemark schema publish') before 'ops recover' replays orders naming its columns"
    )
}

async fn read_note<T: serde::de::DeserializeOwned>(
    store: &dyn Store,
    name: &str,
) -> Result<Option<T>, StoreError> {
    match store.note(name).await? {
        None => Ok(None),
        Some(text) => Ok(Some(serde_json::from_str(&text)?)),
    }
}

async fn write_note<T: serde::Serialize>(
    store: &dyn Store,
    name: &str,
    value: Option<&T>,
) -> Result<(), StoreError> {
    let text = value.map(serde_json::to_string).transpose()?;
    store.set_note(name, text).await
}

/// The staged schema, if any.
pub async fn pending(app: &AppState) -> Result<Option<PendingSchema>, StoreError> {
    let p: Option<PendingSchema> = read_note(app.store.as_ref(), PENDING).await?;
    *app.schema.pending.lock() = p.clone();
    Ok(p)
}

/// The last publish job, if any.
pub async fn job(app: &AppState) -> Result<Option<PublishJob>, StoreError> {
    read_note(app.store.as_ref(), JOB).await
}

fn active(job: &Option<PublishJob>) -> Option<&PublishJob> {
    job.as_ref()
        .filter(|j| matches!(j.step, PublishStep::Applying | PublishStep::Announcing))
}

fn in_progress(j: &PublishJob) -> SchemaError {
    SchemaError::new(
        ErrorCode::PublishInProgress,
        format!(
            "a {} from schema version {} to {} is in progress (step {:?}); wait for it ('tidemark schema status'), then try again",
            kind_name(j.kind),
            j.from_version,
            j.to_version,
            j.step
        ),
    )
}

fn kind_name(k: PublishKind) -> &'static str {
    match k {
        PublishKind::Publish => "publish",
        PublishKind::Rollback => "rollback",
    }
}

/// Stages `doc` as the pending version, refusing unsafe changes.
pub async fn stage(
    app: &AppState,
    doc: &SchemaDocument,
    by: &str,
) -> Result<PendingSchema, SchemaError> {
    let _l = app.schema.lock.lock().await;
    if let Some(j) = active(&job(app).await?) {
        return Err(in_progress(j));
    }
    let current = app.store.schema();
    let staged = schema_change::stage(&current, doc)
        .map_err(|r| SchemaError::new(r.code(), r.to_string()))?;
    let p = PendingSchema {
        version: staged.version,
        base_version: current.version,
        staged_by: by.to_owned(),
        staged_at: chrono::Utc::now().to_rfc3339(),
        tables: staged.tables,
    };
    write_note(app.store.as_ref(), PENDING, Some(&p)).await?;
    *app.schema.pending.lock() = Some(p.clone());
    Ok(p)
}

/// Drops the staged schema. Returns whether there was one.
pub async fn discard(app: &AppState) -> Result<bool, SchemaError> {
    let _l = app.schema.lock.lock().await;
    let had = pending(app).await?.is_some();
    write_note::<PendingSchema>(app.store.as_ref(), PENDING, None).await?;
    *app.schema.pending.lock() = None;
    Ok(had)
}

/// The pending schema, checked to be staged on the version in force.
async fn current_pending(app: &AppState) -> Result<PendingSchema, SchemaError> {
    let p = pending(app).await?.ok_or_else(|| {
        SchemaError::new(
            ErrorCode::NoPendingSchema,
            "no schema is staged; stage one first ('tidemark schema stage --server URL FILE')",
        )
    })?;
    let current = app.store.schema().version;
    if p.base_version != current {
        return Err(SchemaError::new(
            ErrorCode::PendingOutdated,
            format!(
                "the pending schema was staged on version {}, but version {current} is in force now; stage the document again so it is checked against version {current}",
                p.base_version
            ),
        ));
    }
    Ok(p)
}

/// The pending change in S1's five parts, with the DDL of the engine in use.
pub async fn plan(app: &AppState) -> Result<SchemaPlan, SchemaError> {
    let p = current_pending(app).await?;
    let current = app.store.schema();
    let target = p.schema();
    let diff = SchemaDiff::between(&current, &target);
    let mut indexes = Vec::new();
    for (t, def) in &target.tables {
        for ix in &def.indexes {
            let new = current
                .tables
                .get(t)
                .is_none_or(|old| !old.indexes.contains(ix));
            indexes.push(IndexDefinition {
                table: t.clone(),
                name: index_name(t, ix),
                columns: ix.columns.clone(),
                new,
            });
        }
    }
    let ddl = app.store.schema_ddl(&target)?;
    Ok(SchemaPlan {
        from_version: current.version,
        to_version: target.version,
        engine: app.store.engine().to_owned(),
        changes: diff.describe(),
        tables: target.tables.clone(),
        indexes,
        new_columns: diff
            .new_columns
            .iter()
            .map(|(t, c)| NewColumn {
                table: t.clone(),
                name: c.name.clone(),
                ty: c.ty,
            })
            .collect(),
        new_tables: diff.new_tables.iter().map(|(t, _)| t.clone()).collect(),
        ddl: ddl.statements,
        ddl_before_transaction: ddl.before_transaction,
    })
}

/// Starts publishing the pending version: records the job, then runs its
/// `applying` step before answering (so a refusal reaches the caller), and
/// announces in the background.
pub async fn publish(app: &Arc<AppState>, by: &str) -> Result<PublishJob, SchemaError> {
    let _l = app.schema.lock.lock().await;
    if let Some(j) = active(&job(app).await?) {
        if app.schema.running.load(Ordering::SeqCst) {
            return Err(in_progress(j));
        }
        // Left by a crash and not resumed yet (e.g. the store was down at
        // start): finish it first.
        let j = j.clone();
        return run(app, j).await;
    }
    let p = current_pending(app).await?;
    let j = PublishJob {
        kind: PublishKind::Publish,
        from_version: p.base_version,
        to_version: p.version,
        step: PublishStep::Applying,
        started_by: by.to_owned(),
        started_at: chrono::Utc::now().to_rfc3339(),
        finished_at: None,
        error: None,
        resumed: 0,
        schema: p.schema(),
    };
    write_note(app.store.as_ref(), JOB, Some(&j)).await?;
    tidemark_failpoint::hit("schema.publish.after_job");
    run(app, j).await
}

/// Starts a rollback to the previous version: a new version with the
/// previous version's tables, published like any other. "Previous" is the
/// version before the first one with the tables in force now, so a second
/// rollback goes on back (v4 rolled v3 back to v2's tables: the next goes
/// to v1's, not v3's again). Refused if there is no previous version; the
/// store refuses it if an added column or table holds data.
pub async fn rollback(app: &Arc<AppState>, by: &str) -> Result<PublishJob, SchemaError> {
    let _l = app.schema.lock.lock().await;
    if let Some(j) = active(&job(app).await?) {
        return Err(in_progress(j));
    }
    let current = app.store.schema();
    let versions = app.store.schema_versions().await?;
    let first_alike = versions
        .iter()
        .filter(|v| {
            v.version <= current.version && schema_change::same_content(&v.schema, &current)
        })
        .map(|v| v.version)
        .min()
        .unwrap_or(current.version);
    let Some(prev) = versions.iter().rev().find(|v| v.version < first_alike) else {
        return Err(SchemaError::new(
            ErrorCode::RollbackRefused,
            format!(
                "rollback refused: schema version {} is the first one kept, there is nothing to go back to; to change the schema, stage the one you want ('tidemark schema stage') and publish it",
                current.version
            ),
        ));
    };
    let target = tidemark_api::Schema {
        version: current.version + 1,
        tables: prev.schema.tables.clone(),
    };
    if schema_change::same_content(&current, &target) {
        return Err(SchemaError::new(
            ErrorCode::RollbackRefused,
            format!(
                "rollback refused: version {} has the same tables, columns and indexes as version {}: there is nothing to undo",
                current.version, prev.version
            ),
        ));
    }
    let j = PublishJob {
        kind: PublishKind::Rollback,
        from_version: current.version,
        to_version: target.version,
        step: PublishStep::Applying,
        started_by: by.to_owned(),
        started_at: chrono::Utc::now().to_rfc3339(),
        finished_at: None,
        error: None,
        resumed: 0,
        schema: target,
    };
    write_note(app.store.as_ref(), JOB, Some(&j)).await?;
    run(app, j).await
}

/// Runs a job from its recorded step: `applying` in the caller, the rest
/// in the background. Returns the job as it stands after `applying`.
async fn run(app: &Arc<AppState>, mut j: PublishJob) -> Result<PublishJob, SchemaError> {
    app.schema.running.store(true, Ordering::SeqCst);
    let result = apply_step(app, &mut j).await;
    if let Err(e) = result {
        app.schema.running.store(false, Ordering::SeqCst);
        return Err(e);
    }
    let (app2, j2) = (app.clone(), j.clone());
    tokio::spawn(async move {
        let mut j = j2;
        if let Err(e) = announce_step(&app2, &mut j).await {
            tracing::warn!(error = %e, version = j.to_version, "could not finish announcing a schema version; it is resumed at the next start or publish");
        }
        app2.schema.running.store(false, Ordering::SeqCst);
    });
    Ok(j)
}

async fn apply_step(app: &AppState, j: &mut PublishJob) -> Result<(), SchemaError> {
    if j.step != PublishStep::Applying {
        return Ok(());
    }
    tidemark_failpoint::hit("schema.publish.before_apply");
    match app.store.publish_schema(&j.schema, &j.started_by).await {
        Ok(applied) => {
            tracing::info!(
                from = j.from_version,
                to = j.to_version,
                applied,
                kind = kind_name(j.kind),
                "schema version in force"
            );
        }
        Err(e @ StoreError::Unavailable(_)) => {
            // Outcome unknown: the job stays `applying` and is resumed.
            return Err(e.into());
        }
        Err(e) => {
            tracing::warn!(error = %e, to = j.to_version, "schema job failed; the version in force stays");
            j.step = PublishStep::Failed;
            j.error = Some(e.to_string());
            j.finished_at = Some(chrono::Utc::now().to_rfc3339());
            write_note(app.store.as_ref(), JOB, Some(&*j)).await?;
            return Err(match e {
                StoreError::SchemaRefused(m) => SchemaError::new(ErrorCode::RollbackRefused, m),
                e => e.into(),
            });
        }
    }
    forget_answers(app);
    tidemark_failpoint::hit("schema.publish.after_apply");
    j.step = PublishStep::Announcing;
    write_note(app.store.as_ref(), JOB, Some(&*j)).await?;
    Ok(())
}

async fn announce_step(app: &AppState, j: &mut PublishJob) -> Result<(), StoreError> {
    if j.step != PublishStep::Announcing {
        return Ok(());
    }
    if let Some(p) = pending(app).await? {
        if p.version <= j.to_version {
            write_note::<PendingSchema>(app.store.as_ref(), PENDING, None).await?;
            *app.schema.pending.lock() = None;
        }
    }
    app.schema
        .announced
        .fetch_max(j.to_version, Ordering::SeqCst);
    app.hub.publish(Push::Schema(SchemaEvent {
        version: j.to_version,
    }));
    // The operator published again: what service servers ran before the
    // restore is no longer the question.
    app.schema.ahead.lock().clear();
    tidemark_failpoint::hit("schema.publish.after_announce");
    j.step = PublishStep::Done;
    j.finished_at = Some(chrono::Utc::now().to_rfc3339());
    write_note(app.store.as_ref(), JOB, Some(&*j)).await?;
    tracing::info!(version = j.to_version, "schema version announced");
    Ok(())
}

/// Finishes a publish or rollback job left unfinished by a crash (of this
/// server, or of the primary before this one): resumes it from its step,
/// or, if its transaction cannot succeed, marks it failed (the version in
/// force stays). Either way the store ends on exactly one version.
///
/// Called at server start, and to be called by whoever makes an instance
/// the primary. Returns the job as it stands after the call, if any.
pub async fn resume_publish(app: &Arc<AppState>) -> Result<Option<PublishJob>, SchemaError> {
    let _l = app.schema.lock.lock().await;
    let Some(mut j) = active(&job(app).await?).cloned() else {
        return Ok(None);
    };
    j.resumed += 1;
    tracing::warn!(
        from = j.from_version,
        to = j.to_version,
        step = ?j.step,
        kind = kind_name(j.kind),
        "resuming a schema job left unfinished"
    );
    write_note(app.store.as_ref(), JOB, Some(&j)).await?;
    apply_step(app, &mut j).await?;
    announce_step(app, &mut j).await?;
    Ok(Some(j))
}

/// Drops the serialised answers: they were made with the old columns. A
/// read in flight across the catalog swap cannot fill the cache (the clear
/// bumps every shard's generation).
fn forget_answers(app: &AppState) {
    if let Some(cache) = &app.read_cache {
        cache.clear();
    }
}

/// Makes this instance serve the schema version in force in the store,
/// when another instance published it (over one PostgreSQL): reloads the
/// catalog and drops the answers made with the old one. The HA work calls
/// it on an instance that did not run the publish.
pub async fn adopt_published(app: &AppState) -> Result<u64, StoreError> {
    app.store.reload_schema().await?;
    forget_answers(app);
    pending(app).await?;
    Ok(app.store.schema().version)
}

/// [`resume_publish`], logging the outcome: for server start and promotion.
pub async fn resume_logged(app: &Arc<AppState>) {
    match resume_publish(app).await {
        Ok(Some(job)) => {
            tracing::info!(version = job.to_version, step = ?job.step, "unfinished schema job resumed")
        }
        Ok(None) => {}
        Err(e) => {
            tracing::error!(error = %e, "could not resume an unfinished schema job; 'tidemark schema publish' retries it")
        }
    }
}

/// On an instance that follows another's commits (a standby, or one just
/// promoted), after it re-read the store: if the schema version is not the
/// one it last told of, drop the answers made with the old columns and
/// tell its own service servers.
pub async fn follow_version(app: &AppState) {
    let now = app.store.schema().version;
    let before = app.schema.announced.swap(now, Ordering::SeqCst);
    if now == before {
        return;
    }
    forget_answers(app);
    if let Err(e) = pending(app).await {
        tracing::debug!(error = %e, "could not re-read the staged schema; retrying at the next refresh");
    }
    app.hub.publish(Push::Schema(SchemaEvent { version: now }));
    tracing::info!(
        from = before,
        to = now,
        "schema version published by the primary adopted"
    );
}

/// Who runs which version, and whether the last job is complete.
pub async fn status(app: &AppState) -> Result<PublishStatus, SchemaError> {
    let current = app.store.schema().version;
    let pending = pending(app).await?.map(|p| p.version);
    let job = job(app).await?;
    let mut servers = vec![ServerSchemaVersion {
        name: "db".into(),
        kind: schema_change::KIND_DB_SERVER.into(),
        version: Some(current),
        connected: true,
        reported_at: None,
    }];
    // Service servers connected to the other instances, by their heartbeats.
    let mut elsewhere = Vec::new();
    if let Some(cluster) = &app.cluster {
        // The other instances, by their heartbeats.
        for m in cluster.members.read().iter() {
            if m.url == cluster.url {
                continue;
            }
            servers.push(ServerSchemaVersion {
                name: m.url.clone(),
                kind: schema_change::KIND_DB_SERVER.into(),
                version: Some(m.schema_version),
                connected: true,
                reported_at: Some(m.heartbeat.clone()),
            });
            let services: Vec<LocalService> = m
                .services
                .as_deref()
                .and_then(|s| serde_json::from_str(s).ok())
                .unwrap_or_default();
            elsewhere.extend(services);
        }
    }
    let connected = app.schema.connected.lock().clone();
    let reports = app.schema.reports.lock().clone();
    let mut names: Vec<&String> = connected.keys().chain(reports.keys()).collect();
    names.sort();
    names.dedup();
    let mut lagging: Vec<String> = servers
        .iter()
        .filter(|s| s.version != Some(current))
        .map(|s| s.name.clone())
        .collect();
    for name in names {
        let r = reports.get(name);
        let is_connected = connected.contains_key(name);
        let waited = SchemaPublication::waited_for(&connected, &reports, name);
        if waited && is_connected && r.map(|r| r.version) != Some(current) {
            lagging.push(name.clone());
        }
        servers.push(ServerSchemaVersion {
            name: name.clone(),
            kind: if waited {
                schema_change::KIND_SERVICE_SERVER
            } else {
                schema_change::KIND_WATCH_STREAM
            }
            .into(),
            version: r.map(|r| r.version),
            connected: is_connected,
            reported_at: r.map(|r| r.at.clone()),
        });
    }
    for s in elsewhere {
        if connected.contains_key(&s.name) {
            continue; // its stream moved here: this instance's view is newer
        }
        if s.version != Some(current) {
            lagging.push(s.name.clone());
        }
        servers.push(ServerSchemaVersion {
            name: s.name,
            kind: schema_change::KIND_SERVICE_SERVER.into(),
            version: s.version,
            connected: true,
            reported_at: s.reported_at,
        });
    }
    // The job is read from the store, the version in force from the
    // catalog this instance reads with, which a standby follows (every
    // half second): until it has, this instance does not run the job's
    // version, and its reads still leave out what the job added.
    if job
        .as_ref()
        .is_some_and(|j| j.step != PublishStep::Failed && j.to_version > current)
    {
        lagging.insert(0, "db".into());
    }
    let job_done = job.as_ref().is_none_or(|j| j.step == PublishStep::Done);
    let warnings = app
        .schema
        .ahead
        .lock()
        .iter()
        .map(|(name, v)| went_back(name, *v, current))
        .collect();
    Ok(PublishStatus {
        warnings,
        current_version: current,
        pending_version: pending,
        complete: job_done && lagging.is_empty(),
        job,
        servers,
        lagging,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TestServer;
    use tidemark_api::schema::{Column, ColumnType};

    /// A version the store moved to under this instance is told of once,
    /// even when the catalog was re-read before the instance looked (a read
    /// that met a dropped column, a take-over): before, the tail compared
    /// with the version just before its own refresh and told nobody.
    #[tokio::test]
    async fn a_version_the_store_moved_to_is_told_of_once() {
        let t = TestServer::open(async |_: &dyn Store| {}).await;
        let mut pushes = t.app.hub.subscribe();
        let mut v2 = t.store.schema().as_ref().clone();
        v2.version += 1;
        v2.tables
            .get_mut("subscriber")
            .unwrap()
            .columns
            .push(Column {
                name: "tier".into(),
                ty: ColumnType::Integer,
            });
        t.store.publish_schema(&v2, "elsewhere").await.unwrap();
        follow_version(&t.app).await;
        match pushes.try_recv() {
            Ok(Push::Schema(s)) => assert_eq!(s.version, v2.version),
            other => panic!("the new version is told of: {other:?}"),
        }
        follow_version(&t.app).await;
        assert!(pushes.try_recv().is_err(), "and only once");
    }
}
