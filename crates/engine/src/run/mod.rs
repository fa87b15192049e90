//! One-shot runs (SandboxFusion's `run_code`): a fresh sandbox, the code and files written,
//! compile, run, fetch files, destroy.
//!
//! This is the hottest path, so sandboxes (plain, with a Python interpreter parked, or with a
//! started kernel) come from small pools kept ready in the background (`warm.rs`), and
//! destruction happens after the answer. Runs are admitted through a bounded number of
//! slots with a FIFO queue behind them: overload makes runs wait their turn instead of timing
//! out or starving the machine.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit};

use crate::context::{Call, CellResult, Context, Contexts, KernelDeath};
use crate::engine::{CreateSandbox, Engine, Need};
use crate::error::{Error, Result, quoted};
use crate::language::{self, Availability, Language};
use crate::pool::WarmPool;
use crate::process::{self, Captured, ExecOptions, Exit, Launcher, Outcome, Parked};
use crate::python::{Flavor, Pythons};
use crate::sandbox::{INTERNAL_LABEL, Sandbox};

mod compiled;
mod probe;
mod warm;

use compiled::{CompileCache, Compiled, Key, Lookup};

/// Compilers and build tools get at least this much memory, whatever the run's limit.
const COMPILE_MEMORY_MB: u64 = 2048;
/// The least memory a run is given.
pub const MIN_MEMORY_MB: u64 = 32;

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
    /// Another image than the default: a fresh sandbox of it, no warm pool.
    pub image: Option<String>,
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
    pub fetched: Fetched,
    pub wall: Duration,
    /// The total timeout ended the notebook before every cell ran.
    pub timed_out: bool,
    /// The kernel died during a cell (the cell's code ended it); later cells did not run.
    pub kernel_death: Option<KernelDeath>,
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
    pub fetched: Fetched,
    /// Set when the language cannot run on this server, with the reason.
    pub unavailable: Option<String>,
}

/// The files read back after a run, keyed as asked; missing ones are left out.
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    pub files: Vec<(String, Vec<u8>)>,
    /// Those left out because they would pass the read limit for a run's files together.
    pub too_large: Vec<String>,
}

impl Fetched {
    /// Names the files left out for their size, if any.
    pub fn note(&self) -> Option<String> {
        (!self.too_large.is_empty()).then(|| {
            format!(
                "fetch_files left out, beyond the read limit for a run's files together \
                 (limits.max_read_bytes): {}",
                self.too_large.join(", ")
            )
        })
    }
}

/// A sandbox of the runs, pooled or taken by one: destroyed when dropped, so neither a
/// finished run nor one whose caller went away mid-way (a dropped request) leaves it behind.
pub(crate) struct Disposable {
    sandbox: Arc<Sandbox>,
    engine: Arc<Engine>,
}

impl Disposable {
    fn new(engine: &Arc<Engine>, sandbox: Arc<Sandbox>) -> Disposable {
        Disposable {
            sandbox,
            engine: engine.clone(),
        }
    }
}

impl std::ops::Deref for Disposable {
    type Target = Arc<Sandbox>;
    fn deref(&self) -> &Arc<Sandbox> {
        &self.sandbox
    }
}

impl Drop for Disposable {
    fn drop(&mut self) {
        let (engine, id) = (self.engine.clone(), self.sandbox.id.clone());
        // Without a runtime the server is exiting: a restart reaps what is left.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { engine.delete_now(&id).await });
        }
    }
}

/// A place in the run queue, counted in `waiting` for as long as it is held: however the
/// wait ends, a caller that went away included.
struct Queued<'a>(&'a AtomicUsize);

impl<'a> Queued<'a> {
    /// Joins the queue; returns the place and how many were waiting already.
    fn join(waiting: &'a AtomicUsize) -> (Queued<'a>, usize) {
        (Queued(waiting), waiting.fetch_add(1, Ordering::SeqCst))
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct Runs {
    engine: Arc<Engine>,
    pub availability: Availability,
    slots: Semaphore,
    waiting: AtomicUsize,
    /// Ready sandboxes of the run shape.
    sandboxes: Arc<WarmPool<Disposable>>,
    /// Ready sandboxes with a `python` run's interpreter parked in them (see [`process::park`]).
    pythons: Arc<WarmPool<(Disposable, Parked)>>,
    /// Ready sandboxes with a started Python context.
    kernels: Arc<WarmPool<(Disposable, Arc<Context>)>>,
    /// The warm Pythons programs and kernels fork from.
    python: Arc<Pythons>,
    contexts: Arc<Contexts>,
    /// Compiles kept for later runs of the same code.
    compiled: Arc<CompileCache>,
    /// Set once the toolchains have been checked.
    probed: tokio::sync::OnceCell<()>,
}

impl Runs {
    pub fn new(engine: Arc<Engine>, python: Arc<Pythons>, contexts: Arc<Contexts>) -> Arc<Runs> {
        let slots = engine.config.runs.max_concurrency.max(1);
        let pools = &engine.config.pool;
        let (sandboxes, pythons, kernels) = (
            WarmPool::new("sandboxes", pools.warm_sandboxes),
            WarmPool::new("pythons", pools.warm_sandboxes),
            WarmPool::new("kernels", pools.warm_kernels),
        );
        // At the sandbox cap, the cheapest to make again go first.
        engine.yield_spares(Arc::downgrade(&sandboxes) as _);
        engine.yield_spares(Arc::downgrade(&pythons) as _);
        engine.yield_spares(Arc::downgrade(&kernels) as _);
        let compiled = CompileCache::new((engine.config.runs.compile_cache_mb as usize) << 20);
        Arc::new(Runs {
            compiled,
            engine,
            availability: Availability::default(),
            slots: Semaphore::new(slots),
            waiting: AtomicUsize::new(0),
            sandboxes,
            pythons,
            kernels,
            python,
            contexts,
            probed: tokio::sync::OnceCell::new(),
        })
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    fn shape(&self) -> CreateSandbox {
        CreateSandbox {
            memory_mb: Some(self.engine.config.runs.memory_mb),
            labels: [(INTERNAL_LABEL.to_string(), "true".to_string())].into(),
            idle_timeout_secs: Some(0),
            network: Some(self.engine.config.network.runs.policy()),
            ..Default::default()
        }
    }

    /// Waits for a run slot, or refuses at once when the queue is full.
    pub async fn admit(&self) -> Result<SemaphorePermit<'_>> {
        if let Ok(permit) = self.slots.try_acquire() {
            return Ok(permit);
        }
        let max_queue = self.engine.config.runs.max_queue;
        let (_in_queue, ahead) = Queued::join(&self.waiting);
        if ahead >= max_queue {
            return Err(Error::Busy(format!(
                "the run queue is full ({max_queue} waiting); retry later"
            )));
        }
        let queued = Instant::now();
        let permit = self.slots.acquire().await.map_err(Error::internal);
        metrics::histogram!("cella_run_queue_seconds").record(queued.elapsed().as_secs_f64());
        permit
    }

    pub async fn run(self: &Arc<Self>, req: RunRequest) -> Result<RunOutcome> {
        let lang = language::find(&req.language)
            .ok_or_else(|| Error::invalid(format!("unknown language {}", quoted(&req.language))))?;
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
        let image = (req.image.clone()).filter(|i| !self.engine.images.is_host(i));
        let pooled = if image.is_none() && self.parks(lang, flavor) {
            self.claim_parked()
        } else {
            None
        };
        let (sandbox, parked) = match (pooled, image) {
            (Some((sandbox, parked)), _) => (sandbox, Some(parked)),
            (None, Some(image)) => (self.create_of(&image).await?, None),
            (None, None) => (self.claim(Need::Request).await?, None),
        };
        let outcome = self
            .run_in(&sandbox, lang, &main, req, flavor, parked)
            .await;
        drop(sandbox); // destroyed in the background
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
        let (sandbox, context) = self.claim_kernel().await?;
        let outcome = self.notebook_in(&sandbox, &context, req, started).await;
        context.close();
        drop(sandbox);
        metrics::histogram!("cella_run_seconds", "language" => "jupyter")
            .record(started.elapsed().as_secs_f64());
        outcome
    }

    async fn notebook_in(
        &self,
        sandbox: &Arc<Sandbox>,
        context: &Arc<Context>,
        req: NotebookRequest,
        started: Instant,
    ) -> Result<NotebookOutcome> {
        let memory_mb = self.memory_mb(req.memory_mb);
        sandbox.set_memory_mb(memory_mb)?;
        self.write_files(sandbox, req.files).await?;
        let deadline = started + req.total_timeout;
        let mut outcome = NotebookOutcome::default();
        let mut output_left = self.engine.config.runs.notebook_output_bytes;
        let mut lost = false;
        for code in &req.cells {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || lost {
                outcome.timed_out |= left.is_zero();
                break;
            }
            let limit = req.cell_timeout.map_or(left, |t| t.min(left));
            let call = Call {
                code: code.clone(),
                timeout: limit,
                output_cap: output_left,
            };
            let cell = context.execute(call, None).await?;
            output_left -= cell.kept_bytes;
            lost = cell.kernel_lost.is_some();
            // The notebook timed out: at its total, or at a cell's timeout the kernel did not
            // survive (no later cell can run).
            outcome.timed_out = cell.timed_out && (limit == left || lost);
            outcome.cells.push(cell);
        }
        outcome.kernel_death = context.death();
        outcome.fetched = self.fetch_files(sandbox, req.fetch_files).await?;
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

    /// Reads back the files asked for, keyed as asked, within one read limit for them all
    /// (else naming one big file many ways, `big`, `./big`, ..., would multiply what the
    /// server holds).
    async fn fetch_files(&self, sandbox: &Arc<Sandbox>, paths: Vec<String>) -> Result<Fetched> {
        let mut budget = self.engine.config.limits.max_read_bytes;
        let wanted: Vec<(String, String)> = paths
            .into_iter()
            .map(|p| (sandbox.absolute(&p), p))
            .collect();
        sandbox
            .with_fs(move |fs| {
                let mut fetched = Fetched::default();
                for (abs, key) in wanted {
                    match fs.read(&abs, budget) {
                        Ok(data) => {
                            budget -= data.len() as u64;
                            fetched.files.push((key, data));
                        }
                        Err(e) if e.raw_os_error() == Some(libc::EFBIG) => {
                            fetched.too_large.push(key)
                        }
                        Err(_) => {}
                    }
                }
                Ok(fetched)
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
        let compile = lang.compile.map(|compile| {
            let argv = language::render(compile, main, memory_mb);
            let inputs: Vec<(String, Key)> = files
                .iter()
                .map(|(path, data)| (sandbox.absolute(path), compiled::digest(data)))
                .collect();
            let toolchain = self.availability.version(lang).unwrap_or_default();
            let key = compiled::key(lang.name, &toolchain, &argv, &inputs);
            (argv, key, inputs.into_iter().collect())
        });
        self.write_files(sandbox, files).await?;

        let mut outcome = RunOutcome::default();
        if let Some((argv, key, inputs)) = compile {
            sandbox.set_memory_mb(memory_mb.max(COMPILE_MEMORY_MB))?;
            let opts = self.exec_options(lang, argv, req.compile_timeout, None);
            let step = self.compile(sandbox, opts, key, inputs).await?;
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

        outcome.fetched = self.fetch_files(sandbox, req.fetch_files).await?;
        Ok(outcome)
    }

    /// Runs the compile `opts` in `sandbox`, or writes there what an earlier compile of the
    /// same `key` made. `inputs` are the files written before it, with their digests.
    async fn compile(
        self: &Arc<Self>,
        sandbox: &Arc<Sandbox>,
        opts: ExecOptions,
        key: Key,
        inputs: HashMap<String, Key>,
    ) -> Result<Step> {
        let patience = opts.timeout.unwrap_or_default();
        let leader = match self.compiled.lookup(key, patience).await {
            Lookup::Hit(kept) => return compiled::restore(sandbox, &kept).await,
            Lookup::Compile(leader) => leader,
        };
        let step = self.step(sandbox, opts, Flavor::Plain, None).await?;
        let artifacts = match Compiled::keeps(&step) {
            true if step.succeeded() => self.compiled.capture(sandbox, inputs).await,
            true => Some(Vec::new()),
            false => None,
        };
        leader.keep(artifacts.map(|artifacts| Compiled {
            step: step.clone(),
            artifacts,
        }));
        Ok(step)
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
                        self.python.zygote_for(sandbox, flavor).await
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
}

fn lang_env(lang: &Language) -> std::collections::BTreeMap<String, String> {
    lang.env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
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
