//! `/sandboxes/{id}/contexts` and `contexts/execute`: code contexts as AgentRun's code
//! interpreter shows them, and a call's results in E2B's model, camelCase.

use axum::extract::{Path, State};
use cella_engine::context::{Call, CellResult, ContextInfo, ContextSpec, Language, Output};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Answer, Body, timeout};
use crate::AppState;
use crate::common::time::{rfc3339, rfc3339_of_secs};

fn view(c: &ContextInfo) -> Value {
    json!({
        "id": c.id,
        "language": c.language.name(),
        "cwd": c.cwd,
        "status": if c.busy { "busy" } else { "idle" },
        "createdAt": rfc3339_of_secs(c.created_at),
    })
}

pub async fn list(State(state): State<AppState>, Path(id): Path<String>) -> Answer {
    let contexts = state.contexts.list(&id)?;
    Ok(axum::Json(
        contexts.iter().map(|c| view(&c.info())).collect(),
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateBody {
    language: Option<String>,
    cwd: Option<String>,
}

pub async fn create(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Body(body): Body<CreateBody>,
) -> Answer {
    let language = Language::parse(body.language.as_deref().unwrap_or("python"))?;
    let spec = ContextSpec {
        language,
        cwd: body.cwd,
        env: Default::default(),
    };
    let context = state.contexts.create(&id, spec).await?;
    Ok(axum::Json(view(&context.info())))
}

pub async fn get(
    State(state): State<AppState>,
    Path((id, context)): Path<(String, String)>,
) -> Answer {
    Ok(axum::Json(view(&state.contexts.get(&id, &context)?.info())))
}

pub async fn delete(
    State(state): State<AppState>,
    Path((id, context)): Path<(String, String)>,
) -> Answer {
    state.contexts.delete(&id, &context)?;
    Ok(axum::Json(json!({ "id": context, "deleted": true })))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecuteBody {
    code: String,
    context_id: Option<String>,
    language: Option<String>,
    timeout: Option<f64>,
}

/// Runs code in the context named, or in the sandbox's default context of the language
/// named (python if none).
pub async fn execute(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Body(body): Body<ExecuteBody>,
) -> Answer {
    let config = &state.engine.config;
    let context = match &body.context_id {
        Some(context) => state.contexts.get(&id, context)?,
        None => {
            let language = Language::parse(body.language.as_deref().unwrap_or("python"))?;
            (state.contexts)
                .default_for(&id, ContextSpec::new(language))
                .await?
        }
    };
    let call = Call::checked(config, body.code, timeout(config, body.timeout), None)?;
    let result = context.execute(call, None).await?;
    Ok(axum::Json(render(&context.id, &result)))
}

/// A call's results as E2B's interpreter gives them (`stdout`, `stderr`, `result`, `error`,
/// then `endOfExecution`), with the totals the SDK's own toolset reads at the top.
fn render(context_id: &str, result: &CellResult) -> Value {
    let mut results: Vec<Value> = result
        .before_interrupt()
        .iter()
        .map(|e| {
            let timestamp = rfc3339(e.at);
            match &e.output {
                Output::Stream { name, text } => {
                    json!({ "type": name, "text": text, "timestamp": timestamp })
                }
                Output::Display { data, .. } => result_item(data, None, false),
                Output::Result {
                    data,
                    execution_count,
                    ..
                } => result_item(data, *execution_count, true),
                Output::Error {
                    name,
                    value,
                    traceback,
                } => json!({
                    "type": "error", "name": name, "value": value,
                    "traceback": traceback.join("\n"),
                }),
                Output::File { path, size } => {
                    json!({ "type": "file", "path": path, "size": size })
                }
            }
        })
        .collect();
    let status = result.status();
    let mut end = json!({ "type": "endOfExecution", "status": status });
    if let Some(lost) = &result.kernel_lost {
        end["message"] = lost.as_str().into();
    }
    results.push(end);
    json!({
        "contextId": context_id,
        "results": results,
        "executionCount": result.execution_count,
        "stdout": result.stream("stdout"),
        "stderr": result.stream("stderr"),
        "exitCode": if status == "ok" { 0 } else { 1 },
    })
}

/// A display or the last expression's value: its MIME bundle, and its text.
fn result_item(data: &Value, execution_count: Option<i64>, main: bool) -> Value {
    json!({
        "type": "result",
        "text": data["text/plain"],
        "data": data,
        "isMainResult": main,
        "executionCount": execution_count,
    })
}
