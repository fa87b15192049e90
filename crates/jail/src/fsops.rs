//! Host-side access to a sandbox's files that no path can escape.
//!
//! The server reads and writes sandbox files as root, so every path is resolved by the kernel
//! with `openat2` from a descriptor on the sandbox's root (`/proc/<init>/root`) and
//! `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV`:
//!
//! - `..` and absolute symlinks resolve inside the sandbox's root, never above it (the Judge0
//!   CVE-2024-28185 class: a symlink planted in the box pointing at a host file);
//! - `/proc/<pid>/fd/*`-style magic links are refused;
//! - no mount point is crossed, so only the sandbox's own overlay is reachable: not its
//!   `/proc` (whose `sys/` is host-wide), `/dev` or `/dev/shm`.
//!
//! Names that the final step creates or removes are handled relative to an already resolved
//! parent directory descriptor, so a swap of a path component mid-operation cannot redirect it.
//! New files and directories are owned by the sandbox user.
//!
//! Every path is resolved as the sandbox's user (the thread's fsuid switched for the call),
//! and files are read, listed and moved as that user: the image's lower layer is the host's
//! own filesystem, where root could open files, such as TLS private keys, that the user
//! cannot. Root's one extra right is to create, replace and remove names in a directory the
//! user can search: that touches only the sandbox's writable layer. (The server drops its
//! supplementary groups at start, so that root's do not count in those checks.)

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{Access, AtFlags, Mode, OFlags, ResolveFlags};

const SCOPED: ResolveFlags = ResolveFlags::IN_ROOT
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);
/// For walking down from a directory already resolved: no symlinks at all.
const STRICT: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_XDEV);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

/// Metadata of one path in a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The path inside the sandbox, absolute.
    pub path: String,
    pub name: String,
    pub kind: Kind,
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch.
    pub mtime: i64,
    /// The nanoseconds of `mtime`.
    pub mtime_nsec: i64,
    /// Where a symlink points (not followed).
    pub target: Option<String>,
}

/// Which path of a two-path operation an error concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

/// A file being written under a temporary name beside its destination (see
/// [`SandboxFs::replacement`]): `finish` moves it into place; dropped unfinished, it is removed.
pub struct Replacement {
    file: File,
    dir: OwnedFd,
    temp: CString,
    name: CString,
    finished: bool,
}

impl Replacement {
    pub fn finish(mut self) -> io::Result<()> {
        rustix::fs::renameat(
            &self.dir,
            self.temp.as_c_str(),
            &self.dir,
            self.name.as_c_str(),
        )?;
        self.finished = true;
        Ok(())
    }
}

impl Write for Replacement {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for Replacement {
    fn drop(&mut self) {
        if !self.finished {
            let _ = rustix::fs::unlinkat(&self.dir, self.temp.as_c_str(), AtFlags::empty());
        }
    }
}

/// A sandbox's filesystem, seen from the host.
pub struct SandboxFs {
    root: OwnedFd,
    uid: u32,
}

impl SandboxFs {
    /// Opens the root of the process `pid` (the sandbox's init) for scoped access.
    pub fn open(pid: i32, uid: u32) -> io::Result<SandboxFs> {
        let root = rustix::fs::open(
            format!("/proc/{pid}/root"),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(SandboxFs { root, uid })
    }

    /// Bytes used in the sandbox's writable layer.
    pub fn disk_usage(&self) -> io::Result<u64> {
        let st = rustix::fs::fstatvfs(&self.root)?;
        Ok((st.f_blocks - st.f_bfree) * st.f_frsize)
    }

    /// Opens `path` as the sandbox's user: only where the user may search.
    fn resolve(&self, path: &str, flags: OFlags, mode: u32) -> io::Result<OwnedFd> {
        self.as_user(|| self.open_scoped(path, flags, mode))
    }

    /// Opens `path` within the sandbox's root with this thread's identity.
    fn open_scoped(&self, path: &str, flags: OFlags, mode: u32) -> io::Result<OwnedFd> {
        Ok(openat2(
            &self.root,
            checked(path)?,
            flags | OFlags::CLOEXEC,
            Mode::from_bits_truncate(mode),
            SCOPED,
        )?)
    }

    /// The resolved parent directory of `path` and the final name. The user must be able to
    /// search that directory: its names are then ones the user could look up too.
    fn parent(&self, path: &str) -> io::Result<(OwnedFd, CString)> {
        let path = checked(path)?.trim_end_matches('/');
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        if name.is_empty() || name == "." || name == ".." {
            return Err(invalid(
                "the path must name a file, not a directory reference",
            ));
        }
        let dir = if dir.is_empty() { "/" } else { dir };
        let fd = self.as_user(|| {
            let fd = self.open_scoped(dir, OFlags::PATH | OFlags::DIRECTORY, 0)?;
            rustix::fs::accessat(&fd, c".", Access::EXEC_OK, AtFlags::EACCESS)?;
            Ok(fd)
        })?;
        Ok((fd, CString::new(name).map_err(|_| invalid("NUL in path"))?))
    }

    /// Runs `f` with this thread's file permissions those of the sandbox's user.
    fn as_user<T>(&self, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        let _user = self.user()?;
        f()
    }

    /// This thread's file permissions those of the sandbox's user, until dropped.
    fn user(&self) -> io::Result<crate::sys::FsIdentity> {
        crate::sys::FsIdentity::switch_to(self.uid, self.uid)
    }

    /// Opens a file for reading; returns it with its size.
    pub fn open_read(&self, path: &str) -> io::Result<(File, u64)> {
        let fd = (self.resolve(path, OFlags::RDONLY | OFlags::NOCTTY | OFlags::NONBLOCK, 0))
            // What opening a UNIX socket gives.
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENXIO) => not_regular(),
                _ => e,
            })?;
        let st = rustix::fs::fstat(&fd)?;
        match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => {}
            libc::S_IFDIR => return Err(io::Error::from_raw_os_error(libc::EISDIR)),
            _ => return Err(not_regular()),
        }
        Ok((File::from(fd), st.st_size as u64))
    }

    /// An `O_PATH` descriptor of a UNIX socket in the sandbox; connect to it through
    /// `/proc/self/fd/<fd>`, which reaches exactly that socket.
    pub fn open_socket(&self, path: &str) -> io::Result<OwnedFd> {
        let fd = self.resolve(path, OFlags::PATH, 0)?;
        let st = rustix::fs::fstat(&fd)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            return Err(io::Error::from_raw_os_error(libc::ENOTSOCK));
        }
        Ok(fd)
    }

    /// Reads a whole file, refusing one larger than `max` bytes.
    pub fn read(&self, path: &str, max: u64) -> io::Result<Vec<u8>> {
        let (file, size) = self.open_read(path)?;
        if size > max {
            return Err(io::Error::from_raw_os_error(libc::EFBIG));
        }
        let mut data = Vec::with_capacity(size as usize);
        file.take(max + 1).read_to_end(&mut data)?;
        if data.len() as u64 > max {
            return Err(io::Error::from_raw_os_error(libc::EFBIG));
        }
        Ok(data)
    }

    /// Writes `data` to `path`, replacing it (see [`SandboxFs::replacement`]).
    pub fn write(&self, path: &str, data: &[u8], mode: u32, parents: bool) -> io::Result<()> {
        let mut file = self.replacement(path, mode, parents)?;
        file.write_all(data)?;
        file.finish()
    }

    /// Starts writing a file that takes the place of `path` (and, if asked, creates its parent
    /// directories) only when finished: it is written under a temporary name beside `path`
    /// and renamed, so a write cut short (a broken upload, a full disk) leaves `path` as it
    /// was. Only a regular file is replaced.
    pub fn replacement(&self, path: &str, mode: u32, parents: bool) -> io::Result<Replacement> {
        static REPLACEMENTS: AtomicU64 = AtomicU64::new(0);
        if parents
            && let Some((dir, _)) = checked(path)?.trim_end_matches('/').rsplit_once('/')
            && !dir.is_empty()
        {
            self.mkdir(dir, true, 0o755)?;
        }
        let (dir, name) = self.parent(path)?;
        // Refused now, not after the whole body has come.
        not_a_mount_point(&dir, &name)?;
        if let Ok(st) = rustix::fs::statat(&dir, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
            match st.st_mode & libc::S_IFMT {
                libc::S_IFREG => {}
                libc::S_IFDIR => return Err(io::Error::from_raw_os_error(libc::EISDIR)),
                libc::S_IFLNK => return Err(io::Error::from_raw_os_error(libc::ELOOP)),
                _ => return Err(not_regular()),
            }
        }
        let n = REPLACEMENTS.fetch_add(1, Ordering::Relaxed);
        let temp = CString::new(format!(".cella-new-{}-{n}", std::process::id()))
            .expect("no NUL in a number");
        // A new name (`EXCL`): whatever the sandbox may have planted there is not opened.
        let fd = openat2(
            &dir,
            temp.as_c_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
            Mode::from_bits_truncate(mode & 0o7777),
            STRICT,
        )?;
        let file = Replacement {
            file: File::from(fd),
            dir,
            temp,
            name,
            finished: false,
        };
        rustix::fs::fchown(&file.file, Some(uid(self.uid)), Some(gid(self.uid)))?;
        rustix::fs::fchmod(&file.file, Mode::from_bits_truncate(mode & 0o7777))?;
        Ok(file)
    }

    pub fn stat(&self, path: &str) -> io::Result<Entry> {
        match self.parent(path) {
            Ok((dir, name)) => entry_at(
                dir.as_fd(),
                &name,
                absolute(path),
                AtFlags::SYMLINK_NOFOLLOW,
            ),
            // The root itself.
            Err(_) if checked(path)?.trim_matches('/').is_empty() => {
                entry_at(self.root.as_fd(), c"", "/".into(), AtFlags::EMPTY_PATH)
            }
            Err(e) => Err(e),
        }
    }

    /// Lists a directory, descending `depth` levels (1 = its direct children). Symlinks and
    /// mount points are listed but never entered.
    pub fn list(&self, path: &str, depth: u32, limit: usize) -> io::Result<Vec<Entry>> {
        self.as_user(|| {
            let dir = self.open_scoped(path, OFlags::RDONLY | OFlags::DIRECTORY, 0)?;
            let mut out = Vec::new();
            let base = absolute(path);
            list_into(dir, &base, depth.max(1), limit, false, &mut out)?;
            Ok(out)
        })
    }

    /// As [`SandboxFs::list`], leaving out hidden names (starting with `.`) and all below them.
    pub fn list_visible(&self, path: &str, depth: u32, limit: usize) -> io::Result<Vec<Entry>> {
        self.as_user(|| {
            let dir = self.open_scoped(path, OFlags::RDONLY | OFlags::DIRECTORY, 0)?;
            let mut out = Vec::new();
            let base = absolute(path);
            list_into(dir, &base, depth.max(1), limit, true, &mut out)?;
            Ok(out)
        })
    }

    pub fn mkdir(&self, path: &str, parents: bool, mode: u32) -> io::Result<()> {
        if !parents {
            let (dir, name) = self.parent(path)?;
            return self.mkdir_at(&dir, &name, mode);
        }
        let full = absolute(path);
        let mut prefix = String::new();
        for comp in full.split('/').filter(|c| !c.is_empty()) {
            prefix.push('/');
            prefix.push_str(comp);
            match self.resolve(&prefix, OFlags::PATH | OFlags::DIRECTORY, 0) {
                Ok(_) => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    let (dir, name) = self.parent(&prefix)?;
                    match self.mkdir_at(&dir, &name, mode) {
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                        r => r?,
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn mkdir_at(&self, dir: &OwnedFd, name: &CString, mode: u32) -> io::Result<()> {
        rustix::fs::mkdirat(
            dir,
            name.as_c_str(),
            Mode::from_bits_truncate(mode & 0o7777),
        )?;
        rustix::fs::chownat(
            dir,
            name.as_c_str(),
            Some(uid(self.uid)),
            Some(gid(self.uid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        Ok(())
    }

    /// Moves `from` to `to`; an error says which of the two paths it concerns.
    pub fn rename(&self, from: &str, to: &str) -> Result<(), (Side, io::Error)> {
        let source = |e: io::Error| (Side::Source, e);
        let _user = self.user().map_err(source)?;
        let destination = |e: io::Error| (Side::Destination, e);
        let (from_dir, from_name) = self.parent(from).map_err(source)?;
        rustix::fs::statat(&from_dir, from_name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| source(e.into()))?;
        not_a_mount_point(&from_dir, &from_name).map_err(source)?;
        let (to_dir, to_name) = self.parent(to).map_err(destination)?;
        not_a_mount_point(&to_dir, &to_name).map_err(destination)?;
        rustix::fs::renameat(&from_dir, from_name.as_c_str(), &to_dir, to_name.as_c_str())
            .map_err(|e| match e {
                // Both parents are on the sandbox's own filesystem: the source is a mount
                // point or a directory of the image's lower layer, which overlayfs cannot move.
                rustix::io::Errno::XDEV | rustix::io::Errno::BUSY => source(invalid(
                    "cannot be moved: a mount point, or a directory that comes from the image (copy it instead)",
                )),
                rustix::io::Errno::INVAL => source(invalid("a directory cannot move into itself")),
                // A directory not the user's to change: the source's, if it is that one.
                rustix::io::Errno::ACCESS if !writable(&from_dir) => source(e.into()),
                // A file of another user's in a sticky directory.
                rustix::io::Errno::PERM => source(e.into()),
                e => (Side::Destination, e.into()),
            })
    }

    /// Removes a file, symlink or (empty, or with `recursive`) directory.
    pub fn remove(&self, path: &str, recursive: bool) -> io::Result<()> {
        let (dir, name) = self.parent(path)?;
        not_a_mount_point(&dir, &name)?;
        let st = rustix::fs::statat(&dir, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Ok(rustix::fs::unlinkat(
                &dir,
                name.as_c_str(),
                AtFlags::empty(),
            )?);
        }
        if recursive {
            let sub = open_subdir(&dir, &name)?;
            remove_children(sub)?;
        }
        Ok(rustix::fs::unlinkat(
            &dir,
            name.as_c_str(),
            AtFlags::REMOVEDIR,
        )?)
    }
}

/// Refuses `name` in `dir` if something is mounted on it in the sandbox (its /proc, /dev,
/// /sys). From the host's side it is no mount point, and removing or replacing it there
/// would silently detach that mount from the sandbox.
fn not_a_mount_point(dir: &OwnedFd, name: &CString) -> io::Result<()> {
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match openat2(dir, name.as_c_str(), flags, Mode::empty(), STRICT) {
        Err(rustix::io::Errno::XDEV) => Err(invalid(
            "a mount point of the sandbox (such as /proc, /dev or /sys) stays where it is",
        )),
        _ => Ok(()),
    }
}

/// `openat2`, again while it answers `EAGAIN`: with `RESOLVE_IN_ROOT` or `RESOLVE_BENEATH`,
/// a path through `..` fails so whenever a rename or mount happens anywhere on the system
/// during the walk (busy with other sandboxes' mounts, it would fail now and then).
pub(crate) fn openat2<Fd: AsFd, P: rustix::path::Arg + Copy>(
    dir: Fd,
    path: P,
    flags: OFlags,
    mode: Mode,
    resolve: ResolveFlags,
) -> rustix::io::Result<OwnedFd> {
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(dir.as_fd(), path, flags, mode, resolve) {
            Err(rustix::io::Errno::AGAIN) if tries < 1000 => tries += 1,
            other => return other,
        }
    }
}

/// A directory entry of an already resolved directory, entered without following anything.
fn open_subdir(dir: &OwnedFd, name: &CString) -> io::Result<OwnedFd> {
    Ok(openat2(
        dir,
        name.as_c_str(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        STRICT,
    )?)
}

pub(crate) fn remove_children(dir: OwnedFd) -> io::Result<()> {
    let names: Vec<(CString, bool)> = rustix::fs::Dir::read_from(&dir)?
        .filter_map(Result::ok)
        .filter(|e| !matches!(e.file_name().to_bytes(), b"." | b".."))
        .map(|e| {
            (
                e.file_name().to_owned(),
                e.file_type() == rustix::fs::FileType::Directory,
            )
        })
        .collect();
    for (name, is_dir) in names {
        not_a_mount_point(&dir, &name)?;
        if is_dir {
            let sub = open_subdir(&dir, &name)?;
            remove_children(sub)?;
            rustix::fs::unlinkat(&dir, name.as_c_str(), AtFlags::REMOVEDIR)?;
        } else {
            rustix::fs::unlinkat(&dir, name.as_c_str(), AtFlags::empty())?;
        }
    }
    Ok(())
}

fn list_into(
    dir: OwnedFd,
    base: &str,
    depth: u32,
    limit: usize,
    skip_hidden: bool,
    out: &mut Vec<Entry>,
) -> io::Result<()> {
    let mut names: Vec<CString> = rustix::fs::Dir::read_from(&dir)?
        .filter_map(Result::ok)
        .filter(|e| !matches!(e.file_name().to_bytes(), b"." | b".."))
        .filter(|e| !(skip_hidden && e.file_name().to_bytes().starts_with(b".")))
        .map(|e| e.file_name().to_owned())
        .collect();
    names.sort();
    for name in names {
        if out.len() >= limit {
            return Ok(());
        }
        let path = join(base, &String::from_utf8_lossy(name.to_bytes()));
        let Ok(entry) = entry_at(dir.as_fd(), &name, path.clone(), AtFlags::SYMLINK_NOFOLLOW)
        else {
            continue;
        };
        let is_dir = entry.kind == Kind::Dir;
        out.push(entry);
        if is_dir && depth > 1 {
            let sub = open_subdir(&dir, &name);
            // A mount point (EXDEV) or a racing change is listed but not entered.
            if let Ok(sub) = sub {
                list_into(sub, &path, depth - 1, limit, skip_hidden, out)?;
            }
        }
    }
    Ok(())
}

fn entry_at(
    dir: BorrowedFd<'_>,
    name: &std::ffi::CStr,
    path: String,
    flags: AtFlags,
) -> io::Result<Entry> {
    let st = rustix::fs::statat(dir, name, flags)?;
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => Kind::File,
        libc::S_IFDIR => Kind::Dir,
        libc::S_IFLNK => Kind::Symlink,
        _ => Kind::Other,
    };
    let target = (kind == Kind::Symlink)
        .then(|| rustix::fs::readlinkat(dir, name, Vec::new()).ok())
        .flatten()
        .map(|t| String::from_utf8_lossy(t.as_bytes()).into_owned());
    let file_name = Path::new(&path).file_name().map_or("/".into(), |n| {
        String::from_utf8_lossy(n.as_bytes()).into_owned()
    });
    Ok(Entry {
        name: file_name,
        path,
        kind,
        size: st.st_size as u64,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime: st.st_mtime,
        mtime_nsec: st.st_mtime_nsec as i64,
        target,
    })
}

/// Whether this thread's user may add and remove names in `dir`.
fn writable(dir: &OwnedFd) -> bool {
    let access = Access::WRITE_OK | Access::EXEC_OK;
    rustix::fs::accessat(dir, c".", access, AtFlags::EACCESS).is_ok()
}

fn checked(path: &str) -> io::Result<&str> {
    if path.is_empty() {
        return Err(invalid("empty path"));
    }
    if path.contains('\0') {
        return Err(invalid("NUL in path"));
    }
    Ok(path)
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

fn not_regular() -> io::Error {
    invalid("not a regular file (a FIFO, socket or device)")
}

/// The path as the sandbox names it: absolute, without empty components.
fn absolute(path: &str) -> String {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    format!("/{}", parts.join("/"))
}

fn join(base: &str, name: &str) -> String {
    if base == "/" {
        format!("/{name}")
    } else {
        format!("{base}/{name}")
    }
}

fn uid(id: u32) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(id)
}

fn gid(id: u32) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_paths() {
        assert_eq!(absolute("a/b"), "/a/b");
        assert_eq!(absolute("/a//b/./c/"), "/a/b/c");
        assert_eq!(absolute("/"), "/");
    }
}
