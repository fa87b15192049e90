//! The pump of a running process: it owns the process's pipes, feeds its stdin, drains its
//! output to the end whatever the cap (so a program printing gigabytes never blocks on a
//! full pipe), enforces the wall-clock deadline by killing the exec's whole cgroup, carries
//! out the API's signals and kills, and records how the process ended.

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cella_jail::proto::Command;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::launch::PIPE_BYTES;
use super::{Action, Chunk, Exit, Process, Stream};
use crate::control::ExecEvent;
use crate::sandbox::Sandbox;

/// How long output is still read after the main process exits: background children that
/// inherited stdout would otherwise hold the exec open forever.
const OUTPUT_GRACE: Duration = Duration::from_millis(200);

/// A process's exit as its parent saw it.
struct Ended {
    code: Option<i32>,
    signal: Option<i32>,
    cpu_us: u64,
}

pub(super) struct Pump {
    /// Set when started by the zygote: the channel to the zygote's child that watches the
    /// process. Its processes are outside the init's Landlock domain, so the host kills their
    /// tree and that child forwards signals.
    pub(super) zygote_watcher: Option<OwnedFd>,
    /// One of the sandbox's processes (not a service of the server's, such as a kernel).
    pub(super) listed: bool,
    pub(super) sandbox: Arc<Sandbox>,
    pub(super) process: Arc<Process>,
    pub(super) sink: Option<mpsc::Sender<Chunk>>,
    pub(super) started: Instant,
    pub(super) oom_before: u64,
}

impl Pump {
    pub(super) async fn run(
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
        if self.listed {
            self.sandbox.retire_process(id);
        }
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
    use std::sync::Mutex;
    use std::time::SystemTime;

    use super::super::output::{Output, OutputBudget};
    use super::*;

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
