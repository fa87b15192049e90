//! What the kernel offers, checked once at start-up.
//!
//! Hard requirements fail with a message that says what is missing and why cella needs it;
//! optional features (Landlock) are reported with the level found.

use std::fs;
use std::path::Path;

use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct Features {
    pub kernel: String,
    /// Landlock ABI version, 0 when unavailable.
    pub landlock_abi: i64,
    pub seccomp_actions: String,
    /// A cgroup mount has `favordynmods`: moving a process between cgroups (each exec joins
    /// its own) no longer waits for an RCU grace period, ~10 ms, after an idle moment.
    pub favor_dynmods: bool,
}

impl Features {
    /// What the sandboxes' Landlock domain covers on this kernel.
    pub fn landlock_covers(&self) -> &'static str {
        match self.landlock_abi {
            0 => "nothing: Landlock is unavailable",
            1..=5 => "device nodes refused; signals and abstract UNIX sockets not scoped (ABI 6)",
            _ => "device nodes refused; signals and abstract UNIX sockets scoped to the sandbox",
        }
    }

    pub fn summary(&self) -> String {
        let landlock = match self.landlock_abi {
            0 => "unavailable".to_string(),
            abi => format!("ABI {abi}"),
        };
        let migrations = if self.favor_dynmods {
            "fast (favordynmods)"
        } else {
            "slow after idle (no favordynmods; see the README)"
        };
        format!(
            "kernel {}; namespaces mnt,pid,ipc,uts,net,cgroup; overlayfs; openat2; pidfd; seccomp ({}); landlock {}; cgroup migrations {}",
            self.kernel, self.seccomp_actions, landlock, migrations
        )
    }
}

pub fn probe() -> Result<Features> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::Unsupported(
            "cella must run as root: it creates namespaces, mounts and cgroups for each sandbox"
                .into(),
        ));
    }
    for ns in ["mnt", "pid", "ipc", "uts", "net", "cgroup"] {
        if !Path::new("/proc/self/ns").join(ns).exists() {
            return Err(Error::Unsupported(format!(
                "the kernel has no {ns} namespaces (CONFIG_{}_NS): sandboxes cannot be isolated",
                ns.to_uppercase()
            )));
        }
    }
    let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    for (fs_name, why) in [
        ("overlay", "each sandbox's root is an overlay of its image"),
        ("tmpfs", "each sandbox's writable layer is a tmpfs"),
        ("devpts", "sandboxes get a private pty instance"),
    ] {
        if !filesystems.split_whitespace().any(|f| f == fs_name) {
            return Err(Error::Unsupported(format!(
                "the kernel has no {fs_name} filesystem: {why}"
            )));
        }
    }
    let seccomp_actions = fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail")
        .map_err(|_| {
            Error::Unsupported(
                "the kernel has no seccomp filter support (CONFIG_SECCOMP_FILTER)".into(),
            )
        })?
        .trim()
        .to_string();
    if !seccomp_actions.contains("kill_process") || !seccomp_actions.contains("errno") {
        return Err(Error::Unsupported(format!(
            "seccomp lacks kill_process/errno actions ({seccomp_actions})"
        )));
    }
    require_syscall("openat2", "symlink-safe access to sandbox files", || {
        // openat2 with a NULL how must fail with EFAULT, not ENOSYS.
        // SAFETY: the kernel validates the pointers and returns an error.
        unsafe {
            libc::syscall(
                libc::SYS_openat2,
                libc::AT_FDCWD,
                c"/".as_ptr(),
                std::ptr::null::<u8>(),
                24,
            )
        }
    })?;
    require_syscall(
        "pidfd_open",
        "race-free signalling of sandbox inits",
        || {
            // SAFETY: plain syscall on our own pid.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
            if fd >= 0 {
                // SAFETY: closing the descriptor we just opened.
                unsafe { libc::close(fd as i32) };
            }
            fd
        },
    )?;
    // SAFETY: landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION) only queries.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0,
            1u32,
        )
    };
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    Ok(Features {
        kernel,
        landlock_abi: abi.max(0),
        seccomp_actions,
        favor_dynmods: crate::cgroup::favor_dynmods(),
    })
}

fn require_syscall(name: &str, why: &str, call: impl FnOnce() -> libc::c_long) -> Result<()> {
    if call() == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
        return Err(Error::Unsupported(format!(
            "the kernel has no {name}(2), needed for {why} (Linux ≥ 5.6)"
        )));
    }
    Ok(())
}

/// Raises the soft limit on open files to the hard one (the server holds descriptors for
/// every connection and sandbox) and checks that sandboxes can get `per_sandbox`: no process
/// of theirs can raise its limit above the hard limit it inherits from the server.
pub fn raise_open_files(per_sandbox: u64) -> Result<u64> {
    let (_, hard) =
        crate::sys::get_rlimit(libc::RLIMIT_NOFILE).map_err(|e| Error::sys("getrlimit", e))?;
    crate::sys::set_rlimit(libc::RLIMIT_NOFILE, hard, hard)
        .map_err(|e| Error::sys("setrlimit open files", e))?;
    if hard < per_sandbox {
        return Err(Error::Unsupported(format!(
            "the hard limit on open files ({hard}) is below sandbox.open_files ({per_sandbox}): \
             raise it (ulimit -Hn, systemd's LimitNOFILE=) or lower sandbox.open_files"
        )));
    }
    Ok(hard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_files_go_up_to_the_hard_limit_and_no_further() {
        let hard = raise_open_files(1).unwrap();
        let limits = crate::sys::get_rlimit(libc::RLIMIT_NOFILE).unwrap();
        assert_eq!(limits, (hard, hard));
        if hard < u64::MAX {
            let e = raise_open_files(hard + 1).unwrap_err().to_string();
            assert!(e.contains("below sandbox.open_files"), "{e}");
        }
    }
}
