//! `/api/v1/sandboxes/{id}/files`: read, write, upload, download, list, stat, mkdir, move and
//! remove. Paths are sandbox paths (relative ones are relative to `/home/user`); every host-side
//! operation goes through the jail's scoped resolver, so no path reaches outside the sandbox.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine as _;
use cella_engine::FileEntry as Entry;
use cella_engine::FileKind;
use cella_engine::{Engine, Error, Sandbox};
use serde::{Deserialize, Serialize};

use crate::common::transfer::{self, ContentType, parse_mode};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Json, Multipart, Path, Query};

/// A file, directory or link in a sandbox.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = FileEntry)]
pub struct FileEntryView {
    /// The path inside the sandbox, absolute.
    pub path: String,
    pub name: String,
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: &'static str,
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch.
    pub mtime: i64,
    /// Where a symlink points (not followed).
    pub target: Option<String>,
}

impl From<Entry> for FileEntryView {
    fn from(e: Entry) -> FileEntryView {
        FileEntryView {
            path: e.path,
            name: e.name,
            kind: match e.kind {
                FileKind::File => "file",
                FileKind::Dir => "dir",
                FileKind::Symlink => "symlink",
                FileKind::Other => "other",
            },
            size: e.size,
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            mtime: e.mtime,
            target: e.target,
        }
    }
}

fn views(entries: Vec<Entry>) -> Vec<FileEntryView> {
    entries.into_iter().map(FileEntryView::from).collect()
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PathQuery {
    /// A path in the sandbox.
    path: String,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// A directory in the sandbox.
    path: String,
    /// How many levels to descend (default 1, at most 32). A listing of more than 100000
    /// entries is refused (413).
    depth: Option<u32>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PutQuery {
    /// A path in the sandbox.
    path: String,
    /// The file mode, octal (default 644).
    #[param(pattern = r"^(0o)?[0-7]{1,4}$")]
    mode: Option<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RemoveQuery {
    /// A path in the sandbox.
    path: String,
    /// Remove a directory and everything in it.
    #[serde(default)]
    recursive: bool,
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    #[serde(rename = "utf-8", alias = "utf8", alias = "text")]
    Utf8,
    Base64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct FileContent {
    pub path: String,
    pub size: u64,
    /// `utf-8` when the file is valid UTF-8, else `base64`.
    pub encoding: Encoding,
    pub content: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteFile {
    pub path: String,
    pub content: String,
    #[serde(default = "utf8")]
    pub encoding: Encoding,
    /// Octal file mode (default 644).
    #[schema(pattern = r"^(0o)?[0-7]{1,4}$")]
    pub mode: Option<String>,
    /// Create missing parent directories (default true).
    #[serde(default = "yes")]
    pub create_dirs: bool,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MakeDir {
    pub path: String,
    #[serde(default = "yes")]
    pub parents: bool,
    /// Octal mode (default 755).
    #[schema(pattern = r"^(0o)?[0-7]{1,4}$")]
    pub mode: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveFile {
    pub source: String,
    pub destination: String,
}

fn utf8() -> Encoding {
    Encoding::Utf8
}

fn yes() -> bool {
    true
}

fn sandbox(engine: &Engine, id: &str) -> ApiResult<Arc<Sandbox>> {
    Ok(engine.get(id)?)
}

#[utoipa::path(get, path = "/sandboxes/{id}/files/read", operation_id = "read_file", tag = "files", params(PathQuery),
    responses((status = 200, body = FileContent), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn read(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
    Query(q): Query<PathQuery>,
) -> ApiResult<Json<FileContent>> {
    let sandbox = sandbox(&engine, &id)?;
    let max = engine.config.limits.max_read_bytes;
    let data = sandbox
        .on_path(&q.path, move |fs, p| fs.read(p, max))
        .await?;
    let size = data.len() as u64;
    let (encoding, content) = match String::from_utf8(data) {
        Ok(text) => (Encoding::Utf8, text),
        Err(e) => (
            Encoding::Base64,
            base64::engine::general_purpose::STANDARD.encode(e.as_bytes()),
        ),
    };
    Ok(Json(FileContent {
        path: sandbox.absolute(&q.path),
        size,
        encoding,
        content,
    }))
}

#[utoipa::path(post, path = "/sandboxes/{id}/files/write", operation_id = "write_file", tag = "files", request_body = WriteFile,
    responses((status = 200, body = FileEntryView), (status = 400, body = ErrorBody), (status = 507, body = ErrorBody)))]
pub async fn write(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
    Json(req): Json<WriteFile>,
) -> ApiResult<Json<FileEntryView>> {
    let sandbox = sandbox(&engine, &id)?;
    let data = match req.encoding {
        Encoding::Utf8 => req.content.into_bytes(),
        Encoding::Base64 => base64::engine::general_purpose::STANDARD
            .decode(req.content.as_bytes())
            .map_err(|e| ApiError::bad_request(format!("content is not valid base64: {e}")))?,
    };
    let mode = parse_mode(req.mode.as_deref(), 0o644)?;
    let parents = req.create_dirs;
    Ok(Json(
        sandbox
            .on_path(&req.path, move |fs, p| {
                fs.write(p, &data, mode, parents)?;
                fs.stat(p)
            })
            .await?
            .into(),
    ))
}

#[utoipa::path(put, path = "/sandboxes/{id}/files", operation_id = "put_file", tag = "files", params(PutQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    description = "Writes the raw request body to `path` (parents are created). The file takes the place \
                   of what was there only once the whole body has come: a broken upload changes nothing.",
    responses((status = 200, body = FileEntryView), (status = 507, body = ErrorBody)))]
pub async fn put_raw(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
    Query(q): Query<PutQuery>,
    body: Body,
) -> ApiResult<Json<FileEntryView>> {
    let sandbox = sandbox(&engine, &id)?;
    let mode = parse_mode(q.mode.as_deref(), 0o644)?;
    Ok(Json(
        transfer::write_stream(&sandbox, &q.path, mode, body.into_data_stream())
            .await?
            .into(),
    ))
}

#[utoipa::path(post, path = "/sandboxes/{id}/files/upload", operation_id = "upload_files", tag = "files",
    request_body(content = String, content_type = "multipart/form-data",
        description = "Fields: `file` (the content, with a file name) and optional `path` (the destination; a \
                       directory ending in `/`, or a file). Without `path` the file goes to the home directory."),
    responses((status = 201, body = Vec<FileEntryView>), (status = 400, body = ErrorBody)))]
pub async fn upload(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
    Multipart(form): Multipart,
) -> ApiResult<(StatusCode, Json<Vec<FileEntryView>>)> {
    let sandbox = sandbox(&engine, &id)?;
    let written = transfer::write_form(&sandbox, form).await?;
    Ok((StatusCode::CREATED, Json(views(written))))
}

#[utoipa::path(get, path = "/sandboxes/{id}/files", operation_id = "download_file", tag = "files", params(PathQuery),
    description = "Downloads a file as raw bytes.",
    responses((status = 200, content_type = "application/octet-stream"), (status = 404, body = ErrorBody)))]
pub async fn download(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
    Query(q): Query<PathQuery>,
) -> ApiResult<Response> {
    let sandbox = sandbox(&engine, &id)?;
    Ok(transfer::download(&sandbox, &q.path, ContentType::Binary).await?)
}

/// The most entries one listing answers with.
const MAX_LISTED: usize = 100_000;

#[utoipa::path(get, path = "/sandboxes/{id}/files/list", operation_id = "list_files", tag = "files", params(ListQuery),
    responses((status = 200, body = Vec<FileEntryView>), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn list(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<FileEntryView>>> {
    let sandbox = sandbox(&engine, &id)?;
    let depth = q.depth.unwrap_or(1).clamp(1, 32);
    // One more than is answered, to tell a full listing from a cut one.
    let entries = sandbox
        .on_path(&q.path, move |fs, p| fs.list(p, depth, MAX_LISTED + 1))
        .await?;
    if entries.len() > MAX_LISTED {
        return Err(Error::TooLarge(format!(
            "{}: more than {MAX_LISTED} entries; list fewer levels or a directory further down",
            sandbox.absolute(&q.path)
        ))
        .into());
    }
    Ok(Json(views(entries)))
}

#[utoipa::path(get, path = "/sandboxes/{id}/files/stat", operation_id = "stat_file", tag = "files", params(PathQuery),
    responses((status = 200, body = FileEntryView), (status = 404, body = ErrorBody)))]
pub async fn stat(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
    Query(q): Query<PathQuery>,
) -> ApiResult<Json<FileEntryView>> {
    let sandbox = sandbox(&engine, &id)?;
    Ok(Json(
        sandbox.on_path(&q.path, |fs, p| fs.stat(p)).await?.into(),
    ))
}

#[utoipa::path(post, path = "/sandboxes/{id}/files/mkdir", operation_id = "make_directory", tag = "files", request_body = MakeDir,
    responses((status = 200, body = FileEntryView), (status = 409, body = ErrorBody)))]
pub async fn mkdir(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
    Json(req): Json<MakeDir>,
) -> ApiResult<Json<FileEntryView>> {
    let sandbox = sandbox(&engine, &id)?;
    let mode = parse_mode(req.mode.as_deref(), 0o755)?;
    let parents = req.parents;
    Ok(Json(
        sandbox
            .on_path(&req.path, move |fs, p| {
                fs.mkdir(p, parents, mode)?;
                fs.stat(p)
            })
            .await?
            .into(),
    ))
}

#[utoipa::path(post, path = "/sandboxes/{id}/files/move", operation_id = "move_file", tag = "files", request_body = MoveFile,
    responses((status = 200, body = FileEntryView), (status = 404, body = ErrorBody)))]
pub async fn rename(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
    Json(req): Json<MoveFile>,
) -> ApiResult<Json<FileEntryView>> {
    let sandbox = sandbox(&engine, &id)?;
    let moved = sandbox.rename(&req.source, &req.destination).await?;
    Ok(Json(moved.into()))
}

#[utoipa::path(delete, path = "/sandboxes/{id}/files", operation_id = "remove_file", tag = "files", params(RemoveQuery),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn remove(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> ApiResult<StatusCode> {
    let sandbox = sandbox(&engine, &id)?;
    let recursive = q.recursive;
    sandbox
        .on_path(&q.path, move |fs, p| fs.remove(p, recursive))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
