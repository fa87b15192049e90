//! Sessions: an interactive bash on a pseudo-terminal in a sandbox, whose state (working
//! directory, variables, functions) stays from one command to the next.
//!
//! The shell runs without line editing, echo off, its prompt a marker of the session's own
//! that carries the last exit status (`PS1='__cella_<token>_$?__'`). A command is sent as one
//! brace group, so however many lines it has, one prompt follows it; what came before that
//! prompt is its output (stdout and stderr merged, as a terminal has them). Calls on one
//! session queue in order. A command past its timeout gets a Ctrl-C; a shell that does not
//! come back to its prompt within [`INTERRUPT_GRACE`] is killed and started afresh (the answer
//! says its state was lost), so the next command runs at once.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cella_jail::proto::Command;
use tokio::io::unix::AsyncFd;
use tokio::sync::{Mutex, mpsc};

use crate::control::ExecEvent;
use crate::error::{Error, Result, quoted};
use crate::process::ExecOptions;
use crate::sandbox::Sandbox;

/// How long an interrupted command has to give the prompt back.
pub const INTERRUPT_GRACE: Duration = Duration::from_secs(2);
/// How long `bash -n` may take over a command.
const SYNTAX_CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a new shell has to show its first prompt.
const START_TIMEOUT: Duration = Duration::from_secs(10);
const COLUMNS: u16 = 200;
const ROWS: u16 = 50;

/// What a session is made with.
#[derive(Debug, Clone, Default)]
pub struct SessionSpec {
    pub name: String,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
}

/// What one command did.
#[derive(Debug, Clone, Default)]
pub struct SessionOutcome {
    /// As the terminal showed it (`\r\n` line ends), escape sequences removed.
    pub output: String,
    /// `None` when the shell did not come back (timed out and restarted, or it exited).
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    /// The output went past the cap: the rest was read and dropped.
    pub truncated: bool,
    /// The shell was started afresh: variables, functions and the directory are lost.
    pub restarted: bool,
    /// The shell ended during the command (`exit`, killed): the session must be made again.
    pub ended: bool,
    /// The `expect` pattern seen before the prompt (the command may still be running).
    pub matched: Option<String>,
}

/// A command for a session.
#[derive(Debug, Clone, Default)]
pub struct SessionCommand {
    pub text: String,
    /// Texts that end the wait as the prompt does (a program asking for input).
    pub expect: Vec<String>,
    /// Sent as typed, to what runs in the session now (a program waiting for input), not
    /// checked or grouped as a command of its own.
    pub interactive: bool,
}

pub struct Session {
    pub spec: SessionSpec,
    /// Seconds since the epoch.
    pub created_at: u64,
    /// `None` once its shell has ended; calls queue on this lock.
    shell: Mutex<Option<Shell>>,
}

struct Shell {
    terminal: Terminal,
    /// The prompt is `__cella_<token>_<status>__`.
    token: String,
}

impl Session {
    /// Starts a session's shell in `sandbox`; returns once it shows its prompt.
    pub async fn start(sandbox: &Arc<Sandbox>, spec: SessionSpec) -> Result<Session> {
        let shell = Shell::start(sandbox, &spec).await?;
        Ok(Session {
            spec,
            created_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            shell: Mutex::new(Some(shell)),
        })
    }

    /// Runs `command` after the calls before it; `max_output` bytes of output are kept.
    pub async fn run(
        &self,
        sandbox: &Arc<Sandbox>,
        command: &SessionCommand,
        timeout: Duration,
        max_output: usize,
    ) -> Result<SessionOutcome> {
        if !command.interactive {
            check_syntax(sandbox, &command.text).await?;
        }
        let mut guard = self.shell.lock().await;
        let Some(shell) = guard.as_mut() else {
            return Err(Error::Conflict(format!(
                "session {} has ended (its shell exited): make it again",
                quoted(&self.spec.name)
            )));
        };
        let mut outcome = shell.run(command, timeout, max_output).await?;
        if outcome.ended {
            *guard = None;
        } else if outcome.timed_out && outcome.exit_code.is_none() {
            // It did not come back from the interrupt: a fresh shell takes its place.
            if let Some(old) = guard.take() {
                old.terminal.kill(sandbox).await;
            }
            *guard = Some(Shell::start(sandbox, &self.spec).await?);
            outcome.restarted = true;
        }
        Ok(outcome)
    }

    /// Ends the shell and everything it started.
    pub async fn close(&self, sandbox: &Arc<Sandbox>) {
        if let Some(shell) = self.shell.lock().await.take() {
            shell.terminal.kill(sandbox).await;
        }
    }
}

/// Refuses a command bash cannot parse (`bash -n`), which would otherwise leave the shell
/// waiting for the rest of it.
async fn check_syntax(sandbox: &Arc<Sandbox>, command: &str) -> Result<()> {
    let opts = ExecOptions {
        argv: ["bash", "-n", "-c", command].map(String::from).into(),
        env: BTreeMap::new(),
        cwd: None,
        stdin: None,
        timeout: Some(SYNTAX_CHECK_TIMEOUT),
        output_cap: 4096,
    };
    let checked = crate::process::run(sandbox, opts).await?;
    match checked.exit.exit_code {
        Some(0) => Ok(()),
        _ => Err(Error::invalid(format!(
            "bash syntax error: {}",
            crate::process::text(checked.output.stderr).trim()
        ))),
    }
}

/// A program on a pseudo-terminal of the sandbox's own: what a session's shell and an
/// interactive attach run on.
pub struct Terminal {
    pub master: AsyncFd<OwnedFd>,
    exec_id: u64,
    events: mpsc::UnboundedReceiver<ExecEvent>,
}

impl Terminal {
    /// Starts `opts` (its argv, env and directory) on a new pty of `cols` × `rows`.
    pub async fn open(
        sandbox: &Arc<Sandbox>,
        opts: &ExecOptions,
        cols: u16,
        rows: u16,
    ) -> Result<Terminal> {
        let (pid, _) = sandbox
            .init
            .ok_or_else(|| Error::Conflict(format!("sandbox {} is stopped", sandbox.id)))?;
        let (master, slave) = cella_jail::pty::open_in(pid, sandbox.uid(), cols, rows)
            .map_err(|e| Error::Internal(format!("open a terminal in the sandbox: {e}")))?;
        let id = sandbox.next_exec_id();
        let mut exec = sandbox.exec_spec(id, opts)?;
        exec.tty = true;
        let launched = crate::process::launch_by_init(sandbox, &exec, [slave.as_fd(); 3]).await;
        drop(slave);
        let mut events = launched?;
        crate::process::started(sandbox, id, &mut events).await?;
        Ok(Terminal {
            master: cella_jail::async_fd(master).map_err(Error::internal)?,
            exec_id: id,
            events,
        })
    }

    /// Reads what the program wrote; `None` once it and everything on its terminal are gone.
    pub async fn read(&self, buf: &mut [u8]) -> Result<Option<usize>> {
        loop {
            let mut ready = self.master.readable().await.map_err(Error::internal)?;
            match ready.try_io(|fd| cella_jail::sys::read(fd.get_ref().as_fd(), buf)) {
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(None),
                Ok(Ok(n)) => return Ok(Some(n)),
                Err(_would_block) => {}
            }
        }
    }

    pub async fn write(&self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let mut ready = self.master.writable().await.map_err(Error::internal)?;
            match ready.try_io(|fd| cella_jail::sys::write(fd.get_ref().as_fd(), data)) {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => {
                    return Err(Error::Conflict(format!(
                        "the terminal's program is gone ({e})"
                    )));
                }
                Err(_would_block) => {}
            }
        }
        Ok(())
    }

    pub fn resize(&self, cols: u16, rows: u16) -> Result<()> {
        cella_jail::pty::resize(self.master.get_ref(), cols, rows).map_err(Error::internal)
    }

    /// The status the program exited with (soon after its terminal closed).
    pub async fn exit_code(&mut self) -> Option<i32> {
        let exited = tokio::time::timeout(Duration::from_secs(1), async {
            while let Some(event) = self.events.recv().await {
                match event {
                    ExecEvent::Exited { code, signal, .. } => {
                        return code.or(signal.map(|s| 128 + s));
                    }
                    ExecEvent::Lost => return None,
                    _ => {}
                }
            }
            None
        });
        exited.await.ok().flatten()
    }

    /// Kills the program and every process it started.
    pub async fn kill(mut self, sandbox: &Arc<Sandbox>) {
        let control = sandbox.control();
        let _ = control
            .send(&Command::KillTree { id: self.exec_id }, &[])
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(event) = self.events.recv().await {
                if matches!(event, ExecEvent::Exited { .. } | ExecEvent::Lost) {
                    break;
                }
            }
        })
        .await;
        control.unsubscribe(self.exec_id);
    }
}

impl Shell {
    async fn start(sandbox: &Arc<Sandbox>, spec: &SessionSpec) -> Result<Shell> {
        let token = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let mut env = spec.env.clone();
        env.entry("TERM".into())
            .or_insert_with(|| "xterm-256color".into());
        let opts = ExecOptions {
            argv: ["bash", "--noprofile", "--norc", "--noediting", "-i"]
                .map(String::from)
                .into(),
            env,
            cwd: spec.cwd.clone(),
            stdin: None,
            timeout: None,
            output_cap: 0,
        };
        let terminal = Terminal::open(sandbox, &opts, COLUMNS, ROWS)
            .await
            .map_err(|e| match e {
                Error::MissingProgram(m) => {
                    Error::MissingProgram(format!("sessions need bash: {m}"))
                }
                e => e,
            })?;
        let mut shell = Shell { terminal, token };
        let setup = format!(
            "stty -echo; PS1='__cella_{}_$?__'; PS2=''; unset PROMPT_COMMAND\n",
            shell.token
        );
        shell.terminal.write(setup.as_bytes()).await?;
        let started = (shell.until_prompt(Instant::now() + START_TIMEOUT, 1 << 16, &[])).await?;
        if started.exit_code.is_none() {
            shell.terminal.kill(sandbox).await;
            return Err(Error::Unavailable(
                "the session's shell did not start".into(),
            ));
        }
        Ok(shell)
    }

    async fn run(
        &mut self,
        command: &SessionCommand,
        timeout: Duration,
        max_output: usize,
    ) -> Result<SessionOutcome> {
        let text = command.text.trim_end_matches('\n');
        // One brace group: one prompt after it, however many lines it has.
        let line = match command.interactive {
            true => format!("{text}\n"),
            false => format!("{{\n{text}\n}}\n"),
        };
        self.terminal.write(line.as_bytes()).await?;
        let deadline = Instant::now() + timeout;
        let mut outcome = (self.until_prompt(deadline, max_output, &command.expect)).await?;
        if outcome.exit_code.is_some() || outcome.ended || outcome.matched.is_some() {
            return Ok(outcome);
        }
        outcome.timed_out = true;
        // Ctrl-C to the command's process group, through the terminal.
        self.terminal.write(b"\x03").await?;
        let grace = Instant::now() + INTERRUPT_GRACE;
        let after = self.until_prompt(grace, max_output, &[]).await?;
        outcome.output.push_str(&after.output);
        outcome.truncated |= after.truncated;
        outcome.exit_code = after.exit_code;
        outcome.ended = after.ended;
        Ok(outcome)
    }

    /// Reads until the prompt (or `deadline`, or the shell's end). Of a flood, the first
    /// `max_output` bytes are kept and the rest read and dropped.
    async fn until_prompt(
        &mut self,
        deadline: Instant,
        max_output: usize,
        expect: &[String],
    ) -> Result<SessionOutcome> {
        let marker = format!("__cella_{}_", self.token);
        // The prompt is looked for from a little before the bytes just read.
        let overlap = marker.len() + 16;
        let mut raw: Vec<u8> = Vec::new();
        let mut searched: usize = 0;
        let mut dropped = false;
        let mut buf = vec![0u8; 16 << 10];
        let mut outcome = SessionOutcome::default();
        loop {
            let from = searched.saturating_sub(overlap);
            if let Some((at, code)) = find_prompt(&raw[from..], marker.as_bytes()) {
                raw.truncate(from + at);
                outcome.exit_code = Some(code);
                break;
            }
            let seen = expect.iter().find_map(|e| {
                let at = raw
                    .windows(e.len().max(1))
                    .position(|w| w == e.as_bytes())?;
                Some((at, e))
            });
            if let Some((at, pattern)) = seen {
                raw.truncate(at);
                outcome.matched = Some(pattern.clone());
                break;
            }
            searched = raw.len();
            if raw.len() > max_output + 2 * overlap {
                raw.drain(max_output..raw.len() - overlap);
                searched = raw.len();
                dropped = true;
            }
            let read = tokio::time::timeout_at(deadline.into(), self.terminal.read(&mut buf)).await;
            match read {
                Err(_) => break, // the deadline
                Ok(Ok(Some(n))) => raw.extend_from_slice(&buf[..n]),
                Ok(Ok(None)) | Ok(Err(_)) => {
                    // The shell, the terminal's last holder, is gone.
                    outcome.ended = true;
                    outcome.exit_code = self.terminal.exit_code().await;
                    break;
                }
            }
        }
        if raw.len() > max_output {
            raw.truncate(max_output);
            dropped = true;
        }
        outcome.output = strip_escapes(&String::from_utf8_lossy(&raw));
        outcome.truncated = dropped;
        Ok(outcome)
    }
}

/// Where the prompt `<marker><status>__` begins in `raw`, and its status (the setup line's
/// own echo, `<marker>$?__`, is no prompt).
fn find_prompt(raw: &[u8], marker: &[u8]) -> Option<(usize, i32)> {
    let starts = raw
        .windows(marker.len())
        .enumerate()
        .filter(|(_, w)| *w == marker);
    starts.map(|(at, _)| at).find_map(|at| {
        let rest = &raw[at + marker.len()..];
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || !rest[digits..].starts_with(b"__") {
            return None;
        }
        let code = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
        Some((at, code))
    })
}

/// The text without terminal escape sequences (colours, cursor moves, titles, bracketed
/// paste).
fn strip_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        match chars.next() {
            // CSI: parameters and intermediates, then one final byte.
            Some('[') => {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            // OSC: up to BEL or ST.
            Some(']') => {
                while let Some(c) = chars.next() {
                    if c == '\x07' || (c == '\x1b' && chars.next_if_eq(&'\\').is_some()) {
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_and_escapes() {
        let raw = b"hi\r\n__cella_abc_127__";
        assert_eq!(find_prompt(raw, b"__cella_abc_"), Some((4, 127)));
        assert_eq!(find_prompt(b"__cella_abc_$?__", b"__cella_abc_"), None);
        assert_eq!(
            find_prompt(
                b"PS1='__cella_abc_$?__'\r\n__cella_abc_0__",
                b"__cella_abc_"
            ),
            Some((24, 0))
        );
        assert_eq!(
            strip_escapes("\x1b[31mred\x1b[0m \x1b]0;title\x07ok\x1b[?2004h"),
            "red ok"
        );
    }
}
