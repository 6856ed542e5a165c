//! A cache of serialised record answers in front of the store, for the
//! read path of a DB server in the `normal` state.
//!
//! Invariants:
//! - It is consulted and filled only while no recovery is in progress and
//!   not on a standby (the caller checks, `read::usable_cache`), so a
//!   cached answer never hides a recovering flag nor lags behind the
//!   primary's commits.
//! - Every commit invalidates the keys it changed *after* it is durable and
//!   visible, and bumps the shard's generation; a reader fills the cache
//!   only if the generation it saw *before* reading the store is unchanged.
//!   So an answer read before a commit can never be cached after it.
//! - A fill never replaces a newer answer: two reads that took their
//!   tickets before a commit's invalidation may read either side of it,
//!   and the older must not overwrite the newer.

use bytes::Bytes;
use lru::LruCache;
use parking_lot::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use tidemark_api::keyslot::{per_shard, KeySlot, SHARDS};

/// A cached answer: status (200 or 404) and body.
#[derive(Debug, Clone)]
pub struct Cached {
    pub found: bool,
    pub body: Bytes,
    /// The answer's version (`None`: a key never written).
    pub version: Option<tidemark_api::Version>,
}

/// An answer as held, with its mark for the second chance: set by a read
/// (under the shared lock, so reads never reorder the list), cleared when
/// eviction passes it over.
struct Held {
    cached: Cached,
    used: AtomicBool,
}

struct Shard {
    /// In fill order; reads do not move entries (see [`Shard::evict_one`]).
    map: LruCache<Box<str>, Held>,
    generation: u64,
    /// Bytes held (keys and bodies); kept under the shard's byte budget.
    bytes: usize,
    max_bytes: usize,
    max_entries: usize,
}

/// Entries eviction passes over (moved to the front, mark cleared) before
/// it takes the oldest whatever its mark: bounds a fill's work.
const SECOND_CHANCES: usize = 8;

impl Shard {
    /// Drops one answer: the oldest not read since eviction last passed
    /// it (the oldest of all after `SECOND_CHANCES` read ones). False if
    /// empty.
    fn evict_one(&mut self) -> bool {
        for _ in 0..SECOND_CHANCES {
            let read = match self.map.peek_lru() {
                Some((_, held)) => held.used.swap(false, Ordering::Relaxed),
                None => return false,
            };
            if !read {
                break;
            }
            if let Some((key, held)) = self.map.pop_lru() {
                self.map.push(key, held);
            }
        }
        match self.map.pop_lru() {
            Some((key, held)) => {
                self.bytes -= cost(&key, &held.cached);
                true
            }
            None => false,
        }
    }
}

fn cost(key: &str, c: &Cached) -> usize {
    key.len() + c.body.len() + 64
}

/// Proof of the shard generation seen before a store read.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    shard: usize,
    generation: u64,
}

pub struct ReadCache {
    shards: Vec<RwLock<Shard>>,
}

impl std::fmt::Debug for ReadCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadCache").finish_non_exhaustive()
    }
}

impl ReadCache {
    /// `None` when `capacity` is 0 (cache off). Holds at most `capacity`
    /// answers and about `max_bytes` bytes, whichever is reached first.
    pub fn new(capacity: usize, max_bytes: usize) -> Option<Self> {
        let per = per_shard(capacity);
        if per == 0 {
            return None;
        }
        Some(Self {
            shards: (0..SHARDS)
                .map(|_| {
                    RwLock::new(Shard {
                        map: LruCache::unbounded(),
                        generation: 0,
                        bytes: 0,
                        max_bytes: max_bytes.div_ceil(SHARDS).max(1),
                        max_entries: per,
                    })
                })
                .collect(),
        })
    }

    /// The cached answer, or a ticket to fill it after reading the store.
    pub fn get(&self, table: &str, key: &str) -> Result<Cached, Ticket> {
        KeySlot::with(table, key, |name, i| {
            let shard = self.shards[i].read();
            match shard.map.peek(name) {
                Some(held) => {
                    if !held.used.load(Ordering::Relaxed) {
                        held.used.store(true, Ordering::Relaxed);
                    }
                    Ok(held.cached.clone())
                }
                None => Err(Ticket {
                    shard: i,
                    generation: shard.generation,
                }),
            }
        })
    }

    /// Caches an answer read from the store, unless a commit touched the
    /// shard since the ticket was taken.
    pub fn fill(&self, ticket: Ticket, table: &str, key: &str, cached: Cached) {
        let slot = KeySlot::new(table, key);
        debug_assert_eq!(slot.shard(), ticket.shard);
        let mut shard = self.shards[slot.shard()].write();
        if shard.generation != ticket.generation {
            return;
        }
        if let Some(held) = shard.map.peek(slot.as_str()) {
            if held.cached.version > cached.version {
                return;
            }
        }
        let add = cost(slot.as_str(), &cached);
        if add > shard.max_bytes {
            return;
        }
        shard.bytes += add;
        let held = Held {
            cached,
            used: AtomicBool::new(false),
        };
        if let Some((k, old)) = shard.map.push(slot.into_string().into_boxed_str(), held) {
            shard.bytes -= cost(&k, &old.cached);
        }
        while shard.bytes > shard.max_bytes || shard.map.len() > shard.max_entries {
            if !shard.evict_one() {
                break;
            }
        }
    }

    /// Forgets everything (a commit's outcome is unknown).
    pub fn clear(&self) {
        for shard in &self.shards {
            let mut shard = shard.write();
            shard.generation += 1;
            shard.map.clear();
            shard.bytes = 0;
        }
    }

    /// Forgets a changed key. Call after its commit.
    pub fn invalidate(&self, table: &str, key: &str) {
        KeySlot::with(table, key, |name, i| {
            let mut shard = self.shards[i].write();
            shard.generation += 1;
            if let Some(old) = shard.map.pop(name) {
                shard.bytes -= cost(name, &old.cached);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(body: &'static str) -> Cached {
        at(body, 1)
    }

    fn at(body: &'static str, seq: u64) -> Cached {
        Cached {
            found: true,
            body: Bytes::from_static(body.as_bytes()),
            version: Some(tidemark_api::Version::new(1, seq)),
        }
    }

    #[test]
    fn an_older_answer_never_replaces_a_newer_one() {
        let cache = ReadCache::new(1000, usize::MAX).unwrap();
        // Two reads take their tickets before a commit's invalidation; the
        // one that read after the commit fills first.
        let before = cache.get("t", "k").unwrap_err();
        let after = cache.get("t", "k").unwrap_err();
        cache.fill(after, "t", "k", at("new", 2));
        cache.fill(before, "t", "k", at("old", 1));
        assert_eq!(cache.get("t", "k").unwrap().body, "new");
        let missing = Cached {
            found: false,
            body: Bytes::from_static(b"none"),
            version: None,
        };
        let t = cache.get("t", "k2").unwrap_err();
        cache.fill(t, "t", "k2", at("created", 1));
        cache.fill(t, "t", "k2", missing);
        assert_eq!(cache.get("t", "k2").unwrap().body, "created");
    }

    #[test]
    fn a_read_from_before_a_commit_is_not_cached() {
        let cache = ReadCache::new(1000, usize::MAX).unwrap();
        let ticket = cache.get("t", "k").unwrap_err();
        cache.invalidate("t", "k"); // a commit lands between the read and the fill
        cache.fill(ticket, "t", "k", c("old"));
        assert!(
            cache.get("t", "k").is_err(),
            "the old answer must not be cached"
        );
        let ticket = cache.get("t", "k").unwrap_err();
        cache.fill(ticket, "t", "k", c("new"));
        assert_eq!(cache.get("t", "k").unwrap().body, "new");
        cache.invalidate("t", "k");
        assert!(cache.get("t", "k").is_err());
    }

    #[test]
    fn zero_capacity_is_off() {
        assert!(ReadCache::new(0, usize::MAX).is_none());
    }

    #[test]
    fn it_stays_under_its_byte_budget() {
        let cache = ReadCache::new(1_000_000, 64 * 4096).unwrap();
        let body = Bytes::from(vec![b'x'; 1000]);
        for i in 0..10_000 {
            let key = format!("k{i}");
            let t = cache.get("subscriber", &key).unwrap_err();
            cache.fill(
                t,
                "subscriber",
                &key,
                Cached {
                    found: true,
                    body: body.clone(),
                    version: None,
                },
            );
        }
        let held: usize = cache.shards.iter().map(|s| s.read().bytes).sum();
        let count: usize = cache.shards.iter().map(|s| s.read().map.len()).sum();
        assert!(held <= 64 * 4096, "{held} bytes held");
        assert!(count > 0 && count < 10_000, "{count} answers kept");
        let recomputed: usize = cache
            .shards
            .iter()
            .map(|s| {
                s.read()
                    .map
                    .iter()
                    .map(|(k, h)| cost(k, &h.cached))
                    .sum::<usize>()
            })
            .sum();
        assert_eq!(held, recomputed, "the byte count is exact");
    }

    /// A read entry outlives unread ones older than it (its second
    /// chance); the count bound holds.
    #[test]
    fn an_answer_read_since_it_came_outlives_unread_ones() {
        // Three entries per shard at most: fill keys of one shard only.
        let cache = ReadCache::new(SHARDS * 3, usize::MAX).unwrap();
        let shard_of = |k: &str| KeySlot::new("t", k).shard();
        let keys: Vec<String> = (0..)
            .map(|i| format!("k{i}"))
            .filter(|k| shard_of(k) == shard_of("k0"))
            .take(5)
            .collect();
        let fill = |k: &str| {
            let t = cache.get("t", k).unwrap_err();
            cache.fill(t, "t", k, c("v"));
        };
        for k in &keys[..3] {
            fill(k);
        }
        assert!(cache.get("t", &keys[0]).is_ok(), "the oldest is read");
        fill(&keys[3]);
        assert!(cache.get("t", &keys[0]).is_ok(), "read: kept");
        assert!(cache.get("t", &keys[1]).is_err(), "the oldest unread went");
        fill(&keys[4]);
        let kept = keys.iter().filter(|k| cache.get("t", k).is_ok()).count();
        assert_eq!(kept, 3, "at most 3 per shard");
    }
}
