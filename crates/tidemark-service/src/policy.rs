//! Whether data flagged as recovering may be used (P9).

use serde::{Deserialize, Serialize};
use std::str::FromStr;

/// A service server's standing policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Never serve data known to be outdated; wait for it to become current.
    #[default]
    LatestOnly,
    /// Serve flagged data, marked `recovering`.
    AcceptStale,
}

impl FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "latest-only" => Ok(Policy::LatestOnly),
            "accept-stale" => Ok(Policy::AcceptStale),
            other => Err(format!(
                "policy must be 'latest-only' or 'accept-stale', not '{other}'"
            )),
        }
    }
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::LatestOnly => "latest-only",
            Policy::AcceptStale => "accept-stale",
        }
    }
}

/// What one request asks for: the policy, or `Tidemark-Freshness`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    Latest,
    StaleOk,
}

impl Freshness {
    /// The freshness of a request: its header if present, else the policy.
    pub fn of(policy: Policy, header: Option<&str>) -> Result<Self, String> {
        match header {
            None => Ok(match policy {
                Policy::LatestOnly => Freshness::Latest,
                Policy::AcceptStale => Freshness::StaleOk,
            }),
            Some("latest") => Ok(Freshness::Latest),
            Some("stale-ok") => Ok(Freshness::StaleOk),
            Some(other) => Err(format!(
                "Tidemark-Freshness must be 'latest' or 'stale-ok', not '{other}'"
            )),
        }
    }
}
