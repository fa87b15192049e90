//! The engine's image verbs: pull (coalesced), push, import, export, commit, remove and the
//! garbage collection of layers no image and no sandbox holds.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use oci_client::Reference;
use tokio::sync::watch;
use tracing::{info, warn};

use super::Engine;
use crate::config::PullPolicy;
use crate::error::{Error, Result, quoted};
use crate::image::content::{Collected, Usage};
use crate::image::registry::{Credentials, Progress};
use crate::image::{HOST, ImageInfo, archive, normalized, oci};
use crate::store::{LayerRecord, OciRecord};

/// A pull's progress, and once it ends its outcome; every caller asking for the same
/// reference meanwhile watches the same one.
#[derive(Debug, Clone)]
pub struct Pull {
    pub progress: watch::Receiver<Progress>,
    pub outcome: watch::Receiver<Option<Result<ImageInfo>>>,
}

impl Pull {
    pub async fn finished(&mut self) -> Result<ImageInfo> {
        let done = self
            .outcome
            .wait_for(Option::is_some)
            .await
            .map_err(Error::internal)?;
        done.clone().expect("waited for")
    }
}

pub(super) type Pulls = std::sync::Mutex<HashMap<String, Pull>>;

/// The owner a commit gives the files of the sandbox's user (the conventional first user of
/// an image; the sandbox's own uid is one of the server's range, another in the next).
const IMAGE_USER_ID: u32 = 1000;

/// Files cella writes into every sandbox's writable layer, which a commit leaves out.
const SCAFFOLDING: &[&str] = &["etc/passwd", "etc/group", "etc/hostname", "etc/hosts"];

impl Engine {
    /// Starts pulling `reference` (or joins the pull of it under way) and returns its
    /// progress; the pull goes on if the caller stops watching.
    pub fn pull(
        self: &Arc<Self>,
        reference: &str,
        credentials: Option<Credentials>,
    ) -> Result<Pull> {
        let parsed: Reference = reference.parse().map_err(|e| {
            Error::invalid(format!(
                "invalid image reference {}: {e}",
                quoted(reference)
            ))
        })?;
        let key = parsed.whole();
        let mut pulls = self.pulls.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pull) = pulls.get(&key) {
            return Ok(pull.clone());
        }
        let progress = watch::Sender::new(Progress {
            reference: key.clone(),
            status: "resolving".into(),
            layers: Vec::new(),
        });
        let outcome = watch::Sender::new(None);
        let pull = Pull {
            progress: progress.subscribe(),
            outcome: outcome.subscribe(),
        };
        pulls.insert(key.clone(), pull.clone());
        let engine = self.clone();
        tokio::spawn(async move {
            let pulled = engine
                .registries
                .pull(&parsed, credentials.as_ref(), &engine.content, &progress)
                .await
                .and_then(|oci| engine.images.put_oci(&key, oci, &engine.store));
            match &pulled {
                Ok(_) => info!(image = %key, "pulled"),
                Err(e) => warn!(image = %key, error = %e, "pull failed"),
            }
            engine
                .pulls
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
            let status = if pulled.is_ok() { "done" } else { "failed" };
            progress.send_modify(|p| p.status = status.into());
            outcome.send_replace(Some(pulled));
        });
        Ok(pull)
    }

    /// Pulls `reference` and waits for it.
    pub async fn pull_and_wait(
        self: &Arc<Self>,
        reference: &str,
        credentials: Option<Credentials>,
    ) -> Result<ImageInfo> {
        self.pull(reference, credentials)?.finished().await
    }

    /// Makes `name` local as the pull policy says, before a sandbox is made from it.
    pub(super) async fn ensure_image(self: &Arc<Self>, name: &str) -> Result<()> {
        let local = self.images.local_name(name);
        let policy = self.config.images.pull;
        let from_registry = |n: &str| {
            self.images
                .get(n)
                .is_ok_and(|i| i.oci.is_some_and(|o| o.source.contains('/')))
        };
        match (policy, local) {
            (_, Some(n)) if n == HOST => Ok(()),
            (PullPolicy::Always, Some(n)) if from_registry(&n) => {
                if let Err(e) = self.pull_and_wait(&n, None).await {
                    warn!(image = %n, error = %e, "pull (policy always) failed: using the local image");
                }
                Ok(())
            }
            (_, Some(_)) => Ok(()),
            (PullPolicy::Never, None) => Err(Error::not_found("image", name)),
            (_, None) => self.pull_and_wait(name, None).await.map(drop),
        }
    }

    /// Pushes the image `name` to `reference` (its own name if none).
    pub async fn push(
        self: &Arc<Self>,
        name: &str,
        reference: Option<&str>,
        credentials: Option<Credentials>,
        progress: &watch::Sender<Progress>,
    ) -> Result<String> {
        let image = self.images.get(name)?;
        let oci = pushable(&image)?;
        let target = reference.unwrap_or(&image.name);
        let parsed: Reference = target.parse().map_err(|e| {
            Error::invalid(format!("invalid image reference {}: {e}", quoted(target)))
        })?;
        progress.send_modify(|p| p.reference = parsed.whole());
        self.registries
            .push(&oci, &parsed, credentials.as_ref(), &self.content, progress)
            .await
    }

    /// Imports the images of the `docker save` or OCI layout archive at `path`.
    pub async fn import(
        self: &Arc<Self>,
        path: &Path,
        name: Option<&str>,
    ) -> Result<Vec<ImageInfo>> {
        let (content, path, name) = (
            self.content.clone(),
            path.to_owned(),
            name.map(str::to_owned),
        );
        let found =
            tokio::task::spawn_blocking(move || archive::import(&content, &path, name.as_deref()))
                .await
                .map_err(Error::internal)??;
        found
            .into_iter()
            .map(|(name, oci)| self.images.put_oci(&name, oci, &self.store))
            .collect()
    }

    /// The image `name`, if it can be exported or pushed (it does not lie on the host).
    pub fn portable_image(&self, name: &str) -> Result<ImageInfo> {
        let image = self.images.get(name)?;
        pushable(&image)?;
        Ok(image)
    }

    /// Writes the image `name` as an archive to `out` (on a blocking thread).
    pub async fn export(
        self: &Arc<Self>,
        name: &str,
        out: impl std::io::Write + Send + 'static,
    ) -> Result<()> {
        let image = self.images.get(name)?;
        let oci = pushable(&image)?;
        let content = self.content.clone();
        tokio::task::spawn_blocking(move || archive::export(&content, &image.name, &oci, out))
            .await
            .map_err(Error::internal)?
    }

    /// Commits sandbox `id`'s writable layer as a new layer on top of its image, stored as the
    /// image `name`. The sandbox is frozen while its layer is copied.
    pub async fn commit(self: &Arc<Self>, id: &str, name: &str) -> Result<ImageInfo> {
        let sandbox = self.get(id)?;
        let full_name = normalized(name)
            .ok_or_else(|| Error::invalid(format!("invalid image name {}", quoted(name))))?;
        let image = sandbox.image();
        let masks: Vec<String> = (image.masks.iter())
            .map(|m| m.to_string_lossy().trim_start_matches('/').to_string())
            .collect();
        let content = self.content.clone();
        let layer = tokio::task::spawn_blocking(move || -> Result<LayerRecord> {
            let mut blob = content.new_blob()?;
            let frozen = sandbox.cgroup.freeze(true);
            if let Err(e) = &frozen {
                warn!(sandbox = %sandbox.id, error = %e, "cannot freeze: committing it running");
            }
            let masks: Vec<&str> = masks.iter().map(String::as_str).collect();
            let spec = cella_jail::layer::DiffSpec {
                skip: SCAFFOLDING,
                masks: &masks,
                owner: (sandbox.info().uid, IMAGE_USER_ID),
            };
            let written = cella_jail::layer::diff(sandbox.upper(), &spec, &mut blob);
            if frozen.is_ok() {
                let _ = sandbox.cgroup.freeze(false);
            }
            written
                .map_err(|e| Error::Internal(format!("read the sandbox's writable layer: {e}")))?;
            let (digest, size) = blob.finish()?;
            content.unpack_layer(&digest, Some(&digest))?;
            Ok(LayerRecord {
                blob: digest.clone(),
                size,
                media_type: oci_client::manifest::IMAGE_LAYER_MEDIA_TYPE.into(),
                diff_id: digest,
            })
        })
        .await
        .map_err(Error::internal)??;
        let (parent_config, mut layers, on_host) = match &image.oci {
            Some(o) => (
                oci::parse_config(&self.content.read_blob(&o.config)?)?,
                o.layers.clone(),
                o.on_host,
            ),
            None if image.name == HOST => (Default::default(), Vec::new(), true),
            None => {
                return Err(Error::invalid(format!(
                    "sandbox {id} runs a directory image ({}): only OCI images and host can be committed",
                    quoted(&image.name)
                )));
            }
        };
        let config = oci::with_layer(parent_config, &layer.diff_id, &format!("cella commit {id}"));
        layers.push(layer);
        let config_bytes = serde_json::to_vec(&config).map_err(Error::internal)?;
        let manifest = oci::write_manifest(&self.content, &config_bytes, &layers)?;
        let mut record = oci::record(
            &self.content,
            &manifest,
            oci_client::manifest::OCI_IMAGE_MEDIA_TYPE,
            &format!("sandbox {id}"),
        )?;
        record.on_host = on_host;
        self.images.put_oci(&full_name, record, &self.store)
    }

    pub fn register_image(&self, name: &str, path: &Path) -> Result<ImageInfo> {
        self.images.register(name, path, &self.store)
    }

    /// Removes the image `name`, then the layers nothing holds any more.
    pub fn remove_image(&self, name: &str) -> Result<()> {
        self.images.remove(name, &self.store)?;
        self.collect_garbage();
        Ok(())
    }

    /// Removes the blobs and layers no image and no sandbox holds.
    pub fn collect_garbage(&self) -> Collected {
        // A pull under way holds what it has fetched so far.
        if !(self.pulls.lock().unwrap_or_else(|p| p.into_inner())).is_empty() {
            return Collected::default();
        }
        let (blobs, layers) = self.images.referenced();
        let collected = self.content.collect(&blobs, &layers);
        if collected.blobs + collected.layers > 0 {
            info!(
                blobs = collected.blobs,
                layers = collected.layers,
                "collected unused image content"
            );
        }
        collected
    }

    /// A file in the content store's `tmp` for an archive being uploaded.
    pub fn image_temp_file(&self) -> Result<crate::image::content::TempFile> {
        self.content.temp_file("upload")
    }

    pub fn image_usage(&self) -> Usage {
        self.content.usage()
    }
}

/// The OCI record of an image that can leave this machine.
fn pushable(image: &ImageInfo) -> Result<OciRecord> {
    match &image.oci {
        Some(o) if !o.on_host => Ok(o.clone()),
        Some(_) => Err(Error::invalid(format!(
            "image {} lies on the host's root (a commit of a host sandbox): it cannot leave this machine",
            quoted(&image.name)
        ))),
        None => Err(Error::invalid(format!(
            "image {} is not an OCI image",
            quoted(&image.name)
        ))),
    }
}
