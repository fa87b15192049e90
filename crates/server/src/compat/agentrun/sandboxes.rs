//! `/sandboxes`: AgentRun's data-plane lifecycle, in its envelope.

use axum::extract::{Path, State};
use cella_engine::context::{ContextSpec, Language};
use cella_engine::sandbox::State as SandboxState;
use cella_engine::{CreateSandbox, Error, SandboxInfo};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Answer, Body, Failure, envelope};
use crate::AppState;
use crate::common::network::NetworkView;
use crate::common::time::rfc3339_of_secs;

/// The label that keeps a sandbox's AgentRun template name.
const TEMPLATE_LABEL: &str = "agentrun.template";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateBody {
    template_name: String,
    sandbox_idle_timeout_seconds: Option<u64>,
    sandbox_id: Option<String>,
    nas_config: Option<Value>,
    oss_mount_config: Option<Value>,
    polar_fs_config: Option<Value>,
    /// cella's: network egress (none unless asked for).
    network: Option<NetworkView>,
}

/// A sandbox as AgentRun describes one.
fn view(info: &SandboxInfo) -> Value {
    let template = info.labels.get(TEMPLATE_LABEL).cloned().unwrap_or_default();
    json!({
        "sandboxId": info.id,
        "templateName": template,
        "templateId": template,
        "status": match info.state {
            SandboxState::Running => "READY",
            SandboxState::Stopped => "TERMINATED",
        },
        "statusReason": info.stop_reason,
        "createdAt": rfc3339_of_secs(info.created_at),
        "lastUpdatedAt": rfc3339_of_secs(info.created_at),
        "endedAt": Value::Null,
        "sandboxIdleTimeoutSeconds": info.idle_timeout_secs,
        "sandboxIdleTTLInSeconds": info.idle_timeout_secs,
        "metadata": info.labels,
        "sandboxArn": format!("acs:agentrun:local:sandbox/{}", info.id),
    })
}

pub async fn create(State(state): State<AppState>, Body(body): Body<CreateBody>) -> Answer {
    for (name, given) in [
        ("nasConfig", &body.nas_config),
        ("ossMountConfig", &body.oss_mount_config),
        ("polarFsConfig", &body.polar_fs_config),
    ] {
        if given.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(Failure::invalid(format!(
                "{name}: cloud storage mounts are not supported by this server"
            )));
        }
    }
    let templates = &state.engine.config.compat.agentrun.templates;
    let image = templates.get(&body.template_name).ok_or_else(|| {
        let known: Vec<&str> = templates.keys().map(String::as_str).collect();
        Failure::from(Error::invalid(format!(
            "unknown template {:?}: this server's templates are {}",
            body.template_name,
            known.join(", ")
        )))
    })?;
    let sandbox = state
        .engine
        .create(CreateSandbox {
            image: Some(image.clone()),
            idle_timeout_secs: body.sandbox_idle_timeout_seconds,
            id: body.sandbox_id,
            labels: [(TEMPLATE_LABEL.to_string(), body.template_name)].into(),
            network: body.network.map(Into::into),
            ..Default::default()
        })
        .await?;
    // The default python context starts now, so the first call need not wait for it.
    let (contexts, id) = (state.contexts.clone(), sandbox.id.clone());
    tokio::spawn(async move {
        let _ = contexts
            .default_for(&id, ContextSpec::new(Language::Python))
            .await;
    });
    Ok(envelope(view(&sandbox.info())))
}

pub async fn get(State(state): State<AppState>, Path(id): Path<String>) -> Answer {
    Ok(envelope(view(&state.engine.info(&id)?)))
}

pub async fn stop(State(state): State<AppState>, Path(id): Path<String>) -> Answer {
    let info = state.engine.info(&id)?;
    if !state.engine.stop(&id, "stopped through the API").await
        && info.state == SandboxState::Running
    {
        return Err(Error::Conflict(format!("sandbox {id} is stopping")).into());
    }
    Ok(envelope(view(&state.engine.info(&id)?)))
}

pub async fn delete(State(state): State<AppState>, Path(id): Path<String>) -> Answer {
    let mut info = state.engine.info(&id)?;
    state.engine.delete(&id).await?;
    info.state = SandboxState::Stopped;
    Ok(envelope(view(&info)))
}

pub async fn health(State(state): State<AppState>, Path(id): Path<String>) -> Answer {
    let info = state.engine.info(&id)?;
    let status = match info.state {
        SandboxState::Running => "ok",
        SandboxState::Stopped => "terminated",
    };
    Ok(axum::Json(json!({ "status": status })))
}
