//! A way out for a sandbox that may reach the network: slirp4netns, a user-mode network stack
//! on the host's side, gives the sandbox's own network namespace a tap device (10.0.2.100,
//! gateway 10.0.2.2, resolver 10.0.2.3) and makes its connections as host sockets; nftables
//! rules inside that namespace decide what may leave. Nothing is added to the host's network
//! configuration (no veth, no route, no forwarding, no rule): the device and the rules live
//! and die with the sandbox's namespace, and slirp4netns ends when its exit pipe closes, which
//! the server's death closes too.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::sys;

/// The sandbox's side of the link, as slirp4netns configures it.
pub const GATEWAY: &str = "10.0.2.2";
pub const RESOLVER: &str = "10.0.2.3";
pub const DEVICE: &str = "tap0";

/// A running slirp4netns for one sandbox; dropping it ends it.
pub struct Uplink {
    child: Child,
    /// The write end of slirp4netns's exit pipe: closing it tells it to exit.
    exit: Option<OwnedFd>,
}

impl Drop for Uplink {
    fn drop(&mut self) {
        drop(self.exit.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects the network namespace at `netns` (`/proc/<pid>/ns/net`) to the host's network
/// through slirp4netns, then loads `ruleset` (nftables) in that namespace. Blocks until both
/// are in place or `timeout` passed.
pub fn connect(netns: &Path, ruleset: &str, timeout: Duration) -> std::io::Result<Uplink> {
    let (exit_read, exit_write) = sys::pipe()?;
    let (ready_read, ready_write) = sys::pipe()?;
    let mut cmd = Command::new("slirp4netns");
    cmd.args(["--configure", "--mtu=65520", "--disable-host-loopback"])
        .args(["--enable-sandbox", "--enable-seccomp", "--netns-type=path"])
        .args(["--exit-fd=3", "--ready-fd=4"])
        .arg(netns)
        .arg(DEVICE)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let (exit_fd, ready_fd) = (exit_read.as_raw_fd(), ready_write.as_raw_fd());
    // SAFETY: only dup2 between the forked child's own descriptors (async-signal-safe); the
    // copies at 3 and 4 lose close-on-exec, the originals keep it.
    unsafe {
        cmd.pre_exec(move || {
            for (from, to) in [(exit_fd, 3), (ready_fd, 4)] {
                if libc::dup2(from, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            std::io::Error::other("network egress needs slirp4netns (scripts/setup.sh installs it)")
        } else {
            e
        }
    })?;
    drop((exit_read, ready_write));
    let mut uplink = Uplink {
        child,
        exit: Some(exit_write),
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    let [ready] = sys::poll_readable([ready_read.as_fd()], ms)?;
    if !ready || read_byte(ready_read).is_err() {
        let status = uplink.child.try_wait().ok().flatten();
        return Err(std::io::Error::other(match status {
            Some(status) => {
                format!("slirp4netns could not bring the sandbox's network up ({status})")
            }
            None => {
                format!("slirp4netns did not bring the sandbox's network up within {timeout:?}")
            }
        }));
    }
    load_rules(netns, ruleset)?;
    Ok(uplink)
}

fn read_byte(fd: OwnedFd) -> std::io::Result<()> {
    let mut file = std::fs::File::from(fd);
    let mut byte = [0u8];
    match file.read(&mut byte)? {
        1 => Ok(()),
        _ => Err(std::io::ErrorKind::UnexpectedEof.into()),
    }
}

/// Loads an nftables ruleset into the network namespace at `netns`: `nft -f -` run in it.
fn load_rules(netns: &Path, ruleset: &str) -> std::io::Result<()> {
    let ns = sys::open(netns, libc::O_RDONLY | libc::O_CLOEXEC)?;
    let ns_fd = ns.as_fd().as_raw_fd();
    let mut cmd = Command::new("nft");
    cmd.args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: setns is a plain syscall on a descriptor the child inherited.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns_fd, libc::CLONE_NEWNET) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut nft = cmd.spawn()?;
    if let Some(mut stdin) = nft.stdin.take() {
        stdin.write_all(ruleset.as_bytes())?;
    }
    let out = nft.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "nft refused the sandbox's network rules: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}
