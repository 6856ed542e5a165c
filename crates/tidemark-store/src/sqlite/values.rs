//! Conversion between JSON field values and SQLite values, by column type.

use rusqlite::types::{Value as SqlValue, ValueRef};
use serde_json::Value;
use tidemark_api::ColumnType;

/// A validated JSON value as the SQLite value its column stores.
pub fn to_sql(ty: ColumnType, v: &Value) -> SqlValue {
    match (ty, v) {
        (_, Value::Null) => SqlValue::Null,
        (ColumnType::Boolean, Value::Bool(b)) => SqlValue::Integer(i64::from(*b)),
        (ColumnType::Integer, Value::Number(n)) => {
            n.as_i64().map(SqlValue::Integer).unwrap_or(SqlValue::Null)
        }
        (ColumnType::String | ColumnType::Timestamp, Value::String(s)) => SqlValue::Text(s.clone()),
        (ColumnType::Json, v) => SqlValue::Text(v.to_string()),
        // Validation runs first; anything else cannot reach here.
        (_, v) => SqlValue::Text(v.to_string()),
    }
}

/// A stored SQLite value as JSON, by column type.
pub fn from_sql(ty: ColumnType, v: ValueRef<'_>) -> Result<Value, String> {
    Ok(match (ty, v) {
        (_, ValueRef::Null) => Value::Null,
        (ColumnType::Boolean, ValueRef::Integer(i)) => Value::Bool(i != 0),
        (ColumnType::Integer, ValueRef::Integer(i)) => Value::from(i),
        (ColumnType::String | ColumnType::Timestamp, ValueRef::Text(t)) => Value::String(
            std::str::from_utf8(t)
                .map_err(|e| e.to_string())?
                .to_owned(),
        ),
        (ColumnType::Json, ValueRef::Text(t)) => {
            serde_json::from_slice(t).map_err(|e| e.to_string())?
        }
        (ty, other) => {
            return Err(format!(
                "a {:?} value in a {} column",
                other.data_type(),
                ty.name()
            ))
        }
    })
}

fn sql_type(ty: ColumnType) -> &'static str {
    match ty {
        ColumnType::String | ColumnType::Timestamp | ColumnType::Json => "TEXT",
        ColumnType::Integer | ColumnType::Boolean => "INTEGER",
    }
}

/// The column definition in DDL. `name` is a validated identifier.
pub fn column_ddl(name: &str, ty: ColumnType) -> String {
    format!("\"{name}\" {}", sql_type(ty))
}
