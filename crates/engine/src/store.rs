//! Durable state in one redb file: sandbox records and registered images. The records here
//! are the on-disk format, kept apart from the engine's types and the API's views so that
//! neither can change it by accident.
//!
//! Sandbox records are written with `Durability::None` on the hot path and made durable a few
//! milliseconds later by a background [`Store::flush`] (woken by [`Store::dirtied`]), so no
//! request waits for an fsync. What a crash can lose is that last moment of records, and
//! recovery does not depend on them alone: leftovers are also found by scanning the cgroup
//! parent (see `Engine::recover`).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use std::collections::BTreeMap;
use std::path::PathBuf;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::sandbox::{SandboxInfo, State};

pub const SANDBOXES: TableDefinition<&str, &[u8]> = TableDefinition::new("sandboxes");
pub const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");

pub struct Store {
    db: Database,
    dirty: AtomicBool,
    dirtied: tokio::sync::Notify,
}

fn err(e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("state store: {e}"))
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        let db = Database::create(path).map_err(|e| {
            Error::Internal(format!(
                "open state store {}: {e} (is another cella using this data dir?)",
                path.display()
            ))
        })?;
        let tx = db.begin_write().map_err(err)?;
        tx.open_table(SANDBOXES).map_err(err)?;
        tx.open_table(IMAGES).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(Store {
            db,
            dirty: AtomicBool::new(false),
            dirtied: tokio::sync::Notify::new(),
        })
    }

    fn write(
        &self,
        table: TableDefinition<&str, &[u8]>,
        durable: bool,
        f: impl FnOnce(&mut redb::Table<&str, &[u8]>) -> Result<()>,
    ) -> Result<()> {
        let mut tx = self.db.begin_write().map_err(err)?;
        if !durable {
            tx.set_durability(Durability::None).map_err(err)?;
        }
        {
            let mut t = tx.open_table(table).map_err(err)?;
            f(&mut t)?;
        }
        tx.commit().map_err(err)?;
        if !durable {
            self.dirty.store(true, Ordering::Relaxed);
            self.dirtied.notify_one();
        }
        Ok(())
    }

    /// Resolves after a non-durable write; the flusher waits on this.
    pub async fn dirtied(&self) {
        self.dirtied.notified().await
    }

    pub fn put<T: Serialize>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        value: &T,
        durable: bool,
    ) -> Result<()> {
        let bytes = serde_json::to_vec(value).map_err(err)?;
        self.write(table, durable, |t| {
            t.insert(key, bytes.as_slice()).map(drop).map_err(err)
        })
    }

    pub fn remove(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        durable: bool,
    ) -> Result<()> {
        self.write(table, durable, |t| t.remove(key).map(drop).map_err(err))
    }

    pub fn all<T: DeserializeOwned>(&self, table: TableDefinition<&str, &[u8]>) -> Result<Vec<T>> {
        let tx = self.db.begin_read().map_err(err)?;
        let t = tx.open_table(table).map_err(err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(err)? {
            let (_, v) = row.map_err(err)?;
            // A record this version cannot read is skipped, not fatal.
            if let Ok(value) = serde_json::from_slice(v.value()) {
                out.push(value);
            }
        }
        Ok(out)
    }

    /// Records a sandbox (made durable by the next flush).
    pub fn put_sandbox(&self, info: &SandboxInfo, init: Option<(i32, u64)>) -> Result<()> {
        self.put(SANDBOXES, &info.id, &SandboxRecord::new(info, init), false)
    }

    pub fn sandboxes(&self) -> Result<Vec<SandboxRecord>> {
        self.all(SANDBOXES)
    }

    /// Makes every earlier non-durable write durable.
    pub fn flush(&self) -> Result<()> {
        if self.dirty.swap(false, Ordering::Relaxed) {
            let tx = self.db.begin_write().map_err(err)?;
            tx.commit().map_err(err)?;
        }
        Ok(())
    }
}

/// A sandbox as the store keeps it: its description and, while it runs, the host pid of its
/// init with that process's start time (clock ticks since boot), so a restarted server
/// recognises exactly that process and no other that reused the pid.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    pub image: String,
    /// `running` or `stopped`.
    pub state: String,
    pub stop_reason: Option<String>,
    pub hostname: String,
    pub cpus: f64,
    pub memory_mb: u64,
    pub pids: u64,
    pub disk_mb: u64,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub idle_timeout_secs: u64,
    pub max_lifetime_secs: u64,
    pub created_at: f64,
    pub uid: u32,
    pub init: Option<(i32, u64)>,
}

impl SandboxRecord {
    pub fn new(info: &SandboxInfo, init: Option<(i32, u64)>) -> SandboxRecord {
        let info = info.clone();
        SandboxRecord {
            id: info.id,
            image: info.image,
            state: match info.state {
                State::Running => "running",
                State::Stopped => "stopped",
            }
            .into(),
            stop_reason: info.stop_reason,
            hostname: info.hostname,
            cpus: info.cpus,
            memory_mb: info.memory_mb,
            pids: info.pids,
            disk_mb: info.disk_mb,
            env: info.env,
            labels: info.labels,
            idle_timeout_secs: info.idle_timeout_secs,
            max_lifetime_secs: info.max_lifetime_secs,
            created_at: info.created_at,
            uid: info.uid,
            init,
        }
    }

    pub fn info(&self) -> SandboxInfo {
        let r = self.clone();
        SandboxInfo {
            id: r.id,
            image: r.image,
            state: if r.state == "running" {
                State::Running
            } else {
                State::Stopped
            },
            stop_reason: r.stop_reason,
            hostname: r.hostname,
            cpus: r.cpus,
            memory_mb: r.memory_mb,
            pids: r.pids,
            disk_mb: r.disk_mb,
            env: r.env,
            labels: r.labels,
            idle_timeout_secs: r.idle_timeout_secs,
            max_lifetime_secs: r.max_lifetime_secs,
            created_at: r.created_at,
            uid: r.uid,
            // Not recorded: a sandbox read back from the store is stopped, its link gone.
            network: Default::default(),
        }
    }
}

/// A registered image: a root filesystem directory under a name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageRecord {
    pub name: String,
    /// A directory image's root filesystem; empty for an OCI image.
    #[serde(default)]
    pub path: PathBuf,
    pub created_at: u64,
    #[serde(default)]
    pub oci: Option<OciRecord>,
}

/// An image of layers in the content store.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OciRecord {
    /// The manifest's digest and media type; the manifest and config are blobs.
    pub manifest: String,
    pub media_type: String,
    pub config: String,
    /// Bottom first.
    pub layers: Vec<LayerRecord>,
    /// Made by committing a sandbox of the `host` image: the host's root lies under the
    /// layers (so it can be neither exported nor pushed).
    pub on_host: bool,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// Where it was pulled from, imported from or committed from.
    pub source: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerRecord {
    /// The blob as stored (compressed or not), its size and media type.
    pub blob: String,
    pub size: u64,
    pub media_type: String,
    /// The digest of the uncompressed tarball: the unpacked layer's name.
    pub diff_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_reopen() {
        let dir = std::env::temp_dir().join(format!("cella-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.redb");
        {
            let s = Store::open(&path).unwrap();
            s.put(SANDBOXES, "a", &vec![1, 2], false).unwrap();
            s.put(SANDBOXES, "b", &vec![3], true).unwrap();
            s.remove(SANDBOXES, "b", false).unwrap();
            s.flush().unwrap();
        }
        let s = Store::open(&path).unwrap();
        let all: Vec<Vec<i32>> = s.all(SANDBOXES).unwrap();
        assert_eq!(all, vec![vec![1, 2]]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
