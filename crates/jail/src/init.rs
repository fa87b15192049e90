//! The sandbox init: pid 1 of the sandbox's pid namespace.
//!
//! It sets the sandbox up (cgroups, network namespace, root filesystem, capabilities, Landlock),
//! says `Ready`, then serves its control channel: each `Exec` forks a child that becomes the
//! user's process ([`crate::child`]); it reaps every process in the sandbox and reports the
//! ones it started. When the server's end of the channel closes, the init exits, and the kernel
//! kills every process left in the namespace: a sandbox cannot outlive its server.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use crate::cgroup::exec_cgroup_name;
use crate::child::{self, ChildFds};
use crate::proto::{self, Command, Event, ExecSpec, SandboxSpec};
use crate::seccomp::Policy;
use crate::sys::{self, cvt};
use crate::{Error, Result, rootfs};

/// Descriptors the spawner hands to a new init.
pub struct InitFds {
    pub control: OwnedFd,
    pub netns: OwnedFd,
    pub cgroup_procs: Vec<OwnedFd>,
    /// `cgroup.procs` of the cgroup the init moves to (`SandboxSpec::init_memory_cgroup`).
    pub init_memory_procs: Option<OwnedFd>,
    pub exec_cgroups: OwnedFd,
}

impl InitFds {
    pub fn raw(&self) -> Vec<i32> {
        let mut fds = vec![self.control.as_raw_fd(), self.netns.as_raw_fd()];
        fds.extend(self.cgroup_procs.iter().map(|f| f.as_raw_fd()));
        fds.extend(self.init_memory_procs.iter().map(|f| f.as_raw_fd()));
        fds.push(self.exec_cgroups.as_raw_fd());
        fds
    }
}

/// Capabilities the init keeps: to start children as the sandbox user and kill them.
const CAP_KILL: u32 = 5;
const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;
const KEPT_CAPS: [u32; 3] = [CAP_KILL, CAP_SETGID, CAP_SETUID];

pub fn run(spec: &SandboxSpec, mut fds: InitFds, policy: &Policy) -> ! {
    sys::set_name("cella-init");
    let upper = match setup(spec, &mut fds, policy) {
        Ok(upper) => upper,
        Err(e) => {
            let _ = proto::send(
                fds.control.as_fd(),
                &Event::SetupFailed {
                    error: e.to_string(),
                },
                &[],
            );
            sys::exit_now(1);
        }
    };
    let control = fds.control.as_fd();
    let sigchld = match sys::signalfd(&[libc::SIGCHLD]) {
        Ok(fd) => fd,
        Err(e) => {
            let error = format!("signalfd: {e}");
            let _ = proto::send(control, &Event::SetupFailed { error }, &[]);
            sys::exit_now(1);
        }
    };
    // The server keeps the writable layer's directory, to commit it; the init need not.
    if proto::send(control, &Event::Ready, &[upper.as_fd()]).is_err() {
        sys::exit_now(1);
    }
    drop(upper);
    // Moved out of the sandbox's memory cgroup, the init has its children join it.
    let memory_procs = spec.init_memory_cgroup.as_ref().and_then(|_| {
        let memory = spec.cgroups.iter().position(|(name, _)| name == "memory");
        memory.map(|i| fds.cgroup_procs[i].as_fd())
    });
    let mut init = Init {
        control,
        memory_procs,
        v2: is_v2(spec),
        exec_cgroups: fds.exec_cgroups.as_fd(),
        uid: spec.uid,
        running: HashMap::new(),
        lingering: Vec::new(),
    };
    init.serve(sigchld.as_fd())
}

/// Returns the overlay's upper directory (`O_PATH`).
fn setup(spec: &SandboxSpec, fds: &mut InitFds, policy: &Policy) -> Result<OwnedFd> {
    // If the spawner (and so the server) is gone, stop at once.
    sys::set_pdeathsig(libc::SIGKILL).map_err(|e| Error::sys("PR_SET_PDEATHSIG", e))?;
    detach_from_server_tty()?;
    for procs in &fds.cgroup_procs {
        sys::write_all(procs.as_fd(), b"0").map_err(|e| Error::sys("join sandbox cgroup", e))?;
    }
    sys::setns(fds.netns.as_fd(), libc::CLONE_NEWNET).map_err(|e| Error::sys("setns net", e))?;
    // A cgroup namespace rooted at the sandbox's cgroup hides the host's hierarchy.
    sys::unshare(libc::CLONE_NEWCGROUP).map_err(|e| Error::sys("unshare cgroup", e))?;
    sys::sethostname(&spec.hostname).map_err(|e| Error::sys("sethostname", e))?;
    let upper = rootfs::build(spec)?;
    // The root filesystem's files are the sandbox's; what the init allocates from now on is
    // charged elsewhere. The namespace stays rooted at the sandbox's cgroups.
    if let Some(procs) = fds.init_memory_procs.take() {
        sys::write_all(procs.as_fd(), b"0")
            .map_err(|e| Error::sys("leave the sandbox's memory cgroup", e))?;
    }
    if is_v2(spec) {
        hand_controllers_down(fds.exec_cgroups.as_fd())?;
    }
    drop_capabilities()?;
    restrict_landlock()?;
    // Installed once here, inherited by every process of the sandbox (the init itself needs
    // nothing the policy refuses), instead of compiled into each exec.
    policy
        .apply()
        .map_err(|e| Error::sys("install seccomp", e))?;
    Ok(upper)
}

/// The init inherited the server's stdio; the sandbox must never see the server's terminal.
fn detach_from_server_tty() -> Result<()> {
    let null = sys::open(Path::new("/dev/null"), libc::O_RDWR)
        .map_err(|e| Error::sys("open /dev/null", e))?;
    for target in 0..3 {
        // SAFETY: dup2 onto stdio of a descriptor we own.
        cvt(unsafe { libc::dup2(null.as_raw_fd(), target) }).map_err(|e| Error::sys("dup2", e))?;
    }
    // SAFETY: setsid has no memory-safety preconditions.
    cvt(unsafe { libc::setsid() }).map_err(|e| Error::sys("setsid", e))?;
    Ok(())
}

/// Keeps only [`KEPT_CAPS`], in every set including the bounding set.
fn drop_capabilities() -> Result<()> {
    for cap in 0..64u32 {
        if KEPT_CAPS.contains(&cap) {
            continue;
        }
        // SAFETY: prctl with integer arguments; EINVAL past the last capability ends the loop.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(Error::sys("drop bounding capability", e));
        }
    }
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    let mask = KEPT_CAPS.iter().fold(0u32, |m, &c| m | (1 << c));
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let header = Header {
        version: 0x2008_0522,
        pid: 0,
    }; // _LINUX_CAPABILITY_VERSION_3
    let data = [
        Data {
            effective: mask,
            permitted: mask,
            inheritable: 0,
        },
        Data {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        },
    ];
    // SAFETY: capset with a v3 header and two data words, as the ABI requires.
    cvt(unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) })
        .map_err(|e| Error::sys("capset", e))?;
    Ok(())
}

/// The single v2 hierarchy (one cgroup, named ""), rather than v1's named ones.
fn is_v2(spec: &SandboxSpec) -> bool {
    spec.cgroups.iter().any(|(name, _)| name.is_empty())
}

/// On v2, hands the controllers down from the sandbox's cgroup (`sandbox_dir`), which the
/// init has left, so that each exec's cgroup has limits of its own to show: v2 lets a cgroup
/// holding processes hand none down.
fn hand_controllers_down(sandbox_dir: BorrowedFd<'_>) -> Result<()> {
    let what = "hand the sandbox's controllers down";
    let control = sys::openat(
        Some(sandbox_dir),
        Path::new("cgroup.subtree_control"),
        libc::O_WRONLY,
        0,
    )
    .map_err(|e| Error::sys(what, e))?;
    sys::write_all(control.as_fd(), crate::cgroup::V2_CONTROLLERS.as_bytes())
        .map_err(|e| Error::sys(what, e))
}

/// One Landlock domain for the whole sandbox (children inherit it): no device nodes, and on
/// kernels with ABI 6 no signals or abstract UNIX sockets across the sandbox boundary.
/// Older kernels get what they support (the server logs and reports the ABI it found); a
/// kernel that has Landlock but refuses the domain fails the sandbox, never silently.
fn restrict_landlock() -> Result<()> {
    use landlock::{ABI, Access, AccessFs, Ruleset, RulesetAttr, Scope};
    let fs = AccessFs::MakeChar | AccessFs::MakeBlock;
    Ruleset::default()
        .handle_access(fs)
        .and_then(|r| r.scope(Scope::from_all(ABI::V6)))
        .and_then(|r| r.create())
        .and_then(|r| r.restrict_self())
        .map(drop)
        .map_err(|e| Error::Unsupported(format!("Landlock: {e}")))
}

struct Running {
    id: u64,
}

struct Init<'a> {
    control: BorrowedFd<'a>,
    /// `cgroup.procs` of the sandbox's memory cgroup, when the init is not in it.
    memory_procs: Option<BorrowedFd<'a>>,
    /// cgroup v2: each exec's cgroup comes made with its request (see `launch_by_init`), and
    /// its process checks the sandbox's `pids.max` (see `cgroup::over_pids_limit`).
    v2: bool,
    exec_cgroups: BorrowedFd<'a>,
    uid: u32,
    /// Host of each running exec's main process: pid → exec.
    running: HashMap<i32, Running>,
    /// Exec cgroups whose main process is gone but which still hold processes.
    lingering: Vec<u64>,
}

impl Init<'_> {
    fn serve(&mut self, sigchld: BorrowedFd<'_>) -> ! {
        let mut buf = Vec::new();
        loop {
            let Ok([command, child_exited]) = sys::poll_readable([self.control, sigchld], -1)
            else {
                sys::exit_now(1)
            };
            if child_exited {
                sys::drain_signalfd(sigchld);
                self.reap();
            }
            if command {
                match proto::recv::<Command>(self.control, &mut buf) {
                    Ok(Some((cmd, fds))) => self.handle(cmd, fds),
                    // The server is gone: exiting kills the whole sandbox.
                    Ok(None) | Err(_) => sys::exit_now(0),
                }
            }
        }
    }

    fn send(&self, event: &Event) {
        if proto::send(self.control, event, &[]).is_err() {
            sys::exit_now(0);
        }
    }

    fn handle(&mut self, cmd: Command, fds: Vec<OwnedFd>) {
        match cmd {
            Command::Exec(spec) => {
                let id = spec.id;
                match self.start(&spec, fds) {
                    Ok(pid) => {
                        self.running.insert(pid, Running { id });
                        self.send(&Event::Started { id, pid });
                    }
                    Err((error, missing_program)) => {
                        self.remove_exec_cgroup(id);
                        self.send(&Event::SpawnFailed {
                            id,
                            error,
                            missing_program,
                        });
                    }
                }
            }
            Command::Signal { id, signal } => {
                if let Some((&pid, _)) = self.running.iter().find(|(_, r)| r.id == id) {
                    let _ = sys::kill(pid, signal);
                }
            }
            Command::KillTree { id } => self.kill_tree(id),
        }
    }

    /// Forks the exec's process; returns its pid once it has exec'd, or why it could not (and
    /// whether that was because the program does not exist).
    fn start(
        &mut self,
        spec: &ExecSpec,
        fds: Vec<OwnedFd>,
    ) -> std::result::Result<i32, (String, bool)> {
        self.fork_exec(spec, fds).map_err(|e| (e, false))?
    }

    fn fork_exec(
        &mut self,
        spec: &ExecSpec,
        fds: Vec<OwnedFd>,
    ) -> std::result::Result<std::result::Result<i32, (String, bool)>, String> {
        // Three stdio descriptors; on v2 then the exec cgroup's `cgroup.procs`, which the
        // server made (see `launch_by_init`).
        let mut fds = fds;
        let made_by_server = if self.v2 { fds.pop() } else { None };
        let Ok::<[OwnedFd; 3], _>(stdio) = fds.try_into() else {
            return Err("exec needs three stdio descriptors, and on cgroup v2 its cgroup".into());
        };
        let procs = match made_by_server {
            Some(procs) => procs,
            None => self.make_exec_cgroup(spec.id)?,
        };
        let (err_r, err_w) = sys::pipe().map_err(|e| format!("pipe: {e}"))?;

        // SAFETY: the init is single-threaded, so the child may run arbitrary code.
        let pid = cvt(unsafe { libc::fork() }).map_err(|e| format!("fork: {e}"))?;
        if pid == 0 {
            drop(err_r);
            let fds = ChildFds {
                stdio,
                memory_procs: self.memory_procs,
                cgroup_procs: procs,
                v2_sandbox_cgroup: self.v2.then_some(self.exec_cgroups),
                err: err_w,
            };
            crate::in_child(|| child::exec(spec, self.uid, fds));
        }
        drop((err_w, procs, stdio));
        let mut msg = Vec::new();
        let mut chunk = [0u8; 512];
        while let Ok(n @ 1..) = sys::read(err_r.as_fd(), &mut chunk) {
            msg.extend_from_slice(&chunk[..n]);
        }
        if msg.is_empty() {
            return Ok(Ok(pid));
        }
        // The child exits 127 right after writing; reap it here so it is never reported.
        // SAFETY: waitpid on our own child.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        Ok(Err((
            String::from_utf8_lossy(&msg[1..]).into_owned(),
            msg[0] == 1,
        )))
    }

    /// Makes exec `id`'s cgroup (v1: in the pids hierarchy); returns its `cgroup.procs`.
    fn make_exec_cgroup(&self, id: u64) -> std::result::Result<OwnedFd, String> {
        let name = exec_cgroup_name(id);
        // SAFETY: mkdirat relative to a directory descriptor we own.
        let made = cvt(unsafe {
            libc::mkdirat(
                self.exec_cgroups.as_raw_fd(),
                sys::cstring(&name).map_err(|e| e.to_string())?.as_ptr(),
                0o755,
            )
        });
        made.map_err(|e| format!("create exec cgroup: {e}"))?;
        sys::openat(
            Some(self.exec_cgroups),
            &Path::new(&name).join("cgroup.procs"),
            libc::O_WRONLY,
            0,
        )
        .map_err(|e| format!("open exec cgroup: {e}"))
    }

    /// Reaps every exited process; reports the ones that are exec main processes.
    fn reap(&mut self) {
        loop {
            let mut status = 0;
            // SAFETY: rusage is plain data filled by the kernel.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: wait4 with valid out-pointers.
            let pid = unsafe { libc::wait4(-1, &mut status, libc::WNOHANG, &mut usage) };
            if pid <= 0 {
                break;
            }
            let Some(Running { id }) = self.running.remove(&pid) else {
                continue;
            };
            let (code, signal) = if libc::WIFSIGNALED(status) {
                (None, Some(libc::WTERMSIG(status)))
            } else {
                (Some(libc::WEXITSTATUS(status)), None)
            };
            let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
            let cpu_us = micros(usage.ru_utime) + micros(usage.ru_stime);
            self.send(&Event::Exited {
                id,
                code,
                signal,
                cpu_us,
            });
            self.lingering.push(id);
        }
        let lingering = std::mem::take(&mut self.lingering);
        self.lingering = lingering
            .into_iter()
            .filter(|&id| !self.remove_exec_cgroup(id))
            .collect();
    }

    /// Kills every process in the exec's cgroup, looping because a process may fork while we
    /// read the list; a killed process cannot fork, so the list shrinks to nothing.
    fn kill_tree(&mut self, id: u64) {
        let procs = Path::new(&exec_cgroup_name(id)).join("cgroup.procs");
        for _ in 0..1000 {
            let Ok(fd) = sys::openat(Some(self.exec_cgroups), &procs, libc::O_RDONLY, 0) else {
                return;
            };
            let mut text = Vec::new();
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = sys::read(fd.as_fd(), &mut chunk) {
                text.extend_from_slice(&chunk[..n]);
            }
            let pids: Vec<i32> = String::from_utf8_lossy(&text)
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                let _ = sys::kill(pid, libc::SIGKILL);
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    /// Removes an exec's cgroup; false while processes are still in it.
    fn remove_exec_cgroup(&self, id: u64) -> bool {
        let Ok(name) = sys::cstring(exec_cgroup_name(id)) else {
            return true;
        };
        // SAFETY: unlinkat relative to a directory descriptor we own.
        let r = unsafe {
            libc::unlinkat(
                self.exec_cgroups.as_raw_fd(),
                name.as_ptr(),
                libc::AT_REMOVEDIR,
            )
        };
        r == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EBUSY)
    }
}
