//! The PostgreSQL engine's DDL, the schema as stored in `tm_tables` /
//! `tm_columns`, per-table SQL, and the conversion of field values.
//! Only validated identifiers ever reach SQL text.

use crate::StoreError;
use bytes::BytesMut;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tidemark_api::schema::is_identifier;
use tidemark_api::{Column, ColumnType, Schema, TableSchema};
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::Row;

/// Tidemark's own tables. Each statement is idempotent.
pub const INTERNAL_DDL: &str = "
CREATE TABLE IF NOT EXISTS tm_meta (name text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS tm_tables (name text PRIMARY KEY);
CREATE TABLE IF NOT EXISTS tm_columns (tbl text NOT NULL, name text NOT NULL, type text NOT NULL, ordinal integer NOT NULL, PRIMARY KEY (tbl, name));
CREATE TABLE IF NOT EXISTS tm_changes (seq bigint PRIMARY KEY, epoch bigint NOT NULL, tbl text NOT NULL, key text NOT NULL, fields jsonb, source text NOT NULL, source_seq bigint NOT NULL, digest text NOT NULL, cleared boolean NOT NULL DEFAULT false, flagged boolean NOT NULL DEFAULT false);
CREATE INDEX IF NOT EXISTS tm_changes_by_source ON tm_changes (source, source_seq);
CREATE TABLE IF NOT EXISTS tm_sources (source text PRIMARY KEY, high_water bigint NOT NULL);
CREATE TABLE IF NOT EXISTS tm_pruned (source text PRIMARY KEY, through_seq bigint NOT NULL);
CREATE TABLE IF NOT EXISTS tm_tombstones (tbl text NOT NULL, key text NOT NULL, epoch bigint NOT NULL, seq bigint NOT NULL, PRIMARY KEY (tbl, key));
CREATE TABLE IF NOT EXISTS tm_flags (tbl text NOT NULL, key text NOT NULL, source text NOT NULL, through_seq bigint NOT NULL, PRIMARY KEY (tbl, key, source));
CREATE TABLE IF NOT EXISTS tm_recovery_sources (source text PRIMARY KEY, final boolean NOT NULL, waived boolean NOT NULL);
CREATE TABLE IF NOT EXISTS tm_lww (tbl text NOT NULL, key text NOT NULL, upsert_v text, delete_v text, fields text NOT NULL, PRIMARY KEY (tbl, key));
CREATE TABLE IF NOT EXISTS tm_schema_versions (version bigint PRIMARY KEY, schema text NOT NULL, published_by text NOT NULL, published_at text, changes text NOT NULL DEFAULT '[]');
";

pub fn sql_type(ty: ColumnType) -> &'static str {
    match ty {
        ColumnType::String | ColumnType::Timestamp => "text",
        ColumnType::Json => "jsonb",
        ColumnType::Integer => "bigint",
        ColumnType::Boolean => "boolean",
    }
}

/// `CREATE TABLE` of a schema table. `name` and the columns are validated.
pub fn create_table_sql(name: &str, t: &TableSchema) -> Result<String, StoreError> {
    if !is_identifier(name) || t.columns.iter().any(|c| !is_identifier(&c.name)) {
        return Err(StoreError::Format(format!(
            "table '{name}' has an invalid identifier"
        )));
    }
    let mut ddl = format!(
        "CREATE TABLE \"{name}\" (tm_key text PRIMARY KEY, tm_epoch bigint NOT NULL, tm_seq bigint NOT NULL"
    );
    for c in &t.columns {
        ddl.push_str(&format!(", \"{}\" {}", c.name, sql_type(c.ty)));
    }
    ddl.push(')');
    Ok(ddl)
}

/// Per-table SQL, built once per schema version.
#[derive(Debug)]
pub struct TableSql {
    pub columns: Vec<Column>,
    /// `SELECT tm_epoch, tm_seq, cols... FROM t WHERE tm_key = $1`
    pub select: String,
    pub delete: String,
    /// One statement, so one snapshot: the record (if any), the tombstone
    /// and whether the key is flagged. `$1` the key, `$2` the table name.
    pub lookup: String,
    pub quoted: String,
    upserts: parking_lot::Mutex<HashMap<Vec<usize>, Arc<str>>>,
    bulk_upserts: parking_lot::Mutex<HashMap<Vec<usize>, Arc<str>>>,
    /// Deletes many keys and writes their tombstones in one statement:
    /// `$1` keys, `$2` seqs, `$3` the table name, `$4` the epoch.
    pub bulk_delete: String,
}

impl TableSql {
    fn new(name: &str, t: &TableSchema) -> Self {
        let quoted = format!("\"{name}\"");
        let mut select = String::from("SELECT tm_epoch, tm_seq");
        for c in &t.columns {
            select.push_str(&format!(", \"{}\"", c.name));
        }
        select.push_str(&format!(" FROM {quoted} WHERE tm_key = $1"));
        let mut lookup = String::from("SELECT r.tm_epoch, r.tm_seq");
        for c in &t.columns {
            lookup.push_str(&format!(", r.\"{}\"", c.name));
        }
        lookup.push_str(&format!(
            ", tb.epoch, tb.seq, EXISTS (SELECT 1 FROM tm_flags f WHERE f.tbl = $2 AND f.key = $1) FROM (SELECT 1) AS one LEFT JOIN {quoted} r ON r.tm_key = $1 LEFT JOIN tm_tombstones tb ON tb.tbl = $2 AND tb.key = $1"
        ));
        Self {
            columns: t.columns.clone(),
            lookup,
            select,
            delete: format!("DELETE FROM {quoted} WHERE tm_key = $1"),
            bulk_delete: format!(
                "WITH u AS (SELECT * FROM unnest($1::text[], $2::bigint[]) AS u(k, s)), d AS (DELETE FROM {quoted} r USING u WHERE r.tm_key = u.k RETURNING r.tm_key) INSERT INTO tm_tombstones (tbl, key, epoch, seq) SELECT $3, u.k, $4, u.s FROM u JOIN d ON d.tm_key = u.k ON CONFLICT (tbl, key) DO UPDATE SET epoch = excluded.epoch, seq = excluded.seq"
            ),
            quoted,
            upserts: Default::default(),
            bulk_upserts: Default::default(),
        }
    }

    /// `INSERT ... ON CONFLICT DO UPDATE` of the columns at `set` (indexes
    /// into `columns`), returning the whole row after the change. Cached.
    pub fn upsert(&self, set: &[usize]) -> Arc<str> {
        if let Some(sql) = self.upserts.lock().get(set) {
            return sql.clone();
        }
        let mut names = String::from("tm_key, tm_epoch, tm_seq");
        let mut values = String::from("$1, $2, $3");
        let mut update = String::from("tm_epoch = excluded.tm_epoch, tm_seq = excluded.tm_seq");
        for (i, &c) in set.iter().enumerate() {
            let n = &self.columns[c].name;
            names.push_str(&format!(", \"{n}\""));
            values.push_str(&format!(", ${}", i + 4));
            update.push_str(&format!(", \"{n}\" = excluded.\"{n}\""));
        }
        let returning: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("\"{}\"", c.name))
            .collect();
        let returning = if returning.is_empty() {
            "tm_key".to_owned()
        } else {
            returning.join(", ")
        };
        let sql: Arc<str> = format!(
            "INSERT INTO {} ({names}) VALUES ({values}) ON CONFLICT (tm_key) DO UPDATE SET {update} RETURNING {returning}",
            self.quoted
        )
        .into();
        self.upserts.lock().insert(set.to_vec(), sql.clone());
        sql
    }

    /// The multi-row form of [`Self::upsert`]: one statement for many keys
    /// (all distinct), from arrays. `$1` keys, `$2` the epoch, `$3` seqs,
    /// then one array per column of `set`. Returns `tm_key` then every
    /// column. Cached.
    pub fn bulk_upsert(&self, set: &[usize]) -> Arc<str> {
        if let Some(sql) = self.bulk_upserts.lock().get(set) {
            return sql.clone();
        }
        let mut names = String::from("tm_key, tm_epoch, tm_seq");
        let mut select = String::from("u.k, $2, u.s");
        let mut arrays = String::from("$1::text[], $3::bigint[]");
        let mut aliases = String::from("k, s");
        let mut update = String::from("tm_epoch = excluded.tm_epoch, tm_seq = excluded.tm_seq");
        for (i, &c) in set.iter().enumerate() {
            let col = &self.columns[c];
            let n = &col.name;
            names.push_str(&format!(", \"{n}\""));
            select.push_str(&format!(", u.c{i}"));
            arrays.push_str(&format!(", ${}::{}[]", i + 4, sql_type(col.ty)));
            aliases.push_str(&format!(", c{i}"));
            update.push_str(&format!(", \"{n}\" = excluded.\"{n}\""));
        }
        let mut returning = String::from("tm_key");
        for c in &self.columns {
            returning.push_str(&format!(", \"{}\"", c.name));
        }
        let sql: Arc<str> = format!(
            "INSERT INTO {} ({names}) SELECT {select} FROM unnest({arrays}) AS u({aliases}) ON CONFLICT (tm_key) DO UPDATE SET {update} RETURNING {returning}",
            self.quoted
        )
        .into();
        self.bulk_upserts.lock().insert(set.to_vec(), sql.clone());
        sql
    }

    /// The fields of a row whose columns start at `first`.
    pub fn fields(&self, row: &Row, first: usize) -> Result<tidemark_api::Fields, StoreError> {
        let mut out = tidemark_api::Fields::new();
        for (i, c) in self.columns.iter().enumerate() {
            out.insert(c.name.clone(), from_row(c.ty, row, first + i)?);
        }
        Ok(out)
    }
}

/// The schema in force with its SQL.
#[derive(Debug)]
pub struct Catalog {
    pub schema: Arc<Schema>,
    pub tables: BTreeMap<String, TableSql>,
}

impl Catalog {
    pub fn new(schema: Schema) -> Self {
        let tables = schema
            .tables
            .iter()
            .map(|(n, t)| (n.clone(), TableSql::new(n, t)))
            .collect();
        Self {
            schema: Arc::new(schema),
            tables,
        }
    }
}

/// Builds the schema from the rows of `tm_tables` and `tm_columns`.
pub fn schema_from_rows(
    version: u64,
    tables: Vec<String>,
    columns: Vec<(String, String, String)>,
) -> Result<Schema, StoreError> {
    let mut out: BTreeMap<String, TableSchema> = tables
        .into_iter()
        .map(|t| {
            (
                t,
                TableSchema {
                    columns: Vec::new(),
                    indexes: Vec::new(),
                },
            )
        })
        .collect();
    for (tbl, name, ty) in columns {
        if !is_identifier(&tbl) || !is_identifier(&name) {
            return Err(StoreError::Format(format!(
                "invalid identifier {tbl}.{name} in tm_columns"
            )));
        }
        let ty = ColumnType::from_name(&ty).ok_or_else(|| {
            StoreError::Format(format!("the store's schema has a column of type '{ty}', which this tidemark build does not know (S10): it was published by a newer Tidemark; run a matching tidemark version"))
        })?;
        out.entry(tbl)
            .or_insert_with(|| TableSchema {
                columns: Vec::new(),
                indexes: Vec::new(),
            })
            .columns
            .push(Column { name, ty });
    }
    Ok(Schema {
        version,
        tables: out,
    })
}

/// A validated field value as a PostgreSQL parameter of its column's type.
#[derive(Debug)]
pub enum PgValue {
    Null,
    Text(String),
    Int(i64),
    Bool(bool),
    Json(Value),
}

impl PgValue {
    pub fn of(ty: ColumnType, v: &Value) -> Self {
        match (ty, v) {
            (_, Value::Null) => PgValue::Null,
            (ColumnType::Boolean, Value::Bool(b)) => PgValue::Bool(*b),
            (ColumnType::Integer, Value::Number(n)) => {
                n.as_i64().map_or(PgValue::Null, PgValue::Int)
            }
            (ColumnType::String | ColumnType::Timestamp, Value::String(s)) => {
                PgValue::Text(s.clone())
            }
            (ColumnType::Json, v) => PgValue::Json(v.clone()),
            // Validation runs first; anything else cannot reach here.
            (_, v) => PgValue::Text(v.to_string()),
        }
    }
}

impl ToSql for PgValue {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            PgValue::Null => Ok(IsNull::Yes),
            PgValue::Text(s) => s.to_sql(ty, out),
            PgValue::Int(i) => i.to_sql(ty, out),
            PgValue::Bool(b) => b.to_sql(ty, out),
            PgValue::Json(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        matches!(
            *ty,
            Type::TEXT | Type::VARCHAR | Type::INT8 | Type::BOOL | Type::JSONB | Type::JSON
        )
    }

    to_sql_checked!();
}

/// One column's values for a multi-row statement, as a PostgreSQL array of
/// the column's type (`None` is SQL NULL).
#[derive(Debug)]
pub enum PgArray {
    Text(Vec<Option<String>>),
    Int(Vec<Option<i64>>),
    Bool(Vec<Option<bool>>),
    Json(Vec<Option<Value>>),
}

impl PgArray {
    pub fn new(ty: ColumnType, capacity: usize) -> Self {
        match ty {
            ColumnType::String | ColumnType::Timestamp => {
                PgArray::Text(Vec::with_capacity(capacity))
            }
            ColumnType::Integer => PgArray::Int(Vec::with_capacity(capacity)),
            ColumnType::Boolean => PgArray::Bool(Vec::with_capacity(capacity)),
            ColumnType::Json => PgArray::Json(Vec::with_capacity(capacity)),
        }
    }

    /// Appends a validated value (as [`PgValue::of`] converts it).
    pub fn push(&mut self, v: &Value) {
        match (self, v) {
            (PgArray::Text(a), Value::Null) => a.push(None),
            (PgArray::Int(a), Value::Null) => a.push(None),
            (PgArray::Bool(a), Value::Null) => a.push(None),
            (PgArray::Json(a), Value::Null) => a.push(None),
            (PgArray::Text(a), Value::String(s)) => a.push(Some(s.clone())),
            (PgArray::Text(a), v) => a.push(Some(v.to_string())),
            (PgArray::Int(a), v) => a.push(v.as_i64()),
            (PgArray::Bool(a), v) => a.push(v.as_bool()),
            (PgArray::Json(a), v) => a.push(Some(v.clone())),
        }
    }
}

impl ToSql for PgArray {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            PgArray::Text(a) => a.to_sql(ty, out),
            PgArray::Int(a) => a.to_sql(ty, out),
            PgArray::Bool(a) => a.to_sql(ty, out),
            PgArray::Json(a) => a.to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        matches!(
            *ty,
            Type::TEXT_ARRAY | Type::INT8_ARRAY | Type::BOOL_ARRAY | Type::JSONB_ARRAY
        )
    }

    to_sql_checked!();
}

/// A stored value as JSON, by column type.
pub fn from_row(ty: ColumnType, row: &Row, i: usize) -> Result<Value, StoreError> {
    let bad = |e: tokio_postgres::Error| StoreError::Format(format!("column {i}: {e}"));
    Ok(match ty {
        ColumnType::String | ColumnType::Timestamp => row
            .try_get::<_, Option<String>>(i)
            .map_err(bad)?
            .map_or(Value::Null, Value::String),
        ColumnType::Integer => row
            .try_get::<_, Option<i64>>(i)
            .map_err(bad)?
            .map_or(Value::Null, Value::from),
        ColumnType::Boolean => row
            .try_get::<_, Option<bool>>(i)
            .map_err(bad)?
            .map_or(Value::Null, Value::Bool),
        ColumnType::Json => row
            .try_get::<_, Option<Value>>(i)
            .map_err(bad)?
            .unwrap_or(Value::Null),
    })
}
