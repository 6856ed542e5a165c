//! The recovery ordering rule, engine-neutral (P10, P11): while the store
//! recovers, every order applies field by field, last writer by *logical
//! version* wins.
//!
//! After a restore, difference data arrives from several OpS sources (and
//! `ops recover` runs) in any interleaving, and live orders keep arriving.
//! Applying them in arrival order would let a replay of an old order undo a
//! newer one. So while recovering, each order has a logical version: its
//! `origin` (the version it was first acknowledged with) for a replay, its
//! own commit version for a live order. An engine keeps, per key, the
//! logical version that last set each field, the newest upsert and the
//! newest delete ([`KeyState`]), and an order changes only what nothing
//! newer has changed ([`decide`]).
//!
//! Invariant: the record after any set of orders equals applying them one
//! by one in logical-version order (upserts merge fields, deletes remove the
//! record), whatever order they arrived in. Every order still produces a new
//! version of the key, so versions stay monotone.

use std::collections::BTreeMap;
use tidemark_api::{Fields, Op, Order, Version};

/// What the store knows of one key's logical history during recovery.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct KeyState {
    pub upsert: Option<Version>,
    pub delete: Option<Version>,
    /// Field name to the logical version that last set it. A field without
    /// an entry was last set before the recovery began, so any order of the
    /// recovery is newer.
    pub fields: BTreeMap<String, Version>,
}

/// A version as stored text, `epoch.seq`.
pub fn encode(v: Option<Version>) -> Option<String> {
    v.map(|v| format!("{}.{}", v.epoch, v.seq))
}

/// Reads [`encode`]'s text back.
pub fn decode(s: Option<&str>) -> Option<Option<Version>> {
    let Some(s) = s else { return Some(None) };
    let (e, q) = s.split_once('.')?;
    Some(Some(Version::new(e.parse().ok()?, q.parse().ok()?)))
}

impl KeyState {
    /// The field versions as stored JSON text.
    pub fn fields_json(&self) -> String {
        let m: BTreeMap<&str, String> = self
            .fields
            .iter()
            .map(|(k, v)| (k.as_str(), format!("{}.{}", v.epoch, v.seq)))
            .collect();
        serde_json::to_string(&m).unwrap_or_else(|_| "{}".into())
    }

    /// Rebuilds a state from its stored parts; `None` if they are damaged.
    pub fn from_parts(upsert: Option<&str>, delete: Option<&str>, fields: &str) -> Option<Self> {
        let raw: BTreeMap<String, String> = serde_json::from_str(fields).ok()?;
        let mut out = BTreeMap::new();
        for (name, v) in raw {
            out.insert(name, decode(Some(&v))??);
        }
        Some(KeyState {
            upsert: decode(upsert)?,
            delete: decode(delete)?,
            fields: out,
        })
    }
}

/// The logical version of `order` committed at `version`. An origin can
/// only be older than now; a forged future one would let a replay override
/// live orders, so it is capped at the commit version.
pub fn logical_version(order: &Order, version: Version) -> Version {
    order.origin.map_or(version, |o| o.min(version))
}

/// What an order may still change, given what is newer.
#[derive(Debug, PartialEq)]
pub enum Effect {
    /// Set these fields (creating the record if it is missing).
    Upsert(Fields),
    /// Remove the record.
    Delete,
    /// A delete older than an upsert already applied: the record stays, but
    /// every field the upsert did not set is cleared.
    ClearFields(Vec<String>),
    /// Nothing newer lets the order change anything: only a new version.
    Touch,
}

/// Decides an order's effect and updates the key's state. Pure, so the
/// ordering rule is tested without a database.
pub fn decide(
    st: &mut KeyState,
    op: Op,
    fields: &Fields,
    columns: &[String],
    lv: Version,
) -> Effect {
    if st.delete.is_some_and(|d| lv <= d) {
        // A delete at least as new as this order already removed whatever
        // it would have written (or deleted).
        return Effect::Touch;
    }
    match op {
        Op::Upsert => {
            st.upsert = st.upsert.max(Some(lv));
            let mut set = Fields::new();
            for (name, value) in fields {
                if st.fields.get(name).is_none_or(|v| lv > *v) {
                    st.fields.insert(name.clone(), lv);
                    set.insert(name.clone(), value.clone());
                }
            }
            Effect::Upsert(set)
        }
        Op::Delete => {
            st.delete = Some(lv);
            if st.upsert.is_some_and(|u| u > lv) {
                let cleared: Vec<String> = columns
                    .iter()
                    .filter(|c| st.fields.get(*c).is_none_or(|v| *v < lv))
                    .cloned()
                    .collect();
                st.fields.retain(|_, v| *v > lv);
                Effect::ClearFields(cleared)
            } else {
                st.fields.clear();
                Effect::Delete
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    const COLS: [&str; 3] = ["a", "b", "c"];

    #[derive(Debug, Clone)]
    struct Op1 {
        lv: u64,
        delete: bool,
        fields: Vec<(usize, i64)>,
    }

    fn cols() -> Vec<String> {
        COLS.iter().map(|c| c.to_string()).collect()
    }

    fn fields_of(o: &Op1) -> Fields {
        o.fields
            .iter()
            .map(|(c, v)| (COLS[*c].to_owned(), json!(v)))
            .collect()
    }

    /// The record as restored from the backup, older than every order.
    fn restored(base: bool) -> Option<BTreeMap<String, Value>> {
        base.then(|| COLS.iter().map(|c| (c.to_string(), json!(-1))).collect())
    }

    /// The record after applying `ops` one by one in logical order: the
    /// meaning of "the latest data".
    fn sequential(base: bool, ops: &[Op1]) -> Option<BTreeMap<String, Value>> {
        let mut sorted = ops.to_vec();
        sorted.sort_by_key(|o| o.lv);
        let mut rec = restored(base);
        for o in &sorted {
            if o.delete {
                rec = None;
            } else {
                let r = rec.get_or_insert_with(BTreeMap::new);
                for (k, v) in fields_of(o) {
                    r.insert(k, v);
                }
            }
        }
        rec
    }

    /// The record after applying the effects of `ops` in arrival order.
    fn by_effects(base: bool, ops: &[Op1]) -> Option<BTreeMap<String, Value>> {
        let mut st = KeyState::default();
        let mut rec = restored(base);
        for o in ops {
            let op = if o.delete { Op::Delete } else { Op::Upsert };
            match decide(&mut st, op, &fields_of(o), &cols(), Version::new(1, o.lv)) {
                Effect::Upsert(set) => {
                    let r = rec.get_or_insert_with(BTreeMap::new);
                    r.extend(set);
                }
                Effect::Delete => rec = None,
                Effect::ClearFields(names) => {
                    if let Some(r) = rec.as_mut() {
                        for n in names {
                            r.remove(&n);
                        }
                    }
                }
                Effect::Touch => {}
            }
        }
        rec
    }

    fn ops() -> impl Strategy<Value = Vec<Op1>> {
        // Distinct logical versions: no two orders were committed at once.
        prop::collection::vec(
            (
                any::<bool>(),
                prop::collection::vec((0usize..3, 0i64..100), 0..3),
            ),
            1..8,
        )
        .prop_flat_map(|v| {
            let n = v.len();
            (
                Just(v),
                Just((1..=n as u64).collect::<Vec<_>>()).prop_shuffle(),
            )
        })
        .prop_map(|(v, lvs)| {
            v.into_iter()
                .zip(lvs)
                .map(|((delete, fields), lv)| Op1 {
                    lv,
                    delete,
                    fields: if delete { vec![] } else { fields },
                })
                .collect()
        })
    }

    proptest! {
        /// P10/P11: whatever order replays and live orders arrive in, the
        /// record equals the one applying them in logical order gives.
        #[test]
        fn any_arrival_order_gives_the_logical_order_result(base in any::<bool>(), ops in ops()) {
            prop_assert_eq!(by_effects(base, &ops), sequential(base, &ops));
        }
    }

    #[test]
    fn an_older_replay_never_undoes_a_newer_order() {
        // ops-2's order (v1.10) arrives first, ops-1's older one (v1.5) after.
        let newer = Op1 {
            lv: 10,
            delete: false,
            fields: vec![(0, 4)],
        };
        let older = Op1 {
            lv: 5,
            delete: false,
            fields: vec![(0, 3), (1, 7)],
        };
        let got = by_effects(true, &[newer, older]).unwrap();
        assert_eq!(got["a"], json!(4), "the newer value stays");
        assert_eq!(got["b"], json!(7), "a field nothing newer set is applied");
    }
}
