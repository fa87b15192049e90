//! A Jupyter kernel inside a sandbox, spoken to over ZeroMQ.
//!
//! The kernel runs as the sandbox user with the `ipc` transport: its sockets are UNIX socket
//! files in the sandbox's `/tmp`, so it needs no network at all. The server connects to them
//! through a descriptor opened with the jail's scoped resolver (a symlink planted in their
//! place cannot redirect the server to a host socket), speaks ZMTP to them ([`zmtp`]) and
//! signs messages with the kernel's HMAC key. Interrupts are SIGINT to the kernel process.

mod wire;
pub mod zmtp;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::output::{CellResult, Output, Sink};
use crate::error::{Error, Result};
use crate::process::{self, ExecOptions, Exit, Launcher, Process};
use crate::sandbox::Sandbox;
use wire::{Message, Session};
use zmtp::{Kind, Received, Socket};

/// How long an interrupted call may take to stop before the kernel is stopped.
const INTERRUPT_GRACE: Duration = Duration::from_secs(2);

const CONNECTION_FILE: &str = "connection.json";

/// Where a kernel's connection file and sockets live: a directory of its own in the sandbox.
pub struct KernelFiles {
    pub dir: String,
}

impl KernelFiles {
    pub fn connection(&self) -> String {
        format!("{}/{CONNECTION_FILE}", self.dir)
    }

    fn socket(&self, port: u16) -> String {
        format!("{}/kernel-{port}", self.dir)
    }

    /// Writes `bytes` into a file `name` in the directory (made first), readable by the
    /// sandbox's user only, and answers the file's path.
    pub async fn write(&self, sandbox: &Sandbox, name: &str, bytes: Vec<u8>) -> Result<String> {
        let (dir, path) = (self.dir.clone(), format!("{}/{name}", self.dir));
        sandbox
            .with_fs(move |fs| {
                fs.mkdir(&dir, true, 0o700)
                    .map_err(|e| Error::file(&dir, e))?;
                fs.write(&path, &bytes, 0o600, false)
                    .map_err(|e| Error::file(&path, e))?;
                Ok(path)
            })
            .await
    }
}

/// Interrupts asked for by someone other than a call's own timeout (the API's interrupt).
#[derive(Default)]
pub struct Interrupts {
    asked: AtomicBool,
    notify: Notify,
}

impl Interrupts {
    /// Asks the running call to be interrupted.
    pub fn ask(&self) {
        self.asked.store(true, Ordering::SeqCst);
        self.notify.notify_one();
    }

    fn take(&self) -> bool {
        self.asked.swap(false, Ordering::SeqCst)
    }

    /// Forgets an interrupt asked for after the call it was for had ended.
    pub(crate) fn forget(&self) {
        self.take();
    }
}

/// What one iopub message of the running call means for its result.
enum CellEvent {
    Output(Output),
    /// `execute_input`: the call's number.
    Input {
        execution_count: Option<i64>,
    },
    /// The kernel is idle again: the call is done.
    Idle,
    Other,
}

impl CellEvent {
    fn of(msg: &Message) -> CellEvent {
        let c = &msg.content;
        let text = |k: &str| c[k].as_str().unwrap_or_default().to_string();
        let output = match msg.msg_type() {
            "stream" => Output::Stream {
                name: text("name"),
                text: text("text"),
            },
            "display_data" => Output::Display {
                data: c["data"].clone(),
                metadata: c["metadata"].clone(),
            },
            "execute_result" => Output::Result {
                data: c["data"].clone(),
                metadata: c["metadata"].clone(),
                execution_count: c["execution_count"].as_i64(),
            },
            "error" => Output::Error {
                // A kernel may leave the name empty (bash's does, for a failed command).
                name: Some(text("ename"))
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| "Error".into()),
                value: text("evalue"),
                traceback: (c["traceback"].as_array().into_iter().flatten())
                    .filter_map(|l| l.as_str().map(String::from))
                    .collect(),
            },
            "execute_input" => {
                return CellEvent::Input {
                    execution_count: c["execution_count"].as_i64(),
                };
            }
            "status" if c["execution_state"] == "idle" => return CellEvent::Idle,
            _ => return CellEvent::Other,
        };
        CellEvent::Output(output)
    }
}

/// How soon an interrupt that has not taken is sent again: a SIGINT landing in the kernel's
/// own code around the call may be swallowed there, and the code then runs on.
const INTERRUPT_AGAIN: Duration = Duration::from_millis(250);

/// The interrupt of one call. It is wanted (the call's timeout, its caller gone, the API),
/// sent once the kernel has begun the call (it ignores SIGINT before), and sent again until
/// it takes: an error comes, or the call ends.
#[derive(Default)]
struct Interrupting {
    wanted: bool,
    /// Asked for through the API (not the call's own timeout).
    asked: bool,
    begun: bool,
    took: bool,
    sent_at: Option<tokio::time::Instant>,
}

impl Interrupting {
    /// When to send SIGINT (again), if it is wanted and can be sent.
    fn due(&self) -> Option<tokio::time::Instant> {
        if !self.wanted || self.took || !self.begun {
            return None;
        }
        Some(
            self.sent_at
                .map_or_else(tokio::time::Instant::now, |t| t + INTERRUPT_AGAIN),
        )
    }
}

/// A running kernel and the server's connection to it.
pub struct Kernel {
    process: Arc<Process>,
    session: Session,
    /// Where requests go; a task drains the replies (calls end on iopub's `idle`).
    shell: Socket<OwnedWriteHalf>,
    /// Messages from the iopub socket, read by a task so reading stays cancel-safe.
    iopub: mpsc::Receiver<Iopub>,
    /// Most output kept from one call.
    output_cap: usize,
    /// Set once the kernel cannot go on, in words.
    lost: Option<String>,
    death: Option<KernelDeath>,
}

/// How a kernel died on its own: its exit, that exit in words, and the end of its stderr.
#[derive(Debug, Clone)]
pub struct KernelDeath {
    pub exit: Option<Exit>,
    pub how: String,
    pub stderr_tail: String,
}

impl Kernel {
    /// Starts the kernel `opts` describes (its argv names `files.connection()`) in the
    /// sandbox, not listed among its processes, and connects to it.
    pub async fn start(
        sandbox: &Arc<Sandbox>,
        files: &KernelFiles,
        opts: ExecOptions,
        launcher: Launcher<'_>,
        startup_timeout: Duration,
        output_cap: usize,
    ) -> Result<Kernel> {
        let session = Session::new();
        let connection = json!({
            "transport": "ipc", "ip": format!("{}/kernel", files.dir), "shell_port": 1,
            "iopub_port": 2, "stdin_port": 3, "control_port": 4, "hb_port": 5,
            "key": session.key_hex(), "signature_scheme": "hmac-sha256", "kernel_name": "cella",
        });
        let bytes = connection.to_string().into_bytes();
        files.write(sandbox, CONNECTION_FILE, bytes).await?;
        let process = process::start_service(sandbox, opts, launcher).await?;
        let deadline = Instant::now() + startup_timeout;
        let (shell, iopub) = match connect_both(sandbox, &process, files, deadline).await {
            Ok(sockets) => sockets,
            Err(e) => {
                process.kill();
                return Err(e);
            }
        };
        let (replies, shell) = shell.split();
        tokio::spawn(drain(replies));
        // A short queue: a kernel flooding iopub waits for the server, not the other way.
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(read_iopub(iopub, session.clone(), tx, output_cap as u64));
        let mut kernel = Kernel {
            process,
            session,
            shell,
            iopub: rx,
            output_cap,
            lost: None,
            death: None,
        };
        if let Err(e) = kernel.sync(deadline).await {
            kernel.shutdown();
            return Err(e);
        }
        Ok(kernel)
    }

    /// Waits until iopub delivers: a subscription takes effect asynchronously, so messages
    /// published before it would be lost. `kernel_info_request` makes the kernel publish.
    async fn sync(&mut self, deadline: Instant) -> Result<()> {
        let mut wait = Duration::from_millis(50);
        while Instant::now() < deadline {
            let id = self.request("kernel_info_request", json!({})).await?;
            let until = tokio::time::Instant::now() + wait;
            loop {
                match tokio::time::timeout_at(until, self.iopub.recv()).await {
                    Ok(Some(Iopub::Message(m))) if m.parent_id() == id => return Ok(()),
                    Ok(Some(_)) => continue,
                    Ok(None) => return Err(self.died("while starting").await),
                    Err(_) => break,
                }
            }
            wait = (wait * 2).min(Duration::from_secs(1));
        }
        Err(Error::Unavailable(
            "the kernel did not become ready in time".into(),
        ))
    }

    async fn request(&mut self, msg_type: &str, content: Value) -> Result<String> {
        let (id, frames) = self.session.encode(msg_type, &content);
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        self.shell
            .send(&refs)
            .await
            .map_err(|e| Error::Unavailable(format!("the kernel is gone: {e}")))?;
        Ok(id)
    }

    async fn died(&mut self, when: &str) -> Error {
        let death = self.record_death().await;
        Error::Unavailable(format!(
            "the kernel died {when}: it {}\n{}",
            death.how, death.stderr_tail
        ))
    }

    /// Records how the kernel ended; it cannot go on.
    async fn record_death(&mut self) -> &KernelDeath {
        let exit = self.process.wait(Some(Duration::from_secs(1))).await;
        let stderr = String::from_utf8_lossy(&self.process.captured().stderr).into_owned();
        let lines: Vec<&str> = stderr.lines().collect();
        let how = exit.as_ref().map_or("ended".into(), Exit::describe);
        self.lost = Some(format!("the kernel {how}"));
        self.death.insert(KernelDeath {
            how,
            stderr_tail: lines[lines.len().saturating_sub(5)..].join("\n"),
            exit,
        })
    }

    /// How the kernel died, if a call's code ended it (not when the server stopped it).
    pub fn death(&self) -> Option<&KernelDeath> {
        self.death.as_ref()
    }

    /// Why the kernel cannot go on, if it cannot.
    pub fn lost(&self) -> Option<&str> {
        self.lost.as_deref()
    }

    /// The kernel process (to interrupt or stop it without waiting for the call it runs).
    pub fn process(&self) -> &Arc<Process> {
        &self.process
    }

    /// Runs one call. At `timeout`, or when `abandoned` is cancelled (its caller went away),
    /// the kernel is interrupted and the result is what came before; a kernel that does not
    /// stop within [`INTERRUPT_GRACE`] is stopped. An interrupt `asked` for interrupts it too.
    /// Outputs beyond `cap` bytes (or the kernel's cap) are dropped, and each kept one is
    /// also sent to `sink`.
    ///
    /// A kernel ignores SIGINT until it has begun the call (ipykernel sets its handler only
    /// around each request), so an interrupt that comes earlier is held until the kernel
    /// says it began (`execute_input`); see [`Interrupting`].
    pub async fn execute(
        &mut self,
        code: &str,
        timeout: Duration,
        cap: usize,
        sink: Option<&Sink>,
        abandoned: &CancellationToken,
        asked: &Interrupts,
    ) -> Result<CellResult> {
        let cap = cap.min(self.output_cap);
        if let Some(lost) = &self.lost {
            return Err(Error::Conflict(format!("{lost}: its state is lost")));
        }
        let content = json!({
            "code": code, "silent": false, "store_history": true, "user_expressions": {},
            "allow_stdin": false, "stop_on_error": false,
        });
        let id = self.request("execute_request", content).await?;
        let mut result = CellResult::default();
        let mut deadline = tokio::time::Instant::now() + timeout;
        let mut interrupting = Interrupting::default();
        loop {
            let timed_out = result.timed_out;
            let past_time = async {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    () = abandoned.cancelled(), if !timed_out => {}
                }
            };
            let due = interrupting.due();
            let msg = tokio::select! {
                msg = self.iopub.recv() => msg,
                () = past_time => {
                    if result.timed_out {
                        self.stop_at_ignored_interrupt(&mut result, sink);
                        return Ok(result);
                    }
                    result.timed_out = true;
                    result.interrupted_at = Some(result.events.len());
                    interrupting.wanted = true;
                    deadline = tokio::time::Instant::now() + INTERRUPT_GRACE;
                    continue;
                }
                () = asked.notify.notified() => {
                    interrupting.asked |= asked.take();
                    interrupting.wanted |= interrupting.asked;
                    continue;
                }
                () = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {
                    self.process.signal(libc::SIGINT)?;
                    interrupting.sent_at = Some(tokio::time::Instant::now());
                    continue;
                }
            };
            let msg = match msg {
                Some(Iopub::Message(m)) => m,
                // Too large to keep: the kernel sends its messages one call at a time, so it
                // is this call's.
                Some(Iopub::TooLarge) => {
                    result.truncated = true;
                    continue;
                }
                None => {
                    // The call's code ended the kernel (os._exit, a crash, out of memory): the
                    // call's answer, like a program that dies.
                    let how = self.record_death().await.how.clone();
                    let why = format!("the kernel {how} while running this code");
                    result.keep(
                        Output::error("DeadKernelError", why.clone()),
                        0,
                        usize::MAX,
                        sink,
                    );
                    result.kernel_lost = Some(why);
                    return Ok(result);
                }
            };
            if msg.parent_id() != id {
                continue;
            }
            match CellEvent::of(&msg) {
                CellEvent::Output(output) => {
                    interrupting.took |= matches!(output, Output::Error { .. });
                    result.keep(output, msg.size, cap, sink);
                }
                CellEvent::Input { execution_count } => {
                    result.execution_count = execution_count;
                    interrupting.begun = true;
                }
                CellEvent::Idle => {
                    // An interrupt that came as the kernel was beginning the call ends it
                    // before its code with no error of the code's (ipykernel logs one).
                    if interrupting.asked && result.error().is_none() {
                        let why = "the call was interrupted before its code began";
                        result.keep(Output::error("KeyboardInterrupt", why), 0, usize::MAX, sink);
                    }
                    return Ok(result);
                }
                CellEvent::Other => {}
            }
        }
    }

    /// Stops a kernel that ignored the interrupt at a call's timeout, as the call's code left
    /// no other way, and says so as the call's error.
    fn stop_at_ignored_interrupt(&mut self, result: &mut CellResult, sink: Option<&Sink>) {
        self.process.kill();
        let how = "ignored the interrupt at a call's timeout and was stopped";
        self.lost = Some(format!("the kernel {how}"));
        self.death = Some(KernelDeath {
            exit: None,
            how: how.into(),
            stderr_tail: String::new(),
        });
        let why = "the code ran past its timeout and ignored the interrupt: the kernel was \
                   stopped and its state is lost";
        result.keep(Output::error("TimeoutError", why), 0, usize::MAX, sink);
        result.kernel_lost = Some(why.into());
    }

    /// Stops the kernel process.
    pub fn shutdown(&self) {
        self.process.kill();
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Connects to the kernel's shell and iopub sockets.
async fn connect_both(
    sandbox: &Arc<Sandbox>,
    kernel: &Arc<Process>,
    files: &KernelFiles,
    deadline: Instant,
) -> Result<(Socket, Socket)> {
    let shell = connect(sandbox, kernel, &files.socket(1), Kind::Dealer, deadline).await?;
    let iopub = connect(sandbox, kernel, &files.socket(2), Kind::Sub, deadline).await?;
    Ok((shell, iopub))
}

/// Connects to one of the kernel's sockets once it exists.
async fn connect(
    sandbox: &Arc<Sandbox>,
    kernel: &Arc<Process>,
    path: &str,
    kind: Kind,
    deadline: Instant,
) -> Result<Socket> {
    let stream = crate::process::connect_socket(sandbox, kernel, path, deadline, "kernel").await?;
    Socket::handshake(stream, kind)
        .await
        .map_err(|e| Error::Unavailable(e.to_string()))
}

/// Reads the shell socket's replies until it closes: unread, they would fill its buffer.
/// They are never used, so none of their bytes is kept (a limit of 0).
async fn drain(mut replies: Socket<OwnedReadHalf>) {
    while replies.recv(0).await.is_ok() {}
}

/// What the iopub reader passes on.
enum Iopub {
    Message(Message),
    /// A message larger than a call's whole output cap, read past unkept (but for a
    /// stream's first text and an error's name and value, passed on as a message).
    TooLarge,
}

async fn read_iopub(mut socket: Socket, session: Session, tx: mpsc::Sender<Iopub>, max: u64) {
    while let Ok(received) = socket.recv(max).await {
        let item = match received {
            Received::Frames(frames) => match session.decode(frames) {
                Some(msg) => Iopub::Message(msg),
                None => continue,
            },
            Received::TooLarge { prefix, size } => match session.decode_cut(prefix, size) {
                Some(msg) => Iopub::Message(msg),
                None => Iopub::TooLarge,
            },
        };
        if tx.send(item).await.is_err() {
            return;
        }
    }
}
