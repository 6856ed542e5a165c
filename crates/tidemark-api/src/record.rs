//! The record answer shared by the DB server and the service servers.

use crate::{Fields, Version};
use serde::{Deserialize, Serialize};

/// Where a service server's answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Cache,
    Db,
}

/// A stored record: its fields and the version of the change that wrote them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub fields: Fields,
    pub version: Version,
}

/// The body of `GET /v1/records/{table}/{key}` and of `update`/`recovered`
/// events. `found: false` has no fields; a delete pushed as an event carries
/// the version of the delete so caches can order it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordAnswer {
    pub table: String,
    pub key: String,
    pub found: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Fields>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Version>,
    /// The recovering identifier (P8): this answer may be outdated.
    #[serde(default)]
    pub recovering: bool,
    /// Only on service-server answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
}

impl RecordAnswer {
    pub fn found(table: &str, key: &str, record: Record, recovering: bool) -> Self {
        Self {
            table: table.to_owned(),
            key: key.to_owned(),
            found: true,
            fields: Some(record.fields),
            version: Some(record.version),
            recovering,
            source: None,
        }
    }

    pub fn missing(table: &str, key: &str, version: Option<Version>, recovering: bool) -> Self {
        Self {
            table: table.to_owned(),
            key: key.to_owned(),
            found: false,
            fields: None,
            version,
            recovering,
            source: None,
        }
    }
}
