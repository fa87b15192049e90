//! SandboxFusion's evaluation routes: `GET /list_datasets`, `POST /list_ids`, `/get_prompts`,
//! `/get_prompt_by_id`, `/submit`, `/get_metrics`, `/get_metrics_function`, onto
//! `engine::eval`. Errors are FastAPI's: a 422 for a body of the wrong shape, and
//! `{"detail": "..."}` with the engine error's status otherwise (400 for an unknown dataset or
//! class, as SandboxFusion answers).

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use cella_engine::Error;
use cella_engine::eval::{CaseResult, EvalConfig, Prompt, Submission, Verdict};
use serde_json::{Map, Value, json};

use super::pydantic::{Errors, Fields, Invalid};
use super::{Failure, RunCodeResponse, request_object};
use crate::AppState;
use crate::error::{log_if_fault, status_of};

/// An engine error as FastAPI's `HTTPException`: `{"detail": message}`.
fn detail(e: Error) -> Response {
    log_if_fault(&e);
    (
        status_of(&e),
        axum::Json(json!({ "detail": e.to_string() })),
    )
        .into_response()
}

const DETAIL: Failure = detail;

fn answer<T: serde::Serialize>(result: Result<T, Error>) -> Response {
    match result {
        Ok(value) => axum::Json(value).into_response(),
        Err(e) => detail(e),
    }
}

/// The fields every dataset request has: `dataset` and `config` (`TestConfig`).
struct Common {
    dataset: String,
    config: EvalConfig,
}

/// Reads a body's `dataset` and `config`, and whatever else `more` reads, or the 422.
fn read<T>(
    body: Result<Bytes, BytesRejection>,
    more: impl FnOnce(&mut Fields) -> T,
) -> Result<(Common, T), Unread> {
    let body = request_object(body, DETAIL).map_err(Unread)?;
    let mut f = Fields::new(&body);
    let dataset = f.string("dataset");
    let rest = more(&mut f);
    let config = match body.get("config") {
        None => {
            f.string("config");
            EvalConfig::default()
        }
        Some(c) => test_config(c, &mut f.errors),
    };
    f.errors
        .into_result((Common { dataset, config }, rest))
        .map_err(|invalid: Invalid| Unread(Box::new(invalid.into_response())))
}

/// `TestConfig`: every field optional (null as absent), `extra` a dict.
fn test_config(value: &Value, errors: &mut Errors) -> EvalConfig {
    let Value::Object(c) = value else {
        errors.push_at(
            "model_type",
            &["config"],
            "Input should be a valid dictionary or instance of TestConfig",
            value,
        );
        return EvalConfig::default();
    };
    let mut f = Fields::new(c);
    let text = |f: &mut Fields, name| f.optional_string(name);
    let number = |f: &mut Fields, name: &str| match c.get(name) {
        None | Some(Value::Null) => None,
        Some(_) => Some(f.float(name, 0.0)),
    };
    let config = EvalConfig {
        dataset_type: text(&mut f, "dataset_type"),
        language: text(&mut f, "language"),
        locale: text(&mut f, "locale"),
        is_fewshot: c
            .get("is_fewshot")
            .is_some_and(|v| v.as_bool().unwrap_or(false)),
        compile_timeout: number(&mut f, "compile_timeout"),
        run_timeout: number(&mut f, "run_timeout"),
        custom_extract_logic: text(&mut f, "custom_extract_logic"),
        provided_data: c.get("provided_data").filter(|v| !v.is_null()).cloned(),
        extra: match c.get("extra") {
            None => Map::new(),
            Some(Value::Object(extra)) => extra.clone(),
            Some(other) => {
                f.errors.push_at(
                    "dict_type",
                    &["extra"],
                    "Input should be a valid dictionary",
                    other,
                );
                Map::new()
            }
        },
    };
    errors.extend_under("config", f.errors);
    config
}

/// `id: int | str`.
fn row_id(f: &mut Fields) -> Value {
    match f.body.get("id") {
        Some(v @ (Value::Number(_) | Value::String(_))) => v.clone(),
        Some(other) => {
            f.errors.push_at(
                "int_type",
                &["id"],
                "Input should be a valid integer",
                other,
            );
            Value::Null
        }
        None => {
            f.string("id");
            Value::Null
        }
    }
}

fn page(f: &mut Fields) -> (usize, usize) {
    let offset = f.int("offset", 0).max(0) as usize;
    let limit = f.int("limit", 1_000_000).max(0) as usize;
    (offset, limit)
}

fn prompt_view(p: Prompt) -> Value {
    json!({ "id": p.id, "prompt": p.prompt, "labels": p.labels })
}

fn case_view(c: CaseResult) -> Value {
    json!({
        "passed": c.passed,
        "exec_info": RunCodeResponse::from_outcome(c.outcome),
        "test_info": c.test_info,
    })
}

fn verdict_view(id: Value, v: Verdict) -> Value {
    json!({
        "id": id,
        "accepted": v.accepted,
        "extracted_code": v.extracted_code,
        "full_code": v.full_code,
        "test_code": v.test_code,
        "tests": v.tests.into_iter().map(case_view).collect::<Vec<_>>(),
        "extracted_type": v.extracted_type.map(|t| t.as_str()),
        "extra": v.extra,
    })
}

pub async fn list_datasets(State(state): State<AppState>) -> Response {
    axum::Json(state.eval.dataset_ids()).into_response()
}

/// A body this face could not read: its 422 (or the failure of a body that never came whole).
pub struct Unread(Box<Response>);

impl IntoResponse for Unread {
    fn into_response(self) -> Response {
        *self.0
    }
}

type Handled = Result<Response, Unread>;

/// The prompts a `GetPromptsRequest` asks for.
fn requested_prompts(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<Result<Vec<Prompt>, Error>, Unread> {
    let (c, (offset, limit)) = read(body, page)?;
    Ok(state.eval.prompts(&c.dataset, &c.config, offset, limit))
}

pub async fn list_ids(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Handled {
    let prompts = requested_prompts(&state, body)?;
    Ok(answer(prompts.map(|ps| {
        ps.into_iter().map(|p| p.id).collect::<Vec<_>>()
    })))
}

pub async fn get_prompts(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Handled {
    let prompts = requested_prompts(&state, body)?;
    Ok(answer(prompts.map(|ps| {
        ps.into_iter().map(prompt_view).collect::<Vec<_>>()
    })))
}

pub async fn get_prompt_by_id(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Handled {
    let (c, id) = read(body, row_id)?;
    Ok(answer(
        state
            .eval
            .prompt(&c.dataset, &c.config, &id)
            .map(prompt_view),
    ))
}

pub async fn submit(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> Handled {
    let (c, (id, completion)) = read(body, |f| (row_id(f), f.string("completion")))?;
    let sub = Submission {
        dataset: c.dataset,
        id,
        completion,
        config: c.config,
    };
    let verdict = state.eval.submit(&sub).await;
    Ok(answer(verdict.map(|v| verdict_view(sub.id, v))))
}

pub async fn get_metrics(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Handled {
    let (c, results) = read(body, results)?;
    Ok(answer(state.eval.metrics(&c.dataset, &c.config, &results)))
}

/// `results: List[EvalResult]`: of each, the problem id and whether it was accepted.
fn results(f: &mut Fields) -> Vec<(Value, bool)> {
    let Some(Value::Array(items)) = f.body.get("results") else {
        f.errors.push_at(
            "list_type",
            &["results"],
            "Input should be a valid list",
            f.body.get("results").unwrap_or(&Value::Null),
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match (
            item.get("id"),
            item.get("accepted").and_then(Value::as_bool),
        ) {
            (Some(id @ (Value::Number(_) | Value::String(_))), Some(accepted)) => {
                out.push((id.clone(), accepted))
            }
            _ => f.errors.push_at(
                "model_type",
                &["results", &i.to_string()],
                "Input should be a valid EvalResult with id and accepted",
                item,
            ),
        }
    }
    out
}

pub async fn get_metrics_function(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Handled {
    let (c, ()) = read(body, |_| ())?;
    // Metrics are computed by the server (`/get_metrics`); there is no function to send.
    let known = state.eval.metrics(&c.dataset, &c.config, &[]);
    Ok(answer(known.map(|_| json!({ "function": null }))))
}
