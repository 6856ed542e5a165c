//! The one JSON error shape and its stable codes.

use serde::{Deserialize, Serialize};

/// Every error code the HTTP API can answer. The names are stable: callers
/// branch on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body is not valid JSON or not the expected shape.
    BadJson,
    /// The key is empty or longer than 256 bytes.
    InvalidKey,
    /// The table is not in the schema.
    UnknownTable,
    /// A field names a column the table does not have.
    UnknownColumn,
    /// A field's value does not fit its column's type.
    WrongFieldType,
    /// The order itself is malformed (e.g. a delete with fields).
    InvalidOrder,
    /// The request body is larger than the server accepts.
    PayloadTooLarge,
    /// The batch has more orders than the server accepts in one request.
    BatchTooLarge,
    /// A used `(source, seq)` was sent with different content.
    OrderConflict,
    /// An order older than its source's high-water mark that was never applied.
    OrderOutOfOrder,
    /// During recovery an order skipped ahead of its source's next seq.
    OrderGap,
    /// A recovery request while the server is not recovering.
    NotRecovering,
    /// `recovery/complete` before the final chunk of the schedule list.
    ScheduleIncomplete,
    /// The server is offline after a quiesce notice (S4); retry elsewhere or later.
    Quiescing,
    /// A cancel with no quiesce notice in force.
    NoQuiesce,
    /// A notice for a service server by name that has no watch stream open
    /// on this instance (S8).
    ServiceNotConnected,
    /// A cancel on a service server's host of a notice its DB server sent
    /// by name (S8): it is cancelled there.
    QuiesceSentByName,
    /// A query parameter is missing or malformed.
    BadRequest,
    /// No such route.
    NotFound,
    /// The route exists, not with this method (the `Allow` header lists them).
    MethodNotAllowed,
    /// The server is quiescing or not yet ready; retry after `Retry-After`.
    NotReady,
    /// A `latest-only` read could not get current data before its deadline.
    StaleData,
    /// The DB server could not be reached or answered unexpectedly.
    DbUnavailable,
    /// The store failed; the request had no effect.
    StoreFailure,
    /// The store's disk is full: nothing was applied; free space, then
    /// send the request again (orders are idempotent).
    StorageFull,
    /// The storage engine cannot be reached (PostgreSQL down or failing
    /// over); the request may or may not have taken effect: retry it, orders
    /// are idempotent.
    StoreUnavailable,
    /// No token, or a token the server does not know (or, with no token
    /// created yet, a client that is not on loopback).
    Unauthenticated,
    /// The token's role does not allow this; the message names the role needed.
    Forbidden,
    /// A token with that name exists already.
    TokenExists,
    /// The last admin token cannot be revoked while other tokens remain:
    /// no token could manage tokens afterwards.
    LastAdmin,
    /// No primary is online (a failover), or the primary did not answer a
    /// forwarded order: the write was held up to `--failover-wait` seconds;
    /// retry after `Retry-After` (orders are idempotent).
    NoPrimary,
    /// A promote that cannot be done: the instance is not a live standby.
    PromoteRefused,
    /// A per-token or per-server limit on concurrent streams (watch
    /// streams, backup streams, request bodies being sent) was reached;
    /// close one or retry later.
    TooManyStreams,
    /// The token has bound as many watch subscriber names as it may
    /// (`max_subscribers_per_token`); reuse one, or give the service server
    /// its own token.
    TooManySubscribers,
    /// A staged schema document is malformed (names, duplicates, limits).
    SchemaInvalid,
    /// A staged schema drops a table or a column of the current version.
    SchemaDropRefused,
    /// A staged schema changes the type of an existing column.
    SchemaTypeChangeRefused,
    /// A staged schema renames a column (seen as one dropped, one added).
    SchemaRenameRefused,
    /// A staged schema is the same as the current version.
    SchemaUnchanged,
    /// A plan or publish with no schema staged.
    NoPendingSchema,
    /// The staged schema was staged on an older version; stage it again.
    PendingOutdated,
    /// A publish or rollback is already running.
    PublishInProgress,
    /// A rollback that cannot be undone (data in an added column or table,
    /// or no earlier version).
    RollbackRefused,
    /// A service server cannot understand the cluster's schema version (S10).
    SchemaSkew,
    /// The request body did not arrive whole within the server's body
    /// timeout (`body_timeout_secs`); nothing was done. Send it at once.
    RequestTimeout,
    /// The request line (method and path) is over the server's limit;
    /// nothing was done. Shorten the path or query.
    UriTooLong,
    /// The request's head (its headers) is over the server's limit, in
    /// bytes or in number; nothing was done. Send fewer or smaller headers.
    HeadersTooLarge,
    /// The server holds its most connections (`max_connections`); retry
    /// after `Retry-After`, or reuse a connection.
    TooManyConnections,
    /// A write forwarded to the primary got no answer, and it is not safe
    /// to send twice: it may or may not have taken effect. Check before
    /// sending it again (no `Retry-After`: not to be retried blindly).
    OutcomeUnknown,
    /// A bug: the request had no effect; report it with the server log.
    Internal,
}

impl ErrorCode {
    /// The HTTP status that fits the code (CONTRACT.md, Errors).
    pub fn status(self) -> u16 {
        use ErrorCode::*;
        match self {
            BadJson | InvalidKey | UnknownColumn | WrongFieldType | InvalidOrder | BadRequest => {
                400
            }
            UnknownTable | NotFound => 404,
            MethodNotAllowed => 405,
            OrderConflict
            | OrderOutOfOrder
            | OrderGap
            | NotRecovering
            | ScheduleIncomplete
            | NoQuiesce
            | ServiceNotConnected
            | QuiesceSentByName
            | TokenExists
            | LastAdmin
            | PromoteRefused
            | SchemaDropRefused
            | SchemaTypeChangeRefused
            | SchemaRenameRefused
            | SchemaUnchanged
            | NoPendingSchema
            | PendingOutdated
            | PublishInProgress
            | RollbackRefused => 409,
            SchemaInvalid => 400,
            Unauthenticated => 401,
            Forbidden => 403,
            PayloadTooLarge | BatchTooLarge => 413,
            TooManyStreams | TooManySubscribers => 429,
            RequestTimeout => 408,
            UriTooLong => 414,
            HeadersTooLarge => 431,
            NotReady | StaleData | DbUnavailable | Quiescing | StoreUnavailable | NoPrimary
            | SchemaSkew | TooManyConnections => 503,
            StoreFailure | Internal => 500,
            StorageFull => 507,
            OutcomeUnknown => 502,
        }
    }

    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            BadJson => "bad_json",
            InvalidKey => "invalid_key",
            UnknownTable => "unknown_table",
            UnknownColumn => "unknown_column",
            WrongFieldType => "wrong_field_type",
            InvalidOrder => "invalid_order",
            PayloadTooLarge => "payload_too_large",
            BatchTooLarge => "batch_too_large",
            OrderConflict => "order_conflict",
            OrderOutOfOrder => "order_out_of_order",
            OrderGap => "order_gap",
            NotRecovering => "not_recovering",
            ScheduleIncomplete => "schedule_incomplete",
            Quiescing => "quiescing",
            NoQuiesce => "no_quiesce",
            ServiceNotConnected => "service_not_connected",
            QuiesceSentByName => "quiesce_sent_by_name",
            BadRequest => "bad_request",
            NotFound => "not_found",
            MethodNotAllowed => "method_not_allowed",
            NotReady => "not_ready",
            StaleData => "stale_data",
            DbUnavailable => "db_unavailable",
            StoreFailure => "store_failure",
            StorageFull => "storage_full",
            StoreUnavailable => "store_unavailable",
            Unauthenticated => "unauthenticated",
            Forbidden => "forbidden",
            TokenExists => "token_exists",
            LastAdmin => "last_admin",
            NoPrimary => "no_primary",
            PromoteRefused => "promote_refused",
            TooManyStreams => "too_many_streams",
            TooManySubscribers => "too_many_subscribers",
            SchemaInvalid => "schema_invalid",
            SchemaDropRefused => "schema_drop_refused",
            SchemaTypeChangeRefused => "schema_type_change_refused",
            SchemaRenameRefused => "schema_rename_refused",
            SchemaUnchanged => "schema_unchanged",
            NoPendingSchema => "no_pending_schema",
            PendingOutdated => "pending_outdated",
            PublishInProgress => "publish_in_progress",
            RollbackRefused => "rollback_refused",
            SchemaSkew => "schema_skew",
            RequestTimeout => "request_timeout",
            UriTooLong => "uri_too_long",
            HeadersTooLarge => "headers_too_large",
            TooManyConnections => "too_many_connections",
            OutcomeUnknown => "outcome_unknown",
            Internal => "internal",
        }
    }

    /// Every code, for the API document.
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::BadJson,
        ErrorCode::InvalidKey,
        ErrorCode::UnknownTable,
        ErrorCode::UnknownColumn,
        ErrorCode::WrongFieldType,
        ErrorCode::InvalidOrder,
        ErrorCode::PayloadTooLarge,
        ErrorCode::BatchTooLarge,
        ErrorCode::OrderConflict,
        ErrorCode::OrderOutOfOrder,
        ErrorCode::OrderGap,
        ErrorCode::NotRecovering,
        ErrorCode::ScheduleIncomplete,
        ErrorCode::Quiescing,
        ErrorCode::NoQuiesce,
        ErrorCode::ServiceNotConnected,
        ErrorCode::QuiesceSentByName,
        ErrorCode::BadRequest,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::NotReady,
        ErrorCode::StaleData,
        ErrorCode::DbUnavailable,
        ErrorCode::StoreFailure,
        ErrorCode::StorageFull,
        ErrorCode::StoreUnavailable,
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::TokenExists,
        ErrorCode::LastAdmin,
        ErrorCode::NoPrimary,
        ErrorCode::PromoteRefused,
        ErrorCode::TooManyStreams,
        ErrorCode::TooManySubscribers,
        ErrorCode::SchemaInvalid,
        ErrorCode::SchemaDropRefused,
        ErrorCode::SchemaTypeChangeRefused,
        ErrorCode::SchemaRenameRefused,
        ErrorCode::SchemaUnchanged,
        ErrorCode::NoPendingSchema,
        ErrorCode::PendingOutdated,
        ErrorCode::PublishInProgress,
        ErrorCode::RollbackRefused,
        ErrorCode::SchemaSkew,
        ErrorCode::RequestTimeout,
        ErrorCode::UriTooLong,
        ErrorCode::HeadersTooLarge,
        ErrorCode::TooManyConnections,
        ErrorCode::OutcomeUnknown,
        ErrorCode::Internal,
    ];
}

/// An API error: a code and a message that says what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// `{"error": {"code": "...", "message": "..."}}`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ApiError,
}

impl From<crate::schema::InvalidInput> for ApiError {
    fn from(e: crate::schema::InvalidInput) -> Self {
        use crate::schema::InvalidInput::*;
        let code = match &e {
            Key(_) | DotKey | NulInKey => ErrorCode::InvalidKey,
            FieldTooLarge { .. } => ErrorCode::PayloadTooLarge,
            BadName { .. } => ErrorCode::BadRequest,
            UnknownTable { .. } => ErrorCode::UnknownTable,
            UnknownColumn { .. } => ErrorCode::UnknownColumn,
            FieldType { .. } | NulInField { .. } | InexactNumber { .. } | TooDeep { .. } => {
                ErrorCode::WrongFieldType
            }
            DeleteWithFields | Source(_) | SourceChars(_) | ZeroSeq | SeqTooLarge(_) => {
                ErrorCode::InvalidOrder
            }
        };
        ApiError::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_name_matches_as_str() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json.as_str().unwrap(), code.as_str());
        }
    }
}
