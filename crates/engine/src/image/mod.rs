//! Images: read-only root filesystems sandboxes are made from.
//!
//! `host` is this machine's `/` with private paths masked. An OCI image is its layers in the
//! content store (`content`), pulled (`registry`), imported (`archive`) or committed from a
//! sandbox; a directory holding a root filesystem under one of the image roots can be
//! registered too. Names resolve through the alias table of the configuration, then as
//! given, then as a normalized registry reference (`busybox` is
//! `docker.io/library/busybox:latest`); the records are kept in the state store.

pub mod archive;
pub mod content;
pub mod oci;
pub mod registry;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::Config;
use crate::error::{Error, Result, quoted};
use crate::store::{IMAGES, ImageRecord as Record, OciRecord, Store};

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

/// What the jail needs to build a sandbox's root from an image, and the defaults of the
/// sandbox's execs.
#[derive(Debug, Clone)]
pub struct Image {
    pub name: String,
    /// Topmost first.
    pub lowerdirs: Vec<PathBuf>,
    pub masks: Vec<PathBuf>,
    /// The image's own `/home` shows (an OCI image's; the host's is hidden).
    pub keep_home: bool,
    /// The last lower is the host's root, masked apart (a commit of a `host` sandbox).
    pub host_base: bool,
    /// `KEY=value`, the image's config.
    pub env: Vec<String>,
    /// The default working directory of execs, if the image names one.
    pub working_dir: Option<String>,
    /// Its layers, kept from garbage collection while this (and its clones) lives.
    pub pin: Option<Arc<Pin>>,
    pub oci: Option<OciRecord>,
}

impl Image {
    /// An image of one directory (the host's root, a registered root filesystem).
    fn one_root(name: &str, root: PathBuf, masks: Vec<PathBuf>) -> Image {
        Image {
            name: name.to_string(),
            lowerdirs: vec![root],
            masks,
            keep_home: false,
            host_base: false,
            env: Vec::new(),
            working_dir: None,
            pin: None,
            oci: None,
        }
    }
}

/// Layers held from garbage collection: by a sandbox made from them, from the moment its
/// image was resolved (before its root is mounted) until it is gone.
#[derive(Debug)]
pub struct Pin {
    layers: Vec<String>,
    pins: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
        for layer in &self.layers {
            if let Some(n) = pins.get_mut(layer) {
                *n -= 1;
                if *n == 0 {
                    pins.remove(layer);
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct ImageInfo {
    pub name: String,
    /// The root filesystem directory (`/` for `host`); empty for an OCI image.
    pub path: PathBuf,
    /// Names that resolve to this image.
    pub aliases: Vec<String>,
    /// Seconds since the epoch; absent for built-in images.
    pub created_at: Option<u64>,
    pub oci: Option<OciRecord>,
}

pub struct Images {
    aliases: BTreeMap<String, String>,
    host_masks: Vec<PathBuf>,
    /// Canonical directories registered images must lie under.
    roots: Vec<PathBuf>,
    registered: RwLock<BTreeMap<String, Record>>,
    /// Layers of images resolved for sandboxes, and how many hold each.
    pinned: Arc<Mutex<HashMap<String, usize>>>,
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
            pinned: Arc::default(),
        })
    }

    fn canonical<'a>(&'a self, name: &'a str) -> &'a str {
        self.aliases.get(name).map_or(name, String::as_str)
    }

    /// Whether `name` is (an alias of) the `host` image.
    pub fn is_host(&self, name: &str) -> bool {
        self.canonical(name) == HOST
    }

    /// The stored name `name` refers to, if there is one: through the aliases, as given,
    /// then as a normalized reference.
    pub fn local_name(&self, name: &str) -> Option<String> {
        let canonical = self.canonical(name);
        if canonical == HOST {
            return Some(HOST.into());
        }
        let registered = self.registered.read().unwrap_or_else(|p| p.into_inner());
        if registered.contains_key(canonical) {
            return Some(canonical.to_string());
        }
        normalized(canonical).filter(|n| registered.contains_key(n))
    }

    pub fn resolve(&self, name: &str, content: &content::Content) -> Result<Image> {
        let Some(local) = self.local_name(name) else {
            return Err(Error::not_found("image", name));
        };
        if local == HOST {
            return Ok(Image::one_root(HOST, "/".into(), self.host_masks.clone()));
        }
        // Read and pinned under the lock a garbage collection reads the references under.
        let registered = self.registered.read().map_err(Error::internal)?;
        let record =
            (registered.get(&local).cloned()).ok_or_else(|| Error::not_found("image", name))?;
        let Some(oci) = record.oci else {
            return Ok(Image::one_root(&record.name, record.path, Vec::new()));
        };
        let mut lowerdirs = oci
            .layers
            .iter()
            .rev()
            .map(|l| content.layer_path(&l.diff_id))
            .collect::<Result<Vec<_>>>()?;
        if let Some(missing) = lowerdirs.iter().find(|d| !d.is_dir()) {
            return Err(Error::Internal(format!(
                "image {} lacks its layer {}: pull or import it again",
                quoted(&local),
                missing.display()
            )));
        }
        let masks = if oci.on_host {
            lowerdirs.push("/".into());
            self.host_masks.clone()
        } else {
            Vec::new()
        };
        Ok(Image {
            name: record.name,
            lowerdirs,
            masks,
            host_base: oci.on_host,
            keep_home: true,
            env: oci.env.clone(),
            working_dir: Some(oci.working_dir.clone()).filter(|d| d.starts_with('/')),
            pin: Some(Arc::new(self.pin(&oci))),
            oci: Some(oci),
        })
    }

    fn pin(&self, oci: &OciRecord) -> Pin {
        let layers: Vec<String> = oci.layers.iter().map(|l| l.diff_id.clone()).collect();
        let mut pins = self.pinned.lock().unwrap_or_else(|p| p.into_inner());
        for layer in &layers {
            *pins.entry(layer.clone()).or_default() += 1;
        }
        Pin {
            layers,
            pins: self.pinned.clone(),
        }
    }

    pub fn get(&self, name: &str) -> Result<ImageInfo> {
        let local = self
            .local_name(name)
            .ok_or_else(|| Error::not_found("image", name))?;
        self.list()?
            .into_iter()
            .find(|i| i.name == local)
            .ok_or_else(|| Error::not_found("image", name))
    }

    /// Stores an OCI image under `name` (normalized), replacing one of that name.
    pub fn put_oci(&self, name: &str, oci: OciRecord, store: &Store) -> Result<ImageInfo> {
        let name = normalized(name)
            .ok_or_else(|| Error::invalid(format!("invalid image reference {}", quoted(name))))?;
        if self.aliases.contains_key(&name) || name == HOST {
            return Err(Error::Conflict(format!(
                "image name {} is built in or an alias",
                quoted(&name)
            )));
        }
        let record = Record {
            name: name.clone(),
            path: PathBuf::new(),
            created_at: now_secs(),
            oci: Some(oci),
        };
        let mut registered = self.registered.write().map_err(Error::internal)?;
        store.put(IMAGES, &name, &record, true)?;
        registered.insert(name.clone(), record);
        drop(registered);
        self.get(&name)
    }

    /// The blobs and layers every image, and every sandbox made from one, holds.
    pub fn referenced(&self) -> (HashSet<String>, HashSet<String>) {
        let registered = self.registered.read().unwrap_or_else(|p| p.into_inner());
        let mut blobs = HashSet::new();
        let pinned = self.pinned.lock().unwrap_or_else(|p| p.into_inner());
        let mut layers: HashSet<String> = pinned.keys().cloned().collect();
        for oci in registered.values().filter_map(|r| r.oci.as_ref()) {
            blobs.insert(oci.manifest.clone());
            blobs.insert(oci.config.clone());
            for l in &oci.layers {
                blobs.insert(l.blob.clone());
                layers.insert(l.diff_id.clone());
            }
        }
        (blobs, layers)
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
            oci: None,
        }];
        let registered = self.registered.read().map_err(Error::internal)?;
        out.extend(registered.values().map(|r| ImageInfo {
            name: r.name.clone(),
            path: r.path.clone(),
            aliases: aliases_of(&r.name),
            created_at: Some(r.created_at),
            oci: r.oci.clone(),
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
            created_at: now_secs(),
            oci: None,
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
            oci: None,
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
        let name = self
            .local_name(name)
            .filter(|n| n != HOST)
            .ok_or_else(|| Error::not_found("image", name))?;
        let mut registered = self.registered.write().map_err(Error::internal)?;
        registered.remove(&name);
        store.remove(IMAGES, &name, true)
    }
}

/// A registry reference in its full form (`busybox` → `docker.io/library/busybox:latest`).
pub fn normalized(name: &str) -> Option<String> {
    let reference: oci_client::Reference = name.parse().ok()?;
    Some(reference.whole())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
