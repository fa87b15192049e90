//! The CodeGeeX4 sandbox face: `GET /`, `POST /execute`, `POST /files/upload/-/*path` and
//! `GET /files/download/-/*path`, as CodeGeeX4's interpreter demo server answers them
//! (`docs/compat/codegeex.md` has the wire, its quirks and the deviations).
//!
//! `-` is a default sandbox, made on first use and again after it stops; a sandbox id in its
//! place addresses that sandbox. Code runs in the sandbox's default python context, whose
//! working directory and `HOME` are `/mnt/data`, as in the original's image. The whole face
//! is also served under `/codegeex/{id}/`, where `-` means that sandbox: a client that takes
//! one base URL (the demo app's `--sandbox-addr`) then talks to one sandbox.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cella_engine::context::{Call, CellResult, Context, ContextSpec, Language, Output};
use cella_engine::{CreateSandbox, Error, Sandbox};
use serde_json::{Value, json};

use crate::AppState;
use crate::common::time::{rfc3339, rfc3339_of_secs};
use crate::common::transfer::{self, ContentType, UploadError};

/// Where the original's image keeps user files: the context's working directory and `HOME`.
const DATA_DIR: &str = "/mnt/data";
/// The label of sandboxes this face made for `-`.
const FACE_LABEL: &str = "cella.face";
const DEFAULT_TIMEOUT_SECS: f64 = 60.0;

pub fn router() -> Router<AppState> {
    let face = || {
        Router::new()
            .route("/", get(ping))
            .route("/execute", post(execute))
            .route("/files/upload/{sandbox}/{*path}", post(upload))
            .route("/files/download/{sandbox}/{*path}", get(download))
    };
    Router::new()
        .merge(face())
        .nest("/codegeex/{prefix}", face())
        .route("/codegeex/{prefix}/", get(ping))
}

/// The face's own state: which sandbox `-` is.
#[derive(Default)]
pub struct Codegeex {
    default: tokio::sync::Mutex<Option<String>>,
}

/// An error in the original's shape: `{"error": "..."}`.
struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        crate::error::log_if_fault(&e);
        Failure(crate::error::status_of(&e), e.to_string())
    }
}

impl From<UploadError> for Failure {
    fn from(e: UploadError) -> Failure {
        match e {
            UploadError::Sandbox(e) => e.into(),
            UploadError::Body(fault) => Failure(fault.status(), fault.message()),
        }
    }
}

/// How this face answers a body over the server's limit on `path`, if `path` is one of its
/// routes.
pub fn too_large(path: &str) -> Option<fn(Error) -> Response> {
    let ours = path == "/execute" || path.starts_with("/files/") || path.starts_with("/codegeex/");
    ours.then_some(|e| Failure::from(e).into_response())
}

/// Which sandbox a request means: the `{sandbox}` of its path, where the routes have one, and
/// otherwise `-`; `-` is the default sandbox, or under `/codegeex/{prefix}` the prefix's.
struct Target(String);

impl Target {
    fn of(params: &HashMap<String, String>) -> Target {
        let segment = params.get("sandbox").map_or("-", String::as_str);
        let id = match params.get("prefix") {
            Some(prefix) if segment == "-" => prefix,
            _ => segment,
        };
        Target(id.to_string())
    }

    /// The sandbox, and its python context (made on first use).
    async fn context(&self, state: &AppState) -> Result<(Arc<Sandbox>, Arc<Context>), Failure> {
        let sandbox = self.sandbox(state).await?;
        let spec = ContextSpec {
            language: Language::Python,
            cwd: Some(DATA_DIR.into()),
            env: [("HOME".to_string(), DATA_DIR.to_string())].into(),
        };
        let context = state.contexts.default_for(&sandbox.id, spec).await?;
        Ok((sandbox, context))
    }

    async fn sandbox(&self, state: &AppState) -> Result<Arc<Sandbox>, Failure> {
        if self.0 != "-" {
            return Ok(state.engine.get(&self.0)?);
        }
        let mut default = state.codegeex.default.lock().await;
        if let Some(sandbox) = default.as_deref().and_then(|id| state.engine.get(id).ok()) {
            return Ok(sandbox);
        }
        let sandbox = state
            .engine
            .create(CreateSandbox {
                labels: [(FACE_LABEL.to_string(), "codegeex".to_string())].into(),
                ..Default::default()
            })
            .await?;
        *default = Some(sandbox.id.clone());
        Ok(sandbox)
    }
}

type Params = Path<HashMap<String, String>>;

async fn ping(State(state): State<AppState>, params: Option<Params>) -> Response {
    let target = Target::of(&params.map(|p| p.0).unwrap_or_default());
    match target.context(&state).await {
        Ok((sandbox, _)) => {
            let at = rfc3339_of_secs(sandbox.last_active());
            axum::Json(json!({ "last_activity": at })).into_response()
        }
        Err(failure) => failure.into_response(),
    }
}

/// `{"code": ..., "timeout_secs": ...}`: a timeout, when given, is a number above 0.
fn call(body: &[u8], state: &AppState) -> Result<Call, Failure> {
    let invalid = |why: String| Failure(StatusCode::BAD_REQUEST, why);
    let body: Value = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("the body is not valid JSON: {e}")))?;
    let code = body["code"]
        .as_str()
        .ok_or_else(|| invalid("code: a string is required".into()))?;
    let timeout = match &body["timeout_secs"] {
        Value::Null => DEFAULT_TIMEOUT_SECS,
        Value::Number(n) => n
            .as_f64()
            .filter(|t| *t > 0.0)
            .ok_or_else(|| invalid("timeout_secs: Input should be greater than 0".into()))?,
        _ => {
            return Err(invalid(
                "timeout_secs: Input should be a valid number".into(),
            ));
        }
    };
    Ok(Call::checked(
        &state.engine.config,
        code.to_string(),
        timeout,
        None,
    )?)
}

async fn execute(
    State(state): State<AppState>,
    params: Option<Params>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let target = Target::of(&params.map(|p| p.0).unwrap_or_default());
    let answer = async {
        let body = body.map_err(|e| Failure(StatusCode::BAD_REQUEST, e.body_text()))?;
        let call = call(&body, &state)?;
        let (_, context) = target.context(&state).await?;
        let result = context.execute(call, None).await?;
        Ok::<_, Failure>(axum::Json(render(&result)))
    };
    answer.await.into_response()
}

/// A call's answer as the original renders it: its events up to the timeout (what the
/// interrupt itself raised is not the code's), and `ok` or `timeout`.
fn render(result: &CellResult) -> Value {
    let events: Vec<Value> = result
        .before_interrupt()
        .iter()
        .map(|e| {
            let timestamp = rfc3339(e.at);
            match &e.output {
                // `stream` for the original's clients, `name` for its docs, and the text at
                // the top as well for the demo app, which reads it there.
                Output::Stream { name, text } => json!({
                    "type": "stream", "timestamp": timestamp, "text": text,
                    "data": { "name": name, "stream": name, "text": text },
                }),
                Output::Display { data, .. } | Output::Result { data, .. } => json!({
                    "type": "display_data", "timestamp": timestamp,
                    "data": { "variants": data },
                }),
                Output::Error {
                    name,
                    value,
                    traceback,
                } => json!({
                    "type": "error", "timestamp": timestamp,
                    "data": { "ename": name, "evalue": value, "traceback": traceback },
                }),
                Output::File { path, size } => json!({
                    "type": "file", "timestamp": timestamp,
                    "data": { "path": relative(path), "size": size },
                }),
            }
        })
        .collect();
    let status = if result.timed_out { "timeout" } else { "ok" };
    json!({ "status": status, "events": events })
}

/// A file event's path, relative to the data directory as the original's docs show it.
fn relative(path: &str) -> &str {
    path.strip_prefix(DATA_DIR)
        .and_then(|p| p.strip_prefix('/'))
        .unwrap_or(path)
}

async fn upload(State(state): State<AppState>, Path(params): Params, body: Body) -> Response {
    let target = Target::of(&params);
    let path = format!("/{}", params.get("path").map_or("", String::as_str));
    let answer = async {
        let sandbox = target.sandbox(&state).await?;
        transfer::write_stream(&sandbox, &path, 0o644, body.into_data_stream()).await?;
        Ok::<_, Failure>(StatusCode::CREATED)
    };
    answer.await.into_response()
}

async fn download(State(state): State<AppState>, Path(params): Params) -> Response {
    let target = Target::of(&params);
    let path = format!("/{}", params.get("path").map_or("", String::as_str));
    let answer = async {
        let sandbox = target.sandbox(&state).await?;
        match transfer::download(&sandbox, &path, ContentType::Guessed).await {
            Err(Error::NotFound { .. }) => {
                Err(Failure(StatusCode::NOT_FOUND, "file not found".into()))
            }
            other => Ok(other?),
        }
    };
    answer.await.into_response()
}
