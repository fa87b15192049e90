//! The seccomp policy for user code, compiled once into BPF.
//!
//! It starts from Docker's default allowlist (the de-facto baseline that Python, Node, the JVM
//! and Go all run under) and removes what a sandbox never needs: namespace and mount creation,
//! `io_uring`, `bpf`, `perf_event_open`, `ptrace` and cross-process memory access, keyrings,
//! netlink other than `NETLINK_ROUTE`, raw packet and vsock sockets,
//! `userfaultfd`, module and kexec loading, time setting and `TIOCSTI`/`TIOCLINUX` injection.
//! The policy is three stacked filters, because one seccompiler filter has one action:
//!
//! 1. the allowlist: anything not listed fails with `EPERM`;
//! 2. calls that must look absent (`clone3`, `io_uring_*`) fail with `ENOSYS`, so libc, libuv
//!    and tokio fall back to `clone` and epoll;
//! 3. calls that only an exploit makes kill the process.
//!
//! The kernel runs every filter and keeps the most severe verdict, so 3 beats 2 beats 1.
//! A foreign architecture (i386 via `int 0x80`) is killed by seccompiler's arch check.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

use crate::{Error, Result};

/// The compiled filters, installed in order by [`Policy::apply`].
#[derive(Clone)]
pub struct Policy {
    filters: Vec<BpfProgram>,
}

impl Policy {
    pub fn compile() -> Result<Policy> {
        let arch = TargetArch::x86_64;
        let build = |rules, mismatch, matched| -> Result<BpfProgram> {
            let filter = SeccompFilter::new(rules, mismatch, matched, arch)
                .map_err(|e| Error::Seccomp(e.to_string()))?;
            filter
                .try_into()
                .map_err(|e: seccompiler::BackendError| Error::Seccomp(e.to_string()))
        };
        let filters = vec![
            build(
                allowlist()?,
                SeccompAction::Errno(libc::EPERM as u32),
                SeccompAction::Allow,
            )?,
            build(
                unconditional(ABSENT),
                SeccompAction::Allow,
                SeccompAction::Errno(libc::ENOSYS as u32),
            )?,
            build(
                unconditional(EXPLOIT_ONLY),
                SeccompAction::Allow,
                SeccompAction::KillProcess,
            )?,
        ];
        Ok(Policy { filters })
    }

    /// The filters as raw `sock_filter` arrays (8 bytes per instruction, native endian), for
    /// installing them from another program (the Python zygote).
    pub fn to_bytes(&self) -> Vec<Vec<u8>> {
        self.filters
            .iter()
            .map(|prog| {
                prog.iter()
                    .flat_map(|i| {
                        let mut b = Vec::with_capacity(8);
                        b.extend_from_slice(&i.code.to_ne_bytes());
                        b.push(i.jt);
                        b.push(i.jf);
                        b.extend_from_slice(&i.k.to_ne_bytes());
                        b
                    })
                    .collect()
            })
            .collect()
    }

    /// Installs the filters on the calling thread. `no_new_privs` must already be set.
    /// Only syscalls: safe in a forked child.
    pub fn apply(&self) -> std::io::Result<()> {
        for filter in &self.filters {
            seccompiler::apply_filter(filter).map_err(std::io::Error::other)?;
        }
        Ok(())
    }
}

fn unconditional(calls: &[i64]) -> BTreeMap<i64, Vec<SeccompRule>> {
    calls.iter().map(|&nr| (nr, vec![])).collect()
}

fn cond(arg: u8, op: Op, value: u64) -> Result<SeccompCondition> {
    SeccompCondition::new(arg, Len::Dword, op, value).map_err(|e| Error::Seccomp(e.to_string()))
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule> {
    SeccompRule::new(conditions).map_err(|e| Error::Seccomp(e.to_string()))
}

fn allowlist() -> Result<BTreeMap<i64, Vec<SeccompRule>>> {
    let mut rules = unconditional(ALLOWED);

    // socket(2): UNIX and IP families, and netlink only for NETLINK_ROUTE, which
    // getifaddrs(3) needs (libzmq, Java, Node list interfaces) and which an unprivileged user
    // can only read; no other netlink protocol (netfilter, audit, ...), no packet, no vsock.
    let families = [libc::AF_UNIX, libc::AF_INET, libc::AF_INET6];
    let mut socket_rules = families
        .iter()
        .map(|&af| rule(vec![cond(0, Op::Eq, af as u64)?]))
        .collect::<Result<Vec<_>>>()?;
    socket_rules.push(rule(vec![
        cond(0, Op::Eq, libc::AF_NETLINK as u64)?,
        cond(2, Op::Eq, libc::NETLINK_ROUTE as u64)?,
    ])?);
    rules.insert(libc::SYS_socket, socket_rules);

    // ioctl(2): everything but terminal input injection. The comparison is on the low 32 bits
    // (Dword), so setting high bits of the request number does not get around it.
    rules.insert(
        libc::SYS_ioctl,
        vec![rule(vec![
            cond(1, Op::Ne, libc::TIOCSTI)?,
            cond(1, Op::Ne, libc::TIOCLINUX)?,
        ])?],
    );

    // clone(2): threads and processes, never new namespaces.
    let ns_flags = (libc::CLONE_NEWNS
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUSER
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWCGROUP) as u64;
    rules.insert(
        libc::SYS_clone,
        vec![rule(vec![cond(0, Op::MaskedEq(ns_flags), 0)?])?],
    );

    // personality(2): only the values Docker allows (query, Linux, UNAME26, no-ASLR).
    let personalities = [0u64, 0x0008, 0x20000, 0x20008, 0xffff_ffff];
    let personality_rules = personalities
        .iter()
        .map(|&p| rule(vec![cond(0, Op::Eq, p)?]))
        .collect::<Result<Vec<_>>>()?;
    rules.insert(libc::SYS_personality, personality_rules);
    Ok(rules)
}

/// Must look unimplemented so that callers fall back to an allowed alternative.
const ABSENT: &[i64] = &[
    libc::SYS_clone3,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
];

/// No legitimate sandboxed program calls these; a process that does is killed.
const EXPLOIT_ONLY: &[i64] = &[
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_open_by_handle_at,
    libc::SYS_userfaultfd,
    libc::SYS_bpf,
];

/// Docker's default allowlist (x86_64), less the denies listed in the module docs. Calls not
/// here (mount, unshare, setns, pivot_root, chroot, ptrace, process_vm_*, kcmp, pidfd_getfd,
/// perf_event_open, keyctl, add_key, request_key, acct, swapon/off, reboot, settimeofday,
/// clock_settime/adjtime, adjtimex, quotactl, syslog, the new mount API, ...) get `EPERM`.
const ALLOWED: &[i64] = &[
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_access,
    libc::SYS_alarm,
    libc::SYS_arch_prctl,
    libc::SYS_bind,
    libc::SYS_brk,
    libc::SYS_capget,
    libc::SYS_capset,
    libc::SYS_chdir,
    libc::SYS_chmod,
    libc::SYS_chown,
    libc::SYS_clock_getres,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_close,
    libc::SYS_close_range,
    libc::SYS_connect,
    libc::SYS_copy_file_range,
    libc::SYS_creat,
    libc::SYS_dup,
    libc::SYS_dup2,
    libc::SYS_dup3,
    libc::SYS_epoll_create,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_epoll_wait,
    libc::SYS_eventfd,
    libc::SYS_eventfd2,
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_fadvise64,
    libc::SYS_fallocate,
    libc::SYS_fchdir,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_fchown,
    libc::SYS_fchownat,
    libc::SYS_fcntl,
    libc::SYS_fdatasync,
    libc::SYS_fgetxattr,
    libc::SYS_flistxattr,
    libc::SYS_flock,
    libc::SYS_fork,
    libc::SYS_fremovexattr,
    libc::SYS_fsetxattr,
    libc::SYS_fstat,
    libc::SYS_fstatfs,
    libc::SYS_fsync,
    libc::SYS_ftruncate,
    libc::SYS_futex,
    libc::SYS_futex_waitv,
    libc::SYS_futimesat,
    libc::SYS_get_mempolicy,
    libc::SYS_get_robust_list,
    libc::SYS_get_thread_area,
    libc::SYS_getcpu,
    libc::SYS_getcwd,
    libc::SYS_getdents,
    libc::SYS_getdents64,
    libc::SYS_getegid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getgroups,
    libc::SYS_getitimer,
    libc::SYS_getpeername,
    libc::SYS_getpgid,
    libc::SYS_getpgrp,
    libc::SYS_getpid,
    libc::SYS_getppid,
    libc::SYS_getpriority,
    libc::SYS_getrandom,
    libc::SYS_getresgid,
    libc::SYS_getresuid,
    libc::SYS_getrlimit,
    libc::SYS_getrusage,
    libc::SYS_getsid,
    libc::SYS_getsockname,
    libc::SYS_getsockopt,
    libc::SYS_gettid,
    libc::SYS_gettimeofday,
    libc::SYS_getuid,
    libc::SYS_getxattr,
    libc::SYS_inotify_add_watch,
    libc::SYS_inotify_init,
    libc::SYS_inotify_init1,
    libc::SYS_inotify_rm_watch,
    libc::SYS_io_cancel,
    libc::SYS_io_destroy,
    libc::SYS_io_getevents,
    333, // io_pgetevents (no libc constant)
    libc::SYS_io_setup,
    libc::SYS_io_submit,
    libc::SYS_ioprio_get,
    libc::SYS_ioprio_set,
    libc::SYS_kill,
    libc::SYS_landlock_add_rule,
    libc::SYS_landlock_create_ruleset,
    libc::SYS_landlock_restrict_self,
    libc::SYS_lchown,
    libc::SYS_lgetxattr,
    libc::SYS_link,
    libc::SYS_linkat,
    libc::SYS_listen,
    libc::SYS_listxattr,
    libc::SYS_llistxattr,
    libc::SYS_lremovexattr,
    libc::SYS_lseek,
    libc::SYS_lsetxattr,
    libc::SYS_lstat,
    libc::SYS_madvise,
    libc::SYS_mbind,
    libc::SYS_membarrier,
    libc::SYS_memfd_create,
    libc::SYS_mincore,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_mknod,
    libc::SYS_mknodat,
    libc::SYS_mlock,
    libc::SYS_mlock2,
    libc::SYS_mlockall,
    libc::SYS_mmap,
    libc::SYS_mprotect,
    libc::SYS_mq_getsetattr,
    libc::SYS_mq_notify,
    libc::SYS_mq_open,
    libc::SYS_mq_timedreceive,
    libc::SYS_mq_timedsend,
    libc::SYS_mq_unlink,
    libc::SYS_mremap,
    libc::SYS_msgctl,
    libc::SYS_msgget,
    libc::SYS_msgrcv,
    libc::SYS_msgsnd,
    libc::SYS_msync,
    libc::SYS_munlock,
    libc::SYS_munlockall,
    libc::SYS_munmap,
    libc::SYS_name_to_handle_at,
    libc::SYS_nanosleep,
    libc::SYS_newfstatat,
    libc::SYS_open,
    libc::SYS_openat,
    libc::SYS_openat2,
    libc::SYS_pause,
    libc::SYS_pidfd_open,
    libc::SYS_pidfd_send_signal,
    libc::SYS_pipe,
    libc::SYS_pipe2,
    libc::SYS_pkey_alloc,
    libc::SYS_pkey_free,
    libc::SYS_pkey_mprotect,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_prctl,
    libc::SYS_pread64,
    libc::SYS_preadv,
    libc::SYS_preadv2,
    libc::SYS_prlimit64,
    libc::SYS_process_mrelease,
    libc::SYS_pselect6,
    libc::SYS_pwrite64,
    libc::SYS_pwritev,
    libc::SYS_pwritev2,
    libc::SYS_read,
    libc::SYS_readahead,
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_readv,
    libc::SYS_recvfrom,
    libc::SYS_recvmmsg,
    libc::SYS_recvmsg,
    libc::SYS_remap_file_pages,
    libc::SYS_removexattr,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_restart_syscall,
    libc::SYS_rmdir,
    libc::SYS_rseq,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigpending,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigqueueinfo,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigsuspend,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_rt_tgsigqueueinfo,
    libc::SYS_sched_get_priority_max,
    libc::SYS_sched_get_priority_min,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_getattr,
    libc::SYS_sched_getparam,
    libc::SYS_sched_getscheduler,
    libc::SYS_sched_rr_get_interval,
    libc::SYS_sched_setaffinity,
    libc::SYS_sched_setattr,
    libc::SYS_sched_setparam,
    libc::SYS_sched_setscheduler,
    libc::SYS_sched_yield,
    libc::SYS_seccomp,
    libc::SYS_select,
    libc::SYS_semctl,
    libc::SYS_semget,
    libc::SYS_semop,
    libc::SYS_semtimedop,
    libc::SYS_sendfile,
    libc::SYS_sendmmsg,
    libc::SYS_sendmsg,
    libc::SYS_sendto,
    libc::SYS_set_mempolicy,
    libc::SYS_set_robust_list,
    libc::SYS_set_thread_area,
    libc::SYS_set_tid_address,
    libc::SYS_setfsgid,
    libc::SYS_setfsuid,
    libc::SYS_setgid,
    libc::SYS_setgroups,
    libc::SYS_setitimer,
    libc::SYS_setpgid,
    libc::SYS_setpriority,
    libc::SYS_setregid,
    libc::SYS_setresgid,
    libc::SYS_setresuid,
    libc::SYS_setreuid,
    libc::SYS_setrlimit,
    libc::SYS_setsid,
    libc::SYS_setsockopt,
    libc::SYS_setuid,
    libc::SYS_setxattr,
    libc::SYS_shmat,
    libc::SYS_shmctl,
    libc::SYS_shmdt,
    libc::SYS_shmget,
    libc::SYS_shutdown,
    libc::SYS_sigaltstack,
    libc::SYS_signalfd,
    libc::SYS_signalfd4,
    libc::SYS_socketpair,
    libc::SYS_splice,
    libc::SYS_stat,
    libc::SYS_statfs,
    libc::SYS_statx,
    libc::SYS_symlink,
    libc::SYS_symlinkat,
    libc::SYS_sync,
    libc::SYS_sync_file_range,
    libc::SYS_syncfs,
    libc::SYS_sysinfo,
    libc::SYS_tee,
    libc::SYS_tgkill,
    libc::SYS_time,
    libc::SYS_timer_create,
    libc::SYS_timer_delete,
    libc::SYS_timer_getoverrun,
    libc::SYS_timer_gettime,
    libc::SYS_timer_settime,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_gettime,
    libc::SYS_timerfd_settime,
    libc::SYS_times,
    libc::SYS_tkill,
    libc::SYS_truncate,
    libc::SYS_umask,
    libc::SYS_uname,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_utime,
    libc::SYS_utimensat,
    libc::SYS_utimes,
    libc::SYS_vfork,
    libc::SYS_vmsplice,
    libc::SYS_wait4,
    libc::SYS_waitid,
    libc::SYS_write,
    libc::SYS_writev,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_compiles_and_denies_are_not_allowed() {
        Policy::compile().unwrap();
        for denied in [
            libc::SYS_mount,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_ptrace,
            libc::SYS_keyctl,
            libc::SYS_perf_event_open,
            libc::SYS_pivot_root,
            libc::SYS_chroot,
        ] {
            assert!(
                !ALLOWED.contains(&denied),
                "syscall {denied} must not be allowlisted"
            );
        }
        for nr in ABSENT.iter().chain(EXPLOIT_ONLY) {
            assert!(
                !ALLOWED.contains(nr),
                "syscall {nr} is both allowed and denied"
            );
        }
    }
}
