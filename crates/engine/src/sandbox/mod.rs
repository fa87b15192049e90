//! One live sandbox: its init, cgroup, control channel, filesystem view and processes.

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cella_jail::cgroup::{SandboxCgroup, Usage};
use cella_jail::fsops::{Entry, SandboxFs, Side};
use cella_jail::proto::ExecSpec;
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;

mod ps;
mod sessions;

pub use ps::RunningProcess;

use crate::control::Control;
use crate::error::{Error, Result, quoted};
use crate::image::Image;
use crate::process::{ExecOptions, OutputBudget, Process};

/// Label of the sandboxes the server makes for its own work (one-shot runs, probes): they are
/// listed only when a listing asks for this label.
pub const INTERNAL_LABEL: &str = "cella.internal";

/// Finished processes remembered per sandbox for inspection: at most this many, and the
/// older ones only while their output together stays within `FINISHED_OUTPUT_KEPT` (the
/// server holds it in memory, for every sandbox).
const FINISHED_KEPT: usize = 64;
const FINISHED_OUTPUT_KEPT: usize = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Running,
    Stopped,
}

/// What a sandbox is: its resources, labels and state.
#[derive(Debug, Clone)]
pub struct SandboxInfo {
    pub id: String,
    pub image: String,
    pub state: State,
    /// Why it stopped: deleted, idle timeout, lifetime, init exited, server restarted.
    pub stop_reason: Option<String>,
    pub hostname: String,
    pub cpus: f64,
    pub memory_mb: u64,
    pub pids: u64,
    pub disk_mb: u64,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub idle_timeout_secs: u64,
    pub max_lifetime_secs: u64,
    /// Seconds since the epoch.
    pub created_at: f64,
    /// The unprivileged uid the sandbox's processes run as.
    pub uid: u32,
    /// Its network egress (`egress: false`: loopback only).
    pub network: crate::network::NetworkPolicy,
}

/// Resource usage, read from the sandbox's cgroup and writable layer.
#[derive(Debug, Clone)]
pub struct ResourceUsage {
    pub cpu_seconds: f64,
    pub memory_bytes: u64,
    pub memory_peak_bytes: u64,
    pub memory_limit_bytes: u64,
    pub pids: u64,
    pub pids_limit: u64,
    pub disk_bytes: u64,
    pub disk_limit_bytes: u64,
    pub oom_kills: u64,
}

pub(crate) fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Per-exec settings that come from the sandbox.
#[derive(Debug, Clone)]
pub struct ExecDefaults {
    pub open_files: u64,
    pub disk_bytes: u64,
    /// The server's, shared by every exec.
    pub output_budget: Arc<OutputBudget>,
}

pub struct Sandbox {
    pub id: String,
    /// What it was made from: its layers stay while it lives; a commit builds on them.
    image: Arc<Image>,
    /// The image's environment, the base of every exec's.
    image_env: BTreeMap<String, String>,
    /// The overlay's upper directory (`O_PATH`), read by a commit.
    upper: OwnedFd,
    /// Its sessions by name (their shells die with it).
    sessions: Mutex<BTreeMap<String, Arc<crate::session::Session>>>,
    info: Mutex<SandboxInfo>,
    /// Host pid and start time of the init.
    pub(crate) init: Option<(i32, u64)>,
    pub(crate) cgroup: SandboxCgroup,
    pidfd: AsyncFd<OwnedFd>,
    control: Control,
    fs: Arc<SandboxFs>,
    exec_defaults: ExecDefaults,
    exec_ids: AtomicU64,
    /// Milliseconds since the epoch of the last API activity.
    last_active: AtomicU64,
    processes: Mutex<BTreeMap<u64, Arc<Process>>>,
    finished: Mutex<VecDeque<u64>>,
    /// Calls at work in the sandbox that are not its processes (a context's call).
    active: AtomicUsize,
    /// Cancelled when the sandbox stops: what lives in it (contexts) goes with it.
    stopped: CancellationToken,
    /// Its network egress, if it has one: ended when the sandbox is killed.
    uplink: Mutex<Option<cella_jail::egress::Uplink>>,
}

/// Keeps a sandbox from idling out while held (see [`Sandbox::hold_active`]).
pub struct Active(Arc<Sandbox>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
        self.0.touch();
    }
}

fn now_ms() -> u64 {
    (now_secs() * 1000.0) as u64
}

impl Sandbox {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        info: SandboxInfo,
        init: Option<(i32, u64)>,
        cgroup: SandboxCgroup,
        pidfd: OwnedFd,
        (control, upper): (Control, OwnedFd),
        fs: SandboxFs,
        exec_defaults: ExecDefaults,
        image: Image,
    ) -> Result<Sandbox> {
        let image_env = image
            .env
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Ok(Sandbox {
            image: Arc::new(image),
            image_env,
            upper,
            sessions: Mutex::default(),
            id: info.id.clone(),
            info: Mutex::new(info),
            init,
            cgroup,
            pidfd: cella_jail::async_fd(pidfd).map_err(Error::internal)?,
            control,
            fs: Arc::new(fs),
            exec_defaults,
            exec_ids: AtomicU64::new(1),
            last_active: AtomicU64::new(now_ms()),
            processes: Mutex::default(),
            finished: Mutex::default(),
            active: AtomicUsize::new(0),
            stopped: CancellationToken::new(),
            uplink: Mutex::default(),
        })
    }

    pub fn info(&self) -> SandboxInfo {
        self.info.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The uid its processes run as (without copying the rest of `info`).
    pub fn uid(&self) -> u32 {
        self.info.lock().unwrap_or_else(|p| p.into_inner()).uid
    }

    /// The init's host pid.
    fn init_pid(&self) -> Option<i32> {
        self.init.map(|(pid, _)| pid)
    }

    pub fn is_running(&self) -> bool {
        self.info.lock().unwrap_or_else(|p| p.into_inner()).state == State::Running
            && !self.control.is_closed()
    }

    pub(crate) fn mark_stopped(&self, reason: &str) -> SandboxInfo {
        let mut info = self.info.lock().unwrap_or_else(|p| p.into_inner());
        if info.state == State::Running {
            info.state = State::Stopped;
            info.stop_reason = Some(reason.to_string());
        }
        self.stopped.cancel();
        info.clone()
    }

    pub fn control(&self) -> &Control {
        &self.control
    }

    /// The init's pidfd: it names every namespace of the sandbox.
    pub(crate) fn pidfd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.pidfd.get_ref().as_fd()
    }

    pub(crate) fn next_exec_id(&self) -> u64 {
        self.exec_ids.fetch_add(1, Ordering::Relaxed)
    }

    /// When the sandbox was last active (an API call, a process, a context's call), in
    /// seconds since the epoch.
    pub fn last_active(&self) -> f64 {
        self.last_active.load(Ordering::Relaxed) as f64 / 1000.0
    }

    pub fn touch(&self) {
        self.last_active.store(now_ms(), Ordering::Relaxed);
    }

    /// Cancelled once the sandbox has stopped.
    pub fn stop_token(&self) -> CancellationToken {
        self.stopped.clone()
    }

    /// Keeps the sandbox from idling out until the guard is dropped: work of the server's
    /// in it (a context's call) that is not one of its listed processes.
    pub fn hold_active(self: &Arc<Self>) -> Active {
        self.active.fetch_add(1, Ordering::SeqCst);
        Active(self.clone())
    }

    /// Seconds since the last API activity; zero while a process or a call runs.
    pub(crate) fn idle_secs(&self) -> f64 {
        let busy = self.active.load(Ordering::SeqCst) > 0
            || self
                .processes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .any(|p| p.exit().is_none());
        if busy {
            self.touch();
            return 0.0;
        }
        now_ms().saturating_sub(self.last_active.load(Ordering::Relaxed)) as f64 / 1000.0
    }

    /// The init's spec for an exec: environment layered as base < sandbox < exec.
    pub(crate) fn exec_spec(&self, id: u64, opts: &ExecOptions) -> Result<ExecSpec> {
        if opts.argv.is_empty() || opts.argv[0].is_empty() {
            return Err(Error::invalid("the command is empty"));
        }
        let info = self.info();
        let mut env: BTreeMap<String, String> = [
            ("PATH", cella_jail::DEFAULT_PATH),
            ("HOME", cella_jail::SANDBOX_HOME),
            ("USER", cella_jail::SANDBOX_USER),
            ("LOGNAME", cella_jail::SANDBOX_USER),
            ("LANG", "C.UTF-8"),
            ("HOSTNAME", info.hostname.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        env.extend(self.image_env.clone());
        env.extend(info.env.clone());
        env.extend(opts.env.clone());
        check_env(&env)?;
        if opts.argv.iter().any(|a| a.contains('\0')) {
            return Err(Error::invalid("an argument contains a NUL byte"));
        }
        let cwd = match &opts.cwd {
            Some(c) if !c.is_empty() => self.absolute(c),
            _ => {
                (self.image.working_dir.clone()).unwrap_or_else(|| cella_jail::SANDBOX_HOME.into())
            }
        };
        let d = &self.exec_defaults;
        Ok(ExecSpec {
            id,
            argv: opts.argv.clone(),
            env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
            cwd,
            rlimits: vec![
                (libc::RLIMIT_NOFILE, d.open_files, d.open_files),
                (libc::RLIMIT_FSIZE, d.disk_bytes, d.disk_bytes),
            ],
            tty: false,
        })
    }

    pub fn image(&self) -> Arc<Image> {
        self.image.clone()
    }

    pub(crate) fn upper(&self) -> BorrowedFd<'_> {
        self.upper.as_fd()
    }

    pub(crate) fn output_budget(&self) -> &Arc<OutputBudget> {
        &self.exec_defaults.output_budget
    }

    /// A sandbox path made absolute: relative paths are relative to the home directory.
    pub fn absolute(&self, path: &str) -> String {
        if path.starts_with('/') {
            path.to_string()
        } else {
            format!("{}/{path}", cella_jail::SANDBOX_HOME)
        }
    }

    pub(crate) fn register_process(&self, p: Arc<Process>) {
        self.touch();
        self.processes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(p.id, p);
    }

    /// Called when a process ends: keeps the last few finished ones for inspection (always
    /// the one that just ended).
    pub(crate) fn retire_process(&self, id: u64) {
        let mut finished = self.finished.lock().unwrap_or_else(|p| p.into_inner());
        let mut processes = self.processes.lock().unwrap_or_else(|p| p.into_inner());
        finished.push_back(id);
        // Collected processes were forgotten already: they hold nothing.
        finished.retain(|id| processes.contains_key(id));
        let held = |id: &u64| processes.get(id).map_or(0, |p| p.captured_bytes());
        let mut older: usize = finished.iter().rev().skip(1).map(held).sum();
        while finished.len() > 1 && (finished.len() > FINISHED_KEPT || older > FINISHED_OUTPUT_KEPT)
        {
            if let Some(old) = finished.pop_front()
                && let Some(p) = processes.remove(&old)
            {
                older = older.saturating_sub(p.captured_bytes());
            }
        }
    }

    pub fn processes(&self) -> Vec<Arc<Process>> {
        self.processes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn process(&self, id: u64) -> Result<Arc<Process>> {
        self.processes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
            .ok_or_else(|| Error::not_found("process", id.to_string()))
    }

    /// Forgets a finished process at once (one-shot work that nobody will inspect).
    pub fn forget_process(&self, id: u64) {
        self.processes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    pub fn usage(&self) -> Usage {
        self.cgroup.usage()
    }

    pub fn resource_usage(&self) -> ResourceUsage {
        let u = self.cgroup.usage();
        let info = self.info();
        let disk = self.fs.disk_usage().unwrap_or(0);
        ResourceUsage {
            cpu_seconds: u.cpu_ns as f64 / 1e9,
            memory_bytes: u.memory_bytes,
            memory_peak_bytes: u.memory_peak_bytes,
            memory_limit_bytes: info.memory_mb << 20,
            pids: u.pids,
            pids_limit: info.pids,
            disk_bytes: disk,
            disk_limit_bytes: info.disk_mb << 20,
            oom_kills: u.oom_kills,
        }
    }

    /// Changes the memory limit of a running sandbox.
    pub fn set_memory_mb(&self, mb: u64) -> Result<()> {
        self.cgroup.set_memory(mb << 20).map_err(|e| match e {
            // The kernel refuses a limit below what the sandbox already uses.
            cella_jail::Error::Sys { ref source, .. }
                if source.raw_os_error() == Some(libc::EBUSY) =>
            {
                Error::invalid(format!(
                    "a memory limit of {mb} MB is below what the sandbox already uses"
                ))
            }
            e => Error::from(e),
        })?;
        self.info
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .memory_mb = mb;
        Ok(())
    }

    /// Runs a blocking file operation against the sandbox's filesystem.
    pub async fn with_fs<T: Send + 'static>(
        &self,
        f: impl FnOnce(&SandboxFs) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.touch();
        let fs = self.fs.clone();
        tokio::task::spawn_blocking(move || f(&fs))
            .await
            .map_err(Error::internal)?
    }

    /// Runs a blocking file operation on `path` (made absolute), its error naming the path.
    pub async fn on_path<T: Send + 'static>(
        &self,
        path: &str,
        op: impl FnOnce(&SandboxFs, &str) -> std::io::Result<T> + Send + 'static,
    ) -> Result<T> {
        let path = self.absolute(path);
        self.with_fs(move |fs| op(fs, &path).map_err(|e| Error::file(&path, e)))
            .await
    }

    /// Moves `from` to `to`, an error naming the side at fault, and answers the moved entry.
    pub async fn rename(&self, from: &str, to: &str) -> Result<Entry> {
        let (from, to) = (self.absolute(from), self.absolute(to));
        self.with_fs(move |fs| {
            fs.rename(&from, &to).map_err(|(side, e)| match side {
                Side::Source => Error::file(&from, e),
                Side::Destination => Error::file(&to, e),
            })?;
            fs.stat(&to).map_err(|e| Error::file(&to, e))
        })
        .await
    }

    /// SIGKILLs the init (the kernel then kills every process of the sandbox) and waits until
    /// it is gone, so its mounts and namespaces are released.
    pub(crate) async fn kill(&self) {
        let _ = cella_jail::sys::pidfd_send_signal(self.pidfd.get_ref().as_fd(), libc::SIGKILL);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.pidfd.readable()).await;
        // slirp4netns holds the namespace's tap device: ended, the namespace goes too.
        let uplink = self.uplink.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(uplink) = uplink {
            let _ = tokio::task::spawn_blocking(move || drop(uplink)).await;
        }
    }

    pub(crate) fn attach_uplink(&self, uplink: cella_jail::egress::Uplink) {
        *self.uplink.lock().unwrap_or_else(|p| p.into_inner()) = Some(uplink);
    }
}

/// Refuses what `execve` cannot pass on: an empty name, a name with `=` or NUL, a value with
/// NUL, a variable longer than the kernel takes.
pub(crate) fn check_env(env: &BTreeMap<String, String>) -> Result<()> {
    let longest = cella_jail::sys::max_arg_strlen() - 1;
    for (k, v) in env {
        if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
            return Err(Error::invalid(format!(
                "invalid environment variable {}: a name must be non-empty, without '=' or NUL; a value without NUL",
                quoted(k)
            )));
        }
        let length = k.len() + 1 + v.len();
        if length > longest {
            return Err(Error::invalid(format!(
                "environment variable {k:?} is {length} bytes as NAME=value; a program can be \
                 given at most {longest}"
            )));
        }
    }
    Ok(())
}
