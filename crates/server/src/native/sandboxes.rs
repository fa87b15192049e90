//! `/api/v1/sandboxes`: create, inspect, list and delete sandboxes.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use cella_engine::sandbox::ResourceUsage;
use cella_engine::{CreateSandbox, Engine, SandboxInfo};
use serde::Deserialize;

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Json, Path, Query};

#[utoipa::path(post, path = "/sandboxes", operation_id = "create_sandbox", tag = "sandboxes", request_body = CreateSandbox,
    responses((status = 201, body = SandboxInfo), (status = 400, body = ErrorBody), (status = 404, description = "No such image", body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn create(
    State(engine): State<Arc<Engine>>,
    Json(req): Json<CreateSandbox>,
) -> ApiResult<(StatusCode, Json<SandboxInfo>)> {
    let sandbox = engine.create(req).await?;
    Ok((StatusCode::CREATED, Json(sandbox.info())))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// `key=value` label filters, comma-separated; a sandbox must carry all of them.
    label: Option<String>,
    /// Include recently stopped sandboxes.
    #[serde(default)]
    all: bool,
}

#[utoipa::path(get, path = "/sandboxes", operation_id = "list_sandboxes", tag = "sandboxes", params(ListQuery),
    responses((status = 200, body = Vec<SandboxInfo>)))]
pub async fn list(
    State(engine): State<Arc<Engine>>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<SandboxInfo>>> {
    let mut labels = BTreeMap::new();
    for pair in q
        .label
        .iter()
        .flat_map(|l| l.split(','))
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').ok_or_else(|| {
            ApiError::bad_request(format!("label filter {pair:?} is not key=value"))
        })?;
        labels.insert(k.to_string(), v.to_string());
    }
    Ok(Json(engine.list(&labels, q.all)))
}

#[utoipa::path(get, path = "/sandboxes/{id}", operation_id = "get_sandbox", tag = "sandboxes",
    responses((status = 200, body = SandboxInfo), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
) -> ApiResult<Json<SandboxInfo>> {
    Ok(Json(engine.info(&id)?))
}

#[utoipa::path(delete, path = "/sandboxes/{id}", operation_id = "delete_sandbox", tag = "sandboxes",
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    engine.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/sandboxes/{id}/usage", operation_id = "sandbox_usage", tag = "sandboxes",
    responses((status = 200, body = ResourceUsage), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn usage(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
) -> ApiResult<Json<ResourceUsage>> {
    let sandbox = engine.get(&id)?;
    Ok(Json(sandbox.resource_usage()))
}
