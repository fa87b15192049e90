//! Jupyter kernels inside sandboxes, spoken to over ZeroMQ.
//!
//! A real `ipykernel` runs as the sandbox user with the `ipc` transport: its sockets are UNIX
//! socket files in the sandbox's `/tmp`, so it needs no network at all. The server connects
//! to them through a descriptor opened with the jail's scoped resolver (a symlink planted in
//! their place cannot redirect the server to a host socket), speaks ZMTP to them
//! ([`zmtp`]) and signs messages with the kernel's HMAC key. Interrupts are SIGINT to the
//! kernel process.

mod wire;
pub mod zmtp;

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::process::{self, ExecOptions, Exit, Launcher, Process};
use crate::sandbox::Sandbox;
use wire::{Message, Session};
use zmtp::{Kind, Received, Socket};

const DIR: &str = "/tmp/.cella-jupyter";
/// How long an interrupted cell may take to stop before the kernel is declared dead.
const INTERRUPT_GRACE: Duration = Duration::from_secs(3);
/// Matplotlib's backend in kernels: figures become `image/png` displays.
pub const INLINE_BACKEND: &str = "module://matplotlib_inline.backend_inline";

/// One output of a cell, in the order the kernel produced it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Output {
    Stream {
        name: String,
        text: String,
    },
    DisplayData {
        data: Value,
        metadata: Value,
    },
    ExecuteResult {
        data: Value,
        metadata: Value,
        execution_count: Option<i64>,
    },
    Error {
        ename: String,
        evalue: String,
        traceback: Vec<String>,
    },
}

/// How much of an error's value is kept when the cell's output is over its cap.
const SHORT_ERROR_BYTES: usize = 1024;

fn error_output(ename: &str, evalue: String) -> Output {
    Output::Error {
        ename: ename.into(),
        evalue,
        traceback: Vec::new(),
    }
}

/// What one iopub message of the running cell means for its result.
enum CellEvent {
    Output(Output),
    /// `execute_input`: the cell's number.
    Input {
        execution_count: Option<i64>,
    },
    /// The kernel is idle again: the cell is done.
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
            "display_data" => Output::DisplayData {
                data: c["data"].clone(),
                metadata: c["metadata"].clone(),
            },
            "execute_result" => Output::ExecuteResult {
                data: c["data"].clone(),
                metadata: c["metadata"].clone(),
                execution_count: c["execution_count"].as_i64(),
            },
            "error" => Output::Error {
                ename: text("ename"),
                evalue: text("evalue"),
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

/// Everything one cell produced.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct CellResult {
    pub outputs: Vec<Output>,
    pub execution_count: Option<i64>,
    /// The cell hit its timeout and was interrupted.
    pub timed_out: bool,
    /// The cell produced more output than the cap; later outputs were dropped.
    pub truncated: bool,
    /// Bytes of output kept (as they came on the wire).
    #[serde(skip)]
    pub kept_bytes: usize,
}

impl CellResult {
    /// Keeps `output` (of `size` bytes on the wire) within `cap` bytes for the whole cell:
    /// of a stream, what fits; of an error, its name and the start of its value (that the
    /// cell failed matters more than what it printed); of anything else, all or nothing.
    fn keep(&mut self, output: Output, size: usize, cap: usize) {
        if self.kept_bytes + size <= cap {
            self.kept_bytes += size;
            self.outputs.push(output);
            return;
        }
        self.truncated = true;
        match output {
            Output::Stream { name, mut text } if self.kept_bytes < cap => {
                text.truncate(text.floor_char_boundary(cap - self.kept_bytes));
                self.kept_bytes = cap;
                self.outputs.push(Output::Stream { name, text });
            }
            Output::Error { ename, evalue, .. } => {
                let short = |s: &str| s[..s.floor_char_boundary(SHORT_ERROR_BYTES)].to_string();
                self.outputs
                    .push(error_output(&short(&ename), short(&evalue)));
            }
            _ => {}
        }
    }

    pub fn stream(&self, name: &str) -> String {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                Output::Stream { name: n, text } if n == name => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    /// MIME bundles of `display_data` and `execute_result`, in order.
    pub fn displays(&self) -> Vec<Value> {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                Output::DisplayData { data, .. } | Output::ExecuteResult { data, .. } => {
                    Some(data.clone())
                }
                _ => None,
            })
            .collect()
    }

    /// Error contents (`ename`, `evalue`, `traceback`).
    pub fn errors(&self) -> Vec<Value> {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                Output::Error {
                    ename,
                    evalue,
                    traceback,
                } => Some(json!({ "ename": ename, "evalue": evalue, "traceback": traceback })),
                _ => None,
            })
            .collect()
    }
}

/// A running kernel and the server's connection to it.
pub struct Kernel {
    process: Arc<Process>,
    session: Session,
    /// Where requests go; a task drains the replies (cells end on iopub's `idle`).
    shell: Socket<OwnedWriteHalf>,
    /// Messages from the iopub socket, read by a task so reading stays cancel-safe.
    iopub: mpsc::Receiver<Iopub>,
    /// Most output kept from one cell.
    output_cap: usize,
    dead: bool,
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
    /// Starts `python3 -m ipykernel_launcher` in the sandbox and connects to it.
    pub async fn start(
        sandbox: &Arc<Sandbox>,
        startup_timeout: Duration,
        output_cap: usize,
        launcher: Launcher<'_>,
    ) -> Result<Kernel> {
        let session = Session::new();
        let prefix = format!("{DIR}/kernel");
        let connection = json!({
            "transport": "ipc", "ip": prefix, "shell_port": 1, "iopub_port": 2, "stdin_port": 3,
            "control_port": 4, "hb_port": 5, "key": session.key_hex(), "signature_scheme": "hmac-sha256",
            "kernel_name": "python3",
        });
        let conn_path = format!("{DIR}/connection.json");
        let conn_bytes = connection.to_string().into_bytes();
        let file = conn_path.clone();
        sandbox
            .with_fs(move |fs| {
                fs.mkdir(DIR, true, 0o700)
                    .map_err(|e| Error::file(DIR, e))?;
                fs.write(&file, &conn_bytes, 0o600, false)
                    .map_err(|e| Error::file(&file, e))
            })
            .await?;
        let opts = ExecOptions {
            argv: ["python3", "-m", "ipykernel_launcher", "-f", &conn_path]
                .map(String::from)
                .to_vec(),
            env: [
                ("PYDEVD_DISABLE_FILE_VALIDATION", "1"),
                ("MPLBACKEND", INLINE_BACKEND),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into(),
            cwd: None,
            stdin: None,
            timeout: None,
            output_cap: 64 << 10,
        };
        let process = process::start_with(sandbox, opts, None, launcher).await?;
        let deadline = Instant::now() + startup_timeout;
        let (replies, shell) = connect(
            sandbox,
            &process,
            &format!("{prefix}-1"),
            Kind::Dealer,
            deadline,
        )
        .await?
        .split();
        tokio::spawn(drain(replies));
        let iopub = connect(
            sandbox,
            &process,
            &format!("{prefix}-2"),
            Kind::Sub,
            deadline,
        )
        .await?;
        // A short queue: a kernel flooding iopub waits for the server, not the other way.
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(read_iopub(iopub, session.clone(), tx, output_cap as u64));
        let mut kernel = Kernel {
            process,
            session,
            shell,
            iopub: rx,
            output_cap,
            dead: false,
            death: None,
        };
        kernel.sync(deadline).await?;
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
            "the Jupyter kernel did not become ready in time".into(),
        ))
    }

    async fn request(&mut self, msg_type: &str, content: Value) -> Result<String> {
        let (id, frames) = self.session.encode(msg_type, &content);
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        self.shell
            .send(&refs)
            .await
            .map_err(|e| Error::Unavailable(format!("the Jupyter kernel is gone: {e}")))?;
        Ok(id)
    }

    async fn died(&mut self, when: &str) -> Error {
        let death = self.record_death().await;
        Error::Unavailable(format!(
            "the Jupyter kernel died {when}: it {}\n{}",
            death.how, death.stderr_tail
        ))
    }

    /// Marks the kernel dead and records how it ended.
    async fn record_death(&mut self) -> &KernelDeath {
        self.dead = true;
        let exit = self.process.wait(Some(Duration::from_secs(1))).await;
        let stderr = String::from_utf8_lossy(&self.process.captured().stderr).into_owned();
        let lines: Vec<&str> = stderr.lines().collect();
        self.death.insert(KernelDeath {
            how: exit.as_ref().map_or("ended".into(), Exit::describe),
            stderr_tail: lines[lines.len().saturating_sub(5)..].join("\n"),
            exit,
        })
    }

    /// How a cell's code ended the kernel, if it did: the kernel died, or ignored the
    /// interrupt at a timeout and was stopped (not when the server shut it down).
    pub fn death(&self) -> Option<&KernelDeath> {
        self.death.as_ref()
    }

    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// Runs one cell; at `timeout` the kernel is interrupted. Outputs beyond `cap` bytes, or
    /// the kernel's output cap for a cell, are dropped (and `truncated` set).
    pub async fn execute(
        &mut self,
        code: &str,
        timeout: Duration,
        cap: usize,
    ) -> Result<CellResult> {
        let cap = cap.min(self.output_cap);
        if self.dead {
            return Err(Error::Unavailable("the Jupyter kernel is dead".into()));
        }
        let content = json!({
            "code": code, "silent": false, "store_history": true, "user_expressions": {},
            "allow_stdin": false, "stop_on_error": false,
        });
        let id = self.request("execute_request", content).await?;
        let mut result = CellResult::default();
        let mut deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.iopub.recv()).await {
                Ok(Some(Iopub::Message(m))) => m,
                // Too large to keep: the kernel sends its messages one cell at a time, so it
                // is this cell's.
                Ok(Some(Iopub::TooLarge)) => {
                    result.truncated = true;
                    continue;
                }
                Ok(None) => {
                    // The cell's code ended the kernel (os._exit, a crash, out of memory): the
                    // cell's answer, like a program that dies.
                    let how = self.record_death().await.how.clone();
                    result.outputs.push(error_output(
                        "DeadKernelError",
                        format!("the kernel {how} while running this cell"),
                    ));
                    return Ok(result);
                }
                Err(_) if !result.timed_out => {
                    result.timed_out = true;
                    self.process.signal(libc::SIGINT)?;
                    deadline = tokio::time::Instant::now() + INTERRUPT_GRACE;
                    continue;
                }
                Err(_) => {
                    result.outputs.push(self.stop_at_ignored_interrupt());
                    return Ok(result);
                }
            };
            if msg.parent_id() != id {
                continue;
            }
            match CellEvent::of(&msg) {
                CellEvent::Output(output) => {
                    if let Output::ExecuteResult {
                        execution_count, ..
                    } = &output
                    {
                        result.execution_count = *execution_count;
                    }
                    result.keep(output, msg.size, cap);
                }
                CellEvent::Input { execution_count } => result.execution_count = execution_count,
                CellEvent::Idle => return Ok(result),
                CellEvent::Other => {}
            }
        }
    }

    /// Stops a kernel that ignored the interrupt at a cell's timeout, as the cell's code left
    /// no other way, and says so as the cell's error.
    fn stop_at_ignored_interrupt(&mut self) -> Output {
        self.process.kill();
        self.dead = true;
        self.death = Some(KernelDeath {
            exit: None,
            how: "ignored the interrupt at a cell's timeout and was stopped".into(),
            stderr_tail: String::new(),
        });
        error_output(
            "TimeoutError",
            "the cell ran past its timeout and ignored the interrupt: the kernel was stopped"
                .into(),
        )
    }

    /// Stops the kernel process.
    pub fn shutdown(&self) {
        self.process.kill();
    }
}

/// Connects to one of the kernel's sockets once it exists, without following anything the
/// sandbox could have planted on the path.
async fn connect(
    sandbox: &Arc<Sandbox>,
    kernel: &Arc<Process>,
    path: &str,
    kind: Kind,
    deadline: Instant,
) -> Result<Socket> {
    loop {
        let p = path.to_string();
        match sandbox
            .with_fs(move |fs| fs.open_socket(&p).map_err(|e| Error::file(&p, e)))
            .await
        {
            Ok(fd) => {
                let target = format!("/proc/self/fd/{}", fd.as_raw_fd());
                match UnixStream::connect(&target).await {
                    Ok(stream) => {
                        return Socket::handshake(stream, kind)
                            .await
                            .map_err(|e| Error::Unavailable(e.to_string()));
                    }
                    // The socket file exists from bind(2) a moment before listen(2).
                    Err(e)
                        if e.kind() == std::io::ErrorKind::ConnectionRefused
                            && Instant::now() < deadline =>
                    {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(e) => {
                        return Err(Error::Unavailable(format!("connect to the kernel: {e}")));
                    }
                }
            }
            Err(Error::NotFound { .. }) if Instant::now() < deadline && kernel.exit().is_none() => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(Error::NotFound { .. }) if kernel.exit().is_some() => {
                let err = String::from_utf8_lossy(&kernel.captured().stderr).into_owned();
                return Err(Error::Unavailable(format!(
                    "the Jupyter kernel exited while starting: {err}"
                )));
            }
            Err(Error::NotFound { .. }) => {
                return Err(Error::Unavailable(
                    "the Jupyter kernel did not start in time".into(),
                ));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reads the shell socket's replies until it closes: unread, they would fill its buffer.
/// They are never used, so none of their bytes is kept (a limit of 0).
async fn drain(mut replies: Socket<OwnedReadHalf>) {
    while replies.recv(0).await.is_ok() {}
}

/// What the iopub reader passes on.
enum Iopub {
    Message(Message),
    /// A message larger than a cell's whole output cap, read past unkept (but for a
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

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(text: &str) -> Output {
        Output::Stream {
            name: "stdout".into(),
            text: text.into(),
        }
    }

    #[test]
    fn a_cell_keeps_what_fits_under_its_cap() {
        let mut cell = CellResult::default();
        cell.keep(stream("abc"), 3, 5);
        cell.keep(stream("defg"), 4, 5);
        cell.keep(stream("h"), 1, 5);
        let display = Output::DisplayData {
            data: json!({"text/plain": "x"}),
            metadata: json!({}),
        };
        cell.keep(display, 1, 5);
        assert_eq!(cell.stream("stdout"), "abcde");
        assert_eq!(cell.outputs.len(), 2, "{:?}", cell.outputs);
        assert_eq!((cell.kept_bytes, cell.truncated), (5, true));
    }

    #[test]
    fn an_error_over_the_cap_is_kept_in_short() {
        let mut cell = CellResult::default();
        let error = Output::Error {
            ename: "E".repeat(5000),
            evalue: "é".repeat(5000),
            traceback: vec!["frame".into(); 1000],
        };
        cell.keep(error, 20_000, 0);
        let [
            Output::Error {
                ename,
                evalue,
                traceback,
            },
        ] = &cell.outputs[..]
        else {
            panic!("{:?}", cell.outputs);
        };
        assert_eq!(ename.len(), SHORT_ERROR_BYTES);
        assert_eq!(evalue.len(), SHORT_ERROR_BYTES);
        assert!(traceback.is_empty());
        assert_eq!((cell.kept_bytes, cell.truncated), (0, true));
    }
}
