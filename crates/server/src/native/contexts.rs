//! `/api/v1/sandboxes/{id}/contexts`: stateful code contexts (a Jupyter kernel each) in a
//! sandbox: create, list, get, delete, execute (answered whole or streamed), interrupt and
//! restart.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use cella_engine::Config;
use cella_engine::context::{
    Call, CellResult, Context, ContextInfo, ContextSpec, Contexts, Event, Language, Output,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::AppState;
use crate::common::stream::{self, Named};
use crate::common::time::rfc3339;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{Json, Path};

/// A context's language.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LanguageName {
    Python,
    Javascript,
    Bash,
}

impl From<Language> for LanguageName {
    fn from(l: Language) -> LanguageName {
        match l {
            Language::Python => LanguageName::Python,
            Language::JavaScript => LanguageName::Javascript,
            Language::Bash => LanguageName::Bash,
        }
    }
}

impl From<LanguageName> for Language {
    fn from(l: LanguageName) -> Language {
        match l {
            LanguageName::Python => Language::Python,
            LanguageName::Javascript => Language::JavaScript,
            LanguageName::Bash => Language::Bash,
        }
    }
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct CreateContextBody {
    /// The kernel's language (default `python`).
    pub language: Option<LanguageName>,
    /// Working directory (default the home directory, `/home/user`; made if missing).
    pub cwd: Option<String>,
    /// Added to the sandbox's environment for the kernel.
    pub env: BTreeMap<String, String>,
}

/// A context.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Context)]
pub struct ContextView {
    pub id: String,
    pub sandbox_id: String,
    pub language: LanguageName,
    pub cwd: String,
    /// Seconds since the epoch.
    pub created_at: f64,
    /// A call is running.
    pub busy: bool,
    /// Calls waiting behind the running one.
    pub queued: usize,
}

impl From<ContextInfo> for ContextView {
    fn from(c: ContextInfo) -> ContextView {
        ContextView {
            id: c.id,
            sandbox_id: c.sandbox_id,
            language: c.language.into(),
            cwd: c.cwd,
            created_at: c.created_at,
            busy: c.busy,
            queued: c.queued,
        }
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteBody {
    pub code: String,
    /// Seconds the code may run, from when it starts (default `contexts.call_timeout_secs`,
    /// at most `limits.max_exec_timeout_secs`); past it the kernel is interrupted.
    #[schema(exclusive_minimum = 0.0, maximum = 86400.0)]
    pub timeout: Option<f64>,
    /// Bytes of output kept (default `sandbox.output_cap_bytes`, at most
    /// `limits.max_output_cap_bytes`).
    #[schema(maximum = 268435456)]
    pub output_cap: Option<usize>,
}

impl ExecuteBody {
    fn into_call(self, config: &Config) -> cella_engine::Result<Call> {
        let timeout = self.timeout.unwrap_or(config.contexts.call_timeout_secs);
        Call::checked(config, self.code, timeout, self.output_cap)
    }
}

/// One output of a call.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
#[schema(as = ContextEvent)]
pub enum EventView {
    /// Printed text; `name` is `stdout` or `stderr`.
    Stream {
        name: String,
        text: String,
        timestamp: String,
    },
    /// A rich display: its whole MIME bundle (`image/png` in base64, `text/html`, ...).
    Display {
        #[schema(value_type = Object)]
        data: Value,
        #[schema(value_type = Object)]
        metadata: Value,
        timestamp: String,
    },
    /// The value of the last expression.
    Result {
        #[schema(value_type = Object)]
        data: Value,
        #[schema(value_type = Object)]
        metadata: Value,
        execution_count: Option<i64>,
        timestamp: String,
    },
    Error {
        name: String,
        value: String,
        traceback: Vec<String>,
        timestamp: String,
    },
    /// A file under the context's working directory that the call created or changed.
    File {
        path: String,
        size: u64,
        timestamp: String,
    },
}

impl From<Event> for EventView {
    fn from(e: Event) -> EventView {
        let timestamp = rfc3339(e.at);
        match e.output {
            Output::Stream { name, text } => EventView::Stream {
                name,
                text,
                timestamp,
            },
            Output::Display { data, metadata } => EventView::Display {
                data,
                metadata,
                timestamp,
            },
            Output::Result {
                data,
                metadata,
                execution_count,
            } => EventView::Result {
                data,
                metadata,
                execution_count,
                timestamp,
            },
            Output::Error {
                name,
                value,
                traceback,
            } => EventView::Error {
                name,
                value,
                traceback,
                timestamp,
            },
            Output::File { path, size } => EventView::File {
                path,
                size,
                timestamp,
            },
        }
    }
}

/// How a call ended.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ExecutionEnd {
    /// `ok`, `error` (the code raised), or `timeout` (interrupted at its timeout).
    pub status: &'static str,
    pub execution_count: Option<i64>,
    /// The kernel cannot go on and its state is lost (it died, or ignored the interrupt at
    /// the timeout), in words; the next call starts a fresh kernel.
    pub kernel_lost: Option<String>,
    /// More output came than `output_cap`; later outputs were dropped.
    pub truncated: bool,
    /// Seconds from when the call started running.
    pub duration: f64,
}

impl ExecutionEnd {
    fn of(result: &CellResult, duration: Duration) -> ExecutionEnd {
        ExecutionEnd {
            status: result.status(),
            execution_count: result.execution_count,
            kernel_lost: result.kernel_lost.clone(),
            truncated: result.truncated,
            duration: duration.as_secs_f64(),
        }
    }
}

/// Everything a call produced.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Execution {
    #[serde(flatten)]
    pub end: ExecutionEnd,
    /// Every output, in order.
    pub events: Vec<EventView>,
    /// All it printed to stdout, and to stderr.
    pub stdout: String,
    pub stderr: String,
}

fn context_spec(body: CreateContextBody) -> ContextSpec {
    ContextSpec {
        language: body.language.map_or(Language::Python, Language::from),
        cwd: body.cwd,
        env: body.env,
    }
}

#[utoipa::path(post, path = "/sandboxes/{id}/contexts", operation_id = "create_context", tag = "contexts", request_body = CreateContextBody,
    description = "Starts a context (a kernel) in the sandbox; answers once it is ready.",
    responses((status = 201, body = ContextView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn create(
    State(contexts): State<Arc<Contexts>>,
    Path(id): Path<String>,
    Json(body): Json<CreateContextBody>,
) -> ApiResult<(StatusCode, Json<ContextView>)> {
    let context = contexts.create(&id, context_spec(body)).await?;
    Ok((StatusCode::CREATED, Json(context.info().into())))
}

#[utoipa::path(get, path = "/sandboxes/{id}/contexts", operation_id = "list_contexts", tag = "contexts",
    responses((status = 200, body = Vec<ContextView>)))]
pub async fn list(
    State(contexts): State<Arc<Contexts>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<ContextView>>> {
    let listed = contexts.list(&id)?;
    Ok(Json(listed.iter().map(|c| c.info().into()).collect()))
}

#[utoipa::path(get, path = "/sandboxes/{id}/contexts/{context}", operation_id = "get_context", tag = "contexts",
    responses((status = 200, body = ContextView)))]
pub async fn get(
    State(contexts): State<Arc<Contexts>>,
    Path((id, context)): Path<(String, String)>,
) -> ApiResult<Json<ContextView>> {
    Ok(Json(contexts.get(&id, &context)?.info().into()))
}

#[utoipa::path(delete, path = "/sandboxes/{id}/contexts/{context}", operation_id = "delete_context", tag = "contexts",
    description = "Stops the context's kernel; calls waiting on it do not run.",
    responses((status = 204)))]
pub async fn delete(
    State(contexts): State<Arc<Contexts>>,
    Path((id, context)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    contexts.delete(&id, &context)?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/sandboxes/{id}/contexts/{context}/execute", operation_id = "execute_code", tag = "contexts", request_body = ExecuteBody,
    description = "Runs code in the context after the calls before it, and answers with everything it produced.",
    responses((status = 200, body = Execution), (status = 413, body = ErrorBody), (status = 503, description = "Too many calls waiting on the context", body = ErrorBody)))]
pub async fn execute(
    State(state): State<AppState>,
    Path((id, context)): Path<(String, String)>,
    Json(body): Json<ExecuteBody>,
) -> ApiResult<Json<Execution>> {
    let context = state.contexts.get(&id, &context)?;
    let call = body.into_call(&state.engine.config)?;
    let started = Instant::now();
    let result = context.execute(call, None).await?;
    Ok(Json(Execution {
        end: ExecutionEnd::of(&result, started.elapsed()),
        stdout: result.stream("stdout"),
        stderr: result.stream("stderr"),
        events: result.events.into_iter().map(EventView::from).collect(),
    }))
}

/// One line of a streamed call: an output as it comes, then how the call ended.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum ExecutionLine {
    Event(EventView),
    End {
        /// `end`.
        r#type: &'static str,
        #[serde(flatten)]
        end: ExecutionEnd,
    },
    Failed {
        /// `failed`: the call could not run (the context is gone, or too busy).
        r#type: &'static str,
        message: String,
    },
}

impl Named for ExecutionLine {
    fn name(&self) -> &'static str {
        match self {
            ExecutionLine::Event(EventView::Stream { .. }) => "stream",
            ExecutionLine::Event(EventView::Display { .. }) => "display",
            ExecutionLine::Event(EventView::Result { .. }) => "result",
            ExecutionLine::Event(EventView::Error { .. }) => "error",
            ExecutionLine::Event(EventView::File { .. }) => "file",
            ExecutionLine::End { .. } => "end",
            ExecutionLine::Failed { .. } => "failed",
        }
    }
}

#[utoipa::path(post, path = "/sandboxes/{id}/contexts/{context}/execute/stream", operation_id = "execute_code_stream", tag = "contexts", request_body = ExecuteBody,
    description = "Runs code as `execute` does and streams each output as it comes, then an `end` line: \
                   NDJSON by default, Server-Sent Events when the request accepts `text/event-stream`. \
                   A client that hangs up interrupts the call.",
    responses((status = 200, body = ExecutionLine, content_type = "application/x-ndjson")))]
pub async fn execute_stream(
    State(state): State<AppState>,
    Path((id, context)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<ExecuteBody>,
) -> ApiResult<Response> {
    let context = state.contexts.get(&id, &context)?;
    let call = body.into_call(&state.engine.config)?;
    Ok(stream::respond(&headers, stream_call(context, call)))
}

/// The lines of a streamed call. The call is driven by the stream: dropped (the client hung
/// up), it is interrupted.
fn stream_call(
    context: Arc<Context>,
    call: Call,
) -> impl futures::Stream<Item = ExecutionLine> + Send + 'static {
    let (sink, events) = mpsc::unbounded_channel();
    let started = Instant::now();
    let execution = Box::pin(async move { context.execute(call, Some(sink)).await });
    let event = |e: Event| ExecutionLine::Event(e.into());
    let lines = futures::stream::unfold(Some((events, execution)), move |state| async move {
        let (mut events, mut execution) = state?;
        tokio::select! {
            biased;
            Some(e) = events.recv() => Some((vec![event(e)], Some((events, execution)))),
            result = &mut execution => {
                // The call is over: outputs still queued come first, then its end.
                let mut lines: Vec<_> = std::iter::from_fn(|| events.try_recv().ok())
                    .map(event)
                    .collect();
                lines.push(match result {
                    Ok(result) => ExecutionLine::End {
                        r#type: "end",
                        end: ExecutionEnd::of(&result, started.elapsed()),
                    },
                    Err(e) => ExecutionLine::Failed {
                        r#type: "failed",
                        message: e.to_string(),
                    },
                });
                Some((lines, None))
            }
        }
    });
    lines.flat_map(futures::stream::iter)
}

#[utoipa::path(post, path = "/sandboxes/{id}/contexts/{context}/interrupt", operation_id = "interrupt_context", tag = "contexts",
    description = "Interrupts the running call, as Ctrl-C does a program (nothing if none runs).",
    responses((status = 204)))]
pub async fn interrupt(
    State(contexts): State<Arc<Contexts>>,
    Path((id, context)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    contexts.get(&id, &context)?.interrupt();
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/sandboxes/{id}/contexts/{context}/restart", operation_id = "restart_context", tag = "contexts",
    description = "Starts a fresh kernel: its state is lost, and a running call ends saying so.",
    responses((status = 200, body = ContextView)))]
pub async fn restart(
    State(contexts): State<Arc<Contexts>>,
    Path((id, context)): Path<(String, String)>,
) -> ApiResult<Json<ContextView>> {
    let context = contexts.get(&id, &context)?;
    context.restart().await?;
    Ok(Json(context.info().into()))
}
