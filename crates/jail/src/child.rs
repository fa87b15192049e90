//! The last steps before user code runs: in a child forked by the sandbox init.
//!
//! Order matters and follows runc/youki: join the sandbox's memory cgroup (the init is not in
//! it) and the exec's cgroup (still root), new session and stdio, drop to the sandbox uid
//! (which clears every capability), chdir as that user, rlimits, `no_new_privs`, mark every
//! other descriptor close-on-exec, then `execve`. The seccomp
//! filters are already in force: the init installed them and every child inherits them.
//! Any failure is written to `err` (close-on-exec, so success is EOF) and the child exits 127:
//! one byte saying whether the program itself was not found, then the message.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use crate::proto::ExecSpec;
use crate::sys::{self, cvt};

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub struct ChildFds<'a> {
    /// stdin, stdout, stderr.
    pub stdio: [OwnedFd; 3],
    /// `cgroup.procs` of the sandbox's memory cgroup, when the init is not in it.
    pub memory_procs: Option<BorrowedFd<'a>>,
    /// `cgroup.procs` of the exec's own cgroup.
    pub cgroup_procs: OwnedFd,
    /// On v2, the sandbox's cgroup directory, whose process limit a process moving in can
    /// pass (see `cgroup::over_pids_limit`).
    pub v2_sandbox_cgroup: Option<BorrowedFd<'a>>,
    /// Where a setup failure is reported.
    pub err: OwnedFd,
}

pub fn exec(spec: &ExecSpec, uid: u32, fds: ChildFds) -> ! {
    let err = fds.err.as_fd();
    let (stage, e) = match setup_and_exec(spec, uid, &fds) {
        Err(failure) => failure,
        Ok(never) => match never {},
    };
    let missing = stage.starts_with("exec ") && e.raw_os_error() == Some(libc::ENOENT);
    let mut report = vec![u8::from(missing)];
    report.extend_from_slice(format!("{stage}: {e}").as_bytes());
    let _ = sys::write_all(err, &report);
    sys::exit_now(127)
}

type Failure = (String, io::Error);

fn at<T>(stage: &str, r: io::Result<T>) -> Result<T, Failure> {
    r.map_err(|e| (stage.to_string(), e))
}

fn setup_and_exec(
    spec: &ExecSpec,
    uid: u32,
    fds: &ChildFds,
) -> Result<std::convert::Infallible, Failure> {
    if let Some(memory) = fds.memory_procs {
        at(
            "join the sandbox's memory cgroup",
            sys::write_all(memory, b"0"),
        )?;
    }
    at(
        "join exec cgroup",
        sys::write_all(fds.cgroup_procs.as_fd(), b"0"),
    )?;
    // Forked in the init's cgroup, outside the sandbox's: refused as a fork in it would be.
    if let Some(sandbox) = fds.v2_sandbox_cgroup
        && at("pids.current", crate::cgroup::over_pids_limit(sandbox))?
    {
        return Err(("fork".into(), io::Error::from_raw_os_error(libc::EAGAIN)));
    }
    sys::reset_signals();
    // SAFETY: setsid has no memory-safety preconditions.
    at("setsid", cvt(unsafe { libc::setsid() }))?;
    for (target, fd) in fds.stdio.iter().enumerate() {
        // SAFETY: dup2 onto 0..2 of descriptors we own.
        at(
            "dup2 stdio",
            cvt(unsafe { libc::dup2(fd.as_raw_fd(), target as i32) }),
        )?;
    }
    if spec.tty {
        // SAFETY: stdin is the pty slave; we are a session leader without a controlling tty.
        at(
            "set controlling tty",
            cvt(unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) }),
        )?;
    }
    at("oom_score_adj", sys::first_to_oom_kill())?;
    drop_privileges(uid)?;
    at(
        &format!("chdir {}", spec.cwd),
        sys::chdir(Path::new(&spec.cwd)),
    )?;
    // SAFETY: umask only changes this process's file mode mask.
    unsafe { libc::umask(0o022) };
    for &(resource, soft, hard) in &spec.rlimits {
        at("setrlimit", sys::set_rlimit(resource, soft, hard))?;
    }
    at("setrlimit core", sys::set_rlimit(libc::RLIMIT_CORE, 0, 0))?;

    let argv = cstrings(&spec.argv)?;
    let envp = cstrings(&spec.env)?;
    let program = at(
        &format!("exec {:?}", spec.argv.first().map_or("", String::as_str)),
        resolve(&spec.argv, &spec.env),
    )?;
    // SAFETY: prctl with integer arguments.
    at(
        "no_new_privs",
        cvt(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }),
    )?;
    // Everything but stdio and `err` (already close-on-exec) must not survive the exec.
    // SAFETY: close_range with CLOEXEC only sets flags on our own descriptors.
    at(
        "close_range",
        cvt(unsafe {
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            )
        }),
    )?;

    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|a| a.as_ptr()).collect();
    envp_ptrs.push(std::ptr::null());
    // SAFETY: NULL-terminated arrays of valid C strings that outlive the call.
    unsafe { libc::execve(program.as_ptr(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr()) };
    Err((
        format!("exec {:?}", spec.argv[0]),
        io::Error::last_os_error(),
    ))
}

/// Becomes the sandbox user. Changing every uid from 0 clears all capability sets.
fn drop_privileges(uid: u32) -> Result<(), Failure> {
    // SAFETY: plain credential syscalls.
    unsafe {
        at("setgroups", cvt(libc::setgroups(0, std::ptr::null())))?;
        at("setresgid", cvt(libc::setresgid(uid, uid, uid)))?;
        at("setresuid", cvt(libc::setresuid(uid, uid, uid)))?;
    }
    Ok(())
}

fn cstrings(items: &[String]) -> Result<Vec<CString>, Failure> {
    items
        .iter()
        .map(|s| at("argument", sys::cstring(s)))
        .collect()
}

/// Finds the program as `execvp` would, using the exec's own `PATH`. Runs as the sandbox user,
/// so `access` answers for that user.
fn resolve(argv: &[String], env: &[String]) -> io::Result<CString> {
    let name = argv
        .first()
        .filter(|a| !a.is_empty())
        .ok_or(io::ErrorKind::InvalidInput)?;
    if name.contains('/') {
        return sys::cstring(name);
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    let mut denied = false;
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = sys::cstring(format!("{dir}/{name}"))?;
        // SAFETY: stat into a zeroed struct; access with a valid C string.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::stat(candidate.as_ptr(), &mut st) != 0
                || st.st_mode & libc::S_IFMT != libc::S_IFREG
            {
                continue;
            }
            if libc::access(candidate.as_ptr(), libc::X_OK) == 0 {
                return Ok(candidate);
            }
        }
        denied = true;
    }
    Err(io::Error::from_raw_os_error(if denied {
        libc::EACCES
    } else {
        libc::ENOENT
    }))
}
