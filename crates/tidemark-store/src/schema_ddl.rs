//! The schema registry's engine-neutral part (S1, S9): the DDL that takes
//! the store from one schema version to the next, given each engine's
//! spelling of a table and a column, and the registry's rows.
//!
//! Invariants:
//! - Plan and publish call the same function, so the DDL a plan shows is
//!   exactly the DDL the publish runs.
//! - Every statement runs in the one transaction that also rewrites the
//!   catalog, records the version and bumps `schema_version` (both engines
//!   have transactional DDL): a crash leaves the old version or the new one.
//! - Only validated identifiers reach SQL text.

use crate::StoreError;
use tidemark_api::schema::is_identifier;
use tidemark_api::schema_change::{index_name, SchemaDiff};
use tidemark_api::{ColumnType, Index, Schema, TableSchema};

/// How an engine spells the pieces of its DDL.
pub(crate) trait Dialect {
    /// `CREATE TABLE` of a schema table, without its indexes.
    fn create_table(&self, name: &str, t: &TableSchema) -> Result<String, StoreError>;
    /// A column definition: `"name" TYPE`.
    fn column(&self, name: &str, ty: ColumnType) -> String;
}

fn check(name: &str) -> Result<(), StoreError> {
    if is_identifier(name) {
        Ok(())
    } else {
        Err(StoreError::Format(format!(
            "'{name}' is not a valid identifier"
        )))
    }
}

/// `CREATE INDEX` of one index.
pub(crate) fn create_index(table: &str, ix: &Index) -> Result<String, StoreError> {
    check(table)?;
    for c in &ix.columns {
        check(c)?;
    }
    let cols = ix
        .columns
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(format!(
        "CREATE INDEX \"{}\" ON \"{table}\" ({cols})",
        index_name(table, ix)
    ))
}

/// The statements that take a store from `from` to `to`, in order: drops
/// first (indexes, then columns, then tables: a rollback), then new tables
/// with their indexes, new columns, new indexes.
pub(crate) fn ddl(d: &dyn Dialect, from: &Schema, to: &Schema) -> Result<Vec<String>, StoreError> {
    let diff = SchemaDiff::between(from, to);
    let mut out = Vec::new();
    for (t, ix) in &diff.dropped_indexes {
        check(t)?;
        out.push(format!("DROP INDEX \"{}\"", index_name(t, ix)));
    }
    for (t, c) in &diff.dropped_columns {
        check(t)?;
        check(&c.name)?;
        out.push(format!("ALTER TABLE \"{t}\" DROP COLUMN \"{}\"", c.name));
    }
    for t in &diff.dropped_tables {
        check(t)?;
        out.push(format!("DROP TABLE \"{t}\""));
    }
    for (name, t) in &diff.new_tables {
        out.push(d.create_table(name, t)?);
        for ix in &t.indexes {
            out.push(create_index(name, ix)?);
        }
    }
    for (t, c) in &diff.new_columns {
        check(t)?;
        check(&c.name)?;
        out.push(format!(
            "ALTER TABLE \"{t}\" ADD COLUMN {}",
            d.column(&c.name, c.ty)
        ));
    }
    for (t, ix) in &diff.new_indexes {
        out.push(create_index(t, ix)?);
    }
    Ok(out)
}

/// What a rollback would remove that holds data: one query per dropped
/// column or table, each counting the rows that hold something.
pub(crate) fn emptiness_checks(from: &Schema, to: &Schema) -> Vec<(String, String)> {
    let diff = SchemaDiff::between(from, to);
    let mut out = Vec::new();
    for (t, c) in &diff.dropped_columns {
        out.push((
            format!("column {t}.{}", c.name),
            format!(
                "SELECT count(*) FROM \"{t}\" WHERE \"{}\" IS NOT NULL",
                c.name
            ),
        ));
    }
    for t in &diff.dropped_tables {
        out.push((
            format!("table {t}"),
            format!("SELECT count(*) FROM \"{t}\""),
        ));
    }
    out
}

/// The refusal of a rollback that would lose data.
pub(crate) fn not_empty(what: &str, rows: i64, version: u64) -> StoreError {
    StoreError::SchemaRefused(format!(
        "rollback refused: {what} (added by schema version {version}) holds data in {rows} record(s), and removing it would lose that data; keep version {version}, or clear the values with orders first and roll back then"
    ))
}

/// The indexes recorded for the version in force, put on the tables and
/// columns the catalog holds. `registry` is the version's registry row.
pub(crate) fn attach_indexes(schema: &mut Schema, registry: Option<&str>) {
    let Some(text) = registry else { return };
    let Ok(recorded) = serde_json::from_str::<Schema>(text) else {
        tracing::warn!("the schema registry row of the version in force is unreadable; serving without index definitions");
        return;
    };
    for (name, t) in schema.tables.iter_mut() {
        if let Some(r) = recorded.tables.get(name) {
            t.indexes = r
                .indexes
                .iter()
                .filter(|ix| ix.columns.iter().all(|c| t.column(c).is_some()))
                .cloned()
                .collect();
        }
    }
}

/// The registry row of a fresh store's first version.
pub(crate) fn initial_row(schema: &Schema) -> Result<(String, String), StoreError> {
    Ok((
        serde_json::to_string(schema)?,
        chrono::Utc::now().to_rfc3339(),
    ))
}
