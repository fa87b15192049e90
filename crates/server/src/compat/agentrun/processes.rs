//! `/sandboxes/{id}/processes`: `cmd` runs a shell command to its end; the listing is the
//! sandbox's processes as `ps` inside it shows them (its init is pid 1), and a pid there can
//! be read or killed.

use axum::extract::{Path, State};
use cella_engine::process::{self, ExecOptions, Outcome};
use cella_engine::sandbox::RunningProcess;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Answer, Body, Failure, timeout};
use crate::AppState;

#[derive(Deserialize)]
pub struct CmdBody {
    command: String,
    cwd: Option<String>,
    timeout: Option<f64>,
}

pub async fn cmd(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Body(body): Body<CmdBody>,
) -> Answer {
    let config = &state.engine.config;
    let sandbox = state.engine.get(&id)?;
    let cwd = sandbox.absolute(body.cwd.as_deref().unwrap_or(cella_engine::SANDBOX_HOME));
    let opts = ExecOptions {
        argv: process::shell_argv(body.command),
        env: Default::default(),
        cwd: Some(cwd.clone()),
        stdin: None,
        timeout: Some(process::checked_timeout(
            config,
            "timeout",
            timeout(config, body.timeout),
        )?),
        output_cap: config.sandbox.output_cap_bytes,
    };
    let started = std::time::Instant::now();
    let Outcome { exit, output } = process::run(&sandbox, opts).await?;
    let (stdout, stderr) = (process::text(output.stdout), process::text(output.stderr));
    let exit_code = exit.exit_code.unwrap_or(128 + exit.signal.unwrap_or(0));
    let status = if exit.timed_out {
        "timeout"
    } else if exit.exit_code.is_some() {
        "completed"
    } else {
        "killed"
    };
    let ms = started.elapsed().as_millis() as u64;
    Ok(axum::Json(json!({
        "executionId": uuid::Uuid::new_v4().to_string(),
        "status": status,
        "result": {
            "exitCode": exit_code, "stdout": stdout, "stderr": stderr,
            "cwd": cwd, "executionTimeMs": ms,
        },
        "executionTimeMs": ms,
        "exitCode": exit_code, "stdout": stdout, "stderr": stderr,
    })))
}

fn view(p: &RunningProcess) -> Value {
    json!({
        "pid": p.pid, "ppid": p.ppid, "name": p.name, "command": p.command.join(" "),
        "args": p.command, "uid": p.uid, "status": p.state, "memoryBytes": p.rss_bytes,
        "cpuSeconds": p.cpu_seconds,
    })
}

pub async fn list(State(state): State<AppState>, Path(id): Path<String>) -> Answer {
    let running = state.engine.get(&id)?.ps().await?;
    Ok(axum::Json(running.iter().map(view).collect()))
}

fn pid(pid: &str) -> Result<i32, Failure> {
    pid.parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| Failure::invalid(format!("invalid pid {pid:?}")))
}

pub async fn get(
    State(state): State<AppState>,
    Path((id, wanted)): Path<(String, String)>,
) -> Answer {
    let wanted = pid(&wanted)?;
    let running = state.engine.get(&id)?.ps().await?;
    let found = running.iter().find(|p| p.pid == wanted);
    let found =
        found.ok_or_else(|| cella_engine::Error::not_found("process", wanted.to_string()))?;
    Ok(axum::Json(view(found)))
}

pub async fn kill(
    State(state): State<AppState>,
    Path((id, wanted)): Path<(String, String)>,
) -> Answer {
    let wanted = pid(&wanted)?;
    state.engine.get(&id)?.kill_pid(wanted).await?;
    Ok(axum::Json(json!({ "pid": wanted, "killed": true })))
}
