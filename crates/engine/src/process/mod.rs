//! Processes: commands run in a sandbox, collected, streamed or left in the background.
//!
//! Every exec is one [`Process`], the handle the API holds. `spec.rs` checks what to run,
//! `launch.rs` starts it (by the sandbox's init, or forked from a Python zygote, possibly
//! parked until taken), `pump.rs` owns its pipes and deadline until it ends, `output.rs`
//! keeps what it prints within its cap and the server's budget. A collected exec waits for
//! the end; a streamed one also receives the kept chunks as they arrive.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use crate::error::{Error, Result};

mod launch;
mod output;
mod pump;
mod socket;
mod spec;

pub use launch::{Launcher, Parked, park, run, run_with, start, start_service, start_with};
pub(crate) use launch::{launch_by_init, started};
pub use output::{Captured, OutputBudget, text};
pub use socket::connect_socket;
pub use spec::{ExecOptions, argv_of, checked_timeout, output_cap, shell_argv};

use output::Output;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// How a process ended.
#[derive(Debug, Clone, Default)]
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
