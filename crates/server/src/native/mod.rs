//! The native API, mounted under `/api/v1` and described by `/openapi.json`.

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;

pub mod files;
pub mod images;
pub mod processes;
pub mod runs;
pub mod sandboxes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(sandboxes::create, sandboxes::list))
        .routes(routes!(sandboxes::get, sandboxes::delete))
        .routes(routes!(sandboxes::usage))
        .routes(routes!(processes::exec))
        .routes(routes!(processes::exec_stream))
        .routes(routes!(processes::spawn, processes::list))
        .routes(routes!(processes::get))
        .routes(routes!(processes::wait))
        .routes(routes!(processes::kill))
        .routes(routes!(files::download, files::put_raw, files::remove))
        .routes(routes!(files::read))
        .routes(routes!(files::write))
        .routes(routes!(files::upload))
        .routes(routes!(files::list))
        .routes(routes!(files::stat))
        .routes(routes!(files::mkdir))
        .routes(routes!(files::rename))
        .routes(routes!(images::list, images::register))
        .routes(routes!(images::remove))
        .routes(routes!(runs::run))
        .routes(routes!(runs::languages))
}
