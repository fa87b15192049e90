use super::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

const LIMITS: Limits = Limits {
    max_bytes: 1 << 20,
    max_entries: 100,
};

struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("cella-layer-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("layer")).unwrap();
        Scratch(dir)
    }
    fn layer(&self) -> PathBuf {
        self.0.join("layer")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An entry written with its name as given, past the checks `tar::Builder` makes.
fn raw(
    tar: &mut tar::Builder<Vec<u8>>,
    name: &str,
    kind: tar::EntryType,
    mode: u32,
    data: &[u8],
    link: &str,
) {
    let mut header = tar::Header::new_old();
    let old = header.as_old_mut();
    old.name[..name.len()].copy_from_slice(name.as_bytes());
    old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(data.len() as u64);
    header.set_cksum();
    tar.append(&header, data).unwrap();
}

fn file(tar: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
    raw(tar, name, tar::EntryType::Regular, 0o644, data, "");
}

fn archive(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    build(&mut tar);
    tar.into_inner().unwrap()
}

fn refusal(bytes: &[u8], dest: &Path) -> String {
    match unpack(bytes, dest, LIMITS) {
        Err(LayerError::Refused { path, reason }) => format!("{path}: {reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn unpacks_files_links_and_whiteouts() {
    let s = Scratch::new("ok");
    let bytes = archive(|t| {
        raw(t, "./etc/", tar::EntryType::Directory, 0o755, b"", "");
        file(t, "./etc/os-release", b"cella\n");
        raw(t, "bin/tool", tar::EntryType::Regular, 0o6755, b"#!", "");
        raw(
            t,
            "bin/sh",
            tar::EntryType::Symlink,
            0o777,
            b"",
            "/bin/busybox",
        );
        raw(t, "bin/hard", tar::EntryType::Link, 0o755, b"", "bin/tool");
        file(t, "usr/.wh.gone", b"");
        file(t, "var/.wh..wh..opq", b"");
        raw(t, "dev/null", tar::EntryType::Char, 0o666, b"", "");
    });
    let done = unpack(&bytes[..], &s.layer(), LIMITS).unwrap();
    let l = s.layer();
    assert_eq!(std::fs::read(l.join("etc/os-release")).unwrap(), b"cella\n");
    let tool = std::fs::metadata(l.join("bin/tool")).unwrap();
    assert_eq!(
        tool.permissions().mode() & 0o7777,
        0o755,
        "setuid and setgid cleared"
    );
    assert_eq!(tool.nlink(), 2);
    assert_eq!(
        std::fs::read_link(l.join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    let whiteout = std::fs::symlink_metadata(l.join("usr/gone")).unwrap();
    assert_eq!(whiteout.mode() & libc::S_IFMT, libc::S_IFCHR);
    assert_eq!(whiteout.rdev(), 0);
    let dir = rustix::fs::open(l.join("var"), OFlags::RDONLY, Mode::empty()).unwrap();
    let mut marker = [0u8; 4];
    assert_eq!(
        rustix::fs::fgetxattr(&dir, OPAQUE_XATTR, &mut marker).unwrap(),
        1
    );
    assert!(!l.join("dev/null").exists(), "device nodes are dropped");
    assert_eq!(done.dropped, vec!["dev/null".to_string()]);
}

#[test]
fn refuses_paths_that_leave_the_layer() {
    let s = Scratch::new("escape");
    let outside = s.0.join("outside");
    let dotdot = archive(|t| file(t, "a/../../outside", b"x"));
    assert!(refusal(&dotdot, &s.layer()).contains("leaves the layer"));
    let absolute = archive(|t| file(t, &format!("{}", outside.display()), b"x"));
    assert!(refusal(&absolute, &s.layer()).contains("absolute path"));
    let hardlink = archive(|t| raw(t, "h", tar::EntryType::Link, 0o644, b"", "../outside"));
    assert!(refusal(&hardlink, &s.layer()).contains("leaves the layer"));
    assert!(!outside.exists());
}

#[test]
fn symlinks_never_lead_writes_outside() {
    let s = Scratch::new("symlink");
    let host_dir = s.0.join("host");
    std::fs::create_dir(&host_dir).unwrap();
    std::fs::write(host_dir.join("secret"), b"host").unwrap();
    let target = host_dir.display().to_string();
    // A file written through a symlink to a host directory, absolute and relative.
    let through = archive(|t| {
        raw(t, "abs", tar::EntryType::Symlink, 0o777, b"", &target);
        raw(
            t,
            "abs/secret",
            tar::EntryType::Regular,
            0o644,
            b"pwned",
            "",
        );
    });
    assert!(refusal(&through, &s.layer()).contains("no directory in the layer"));
    let relative = archive(|t| {
        raw(t, "rel", tar::EntryType::Symlink, 0o777, b"", "../host");
        raw(
            t,
            "rel/secret",
            tar::EntryType::Regular,
            0o644,
            b"pwned",
            "",
        );
        raw(t, "rel/new", tar::EntryType::Regular, 0o644, b"pwned", "");
    });
    assert!(refusal(&relative, &s.layer()).contains("no directory in the layer"));
    // A hard link through a symlink to a host file finds nothing in the layer.
    let link = archive(|t| {
        raw(t, "l", tar::EntryType::Symlink, 0o777, b"", &target);
        raw(t, "stolen", tar::EntryType::Link, 0o644, b"", "l/secret");
    });
    assert!(refusal(&link, &s.layer()).contains("not in the layer"));
    assert_eq!(std::fs::read(host_dir.join("secret")).unwrap(), b"host");
    assert!(!host_dir.join("new").exists());
    assert_eq!(std::fs::read_dir(&host_dir).unwrap().count(), 1);
}

#[test]
fn stops_at_its_limits() {
    let s = Scratch::new("limits");
    let big = archive(|t| file(t, "big", &vec![0u8; (LIMITS.max_bytes + 1) as usize]));
    assert!(matches!(
        unpack(&big[..], &s.layer(), LIMITS),
        Err(LayerError::TooLarge(_))
    ));
    let many = archive(|t| {
        for i in 0..=LIMITS.max_entries {
            file(t, &format!("f{i}"), b"");
        }
    });
    assert!(matches!(
        unpack(&many[..], &s.layer(), LIMITS),
        Err(LayerError::TooLarge(_))
    ));
}

#[test]
fn a_diff_unpacks_to_the_same_tree() {
    let s = Scratch::new("diff");
    let upper = s.0.join("upper");
    std::fs::create_dir_all(upper.join("opaque/inner")).unwrap();
    std::fs::create_dir_all(upper.join("etc")).unwrap();
    std::fs::write(upper.join("opaque/inner/f"), b"data").unwrap();
    std::fs::write(upper.join("etc/hostname"), b"skipped").unwrap();
    std::os::unix::fs::symlink("/target", upper.join("link")).unwrap();
    let whiteout = rustix::fs::FileType::CharacterDevice;
    rustix::fs::mknodat(
        rustix::fs::CWD,
        upper.join("gone"),
        whiteout,
        Mode::empty(),
        0,
    )
    .unwrap();
    let dir = rustix::fs::open(upper.join("opaque"), OFlags::RDONLY, Mode::empty()).unwrap();
    rustix::fs::fsetxattr(&dir, OPAQUE_XATTR, b"y", XattrFlags::empty()).unwrap();

    let fd = rustix::fs::open(&upper, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
    let mut tar = Vec::new();
    let owner = std::fs::metadata(upper.join("opaque/inner/f"))
        .unwrap()
        .uid();
    let spec = DiffSpec {
        skip: &["etc/hostname"],
        masks: &[],
        owner: (owner, 4242),
    };
    let done = diff(fd.as_fd(), &spec, &mut tar).unwrap();
    assert_eq!(done.bytes, 4);
    unpack(&tar[..], &s.layer(), LIMITS).unwrap();
    let l = s.layer();
    assert_eq!(std::fs::read(l.join("opaque/inner/f")).unwrap(), b"data");
    let meta = std::fs::metadata(l.join("opaque/inner/f")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (4242, 4242),
        "the sandbox's uid is not kept"
    );
    assert_eq!(
        std::fs::read_link(l.join("link")).unwrap(),
        Path::new("/target")
    );
    assert_eq!(
        std::fs::symlink_metadata(l.join("gone")).unwrap().mode() & libc::S_IFMT,
        libc::S_IFCHR
    );
    let dir = rustix::fs::open(l.join("opaque"), OFlags::RDONLY, Mode::empty()).unwrap();
    let mut marker = [0u8; 1];
    assert_eq!(
        rustix::fs::fgetxattr(&dir, OPAQUE_XATTR, &mut marker).unwrap(),
        1
    );
    assert!(l.join("etc").is_dir() && !l.join("etc/hostname").exists());
}
