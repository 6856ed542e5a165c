//! Watch-stream events (`GET /v1/watch`) and their resumable ids.

use crate::state::QuiesceNotice;
use crate::RecordAnswer;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The id of a watch event: `{epoch}-{seq}-{boot}`.
///
/// `seq` is the last change-log seq the subscriber has been sent. `boot`
/// names the stream: on a single DB server `HISTORY.BOOT` (its store's
/// history, then the process), in a cluster the cluster's id. The
/// subscriber interest a server keeps is lost with the process, so an id
/// from another boot resumes only right after the subscriber declared what
/// it holds, and one from another epoch or history not at all: the server
/// answers with an `epoch` event instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventId {
    pub epoch: u64,
    pub seq: u64,
    pub boot: String,
}

impl EventId {
    /// The stream part of a single DB server's ids: `HISTORY.BOOT`.
    pub fn single_stream(history: &str, boot: &str) -> String {
        format!("{history}.{boot}")
    }

    /// The store history and boot of a single DB server's id (`None`: a
    /// cluster's, or an older server's, which name no history).
    pub fn history_boot(&self) -> Option<(&str, &str)> {
        self.boot.split_once('.')
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.epoch, self.seq, self.boot)
    }
}

impl FromStr for EventId {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let mut parts = s.splitn(3, '-');
        let epoch = parts.next().ok_or(())?.parse().map_err(|_| ())?;
        let seq = parts.next().ok_or(())?.parse().map_err(|_| ())?;
        let boot = parts.next().ok_or(())?.to_owned();
        if boot.is_empty() {
            return Err(());
        }
        Ok(EventId { epoch, seq, boot })
    }
}

/// Why caches must revalidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EpochReason {
    /// A restore happened: the epoch grew.
    Restore,
    /// The server cannot resume from the given id (other boot, or the change
    /// log no longer reaches back that far).
    CannotResume,
    /// The whole recovery schedule list has arrived: answers given as
    /// "recovering" before it may now be current.
    ScheduleComplete,
    /// An operator ended a recovery: flags were dropped.
    RecoveryAborted,
    /// Keys were flagged after the schedule list was complete (the list of
    /// a source the backup did not know): answers given as current before
    /// may be outdated now.
    FlagsAdded,
    /// Flags were dropped whose order had been applied to another key than
    /// the schedule list named: answers given as "recovering" may be
    /// current now.
    FlagsSettled,
    /// The stream cannot resume, and its id shows the store went back
    /// behind what the subscriber was told (a data directory put back by
    /// other means than a restore, keeping its history): records cached
    /// may be newer than anything the store holds, so none may be kept
    /// for looking newer than the server's answer.
    Rewound,
    /// A reason a newer DB server gives that this build does not know: the
    /// event still means "revalidate what you cached".
    #[serde(other)]
    Other,
}

/// Payload of the `epoch` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochEvent {
    pub epoch: u64,
    pub reason: EpochReason,
}

/// Payload of the `hello` event, the first event of every stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HelloEvent {
    pub epoch: u64,
    pub seq: u64,
    pub boot: String,
    pub resumed: bool,
    /// The server is one instance of a cluster: a stream resumes there (or
    /// at another instance) only after the subscriber declared what it
    /// holds (`POST /v1/watch/interest`) just before reconnecting.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub declare: bool,
    /// The server vouches for this stream with `lease` events: what it
    /// streams is current only while its last one runs. A server without
    /// it (a single DB server, an older one) is vouched for while synced.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub vouches: bool,
    /// The store's history: an id made when the store was created, and
    /// anew by every restore. Versions compare only within one history: a
    /// restore whose live data was lost counts its epoch from the backup's
    /// (so it may reuse one), and a DB server started over on an empty
    /// store begins again at epoch 1; a cached copy from another history
    /// may look newer than the DB server's data while it is not. A service
    /// server that sees the history change drops its cache. Empty: an
    /// older server that does not say.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub history: String,
    /// The schema version the server runs: records cached under another
    /// (a restart from a cache snapshot taken before a publish) are
    /// revalidated before anything is served from the cache. 0: an older
    /// server that does not say.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub schema_version: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Payload of the `synced` event: everything the subscriber missed since
/// the id it resumed from (or since `hello`) has been sent; from here on the
/// stream is live. A service server vouches for its cached entries only
/// while its stream is synced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncedEvent {
    pub seq: u64,
}

/// Payload of the `quiesce` event: `notice` and `cancelled`, and the
/// notice's `seconds_left`, `deadline` and `message` at the top level too
/// (CONTRACT.md: the event carries the seconds left and the message).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct QuiesceEvent {
    #[serde(default)]
    pub notice: Option<QuiesceNotice>,
    pub cancelled: bool,
}

impl QuiesceEvent {
    /// The cancellation: no notice in force.
    pub fn cancellation() -> Self {
        Self {
            notice: None,
            cancelled: true,
        }
    }
}

impl Serialize for QuiesceEvent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        if let Some(n) = &self.notice {
            m.serialize_entry("notice", n)?;
            m.serialize_entry("seconds_left", &n.seconds_left)?;
            m.serialize_entry("deadline", &n.deadline)?;
            m.serialize_entry("message", &n.message)?;
        }
        m.serialize_entry("cancelled", &self.cancelled)?;
        m.end()
    }
}

/// Payload of the `schema` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaEvent {
    pub version: u64,
}

/// A decoded watch event.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    Hello(HelloEvent),
    Synced(SyncedEvent),
    Update(RecordAnswer),
    Recovered(RecordAnswer),
    Epoch(EpochEvent),
    Quiesce(QuiesceEvent),
    /// A quiesce notice for this service server itself, sent by name
    /// through its DB server (S8), or its cancellation.
    ServiceQuiesce(QuiesceEvent),
    Schema(SchemaEvent),
    Lease(LeaseEvent),
}

/// Payload of the `lease` event (an instance of a cluster, right after
/// `synced` and every 300 ms, without an `id`): what the instance streams
/// is current for `valid_for_ms` more milliseconds: it surely holds the
/// lease (a primary) or reached PostgreSQL within a lease (a standby) that
/// long. A paused or cut-off instance sends none, so a service server
/// stops vouching for its cache when the last one runs out (counted from
/// when it was sent, on its own clock: see `sent_ms`), not when the stream
/// falls silent for good.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseEvent {
    pub valid_for_ms: u64,
    /// The server's clock (ms, monotonic, its own base: `clock::shown_ms`,
    /// which its `/healthz` reads too) when it sent the event. A service
    /// server judges from it how late the lease arrived, against round
    /// trips to that `/healthz` (or, without them, the smallest difference
    /// seen, the clocks' offset plus the least delay): a lease that arrives
    /// late (it waited in the socket while the service server was paused,
    /// or on a slow link, with the changes after it) vouches only from
    /// when it was sent. Absent: an older server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_ms: Option<u64>,
}

impl WatchEvent {
    /// The SSE `event:` name.
    pub fn name(&self) -> &'static str {
        match self {
            WatchEvent::Hello(_) => "hello",
            WatchEvent::Synced(_) => "synced",
            WatchEvent::Update(_) => "update",
            WatchEvent::Recovered(_) => "recovered",
            WatchEvent::Epoch(_) => "epoch",
            WatchEvent::Quiesce(_) => "quiesce",
            WatchEvent::ServiceQuiesce(_) => "service_quiesce",
            WatchEvent::Schema(_) => "schema",
            WatchEvent::Lease(_) => "lease",
        }
    }

    /// The SSE `data:` payload (one line of JSON).
    pub fn data(&self) -> String {
        let v = match self {
            WatchEvent::Hello(e) => serde_json::to_string(e),
            WatchEvent::Synced(e) => serde_json::to_string(e),
            WatchEvent::Update(e) | WatchEvent::Recovered(e) => serde_json::to_string(e),
            WatchEvent::Epoch(e) => serde_json::to_string(e),
            WatchEvent::Quiesce(e) | WatchEvent::ServiceQuiesce(e) => serde_json::to_string(e),
            WatchEvent::Schema(e) => serde_json::to_string(e),
            WatchEvent::Lease(e) => serde_json::to_string(e),
        };
        v.unwrap_or_else(|_| "{}".to_owned())
    }

    /// Decodes an event by name; unknown names give `Ok(None)` so old
    /// clients skip events added later.
    pub fn decode(name: &str, data: &str) -> Result<Option<Self>, serde_json::Error> {
        Ok(Some(match name {
            "hello" => WatchEvent::Hello(serde_json::from_str(data)?),
            "synced" => WatchEvent::Synced(serde_json::from_str(data)?),
            "update" => WatchEvent::Update(serde_json::from_str(data)?),
            "recovered" => WatchEvent::Recovered(serde_json::from_str(data)?),
            "epoch" => WatchEvent::Epoch(serde_json::from_str(data)?),
            "quiesce" => WatchEvent::Quiesce(serde_json::from_str(data)?),
            "service_quiesce" => WatchEvent::ServiceQuiesce(serde_json::from_str(data)?),
            "schema" => WatchEvent::Schema(serde_json::from_str(data)?),
            "lease" => WatchEvent::Lease(serde_json::from_str(data)?),
            _ => return Ok(None),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CONTRACT.md: the `quiesce` event carries the seconds left and the
    /// message; they are at its top level as well as in `notice`.
    #[test]
    fn a_quiesce_event_carries_the_seconds_left_and_the_message_on_top() {
        let ev = QuiesceEvent {
            notice: Some(QuiesceNotice {
                deadline: "2026-12-04T12:00:00Z".into(),
                seconds_left: 30,
                ms_left: Some(29_400),
                message: "upgrade".into(),
            }),
            cancelled: false,
        };
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(
            (v["seconds_left"].as_u64(), v["message"].as_str()),
            (Some(30), Some("upgrade"))
        );
        assert_eq!(v["notice"]["seconds_left"], 30);
        assert_eq!(serde_json::from_value::<QuiesceEvent>(v).unwrap(), ev);
        let cancel = serde_json::to_value(QuiesceEvent {
            notice: None,
            cancelled: true,
        })
        .unwrap();
        assert_eq!(cancel, serde_json::json!({"cancelled": true}));
    }

    #[test]
    fn event_id_round_trips() {
        let id = EventId {
            epoch: 3,
            seq: 42,
            boot: "a1b2".into(),
        };
        assert_eq!(id.to_string().parse::<EventId>(), Ok(id));
        assert!("garbage".parse::<EventId>().is_err());
        assert!("1-2-".parse::<EventId>().is_err());
    }
}
