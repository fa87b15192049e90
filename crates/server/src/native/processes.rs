//! `/api/v1/sandboxes/{id}/exec` and `/processes`: run commands, collected, streamed or in
//! the background.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use cella_engine::process::{self, Captured, Chunk, ExecOptions, Exit, Outcome, Process, Stream};
use cella_engine::{Config, Engine};
use futures::{Stream as FStream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::common::stream::{self, Named};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Json, Path, Query};

/// A command to run.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
#[schema(as = ExecRequest)]
pub struct ExecBody {
    /// The program and its arguments (found on `PATH` if it has no `/`).
    pub command: Option<Vec<String>>,
    /// A shell command line, run with `bash -c`. Give this or `command`.
    pub shell: Option<String>,
    /// Added to (and overriding) the sandbox's environment.
    pub env: BTreeMap<String, String>,
    /// Working directory (default: the home directory, `/home/user`).
    pub cwd: Option<String>,
    /// Text written to the program's stdin, which is then closed.
    pub stdin: Option<String>,
    /// Wall-clock limit in seconds; at the limit the process and all it started are killed.
    pub timeout: Option<f64>,
    /// Bytes of stdout and of stderr to keep; the rest is drained and dropped.
    pub output_cap: Option<usize>,
}

impl ExecBody {
    fn into_options(self, config: &Config) -> cella_engine::Result<ExecOptions> {
        let timeout = self.timeout.unwrap_or(config.sandbox.exec_timeout_secs);
        Ok(ExecOptions {
            argv: process::argv_of(self.command, self.shell)?,
            env: self.env,
            cwd: self.cwd,
            stdin: self.stdin.map(String::into_bytes),
            timeout: Some(process::checked_timeout(config, "timeout", timeout)?),
            output_cap: process::output_cap(config, self.output_cap)?,
        })
    }
}

/// How a process ended.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Exit)]
pub struct ExitView {
    /// Exit status, when the process exited on its own.
    pub exit_code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// Wall-clock seconds from start to exit.
    pub wall_time: f64,
    /// CPU seconds (user + system) of the process and the children it waited for.
    pub cpu_time: f64,
    /// Killed at its deadline (with every process it started).
    pub timed_out: bool,
    /// Killed by the kernel's OOM killer at the sandbox's memory limit (it, or a child whose
    /// death it reported with exit code 137).
    pub oom_killed: bool,
    /// Killed through the API.
    pub killed: bool,
    /// The sandbox went away before the process finished.
    pub sandbox_lost: bool,
}

impl From<Exit> for ExitView {
    fn from(e: Exit) -> ExitView {
        ExitView {
            exit_code: e.exit_code,
            signal: e.signal,
            wall_time: e.wall_time,
            cpu_time: e.cpu_time,
            timed_out: e.timed_out,
            oom_killed: e.oom_killed,
            killed: e.killed,
            sandbox_lost: e.sandbox_lost,
        }
    }
}

/// What a command printed.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Output {
    /// Output decoded as UTF-8 (invalid sequences replaced).
    pub stdout: String,
    pub stderr: String,
    /// More output was produced than `output_cap` bytes; only the first part is here.
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
}

impl From<Captured> for Output {
    fn from(out: Captured) -> Output {
        Output {
            stdout: process::text(out.stdout),
            stderr: process::text(out.stderr),
            stdout_truncated: out.stdout_truncated,
            stderr_truncated: out.stderr_truncated,
        }
    }
}

/// The result of a finished command.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ExecResult {
    #[serde(flatten)]
    pub exit: ExitView,
    #[serde(flatten)]
    pub output: Output,
}

impl ExecResult {
    pub fn new(exit: Exit, out: Captured) -> ExecResult {
        ExecResult {
            exit: exit.into(),
            output: out.into(),
        }
    }
}

#[utoipa::path(post, path = "/sandboxes/{id}/exec", operation_id = "exec", tag = "processes", request_body = ExecBody,
    responses((status = 200, body = ExecResult), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn exec(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
    Json(req): Json<ExecBody>,
) -> ApiResult<Json<ExecResult>> {
    let sandbox = engine.get(&id)?;
    let opts = req.into_options(&engine.config)?;
    let Outcome { exit, output } = process::run(&sandbox, opts).await?;
    Ok(Json(ExecResult::new(exit, output)))
}

/// One line of a streamed exec (NDJSON), or one event (SSE, with `type` as the event name).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum StreamEvent {
    Started {
        id: u64,
        pid: i32,
    },
    Stdout {
        data: String,
    },
    Stderr {
        data: String,
    },
    Exit {
        #[serde(flatten)]
        exit: ExitView,
        stdout_truncated: bool,
        stderr_truncated: bool,
    },
}

impl Named for StreamEvent {
    fn name(&self) -> &'static str {
        match self {
            StreamEvent::Started { .. } => "started",
            StreamEvent::Stdout { .. } => "stdout",
            StreamEvent::Stderr { .. } => "stderr",
            StreamEvent::Exit { .. } => "exit",
        }
    }
}

#[utoipa::path(post, path = "/sandboxes/{id}/exec/stream", operation_id = "exec_stream", tag = "processes", request_body = ExecBody,
    description = "Runs a command and streams its output as it comes: NDJSON lines by default, \
                   Server-Sent Events when the request accepts `text/event-stream`.",
    responses((status = 200, body = StreamEvent, content_type = "application/x-ndjson"), (status = 400, body = ErrorBody)))]
pub async fn exec_stream(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(req): Json<ExecBody>,
) -> ApiResult<Response> {
    let sandbox = engine.get(&id)?;
    let opts = req.into_options(&engine.config)?;
    let (tx, rx) = mpsc::channel(64);
    let process = process::start(&sandbox, opts, Some(tx)).await?;
    Ok(stream::respond(&headers, events(process, rx)))
}

fn events(process: Arc<Process>, rx: mpsc::Receiver<Chunk>) -> impl FStream<Item = StreamEvent> {
    let started = StreamEvent::Started {
        id: process.id,
        pid: process.pid,
    };
    let output = crate::common::stream::of_channel(rx).map(|Chunk::Output(stream, data)| {
        let data = String::from_utf8_lossy(&data).into_owned();
        match stream {
            Stream::Stdout => StreamEvent::Stdout { data },
            Stream::Stderr => StreamEvent::Stderr { data },
        }
    });
    let end = futures::stream::once(async move {
        let exit = process.wait(None).await;
        let out = process.captured();
        exit.map(|exit| StreamEvent::Exit {
            exit: exit.into(),
            stdout_truncated: out.stdout_truncated,
            stderr_truncated: out.stderr_truncated,
        })
    })
    .filter_map(|e| async move { e });
    futures::stream::once(async move { started })
        .chain(output)
        .chain(end)
}

/// A process started in a sandbox, with the output it has produced so far.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ProcessInfo {
    /// The process's id in the API.
    pub id: u64,
    /// Its pid inside the sandbox.
    pub pid: i32,
    pub command: Vec<String>,
    pub cwd: String,
    /// Seconds since the epoch.
    pub started_at: f64,
    pub running: bool,
    /// How it ended, once it has.
    pub exit: Option<ExitView>,
    /// What it printed so far.
    #[serde(flatten)]
    pub output: Output,
}

impl From<&Process> for ProcessInfo {
    fn from(p: &Process) -> ProcessInfo {
        let exit = p.exit();
        ProcessInfo {
            id: p.id,
            pid: p.pid,
            command: p.argv.clone(),
            cwd: p.cwd.clone(),
            started_at: p
                .started_at
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            running: exit.is_none(),
            exit: exit.map(ExitView::from),
            output: p.captured().into(),
        }
    }
}

#[utoipa::path(post, path = "/sandboxes/{id}/processes", operation_id = "spawn_process", tag = "processes", request_body = ExecBody,
    description = "Starts a command in the background. Without `timeout` it runs until it exits, is killed, or the sandbox stops.",
    responses((status = 201, body = ProcessInfo), (status = 400, body = ErrorBody)))]
pub async fn spawn(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
    Json(req): Json<ExecBody>,
) -> ApiResult<(StatusCode, Json<ProcessInfo>)> {
    let sandbox = engine.get(&id)?;
    let background = req.timeout.is_none();
    let mut opts = req.into_options(&engine.config)?;
    if background {
        opts.timeout = None;
    }
    let process = process::start(&sandbox, opts, None).await?;
    Ok((
        StatusCode::CREATED,
        Json(ProcessInfo::from(process.as_ref())),
    ))
}

#[utoipa::path(get, path = "/sandboxes/{id}/processes", operation_id = "list_processes", tag = "processes",
    responses((status = 200, body = Vec<ProcessInfo>)))]
pub async fn list(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<ProcessInfo>>> {
    let sandbox = engine.get(&id)?;
    Ok(Json(
        sandbox
            .processes()
            .iter()
            .map(|p| ProcessInfo::from(p.as_ref()))
            .collect(),
    ))
}

#[utoipa::path(get, path = "/sandboxes/{id}/processes/{pid}", operation_id = "get_process", tag = "processes",
    responses((status = 200, body = ProcessInfo), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(engine): State<Arc<Engine>>,
    Path((id, pid)): Path<(String, u64)>,
) -> ApiResult<Json<ProcessInfo>> {
    let process = engine.get(&id)?.process(pid)?;
    Ok(Json(ProcessInfo::from(process.as_ref())))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    /// Seconds to wait at most (default 30); the answer then says whether it still runs.
    timeout: Option<f64>,
}

#[utoipa::path(post, path = "/sandboxes/{id}/processes/{pid}/wait", operation_id = "wait_process", tag = "processes", params(WaitQuery),
    responses((status = 200, body = ProcessInfo), (status = 404, body = ErrorBody)))]
pub async fn wait(
    State(engine): State<Arc<Engine>>,
    Path((id, pid)): Path<(String, u64)>,
    Query(q): Query<WaitQuery>,
) -> ApiResult<Json<ProcessInfo>> {
    let process = engine.get(&id)?.process(pid)?;
    let secs = q.timeout.unwrap_or(30.0);
    if !(0.0..=engine.config.limits.max_exec_timeout_secs).contains(&secs) {
        return Err(ApiError::bad_request("timeout out of range"));
    }
    process.wait(Some(Duration::from_secs_f64(secs))).await;
    Ok(Json(ProcessInfo::from(process.as_ref())))
}

#[utoipa::path(post, path = "/sandboxes/{id}/processes/{pid}/kill", operation_id = "kill_process", tag = "processes",
    description = "Kills the process and every process it started; answers once it has ended.",
    responses((status = 200, body = ProcessInfo), (status = 404, body = ErrorBody)))]
pub async fn kill(
    State(engine): State<Arc<Engine>>,
    Path((id, pid)): Path<(String, u64)>,
) -> ApiResult<Json<ProcessInfo>> {
    let process = engine.get(&id)?.process(pid)?;
    process.kill();
    process.wait(Some(Duration::from_secs(10))).await;
    Ok(Json(ProcessInfo::from(process.as_ref())))
}
