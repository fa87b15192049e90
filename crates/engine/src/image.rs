//! Images: read-only root filesystems sandboxes are made from.
//!
//! `host` is this machine's `/` with private paths masked. A directory holding a root
//! filesystem under one of the image roots (the data dir's `images`, and any the
//! configuration adds) can be registered under a name (kept in the state store), and names
//! such as `python:3.11` resolve through the alias table of the configuration.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::Config;
use crate::error::{Error, Result, quoted};
use crate::store::{IMAGES, ImageRecord as Record, Store};

pub const HOST: &str = "host";

/// Paths of the host that no sandbox sees: credentials, other users' homes, logs, keys.
const HOST_MASKS: &[&str] = &[
    "/root",
    "/home",
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/ssh",
    "/etc/sudoers",
    "/etc/sudoers.d",
    "/etc/cella",
    "/var/log",
    "/var/backups",
    "/var/mail",
    "/var/spool",
    "/var/lib/cella",
];

/// What the jail needs to build a sandbox's root from an image.
#[derive(Debug, Clone)]
pub struct Image {
    pub name: String,
    pub lowerdirs: Vec<PathBuf>,
    pub masks: Vec<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct ImageInfo {
    pub name: String,
    /// The root filesystem directory (`/` for `host`).
    pub path: PathBuf,
    /// Names that resolve to this image.
    pub aliases: Vec<String>,
    /// Seconds since the epoch; absent for built-in images.
    pub created_at: Option<u64>,
}

pub struct Images {
    aliases: BTreeMap<String, String>,
    host_masks: Vec<PathBuf>,
    /// Canonical directories registered images must lie under.
    roots: Vec<PathBuf>,
    registered: RwLock<BTreeMap<String, Record>>,
}

impl Images {
    pub fn load(config: &Config, config_file: Option<&Path>, store: &Store) -> Result<Images> {
        let mut host_masks: Vec<PathBuf> = HOST_MASKS.iter().map(PathBuf::from).collect();
        host_masks.push(config.data_dir.clone());
        host_masks.extend(config_file.map(Path::to_path_buf));
        host_masks.extend(config.images.host_masks.iter().cloned());
        let roots = std::iter::once(config.images_dir())
            .chain(config.images.roots.iter().cloned())
            .map(|root| {
                root.canonicalize()
                    .map_err(|e| Error::Internal(format!("image root {}: {e}", root.display())))
            })
            .collect::<Result<_>>()?;
        let registered = store
            .all::<Record>(IMAGES)?
            .into_iter()
            .map(|r| (r.name.clone(), r))
            .collect();
        Ok(Images {
            aliases: config.images.aliases.clone(),
            host_masks,
            roots,
            registered: RwLock::new(registered),
        })
    }

    fn canonical<'a>(&'a self, name: &'a str) -> &'a str {
        self.aliases.get(name).map_or(name, String::as_str)
    }

    /// Whether `name` is (an alias of) the `host` image.
    pub fn is_host(&self, name: &str) -> bool {
        self.canonical(name) == HOST
    }

    pub fn resolve(&self, name: &str) -> Result<Image> {
        let canonical = self.canonical(name);
        if canonical == HOST {
            return Ok(Image {
                name: HOST.into(),
                lowerdirs: vec!["/".into()],
                masks: self.host_masks.clone(),
            });
        }
        let registered = self.registered.read().map_err(Error::internal)?;
        let record = registered
            .get(canonical)
            .ok_or_else(|| Error::not_found("image", name))?;
        Ok(Image {
            name: record.name.clone(),
            lowerdirs: vec![record.path.clone()],
            masks: Vec::new(),
        })
    }

    pub fn list(&self) -> Result<Vec<ImageInfo>> {
        let aliases_of = |name: &str| {
            self.aliases
                .iter()
                .filter(|(_, to)| to.as_str() == name)
                .map(|(a, _)| a.clone())
                .collect()
        };
        let mut out = vec![ImageInfo {
            name: HOST.into(),
            path: "/".into(),
            aliases: aliases_of(HOST),
            created_at: None,
        }];
        let registered = self.registered.read().map_err(Error::internal)?;
        out.extend(registered.values().map(|r| ImageInfo {
            name: r.name.clone(),
            path: r.path.clone(),
            aliases: aliases_of(&r.name),
            created_at: Some(r.created_at),
        }));
        Ok(out)
    }

    /// Registers a directory holding a root filesystem as an image.
    pub fn register(&self, name: &str, path: &Path, store: &Store) -> Result<ImageInfo> {
        validate_name(name)?;
        if name == HOST || self.aliases.contains_key(name) {
            return Err(Error::Conflict(format!(
                "image name {} is built in or an alias",
                quoted(name)
            )));
        }
        let path = self.validate_rootfs(path)?;
        let record = Record {
            name: name.to_string(),
            path: path.clone(),
            created_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        let mut registered = self.registered.write().map_err(Error::internal)?;
        if registered.contains_key(name) {
            return Err(Error::Conflict(format!(
                "image {} already exists",
                quoted(name)
            )));
        }
        store.put(IMAGES, name, &record, true)?;
        registered.insert(name.to_string(), record.clone());
        Ok(ImageInfo {
            name: record.name,
            path,
            aliases: Vec::new(),
            created_at: Some(record.created_at),
        })
    }

    /// The canonical path of a root filesystem under one of the image roots.
    fn validate_rootfs(&self, path: &Path) -> Result<PathBuf> {
        if !path.is_absolute() {
            return Err(Error::invalid("the image path must be absolute"));
        }
        let path = path
            .canonicalize()
            .map_err(|e| Error::invalid(format!("{}: {e}", path.display())))?;
        // Canonical, so a symlink under a root cannot lead outside it.
        if !self
            .roots
            .iter()
            .any(|root| path.starts_with(root) && path != *root)
        {
            return Err(Error::invalid(format!(
                "{} is not under an image root ({})",
                path.display(),
                self.roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let text = path.to_string_lossy();
        // overlayfs separates layers with ':' and options with ','.
        if text.contains([':', ',']) {
            return Err(Error::invalid("the image path must not contain ':' or ','"));
        }
        let has_shell = ["bin/sh", "usr/bin/sh"]
            .iter()
            .any(|sh| path.join(sh).exists());
        if !path.is_dir() || !has_shell {
            return Err(Error::invalid(format!(
                "{} is not a root filesystem (no bin/sh)",
                path.display()
            )));
        }
        Ok(path)
    }

    pub fn remove(&self, name: &str, store: &Store) -> Result<()> {
        let mut registered = self.registered.write().map_err(Error::internal)?;
        if registered.remove(name).is_none() {
            return Err(Error::not_found("image", name));
        }
        store.remove(IMAGES, name, true)
    }
}

/// Names as registries spell them (`team/python:3.12`): components separated by `/`, each
/// starting with a letter or digit.
fn validate_name(name: &str) -> Result<()> {
    let ok = name.len() <= 128
        && name.split('/').all(|part| {
            part.starts_with(|c: char| c.is_ascii_alphanumeric())
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c))
        });
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid image name {}: use letters, digits and ._:- in parts separated by /, \
             each starting with a letter or digit",
            quoted(name)
        )))
    }
}
