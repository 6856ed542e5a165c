//! Backups, verification, retention, restore and cleanup (B1-B6).
//!
//! A backup is a directory: `manifest.json` (written last, with its own
//! checksum line), `tidemark.db.zst` (one consistent snapshot of the store,
//! in the snapshot format every engine shares (see `tidemark_store::engine`),
//! zstd-compressed) and `config/*` (the server's configuration files).
//! Every file is listed in the manifest with its size and BLAKE3 checksum.
//! A backup is written into a hidden temporary directory and renamed into
//! place only once complete, so an interrupted one is never mistaken for a
//! good one.
//!
//! Stores are reached only through `tidemark_store`'s engine-neutral API
//! ([`tidemark_store::Engine`], the `Store` trait, `inspect_snapshot`): this
//! crate names no engine.
//!
//! # Layout
//! - [`error`]: [`BackupError`]: what was refused, naming the file and what to do.
//! - [`manifest`]: the manifest format, its self-check and version rules.
//! - [`hashio`]: streaming zstd + BLAKE3 writers; memory stays flat.
//! - [`create`]: [`create::BackupWriter`] (temp dir, fsync, manifest last,
//!   rename) and offline backups of a stopped server's data directory.
//! - [`verify`]: checksums, and decoding the data, without restoring.
//! - `scratch`: temporary work on disk, locked while held, removed by the
//!   next comer once surely abandoned.
//! - [`list`]: the backups under a folder, and retention (keep the last N).
//! - [`restore`]: lock, verify, safety backup, stage, mark restored, swap.
//! - [`restore_pg`]: the same restore into a PostgreSQL schema (staging schema, one swap).
//! - [`schema_forward`]: a restore keeps the schema versions the live store published after the backup.
//! - [`access_forward`]: a restore keeps the live store's tokens, subscriber names and audit log.
//! - [`cleanup`]: normalising process information left by an online backup.

pub mod access_forward;
pub mod cleanup;
pub mod create;
pub mod error;
pub mod hashio;
pub mod list;
pub mod manifest;
pub mod restore;
pub mod restore_pg;
pub mod schema_forward;
mod scratch;
pub mod verify;

pub use error::BackupError;
pub use manifest::{Kind, Manifest};

/// Reports progress in bytes processed; a no-op is `&|_| {}`.
pub type Progress<'a> = &'a (dyn Fn(u64) + Send + Sync);
