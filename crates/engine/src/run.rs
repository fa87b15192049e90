//! One-shot runs (SandboxFusion's `run_code`): a fresh sandbox, the code and files written,
//! compile, run, fetch files, destroy.
//!
//! This is the hottest path, so sandboxes (and, for notebooks, sandboxes with a started
//! kernel) come from small pools kept ready in the background,
//! and destruction happens after the answer. Runs are admitted through a bounded number of
//! slots with a FIFO queue behind them: overload makes runs wait their turn instead of timing
//! out or starving the machine.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cella_jail::seccomp::Policy;
use cella_jail::zygote::Zygote;
use tokio::sync::{Semaphore, SemaphorePermit};
use tracing::{info, warn};

use crate::engine::{CreateSandbox, Engine};
use crate::error::{Error, Result};
use crate::jupyter::{CellResult, Kernel, KernelDeath};
use crate::language::{self, Availability, Language, LanguageInfo};
use crate::pool::WarmPool;
use crate::process::{self, Captured, ExecOptions, Exit, Launcher, Outcome, Parked};
use crate::sandbox::Sandbox;

/// Label carried by the sandboxes of one-shot runs; such sandboxes are internal and are not
/// listed by the native API.
pub const RUN_LABEL: &str = "cella.run";
/// Compilers and build tools get at least this much memory, whatever the run's limit.
const COMPILE_MEMORY_MB: u64 = 2048;
const MIN_MEMORY_MB: u64 = 32;
/// The language whose runs can take an interpreter parked ahead of time.
const PARKED_LANGUAGE: &str = "python";

#[derive(Debug, Clone)]
pub struct RunRequest {
    pub language: String,
    pub code: String,
    pub stdin: Option<Vec<u8>>,
    pub compile_timeout: Duration,
    pub run_timeout: Duration,
    /// Memory limit of the run step (`None`: the configured default).
    pub memory_mb: Option<u64>,
    /// Files written before compiling: relative paths are in the work directory.
    pub files: Vec<(String, Vec<u8>)>,
    /// Files read back after the run; missing ones are left out.
    pub fetch_files: Vec<String>,
}

/// A notebook run (SandboxFusion's `run_jupyter`): cells in order in a fresh kernel.
#[derive(Debug, Clone)]
pub struct NotebookRequest {
    pub cells: Vec<String>,
    /// Each cell is interrupted after this long (`None`: only the total applies).
    pub cell_timeout: Option<Duration>,
    pub total_timeout: Duration,
    pub memory_mb: Option<u64>,
    pub files: Vec<(String, Vec<u8>)>,
    pub fetch_files: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct NotebookOutcome {
    /// One result per cell that ran; a failing cell does not stop the next.
    pub cells: Vec<CellResult>,
    pub files: Vec<(String, Vec<u8>)>,
    pub wall: Duration,
    /// The total timeout ended the notebook before every cell ran.
    pub timed_out: bool,
    /// The kernel died during a cell (the cell's code ended it); later cells did not run.
    pub kernel_death: Option<KernelDeath>,
}

/// Which warm interpreter a Python process forks from: the plain one, one that has already
/// imported the scientific stack (for code that mentions it: importing numpy and pandas costs
/// ~0.3 s, forking an interpreter that holds them ~3 ms more than a plain one), or one that
/// has imported ipykernel (~0.6 s of a kernel's start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
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
    fn for_code(code: &str) -> Flavor {
        let mentions = |module: &&str| code.contains(module.split('.').next().unwrap_or(module));
        if Flavor::Scientific.preload().iter().any(mentions) {
            Flavor::Scientific
        } else {
            Flavor::Plain
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepStatus {
    Finished,
    TimeLimitExceeded,
    /// The step could not be carried out (its message says why).
    Error,
}

#[derive(Debug, Clone)]
pub struct Step {
    pub status: StepStatus,
    pub exit: Option<Exit>,
    pub output: Captured,
}

impl Step {
    fn error(message: String) -> Step {
        let output = Captured {
            stderr: message.into_bytes(),
            ..Default::default()
        };
        Step {
            status: StepStatus::Error,
            exit: None,
            output,
        }
    }

    pub fn succeeded(&self) -> bool {
        self.status == StepStatus::Finished
            && self.exit.as_ref().is_some_and(|e| e.exit_code == Some(0))
    }
}

#[derive(Debug, Clone, Default)]
pub struct RunOutcome {
    pub compile: Option<Step>,
    pub run: Option<Step>,
    pub files: Vec<(String, Vec<u8>)>,
    /// Set when the language cannot run on this server, with the reason.
    pub unavailable: Option<String>,
}

pub struct Runs {
    engine: Arc<Engine>,
    pub availability: Availability,
    slots: Semaphore,
    waiting: AtomicUsize,
    /// Ready sandboxes of the run shape.
    sandboxes: Arc<WarmPool<Arc<Sandbox>>>,
    /// Ready sandboxes with a `python` run's interpreter parked in them (see [`process::park`]).
    pythons: Arc<WarmPool<(Arc<Sandbox>, Parked)>>,
    /// Ready sandboxes with a started Jupyter kernel.
    kernels: Arc<WarmPool<(Arc<Sandbox>, Kernel)>>,
    /// The warm Pythons runs fork from, by [`Flavor`] (restarted if one dies).
    zygotes: [tokio::sync::Mutex<Option<Arc<Zygote>>>; 3],
    /// Set once the toolchains have been checked.
    probed: tokio::sync::OnceCell<()>,
    skeleton_started: std::sync::atomic::AtomicBool,
}

impl Runs {
    pub fn new(engine: Arc<Engine>) -> Arc<Runs> {
        let slots = engine.config.runs.max_concurrency.max(1);
        let pools = &engine.config.pool;
        let (sandboxes, pythons, kernels) = (
            WarmPool::new("sandboxes", pools.warm_sandboxes),
            WarmPool::new("pythons", pools.warm_sandboxes),
            WarmPool::new("kernels", pools.warm_kernels),
        );
        Arc::new(Runs {
            engine,
            availability: Availability::default(),
            slots: Semaphore::new(slots),
            waiting: AtomicUsize::new(0),
            sandboxes,
            pythons,
            kernels,
            zygotes: Default::default(),
            probed: tokio::sync::OnceCell::new(),
            skeleton_started: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    fn shape(&self) -> CreateSandbox {
        CreateSandbox {
            memory_mb: Some(self.engine.config.runs.memory_mb),
            labels: [(RUN_LABEL.to_string(), "true".to_string())].into(),
            idle_timeout_secs: Some(0),
            ..Default::default()
        }
    }

    /// Waits for a run slot, or refuses at once when the queue is full.
    pub async fn admit(&self) -> Result<SemaphorePermit<'_>> {
        if let Ok(permit) = self.slots.try_acquire() {
            return Ok(permit);
        }
        let max_queue = self.engine.config.runs.max_queue;
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= max_queue {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::Busy(format!(
                "the run queue is full ({max_queue} waiting); retry later"
            )));
        }
        let queued = Instant::now();
        let permit = self.slots.acquire().await.map_err(Error::internal);
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        metrics::histogram!("cella_run_queue_seconds").record(queued.elapsed().as_secs_f64());
        permit
    }

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
    pub async fn claim(self: &Arc<Self>) -> Result<Arc<Sandbox>> {
        self.build_skeleton();
        self.keep_warm(&self.sandboxes, |runs| async move {
            runs.engine.create(runs.shape()).await
        });
        // A pooled sandbox may have been stopped meanwhile (its lifetime ran out).
        let usable = |s: &Arc<Sandbox>| s.is_running();
        let pooled = self.sandboxes.take_usable(usable, |s| self.discard(s));
        match pooled {
            Some(sandbox) => Ok(sandbox),
            None => self.engine.create(self.shape()).await,
        }
    }

    /// A fresh sandbox with a `python` run's interpreter parked in it, if the pool has one.
    fn claim_parked(self: &Arc<Self>) -> Option<(Arc<Sandbox>, Parked)> {
        self.build_skeleton();
        self.keep_warm(
            &self.pythons,
            |runs| async move { runs.park_python().await },
        );
        let usable = |(s, p): &(Arc<Sandbox>, Parked)| s.is_running() && p.waiting();
        self.pythons.take_usable(usable, |(s, _)| self.discard(s))
    }

    /// Whether a run can take a parked interpreter: plain `python` (other flavours fork from
    /// another zygote) in sandboxes of the `host` image (the zygote is the host's Python).
    fn parks(&self, lang: &Language, flavor: Flavor) -> bool {
        let config = &self.engine.config;
        lang.name == PARKED_LANGUAGE
            && config.runs.python_zygote
            && flavor == Flavor::Plain
            && self.engine.images.is_host(&config.sandbox.image)
    }

    async fn park_python(self: &Arc<Self>) -> Result<(Arc<Sandbox>, Parked)> {
        let lang = language::find(PARKED_LANGUAGE).ok_or_else(|| Error::internal("no python"))?;
        let sandbox = self.engine.create(self.shape()).await?;
        let parked = async {
            let zygote = (self.python_zygote(&sandbox, Flavor::Plain).await)
                .ok_or_else(|| Error::Unavailable("the Python zygote is not running".into()))?;
            let argv = language::render(lang.run, "", self.engine.config.runs.memory_mb);
            let opts = self.exec_options(lang, argv, Duration::ZERO, None);
            process::park(&sandbox, &opts, &zygote).await
        };
        match parked.await {
            Ok(parked) => Ok((sandbox, parked)),
            Err(e) => {
                self.discard(sandbox);
                Err(e)
            }
        }
    }

    /// A fresh sandbox with a started kernel, from the pool when one is ready.
    async fn claim_kernel(
        self: &Arc<Self>,
        startup_timeout: Duration,
    ) -> Result<(Arc<Sandbox>, Kernel)> {
        self.keep_warm(&self.kernels, |runs| async move {
            runs.start_kernel(Duration::from_secs(60)).await
        });
        let usable = |(s, k): &(Arc<Sandbox>, Kernel)| s.is_running() && !k.is_dead();
        let pooled = self.kernels.take_usable(usable, |(s, _)| self.discard(s));
        match pooled {
            Some(ready) => Ok(ready),
            None => self.start_kernel(startup_timeout).await,
        }
    }

    async fn start_kernel(
        self: &Arc<Self>,
        startup_timeout: Duration,
    ) -> Result<(Arc<Sandbox>, Kernel)> {
        let sandbox = self.claim().await?;
        let zygote = self.python_zygote(&sandbox, Flavor::Kernel).await;
        let launcher = zygote.as_deref().map_or(Launcher::Init, Launcher::Zygote);
        match Kernel::start(&sandbox, startup_timeout, launcher).await {
            Ok(kernel) => Ok((sandbox, kernel)),
            Err(e) => {
                self.discard(sandbox);
                Err(e)
            }
        }
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
    async fn python_zygote(
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
                Err(e) => warn!(error = %e, "no home skeleton; sandboxes start with an empty home"),
            }
        });
    }

    async fn make_skeleton(&self, dir: &std::path::Path) -> Result<()> {
        const CACHE: &str = ".cache/matplotlib";
        let sandbox = self
            .engine
            .create(CreateSandbox {
                labels: self.shape().labels,
                ..Default::default()
            })
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

    /// Destroys a used sandbox after the caller has its answer.
    pub fn discard(&self, sandbox: Arc<Sandbox>) {
        let engine = self.engine.clone();
        tokio::spawn(async move {
            let _ = engine.delete(&sandbox.id).await;
        });
    }

    pub async fn run(self: &Arc<Self>, req: RunRequest) -> Result<RunOutcome> {
        let lang = language::find(&req.language)
            .ok_or_else(|| Error::invalid(format!("unknown language {:?}", req.language)))?;
        if let Some(why) = self.availability.unavailable(lang) {
            return Ok(unavailable(lang, &why));
        }
        let main = match lang.main_name(&req.code) {
            Ok(m) => m,
            Err(why) => {
                return Ok(RunOutcome {
                    compile: Some(Step::error(why)),
                    ..Default::default()
                });
            }
        };
        let started = Instant::now();
        let _slot = self.admit().await?;
        let flavor = Flavor::for_code(&req.code);
        let pooled = if self.parks(lang, flavor) {
            self.claim_parked()
        } else {
            None
        };
        let (sandbox, parked) = match pooled {
            Some((sandbox, parked)) => (sandbox, Some(parked)),
            None => (self.claim().await?, None),
        };
        let outcome = self
            .run_in(&sandbox, lang, &main, req, flavor, parked)
            .await;
        self.discard(sandbox);
        metrics::histogram!("cella_run_seconds", "language" => lang.name)
            .record(started.elapsed().as_secs_f64());
        match outcome {
            Err(Error::MissingProgram(why)) => Ok(unavailable(lang, &why)),
            other => other,
        }
    }

    pub async fn run_notebook(self: &Arc<Self>, req: NotebookRequest) -> Result<NotebookOutcome> {
        let started = Instant::now();
        let _slot = self.admit().await?;
        let (sandbox, kernel) = self.claim_kernel(req.total_timeout).await?;
        let outcome = self.notebook_in(&sandbox, kernel, req, started).await;
        self.discard(sandbox);
        metrics::histogram!("cella_run_seconds", "language" => "jupyter")
            .record(started.elapsed().as_secs_f64());
        outcome
    }

    async fn notebook_in(
        &self,
        sandbox: &Arc<Sandbox>,
        mut kernel: Kernel,
        req: NotebookRequest,
        started: Instant,
    ) -> Result<NotebookOutcome> {
        let memory_mb = self.memory_mb(req.memory_mb);
        sandbox.set_memory_mb(memory_mb)?;
        self.write_files(sandbox, req.files).await?;
        let deadline = started + req.total_timeout;
        let mut outcome = NotebookOutcome::default();
        for code in &req.cells {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || kernel.is_dead() {
                outcome.timed_out = left.is_zero();
                break;
            }
            let limit = req.cell_timeout.map_or(left, |t| t.min(left));
            let cell = kernel
                .execute(code, limit, self.engine.config.sandbox.output_cap_bytes)
                .await?;
            outcome.timed_out = cell.timed_out && limit == left;
            outcome.cells.push(cell);
        }
        outcome.kernel_death = kernel.death().cloned();
        kernel.shutdown();
        outcome.files = self.fetch_files(sandbox, req.fetch_files).await?;
        outcome.wall = started.elapsed();
        Ok(outcome)
    }

    /// A run's memory limit: the request's, or the configured default, within bounds.
    fn memory_mb(&self, requested: Option<u64>) -> u64 {
        let config = &self.engine.config;
        requested
            .unwrap_or(config.runs.memory_mb)
            .clamp(MIN_MEMORY_MB, config.limits.max_memory_mb)
    }

    /// Writes request files: relative paths are in the home directory.
    async fn write_files(
        &self,
        sandbox: &Arc<Sandbox>,
        files: Vec<(String, Vec<u8>)>,
    ) -> Result<()> {
        let writes: Vec<(String, Vec<u8>)> = files
            .into_iter()
            .map(|(path, data)| (sandbox.absolute(&path), data))
            .collect();
        sandbox
            .with_fs(move |fs| {
                for (path, data) in &writes {
                    fs.write(path, data, 0o644, true)
                        .map_err(|e| Error::file(path, e))?;
                }
                Ok(())
            })
            .await
    }

    /// Reads back the files asked for, keyed as asked; missing ones are left out.
    async fn fetch_files(
        &self,
        sandbox: &Arc<Sandbox>,
        paths: Vec<String>,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let max = self.engine.config.limits.max_read_bytes;
        let wanted: Vec<(String, String)> = paths
            .into_iter()
            .map(|p| (sandbox.absolute(&p), p))
            .collect();
        sandbox
            .with_fs(move |fs| {
                Ok(wanted
                    .into_iter()
                    .filter_map(|(abs, key)| fs.read(&abs, max).ok().map(|d| (key, d)))
                    .collect())
            })
            .await
    }

    async fn run_in(
        self: &Arc<Self>,
        sandbox: &Arc<Sandbox>,
        lang: &'static Language,
        main: &str,
        req: RunRequest,
        flavor: Flavor,
        parked: Option<Parked>,
    ) -> Result<RunOutcome> {
        let memory_mb = self.memory_mb(req.memory_mb);
        let source = lang.source.replace("{main}", main);
        let mut files = req.files;
        files.extend(
            lang.support
                .iter()
                .map(|(name, content)| (name.to_string(), content.as_bytes().to_vec())),
        );
        files.push((
            source,
            lang.source_text(&req.code).into_owned().into_bytes(),
        ));
        self.write_files(sandbox, files).await?;

        let mut outcome = RunOutcome::default();
        if let Some(compile) = lang.compile {
            sandbox.set_memory_mb(memory_mb.max(COMPILE_MEMORY_MB))?;
            let argv = language::render(compile, main, memory_mb);
            let opts = self.exec_options(lang, argv, req.compile_timeout, None);
            let step = self.step(sandbox, opts, Flavor::Plain, None).await?;
            let ok = step.succeeded();
            outcome.compile = Some(step);
            if !ok {
                return Ok(outcome);
            }
        }
        sandbox.set_memory_mb(memory_mb)?;
        let argv = language::render(lang.run, main, memory_mb);
        let opts = self.exec_options(lang, argv, req.run_timeout, req.stdin);
        // Parked with the command this run would start, or not used.
        let parked = parked.filter(|p| p.argv() == opts.argv);
        outcome.run = Some(self.step(sandbox, opts, flavor, parked).await?);

        outcome.files = self.fetch_files(sandbox, req.fetch_files).await?;
        Ok(outcome)
    }

    fn exec_options(
        &self,
        lang: &Language,
        argv: Vec<String>,
        timeout: Duration,
        stdin: Option<Vec<u8>>,
    ) -> ExecOptions {
        ExecOptions {
            argv,
            env: lang_env(lang),
            cwd: None,
            stdin,
            timeout: Some(timeout),
            output_cap: self.engine.config.sandbox.output_cap_bytes,
        }
    }

    /// Runs one step: the `parked` process if given, else a new one (from the `flavor`
    /// zygote for Python).
    async fn step(
        self: &Arc<Self>,
        sandbox: &Arc<Sandbox>,
        opts: ExecOptions,
        flavor: Flavor,
        parked: Option<Parked>,
    ) -> Result<Step> {
        let result = match parked {
            Some(parked) => parked.run(opts).await,
            None => {
                let zygote = match opts.argv.first() {
                    Some(program) if program == "python3" => {
                        self.python_zygote(sandbox, flavor).await
                    }
                    _ => None,
                };
                let launcher = zygote.as_deref().map_or(Launcher::Init, Launcher::Zygote);
                process::run_with(sandbox, opts, launcher).await
            }
        };
        match result {
            Ok(Outcome { exit, output }) => {
                let status = if exit.timed_out {
                    StepStatus::TimeLimitExceeded
                } else {
                    StepStatus::Finished
                };
                Ok(Step {
                    status,
                    exit: Some(exit),
                    output,
                })
            }
            Err(e @ Error::MissingProgram(_)) => Err(e),
            Err(e) => Ok(Step::error(e.to_string())),
        }
    }

    /// Every language and whether it can run here. The toolchains are checked in a sandbox
    /// the first time this is asked (once; runs never wait for it: a missing toolchain is
    /// also noticed when a run cannot start it).
    pub async fn languages(self: &Arc<Self>) -> Vec<LanguageInfo> {
        let runs = self.clone();
        self.probed
            .get_or_init(|| async move {
                // Its own task, so a client that goes away cannot abandon the probe sandbox.
                let _ = tokio::spawn(async move { runs.probe_languages().await }).await;
            })
            .await;
        self.availability.list()
    }

    async fn probe_languages(&self) {
        let shape = CreateSandbox {
            labels: self.shape().labels,
            ..Default::default()
        };
        let sandbox = match self.engine.create(shape).await {
            Ok(s) => s,
            Err(e) => return warn!(error = %e, "could not probe languages"),
        };
        // Four at a time: some toolchains (JVMs) take a second to answer.
        let limit = Arc::new(Semaphore::new(4));
        let probes: Vec<_> = language::LANGUAGES
            .iter()
            .filter(|l| l.missing.is_none())
            .map(|lang| tokio::spawn(probe(sandbox.clone(), lang, limit.clone())))
            .collect();
        let mut available = Vec::new();
        for p in probes {
            let Ok((lang, result)) = p.await else {
                continue;
            };
            let info = probe_result(lang, result);
            if info.available {
                available.push(lang.name);
            }
            self.availability.record(info);
        }
        let _ = self.engine.delete(&sandbox.id).await;
        info!(count = available.len(), languages = %available.join(" "), "languages available");
    }
}

async fn probe(
    sandbox: Arc<Sandbox>,
    lang: &'static Language,
    limit: Arc<Semaphore>,
) -> (&'static Language, Result<Outcome>) {
    let _permit = limit.acquire().await;
    let opts = ExecOptions {
        argv: lang.version.iter().map(|s| s.to_string()).collect(),
        env: lang_env(lang),
        cwd: None,
        stdin: None,
        timeout: Some(Duration::from_secs(60)),
        output_cap: 4096,
    };
    (lang, process::run(&sandbox, opts).await)
}

/// Where a sandbox of the `host` image finds `name` on its default `PATH`.
fn find_program(name: &str) -> Option<std::path::PathBuf> {
    cella_jail::DEFAULT_PATH
        .split(':')
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn lang_env(lang: &Language) -> std::collections::BTreeMap<String, String> {
    lang.env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn probe_result(lang: &Language, result: Result<Outcome>) -> LanguageInfo {
    let mut info = LanguageInfo {
        name: lang.name.to_string(),
        available: false,
        version: None,
        reason: None,
        compiled: lang.compile.is_some(),
    };
    match result {
        Ok(Outcome { exit, output }) if exit.exit_code == Some(0) => {
            let text = [output.stdout, output.stderr].concat();
            let text = String::from_utf8_lossy(&text);
            info.available = true;
            // The first line that is not a warning (the JVM launchers print some first).
            info.version = text
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty() && !l.to_ascii_lowercase().contains("warning"))
                .map(str::to_string);
        }
        Ok(Outcome { output, .. }) => {
            let err = String::from_utf8_lossy(&output.stderr)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string();
            info.reason = Some(format!(
                "the toolchain check `{}` failed: {err}",
                lang.version.join(" ")
            ));
        }
        Err(Error::MissingProgram(_)) => {
            info.reason = Some(format!("`{}` is not installed", lang.version[0]))
        }
        Err(e) => info.reason = Some(e.to_string()),
    }
    info
}

fn unavailable(lang: &Language, why: &str) -> RunOutcome {
    RunOutcome {
        unavailable: Some(format!(
            "language {} is unavailable on this server: {why}",
            lang.name
        )),
        ..Default::default()
    }
}
