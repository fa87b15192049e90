//! The SandboxFusion face: `POST /run_code`, `POST /run_jupyter`, `GET /v1/ping`, and the
//! evaluation routes (`eval.rs`).
//!
//! Field names, field order, nulls, status derivation and the 422 body follow SandboxFusion
//! and its `sandbox-fusion` client (`docs/compat/fusion.md`). Differences are
//! deliberate: `memory_limit_MB` is enforced by the cgroup (compilers get more), `cpu_time` is
//! filled, `files` and `fetch_files` never leave the sandbox, output beyond the cap is cut and
//! flagged (`stdout_truncated`, a cell's `truncated`), and a language this server lacks answers at once with status `Failed` (which the
//! client does not retry) instead of a retried `SandboxError`.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use cella_engine::context::CellResult;
use cella_engine::error::quoted;
use cella_engine::process::{self, Exit};
use cella_engine::run::{
    Fetched, NotebookOutcome, NotebookRequest, RunOutcome, RunRequest, Step, StepStatus,
};
use cella_engine::{Error, language};
use serde::Serialize;
use serde_json::{Value, json};

mod eval;
mod pydantic;

use crate::AppState;
use crate::error::ApiError;
use pydantic::Fields;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/run_code", post(run_code))
        .route("/run_jupyter", post(run_jupyter))
        .route("/v1/ping", get(|| async { axum::Json("pong") }))
        .route("/list_datasets", get(eval::list_datasets))
        .route("/list_ids", post(eval::list_ids))
        .route("/get_prompts", post(eval::get_prompts))
        .route("/get_prompt_by_id", post(eval::get_prompt_by_id))
        .route("/submit", post(eval::submit))
        .route("/get_metrics", post(eval::get_metrics))
        .route("/get_metrics_function", post(eval::get_metrics_function))
}

/// The `Language` literal of the server and of the 0.3.7 client, plus cella's own (`c`).
pub fn language_names() -> Vec<&'static str> {
    language::LANGUAGES.iter().map(|l| l.name).collect()
}

#[derive(Serialize)]
pub struct CommandRunResult {
    pub status: &'static str,
    pub execution_time: Option<f64>,
    pub return_code: Option<i32>,
    pub stdout: Option<String>,
    pub stderr: Option<String>,
    pub cpu_time: Option<f64>,
    /// cella: output past the cap was cut.
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// cella: the kernel killed it at the memory limit (`return_code` is then -9).
    pub oom_killed: bool,
}

impl CommandRunResult {
    pub fn from_step(step: Step) -> CommandRunResult {
        let exit = step.exit.as_ref();
        CommandRunResult {
            status: match step.status {
                StepStatus::Finished => "Finished",
                StepStatus::TimeLimitExceeded => "TimeLimitExceeded",
                StepStatus::Error => "Error",
            },
            execution_time: exit.map(|e| e.wall_time),
            return_code: match step.status {
                StepStatus::Finished => exit.and_then(return_code),
                _ => None,
            },
            stdout: Some(process::text(step.output.stdout)),
            stderr: Some(process::text(step.output.stderr)),
            cpu_time: exit.map(|e| e.cpu_time),
            stdout_truncated: step.output.stdout_truncated,
            stderr_truncated: step.output.stderr_truncated,
            oom_killed: exit.is_some_and(|e| e.oom_killed),
        }
    }

    /// What SandboxFusion answers when a toolchain is missing: `command not found`.
    pub fn missing_toolchain(message: &str) -> CommandRunResult {
        CommandRunResult {
            status: "Finished",
            execution_time: Some(0.0),
            return_code: Some(127),
            stdout: Some(String::new()),
            stderr: Some(message.to_string()),
            cpu_time: Some(0.0),
            stdout_truncated: false,
            stderr_truncated: false,
            oom_killed: false,
        }
    }
}

/// SandboxFusion's `parse_run_status`: an `Error` step makes `SandboxError` (its stderr is the
/// message), a timeout or a non-zero exit makes `Failed`, otherwise `Success`.
pub fn run_status(results: &[&CommandRunResult]) -> (&'static str, String) {
    if let Some(e) = results.iter().find(|r| r.status == "Error") {
        return ("SandboxError", e.stderr.clone().unwrap_or_default());
    }
    if results.iter().any(|r| r.status == "TimeLimitExceeded") {
        return ("Failed", String::new());
    }
    if results
        .iter()
        .any(|r| r.return_code.is_some_and(|c| c != 0))
    {
        return ("Failed", String::new());
    }
    ("Success", String::new())
}

#[derive(Serialize)]
pub struct RunCodeResponse {
    pub status: &'static str,
    pub message: String,
    pub compile_result: Option<CommandRunResult>,
    pub run_result: Option<CommandRunResult>,
    pub executor_pod_name: Option<String>,
    pub files: serde_json::Map<String, Value>,
}

pub fn pod_name() -> Option<String> {
    std::env::var("MY_POD_NAME").ok()
}

/// As Python's subprocess reports an exit: the exit status, or minus the signal.
fn return_code(exit: &Exit) -> Option<i32> {
    exit.exit_code.or(exit.signal.map(|s| -s))
}

/// How an engine error reads on this face. What the request itself got wrong (a bad path, a
/// limit too small, invalid base64, files larger than the disk quota) is `Failed`, which the
/// client does not retry; what the server could not do is `SandboxError`, which it retries.
fn error_status(e: &Error) -> &'static str {
    match e {
        Error::InvalidArgument(_)
        | Error::NotFound { .. }
        | Error::TooLarge(_)
        | Error::Exhausted(_)
        | Error::MissingProgram(_) => "Failed",
        _ => "SandboxError",
    }
}

impl RunCodeResponse {
    fn failure(e: Error) -> RunCodeResponse {
        crate::error::log_if_fault(&e);
        RunCodeResponse {
            status: error_status(&e),
            message: e.to_string(),
            compile_result: None,
            run_result: None,
            executor_pod_name: pod_name(),
            files: Default::default(),
        }
    }

    fn from_outcome(outcome: RunOutcome) -> RunCodeResponse {
        if let Some(why) = outcome.unavailable {
            return RunCodeResponse {
                status: "Failed",
                run_result: Some(CommandRunResult::missing_toolchain(&why)),
                message: why,
                compile_result: None,
                executor_pod_name: pod_name(),
                files: Default::default(),
            };
        }
        let compile_result = outcome.compile.map(CommandRunResult::from_step);
        let run_result = outcome.run.map(CommandRunResult::from_step);
        let present: Vec<&CommandRunResult> =
            compile_result.iter().chain(run_result.iter()).collect();
        let (status, message) = run_status(&present);
        RunCodeResponse {
            status,
            message: with_fetch_note(message, &outcome.fetched),
            compile_result,
            run_result,
            executor_pod_name: pod_name(),
            files: encode_files(outcome.fetched.files),
        }
    }
}

/// The message, with a note of the fetched files left out for their size (SandboxFusion has
/// no field for it; silence would read as "no such file").
fn with_fetch_note(message: String, fetched: &Fetched) -> String {
    match fetched.note() {
        Some(note) if message.is_empty() => note,
        Some(note) => format!("{message}; {note}"),
        None => message,
    }
}

pub fn encode_files(files: Vec<(String, Vec<u8>)>) -> serde_json::Map<String, Value> {
    files
        .into_iter()
        .map(|(k, v)| (k, json!(B64.encode(v))))
        .collect()
}

/// `files` of a request: base64 contents; null values and `IGNORE_THIS_FILE` names skipped.
pub fn decode_files(files: Vec<(String, Option<String>)>) -> Result<Vec<(String, Vec<u8>)>, Error> {
    files
        .into_iter()
        .filter(|(name, _)| !name.contains("IGNORE_THIS_FILE"))
        .filter_map(|(name, content)| content.map(|c| (name, c)))
        .map(|(name, content)| {
            B64.decode(content.trim().as_bytes())
                .map(|d| (name.clone(), d))
                .map_err(|e| {
                    Error::invalid(format!("file {} is not valid base64: {e}", quoted(&name)))
                })
        })
        .collect()
}

/// The fields `/run_code` and `/run_jupyter` share.
struct Common {
    /// `memory_limit_MB`; -1 (the default) or 0 means the server's default.
    memory_mb: Option<u64>,
    files: Vec<(String, Vec<u8>)>,
    fetch_files: Vec<String>,
}

impl Common {
    /// Reads the shared fields last, then answers for the whole request: a 422 for any field
    /// of the wrong shape, the route's `Failed` for a file that is not base64. `run_code`
    /// allows null file contents (skipped); `run_jupyter` does not.
    fn read(
        mut f: Fields<'_>,
        nullable_files: bool,
        failure: Failure,
    ) -> Result<Common, Box<Response>> {
        let memory = f.int("memory_limit_MB", -1);
        let files = f.string_map("files", nullable_files);
        let fetch_files = f.string_list("fetch_files");
        f.errors
            .into_result(())
            .map_err(|invalid| Box::new(invalid.into_response()))?;
        Ok(Common {
            memory_mb: u64::try_from(memory).ok().filter(|m| *m > 0),
            files: decode_files(files).map_err(|e| Box::new(failure(e)))?,
            fetch_files,
        })
    }
}

fn seconds(value: f64) -> Duration {
    Duration::from_secs_f64(value.clamp(0.001, 86_400.0))
}

/// A route's answer to a request it could not take.
type Failure = fn(Error) -> Response;

const RUN_CODE_FAILURE: Failure = |e| axum::Json(RunCodeResponse::failure(e)).into_response();
const RUN_JUPYTER_FAILURE: Failure = |e| axum::Json(RunJupyterResponse::failure(e)).into_response();

/// How this face answers a body over the server's limit on `path`, if `path` is one of its
/// routes: `Failed`, which clients do not retry (a bigger body would never fit).
pub fn too_large(path: &str) -> Option<Failure> {
    match path {
        "/run_code" => Some(RUN_CODE_FAILURE),
        "/run_jupyter" => Some(RUN_JUPYTER_FAILURE),
        _ => None,
    }
}

/// The request's JSON object; or, for a body that could not be read (too large, stalled,
/// cut off), the route's `Failed` answer, and for one that is not a JSON object, a 422.
fn request_object(
    body: Result<Bytes, BytesRejection>,
    failure: Failure,
) -> Result<serde_json::Map<String, Value>, Box<Response>> {
    let body = body.map_err(|unread| {
        let why = ApiError::body_limit_exceeded(&unread)
            .map_or_else(|| unread.body_text(), |e| e.message);
        Box::new(failure(Error::invalid(why)))
    })?;
    pydantic::object(&body).map_err(|invalid| Box::new(invalid.into_response()))
}

/// Runs a request read from the body and answers in the route's shape: its outcome; an
/// overloaded server's 504, the one status both verl and the client retry; or `failure`.
async fn answer<Req, Out, Answer: Serialize>(
    req: Result<Req, Box<Response>>,
    run: impl AsyncFnOnce(Req) -> cella_engine::Result<Out>,
    outcome: fn(Out) -> Answer,
    failure: Failure,
) -> Response {
    let req = match req {
        Ok(req) => req,
        Err(answer) => return *answer,
    };
    match run(req).await {
        Ok(out) => axum::Json(outcome(out)).into_response(),
        Err(e @ Error::Busy(_)) => (
            StatusCode::GATEWAY_TIMEOUT,
            axum::Json(json!({ "detail": e.to_string() })),
        )
            .into_response(),
        Err(e) => failure(e),
    }
}

async fn run_code(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    let run = async |req| state.runs.run(req).await;
    answer(
        run_request(body),
        run,
        RunCodeResponse::from_outcome,
        RUN_CODE_FAILURE,
    )
    .await
}

fn run_request(body: Result<Bytes, BytesRejection>) -> Result<RunRequest, Box<Response>> {
    let body = request_object(body, RUN_CODE_FAILURE)?;
    let mut f = Fields::new(&body);
    let compile_timeout = f.float("compile_timeout", 10.0);
    let run_timeout = f.float("run_timeout", 10.0);
    let code = f.string("code");
    let stdin = f.optional_string("stdin");
    let language = f.literal("language", &language_names(), None);
    let common = Common::read(f, true, RUN_CODE_FAILURE)?;
    Ok(RunRequest {
        language,
        code,
        stdin: stdin.map(String::into_bytes),
        compile_timeout: seconds(compile_timeout),
        run_timeout: seconds(run_timeout),
        memory_mb: common.memory_mb,
        files: common.files,
        fetch_files: common.fetch_files,
        image: None,
    })
}

#[derive(Serialize)]
pub struct CellRunResult {
    pub stdout: String,
    pub stderr: String,
    pub display: Vec<Value>,
    pub error: Vec<Value>,
    /// The cell printed or displayed more than the output cap: later outputs were dropped.
    pub truncated: bool,
}

impl From<&CellResult> for CellRunResult {
    fn from(c: &CellResult) -> CellRunResult {
        CellRunResult {
            stdout: c.stream("stdout"),
            stderr: c.stream("stderr"),
            display: c.displays(),
            error: c.errors(),
            truncated: c.truncated,
        }
    }
}

#[derive(Serialize)]
pub struct RunJupyterResponse {
    pub status: &'static str,
    pub message: String,
    pub driver: Option<CommandRunResult>,
    pub cells: Vec<CellRunResult>,
    pub executor_pod_name: Option<String>,
    pub files: serde_json::Map<String, Value>,
}

impl RunJupyterResponse {
    fn failure(e: Error) -> RunJupyterResponse {
        crate::error::log_if_fault(&e);
        RunJupyterResponse {
            status: error_status(&e),
            message: e.to_string(),
            driver: None,
            cells: Vec::new(),
            executor_pod_name: pod_name(),
            files: Default::default(),
        }
    }

    /// The kernel stands in for SandboxFusion's driver process: it `Finished`, or hit the
    /// total timeout, or died of a cell's code (then, as a failing program's run, the status
    /// is `Failed`: the client retries only what the server could not do).
    fn from_outcome(o: NotebookOutcome) -> RunJupyterResponse {
        let death = o.kernel_death.as_ref();
        let exit = death.and_then(|d| d.exit.as_ref());
        let driver = CommandRunResult {
            status: if o.timed_out {
                "TimeLimitExceeded"
            } else {
                "Finished"
            },
            execution_time: Some(o.wall.as_secs_f64()),
            return_code: match death {
                _ if o.timed_out => None,
                Some(_) => exit.and_then(return_code),
                None => Some(0),
            },
            stdout: Some(String::new()),
            stderr: Some(death.map(|d| d.stderr_tail.clone()).unwrap_or_default()),
            cpu_time: None,
            stdout_truncated: false,
            stderr_truncated: false,
            oom_killed: exit.is_some_and(|e| e.oom_killed),
        };
        let failed = o.timed_out || death.is_some();
        RunJupyterResponse {
            status: if failed { "Failed" } else { "Success" },
            message: with_fetch_note(
                death
                    .map(|d| format!("the Jupyter kernel {}", d.how))
                    .unwrap_or_default(),
                &o.fetched,
            ),
            driver: Some(driver),
            cells: o.cells.iter().map(CellRunResult::from).collect(),
            executor_pod_name: pod_name(),
            files: encode_files(o.fetched.files),
        }
    }
}

async fn run_jupyter(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let run = async |req| state.runs.run_notebook(req).await;
    let outcome = RunJupyterResponse::from_outcome;
    answer(notebook_request(body), run, outcome, RUN_JUPYTER_FAILURE).await
}

fn notebook_request(body: Result<Bytes, BytesRejection>) -> Result<NotebookRequest, Box<Response>> {
    let body = request_object(body, RUN_JUPYTER_FAILURE)?;
    let mut f = Fields::new(&body);
    let cells = match body.get("cells") {
        None => {
            f.string("cells");
            Vec::new()
        }
        Some(_) => f.string_list("cells"),
    };
    let cell_timeout = f.float("cell_timeout", 0.0);
    let total_timeout = f.float("total_timeout", 45.0);
    f.literal("kernel", &["python3"], Some("python3"));
    let common = Common::read(f, false, RUN_JUPYTER_FAILURE)?;
    Ok(NotebookRequest {
        cells,
        cell_timeout: (cell_timeout > 0.0).then(|| seconds(cell_timeout)),
        total_timeout: seconds(if total_timeout > 0.0 {
            total_timeout
        } else {
            45.0
        }),
        memory_mb: common.memory_mb,
        files: common.files,
        fetch_files: common.fetch_files,
    })
}
