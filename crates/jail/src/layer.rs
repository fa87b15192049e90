//! Image layers on disk: an untrusted layer tarball unpacked into a directory of the layer
//! store, and a sandbox's writable layer written out as a layer tarball.
//!
//! A layer is hostile input. Every name is resolved by the kernel with `openat2` from a
//! descriptor on the layer's own directory and `RESOLVE_IN_ROOT`, as the file API resolves a
//! sandbox's paths, so no entry and no symlink an earlier entry planted can reach outside it.
//! Entries that name `..` or an absolute path, and hard links to anything outside the layer,
//! refuse the whole layer; device nodes and FIFOs are dropped; setuid and setgid bits are
//! cleared (a sandbox's root is mounted `nosuid,nodev` as well). No extended attribute of the
//! tarball is applied: a file capability would be a privilege.
//!
//! OCI whiteouts become overlayfs ones: `.wh.<name>` a `0:0` character device, and
//! `.wh..wh..opq` the `trusted.overlay.opaque` attribute of its directory. [`diff`] turns
//! them back.

use std::ffi::{CStr, CString};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use rustix::fs::{AtFlags, Gid, Mode, OFlags, ResolveFlags, Timestamps, Uid, XattrFlags};

const IN_LAYER: ResolveFlags = ResolveFlags::IN_ROOT
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);
const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const OPAQUE_XATTR: &CStr = c"trusted.overlay.opaque";
/// Bits a layer may set on a file: never setuid or setgid.
const ALLOWED_MODE: u32 = 0o1777;

/// Bounds on what one layer may unpack to: a decompression bomb stops here.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_entries: u64,
}

/// What unpacking a layer did.
#[derive(Debug, Default)]
pub struct Unpacked {
    /// Bytes of file content written.
    pub bytes: u64,
    pub entries: u64,
    /// Entries left out: device nodes and FIFOs.
    pub dropped: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The layer holds something no layer may: the whole layer is refused.
    #[error("layer entry {path:?} {reason}")]
    Refused { path: String, reason: &'static str },
    /// The layer is larger than the configured limits allow.
    #[error("layer exceeds the limit of {0}")]
    TooLarge(String),
    /// The tarball is malformed, or the store's disk failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl From<rustix::io::Errno> for LayerError {
    fn from(e: rustix::io::Errno) -> LayerError {
        LayerError::Io(e.into())
    }
}

fn refused(path: &str, reason: &'static str) -> LayerError {
    LayerError::Refused {
        path: path.to_string(),
        reason,
    }
}

/// Unpacks the (already decompressed) layer tarball `tar` into `dest`, an empty directory.
/// On error `dest` is left half-filled: the caller unpacks into a temporary directory and
/// removes it.
pub fn unpack(tar: impl Read, dest: &Path, limits: Limits) -> Result<Unpacked, LayerError> {
    let root: OwnedFd = rustix::fs::open(
        dest,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut archive = tar::Archive::new(tar);
    let mut done = Unpacked::default();
    for entry in archive.entries()? {
        let mut entry = entry?;
        done.entries += 1;
        if done.entries > limits.max_entries {
            return Err(LayerError::TooLarge(format!(
                "{} entries",
                limits.max_entries
            )));
        }
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let Some((parent, name)) = split(&raw).map_err(|reason| refused(&shown, reason))? else {
            continue; // the layer's root itself
        };
        let header = entry.header();
        let kind = header.entry_type();
        let size = header.size()?;
        if kind.is_file() && done.bytes.saturating_add(size) > limits.max_bytes {
            return Err(LayerError::TooLarge(format!(
                "{} bytes unpacked",
                limits.max_bytes
            )));
        }
        // Fields some writers leave blank read as 0, as other unpackers take them.
        let meta = Meta {
            mode: header.mode().unwrap_or(0o644) & ALLOWED_MODE,
            uid: id(header.uid().unwrap_or(0), &shown)?,
            gid: id(header.gid().unwrap_or(0), &shown)?,
            mtime: header.mtime().unwrap_or(0),
        };
        let dir = parent_dir(&root, &parent).map_err(|e| match e {
            rustix::io::Errno::EXIST | rustix::io::Errno::NOTDIR => {
                refused(&shown, "has a parent that is no directory in the layer")
            }
            e => e.into(),
        })?;
        let name_bytes = name.as_bytes();
        if name_bytes == OPAQUE_MARKER.as_bytes() {
            rustix::fs::fsetxattr(&dir, OPAQUE_XATTR, b"y", XattrFlags::empty())?;
            continue;
        }
        if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            let hidden = CString::new(hidden).map_err(io::Error::other)?;
            remove_existing(&dir, &hidden)?;
            let whiteout = rustix::fs::FileType::CharacterDevice;
            rustix::fs::mknodat(&dir, &hidden, whiteout, Mode::empty(), 0)?;
            continue;
        }
        match kind {
            tar::EntryType::Directory => make_dir(&dir, &name, &meta)?,
            t if t.is_file() => {
                remove_existing(&dir, &name)?;
                let file = rustix::fs::openat(
                    &dir,
                    &name,
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW,
                    Mode::from_raw_mode(0o600),
                )?;
                let mut file = std::fs::File::from(file);
                done.bytes += io::copy(&mut entry, &mut file)?;
                meta.apply(file.as_fd())?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| refused(&shown, "is a symlink without a target"))?;
                remove_existing(&dir, &name)?;
                rustix::fs::symlinkat(target.as_ref(), &dir, &name)?;
                let (uid, gid) = (Uid::from_raw(meta.uid), Gid::from_raw(meta.gid));
                rustix::fs::chownat(&dir, &name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| refused(&shown, "is a hard link without a target"))?;
                let Some((tparent, tname)) =
                    split(&target).map_err(|reason| refused(&shown, reason))?
                else {
                    return Err(refused(&shown, "is a hard link to the layer's root"));
                };
                let tdir = open_in_layer(&root, &tparent).map_err(|e| match e {
                    rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR => {
                        refused(&shown, "is a hard link to a file not in the layer")
                    }
                    e => e.into(),
                })?;
                remove_existing(&dir, &name)?;
                rustix::fs::linkat(&tdir, &tname, &dir, &name, AtFlags::empty()).map_err(|e| {
                    match e {
                        rustix::io::Errno::NOENT => {
                            refused(&shown, "is a hard link to a file not in the layer")
                        }
                        e => LayerError::Io(e.into()),
                    }
                })?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                done.dropped.push(shown);
            }
            // Metadata entries (pax globals) and kinds no layer needs.
            _ => {}
        }
    }
    Ok(done)
}

struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: u64,
}

impl Meta {
    fn apply(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        rustix::fs::fchown(
            fd,
            Some(Uid::from_raw(self.uid)),
            Some(Gid::from_raw(self.gid)),
        )?;
        // After the chown, which would clear the bits a chmod set.
        rustix::fs::fchmod(fd, Mode::from_raw_mode(self.mode))?;
        let time = rustix::fs::Timespec {
            tv_sec: self.mtime as i64,
            tv_nsec: 0,
        };
        let times = Timestamps {
            last_access: time,
            last_modification: time,
        };
        Ok(rustix::fs::futimens(fd, &times)?)
    }
}

fn id(value: u64, path: &str) -> Result<u32, LayerError> {
    u32::try_from(value).map_err(|_| refused(path, "has an owner id beyond 32 bits"))
}

/// Splits an entry's path into its parent (relative to the layer's root) and its name;
/// `None` for the root itself.
fn split(raw: &[u8]) -> Result<Option<(CString, CString)>, &'static str> {
    let path = Path::new(std::ffi::OsStr::from_bytes(raw));
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => parts.push(part.as_bytes()),
            Component::CurDir => {}
            Component::ParentDir => return Err("leaves the layer (..)"),
            Component::RootDir | Component::Prefix(_) => return Err("is an absolute path"),
        }
    }
    let Some(name) = parts.pop() else {
        return Ok(None);
    };
    let parent = if parts.is_empty() {
        b".".to_vec()
    } else {
        parts.join(&b'/')
    };
    let cstr = |b: Vec<u8>| CString::new(b).map_err(|_| "has a NUL in its path");
    Ok(Some((cstr(parent)?, cstr(name.to_vec())?)))
}

fn open_in_layer(root: &OwnedFd, path: &CStr) -> rustix::io::Result<OwnedFd> {
    crate::fsops::openat2(
        root,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        IN_LAYER,
    )
}

/// The directory `parent` of the layer, resolved inside it, made (root's, 0755) if missing.
fn parent_dir(root: &OwnedFd, parent: &CStr) -> rustix::io::Result<OwnedFd> {
    match open_in_layer(root, parent) {
        Err(rustix::io::Errno::NOENT) => {}
        other => return other,
    }
    // Made one level at a time, each resolved from the root again: a symlink on the way
    // still resolves inside the layer, and one that leads nowhere is not replaced.
    let bytes = parent.to_bytes();
    let mut end = 0;
    while end < bytes.len() {
        let start = if end == 0 { 0 } else { end + 1 };
        end = bytes[start..]
            .iter()
            .position(|&b| b == b'/')
            .map_or(bytes.len(), |i| start + i);
        let prefix = CString::new(&bytes[..end]).map_err(|_| rustix::io::Errno::INVAL)?;
        if let Err(rustix::io::Errno::NOENT) = open_in_layer(root, &prefix) {
            let up = if start == 0 {
                &b"."[..]
            } else {
                &bytes[..start - 1]
            };
            let up = open_in_layer(
                root,
                &CString::new(up).map_err(|_| rustix::io::Errno::INVAL)?,
            )?;
            let name = CString::new(&bytes[start..end]).map_err(|_| rustix::io::Errno::INVAL)?;
            rustix::fs::mkdirat(&up, &name, Mode::from_raw_mode(0o755))?;
        }
    }
    open_in_layer(root, parent)
}

fn make_dir(dir: &OwnedFd, name: &CStr, meta: &Meta) -> io::Result<()> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {}
        Ok(_) => {
            remove_existing(dir, name)?;
            rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700))?;
        }
        Err(_) => rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700))?,
    }
    let sub = open_beneath(dir, name)?;
    meta.apply(sub.as_fd())
}

/// Opens a directory entry of `dir` without following anything.
fn open_beneath(dir: &OwnedFd, name: &CStr) -> io::Result<OwnedFd> {
    Ok(crate::fsops::openat2(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_XDEV,
    )?)
}

/// Removes what a lower entry of this layer left at `name`, a whole tree if a directory.
fn remove_existing(dir: &OwnedFd, name: &CStr) -> io::Result<()> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
            crate::fsops::remove_children(open_beneath(dir, name)?)?;
            Ok(rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?)
        }
        Ok(_) => Ok(rustix::fs::unlinkat(dir, name, AtFlags::empty())?),
    }
}

/// What [`diff`] wrote.
#[derive(Debug, Default)]
pub struct Diffed {
    pub entries: u64,
    pub bytes: u64,
}

/// How a diff writes its entries.
pub struct DiffSpec<'a> {
    /// Paths (relative, such as `etc/hostname`) left out with everything under them.
    pub skip: &'a [&'a str],
    /// Paths the sandbox's image masked: their whiteouts and opaque markers are left out,
    /// what the sandbox put in a masked directory (its home under a masked `/home`) is not.
    pub masks: &'a [&'a str],
    /// Files of this uid and gid are written as owned by `owner.1`: a layer does not keep
    /// the host uid its sandbox happened to run as.
    pub owner: (u32, u32),
}

/// Writes the overlay upper directory `upper` as an OCI layer tarball (uncompressed) to `out`:
/// overlay whiteouts and opaque directories become OCI ones. Nothing is followed; sockets,
/// FIFOs and devices other than whiteouts are left out.
pub fn diff(upper: BorrowedFd<'_>, spec: &DiffSpec<'_>, out: impl Write) -> io::Result<Diffed> {
    let mut builder = tar::Builder::new(out);
    let mut done = Diffed::default();
    let root = rustix::fs::openat(
        upper,
        c".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    diff_dir(&root, "", spec, &mut builder, &mut done)?;
    builder.into_inner()?.flush()?;
    Ok(done)
}

fn diff_dir<W: Write>(
    dir: &OwnedFd,
    base: &str,
    spec: &DiffSpec<'_>,
    builder: &mut tar::Builder<W>,
    done: &mut Diffed,
) -> io::Result<()> {
    let mut names: Vec<CString> = rustix::fs::Dir::read_from(dir)?
        .filter_map(Result::ok)
        .filter(|e| !matches!(e.file_name().to_bytes(), b"." | b".."))
        .map(|e| e.file_name().to_owned())
        .collect();
    names.sort();
    for name in names {
        let shown = String::from_utf8_lossy(name.to_bytes());
        let path = if base.is_empty() {
            shown.into_owned()
        } else {
            format!("{base}/{shown}")
        };
        if spec.skip.contains(&path.as_str()) {
            continue;
        }
        let st = rustix::fs::statat(dir, &name, AtFlags::SYMLINK_NOFOLLOW)?;
        let mut header = tar::Header::new_gnu();
        header.set_mode(st.st_mode & ALLOWED_MODE);
        let (from, to) = spec.owner;
        header.set_uid(if st.st_uid == from { to } else { st.st_uid }.into());
        header.set_gid(if st.st_gid == from { to } else { st.st_gid }.into());
        header.set_mtime(st.st_mtime.max(0) as u64);
        header.set_size(0);
        done.entries += 1;
        match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => {
                header.set_entry_type(tar::EntryType::Directory);
                builder.append_data(&mut header, format!("{path}/"), io::empty())?;
                let sub = open_beneath(dir, &name)?;
                let mut marker = [0u8; 1];
                if rustix::fs::fgetxattr(&sub, OPAQUE_XATTR, &mut marker).is_ok_and(|n| n == 1)
                    && marker == *b"y"
                    && !spec.masks.contains(&path.as_str())
                {
                    let mut opaque = tar::Header::new_gnu();
                    opaque.set_entry_type(tar::EntryType::Regular);
                    opaque.set_mode(0o644);
                    opaque.set_uid(0);
                    opaque.set_gid(0);
                    opaque.set_mtime(0);
                    opaque.set_size(0);
                    builder.append_data(
                        &mut opaque,
                        format!("{path}/{OPAQUE_MARKER}"),
                        io::empty(),
                    )?;
                }
                diff_dir(&sub, &path, spec, builder, done)?;
            }
            libc::S_IFREG => {
                let file = rustix::fs::openat(
                    dir,
                    &name,
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(st.st_size as u64);
                done.bytes += st.st_size as u64;
                let file = std::fs::File::from(file);
                builder.append_data(&mut header, &path, file.take(st.st_size as u64))?;
            }
            libc::S_IFLNK => {
                let target = rustix::fs::readlinkat(dir, &name, Vec::new())?;
                header.set_entry_type(tar::EntryType::Symlink);
                let target = std::ffi::OsStr::from_bytes(target.as_bytes());
                builder.append_link(&mut header, &path, target)?;
            }
            libc::S_IFCHR if st.st_rdev == 0 && spec.masks.contains(&path.as_str()) => {
                done.entries -= 1;
            }
            libc::S_IFCHR if st.st_rdev == 0 => {
                let (parent, hidden) = path.rsplit_once('/').unwrap_or(("", &path));
                let whiteout = if parent.is_empty() {
                    format!("{WHITEOUT_PREFIX}{hidden}")
                } else {
                    format!("{parent}/{WHITEOUT_PREFIX}{hidden}")
                };
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o644);
                builder.append_data(&mut header, whiteout, io::empty())?;
            }
            _ => done.entries -= 1,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
