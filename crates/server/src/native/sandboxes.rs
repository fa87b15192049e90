//! `/api/v1/sandboxes`: create, inspect, list and delete sandboxes.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use cella_engine::sandbox::{ResourceUsage, State as SandboxState};
use cella_engine::{CreateSandbox, Engine, SandboxInfo};
use serde::{Deserialize, Serialize};

use crate::common::network::NetworkView;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Json, Path, Query};

/// A request for a new sandbox; anything left out takes the configured default.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
#[schema(as = CreateSandbox)]
pub struct CreateSandboxBody {
    /// Image name or alias (default `host`).
    pub image: Option<String>,
    /// CPU cores (fractional allowed).
    pub cpus: Option<f64>,
    pub memory_mb: Option<u64>,
    /// Maximum number of processes and threads.
    pub pids: Option<u64>,
    /// Size of the writable layer.
    pub disk_mb: Option<u64>,
    /// Environment every exec in the sandbox sees.
    pub env: BTreeMap<String, String>,
    /// What to find the sandbox by (`?label=key=value`): at most 64, keys of 1 to 128 bytes
    /// without `=`, values of at most 1024 bytes.
    pub labels: BTreeMap<String, String>,
    /// Stop after this long without activity (0 = never).
    pub idle_timeout_secs: Option<u64>,
    /// Stop this long after creation (0 = the server's maximum).
    pub max_lifetime_secs: Option<u64>,
    /// Default `sandbox-` and the id's first 8 characters.
    pub hostname: Option<String>,
    /// The sandbox's id: 1 to 63 letters, digits, `-` and `_`, starting with a letter or
    /// digit (default 16 random hex digits). A running sandbox's id is refused (409).
    pub id: Option<String>,
    /// Network egress: none (loopback only) unless asked for.
    pub network: Option<NetworkView>,
}

impl From<CreateSandboxBody> for CreateSandbox {
    fn from(b: CreateSandboxBody) -> CreateSandbox {
        CreateSandbox {
            image: b.image,
            cpus: b.cpus,
            memory_mb: b.memory_mb,
            pids: b.pids,
            disk_mb: b.disk_mb,
            env: b.env,
            labels: b.labels,
            idle_timeout_secs: b.idle_timeout_secs,
            max_lifetime_secs: b.max_lifetime_secs,
            hostname: b.hostname,
            id: b.id,
            network: b.network.map(Into::into),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = State)]
pub enum SandboxStateView {
    Running,
    Stopped,
}

/// A sandbox.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = SandboxInfo)]
pub struct SandboxView {
    pub id: String,
    pub image: String,
    pub state: SandboxStateView,
    /// Why it stopped: deleted, idle timeout, lifetime, init exited, server restarted.
    pub stop_reason: Option<String>,
    pub hostname: String,
    pub cpus: f64,
    pub memory_mb: u64,
    pub pids: u64,
    pub disk_mb: u64,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub idle_timeout_secs: u64,
    pub max_lifetime_secs: u64,
    /// Seconds since the epoch.
    pub created_at: f64,
    /// The unprivileged uid the sandbox's processes run as.
    pub uid: u32,
    pub network: NetworkView,
}

impl From<SandboxInfo> for SandboxView {
    fn from(i: SandboxInfo) -> SandboxView {
        SandboxView {
            id: i.id,
            image: i.image,
            state: match i.state {
                SandboxState::Running => SandboxStateView::Running,
                SandboxState::Stopped => SandboxStateView::Stopped,
            },
            stop_reason: i.stop_reason,
            hostname: i.hostname,
            cpus: i.cpus,
            memory_mb: i.memory_mb,
            pids: i.pids,
            disk_mb: i.disk_mb,
            env: i.env,
            labels: i.labels,
            idle_timeout_secs: i.idle_timeout_secs,
            max_lifetime_secs: i.max_lifetime_secs,
            created_at: i.created_at,
            uid: i.uid,
            network: i.network.into(),
        }
    }
}

/// Resource usage, read from the sandbox's cgroups and writable layer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = ResourceUsage)]
pub struct UsageView {
    pub cpu_seconds: f64,
    pub memory_bytes: u64,
    pub memory_peak_bytes: u64,
    pub memory_limit_bytes: u64,
    pub pids: u64,
    pub pids_limit: u64,
    pub disk_bytes: u64,
    pub disk_limit_bytes: u64,
    pub oom_kills: u64,
}

impl From<ResourceUsage> for UsageView {
    fn from(u: ResourceUsage) -> UsageView {
        UsageView {
            cpu_seconds: u.cpu_seconds,
            memory_bytes: u.memory_bytes,
            memory_peak_bytes: u.memory_peak_bytes,
            memory_limit_bytes: u.memory_limit_bytes,
            pids: u.pids,
            pids_limit: u.pids_limit,
            disk_bytes: u.disk_bytes,
            disk_limit_bytes: u.disk_limit_bytes,
            oom_kills: u.oom_kills,
        }
    }
}

#[utoipa::path(post, path = "/sandboxes", operation_id = "create_sandbox", tag = "sandboxes", request_body = CreateSandboxBody,
    responses((status = 201, body = SandboxView), (status = 400, body = ErrorBody), (status = 404, description = "No such image", body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn create(
    State(engine): State<Arc<Engine>>,
    Json(req): Json<CreateSandboxBody>,
) -> ApiResult<(StatusCode, Json<SandboxView>)> {
    let sandbox = engine.create(req.into()).await?;
    Ok((StatusCode::CREATED, Json(sandbox.info().into())))
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
    responses((status = 200, body = Vec<SandboxView>)))]
pub async fn list(
    State(engine): State<Arc<Engine>>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<SandboxView>>> {
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
    let listed = engine.list(&labels, q.all);
    Ok(Json(listed.into_iter().map(SandboxView::from).collect()))
}

#[utoipa::path(get, path = "/sandboxes/{id}", operation_id = "get_sandbox", tag = "sandboxes",
    responses((status = 200, body = SandboxView), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
) -> ApiResult<Json<SandboxView>> {
    Ok(Json(engine.info(&id)?.into()))
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
    responses((status = 200, body = UsageView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn usage(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
) -> ApiResult<Json<UsageView>> {
    let sandbox = engine.get(&id)?;
    Ok(Json(sandbox.resource_usage().into()))
}
