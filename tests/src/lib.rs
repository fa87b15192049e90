//! Test harness: starts a real `cella serve` on a free port with its own data directory,
//! cgroup parent and uid range, and talks to it over HTTP.

use std::io::{self, BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, RequestBuilder, Response};
use serde_json::{Value, json};

pub use serde_json;

static SERVERS: AtomicU32 = AtomicU32::new(0);

/// The `cella` binary under test: `$CELLA_BIN`, or the workspace's release/debug build.
pub fn cella_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("CELLA_BIN") {
        return bin.into();
    }
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let bin = target.join(profile).join("cella");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace` (same profile) first",
        bin.display()
    );
    bin
}

pub struct Server {
    pub url: String,
    pub data_dir: PathBuf,
    pub cgroup_parent: String,
    pub uid_base: u32,
    child: Option<Child>,
    pub http: Client,
    extra_env: Vec<(String, String)>,
    port: u16,
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` so that it gets SIGTERM when this test process exits, however it exits:
/// servers shared by a test binary live in statics that are never dropped. The parent-death
/// signal follows the *thread* that forked, and test threads come and go, so every server is
/// forked by one thread that lives as long as the process.
fn spawn_tied_to_this_process(mut cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        // The sender lives in this static, so the thread serves until the process exits.
        std::thread::spawn(move || {
            for (mut cmd, reply) in rx {
                let _ = reply.send(cmd.spawn());
            }
        });
        Mutex::new(tx)
    });
    // SAFETY: prctl and setgroups are async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(io::Error::last_os_error());
            }
            // As `sudo` starts it: with root's group as a supplementary group too, which the
            // server must not let count when it acts as a sandbox's user.
            if libc::setgroups(1, [0].as_ptr()) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((cmd, tx))
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| io::Error::other("the spawner thread is gone"))?
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Removes the data dirs of test servers whose test process has ended: a server kept in a
/// `static` (one per test binary) is never dropped, so never removes its own.
fn remove_data_dirs_of_ended_tests() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix("cella-test-")
            .and_then(|tag| tag.split('-').next());
        if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Server {
    /// Starts a server with the given extra `CELLA_*` settings.
    pub fn start_with(env: &[(&str, &str)]) -> Server {
        static SWEPT: std::sync::Once = std::sync::Once::new();
        SWEPT.call_once(remove_data_dirs_of_ended_tests);
        let n = SERVERS.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}-{n}", std::process::id());
        let data_dir = std::env::temp_dir().join(format!("cella-test-{tag}"));
        let _ = std::fs::remove_dir_all(&data_dir);
        let mut server = Server {
            url: String::new(),
            data_dir,
            cgroup_parent: format!("cella-test-{tag}"),
            uid_base: 1_000_000 + ((std::process::id() % 1000) * 16 + n % 16) * 1000,
            child: None,
            http: Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("http client"),
            extra_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            port: free_port(),
        };
        server.url = format!("http://127.0.0.1:{}", server.port);
        server.launch();
        server
    }

    pub fn start() -> Server {
        Server::start_with(&[])
    }

    fn launch(&mut self) {
        let mut cmd = Command::new(cella_bin());
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .env("CELLA_CGROUP_PARENT", &self.cgroup_parent)
            .env("CELLA_UID_BASE", self.uid_base.to_string())
            .env("CELLA_UID_COUNT", "1000")
            .env("CELLA_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        let mut child = spawn_tied_to_this_process(cmd).expect("start cella");
        // Forward the server's log to the test output.
        if let Some(err) = child.stderr.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    eprintln!("[server] {line}");
                }
            });
        }
        self.child = Some(child);
        let deadline = Instant::now() + scaled(30.0);
        while Instant::now() < deadline {
            if let Ok(r) = self.http.get(format!("{}/healthz", self.url)).send()
                && r.status().is_success()
            {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("cella exited during start-up: {status}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("cella did not become healthy");
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("running")
    }

    /// SIGKILLs the server, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill9();
        self.launch();
    }

    /// How the server exited, if it does within `secs`.
    pub fn exit_within(&mut self, secs: f64) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let mut status = None;
        eventually(secs, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        if status.is_some() {
            self.child = None;
        }
        status
    }

    /// Stops the server with SIGTERM and waits for its graceful shutdown.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        c.wait().expect("wait")
    }

    pub fn api(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.url)
    }

    pub fn get(&self, path: &str) -> Response {
        self.http.get(self.api(path)).send().expect("request")
    }

    pub fn post(&self, path: &str, body: Value) -> Response {
        self.http
            .post(self.api(path))
            .json(&body)
            .send()
            .expect("request")
    }

    /// A request to SandboxFusion's `/run_code`, which is not under `/api/v1`.
    pub fn run_code(&self, body: Value) -> Response {
        self.post_root("/run_code", body)
    }

    /// A POST to a path at the server's root (another system's face), not under `/api/v1`.
    pub fn post_root(&self, path: &str, body: Value) -> Response {
        let url = format!("{}{path}", self.url);
        self.http.post(url).json(&body).send().expect("request")
    }

    pub fn get_root(&self, path: &str) -> Response {
        let url = format!("{}{path}", self.url);
        self.http.get(url).send().expect("request")
    }

    /// The Prometheus exposition at `/metrics`.
    pub fn metrics(&self) -> String {
        let r = self.http.get(format!("{}/metrics", self.url)).send();
        r.and_then(Response::text).expect("metrics")
    }

    /// The value of one series at `/metrics` (e.g. `name{label="x"}`); 0 if not there yet.
    pub fn metric(&self, series: &str) -> f64 {
        let prefix = format!("{series} ");
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0.0, |v| v.trim().parse().expect("a number"))
    }

    pub fn delete(&self, path: &str) -> Response {
        self.http.delete(self.api(path)).send().expect("request")
    }

    pub fn send(&self, req: RequestBuilder) -> Response {
        req.send().expect("request")
    }

    /// Creates a sandbox and returns its id.
    pub fn sandbox(&self, body: Value) -> String {
        let r = self.post("/sandboxes", body);
        let (status, v) = (r.status(), json_of(r));
        assert_eq!(status, 201, "create sandbox: {v}");
        v["id"].as_str().expect("id").to_string()
    }

    /// Runs a shell line in a sandbox and returns the result JSON.
    pub fn sh(&self, id: &str, line: &str) -> Value {
        self.exec(id, json!({"shell": line}))
    }

    /// Sends `head` (a request line such as `PUT /path`, and any further header lines), then
    /// `body` as it is, on a connection of its own, as far as the server takes it: a server
    /// that answers early and closes may refuse the rest. The head's own framing headers say
    /// how long the body is meant to be.
    pub fn send_raw(&self, head: &str, body: &[u8]) -> std::net::TcpStream {
        use std::io::Write;
        let address = self.url.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(address).expect("connect");
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or("");
        // One request per connection: the server closes it once it has answered.
        let mut message =
            format!("{request_line} HTTP/1.1\r\nHost: cella\r\nConnection: close\r\n");
        for header in lines {
            message += &format!("{header}\r\n");
        }
        message += "\r\n";
        let _ = stream
            .write_all(message.as_bytes())
            .and_then(|()| stream.write_all(body));
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        stream
    }

    /// Starts a context in sandbox `id` and returns its id.
    pub fn context(&self, id: &str, body: Value) -> String {
        let r = self.post(&format!("/sandboxes/{id}/contexts"), body);
        let (status, v) = (r.status(), json_of(r));
        assert_eq!(status, 201, "create context: {v}");
        v["id"].as_str().expect("id").to_string()
    }

    /// Runs `code` in a context (with the request's other fields from `body`) and returns
    /// the answer.
    pub fn execute(&self, id: &str, context: &str, code: &str, mut body: Value) -> Value {
        body["code"] = code.into();
        let r = self.post(&format!("/sandboxes/{id}/contexts/{context}/execute"), body);
        let (status, v) = (r.status(), json_of(r));
        assert_eq!(status, 200, "execute {code:?}: {v}");
        v
    }

    pub fn exec(&self, id: &str, body: Value) -> Value {
        let r = self.post(&format!("/sandboxes/{id}/exec"), body);
        let (status, v) = (r.status(), json_of(r));
        assert_eq!(status, 200, "exec: {v}");
        v
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.terminate();
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
        for (_, dir) in parent_cgroups(&self.cgroup_parent) {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

pub fn json_of(r: Response) -> Value {
    let text = r.text().expect("body");
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

/// The answer on a raw connection, read until the server closes it: its status code and
/// its body as JSON.
pub fn answer_of(mut stream: std::net::TcpStream) -> (u16, Value) {
    use std::io::Read;
    let mut answer = Vec::new();
    // Whatever arrived before a reset is still the answer.
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").expect("an answer");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// A body in HTTP/1.1 chunked encoding, in chunks of `size` bytes.
pub fn chunked(body: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / size * 8 + 8);
    for chunk in body.chunks(size) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// Asserts that `r` is an error answer of `status` whose message says `says`; returns its
/// `error` object.
pub fn assert_refused(r: Response, status: u16, says: &str) -> Value {
    let got = r.status();
    let body = json_of(r);
    assert_eq!(got, status, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(says), "{says:?} not in {body}");
    body["error"].clone()
}

/// Host processes running as a uid in `[base, base + count)`.
pub fn processes_with_uid_in(base: u32, count: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next()?.parse::<u32>().ok());
        if uid.is_some_and(|u| (base..base + count).contains(&u)) {
            pids.push(pid);
        }
    }
    pids
}

/// Mount points on the host whose path contains `needle`.
pub fn host_mounts_containing(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.contains(needle))
        .map(str::to_string)
        .collect()
}

/// Whether this host runs the unified cgroup v2 hierarchy alone (no v1 memory controller).
pub fn cgroup_v2() -> bool {
    !Path::new("/sys/fs/cgroup/memory").is_dir()
        && Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// A server's cgroup parent in each hierarchy: the v1 ones, or the one v2 hierarchy. Each
/// that the server uses exists while it runs, so a check of them cannot pass vacuously.
pub fn parent_cgroups(parent: &str) -> Vec<(&'static str, PathBuf)> {
    let root = Path::new("/sys/fs/cgroup");
    if cgroup_v2() {
        return vec![("unified", root.join(parent))];
    }
    ["memory", "pids", "cpu", "cpuacct", "cpuset", "freezer"]
        .into_iter()
        .map(|h| (h, root.join(h).join(parent)))
        .collect()
}

/// Cgroups left under a parent, across its hierarchies. The leaf the inits of v2 sandboxes
/// live in (`_inits`) is the server's own: it counts only while it holds a process.
pub fn cgroups_under(parent: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (hierarchy, dir) in parent_cgroups(parent) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let idle_inits = name == "_inits"
                    && std::fs::read_to_string(e.path().join("cgroup.procs"))
                        .is_ok_and(|procs| procs.is_empty());
                if e.file_type().is_ok_and(|t| t.is_dir()) && !idle_inits {
                    out.push(format!("{hierarchy}/{name}"));
                }
            }
        }
    }
    out
}

/// The parent of a live process, from `/proc/<pid>/stat`.
pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(1)?.parse().ok()
}

/// Processes whose parent chain leads to `root` (excluding it).
pub fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Some(ppid) = self::parent_of(pid) {
            parent_of.push((pid, ppid));
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found.remove(0);
    found
}

/// How many times slower than a developer's machine this one runs (`CELLA_TEST_SLOWDOWN`,
/// 1 unless set: the cgroup v2 guest under software emulation sets it). Bounds on how long
/// something may take scale by it, through [`scaled`] and [`eventually`]; what the tests
/// check does not change.
pub fn slowdown() -> f64 {
    static SLOWDOWN: OnceLock<f64> = OnceLock::new();
    *SLOWDOWN.get_or_init(|| {
        std::env::var("CELLA_TEST_SLOWDOWN")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&v: &f64| v >= 1.0)
            .unwrap_or(1.0)
    })
}

/// `secs` on a developer's machine, on this one (see [`slowdown`]).
pub fn scaled(secs: f64) -> Duration {
    Duration::from_secs_f64(secs * slowdown())
}

/// Whether `f` holds within `secs` (scaled, see [`slowdown`]), trying every 20 ms.
pub fn eventually(secs: f64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + scaled(secs);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}
