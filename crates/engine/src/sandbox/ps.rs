//! The processes running in a sandbox, as `ps` inside it would show them: each process of
//! the sandbox's cgroups read from the host's `/proc`, with pids as the sandbox sees them.
//! Kernels and programs the API started are among them, as is the init (pid 1). As the
//! sandbox's own `/proc` hides other users' processes from its user, a process that is not
//! the user's shows only its name, never its command line (the init's is the server's).

use std::collections::HashMap;
use std::os::fd::AsFd;

use cella_jail::cgroup::SandboxCgroup;

use super::Sandbox;
use crate::error::{Error, Result};

/// Clock ticks per second of `/proc/<pid>/stat` (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
const TICKS: f64 = 100.0;
/// The most of a command line kept.
const MOST_COMMAND: usize = 4096;

#[derive(Debug, Clone)]
pub struct RunningProcess {
    /// Its pid inside the sandbox.
    pub pid: i32,
    /// Its parent's pid inside the sandbox (0 when the parent is outside it).
    pub ppid: i32,
    /// The program's name (`comm`).
    pub name: String,
    pub command: Vec<String>,
    pub uid: u32,
    /// As `ps` says it: `R` running, `S` sleeping, `Z` zombie, ...
    pub state: String,
    pub rss_bytes: u64,
    pub cpu_seconds: f64,
}

/// One process as read from the host's `/proc`, with its host pid and host parent pid.
struct Read {
    host_pid: i32,
    host_ppid: i32,
    process: RunningProcess,
}

fn read(host_pid: i32) -> Option<Read> {
    let status = std::fs::read_to_string(format!("/proc/{host_pid}/status")).ok()?;
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .map(str::trim)
    };
    // The last of NSpid is the pid in the innermost namespace: the sandbox's.
    let pid = field("NSpid")?.split_whitespace().last()?.parse().ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{host_pid}/stat")).ok()?;
    let after_name = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = after_name.split(' ').collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let mut cmdline = std::fs::read(format!("/proc/{host_pid}/cmdline")).unwrap_or_default();
    cmdline.truncate(MOST_COMMAND);
    let command = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let kb = |key: &str| {
        field(key)
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Some(Read {
        host_pid,
        host_ppid: field("PPid")?.parse().ok()?,
        process: RunningProcess {
            pid,
            ppid: 0,
            name: field("Name").unwrap_or_default().to_string(),
            command,
            uid: field("Uid")?.split_whitespace().next()?.parse().ok()?,
            state: field("State")?.chars().next()?.to_string(),
            rss_bytes: kb("VmRSS") << 10,
            // utime and stime: the 12th and 13th fields after the name.
            cpu_seconds: (ticks(11) + ticks(12)) as f64 / TICKS,
        },
    })
}

/// Every process of the sandbox, read with its host pid; those not of `uid` by name only.
/// The init (host pid `init`) is listed whether or not it is in the sandbox's cgroups: on v2
/// it leaves them once set up.
fn all(cgroup: &SandboxCgroup, init: Option<i32>, uid: u32) -> Vec<Read> {
    let mut pids = cgroup.pids();
    pids.extend(init.filter(|pid| !pids.contains(pid)));
    let mut read: Vec<Read> = pids.into_iter().filter_map(read).collect();
    for r in read.iter_mut().filter(|r| r.process.uid != uid) {
        r.process.command = vec![r.process.name.clone()];
    }
    let pid_of: HashMap<i32, i32> = read.iter().map(|r| (r.host_pid, r.process.pid)).collect();
    for r in &mut read {
        r.process.ppid = pid_of.get(&r.host_ppid).copied().unwrap_or(0);
    }
    read.sort_by_key(|r| r.process.pid);
    read
}

impl Sandbox {
    /// The processes running in the sandbox, by pid.
    pub async fn ps(&self) -> Result<Vec<RunningProcess>> {
        let (cgroup, init, uid) = (self.cgroup.clone(), self.init_pid(), self.uid());
        let listed = tokio::task::spawn_blocking(move || all(&cgroup, init, uid));
        let listed = listed.await.map_err(Error::internal)?;
        Ok(listed.into_iter().map(|r| r.process).collect())
    }

    /// SIGKILLs the process the sandbox knows as `pid` (not its init: delete the sandbox).
    pub async fn kill_pid(&self, pid: i32) -> Result<()> {
        if pid == 1 {
            return Err(Error::invalid(
                "pid 1 is the sandbox's init: stop or delete the sandbox instead",
            ));
        }
        let (cgroup, init, uid) = (self.cgroup.clone(), self.init_pid(), self.uid());
        let killed = tokio::task::spawn_blocking(move || {
            let found = all(&cgroup, init, uid)
                .into_iter()
                .find(|r| r.process.pid == pid);
            let found = found.ok_or_else(|| Error::not_found("process", pid.to_string()))?;
            // Through a pidfd, after checking it is still the same process: a pid freed and
            // taken by another process meanwhile is not signalled.
            let pidfd = cella_jail::sys::pidfd_open(found.host_pid)
                .map_err(|_| Error::not_found("process", pid.to_string()))?;
            if read(found.host_pid).is_none_or(|r| r.process.pid != pid) {
                return Err(Error::not_found("process", pid.to_string()));
            }
            cella_jail::sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL)
                .map_err(|_| Error::not_found("process", pid.to_string()))
        });
        killed.await.map_err(Error::internal)?
    }
}
