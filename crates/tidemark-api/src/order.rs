//! Service orders (P3, P10).

use crate::{Fields, Version};
use serde::{Deserialize, Serialize};

/// What an order does to its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Create the record, or set the given fields of an existing one
    /// (fields not named keep their values).
    Upsert,
    /// Remove the record.
    Delete,
}

/// One service order, numbered by its source. Idempotent by `(source, seq)`.
/// An unknown property is refused (a misspelt `fields` would otherwise use
/// up the seq and change nothing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Order {
    pub source: String,
    pub seq: u64,
    pub table: String,
    pub key: String,
    pub op: Op,
    #[serde(default, deserialize_with = "unique_fields")]
    pub fields: Fields,
    /// For a replay of the difference data (P10): the version this order
    /// produced when the DB server first acknowledged it, before the
    /// disaster. While the server recovers, an order takes effect field by
    /// field only where nothing newer has been applied (by this version, or
    /// by the commit version for a live order), so the end state follows the
    /// original commit order across sources whatever order replays arrive
    /// in. Not part of the order's identity (the digest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Version>,
}

/// An order's `fields`, refusing a field named twice: which value was
/// meant is not for the server to guess (JSON parsers differ on it).
pub fn unique_fields<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Fields, D::Error> {
    struct Unique;
    impl<'de> serde::de::Visitor<'de> for Unique {
        type Value = Fields;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object of fields")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
            let mut fields = Fields::new();
            while let Some(name) = map.next_key::<String>()? {
                let value: serde_json::Value = map.next_value()?;
                if fields.contains_key(&name) {
                    return Err(serde::de::Error::custom(format!(
                        "field {name:?} is named twice in one order; name each field once"
                    )));
                }
                fields.insert(name, value);
            }
            Ok(fields)
        }
    }
    d.deserialize_map(Unique)
}

impl Order {
    /// A stable digest of the order's content, used to tell a harmless
    /// resubmission from a different order under a used `(source, seq)`.
    pub fn digest(&self) -> String {
        // serde_json::Map keeps keys sorted (no preserve_order feature), so
        // the encoding is canonical. Streamed into the hash: no copies.
        let mut h = Fnv1a(0xcbf29ce484222325);
        let op: &[u8] = match self.op {
            Op::Upsert => b"upsert",
            Op::Delete => b"delete",
        };
        for part in [self.table.as_bytes(), self.key.as_bytes(), op] {
            h.add(part);
            h.add(&[0]);
        }
        let _ = serde_json::to_writer(&mut h, &self.fields);
        format!("{:016x}", h.0)
    }
}

/// 64-bit FNV-1a, as an `io::Write` sink.
struct Fnv1a(u64);

impl Fnv1a {
    fn add(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x100000001b3);
        }
    }
}

impl std::io::Write for Fnv1a {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.add(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Body of `POST /v1/orders`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrdersRequest {
    pub orders: Vec<Order>,
}

/// The body of `POST /v1/orders` for `orders`, encoded without copying them
/// into an [`OrdersRequest`] first.
pub fn encode_orders(orders: &[Order]) -> serde_json::Result<bytes::Bytes> {
    #[derive(Serialize)]
    struct Body<'a> {
        orders: &'a [Order],
    }
    serde_json::to_vec(&Body { orders }).map(Into::into)
}

/// What one order produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderResult {
    pub source: String,
    pub seq: u64,
    /// The version the order produced (for a duplicate: the version it
    /// produced when it was first applied, if still known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Version>,
    /// True when the order had been applied before and was only acknowledged.
    #[serde(default)]
    pub duplicate: bool,
}

/// Answer of `POST /v1/orders`, one result per order in request order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrdersResponse {
    pub results: Vec<OrderResult>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A field named twice is refused, not resolved by the last one; one
    /// named once, and an order without fields, are read as before.
    #[test]
    fn a_field_named_twice_is_refused() {
        let head = r#"{"source":"s","seq":1,"table":"subscriber","key":"k","op":"upsert""#;
        let twice = format!(r#"{head},"fields":{{"plan":"a","plan":"b"}}}}"#);
        let err = serde_json::from_str::<Order>(&twice)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"plan\" is named twice"), "{err}");
        let once: Order =
            serde_json::from_str(&format!(r#"{head},"fields":{{"plan":"a","status":"b"}}}}"#))
                .unwrap();
        assert_eq!(once.fields.len(), 2);
        let none: Order = serde_json::from_str(&format!("{head}}}")).unwrap();
        assert!(none.fields.is_empty());
    }

    fn order(fields: serde_json::Value) -> Order {
        Order {
            origin: None,
            source: "ops-1".into(),
            seq: 1,
            table: "subscriber".into(),
            key: "k".into(),
            op: Op::Upsert,
            fields: fields.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn digest_ignores_field_order_but_not_content() {
        let a = order(serde_json::json!({"plan": "a", "status": "x"}));
        let b: Order = serde_json::from_str(
            r#"{"source":"ops-1","seq":1,"table":"subscriber","key":"k","op":"upsert","fields":{"status":"x","plan":"a"}}"#,
        )
        .unwrap();
        assert_eq!(a.digest(), b.digest());
        let c = order(serde_json::json!({"plan": "b", "status": "x"}));
        assert_ne!(a.digest(), c.digest());
    }

    #[test]
    fn an_encoded_batch_is_the_request_the_server_reads() {
        let mut b = order(serde_json::json!({"plan": "b"}));
        b.seq = 2;
        b.op = Op::Delete;
        let batch = vec![order(serde_json::json!({"plan": "a", "roaming": true})), b];
        let body = encode_orders(&batch).unwrap();
        let read: OrdersRequest = serde_json::from_slice(&body).unwrap();
        assert_eq!(read.orders, batch);
        let read: OrdersRequest = serde_json::from_slice(&encode_orders(&[]).unwrap()).unwrap();
        assert!(read.orders.is_empty());
    }
}
