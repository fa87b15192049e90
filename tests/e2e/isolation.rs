//! Hostile code: every escape attempt fails, checked from inside the sandbox and from the host.

use std::sync::OnceLock;

use cella_e2e::{Server, assert_refused, eventually, json_of};
use serde_json::{Value, json};

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(Server::start)
}

/// Runs Python in a fresh sandbox and returns the result.
fn python(code: &str) -> Value {
    let s = server();
    let id = s.sandbox(json!({}));
    let r = s.exec(
        &id,
        json!({"command": ["python3", "-c", code], "timeout": 20}),
    );
    s.delete(&format!("/sandboxes/{id}"));
    r
}

/// A Python prelude that makes raw syscalls and reports errno names.
const SYSCALL: &str = r#"
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
def sc(nr, *args):
    r = libc.syscall(nr, *[ctypes.c_long(a) for a in args])
    return 'ok' if r >= 0 else errno.errorcode[ctypes.get_errno()]
"#;

#[test]
fn runs_unprivileged_with_seccomp_and_no_capabilities() {
    let r = python("print(open('/proc/self/status').read())");
    let status = r["stdout"].as_str().unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_default()
            .to_string()
    };
    assert_ne!(field("Uid:").split_whitespace().next(), Some("0"));
    assert_eq!(field("CapEff:"), "0000000000000000");
    assert_eq!(field("CapPrm:"), "0000000000000000");
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(field("Seccomp:"), "2");
    // None of SIGHUP, SIGINT, SIGQUIT or SIGTERM is ignored: the spawner ignores the signals
    // meant for the server's process group, and its inits inherit that until exec.
    let ignored = u64::from_str_radix(&field("SigIgn:"), 16).unwrap();
    assert_eq!(ignored & 0x4007, 0, "SigIgn {ignored:x}");
}

#[test]
fn cannot_read_host_secrets() {
    let s = server();
    let marker = format!("/root/cella-secret-{}", std::process::id());
    std::fs::write(&marker, "top secret").unwrap();
    let id = s.sandbox(json!({}));
    let r = s.sh(
        &id,
        &format!(
            "cat {marker}; cat /etc/shadow; ls -A /root; ls -A /home; \
             test -e {data} && echo data-dir-shows; cat /proc/self/mountinfo",
            data = s.data_dir.display()
        ),
    );
    let out = format!("{}{}", r["stdout"], r["stderr"]);
    assert!(!out.contains("top secret"), "{out}");
    assert!(!out.contains("root:"), "{out}");
    // The data dir is masked, not just unreadable; under the sandbox's fresh /tmp (where the
    // tests keep it) not even its path shows.
    assert!(s.data_dir.starts_with("/tmp"));
    assert!(!out.contains("data-dir-shows"), "{out}");
    // Nor does the overlay's description name its layers by their host paths.
    assert!(out.contains("upperdir=upper,"), "{out}");
    assert!(!out.contains(&s.data_dir.display().to_string()), "{out}");
    // From the host: the API cannot reach it either; as for the sandbox's user, the masked
    // /root is an empty directory only root may open.
    let api = s.get(&format!("/sandboxes/{id}/files/read?path={marker}"));
    assert_refused(api, 400, &format!("{marker}: permission denied"));
    s.delete(&format!("/sandboxes/{id}"));
    std::fs::remove_file(&marker).unwrap();
}

/// Host files only root may read, as the `host` image shows them; removed on drop.
struct RootOnlyFiles(std::path::PathBuf);

impl RootOnlyFiles {
    fn plant() -> RootOnlyFiles {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::path::PathBuf::from(format!("/opt/cella-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("closed")).unwrap();
        for (name, mode) in [
            ("secret", 0o600),
            ("group-secret", 0o640),
            ("closed/inside", 0o644),
            ("open", 0o644),
        ] {
            std::fs::write(dir.join(name), format!("host file {name}")).unwrap();
            std::fs::set_permissions(dir.join(name), PermissionsExt::from_mode(mode)).unwrap();
        }
        std::fs::set_permissions(dir.join("closed"), PermissionsExt::from_mode(0o700)).unwrap();
        RootOnlyFiles(dir)
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for RootOnlyFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_file_api_reaches_only_what_the_sandboxs_user_may() {
    let s = server();
    let host = RootOnlyFiles::plant();
    let hidden = ["secret", "group-secret", "closed/inside"].map(|n| host.path(n));
    let id = s.sandbox(json!({}));
    let f = |p: &str| format!("/sandboxes/{id}/files{p}");
    // What the sandbox's user sees from inside...
    let r = s.sh(
        &id,
        &format!("cat {} {}", hidden.join(" "), host.path("open")),
    );
    assert_eq!(r["stdout"], "host file open", "{r}");
    // ... is what the API reaches: root on the host could open these, the user cannot.
    for path in &hidden {
        let denied = |r| assert_refused(r, 400, &format!("{path}: permission denied"));
        denied(s.get(&f(&format!("/read?path={path}"))));
        denied(s.get(&f(&format!("?path={path}"))));
    }
    // Behind a directory the user may not search, not even its name or size shows, and
    // nothing is made or removed.
    let closed = host.path("closed");
    for what in ["/list?path={closed}", "/stat?path={closed}/inside"] {
        let r = s.get(&f(&what.replace("{closed}", &closed)));
        assert_refused(r, 400, "permission denied");
    }
    for made in [
        s.post(
            &f("/write"),
            json!({"path": host.path("closed/new"), "content": "x"}),
        ),
        s.post(&f("/mkdir"), json!({"path": host.path("closed/d")})),
        s.delete(&f(&format!("?path={}", host.path("closed/inside")))),
    ] {
        assert_refused(made, 400, "permission denied");
    }
    // Where the user may search, the API's root may add files (to the sandbox's own layer).
    let added = s.post(
        &f("/write"),
        json!({"path": host.path("added"), "content": "x"}),
    );
    assert_eq!(added.status(), 200);
    assert!(
        !host.0.join("added").exists(),
        "the host's own directory is untouched"
    );
    assert_refused(
        s.post(
            &f("/move"),
            json!({"source": host.path("closed/inside"), "destination": "/tmp/taken"}),
        ),
        400,
        "permission denied",
    );
    let open = json_of(s.get(&f(&format!("/read?path={}", host.path("open")))));
    assert_eq!(open["content"], "host file open", "{open}");
    // A run's fetched files too, through either API.
    let mut wanted = hidden.to_vec();
    wanted.push(host.path("open"));
    let native = json_of(s.post(
        "/runs",
        json!({"language": "bash", "code": "true", "fetch_files": wanted}),
    ));
    let fusion =
        json_of(s.run_code(json!({"language": "bash", "code": "true", "fetch_files": wanted})));
    for r in [&native, &fusion] {
        let names: Vec<&String> = r["files"].as_object().unwrap().keys().collect();
        assert_eq!(names, [&host.path("open")], "{r}");
    }
    s.delete(&format!("/sandboxes/{id}"));
}

#[test]
fn host_files_are_never_touched() {
    let s = server();
    let id = s.sandbox(json!({}));
    let stamp = format!("cella-touch-{}", std::process::id());
    let r = s.sh(
        &id,
        &format!(
            "echo x > /tmp/{stamp}; echo x > /{stamp}; echo hacked >> /etc/hosts 2>&1; echo $?"
        ),
    );
    // Writing /etc/hosts fails for the unprivileged user; the others land in the overlay only.
    assert_eq!(r["stdout"], "1\n", "{r}");
    assert!(!std::path::Path::new(&format!("/tmp/{stamp}")).exists());
    assert!(!std::path::Path::new(&format!("/{stamp}")).exists());
    assert!(
        !std::fs::read_to_string("/etc/hosts")
            .unwrap()
            .contains("hacked")
    );
    s.delete(&format!("/sandboxes/{id}"));
}

#[test]
fn no_network_but_loopback() {
    let r = python(
        r#"
import socket, os
print(sorted(os.listdir('/proc/self/net/dev_snmp6')) if os.path.exists('/proc/self/net/dev_snmp6') else open('/proc/net/dev').read().count(':'))
for host in [('1.1.1.1', 53), ('10.0.0.1', 80)]:
    s = socket.socket(); s.settimeout(2)
    try:
        s.connect(host); print('connected', host)
    except OSError as e:
        print('blocked', e.errno)
srv = socket.socket(); srv.bind(('127.0.0.1', 0)); srv.listen(); port = srv.getsockname()[1]
c = socket.create_connection(('127.0.0.1', port)); a, _ = srv.accept(); c.send(b'ping'); print(a.recv(4))
"#,
    );
    let out = r["stdout"].as_str().unwrap();
    assert!(!out.contains("connected"), "{out}");
    assert!(
        out.contains("blocked 101"),
        "network unreachable expected: {out}"
    );
    assert!(out.contains("b'ping'"), "loopback must work: {out}");
}

#[test]
fn its_own_name_resolves_and_the_hosts_names_do_not_show() {
    let r = python(
        "import socket\nname = socket.gethostname()\n\
         print(name, socket.gethostbyname(name), open('/etc/hostname').read().strip())\n\
         print(open('/etc/hosts').read())",
    );
    let out = r["stdout"].as_str().unwrap();
    let (names, hosts) = out.split_once('\n').unwrap();
    let name = names.split(' ').next().unwrap();
    assert!(name.starts_with("sandbox-"), "{out}");
    assert_eq!(names, format!("{name} 127.0.1.1 {name}"), "{r}");
    // Its own, as a container's: none of the host's names.
    assert_eq!(
        hosts.trim_end(),
        format!(
            "127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n::1\tlocalhost ip6-localhost ip6-loopback"
        )
    );
}

#[test]
fn cannot_reach_the_server_or_host_loopback() {
    let s = server();
    let port = s.url.rsplit(':').next().unwrap().to_string();
    let r = python(&format!(
        "import socket\ntry:\n  socket.create_connection(('127.0.0.1', {port}), timeout=2); print('reached')\nexcept OSError as e: print('refused', e.errno)"
    ));
    assert!(r["stdout"].as_str().unwrap().starts_with("refused"), "{r}");
}

#[test]
fn sees_only_its_own_processes() {
    let r = python("import os; print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))");
    let pids: Vec<i64> = serde_json::from_str(r["stdout"].as_str().unwrap().trim()).unwrap();
    // Only the python process itself (its init is hidden): nothing from the host.
    assert!(pids.len() <= 2 && pids.iter().all(|&p| p < 100), "{pids:?}");
    let r = python(&format!(
        "import os\ntry:\n  os.kill({}, 0); print('signalled')\nexcept OSError as e: print(e.errno)",
        std::process::id()
    ));
    assert_eq!(
        r["stdout"], "3\n",
        "the host pid must not exist inside: {r}"
    );
}

#[test]
fn escape_syscalls_are_refused() {
    let code = format!(
        r#"{SYSCALL}
import socket
print('mount', sc(165, 0, 0, 0, 0, 0))
print('unshare_user', sc(272, 0x10000000))
print('unshare_net', sc(272, 0x40000000))
print('setns', sc(308, 0, 0))
print('chroot', sc(161, 0))
print('pivot_root', sc(155, 0, 0))
print('ptrace_attach', sc(101, 16, 1, 0, 0))
print('ptrace_traceme', sc(101, 0, 0, 0, 0))
print('process_vm_readv', sc(310, 1, 0, 0, 0, 0, 0))
print('io_uring_setup', sc(425, 1, 0))
print('keyctl', sc(250, 0, 0, 0, 0))
print('perf_event_open', sc(298, 0, 0, -1, -1, 0))
print('setuid0', sc(105, 0))
print('clone_newns', sc(56, 0x00020000 | 17, 0, 0, 0, 0))
print('tiocsti', sc(16, 0, 0x5412, 0))
print('tiocsti_highbits', sc(16, 0, 0x5412 | (1 << 32), 0))
print('tioclinux', sc(16, 0, 0x541C, 0))
for fam, kind, proto, name in [(16, socket.SOCK_RAW, 12, 'netlink_netfilter'), (16, socket.SOCK_RAW, 9, 'netlink_audit'),
                               (17, socket.SOCK_RAW, 0, 'packet'), (40, socket.SOCK_STREAM, 0, 'vsock')]:
    try:
        socket.socket(fam, kind, proto); print(name, 'ok')
    except OSError as e: print(name, errno.errorcode[e.errno])
os.mkfifo('/tmp/fifo'); print('mkfifo ok')
try: os.mknod('/tmp/null', 0o20666, os.makedev(1, 3)); print('mknod_char ok')
except OSError as e: print('mknod_char', errno.errorcode[e.errno])
# Route netlink (what getifaddrs uses) works, and shows only this sandbox's loopback.
print('interfaces', [n for _, n in socket.if_nameindex()])
"#
    );
    let r = python(&code);
    let out = r["stdout"].as_str().unwrap();
    let result = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or("missing")
            .to_string()
    };
    for name in [
        "mount",
        "unshare_user",
        "unshare_net",
        "setns",
        "chroot",
        "pivot_root",
        "ptrace_attach",
        "ptrace_traceme",
        "process_vm_readv",
        "keyctl",
        "perf_event_open",
        "setuid0",
        "clone_newns",
        "tiocsti",
        "tiocsti_highbits",
        "tioclinux",
        "netlink_netfilter",
        "netlink_audit",
        "packet",
        "vsock",
    ] {
        assert_eq!(
            result(name),
            "EPERM",
            "{name} must be refused by seccomp: {out}\n{}",
            r["stderr"]
        );
    }
    assert_eq!(result("io_uring_setup"), "ENOSYS", "{out}");
    assert_eq!(result("mkfifo"), "ok", "{out}");
    assert!(
        ["EPERM", "EACCES"].contains(&result("mknod_char").as_str()),
        "{out}"
    );
    assert_eq!(result("interfaces"), "['lo']", "{out}");
}

#[test]
fn exploit_only_syscalls_kill_the_process() {
    let r = python(&format!(
        "{SYSCALL}\nprint('before', flush=True)\nsc(321, 0, 0, 0)\nprint('after')"
    ));
    assert_eq!(r["stdout"], "before\n");
    assert_eq!(r["signal"], 31, "bpf(2) must kill with SIGSYS: {r}");
}

#[test]
fn setuid_binaries_do_not_elevate() {
    let s = server();
    let id = s.sandbox(json!({}));
    // `su` and `passwd` are setuid root on the host; mounts are nosuid and no_new_privs is set.
    let r = s.sh(&id, "su -c id root </dev/null; echo rc=$?; id -u");
    assert!(!r["stdout"].as_str().unwrap().contains("uid=0"), "{r}");
    assert!(r["stdout"].as_str().unwrap().contains("rc=1"), "{r}");
    s.delete(&format!("/sandboxes/{id}"));
}

#[test]
fn sandboxes_cannot_reach_each_other() {
    let s = server();
    let a = s.sandbox(json!({}));
    let b = s.sandbox(json!({}));
    // A listens on an abstract unix socket and on loopback TCP, and leaves a file in /dev/shm.
    let listen = r#"
import socket, time, os
u = socket.socket(socket.AF_UNIX); u.bind('\0cella-test'); u.listen()
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); t.bind(('127.0.0.1', 7777)); t.listen()
open('/dev/shm/a-was-here', 'w').write('x')
time.sleep(20)
"#;
    let started = json_of(s.post(
        &format!("/sandboxes/{a}/processes"),
        json!({"command": ["python3", "-c", listen]}),
    ));
    assert_eq!(started["running"], true);
    // The file is written once both listeners are up.
    assert!(
        eventually(
            10.0,
            || s.sh(&a, "test -e /dev/shm/a-was-here")["exit_code"] == 0
        ),
        "A's listeners never came up"
    );
    let probe = r#"
import socket, os
for target, fam in [('\0cella-test', socket.AF_UNIX), (('127.0.0.1', 7777), socket.AF_INET)]:
    s = socket.socket(fam)
    try:
        s.connect(target); print('reached')
    except OSError as e: print('isolated', e.errno)
print(os.path.exists('/dev/shm/a-was-here'))
"#;
    // The probe reaches both from A itself, so its failing from B is the isolation's doing.
    let r = s.exec(&a, json!({"command": ["python3", "-c", probe]}));
    assert_eq!(r["stdout"], "reached\nreached\nTrue\n", "{r}");
    let r = s.exec(&b, json!({"command": ["python3", "-c", probe]}));
    assert_eq!(r["stdout"], "isolated 111\nisolated 111\nFalse\n", "{r}");
    s.delete(&format!("/sandboxes/{a}"));
    s.delete(&format!("/sandboxes/{b}"));
}

#[test]
fn planted_symlinks_cannot_redirect_the_file_api() {
    let s = server();
    let id = s.sandbox(json!({}));
    let stamp = format!("cella-pwned-{}", std::process::id());
    // The Judge0 pattern: links to host paths, to the root, and to /proc magic links.
    s.sh(&id, "ln -s /etc/passwd pw; ln -s / rootlink; ln -s /proc/self/root selfroot; ln -s ../../../../../.. up; mkdir d");
    let read = |p: &str| json_of(s.get(&format!("/sandboxes/{id}/files/read?path={p}")));
    // Resolved inside the sandbox: its own /etc/passwd (with the sandbox user), never the host's.
    let pw = read("pw");
    assert!(pw["content"].as_str().unwrap().contains("user:x:"), "{pw}");
    assert_eq!(
        read("selfroot/etc/hostname")["error"]["code"],
        "invalid_argument"
    );
    for path in [format!("rootlink/tmp/{stamp}"), format!("up/tmp/{stamp}-2")] {
        let w = s.post(
            &format!("/sandboxes/{id}/files/write"),
            json!({"path": path, "content": "x"}),
        );
        let (status, body) = (w.status(), json_of(w));
        assert_eq!(status, 200, "{path}: {body}");
    }
    assert!(!std::path::Path::new(&format!("/tmp/{stamp}")).exists());
    assert!(!std::path::Path::new(&format!("/tmp/{stamp}-2")).exists());
    // Both landed in the sandbox's own /tmp.
    assert_eq!(
        s.sh(&id, &format!("ls /tmp/{stamp} /tmp/{stamp}-2 | wc -l"))["stdout"],
        "2\n"
    );
    // /proc and /dev are other mounts: the file API does not cross into them.
    for p in [
        "/proc/sys/kernel/core_pattern",
        "/proc/1/environ",
        "/dev/null",
    ] {
        let r = s.post(
            &format!("/sandboxes/{id}/files/write"),
            json!({"path": p, "content": "|/tmp/x"}),
        );
        assert_eq!(r.status(), 400, "{p} must be refused");
    }
    assert_ne!(
        std::fs::read_to_string("/proc/sys/kernel/core_pattern")
            .unwrap()
            .trim(),
        "|/tmp/x"
    );
    s.delete(&format!("/sandboxes/{id}"));
}

#[test]
fn the_servers_config_file_is_masked() {
    // Outside every directory masked anyway, and readable by all on the host.
    let file = format!("/opt/cella-test-config-{}.toml", std::process::id());
    std::fs::write(&file, "# secret: hunter2\n[sandbox]\nmemory_mb = 512\n").unwrap();
    let s = Server::start_with(&[("CELLA_CONFIG", &file)]);
    let id = s.sandbox(json!({}));
    let r = s.sh(&id, &format!("cat {file}; ls -A /opt"));
    std::fs::remove_file(&file).unwrap();
    let out = format!("{}{}", r["stdout"], r["stderr"]);
    assert!(!out.contains("hunter2"), "{out}");
    assert!(
        !r["stdout"].as_str().unwrap().contains("cella-test-config"),
        "{r}"
    );
    // The file was read: its settings are the sandbox's defaults.
    assert_eq!(
        json_of(s.get(&format!("/sandboxes/{id}")))["memory_mb"],
        512
    );
}

#[test]
fn landlock_is_in_force_as_the_server_reports() {
    let s = server();
    let info = json_of(s.get("/info"));
    let abi = info["isolation"]["landlock_abi"].as_i64().unwrap();
    let id = s.sandbox(json!({}));
    // A device node is refused without Landlock too, for want of CAP_MKNOD, but that check
    // comes after Landlock's: EACCES (13) is Landlock's answer, EPERM (1) the capability's.
    let r = s.exec(
        &id,
        json!({"command": ["python3", "-c", "import os, stat\ntry: os.mknod('null', stat.S_IFCHR | 0o600, os.makedev(1, 3))\nexcept OSError as e: print(e.errno)"]}),
    );
    let expected = if abi >= 1 { "13\n" } else { "1\n" };
    assert_eq!(r["stdout"], expected, "Landlock ABI {abi}: {r}");
    // The kernels this is tested on have it (ABI 2 on Debian 12's 6.1, newer here).
    assert!(abi >= 2, "{info}");
    s.delete(&format!("/sandboxes/{id}"));
}
