//! Image archives: `docker save` tarballs (a `manifest.json` naming configs and layers) and
//! OCI image layouts (`index.json` and `blobs/`), imported into the content store and
//! exported as one tarball that both kinds of tool read.
//!
//! An archive is untrusted: only the files its JSON names are read, from their places in the
//! tarball, and every blob is hashed on its way into the store (an OCI layout's against the
//! digest it is named by).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use oci_client::manifest::{OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE, OciImageIndex};
use serde::{Deserialize, Serialize};

use super::content::{Content, hex_of};
use super::oci;
use crate::error::{Error, Result, quoted};
use crate::store::{LayerRecord, OciRecord};

/// Manifests, configs and index files larger than this are refused.
const MAX_JSON_BYTES: u64 = 16 << 20;
const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";

#[derive(Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
struct SavedImage {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Where each file of a tarball lies in it.
struct Archive {
    file: File,
    entries: HashMap<String, (u64, u64)>,
}

impl Archive {
    fn open(path: &Path) -> Result<Archive> {
        let file = File::open(path).map_err(Error::internal)?;
        let mut entries = HashMap::new();
        let mut tar = tar::Archive::new(file.try_clone().map_err(Error::internal)?);
        for entry in tar.entries().map_err(broken)? {
            let entry = entry.map_err(broken)?;
            if entry.header().entry_type().is_file() {
                let name = entry.path().map_err(broken)?;
                let name = name.to_string_lossy();
                let name = name.trim_start_matches("./").to_string();
                entries.insert(name, (entry.raw_file_position(), entry.size()));
            }
        }
        Ok(Archive { file, entries })
    }

    fn reader(&self, name: &str) -> Result<(impl Read, u64)> {
        let &(offset, size) = self
            .entries
            .get(name.trim_start_matches("./"))
            .ok_or_else(|| Error::invalid(format!("the archive lacks {}", quoted(name))))?;
        let mut file = self.file.try_clone().map_err(Error::internal)?;
        file.seek(SeekFrom::Start(offset))
            .map_err(Error::internal)?;
        Ok((file.take(size), size))
    }

    fn has(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    fn json(&self, name: &str) -> Result<Vec<u8>> {
        let (mut r, size) = self.reader(name)?;
        if size > MAX_JSON_BYTES {
            return Err(Error::invalid(format!("{} is too large", quoted(name))));
        }
        let mut out = Vec::with_capacity(size as usize);
        r.read_to_end(&mut out).map_err(Error::internal)?;
        Ok(out)
    }

    /// Copies the file `name` into the store as a blob; returns its digest, which must be
    /// `expected` if given.
    fn copy_blob(&self, content: &Content, name: &str, expected: Option<&str>) -> Result<String> {
        let (mut r, _) = self.reader(name)?;
        let mut blob = content.new_blob()?;
        io::copy(&mut r, &mut blob).map_err(Error::internal)?;
        let (digest, _) = blob.finish()?;
        if let Some(expected) = expected.filter(|e| **e != digest) {
            return Err(Error::invalid(format!(
                "digest mismatch: {} is {digest}, not {expected}",
                quoted(name)
            )));
        }
        Ok(digest)
    }

    /// The blob at `blobs/sha256/<hex>`, copied into the store and verified.
    fn copy_named_blob(&self, content: &Content, digest: &str) -> Result<String> {
        self.copy_blob(
            content,
            &format!("blobs/sha256/{}", hex_of(digest)?),
            Some(digest),
        )
    }
}

fn broken(e: io::Error) -> Error {
    Error::invalid(format!("not a readable tar archive: {e}"))
}

/// Imports every image of the archive at `path`; `name` names the image of an archive that
/// holds one (or none by name). Returns the images' names and records.
pub fn import(
    content: &Content,
    path: &Path,
    name: Option<&str>,
) -> Result<Vec<(String, OciRecord)>> {
    let archive = Archive::open(path)?;
    let source = "import".to_string();
    let found = if archive.has("manifest.json") {
        import_saved(content, &archive)?
    } else if archive.has("index.json") {
        import_layout(content, &archive)?
    } else {
        return Err(Error::invalid(
            "not an image archive: it has neither a manifest.json (docker save) nor an index.json (OCI layout)",
        ));
    };
    if found.is_empty() {
        return Err(Error::invalid("the archive holds no image"));
    }
    if name.is_some() && found.len() > 1 {
        return Err(Error::invalid(
            "the archive holds several images: import it without a name, each under its own",
        ));
    }
    let mut out = Vec::new();
    for (names, manifest) in found {
        let names = match name {
            Some(n) => vec![n.to_string()],
            None if names.is_empty() => {
                return Err(Error::invalid(
                    "an image in the archive has no name: give one",
                ));
            }
            None => names,
        };
        let record = oci::record(content, &manifest, OCI_IMAGE_MEDIA_TYPE, &source)?;
        out.extend(names.into_iter().map(|n| (n, record.clone())));
    }
    Ok(out)
}

/// `docker save`: configs and layers by path, layers uncompressed (or, from newer Dockers, as
/// OCI blobs).
fn import_saved(content: &Content, archive: &Archive) -> Result<Vec<(Vec<String>, String)>> {
    let saved: Vec<SavedImage> = serde_json::from_slice(&archive.json("manifest.json")?)
        .map_err(|e| Error::invalid(format!("a broken manifest.json: {e}")))?;
    let mut out = Vec::new();
    for image in saved {
        let config = archive.json(&image.config)?;
        let diff_ids = oci::parse_config(&config)?.rootfs.diff_ids;
        if diff_ids.len() != image.layers.len() {
            return Err(Error::invalid(
                "the image's config and manifest disagree on its layers",
            ));
        }
        let mut layers = Vec::new();
        for (path, diff_id) in image.layers.iter().zip(&diff_ids) {
            let blob = archive.copy_blob(content, path, None)?;
            layers.push(layer_record(content, blob, diff_id)?);
        }
        let manifest = oci::write_manifest(content, &config, &layers)?;
        out.push((image.repo_tags.unwrap_or_default(), manifest));
    }
    Ok(out)
}

/// An OCI image layout: `index.json` names manifests (or nested indexes) by digest.
fn import_layout(content: &Content, archive: &Archive) -> Result<Vec<(Vec<String>, String)>> {
    let index: OciImageIndex = serde_json::from_slice(&archive.json("index.json")?)
        .map_err(|e| Error::invalid(format!("a broken index.json: {e}")))?;
    let mut out = Vec::new();
    for entry in &index.manifests {
        let annotations = entry.annotations.clone().unwrap_or_default();
        let name = annotations
            .get(CONTAINERD_NAME)
            .or_else(|| annotations.get(REF_NAME).filter(|n| n.contains([':', '/'])));
        let mut digest = entry.digest.clone();
        if entry.media_type == OCI_IMAGE_INDEX_MEDIA_TYPE {
            let nested: OciImageIndex = serde_json::from_slice(
                &archive.json(&format!("blobs/sha256/{}", hex_of(&digest)?))?,
            )
            .map_err(|e| Error::invalid(format!("a broken image index: {e}")))?;
            digest =
                oci_client::client::linux_amd64_resolver(&nested.manifests).ok_or_else(|| {
                    Error::invalid("an index in the archive has no linux/amd64 image")
                })?;
        }
        archive.copy_named_blob(content, &digest)?;
        let manifest = oci::parse_manifest(&content.read_blob(&digest)?)?;
        archive.copy_named_blob(content, &manifest.config.digest)?;
        let config = oci::parse_config(&content.read_blob(&manifest.config.digest)?)?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(Error::invalid(
                "the image's config and manifest disagree on its layers",
            ));
        }
        for (layer, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
            archive.copy_named_blob(content, &layer.digest)?;
            content.unpack_layer(&layer.digest, Some(diff_id))?;
        }
        out.push((name.cloned().into_iter().collect(), digest));
    }
    Ok(out)
}

fn layer_record(content: &Content, blob: String, diff_id: &str) -> Result<LayerRecord> {
    let path = content.blob_path(&blob)?;
    let mut head = [0u8; 4];
    let mut file = File::open(&path).map_err(Error::internal)?;
    let n = file.read(&mut head).map_err(Error::internal)?;
    let size = file.metadata().map_err(Error::internal)?.len();
    content.unpack_layer(&blob, Some(diff_id))?;
    Ok(LayerRecord {
        media_type: oci::layer_media_type(&head[..n]).into(),
        blob,
        size,
        diff_id: diff_id.to_string(),
    })
}

/// Writes the image `oci`, named `name`, as an OCI image layout with a `docker save`
/// `manifest.json` beside it.
pub fn export(content: &Content, name: &str, oci: &OciRecord, out: impl Write) -> Result<()> {
    if oci.on_host {
        return Err(Error::invalid(format!(
            "image {} lies on the host's root (a commit of a host sandbox): it cannot leave this machine",
            quoted(name)
        )));
    }
    let mut tar = tar::Builder::new(out);
    let mut add = |path: &str, size: u64, data: &mut dyn Read| -> Result<()> {
        let mut header = tar::Header::new_ustar();
        header.set_size(size);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, path, data)
            .map_err(Error::internal)
    };
    add(
        "oci-layout",
        30,
        &mut &br#"{"imageLayoutVersion":"1.0.0"}"#[..],
    )?;
    let blob_name = |d: &str| hex_of(d).map(|h| format!("blobs/sha256/{h}"));
    let manifest = content.read_blob(&oci.manifest)?;
    let mut blobs = vec![oci.manifest.clone(), oci.config.clone()];
    blobs.extend(oci.layers.iter().map(|l| l.blob.clone()));
    for digest in &blobs {
        let path = content.blob_path(digest)?;
        let mut file = File::open(&path).map_err(Error::internal)?;
        let size = file.metadata().map_err(Error::internal)?.len();
        add(&blob_name(digest)?, size, &mut file)?;
    }
    let tag = name.rsplit_once(':').map_or("latest", |(_, t)| t);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_IMAGE_INDEX_MEDIA_TYPE,
        "manifests": [{
            "mediaType": oci.media_type,
            "digest": oci.manifest,
            "size": manifest.len(),
            "annotations": { REF_NAME: tag, CONTAINERD_NAME: name },
        }],
    });
    let index = serde_json::to_vec(&index).map_err(Error::internal)?;
    add("index.json", index.len() as u64, &mut &index[..])?;
    let saved = vec![SavedImage {
        config: blob_name(&oci.config)?,
        repo_tags: Some(vec![name.to_string()]),
        layers: oci
            .layers
            .iter()
            .map(|l| blob_name(&l.blob))
            .collect::<Result<_>>()?,
    }];
    let saved = serde_json::to_vec(&saved).map_err(Error::internal)?;
    add("manifest.json", saved.len() as u64, &mut &saved[..])?;
    tar.into_inner()
        .map_err(Error::internal)?
        .flush()
        .map_err(Error::internal)
}
