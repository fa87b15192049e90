//! A server's exclusive claim on what it owns on the host: its cgroup parent and its range
//! of sandbox uids. A starting server reaps every cgroup under its parent, so a second server
//! sharing one would kill the first one's sandboxes; and two sharing uids would give
//! sandboxes of different servers the same user.
//!
//! The claims are `flock`s on files in `/run/cella`: the kernel drops them when the server
//! dies, however it dies, so a restart after a crash claims them again.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::error::{Error, Result};

const CLAIMS_DIR: &str = "/run/cella";

/// Held for the life of the server.
pub struct HostClaim {
    _locks: Vec<File>,
}

impl HostClaim {
    pub fn take(config: &Config) -> Result<HostClaim> {
        Self::take_in(Path::new(CLAIMS_DIR), config)
    }

    fn take_in(dir: &Path, config: &Config) -> Result<HostClaim> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Internal(format!("create {}: {e}", dir.display())))?;
        let parent = &config.cgroup_parent;
        let claims = [
            (
                format!("cgroup parent {parent:?}: starting would reap its sandboxes"),
                dir.join(format!("cgroup-{}.lock", parent.replace('/', "_"))),
            ),
            (
                format!(
                    "sandbox uids from {}: sandboxes of both would share users",
                    config.uid_base
                ),
                dir.join(format!("uid-{}.lock", config.uid_base)),
            ),
        ];
        let locks = claims
            .into_iter()
            .map(|(what, path)| claim(&what, path))
            .collect::<Result<_>>()?;
        Ok(HostClaim { _locks: locks })
    }
}

fn claim(what: &str, path: PathBuf) -> Result<File> {
    let failed = |e: std::io::Error| Error::Internal(format!("lock {}: {e}", path.display()));
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(failed)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(Error::Unavailable(format!(
                "another cella server (pid {}) owns the {what}. Give each server its own \
                 `cgroup_parent` and `uid_base` (CELLA_CGROUP_PARENT, CELLA_UID_BASE)",
                holder.trim()
            )));
        }
        Err(TryLockError::Error(e)) => return Err(failed(e)),
    }
    // Who holds it, for the message another server gives.
    file.set_len(0).map_err(failed)?;
    file.rewind().map_err(failed)?;
    write!(file, "{}", std::process::id()).map_err(failed)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_on_the_same_parent_or_uids_is_refused() {
        let dir = std::env::temp_dir().join(format!("cella-claims-{}", std::process::id()));
        let config = Config::default();
        let first = HostClaim::take_in(&dir, &config).unwrap();
        let again = HostClaim::take_in(&dir, &config).err().unwrap().to_string();
        assert!(
            again.contains(&format!("pid {}", std::process::id())),
            "{again}"
        );
        assert!(again.contains("cgroup parent"), "{again}");
        // Its own parent, but the same uids.
        let other = Config {
            cgroup_parent: "other".into(),
            ..Config::default()
        };
        let same_uids = HostClaim::take_in(&dir, &other).err().unwrap().to_string();
        assert!(same_uids.contains("sandbox uids"), "{same_uids}");
        let distinct = Config {
            uid_base: config.uid_base + config.uid_count,
            ..other
        };
        assert!(HostClaim::take_in(&dir, &distinct).is_ok());
        drop(first);
        assert!(HostClaim::take_in(&dir, &config).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
