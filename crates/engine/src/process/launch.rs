//! Launching a process: its spec checked, its stdio pipes made (owned by the sandbox's uid),
//! and the program started by the sandbox's init or forked from a warm Python zygote,
//! possibly held before it runs (parked) until someone takes it.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use cella_jail::proto::{Command, ExecSpec};
use cella_jail::zygote::Zygote;
use tokio::sync::{mpsc, watch};

use super::output::Output;
use super::pump::Pump;
use super::{Chunk, ExecOptions, Outcome, Process};
use crate::control::ExecEvent;
use crate::error::{Error, Result};
use crate::sandbox::Sandbox;

/// Pipe buffers large enough that a chatty program rarely waits for the server (also the most
/// an unprivileged program can make them hold: the default `/proc/sys/fs/pipe-max-size`).
pub(super) const PIPE_BYTES: i32 = 1 << 20;

/// A pipe for the stdio of a process running as `uid`.
fn pipe_pair(big: bool, uid: u32) -> Result<(OwnedFd, OwnedFd)> {
    let (r, w) = cella_jail::sys::pipe_owned_by(uid).map_err(Error::internal)?;
    if big {
        // A failure only leaves the default size.
        let _ = cella_jail::sys::set_pipe_size(w.as_fd(), PIPE_BYTES);
    }
    Ok((r, w))
}

/// How a process is started.
#[derive(Clone, Copy)]
pub enum Launcher<'a> {
    /// Forked by the sandbox's init: any program.
    Init,
    /// Forked from the warm Python zygote: `python3 <script>` or `python3 -m <module>` in a
    /// sandbox of the `host` image.
    Zygote(&'a Zygote),
}

/// Runs `opts` to the end and collects its output.
pub async fn run(sandbox: &Arc<Sandbox>, opts: ExecOptions) -> Result<Outcome> {
    run_with(sandbox, opts, Launcher::Init).await
}

pub async fn run_with(
    sandbox: &Arc<Sandbox>,
    opts: ExecOptions,
    launcher: Launcher<'_>,
) -> Result<Outcome> {
    collect(sandbox, start_with(sandbox, opts, None, launcher).await?).await
}

/// Waits for `process` to end and takes what it printed.
async fn collect(sandbox: &Sandbox, process: Arc<Process>) -> Result<Outcome> {
    let exit = process
        .wait(None)
        .await
        .ok_or_else(|| Error::internal("the process pump ended without a result"))?;
    sandbox.forget_process(process.id);
    Ok(Outcome {
        exit,
        output: process.take_captured(),
    })
}

/// Starts `opts` in `sandbox`. Returns once the program has been exec'd (or could not be).
pub async fn start(
    sandbox: &Arc<Sandbox>,
    opts: ExecOptions,
    sink: Option<mpsc::Sender<Chunk>>,
) -> Result<Arc<Process>> {
    start_with(sandbox, opts, sink, Launcher::Init).await
}

pub async fn start_with(
    sandbox: &Arc<Sandbox>,
    opts: ExecOptions,
    sink: Option<mpsc::Sender<Chunk>>,
    launcher: Launcher<'_>,
) -> Result<Arc<Process>> {
    let launched = launch(sandbox, &opts, launcher, false).await?;
    Ok(launched.begin(opts, sink, true))
}

/// Starts `opts` as a service of the server's in the sandbox (a kernel): as [`start_with`],
/// but not listed among the sandbox's processes, so it neither shows in the API's listing
/// nor keeps the sandbox from idling out.
pub async fn start_service(
    sandbox: &Arc<Sandbox>,
    opts: ExecOptions,
    launcher: Launcher<'_>,
) -> Result<Arc<Process>> {
    let launched = launch(sandbox, &opts, launcher, false).await?;
    Ok(launched.begin(opts, None, false))
}

/// Starts `opts` (its command, environment and directory) from the zygote, held: the process
/// waits in the sandbox, every privilege dropped, until [`Parked::run`] lets it go. The cost
/// of starting it is then paid before anyone waits for it.
pub async fn park(sandbox: &Arc<Sandbox>, opts: &ExecOptions, zygote: &Zygote) -> Result<Parked> {
    launch(sandbox, opts, Launcher::Zygote(zygote), true)
        .await
        .map(Parked)
}

/// A process held before its program runs (see [`park`]). Dropping it lets the process exit.
pub struct Parked(Launched);

impl Parked {
    /// The command it will run.
    pub fn argv(&self) -> &[String] {
        &self.0.argv
    }

    /// Whether the process is still waiting (it dies with its sandbox).
    pub fn waiting(&self) -> bool {
        self.0.events.is_empty() && !self.0.events.is_closed()
    }

    /// Lets the program run, with the stdin, timeout and output cap of `opts` (its command
    /// was fixed when it was parked), and collects it.
    pub async fn run(self, opts: ExecOptions) -> Result<Outcome> {
        let sandbox = self.0.sandbox.clone();
        collect(&sandbox, self.0.begin(opts, None, true)).await
    }
}

/// A process started in its sandbox whose output nobody reads yet.
struct Launched {
    sandbox: Arc<Sandbox>,
    id: u64,
    pid: i32,
    argv: Vec<String>,
    cwd: String,
    events: mpsc::UnboundedReceiver<ExecEvent>,
    zygote_watcher: Option<OwnedFd>,
    /// Our ends of its stdin, stdout and stderr.
    pipes: [OwnedFd; 3],
    /// A held process runs its program when a byte arrives here.
    go: Option<OwnedFd>,
    /// When its program may have begun running (the wall time counts from there).
    launched_at: Instant,
    oom_before: u64,
}

async fn launch(
    sandbox: &Arc<Sandbox>,
    opts: &ExecOptions,
    launcher: Launcher<'_>,
    held: bool,
) -> Result<Launched> {
    let launched_at = Instant::now();
    let id = sandbox.next_exec_id();
    let spec = sandbox.exec_spec(id, opts)?;
    let uid = sandbox.uid();
    let (stdin_r, stdin_w) = pipe_pair(false, uid)?;
    let (stdout_r, stdout_w) = pipe_pair(true, uid)?;
    let (stderr_r, stderr_w) = pipe_pair(true, uid)?;
    let go = held.then(cella_jail::sys::pipe).transpose();
    let (go_r, go_w) = go.map_err(Error::internal)?.unzip();
    let oom_before = sandbox.usage().oom_kills;
    let stdio = [stdin_r, stdout_w, stderr_w];
    let launched = match launcher {
        Launcher::Init => launch_by_init(sandbox, &spec, stdio.each_ref().map(|f| f.as_fd()))
            .await
            .map(|events| (events, None)),
        Launcher::Zygote(zygote) => launch_by_zygote(sandbox, zygote, &spec, &stdio, go_r)
            .map(|(events, watcher)| (events, Some(watcher))),
    };
    drop(stdio);
    let (mut events, zygote_watcher) = launched?;
    let pid = started(sandbox, id, &mut events).await?;
    Ok(Launched {
        sandbox: sandbox.clone(),
        id,
        pid,
        argv: spec.argv,
        cwd: spec.cwd,
        events,
        zygote_watcher,
        pipes: [stdin_w, stdout_r, stderr_r],
        go: go_w,
        launched_at,
        oom_before,
    })
}

impl Launched {
    /// Lets a held process go, and starts the pump that feeds its stdin, reads its output and
    /// enforces the timeout (from now) of `opts`. A `listed` process is one of the sandbox's.
    fn begin(
        self,
        opts: ExecOptions,
        sink: Option<mpsc::Sender<Chunk>>,
        listed: bool,
    ) -> Arc<Process> {
        // A held program begins now; any other began when it was launched.
        let started = if self.go.is_some() {
            Instant::now()
        } else {
            self.launched_at
        };
        if let Some(go) = &self.go {
            // If it died meanwhile, the pump hears of its end at once.
            let _ = cella_jail::sys::write_all(go.as_fd(), b"1");
        }
        let (exit_tx, exit_rx) = watch::channel(None);
        let (actions, actions_rx) = mpsc::unbounded_channel();
        let process = Arc::new(Process {
            id: self.id,
            pid: self.pid,
            argv: self.argv,
            cwd: self.cwd,
            started_at: SystemTime::now(),
            output: Mutex::new(Output::new(opts.output_cap, self.sandbox.output_budget())),
            exit: exit_rx,
            actions,
        });
        if listed {
            self.sandbox.register_process(process.clone());
        }
        let pump = Pump {
            listed,
            zygote_watcher: self.zygote_watcher,
            sandbox: self.sandbox,
            process: process.clone(),
            sink,
            started,
            oom_before: self.oom_before,
        };
        tokio::spawn(pump.run(
            self.events,
            actions_rx,
            opts.stdin,
            opts.timeout,
            self.pipes,
            exit_tx,
        ));
        process
    }
}

/// Has the sandbox's init start `spec` with `stdio`; returns its events.
pub(crate) async fn launch_by_init(
    sandbox: &Sandbox,
    spec: &ExecSpec,
    stdio: [BorrowedFd<'_>; 3],
) -> Result<mpsc::UnboundedReceiver<ExecEvent>> {
    // On cgroup v2 the exec's cgroup is made here and its `cgroup.procs` opened in the host's
    // cgroup namespace: the process moves in from the inits' leaf, outside the sandbox, which
    // a file opened in the sandbox's namespace may not do where namespaces delegate
    // (`nsdelegate`, as systemd mounts cgroup2). On v1 the init makes it.
    let procs = if sandbox.cgroup.is_v2() {
        open_exec_procs(sandbox, spec.id)?
    } else {
        Vec::new()
    };
    let mut fds = stdio.to_vec();
    fds.extend(procs.iter().map(|f| f.as_fd()));
    let control = sandbox.control();
    let events = control.subscribe(spec.id);
    if let Err(e) = control.send(&Command::Exec(spec.clone()), &fds).await {
        control.unsubscribe(spec.id);
        return Err(e);
    }
    Ok(events)
}

/// Waits for exec `id`'s first event: its pid once started, or why it could not start.
pub(crate) async fn started(
    sandbox: &Sandbox,
    id: u64,
    events: &mut mpsc::UnboundedReceiver<ExecEvent>,
) -> Result<i32> {
    let control = sandbox.control();
    match events.recv().await {
        Some(ExecEvent::Started { pid }) => Ok(pid),
        Some(ExecEvent::SpawnFailed {
            error,
            missing_program,
        }) => {
            control.unsubscribe(id);
            let limit = sandbox.info().pids;
            Err(if missing_program {
                Error::MissingProgram(error)
            } else if sandbox.usage().pids >= limit {
                // Not the request's fault: the sandbox's processes use up its limit.
                Error::Conflict(format!(
                    "the sandbox runs its limit of {limit} processes; none can start until \
                     some end ({error})"
                ))
            } else {
                Error::invalid(error)
            })
        }
        _ => {
            control.unsubscribe(id);
            Err(Error::Conflict("the sandbox stopped".into()))
        }
    }
}

/// Makes exec `id`'s cgroup and opens the `cgroup.procs` files its process joins.
fn open_exec_procs(sandbox: &Sandbox, id: u64) -> Result<Vec<OwnedFd>> {
    (sandbox.cgroup.exec_procs(id)?.iter())
        .map(|p| {
            cella_jail::sys::open(p, libc::O_WRONLY)
                .map_err(|e| Error::Internal(format!("open {}: {e}", p.display())))
        })
        .collect()
}

/// Returns the process's events and the channel to the zygote's child that watches it.
fn launch_by_zygote(
    sandbox: &Sandbox,
    zygote: &Zygote,
    spec: &ExecSpec,
    stdio: &[OwnedFd; 3],
    go: Option<OwnedFd>,
) -> Result<(mpsc::UnboundedReceiver<ExecEvent>, OwnedFd)> {
    let procs = open_exec_procs(sandbox, spec.id)?;
    let (ours, theirs) = cella_jail::sys::seqpacket_pair().map_err(Error::internal)?;
    let mut fds = vec![sandbox.pidfd(), theirs.as_fd()];
    fds.extend(stdio.iter().map(|f| f.as_fd()));
    fds.extend(go.iter().map(|f| f.as_fd()));
    fds.extend(procs.iter().map(|f| f.as_fd()));
    zygote
        .launch(spec, sandbox.uid(), go.is_some(), &fds)
        .map_err(|e| Error::Unavailable(format!("the Python zygote: {e}")))?;
    let watcher = ours.try_clone().map_err(Error::internal)?;
    Ok((crate::control::events_of(ours)?, watcher))
}
