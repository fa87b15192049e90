//! OCI and Docker manifests and configs: read into an image record, and written for the
//! images cella makes itself (commits, `docker save` imports).

use oci_client::config::{ConfigFile, History};
use oci_client::manifest::{
    IMAGE_DOCKER_LAYER_GZIP_MEDIA_TYPE, IMAGE_DOCKER_LAYER_TAR_MEDIA_TYPE,
    IMAGE_LAYER_GZIP_MEDIA_TYPE, IMAGE_LAYER_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageManifest,
};

use super::content::Content;
use crate::error::{Error, Result};
use crate::store::{LayerRecord, OciRecord};

pub const IMAGE_LAYER_ZSTD_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// Manifest media types an image (not an index) may have.
pub const MANIFEST_TYPES: &[&str] = &[OCI_IMAGE_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE];

const LAYER_TYPES: &[&str] = &[
    IMAGE_LAYER_MEDIA_TYPE,
    IMAGE_LAYER_GZIP_MEDIA_TYPE,
    IMAGE_LAYER_ZSTD_MEDIA_TYPE,
    IMAGE_DOCKER_LAYER_TAR_MEDIA_TYPE,
    IMAGE_DOCKER_LAYER_GZIP_MEDIA_TYPE,
];

pub fn parse_manifest(bytes: &[u8]) -> Result<OciImageManifest> {
    let manifest: OciImageManifest = serde_json::from_slice(bytes)
        .map_err(|e| Error::invalid(format!("not an image manifest: {e}")))?;
    if let Some(bad) = manifest
        .layers
        .iter()
        .find(|l| !LAYER_TYPES.contains(&l.media_type.as_str()))
    {
        return Err(Error::invalid(format!(
            "layer {} has media type {:?}, which is not a filesystem layer",
            bad.digest, bad.media_type
        )));
    }
    Ok(manifest)
}

pub fn parse_config(bytes: &[u8]) -> Result<ConfigFile> {
    serde_json::from_slice(bytes).map_err(|e| Error::invalid(format!("not an image config: {e}")))
}

/// The record of an image whose manifest, config and layer blobs are all in the store and
/// whose layers are unpacked.
pub fn record(
    content: &Content,
    manifest_digest: &str,
    media_type: &str,
    source: &str,
) -> Result<OciRecord> {
    let manifest = parse_manifest(&content.read_blob(manifest_digest)?)?;
    let config = parse_config(&content.read_blob(&manifest.config.digest)?)?;
    let diff_ids = &config.rootfs.diff_ids;
    if diff_ids.len() != manifest.layers.len() {
        return Err(Error::invalid(format!(
            "the manifest has {} layers and the config {} diff ids",
            manifest.layers.len(),
            diff_ids.len()
        )));
    }
    let layers = manifest
        .layers
        .iter()
        .zip(diff_ids)
        .map(|(l, diff_id)| LayerRecord {
            blob: l.digest.clone(),
            size: l.size.max(0) as u64,
            media_type: l.media_type.clone(),
            diff_id: diff_id.clone(),
        })
        .collect();
    let c = config.config.unwrap_or_default();
    Ok(OciRecord {
        manifest: manifest_digest.to_string(),
        media_type: media_type.to_string(),
        config: manifest.config.digest.clone(),
        layers,
        on_host: false,
        env: c.env.unwrap_or_default(),
        working_dir: c.working_dir.unwrap_or_default(),
        user: c.user.unwrap_or_default(),
        entrypoint: c.entrypoint.unwrap_or_default(),
        cmd: c.cmd.unwrap_or_default(),
        source: source.to_string(),
    })
}

/// Stores `config` and an OCI manifest naming it and `layers` (bottom first); returns the
/// manifest's digest.
pub fn write_manifest(content: &Content, config: &[u8], layers: &[LayerRecord]) -> Result<String> {
    let manifest = OciImageManifest {
        schema_version: 2,
        media_type: Some(OCI_IMAGE_MEDIA_TYPE.into()),
        config: OciDescriptor {
            media_type: oci_client::manifest::IMAGE_CONFIG_MEDIA_TYPE.into(),
            digest: content.put_blob(config)?,
            size: config.len() as i64,
            ..Default::default()
        },
        layers: layers
            .iter()
            .map(|l| OciDescriptor {
                media_type: l.media_type.clone(),
                digest: l.blob.clone(),
                size: l.size as i64,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    content.put_blob(&serde_json::to_vec(&manifest).map_err(Error::internal)?)
}

/// The OCI media type of a layer blob, told by its first bytes.
pub fn layer_media_type(head: &[u8]) -> &'static str {
    if head.starts_with(&[0x1f, 0x8b]) {
        IMAGE_LAYER_GZIP_MEDIA_TYPE
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        IMAGE_LAYER_ZSTD_MEDIA_TYPE
    } else {
        IMAGE_LAYER_MEDIA_TYPE
    }
}

/// `config` with one more layer on top, recorded in its history.
pub fn with_layer(mut config: ConfigFile, diff_id: &str, created_by: &str) -> ConfigFile {
    config.rootfs.diff_ids.push(diff_id.to_string());
    config.history.get_or_insert_with(Vec::new).push(History {
        created: Some(chrono::Utc::now()),
        created_by: Some(created_by.to_string()),
        ..Default::default()
    });
    config.created = Some(chrono::Utc::now());
    config
}
