//! Messages between the server, the spawner and each sandbox init.
//!
//! Every channel is an `AF_UNIX` `SOCK_SEQPACKET` pair, so one `sendmsg` is one message, and
//! descriptors (pipes, ptys, pidfds) travel beside it as `SCM_RIGHTS`. Bodies are JSON: they
//! are small and rare next to the fork/exec they describe.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::sys::cvt;

/// The largest message a channel carries. It bounds argv+env of one exec.
pub const MAX_MESSAGE: usize = 2 << 20;
const MAX_FDS: usize = 12;

/// What the spawner needs to start one sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxSpec {
    pub id: String,
    pub hostname: String,
    pub uid: u32,
    /// Read-only lower layers of the root filesystem, topmost first.
    pub lowerdirs: Vec<PathBuf>,
    /// Paths of the image hidden from the sandbox (made empty directories or removed files).
    pub masks: Vec<PathBuf>,
    /// Size of the writable layer (a tmpfs) in bytes.
    pub disk_bytes: u64,
    /// The sandbox's cgroup directories, one per hierarchy, each with the hierarchy's name
    /// under `/sys/fs/cgroup`: the init joins them, and shows them read-only by that name.
    pub cgroups: Vec<(String, PathBuf)>,
    /// The cgroup the init moves to once set up, outside the sandbox's memory limit (v1: the
    /// sandboxes' parent in the memory hierarchy; v2: the inits' leaf beside the sandboxes),
    /// its children joining the sandbox's before they run. The init's own allocations then
    /// never meet the sandbox's limit: with the sandbox's memory full of files, which no kill
    /// frees, the init would be the last process the OOM killer could take.
    pub init_memory_cgroup: Option<PathBuf>,
    /// The cgroup directory under which each exec gets its own child cgroup, so that a timeout
    /// or kill reaches every process the exec started.
    pub exec_cgroup_dir: PathBuf,
    /// Mount point (an empty host directory) for the sandbox's private tmpfs.
    pub scratch_dir: PathBuf,
    /// Size of `/dev/shm` in bytes.
    pub shm_bytes: u64,
    /// A host directory whose files every new home directory starts with (caches that are
    /// slow to build, such as matplotlib's font list).
    /// The image's own `/home` shows (an OCI image's), and its `/home/user` and `/mnt`, if
    /// it has them, are given to the sandbox's user instead of started empty.
    #[serde(default)]
    pub keep_image_home: bool,
    /// The last of `lowerdirs` is the host's root, under the image's own layers (an image
    /// committed from a `host` sandbox): `masks` apply to it alone.
    #[serde(default)]
    pub host_base: bool,
    pub home_skeleton: Option<PathBuf>,
}

/// The spawner's answer to a [`SandboxSpec`]: the init's host pid, and two descriptors beside
/// it: a pidfd for the init and the server's end of its control channel.
#[derive(Debug, Serialize, Deserialize)]
pub enum SpawnReply {
    Spawned { pid: i32 },
    Failed { error: String },
}

/// One command run inside a sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecSpec {
    pub id: u64,
    pub argv: Vec<String>,
    /// `KEY=VALUE` strings; the exec sees exactly these.
    pub env: Vec<String>,
    pub cwd: String,
    /// `(resource, soft, hard)` rlimits applied before exec.
    pub rlimits: Vec<(u32, u64, u64)>,
    /// The three stdio descriptors are the slave side of a pty: make it the controlling tty.
    pub tty: bool,
}

/// Server → init.
#[derive(Debug, Serialize, Deserialize)]
pub enum Command {
    /// Start a process; three descriptors (stdin, stdout, stderr) travel with it.
    Exec(ExecSpec),
    /// Send a signal to the exec's main process.
    Signal { id: u64, signal: i32 },
    /// Kill every process the exec started, however it detached.
    KillTree { id: u64 },
}

/// Init → server.
#[derive(Debug, Serialize, Deserialize)]
pub enum Event {
    Ready,
    SetupFailed {
        error: String,
    },
    Started {
        id: u64,
        pid: i32,
    },
    /// The process could not be started; `missing_program` when the program does not exist.
    SpawnFailed {
        id: u64,
        error: String,
        missing_program: bool,
    },
    Exited {
        id: u64,
        code: Option<i32>,
        signal: Option<i32>,
        cpu_us: u64,
    },
}

pub fn send<T: Serialize>(fd: BorrowedFd<'_>, msg: &T, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
    if body.len() > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "message too large",
        ));
    }
    send_raw(fd, &body, fds)
}

fn send_raw(fd: BorrowedFd<'_>, body: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    assert!(fds.len() <= MAX_FDS);
    let mut iov = libc::iovec {
        iov_base: body.as_ptr() as *mut _,
        iov_len: body.len(),
    };
    let mut cmsg_buf = [0u64; 16];
    // SAFETY: msghdr is plain data; we fill every field we use below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let data_len = std::mem::size_of_val(raw.as_slice()) as u32;
        // SAFETY: CMSG_SPACE is a pure computation.
        let space = unsafe { libc::CMSG_SPACE(data_len) } as usize;
        msg.msg_control = cmsg_buf.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: the control buffer is 128 bytes, large enough for MAX_FDS descriptors, and
        // CMSG_FIRSTHDR/CMSG_DATA point inside it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(data_len) as usize;
            std::ptr::copy_nonoverlapping(raw.as_ptr(), libc::CMSG_DATA(cmsg).cast(), raw.len());
        }
    }
    loop {
        // SAFETY: msg points at valid buffers for the duration of the call.
        match cvt(unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) }) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Receives one message. `Ok(None)` means the peer closed the channel. On a non-blocking
/// socket with nothing queued this returns `WouldBlock`.
pub fn recv<T: DeserializeOwned>(
    fd: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
) -> io::Result<Option<(T, Vec<OwnedFd>)>> {
    // Received into spare capacity: zeroing 2 MiB for every new channel would cost more than
    // the message (the kernel writes what it delivers; untouched pages are never faulted in).
    buf.clear();
    buf.reserve(MAX_MESSAGE + 1);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: MAX_MESSAGE + 1,
    };
    let mut cmsg_buf = [0u64; 16];
    // SAFETY: msghdr is plain data; we fill every field we use below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg_buf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cmsg_buf);
    let n = loop {
        // SAFETY: msg points at valid, writable buffers for the duration of the call.
        match cvt(unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) }) {
            Ok(n) => break n as usize,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    };
    // SAFETY: recvmsg initialised the first n bytes.
    unsafe { buf.set_len(n) };
    let fds = take_fds(&msg);
    if n == 0 && fds.is_empty() {
        return Ok(None);
    }
    if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "truncated message",
        ));
    }
    let value = serde_json::from_slice(buf).map_err(io::Error::other)?;
    Ok(Some((value, fds)))
}

fn take_fds(msg: &libc::msghdr) -> Vec<OwnedFd> {
    let mut fds = Vec::new();
    // SAFETY: we walk the control messages the kernel wrote, within msg_controllen, and take
    // ownership of each descriptor it passed exactly once.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let count = ((*cmsg).cmsg_len - libc::CMSG_LEN(0) as usize) / 4;
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    fds
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn round_trip_with_descriptors() {
        let (a, b) = crate::sys::seqpacket_pair().unwrap();
        let (r, w) = crate::sys::pipe().unwrap();
        let cmd = Command::Signal { id: 7, signal: 15 };
        send(a.as_fd(), &cmd, &[r.as_fd(), w.as_fd()]).unwrap();
        let mut buf = Vec::new();
        let (got, fds): (Command, _) = recv(b.as_fd(), &mut buf).unwrap().unwrap();
        assert!(matches!(got, Command::Signal { id: 7, signal: 15 }));
        assert_eq!(fds.len(), 2);
        crate::sys::write_all(fds[1].as_fd(), b"hi").unwrap();
        let mut out = [0u8; 2];
        assert_eq!(crate::sys::read(r.as_fd(), &mut out).unwrap(), 2);
        assert_eq!(&out, b"hi");
        drop(a);
        assert!(recv::<Command>(b.as_fd(), &mut buf).unwrap().is_none());
    }

    #[test]
    fn one_buffer_serves_messages_of_any_size_and_oversized_ones_are_refused() {
        let (a, b) = crate::sys::seqpacket_pair().unwrap();
        let mut buf = Vec::new();
        for text in ["x".repeat(100_000), "y".to_string()] {
            send(a.as_fd(), &text, &[]).unwrap();
            let (got, _): (String, _) = recv(b.as_fd(), &mut buf).unwrap().unwrap();
            assert_eq!(got, text);
        }
        assert!(send(a.as_fd(), &"z".repeat(MAX_MESSAGE + 1), &[]).is_err());
    }
}
