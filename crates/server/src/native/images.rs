//! `/api/v1/images`: the images sandboxes are made from.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use cella_engine::Engine;
use cella_engine::image::ImageInfo;
use serde::{Deserialize, Serialize};

use crate::error::{ApiResult, ErrorBody};
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
    /// The root filesystem directory (`/` for `host`).
    #[schema(value_type = String)]
    pub path: PathBuf,
    /// Names that resolve to this image.
    pub aliases: Vec<String>,
    /// Seconds since the epoch; absent for built-in images.
    pub created_at: Option<u64>,
}

impl From<ImageInfo> for ImageView {
    fn from(i: ImageInfo) -> ImageView {
        ImageView {
            name: i.name,
            path: i.path,
            aliases: i.aliases,
            created_at: i.created_at,
        }
    }
}

#[utoipa::path(get, path = "/images", operation_id = "list_images", tag = "images", responses((status = 200, body = Vec<ImageView>)))]
pub async fn list(State(engine): State<Arc<Engine>>) -> ApiResult<Json<Vec<ImageView>>> {
    let images = engine.images.list()?;
    Ok(Json(images.into_iter().map(ImageView::from).collect()))
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
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn remove(
    State(engine): State<Arc<Engine>>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    engine.remove_image(&name)?;
    Ok(StatusCode::NO_CONTENT)
}
