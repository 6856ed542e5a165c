//! One name for a record in every in-memory map (`table\0key`), the shard
//! it falls in, and the one rule for sizing sharded maps.
//!
//! The DB server's interest registry and read cache and the service
//! server's cache all shard by this, so a key means the same everywhere.

use std::hash::BuildHasher;

/// Shards of every sharded map: enough that 2 cores never contend on one.
pub const SHARDS: usize = 64;

/// A record's name in memory: table and key, separated by a NUL (which no
/// table name contains).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeySlot {
    name: String,
    shard: usize,
}

impl KeySlot {
    pub fn new(table: &str, key: &str) -> Self {
        let mut name = String::with_capacity(table.len() + key.len() + 1);
        name.push_str(table);
        name.push('\0');
        name.push_str(key);
        let shard = shard_of(&name);
        KeySlot { name, shard }
    }

    /// `f` of the record's name and shard, built on the stack: a lookup
    /// (a read's hot path) allocates nothing. Same name and shard as
    /// [`KeySlot::new`].
    pub fn with<R>(table: &str, key: &str, f: impl FnOnce(&str, usize) -> R) -> R {
        let len = table.len() + 1 + key.len();
        let mut buf = [0u8; 384];
        if len > buf.len() {
            let slot = Self::new(table, key);
            return f(slot.as_str(), slot.shard);
        }
        buf[..table.len()].copy_from_slice(table.as_bytes());
        buf[table.len() + 1..len].copy_from_slice(key.as_bytes());
        // Two UTF-8 strings around a NUL are UTF-8.
        match std::str::from_utf8(&buf[..len]) {
            Ok(name) => f(name, shard_of(name)),
            Err(_) => {
                let slot = Self::new(table, key);
                f(slot.as_str(), slot.shard)
            }
        }
    }

    /// The shard (0..SHARDS) this record's entries live in.
    pub fn shard(&self) -> usize {
        self.shard
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }

    pub fn into_string(self) -> String {
        self.name
    }
}

/// The shard of a name. A fixed-key hasher: the shard of a name never
/// changes within a process.
fn shard_of(name: &str) -> usize {
    let hasher =
        std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default();
    (hasher.hash_one(name) as usize) % SHARDS
}

/// Entries per shard for a map of `capacity` entries in all: at least
/// `capacity` in total, never 0 for a non-zero capacity.
pub fn per_shard(capacity: usize) -> usize {
    capacity.div_ceil(SHARDS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_built_on_the_stack_is_the_same_name_in_the_same_shard() {
        for (table, key) in [
            ("subscriber", "+81312345678"),
            ("t", "k\u{e9}\u{1F600}"),
            ("subscriber", &"x".repeat(256)),
            ("long", &"y".repeat(400)), // past the stack buffer
        ] {
            let slot = KeySlot::new(table, key);
            KeySlot::with(table, key, |name, shard| {
                assert_eq!((name, shard), (slot.as_str(), slot.shard()));
            });
        }
    }

    #[test]
    fn same_key_same_shard_and_tables_do_not_collide() {
        let a = KeySlot::new("subscriber", "k1");
        assert_eq!(a, KeySlot::new("subscriber", "k1"));
        assert!(a.shard() < SHARDS);
        assert_ne!(
            KeySlot::new("ab", "c").as_str(),
            KeySlot::new("a", "bc").as_str()
        );
        assert_eq!(per_shard(0), 0);
        assert_eq!(per_shard(1), 1);
        assert!(per_shard(1000) * SHARDS >= 1000);
    }
}
