//! Checking a backup without restoring it: the manifest, every file's size
//! and checksum, and (deep) that the data decodes and matches the manifest.

use crate::error::BackupError;
use crate::hashio::{hash_file, HashWriter};
use crate::manifest::{Manifest, CONFIG_EFFECTIVE, DB_FILE};
use crate::Progress;
use std::io::Write;
use std::path::Path;
use tidemark_store::{inspect_snapshot, SnapshotInfo};

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
/// size and checksum, the snapshot's own integrity check, and that it holds
/// what the manifest says (epoch, seq, high-water marks).
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
    let out = std::fs::File::create(dest).map_err(BackupError::io(dest))?;
    let mut writer = HashWriter::new(std::io::BufWriter::with_capacity(1 << 20, out));
    let mut decoder = zstd::stream::read::Decoder::new(input).map_err(BackupError::io(&src))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match std::io::Read::read(&mut decoder, &mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(undecodable(format!("zstd: {e}"))),
        };
        writer.write_all(&buf[..n]).map_err(BackupError::io(dest))?;
        progress(writer.size);
    }
    let file = writer
        .inner
        .into_inner()
        .map_err(|e| BackupError::io(dest)(e.into_error()))?;
    file.sync_all().map_err(BackupError::io(dest))?;
    if Some(writer.size) != entry.raw_size
        || entry.raw_blake3.as_deref() != Some(writer.hasher.finalize().to_hex().as_str())
    {
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

/// The full check `backup verify` runs: checksums, then the data decodes
/// (into a temporary file that is removed afterwards) and the
/// configuration parses.
pub fn full(dir: &Path, progress: Progress) -> Result<(Manifest, SnapshotInfo), BackupError> {
    let m = checksums(dir, progress)?;
    let scratch = tempfile::Builder::new()
        .prefix("tidemark-verify-")
        .tempdir()
        .map_err(BackupError::io(&std::env::temp_dir()))?;
    let info = decode_db(dir, &m, &scratch.path().join("snapshot"), progress)?;
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
