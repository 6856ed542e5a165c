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

/// A quiesce notice in force (S4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuiesceNotice {
    /// RFC 3339 time at which the server goes offline.
    pub deadline: String,
    pub seconds_left: u64,
    pub message: String,
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
}
