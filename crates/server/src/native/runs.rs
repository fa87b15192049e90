//! `/api/v1/runs` and `/api/v1/languages`: one-shot runs of source code.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use base64::Engine as _;
use cella_engine::Error;
use cella_engine::config::Config;
use cella_engine::error::within;
use cella_engine::language::LanguageInfo;
use cella_engine::process::{self, checked_timeout};
use cella_engine::run::{MIN_MEMORY_MB, RunRequest, Step, StepStatus};
use serde::{Deserialize, Serialize};

use super::processes::ExecResult;
use crate::AppState;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::Json;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunBody {
    /// A name from `GET /api/v1/languages`.
    pub language: String,
    pub code: String,
    pub stdin: Option<String>,
    /// Seconds (default 10; at most `limits.max_exec_timeout_secs`).
    pub compile_timeout: Option<f64>,
    /// Seconds (default 10; at most `limits.max_exec_timeout_secs`).
    pub run_timeout: Option<f64>,
    /// Memory limit of the run step (at least 32; default `runs.memory_mb`).
    pub memory_mb: Option<u64>,
    /// Files written first (path → UTF-8 content); relative paths are in the work directory.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// Files returned after the run, base64-encoded.
    #[serde(default)]
    pub fetch_files: Vec<String>,
    /// The image to run in (default the server's default image): pulled per the pull
    /// policy; the language's toolchain must be in it (`python3` for python).
    pub image: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RunStep {
    /// `finished`, `time_limit_exceeded` or `error`.
    pub status: &'static str,
    #[serde(flatten)]
    pub result: Option<ExecResult>,
    /// Why the step could not be carried out (status `error`).
    pub error: Option<String>,
}

impl From<Step> for RunStep {
    fn from(step: Step) -> RunStep {
        let status = match step.status {
            StepStatus::Finished => "finished",
            StepStatus::TimeLimitExceeded => "time_limit_exceeded",
            StepStatus::Error => "error",
        };
        match step.exit {
            Some(exit) => RunStep {
                status,
                result: Some(ExecResult::new(exit, step.output)),
                error: None,
            },
            None => RunStep {
                status,
                result: None,
                error: Some(process::text(step.output.stderr)),
            },
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RunResult {
    /// `success` (every step exited 0), `failed`, or `unavailable` (the language cannot run here).
    pub status: &'static str,
    /// Why the language is unavailable, or which fetched files were left out for their size.
    pub message: Option<String>,
    pub compile: Option<RunStep>,
    pub run: Option<RunStep>,
    /// Fetched files, base64-encoded.
    pub files: BTreeMap<String, String>,
}

/// The request's limits, refused when out of bounds (SandboxFusion's face clamps them instead).
fn checked_limits(config: &Config, body: &RunBody) -> Result<(Duration, Duration), Error> {
    let timeout = |field, secs: Option<f64>| checked_timeout(config, field, secs.unwrap_or(10.0));
    if let Some(mb) = body.memory_mb {
        within("memory_mb", mb, MIN_MEMORY_MB, config.limits.max_memory_mb)?;
    }
    Ok((
        timeout("compile_timeout", body.compile_timeout)?,
        timeout("run_timeout", body.run_timeout)?,
    ))
}

#[utoipa::path(post, path = "/runs", operation_id = "run", tag = "runs", request_body = RunBody,
    description = "Runs code once in a fresh sandbox: write files, compile, run, fetch files, destroy.",
    responses((status = 200, body = RunResult), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn run(
    State(state): State<AppState>,
    Json(body): Json<RunBody>,
) -> ApiResult<Json<RunResult>> {
    let (compile_timeout, run_timeout) = checked_limits(&state.engine.config, &body)?;
    let req = RunRequest {
        language: body.language,
        code: body.code,
        stdin: body.stdin.map(String::into_bytes),
        compile_timeout,
        run_timeout,
        memory_mb: body.memory_mb,
        files: body
            .files
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect(),
        fetch_files: body.fetch_files,
        image: body.image,
    };
    let outcome = state.runs.run(req).await?;
    let ok = |s: &Option<Step>| s.as_ref().is_none_or(Step::succeeded);
    let status = match &outcome.unavailable {
        Some(_) => "unavailable",
        None if outcome.run.is_some() && ok(&outcome.compile) && ok(&outcome.run) => "success",
        None => "failed",
    };
    Ok(Json(RunResult {
        status,
        message: outcome.unavailable.or_else(|| outcome.fetched.note()),
        compile: outcome.compile.map(RunStep::from),
        run: outcome.run.map(RunStep::from),
        files: outcome
            .fetched
            .files
            .into_iter()
            .map(|(k, v)| (k, base64::engine::general_purpose::STANDARD.encode(v)))
            .collect(),
    }))
}

/// Whether a language can run on this server, and with what toolchain.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = LanguageInfo)]
pub struct LanguageView {
    pub name: String,
    pub available: bool,
    /// The toolchain's version line, when it is installed.
    pub version: Option<String>,
    /// Why it cannot run, when it cannot.
    pub reason: Option<String>,
    pub compiled: bool,
}

impl From<LanguageInfo> for LanguageView {
    fn from(l: LanguageInfo) -> LanguageView {
        LanguageView {
            name: l.name,
            available: l.available,
            version: l.version,
            reason: l.reason,
            compiled: l.compiled,
        }
    }
}

#[utoipa::path(get, path = "/languages", operation_id = "list_languages", tag = "runs",
    description = "Every language, its toolchain version and whether this server can run it (checked in a sandbox on the first call).",
    responses((status = 200, body = Vec<LanguageView>)))]
pub async fn languages(State(state): State<AppState>) -> Json<Vec<LanguageView>> {
    let languages = state.runs.languages().await;
    Json(languages.into_iter().map(LanguageView::from).collect())
}
