//! Processes: commands run in a sandbox, collected, streamed or left in the background.
//!
//! Every exec is one [`Process`]. A pump task owns its pipes: it feeds stdin, drains stdout and
//! stderr to the end whatever the cap (so a program printing gigabytes never blocks on a full
//! pipe), keeps at most `output_cap` bytes of each, enforces the wall-clock deadline by killing
//! the exec's whole cgroup, and records how it ended. A collected exec waits for that end; a
//! streamed one also receives the kept chunks as they arrive.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use cella_jail::proto::{Command, ExecSpec};
use cella_jail::zygote::Zygote;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::warn;

use crate::config::Config;
use crate::control::ExecEvent;
use crate::error::{Error, Result};
use crate::sandbox::Sandbox;

/// How long output is still read after the main process exits: background children that
/// inherited stdout would otherwise hold the exec open forever.
const OUTPUT_GRACE: Duration = Duration::from_millis(200);
/// Pipe buffers large enough that a chatty program rarely waits for the server (also the most
/// an unprivileged program can make them hold: the default `/proc/sys/fs/pipe-max-size`).
const PIPE_BYTES: i32 = 1 << 20;

/// A validated command, ready to run.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub stdin: Option<Vec<u8>>,
    /// `None`: runs until it exits or is killed.
    pub timeout: Option<Duration>,
    pub output_cap: usize,
}

/// A command to run, as the native API takes it.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ExecRequest {
    /// The program and its arguments (found on `PATH` if it has no `/`).
    pub command: Option<Vec<String>>,
    /// A shell command line, run with `bash -c`. Give this or `command`.
    pub shell: Option<String>,
    /// Added to (and overriding) the sandbox's environment.
    pub env: BTreeMap<String, String>,
    /// Working directory (default: the home directory, `/home/user`).
    pub cwd: Option<String>,
    /// Text written to the program's stdin, which is then closed.
    pub stdin: Option<String>,
    /// Wall-clock limit in seconds; at the limit the process and all it started are killed.
    pub timeout: Option<f64>,
    /// Bytes of stdout and of stderr to keep; the rest is drained and dropped.
    pub output_cap: Option<usize>,
}

impl ExecRequest {
    pub fn into_options(self, config: &Config) -> Result<ExecOptions> {
        let argv = match (self.command, self.shell) {
            (Some(argv), None) if !argv.is_empty() => argv,
            (None, Some(shell)) => shell_argv(shell),
            _ => {
                return Err(Error::invalid(
                    "give exactly one of `command` (a non-empty list) or `shell`",
                ));
            }
        };
        Ok(ExecOptions {
            argv,
            env: self.env,
            cwd: self.cwd,
            stdin: self.stdin.map(String::into_bytes),
            timeout: Some(checked_timeout(
                config,
                "timeout",
                self.timeout.unwrap_or(config.sandbox.exec_timeout_secs),
            )?),
            output_cap: output_cap(config, self.output_cap)?,
        })
    }
}

/// `bash -c <line>`.
pub fn shell_argv(line: String) -> Vec<String> {
    vec!["bash".into(), "-c".into(), line]
}

/// A requested timeout (`field`, in seconds), checked against the server's bounds.
pub fn checked_timeout(config: &Config, field: &str, secs: f64) -> Result<Duration> {
    let max = config.limits.max_exec_timeout_secs;
    if !(secs > 0.0 && secs <= max) {
        return Err(Error::invalid(format!(
            "{field} must be more than 0 and at most {max} seconds"
        )));
    }
    Ok(Duration::from_secs_f64(secs))
}

pub fn output_cap(config: &Config, cap: Option<usize>) -> Result<usize> {
    let cap = cap.unwrap_or(config.sandbox.output_cap_bytes);
    let max = config.limits.max_output_cap_bytes;
    if cap > max {
        return Err(Error::invalid(format!(
            "output_cap must be at most {max} bytes"
        )));
    }
    Ok(cap)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// How a process ended.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Exit {
    /// Exit status, when the process exited on its own.
    pub exit_code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// Wall-clock seconds from start to exit.
    pub wall_time: f64,
    /// CPU seconds (user + system) of the process and the children it waited for.
    pub cpu_time: f64,
    /// Killed at its deadline (with every process it started).
    pub timed_out: bool,
    /// Killed by the kernel's OOM killer at the sandbox's memory limit (it, or a child whose
    /// death it reported with exit code 137).
    pub oom_killed: bool,
    /// Killed through the API.
    pub killed: bool,
    /// The sandbox went away before the process finished.
    pub sandbox_lost: bool,
}

impl Exit {
    /// How the process ended, in words: "exited with code 3", "was killed by signal 9 (out
    /// of memory)".
    pub fn describe(&self) -> String {
        match (self.exit_code, self.signal) {
            (Some(code), _) if self.oom_killed => {
                format!("exited with code {code} (a process it started ran out of memory)")
            }
            (Some(code), _) => format!("exited with code {code}"),
            (None, Some(signal)) if self.oom_killed => {
                format!("was killed by signal {signal} (out of memory)")
            }
            (None, Some(signal)) => format!("was killed by signal {signal}"),
            (None, None) => "ended".into(),
        }
    }
}

/// The output all processes hold together, at most `limits.max_output_bytes_held`: past it,
/// more output is dropped as if past the exec's own cap, so execs printing up to their caps in
/// many sandboxes at once cannot take the server's memory.
#[derive(Debug)]
pub struct OutputBudget {
    free: AtomicUsize,
}

impl OutputBudget {
    pub fn new(bytes: usize) -> Arc<OutputBudget> {
        Arc::new(OutputBudget {
            free: AtomicUsize::new(bytes),
        })
    }

    /// Takes up to `want` bytes of the budget; returns how many it got.
    fn take(&self, want: usize) -> usize {
        if want == 0 {
            return 0;
        }
        let taken = self
            .free
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |free| {
                Some(free - want.min(free))
            })
            .map_or(0, |free| want.min(free));
        metrics::gauge!("cella_output_bytes_held").increment(taken as f64);
        taken
    }

    fn give_back(&self, bytes: usize) {
        self.free.fetch_add(bytes, Ordering::AcqRel);
        metrics::gauge!("cella_output_bytes_held").decrement(bytes as f64);
    }
}

/// Output kept within a cap and the server's budget; the rest is counted and dropped.
#[derive(Debug)]
struct Capped {
    data: Vec<u8>,
    cap: usize,
    truncated: bool,
    budget: Arc<OutputBudget>,
    /// Bytes taken from the budget (still held after `data` is handed on, until this drops).
    held: usize,
}

impl Capped {
    fn new(cap: usize, budget: Arc<OutputBudget>) -> Capped {
        Capped {
            data: Vec::new(),
            cap,
            truncated: false,
            budget,
            held: 0,
        }
    }

    fn push<'a>(&mut self, chunk: &'a [u8]) -> &'a [u8] {
        let room = self.cap.saturating_sub(self.held);
        let want = chunk.len().min(room);
        let granted = self.budget.take(want);
        if granted < want && !self.truncated {
            warn!(
                "the server holds its limit of output (limits.max_output_bytes_held): an \
                 exec's output is cut short"
            );
        }
        self.held += granted;
        let kept = &chunk[..granted];
        self.truncated |= kept.len() < chunk.len();
        self.data.extend_from_slice(kept);
        kept
    }
}

impl Drop for Capped {
    fn drop(&mut self) {
        self.budget.give_back(self.held);
    }
}

#[derive(Debug)]
struct Output {
    stdout: Capped,
    stderr: Capped,
}

impl Output {
    fn new(cap: usize, budget: &Arc<OutputBudget>) -> Output {
        Output {
            stdout: Capped::new(cap, budget.clone()),
            stderr: Capped::new(cap, budget.clone()),
        }
    }
}

/// What a process produced: the kept bytes and whether more was cut.
#[derive(Debug, Clone, Default)]
pub struct Captured {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
}

/// Output as text, invalid UTF-8 replaced; valid output (nearly all) is moved, not copied.
pub fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes)
        .unwrap_or_else(|invalid| String::from_utf8_lossy(invalid.as_bytes()).into_owned())
}

/// One event of a streamed exec.
#[derive(Debug, Clone)]
pub enum Chunk {
    Output(Stream, Bytes),
}

pub struct Process {
    pub id: u64,
    /// Pid inside the sandbox's pid namespace.
    pub pid: i32,
    pub argv: Vec<String>,
    pub cwd: String,
    pub started_at: SystemTime,
    output: Mutex<Output>,
    exit: watch::Receiver<Option<Exit>>,
    actions: mpsc::UnboundedSender<Action>,
}

/// What the API may ask of a running process; the pump carries it out.
#[derive(Debug, Clone, Copy)]
enum Action {
    Signal(i32),
    KillTree,
}

impl Process {
    pub fn exit(&self) -> Option<Exit> {
        self.exit.borrow().clone()
    }

    /// Waits for the process to end, at most `limit` if given.
    pub async fn wait(&self, limit: Option<Duration>) -> Option<Exit> {
        let mut rx = self.exit.clone();
        let done = async move {
            rx.wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|e| e.clone())
        };
        match limit {
            Some(limit) => tokio::time::timeout(limit, done).await.ok().flatten(),
            None => done.await,
        }
    }

    /// Kills the process and every process it started.
    pub fn kill(&self) {
        let _ = self.actions.send(Action::KillTree);
    }

    /// Sends a signal to the process itself (not to its children).
    pub fn signal(&self, signal: i32) -> Result<()> {
        self.actions
            .send(Action::Signal(signal))
            .map_err(|_| Error::Conflict("the process has ended".into()))
    }

    pub fn captured(&self) -> Captured {
        self.captured_by(|data| data.clone())
    }

    /// Takes its output, for one who alone has it (a forgotten process).
    fn take_captured(&self) -> Captured {
        self.captured_by(std::mem::take)
    }

    /// Its output, each stream's bytes got from the buffer by `get` (a copy, or the bytes).
    fn captured_by(&self, get: impl Fn(&mut Vec<u8>) -> Vec<u8>) -> Captured {
        let mut out = self.output.lock().unwrap_or_else(|p| p.into_inner());
        Captured {
            stdout: get(&mut out.stdout.data),
            stderr: get(&mut out.stderr.data),
            stdout_truncated: out.stdout.truncated,
            stderr_truncated: out.stderr.truncated,
        }
    }

    /// Bytes of output held for it.
    pub fn captured_bytes(&self) -> usize {
        let out = self.output.lock().unwrap_or_else(|p| p.into_inner());
        out.stdout.data.len() + out.stderr.data.len()
    }

    /// Keeps what fits under the cap; returns that part of `chunk`.
    fn keep<'a>(&self, stream: Stream, chunk: &'a [u8]) -> &'a [u8] {
        let mut out = self.output.lock().unwrap_or_else(|p| p.into_inner());
        let buf = match stream {
            Stream::Stdout => &mut out.stdout,
            Stream::Stderr => &mut out.stderr,
        };
        buf.push(chunk)
    }
}

/// A finished exec: how it ended and what it printed.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub exit: Exit,
    pub output: Captured,
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
    Ok(launched.begin(opts, sink))
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
        collect(&sandbox, self.0.begin(opts, None)).await
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
    let control = sandbox.control();
    let oom_before = sandbox.usage().oom_kills;
    let stdio = [stdin_r, stdout_w, stderr_w];
    let launched = match launcher {
        Launcher::Init => launch_by_init(sandbox, &spec, &stdio)
            .await
            .map(|events| (events, None)),
        Launcher::Zygote(zygote) => launch_by_zygote(sandbox, zygote, &spec, &stdio, go_r)
            .map(|(events, watcher)| (events, Some(watcher))),
    };
    drop(stdio);
    let (mut events, zygote_watcher) = launched?;
    let pid = match events.recv().await {
        Some(ExecEvent::Started { pid }) => pid,
        Some(ExecEvent::SpawnFailed {
            error,
            missing_program,
        }) => {
            control.unsubscribe(id);
            let limit = sandbox.info().pids;
            return Err(if missing_program {
                Error::MissingProgram(error)
            } else if sandbox.usage().pids >= limit {
                // Not the request's fault: the sandbox's processes use up its limit.
                Error::Conflict(format!(
                    "the sandbox runs its limit of {limit} processes; none can start until \
                     some end ({error})"
                ))
            } else {
                Error::invalid(error)
            });
        }
        _ => {
            control.unsubscribe(id);
            return Err(Error::Conflict("the sandbox stopped".into()));
        }
    };
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
    /// enforces the timeout (from now) of `opts`.
    fn begin(self, opts: ExecOptions, sink: Option<mpsc::Sender<Chunk>>) -> Arc<Process> {
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
        self.sandbox.register_process(process.clone());
        let pump = Pump {
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

async fn launch_by_init(
    sandbox: &Sandbox,
    spec: &ExecSpec,
    stdio: &[OwnedFd; 3],
) -> Result<mpsc::UnboundedReceiver<ExecEvent>> {
    let control = sandbox.control();
    let events = control.subscribe(spec.id);
    let fds = stdio.each_ref().map(|f| f.as_fd());
    if let Err(e) = control.send(&Command::Exec(spec.clone()), &fds).await {
        control.unsubscribe(spec.id);
        return Err(e);
    }
    Ok(events)
}

/// Returns the process's events and the channel to the zygote's child that watches it.
fn launch_by_zygote(
    sandbox: &Sandbox,
    zygote: &Zygote,
    spec: &ExecSpec,
    stdio: &[OwnedFd; 3],
    go: Option<OwnedFd>,
) -> Result<(mpsc::UnboundedReceiver<ExecEvent>, OwnedFd)> {
    let procs = sandbox
        .cgroup
        .exec_procs(spec.id)?
        .iter()
        .map(|p| {
            cella_jail::sys::open(p, libc::O_WRONLY)
                .map_err(|e| Error::Internal(format!("open {}: {e}", p.display())))
        })
        .collect::<Result<Vec<_>>>()?;
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

/// A process's exit as its parent saw it.
struct Ended {
    code: Option<i32>,
    signal: Option<i32>,
    cpu_us: u64,
}

struct Pump {
    /// Set when started by the zygote: the channel to the zygote's child that watches the
    /// process. Its processes are outside the init's Landlock domain, so the host kills their
    /// tree and that child forwards signals.
    zygote_watcher: Option<OwnedFd>,
    sandbox: Arc<Sandbox>,
    process: Arc<Process>,
    sink: Option<mpsc::Sender<Chunk>>,
    started: Instant,
    oom_before: u64,
}

impl Pump {
    async fn run(
        self,
        mut events: mpsc::UnboundedReceiver<ExecEvent>,
        mut actions: mpsc::UnboundedReceiver<Action>,
        stdin: Option<Vec<u8>>,
        timeout: Option<Duration>,
        [stdin_w, stdout_r, stderr_r]: [OwnedFd; 3],
        exit_tx: watch::Sender<Option<Exit>>,
    ) {
        let id = self.process.id;
        let feeder = tokio::spawn(feed(stdin_w, stdin));
        let (stop, stopped) = watch::channel(false);
        let readers =
            [(Stream::Stdout, stdout_r), (Stream::Stderr, stderr_r)].map(|(stream, fd)| {
                tokio::spawn(drain(
                    fd,
                    stream,
                    self.process.clone(),
                    self.sink.clone(),
                    stopped.clone(),
                ))
            });

        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let (mut timed_out, mut killed) = (false, false);
        let ended = loop {
            let expired = async {
                match deadline {
                    Some(d) if !timed_out => tokio::time::sleep_until(d).await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                event = events.recv() => match event {
                    Some(ExecEvent::Exited { code, signal, cpu_us }) => break Some(Ended { code, signal, cpu_us }),
                    Some(ExecEvent::Lost) | None => break None,
                    Some(_) => continue,
                },
                () = expired => {
                    timed_out = true;
                    self.kill_tree(id).await;
                }
                Some(action) = actions.recv() => match action {
                    Action::KillTree => {
                        killed = true;
                        self.kill_tree(id).await;
                    }
                    Action::Signal(signal) => self.signal(id, signal).await,
                },
            }
        };
        let wall = self.started.elapsed();
        self.sandbox.control().unsubscribe(id);
        feeder.abort();
        finish_reading(readers, stop).await;
        let exit = self.exit(ended, wall, timed_out, killed);
        metrics::histogram!("cella_exec_seconds").record(wall.as_secs_f64());
        self.sandbox.touch();
        let _ = exit_tx.send(Some(exit));
        self.sandbox.retire_process(id);
    }

    /// How the process ended; `ended` is none when the sandbox went away under it, which
    /// reads as a SIGKILL.
    fn exit(&self, ended: Option<Ended>, wall: Duration, timed_out: bool, killed: bool) -> Exit {
        let sandbox_lost = ended.is_none();
        let Ended {
            code,
            signal,
            cpu_us,
        } = ended.unwrap_or(Ended {
            code: None,
            signal: Some(libc::SIGKILL),
            cpu_us: 0,
        });
        // Killed, or a shell or launcher script reporting a child killed (128 + SIGKILL):
        // through `kotlinc`, `sh -c` and the like a run's program is such a child.
        let kill_ended = signal == Some(libc::SIGKILL) || code == Some(128 + libc::SIGKILL);
        let oom = kill_ended
            && !sandbox_lost
            && !timed_out
            && !killed
            && self.sandbox.usage().oom_kills > self.oom_before;
        Exit {
            exit_code: code,
            signal,
            wall_time: wall.as_secs_f64(),
            cpu_time: cpu_us as f64 / 1e6,
            timed_out,
            oom_killed: oom,
            killed,
            sandbox_lost,
        }
    }

    async fn signal(&self, id: u64, signal: i32) {
        let command = Command::Signal { id, signal };
        // A process that has just ended cannot be signalled: nothing to report.
        match &self.zygote_watcher {
            Some(watcher) => drop(cella_jail::proto::send(watcher.as_fd(), &command, &[])),
            None => drop(self.sandbox.control().send(&command, &[]).await),
        }
    }

    async fn kill_tree(&self, id: u64) {
        if self.zygote_watcher.is_some() {
            let sandbox = self.sandbox.clone();
            let _ = tokio::task::spawn_blocking(move || sandbox.cgroup.kill_exec(id)).await;
        } else {
            let _ = self
                .sandbox
                .control()
                .send(&Command::KillTree { id }, &[])
                .await;
        }
    }
}

/// Reads what was written before the exit to the end; a background child holding the pipes
/// gets a short grace, then what it has written so far is taken and the pipes dropped.
async fn finish_reading(readers: [JoinHandle<()>; 2], stop: watch::Sender<bool>) {
    let readers = futures::future::join_all(readers);
    tokio::pin!(readers);
    tokio::select! {
        _ = &mut readers => {}
        () = tokio::time::sleep(OUTPUT_GRACE) => {
            let _ = stop.send(true);
            readers.await;
        }
    }
}

async fn feed(fd: OwnedFd, data: Option<Vec<u8>>) {
    let Some(data) = data.filter(|d| !d.is_empty()) else {
        return;
    };
    if let Ok(mut tx) = pipe::Sender::from_owned_fd(fd) {
        // A program that exits without reading its stdin makes this fail: that is fine.
        let _ = tx.write_all(&data).await;
    }
}

/// Reads one output pipe to its end. When `stop` is set (the program has exited but something
/// still holds the pipe), it takes what is already buffered and returns.
async fn drain(
    fd: OwnedFd,
    stream: Stream,
    process: Arc<Process>,
    sink: Option<mpsc::Sender<Chunk>>,
    mut stop: watch::Receiver<bool>,
) {
    let Ok(mut rx) = pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    let mut buf = vec![0u8; 64 * 1024];
    let keep = async |data: &[u8]| {
        let kept = process.keep(stream, data);
        if let Some(sink) = &sink
            && !kept.is_empty()
        {
            // A client that went away is not waited for; draining goes on regardless.
            let _ = sink
                .send(Chunk::Output(stream, Bytes::copy_from_slice(kept)))
                .await;
        }
    };
    loop {
        tokio::select! {
            biased;
            read = rx.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => keep(&buf[..n]).await,
            },
            _ = stop.changed() => break,
        }
    }
    // Read the pipe itself, not through the runtime: a runtime starved of CPU may not have
    // seen it become readable yet, and would take it for empty. At most what a pipe holds,
    // so a background writer cannot keep this going.
    let Ok(mut pipe) = rx.into_nonblocking_fd().map(std::fs::File::from) else {
        return;
    };
    let mut left = PIPE_BYTES as usize;
    while left > 0 {
        let want = left.min(buf.len());
        let Ok(n @ 1..) = pipe.read(&mut buf[..want]) else {
            break;
        };
        keep(&buf[..n]).await;
        left -= n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_keeps_prefix_and_flags_the_rest() {
        let mut c = Capped::new(5, OutputBudget::new(100));
        assert_eq!(c.push(b"abc"), b"abc");
        assert_eq!(c.push(b"defg"), b"de");
        assert_eq!(c.push(b"h"), b"");
        assert_eq!(c.data, b"abcde");
        assert!(c.truncated);
    }

    #[test]
    fn output_past_the_servers_budget_is_cut_until_its_holder_is_dropped() {
        let budget = OutputBudget::new(6);
        let mut first = Capped::new(5, budget.clone());
        assert_eq!(first.push(b"abcd"), b"abcd");
        let mut second = Capped::new(5, budget.clone());
        assert_eq!(second.push(b"wxyz"), b"wx");
        assert!(second.truncated && !first.truncated);
        let taken = std::mem::take(&mut first.data);
        assert_eq!(
            second.push(b"!"),
            b"",
            "handing the bytes on does not free them"
        );
        drop((first, taken));
        let mut third = Capped::new(5, budget.clone());
        assert_eq!(third.push(b"12345"), b"1234");
        drop((second, third));
        assert_eq!(budget.take(100), 6);
    }

    /// What a program wrote before it exited is kept even when the drain is told to stop
    /// before the runtime has seen the pipe become readable (a starved runtime under load).
    #[tokio::test(flavor = "current_thread")]
    async fn a_stopped_drain_still_takes_what_is_buffered() {
        let (r, w) = cella_jail::sys::pipe().unwrap();
        cella_jail::sys::write_all(w.as_fd(), b"42\n").unwrap();
        let (exit_tx, exit) = watch::channel(None);
        let (actions, _) = mpsc::unbounded_channel();
        let process = Arc::new(Process {
            id: 1,
            pid: 1,
            argv: Vec::new(),
            cwd: String::new(),
            started_at: SystemTime::now(),
            output: Mutex::new(Output::new(1 << 20, &OutputBudget::new(1 << 20))),
            exit,
            actions,
        });
        let (stop, stopped) = watch::channel(false);
        stop.send(true).unwrap();
        drain(r, Stream::Stdout, process.clone(), None, stopped).await;
        assert_eq!(process.captured().stdout, b"42\n");
        drop((w, exit_tx));
    }
}
