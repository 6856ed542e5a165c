//! Streaming writers that hash (BLAKE3) and count what passes through, and
//! compress with zstd; memory stays flat however large the data.

use crate::error::BackupError;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// zstd level: the fastest standard level; SQLite pages still compress
/// several-fold. Compression is what limits backup speed (bench backup).
pub const ZSTD_LEVEL: i32 = 1;

/// A writer that hashes and counts every byte written to `inner`.
pub struct HashWriter<W> {
    pub inner: W,
    pub hasher: blake3::Hasher,
    pub size: u64,
}

impl<W: Write> HashWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: blake3::Hasher::new(),
            size: 0,
        }
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Size and checksum of what was written.
#[derive(Debug, Clone)]
pub struct Written {
    pub size: u64,
    pub blake3: String,
    pub raw_size: u64,
    pub raw_blake3: String,
}

/// Compresses into a file, hashing both the raw input and the file.
pub struct CompressSink {
    path: PathBuf,
    raw: blake3::Hasher,
    raw_size: u64,
    enc: zstd::stream::write::Encoder<'static, HashWriter<BufWriter<File>>>,
}

impl CompressSink {
    pub fn create(path: &Path) -> Result<Self, BackupError> {
        let file = File::create(path).map_err(BackupError::io(path))?;
        let mut enc = zstd::stream::write::Encoder::new(
            HashWriter::new(BufWriter::with_capacity(1 << 20, file)),
            ZSTD_LEVEL,
        )
        .map_err(BackupError::io(path))?;
        // Compress on every core; memory stays bounded by zstd's job size.
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        enc.multithread(workers).map_err(BackupError::io(path))?;
        Ok(Self {
            path: path.to_owned(),
            raw: blake3::Hasher::new(),
            raw_size: 0,
            enc,
        })
    }

    /// Finishes the stream and fsyncs the file.
    pub fn finish(self) -> Result<Written, BackupError> {
        let path = self.path;
        let hw = self.enc.finish().map_err(BackupError::io(&path))?;
        let file = hw
            .inner
            .into_inner()
            .map_err(|e| BackupError::io(&path)(e.into_error()))?;
        file.sync_all().map_err(BackupError::io(&path))?;
        Ok(Written {
            size: hw.size,
            blake3: hw.hasher.finalize().to_hex().to_string(),
            raw_size: self.raw_size,
            raw_blake3: self.raw.finalize().to_hex().to_string(),
        })
    }
}

impl Write for CompressSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.enc.write(buf)?;
        self.raw.update(&buf[..n]);
        self.raw_size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.enc.flush()
    }
}

/// BLAKE3 and size of a file, read in chunks.
pub fn hash_file(path: &Path) -> io::Result<(u64, String)> {
    let mut hasher = blake3::Hasher::new();
    let mut file = File::open(path)?;
    let size = io::copy(&mut file, &mut hasher)?;
    Ok((size, hasher.finalize().to_hex().to_string()))
}
