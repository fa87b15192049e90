//! Thin, checked wrappers over the raw syscalls the jail needs.
//!
//! Every function here is a direct syscall with its error turned into `io::Error`; none of them
//! allocates except to build a C string. They are safe to call in a freshly forked child of a
//! single-threaded process (the spawner and the sandbox init are single-threaded by design).

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Turns a `-1` return into the current `errno`.
pub fn cvt<T: PartialEq + From<i8>>(ret: T) -> io::Result<T> {
    if ret == T::from(-1) {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub fn cstring(s: impl AsRef<OsStr>) -> io::Result<CString> {
    CString::new(s.as_ref().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn opt_cstring(s: Option<&str>) -> io::Result<Option<CString>> {
    s.map(cstring).transpose()
}

fn ptr_or_null(s: &Option<CString>) -> *const libc::c_char {
    s.as_ref().map_or(std::ptr::null(), |c| c.as_ptr())
}

pub fn mount(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = opt_cstring(source)?;
    let target = cstring(target)?;
    let fstype = opt_cstring(fstype)?;
    let data = opt_cstring(data)?;
    // SAFETY: all pointers are valid NUL-terminated strings or null, as mount(2) accepts.
    cvt(unsafe {
        libc::mount(
            ptr_or_null(&source),
            target.as_ptr(),
            ptr_or_null(&fstype),
            flags,
            ptr_or_null(&data).cast(),
        )
    })
    .map(drop)
}

pub fn umount_detach(target: &Path) -> io::Result<()> {
    let target = cstring(target)?;
    // SAFETY: valid C string.
    cvt(unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) }).map(drop)
}

/// `pivot_root(".", ".")`: the caller must already be in the new root. The old root ends up
/// stacked on top of `/` and is detached by the caller.
pub fn pivot_root_here() -> io::Result<()> {
    let dot = cstring(".")?;
    // SAFETY: valid C strings; pivot_root has no libc wrapper.
    cvt(unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) }).map(drop)
}

pub fn chdir(path: &Path) -> io::Result<()> {
    let path = cstring(path)?;
    // SAFETY: valid C string.
    cvt(unsafe { libc::chdir(path.as_ptr()) }).map(drop)
}

pub fn mkdir(path: &Path, mode: libc::mode_t) -> io::Result<()> {
    let path = cstring(path)?;
    // SAFETY: valid C string.
    match cvt(unsafe { libc::mkdir(path.as_ptr(), mode) }) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r.map(drop),
    }
}

pub fn chmod(path: &Path, mode: libc::mode_t) -> io::Result<()> {
    let path = cstring(path)?;
    // SAFETY: valid C string.
    cvt(unsafe { libc::chmod(path.as_ptr(), mode) }).map(drop)
}

pub fn lchown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let path = cstring(path)?;
    // SAFETY: valid C string.
    cvt(unsafe { libc::lchown(path.as_ptr(), uid, gid) }).map(drop)
}

pub fn mknod(path: &Path, mode: libc::mode_t, dev: libc::dev_t) -> io::Result<()> {
    let path = cstring(path)?;
    // SAFETY: valid C string.
    cvt(unsafe { libc::mknod(path.as_ptr(), mode, dev) }).map(drop)
}

pub fn symlink(target: &str, link: &Path) -> io::Result<()> {
    let target = cstring(target)?;
    let link = cstring(link)?;
    // SAFETY: valid C strings.
    cvt(unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) }).map(drop)
}

pub fn setxattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let path = cstring(path)?;
    let name = cstring(name)?;
    // SAFETY: valid C strings and a byte buffer of the given length.
    cvt(unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
    .map(drop)
}

pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: pointer and length describe a valid buffer.
    cvt(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
}

pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall.
    cvt(unsafe { libc::unshare(flags) }).map(drop)
}

pub fn setns(fd: BorrowedFd<'_>, nstype: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall on a borrowed fd.
    cvt(unsafe { libc::setns(fd.as_raw_fd(), nstype) }).map(drop)
}

pub fn open(path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    openat(None, path, flags, 0)
}

pub fn openat(
    dir: Option<BorrowedFd<'_>>,
    path: &Path,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    let path = cstring(path)?;
    let dirfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: valid C string; the returned fd is fresh and owned by us.
    let fd = cvt(unsafe { libc::openat(dirfd, path.as_ptr(), flags | libc::O_CLOEXEC, mode) })?;
    // SAFETY: `fd` was just returned by openat and is not owned elsewhere.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn write_all(fd: BorrowedFd<'_>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        // SAFETY: pointer and length describe a valid buffer.
        match cvt(unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) }) {
            Ok(n) => data = &data[n as usize..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One `write`: how much of `data` went (a non-blocking descriptor may take part of it).
pub fn write(fd: BorrowedFd<'_>, data: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: pointer and length describe a valid buffer.
        match cvt(unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) }) {
            Ok(n) => return Ok(n as usize),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: pointer and length describe a valid, writable buffer.
        match cvt(unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) }) {
            Ok(n) => return Ok(n as usize),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Makes this process, and what it forks, the first the OOM killer takes: before the
/// sandbox's init (whose death would end the sandbox), and before anything on the host.
/// Raising the score needs no privilege; the sandbox's code runs with it (`child.rs`,
/// `zygote.py`).
pub fn first_to_oom_kill() -> io::Result<()> {
    std::fs::write("/proc/self/oom_score_adj", "1000")
}

pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two descriptors.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both fds were just created and are owned by us.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A pipe whose inode belongs to `uid`, as the stdio of a program running as `uid` would
/// (its shell's pipes would be its own): the program may then reopen it by name
/// (`/dev/stdin` is `/proc/self/fd/0`), which the kernel checks against the inode's owner.
pub fn pipe_owned_by(uid: u32) -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = pipe()?;
    // SAFETY: fchown on a descriptor we own.
    cvt(unsafe { libc::fchown(r.as_raw_fd(), uid, uid) })?;
    Ok((r, w))
}

/// Sets the capacity of the pipe `fd` is an end of, in bytes.
pub fn set_pipe_size(fd: BorrowedFd<'_>, bytes: libc::c_int) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller holds.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, bytes) }).map(drop)
}

/// Makes malloc serve every block of `bytes` or more by its own mmap, so that freeing it
/// returns it to the system. To be called before any other thread exists.
pub fn set_mmap_threshold(bytes: libc::c_int) {
    // SAFETY: sets a malloc tunable; the caller is still single-threaded.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, bytes) };
}

/// This thread's file-system identity (`setfsuid`, `setfsgid`) switched to another user's
/// until dropped: its permission checks are then that user's, without root's file
/// capabilities, which the kernel takes away while the fsuid is not 0 and gives back after.
/// Only the calling thread's: the process's other threads keep theirs, but one it starts
/// meanwhile would copy it, so start none.
pub struct FsIdentity {
    uid: u32,
    gid: u32,
}

impl FsIdentity {
    pub fn switch_to(uid: u32, gid: u32) -> io::Result<FsIdentity> {
        // SAFETY: setfsgid and setfsuid change only the calling thread's file-system ids;
        // each returns the previous id whether or not it succeeded.
        let (old_gid, old_uid) = unsafe { (libc::setfsgid(gid), libc::setfsuid(uid)) };
        let previous = FsIdentity {
            uid: old_uid as u32,
            gid: old_gid as u32,
        };
        // An invalid id changes nothing and returns the current one: whether the switch took.
        // SAFETY: as above.
        let now = unsafe { (libc::setfsgid(u32::MAX), libc::setfsuid(u32::MAX)) };
        if now != (gid as i32, uid as i32) {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        Ok(previous)
    }
}

impl Drop for FsIdentity {
    fn drop(&mut self) {
        // SAFETY: as in `switch_to`, back to the ids this thread had.
        unsafe {
            libc::setfsuid(self.uid);
            libc::setfsgid(self.gid);
        }
    }
}

/// Leaves the process with no supplementary groups, which root has no use for and which
/// would otherwise count in the checks made as a sandbox's user ([`FsIdentity`]).
pub fn clear_supplementary_groups() -> io::Result<()> {
    // SAFETY: an empty list; glibc applies it to every thread.
    cvt(unsafe { libc::setgroups(0, std::ptr::null()) }).map(drop)
}

pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two descriptors.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: both fds were just created and are owned by us.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Raises a socket's send buffer so one message can carry a large argv (root may exceed
/// `wmem_max` with `SO_SNDBUFFORCE`).
pub fn set_sndbuf(fd: BorrowedFd<'_>, bytes: i32) -> io::Result<()> {
    // SAFETY: the option value is a valid i32 of the stated size.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            (&bytes as *const i32).cast(),
            std::mem::size_of::<i32>() as u32,
        )
    })
    .map(drop)
}

pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fcntl on a valid fd.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    // SAFETY: fcntl on a valid fd.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) }).map(drop)
}

pub fn kill(pid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall.
    cvt(unsafe { libc::kill(pid, sig) }).map(drop)
}

pub fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; on success it returns a new descriptor that nothing else owns.
    let fd = cvt(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: see above.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall on a borrowed fd; null siginfo is allowed.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    })
    .map(drop)
}

pub fn set_pdeathsig(sig: libc::c_int) -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    cvt(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) }).map(drop)
}

pub fn set_name(name: &str) {
    if let Ok(name) = cstring(name) {
        // SAFETY: PR_SET_NAME reads at most 16 bytes of a NUL-terminated string.
        unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
    }
}

/// Closes every descriptor from `from` upward except those in `keep`.
pub fn close_fds_except(from: RawFd, keep: &[RawFd]) {
    let mut keep: Vec<RawFd> = keep.iter().copied().filter(|&fd| fd >= from).collect();
    keep.sort_unstable();
    let mut lo = from as u32;
    for fd in keep {
        let fd = fd as u32;
        if fd > lo {
            // SAFETY: closing descriptors we own; none of them is referenced afterwards.
            unsafe { libc::syscall(libc::SYS_close_range, lo, fd - 1, 0) };
        }
        lo = fd + 1;
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, lo, u32::MAX, 0) };
}

/// Blocks `sigs` for the calling thread and returns a signalfd that reports them.
pub fn signalfd(sigs: &[libc::c_int]) -> io::Result<OwnedFd> {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in sigs {
            libc::sigaddset(&mut set, s);
        }
        cvt(libc::sigprocmask(
            libc::SIG_BLOCK,
            &set,
            std::ptr::null_mut(),
        ))?;
        let fd = cvt(libc::signalfd(
            -1,
            &set,
            libc::SFD_CLOEXEC | libc::SFD_NONBLOCK,
        ))?;
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Empties a signalfd's queue; the caller then reaps with `waitpid(WNOHANG)`.
pub fn drain_signalfd(fd: BorrowedFd<'_>) {
    let mut buf = [0u8; std::mem::size_of::<libc::signalfd_siginfo>() * 8];
    while matches!(read(fd, &mut buf), Ok(n) if n > 0) {}
}

/// The longest string `execve` passes on, its NUL included: the kernel's `MAX_ARG_STRLEN`,
/// 32 pages.
pub fn max_arg_strlen() -> usize {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    32 * usize::try_from(page).unwrap_or(4096)
}

/// Signals sent to the server's whole process group (a Ctrl-C, a service manager's stop,
/// a closed terminal). They are the server's to act on: it shuts down gracefully, and its
/// helpers (the spawner, the zygotes) ignore them and go when it goes.
pub const SERVER_GROUP_SIGNALS: [libc::c_int; 4] =
    [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// Ignores `sigs` (the disposition is inherited by children, until an exec'd program's
/// `reset_signals`).
pub fn ignore_signals(sigs: &[libc::c_int]) {
    for &sig in sigs {
        // SAFETY: SIG_IGN is a valid disposition for any catchable signal.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
}

/// Unblocks all signals and resets dispositions, as an exec'd program expects.
pub fn reset_signals() {
    // SAFETY: resetting handlers to SIG_DFL and clearing the mask are always valid.
    unsafe {
        for sig in 1..libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Waits until some of `fds` are readable (or closed), at most `timeout_ms` (-1: forever);
/// says which. An interrupted wait reports none.
pub fn poll_readable<const N: usize>(
    fds: [BorrowedFd<'_>; N],
    timeout_ms: i32,
) -> io::Result<[bool; N]> {
    let mut pfds = fds.map(|fd| libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    });
    // SAFETY: `pfds` is a valid array of pollfd.
    match cvt(unsafe { libc::poll(pfds.as_mut_ptr(), N as libc::nfds_t, timeout_ms) }) {
        Ok(_) => Ok(pfds.map(|p| p.revents != 0)),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok([false; N]),
        Err(e) => Err(e),
    }
}

/// Brings up the loopback interface of the current network namespace.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: a throwaway socket used only for the SIOC[GS]IFFLAGS ioctls on a zeroed ifreq.
    unsafe {
        let sock = cvt(libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            0,
        ))?;
        let sock = OwnedFd::from_raw_fd(sock);
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        cvt(libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req))?;
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        cvt(libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req))?;
    }
    Ok(())
}

/// The (soft, hard) limits on `resource`.
pub fn get_rlimit(resource: libc::__rlimit_resource_t) -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    cvt(unsafe { libc::getrlimit(resource, &mut lim) })?;
    Ok((lim.rlim_cur, lim.rlim_max))
}

pub fn set_rlimit(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: valid rlimit struct.
    cvt(unsafe { libc::setrlimit(resource, &lim) }).map(drop)
}

pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and runs no atexit handlers, which is what a forked child wants.
    unsafe { libc::_exit(code) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real, effective, saved and file-system ids of the calling thread.
    fn thread_ids(field: &str) -> Vec<u32> {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        line.split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap())
            .collect()
    }

    #[test]
    fn an_fs_identity_holds_for_its_thread_until_dropped() {
        if thread_ids("Uid:")[1] != 0 {
            return; // switching needs root
        }
        // A thread that already runs (a new one would copy the switched ids of its creator).
        let (ask, asked) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || {
            asked.recv().unwrap();
            thread_ids("Uid:")[3]
        });
        let user = FsIdentity::switch_to(4_242_424, 4_242_425).unwrap();
        assert_eq!(thread_ids("Uid:"), [0, 0, 0, 4_242_424]);
        assert_eq!(thread_ids("Gid:")[3], 4_242_425);
        ask.send(()).unwrap();
        assert_eq!(other.join().unwrap(), 0, "another thread keeps root's");
        drop(user);
        assert_eq!(thread_ids("Uid:"), [0, 0, 0, 0]);
        assert_eq!(thread_ids("Gid:")[3], 0);
    }
}
