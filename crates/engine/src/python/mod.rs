//! Warm Python for every path that starts it: the zygotes Python processes fork from (a
//! program of a run, a Jupyter kernel of a context), and the home skeleton of the `host`
//! image (caches every program would otherwise rebuild in each fresh sandbox).
//!
//! Both serve sandboxes of the `host` image only: the zygote is the host's Python, and the
//! skeleton is built from the host's packages.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cella_jail::seccomp::Policy;
use cella_jail::zygote::Zygote;
use tracing::{info, warn};

use crate::engine::Engine;
use crate::error::Error;
use crate::image::HOST;
use crate::sandbox::Sandbox;

mod flavor;
mod skeleton;

pub use flavor::Flavor;

pub struct Pythons {
    engine: Arc<Engine>,
    /// One zygote per [`Flavor`], started on demand (and again if one dies).
    zygotes: [tokio::sync::Mutex<Option<Arc<Zygote>>>; 3],
    skeleton_started: AtomicBool,
}

impl Pythons {
    pub fn new(engine: Arc<Engine>) -> Arc<Pythons> {
        Arc::new(Pythons {
            engine,
            zygotes: Default::default(),
            skeleton_started: AtomicBool::new(false),
        })
    }

    /// The zygote for `python3` in `sandbox`, if it can serve it: only sandboxes of the
    /// `host` image (the zygote is the host's Python), and only while zygotes are enabled.
    pub async fn zygote_for(
        self: &Arc<Self>,
        sandbox: &Sandbox,
        flavor: Flavor,
    ) -> Option<Arc<Zygote>> {
        if sandbox.info().image == HOST {
            self.zygote(flavor).await
        } else {
            None
        }
    }

    /// The zygote of `flavor`, started (or restarted) on demand. `None` if disabled or it
    /// cannot start; Python then starts the ordinary way. The other flavours take a second
    /// to start: until one is warm, the plain one serves.
    pub async fn zygote(self: &Arc<Self>, flavor: Flavor) -> Option<Arc<Zygote>> {
        if !self.engine.config.runs.python_zygote {
            return None;
        }
        if flavor != Flavor::Plain
            && let Ok(slot) = self.zygotes[flavor as usize].try_lock()
        {
            if let Some(z) = slot.as_ref().filter(|z| z.alive()) {
                return Some(z.clone());
            }
            let pythons = self.clone();
            tokio::spawn(async move { pythons.start_zygote(flavor).await });
        }
        self.start_zygote(Flavor::Plain).await
    }

    async fn start_zygote(&self, flavor: Flavor) -> Option<Arc<Zygote>> {
        let mut slot = self.zygotes[flavor as usize].lock().await;
        if let Some(z) = slot.as_ref().filter(|z| z.alive()) {
            return Some(z.clone());
        }
        let landlock_abi = self.engine.features.landlock_abi;
        let env = flavor.env(&self.engine.config);
        let started = tokio::task::spawn_blocking(move || {
            let python = find_program("python3")
                .ok_or_else(|| Error::MissingProgram("python3 is not installed".into()))?;
            let policy = Policy::compile()?;
            Ok::<_, Error>(Zygote::start(
                &python,
                &policy,
                landlock_abi,
                flavor.preload(),
                &env,
            )?)
        })
        .await
        .map_err(Error::internal)
        .and_then(|r| r);
        match started {
            Ok(z) => {
                info!(preload = ?flavor.preload(), "a Python zygote is warm");
                *slot = Some(Arc::new(z));
            }
            Err(e) => {
                warn!(error = %e, "no Python zygote; Python starts the interpreter each time")
            }
        }
        slot.clone()
    }

    /// Starts the zygotes before the first request needs them: the plain one, then the
    /// scientific and the kernels' (their imports and matplotlib's font list take seconds;
    /// so much code uses numpy, and a context should start in milliseconds).
    pub fn warm_up(self: &Arc<Self>) {
        let pythons = self.clone();
        tokio::spawn(async move {
            if pythons.zygote(Flavor::Plain).await.is_some() {
                pythons.start_zygote(Flavor::Scientific).await;
                pythons.start_zygote(Flavor::Kernel).await;
            }
        });
    }

    /// Builds, once, the home skeleton of the `host` image (see `skeleton.rs`).
    pub fn build_skeleton(self: &Arc<Self>) {
        let dir = self.engine.config.skeleton_dir();
        if self.skeleton_started.swap(true, Ordering::SeqCst) || dir.is_dir() {
            return;
        }
        let pythons = self.clone();
        tokio::spawn(async move {
            match skeleton::build(&pythons.engine, &dir).await {
                Ok(()) => info!(dir = %dir.display(), "home skeleton built"),
                Err(_) if pythons.engine.is_stopping() => {}
                // At the sandbox cap for now: the next request tries again.
                Err(Error::Busy(_)) => pythons.skeleton_started.store(false, Ordering::SeqCst),
                Err(e) => warn!(error = %e, "no home skeleton; sandboxes start with an empty home"),
            }
        });
    }
}

/// Where a sandbox of the `host` image finds `name` on its default `PATH`.
pub fn find_program(name: &str) -> Option<std::path::PathBuf> {
    cella_jail::DEFAULT_PATH
        .split(':')
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.is_file())
}
