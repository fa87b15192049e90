//! The content store: blobs by digest, and layers unpacked once by their diff id.
//!
//! ```text
//! <data>/content/blobs/sha256/<hex>  layers (as pulled: compressed or not), configs, manifests
//! <data>/content/layers/<hex>        a layer unpacked, named by its diff id (uncompressed digest)
//! <data>/content/tmp/                downloads (`<hex>.partial`, resumed) and unpacks under way
//! ```
//!
//! A name in `blobs` or `layers` is only ever made by a rename once its content is whole and
//! its digest verified, so what is there is always complete; everything else lives in `tmp`.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cella_jail::layer::{self, LayerError};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

pub struct Content {
    blobs: PathBuf,
    layers: PathBuf,
    tmp: PathBuf,
    limits: layer::Limits,
    /// A lock per blob being fetched: its `.partial` file has one writer.
    writing: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Disk used by the store.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    pub blobs_bytes: u64,
    pub layers_bytes: u64,
    pub blobs: usize,
    pub layers: usize,
}

/// What a garbage collection removed.
#[derive(Debug, Clone, Default)]
pub struct Collected {
    pub blobs: usize,
    pub layers: usize,
}

impl Content {
    pub fn open(dir: &Path, limits: layer::Limits) -> Result<Content> {
        let content = Content {
            blobs: dir.join("blobs/sha256"),
            layers: dir.join("layers"),
            tmp: dir.join("tmp"),
            limits,
            writing: Default::default(),
        };
        for d in [&content.blobs, &content.layers, &content.tmp] {
            std::fs::create_dir_all(d).map_err(|e| internal(d, e))?;
        }
        // Layers hold files of any uid, some a host user's: only root may reach them.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| internal(dir, e))?;
        // Unpacks a previous server left unfinished; partial downloads stay to be resumed.
        for entry in std::fs::read_dir(&content.tmp).map_err(|e| internal(&content.tmp, e))? {
            let path = entry.map_err(Error::internal)?.path();
            if path.extension().is_none_or(|e| e != "partial") {
                remove_any(&path);
            }
        }
        Ok(content)
    }

    /// The lock of the blob `digest`'s download (locks of blobs no one fetches are dropped).
    pub fn writing(&self, digest: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        writing.retain(|_, lock| Arc::strong_count(lock) > 1);
        writing.entry(digest.to_string()).or_default().clone()
    }

    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.blobs.join(hex_of(digest)?))
    }

    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.is_file())
    }

    pub fn layer_path(&self, diff_id: &str) -> Result<PathBuf> {
        Ok(self.layers.join(hex_of(diff_id)?))
    }

    pub fn has_layer(&self, diff_id: &str) -> bool {
        self.layer_path(diff_id).is_ok_and(|p| p.is_dir())
    }

    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let path = self.blob_path(digest)?;
        std::fs::read(&path).map_err(|e| internal(&path, e))
    }

    /// Stores `bytes` as a blob; returns its digest.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<String> {
        let digest = sha256_of(bytes);
        if !self.has_blob(&digest) {
            let mut w = self.blob_writer(&digest, false)?;
            w.write_all(bytes).map_err(Error::internal)?;
            w.finish()?;
        }
        Ok(digest)
    }

    /// A writer for the blob `digest`: what it is given is hashed and, once `finish`ed with
    /// the right digest, renamed into the store. With `resume`, it appends to what an earlier
    /// attempt left (its `offset`).
    pub fn blob_writer(&self, digest: &str, resume: bool) -> Result<BlobWriter> {
        let hex = hex_of(digest)?;
        let partial = self.tmp.join(format!("{hex}.partial"));
        let mut hasher = Sha256::new();
        let mut offset = 0;
        let file = if resume && partial.is_file() {
            let mut old = File::open(&partial).map_err(|e| internal(&partial, e))?;
            offset = io::copy(&mut old, &mut HashWriter(&mut hasher)).map_err(Error::internal)?;
            File::options().append(true).open(&partial)
        } else {
            File::create(&partial)
        }
        .map_err(|e| internal(&partial, e))?;
        Ok(BlobWriter {
            file: io::BufWriter::with_capacity(1 << 20, file),
            hasher,
            offset,
            size: offset,
            expected: Some(digest.to_string()),
            partial,
            blobs: self.blobs.clone(),
        })
    }

    /// A writer for a blob whose digest is known once it is written (a commit, a file of an
    /// archive): `finish` names it. Dropped unfinished, it leaves nothing behind.
    pub fn new_blob(&self) -> Result<BlobWriter> {
        let partial = self
            .tmp
            .join(format!("new-{}", uuid::Uuid::new_v4().simple()));
        let file = File::create(&partial).map_err(|e| internal(&partial, e))?;
        Ok(BlobWriter {
            file: io::BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
            offset: 0,
            size: 0,
            expected: None,
            partial,
            blobs: self.blobs.clone(),
        })
    }

    /// Unpacks the stored blob `blob` (a layer tarball, gzip, zstd or plain) into the layer
    /// store unless there already; returns its diff id, checked against `expected` if given.
    /// A refused or oversized layer leaves nothing behind.
    pub fn unpack_layer(&self, blob: &str, expected: Option<&str>) -> Result<String> {
        if let Some(diff_id) = expected.filter(|d| self.has_layer(d)) {
            return Ok(diff_id.to_string());
        }
        let path = self.blob_path(blob)?;
        let file = File::open(&path).map_err(|e| internal(&path, e))?;
        let exceeded = Arc::new(AtomicBool::new(false));
        let tar = Capped {
            inner: decompressed(BufReader::with_capacity(1 << 20, file))
                .map_err(Error::internal)?,
            left: self.limits.max_bytes,
            exceeded: exceeded.clone(),
            hasher: Sha256::new(),
        };
        let dest = self
            .tmp
            .join(format!("unpack-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir(&dest).map_err(|e| internal(&dest, e))?;
        let unpacked = unpack_into(tar, &dest, self.limits, &exceeded);
        let result = unpacked.and_then(|diff_id| {
            if let Some(expected) = expected.filter(|e| **e != diff_id) {
                return Err(Error::invalid(format!(
                    "layer {blob} unpacks to {diff_id}, not the {expected} its image names"
                )));
            }
            let final_path = self.layer_path(&diff_id)?;
            match std::fs::rename(&dest, &final_path) {
                Ok(()) => Ok(diff_id),
                // Unpacked meanwhile by another pull of an image sharing it.
                Err(_) if final_path.is_dir() => Ok(diff_id),
                Err(e) => Err(internal(&final_path, e)),
            }
        });
        remove_any(&dest);
        result
    }

    /// Removes every blob and layer not kept.
    pub fn collect(&self, blobs: &HashSet<String>, layers: &HashSet<String>) -> Collected {
        let unkept = |dir: &Path, kept: &HashSet<String>| -> Vec<PathBuf> {
            let kept: HashSet<&str> = kept.iter().filter_map(|d| hex_of(d).ok()).collect();
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok())
                .filter(|e| !kept.contains(e.file_name().to_string_lossy().as_ref()))
                .map(|e| e.path())
                .collect()
        };
        let (dead_blobs, dead_layers) = (unkept(&self.blobs, blobs), unkept(&self.layers, layers));
        for path in dead_blobs.iter().chain(&dead_layers) {
            remove_any(path);
        }
        Collected {
            blobs: dead_blobs.len(),
            layers: dead_layers.len(),
        }
    }

    pub fn usage(&self) -> Usage {
        let blobs: Vec<_> = std::fs::read_dir(&self.blobs)
            .into_iter()
            .flatten()
            .flatten()
            .collect();
        let layers: Vec<_> = std::fs::read_dir(&self.layers)
            .into_iter()
            .flatten()
            .flatten()
            .collect();
        Usage {
            blobs_bytes: blobs
                .iter()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum(),
            layers_bytes: layers.iter().map(|e| tree_bytes(&e.path())).sum(),
            blobs: blobs.len(),
            layers: layers.len(),
        }
    }

    /// A temporary file for an upload or a commit, removed when dropped unless kept.
    pub fn temp_file(&self, tag: &str) -> Result<TempFile> {
        let path = self
            .tmp
            .join(format!("{tag}-{}", uuid::Uuid::new_v4().simple()));
        let file = File::create(&path).map_err(|e| internal(&path, e))?;
        Ok(TempFile { path, file })
    }
}

fn unpack_into(
    mut tar: Capped<Box<dyn Read + Send>>,
    dest: &Path,
    limits: layer::Limits,
    exceeded: &AtomicBool,
) -> Result<String> {
    let too_large = || {
        Error::TooLarge(format!(
            "the layer exceeds the limit of {} bytes unpacked (images.max_layer_bytes)",
            limits.max_bytes
        ))
    };
    match layer::unpack(&mut tar, dest, limits) {
        Ok(_) => {}
        Err(_) if exceeded.load(Ordering::Relaxed) => return Err(too_large()),
        Err(LayerError::TooLarge(what)) => {
            return Err(Error::TooLarge(format!(
                "the layer exceeds the limit of {what} (images.max_layer_bytes, max_layer_entries)"
            )));
        }
        Err(e @ LayerError::Refused { .. }) => {
            return Err(Error::invalid(format!("refused an unsafe layer: {e}")));
        }
        Err(LayerError::Io(e)) => return Err(Error::invalid(format!("a broken layer: {e}"))),
    }
    // The diff id covers the whole stream, the end-of-archive padding too.
    io::copy(&mut tar, &mut io::sink()).map_err(|e| {
        if exceeded.load(Ordering::Relaxed) {
            too_large()
        } else {
            Error::invalid(format!("a broken layer: {e}"))
        }
    })?;
    Ok(format!("sha256:{:x}", tar.hasher.finalize()))
}

/// A reader that hashes what passes and fails past `left` bytes.
struct Capped<R> {
    inner: R,
    left: u64,
    exceeded: Arc<AtomicBool>,
    hasher: Sha256,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            self.exceeded.store(true, Ordering::Relaxed);
            return Err(io::Error::other("the layer is too large"));
        }
        self.left -= n as u64;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// The layer's tar stream, whatever its compression (told by its first bytes).
fn decompressed(mut r: BufReader<File>) -> io::Result<Box<dyn Read + Send>> {
    use std::io::BufRead;
    let head = r.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(r))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(r)?)
    } else {
        Box::new(r)
    })
}

/// A blob being written under a temporary name, hashed as it goes.
pub struct BlobWriter {
    file: io::BufWriter<File>,
    hasher: Sha256,
    /// Bytes already there from an earlier attempt.
    pub offset: u64,
    size: u64,
    /// The digest it must have; `None` for a new blob, named by what it turns out to be.
    expected: Option<String>,
    partial: PathBuf,
    blobs: PathBuf,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl BlobWriter {
    /// Verifies the digest and moves the blob into place; a mismatch discards it. Returns
    /// the digest and the size.
    pub fn finish(mut self) -> Result<(String, u64)> {
        self.file.flush().map_err(Error::internal)?;
        let actual = format!("sha256:{:x}", self.hasher.clone().finalize());
        if let Some(expected) = self.expected.take().filter(|e| *e != actual) {
            let _ = std::fs::remove_file(&self.partial);
            return Err(Error::invalid(format!(
                "digest mismatch: expected {expected}, got {actual}"
            )));
        }
        let dest = self.blobs.join(hex_of(&actual)?);
        std::fs::rename(&self.partial, &dest).map_err(|e| internal(&dest, e))?;
        Ok((actual, self.size))
    }
}

impl Drop for BlobWriter {
    /// A new blob left unfinished is removed; a download's partial file stays to be resumed.
    fn drop(&mut self) {
        if self.expected.is_none() {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

pub struct TempFile {
    pub path: PathBuf,
    pub file: File,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub fn sha256_of(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// The hex part of a `sha256:` digest, checked (it names files).
pub fn hex_of(digest: &str) -> Result<&str> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| {
            h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        })
        .ok_or_else(|| Error::invalid(format!("unsupported digest {digest:?} (sha256 only)")))
}

fn tree_bytes(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| tree_bytes(&e.path()))
        .sum()
}

/// Removes a file or a whole tree (`remove_dir_all` follows no symlink).
fn remove_any(path: &Path) {
    let _ = std::fs::remove_dir_all(path).or_else(|_| std::fs::remove_file(path));
}

fn internal(path: &Path, e: io::Error) -> Error {
    Error::Internal(format!("{}: {e}", path.display()))
}
