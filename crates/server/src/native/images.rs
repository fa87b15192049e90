//! `/api/v1/images`: the images sandboxes are made from: list, get, pull and push (with
//! streamed progress), import and export of archives, delete, disk use and garbage
//! collection; and `/sandboxes/{id}/commit`.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cella_engine::Engine;
use cella_engine::image::ImageInfo;
use cella_engine::image::registry::{Credentials, Progress};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use crate::common::stream::{self, Named};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Json, Path};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterImage {
    pub name: String,
    /// Absolute path of a directory holding a root filesystem (with `bin/sh`), under an
    /// image root: the data dir's `images`, or one of the configured `images.roots`.
    #[schema(value_type = String)]
    pub path: PathBuf,
}

/// An image.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = ImageInfo)]
pub struct ImageView {
    pub name: String,
    /// `host`, `directory` or `oci`.
    pub kind: &'static str,
    /// The root filesystem directory (`/` for `host`, empty for an OCI image).
    #[schema(value_type = String)]
    pub path: PathBuf,
    /// Names that resolve to this image.
    pub aliases: Vec<String>,
    /// Seconds since the epoch; absent for built-in images.
    pub created_at: Option<u64>,
    /// The manifest's digest (OCI images).
    pub digest: Option<String>,
    /// Bytes of its layers as stored (OCI images).
    pub size: Option<u64>,
    /// The digests (diff ids) of its layers, bottom first.
    pub layers: Vec<String>,
    /// Where it came from: a registry reference, `import`, or `sandbox <id>`.
    pub source: Option<String>,
    /// Its config's defaults for execs.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
}

impl From<ImageInfo> for ImageView {
    fn from(i: ImageInfo) -> ImageView {
        let kind = match (&i.oci, i.name.as_str()) {
            (Some(_), _) => "oci",
            (None, cella_engine::image::HOST) => "host",
            (None, _) => "directory",
        };
        // Host and directory images have none of these: their fields read as absent.
        let oci = i.oci.unwrap_or_default();
        let some = |s: String| Some(s).filter(|s| !s.is_empty());
        ImageView {
            name: i.name,
            kind,
            path: i.path,
            aliases: i.aliases,
            created_at: i.created_at,
            size: (kind == "oci").then(|| oci.layers.iter().map(|l| l.size).sum()),
            layers: oci.layers.iter().map(|l| l.diff_id.clone()).collect(),
            digest: some(oci.manifest),
            source: some(oci.source),
            env: oci.env,
            working_dir: some(oci.working_dir),
            user: some(oci.user),
            entrypoint: oci.entrypoint,
            cmd: oci.cmd,
        }
    }
}

#[utoipa::path(get, path = "/images", operation_id = "list_images", tag = "images", responses((status = 200, body = Vec<ImageView>)))]
pub async fn list(State(engine): State<Arc<Engine>>) -> ApiResult<Json<Vec<ImageView>>> {
    let images = engine.images.list()?;
    Ok(Json(images.into_iter().map(ImageView::from).collect()))
}

#[utoipa::path(get, path = "/images/{name}", operation_id = "get_image", tag = "images",
    params(("name" = String, Path, description = "The image's name, a `/` in it sent as `%2F`")),
    responses((status = 200, body = ImageView), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(engine): State<Arc<Engine>>,
    Path(name): Path<String>,
) -> ApiResult<Json<ImageView>> {
    Ok(Json(engine.images.get(&name)?.into()))
}

#[utoipa::path(post, path = "/images", operation_id = "register_image", tag = "images", request_body = RegisterImage,
    responses((status = 201, body = ImageView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn register(
    State(engine): State<Arc<Engine>>,
    Json(req): Json<RegisterImage>,
) -> ApiResult<(StatusCode, Json<ImageView>)> {
    let image = engine.register_image(&req.name, &req.path)?;
    Ok((StatusCode::CREATED, Json(image.into())))
}

#[utoipa::path(delete, path = "/images/{name}", operation_id = "remove_image", tag = "images",
    params(("name" = String, Path, description = "The image's name, a `/` in it sent as `%2F`")),
    description = "Removes the image; layers no other image and no sandbox holds are removed with it.",
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn remove(
    State(engine): State<Arc<Engine>>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    tokio::task::spawn_blocking(move || engine.remove_image(&name))
        .await
        .map_err(cella_engine::Error::internal)??;
    Ok(StatusCode::NO_CONTENT)
}

/// A registry's credentials for one pull or push (else the configuration's, else none).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Transfer {
    /// A registry reference: `busybox`, `python:3.12-slim`, `127.0.0.1:5000/team/app:1`,
    /// `alpine@sha256:…`. For a push, where to (default: the image's own name).
    pub reference: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Answer with NDJSON progress events (or SSE), the last `done` or `error`, instead of
    /// the image once it is there.
    #[serde(default)]
    pub stream: bool,
}

impl Transfer {
    fn credentials(&self) -> Option<Credentials> {
        self.username.as_ref().map(|u| Credentials {
            username: u.clone(),
            password: self.password.clone().unwrap_or_default(),
        })
    }
}

/// One event of a streamed pull or push.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TransferEvent {
    Progress {
        #[schema(value_type = Object)]
        progress: Progress,
    },
    Done {
        image: Option<Box<ImageView>>,
        digest: Option<String>,
    },
    Error {
        code: String,
        message: String,
    },
}

impl Named for TransferEvent {
    fn name(&self) -> &'static str {
        match self {
            TransferEvent::Progress { .. } => "progress",
            TransferEvent::Done { .. } => "done",
            TransferEvent::Error { .. } => "error",
        }
    }
}

fn error_event(e: cella_engine::Error) -> TransferEvent {
    let e = ApiError::from(e);
    TransferEvent::Error {
        code: e.code.into(),
        message: e.message,
    }
}

#[utoipa::path(post, path = "/images/pull", operation_id = "pull_image", tag = "images", request_body = Transfer,
    description = "Pulls an image from its registry. Pulls of one reference at once share one download; \
                   a pull cut short is resumed by the next. With `stream`, answers NDJSON progress events.",
    responses((status = 201, body = ImageView), (status = 200, content_type = "application/x-ndjson", body = TransferEvent),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn pull(
    State(engine): State<Arc<Engine>>,
    headers: HeaderMap,
    Json(req): Json<Transfer>,
) -> ApiResult<Response> {
    let reference = req
        .reference
        .clone()
        .ok_or_else(|| cella_engine::Error::invalid("reference is required"))?;
    let mut pull = engine.pull(&reference, req.credentials())?;
    if !req.stream {
        let image = pull.finished().await?;
        return Ok((StatusCode::CREATED, Json(ImageView::from(image))).into_response());
    }
    let progress = pull.progress.clone();
    let outcome = async move {
        match pull.finished().await {
            Ok(image) => TransferEvent::Done {
                digest: image.oci.as_ref().map(|o| o.manifest.clone()),
                image: Some(Box::new(image.into())),
            },
            Err(e) => error_event(e),
        }
    };
    Ok(stream::respond(&headers, until_done(progress, outcome)))
}

/// Progress events until the outcome is known, then the outcome.
fn until_done(
    progress: watch::Receiver<Progress>,
    outcome: impl Future<Output = TransferEvent> + Send + 'static,
) -> impl futures::Stream<Item = TransferEvent> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let mut progress = progress;
        tokio::pin!(outcome);
        loop {
            let p = progress.borrow_and_update().clone();
            if tx
                .send(TransferEvent::Progress { progress: p })
                .await
                .is_err()
            {
                return;
            }
            let throttle = tokio::time::sleep(std::time::Duration::from_millis(100));
            tokio::select! {
                done = &mut outcome => {
                    let p = progress.borrow().clone();
                    let _ = tx.send(TransferEvent::Progress { progress: p }).await;
                    let _ = tx.send(done).await;
                    return;
                }
                _ = async { throttle.await; let _ = progress.changed().await; } => {}
            }
        }
    });
    stream::of_channel(rx)
}

#[utoipa::path(post, path = "/images/{name}/push", operation_id = "push_image", tag = "images", request_body = Transfer,
    params(("name" = String, Path, description = "The image's name, a `/` in it sent as `%2F`")),
    responses((status = 200, body = Object), (status = 200, content_type = "application/x-ndjson", body = TransferEvent),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn push(
    State(engine): State<Arc<Engine>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Json(req): Json<Transfer>,
) -> ApiResult<Response> {
    let (tx, rx) = watch::channel(Progress::default());
    let credentials = req.credentials();
    let reference = req.reference.clone();
    let pushing = async move {
        engine
            .push(&name, reference.as_deref(), credentials, &tx)
            .await
    };
    if !req.stream {
        let digest = pushing.await?;
        return Ok(Json(serde_json::json!({ "digest": digest })).into_response());
    }
    let outcome = async move {
        match pushing.await {
            Ok(digest) => TransferEvent::Done {
                image: None,
                digest: Some(digest),
            },
            Err(e) => error_event(e),
        }
    };
    Ok(stream::respond(&headers, until_done(rx, outcome)))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct ImportQuery {
    /// The name of the imported image (for an archive holding one); else the names the
    /// archive gives.
    pub name: Option<String>,
}

#[utoipa::path(post, path = "/images/import", operation_id = "import_image", tag = "images", params(ImportQuery),
    request_body(content = Vec<u8>, content_type = "application/x-tar"),
    description = "Imports a `docker save` tarball or an OCI image layout tarball, sent as the raw body.",
    responses((status = 201, body = Vec<ImageView>), (status = 400, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn import(
    State(engine): State<Arc<Engine>>,
    Query(q): Query<ImportQuery>,
    body: Body,
) -> ApiResult<(StatusCode, Json<Vec<ImageView>>)> {
    let temp = engine.image_temp_file()?;
    let mut file = tokio::fs::File::from_std(
        temp.file
            .try_clone()
            .map_err(cella_engine::Error::internal)?,
    );
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk =
            chunk.map_err(|e| cella_engine::Error::invalid(format!("the upload broke: {e}")))?;
        file.write_all(&chunk)
            .await
            .map_err(cella_engine::Error::internal)?;
    }
    file.flush().await.map_err(cella_engine::Error::internal)?;
    let images = engine.import(&temp.path, q.name.as_deref()).await?;
    Ok((
        StatusCode::CREATED,
        Json(images.into_iter().map(ImageView::from).collect()),
    ))
}

#[utoipa::path(get, path = "/images/{name}/export", operation_id = "export_image", tag = "images",
    params(("name" = String, Path, description = "The image's name, a `/` in it sent as `%2F`")),
    description = "The image as an OCI image layout tarball with a `docker save` manifest.json: \
                   `docker load`, `skopeo copy oci-archive:` and `cella image import` read it.",
    responses((status = 200, content_type = "application/x-tar"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn export(
    State(engine): State<Arc<Engine>>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let image = engine.portable_image(&name)?;
    let (reader, writer) = tokio::io::duplex(1 << 20);
    let writer = tokio_util::io::SyncIoBridge::new(writer);
    let file_name = format!(
        "{}.tar",
        image
            .name
            .rsplit('/')
            .next()
            .unwrap_or("image")
            .replace(':', "_")
    );
    tokio::spawn(async move {
        if let Err(e) = engine.export(&image.name, writer).await {
            tracing::warn!(image = %image.name, error = %e, "export failed");
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-tar".to_string()),
            (
                header::CONTENT_DISPOSITION,
                crate::common::transfer::content_disposition(&file_name),
            ),
        ],
        Body::from_stream(tokio_util::io::ReaderStream::new(reader)),
    )
        .into_response())
}

/// Disk used by OCI images.
#[derive(Serialize, utoipa::ToSchema)]
pub struct UsageView {
    /// Layers, configs and manifests as stored (compressed layers as pulled).
    pub blobs_bytes: u64,
    pub blobs: usize,
    /// Layers unpacked, each once however many images share it.
    pub layers_bytes: u64,
    pub layers: usize,
}

#[utoipa::path(get, path = "/images/usage", operation_id = "image_disk_usage", tag = "images",
    responses((status = 200, body = UsageView)))]
pub async fn usage(State(engine): State<Arc<Engine>>) -> ApiResult<Json<UsageView>> {
    let u = tokio::task::spawn_blocking(move || engine.image_usage())
        .await
        .map_err(cella_engine::Error::internal)?;
    Ok(Json(UsageView {
        blobs_bytes: u.blobs_bytes,
        blobs: u.blobs,
        layers_bytes: u.layers_bytes,
        layers: u.layers,
    }))
}

/// What a garbage collection removed.
#[derive(Serialize, utoipa::ToSchema)]
pub struct PruneView {
    pub blobs: usize,
    pub layers: usize,
}

#[utoipa::path(post, path = "/images/prune", operation_id = "prune_images", tag = "images",
    description = "Removes the blobs and layers no image and no sandbox holds (also done after each delete).",
    responses((status = 200, body = PruneView)))]
pub async fn prune(State(engine): State<Arc<Engine>>) -> ApiResult<Json<PruneView>> {
    let c = tokio::task::spawn_blocking(move || engine.collect_garbage())
        .await
        .map_err(cella_engine::Error::internal)?;
    Ok(Json(PruneView {
        blobs: c.blobs,
        layers: c.layers,
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Commit {
    /// The new image's name (`team/app:v2`).
    pub name: String,
}

#[utoipa::path(post, path = "/sandboxes/{id}/commit", operation_id = "commit_sandbox", tag = "images", request_body = Commit,
    description = "Makes an image of a running sandbox: its writable layer, taken while the sandbox is frozen, \
                   becomes a new layer on top of its image.",
    responses((status = 201, body = ImageView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn commit(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
    Json(req): Json<Commit>,
) -> ApiResult<(StatusCode, Json<ImageView>)> {
    let image = engine.commit(&id, &req.name).await?;
    Ok((StatusCode::CREATED, Json(image.into())))
}
