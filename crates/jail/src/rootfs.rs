//! Builds a sandbox's root filesystem inside its new mount namespace, then pivots into it.
//!
//! Layout, all private to the sandbox's mount namespace (nothing appears in the host's):
//!
//! ```text
//! <scratch>          tmpfs, size = disk quota
//!   lower0/ ...      the image's layers, bound here so the overlay names them relatively
//!   upper/ work/     the overlay's writable layer, with the image's masks applied
//!   root/            overlay(lower = image, upper) → becomes `/`
//!     proc/          fresh procfs of the sandbox's pid namespace (sysctl bits read-only)
//!     dev/           tmpfs with null, zero, full, random, urandom, tty, a private devpts, shm
//!     sys/fs/cgroup/ the sandbox's own cgroups, bound read-only (tmpfs around them)
//! ```
//!
//! Masks are overlay whiteouts and opaque directories in the upper layer, so a masked path is
//! absent from the merged tree itself, not covered by a mount that could be peeled off.
//! `/tmp`, `/var/tmp`, `/run` and `/home` start empty; `/home/user` and `/mnt` belong to the
//! sandbox uid, which gets a `user` entry in `/etc/passwd` and `/etc/group`.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};

use crate::proto::SandboxSpec;
use crate::sys;
use crate::{Error, Result};

const MS_BIND: libc::c_ulong = libc::MS_BIND;
const NOSUID_NODEV: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV;
const READ_ONLY: libc::c_ulong = NOSUID_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY;

/// Directories that start out empty in every sandbox, with their modes.
const FRESH_DIRS: &[(&str, u32)] = &[
    ("/tmp", 0o1777),
    ("/var/tmp", 0o1777),
    ("/run", 0o755),
    ("/home", 0o755),
];

/// Where the sandbox's own filesystems are mounted, with the modes they get when the image
/// has no directory there: a symlink in a registered image must not redirect a mount.
const MOUNT_POINTS: &[(&str, u32)] = &[("/proc", 0o555), ("/dev", 0o755), ("/sys", 0o555)];

/// Host device nodes bind-mounted into the sandbox's `/dev`.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// procfs entries that expose or change host-wide state: made read-only.
const PROC_READONLY: &[&str] = &["/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus"];
/// procfs files that leak host memory or kernel state: covered with /dev/null.
const PROC_MASKED: &[&str] = &[
    "/proc/kcore",
    "/proc/keys",
    "/proc/timer_list",
    "/proc/kallsyms",
];

pub const SANDBOX_USER: &str = "user";
pub const SANDBOX_HOME: &str = "/home/user";

fn step<T>(what: impl FnOnce() -> String, r: std::io::Result<T>) -> Result<T> {
    r.map_err(|e| Error::sys(what(), e))
}

/// Sets up the root filesystem and pivots into it. Runs in the init, as root, in a fresh
/// mount namespace. Returns the overlay's upper directory (`O_PATH`), which stays reachable
/// through it once the old root is detached.
pub fn build(spec: &SandboxSpec) -> Result<std::os::fd::OwnedFd> {
    step(
        || "make / private".into(),
        sys::mount(
            None,
            Path::new("/"),
            None,
            libc::MS_REC | libc::MS_PRIVATE,
            None,
        ),
    )?;
    let scratch = &spec.scratch_dir;
    let opts = format!("size={},mode=0755", spec.disk_bytes.max(1 << 20));
    mount_new(scratch, "tmpfs", 0o755, NOSUID_NODEV, &opts)?;
    let (upper, work, root) = (
        scratch.join("upper"),
        scratch.join("work"),
        scratch.join("root"),
    );
    for dir in [&upper, &work, &root] {
        step(
            || format!("mkdir {}", dir.display()),
            sys::mkdir(dir, 0o755),
        )?;
    }
    let lowers = if spec.host_base {
        // The host's root, its masks applied in an overlay of its own: a lower layer on the
        // host's filesystem may not lie in another (overlayfs refuses overlapping layers),
        // and masks in the upper layer would hide the image's own layers too.
        let (host, layers) = spec.lowerdirs.split_last().ok_or(Error::Spawn(
            "an image on the host with no host root".into(),
        ))?;
        let mut lowers = layers.to_vec();
        lowers.push(masked_host(scratch, host, &spec.masks)?);
        lowers
    } else {
        spec.lowerdirs.clone()
    };
    prepare_upper(&upper, &lowers, spec)?;
    let upper_fd = step(
        || "open upper".into(),
        sys::open(&upper, libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC),
    )?;

    // The overlay's options show in the sandbox's mountinfo: name its layers by paths
    // relative to the scratch directory, each lower bound there, so the host's are not told.
    step(|| "chdir to scratch".into(), sys::chdir(scratch))?;
    let mut lower = Vec::with_capacity(lowers.len());
    for (i, dir) in lowers.iter().enumerate() {
        let name = format!("lower{i}");
        step(
            || format!("mkdir {name}"),
            sys::mkdir(Path::new(&name), 0o755),
        )?;
        step(
            || format!("bind {} on {name}", dir.display()),
            sys::mount(
                Some(&dir.to_string_lossy()),
                Path::new(&name),
                None,
                MS_BIND,
                None,
            ),
        )?;
        lower.push(name);
    }
    let overlay = format!("lowerdir={},upperdir=upper,workdir=work", lower.join(":"));
    step(
        || format!("mount overlay ({overlay})"),
        sys::mount(
            Some("overlay"),
            &root,
            Some("overlay"),
            NOSUID_NODEV,
            Some(&overlay),
        ),
    )?;
    mount_proc(&root)?;
    mount_dev(&root, spec.shm_bytes)?;
    mount_cgroup_views(&root, &spec.cgroups)?;

    step(|| "chdir to new root".into(), sys::chdir(&root))?;
    step(|| "pivot_root".into(), sys::pivot_root_here())?;
    step(
        || "detach old root".into(),
        sys::umount_detach(Path::new(".")),
    )?;
    step(|| "chdir /".into(), sys::chdir(Path::new("/")))?;
    protect_proc()?;
    Ok(upper_fd)
}

/// The host's root `host` with `masks` hidden, as a read-only overlay in the scratch
/// directory (a filesystem apart from the host's); returns where it is mounted.
fn masked_host(scratch: &Path, host: &Path, masks: &[PathBuf]) -> Result<PathBuf> {
    let (mask, base) = (scratch.join("host-masks"), scratch.join("host"));
    for dir in [&mask, &base] {
        step(
            || format!("mkdir {}", dir.display()),
            sys::mkdir(dir, 0o755),
        )?;
    }
    let image = Image::new(&[host.to_path_buf()], &mask);
    for m in masks {
        image.mask(m)?;
    }
    let options = format!("lowerdir={}:{}", mask.display(), host.display());
    step(
        || format!("mount the masked host ({options})"),
        sys::mount(
            Some("overlay"),
            &base,
            Some("overlay"),
            NOSUID_NODEV | libc::MS_RDONLY,
            Some(&options),
        ),
    )?;
    Ok(base)
}

/// Writes masks, fresh directories, the home directory and the passwd entry into the upper
/// layer, mirroring the image's ownership and modes for every parent directory it creates.
fn prepare_upper(upper: &Path, lowers: &[PathBuf], spec: &SandboxSpec) -> Result<()> {
    let image = Image::new(lowers, upper);
    // A mask under a fresh directory is already hidden; applying it would show its path's
    // skeleton of empty directories there (the data dir under /tmp, say). On a masked host
    // base they are applied already.
    let masks = if spec.host_base {
        &[][..]
    } else {
        &spec.masks[..]
    };
    for mask in masks.iter().filter(|m| !under_fresh_dir(m)) {
        image.mask(mask)?;
    }
    for (dir, mode) in FRESH_DIRS {
        if !(spec.keep_image_home && *dir == "/home") {
            image.fresh_dir(Path::new(dir), *mode, 0, 0)?;
        }
    }
    // An image's own directory stays (the file API cannot move it, a lower-layer directory);
    // anything else there is covered by a real one.
    for (dir, mode) in MOUNT_POINTS {
        let dir = Path::new(dir);
        if !image.lower_meta(dir).is_some_and(|meta| meta.is_dir()) {
            image.fresh_dir(dir, *mode, 0, 0)?;
        }
    }
    // The user's own: its home, and /mnt as a scratch place (SandboxFusion programs write
    // there, as they would as root in its container).
    for dir in [SANDBOX_HOME, "/mnt"].map(Path::new) {
        let in_image = image.lower_meta(dir).is_some_and(|m| m.is_dir());
        if spec.keep_image_home && in_image {
            // What a commit left there shows through; the directory itself is the user's.
            image.mirror_parents(dir)?;
            make_dir(&image.upper_path(dir), 0o755, spec.uid, spec.uid)?;
        } else {
            image.fresh_dir(dir, 0o755, spec.uid, spec.uid)?;
        }
    }
    if let Some(skeleton) = &spec.home_skeleton {
        copy_tree(
            skeleton,
            &image.upper_path(Path::new(SANDBOX_HOME)),
            spec.uid,
        )?;
    }
    let uid = spec.uid;
    image.append_line(
        Path::new("/etc/passwd"),
        &format!("{SANDBOX_USER}:x:{uid}:{uid}:{SANDBOX_USER}:{SANDBOX_HOME}:/bin/bash"),
    )?;
    image.append_line(Path::new("/etc/group"), &format!("{SANDBOX_USER}:x:{uid}:"))?;
    // The sandbox's own names, as a container has them: its hostname resolves (Java's
    // InetAddress.getLocalHost, Python's gethostbyname(gethostname()) fail otherwise), and
    // none of the host's names show.
    let host = &spec.hostname;
    image.write(Path::new("/etc/hostname"), &format!("{host}\n"))?;
    image.write(
        Path::new("/etc/hosts"),
        &format!(
            "127.0.0.1\tlocalhost\n127.0.1.1\t{host}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        ),
    )
}

struct Image<'a> {
    /// The lower layers' directories, topmost first, each opened once.
    lowers: Vec<std::os::fd::OwnedFd>,
    upper: &'a Path,
}

impl<'a> Image<'a> {
    fn new(lowers: &[PathBuf], upper: &'a Path) -> Image<'a> {
        let open =
            |l: &PathBuf| rustix::fs::open(l, OFlags::PATH | OFlags::DIRECTORY, Mode::empty());
        Image {
            lowers: lowers.iter().filter_map(|l| open(l).ok()).collect(),
            upper,
        }
    }

    /// The image's own file for `path` (absolute inside the sandbox), topmost layer first,
    /// opened without following its last component. Each layer's paths are resolved inside
    /// it: a symlink in an image never leads to the host's files.
    fn lower_file(&self, path: &Path, flags: OFlags) -> Option<(fs::File, fs::Metadata)> {
        let rel = relative(path);
        self.lowers.iter().find_map(|layer| {
            let fd = crate::fsops::openat2(
                layer,
                &rel,
                flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
            )
            .ok()?;
            let file = fs::File::from(fd);
            let meta = file.metadata().ok()?;
            Some((file, meta))
        })
    }

    fn lower_meta(&self, path: &Path) -> Option<fs::Metadata> {
        self.lower_file(path, OFlags::PATH).map(|(_, meta)| meta)
    }

    /// The content of the image's regular file at `path`.
    fn read_lower(&self, path: &Path) -> Option<String> {
        // Non-blocking: a FIFO there must not stall the sandbox's start.
        let (mut file, meta) = self.lower_file(path, OFlags::RDONLY | OFlags::NONBLOCK)?;
        let mut content = String::new();
        use std::io::Read;
        (meta.is_file() && file.read_to_string(&mut content).is_ok()).then_some(content)
    }

    fn upper_path(&self, path: &Path) -> PathBuf {
        self.upper.join(relative(path))
    }

    /// Creates the parents of `path` in the upper layer with the image's modes and owners,
    /// so the merged directories look exactly as in the image.
    fn mirror_parents(&self, path: &Path) -> Result<()> {
        let mut cur = PathBuf::from("/");
        let rel = relative(path);
        let parents: Vec<_> = rel.components().collect();
        for comp in &parents[..parents.len().saturating_sub(1)] {
            cur.push(comp);
            let up = self.upper_path(&cur);
            if up.exists() {
                continue;
            }
            let (mode, uid, gid) = match self.lower_meta(&cur) {
                Some(m) if m.is_dir() => (m.mode() & 0o7777, m.uid(), m.gid()),
                _ => (0o755, 0, 0),
            };
            make_dir(&up, mode, uid, gid)?;
        }
        Ok(())
    }

    /// Hides `path`: an opaque empty directory in place of a directory, a whiteout in place of
    /// anything else. Paths the image does not have are left alone.
    fn mask(&self, path: &Path) -> Result<()> {
        let Some(meta) = self.lower_meta(path) else {
            return Ok(());
        };
        if meta.is_dir() {
            return self.fresh_dir(path, meta.mode() & 0o7777, meta.uid(), meta.gid());
        }
        self.mirror_parents(path)?;
        let up = self.upper_path(path);
        // An overlay whiteout is a 0:0 character device.
        step(
            || format!("whiteout {}", path.display()),
            sys::mknod(&up, libc::S_IFCHR, 0),
        )
    }

    /// An empty directory that hides whatever the image has at `path`.
    fn fresh_dir(&self, path: &Path, mode: u32, uid: u32, gid: u32) -> Result<()> {
        self.mirror_parents(path)?;
        let up = self.upper_path(path);
        make_dir(&up, mode, uid, gid)?;
        step(
            || format!("make {} opaque", up.display()),
            sys::setxattr(&up, "trusted.overlay.opaque", b"y"),
        )
    }

    /// Copies the image's file to the upper layer with one more line at the end.
    fn append_line(&self, path: &Path, line: &str) -> Result<()> {
        let mut content = self.read_lower(path).unwrap_or_default();
        if !content.is_empty() && !content.ends_with('\n') {
            content.push('\n');
        }
        content.push_str(line);
        content.push('\n');
        self.write(path, &content)
    }

    /// Puts a file readable by all, owned by root, in the upper layer in place of the image's.
    fn write(&self, path: &Path, content: &str) -> Result<()> {
        self.mirror_parents(path)?;
        let up = self.upper_path(path);
        step(
            || format!("write {}", up.display()),
            fs::write(&up, content),
        )?;
        step(
            || format!("chmod {}", up.display()),
            fs::set_permissions(&up, fs::Permissions::from_mode(0o644)),
        )
    }
}

/// Copies the directories and regular files of `from` into `to`, owned by `uid`.
fn copy_tree(from: &Path, to: &Path, uid: u32) -> Result<()> {
    let entries = step(|| format!("read {}", from.display()), fs::read_dir(from))?;
    for entry in entries.flatten() {
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            make_dir(&dst, 0o755, uid, uid)?;
            copy_tree(&src, &dst, uid)?;
        } else if kind.is_file() {
            step(|| format!("copy {}", src.display()), fs::copy(&src, &dst))?;
            step(
                || format!("chown {}", dst.display()),
                sys::lchown(&dst, uid, uid),
            )?;
        }
    }
    Ok(())
}

/// A directory with exactly this mode (no umask) and owner.
fn make_dir(path: &Path, mode: u32, uid: u32, gid: u32) -> Result<()> {
    step(
        || format!("mkdir {}", path.display()),
        sys::mkdir(path, mode),
    )?;
    step(
        || format!("chmod {}", path.display()),
        sys::chmod(path, mode),
    )?;
    step(
        || format!("chown {}", path.display()),
        sys::lchown(path, uid, gid),
    )
}

fn under_fresh_dir(path: &Path) -> bool {
    let rel = relative(path);
    FRESH_DIRS
        .iter()
        .any(|(dir, _)| rel.starts_with(relative(Path::new(dir))))
}

/// `/a/b` → `a/b`, dropping `..` and `.` so a mask can never point outside the layer.
fn relative(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect()
}

/// Creates `target` (with `mode`) and mounts a fresh `fstype` filesystem on it.
fn mount_new(
    target: &Path,
    fstype: &str,
    mode: u32,
    flags: libc::c_ulong,
    data: &str,
) -> Result<()> {
    step(
        || format!("mkdir {}", target.display()),
        sys::mkdir(target, mode),
    )?;
    step(
        || format!("mount {fstype} on {}", target.display()),
        sys::mount(Some(fstype), target, Some(fstype), flags, Some(data)),
    )
}

fn mount_proc(root: &Path) -> Result<()> {
    // Sandbox users see only their own processes, not the init (nor its cmdline, which is
    // the server's).
    mount_new(
        &root.join("proc"),
        "proc",
        0o555,
        NOSUID_NODEV | libc::MS_NOEXEC,
        "hidepid=invisible",
    )
}

/// `/sys/fs/cgroup` as a container has it: the sandbox's own cgroups (the cgroup namespace
/// makes each the root of its hierarchy), read-only. The JVM, Node and .NET size their heaps
/// and thread pools from the limits they find there; without them, from the host's.
fn mount_cgroup_views(root: &Path, views: &[(String, PathBuf)]) -> Result<()> {
    let sys_dir = root.join("sys");
    mount_new(
        &sys_dir,
        "tmpfs",
        0o755,
        NOSUID_NODEV | libc::MS_NOEXEC,
        "mode=0755,size=64k",
    )?;
    let base = sys_dir.join("fs/cgroup");
    for (name, host_dir) in views {
        let target = base.join(name);
        step(
            || format!("mkdir {}", target.display()),
            fs::create_dir_all(&target),
        )?;
        bind_read_only(host_dir, &target)?;
    }
    step(
        || format!("remount {} read-only", sys_dir.display()),
        sys::mount(None, &sys_dir, None, libc::MS_REMOUNT | READ_ONLY, None),
    )
}

/// Binds `source` (and what is mounted under it) on `target`, read-only, nosuid, nodev and
/// noexec: a bind takes its flags only in a second, remounting step.
fn bind_read_only(source: &Path, target: &Path) -> Result<()> {
    step(
        || format!("bind {}", source.display()),
        sys::mount(
            Some(&source.to_string_lossy()),
            target,
            None,
            MS_BIND | libc::MS_REC,
            None,
        ),
    )?;
    step(
        || format!("remount {} read-only", target.display()),
        sys::mount(
            None,
            target,
            None,
            MS_BIND | libc::MS_REMOUNT | READ_ONLY,
            None,
        ),
    )
}

fn mount_dev(root: &Path, shm_bytes: u64) -> Result<()> {
    let dev = root.join("dev");
    mount_new(
        &dev,
        "tmpfs",
        0o755,
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "mode=0755,size=1m",
    )?;
    for name in DEVICES {
        let (host, target) = (Path::new("/dev").join(name), dev.join(name));
        step(
            || format!("create {}", target.display()),
            fs::write(&target, b""),
        )?;
        step(
            || format!("bind {}", host.display()),
            sys::mount(Some(&host.to_string_lossy()), &target, None, MS_BIND, None),
        )?;
    }
    let devpts = "newinstance,ptmxmode=0666,mode=0620";
    mount_new(
        &dev.join("pts"),
        "devpts",
        0o755,
        libc::MS_NOSUID | libc::MS_NOEXEC,
        devpts,
    )?;
    let shm = format!("mode=1777,size={}", shm_bytes.max(1 << 20));
    mount_new(&dev.join("shm"), "tmpfs", 0o1777, NOSUID_NODEV, &shm)?;
    for (target, link) in [
        ("pts/ptmx", "ptmx"),
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ] {
        step(
            || format!("symlink /dev/{link}"),
            sys::symlink(target, &dev.join(link)),
        )?;
    }
    Ok(())
}

/// After the pivot: host-wide procfs knobs become read-only, and leaky files are masked.
fn protect_proc() -> Result<()> {
    for p in PROC_READONLY.iter().map(Path::new).filter(|p| p.exists()) {
        bind_read_only(p, p)?;
    }
    for p in PROC_MASKED.iter().map(Path::new).filter(|p| p.exists()) {
        step(
            || format!("mask {}", p.display()),
            sys::mount(Some("/dev/null"), p, None, MS_BIND, None),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_cannot_climb() {
        assert_eq!(
            relative(Path::new("/etc/shadow")),
            PathBuf::from("etc/shadow")
        );
        assert_eq!(
            relative(Path::new("/../../etc/./x")),
            PathBuf::from("etc/x")
        );
        assert_eq!(relative(Path::new("/")), PathBuf::new());
    }
}
