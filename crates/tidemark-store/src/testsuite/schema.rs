//! The schema registry (S1, S9): publishing a version (DDL, registry row
//! and version bump in one transaction), what old records read, a publish
//! run twice, rollback of empty additions only.

use super::{fields, order};
use crate::{Store, StoreError};
use serde_json::json;
use tidemark_api::{Column, ColumnType, Index, Op, Order, Schema, TableSchema};

fn with_version(mut s: Schema, version: u64) -> Schema {
    s.version = version;
    s
}

fn add_column(s: &mut Schema, table: &str, name: &str, ty: ColumnType) {
    s.tables.get_mut(table).unwrap().columns.push(Column {
        name: name.into(),
        ty,
    });
}

fn device_order(seq: u64, key: &str) -> Order {
    Order {
        origin: None,
        source: "ops-schema".into(),
        seq,
        table: "device".into(),
        key: key.into(),
        op: Op::Upsert,
        fields: fields(json!({"model": "m1"})),
    }
}

pub(super) async fn registry(store: &dyn Store) {
    let v1 = (*store.schema()).clone();
    let base = v1.version;
    let listed = store.schema_versions().await.unwrap();
    assert_eq!(listed.last().unwrap().version, base);
    assert_eq!(listed.last().unwrap().schema.tables, v1.tables);
    store
        .apply(vec![order(
            "ops-schema",
            1,
            "sch1",
            Op::Upsert,
            json!({"plan": "a"}),
        )])
        .await
        .unwrap();

    // Version 2: a column, an index, a table.
    let mut v2 = with_version(v1.clone(), base + 1);
    add_column(&mut v2, "subscriber", "tier", ColumnType::Integer);
    v2.tables.get_mut("subscriber").unwrap().indexes = vec![Index {
        columns: vec!["plan".into()],
    }];
    v2.tables.insert(
        "device".into(),
        TableSchema {
            columns: vec![Column {
                name: "model".into(),
                ty: ColumnType::String,
            }],
            indexes: vec![Index {
                columns: vec!["model".into()],
            }],
        },
    );
    let ddl = store.schema_ddl(&v2).unwrap().statements;
    assert_eq!(ddl.len(), 4, "{ddl:?}");
    assert!(
        // PostgreSQL's is resumable: ADD COLUMN IF NOT EXISTS.
        ddl.iter()
            .any(|d| d.contains("ADD COLUMN") && d.contains("\"tier\"")),
        "{ddl:?}"
    );
    assert!(store.publish_schema(&v2, "alice").await.unwrap());
    assert_eq!(*store.schema(), v2);
    assert_eq!(store.meta().await.unwrap().schema_version, base + 1);
    assert!(
        store.schema_ddl(&v2).unwrap().statements.is_empty(),
        "nothing left to do"
    );
    // Old records read the new column as null; new orders may set it.
    let old = store
        .get("subscriber", "sch1")
        .await
        .unwrap()
        .record
        .unwrap();
    assert_eq!(old.fields["tier"], json!(null));
    assert_eq!(old.fields["plan"], json!("a"));
    store
        .apply(vec![order(
            "ops-schema",
            2,
            "sch1",
            Op::Upsert,
            json!({"tier": 4}),
        )])
        .await
        .unwrap();
    store.apply(vec![device_order(3, "d1")]).await.unwrap();
    let now = store
        .get("subscriber", "sch1")
        .await
        .unwrap()
        .record
        .unwrap();
    assert_eq!(
        (now.fields["tier"].clone(), now.fields["plan"].clone()),
        (json!(4), json!("a"))
    );
    assert!(store.get("device", "d1").await.unwrap().record.is_some());

    // The same version again (a resumed job) changes nothing.
    assert!(!store.publish_schema(&v2, "bob").await.unwrap());
    // A version that skips one is refused.
    let skip = with_version(v2.clone(), base + 3);
    assert!(matches!(
        store.publish_schema(&skip, "bob").await,
        Err(StoreError::SchemaRefused(_))
    ));

    // Version 3 adds an empty column; version 4 takes it back.
    let mut v3 = with_version(v2.clone(), base + 2);
    add_column(&mut v3, "subscriber", "note", ColumnType::String);
    assert!(store.publish_schema(&v3, "alice").await.unwrap());
    let back = with_version(v2.clone(), base + 3);
    assert!(store.publish_schema(&back, "alice").await.unwrap());
    assert_eq!(store.schema().tables, v2.tables);
    let rec = store
        .get("subscriber", "sch1")
        .await
        .unwrap()
        .record
        .unwrap();
    assert!(!rec.fields.contains_key("note"));
    assert_eq!(rec.fields["tier"], json!(4));

    // Going back to version 1 would lose data: refused, nothing changes.
    let lossy = with_version(v1.clone(), base + 4);
    let err = store.publish_schema(&lossy, "alice").await.unwrap_err();
    assert!(
        matches!(&err, StoreError::SchemaRefused(m) if m.contains("holds data")),
        "{err}"
    );
    assert_eq!(store.schema().version, base + 3);
    assert_eq!(
        store
            .get("subscriber", "sch1")
            .await
            .unwrap()
            .record
            .unwrap()
            .fields["tier"],
        json!(4)
    );

    let listed = store.schema_versions().await.unwrap();
    let numbers: Vec<u64> = listed.iter().map(|v| v.version).collect();
    assert_eq!(numbers, (1..=base + 3).collect::<Vec<_>>());
    let v2_row = &listed[base as usize];
    assert_eq!(v2_row.published_by, "alice");
    assert!(v2_row.published_at.is_some());
    assert_eq!(v2_row.schema, v2);
    assert_eq!(v2_row.changes.len(), 3, "{:?}", v2_row.changes);

    // Reloading from the database gives the same schema (another instance).
    let before = store.schema();
    store.reload_schema().await.unwrap();
    assert_eq!(store.schema(), before);
}
