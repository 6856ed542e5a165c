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
        // A fixed-key hasher: the shard of a name never changes within a process.
        let hasher =
            std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default();
        let shard = (hasher.hash_one(&name) as usize) % SHARDS;
        KeySlot { name, shard }
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

/// Entries per shard for a map of `capacity` entries in all: at least
/// `capacity` in total, never 0 for a non-zero capacity.
pub fn per_shard(capacity: usize) -> usize {
    capacity.div_ceil(SHARDS)
}

#[cfg(test)]
mod tests {
    use super::*;

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
