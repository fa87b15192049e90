//! The Python zygote: a warm `python3` that forks into sandboxes, so a Python run costs a
//! fork instead of an interpreter start (~20 ms of CPU on a 2-core machine).
//!
//! The zygote runs as root on the host and never runs user code itself; see `zygote.py` for
//! how a child joins a sandbox (`setns` on the init's pidfd) and drops every privilege before
//! the user's program starts. Its events use the init's wire format ([`proto::Event`]).

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use serde::Serialize;

use crate::proto::{self, ExecSpec};
use crate::seccomp::Policy;
use crate::sys::{self, cvt};
use crate::{Error, Result};

const SOURCE: &str = include_str!("zygote.py");

/// What the zygote needs to start one process.
#[derive(Serialize)]
struct Request<'a> {
    id: u64,
    uid: u32,
    argv: &'a [String],
    env: &'a [String],
    cwd: &'a str,
    rlimits: &'a [(u32, u64, u64)],
    /// Wait for a byte on the "go" pipe before running the program.
    held: bool,
}

pub struct Zygote {
    channel: Mutex<OwnedFd>,
    child: Mutex<Child>,
}

impl Zygote {
    /// Starts `python` as a zygote that has imported `preload` (with `env` added to its
    /// environment, which the preloaded modules may read at import), and waits until it is
    /// warm.
    pub fn start(
        python: &Path,
        policy: &Policy,
        landlock_abi: i64,
        preload: &[&str],
        env: &[(&str, String)],
    ) -> Result<Zygote> {
        let (ours, theirs) = sys::seqpacket_pair().map_err(|e| Error::sys("socketpair", e))?;
        let theirs_raw = theirs.as_raw_fd();
        let mut cmd = Command::new(python);
        // The source comes on stdin (`python3 -`), so that `ps` and a program's own
        // /proc/self/cmdline show `python3 -`, not the zygote's whole source.
        cmd.arg("-")
            .env_clear()
            .env("LANG", "C.UTF-8")
            .env("PATH", crate::DEFAULT_PATH)
            .env("HOME", crate::SANDBOX_HOME)
            .stdin(Stdio::piped())
            .stdout(Stdio::null());
        // No PR_SET_PDEATHSIG: it fires when the *thread* that forked exits, and a runtime's
        // threads come and go. The zygote exits instead when its channel closes, which the
        // kernel does when the server dies, however it dies.
        // SAFETY: only async-signal-safe calls (signal, dup2, fcntl) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Ignored at start, Python leaves them so (SIGINT raises no KeyboardInterrupt);
                // each program gets them back as a fresh interpreter has them (`zygote.py`).
                sys::ignore_signals(&sys::SERVER_GROUP_SIGNALS);
                cvt(libc::dup2(theirs_raw, 3))?;
                // dup2 onto itself keeps close-on-exec: clear it either way.
                cvt(libc::fcntl(3, libc::F_SETFD, 0)).map(drop)
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::sys(format!("start {}", python.display()), e))?;
        drop(theirs);
        // Fits in the pipe: written whole before Python reads it, then closed to end it.
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(SOURCE.as_bytes())
                .map_err(|e| Error::sys("send the zygote its source", e))?;
        }
        let config = serde_json::json!({
            "filters": policy.to_bytes().iter().map(|f| f.iter().map(|b| format!("{b:02x}")).collect::<String>()).collect::<Vec<_>>(),
            "landlock_abi": landlock_abi,
            "preload": preload,
            // Set in-process, not at exec: forks show the exec-time environment as their
            // /proc/self/environ, which should hold nothing a run does not have itself.
            // debugpy (which ipykernel imports) otherwise warns about frozen modules on import.
            "env": env.iter().map(|(k, v)| (*k, v.as_str())).chain([("PYDEVD_DISABLE_FILE_VALIDATION", "1")]).collect::<BTreeMap<_, _>>(),
        });
        let mut buf = Vec::new();
        proto::send(ours.as_fd(), &config, &[])
            .map_err(|e| Error::sys("configure the zygote", e))?;
        match proto::recv::<String>(ours.as_fd(), &mut buf) {
            Ok(Some((ready, _))) if ready == "Ready" => {}
            other => {
                return Err(Error::Spawn(format!(
                    "the Python zygote did not start: {other:?}"
                )));
            }
        }
        Ok(Zygote {
            channel: Mutex::new(ours),
            child: Mutex::new(child),
        })
    }

    /// Starts one process. `fds`: the sandbox init's pidfd, the events channel, stdin,
    /// stdout, stderr, if `held` the read end of a pipe on which a byte lets the program run,
    /// then the `cgroup.procs` files to join. Events arrive on the channel.
    pub fn launch(
        &self,
        spec: &ExecSpec,
        uid: u32,
        held: bool,
        fds: &[BorrowedFd<'_>],
    ) -> io::Result<()> {
        let req = Request {
            held,
            id: spec.id,
            uid,
            argv: &spec.argv,
            env: &spec.env,
            cwd: &spec.cwd,
            rlimits: &spec.rlimits,
        };
        let channel = self
            .channel
            .lock()
            .map_err(|_| io::Error::other("zygote lock poisoned"))?;
        proto::send(channel.as_fd(), &req, fds)
    }

    /// Whether the zygote process still runs.
    pub fn alive(&self) -> bool {
        self.child
            .lock()
            .is_ok_and(|mut c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Zygote {
    fn drop(&mut self) {
        if let Ok(child) = self.child.get_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
