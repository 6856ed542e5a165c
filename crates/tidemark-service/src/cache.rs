//! The bounded, versioned record cache.
//!
//! Invariants:
//! - An entry is not replaced by an older version (P11; CONTRACT.md: a
//!   cached copy newer than the DB server's answer is kept), except where
//!   the DB server's history changed: a copy from before its epoch, or
//!   from another store history (*foreign*), gives way to an answer the
//!   DB server gives as current (see [`Cache::offer`]).
//! - Each entry remembers the cache generation it was validated in; an
//!   `epoch` event bumps the generation, which makes every older entry
//!   *suspect*: it is revalidated with the DB server on its next read
//!   instead of being dropped all at once.
//! - The answer body is serialised once, when the entry is stored, so a
//!   hit only copies bytes.
//! - A read takes its shard's lock shared and does not reorder the LRU
//!   list (that write, on every hit, cost more than the lookup); it sets
//!   the entry's `used` bit instead, and eviction gives a used entry a
//!   second chance (CLOCK), so a read-hot entry is still kept.

use bytes::Bytes;
use lru::LruCache;
use parking_lot::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tidemark_api::keyslot::{per_shard, KeySlot, SHARDS};
use tidemark_api::{RecordAnswer, Source, Version};

/// One cached record (or a cached "not found").
///
/// The served body is the only copy of the record: table, key and fields
/// are read back from it on the rare paths that need them, and the entry
/// lives inline in its LRU node, so it costs little more than its JSON
/// (issue 14: under 2×). A hit copies the body out under the shard's read
/// lock (one small allocation): cheaper in memory than a shared buffer,
/// whose first clone allocates its reference count.
#[derive(Debug)]
pub struct Entry {
    pub found: bool,
    /// The DB server flagged this key as recovering when we last heard.
    pub recovering: bool,
    has_version: bool,
    /// Read since it was last passed over for eviction.
    used: AtomicBool,
    /// The cache generation this entry was validated in (it is suspect
    /// once the cache's is higher; see [`Cache::generation`]).
    generation: u32,
    version: Version,
    /// The answer as served from the cache, exactly sized.
    body: Box<[u8]>,
}

impl Clone for Entry {
    fn clone(&self) -> Self {
        Entry {
            found: self.found,
            recovering: self.recovering,
            has_version: self.has_version,
            used: AtomicBool::new(self.used.load(Ordering::Relaxed)),
            generation: self.generation,
            version: self.version,
            body: self.body.clone(),
        }
    }
}

impl Entry {
    /// An entry for `a`, with its body serialised as served from the cache.
    pub fn new(a: &RecordAnswer, recovering: bool, generation: u64) -> Self {
        let mut served = a.clone();
        served.recovering = recovering;
        served.source = Some(Source::Cache);
        let body = serde_json::to_vec(&served).unwrap_or_default();
        Entry {
            found: a.found,
            recovering,
            has_version: a.version.is_some(),
            used: AtomicBool::new(false),
            generation: generation as u32,
            version: a.version.unwrap_or_default(),
            body: body.into_boxed_slice(),
        }
    }

    /// The answer this entry stands for, read back from its body.
    pub fn answer(&self, source: Source) -> RecordAnswer {
        let mut a: RecordAnswer = serde_json::from_slice(&self.body)
            .expect("a cache entry's body is a RecordAnswer serialised by Entry::new");
        a.recovering = self.recovering;
        a.source = Some(source);
        a
    }

    /// The record's version (`None` for a key never written).
    pub fn version(&self) -> Option<Version> {
        self.has_version.then_some(self.version)
    }

    /// The cache generation this entry was validated in.
    pub fn generation(&self) -> u64 {
        u64::from(self.generation)
    }

    /// The answer as served from the cache.
    pub fn body(&self) -> Bytes {
        Bytes::copy_from_slice(&self.body)
    }

    fn rank(&self) -> Version {
        self.version
    }
}

/// Where an offered answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// We asked the DB server, whose current epoch is `db_epoch`, when the
    /// cache generation was `generation`. The answer is stamped with that
    /// generation: if an `epoch` event came in while it was in flight, the
    /// answer is already suspect.
    Fetch { db_epoch: u64, generation: u64 },
    /// The DB server pushed it.
    Push,
}

/// The cache.
pub struct Cache {
    /// Each grows as it fills (no table sized for the capacity up front)
    /// and holds at most `per_shard` entries.
    shards: Vec<RwLock<LruCache<Box<str>, Entry>>>,
    per_shard: usize,
    generation: AtomicU64,
    /// The generation the DB server's current store history began in: an
    /// entry validated before it is *foreign* (see [`Cache::begin_history`]).
    history_from: AtomicU64,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("len", &self.len()).finish()
    }
}

impl Cache {
    pub fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| RwLock::new(LruCache::unbounded()))
                .collect(),
            per_shard: per_shard(capacity).max(1),
            // From 1: a suspect entry is stamped one generation back, which
            // must not wrap (a wrapped one would look newest, never foreign).
            generation: AtomicU64::new(1),
            history_from: AtomicU64::new(0),
        }
    }

    fn shard(&self, slot: &KeySlot) -> &RwLock<LruCache<Box<str>, Entry>> {
        &self.shards[slot.shard()]
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Makes every entry suspect (after an `epoch` event).
    pub fn bump_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The DB server's store is another history (`HelloEvent::history`: a
    /// restore that may have reused its epoch, a store started over): every
    /// entry becomes suspect and *foreign*. A foreign entry's version does
    /// not compare with the DB server's: it never stands against an answer
    /// the DB server gives as current, and stays foreign while it stands
    /// against a flagged one (an `accept-stale` read may still serve it,
    /// marked recovering).
    pub fn begin_history(&self) -> u64 {
        // Two bumps: entries made suspect from now on (stamped one
        // generation back: `remember`, `demote`) are of this history, not
        // foreign; everything validated before is.
        self.bump_generation();
        let generation = self.bump_generation();
        self.history_from.store(generation - 1, Ordering::SeqCst);
        generation
    }

    /// Whether `e` is from an earlier store history ([`Cache::begin_history`]).
    pub fn is_foreign(&self, e: &Entry) -> bool {
        e.generation() < self.history_from.load(Ordering::SeqCst)
    }

    /// The entry for a key, if cached.
    pub fn get(&self, table: &str, key: &str) -> Option<Entry> {
        self.read(table, key, Entry::clone)
    }

    /// `f` of the entry for a key, if cached, under its shard's read lock.
    pub fn read<R>(&self, table: &str, key: &str, f: impl FnOnce(&Entry) -> R) -> Option<R> {
        KeySlot::with(table, key, |name, i| {
            let shard = self.shards[i].read();
            let e = shard.peek(name)?;
            if !e.used.load(Ordering::Relaxed) {
                e.used.store(true, Ordering::Relaxed);
            }
            Some(f(e))
        })
    }

    /// Offers an answer; returns what the cache holds afterwards. An older
    /// version does not replace a newer one, with one exception below. A
    /// fetched answer older than the cached copy:
    /// - copy written in the DB server's current epoch: the answer is just
    ///   a response that lost a race with a push; the copy stands, with its
    ///   own flag;
    /// - copy from before the current epoch (newer than the restored data)
    ///   and the answer flagged recovering: the copy stands, flagged, until
    ///   the replay brings the key past it;
    /// - copy from before the current epoch and the answer *not* flagged:
    ///   the DB server says its restored data is current (the key was not
    ///   in the schedule list, its source was waived, or the recovery was
    ///   aborted), so the copy's newer version is from a history that was
    ///   lost: the answer replaces it (P11: every service server ends up
    ///   with the DB server's data).
    ///
    /// A foreign copy ([`Cache::begin_history`]) counts as one from before
    /// the current epoch whatever its epoch, and a push replaces it.
    pub fn offer(&self, answer: &RecordAnswer, origin: Origin) -> Entry {
        let generation = match origin {
            Origin::Push => self.generation(),
            Origin::Fetch { generation, .. } => generation.min(self.generation()),
        };
        let slot = KeySlot::new(&answer.table, &answer.key);
        let mut shard = self.shard(&slot).write();
        let new_rank = answer.version.unwrap_or_default();
        let entry = match shard.get(slot.as_str()) {
            Some(old) if old.rank() > new_rank => {
                let foreign = self.is_foreign(old);
                match origin {
                    Origin::Push if !foreign => return old.clone(),
                    Origin::Push => Entry::new(answer, answer.recovering, generation),
                    Origin::Fetch { db_epoch, .. } if old.rank().epoch >= db_epoch && !foreign => {
                        Entry::new(&old.answer(Source::Cache), old.recovering, generation)
                    }
                    Origin::Fetch { .. } if answer.recovering => {
                        // Still foreign, so the next answer is judged alike.
                        let kept = if foreign {
                            old.generation()
                        } else {
                            generation
                        };
                        Entry::new(&old.answer(Source::Cache), true, kept)
                    }
                    Origin::Fetch { .. } => Entry::new(answer, false, generation),
                }
            }
            Some(old)
                if old.rank() == new_rank
                    && origin == Origin::Push
                    && old.generation() == generation =>
            {
                // A replayed push of what we already hold changes nothing
                // but may clear the flag.
                Entry::new(&old.answer(Source::Cache), answer.recovering, generation)
            }
            _ => Entry::new(answer, answer.recovering, generation),
        };
        self.put(&mut shard, slot, entry.clone());
        entry
    }

    /// Keeps `answer`, which no watch stream vouches for, as a floor for
    /// its key: the entry is suspect (an older generation), so no read is
    /// served from it without asking the DB server, but an older answer
    /// (from an instance that lags) is then known to be outdated. Never
    /// replaces a newer entry, but for a foreign one (an earlier store
    /// history) against an answer the DB server gives as current: as in
    /// [`Cache::offer`], it no longer stands against a later flagged one.
    pub fn remember(&self, answer: &RecordAnswer) {
        let slot = KeySlot::new(&answer.table, &answer.key);
        let mut shard = self.shard(&slot).write();
        if let Some(old) = shard.peek(slot.as_str()) {
            let superseded = self.is_foreign(old) && !answer.recovering;
            if old.rank() >= answer.version.unwrap_or_default() && !superseded {
                return;
            }
        }
        let suspect = self.generation().wrapping_sub(1);
        self.put(
            &mut shard,
            slot,
            Entry::new(answer, answer.recovering, suspect),
        );
    }

    /// Makes the entry of `table`/`key` suspect (validated a generation ago)
    /// if it is still at `version`: it was cached as current by a fetch
    /// whose stream ended meanwhile.
    pub fn demote(&self, table: &str, key: &str, version: Option<Version>) {
        let slot = KeySlot::new(table, key);
        let mut shard = self.shard(&slot).write();
        let suspect = (self.generation() as u32).wrapping_sub(1);
        if let Some(e) = shard.peek_mut(slot.as_str()) {
            if e.version() == version && e.generation >= suspect.wrapping_add(1) {
                e.generation = suspect;
            }
        }
    }

    /// Puts `entry` for `slot` into its shard, evicting to stay within the
    /// shard's capacity.
    fn put(&self, shard: &mut LruCache<Box<str>, Entry>, slot: KeySlot, entry: Entry) {
        if shard.len() >= self.per_shard && !shard.contains(slot.as_str()) {
            // CLOCK: a used entry at the tail goes to the head, once.
            for _ in 0..16 {
                let Some((k, e)) = shard.peek_lru() else {
                    break;
                };
                if !e.used.swap(false, Ordering::Relaxed) {
                    break;
                }
                let k = k.clone();
                shard.promote(&k);
            }
            while shard.len() >= self.per_shard {
                shard.pop_lru();
            }
        }
        shard.put(slot.into_string().into_boxed_str(), entry);
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The newest version among the records held as current, not suspect
    /// (`0.0` for none): what the last synced stream vouched for. Records
    /// fetched while no stream was synced are left out: they may come from
    /// a DB server restarted meanwhile, whose store holds them, and would
    /// make its resume look like a store that went back.
    pub fn newest(&self) -> Version {
        let current = self.generation();
        self.shards
            .iter()
            .filter_map(|s| {
                s.read()
                    .iter()
                    .filter(|(_, e)| e.generation() >= current)
                    .filter_map(|(_, e)| e.version())
                    .max()
            })
            .max()
            .unwrap_or(Version::new(0, 0))
    }

    /// Every key held, as `(table, key)`.
    pub fn keys(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for s in &self.shards {
            out.extend(s.read().iter().filter_map(|(slot, _)| {
                let (table, key) = slot.split_once('\0')?;
                Some((table.to_owned(), key.to_owned()))
            }));
        }
        out
    }

    /// Drops every entry of a table `keep` rejects (a table the schema in
    /// force no longer has: dropped by a rollback, perhaps recreated later
    /// with no rows and no tombstones, so a cached copy could not be told
    /// outdated by the DB server's answers). Returns how many went.
    pub fn retain_tables(&self, keep: impl Fn(&str) -> bool) -> usize {
        let mut gone = 0;
        for s in &self.shards {
            let mut shard = s.write();
            let doomed: Vec<Box<str>> = shard
                .iter()
                .filter(|(slot, _)| slot.split_once('\0').is_some_and(|(t, _)| !keep(t)))
                .map(|(slot, _)| slot.clone())
                .collect();
            for slot in doomed {
                shard.pop(&slot);
                gone += 1;
            }
        }
        gone
    }

    /// Every entry, for a snapshot.
    pub fn entries(&self) -> Vec<Entry> {
        let mut out = Vec::new();
        for s in &self.shards {
            out.extend(s.read().iter().map(|(_, e)| e.clone()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answer(seq: u64, plan: &str, recovering: bool) -> RecordAnswer {
        RecordAnswer {
            table: "subscriber".into(),
            key: "k".into(),
            found: true,
            fields: Some(json!({"plan": plan}).as_object().unwrap().clone()),
            version: Some(Version::new(1, seq)),
            recovering,
            source: None,
        }
    }

    /// The newest version held as current, whatever its key: a
    /// declaration of interest says it (see `watcher::declare`). Suspect
    /// records do not count.
    #[test]
    fn the_newest_version_held_is_told() {
        let c = Cache::new(1000);
        assert_eq!(c.newest(), Version::new(0, 0), "none held");
        for (key, seq) in [("a", 5), ("b", 9), ("c", 7)] {
            let mut a = answer(seq, "x", false);
            a.key = key.into();
            c.offer(&a, Origin::Push);
        }
        assert_eq!(c.newest(), Version::new(1, 9));
        // Fetched while no stream was synced: suspect from the start.
        let mut a = answer(12, "x", false);
        a.key = "d".into();
        c.remember(&a);
        assert_eq!(
            c.newest(),
            Version::new(1, 9),
            "a suspect one does not count"
        );
        c.bump_generation();
        assert_eq!(c.newest(), Version::new(0, 0), "nothing vouched any more");
    }

    #[test]
    fn an_entry_gives_back_the_answer_it_was_made_from() {
        let c = Cache::new(1000);
        let a = answer(5, "gold", true);
        c.offer(&a, Origin::Push);
        let e = c.get("subscriber", "k").unwrap();
        let mut expected = a.clone();
        expected.source = Some(Source::Cache);
        assert_eq!(e.answer(Source::Cache), expected);
        let served: RecordAnswer = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(served, expected, "the body served on a hit");
        assert_eq!(e.version(), Some(Version::new(1, 5)));
        assert_eq!(c.keys(), vec![("subscriber".to_owned(), "k".to_owned())]);
        let mut missing = answer(0, "", false);
        (missing.key, missing.found, missing.fields, missing.version) =
            ("gone".into(), false, None, None);
        assert_eq!(c.offer(&missing, Origin::Push).version(), None);
    }

    /// A table the schema no longer has takes its cached records with it:
    /// recreated, its rows and tombstones are gone, and a not-found answer
    /// without a version could never replace a copy cached before.
    #[test]
    fn the_records_of_a_dropped_table_go() {
        let c = Cache::new(1000);
        c.offer(&answer(5, "gold", false), Origin::Push);
        let mut other = answer(6, "x", false);
        other.table = "device".into();
        c.offer(&other, Origin::Push);
        assert_eq!(c.retain_tables(|t| t == "subscriber"), 1);
        assert!(c.get("device", "k").is_none() && c.get("subscriber", "k").is_some());
    }

    #[test]
    fn a_newer_copy_stands_unless_a_restore_made_older_data_current() {
        let c = Cache::new(1000);
        c.offer(&answer(5, "new", false), Origin::Push);
        let e = c.offer(&answer(3, "old", false), Origin::Push);
        assert_eq!(e.version(), Some(Version::new(1, 5)));
        let e = c.offer(
            &answer(3, "old", true),
            Origin::Fetch {
                db_epoch: 2,
                generation: 1,
            },
        );
        assert_eq!(
            e.answer(Source::Cache).fields.unwrap()["plan"],
            json!("new"),
            "a fetched older copy does not replace a newer one"
        );
        assert!(e.recovering, "but it does carry the DB server's flag");
        // The DB server says its older data is current after all (the key
        // not listed, its source waived, the recovery aborted): the copy
        // from the lost history goes.
        let e = c.offer(
            &answer(3, "restored", false),
            Origin::Fetch {
                db_epoch: 2,
                generation: 1,
            },
        );
        assert_eq!(e.version(), Some(Version::new(1, 3)));
        assert!(!e.recovering);
        assert_eq!(
            e.answer(Source::Cache).fields.unwrap()["plan"],
            json!("restored")
        );
        let e = c.offer(&answer(6, "newest", false), Origin::Push);
        assert!(!e.recovering);
        assert_eq!(
            c.get("subscriber", "k")
                .unwrap()
                .answer(Source::Cache)
                .fields
                .unwrap()["plan"],
            json!("newest")
        );
    }

    #[test]
    fn a_fetch_that_lost_a_race_with_a_push_does_not_flag_the_pushed_copy() {
        let c = Cache::new(1000);
        // Pushed after the restore (epoch 2): current, not recovering.
        let mut pushed = answer(7, "replayed", false);
        pushed.version = Some(Version::new(2, 7));
        c.offer(&pushed, Origin::Push);
        // A fetch sent before the push answers the restored copy, flagged.
        let e = c.offer(
            &answer(3, "restored", true),
            Origin::Fetch {
                db_epoch: 2,
                generation: 1,
            },
        );
        assert!(!e.recovering);
        assert_eq!(
            e.answer(Source::Cache).fields.unwrap()["plan"],
            json!("replayed")
        );
    }

    #[test]
    fn an_answer_in_flight_across_an_epoch_event_stays_suspect() {
        let c = Cache::new(1000);
        let before = c.generation();
        c.bump_generation(); // e.g. schedule_complete arrives while the fetch is in flight
        let e = c.offer(
            &answer(3, "blanket", true),
            Origin::Fetch {
                db_epoch: 2,
                generation: before,
            },
        );
        assert!(
            e.generation() < c.generation(),
            "it must be revalidated on the next read"
        );
    }

    #[test]
    fn epoch_makes_entries_suspect() {
        let c = Cache::new(1000);
        c.offer(
            &answer(5, "a", false),
            Origin::Fetch {
                db_epoch: 1,
                generation: 1,
            },
        );
        assert_eq!(
            c.get("subscriber", "k").unwrap().generation(),
            c.generation()
        );
        c.bump_generation();
        assert!(c.get("subscriber", "k").unwrap().generation() < c.generation());
    }

    #[test]
    fn eviction_keeps_an_entry_that_is_read() {
        let c = Cache::new(64 * 2);
        let offer = |i: u64| {
            let mut a = answer(i, "x", false);
            a.key = format!("k{i}");
            c.offer(&a, Origin::Push);
        };
        offer(0);
        for i in 1..10_000u64 {
            assert!(c.get("subscriber", "k0").is_some(), "evicted after {i}");
            offer(i);
            assert!(
                c.len() <= 64 * 2,
                "{} entries held past the capacity",
                c.len()
            );
        }
        assert_eq!(c.keys().len(), c.len());
    }

    #[test]
    fn stays_bounded() {
        let c = Cache::new(64 * 4);
        for i in 0..10_000u64 {
            let mut a = answer(i, "x", false);
            a.key = format!("k{i}");
            c.offer(
                &a,
                Origin::Fetch {
                    db_epoch: 1,
                    generation: 1,
                },
            );
        }
        assert!(c.len() <= 64 * 4);
    }

    /// A copy from an earlier history, newer by version, stays against a
    /// flagged answer no stream vouches for, and goes once the DB server
    /// gives one as current: a lagging instance's flagged answer after that
    /// does not bring it back.
    #[test]
    fn a_foreign_copy_is_remembered_over_only_by_a_current_answer() {
        let c = Cache::new(1000);
        c.offer(&answer(9, "lost", false), Origin::Push);
        c.begin_history();
        c.remember(&answer(3, "restored", true));
        let kept = c.get("subscriber", "k").unwrap();
        assert_eq!(
            kept.answer(Source::Cache).fields.unwrap()["plan"],
            json!("lost")
        );
        c.remember(&answer(3, "restored", false));
        let now = c.get("subscriber", "k").unwrap();
        assert_eq!(
            now.answer(Source::Cache).fields.unwrap()["plan"],
            json!("restored")
        );
        assert!(!c.is_foreign(&now), "of this history");
        assert!(now.generation() < c.generation(), "suspect");
    }

    /// Suspect entries (stamped a generation back) are foreign exactly when
    /// they were stamped before the history changed: one remembered before
    /// any stream (generation 1, stamped 0, which must not wrap to the
    /// newest) is, and one remembered after is not.
    #[test]
    fn suspect_entries_are_foreign_only_from_before_the_history_changed() {
        let c = Cache::new(1000);
        c.remember(&answer(3, "before", false));
        let before = c.get("subscriber", "k").unwrap();
        assert!(before.generation() < c.generation(), "suspect");
        c.begin_history();
        assert!(c.is_foreign(&c.get("subscriber", "k").unwrap()));
        let mut later = answer(4, "after", false);
        later.key = "k2".into();
        c.remember(&later);
        let after = c.get("subscriber", "k2").unwrap();
        assert!(after.generation() < c.generation(), "suspect");
        assert!(!c.is_foreign(&after), "of this history");
    }
}
