//! `/sandboxes/{id}/files` (a file's content as JSON, utf-8 or base64) and `filesystem`
//! (list, stat, mkdir, move, remove, multipart upload, download). Paths are sandbox paths;
//! relative ones are relative to `/home/user`.

use std::time::{Duration, UNIX_EPOCH};

use axum::extract::{Multipart, Path, State};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use cella_engine::{Error, FileEntry, FileKind, SANDBOX_HOME};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Answer, Body, Failure, Query};
use crate::AppState;
use crate::common::time::rfc3339;
use crate::common::transfer::{self, ContentType, parse_mode};

/// The most entries one listing answers with.
const MOST_LISTED: usize = 100_000;

fn view(e: &FileEntry) -> Value {
    let kind = match e.kind {
        FileKind::File => "file",
        FileKind::Dir => "directory",
        FileKind::Symlink => "symlink",
        FileKind::Other => "other",
    };
    let modified = UNIX_EPOCH
        + Duration::from_secs(e.mtime.max(0) as u64)
        + Duration::from_nanos(e.mtime_nsec.max(0) as u64);
    json!({
        "name": e.name, "path": e.path, "type": kind, "isDirectory": e.kind == FileKind::Dir,
        "size": e.size, "mode": format!("{:04o}", e.mode), "modifiedTime": rfc3339(modified),
        "uid": e.uid, "gid": e.gid,
    })
}

#[derive(Deserialize)]
pub struct PathQuery {
    path: String,
}

pub async fn read(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<PathQuery>,
) -> Answer {
    let max = state.engine.config.limits.max_read_bytes;
    let data = state
        .engine
        .get(&id)?
        .on_path(&q.path, move |fs, p| fs.read(p, max))
        .await?;
    let size = data.len();
    let (encoding, content) = match String::from_utf8(data) {
        Ok(text) => ("utf-8", text),
        Err(e) => ("base64", B64.encode(e.as_bytes())),
    };
    Ok(axum::Json(json!({
        "path": q.path, "content": content, "encoding": encoding, "size": size,
    })))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WriteBody {
    path: String,
    content: String,
    mode: Option<String>,
    encoding: Option<String>,
    create_dir: Option<bool>,
}

pub async fn write(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Body(body): Body<WriteBody>,
) -> Answer {
    let data = match body.encoding.as_deref().unwrap_or("utf-8") {
        "utf-8" | "utf8" | "text" => body.content.into_bytes(),
        "base64" => B64
            .decode(body.content.as_bytes())
            .map_err(|e| Failure::invalid(format!("content is not valid base64: {e}")))?,
        other => {
            return Err(Failure::invalid(format!(
                "unknown encoding {other:?}: utf-8 or base64"
            )));
        }
    };
    let mode = parse_mode(body.mode.as_deref(), 0o644)?;
    let parents = body.create_dir.unwrap_or(true);
    let sandbox = state.engine.get(&id)?;
    let written = sandbox
        .on_path(&body.path, move |fs, p| {
            fs.write(p, &data, mode, parents)?;
            fs.stat(p)
        })
        .await?;
    Ok(axum::Json(view(&written)))
}

#[derive(Deserialize)]
pub struct ListQuery {
    path: Option<String>,
    depth: Option<u32>,
}

pub async fn list(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<ListQuery>,
) -> Answer {
    let path = q.path.unwrap_or_else(|| SANDBOX_HOME.into());
    let depth = q.depth.unwrap_or(1).clamp(1, 32);
    let entries = state
        .engine
        .get(&id)?
        .on_path(&path, move |fs, p| fs.list(p, depth, MOST_LISTED + 1))
        .await?;
    if entries.len() > MOST_LISTED {
        return Err(Error::TooLarge(format!(
            "{path}: more than {MOST_LISTED} entries; list fewer levels"
        ))
        .into());
    }
    Ok(axum::Json(entries.iter().map(view).collect()))
}

pub async fn stat(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<PathQuery>,
) -> Answer {
    Ok(axum::Json(view(
        &state
            .engine
            .get(&id)?
            .on_path(&q.path, |fs, p| fs.stat(p))
            .await?,
    )))
}

#[derive(Deserialize)]
pub struct MkdirBody {
    path: String,
    parents: Option<bool>,
    mode: Option<String>,
}

pub async fn mkdir(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Body(body): Body<MkdirBody>,
) -> Answer {
    let mode = parse_mode(body.mode.as_deref(), 0o755)?;
    let parents = body.parents.unwrap_or(true);
    let sandbox = state.engine.get(&id)?;
    let made = sandbox
        .on_path(&body.path, move |fs, p| {
            fs.mkdir(p, parents, mode)?;
            fs.stat(p)
        })
        .await?;
    Ok(axum::Json(view(&made)))
}

#[derive(Deserialize)]
pub struct MoveBody {
    source: String,
    destination: String,
}

pub async fn rename(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Body(body): Body<MoveBody>,
) -> Answer {
    let sandbox = state.engine.get(&id)?;
    let moved = sandbox.rename(&body.source, &body.destination).await?;
    Ok(axum::Json(view(&moved)))
}

#[derive(Deserialize)]
pub struct RemoveBody {
    path: String,
}

/// Removes a file, or a directory with all it holds.
pub async fn remove(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Body(body): Body<RemoveBody>,
) -> Answer {
    state
        .engine
        .get(&id)?
        .on_path(&body.path, |fs, p| fs.remove(p, true))
        .await?;
    Ok(axum::Json(json!({ "path": body.path, "removed": true })))
}

/// A multipart form: `file` (the content) and `path` (where it goes).
pub async fn upload(
    State(state): State<AppState>,
    Path(id): Path<String>,
    form: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Answer {
    let form = form.map_err(|e| Failure::invalid(e.body_text()))?;
    let sandbox = state.engine.get(&id)?;
    let written = transfer::write_form(&sandbox, form).await?;
    match written.as_slice() {
        [one] => Ok(axum::Json(view(one))),
        many => Ok(axum::Json(many.iter().map(view).collect())),
    }
}

pub async fn download(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<PathQuery>,
) -> Response {
    let answer = async {
        let sandbox = state.engine.get(&id)?;
        Ok::<_, Failure>(transfer::download(&sandbox, &q.path, ContentType::Guessed).await?)
    };
    answer.await.into_response()
}
