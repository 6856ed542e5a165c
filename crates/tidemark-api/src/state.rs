//! `/v1/state` and `/v1/recovery` answers.

use serde::{Deserialize, Serialize};

/// The recovery state of the DB server (P5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecoveryState {
    Normal,
    Recovering,
    Recovered,
}

/// The HA role of a DB server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Standby,
}

impl RecoveryState {
    /// As the API spells it (its serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            RecoveryState::Normal => "normal",
            RecoveryState::Recovering => "recovering",
            RecoveryState::Recovered => "recovered",
        }
    }
}

impl Role {
    /// As the API spells it (its serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Standby => "standby",
        }
    }
}

/// Body of a service server's `GET /v1/state`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceState {
    pub id: String,
    /// `latest-only` or `accept-stale`.
    pub policy: String,
    /// Its DB server's URL, or the cluster's URLs comma-separated (`--db`).
    pub db: String,
    /// Its watch stream is open.
    pub connected: bool,
    /// The DB server's epoch, as last seen.
    pub db_epoch: u64,
    pub cache_entries: u64,
    pub cache_generation: u64,
    pub last_event_id: Option<String>,
    pub snapshot_event_id: Option<String>,
    pub schema_version: u64,
    /// The DB server's quiesce notice, counted down to now.
    pub quiesce: Option<crate::event::QuiesceEvent>,
    /// This server's own notice (S8), counted down to now: the sooner of
    /// one given on its host and one sent by name through the DB server.
    pub own_quiesce: Option<QuiesceNotice>,
    /// Whether `own_quiesce` is the one sent by name (cancelled through
    /// the DB server, not on this host).
    #[serde(default)]
    pub own_quiesce_by_name: bool,
    /// The DB-server instance its watch stream was last opened at (one of
    /// `db`), if any.
    #[serde(default)]
    pub stream_instance: Option<String>,
    /// Seconds until the DB server or this server (the sooner) goes
    /// offline, while a notice is in force.
    pub quiesce_in: Option<u64>,
}

/// A quiesce notice in force (S4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuiesceNotice {
    /// RFC 3339 time at which the server goes offline.
    pub deadline: String,
    /// Whole seconds left, rounded up (for people).
    pub seconds_left: u64,
    /// Milliseconds left (for programs: `seconds_left` may be up to a
    /// second more than what is left). Absent from older servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ms_left: Option<u64>,
    pub message: String,
}

impl QuiesceNotice {
    /// A notice with `left` to go: the seconds rounded up ("offline in
    /// 30 s" right after `--in 30`, and 0 only once the deadline passed).
    pub fn with_left(deadline: String, left: std::time::Duration, message: String) -> Self {
        let ms = left.as_millis() as u64;
        Self {
            deadline,
            seconds_left: ms.div_ceil(1000),
            ms_left: Some(ms),
            message,
        }
    }

    /// The time left as told: the milliseconds (the seconds are rounded
    /// up), or the seconds from an older server.
    pub fn left(&self) -> std::time::Duration {
        self.ms_left
            .map(std::time::Duration::from_millis)
            .unwrap_or(std::time::Duration::from_secs(self.seconds_left))
    }
}

/// Body of `GET /v1/recovery`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecoveryStatus {
    pub state: RecoveryState,
    pub epoch: u64,
    pub flagged: u64,
    pub cleared: u64,
    #[serde(default)]
    pub started_at: Option<String>,
    /// Flags still set.
    #[serde(default)]
    pub remaining: u64,
    /// The final chunk of the schedule list has arrived; before it, every
    /// read is answered as recovering.
    #[serde(default)]
    pub schedule_final: bool,
    /// The OpS has said it sent all the difference data.
    #[serde(default)]
    pub complete_requested: bool,
    /// Estimated end, from the clearing rate so far.
    #[serde(default)]
    pub estimated_end: Option<String>,
    /// Sources the restored data knows (they had applied orders at the
    /// backup point) whose final schedule chunk has not arrived and that no
    /// operator has waived. The blanket stays until this is empty.
    #[serde(default)]
    pub waiting_for_sources: Vec<String>,
    /// Sources an operator declared lost (`ops recover --without-source`).
    #[serde(default)]
    pub waived_sources: Vec<String>,
}

/// Body of `POST /v1/recovery/schedule` (P6, P7). Unknown properties are
/// refused (a misspelt `final` would leave the list open).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleChunk {
    pub source: String,
    /// Absent: none (an empty final chunk: nothing changed since the backup).
    #[serde(default)]
    pub entries: Vec<ScheduleEntry>,
    #[serde(default, rename = "final")]
    pub final_chunk: bool,
    /// With `final`: sources the restored data knows but whose journals are
    /// lost, so no schedule list will ever come for them. Their keys cannot
    /// be recovered; naming them is an explicit, logged operator decision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub without_sources: Vec<String>,
    /// Sources the restored data does not know (they began after the
    /// backup) whose lists another `ops recover` run will send: the
    /// schedule is not final, and every record is answered as recovering,
    /// until each has sent its final chunk or been waived. Refused once the
    /// schedule is final.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expect_sources: Vec<String>,
}

/// One key of the recovery schedule list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleEntry {
    pub table: String,
    pub key: String,
    pub through_seq: u64,
}

/// Answer of `POST /v1/recovery/schedule`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleAnswer {
    pub flagged: u64,
    /// Entries whose order the restored data already holds.
    pub skipped: u64,
    #[serde(rename = "final")]
    pub final_chunk: bool,
}

/// One flag still set, for operators (`GET /v1/recovery/flags`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlagInfo {
    pub table: String,
    pub key: String,
    pub source: String,
    /// The key stays flagged until this order of `source` is applied.
    pub through_seq: u64,
    /// The source's applied-order high-water mark now.
    pub high_water: u64,
}

/// Body of `GET /v1/state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerState {
    pub state: RecoveryState,
    pub role: Role,
    pub epoch: u64,
    /// The last committed change-log seq.
    pub seq: u64,
    pub schema_version: u64,
    #[serde(default)]
    pub quiesce: Option<QuiesceNotice>,
    /// Names this server process; changes on every start.
    pub boot: String,
    pub store: String,
    /// Recovery progress (also at `/v1/recovery`).
    #[serde(default)]
    pub recovery: Option<RecoveryStatus>,
    /// With the PostgreSQL engine: the lease term this instance knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
    /// With the PostgreSQL engine: the primary's advertised URL, if one is
    /// online (`null` during a failover, and on a single DB server).
    #[serde(default)]
    pub primary: Option<String>,
    /// With the PostgreSQL engine: this instance's advertised URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// With the PostgreSQL engine: every live instance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberInfo>,
}

/// One instance of a cluster, as `GET /v1/state` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Its advertised URL.
    pub url: String,
    pub role: Role,
    /// The term it last saw.
    pub term: u64,
    /// RFC 3339 time of its last heartbeat.
    pub last_heartbeat: String,
    /// Milliseconds since its last heartbeat.
    pub heartbeat_age_ms: u64,
    /// The program version it runs.
    pub version: String,
    pub schema_version: u64,
    #[serde(default)]
    pub quiesce: Option<QuiesceNotice>,
    /// False for an instance whose heartbeats stopped without a clean
    /// leave (killed, crashed, cut off from PostgreSQL): listed for ten
    /// minutes as down, with its last heartbeat.
    #[serde(default = "alive_default")]
    pub alive: bool,
}

fn alive_default() -> bool {
    true
}

/// Body of `POST /v1/watch/interest`: what a service server holds, sent in
/// chunks before it reconnects its stream to an instance of a cluster, or
/// to a single server that restarted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InterestDeclaration {
    pub subscriber: String,
    /// `[table, key]` pairs.
    pub keys: Vec<(String, String)>,
    /// The last chunk: the stream opened next resumes.
    #[serde(rename = "final")]
    pub final_chunk: bool,
    /// With the last chunk: the newest version the subscriber holds
    /// (`0.0` for none). A single server resumes a stream of an earlier
    /// boot only if that boot's run in its store reached it: cached
    /// records may be newer than the stream's id (fetched, not pushed).
    /// Absent (an older service server): no such resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest: Option<crate::Version>,
}

/// Body of `POST /v1/cluster/handover` (instance to instance).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Handover {
    /// The advertised URL of the standby that becomes primary.
    pub to: String,
}

/// Body of `POST /v1/services/report`: a service server says, every few
/// seconds, how it runs (for the operator console).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceReport {
    pub subscriber: String,
    /// `latest-only` or `accept-stale`.
    pub policy: String,
    /// Records in its cache.
    pub cache_entries: u64,
    /// The schema version it runs.
    pub schema_version: u64,
    /// Its own quiesce notice in force (given on its host, or sent by name
    /// through the DB server: S8), counted down to the report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiesce: Option<QuiesceNotice>,
}

/// One service server in `GET /v1/services`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub name: String,
    pub policy: String,
    pub cache_entries: u64,
    pub schema_version: u64,
    /// Whether its watch stream is open on this instance.
    pub connected: bool,
    /// Milliseconds since its last report.
    pub report_age_ms: u64,
    /// Its own quiesce notice as of its last report, counted down to now
    /// (`seconds_left` 0: offline).
    #[serde(default)]
    pub quiesce: Option<QuiesceNotice>,
}

#[cfg(test)]
mod tests {

    #[test]
    fn names_are_the_serde_names() {
        for st in [
            RecoveryState::Normal,
            RecoveryState::Recovering,
            RecoveryState::Recovered,
        ] {
            assert_eq!(serde_json::to_value(st).unwrap(), st.as_str());
        }
        for r in [Role::Primary, Role::Standby] {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
    }

    use super::{RecoveryState, Role, ScheduleChunk};

    /// CONTRACT.md: "An empty final chunk means nothing changed since the
    /// backup"; it may leave out `entries`.
    #[test]
    fn a_final_chunk_may_leave_out_its_entries() {
        let c: ScheduleChunk =
            serde_json::from_str(r#"{"source": "ops-1", "final": true}"#).unwrap();
        assert!(c.final_chunk && c.entries.is_empty());
    }
}

/// The longest quiesce notice a server takes: a day.
pub const MAX_QUIESCE_SECONDS: u64 = 86_400;
/// The longest quiesce message.
pub const MAX_QUIESCE_MESSAGE_CHARS: usize = 1000;

/// The body of `POST /v1/quiesce` (both servers). Unknown properties are
/// refused (a misspelt `message` would announce the default one).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuiesceRequest {
    pub seconds: u64,
    #[serde(default)]
    pub message: Option<String>,
}

impl QuiesceRequest {
    /// Reads and checks a body: a JSON object (serde would take
    /// `[5, "text"]` for the struct too) within the limits. The refusal
    /// is `bad_json` or `bad_request`, with what to send.
    pub fn parse(body: &[u8]) -> Result<Self, crate::ApiError> {
        use crate::{ApiError, ErrorCode};
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::new(
                ErrorCode::BadJson,
                "send a JSON object: {\"seconds\": N, \"message\": \"…\"}".to_owned(),
            ));
        }
        let req: Self = serde_json::from_slice(body).map_err(|e| {
            ApiError::new(
                ErrorCode::BadJson,
                format!("{e}; send {{\"seconds\": N, \"message\": \"…\"}}"),
            )
        })?;
        if req.seconds > MAX_QUIESCE_SECONDS {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!(
                    "a quiesce notice can be at most {MAX_QUIESCE_SECONDS} seconds ahead, not {}",
                    req.seconds
                ),
            ));
        }
        // It goes to watch streams, logs and the audit trail.
        let chars = req.message.as_ref().map_or(0, |m| m.chars().count());
        if chars > MAX_QUIESCE_MESSAGE_CHARS {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!(
                    "a quiesce message can be at most {MAX_QUIESCE_MESSAGE_CHARS} characters, not {chars}; shorten it"
                ),
            ));
        }
        Ok(req)
    }
}
