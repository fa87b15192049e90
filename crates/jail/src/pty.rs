//! Pseudo-terminals inside a sandbox: a pair from the sandbox's own devpts instance, so the
//! terminal a session's shell sees is one of the sandbox's (`/dev/pts/N` there), never the
//! host's.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use crate::sys::{self, cvt};

/// Opens a pty pair in the devpts of the sandbox whose init is `pid`: the master (for the
/// server) and the slave (for the sandbox's process), owned by `uid`, `cols` × `rows`.
pub fn open_in(pid: i32, uid: u32, cols: u16, rows: u16) -> io::Result<(OwnedFd, OwnedFd)> {
    let ptmx = format!("/proc/{pid}/root/dev/pts/ptmx");
    let master = sys::open(
        Path::new(&ptmx),
        libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NONBLOCK,
    )?;
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int from a valid pointer.
    cvt(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) })?;
    // SAFETY: TIOCGPTPEER opens the peer of a master we own and returns a new descriptor.
    let slave = cvt(unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: a fresh descriptor the ioctl returned, owned by nothing else.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    // SAFETY: fchown on a descriptor we own.
    cvt(unsafe { libc::fchown(slave.as_raw_fd(), uid, uid) })?;
    resize(&master, cols, rows)?;
    Ok((master, slave))
}

/// Sets the terminal's size (the shell and its programs get SIGWINCH).
pub fn resize(master: &OwnedFd, cols: u16, rows: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer.
    cvt(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) })?;
    Ok(())
}
