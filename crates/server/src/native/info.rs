//! `/api/v1/info`: what a client may count on from this server.

use axum::extract::State;
use serde::Serialize;

use crate::AppState;
use crate::extract::Json;

#[derive(Serialize, utoipa::ToSchema)]
pub struct InfoView {
    pub version: &'static str,
    pub runs: RunsInfo,
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
    Json(InfoView {
        version: env!("CARGO_PKG_VERSION"),
        runs: RunsInfo {
            max_concurrency: runs.max_concurrency,
            max_queue: runs.max_queue,
        },
    })
}
