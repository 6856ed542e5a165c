//! The manifest: what a backup holds, and the checksum of every file.
//!
//! On disk: the manifest as JSON, then one line `# blake3:HEX` with the
//! checksum of the JSON text, so a flipped or cut byte anywhere in the
//! manifest itself is detected too. `ops recover --backup DIR` reads the
//! high-water marks from here.

use crate::error::BackupError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use tidemark_store::SnapshotInfo;

/// The manifest's file name.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The compressed database snapshot.
pub const DB_FILE: &str = "tidemark.db.zst";
/// The effective server configuration (online backups).
pub const CONFIG_EFFECTIVE: &str = "config/effective.json";
/// The server's `--config` file, as it was (online backups, when given).
pub const CONFIG_FILE: &str = "config/config.toml";
/// Names this format; anything else is a foreign manifest.
pub const FORMAT: &str = "tidemark-backup";
/// The one version this build reads and writes.
pub const FORMAT_VERSION: u64 = 1;
const TRAILER: &str = "\n# blake3:";

/// How the backup was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Through a running server; carries process information (B5, B6).
    Online,
    /// From a stopped server's data directory (B2).
    Offline,
}

/// One file of the backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative path inside the backup directory.
    pub path: String,
    /// Size on disk, in bytes.
    pub size: u64,
    /// BLAKE3 of the file on disk.
    pub blake3: String,
    /// `zstd` for compressed files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
    /// Size and BLAKE3 of the decompressed content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_blake3: Option<String>,
}

/// What one backup holds (B1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u64,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub kind: Kind,
    /// The server URL or data directory it was taken from.
    pub source: String,
    /// The store history it was taken in ([`SnapshotInfo::history`]):
    /// `backup prune` and `backup create --keep` count each source's
    /// backups of one history apart from another's, so a store served
    /// under the same URL or path never prunes another's backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<String>,
    pub store_format: u64,
    pub epoch: u64,
    /// The backup's point: last committed seq.
    pub seq: u64,
    pub schema_version: u64,
    /// Applied-order high-water mark per OpS source.
    pub high_water: BTreeMap<String, u64>,
    /// True for online backups: restore must run cleanup (B6).
    pub needs_cleanup: bool,
    /// Where the server's `--config` file was, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_source: Option<String>,
    pub files: Vec<FileEntry>,
}

impl Manifest {
    /// A manifest for a snapshot; files are added by the writer.
    pub fn new(kind: Kind, source: String, info: &SnapshotInfo) -> Self {
        Self {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            kind,
            source,
            history: info.history.clone(),
            store_format: info.store_format,
            epoch: info.epoch,
            seq: info.seq,
            schema_version: info.schema_version,
            high_water: info.high_water.clone(),
            needs_cleanup: kind == Kind::Online,
            config_source: None,
            files: Vec::new(),
        }
    }

    /// Total size of the backup's files.
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.path == path)
    }

    /// The manifest's bytes on disk.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain data cannot fail.
        let value = serde_json::to_value(self).unwrap_or_default();
        encode_value(&value)
    }

    /// Reads and checks `dir/manifest.json`: present, intact, ours, this version.
    pub fn load(dir: &Path) -> Result<Self, BackupError> {
        if dir.exists() && !dir.is_dir() {
            return Err(BackupError::NotAFolder(dir.to_owned()));
        }
        if !dir.is_dir() {
            return Err(BackupError::NotFound(dir.to_owned()));
        }
        let path = dir.join(MANIFEST_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BackupError::NoManifest(dir.to_owned()))
            }
            Err(e) => return Err(BackupError::io(&path)(e)),
        };
        decode(&path, &bytes)
    }
}

/// Encodes any JSON value as a manifest file (used by tests to forge
/// well-formed manifests of other versions).
pub fn encode_value(value: &serde_json::Value) -> Vec<u8> {
    let body = serde_json::to_string_pretty(value).unwrap_or_default();
    let hash = blake3::hash(body.as_bytes()).to_hex();
    format!("{body}{TRAILER}{hash}\n").into_bytes()
}

fn decode(path: &Path, bytes: &[u8]) -> Result<Manifest, BackupError> {
    let damaged = |detail: &str| BackupError::ManifestDamaged {
        path: path.to_owned(),
        detail: detail.to_owned(),
    };
    let text = std::str::from_utf8(bytes).map_err(|_| damaged("it is not UTF-8 text"))?;
    let Some(at) = text.rfind(TRAILER) else {
        // Perhaps some other tool's manifest.
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
            if v.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
                return Err(BackupError::Foreign(path.to_owned()));
            }
        }
        return Err(damaged("its checksum line is missing (truncated?)"));
    };
    let (body, trailer) = text.split_at(at);
    let want = trailer[TRAILER.len()..].trim_end_matches('\n');
    if want.len() != 64 || blake3::hash(body.as_bytes()).to_hex().as_str() != want {
        return Err(damaged("its checksum does not match its content"));
    }
    let value: serde_json::Value =
        serde_json::from_str(body).map_err(|e| damaged(&format!("unreadable JSON: {e}")))?;
    if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
        return Err(BackupError::Foreign(path.to_owned()));
    }
    let version = value
        .get("format_version")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| damaged("format_version is missing"))?;
    if version != FORMAT_VERSION {
        return Err(BackupError::WrongVersion {
            path: path.to_owned(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let m: Manifest =
        serde_json::from_value(value).map_err(|e| damaged(&format!("unexpected content: {e}")))?;
    for f in &m.files {
        let p = Path::new(&f.path);
        if p.is_absolute()
            || p.components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(damaged(&format!(
                "file path {:?} leaves the backup",
                f.path
            )));
        }
    }
    if m.file(DB_FILE).is_none() {
        return Err(damaged("it lists no database file"));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        let info = SnapshotInfo {
            store_format: 1,
            epoch: 2,
            seq: 10,
            schema_version: 1,
            high_water: [("ops-1".to_string(), 9)].into(),
            process: None,
            bytes: 4096,
            history: Some("h1".into()),
        };
        let mut m = Manifest::new(Kind::Online, "http://x".into(), &info);
        m.files.push(FileEntry {
            path: DB_FILE.into(),
            size: 1,
            blake3: "00".into(),
            compression: Some("zstd".into()),
            raw_size: Some(1),
            raw_blake3: Some("00".into()),
        });
        m
    }

    fn load_bytes(bytes: &[u8]) -> Result<Manifest, BackupError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MANIFEST_FILE), bytes).unwrap();
        Manifest::load(dir.path())
    }

    #[test]
    fn round_trips() {
        let m = sample();
        assert_eq!(load_bytes(&m.encode()).unwrap(), m);
    }

    #[test]
    fn every_flipped_byte_and_every_cut_is_refused() {
        let bytes = sample().encode();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert!(load_bytes(&b).is_err(), "flip at {i} accepted");
        }
        for n in 0..bytes.len() - 1 {
            assert!(load_bytes(&bytes[..n]).is_err(), "cut at {n} accepted");
        }
    }

    #[test]
    fn other_versions_and_foreign_manifests_are_named() {
        let mut v = serde_json::to_value(sample()).unwrap();
        v["format_version"] = 2.into();
        assert!(matches!(
            load_bytes(&encode_value(&v)),
            Err(BackupError::WrongVersion { found: 2, .. })
        ));
        assert!(matches!(
            load_bytes(br#"{"format": "pgbackrest", "version": 1}"#),
            Err(BackupError::Foreign(_))
        ));
        v["format"] = "other".into();
        assert!(matches!(
            load_bytes(&encode_value(&v)),
            Err(BackupError::Foreign(_))
        ));
    }

    #[test]
    fn paths_outside_the_backup_are_refused() {
        let mut m = sample();
        m.files[0].path = "../etc/passwd".into();
        assert!(matches!(
            load_bytes(&m.encode()),
            Err(BackupError::ManifestDamaged { .. })
        ));
    }
}
