//! `/api/v1/sandboxes/{id}/sessions`: interactive bash sessions on a pseudo-terminal, whose
//! working directory, variables and functions stay from one command to the next.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use cella_engine::Engine;
use cella_engine::process;
use cella_engine::session::{Session, SessionCommand, SessionOutcome, SessionSpec, Terminal};
use serde::{Deserialize, Serialize};

use crate::common::time::rfc3339_of_secs;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{Json, Path};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// Unique in the sandbox (default: a new random name).
    pub name: Option<String>,
    /// Added to the sandbox's environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The shell's first working directory (default the home directory).
    pub cwd: Option<String>,
}

/// A session.
#[derive(Serialize, utoipa::ToSchema)]
pub struct SessionView {
    pub name: String,
    pub cwd: Option<String>,
    /// RFC 3339.
    pub created_at: String,
}

impl From<&Session> for SessionView {
    fn from(s: &Session) -> SessionView {
        SessionView {
            name: s.spec.name.clone(),
            cwd: s.spec.cwd.clone(),
            created_at: rfc3339_of_secs(s.created_at as f64),
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunInSession {
    /// One or more lines of bash, run as one command in the session's shell.
    pub command: String,
    /// Seconds (default `sandbox.exec_timeout_secs`). Past it the command gets a Ctrl-C; a
    /// shell that does not come back within 2 s is started afresh.
    pub timeout: Option<f64>,
    /// Texts that end the wait as the prompt does: a program asking for input (`>>> `).
    #[serde(default)]
    pub expect: Vec<String>,
    /// Send `command` as typed to what runs in the session now (a program waiting for
    /// input), instead of as a command of its own.
    #[serde(default)]
    pub interactive: bool,
}

/// What a command did.
#[derive(Serialize, utoipa::ToSchema)]
pub struct SessionResult {
    /// Stdout and stderr merged as the terminal showed them, escape sequences removed.
    pub output: String,
    /// `null` if the shell did not come back to its prompt.
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    /// Output past `sandbox.output_cap_bytes` was dropped.
    pub truncated: bool,
    /// The shell was started afresh after a timeout: its state was lost.
    pub restarted: bool,
    /// The shell ended (`exit`, killed): the session is gone; make it again.
    pub ended: bool,
    /// The `expect` text seen (the command may still be running).
    pub matched: Option<String>,
}

impl From<SessionOutcome> for SessionResult {
    fn from(o: SessionOutcome) -> SessionResult {
        SessionResult {
            output: o.output.replace("\r\n", "\n"),
            exit_code: o.exit_code,
            timed_out: o.timed_out,
            truncated: o.truncated,
            restarted: o.restarted,
            ended: o.ended,
            matched: o.matched,
        }
    }
}

#[utoipa::path(post, path = "/sandboxes/{id}/sessions", operation_id = "create_session", tag = "sessions",
    request_body = CreateSession,
    responses((status = 201, body = SessionView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
    Json(req): Json<CreateSession>,
) -> ApiResult<(StatusCode, Json<SessionView>)> {
    let sandbox = engine.get(&id)?;
    let name = req
        .name
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()[..8].to_string());
    let spec = SessionSpec {
        name,
        env: req.env,
        cwd: req.cwd,
    };
    let session = sandbox.create_session(spec).await?;
    Ok((StatusCode::CREATED, Json(SessionView::from(&*session))))
}

#[utoipa::path(get, path = "/sandboxes/{id}/sessions", operation_id = "list_sessions", tag = "sessions",
    responses((status = 200, body = Vec<SessionView>), (status = 404, body = ErrorBody)))]
pub async fn list(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<SessionView>>> {
    let sandbox = engine.get(&id)?;
    let sessions = sandbox.sessions();
    Ok(Json(
        sessions.iter().map(|s| SessionView::from(&**s)).collect(),
    ))
}

#[utoipa::path(post, path = "/sandboxes/{id}/sessions/{name}/run", operation_id = "run_in_session", tag = "sessions",
    request_body = RunInSession,
    description = "Runs a command in the session's shell, after the calls before it.",
    responses((status = 200, body = SessionResult), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn run(
    State(engine): State<Arc<Engine>>,
    Path((id, name)): Path<(String, String)>,
    Json(req): Json<RunInSession>,
) -> ApiResult<Json<SessionResult>> {
    let config = &engine.config;
    let timeout = req.timeout.unwrap_or(config.sandbox.exec_timeout_secs);
    let timeout: Duration = process::checked_timeout(config, "timeout", timeout)?;
    let sandbox = engine.get(&id)?;
    let cap = config.sandbox.output_cap_bytes;
    let command = SessionCommand {
        text: req.command,
        expect: req.expect,
        interactive: req.interactive,
    };
    let outcome = sandbox
        .run_in_session(&name, &command, timeout, cap)
        .await?;
    Ok(Json(outcome.into()))
}

#[utoipa::path(delete, path = "/sandboxes/{id}/sessions/{name}", operation_id = "close_session", tag = "sessions",
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn close(
    State(engine): State<Arc<Engine>>,
    Path((id, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let sandbox = engine.get(&id)?;
    sandbox.close_session(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct TerminalQuery {
    /// The terminal's size (default 80 × 24).
    pub cols: Option<u16>,
    pub rows: Option<u16>,
    /// `TERM` (default `xterm-256color`).
    pub term: Option<String>,
}

#[utoipa::path(get, path = "/sandboxes/{id}/terminal", operation_id = "attach_terminal", tag = "sessions",
    params(TerminalQuery),
    description = "A WebSocket to an interactive login shell on a terminal of the sandbox (what `cella shell` \
                   uses). Binary or text frames from the client are its keystrokes; a text frame \
                   `{\"type\": \"resize\", \"cols\": C, \"rows\": R}` resizes it. The server sends the terminal's \
                   output as binary frames and, when the shell exits, `{\"type\": \"exit\", \"code\": N}`.",
    responses((status = 101), (status = 404, body = ErrorBody)))]
pub async fn terminal(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<TerminalQuery>,
    upgrade: axum::extract::ws::WebSocketUpgrade,
) -> ApiResult<axum::response::Response> {
    let sandbox = engine.get(&id)?;
    let mut env = BTreeMap::new();
    env.insert(
        "TERM".to_string(),
        q.term.unwrap_or_else(|| "xterm-256color".into()),
    );
    let opts = cella_engine::process::ExecOptions {
        argv: vec!["bash".into(), "-l".into()],
        env,
        cwd: None,
        stdin: None,
        timeout: None,
        output_cap: 0,
    };
    let (cols, rows) = (q.cols.unwrap_or(80).max(1), q.rows.unwrap_or(24).max(1));
    let terminal = Terminal::open(&sandbox, &opts, cols, rows).await?;
    Ok(upgrade.on_upgrade(move |socket| relay(sandbox, terminal, socket)))
}

/// Keystrokes in, output out, until the shell exits or the client goes.
async fn relay(
    sandbox: Arc<cella_engine::Sandbox>,
    mut terminal: Terminal,
    mut socket: axum::extract::ws::WebSocket,
) {
    use axum::extract::ws::Message;
    let _active = sandbox.hold_active();
    let mut buf = vec![0u8; 16 << 10];
    loop {
        tokio::select! {
            read = terminal.read(&mut buf) => match read {
                Ok(Some(n)) => {
                    let chunk = Bytes::copy_from_slice(&buf[..n]);
                    if socket.send(Message::Binary(chunk)).await.is_err() {
                        break;
                    }
                }
                _ => {
                    let code = terminal.exit_code().await;
                    let exit = serde_json::json!({"type": "exit", "code": code}).to_string();
                    let _ = socket.send(Message::Text(exit.into())).await;
                    let _ = socket.send(Message::Close(None)).await;
                    return;
                }
            },
            message = socket.recv() => match message {
                Some(Ok(Message::Binary(keys))) => {
                    if terminal.write(&keys).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Text(text))) => {
                    let control: Option<Resize> = serde_json::from_str(&text).ok();
                    let written = match control {
                        Some(r) if r.kind == "resize" => terminal.resize(r.cols.max(1), r.rows.max(1)),
                        _ => terminal.write(text.as_bytes()).await,
                    };
                    if written.is_err() {
                        break;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
        }
    }
    terminal.kill(&sandbox).await;
}

#[derive(Deserialize)]
struct Resize {
    #[serde(rename = "type")]
    kind: String,
    cols: u16,
    rows: u16,
}
