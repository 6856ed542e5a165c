//! The schema as stored in `tm_tables`/`tm_columns`, and the SQL text built
//! from it. Only validated identifiers ever reach SQL text.

use super::values::column_ddl;
use crate::StoreError;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::BTreeMap;
use std::sync::Arc;
use tidemark_api::schema::is_identifier;
use tidemark_api::{Column, ColumnType, Schema, TableSchema};

/// Per-table SQL, built once per schema version.
#[derive(Debug)]
pub struct TableSql {
    pub columns: Vec<Column>,
    /// The names of `columns`, in order.
    pub column_names: Vec<String>,
    /// `SELECT tm_epoch, tm_seq, cols... FROM t WHERE tm_key = ?1`
    pub select: String,
    /// `DELETE FROM t WHERE tm_key = ?1 RETURNING tm_key`
    pub delete: String,
    pub quoted: String,
    /// Upsert SQL by the set of columns it sets (bit i = column i), built
    /// once: formatting it per order was 6 % of the apply time.
    upserts: parking_lot::Mutex<std::collections::HashMap<u128, Arc<str>>>,
}

impl TableSql {
    fn new(name: &str, t: &TableSchema) -> Self {
        let quoted = format!("\"{name}\"");
        let cols: Vec<String> = t
            .columns
            .iter()
            .map(|c| format!("\"{}\"", c.name))
            .collect();
        let mut select = String::from("SELECT tm_epoch, tm_seq");
        for c in &cols {
            select.push_str(", ");
            select.push_str(c);
        }
        select.push_str(&format!(" FROM {quoted} WHERE tm_key = ?1"));
        Self {
            columns: t.columns.clone(),
            column_names: t.columns.iter().map(|c| c.name.clone()).collect(),
            select,
            delete: format!("DELETE FROM {quoted} WHERE tm_key = ?1"),
            quoted,
            upserts: Default::default(),
        }
    }

    /// The upsert of the columns in `mask` (at most 128 columns), cached.
    pub fn upsert_for(&self, mask: u128) -> Arc<str> {
        if let Some(sql) = self.upserts.lock().get(&mask) {
            return sql.clone();
        }
        let names: Vec<&str> = self
            .columns
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1u128 << i) != 0)
            .map(|(_, c)| c.name.as_str())
            .collect();
        let sql: Arc<str> = self.upsert(&names).into();
        self.upserts.lock().insert(mask, sql.clone());
        sql
    }

    /// `INSERT ... ON CONFLICT DO UPDATE` of the named columns only, so an
    /// upsert leaves the other fields of an existing record as they were.
    /// Returns the whole row after the change.
    pub fn upsert(&self, set: &[&str]) -> String {
        let mut names = String::from("tm_key, tm_epoch, tm_seq");
        let mut values = String::from("?1, ?2, ?3");
        let mut update = String::from("tm_epoch = excluded.tm_epoch, tm_seq = excluded.tm_seq");
        for (i, c) in set.iter().enumerate() {
            names.push_str(&format!(", \"{c}\""));
            values.push_str(&format!(", ?{}", i + 4));
            update.push_str(&format!(", \"{c}\" = excluded.\"{c}\""));
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
        format!(
            "INSERT INTO {} ({names}) VALUES ({values}) ON CONFLICT(tm_key) DO UPDATE SET {update} RETURNING {returning}",
            self.quoted
        )
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

fn type_from_name(name: &str) -> Result<ColumnType, StoreError> {
    Ok(match name {
        "string" => ColumnType::String,
        "integer" => ColumnType::Integer,
        "boolean" => ColumnType::Boolean,
        "timestamp" => ColumnType::Timestamp,
        "json" => ColumnType::Json,
        other => {
            return Err(StoreError::Format(format!(
                "the store's schema has a column of type '{other}', which this tidemark build does not know (S10): it was published by a newer Tidemark; run a matching tidemark version"
            )))
        }
    })
}

/// Reads the schema from the database.
pub fn load(conn: &Connection, version: u64) -> Result<Schema, StoreError> {
    let mut stmt = conn.prepare("SELECT tbl, name, type FROM tm_columns ORDER BY tbl, ordinal")?;
    let mut tables: BTreeMap<String, TableSchema> = BTreeMap::new();
    for t in conn
        .prepare("SELECT name FROM tm_tables")?
        .query_map([], |r| r.get::<_, String>(0))?
    {
        tables.insert(
            t?,
            TableSchema {
                columns: Vec::new(),
                indexes: Vec::new(),
            },
        );
    }
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    for row in rows {
        let (tbl, name, ty) = row?;
        if !is_identifier(&tbl) || !is_identifier(&name) {
            return Err(StoreError::Format(format!(
                "invalid identifier {tbl}.{name} in tm_columns"
            )));
        }
        tables
            .entry(tbl)
            .or_insert_with(|| TableSchema {
                columns: Vec::new(),
                indexes: Vec::new(),
            })
            .columns
            .push(Column {
                name,
                ty: type_from_name(&ty)?,
            });
    }
    let mut schema = Schema { version, tables };
    let registry: Option<String> = conn
        .query_row(
            "SELECT schema FROM tm_schema_versions WHERE version = ?1",
            params![version as i64],
            |r| r.get(0),
        )
        .optional()
        // A snapshot older than the registry has no such table.
        .unwrap_or(None);
    crate::schema_ddl::attach_indexes(&mut schema, registry.as_deref());
    Ok(schema)
}

/// Creates a table and records it in the catalog. Runs inside the caller's
/// transaction.
pub fn create_table(conn: &Connection, name: &str, t: &TableSchema) -> Result<(), StoreError> {
    conn.execute_batch(&create_table_sql(name, t)?)?;
    for ix in &t.indexes {
        conn.execute_batch(&crate::schema_ddl::create_index(name, ix)?)?;
    }
    insert_rows(conn, name, t)
}

/// Records a table and its columns in `tm_tables` / `tm_columns`.
pub fn insert_rows(conn: &Connection, name: &str, t: &TableSchema) -> Result<(), StoreError> {
    conn.execute("INSERT INTO tm_tables (name) VALUES (?1)", params![name])?;
    for (i, c) in t.columns.iter().enumerate() {
        conn.execute(
            "INSERT INTO tm_columns (tbl, name, type, ordinal) VALUES (?1, ?2, ?3, ?4)",
            params![name, c.name, c.ty.name(), i as i64],
        )?;
    }
    Ok(())
}

/// `CREATE TABLE` of a schema table (without its indexes).
pub fn create_table_sql(name: &str, t: &TableSchema) -> Result<String, StoreError> {
    if !is_identifier(name) || t.columns.iter().any(|c| !is_identifier(&c.name)) {
        return Err(StoreError::Format(format!(
            "table '{name}' has an invalid identifier"
        )));
    }
    let mut ddl = format!(
        "CREATE TABLE \"{name}\" (tm_key TEXT PRIMARY KEY NOT NULL, tm_epoch INTEGER NOT NULL, tm_seq INTEGER NOT NULL"
    );
    for c in &t.columns {
        ddl.push_str(", ");
        ddl.push_str(&column_ddl(&c.name, c.ty));
    }
    ddl.push_str(") WITHOUT ROWID");
    Ok(ddl)
}
