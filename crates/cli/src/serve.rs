//! `cella serve`: probe the kernel, fork the spawner while still single-threaded, then start
//! the runtime and serve until SIGINT, SIGTERM or SIGHUP.

use std::process::ExitCode;

use cella_engine::Engine;
use cella_engine::config::{Config, Overrides};
use cella_engine::{Spawner, SpawnerConfig};
use tracing::{error, info, warn};

use crate::ServeArgs;

pub fn run(args: ServeArgs) -> Result<ExitCode, String> {
    keep_big_buffers_out_of_the_heap();
    let overrides = Overrides {
        listen: args.listen,
        data_dir: args.data_dir,
    };
    let config = Config::load(args.config.as_deref(), overrides)
        .map_err(|e| format!("configuration: {e}"))?;
    init_logging(&config.log_format);

    let features = cella_engine::probe::probe().map_err(|e| e.to_string())?;
    let open_files = cella_engine::probe::raise_open_files(config.sandbox.open_files)
        .map_err(|e| e.to_string())?;
    info!(open_files, "{}", features.summary());
    // Checks made as a sandbox's user (jail::fsops) must not count root's groups.
    cella_jail::sys::clear_supplementary_groups()
        .map_err(|e| format!("dropping supplementary groups: {e}"))?;
    // The spawner must be forked before the runtime creates any thread.
    let spawner = Spawner::start(SpawnerConfig {
        netns_pool: config.pool.netns,
    })
    .map_err(|e| e.to_string())?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("cella")
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let served = runtime.block_on(async move {
        let metrics = cella_server::metrics::install()?;
        // Bound before the engine takes anything on the host: a port in use is then refused
        // with nothing to undo.
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .map_err(|e| format!("listen on {}: {e}", config.listen))?;
        let engine = Engine::new(config, args.config.as_deref(), spawner, features)
            .map_err(|e| e.to_string())?;
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        info!(%address, "cella is serving");
        if !address.ip().is_loopback() && engine.config.api_token.is_none() {
            warn!(
                %address,
                "no api_token is set: anyone who can reach this address can run code here"
            );
        }
        let (failure, failed) = tokio::sync::oneshot::channel();
        let watched = engine.clone();
        let stop = async move {
            tokio::select! {
                () = shutdown_signal() => {}
                _ = watched.spawner_died() => {
                    let why = "the spawner process died, and every sandbox with it: exiting, \
                               so that a restart (which reaps what is left) serves again";
                    error!("{why}");
                    let _ = failure.send(why);
                }
            }
        };
        if let Err(e) = cella_server::serve(engine.clone(), listener, metrics, stop).await {
            // Leave nothing behind: the engine holds a cgroup parent already.
            engine.shutdown().await;
            return Err(e.to_string());
        }
        if let Ok(why) = failed.await {
            return Err(why.to_string());
        }
        info!("stopped");
        Ok(ExitCode::SUCCESS)
    });
    // Every sandbox is stopped: work still blocking a thread (a zygote's imports, seconds on
    // a cold cache) has nobody left to serve, and must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    served
}

/// Outputs, files and responses are buffers of up to a few MiB, made and freed per request.
/// Once such a buffer is freed, glibc raises its mmap threshold to its size, so later ones come
/// from the heap, which it seldom gives back: after a burst of big outputs the server held
/// 200-350 MiB. A fixed threshold keeps big buffers mmapped, returned to the system when freed
/// (25 MiB after the same burst).
fn keep_big_buffers_out_of_the_heap() {
    cella_jail::sys::set_mmap_threshold(256 << 10);
}

fn init_logging(format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("CELLA_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal, not in files and journals.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// SIGTERM, SIGINT, or SIGHUP (the terminal the server ran in has closed).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = hup.recv() => {}
    }
    info!("shutting down: stopping every sandbox");
}
