//! Header names of the Tidemark API.

/// Request header: the service server that will hold the fetched record (P3).
pub const SUBSCRIBER: &str = "tidemark-subscriber";
/// Response header set to `1` when the answer carries the recovering identifier (P8).
pub const RECOVERING: &str = "tidemark-recovering";
/// Response header of a DB server's record answer: the store's history
/// (`HelloEvent::history`), so a service server learns of another history
/// from its first answer, before its watch stream is back.
pub const HISTORY: &str = "tidemark-history";
/// Request header on a service server: `latest` or `stale-ok`, overriding its policy (P9).
pub const FRESHNESS: &str = "tidemark-freshness";
/// Response header of a service server while a quiesce notice is in force:
/// seconds until the DB server goes offline (S4).
pub const QUIESCE_IN: &str = "tidemark-quiesce-in";
/// Request header of a watch stream, `1`: its subscriber reports the
/// schema version it runs (`POST /v1/schema/ack`), as a service server
/// does, so `schema publish` waits for it. A stream without it is waited
/// for only once it has reported.
pub const REPORTS_SCHEMA: &str = "tidemark-reports-schema";
/// Request header of a watch stream, `1`: its subscriber takes quiesce
/// notices by name (`service_quiesce` events, S8). A notice by name is
/// sent only while such a stream of the name is open: an older service
/// server would skip the event without a word.
pub const TAKES_QUIESCE: &str = "tidemark-takes-quiesce";
/// SSE resumption header.
pub const LAST_EVENT_ID: &str = "last-event-id";
