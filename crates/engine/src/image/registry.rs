//! Pulling images from, and pushing them to, OCI distribution registries (`oci-client`):
//! Docker Hub style references, token and basic auth, plain HTTP for the registries the
//! configuration marks `insecure`, and the linux/amd64 entry of a multi-platform index.
//!
//! Every blob is verified against its digest before it enters the content store. A download
//! cut short stays in the store's `tmp` and the next pull resumes it with a range request.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE, OciDescriptor,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Serialize;
use tokio::sync::watch;

use super::content::{Content, sha256_of};
use super::oci;
use crate::config::RegistryConfig;
use crate::error::{Error, Result, quoted};
use crate::store::OciRecord;

/// Layers downloaded at once by one pull.
const CONCURRENT_LAYERS: usize = 3;
/// An image config larger than this is refused (they are a few KB).
const MAX_CONFIG_BYTES: i64 = 16 << 20;

/// User name and password (or token) for one registry.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// Where a pull or push stands: each layer's bytes moved so far.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Progress {
    pub reference: String,
    /// `resolving`, `pulling` or `pushing`, `done`.
    pub status: String,
    pub layers: Vec<LayerProgress>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LayerProgress {
    pub digest: String,
    pub size: u64,
    pub done: u64,
    /// `waiting`, `downloading` (or `uploading`), `extracting`, `done`, `exists`.
    pub state: &'static str,
    /// Bytes an earlier, interrupted pull had already fetched.
    pub resumed_from: u64,
}

impl LayerProgress {
    fn waiting(digest: &str, size: u64) -> LayerProgress {
        LayerProgress {
            digest: digest.to_string(),
            size,
            done: 0,
            state: "waiting",
            resumed_from: 0,
        }
    }
}

pub struct Registries {
    settings: BTreeMap<String, RegistryConfig>,
}

impl Registries {
    pub fn new(settings: &BTreeMap<String, RegistryConfig>) -> Registries {
        Registries {
            settings: settings.clone(),
        }
    }

    /// A client for one pull or push: a client keeps the first credentials it was given for
    /// a registry (and the tokens they got), which must never serve another request's.
    fn client(&self) -> Client {
        let insecure = (self.settings.iter())
            .filter(|(_, s)| s.insecure)
            .map(|(host, _)| host.clone())
            .collect();
        Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(insecure),
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            read_timeout: Some(std::time::Duration::from_secs(60)),
            ..Default::default()
        })
    }

    fn auth(&self, reference: &Reference, given: Option<&Credentials>) -> RegistryAuth {
        let configured = self.settings.get(reference.registry()).and_then(|s| {
            s.username
                .as_ref()
                .map(|u| (u.clone(), s.password.clone().unwrap_or_default()))
        });
        match (given, configured) {
            (Some(c), _) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
            (None, Some((u, p))) => RegistryAuth::Basic(u, p),
            (None, None) => RegistryAuth::Anonymous,
        }
    }

    /// Pulls `reference` into `content`; returns the image's record (its layers unpacked).
    pub async fn pull(
        &self,
        reference: &Reference,
        credentials: Option<&Credentials>,
        content: &Arc<Content>,
        progress: &watch::Sender<Progress>,
    ) -> Result<OciRecord> {
        let auth = self.auth(reference, credentials);
        let client = self.client();
        let accepted = [
            OCI_IMAGE_MEDIA_TYPE,
            IMAGE_MANIFEST_MEDIA_TYPE,
            OCI_IMAGE_INDEX_MEDIA_TYPE,
            IMAGE_MANIFEST_LIST_MEDIA_TYPE,
        ];
        let (bytes, _) = client
            .pull_manifest_raw(reference, &auth, &accepted)
            .await
            .map_err(|e| registry_error(reference, e))?;
        check_digest(&bytes, reference.digest())?;
        let (bytes, media_type, reference) = match media_type_of(&bytes)? {
            t if t == OCI_IMAGE_INDEX_MEDIA_TYPE || t == IMAGE_MANIFEST_LIST_MEDIA_TYPE => {
                let index: oci_client::manifest::OciImageIndex = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::invalid(format!("a broken image index: {e}")))?;
                let digest = oci_client::client::linux_amd64_resolver(&index.manifests)
                    .ok_or_else(|| {
                        Error::invalid(format!(
                            "{} has no linux/amd64 image",
                            quoted(&reference.whole())
                        ))
                    })?;
                let by_digest = reference.clone_with_digest(digest.clone());
                let (bytes, _) = client
                    .pull_manifest_raw(&by_digest, &auth, &accepted)
                    .await
                    .map_err(|e| registry_error(&by_digest, e))?;
                check_digest(&bytes, Some(&digest))?;
                let media_type = media_type_of(&bytes)?;
                (bytes, media_type, by_digest)
            }
            t => (bytes, t, reference.clone()),
        };
        if !oci::MANIFEST_TYPES.contains(&media_type.as_str()) {
            return Err(Error::invalid(format!(
                "{} is a {media_type:?}, not an image",
                quoted(&reference.whole())
            )));
        }
        let manifest = oci::parse_manifest(&bytes)?;
        let manifest_digest = content.put_blob(&bytes)?;
        if manifest.config.size > MAX_CONFIG_BYTES {
            return Err(Error::invalid(format!(
                "the image's config is {} bytes, more than a config ever needs",
                manifest.config.size
            )));
        }
        if !content.has_blob(&manifest.config.digest) {
            let mut config = Vec::new();
            client
                .pull_blob(&reference, &manifest.config, &mut config)
                .await
                .map_err(|e| registry_error(&reference, e))?;
            let mut w = content.blob_writer(&manifest.config.digest, false)?;
            w.write_all(&config).map_err(Error::internal)?;
            w.finish()?;
        }
        let config = oci::parse_config(&content.read_blob(&manifest.config.digest)?)?;
        let diff_ids = config.rootfs.diff_ids;
        if diff_ids.len() != manifest.layers.len() {
            return Err(Error::invalid(
                "the image's config and manifest disagree on its layers",
            ));
        }
        progress.send_modify(|p| {
            p.status = "pulling".into();
            p.layers = (manifest.layers.iter())
                .map(|l| LayerProgress::waiting(&l.digest, l.size.max(0) as u64))
                .collect();
        });
        let layers: Vec<_> = (manifest.layers.iter().zip(&diff_ids).enumerate())
            .map(|(i, (layer, diff_id))| {
                self.pull_layer(
                    &client, &reference, &auth, content, layer, diff_id, i, progress,
                )
            })
            .collect();
        futures::stream::iter(layers)
            .buffer_unordered(CONCURRENT_LAYERS)
            .try_collect::<Vec<()>>()
            .await?;
        let content = content.clone();
        let source = reference.whole();
        tokio::task::spawn_blocking(move || {
            oci::record(&content, &manifest_digest, &media_type, &source)
        })
        .await
        .map_err(Error::internal)?
    }

    #[allow(clippy::too_many_arguments)]
    async fn pull_layer(
        &self,
        client: &Client,
        reference: &Reference,
        auth: &RegistryAuth,
        content: &Arc<Content>,
        layer: &OciDescriptor,
        diff_id: &str,
        index: usize,
        progress: &watch::Sender<Progress>,
    ) -> Result<()> {
        let set = |state: &'static str, done: Option<u64>, resumed: Option<u64>| {
            progress.send_modify(|p| {
                let l = &mut p.layers[index];
                l.state = state;
                l.done = done.unwrap_or(l.done);
                l.resumed_from = resumed.unwrap_or(l.resumed_from);
            })
        };
        // Pulls of images that share a layer download it once, one after the other.
        let _writing = content.writing(&layer.digest).lock_owned().await;
        if content.has_blob(&layer.digest) && content.has_layer(diff_id) {
            set("exists", Some(layer.size.max(0) as u64), None);
            return Ok(());
        }
        if !content.has_blob(&layer.digest) {
            // Resumed from what an interrupted pull left.
            client
                .store_auth_if_needed(reference.resolve_registry(), auth)
                .await;
            let mut writer = content.blob_writer(&layer.digest, true)?;
            let stream = if writer.offset > 0 {
                let partial = client
                    .pull_blob_stream_partial(reference, layer, writer.offset, None)
                    .await
                    .map_err(|e| registry_error(reference, e))?;
                match partial {
                    oci_client::client::BlobResponse::Partial(s) => {
                        set("downloading", Some(writer.offset), Some(writer.offset));
                        s
                    }
                    // The registry sent it whole: start over.
                    oci_client::client::BlobResponse::Full(s) => {
                        writer = content.blob_writer(&layer.digest, false)?;
                        s
                    }
                }
            } else {
                client
                    .pull_blob_stream(reference, layer)
                    .await
                    .map_err(|e| registry_error(reference, e))?
            };
            let mut stream = stream.stream;
            let mut done = writer.offset;
            while let Some(chunk) = stream.next().await {
                // oci-client checks the digest of a whole blob as its stream ends.
                let chunk = chunk.map_err(|e| match e.to_string() {
                    m if m.to_lowercase().contains("digest") => {
                        Error::invalid(format!("digest mismatch for {}: {m}", layer.digest))
                    }
                    m => Error::Unavailable(format!("download of {} broke: {m}", layer.digest)),
                })?;
                done += chunk.len() as u64;
                if layer.size >= 0 && done > layer.size as u64 {
                    return Err(Error::invalid(format!(
                        "layer {} is larger than its manifest says",
                        layer.digest
                    )));
                }
                writer.write_all(&chunk).map_err(Error::internal)?;
                set("downloading", Some(done), None);
            }
            tokio::task::block_in_place(|| writer.finish())?;
        }
        set("extracting", None, None);
        let (content, blob, diff_id) = (content.clone(), layer.digest.clone(), diff_id.to_string());
        tokio::task::spawn_blocking(move || content.unpack_layer(&blob, Some(&diff_id)))
            .await
            .map_err(Error::internal)??;
        set("done", None, None);
        Ok(())
    }

    /// Pushes the image `oci` to `reference`: layers the registry lacks, its config, then its
    /// manifest.
    pub async fn push(
        &self,
        oci: &OciRecord,
        reference: &Reference,
        credentials: Option<&Credentials>,
        content: &Arc<Content>,
        progress: &watch::Sender<Progress>,
    ) -> Result<String> {
        let auth = self.auth(reference, credentials);
        let client = self.client();
        client
            .auth(reference, &auth, oci_client::RegistryOperation::Push)
            .await
            .map_err(|e| registry_error(reference, e))?;
        progress.send_modify(|p| {
            p.status = "pushing".into();
            p.layers = (oci.layers.iter())
                .map(|l| LayerProgress::waiting(&l.blob, l.size))
                .collect();
        });
        for (i, layer) in oci.layers.iter().enumerate() {
            let set = |state: &'static str, done: u64| {
                progress.send_modify(|p| {
                    p.layers[i].state = state;
                    p.layers[i].done = done;
                })
            };
            let exists = client
                .blob_exists(reference, &layer.blob)
                .await
                .map_err(|e| registry_error(reference, e))?;
            if exists {
                set("exists", layer.size);
                continue;
            }
            set("uploading", 0);
            let file = tokio::fs::File::open(content.blob_path(&layer.blob)?)
                .await
                .map_err(Error::internal)?;
            let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20)
                .map_err(oci_client::errors::OciDistributionError::from);
            client
                .push_blob_stream(reference, stream, &layer.blob, Some(layer.size))
                .await
                .map_err(|e| registry_error(reference, e))?;
            set("done", layer.size);
        }
        let config = content.read_blob(&oci.config)?;
        client
            .push_blob(reference, config, &oci.config)
            .await
            .map_err(|e| registry_error(reference, e))?;
        let manifest = content.read_blob(&oci.manifest)?;
        let content_type = oci.media_type.parse().map_err(Error::internal)?;
        client
            .push_manifest_raw(reference, manifest, content_type)
            .await
            .map_err(|e| registry_error(reference, e))?;
        progress.send_modify(|p| p.status = "done".into());
        Ok(oci.manifest.clone())
    }
}

fn check_digest(bytes: &[u8], expected: Option<&str>) -> Result<()> {
    match expected {
        Some(d) if sha256_of(bytes) != d => Err(Error::invalid(format!(
            "digest mismatch: the registry's manifest is not {d}"
        ))),
        _ => Ok(()),
    }
}

/// A manifest's media type, from its `mediaType` (or, lacking one, its shape).
fn media_type_of(bytes: &[u8]) -> Result<String> {
    #[derive(serde::Deserialize)]
    struct Head {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    let head: Head = serde_json::from_slice(bytes)
        .map_err(|e| Error::invalid(format!("a broken manifest: {e}")))?;
    Ok(head.media_type.unwrap_or_else(|| {
        if head.manifests.is_some() {
            OCI_IMAGE_INDEX_MEDIA_TYPE
        } else {
            OCI_IMAGE_MEDIA_TYPE
        }
        .into()
    }))
}

/// A registry's failure in the engine's terms: what it names is missing, refused, or the
/// registry could not be reached.
fn registry_error(reference: &Reference, e: oci_client::errors::OciDistributionError) -> Error {
    use oci_client::errors::OciDistributionError as E;
    let what = quoted(&reference.whole());
    match e {
        E::ImageManifestNotFoundError(_) => Error::not_found("image", reference.whole()),
        E::ServerError { code: 404, .. } => Error::not_found("image", reference.whole()),
        E::RegistryError { envelope, .. }
            if envelope.errors.iter().any(|e| {
                matches!(
                    e.code,
                    oci_client::errors::OciErrorCode::ManifestUnknown
                        | oci_client::errors::OciErrorCode::NameUnknown
                )
            }) =>
        {
            Error::not_found("image", reference.whole())
        }
        E::RequestError(r)
            if r.status()
                .is_some_and(|s| s.as_u16() == 401 || s.as_u16() == 403) =>
        {
            Error::invalid(format!("the registry refused access to {what}: {r}"))
        }
        E::ServerError {
            code: 401 | 403,
            url,
            ..
        } => Error::invalid(format!("the registry refused access to {what}: {url}")),
        E::AuthenticationFailure(m) | E::UnauthorizedError { url: m } => {
            Error::invalid(format!("the registry refused access to {what}: {m}"))
        }
        E::DigestError(d) => Error::invalid(format!("{what}: {d}")),
        e => Error::Unavailable(format!("registry error for {what}: {e}")),
    }
}
