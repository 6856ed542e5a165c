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
//!   The exception ([`staged`], PostgreSQL): an index on a table that
//!   already exists is built first with `CREATE INDEX CONCURRENTLY`, which
//!   cannot run in a transaction and does not block writes; each of those
//!   steps is idempotent (re-run on resume), and what they add is invisible
//!   (the catalog names it) until the transaction commits the version.
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

/// A step run before the catalog transaction, on its own (no transaction).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Before {
    /// `ALTER TABLE ... ADD COLUMN IF NOT EXISTS` of a new column that a
    /// new index names (the index is built before the version commits).
    Column(String),
    /// `CREATE INDEX CONCURRENTLY IF NOT EXISTS`; an INVALID index of that
    /// name (left by a build that died) is dropped first.
    Index { name: String, sql: String },
}

impl Before {
    pub(crate) fn sql(&self) -> &str {
        match self {
            Before::Column(sql) | Before::Index { sql, .. } => sql,
        }
    }
}

/// A publish in two parts: idempotent steps before the transaction, then
/// the transaction's statements (see the module's invariants).
#[derive(Debug, Default)]
pub(crate) struct Staged {
    pub before: Vec<Before>,
    pub tx: Vec<String>,
}

impl Staged {
    /// Every statement in the order it runs (what a plan shows).
    pub(crate) fn all(&self) -> Vec<String> {
        self.before
            .iter()
            .map(|b| b.sql().to_owned())
            .chain(self.tx.iter().cloned())
            .collect()
    }
}

/// [`ddl`] for an engine that builds the new indexes of existing tables
/// concurrently (PostgreSQL): those indexes, and the new columns they name,
/// move to [`Staged::before`]; in the transaction every new column is added
/// `IF NOT EXISTS` (a resumed job may have added it already).
pub(crate) fn staged(d: &dyn Dialect, from: &Schema, to: &Schema) -> Result<Staged, StoreError> {
    let diff = SchemaDiff::between(from, to);
    let mut out = Staged::default();
    let mut early_columns = Vec::new();
    for (t, ix) in &diff.new_indexes {
        if !from.tables.contains_key(t) {
            continue;
        }
        for c in &ix.columns {
            if let Some((_, col)) = diff
                .new_columns
                .iter()
                .find(|(nt, nc)| nt == t && &nc.name == c)
            {
                if !early_columns.contains(&(t.clone(), c.clone())) {
                    early_columns.push((t.clone(), c.clone()));
                    out.before
                        .push(Before::Column(add_column(d, t, col, true)?));
                }
            }
        }
        let sql = create_index(t, ix)?.replacen(
            "CREATE INDEX",
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS",
            1,
        );
        out.before.push(Before::Index {
            name: index_name(t, ix),
            sql,
        });
    }
    out.tx = statements(d, &diff, true, |t| from.tables.contains_key(t))?;
    Ok(out)
}

fn add_column(
    d: &dyn Dialect,
    t: &str,
    c: &tidemark_api::Column,
    if_not_exists: bool,
) -> Result<String, StoreError> {
    check(t)?;
    check(&c.name)?;
    Ok(format!(
        "ALTER TABLE \"{t}\" ADD COLUMN {}{}",
        if if_not_exists { "IF NOT EXISTS " } else { "" },
        d.column(&c.name, c.ty)
    ))
}

/// The statements that take a store from `from` to `to`, in order: drops
/// first (indexes, then columns, then tables: a rollback), then new tables
/// with their indexes, new columns, new indexes.
pub(crate) fn ddl(d: &dyn Dialect, from: &Schema, to: &Schema) -> Result<Vec<String>, StoreError> {
    statements(d, &SchemaDiff::between(from, to), false, |_| false)
}

/// The transaction's statements; new indexes of tables for which
/// `built_before` holds are left out (built by [`staged`]'s steps).
fn statements(
    d: &dyn Dialect,
    diff: &SchemaDiff,
    if_not_exists: bool,
    built_before: impl Fn(&str) -> bool,
) -> Result<Vec<String>, StoreError> {
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
        out.push(add_column(d, t, c, if_not_exists)?);
    }
    for (t, ix) in &diff.new_indexes {
        if !built_before(t) {
            out.push(create_index(t, ix)?);
        }
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
