//! Wire types and the HTTP client shared by every Tidemark role.
//!
//! Everything that crosses the network between the DB server, the service
//! servers and the OpS is defined here once, so the roles cannot disagree on
//! the shape of a record, an order or an event.
//!
//! # Layout
//! - [`version`]: the `{epoch, seq}` version every record carries, and its order.
//! - [`record`]: the record answer of `GET /v1/records/{table}/{key}`.
//! - [`order`]: service orders and the answer to `POST /v1/orders`.
//! - [`schema`]: tables, typed columns, the default schema, key and field validation.
//! - [`schema_change`]: the schema document, the unsafe-change rules, the diff between versions, the publish wire types.
//! - [`event`]: the watch-stream events and their resumable ids.
//! - [`state`]: `/v1/state` and `/v1/recovery` answers.
//! - [`error`]: the stable error codes and the one JSON error shape.
//! - [`headers`]: the `Tidemark-*` header names.
//! - [`keyslot`]: a record's name in in-memory maps, its shard, and shard sizing.
//! - [`sse`]: a small Server-Sent Events parser.
//! - [`auth`]: token roles, token and audit wire types.
//! - [`client`]: the HTTP client for the DB server API.

pub mod auth;
pub mod client;
pub mod clock;
pub mod error;
pub mod event;
pub mod headers;
pub mod keyslot;
pub mod order;
pub mod record;
pub mod schema;
pub mod schema_change;
pub mod sse;
pub mod state;
pub mod version;

pub use client::{ClientError, DbClient};
pub use error::{ApiError, ErrorBody, ErrorCode};
pub use event::{EventId, WatchEvent};
pub use order::{encode_orders, Op, Order, OrderResult, OrdersRequest, OrdersResponse};
pub use record::{Record, RecordAnswer, Source};
pub use schema::{Column, ColumnType, Index, Schema, TableSchema};
pub use state::{RecoveryState, RecoveryStatus, Role, ServerState};
pub use version::Version;

/// A record's fields: column name to JSON value.
pub type Fields = serde_json::Map<String, serde_json::Value>;
