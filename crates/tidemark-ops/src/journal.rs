//! The OpS journal: one append-only JSON-lines file per source, each line
//! sealed with its checksum ([`crate::sealed`]): a line damaged on disk is
//! refused, never replayed with other values.
//!
//! Every order is written and fsynced here *before* it is submitted, so an
//! order the DB server acknowledged is always in the journal, and the
//! journal is what recovery re-sends (P6, P10).
//!
//! Beside it, `SOURCE.acks` records the version the DB server acknowledged
//! each order with. Recovery sends it with the replayed order (`origin`), so
//! the DB server can apply difference data from several sources in their
//! original commit order, whatever order the replays arrive in (P10). An
//! order whose acknowledgement was never recorded (the OpS died between the
//! answer and the append) is replayed as the last order of the epoch
//! before the restore: older than every order made during the recovery.
//!
//! Each entry remembers the input it came from (a BLAKE3 digest of the
//! whole input and the order's index in it), so running `ops submit` again
//! on the same input after a crash resumes it instead of numbering the same
//! orders twice. Only the journal's last run counts: the same input given
//! again after it went through is new orders (see `submit.rs`).

use crate::input::InputOrder;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use tidemark_api::{Order, Version};

/// One journaled order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    /// Digest of the input this order came from.
    pub input: String,
    /// Index of the order within that input.
    pub index: usize,
    pub table: String,
    pub key: String,
    pub op: tidemark_api::Op,
    #[serde(default)]
    pub fields: tidemark_api::Fields,
}

/// One acknowledgement: the version order `seq` produced.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Ack {
    seq: u64,
    version: Version,
}

impl Entry {
    pub fn order(&self, source: &str) -> Order {
        Order {
            origin: None,
            source: source.to_owned(),
            seq: self.seq,
            table: self.table.clone(),
            key: self.key.clone(),
            op: self.op,
            fields: self.fields.clone(),
        }
    }
}

/// The journal of one source.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    source: String,
    entries: Vec<Entry>,
    acks_path: PathBuf,
    /// The version each order was last acknowledged with, by seq.
    acks: HashMap<u64, Version>,
    /// `SOURCE.done`: the last run `ops submit` finished itself.
    done_path: PathBuf,
    finished: Option<Finished>,
    /// `SOURCE.lock`, held exclusively while this value lives: one run at a
    /// time appends to (or replays) a source's journal.
    _lock: std::fs::File,
}

/// A run `ops submit` saw through to its last acknowledgement: its input's
/// digest, and the journal's last seq then. A run it did not finish (killed,
/// and completed since by a recovery's replay) has none, so the same input
/// given again resumes it instead of submitting it as new orders.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Finished {
    input: String,
    through_seq: u64,
}

/// How long a run waits for another one using the same journal.
#[cfg(not(test))]
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);
#[cfg(test)]
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_millis(300);

/// Takes `dir/SOURCE.lock` exclusively, waiting up to [`LOCK_PATIENCE`].
fn lock_source(dir: &Path, source: &str) -> anyhow::Result<std::fs::File> {
    let path = dir.join(format!("{source}.lock"));
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let until = std::time::Instant::now() + LOCK_PATIENCE;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < until => {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
                "another 'tidemark ops submit' or 'ops recover' is using the journal of source '{source}' in {}; wait for it to finish, then run this again",
                dir.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
    }
}

/// Makes a new directory entry in `dir` durable.
fn fsync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

fn valid_source(source: &str) -> bool {
    // Its files are named after it: `.` and `..` would name directories.
    !source.is_empty()
        && source != "."
        && source != ".."
        && source.len() <= 128
        && source
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl Journal {
    /// Opens (creating) the journal of `source` in `dir`.
    pub fn open(dir: &Path, source: &str) -> anyhow::Result<Self> {
        if !valid_source(source) {
            anyhow::bail!(
                "source name {source:?} is invalid: use 1 to 128 letters, digits, '-', '_' or '.'"
            );
        }
        if !dir.exists() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating journal directory {}", dir.display()))?;
            match dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => fsync_dir(p)?,
                _ => fsync_dir(Path::new("."))?,
            }
        }
        let lock = lock_source(dir, source)?;
        let path = dir.join(format!("{source}.journal"));
        let mut entries = Vec::new();
        // Where a torn append begins, and its length.
        let mut torn = None;
        if path.exists() {
            let mut bytes = std::fs::read(&path)
                .with_context(|| format!("reading journal {}", path.display()))?;
            // Every append ends with a newline and is fsynced before its orders
            // are submitted; bytes after the last newline are a torn append
            // from a crash, never submitted. Drop them.
            let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
            if whole < bytes.len() {
                torn = Some((whole, bytes.len() - whole));
            }
            bytes.truncate(whole);
            let mut sealed = crate::sealed::Reader::default();
            for (n, line) in bytes.split(|b| *b == b'\n').enumerate() {
                if line.is_empty() {
                    continue;
                }
                let line = sealed.check(line).map_err(|why| {
                    anyhow::anyhow!(
                        "journal {} line {} is damaged ({why}); restore the journal from a copy. Without one, recover the other sources with `ops recover --without-source` naming this one, and send new orders under another --source. Nothing was sent",
                        path.display(),
                        n + 1
                    )
                })?;
                let e: Entry = serde_json::from_slice(line).map_err(|e| {
                    anyhow::anyhow!(
                        "journal {} line {} is damaged ({e}); restore the journal from a copy",
                        path.display(),
                        n + 1
                    )
                })?;
                if e.seq != entries.len() as u64 + 1 {
                    anyhow::bail!(
                        "journal {} line {}: seq {} breaks the sequence (expected {}); the journal is damaged, restore it from a copy",
                        path.display(),
                        n + 1,
                        e.seq,
                        entries.len() + 1
                    );
                }
                entries.push(e);
            }
        }
        let acks_path = dir.join(format!("{source}.acks"));
        let acks = load_acks(&acks_path)?;
        // Every acknowledged order was journaled (and fsynced) before it was
        // sent: an acknowledged seq past the journal's end means the journal
        // lost orders the DB server took (cut short, or replaced). Replayed
        // or resumed from it, they would be skipped without a word.
        if let Some(&highest) = acks.keys().filter(|s| **s > entries.len() as u64).max() {
            anyhow::bail!(
                "journal {} ends at seq {}, but {} records seq {highest} as acknowledged by the DB server: the journal has lost orders the DB server took (it was cut short or replaced); restore it from a copy. Nothing was sent",
                path.display(),
                entries.len(),
                acks_path.display()
            );
        }
        if let Some((whole, bytes)) = torn {
            tracing::warn!(journal = %path.display(), bytes, "dropping a torn journal append left by a crash");
            let f = OpenOptions::new().write(true).open(&path)?;
            f.set_len(whole as u64)?;
            f.sync_all()?;
        }
        let done_path = dir.join(format!("{source}.done"));
        // Unreadable: as if no run finished here (the same input resumes,
        // which sends nothing twice).
        let finished = std::fs::read(&done_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        Ok(Self {
            path,
            source: source.to_owned(),
            entries,
            acks_path,
            acks,
            done_path,
            finished,
            _lock: lock,
        })
    }

    /// The version order `seq` was last acknowledged with, if recorded.
    pub fn ack(&self, seq: u64) -> Option<Version> {
        self.acks.get(&seq).copied()
    }

    /// Every recorded acknowledgement: seq and version.
    pub fn acks(&self) -> impl Iterator<Item = (u64, Version)> + '_ {
        self.acks.iter().map(|(s, v)| (*s, *v))
    }

    /// Records the versions the DB server acknowledged orders with (a later
    /// acknowledgement of the same seq, e.g. from a replay, replaces it).
    pub fn record_acks(&mut self, acks: &[(u64, Version)]) -> anyhow::Result<()> {
        if acks.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for (seq, version) in acks {
            crate::sealed::write_line(
                &mut buf,
                &Ack {
                    seq: *seq,
                    version: *version,
                },
            )?;
        }
        let new = !self.acks_path.exists();
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.acks_path)
            .with_context(|| format!("opening {} for append", self.acks_path.display()))?;
        f.write_all(&buf)
            .and_then(|_| f.sync_data())
            .with_context(|| format!("appending to {}", self.acks_path.display()))?;
        if new {
            if let Some(dir) = self.acks_path.parent() {
                fsync_dir(dir)?;
            }
        }
        for (seq, version) in acks {
            self.acks.insert(*seq, *version);
        }
        Ok(())
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether `ops submit` itself finished the journal's last run, of input
    /// `digest` (see [`Finished`]).
    pub fn finished_last_run(&self, digest: &str) -> bool {
        self.finished
            .as_ref()
            .is_some_and(|f| f.input == digest && f.through_seq == self.last_seq())
    }

    /// Records that `ops submit` finished the journal's last run, of input
    /// `digest` (written whole, then renamed into place).
    pub fn record_finished(&mut self, digest: &str) -> anyhow::Result<()> {
        let f = Finished {
            input: digest.to_owned(),
            through_seq: self.last_seq(),
        };
        let tmp = self.done_path.with_extension("done.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&f)?)
            .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|_| std::fs::rename(&tmp, &self.done_path))
            .with_context(|| format!("writing {}", self.done_path.display()))?;
        if let Some(dir) = self.done_path.parent() {
            fsync_dir(dir)?;
        }
        self.finished = Some(f);
        Ok(())
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The last seq journaled (0 if none).
    pub fn last_seq(&self) -> u64 {
        self.entries.len() as u64
    }

    /// How many orders of input `digest` the journal's last run holds (0 if
    /// the last run was of another input). A run's entries carry its digest
    /// and their index in it, from 0 (a resumed run goes on counting).
    pub fn journaled_from(&self, digest: &str) -> usize {
        match self.entries.last() {
            Some(e) if e.input == digest => e.index + 1,
            _ => 0,
        }
    }

    /// Numbers and appends orders (from input `digest`, starting at input
    /// index `first_index`), then fsyncs. Returns the new entries.
    pub fn append(
        &mut self,
        digest: &str,
        first_index: usize,
        orders: &[InputOrder],
    ) -> anyhow::Result<&[Entry]> {
        let start = self.entries.len();
        let mut buf = Vec::new();
        let mut fresh = Vec::with_capacity(orders.len());
        for (i, o) in orders.iter().enumerate() {
            let e = Entry {
                seq: (start + i) as u64 + 1,
                input: digest.to_owned(),
                index: first_index + i,
                table: o.table.clone(),
                key: o.key.clone(),
                op: o.op,
                fields: o.fields.clone(),
            };
            crate::sealed::write_line(&mut buf, &e)?;
            fresh.push(e);
        }
        let new = !self.path.exists();
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .with_context(|| format!("opening journal {} for append", self.path.display()))?;
        f.write_all(&buf)
            .with_context(|| format!("appending to journal {}", self.path.display()))?;
        f.sync_all()
            .with_context(|| format!("syncing journal {}", self.path.display()))?;
        if new {
            if let Some(dir) = self.path.parent() {
                fsync_dir(dir)?;
            }
        }
        self.entries.extend(fresh);
        Ok(&self.entries[start..])
    }
}

/// Reads an acknowledgement file. A torn last line (a crash mid-append) is
/// ignored: that order is then replayed without an origin.
fn load_acks(path: &Path) -> anyhow::Result<HashMap<u64, Version>> {
    let mut bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    // A torn last line (a crash mid-append) is cut off, so the next append
    // starts on a line of its own.
    let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
    if whole < bytes.len() {
        tracing::warn!(file = %path.display(), "dropping a torn last acknowledgement left by a crash");
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        f.set_len(whole as u64)?;
        f.sync_all()?;
        bytes.truncate(whole);
    }
    let mut acks = HashMap::new();
    let mut sealed = crate::sealed::Reader::default();
    let lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    for (n, line) in lines.iter().enumerate() {
        if line.is_empty() {
            continue;
        }
        let line = sealed.check(line).map_err(|why| {
            anyhow::anyhow!(
                "{} line {} is damaged ({why}); delete the file to replay without original versions",
                path.display(),
                n + 1
            )
        })?;
        match serde_json::from_slice::<Ack>(line) {
            Ok(a) => {
                acks.insert(a.seq, a.version);
            }
            Err(_) if n + 1 == lines.len() => {
                tracing::warn!(file = %path.display(), "ignoring a torn last acknowledgement left by a crash");
            }
            Err(e) => anyhow::bail!(
                "{} line {} is damaged ({e}); delete the file to replay without original versions",
                path.display(),
                n + 1
            ),
        }
    }
    Ok(acks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidemark_api::Op;

    fn orders(n: usize) -> Vec<InputOrder> {
        (0..n)
            .map(|i| InputOrder {
                table: "subscriber".into(),
                key: format!("k{i}"),
                op: Op::Delete,
                fields: Default::default(),
            })
            .collect()
    }

    #[test]
    fn numbers_persist_and_remember_inputs() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut j = Journal::open(dir.path(), "ops-1").unwrap();
            j.append("d1", 0, &orders(3)).unwrap();
            j.append("d1", 3, &orders(2)).unwrap();
        }
        let mut j = Journal::open(dir.path(), "ops-1").unwrap();
        assert_eq!(j.last_seq(), 5);
        assert_eq!(j.journaled_from("d1"), 5);
        assert_eq!(j.journaled_from("other"), 0);
        let new = j.append("d2", 0, &orders(1)).unwrap();
        assert_eq!(new[0].seq, 6);
        // Only the last run counts: d1 again is a run of its own.
        assert_eq!(j.journaled_from("d1"), 0);
        j.append("d1", 0, &orders(2)).unwrap();
        assert_eq!(j.journaled_from("d1"), 2);
    }

    #[test]
    fn a_torn_last_line_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut j = Journal::open(dir.path(), "ops-1").unwrap();
            j.append("d1", 0, &orders(2)).unwrap();
        }
        let path = dir.path().join("ops-1.journal");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":3,\"inp").unwrap();
        drop(f);
        let mut j = Journal::open(dir.path(), "ops-1").unwrap();
        assert_eq!(j.last_seq(), 2);
        j.append("d1", 2, &orders(1)).unwrap();
        drop(j);
        let j = Journal::open(dir.path(), "ops-1").unwrap();
        assert_eq!(j.last_seq(), 3);
    }

    /// A value changed on disk that still parses ("gold" read back as
    /// "gole") is refused with the line it is on, journal or
    /// acknowledgements, and nothing is replayed from it. Before, the
    /// journal's lines carried no checksum and the other value was sent.
    #[test]
    fn a_value_changed_on_disk_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut j = Journal::open(dir.path(), "ops-1").unwrap();
            j.append("d1", 0, &orders(3)).unwrap();
            j.record_acks(&[(1, Version::new(1, 10)), (2, Version::new(1, 11))])
                .unwrap();
        }
        let flip = |file: &str, from: &str, to: &str| {
            let path = dir.path().join(file);
            let text = std::fs::read_to_string(&path).unwrap();
            let at = text
                .rfind(from)
                .unwrap_or_else(|| panic!("{from} in {text}"));
            let changed = format!("{}{to}{}", &text[..at], &text[at + from.len()..]);
            std::fs::write(&path, changed).unwrap();
            text
        };
        let journal = flip("ops-1.journal", "\"k1\"", "\"k7\"");
        let err = Journal::open(dir.path(), "ops-1").unwrap_err().to_string();
        assert!(
            err.contains("line 2 is damaged") && err.contains("checksum"),
            "{err}"
        );
        std::fs::write(dir.path().join("ops-1.journal"), journal).unwrap();
        flip("ops-1.acks", "\"seq\":11", "\"seq\":12");
        let err = Journal::open(dir.path(), "ops-1").unwrap_err().to_string();
        assert!(
            err.contains("ops-1.acks line 2 is damaged") && err.contains("checksum"),
            "{err}"
        );
    }

    /// A journal written before lines were sealed is read as it is, and
    /// goes on sealed; a line without a seal after a sealed one is refused.
    #[test]
    fn a_journal_from_before_seals_is_read_and_goes_on_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ops-1.journal");
        let old = Entry {
            seq: 1,
            input: "d0".into(),
            index: 0,
            table: "subscriber".into(),
            key: "k0".into(),
            op: Op::Upsert,
            fields: Default::default(),
        };
        let mut line = serde_json::to_vec(&old).unwrap();
        line.push(b'\n');
        std::fs::write(&path, &line).unwrap();
        {
            let mut j = Journal::open(dir.path(), "ops-1").unwrap();
            assert_eq!(j.entries(), std::slice::from_ref(&old));
            j.append("d1", 0, &orders(1)).unwrap();
        }
        assert_eq!(Journal::open(dir.path(), "ops-1").unwrap().last_seq(), 2);
        let mut third = old.clone();
        third.seq = 3;
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        serde_json::to_writer(&mut f, &third).unwrap();
        f.write_all(b"\n").unwrap();
        drop(f);
        let err = Journal::open(dir.path(), "ops-1").unwrap_err().to_string();
        assert!(err.contains("line 3 is damaged"), "{err}");
    }

    /// A journal that lost acknowledged orders (cut short, a torn line the
    /// DB server acknowledged, or replaced) is refused, and left as it is:
    /// replayed or resumed from, those orders were skipped without a word.
    #[test]
    fn a_journal_shorter_than_its_acknowledgements_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut j = Journal::open(dir.path(), "ops-1").unwrap();
            j.append("d1", 0, &orders(3)).unwrap();
            j.record_acks(&[
                (1, Version::new(1, 1)),
                (2, Version::new(1, 2)),
                (3, Version::new(1, 3)),
            ])
            .unwrap();
        }
        let path = dir.path().join("ops-1.journal");
        let whole = std::fs::read(&path).unwrap();
        let two_lines = whole
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .nth(1)
            .unwrap()
            .0
            + 1;
        // Cut at a line's end, and inside the last line.
        for cut in [two_lines, whole.len() - 5] {
            std::fs::write(&path, &whole[..cut]).unwrap();
            let err = Journal::open(dir.path(), "ops-1")
                .err()
                .unwrap()
                .to_string();
            assert!(
                err.contains("ends at seq 2") && err.contains("seq 3"),
                "{err}"
            );
            assert_eq!(
                std::fs::read(&path).unwrap(),
                &whole[..cut],
                "left as it is"
            );
        }
        // `.` and `..` name directories, not sources.
        for bad in [".", ".."] {
            assert!(Journal::open(dir.path(), bad).is_err());
        }
    }

    #[test]
    fn acknowledgements_persist_and_the_latest_wins() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut j = Journal::open(dir.path(), "ops-1").unwrap();
            j.append("d1", 0, &orders(3)).unwrap();
            j.record_acks(&[(1, Version::new(1, 10)), (2, Version::new(1, 11))])
                .unwrap();
            j.record_acks(&[(2, Version::new(2, 3))]).unwrap();
        }
        let path = dir.path().join("ops-1.acks");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":3,\"vers").unwrap();
        drop(f);
        {
            let mut j = Journal::open(dir.path(), "ops-1").unwrap();
            assert_eq!(j.ack(1), Some(Version::new(1, 10)));
            assert_eq!(j.ack(2), Some(Version::new(2, 3)));
            assert_eq!(j.ack(3), None, "a torn line is no acknowledgement");
            // The next append starts on a line of its own: before, it
            // joined the torn line and the file could no longer be read.
            j.record_acks(&[(3, Version::new(2, 4))]).unwrap();
        }
        let j = Journal::open(dir.path(), "ops-1").unwrap();
        assert_eq!(j.ack(3), Some(Version::new(2, 4)));
    }

    /// One run at a time uses a source's journal; the next waits for it
    /// (here: gives up after its patience), and gets it once it ends.
    #[test]
    fn one_run_at_a_time_uses_a_journal() {
        let dir = tempfile::tempdir().unwrap();
        let first = Journal::open(dir.path(), "ops-1").unwrap();
        let Err(err) = Journal::open(dir.path(), "ops-1") else {
            panic!("a second run is refused meanwhile");
        };
        assert!(err.to_string().contains("wait for it to finish"), "{err}");
        assert!(
            Journal::open(dir.path(), "ops-2").is_ok(),
            "other sources are free"
        );
        drop(first);
        assert!(Journal::open(dir.path(), "ops-1").is_ok());
    }

    #[test]
    fn refuses_bad_source_names() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Journal::open(dir.path(), "../evil").is_err());
        assert!(Journal::open(dir.path(), "").is_err());
    }
}
