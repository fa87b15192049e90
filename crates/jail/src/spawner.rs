//! The spawner: a single-threaded helper process that creates sandboxes.
//!
//! The server is a multi-threaded tokio process, and forking such a process is only safe for
//! async-signal-safe work; building a sandbox is far more than that. So before the runtime
//! starts, the server forks this helper once. It stays single-threaded, keeps a pool of
//! ready network namespaces (creating one is a global kernel serialization point), and for each
//! request `clone3`s an init into new mount, pid, ipc and uts namespaces. The reply carries
//! the init's pidfd and the server's end of the init's control channel; after that the server
//! talks to the init directly and the spawner only reaps it.

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::Mutex;

use crate::init::{self, InitFds};
use crate::proto::{self, SandboxSpec, SpawnReply};
use crate::seccomp::Policy;
use crate::sys::{self, cvt};
use crate::{Error, Result};

/// Large enough for one message of [`proto::MAX_MESSAGE`] bytes.
const SOCKET_BUFFER: i32 = 2 * proto::MAX_MESSAGE as i32 + 65536;

pub struct SpawnerConfig {
    /// How many empty network namespaces to keep ready.
    pub netns_pool: usize,
}

/// A freshly created sandbox: its init's host pid, a pidfd for it, and the server's end of
/// its control channel. The init reports `Ready` (or `SetupFailed`) on `control` next.
pub struct Spawned {
    pub pid: i32,
    pub pidfd: OwnedFd,
    pub control: OwnedFd,
}

/// The server's handle on the spawner process.
pub struct Spawner {
    channel: Mutex<(OwnedFd, Vec<u8>)>,
    pid: i32,
    pidfd: OwnedFd,
}

impl Spawner {
    /// Forks the spawner. Must be called while the process is still single-threaded, that is
    /// before any runtime or thread starts.
    pub fn start(config: SpawnerConfig) -> Result<Spawner> {
        let threads = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Threads:").map(|v| v.trim().to_string()))
            });
        if threads.as_deref() != Some("1") {
            return Err(Error::Unsupported(
                "the spawner must be started before any thread".into(),
            ));
        }
        let policy = Policy::compile()?;
        let (server_end, spawner_end) =
            sys::seqpacket_pair().map_err(|e| Error::sys("socketpair", e))?;
        for fd in [&server_end, &spawner_end] {
            sys::set_sndbuf(fd.as_fd(), SOCKET_BUFFER)
                .map_err(|e| Error::sys("SO_SNDBUFFORCE", e))?;
        }
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the process is single-threaded (checked above), so the child may do anything.
        let pid = cvt(unsafe { libc::fork() }).map_err(|e| Error::sys("fork spawner", e))?;
        if pid == 0 {
            drop(server_end);
            crate::in_child(|| {
                // SAFETY: getppid has no preconditions.
                if sys::set_pdeathsig(libc::SIGKILL).is_err()
                    || unsafe { libc::getppid() } != parent
                {
                    sys::exit_now(0);
                }
                serve(spawner_end, &policy, config.netns_pool)
            });
        }
        drop(spawner_end);
        // Our unreaped child: the pid cannot have been reused.
        let pidfd = sys::pidfd_open(pid).map_err(|e| Error::sys("pidfd_open spawner", e))?;
        Ok(Spawner {
            channel: Mutex::new((server_end, Vec::new())),
            pid,
            pidfd,
        })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The spawner's pidfd: readable once it has died (its sandboxes die with it).
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// Creates a sandbox. Blocking: call it from a blocking thread.
    pub fn spawn(&self, spec: &SandboxSpec) -> Result<Spawned> {
        let mut guard = self
            .channel
            .lock()
            .map_err(|_| Error::Protocol("spawner lock poisoned".into()))?;
        let (fd, buf) = &mut *guard;
        proto::send(fd.as_fd(), spec, &[]).map_err(|e| Error::sys("send to spawner", e))?;
        let reply = proto::recv::<SpawnReply>(fd.as_fd(), buf)
            .map_err(|e| Error::sys("receive from spawner", e))?;
        match reply {
            Some((SpawnReply::Spawned { pid }, fds)) => {
                let [pidfd, control]: [OwnedFd; 2] = fds
                    .try_into()
                    .map_err(|_| Error::Protocol("spawner sent no descriptors".into()))?;
                Ok(Spawned {
                    pid,
                    pidfd,
                    control,
                })
            }
            Some((SpawnReply::Failed { error }, _)) => Err(Error::Spawn(error)),
            None => Err(Error::Protocol("the spawner exited".into())),
        }
    }
}

fn serve(channel: OwnedFd, policy: &Policy, pool_size: usize) -> ! {
    sys::set_name("cella-spawner");
    sys::ignore_signals(&sys::SERVER_GROUP_SIGNALS);
    let Ok(sigchld) = sys::signalfd(&[libc::SIGCHLD]) else {
        sys::exit_now(1)
    };
    let Ok(host_netns) = sys::open(Path::new("/proc/self/ns/net"), libc::O_RDONLY) else {
        sys::exit_now(1)
    };
    let mut pool: Vec<OwnedFd> = Vec::new();
    let mut buf = Vec::new();
    loop {
        let timeout = if pool.len() < pool_size { 0 } else { -1 };
        let [request, child_exited] =
            sys::poll_readable([channel.as_fd(), sigchld.as_fd()], timeout).unwrap_or([false; 2]);
        if child_exited {
            sys::drain_signalfd(sigchld.as_fd());
            // SAFETY: reaping our own children without status.
            while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
        }
        if request {
            let spec = match proto::recv::<SandboxSpec>(channel.as_fd(), &mut buf) {
                Ok(Some((spec, _))) => spec,
                // The server is gone; our inits follow us through PDEATHSIG.
                Ok(None) | Err(_) => sys::exit_now(0),
            };
            let netns = match pool.pop() {
                Some(ns) => Ok(ns),
                None => new_netns(&host_netns),
            };
            let result = netns.and_then(|ns| spawn(&spec, ns, policy));
            let sent = match result {
                Ok(s) => proto::send(
                    channel.as_fd(),
                    &SpawnReply::Spawned { pid: s.pid },
                    &[s.pidfd.as_fd(), s.control.as_fd()],
                ),
                Err(e) => proto::send(
                    channel.as_fd(),
                    &SpawnReply::Failed {
                        error: e.to_string(),
                    },
                    &[],
                ),
            };
            if sent.is_err() {
                sys::exit_now(0);
            }
        }
        if !request && !child_exited && pool.len() < pool_size {
            match new_netns(&host_netns) {
                Ok(ns) => pool.push(ns),
                // Out of namespaces for now (user.max_net_namespaces): back off.
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
            }
        }
    }
}

/// An empty network namespace with loopback up.
fn new_netns(host: &OwnedFd) -> Result<OwnedFd> {
    sys::unshare(libc::CLONE_NEWNET).map_err(|e| Error::sys("unshare net", e))?;
    let made = sys::open(Path::new("/proc/self/ns/net"), libc::O_RDONLY)
        .map_err(|e| Error::sys("open netns", e));
    let up = sys::loopback_up().map_err(|e| Error::sys("bring up lo", e));
    sys::setns(host.as_fd(), libc::CLONE_NEWNET)
        .map_err(|e| Error::sys("return to host netns", e))?;
    up?;
    made
}

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

fn spawn(spec: &SandboxSpec, netns: OwnedFd, policy: &Policy) -> Result<Spawned> {
    let cgroup_procs = spec
        .cgroups
        .iter()
        .map(|(_, dir)| {
            let p = dir.join("cgroup.procs");
            sys::open(&p, libc::O_WRONLY)
                .map_err(|e| Error::sys(format!("open {}", p.display()), e))
        })
        .collect::<Result<Vec<_>>>()?;
    let init_memory_procs = (spec.init_memory_cgroup.as_ref())
        .map(|dir| {
            let p = dir.join("cgroup.procs");
            sys::open(&p, libc::O_WRONLY)
                .map_err(|e| Error::sys(format!("open {}", p.display()), e))
        })
        .transpose()?;
    let exec_cgroups = sys::open(&spec.exec_cgroup_dir, libc::O_PATH | libc::O_DIRECTORY)
        .map_err(|e| Error::sys(format!("open {}", spec.exec_cgroup_dir.display()), e))?;
    let (control, init_control) = sys::seqpacket_pair().map_err(|e| Error::sys("socketpair", e))?;
    for fd in [&control, &init_control] {
        sys::set_sndbuf(fd.as_fd(), SOCKET_BUFFER).map_err(|e| Error::sys("SO_SNDBUFFORCE", e))?;
    }
    let fds = InitFds {
        control: init_control,
        netns,
        cgroup_procs,
        init_memory_procs,
        exec_cgroups,
    };

    let mut pidfd: i32 = -1;
    let args = CloneArgs {
        flags: (libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS
            | libc::CLONE_PIDFD) as u64,
        pidfd: &mut pidfd as *mut i32 as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM and without a stack behaves like fork: the child gets a
    // copy of this single-threaded process and continues here.
    let pid =
        cvt(unsafe { libc::syscall(libc::SYS_clone3, &args, std::mem::size_of::<CloneArgs>()) })
            .map_err(|e| Error::sys("clone3", e))? as i32;
    if pid == 0 {
        // Only the init's own descriptors may cross into the sandbox. The spawner's other
        // descriptors are closed underneath their owners, which is sound because this child
        // never returns into the spawner's frames.
        sys::close_fds_except(3, &fds.raw());
        crate::in_child(|| init::run(spec, fds, policy));
    }
    drop(fds);
    // SAFETY: clone3 wrote a fresh pidfd that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok(Spawned {
        pid,
        pidfd,
        control,
    })
}
