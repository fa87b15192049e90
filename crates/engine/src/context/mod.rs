//! Contexts: stateful code kernels inside sandboxes. A context keeps its variables, imports
//! and working directory from one call to the next; a sandbox may hold many, each with its
//! own language and directory, and they die with it.
//!
//! `mod.rs` is one context: its kernel and its calls, which run one at a time in the order
//! they came, each in a task of its own (a caller that goes away interrupts its call instead
//! of leaving the kernel busy). `registry.rs` holds the contexts of every sandbox,
//! `kernels.rs` starts each language's kernel, `jupyter/` speaks to it, `output.rs` is what
//! a call produces and `files.rs` the files a call changed.
//!
//! A call past its timeout interrupts the kernel and answers with what came before; a kernel
//! that ignores the interrupt for 2 s is stopped, as is one that dies: the call says its
//! state is lost, and the next call starts a fresh kernel.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::process::{self, Process};
use crate::sandbox::{Sandbox, now_secs};

mod files;
mod jupyter;
mod kernels;
mod output;
mod registry;

pub use jupyter::KernelDeath;

use jupyter::Interrupts;
pub use kernels::{INLINE_BACKEND, Language, PYTHON_PACKAGES};
pub use output::{CellResult, Event, Output, Sink};
pub use registry::Contexts;

use files::Snapshot;
use jupyter::Kernel;
use kernels::Kernels;

/// What a new context is: its language, working directory (default the sandbox's home,
/// made if missing) and environment (added to the sandbox's).
#[derive(Debug, Clone)]
pub struct ContextSpec {
    pub language: Language,
    pub cwd: Option<String>,
    pub env: BTreeMap<String, String>,
}

impl ContextSpec {
    pub fn new(language: Language) -> ContextSpec {
        ContextSpec {
            language,
            cwd: None,
            env: BTreeMap::new(),
        }
    }
}

/// One call: code, and how long it may run and print.
#[derive(Debug, Clone)]
pub struct Call {
    pub code: String,
    /// From when the call starts running (not while it waits for the calls before it).
    pub timeout: Duration,
    /// Bytes of output kept; the rest is dropped (and the result says it was cut).
    pub output_cap: usize,
}

impl Call {
    /// A call of `code`, checked against the server's limits: code of at most
    /// `contexts.max_code_bytes`, a timeout within `limits.max_exec_timeout_secs`, an output
    /// cap (default `sandbox.output_cap_bytes`) within `limits.max_output_cap_bytes`.
    pub fn checked(
        config: &Config,
        code: String,
        timeout_secs: f64,
        output_cap: Option<usize>,
    ) -> Result<Call> {
        let most = config.contexts.max_code_bytes;
        if code.len() > most {
            return Err(Error::TooLarge(format!(
                "the code is {} bytes; a call takes at most {most} (contexts.max_code_bytes)",
                code.len()
            )));
        }
        Ok(Call {
            code,
            timeout: process::checked_timeout(config, "timeout", timeout_secs)?,
            output_cap: process::output_cap(config, output_cap)?,
        })
    }
}

/// A context as the API shows it.
#[derive(Debug, Clone)]
pub struct ContextInfo {
    pub id: String,
    pub sandbox_id: String,
    pub language: Language,
    pub cwd: String,
    /// Seconds since the epoch.
    pub created_at: f64,
    /// A call is running.
    pub busy: bool,
    /// Calls waiting behind the running one.
    pub queued: usize,
}

pub struct Context {
    pub id: String,
    sandbox: Arc<Sandbox>,
    language: Language,
    cwd: String,
    env: BTreeMap<String, String>,
    created_at: f64,
    kernels: Arc<Kernels>,
    /// Calls waiting beyond the running one; past this many, more are refused.
    max_queued: usize,
    /// The kernel, held by the running call. `None` until one starts (after a kernel was
    /// lost, the next call starts it again).
    kernel: tokio::sync::Mutex<Option<Kernel>>,
    /// The kernel process, reachable without waiting for the call that holds `kernel`.
    process: Mutex<Option<Arc<Process>>>,
    waiting: AtomicUsize,
    busy: AtomicBool,
    /// Set when the context is deleted: calls still waiting do not run.
    closed: AtomicBool,
    /// How the last kernel died, if a call's code ended it.
    death: Mutex<Option<KernelDeath>>,
    /// Interrupts asked for through the API, for the running call.
    interrupts: Interrupts,
    /// Kernels started so far (each gets a directory of its own).
    kernels_started: AtomicU64,
}

/// A call's place among a context's waiting calls, held until it runs or gives up.
struct InLine(Arc<Context>);

impl InLine {
    /// Joins the line; returns the place and how many were waiting already.
    fn join(context: &Arc<Context>) -> (InLine, usize) {
        let ahead = context.waiting.fetch_add(1, Ordering::SeqCst);
        (InLine(context.clone()), ahead)
    }
}

impl Drop for InLine {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Context {
    /// Starts a context's kernel in `sandbox`; returns once it answers.
    pub(crate) async fn start(
        sandbox: Arc<Sandbox>,
        spec: ContextSpec,
        kernels: Arc<Kernels>,
        max_queued: usize,
    ) -> Result<Context> {
        let id = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
        let cwd = sandbox.absolute(spec.cwd.as_deref().unwrap_or(cella_jail::SANDBOX_HOME));
        (sandbox.on_path(&cwd, |fs, dir| fs.mkdir(dir, true, 0o755))).await?;
        let context = Context {
            id,
            sandbox,
            language: spec.language,
            cwd,
            env: spec.env,
            created_at: now_secs(),
            kernels,
            max_queued,
            kernel: tokio::sync::Mutex::new(None),
            process: Mutex::new(None),
            waiting: AtomicUsize::new(0),
            busy: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            death: Mutex::new(None),
            interrupts: Interrupts::default(),
            kernels_started: AtomicU64::new(0),
        };
        let kernel = context.start_kernel().await?;
        *context.kernel.lock().await = Some(kernel);
        Ok(context)
    }

    /// Starts a kernel in a directory of its own: one started again must not meet the
    /// sockets of the one before, which may still be dying. The one before's is removed.
    async fn start_kernel(&self) -> Result<Kernel> {
        let generation = self.kernels_started.fetch_add(1, Ordering::SeqCst);
        let dir = |n: u64| format!("/tmp/.cella-kernels/{}-{n}", self.id);
        if let Some(before) = generation.checked_sub(1).map(dir) {
            let _ = (self.sandbox.on_path(&before, |fs, p| fs.remove(p, true))).await;
        }
        let kernel = (self.kernels)
            .start(
                &self.sandbox,
                self.language,
                dir(generation),
                &self.cwd,
                &self.env,
            )
            .await?;
        *self.process.lock().unwrap_or_else(|p| p.into_inner()) = Some(kernel.process().clone());
        Ok(kernel)
    }

    pub fn info(&self) -> ContextInfo {
        ContextInfo {
            id: self.id.clone(),
            sandbox_id: self.sandbox.id.clone(),
            language: self.language,
            cwd: self.cwd.clone(),
            created_at: self.created_at,
            busy: self.busy.load(Ordering::SeqCst),
            queued: self.waiting.load(Ordering::SeqCst),
        }
    }

    pub fn language(&self) -> Language {
        self.language
    }

    /// Runs `call` after the calls before it, its outputs also sent to `sink` as they come.
    /// The call runs in a task of its own: a caller that goes away interrupts it, and the
    /// kernel is left ready for the next.
    pub async fn execute(self: &Arc<Self>, call: Call, sink: Option<Sink>) -> Result<CellResult> {
        let (place, ahead) = InLine::join(self);
        if ahead >= self.max_queued {
            return Err(Error::Busy(format!(
                "context {} has {ahead} calls waiting already; retry later",
                self.id
            )));
        }
        let (answer, answered) = oneshot::channel();
        let abandoned = CancellationToken::new();
        let _abandon_on_drop = abandoned.clone().drop_guard();
        let context = self.clone();
        tokio::spawn(async move {
            let result = context.run(call, sink, place, &abandoned).await;
            let _ = answer.send(result);
        });
        answered.await.map_err(Error::internal)?
    }

    async fn run(
        &self,
        call: Call,
        sink: Option<Sink>,
        place: InLine,
        abandoned: &CancellationToken,
    ) -> Result<CellResult> {
        let mut slot = tokio::select! {
            slot = self.kernel.lock() => slot,
            () = abandoned.cancelled() => return Err(Error::Conflict("the caller went away".into())),
        };
        drop(place);
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::not_found("context", &self.id));
        }
        self.busy.store(true, Ordering::SeqCst);
        let _active = self.sandbox.hold_active();
        let result = self.run_in(&mut slot, call, sink, abandoned).await;
        self.busy.store(false, Ordering::SeqCst);
        // An interrupt asked for as the call ended is not the next call's.
        self.interrupts.forget();
        result
    }

    async fn run_in(
        &self,
        slot: &mut Option<Kernel>,
        call: Call,
        sink: Option<Sink>,
        abandoned: &CancellationToken,
    ) -> Result<CellResult> {
        if slot.as_ref().is_none_or(|k| k.lost().is_some()) {
            *slot = None; // dropped: the old kernel is stopped
            *slot = Some(self.start_kernel().await?);
        }
        let Some(kernel) = slot.as_mut() else {
            return Err(Error::internal("no kernel"));
        };
        let before = Snapshot::take(&self.sandbox, &self.cwd).await;
        let (code, timeout, cap) = (&call.code, call.timeout, call.output_cap);
        let interrupts = &self.interrupts;
        let mut result =
            (kernel.execute(code, timeout, cap, sink.as_ref(), abandoned, interrupts)).await?;
        if let Some(lost) = &result.kernel_lost {
            *self.death.lock().unwrap_or_else(|p| p.into_inner()) = kernel.death().cloned();
            *slot = None;
            if !self.sandbox.is_running() {
                result.kernel_lost = Some(format!("the sandbox stopped ({lost})"));
            }
        }
        if let (Some(before), Some(after)) =
            (before, Snapshot::take(&self.sandbox, &self.cwd).await)
        {
            for file in before.changes(&after) {
                result.keep(file, 0, usize::MAX, sink.as_ref());
            }
        }
        Ok(result)
    }

    /// Interrupts the running call, if there is one (as SIGINT does a program).
    pub fn interrupt(&self) {
        if self.busy.load(Ordering::SeqCst) {
            self.interrupts.ask();
        }
    }

    /// Starts a fresh kernel: a running call ends (saying the kernel was lost), its state is
    /// gone, and the calls waiting run in the new kernel.
    pub async fn restart(&self) -> Result<()> {
        self.stop_kernel();
        let mut slot = self.kernel.lock().await;
        *slot = None;
        *slot = Some(self.start_kernel().await?);
        Ok(())
    }

    /// Stops the kernel process now, whatever it is doing.
    fn stop_kernel(&self) {
        if let Some(p) = self
            .process
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            p.kill();
        }
    }

    /// Ends the context: its kernel stops and the calls waiting do not run.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.stop_kernel();
    }

    /// How a kernel of this context died of a call's code, if one did.
    pub fn death(&self) -> Option<KernelDeath> {
        self.death.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
