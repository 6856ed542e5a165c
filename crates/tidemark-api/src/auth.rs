//! Tokens and roles (`Authorization: Bearer TOKEN`).

use serde::{Deserialize, Serialize};
use std::str::FromStr;

/// What a token may do. Each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessRole {
    /// Records, watch streams, state.
    Reader,
    /// Also orders, the recovery schedule list, recovery complete.
    Ops,
    /// Everything: backups, recovery abort, quiesce, tokens, audit.
    Admin,
}

impl AccessRole {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessRole::Reader => "reader",
            AccessRole::Ops => "ops",
            AccessRole::Admin => "admin",
        }
    }
}

impl FromStr for AccessRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "reader" => Ok(AccessRole::Reader),
            "ops" => Ok(AccessRole::Ops),
            "admin" => Ok(AccessRole::Admin),
            other => Err(format!(
                "role must be 'reader', 'ops' or 'admin', not '{other}'"
            )),
        }
    }
}

/// Body of `POST /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub name: String,
    pub role: AccessRole,
}

/// A token as listed: never the secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub name: String,
    pub role: AccessRole,
    pub created_at: String,
}

/// Answer of `POST /v1/tokens`: the secret, shown this once.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenCreated {
    pub name: String,
    pub role: AccessRole,
    pub token: String,
}

/// Without the secret: a `{:?}` in a log or a panic message must not
/// print it.
impl std::fmt::Debug for TokenCreated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCreated")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("token", &"***")
            .finish()
    }
}

/// One entry of the audit trail (`GET /v1/audit`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at: String,
    /// The token name, or `loopback` in protected mode.
    pub who: String,
    pub action: String,
    #[serde(default)]
    pub detail: serde_json::Value,
}
