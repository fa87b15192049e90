//! Durable state in one redb file: sandbox records and registered images.
//!
//! Sandbox records are written with `Durability::None` on the hot path and made durable a few
//! milliseconds later by a background [`Store::flush`] (woken by [`Store::dirtied`]), so no
//! request waits for an fsync. What a crash can lose is that last moment of records, and
//! recovery does not depend on them alone: leftovers are also found by scanning the cgroup
//! parent (see `Engine::recover`).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

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

    /// Makes every earlier non-durable write durable.
    pub fn flush(&self) -> Result<()> {
        if self.dirty.swap(false, Ordering::Relaxed) {
            let tx = self.db.begin_write().map_err(err)?;
            tx.commit().map_err(err)?;
        }
        Ok(())
    }
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
