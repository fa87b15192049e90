//! What runs take ready-made: pooled sandboxes (plain, with a parked interpreter, with a
//! started kernel), the warm Python zygotes processes fork from, and the home skeleton.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cella_jail::seccomp::Policy;
use cella_jail::zygote::Zygote;
use tracing::{info, warn};

use super::{Disposable, Runs};
use crate::engine::{CreateSandbox, Need};
use crate::error::{Error, Result};
use crate::jupyter::Kernel;
use crate::language::{self, Language};
use crate::pool::WarmPool;
use crate::process::{self, ExecOptions, Launcher, Parked};
use crate::sandbox::Sandbox;

/// The language whose runs can take an interpreter parked ahead of time.
const PARKED_LANGUAGE: &str = "python";

/// Which warm interpreter a Python process forks from: the plain one, one that has already
/// imported the scientific stack (for code that mentions it: importing numpy and pandas costs
/// ~0.3 s, forking an interpreter that holds them ~3 ms more than a plain one), or one that
/// has imported ipykernel (~0.6 s of a kernel's start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flavor {
    Plain = 0,
    Scientific = 1,
    Kernel = 2,
}

impl Flavor {
    fn preload(self) -> &'static [&'static str] {
        match self {
            Flavor::Plain => &[],
            Flavor::Scientific => &["numpy", "pandas", "matplotlib.pyplot"],
            Flavor::Kernel => &[
                "ipykernel.kernelapp",
                "ipykernel.ipkernel",
                "numpy",
                "pandas",
                "matplotlib.pyplot",
            ],
        }
    }

    /// What the preloaded modules read at import. Matplotlib fixes its backend then (headless
    /// for programs, inline for kernels: what each would choose itself) and reads its config
    /// and font cache from a directory that must not be the host's `$HOME`: a private one in
    /// the data dir. Each fork finds its own afresh under the sandbox's home (`zygote.py`).
    fn env(self, config: &crate::config::Config) -> Vec<(&'static str, String)> {
        let backend = match self {
            Flavor::Plain => return Vec::new(),
            Flavor::Scientific => "Agg",
            Flavor::Kernel => crate::jupyter::INLINE_BACKEND,
        };
        let config_dir = config.zygote_dir().join("matplotlib");
        vec![
            ("MPLBACKEND", backend.into()),
            ("MPLCONFIGDIR", config_dir.display().to_string()),
        ]
    }

    /// Code that mentions a package the scientific zygote preloads forks from it.
    pub(super) fn for_code(code: &str) -> Flavor {
        let mentions = |module: &&str| code.contains(module.split('.').next().unwrap_or(module));
        if Flavor::Scientific.preload().iter().any(mentions) {
            Flavor::Scientific
        } else {
            Flavor::Plain
        }
    }
}

impl Runs {
    /// Keeps `pool` filled by `make` in the background, from the first call on.
    fn keep_warm<T, Fut>(
        self: &Arc<Self>,
        pool: &Arc<WarmPool<T>>,
        make: impl Fn(Arc<Runs>) -> Fut + Send + 'static,
    ) where
        T: Send + 'static,
        Fut: Future<Output = Result<T>> + Send,
    {
        let runs = self.clone();
        let engine = self.engine.clone();
        pool.start(move || make(runs.clone()), move || engine.is_stopping());
    }

    /// A fresh sandbox of the run shape, from the pool when one is ready.
    pub(super) async fn claim(self: &Arc<Self>, need: Need) -> Result<Disposable> {
        self.build_skeleton();
        self.keep_warm(&self.sandboxes, |runs| async move {
            runs.create(Need::Spare).await
        });
        // A pooled sandbox may have been stopped meanwhile (its lifetime ran out).
        let pooled = self.sandboxes.take_usable(|s| s.is_running());
        match pooled {
            Some(sandbox) => Ok(sandbox),
            None => self.create(need).await,
        }
    }

    async fn create(&self, need: Need) -> Result<Disposable> {
        let sandbox = self.engine.create_for(self.shape(), need).await?;
        Ok(Disposable::new(&self.engine, sandbox))
    }

    /// A fresh sandbox with a `python` run's interpreter parked in it, if the pool has one.
    pub(super) fn claim_parked(self: &Arc<Self>) -> Option<(Disposable, Parked)> {
        self.build_skeleton();
        self.keep_warm(
            &self.pythons,
            |runs| async move { runs.park_python().await },
        );
        let usable = |(s, p): &(Disposable, Parked)| s.is_running() && p.waiting();
        self.pythons.take_usable(usable)
    }

    /// Whether a run can take a parked interpreter: plain `python` (other flavours fork from
    /// another zygote) in sandboxes of the `host` image (the zygote is the host's Python).
    pub(super) fn parks(&self, lang: &Language, flavor: Flavor) -> bool {
        let config = &self.engine.config;
        lang.name == PARKED_LANGUAGE
            && config.runs.python_zygote
            && flavor == Flavor::Plain
            && self.engine.images.is_host(&config.sandbox.image)
    }

    async fn park_python(self: &Arc<Self>) -> Result<(Disposable, Parked)> {
        let lang = language::find(PARKED_LANGUAGE).ok_or_else(|| Error::internal("no python"))?;
        let sandbox = self.create(Need::Spare).await?;
        let zygote = (self.python_zygote(&sandbox, Flavor::Plain).await)
            .ok_or_else(|| Error::Unavailable("the Python zygote is not running".into()))?;
        let argv = language::render(lang.run, "", self.engine.config.runs.memory_mb);
        let opts = self.exec_options(lang, argv, Duration::ZERO, None);
        let parked = process::park(&sandbox, &opts, &zygote).await?;
        Ok((sandbox, parked))
    }

    /// A fresh sandbox with a started kernel, from the pool when one is ready.
    pub(super) async fn claim_kernel(
        self: &Arc<Self>,
        startup_timeout: Duration,
    ) -> Result<(Disposable, Kernel)> {
        self.keep_warm(&self.kernels, |runs| async move {
            runs.start_kernel(Duration::from_secs(60), Need::Spare)
                .await
        });
        let usable = |(s, k): &(Disposable, Kernel)| s.is_running() && !k.is_dead();
        let pooled = self.kernels.take_usable(usable);
        match pooled {
            Some(ready) => Ok(ready),
            None => self.start_kernel(startup_timeout, Need::Request).await,
        }
    }

    async fn start_kernel(
        self: &Arc<Self>,
        startup_timeout: Duration,
        need: Need,
    ) -> Result<(Disposable, Kernel)> {
        let sandbox = self.claim(need).await?;
        let zygote = self.python_zygote(&sandbox, Flavor::Kernel).await;
        let launcher = zygote.as_deref().map_or(Launcher::Init, Launcher::Zygote);
        let output_cap = self.engine.config.sandbox.output_cap_bytes;
        let kernel = Kernel::start(&sandbox, startup_timeout, output_cap, launcher).await?;
        Ok((sandbox, kernel))
    }

    /// The zygote a Python process forks from, started (or restarted) on demand. `None` if
    /// disabled or it cannot start; Python then starts the ordinary way. The other flavours
    /// take a second to start: until one is warm, the plain one serves.
    async fn zygote(self: &Arc<Self>, flavor: Flavor) -> Option<Arc<Zygote>> {
        if !self.engine.config.runs.python_zygote {
            return None;
        }
        if flavor != Flavor::Plain
            && let Ok(slot) = self.zygotes[flavor as usize].try_lock()
        {
            if let Some(z) = slot.as_ref().filter(|z| z.alive()) {
                return Some(z.clone());
            }
            let runs = self.clone();
            tokio::spawn(async move { runs.start_zygote(flavor).await });
        }
        self.start_zygote(Flavor::Plain).await
    }

    /// The zygote for `python3` in `sandbox`: the zygote is the host's Python, so only for
    /// sandboxes of the `host` image.
    pub(super) async fn python_zygote(
        self: &Arc<Self>,
        sandbox: &Sandbox,
        flavor: Flavor,
    ) -> Option<Arc<Zygote>> {
        if sandbox.info().image == crate::image::HOST {
            self.zygote(flavor).await
        } else {
            None
        }
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
                warn!(error = %e, "no Python zygote; Python runs start the interpreter each time")
            }
        }
        slot.clone()
    }

    /// Builds, once, the home skeleton of the `host` image: caches every program would
    /// otherwise rebuild in each fresh sandbox (matplotlib's font list takes ~0.4 s).
    fn build_skeleton(self: &Arc<Self>) {
        let dir = self.engine.config.skeleton_dir();
        if self.skeleton_started.swap(true, Ordering::SeqCst) || dir.is_dir() {
            return;
        }
        let runs = self.clone();
        tokio::spawn(async move {
            match runs.make_skeleton(&dir).await {
                Ok(()) => info!(dir = %dir.display(), "home skeleton built"),
                Err(_) if runs.engine.is_stopping() => {}
                // At the sandbox cap for now: the next run tries again.
                Err(Error::Busy(_)) => runs.skeleton_started.store(false, Ordering::SeqCst),
                Err(e) => warn!(error = %e, "no home skeleton; sandboxes start with an empty home"),
            }
        });
    }

    async fn make_skeleton(&self, dir: &std::path::Path) -> Result<()> {
        const CACHE: &str = ".cache/matplotlib";
        let sandbox = self
            .engine
            .create_for(
                CreateSandbox {
                    labels: self.shape().labels,
                    ..Default::default()
                },
                Need::Spare,
            )
            .await?;
        let opts = ExecOptions {
            argv: ["python3", "-c", "import matplotlib.font_manager"]
                .map(String::from)
                .to_vec(),
            env: [("MPLBACKEND".to_string(), "Agg".to_string())].into(),
            cwd: None,
            stdin: None,
            timeout: Some(Duration::from_secs(120)),
            output_cap: 4096,
        };
        let built = process::run(&sandbox, opts).await;
        let home = sandbox.absolute(CACHE);
        let files = sandbox
            .with_fs(move |fs| {
                let entries = fs.list(&home, 1, 64).map_err(|e| Error::file(&home, e))?;
                Ok(entries
                    .into_iter()
                    .filter_map(|e| fs.read(&e.path, 16 << 20).ok().map(|d| (e.name, d)))
                    .collect::<Vec<_>>())
            })
            .await;
        let _ = self.engine.delete(&sandbox.id).await;
        built?;
        let files = files?;
        // Built aside and renamed into place, so a sandbox never sees half a skeleton.
        let staging = dir.with_extension("new");
        let _ = std::fs::remove_dir_all(&staging);
        let cache = staging.join(CACHE);
        std::fs::create_dir_all(&cache).map_err(Error::internal)?;
        for (name, data) in files {
            std::fs::write(cache.join(name), data).map_err(Error::internal)?;
        }
        std::fs::rename(&staging, dir).map_err(Error::internal)
    }

    /// Starts the warm pieces before the first run needs them: the plain Python zygote, then
    /// the scientific one (its imports and matplotlib's font list take seconds; so much code
    /// uses numpy that runs should not wait for that).
    pub fn warm_up(self: &Arc<Self>) {
        let runs = self.clone();
        tokio::spawn(async move {
            if runs.zygote(Flavor::Plain).await.is_some() {
                runs.start_zygote(Flavor::Scientific).await;
            }
        });
    }
}

/// Where a sandbox of the `host` image finds `name` on its default `PATH`.
fn find_program(name: &str) -> Option<std::path::PathBuf> {
    cella_jail::DEFAULT_PATH
        .split(':')
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.is_file())
}
