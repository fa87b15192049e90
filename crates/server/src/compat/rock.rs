//! The ROCK face: `/apis/envs/sandbox/v1/*` as the `rl-rock` SDK calls it (the union of
//! ROCK's admin and proxy roles): lifecycle, status, `execute`, bash sessions, files and
//! commit. Every answer is HTTP 200 with ROCK's envelope
//! `{"status": "Success"|"Failed", "message", "error", "result"}`; a body that does not
//! parse is the "invalid parameter" envelope, never a 422. `docs/compat/rock.md` has the
//! wire, the quirks kept and the deviations.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Multipart, Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cella_engine::gem::{Answer, EnvError, Gems};
use cella_engine::process::{self, ExecOptions};
use cella_engine::session::{SessionCommand, SessionOutcome, SessionSpec};
use cella_engine::{CreateSandbox, Engine, Error, Sandbox};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::AppState;
use crate::common::network::NetworkView;
use crate::common::time::rfc3339_of_secs;

const BAD_REQUEST: u32 = 4000;
const INTERNAL: u32 = 5000;
/// A command's timeout when a call gives none: ROCK's rocklet cuts every request at 85 s.
const DEFAULT_COMMAND_SECS: f64 = 85.0;

pub fn router() -> Router<AppState> {
    let v1 = Router::new()
        .route("/start", post(start))
        .route("/start_async", post(start))
        .route("/get_status", get(get_status))
        .route("/is_alive", get(is_alive))
        .route("/get_sandbox_statistics", get(statistics))
        .route("/stop", post(stop))
        .route("/restart", post(restart))
        .route("/sandboxes/{id}/restart", post(restart_by_path))
        .route("/delete", post(delete))
        .route("/execute", post(execute))
        .route("/create_session", post(create_session))
        .route("/run_in_session", post(run_in_session))
        .route("/close_session", post(close_session))
        .route("/read_file", post(read_file))
        .route("/write_file", post(write_file))
        .route("/upload", post(upload))
        .route("/commit", post(commit))
        .route("/commit/{id}", get(commit_status))
        .route("/warmup/tasks", post(warmup));
    let gem = Router::new()
        .route("/make", post(gem_make))
        .route("/reset", post(gem_reset))
        .route("/step", post(gem_step))
        .route("/close", post(gem_close))
        .route("/list", post(gem_list));
    Router::new()
        .nest("/apis/envs/sandbox/v1", v1)
        .nest("/apis/v1/envs/gem", gem)
}

/// The face's own state: commits under way and done, by sandbox; GEM environments.
pub struct Rock {
    commits: Mutex<HashMap<String, Value>>,
    gems: Arc<Gems>,
}

impl Rock {
    pub fn new(engine: Arc<Engine>) -> Rock {
        Rock {
            commits: Mutex::default(),
            gems: Gems::new(engine),
        }
    }
}

/// ROCK's envelope.
enum Envelope {
    Success(Value),
    /// Success with a message and no result.
    Message(String),
    /// `message`, `error`, `result`.
    Failed(Option<String>, String, Value),
}

impl IntoResponse for Envelope {
    fn into_response(self) -> Response {
        let body = match self {
            Envelope::Success(result) => {
                json!({"status": "Success", "message": null, "error": null, "result": result})
            }
            Envelope::Message(message) => {
                json!({"status": "Success", "message": message, "error": null, "result": null})
            }
            Envelope::Failed(message, error, result) => {
                json!({"status": "Failed", "message": message, "error": error, "result": result})
            }
        };
        axum::Json(body).into_response()
    }
}

/// A route's failure as ROCK's exception handler renders it: the route's message, the error,
/// and a `SandboxResponse` with its code.
fn failed(route: &str, code: u32, error: impl ToString) -> Envelope {
    let error = error.to_string();
    Envelope::Failed(
        Some(route.to_string()),
        error.clone(),
        json!({"code": code, "exit_code": null, "failure_reason": error}),
    )
}

fn code_of(e: &Error) -> u32 {
    match e {
        Error::InvalidArgument(_) | Error::NotFound { .. } | Error::Conflict(_) => BAD_REQUEST,
        Error::MissingProgram(_) | Error::TooLarge(_) => BAD_REQUEST,
        _ => INTERNAL,
    }
}

/// Parses a body as pydantic would (unknown fields ignored); a fault is ROCK's "invalid
/// parameter" envelope.
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, Envelope> {
    serde_json::from_slice(body).map_err(|e| {
        Envelope::Failed(
            Some("invalid parameter".into()),
            format!("body: {e}"),
            Value::Null,
        )
    })
}

/// A `NonBlankStr`: stripped, at least one character.
fn non_blank(field: &str, value: Option<&str>) -> Result<String, Envelope> {
    match value.map(str::trim) {
        Some(v) if !v.is_empty() => Ok(v.to_string()),
        _ => Err(Envelope::Failed(
            Some("invalid parameter".into()),
            format!("body.{field}: String should have at least 1 character"),
            Value::Null,
        )),
    }
}

/// `"8g"`, `"512m"`, `"1.5G"` in MiB.
fn memory_mb(text: &str) -> Option<u64> {
    let t = text.trim().to_ascii_lowercase();
    let t = t.trim_end_matches('b');
    let (number, unit) = t.split_at(t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len()));
    let n: f64 = number.trim().parse().ok()?;
    let mb = match unit {
        "g" | "gi" => n * 1024.0,
        "m" | "mi" | "" => n,
        "k" | "ki" => n / 1024.0,
        "t" | "ti" => n * 1024.0 * 1024.0,
        _ => return None,
    };
    (mb.is_finite() && mb > 0.0).then_some(mb.round() as u64)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct StartRequest {
    image: Option<String>,
    memory: Option<String>,
    cpus: Option<f64>,
    sandbox_id: Option<String>,
    auto_clear_time_minutes: Option<u64>,
    disk: Option<String>,
    /// cella's: network egress (none unless asked for).
    network: Option<NetworkView>,
}

async fn start(State(state): State<AppState>, body: Bytes) -> Envelope {
    const ROUTE: &str = "start sandbox failed";
    let req: StartRequest = match parse(&body) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let image = match non_blank("image", req.image.as_deref()) {
        Ok(i) => i,
        Err(e) => return e,
    };
    let limits = &state.engine.config.limits;
    let memory = match req.memory.as_deref().map(memory_mb) {
        Some(None) => return failed(ROUTE, BAD_REQUEST, "invalid memory size"),
        Some(Some(mb)) => Some(mb.clamp(16, limits.max_memory_mb)),
        None => None,
    };
    let cpus = req.cpus.map(|c| c.clamp(0.01, limits.max_cpus));
    let id = req.sandbox_id.filter(|s| !s.trim().is_empty());
    let create = CreateSandbox {
        image: Some(image),
        memory_mb: memory,
        cpus,
        id: id.clone(),
        idle_timeout_secs: req.auto_clear_time_minutes.map(|m| m * 60),
        network: req.network.map(Into::into),
        ..Default::default()
    };
    match state.engine.create(create).await {
        Ok(sandbox) => Envelope::Success(start_result(&sandbox)),
        Err(Error::Conflict(m)) if m.contains("already exists") => {
            let id = id.unwrap_or_default();
            failed(ROUTE, BAD_REQUEST, format!("Sandbox {id} already exists"))
        }
        Err(e) => failed(ROUTE, code_of(&e), e),
    }
}

fn start_result(sandbox: &Sandbox) -> Value {
    let info = sandbox.info();
    let (memory, disk) = sizes(&info);
    json!({
        "code": null, "exit_code": null, "failure_reason": null,
        "sandbox_id": info.id, "host_name": host_name(), "host_ip": "127.0.0.1",
        "cpus": info.cpus, "memory": memory, "disk": disk, "disk_limit_rootfs": disk,
    })
}

/// A sandbox's memory and disk as ROCK writes them (`"0.50g"`, `"1024M"`).
fn sizes(info: &cella_engine::sandbox::SandboxInfo) -> (String, String) {
    let memory = format!("{:.2}g", info.memory_mb as f64 / 1024.0);
    (memory, format!("{}M", info.disk_mb))
}

#[derive(Deserialize)]
struct StatusQuery {
    sandbox_id: Option<String>,
    include_all_states: Option<String>,
}

/// Python's `str(bool)` and the usual spellings, case-insensitive.
fn query_bool(value: Option<&str>) -> bool {
    value.is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"))
}

async fn get_status(State(state): State<AppState>, Query(q): Query<StatusQuery>) -> Envelope {
    const ROUTE: &str = "get sandbox status failed";
    let id = match non_blank("sandbox_id", q.sandbox_id.as_deref()) {
        Ok(id) => id,
        Err(e) => return e,
    };
    let all = query_bool(q.include_all_states.as_deref());
    let info = match state.engine.info(&id) {
        Ok(info) if all || info.state == cella_engine::sandbox::State::Running => info,
        _ => return failed(ROUTE, BAD_REQUEST, format!("Sandbox {id} not found")),
    };
    if let Ok(sandbox) = state.engine.get(&id) {
        sandbox.touch();
    }
    let running = info.state == cella_engine::sandbox::State::Running;
    let created = rfc3339_of_secs(info.created_at);
    let (memory, disk) = sizes(&info);
    let phase = |message: &str| json!({"status": "success", "message": message});
    Envelope::Success(json!({
        "sandbox_id": info.id,
        "status": {"image_pull": phase("image ready"), "docker_run": phase("sandbox started")},
        "state": if running { "running" } else { "stopped" },
        "is_alive": running,
        "host_name": host_name(), "host_ip": "127.0.0.1", "image": info.image,
        "port_mapping": {},
        "gateway_version": env!("CARGO_PKG_VERSION"), "swe_rex_version": env!("CARGO_PKG_VERSION"),
        "user_id": "default", "experiment_id": "default", "namespace": "default",
        "cpus": info.cpus, "memory": memory, "disk": disk, "disk_limit_rootfs": disk,
        "create_time": created, "start_time": created,
        "state_history": [{"from_state": "pending", "to_state": "running", "event": "alive", "timestamp": created}],
    }))
}

async fn is_alive(State(state): State<AppState>, Query(q): Query<StatusQuery>) -> Envelope {
    let id = q.sandbox_id.unwrap_or_default();
    match state.engine.get(id.trim()) {
        Ok(s) if s.is_running() => {
            Envelope::Success(json!({"is_alive": true, "message": host_name()}))
        }
        _ => Envelope::Success(
            json!({"is_alive": false, "message": format!("sandbox {id} is alive failed")}),
        ),
    }
}

async fn statistics(State(state): State<AppState>, Query(q): Query<StatusQuery>) -> Envelope {
    const ROUTE: &str = "get sandbox statistics failed";
    let sandbox = match state
        .engine
        .get(q.sandbox_id.as_deref().unwrap_or("").trim())
    {
        Ok(s) => s,
        Err(e) => return failed(ROUTE, code_of(&e), e),
    };
    let info = sandbox.info();
    let usage = sandbox.usage();
    let alive = (now_secs() - info.created_at).max(1.0);
    let cpu = usage.cpu_ns as f64 / 1e9 / (alive * info.cpus) * 100.0;
    let mem = usage.memory_bytes as f64 / (info.memory_mb << 20) as f64 * 100.0;
    let disk_bytes = sandbox
        .with_fs(|fs| fs.disk_usage().map_err(Error::internal))
        .await;
    let disk = disk_bytes.map_or(0.0, |b| b as f64 / (info.disk_mb << 20) as f64 * 100.0);
    Envelope::Success(json!({
        "cpu": (cpu * 100.0).round() / 100.0, "mem": (mem * 100.0).round() / 100.0,
        "disk": (disk * 100.0).round() / 100.0, "disk_log_percent": 0.0,
        "disk_dind_percent": 0.0, "net": 0,
    }))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ById {
    sandbox_id: Option<String>,
}

async fn stop(State(state): State<AppState>, body: Bytes) -> Envelope {
    let id =
        match parse::<ById>(&body).and_then(|b| non_blank("sandbox_id", b.sandbox_id.as_deref())) {
            Ok(id) => id,
            Err(e) => return e,
        };
    // Unknown or stopped: a no-op, as in ROCK.
    let _ = state.engine.stop(&id, "stopped").await;
    Envelope::Success(json!(format!("{id} stopped")))
}

async fn restart(State(state): State<AppState>, body: Bytes) -> Envelope {
    match parse::<ById>(&body).and_then(|b| non_blank("sandbox_id", b.sandbox_id.as_deref())) {
        Ok(id) => restarted(&state.engine, &id).await,
        Err(e) => e,
    }
}

async fn restart_by_path(State(state): State<AppState>, Path(id): Path<String>) -> Envelope {
    restarted(&state.engine, &id).await
}

/// A stopped sandbox started again under its id, with its image and limits. Its files were
/// in memory and are gone: it starts as its image.
async fn restarted(engine: &Arc<Engine>, id: &str) -> Envelope {
    const ROUTE: &str = "restart sandbox failed";
    let info = match engine.info(id) {
        Ok(info) if info.state == cella_engine::sandbox::State::Running => {
            return failed(ROUTE, BAD_REQUEST, format!("Sandbox {id} is running"));
        }
        Ok(info) => info,
        Err(e) => return failed(ROUTE, code_of(&e), e),
    };
    let create = CreateSandbox {
        id: Some(info.id),
        image: Some(info.image),
        memory_mb: Some(info.memory_mb),
        cpus: Some(info.cpus),
        env: info.env,
        idle_timeout_secs: Some(info.idle_timeout_secs),
        network: Some(info.network),
        ..Default::default()
    };
    match engine.create(create).await {
        Ok(sandbox) => Envelope::Success(start_result(&sandbox)),
        Err(e) => failed(ROUTE, code_of(&e), e),
    }
}

async fn delete(State(state): State<AppState>, body: Bytes) -> Envelope {
    let id =
        match parse::<ById>(&body).and_then(|b| non_blank("sandbox_id", b.sandbox_id.as_deref())) {
            Ok(id) => id,
            Err(e) => return e,
        };
    let _ = state.engine.delete(&id).await;
    Envelope::Success(json!(format!("{id} deleted")))
}

/// A request body that names its sandbox.
trait Addressed: DeserializeOwned {
    fn sandbox_id(&self) -> Option<&str>;
}

/// The body of a data-plane call and the sandbox it names, or the envelope to answer.
fn addressed<T: Addressed>(
    engine: &Engine,
    body: &Bytes,
    route: &str,
) -> Result<(T, Arc<Sandbox>), Envelope> {
    let req: T = parse(body)?;
    let sandbox = sandbox_of(engine, route, req.sandbox_id())?;
    Ok((req, sandbox))
}

/// The sandbox a data-plane call names, or the envelope ROCK answers for one it lacks.
fn sandbox_of(engine: &Engine, route: &str, id: Option<&str>) -> Result<Arc<Sandbox>, Envelope> {
    let id = non_blank("sandbox_id", id)?;
    engine.get(&id).map_err(|e| failed(route, code_of(&e), e))
}

impl Addressed for ExecuteRequest {
    fn sandbox_id(&self) -> Option<&str> {
        self.sandbox_id.as_deref()
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ExecuteRequest {
    sandbox_id: Option<String>,
    command: Option<Value>,
    timeout: Option<f64>,
    env: Option<BTreeMap<String, String>>,
    cwd: Option<String>,
    shell: bool,
}

async fn execute(State(state): State<AppState>, body: Bytes) -> Envelope {
    const ROUTE: &str = "execute command failed";
    let (req, sandbox) = match addressed::<ExecuteRequest>(&state.engine, &body, ROUTE) {
        Ok(addressed) => addressed,
        Err(e) => return e,
    };
    let argv = match req.command {
        Some(Value::String(line)) if req.shell => process::shell_argv(line),
        // Without `shell`, a string is the program's name, as `subprocess.run` takes it.
        Some(Value::String(program)) => vec![program],
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string())
            })
            .collect(),
        _ => {
            return failed(
                "invalid parameter",
                BAD_REQUEST,
                "body.command: Field required",
            );
        }
    };
    let config = &state.engine.config;
    let timeout = req
        .timeout
        .unwrap_or(1200.0)
        .clamp(0.001, config.limits.max_exec_timeout_secs);
    let opts = ExecOptions {
        argv,
        env: req.env.unwrap_or_default(),
        cwd: req.cwd,
        stdin: None,
        timeout: Some(Duration::from_secs_f64(timeout)),
        output_cap: config.sandbox.output_cap_bytes,
    };
    match process::run(&sandbox, opts).await {
        Ok(o) if !o.exit.timed_out => Envelope::Success(json!({
            "stdout": process::text(o.output.stdout),
            "stderr": process::text(o.output.stderr),
            "exit_code": o.exit.exit_code.or(o.exit.signal.map(|s| 128 + s)),
        })),
        // The rocklet's errors (a timeout, a missing program) reach the SDK as exit code -1.
        _ => Envelope::Success(json!({"stdout": "", "stderr": "", "exit_code": -1})),
    }
}

impl Addressed for SessionRequest {
    fn sandbox_id(&self) -> Option<&str> {
        self.sandbox_id.as_deref()
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SessionRequest {
    sandbox_id: Option<String>,
    session: Option<String>,
    env: Option<BTreeMap<String, String>>,
    command: Option<String>,
    timeout: Option<f64>,
    check: Option<String>,
    expect: Vec<String>,
    is_interactive_command: bool,
}

impl SessionRequest {
    fn session(&self) -> String {
        self.session.clone().unwrap_or_else(|| "default".into())
    }
}

async fn create_session(State(state): State<AppState>, body: Bytes) -> Envelope {
    const ROUTE: &str = "create session failed";
    let (req, sandbox) = match addressed::<SessionRequest>(&state.engine, &body, ROUTE) {
        Ok(addressed) => addressed,
        Err(e) => return e,
    };
    let spec = SessionSpec {
        name: req.session(),
        env: req.env.clone().unwrap_or_default(),
        cwd: None,
    };
    match sandbox.create_session(spec).await {
        // An existing name is swallowed, as ROCK's admin does.
        Ok(_) | Err(Error::Conflict(_)) => {
            Envelope::Success(json!({"output": "", "session_type": "bash"}))
        }
        Err(e) => failed(ROUTE, code_of(&e), e),
    }
}

/// `run_in_session` fails as ROCK does: `message` null, the rocklet's error text.
fn session_failure(error: String) -> Envelope {
    Envelope::Failed(None, error, Value::Null)
}

async fn run_in_session(State(state): State<AppState>, body: Bytes) -> Envelope {
    let (req, sandbox) =
        match addressed::<SessionRequest>(&state.engine, &body, "run in session failed") {
            Ok(addressed) => addressed,
            Err(e) => return e,
        };
    let Some(command) = req.command.clone() else {
        return failed(
            "invalid parameter",
            BAD_REQUEST,
            "body.command: Field required",
        );
    };
    let name = req.session();
    let config = &state.engine.config;
    let secs = req
        .timeout
        .unwrap_or(DEFAULT_COMMAND_SECS)
        .clamp(0.001, config.limits.max_exec_timeout_secs);
    let cap = config.sandbox.output_cap_bytes;
    let sent = SessionCommand {
        text: command.clone(),
        expect: req.expect.clone(),
        interactive: req.is_interactive_command,
    };
    let timeout = Duration::from_secs_f64(secs);
    let outcome: SessionOutcome = match sandbox.run_in_session(&name, &sent, timeout, cap).await {
        Ok(o) => o,
        Err(Error::NotFound { .. }) => {
            return session_failure(format!("session '{name}' does not exist"));
        }
        Err(Error::InvalidArgument(m)) if m.starts_with("bash syntax error") => {
            let detail = m.trim_start_matches("bash syntax error: ");
            return session_failure(format!(
                "Error (exit code 2) while checking bash command \n\"{command}\"\n---- Stderr ----\n{detail}"
            ));
        }
        Err(e) => return session_failure(e.to_string()),
    };
    // Escape sequences are gone already; ROCK strips the whitespace around it too.
    let output = outcome.output.trim().to_string();
    if outcome.timed_out {
        return session_failure(format!(
            "timeout after {secs} seconds while running command '{command}'"
        ));
    }
    let check = req.check.as_deref().unwrap_or("raise");
    // An interactive command, or one stopped at an `expect` text, has no status yet: 0.
    let exit_code = match (check, &outcome.matched) {
        ("ignore", _) => None,
        (_, Some(_)) => Some(0),
        _ if req.is_interactive_command => Some(0),
        _ => outcome.exit_code,
    };
    let expect_string = (outcome.matched.clone()).unwrap_or_else(|| "SHELLPS1PREFIX".into());
    if check == "raise" && exit_code.is_some_and(|c| c != 0) {
        return session_failure(format!(
            "Command '{command}' failed with exit code {}. Here is the output:\n'{output}'",
            exit_code.unwrap_or_default()
        ));
    }
    Envelope::Success(json!({
        "session_type": "bash", "output": output, "exit_code": exit_code,
        "failure_reason": "", "expect_string": expect_string,
    }))
}

async fn close_session(State(state): State<AppState>, body: Bytes) -> Envelope {
    let (req, sandbox) =
        match addressed::<SessionRequest>(&state.engine, &body, "close session failed") {
            Ok(addressed) => addressed,
            Err(e) => return e,
        };
    // A missing session is swallowed, as ROCK's admin does.
    let _ = sandbox.close_session(&req.session()).await;
    Envelope::Success(json!({"session_type": "bash"}))
}

impl Addressed for FileRequest {
    fn sandbox_id(&self) -> Option<&str> {
        self.sandbox_id.as_deref()
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct FileRequest {
    sandbox_id: Option<String>,
    path: Option<String>,
    content: Option<String>,
}

async fn read_file(State(state): State<AppState>, body: Bytes) -> Envelope {
    let (req, sandbox) = match addressed::<FileRequest>(&state.engine, &body, "read file failed") {
        Ok(addressed) => addressed,
        Err(e) => return e,
    };
    let max = state.engine.config.limits.max_read_bytes;
    let path = req.path.unwrap_or_default();
    let read = sandbox.on_path(&path, move |fs, p| fs.read(p, max)).await;
    // A missing file reads as empty, as ROCK's admin swallows the rocklet's error.
    let content = read
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    Envelope::Success(json!({"content": content}))
}

async fn write_file(State(state): State<AppState>, body: Bytes) -> Envelope {
    let (req, sandbox) = match addressed::<FileRequest>(&state.engine, &body, "write file failed") {
        Ok(addressed) => addressed,
        Err(e) => return e,
    };
    let (path, content) = (
        req.path.unwrap_or_default(),
        req.content.unwrap_or_default(),
    );
    let written = sandbox
        .on_path(&path, move |fs, p| {
            fs.write(p, content.as_bytes(), 0o644, true)
        })
        .await;
    Envelope::Success(
        json!({"success": written.is_ok(), "message": written.err().map(|e| e.to_string()).unwrap_or_default()}),
    )
}

/// A multipart form: `file`, `target_path`, `sandbox_id` (in any order).
async fn upload(
    State(state): State<AppState>,
    form: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Envelope {
    const ROUTE: &str = "upload file failed";
    let Ok(mut form) = form else {
        return Envelope::Failed(
            Some("invalid parameter".into()),
            "a multipart form is required".into(),
            Value::Null,
        );
    };
    let (mut id, mut target, mut file) = (None, None, None::<(String, Bytes)>);
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return failed(ROUTE, BAD_REQUEST, e.body_text()),
        };
        let name = field.name().unwrap_or("").to_string();
        let file_name = field.file_name().unwrap_or("upload").to_string();
        let data = match field.bytes().await {
            Ok(d) => d,
            Err(e) => return failed(ROUTE, BAD_REQUEST, e.body_text()),
        };
        match name.as_str() {
            "sandbox_id" => id = Some(String::from_utf8_lossy(&data).into_owned()),
            "target_path" => target = Some(String::from_utf8_lossy(&data).into_owned()),
            "file" => file = Some((file_name, data)),
            _ => {}
        }
    }
    let sandbox = match sandbox_of(&state.engine, ROUTE, id.as_deref()) {
        Ok(s) => s,
        Err(e) => return e,
    };
    let (Some(target), Some((_, data))) = (target, file) else {
        return failed(
            "invalid parameter",
            BAD_REQUEST,
            "file and target_path are required",
        );
    };
    let file_name = target.rsplit('/').next().unwrap_or("").to_string();
    let written = sandbox
        .on_path(&target, move |fs, p| fs.write(p, &data, 0o644, true))
        .await;
    match written {
        Ok(()) => {
            Envelope::Success(json!({"success": true, "message": "", "file_name": file_name}))
        }
        Err(e) => failed(ROUTE, code_of(&e), e),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CommitRequest {
    sandbox_id: Option<String>,
    image_tag: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// Commits asynchronously (the proxy role the SDK targets): the answer says RUNNING, and
/// `GET /commit/{id}` follows it. With a username, the image is pushed to its tag's registry.
async fn commit(State(state): State<AppState>, body: Bytes) -> Envelope {
    const ROUTE: &str = "commit sandbox failed";
    let req: CommitRequest = match parse(&body) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let id = match non_blank("sandbox_id", req.sandbox_id.as_deref()) {
        Ok(id) => id,
        Err(e) => return e,
    };
    let tag = match non_blank("image_tag", req.image_tag.as_deref()) {
        Ok(t) => t,
        Err(e) => return e,
    };
    if state.engine.get(&id).is_err() {
        return failed(ROUTE, BAD_REQUEST, format!("Sandbox {id} not found"));
    }
    let started = rfc3339_of_secs(now_secs());
    let running =
        json!({"sandbox_id": id, "image_tag": tag, "phase": "RUNNING", "started_at": started});
    let answer = running.clone();
    state
        .rock
        .commits
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id.clone(), running.clone());
    let (engine, rock) = (state.engine.clone(), state.rock.clone());
    tokio::spawn(async move {
        let credentials = req.username.filter(|u| !u.is_empty()).map(|username| {
            cella_engine::image::registry::Credentials {
                username,
                password: req.password.unwrap_or_default(),
            }
        });
        let (stage, result) = match engine.commit(&id, &tag).await {
            Err(e) => ("commit", Err(e)),
            Ok(image) if credentials.is_some() => {
                let (tx, _rx) = tokio::sync::watch::channel(Default::default());
                let pushed = engine.push(&image.name, Some(&tag), credentials, &tx).await;
                ("push", pushed.map(drop))
            }
            Ok(_) => ("commit", Ok(())),
        };
        let mut status = running;
        status["completed_at"] = json!(rfc3339_of_secs(now_secs()));
        match result {
            Ok(()) => {
                status["phase"] = json!("SUCCEEDED");
                status["exit_code"] = json!(0);
            }
            Err(e) => {
                status["phase"] = json!("FAILED");
                status["exit_code"] = json!(1);
                status["failed_stage"] = json!(stage);
                let code = if stage == "push" {
                    "PUSH_FAILED"
                } else {
                    "COMMIT_FAILED"
                };
                status["error_code"] = json!(code);
                status["error_message"] = json!(e.to_string());
            }
        }
        rock.commits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, status);
    });
    Envelope::Success(answer)
}

async fn commit_status(State(state): State<AppState>, Path(id): Path<String>) -> Envelope {
    match state
        .rock
        .commits
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&id)
    {
        Some(status) => Envelope::Success(status.clone()),
        None => failed(
            "get commit status failed",
            BAD_REQUEST,
            format!("no commit of sandbox {id}"),
        ),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WarmupRequest {
    image: Option<String>,
}

/// Pulls the image ahead of the sandboxes that will name it.
async fn warmup(State(state): State<AppState>, body: Bytes) -> Envelope {
    let req: WarmupRequest = match parse(&body) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let image = match non_blank("image", req.image.as_deref()) {
        Ok(i) => i,
        Err(e) => return e,
    };
    if state.engine.images.local_name(&image).is_none() {
        let _ = state.engine.pull(&image, None);
    }
    Envelope::Message("warmup task started".into())
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// GEM's routes answer bare JSON; what fails is HTTP 500 `{"detail", "traceback"}`, as
/// FastAPI renders ROCK's unhandled exceptions there.
fn gem_failure(detail: impl ToString, traceback: Vec<String>) -> Response {
    let body = json!({"detail": detail.to_string(), "traceback": traceback});
    (
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        axum::Json(body),
    )
        .into_response()
}

fn gem_answer(answer: Answer) -> Response {
    match answer {
        Ok(Ok(value)) => axum::Json(value).into_response(),
        Ok(Err(EnvError { message, traceback })) => gem_failure(message, traceback),
        Err(e) => gem_failure(e, Vec::new()),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct GemRequest {
    env_id: Option<String>,
    sandbox_id: Option<String>,
    seed: Option<i64>,
    action: Option<String>,
}

fn gem_request(body: &Bytes, need_id: bool) -> Result<(GemRequest, String), Envelope> {
    let req: GemRequest = parse(body)?;
    let id = if need_id {
        non_blank("sandbox_id", req.sandbox_id.as_deref())?
    } else {
        String::new()
    };
    Ok((req, id))
}

async fn gem_make(State(state): State<AppState>, body: Bytes) -> Response {
    let (req, _) = match gem_request(&body, false) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let Some(env_id) = req.env_id.filter(|e| !e.is_empty()) else {
        return gem_failure("ValueError: env_id is required", Vec::new());
    };
    match state.rock.gems.make(&env_id).await {
        Ok(Ok(id)) => axum::Json(json!({"sandbox_id": id})).into_response(),
        Ok(Err(EnvError { message, traceback })) => gem_failure(message, traceback),
        Err(e) => gem_failure(e, Vec::new()),
    }
}

async fn gem_reset(State(state): State<AppState>, body: Bytes) -> Response {
    match gem_request(&body, true) {
        Ok((req, id)) => gem_answer(state.rock.gems.reset(&id, req.seed).await),
        Err(e) => e.into_response(),
    }
}

async fn gem_step(State(state): State<AppState>, body: Bytes) -> Response {
    let (req, id) = match gem_request(&body, true) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let action = match non_blank("action", req.action.as_deref()) {
        Ok(_) => req.action.unwrap_or_default(),
        Err(e) => return e.into_response(),
    };
    gem_answer(state.rock.gems.step(&id, &action).await)
}

async fn gem_list(State(state): State<AppState>, body: Bytes) -> Response {
    match gem_request(&body, true) {
        Ok((_, id)) => gem_answer(state.rock.gems.list(&id).await),
        Err(e) => e.into_response(),
    }
}

async fn gem_close(State(state): State<AppState>, body: Bytes) -> Response {
    match gem_request(&body, true) {
        Ok((_, id)) => match state.rock.gems.close(&id).await {
            Ok(()) => axum::Json(json!({"sandbox_id": id})).into_response(),
            Err(e) => gem_failure(e, Vec::new()),
        },
        Err(e) => e.into_response(),
    }
}
