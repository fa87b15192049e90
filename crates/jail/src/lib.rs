//! Isolation primitives for cella. All of the project's `unsafe` code lives in this crate.
//!
//! - [`spawner`]: the single-threaded helper that creates sandboxes (forked before the runtime).
//! - `init` / `rootfs` / `child`: what runs inside a sandbox: its pid 1, its root filesystem,
//!   and the last steps before user code.
//! - [`proto`]: the messages on the server ↔ spawner ↔ init channels.
//! - [`zygote`]: a warm Python that forks into sandboxes (the fast path of Python runs).
//! - [`seccomp`], [`cgroup`], [`fsops`] (symlink-safe host-side file access), [`probe`].

pub mod cgroup;
mod child;
pub mod egress;
pub mod fsops;
mod init;
pub mod layer;
pub mod probe;
pub mod proto;
pub mod pty;
mod rootfs;
pub mod seccomp;
pub mod spawner;
pub mod sys;
pub mod zygote;

pub use child::DEFAULT_PATH;
pub use rootfs::{SANDBOX_HOME, SANDBOX_USER};
pub use spawner::{Spawned, Spawner, SpawnerConfig};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Sys {
        context: String,
        source: std::io::Error,
    },
    #[error("unsupported host: {0}")]
    Unsupported(String),
    #[error("seccomp policy: {0}")]
    Seccomp(String),
    #[error("spawner protocol: {0}")]
    Protocol(String),
    #[error("sandbox setup failed: {0}")]
    Spawn(String),
}

impl Error {
    pub fn sys(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Sys {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs `f` in a forked child. A panic must never unwind into the parent's frames (which
/// this child has a copy of), so it ends the child instead.
fn in_child(f: impl FnOnce() -> std::convert::Infallible) -> ! {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    sys::exit_now(101)
}

/// Registers an owned descriptor (a pidfd, a control socket) with the tokio reactor.
#[cfg(feature = "tokio")]
pub fn async_fd(
    fd: std::os::fd::OwnedFd,
) -> std::io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    // SAFETY: an OwnedFd is open and returns the same descriptor for as long as it lives,
    // which is the whole lifetime of the AsyncFd that takes it.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}
