//! Network egress against a peer host this test makes: a network namespace of its own behind
//! a veth pair, with servers on two ports. No egress by default; with it, what the policy
//! allows passes and everything else (other ports, the host itself, its loopback, metadata
//! and private addresses, the deny list) is refused at once; bandwidth is bounded; and nothing
//! is left in the host's network configuration, even after `kill -9` of the server.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use cella_e2e::{Server, assert_refused, eventually, json_of};
use serde_json::{Value, json};

/// Answers any request on each port with `ok`, or with N bytes for `GET /bytes/N`.
const PEER_SERVER: &str = r#"
import socketserver, sys, threading
class H(socketserver.StreamRequestHandler):
    def handle(self):
        path = self.rfile.readline().split()[1].decode()
        body = b"x" * int(path.rsplit("/", 1)[1]) if path.startswith("/bytes/") else b"ok"
        self.wfile.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
socketserver.ThreadingTCPServer.allow_reuse_address = True
for port in sys.argv[2:]:
    srv = socketserver.ThreadingTCPServer((sys.argv[1], int(port)), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"#;

/// A host on a network namespace of its own, reached from the host through a veth pair: the
/// host side is `host_ip`, the peer `ip`, serving on ports 8000 and 8001.
struct Peer {
    netns_holder: Child,
    server: Child,
    veth: String,
    ip: String,
    host_ip: String,
}

fn sh(cmd: &str) {
    let status = Command::new("sh").args(["-c", cmd]).status().unwrap();
    assert!(status.success(), "{cmd}");
}

impl Peer {
    fn start() -> Peer {
        static PEERS: AtomicU32 = AtomicU32::new(0);
        let k = PEERS.fetch_add(1, Ordering::Relaxed) % 4;
        let n = (std::process::id() % 60) * 4 + k;
        let (host_ip, ip) = (format!("198.18.{n}.1"), format!("198.18.{n}.2"));
        let veth = format!("{PEER_LINK}{}-{k}", std::process::id() % 100_000);
        let holder = Command::new("unshare")
            .args(["-n", "sleep", "600"])
            .spawn()
            .unwrap();
        let ns = format!("/proc/{}/ns/net", holder.id());
        std::thread::sleep(Duration::from_millis(100));
        sh(&format!(
            "ip link add {veth} type veth peer name eth0 netns {}",
            holder.id()
        ));
        sh(&format!(
            "ip addr add {host_ip}/30 dev {veth} && ip link set {veth} up"
        ));
        sh(&format!(
            "nsenter --net={ns} sh -c 'ip addr add {ip}/30 dev eth0 && ip link set eth0 up && ip link set lo up && ip route add default via {host_ip}'"
        ));
        let mut server = Command::new("nsenter")
            .arg(format!("--net={ns}"))
            .args(["/usr/bin/python3", "-c", PEER_SERVER, &ip, "8000", "8001"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut ready = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(server.stdout.take().unwrap()),
            &mut ready,
        )
        .unwrap();
        assert_eq!(ready.trim(), "ready");
        Peer {
            netns_holder: holder,
            server,
            veth,
            ip,
            host_ip,
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.netns_holder.kill();
        let _ = self.server.wait();
        let _ = self.netns_holder.wait();
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .status();
    }
}

/// The host side of the peers' veth pairs, the one thing these tests add to the host.
const PEER_LINK: &str = "cella-p";

/// What the host's network looks like, the tests' peers aside: its links and nftables rules.
fn host_network() -> (String, String) {
    let links = Command::new("ip")
        .args(["-o", "link"])
        .output()
        .unwrap()
        .stdout;
    let rules = Command::new("nft")
        .args(["list", "ruleset"])
        .output()
        .unwrap()
        .stdout;
    let links: Vec<String> = String::from_utf8_lossy(&links)
        .lines()
        .map(|l| l.split(':').nth(1).unwrap_or_default().trim().to_string())
        .filter(|name| !name.starts_with(PEER_LINK))
        .collect();
    (
        links.join(","),
        String::from_utf8_lossy(&rules).into_owned(),
    )
}

/// The slirp4netns processes a server started (one per sandbox with egress).
fn slirps_of(server_pid: u32) -> Vec<u32> {
    let out = Command::new("pgrep")
        .args(["-P", &server_pid.to_string(), "-x", "slirp4netns"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Whether a process has exited (gone, or a zombie waiting to be reaped).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

/// `curl` from inside the sandbox: the HTTP status (000 when refused) and the time it took.
fn fetch(s: &Server, id: &str, url: &str) -> (String, f64) {
    let out = s.sh(
        id,
        &format!(
            "curl -s -m {} -o /dev/null -w '%{{http_code}} %{{time_total}}' {url}",
            cella_e2e::scaled(5.0).as_secs()
        ),
    );
    let text = out["stdout"].as_str().unwrap().to_string();
    let (code, time) = text.split_once(' ').unwrap_or(("", "0"));
    (code.to_string(), time.parse().unwrap_or(0.0))
}

fn sandbox_with(s: &Server, network: Value) -> String {
    s.sandbox(json!({ "network": network }))
}

#[test]
fn egress_is_off_by_default_and_follows_its_policy() {
    let peer = Peer::start();
    let before = host_network();
    let s = Server::start();
    let url = |port: u16, path: &str| format!("http://{}:{port}{path}", peer.ip);

    let closed = s.sandbox(json!({}));
    assert_eq!(fetch(&s, &closed, &url(8000, "/")).0, "000");
    let info = json_of(s.get(&format!("/sandboxes/{closed}")));
    assert_eq!(info["network"]["egress"], false);

    let allowed = sandbox_with(
        &s,
        json!({"egress": true, "allow": [format!("{}:8000", peer.ip)]}),
    );
    assert_eq!(fetch(&s, &allowed, &url(8000, "/")).0, "200");
    let server_port = s.url.rsplit(':').next().unwrap().to_string();
    for refused in [
        url(8001, "/"),                                           // not on the allow list
        format!("http://{}:{server_port}/healthz", peer.host_ip), // the host itself
        format!("http://10.0.2.2:{server_port}/healthz"),         // the host's loopback
        format!("http://127.0.0.1:{server_port}/healthz"),        // the sandbox's own loopback
        "http://169.254.169.254/latest/meta-data/".to_string(),   // cloud metadata
    ] {
        let (code, took) = fetch(&s, &allowed, &refused);
        assert_eq!(code, "000", "{refused}");
        assert!(
            took < 1.0,
            "{refused} was refused at once, not timed out: {took} s"
        );
    }
    let resolv = s.sh(&allowed, "cat /etc/resolv.conf");
    assert!(
        resolv["stdout"]
            .as_str()
            .unwrap()
            .contains("nameserver 10.0.2.3")
    );

    // Without an allow list every public address is open, the deny list aside; private
    // ranges stay closed.
    let open = sandbox_with(
        &s,
        json!({"egress": true, "deny": [format!("{}:8001", peer.ip)]}),
    );
    assert_eq!(fetch(&s, &open, &url(8000, "/")).0, "200");
    assert_eq!(fetch(&s, &open, &url(8001, "/")).0, "000");
    assert_eq!(fetch(&s, &open, "http://10.1.2.3/").0, "000");
    assert_eq!(fetch(&s, &open, "http://192.168.1.1/").0, "000");

    // Bandwidth: 1 MB at 2 Mbit/s takes four seconds or so; at the default (100 Mbit/s) a
    // fraction of that, even where slirp4netns runs emulated.
    let slow = sandbox_with(&s, json!({"egress": true, "bandwidth_mbps": 2}));
    let (code, took) = fetch(&s, &slow, &url(8000, "/bytes/1000000"));
    assert_eq!(code, "200");
    assert!(took >= 3.0, "1 MB at 2 Mbit/s took {took} s");
    let (_, fast) = fetch(&s, &open, &url(8000, "/bytes/1000000"));
    assert!(fast < took, "{fast} s unbounded, {took} s bounded");

    // The ROCK and AgentRun faces take the same `network` on their create requests.
    let allow = json!({"egress": true, "allow": [format!("{}:8000", peer.ip)]});
    let rock = json_of(s.post_root(
        "/apis/envs/sandbox/v1/start",
        json!({"image": "python:3.11", "network": allow}),
    ));
    let rock = rock["result"]["sandbox_id"].as_str().unwrap().to_string();
    let agentrun = json_of(s.post_root(
        "/sandboxes",
        json!({"templateName": "code-interpreter", "network": allow}),
    ));
    let agentrun = agentrun["data"]["sandboxId"].as_str().unwrap().to_string();
    for id in [&rock, &agentrun] {
        assert_eq!(fetch(&s, id, &url(8000, "/")).0, "200");
        assert_eq!(fetch(&s, id, &url(8001, "/")).0, "000");
        let network = &json_of(s.get(&format!("/sandboxes/{id}")))["network"];
        assert_eq!(
            (&network["egress"], &network["allow"]),
            (&allow["egress"], &allow["allow"])
        );
        assert_eq!(s.delete(&format!("/sandboxes/{id}")).status(), 204);
    }

    // Every link ends with its sandbox, and nothing of them is on the host.
    let links = slirps_of(s.pid());
    assert_eq!(links.len(), 3);
    for id in [&allowed, &open, &slow] {
        assert_eq!(s.delete(&format!("/sandboxes/{id}")).status(), 204);
    }
    assert!(eventually(5.0, || links.iter().all(|p| exited(*p))));
    assert_eq!(host_network(), before);
}

#[test]
fn a_policy_that_cannot_hold_is_refused() {
    let s = Server::start();
    for (network, says) in [
        (
            json!({"egress": true, "allow": ["no-such-host.invalid"]}),
            "does not resolve",
        ),
        (json!({"egress": true, "allow": ["::1"]}), "IPv6"),
        (json!({"egress": true, "deny": ["1.2.3.4:99999"]}), "ports"),
        (
            json!({"egress": true, "bandwidth_mbps": 0}),
            "bandwidth_mbps",
        ),
        (
            json!({"egress": true, "bandwidth_mbps": 100_000}),
            "bandwidth_mbps",
        ),
    ] {
        let r = s.post("/sandboxes", json!({ "network": network }));
        assert_refused(r, 400, says);
    }
    assert!(slirps_of(s.pid()).is_empty());
}

#[test]
fn links_end_with_a_killed_server_and_runs_follow_the_configuration() {
    let peer = Peer::start();
    let before = host_network();
    let mut s = Server::start_with(&[("CELLA_NETWORK__RUNS__EGRESS", "true")]);
    // SandboxFusion's external-access case (`test_isolation_network_external_access`), with
    // the peer standing in for the public website these machines cannot reach.
    let code = format!(
        "import requests\n\ndef test_network_access():\n    try:\n        \
         response = requests.get('http://{}:8000/', timeout=5)\n        \
         if response.status_code == 200:\n            print('Network access successful.')\n        \
         else:\n            raise Exception(f'status {{response.status_code}}')\n    \
         except requests.exceptions.RequestException as e:\n        \
         raise Exception('Network access failed. Unable to connect to the external network.') from e\n\n\
         test_network_access()\n",
        peer.ip
    );
    let run_timeout = cella_e2e::scaled(10.0).as_secs_f64();
    let r = json_of(
        s.run_code(json!({"language": "python", "code": code, "run_timeout": run_timeout})),
    );
    assert_eq!(r["status"], "Success", "{r}");
    assert_eq!(
        r["run_result"]["stdout"], "Network access successful.\n",
        "{r}"
    );

    let id = sandbox_with(&s, json!({"egress": true}));
    assert_eq!(
        fetch(&s, &id, &format!("http://{}:8000/", peer.ip)).0,
        "200"
    );
    let links = slirps_of(s.pid());
    assert!(
        links.len() >= 2,
        "the run's sandbox and this one: {links:?}"
    );
    s.kill9();
    // slirp4netns ends when its exit pipe closes, which the server's death closes.
    assert!(
        eventually(5.0, || links.iter().all(|p| exited(*p))),
        "slirp4netns outlived the server"
    );
    assert_eq!(host_network(), before);
    // A restart reaps what the killed server left behind (its sandboxes' cgroups).
    s.restart();

    let plain = Server::start();
    let r = json_of(plain.run_code(json!({"language": "python", "code": code})));
    assert_eq!(r["status"], "Failed");
    assert!(
        r["run_result"]["stderr"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{r}"
    );
}
