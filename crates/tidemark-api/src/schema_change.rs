//! Schema publication (S1, S2, S9): the schema document an operator stages,
//! the rules that refuse unsafe changes, the difference between two
//! versions, and the wire types of the `/v1/schema/...` endpoints.
//!
//! Invariants:
//! - A staged schema only *adds*: tables, columns, indexes (indexes may
//!   also be dropped: that loses no data). A column keeps its name and type
//!   forever; dropping, renaming or retyping is refused with what to do
//!   instead (expand: add a new column; copy; stop writing the old one).
//! - Existing columns keep their order; new columns go after them, in the
//!   document's order. So the stored column order never changes.
//! - Only a rollback removes something, and only what is still empty
//!   (checked by the store inside the transaction that removes it).

use crate::schema::{is_identifier, Column, ColumnType, Index, Schema, TableSchema};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Most tables a schema may hold.
pub const MAX_TABLES: usize = 256;
/// Most columns a table may hold (the stores address columns by bit).
pub const MAX_COLUMNS: usize = 128;
/// Most indexes a table may hold.
pub const MAX_INDEXES: usize = 16;

/// The schema document `schema stage` takes: the full desired schema, the
/// `GET /v1/schema` object without `version` (a `version` field is ignored,
/// so a fetched schema can be edited and staged as it is).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaDocument {
    pub tables: BTreeMap<String, TableSchema>,
}

impl SchemaDocument {
    /// Reads a schema document, refusing properties it does not know (a
    /// misspelt `indexes` would stage the schema without them). What
    /// `schema show [--pending]` prints at the top besides the tables
    /// (`version`, `base_version`, `staged_by`, `staged_at`) is allowed, and
    /// ignored.
    pub fn parse(body: &[u8]) -> Result<SchemaDocument, String> {
        let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        named_once(body)?;
        unknown_properties(&value)?;
        serde_json::from_value(value).map_err(|e| e.to_string())
    }
}

/// Refuses a property named twice in one object, anywhere in the document
/// (a table listed twice, `columns` given twice): which one was meant is
/// not for the server to guess, and JSON parsers differ on it.
fn named_once(body: &[u8]) -> Result<(), String> {
    use serde::de::{Deserializer, Error, MapAccess, SeqAccess, Visitor};
    use std::fmt;
    /// Walks one value; `at` says where it is, for the message.
    struct Walk(String);
    impl<'de> Visitor<'de> for Walk {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let mut i = 0;
            while seq
                .next_element_seed(Walk(format!("{}[{i}]", self.0)))?
                .is_some()
            {
                i += 1;
            }
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(name) = map.next_key::<String>()? {
                let at = format!("{}.{name}", self.0);
                if !seen.insert(name) {
                    return Err(A::Error::custom(format!(
                        "property {at:?} is named twice; name each property once"
                    )));
                }
                map.next_value_seed(Walk(at))?;
            }
            Ok(())
        }
    }
    impl<'de> serde::de::DeserializeSeed<'de> for Walk {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    serde::de::DeserializeSeed::deserialize(Walk("document".into()), &mut de)
        .map_err(|e| e.to_string())
}

/// The first property of a schema document that is not one of its own.
fn unknown_properties(doc: &serde_json::Value) -> Result<(), String> {
    use serde_json::Value;
    fn only(v: &Value, known: &[&str], at: &str) -> Result<(), String> {
        if let Value::Object(m) = v {
            if let Some(k) = m.keys().find(|k| !known.contains(&k.as_str())) {
                return Err(format!(
                    "unknown property {k:?} in {at}; expected one of: {}",
                    known.join(", ")
                ));
            }
        }
        Ok(())
    }
    // What `schema show` and `schema show --pending` print besides the
    // tables is allowed, and ignored: their output stages as it is.
    only(
        doc,
        &[
            "tables",
            "version",
            "base_version",
            "staged_by",
            "staged_at",
        ],
        "the document",
    )?;
    let Some(Value::Object(tables)) = doc.get("tables") else {
        return Ok(());
    };
    for (name, table) in tables {
        only(table, &["columns", "indexes"], &format!("table {name:?}"))?;
        for (part, known) in [
            ("columns", &["name", "type"][..]),
            ("indexes", &["columns"][..]),
        ] {
            if let Some(Value::Array(items)) = table.get(part) {
                for item in items {
                    only(item, known, &format!("the {part} of table {name:?}"))?;
                }
            }
        }
    }
    Ok(())
}

/// Why a staged schema was refused. Each message says why and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaRefusal {
    /// The document itself is malformed (names, duplicates, limits).
    #[error("{0}")]
    Invalid(String),
    /// A table of the current version is missing from the document.
    #[error("table '{table}' is in schema version {version} but not in the document: dropping a table is refused, its records would be lost; keep the table in the document (stop sending orders to it if it is no longer used)")]
    DropTable { table: String, version: u64 },
    /// A column of the current version is missing from the document.
    #[error("column '{table}.{column}' is in schema version {version} but not in the document: dropping a column is refused, its values would be lost; keep the column in the document (every column is nullable: stop writing it instead)")]
    DropColumn {
        table: String,
        column: String,
        version: u64,
    },
    /// A column whose type differs from the current version.
    #[error("column '{table}.{column}' is {from} in schema version {version} and {to} in the document: changing a column's type is refused, stored values may not fit; keep it {from}, add a new {to} column, copy the values with orders, and stop writing the old one")]
    TypeChange {
        table: String,
        column: String,
        from: &'static str,
        to: &'static str,
        version: u64,
    },
    /// A column dropped and one of the same type added in the same table:
    /// most likely a rename.
    #[error("column '{table}.{from}' is missing and '{table}.{to}' ({ty}) is new: renaming a column is refused, service servers and the OpS still use the old name and its values would be lost; keep '{from}' in the document, add '{to}' next to it, copy the values with orders, then stop writing '{from}'")]
    Rename {
        table: String,
        from: String,
        to: String,
        ty: &'static str,
    },
    /// The document equals the current version.
    #[error("the document is the same as schema version {0}: there is nothing to stage; add tables, columns or indexes first")]
    Unchanged(u64),
}

impl SchemaRefusal {
    /// The stable error code of the refusal.
    pub fn code(&self) -> crate::ErrorCode {
        use crate::ErrorCode;
        match self {
            SchemaRefusal::Invalid(_) => ErrorCode::SchemaInvalid,
            SchemaRefusal::DropTable { .. } | SchemaRefusal::DropColumn { .. } => {
                ErrorCode::SchemaDropRefused
            }
            SchemaRefusal::TypeChange { .. } => ErrorCode::SchemaTypeChangeRefused,
            SchemaRefusal::Rename { .. } => ErrorCode::SchemaRenameRefused,
            SchemaRefusal::Unchanged(_) => ErrorCode::SchemaUnchanged,
        }
    }
}

/// Checks the document on its own: names, types, duplicates, limits.
pub fn validate_document(doc: &SchemaDocument) -> Result<(), SchemaRefusal> {
    let invalid = |m: String| Err(SchemaRefusal::Invalid(m));
    if doc.tables.is_empty() {
        return invalid("the document has no tables; send the full desired schema: every table of 'tidemark schema show' plus the new ones".into());
    }
    if doc.tables.len() > MAX_TABLES {
        return invalid(format!(
            "the document has {} tables, at most {MAX_TABLES} are allowed",
            doc.tables.len()
        ));
    }
    // Index names are one namespace across tables (PostgreSQL, SQLite).
    let mut index_names = BTreeMap::new();
    for (name, t) in &doc.tables {
        if !is_identifier(name) {
            return invalid(format!("table name {name:?} is not allowed: use lower-case letters, digits and '_', starting with a letter, at most 63 characters, not starting with 'tm_'"));
        }
        if t.columns.len() > MAX_COLUMNS {
            return invalid(format!(
                "table '{name}' has {} columns, at most {MAX_COLUMNS} are allowed",
                t.columns.len()
            ));
        }
        let mut seen = BTreeSet::new();
        for c in &t.columns {
            if !is_identifier(&c.name) {
                return invalid(format!("column name {:?} of table '{name}' is not allowed: use lower-case letters, digits and '_', starting with a letter, at most 63 characters, not starting with 'tm_'", c.name));
            }
            if !seen.insert(c.name.as_str()) {
                return invalid(format!(
                    "column '{}' appears twice in table '{name}'; name each column once",
                    c.name
                ));
            }
        }
        if t.indexes.len() > MAX_INDEXES {
            return invalid(format!(
                "table '{name}' has {} indexes, at most {MAX_INDEXES} are allowed",
                t.indexes.len()
            ));
        }
        let mut seen_ix = BTreeSet::new();
        for ix in &t.indexes {
            if ix.columns.is_empty() {
                return invalid(format!(
                    "an index of table '{name}' names no column; list its columns, e.g. {{\"columns\": [\"plan\"]}}"
                ));
            }
            for c in &ix.columns {
                if !seen.contains(c.as_str()) {
                    return invalid(format!(
                        "an index of table '{name}' names column {c:?}, which the table does not have; index only columns of the table"
                    ));
                }
            }
            if ix.columns.iter().collect::<BTreeSet<_>>().len() != ix.columns.len() {
                return invalid(format!(
                    "an index of table '{name}' names a column twice; name each column once"
                ));
            }
            if !seen_ix.insert(ix.columns.clone()) {
                return invalid(format!(
                    "the index on ({}) of table '{name}' appears twice; list each index once",
                    ix.columns.join(", ")
                ));
            }
            if let Some(other) = index_names.insert(index_name(name, ix), name.as_str()) {
                return invalid(format!(
                    "the index on ({}) of table '{name}' would get the same name as one of table '{other}' ({}); rename one of the tables or columns so their names do not run into each other across '__'",
                    ix.columns.join(", "),
                    index_name(name, ix)
                ));
            }
        }
    }
    Ok(())
}

/// Checks a document against the schema in force and returns the schema it
/// stages: version `current.version + 1`, existing columns in their order,
/// new columns after them. Refuses unsafe changes.
pub fn stage(current: &Schema, doc: &SchemaDocument) -> Result<Schema, SchemaRefusal> {
    if let Err(invalid) = validate_document(doc) {
        // A document that drops or renames a column often still indexes
        // it: the drop is what to fix, and is named first.
        refuse_unsafe(current, doc)?;
        return Err(invalid);
    }
    // SQLite keeps the prefix for its own tables, and refuses a new one at
    // publish (a 500 after the stage was taken); a table of that name that
    // already exists (on PostgreSQL) stays.
    if let Some(name) = doc
        .tables
        .keys()
        .find(|n| n.starts_with("sqlite_") && !current.tables.contains_key(*n))
    {
        return Err(SchemaRefusal::Invalid(format!(
            "table name {name:?} is not allowed: names starting with 'sqlite_' are reserved by SQLite; choose another"
        )));
    }
    refuse_unsafe(current, doc)?;
    let version = current.version;
    let mut tables = BTreeMap::new();
    for (name, want) in &doc.tables {
        let mut columns = current
            .tables
            .get(name)
            .map(|t| t.columns.clone())
            .unwrap_or_default();
        for c in &want.columns {
            if !columns.iter().any(|k| k.name == c.name) {
                columns.push(c.clone());
            }
        }
        tables.insert(
            name.clone(),
            TableSchema {
                columns,
                indexes: want.indexes.clone(),
            },
        );
    }
    let staged = Schema {
        version: version + 1,
        tables,
    };
    if same_content(current, &staged) {
        return Err(SchemaRefusal::Unchanged(version));
    }
    Ok(staged)
}

/// Refuses what a document may not do to the schema in force: drop a
/// table or a column, rename a column, change a column's type.
fn refuse_unsafe(current: &Schema, doc: &SchemaDocument) -> Result<(), SchemaRefusal> {
    let version = current.version;
    for (name, cur) in &current.tables {
        let Some(want) = doc.tables.get(name) else {
            return Err(SchemaRefusal::DropTable {
                table: name.clone(),
                version,
            });
        };
        let missing: Vec<&Column> = cur
            .columns
            .iter()
            .filter(|c| want.column(&c.name).is_none())
            .collect();
        let added: Vec<&Column> = want
            .columns
            .iter()
            .filter(|c| cur.column(&c.name).is_none())
            .collect();
        for m in &missing {
            if let Some(a) = added.iter().find(|a| a.ty == m.ty) {
                return Err(SchemaRefusal::Rename {
                    table: name.clone(),
                    from: m.name.clone(),
                    to: a.name.clone(),
                    ty: m.ty.name(),
                });
            }
        }
        if let Some(m) = missing.first() {
            return Err(SchemaRefusal::DropColumn {
                table: name.clone(),
                column: m.name.clone(),
                version,
            });
        }
        for c in &cur.columns {
            if let Some(w) = want.column(&c.name) {
                if w.ty != c.ty {
                    return Err(SchemaRefusal::TypeChange {
                        table: name.clone(),
                        column: c.name.clone(),
                        from: c.ty.name(),
                        to: w.ty.name(),
                        version,
                    });
                }
            }
        }
    }
    Ok(())
}

/// Whether two schemas hold the same tables, columns and indexes (versions aside).
pub fn same_content(a: &Schema, b: &Schema) -> bool {
    a.tables == b.tables
}

/// What changes from one schema to another, table by table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaDiff {
    /// Tables only in the target, with their whole definition.
    pub new_tables: Vec<(String, TableSchema)>,
    /// Columns added to tables both have.
    pub new_columns: Vec<(String, Column)>,
    /// Indexes added to tables both have.
    pub new_indexes: Vec<(String, Index)>,
    /// Indexes dropped from tables both have.
    pub dropped_indexes: Vec<(String, Index)>,
    /// Columns only in the source (a rollback).
    pub dropped_columns: Vec<(String, Column)>,
    /// Tables only in the source (a rollback).
    pub dropped_tables: Vec<String>,
}

impl SchemaDiff {
    pub fn between(from: &Schema, to: &Schema) -> Self {
        let mut d = SchemaDiff::default();
        for (name, t) in &to.tables {
            match from.tables.get(name) {
                None => d.new_tables.push((name.clone(), t.clone())),
                Some(old) => {
                    for c in &t.columns {
                        if old.column(&c.name).is_none() {
                            d.new_columns.push((name.clone(), c.clone()));
                        }
                    }
                    for ix in &t.indexes {
                        if !old.indexes.contains(ix) {
                            d.new_indexes.push((name.clone(), ix.clone()));
                        }
                    }
                    for ix in &old.indexes {
                        if !t.indexes.contains(ix) {
                            d.dropped_indexes.push((name.clone(), ix.clone()));
                        }
                    }
                    for c in &old.columns {
                        if t.column(&c.name).is_none() {
                            d.dropped_columns.push((name.clone(), c.clone()));
                        }
                    }
                }
            }
        }
        for name in from.tables.keys() {
            if !to.tables.contains_key(name) {
                d.dropped_tables.push(name.clone());
            }
        }
        d
    }

    /// One line per change, for people (S1 part 1: the object-schema changes).
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (t, def) in &self.new_tables {
            out.push(format!(
                "add table {t} ({})",
                def.columns
                    .iter()
                    .map(|c| format!("{} {}", c.name, c.ty.name()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        for (t, c) in &self.new_columns {
            out.push(format!("add column {t}.{} {}", c.name, c.ty.name()));
        }
        for (t, ix) in &self.new_indexes {
            out.push(format!("add index on {t} ({})", ix.columns.join(", ")));
        }
        for (t, ix) in &self.dropped_indexes {
            out.push(format!("drop index on {t} ({})", ix.columns.join(", ")));
        }
        for (t, c) in &self.dropped_columns {
            out.push(format!("drop column {t}.{} (empty)", c.name));
        }
        for t in &self.dropped_tables {
            out.push(format!("drop table {t} (empty)"));
        }
        out
    }
}

/// The name of the SQL index for `index` of `table`, the same in every
/// engine. The `tm_` prefix cannot clash with a schema table; a name
/// longer than PostgreSQL's 63 bytes is cut and given a hash suffix.
pub fn index_name(table: &str, index: &Index) -> String {
    let full = format!("tm_ix_{table}__{}", index.columns.join("__"));
    if full.len() <= 63 {
        return full;
    }
    // FNV-1a: stable across builds and platforms.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in full.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{}_{h:016x}", &full[..46])
}

/// One published version in the registry (`GET /v1/schema/versions`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaVersionInfo {
    pub version: u64,
    /// RFC 3339; `None` for a version older than the registry.
    pub published_at: Option<String>,
    /// The token name that published it, `local` (protected mode), or
    /// `initial` for the built-in first version.
    pub published_by: String,
    /// What this version changed from the one before, one line per change.
    #[serde(default)]
    pub changes: Vec<String>,
    pub schema: Schema,
}

/// `GET /v1/schema/versions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaVersions {
    pub current: u64,
    pub versions: Vec<SchemaVersionInfo>,
}

/// The staged schema (`GET /v1/schema/pending`, `PUT /v1/schema/pending`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingSchema {
    /// The version it will be published as.
    pub version: u64,
    /// The version it was staged on.
    pub base_version: u64,
    pub staged_by: String,
    pub staged_at: String,
    pub tables: BTreeMap<String, TableSchema>,
}

impl PendingSchema {
    pub fn schema(&self) -> Schema {
        Schema {
            version: self.version,
            tables: self.tables.clone(),
        }
    }
}

/// A column not yet in the database (S1 part 4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewColumn {
    pub table: String,
    pub name: String,
    #[serde(rename = "type")]
    pub ty: ColumnType,
}

/// An index definition as the database gets it (S1 part 3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexDefinition {
    pub table: String,
    pub name: String,
    pub columns: Vec<String>,
    /// True if the publish creates it.
    pub new: bool,
}

/// `GET /v1/schema/plan`: the pending change in S1's five parts, and the
/// exact DDL the publish runs on the engine in use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaPlan {
    pub from_version: u64,
    pub to_version: u64,
    /// `sqlite` or `postgres`.
    pub engine: String,
    /// 1. the object-schema changes.
    pub changes: Vec<String>,
    /// 2. the full table/column schema after the publish.
    pub tables: BTreeMap<String, TableSchema>,
    /// 3. the index definitions after the publish.
    pub indexes: Vec<IndexDefinition>,
    /// 4. the new columns not yet in the database.
    pub new_columns: Vec<NewColumn>,
    /// 5. the new tables not yet in the database.
    pub new_tables: Vec<String>,
    /// The statements the publish runs, in order: the first
    /// `ddl_before_transaction` one at a time (PostgreSQL's concurrent
    /// index builds, and the new columns they name), the rest in one
    /// transaction.
    pub ddl: Vec<String>,
    #[serde(default)]
    pub ddl_before_transaction: usize,
}

/// A publish job's step. The job is stored in the database, so a restarted
/// (or next) primary resumes it: see the server's `schema_publish` module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PublishStep {
    /// Recorded; the DDL and the version bump (one transaction) are next.
    Applying,
    /// The new version is in force; the `schema` event goes out next.
    Announcing,
    /// Announced; servers adopt it and report their version.
    Done,
    /// The DDL failed: nothing changed, the version stays.
    Failed,
}

/// What kind of change a job makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PublishKind {
    Publish,
    Rollback,
}

/// A publish (or rollback) job, as stored in the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishJob {
    pub kind: PublishKind,
    pub from_version: u64,
    pub to_version: u64,
    pub step: PublishStep,
    pub started_by: String,
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How many times a server resumed the job after a crash.
    #[serde(default)]
    pub resumed: u32,
    /// The full schema the job publishes.
    pub schema: Schema,
}

/// A service server's report of the schema version it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaAck {
    pub subscriber: String,
    pub version: u64,
    /// The version the service server ran before, when it was newer than
    /// `version`: the DB server's schema went back (a restore after the
    /// store was lost brought back the backup's older schema).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<u64>,
}

/// A [`ServerSchemaVersion`] of a DB-server instance.
pub const KIND_DB_SERVER: &str = "db_server";
/// A [`ServerSchemaVersion`] of a service server (its stream said it
/// reports its version, or it has reported one).
pub const KIND_SERVICE_SERVER: &str = "service_server";
/// A [`ServerSchemaVersion`] of a watch stream that reports no schema
/// version (a script reading events): listed, never waited for.
pub const KIND_WATCH_STREAM: &str = "watch_stream";

/// One server and the schema version it reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerSchemaVersion {
    /// `db` for the DB server itself, else the service server's name.
    pub name: String,
    /// [`KIND_DB_SERVER`], [`KIND_SERVICE_SERVER`] or [`KIND_WATCH_STREAM`].
    pub kind: String,
    /// The version it last reported; `None` if it has not reported yet.
    pub version: Option<u64>,
    /// Its watch stream is open.
    pub connected: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_at: Option<String>,
}

/// `GET /v1/schema/publish`: the job (if any) and who runs which version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishStatus {
    pub current_version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<PublishJob>,
    pub servers: Vec<ServerSchemaVersion>,
    /// Connected servers that do not run `current_version` yet.
    pub lagging: Vec<String>,
    /// The job is done and no connected server lags.
    pub complete: bool,
    /// What the operator must act on, with the fix (e.g. a restore that
    /// brought back an older schema than the service servers ran).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(v: serde_json::Value) -> SchemaDocument {
        serde_json::from_value(v).unwrap()
    }

    fn current() -> Schema {
        Schema::default_schema()
    }

    fn subscriber_with(extra: serde_json::Value) -> serde_json::Value {
        let mut cols = json!([
            {"name": "plan", "type": "string"}, {"name": "status", "type": "string"},
            {"name": "services", "type": "json"}, {"name": "roaming", "type": "boolean"},
            {"name": "credit_limit", "type": "integer"}
        ]);
        for e in extra.as_array().unwrap() {
            cols.as_array_mut().unwrap().push(e.clone());
        }
        cols
    }

    #[test]
    fn adding_a_column_a_table_and_an_index_is_staged_as_the_next_version() {
        let d = doc(json!({"version": 7, "tables": {
            "subscriber": {"columns": subscriber_with(json!([{"name": "tier", "type": "integer"}])), "indexes": [{"columns": ["plan"]}]},
            "device": {"columns": [{"name": "model", "type": "string"}]}
        }}));
        let s = stage(&current(), &d).unwrap();
        assert_eq!(s.version, 2);
        let diff = SchemaDiff::between(&current(), &s);
        assert_eq!(diff.new_tables.len(), 1);
        assert_eq!(diff.new_columns[0].1.name, "tier");
        assert_eq!(diff.new_indexes[0].1.columns, vec!["plan"]);
        assert!(diff.dropped_columns.is_empty() && diff.dropped_tables.is_empty());
    }

    /// A new table may not take SQLite's prefix (its publish failed 500);
    /// one that exists already (PostgreSQL allows it), and a column of that
    /// name, stay.
    #[test]
    fn a_new_table_named_sqlite_something_is_refused() {
        let with = |t: &str| {
            doc(json!({"tables": {
                "subscriber": {"columns": subscriber_with(json!([{"name": "sqlite_x", "type": "integer"}]))},
                t: {"columns": [{"name": "a", "type": "string"}]}
            }}))
        };
        let e = stage(&current(), &with("sqlite_stat1")).unwrap_err();
        assert!(e.to_string().contains("reserved by SQLite"), "{e}");
        assert!(stage(&current(), &with("device")).is_ok(), "a column may");
        let mut existing = current();
        existing
            .tables
            .insert("sqlite_stat1".into(), existing.tables["subscriber"].clone());
        let keep = doc(json!({"tables": {
            "subscriber": {"columns": subscriber_with(json!([]))},
            "sqlite_stat1": {"columns": subscriber_with(json!([]))}
        }}));
        assert!(
            !matches!(stage(&existing, &keep), Err(SchemaRefusal::Invalid(_))),
            "an existing one stays"
        );
    }

    #[test]
    fn existing_columns_keep_their_order() {
        let mut cols = subscriber_with(json!([{"name": "tier", "type": "integer"}]));
        cols.as_array_mut().unwrap().reverse();
        let s = stage(
            &current(),
            &doc(json!({"tables": {"subscriber": {"columns": cols}}})),
        )
        .unwrap();
        let names: Vec<_> = s.tables["subscriber"]
            .columns
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "plan",
                "status",
                "services",
                "roaming",
                "credit_limit",
                "tier"
            ]
        );
    }

    #[test]
    fn unsafe_changes_are_refused_with_their_own_codes() {
        use crate::ErrorCode::*;
        let cases = [
            (
                json!({"tables": {"other": {"columns": []}}}),
                SchemaDropRefused,
            ),
            (
                json!({"tables": {"subscriber": {"columns": [{"name": "plan", "type": "string"}]}}}),
                SchemaDropRefused,
            ),
            (
                json!({"tables": {"subscriber": {"columns": [
                {"name": "plan", "type": "integer"}, {"name": "status", "type": "string"},
                {"name": "services", "type": "json"}, {"name": "roaming", "type": "boolean"},
                {"name": "credit_limit", "type": "integer"}]}}}),
                SchemaTypeChangeRefused,
            ),
            (
                json!({"tables": {"subscriber": {"columns": [
                {"name": "tariff", "type": "string"}, {"name": "status", "type": "string"},
                {"name": "services", "type": "json"}, {"name": "roaming", "type": "boolean"},
                {"name": "credit_limit", "type": "integer"}]}}}),
                SchemaRenameRefused,
            ),
            (
                json!({"tables": {"subscriber": {"columns": subscriber_with(json!([]))}}}),
                SchemaUnchanged,
            ),
            (
                json!({"tables": {"subscriber": {"columns": subscriber_with(json!([{"name": "Bad", "type": "string"}]))}}}),
                SchemaInvalid,
            ),
            (
                json!({"tables": {"subscriber": {"columns": subscriber_with(json!([])), "indexes": [{"columns": ["nope"]}]}}}),
                SchemaInvalid,
            ),
            // A dropped or renamed column its index still names: the drop,
            // or the rename, is what is refused (it was `schema_invalid`,
            // naming the index).
            (
                json!({"tables": {"subscriber": {"columns": [
                {"name": "status", "type": "string"}, {"name": "services", "type": "json"},
                {"name": "roaming", "type": "boolean"}, {"name": "credit_limit", "type": "integer"}],
                "indexes": [{"columns": ["plan"]}]}}}),
                SchemaDropRefused,
            ),
            (
                json!({"tables": {"subscriber": {"columns": [
                {"name": "tariff", "type": "string"}, {"name": "status", "type": "string"},
                {"name": "services", "type": "json"}, {"name": "roaming", "type": "boolean"},
                {"name": "credit_limit", "type": "integer"}],
                "indexes": [{"columns": ["plan"]}]}}}),
                SchemaRenameRefused,
            ),
            // Two indexes whose names would be the same (tm_ix_a__b__c).
            (
                json!({"tables": {
                    "subscriber": {"columns": subscriber_with(json!([]))},
                    "a__b": {"columns": [{"name": "c", "type": "string"}], "indexes": [{"columns": ["c"]}]},
                    "a": {"columns": [{"name": "b__c", "type": "string"}], "indexes": [{"columns": ["b__c"]}]}}}),
                SchemaInvalid,
            ),
        ];
        for (d, code) in cases {
            let err = stage(&current(), &doc(d.clone())).unwrap_err();
            assert_eq!(err.code(), code, "{d}: {err}");
        }
    }

    #[test]
    fn index_names_fit_postgres() {
        let ix = Index {
            columns: vec!["a_very_long_column_name_indeed".into(); 3],
        };
        let n = index_name("a_rather_long_table_name", &ix);
        assert!(n.len() <= 63 && n.starts_with("tm_ix_"), "{n}");
        assert_ne!(
            n,
            index_name(
                "a_rather_long_table_name",
                &Index {
                    columns: vec!["x".into()]
                }
            )
        );
    }
}

#[cfg(test)]
mod document_tests {
    use super::SchemaDocument;

    #[test]
    fn a_document_with_a_property_it_does_not_know_is_refused() {
        let good = br#"{"version": 4, "tables": {"t": {"columns": [{"name": "a", "type": "string"}], "indexes": [{"columns": ["a"]}]}}}"#;
        let doc = SchemaDocument::parse(good).unwrap();
        assert_eq!(doc.tables["t"].indexes.len(), 1);
        // What `schema show --pending` prints stages as it is.
        let pending = br#"{"version": 5, "base_version": 4, "staged_by": "root", "staged_at": "2026-12-04T00:00:00Z", "tables": {"t": {"columns": []}}}"#;
        assert!(SchemaDocument::parse(pending).is_ok());
        for (bad, names) in [
            (
                &br#"{"tables": {"t": {"columns": [], "indexs": [{"columns": ["a"]}]}}}"#[..],
                "\"indexs\"",
            ),
            (br#"{"tables": {}, "table": {}}"#, "\"table\""),
            (
                br#"{"tables": {"t": {"columns": [{"name": "a", "typ": "string"}]}}}"#,
                "\"typ\"",
            ),
            (
                br#"{"tables": {"t": {"columns": [], "indexes": [{"cols": ["a"]}]}}}"#,
                "\"cols\"",
            ),
        ] {
            let e = SchemaDocument::parse(bad).unwrap_err();
            assert!(e.contains(names) && e.contains("expected one of"), "{e}");
        }
    }

    /// A property named twice is refused wherever it is, not resolved by
    /// the last one (which would stage a table other than the one meant).
    #[test]
    fn a_property_named_twice_is_refused() {
        let col = r#"{"columns": [{"name": "a", "type": "string"}]}"#;
        let other = r#"{"columns": [{"name": "b", "type": "integer"}]}"#;
        for (bad, at) in [
            (
                format!(r#"{{"tables": {{"t": {col}, "t": {other}}}}}"#),
                "document.tables.t",
            ),
            (
                r#"{"tables": {"t": {"columns": [], "columns": []}}}"#.to_string(),
                "document.tables.t.columns",
            ),
            (
                format!(r#"{{"tables": {{"u": {col}}}, "tables": {{"t": {other}}}}}"#),
                "document.tables",
            ),
            (
                r#"{"tables": {"t": {"columns": [{"name": "a", "type": "string", "type": "json"}]}}}"#
                    .to_string(),
                "document.tables.t.columns[0].type",
            ),
        ] {
            let e = SchemaDocument::parse(bad.as_bytes()).unwrap_err();
            assert!(
                e.contains(&format!("{at:?} is named twice")),
                "{bad}: {e}"
            );
        }
        // The same names in different objects are fine.
        let ok = format!(r#"{{"tables": {{"t": {col}, "u": {col}}}}}"#);
        assert_eq!(
            SchemaDocument::parse(ok.as_bytes()).unwrap().tables.len(),
            2
        );
    }
}
