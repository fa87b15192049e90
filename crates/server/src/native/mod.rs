//! The native API, mounted under `/api/v1` and described by `/openapi.json`.

use axum::http::StatusCode;
use utoipa::openapi::{Content, OpenApi, Ref, RefOr, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;

pub mod contexts;
pub mod files;
pub mod images;
pub mod info;
pub mod processes;
pub mod runs;
pub mod sandboxes;
pub mod sessions;

/// The routes that take image archives, streamed to disk whatever their size.
pub fn archive_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(images::import))
}

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
        .routes(routes!(contexts::create, contexts::list))
        .routes(routes!(contexts::get, contexts::delete))
        .routes(routes!(contexts::execute))
        .routes(routes!(contexts::execute_stream))
        .routes(routes!(contexts::interrupt))
        .routes(routes!(contexts::restart))
        .routes(routes!(files::download, files::put_raw, files::remove))
        .routes(routes!(files::read))
        .routes(routes!(files::write))
        .routes(routes!(files::upload))
        .routes(routes!(files::list))
        .routes(routes!(files::stat))
        .routes(routes!(files::mkdir))
        .routes(routes!(files::rename))
        .routes(routes!(images::list, images::register))
        .routes(routes!(images::get, images::remove))
        .routes(routes!(images::pull))
        .routes(routes!(images::push))
        .routes(routes!(images::export))
        .routes(routes!(images::usage))
        .routes(routes!(images::prune))
        .routes(routes!(images::commit))
        .routes(routes!(sessions::create, sessions::list))
        .routes(routes!(sessions::run))
        .routes(routes!(sessions::close))
        .routes(routes!(sessions::terminal))
        .routes(routes!(runs::run))
        .routes(routes!(runs::languages))
        .routes(routes!(info::info))
}

/// Completes the generated document with the statuses every route can answer besides its
/// own (a malformed parameter, an unknown id, a body the extractors refuse, a missing API
/// token if the server is `guarded` by one) and a description for each status, so a client
/// generated from it expects every answer.
pub fn document_errors(doc: &mut OpenApi, guarded: bool) {
    for (path, item) in doc.paths.paths.iter_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
        ];
        for op in operations.into_iter().flatten() {
            let body = op.request_body.as_ref();
            let json_body = body.is_some_and(|b| b.content.contains_key("application/json"));
            let mut errors = Vec::new();
            if guarded {
                errors.push("401");
            }
            if op.parameters.as_ref().is_some_and(|p| !p.is_empty()) || body.is_some() {
                errors.push("400");
            }
            if path.contains('{') {
                errors.push("404");
            }
            if path.starts_with("/api/v1/sandboxes/{id}") {
                errors.push("409"); // the sandbox has stopped
            }
            if body.is_some() {
                errors.extend(["408", "413"]);
            }
            if json_body {
                errors.extend(["415", "422"]);
            }
            let responses = &mut op.responses.responses;
            for status in errors {
                responses.entry(status.into()).or_insert_with(|| {
                    let schema = Ref::from_schema_name("ErrorBody");
                    Response::builder()
                        .content("application/json", Content::new(Some(schema)))
                        .into()
                });
            }
            for (status, response) in responses.iter_mut() {
                if let RefOr::T(r) = response
                    && r.description.is_empty()
                {
                    r.description = describe(status).into();
                }
            }
        }
    }
}

fn describe(status: &str) -> &'static str {
    match status {
        "400" => "Invalid argument: a malformed parameter or a value out of range",
        "401" => "The server's API token is missing or wrong",
        "404" => "No such sandbox, process, image or file",
        "409" => "Conflicts with the current state (such as a stopped sandbox)",
        "408" => "The client paused sending the body for longer than the server allows",
        "413" => "Larger than the server's limit",
        "415" => "The body is not `application/json`",
        "422" => "The body is not valid JSON or a field has the wrong type",
        "503" => "Busy or temporarily unavailable; retry later",
        "507" => "The sandbox's disk quota is full",
        _ => status
            .parse()
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Answer"),
    }
}
