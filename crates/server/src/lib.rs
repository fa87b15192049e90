//! cella's HTTP server: the native API, the compatibility faces, OpenAPI, health and metrics,
//! all on one port.

// Every unsafe block lives in cella-jail, behind a safe function.
#![forbid(unsafe_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef, State};
use axum::http::StatusCode;
use axum::routing::get;
use cella_engine::Engine;
use cella_engine::context::Contexts;
use cella_engine::eval::{Datasets, Evaluator};
use cella_engine::python::Pythons;
use cella_engine::run::Runs;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

mod auth;
mod body_budget;
mod common;
mod compat;
pub mod error;
mod extract;
pub mod metrics;
mod native;

use body_budget::BodyBudget;
use error::ApiError;
use extract::Json;

#[derive(OpenApi)]
#[openapi(
    info(title = "cella", description = "Self-hosted code-execution sandboxes: the native API."),
    tags(
        (name = "sandboxes", description = "Isolated, long-lived environments"),
        (name = "processes", description = "Commands run in a sandbox"),
        (name = "contexts", description = "Stateful code kernels in a sandbox (python, javascript, bash)"),
        (name = "files", description = "A sandbox's files, reached without leaving it"),
        (name = "images", description = "Root filesystems sandboxes are made from"),
        (name = "sessions", description = "Interactive bash sessions on a pseudo-terminal in a sandbox"),
        (name = "runs", description = "One-shot runs of source code in any supported language"),
    )
)]
struct ApiDoc;

/// What every handler can reach.
#[derive(Clone, FromRef)]
pub struct AppState {
    pub engine: Arc<Engine>,
    pub runs: Arc<Runs>,
    pub contexts: Arc<Contexts>,
    /// Which sandbox is the CodeGeeX4 face's default.
    pub codegeex: Arc<compat::codegeex::Codegeex>,
    /// The ROCK face's commits.
    pub rock: Arc<compat::rock::Rock>,
    /// Datasets and grading (SandboxFusion's evaluation routes).
    pub eval: Arc<Evaluator>,
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    version: &'static str,
    sandboxes: usize,
}

async fn healthz(State(engine): State<Arc<Engine>>) -> Json<Health> {
    Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
        sandboxes: engine.live_count(),
    })
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

/// The whole HTTP surface; `body_timeout` is the longest a client may pause in a request body.
pub fn app(state: AppState, metrics: PrometheusHandle, body_timeout: Duration) -> Router {
    let (native, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/api/v1", native::router())
        .split_for_parts();
    // Image archives stream to disk, not memory: outside the body limits and budget.
    let (archives, archives_doc) = OpenApiRouter::new()
        .nest("/api/v1", native::archive_router())
        .split_for_parts();
    doc.merge(archives_doc);
    let archives_state = state.clone();
    let token: Option<Arc<str>> = state.engine.config.api_token.as_deref().map(Arc::from);
    native::document_errors(&mut doc, token.is_some());
    if token.is_some() {
        auth::document(&mut doc);
    }
    let doc = Arc::new(doc);
    let limits = &state.engine.config.limits;
    let body_limit = limits.max_body_bytes;
    let budget = BodyBudget::new(limits.max_body_bytes_in_flight, body_limit);
    let app = Router::new()
        .merge(native)
        .merge(compat::fusion::router())
        .merge(compat::codegeex::router())
        .merge(compat::agentrun::router())
        .merge(compat::rock::router())
        .route(
            "/openapi.json",
            get(move || async move { axum::Json(doc.as_ref().clone()) }),
        )
        .route("/healthz", get(healthz))
        .route("/metrics", get(move || async move { metrics.render() }))
        .fallback(not_found)
        .with_state(state)
        .layer(axum::middleware::from_fn(metrics::track))
        .layer(DefaultBodyLimit::max(body_limit))
        // Streamed bodies (raw uploads) are not covered by DefaultBodyLimit.
        .layer(tower_http::limit::RequestBodyLimitLayer::new(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            body_limit,
            too_large_in_shape,
        ))
        .layer(axum::middleware::from_fn_with_state(
            budget,
            body_budget::limit,
        ))
        .merge(
            archives
                .with_state(archives_state)
                .layer(axum::middleware::from_fn(metrics::track)),
        )
        // A stalled body would hold its share of the budget for ever.
        .layer(RequestBodyTimeoutLayer::new(body_timeout));
    // Outside the body limits: a client without the token is refused before its body is read.
    let app = match token {
        Some(token) => app.layer(axum::middleware::from_fn_with_state(token, auth::require)),
        None => app,
    };
    // Its default logs every 5xx as an error, a 503 or 504 under load included; the
    // server's own faults are logged where they happen (`error.rs`).
    app.layer(TraceLayer::new_for_http().on_failure(()))
}

/// The body limits refuse an oversized body in plain text, before any handler runs: answer
/// in the error shape of the face that was asked instead.
async fn too_large_in_shape(
    State(limit): State<usize>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let path = req.uri().path();
    let face = (compat::fusion::too_large(path))
        .or_else(|| compat::codegeex::too_large(path))
        .or_else(|| compat::agentrun::too_large(path));
    let resp = next.run(req).await;
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    if resp.status() != StatusCode::PAYLOAD_TOO_LARGE || is_json {
        return resp;
    }
    let e = cella_engine::error::Error::TooLarge(format!(
        "the request body is larger than the server's limit of {limit} bytes"
    ));
    match face {
        Some(answer) => answer(e),
        None => ApiError::from(e).into_response(),
    }
}

/// A client timeout from the configuration, which must be a positive number of seconds.
fn client_timeout(secs: f64, key: &str) -> std::io::Result<Duration> {
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|t| !t.is_zero())
        .ok_or_else(|| std::io::Error::other(format!("limits.{key} must be a positive number")))
}

/// HTTP/1 with a timer: axum's own `serve` sets none, and without one hyper never times out
/// a connection that trickles its headers (slowloris).
fn http1(header_timeout: Duration) -> hyper::server::conn::http1::Builder {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout);
    http
}

/// How long requests in flight may take to finish when the server is told to stop, before
/// their sandboxes are stopped; and then how long their answers may take to be sent.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Serves until `shutdown` resolves, then lets requests in flight finish and stops every
/// sandbox.
pub async fn serve(
    engine: Arc<Engine>,
    listener: tokio::net::TcpListener,
    metrics: PrometheusHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Checked before anything starts: a bad value is refused with nothing to undo.
    let limits = &engine.config.limits;
    let header_timeout =
        client_timeout(limits.header_read_timeout_secs, "header_read_timeout_secs")?;
    let body_timeout = client_timeout(limits.body_read_timeout_secs, "body_read_timeout_secs")?;
    if let Some(token) = &engine.config.api_token {
        auth::check_token(token).map_err(std::io::Error::other)?;
    }
    let config = engine.config.clone();
    let datasets = tokio::task::spawn_blocking(move || {
        let humaneval = config.datasets.humaneval.as_deref();
        Datasets::load(&config.datasets_dir(), humaneval)
    })
    .await?
    .map_err(std::io::Error::other)?;
    engine.spawn_background();
    let python = Pythons::new(engine.clone());
    python.warm_up();
    let contexts = Contexts::new(engine.clone(), python.clone());
    let runs = Runs::new(engine.clone(), python, contexts.clone());
    let app = app(
        AppState {
            engine: engine.clone(),
            eval: Arc::new(Evaluator::new(runs.clone(), datasets)),
            runs,
            contexts,
            codegeex: Default::default(),
            rock: Arc::new(compat::rock::Rock::new(engine.clone())),
        },
        metrics,
        body_timeout,
    );
    let http = http1(header_timeout);
    let (closing, closed) = tokio::sync::watch::channel(());
    let connections = tokio_util::task::TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, most likely: wait for some to be released.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = http
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
            .with_upgrades();
        let mut closed = closed.clone();
        connections.spawn(async move {
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = closed.changed() => conn.as_mut().graceful_shutdown(),
            }
            let _ = conn.await;
        });
    }
    drop(listener);
    let _ = closing.send(());
    connections.close();
    // Requests in flight get a grace period; then their sandboxes are stopped, which ends
    // the long ones (a stream of a day-long process must not hold the shutdown).
    if tokio::time::timeout(DRAIN_GRACE, connections.wait())
        .await
        .is_err()
    {
        tracing::info!("requests still in flight: stopping their sandboxes");
    }
    engine.shutdown().await;
    let _ = tokio::time::timeout(DRAIN_GRACE, connections.wait()).await;
    Ok(())
}
