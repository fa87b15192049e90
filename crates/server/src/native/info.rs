//! `/api/v1/info`: what a client may count on from this server, and the isolation in force.

use axum::extract::State;
use serde::Serialize;

use crate::AppState;
use crate::extract::Json;

#[derive(Serialize, utoipa::ToSchema)]
pub struct InfoView {
    pub version: &'static str,
    pub runs: RunsInfo,
    pub isolation: IsolationInfo,
}

/// The isolation in force, as probed at start.
#[derive(Serialize, utoipa::ToSchema)]
pub struct IsolationInfo {
    pub kernel: String,
    /// The cgroup layout: `cgroup v1 at ...` or `cgroup v2 at ...`.
    pub cgroups: String,
    /// Landlock's ABI version (0: unavailable) and what the sandboxes' domain covers with it.
    pub landlock_abi: i64,
    pub landlock: &'static str,
    /// The seccomp actions the kernel offers (the sandboxes' filters need errno and kill).
    pub seccomp_actions: String,
    /// Whether cgroup moves are fast after an idle moment (see the README).
    pub favordynmods: bool,
}

/// How many one-shot runs (and evaluation tests, which are runs) go at once.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RunsInfo {
    /// Runs executing at once; more wait in the queue.
    pub max_concurrency: usize,
    /// Runs that may wait; beyond it a run is refused as busy.
    pub max_queue: usize,
}

#[utoipa::path(get, path = "/info", operation_id = "server_info", tag = "server",
    description = "The server's version and the bounds clients pace themselves by (`cella eval` sends as many submissions at once as runs go at once).",
    responses((status = 200, body = InfoView)))]
pub async fn info(State(state): State<AppState>) -> Json<InfoView> {
    let runs = &state.engine.config.runs;
    let f = &state.engine.features;
    Json(InfoView {
        version: env!("CARGO_PKG_VERSION"),
        runs: RunsInfo {
            max_concurrency: runs.max_concurrency,
            max_queue: runs.max_queue,
        },
        isolation: IsolationInfo {
            kernel: f.kernel.clone(),
            cgroups: state.engine.cgroup_layout(),
            landlock_abi: f.landlock_abi,
            landlock: f.landlock_covers(),
            seccomp_actions: f.seccomp_actions.clone(),
            favordynmods: f.favor_dynmods,
        },
    })
}
