//! Checking a backup without restoring it: the manifest, every file's size
//! and checksum, and (deep) that the data decodes and matches the manifest.

use crate::error::BackupError;
use crate::hashio::hash_file;
use crate::manifest::{Manifest, CONFIG_EFFECTIVE, DB_FILE};
use crate::Progress;
use std::io::Write;
use std::path::Path;
use tidemark_store::{check_snapshot_integrity, inspect_snapshot, SnapshotInfo};

/// Checks the manifest and the size and BLAKE3 of every file it lists.
pub fn checksums(dir: &Path, progress: Progress) -> Result<Manifest, BackupError> {
    let m = Manifest::load(dir)?;
    let mut done = 0;
    for f in &m.files {
        let path = dir.join(&f.path);
        let size = match std::fs::metadata(&path) {
            Ok(md) if md.is_file() => md.len(),
            Ok(_) => return Err(BackupError::FileMissing(path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BackupError::FileMissing(path))
            }
            Err(e) => return Err(BackupError::io(&path)(e)),
        };
        if size != f.size {
            return Err(BackupError::SizeMismatch {
                path,
                expected: f.size,
                found: size,
            });
        }
        let (_, hash) = hash_file(&path).map_err(BackupError::io(&path))?;
        if hash != f.blake3 {
            return Err(BackupError::ChecksumMismatch { path });
        }
        done += size;
        progress(done);
    }
    Ok(m)
}

/// Decompresses the backup's snapshot to the file `dest`, checking its raw
/// size and checksum, the snapshot's structure, and that it holds what the
/// manifest says (epoch, seq, high-water marks). The raw BLAKE3 proves the
/// bytes are the ones the backup read; [`full`] adds SQLite's integrity
/// check of every page.
pub fn decode_db(
    dir: &Path,
    m: &Manifest,
    dest: &Path,
    progress: Progress,
) -> Result<SnapshotInfo, BackupError> {
    let src = dir.join(DB_FILE);
    let undecodable = |detail: String| BackupError::Undecodable {
        path: src.clone(),
        detail,
    };
    let entry = m
        .file(DB_FILE)
        .ok_or_else(|| undecodable("the manifest lists no database".into()))?;
    let input = std::fs::File::open(&src).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            BackupError::FileMissing(src.clone())
        } else {
            BackupError::io(&src)(e)
        }
    })?;
    let mut out = std::fs::File::create(dest).map_err(BackupError::io(dest))?;
    // One thread decompresses and hashes, this one writes: the two halves
    // of a restore's time overlap.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
    let (written, decoded) = std::thread::scope(|scope| {
        let limit = entry.raw_size.unwrap_or(0);
        let decoder = scope.spawn(move || decompress(input, limit, &tx));
        let mut written = Ok(0u64);
        let mut flushed = 0u64;
        for chunk in rx {
            if let Err(e) = out.write_all(&chunk) {
                written = Err(BackupError::io(dest)(e));
                break;
            }
            if let Ok(n) = &mut written {
                *n += chunk.len() as u64;
                progress(*n);
                if *n - flushed >= WRITEBACK_STEP {
                    start_writeback(&out, flushed, *n - flushed);
                    flushed = *n;
                }
            }
        }
        let decoded = decoder
            .join()
            .unwrap_or_else(|_| Err("the decompression thread failed".into()));
        (written, decoded)
    });
    written?;
    let (size, raw_blake3) = decoded.map_err(undecodable)?;
    out.sync_all().map_err(BackupError::io(dest))?;
    if Some(size) != entry.raw_size || entry.raw_blake3.as_deref() != Some(raw_blake3.as_str()) {
        return Err(undecodable(
            "the decompressed data does not match the manifest's checksum".into(),
        ));
    }
    let info = inspect_snapshot(dest).map_err(|e| undecodable(e.to_string()))?;
    if info.epoch != m.epoch || info.seq != m.seq || info.high_water != m.high_water {
        return Err(undecodable(format!(
            "the data is at epoch {} seq {}, the manifest says epoch {} seq {} (or other high-water marks)",
            info.epoch, info.seq, m.epoch, m.seq
        )));
    }
    Ok(info)
}

/// How much decoded data may wait in the page cache before its writeback
/// is started: the final fsync then finds little left to write, and the
/// disk works while the next chunks decompress.
const WRITEBACK_STEP: u64 = 32 << 20;

/// Starts writing `len` bytes of `file` from `offset` back to disk, without
/// waiting (Linux `sync_file_range`); the fsync at the end is still what
/// makes the data durable. A no-op elsewhere.
fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a plain syscall on an open descriptor; its failure only
        // means the writeback starts later, at the fsync.
        unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                offset as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// Decompresses `input` into chunks sent to `tx`, hashing them; returns the
/// raw size and BLAKE3. Stops early (with what it has) when the receiver
/// is gone, and with an error as soon as the data outgrows `limit` (the
/// manifest's raw size): a forged backup cannot fill the disk.
fn decompress(
    input: std::fs::File,
    limit: u64,
    tx: &std::sync::mpsc::SyncSender<Vec<u8>>,
) -> Result<(u64, String), String> {
    const CHUNK: usize = 1 << 20;
    let mut decoder = zstd::stream::read::Decoder::new(input).map_err(|e| format!("zstd: {e}"))?;
    let mut hasher = blake3::Hasher::new();
    let mut size = 0u64;
    loop {
        let mut chunk = vec![0u8; CHUNK];
        let mut filled = 0;
        while filled < CHUNK {
            match std::io::Read::read(&mut decoder, &mut chunk[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("zstd: {e}")),
            }
        }
        if filled == 0 {
            break;
        }
        chunk.truncate(filled);
        size += filled as u64;
        if size > limit {
            return Err(format!(
                "the data decompresses to more than the {limit} bytes the manifest says"
            ));
        }
        hasher.update(&chunk);
        if tx.send(chunk).is_err() {
            break;
        }
    }
    Ok((size, hasher.finalize().to_hex().to_string()))
}

/// SQLite's integrity check of the snapshot `decoded` from the backup
/// `dir` (`backup verify`; `restore --check-integrity`).
pub fn check_integrity(dir: &Path, decoded: &Path) -> Result<(), BackupError> {
    check_snapshot_integrity(decoded).map_err(|e| BackupError::Undecodable {
        path: dir.join(DB_FILE),
        detail: e.to_string(),
    })
}

/// The decoded copies `full` checks are `TMPDIR/tidemark-verify-PID-…`.
const SCRATCH_PREFIX: &str = "tidemark-verify-";

/// Removes the decoded copies in `tmp` of checks that were killed (as
/// large as the database each; nothing else removes them).
fn remove_abandoned_scratch(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(pid) = name
            .strip_prefix(SCRATCH_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let path = entry.path();
        if crate::scratch::abandoned(&path, pid, std::time::Duration::ZERO) {
            match std::fs::remove_dir_all(&path) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "removed the decoded copy of a verification that was stopped")
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "could not remove the decoded copy of a verification that was stopped")
                }
            }
        }
    }
}

/// The full check `backup verify` runs: checksums, then the data decodes
/// (into a temporary file that is removed afterwards) and passes SQLite's
/// integrity check, and the configuration parses.
pub fn full(dir: &Path, progress: Progress) -> Result<(Manifest, SnapshotInfo), BackupError> {
    let m = checksums(dir, progress)?;
    let tmp = std::env::temp_dir();
    remove_abandoned_scratch(&tmp);
    let scratch = tempfile::Builder::new()
        .prefix(&format!("{SCRATCH_PREFIX}{}-", std::process::id()))
        .tempdir_in(&tmp)
        .map_err(BackupError::io(&tmp))?;
    let _held = crate::scratch::lock(scratch.path())?;
    let snapshot = scratch.path().join("snapshot");
    let info = decode_db(dir, &m, &snapshot, progress)?;
    check_integrity(dir, &snapshot)?;
    if m.file(CONFIG_EFFECTIVE).is_some() {
        let path = dir.join(CONFIG_EFFECTIVE);
        let bytes = std::fs::read(&path).map_err(BackupError::io(&path))?;
        serde_json::from_slice::<serde_json::Value>(&bytes).map_err(|e| {
            BackupError::Undecodable {
                path,
                detail: format!("not JSON: {e}"),
            }
        })?;
    }
    Ok((m, info))
}

#[cfg(test)]
mod tests {
    use super::decompress;

    /// The decoded copy of a verification that was killed is removed by
    /// the next one (it is as large as the database, and nothing else
    /// removes it); that of one that runs is left alone.
    #[test]
    fn a_killed_verifications_copy_is_removed_by_the_next() {
        let tmp = tempfile::tempdir().unwrap();
        let dead = tmp
            .path()
            .join(format!("{}999999999-abc", super::SCRATCH_PREFIX));
        std::fs::create_dir_all(&dead).unwrap();
        std::fs::write(dead.join("snapshot"), b"decoded").unwrap();
        let live = tmp.path().join(format!(
            "{}{}-def",
            super::SCRATCH_PREFIX,
            std::process::id()
        ));
        std::fs::create_dir_all(&live).unwrap();
        let _held = crate::scratch::lock(&live).unwrap();
        let other = tmp.path().join("something-else");
        std::fs::create_dir_all(&other).unwrap();
        super::remove_abandoned_scratch(tmp.path());
        assert!(!dead.exists(), "the killed one's copy went");
        assert!(live.exists() && other.exists(), "the rest stays");
    }

    /// A backup whose data decompresses past the manifest's size is refused
    /// as soon as it does, not after it has been written out.
    #[test]
    fn decompression_stops_at_the_manifests_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.zst");
        let raw = vec![7u8; 3 << 20];
        std::fs::write(&path, zstd::stream::encode_all(&raw[..], 3).unwrap()).unwrap();
        let run = |limit: u64| {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let drain =
                std::thread::spawn(move || rx.iter().map(|c: Vec<u8>| c.len()).sum::<usize>());
            let out = decompress(std::fs::File::open(&path).unwrap(), limit, &tx);
            drop(tx);
            (out, drain.join().unwrap())
        };
        let (out, passed) = run(1 << 20);
        assert!(out.unwrap_err().contains("more than"), "refused");
        assert!(passed <= 1 << 20, "nothing past the limit is passed on");
        let (out, passed) = run(raw.len() as u64);
        assert_eq!(out.unwrap().0, raw.len() as u64);
        assert_eq!(passed, raw.len());
    }
}
