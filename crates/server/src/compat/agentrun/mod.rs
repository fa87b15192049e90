//! The AgentRun face: the data plane of Alibaba AgentRun's code interpreter, as its
//! `agentrun-sdk` calls it with `data_endpoint` pointed at this server
//! (`docs/compat/agentrun.md` has the wire and the deviations).
//!
//! `/sandboxes` creates, gets, stops and deletes sandboxes in AgentRun's envelope
//! (`{"code": "SUCCESS", "data": {...camelCase}}`); under `/sandboxes/{id}` are `health`,
//! `contexts` (and `contexts/execute`), `files`, `filesystem` and `processes`. Errors are
//! AgentRun's `{"code", "message", "requestId"}` with an HTTP status that fits.

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cella_engine::Error;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::AppState;
use crate::common::transfer::{BodyFault, UploadError};

mod contexts;
mod files;
mod processes;
mod sandboxes;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/sandboxes", post(sandboxes::create))
        .route(
            "/sandboxes/{id}",
            get(sandboxes::get).delete(sandboxes::delete),
        )
        .route("/sandboxes/{id}/stop", post(sandboxes::stop))
        .route("/sandboxes/{id}/health", get(sandboxes::health))
        .route(
            "/sandboxes/{id}/contexts",
            get(contexts::list).post(contexts::create),
        )
        .route("/sandboxes/{id}/contexts/execute", post(contexts::execute))
        .route(
            "/sandboxes/{id}/contexts/{context}",
            get(contexts::get).delete(contexts::delete),
        )
        .route("/sandboxes/{id}/files", get(files::read).post(files::write))
        .route("/sandboxes/{id}/filesystem", get(files::list))
        .route("/sandboxes/{id}/filesystem/stat", get(files::stat))
        .route("/sandboxes/{id}/filesystem/mkdir", post(files::mkdir))
        .route("/sandboxes/{id}/filesystem/move", post(files::rename))
        .route("/sandboxes/{id}/filesystem/remove", post(files::remove))
        .route("/sandboxes/{id}/filesystem/upload", post(files::upload))
        .route("/sandboxes/{id}/filesystem/download", get(files::download))
        .route("/sandboxes/{id}/processes", get(processes::list))
        .route("/sandboxes/{id}/processes/cmd", post(processes::cmd))
        .route(
            "/sandboxes/{id}/processes/{pid}",
            get(processes::get).delete(processes::kill),
        )
}

/// An error as AgentRun answers one: `{"code", "message", "requestId"}`.
pub struct Failure {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Failure {
    fn invalid(message: impl Into<String>) -> Failure {
        Failure {
            status: StatusCode::BAD_REQUEST,
            code: "InvalidParameter",
            message: message.into(),
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let body = json!({
            "code": self.code,
            "message": self.message,
            "requestId": uuid::Uuid::new_v4().to_string(),
        });
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        crate::error::log_if_fault(&e);
        let code = match &e {
            Error::InvalidArgument(_) | Error::MissingProgram(_) => "InvalidParameter",
            // "sandbox not found" is what the SDK matches for an idempotent delete.
            Error::NotFound {
                kind: "sandbox", ..
            } => "SandboxNotFound",
            Error::NotFound { .. } => "ResourceNotFound",
            Error::Conflict(_) => "Conflict",
            Error::TooLarge(_) => "PayloadTooLarge",
            Error::Exhausted(_) => "DiskQuotaExceeded",
            Error::Busy(_) => "Throttling",
            Error::Unavailable(_) => "ServiceUnavailable",
            Error::Internal(_) => "InternalError",
        };
        let message = match &e {
            Error::NotFound {
                kind: "sandbox",
                id,
            } => format!("sandbox not found: {id}"),
            e => e.to_string(),
        };
        Failure {
            status: crate::error::status_of(&e),
            code,
            message,
        }
    }
}

impl From<UploadError> for Failure {
    fn from(e: UploadError) -> Failure {
        match e {
            UploadError::Sandbox(e) => e.into(),
            UploadError::Body(fault) => Failure {
                status: fault.status(),
                code: "InvalidParameter",
                message: fault.message(),
            },
        }
    }
}

pub type Answer<T = Value> = Result<axum::Json<T>, Failure>;

/// How this face answers a body over the server's limit on `path`, if `path` is one of its
/// routes.
pub fn too_large(path: &str) -> Option<fn(Error) -> Response> {
    path.starts_with("/sandboxes")
        .then_some(|e| Failure::from(e).into_response())
}

/// A success in AgentRun's lifecycle envelope.
fn envelope(data: Value) -> axum::Json<Value> {
    axum::Json(json!({
        "code": "SUCCESS",
        "data": data,
        "requestId": uuid::Uuid::new_v4().to_string(),
    }))
}

/// A JSON body (camelCase fields, unknown ones ignored as AgentRun's server does), refused
/// in AgentRun's shape.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = Failure;

    async fn from_request(req: Request, state: &S) -> Result<Self, Failure> {
        let bytes: Result<Bytes, BytesRejection> = Bytes::from_request(req, state).await;
        let bytes = bytes.map_err(|e| match BodyFault::of(&e) {
            BodyFault::Broken(why) => Failure::invalid(why),
            fault => UploadError::Body(fault).into(),
        })?;
        let body = if bytes.is_empty() {
            &b"{}"[..]
        } else {
            &bytes[..]
        };
        serde_json::from_slice(body)
            .map(Body)
            .map_err(|e| Failure::invalid(format!("invalid request body: {e}")))
    }
}

/// Query parameters, refused in AgentRun's shape.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Failure> {
        let axum::extract::Query(q) = axum::extract::Query::from_request_parts(parts, state)
            .await
            .map_err(|e| Failure::invalid(e.body_text()))?;
        Ok(Query(q))
    }
}

/// A timeout as the SDK sends it: seconds (its default is 30). A value beyond the server's
/// longest that would fit read as milliseconds is taken as such (one of AgentRun's own demos
/// sends `300000`, meaning five minutes).
fn timeout(config: &cella_engine::Config, value: Option<f64>) -> f64 {
    let secs = value.unwrap_or(30.0);
    let max = config.limits.max_exec_timeout_secs;
    if secs > max && secs / 1000.0 <= max {
        secs / 1000.0
    } else {
        secs
    }
}
