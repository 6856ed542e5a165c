//! `GET /openapi.json`: the API as an OpenAPI 3 document.

use axum::Json;
use serde_json::{json, Value};
use tidemark_api::ErrorCode;

/// A quiesce notice, or `null` when none is in force.
fn nullable_notice() -> Value {
    json!({"allOf": [{"$ref": "#/components/schemas/QuiesceNotice"}], "nullable": true})
}

fn error_ref() -> Value {
    json!({"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

/// The OpenAPI document of the DB server.
pub fn document() -> Value {
    let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    json!({
        "openapi": "3.0.3",
        "info": {"title": "Tidemark DB server", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Record data per terminal, recovery with recovering identifiers, push to service servers."},
        "paths": {
            "/v1/records/{table}/{key}": {"get": {
                "summary": "Read one record (P1, P8). 404 has the same shape with found=false.",
                "parameters": [
                    {"name": "table", "in": "path", "required": true, "schema": {"type": "string"}},
                    {"name": "key", "in": "path", "required": true, "schema": {"type": "string", "minLength": 1, "maxLength": 256}},
                    {"name": "Tidemark-Subscriber", "in": "header", "required": false, "schema": {"type": "string"},
                     "description": "Registers that this service server holds the key (P3)."}
                ],
                "responses": {
                    "200": {"description": "Found", "headers": {"Tidemark-Recovering": {"schema": {"type": "string"}}},
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Record"}}}},
                    "404": {"description": "Not found (or unknown table: error shape)", "headers": {"Tidemark-Recovering": {"schema": {"type": "string"}, "description": "1 when the key is flagged: a not-found answer can be outdated too"}},
                            "content": {"application/json": {"schema": {"oneOf": [{"$ref": "#/components/schemas/Record"}, {"$ref": "#/components/schemas/Error"}]}}}},
                    "400": error_ref(), "401": error_ref(), "403": error_ref(),
                    "429": error_ref(), "503": error_ref()
                }
            }},
            "/v1/orders": {"post": {
                "summary": "Apply a batch of service orders: atomic, idempotent by (source, seq), durable before the answer (P3, P10). On a standby it is forwarded to the primary, or held up to --failover-wait while none is online (then 503 no_primary). The answer carries Tidemark-Term: the lease term that committed it.",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OrdersRequest"}}}},
                "responses": {"200": {"description": "Applied", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OrdersResponse"}}}},
                              "400": error_ref(), "404": error_ref(), "409": error_ref(), "413": error_ref(), "503": error_ref()}
            }},
            "/v1/watch": {"get": {
                "summary": "Server-Sent Events for one service server: hello, synced, update, recovered, epoch, quiesce, service_quiesce (its own notice by name, or its cancellation; every stream opening with the request header tidemark-takes-quiesce: 1 gets one before synced), schema, and lease ({\"valid_for_ms\": N, \"sent_ms\": T}: the stream is current that much longer; sent_ms is the server's clock, the one GET /healthz reads as clock_ms; it repeats the last event's id and moves no resume position). Resumable with Last-Event-ID.",
                "parameters": [{"name": "subscriber", "in": "query", "required": true, "schema": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[\\x21-\\x7e]+$"}},
                               {"name": "Last-Event-ID", "in": "header", "required": false, "schema": {"type": "string"}},
                               {"name": "Tidemark-Reports-Schema", "in": "header", "required": false, "description": "1: the subscriber reports the schema version it runs (POST /v1/schema/ack), as a service server does, so a schema publish waits for it. Without it a stream is waited for only once it has reported (a script reading events is listed as watch_stream and not waited for).", "schema": {"type": "string"}}],
                "responses": {"200": {"description": "text/event-stream"}, "400": error_ref(), "429": error_ref()}
            }},
            "/v1/state": {"get": {"summary": "State, role, epoch, seq, schema version, quiesce notice.",
                "responses": {"200": {"description": "State", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/State"}}}}}}},
            "/v1/recovery": {"get": {"summary": "Recovery progress (P5).",
                "responses": {"200": {"description": "Recovery", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Recovery"}}}}}}},
            "/v1/sources": {"get": {"summary": "Applied-order high-water mark per OpS source.",
                "responses": {"200": {"description": "source -> seq", "content": {"application/json": {"schema": {"type": "object", "additionalProperties": {"type": "integer"}}}}}}}},
            "/v1/schema": {"get": {"summary": "The schema in force: version, tables, typed columns and indexes.",
                "responses": {"200": {"description": "Schema", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Schema"}}}}}}},
            "/v1/schema/versions": {"get": {"summary": "The schema registry (S1): every published version, oldest first, with who published it, when, and what it changed.",
                "responses": {"200": {"description": "{current, versions: [{version, published_at, published_by, changes, schema}]}", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
            "/v1/schema/pending": {
                "get": {"summary": "The staged schema: {version, base_version, staged_by, staged_at, tables}.",
                    "responses": {"200": {"description": "Pending schema"}, "409": error_ref()}},
                "put": {"summary": "Stage a schema document (the full desired schema: GET /v1/schema without version). Only additions are accepted: dropping a table or column (schema_drop_refused), changing a type (schema_type_change_refused) and renaming (schema_rename_refused) are refused; a document equal to the version in force is schema_unchanged; a malformed one schema_invalid. Admin.",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SchemaDocument"}}}},
                    "responses": {"200": {"description": "Pending schema"}, "400": error_ref(), "409": error_ref()}},
                "delete": {"summary": "Drop the staged schema. Admin.", "responses": {"200": {"description": "{discarded}"}}}
            },
            "/v1/schema/plan": {"get": {"summary": "The pending change in S1's five parts (changes, tables, indexes, new_columns, new_tables) and the exact DDL for the engine in use (one transaction).",
                "responses": {"200": {"description": "Plan", "content": {"application/json": {"schema": {"type": "object"}}}}, "409": error_ref()}}},
            "/v1/schema/publish": {
                "post": {"summary": "Publish the pending version (S2, S9): a job stored in the database; the DDL, the registry row and the version bump commit in one transaction before the answer, then the `schema` watch event goes to every service server. A job left by a crash is resumed at start. Errors: no_pending_schema, pending_outdated, publish_in_progress. Admin.",
                    "responses": {"200": {"description": "Publish status", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PublishStatus"}}}}, "409": error_ref(), "503": error_ref()}},
                "get": {"summary": "The last publish or rollback job, and the schema version each server (the DB server, each service server) reports; `complete` once every connected one runs the version in force.",
                    "responses": {"200": {"description": "Publish status", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PublishStatus"}}}}}}
            },
            "/v1/schema/rollback": {"post": {"summary": "Back to the previous version's tables, as a new version (the version only grows). Refused (rollback_refused) if there is no earlier version or an added column or table holds data. Admin.",
                "responses": {"200": {"description": "Publish status", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PublishStatus"}}}}, "409": error_ref()}}},
            "/v1/schema/ack": {"post": {"summary": "A service server reports the schema version it runs: {subscriber, version}. Reader.",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["subscriber", "version"],
                    "properties": {"subscriber": {"type": "string"}, "version": {"type": "integer"}}}}}},
                "responses": {"200": {"description": "{version}: the version in force"}, "400": error_ref(), "403": error_ref()}}},
            "/v1/services/report": {"post": {"summary": "A service server reports how it runs, every few seconds: {subscriber, policy, cache_entries, schema_version, quiesce}. Reader; the name is bound to the token.",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["subscriber", "policy", "cache_entries", "schema_version"],
                    "properties": {"subscriber": {"type": "string", "minLength": 1, "maxLength": 128}, "policy": {"type": "string", "enum": ["latest-only", "accept-stale"]},
                        "cache_entries": {"type": "integer", "minimum": 0}, "schema_version": {"type": "integer", "minimum": 0},
                        "quiesce": {"type": "object", "nullable": true, "description": "its own quiesce notice in force (S8)", "required": ["deadline", "seconds_left", "message"],
                            "properties": {"deadline": {"type": "string", "maxLength": 64}, "seconds_left": {"type": "integer", "minimum": 0}, "ms_left": {"type": "integer", "minimum": 0, "nullable": true}, "message": {"type": "string", "maxLength": 1000}}}}}}}},
                "responses": {"200": {"description": "Recorded"}, "400": error_ref(), "403": error_ref()}}},
            "/v1/services": {"get": {"summary": "The service servers heard from in the last five minutes: name, policy, cache size, schema version, whether their watch stream is open here, and their own quiesce notice as of their last report (counted down to now).",
                "responses": {"200": {"description": "Service servers", "content": {"application/json": {"schema": {"type": "array", "items": {"type": "object", "properties": {
                    "name": {"type": "string"}, "policy": {"type": "string"}, "cache_entries": {"type": "integer"}, "schema_version": {"type": "integer"},
                    "connected": {"type": "boolean"}, "report_age_ms": {"type": "integer"}, "quiesce": nullable_notice()}}}}}}}}},
            "/v1/backup": {"post": {"summary": "Online backup (B1, B5): one consistent snapshot of the whole store, streamed as the body (application/octet-stream, a SQLite database); the header Tidemark-Snapshot carries its epoch, seq, schema version, high-water marks and process information as JSON. Used by 'tidemark backup create --server URL'.",
                "responses": {"200": {"description": "The snapshot", "headers": {"Tidemark-Snapshot": {"schema": {"type": "string"}}},
                    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}, "429": error_ref(), "500": error_ref(), "503": error_ref()}}},
            "/v1/backup/config": {"get": {"summary": "The server's effective configuration (secrets redacted) and its --config file, for backups.",
                "responses": {"200": {"description": "effective + file", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
            "/v1/quiesce": {
                "post": {"summary": "Quiesce notice (S4): the server goes offline after `seconds`; every watch stream is told.",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["seconds"],
                        "properties": {"seconds": {"type": "integer", "minimum": 0, "maximum": 86400}, "message": {"type": "string", "nullable": true}}}}}},
                    "responses": {"200": {"description": "The notice", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/QuiesceNotice"}}}}, "400": error_ref()}},
                "delete": {"summary": "Cancels the quiesce notice.", "responses": {"200": {"description": "Cancelled", "content": {"application/json": {"schema": {"type": "object", "required": ["cancelled"], "properties": {"cancelled": {"type": "boolean"}}}}}}, "409": error_ref()}}
            },
            "/v1/services/{name}/quiesce": {
                "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string", "minLength": 1, "maxLength": 128}}],
                "post": {"summary": "Quiesce notice for one service server by name (S8): sent down its watch stream (by the instance of a cluster that has it open; any instance may be asked); it goes offline after `seconds`, as with its own notice. Answers {service, streams, notice}; 409 service_not_connected (nothing sent) when no stream of that name is open.",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["seconds"],
                        "properties": {"seconds": {"type": "integer", "minimum": 0, "maximum": 86400}, "message": {"type": "string", "nullable": true}}}}}},
                    "responses": {"200": {"description": "Sent"}, "400": error_ref(), "409": error_ref()}},
                "delete": {"summary": "Cancels that service server's notice sent by name (it is told now, or when its stream next opens); 409 no_quiesce when none is stored.", "responses": {"200": {"description": "Cancelled"}, "400": error_ref(), "409": error_ref()}}
            },
            "/v1/recovery/schedule": {"post": {"summary": "A chunk of the recovery schedule list (P6, P7).",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["source"], "properties": {
                    "source": {"type": "string", "minLength": 1, "maxLength": 128}, "final": {"type": "boolean"},
                    "without_sources": {"type": "array", "items": {"type": "string"}},
                    "expect_sources": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 128}},
                    "entries": {"type": "array", "items": {"type": "object", "required": ["table", "key", "through_seq"], "properties": {
                        "table": {"type": "string", "minLength": 1}, "key": {"type": "string", "minLength": 1, "maxLength": 256},
                        "through_seq": {"type": "integer", "minimum": 1}}}}}}}}},
                "responses": {"200": {"description": "flagged / skipped", "content": {"application/json": {"schema": {"type": "object", "required": ["flagged", "skipped", "final"], "properties": {
                    "flagged": {"type": "integer", "description": "Entries flagged by this chunk"}, "skipped": {"type": "integer", "description": "Entries whose order the restored data already holds"},
                    "final": {"type": "boolean"}}}}}}, "400": error_ref(), "404": error_ref(), "409": error_ref(), "413": error_ref()}}},
            "/v1/recovery/complete": {"post": {"summary": "The OpS has sent all difference data (P5, patent step 10).",
                "responses": {"200": {"description": "Recovery", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Recovery"}}}}, "409": error_ref()}}},
            "/v1/recovery/flags": {"get": {"summary": "Keys still flagged, and the order each waits for: one page in (table, key, source) order, served from the flags' index; 'next' is the cursor of the page after (null at the end).",
                "parameters": [
                    {"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": 10000}},
                    {"name": "table", "in": "query", "required": false, "schema": {"type": "string"}},
                    {"name": "prefix", "in": "query", "required": false, "schema": {"type": "string"}, "description": "Only keys that start with this."},
                    {"name": "after", "in": "query", "required": false, "schema": {"type": "string"}, "description": "The 'next' of the previous page."}
                ],
                "responses": {"200": {"description": "Flags", "content": {"application/json": {"schema": {"type": "object", "required": ["remaining", "flags", "next"], "properties": {
                    "remaining": {"type": "integer"}, "next": {"type": "string", "nullable": true},
                    "flags": {"type": "array", "items": {"type": "object", "properties": {"table": {"type": "string"}, "key": {"type": "string"},
                        "source": {"type": "string"}, "through_seq": {"type": "integer"}, "high_water": {"type": "integer"}}}}}}}}},
                    "400": error_ref(), "404": error_ref()}}},
            "/v1/recovery/abort": {"post": {"summary": "Ends a recovery explicitly (drops every flag; logged). Body {\"reason\"}.",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["reason"],
                    "properties": {"reason": {"type": "string", "minLength": 1}}}}}},
                "responses": {"200": {"description": "Ended"}, "400": error_ref(), "409": error_ref()}}},
            "/v1/watch/interest": {"post": {
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["subscriber", "keys", "final"], "properties": {
                    "subscriber": {"type": "string", "minLength": 1, "maxLength": 128}, "final": {"type": "boolean"},
                    "newest": {"type": "object", "required": ["epoch", "seq"], "properties": {"epoch": {"type": "integer", "minimum": 0}, "seq": {"type": "integer", "minimum": 0}}, "description": "With the final chunk: the newest version the subscriber holds (0.0 for none). A single server resumes a stream of an earlier boot only if that boot's run in its store reached it."},
                    "keys": {"type": "array", "items": {"type": "array", "minItems": 2, "maxItems": 2, "items": {"type": "string"}}}}}}}},"summary": "A service server declares every key it holds (in chunks; the last has final=true) before its stream reconnects to an instance of a cluster, or to a single server that restarted, so the stream resumes there with Last-Event-ID instead of revalidating. Body {\"subscriber\", \"keys\": [[table, key], …], \"final\", \"newest\"}.",
                "responses": {"200": {"description": "registered"}, "400": error_ref(), "403": error_ref()}}},
            "/v1/cluster/promote": {"post": {"summary": "PostgreSQL engine: makes this standby the primary (S5). The primary hands its lease over once its commits in flight end; writes sent meanwhile to any instance are held and committed by the new primary. 409 promote_refused on the embedded engine.",
                "responses": {"200": {"description": "promoted, term, primary"}, "409": error_ref(), "503": error_ref()}}},
            "/v1/cluster/handover": {"post": {"summary": "Instance to instance (promote): the primary gives its lease to the live standby {\"to\": URL}; refused naming the live standbys otherwise.",
                "responses": {"200": {"description": "handed over"}, "409": error_ref()}}},
            "/healthz": {"get": {"summary": "Liveness. Also names this process's boot (as a watch stream's hello does) and reads its clock (clock_ms: milliseconds of CLOCK_BOOTTIME moved by an amount drawn once per process, so it tells differences and not the host's uptime; the clock of lease events' sent_ms), so a service server can time a round trip against it. At the connection limit it answers {\"status\": \"ok\"} only.", "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}, "boot": {"type": "string"}, "clock_ms": {"type": "integer", "minimum": 0}}}}}}}}},
            "/readyz": {"get": {"summary": "Readiness.", "responses": {"200": {"description": "ready"}, "503": error_ref()}}},
            "/metrics": {"get": {"summary": "Prometheus metrics.", "responses": {"200": {"description": "text/plain"}}}},
            "/openapi.json": {"get": {"summary": "This document.", "responses": {"200": {"description": "OpenAPI 3"}}}},
            "/console": {"get": {"summary": "The operator's live page (state, recovery progress, quiesce, members, schema, service servers, flagged keys). Holds no data: no token. Served with a Content-Security-Policy that runs only /console.js.",
                "responses": {"200": {"description": "HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}}}},
            "/console.js": {"get": {"summary": "The console page's script. No token.",
                "responses": {"200": {"description": "JavaScript", "content": {"text/javascript": {"schema": {"type": "string"}}}}}}},
            "/": {"get": {"summary": "Redirects to /console. No token.", "responses": {"303": {"description": "See /console"}}}},
            "/console/": {"get": {"summary": "Redirects to /console. No token.", "responses": {"303": {"description": "See /console"}}}},
            "/v1/console/events": {"get": {"summary": "The console's live feed, as server-sent events: `progress` once ([[unix ms, remaining], …]: the remaining flags sampled since the recovery began), then once a second `state` (as GET /v1/state, plus now_ms: the server's clock) or `error` ({\"error\": {code, message}}: the state could not be read, e.g. the store is unreachable during a failover). Reader.",
                "responses": {"200": {"description": "text/event-stream"}, "401": error_ref(), "403": error_ref()}}},
            "/v1/tokens": {
                "post": {"summary": "A new token {role: reader|ops|admin, name}; the secret is in the answer once ({name, role, token}). Admin, except until an admin token exists: then a loopback client may create tokens without one (the first, of any role, ends protected mode for everything else). 409 if the name is taken.",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["role", "name"], "properties": {
                        "role": {"type": "string", "enum": ["reader", "ops", "admin"]}, "name": {"type": "string"}}}}}},
                    "responses": {"200": {"description": "The token, shown once", "content": {"application/json": {"schema": {"type": "object", "required": ["name", "role", "token"], "properties": {
                        "name": {"type": "string"}, "role": {"type": "string", "enum": ["reader", "ops", "admin"]}, "token": {"type": "string"}}}}}}, "400": error_ref(), "401": error_ref(), "403": error_ref(), "409": error_ref()}},
                "get": {"summary": "Every token's name and role, never a secret. Admin.",
                    "responses": {"200": {"description": "[{name, role, created_at}]", "content": {"application/json": {"schema": {"type": "array", "items": {"type": "object", "required": ["name", "role", "created_at"], "properties": {
                        "name": {"type": "string"}, "role": {"type": "string", "enum": ["reader", "ops", "admin"]}, "created_at": {"type": "string"}}}}}}}, "401": error_ref(), "403": error_ref()}}},
            "/v1/tokens/{name}": {"delete": {"summary": "Revokes a token: its requests and open streams end. Admin.",
                "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "Revoked", "content": {"application/json": {"schema": {"type": "object", "required": ["revoked"], "properties": {"revoked": {"type": "string"}}}}}}, "401": error_ref(), "403": error_ref(), "404": error_ref()}}},
            "/v1/audit": {"get": {"summary": "Who did which admin action, and when, oldest first: [{at, who, action, detail}]. Admin.",
                "responses": {"200": {"description": "The audit log", "content": {"application/json": {"schema": {"type": "array", "items": {"type": "object", "required": ["at", "who", "action"], "properties": {
                    "at": {"type": "string"}, "who": {"type": "string", "description": "The token's name, or loopback in protected mode"}, "action": {"type": "string"}, "detail": {}}}}}}}, "401": error_ref(), "403": error_ref()}}},
            "/v1/whoami": {"get": {"summary": "What the presented token is: {name, role: reader|ops|admin|null, protected}. role is null for no token or an unknown or revoked one. In protected mode (no token exists yet) a loopback program is reported as name loopback, role admin. Needs no token.",
                "responses": {"200": {"description": "Who", "content": {"application/json": {"schema": {"type": "object", "required": ["name", "role", "protected"], "properties": {
                    "name": {"type": "string", "nullable": true}, "role": {"type": "string", "enum": ["reader", "ops", "admin"], "nullable": true}, "protected": {"type": "boolean"}}}}}}}}}
        },
        "components": {"schemas": {
            "Version": {"type": "object", "required": ["epoch", "seq"], "properties": {"epoch": {"type": "integer"}, "seq": {"type": "integer"}}},
            "Record": {"type": "object", "required": ["table", "key", "found", "recovering"], "properties": {
                "table": {"type": "string"}, "key": {"type": "string"}, "found": {"type": "boolean"},
                "fields": {"type": "object"}, "version": {"$ref": "#/components/schemas/Version"},
                "recovering": {"type": "boolean"}, "source": {"type": "string", "enum": ["cache", "db"]}}},
            "Order": {"type": "object", "required": ["source", "seq", "table", "key", "op"], "properties": {
                "source": {"type": "string", "minLength": 1, "maxLength": 128}, "seq": {"type": "integer", "minimum": 1}, "table": {"type": "string", "minLength": 1},
                "key": {"type": "string", "minLength": 1, "maxLength": 256}, "op": {"type": "string", "enum": ["upsert", "delete"]}, "fields": {"type": "object"},
                "origin": {"$ref": "#/components/schemas/Version", "description": "For a replay of the difference data (P10): the version this order produced when the DB server first acknowledged it, before the disaster (ops recover sends it from its journal). While the server recovers, an order takes effect field by field only where nothing newer by this version has been applied, so replays from several sources end in their original commit order whatever order they arrive in; without it a replay counts as new as it arrives. Not part of the order's identity."}},
                "additionalProperties": false},
            "OrdersRequest": {"type": "object", "required": ["orders"], "additionalProperties": false, "properties": {"orders": {"type": "array", "items": {"$ref": "#/components/schemas/Order"}}}},
            "OrdersResponse": {"type": "object", "properties": {"results": {"type": "array", "items": {"type": "object", "properties": {
                "source": {"type": "string"}, "seq": {"type": "integer"}, "version": {"$ref": "#/components/schemas/Version"}, "duplicate": {"type": "boolean"}}}}}},
            "State": {"type": "object", "properties": {"state": {"type": "string", "enum": ["normal", "recovering", "recovered"]},
                "role": {"type": "string", "enum": ["primary", "standby"]}, "epoch": {"type": "integer"}, "seq": {"type": "integer"},
                "schema_version": {"type": "integer"}, "quiesce": nullable_notice(), "boot": {"type": "string"}, "store": {"type": "string"},
                "recovery": {"$ref": "#/components/schemas/Recovery"},
                "term": {"type": "integer", "description": "PostgreSQL engine: the lease term"}, "primary": {"type": "string", "nullable": true, "description": "The primary's advertised URL (PostgreSQL engine); null when none is online, and on the embedded engine"},
                "advertise": {"type": "string"}, "members": {"type": "array", "items": {"type": "object", "properties": {
                    "url": {"type": "string"}, "role": {"type": "string", "enum": ["primary", "standby"]}, "term": {"type": "integer"},
                    "last_heartbeat": {"type": "string"}, "heartbeat_age_ms": {"type": "integer"}, "version": {"type": "string"},
                    "schema_version": {"type": "integer"}, "quiesce": nullable_notice(),
                    "alive": {"type": "boolean", "description": "false: its heartbeats stopped without a clean leave (listed as down for ten minutes)"}}}}}},
            "Recovery": {"type": "object", "properties": {"state": {"type": "string"}, "epoch": {"type": "integer"}, "flagged": {"type": "integer", "description": "Flags set since the recovery began (it does not go down; see remaining)"},
                "cleared": {"type": "integer"}, "remaining": {"type": "integer", "description": "Flags still set: flagged - cleared"}, "started_at": {"type": "string", "nullable": true},
                "schedule_final": {"type": "boolean", "description": "Every source's final schedule chunk has arrived (until then every read answers recovering)"},
                "complete_requested": {"type": "boolean", "description": "POST /v1/recovery/complete was received; the state moves to recovered once no flag remains"},
                "estimated_end": {"type": "string", "nullable": true, "description": "When the remaining flags would be cleared at the recent rate"},
                "waiting_for_sources": {"type": "array", "items": {"type": "string"}, "description": "Sources whose final schedule chunk has not arrived"},
                "waived_sources": {"type": "array", "items": {"type": "string"}, "description": "Sources declared lost (ops recover --without-source)"}}},
            "QuiesceNotice": {"type": "object", "required": ["deadline", "seconds_left", "message"], "properties": {
                "deadline": {"type": "string", "description": "RFC 3339, the server's clock"}, "seconds_left": {"type": "integer"},
                "ms_left": {"type": "integer", "description": "Milliseconds left: count from this, not from the deadline (clock skew)"}, "message": {"type": "string"}}},
            "Schema": {"type": "object", "required": ["version", "tables"], "properties": {"version": {"type": "integer"},
                "tables": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/Table"}}}},
            "SchemaDocument": {"type": "object", "required": ["tables"], "properties": {
                "tables": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/Table"}}}},
            "Table": {"type": "object", "required": ["columns"], "properties": {
                "columns": {"type": "array", "items": {"type": "object", "required": ["name", "type"], "properties": {
                    "name": {"type": "string"}, "type": {"type": "string", "enum": ["string", "integer", "boolean", "timestamp", "json"]}}}},
                "indexes": {"type": "array", "items": {"type": "object", "required": ["columns"], "properties": {"columns": {"type": "array", "items": {"type": "string"}}}}}}},
            "PublishStatus": {"type": "object", "properties": {"current_version": {"type": "integer"}, "pending_version": {"type": "integer", "nullable": true},
                "job": {"type": "object", "nullable": true, "properties": {"kind": {"type": "string", "enum": ["publish", "rollback"]},
                    "from_version": {"type": "integer"}, "to_version": {"type": "integer"},
                    "step": {"type": "string", "enum": ["applying", "announcing", "done", "failed"]}, "started_by": {"type": "string"},
                    "started_at": {"type": "string"}, "finished_at": {"type": "string"}, "error": {"type": "string"}, "resumed": {"type": "integer"}}},
                "servers": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}, "kind": {"type": "string"},
                    "version": {"type": "integer", "nullable": true}, "connected": {"type": "boolean"}, "reported_at": {"type": "string"}}}},
                "lagging": {"type": "array", "items": {"type": "string"}}, "complete": {"type": "boolean"}}},
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
                "code": {"type": "string", "enum": codes}, "message": {"type": "string"}}}}}
        }}
    })
}

/// Documents authentication (CONTRACT.md): the bearer scheme, and on
/// every operation that needs a token the role the guard asks for, with
/// its 401 and 403 answers. Such an operation takes the bearer scheme *or*
/// none (`security: [{bearer: []}, {}]`): in protected mode (no token
/// created yet) a loopback client needs none. The probes and documents
/// say `security: []`.
fn secure(doc: &mut Value) {
    doc["components"]["securitySchemes"] = json!({"bearer": {"type": "http", "scheme": "bearer",
        "description": "A token from 'tidemark token create'. With no token created yet, the server serves loopback clients without one (protected mode)."}});
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(ops) = item.as_object_mut() else {
            continue;
        };
        for (method, op) in ops.iter_mut() {
            let Ok(m) = method.to_ascii_uppercase().parse::<axum::http::Method>() else {
                continue;
            };
            let Some(op) = op.as_object_mut() else {
                continue;
            };
            match super::guard::required_role(&m, path) {
                None => {
                    op.insert("security".into(), json!([]));
                }
                Some(role) => {
                    op.insert("security".into(), json!([{"bearer": []}, {}]));
                    let said = op
                        .get("description")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    let d = format!(
                        "{said} Needs a token with role '{}' or higher.",
                        role.as_str()
                    );
                    op.insert(
                        "description".into(),
                        Value::String(d.trim_start().to_owned()),
                    );
                    if let Some(r) = op.get_mut("responses").and_then(Value::as_object_mut) {
                        r.entry("401").or_insert_with(|| {
                            json!({"description": "No token, or one the server does not know (unauthenticated)",
                                   "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
                        });
                        r.entry("403").or_insert_with(|| {
                            json!({"description": "The token's role is not enough (forbidden); the message names the role needed",
                                   "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
                        });
                    }
                }
            }
        }
    }
}

pub async fn openapi() -> Json<Value> {
    let mut doc = document();
    secure(&mut doc);
    tidemark_serve::openapi::annotate(&mut doc);
    Json(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operation that needs a token documents its role and its 401
    /// and 403 answers; the probes document neither.
    #[test]
    fn the_document_says_which_role_each_operation_needs() {
        let mut doc = document();
        secure(&mut doc);
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        let orders = &doc["paths"]["/v1/orders"]["post"];
        assert!(
            orders["description"]
                .as_str()
                .unwrap()
                .contains("role 'ops'"),
            "{orders}"
        );
        for status in ["401", "403"] {
            assert!(
                orders["responses"][status].is_object(),
                "{status}: {orders}"
            );
        }
        let read = &doc["paths"]["/v1/records/{table}/{key}"]["get"];
        assert!(
            read["description"]
                .as_str()
                .unwrap()
                .contains("role 'reader'"),
            "{read}"
        );
        // A token, or none (protected mode).
        assert_eq!(orders["security"], json!([{"bearer": []}, {}]));
        let probe = &doc["paths"]["/healthz"]["get"];
        assert!(probe["responses"]["401"].is_null(), "{probe}");
        assert!(probe.get("description").is_none(), "{probe}");
        assert_eq!(probe["security"], json!([]));
    }
}
