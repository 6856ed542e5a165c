//! The optional on-disk cache snapshot, for warm restarts.
//!
//! One JSON-lines file: a header with the last applied watch-event id, then
//! one cached answer per line. Written to a temporary file, synced, then
//! renamed, so a crash leaves the previous snapshot whole. The id is read
//! *before* the entries: the entries are at least as new as the id says,
//! and replaying from an older id is harmless because the cache orders by
//! version. Suspect entries are not saved (see `save_now`), and a loaded
//! snapshot vouches for nothing until the stream resumes from its id and
//! says `synced`.

use crate::shared::Shared;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufWriter, Write};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tidemark_api::{RecordAnswer, Source};

const FILE: &str = "cache.snapshot";
const FORMAT: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    format: u32,
    id: String,
    last_event_id: Option<String>,
    /// The DB server's store history the entries came from.
    #[serde(default)]
    history: String,
    /// The schema version the entries were vouched under (0: unknown, an
    /// older snapshot, which is not trusted).
    #[serde(default)]
    schema_version: u64,
}

/// A loaded snapshot.
#[derive(Debug)]
pub struct Snapshot {
    pub last_event_id: Option<String>,
    pub history: String,
    pub schema_version: u64,
    pub answers: Vec<RecordAnswer>,
}

/// Loads the snapshot in `dir`, if there is one for service `id`.
pub fn load(dir: &Path, id: &str) -> anyhow::Result<Option<Snapshot>> {
    let path = dir.join(FILE);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let mut lines = std::io::BufReader::new(file).lines();
    let Some(first) = lines.next() else {
        return Ok(None);
    };
    // A cache is disposable: a header that cannot be read is damage, and
    // the file is set aside (for whoever wants to look) rather than
    // stopping the service server.
    let header = first
        .map_err(anyhow::Error::from)
        .and_then(|l| Ok(serde_json::from_str::<Header>(&l)?));
    let header = match header {
        Ok(h) => h,
        Err(e) => {
            let aside = dir.join(format!("{FILE}.damaged"));
            match std::fs::rename(&path, &aside) {
                Ok(()) => {
                    tracing::warn!(path = %path.display(), moved_to = %aside.display(), error = %e, "cache snapshot header is damaged; set aside, starting cold")
                }
                Err(r) => {
                    tracing::warn!(path = %path.display(), error = %e, rename_error = %r, "cache snapshot header is damaged; starting cold (it could not be set aside, and is replaced at the next snapshot)")
                }
            }
            return Ok(None);
        }
    };
    if header.format != FORMAT || header.id != id {
        tracing::warn!(path = %path.display(), "cache snapshot is for another service id or format; starting cold");
        return Ok(None);
    }
    if header.schema_version == 0 {
        // Its entries could predate a publish, and lack a column in force.
        tracing::warn!(path = %path.display(), "cache snapshot does not say which schema version its records were cached under (an older build's); starting cold");
        return Ok(None);
    }
    let mut answers = Vec::new();
    for line in lines {
        // A damaged byte (not UTF-8) is damage like any other.
        let parsed = line
            .map_err(anyhow::Error::from)
            .and_then(|l| Ok(serde_json::from_str(&l)?));
        match parsed {
            Ok(a) => answers.push(a),
            Err(_) => {
                // A torn snapshot is not trusted at all.
                tracing::warn!(path = %path.display(), "cache snapshot is damaged; starting cold");
                return Ok(None);
            }
        }
    }
    Ok(Some(Snapshot {
        last_event_id: header.last_event_id,
        history: header.history,
        schema_version: header.schema_version,
        answers,
    }))
}

/// Writes a snapshot now.
pub fn save_now(shared: &Shared) -> anyhow::Result<()> {
    let Some(dir) = &shared.config.cache_dir else {
        return Ok(());
    };
    // Only entries vouched for under the current generation are saved: a
    // suspect entry (from before an `epoch` event or an unresumed stream)
    // has no interest registered on the DB server of the saved position, so
    // a stream resumed from it would never bring its changes.
    // The id is read before the generation, so it is never newer than the
    // stream the saved entries were vouched under (an older one only
    // replays more); a generation that moves while they are collected (an
    // `epoch` event, a stream that did not resume, whose interest starts
    // afresh) leaves this snapshot unwritten.
    let last_event_id = shared.last_event_id.lock().clone();
    let history = shared.history.lock().clone();
    // Read before the generation: a schema is adopted by bumping the
    // generation first and storing its version after (`schema::adopt`), so
    // entries of this generation are never older than this version.
    let schema_version = shared.schema_version.load(Ordering::SeqCst);
    if schema_version == 0 {
        // No schema adopted yet: what the entries were cached under is
        // unknown, and a snapshot that does not say is not loaded. The
        // adoption counts as a change, so the next tick saves.
        return Ok(());
    }
    let generation = shared.cache.generation();
    let entries: Vec<_> = shared
        .cache
        .entries()
        .into_iter()
        .filter(|e| e.generation() == generation)
        .collect();
    if shared.cache.generation() != generation {
        anyhow::bail!("the cache was revalidated while the snapshot was taken");
    }
    let header = Header {
        format: FORMAT,
        id: shared.config.id.clone(),
        last_event_id: last_event_id.clone(),
        history,
        schema_version,
    };
    let tmp = dir.join(format!("{FILE}.tmp"));
    if let Err(e) = write_to(&tmp, &dir.join(FILE), &header, entries) {
        // The last snapshot stands; a part-written one would only hold
        // the space a full disk lacks.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    *shared.snapshot_event_id.lock() = last_event_id;
    Ok(())
}

/// Writes `header` and `entries` to `tmp`, durably, then renames it to
/// `dest` (a reader sees the old snapshot or the new one, whole).
fn write_to(
    tmp: &std::path::Path,
    dest: &std::path::Path,
    header: &Header,
    entries: Vec<crate::cache::Entry>,
) -> anyhow::Result<()> {
    let file = std::fs::File::create(tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut w = BufWriter::new(file);
    serde_json::to_writer(&mut w, header)?;
    w.write_all(b"\n")?;
    for e in entries {
        serde_json::to_writer(&mut w, &e.answer(Source::Cache))?;
        w.write_all(b"\n")?;
    }
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    std::fs::rename(tmp, dest)?;
    Ok(())
}

/// Writes a snapshot every interval while the cache changes.
pub async fn worker(shared: Arc<Shared>) {
    if shared.config.cache_dir.is_none() {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(
        shared.config.snapshot_interval_secs.max(1),
    ));
    let mut saved_at = u64::MAX;
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let changes = shared.changes.load(Ordering::Relaxed);
        let id_known = shared.last_event_id.lock().is_some();
        if changes == saved_at || !id_known {
            continue;
        }
        let s = shared.clone();
        match tokio::task::spawn_blocking(move || save_now(&s)).await {
            Ok(Ok(())) => saved_at = changes,
            Ok(Err(e)) => tracing::warn!(error = %e, "cache snapshot failed; will retry"),
            Err(e) => tracing::warn!(error = %e, "cache snapshot task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache is disposable: a damaged snapshot (a torn line, a byte that
    /// is not UTF-8, a header that cannot be read) starts the cache cold
    /// instead of stopping the service server.
    #[test]
    fn a_damaged_snapshot_starts_cold() {
        let dir = tempfile::tempdir().unwrap();
        let header = serde_json::json!({"format": FORMAT, "id": "svc", "last_event_id": null});
        let header = header.to_string();
        let path = dir.path().join(FILE);
        for body in [&b"{\"torn"[..], &b"{\"key\": \"\xff\xfe\"}"[..]] {
            let mut bytes = format!("{header}\n").into_bytes();
            bytes.extend_from_slice(body);
            bytes.push(b'\n');
            std::fs::write(&path, bytes).unwrap();
            assert!(load(dir.path(), "svc").unwrap().is_none());
        }
        // A damaged header too: the file is set aside, whole.
        for damaged in [&b"\xff\xfe\n"[..], b"not json\n", b"{\"format\": 1}\n"] {
            std::fs::write(&path, damaged).unwrap();
            assert!(load(dir.path(), "svc").unwrap().is_none());
            assert!(!path.exists());
            let aside = dir.path().join(format!("{FILE}.damaged"));
            assert_eq!(std::fs::read(&aside).unwrap(), damaged);
        }
    }
}
