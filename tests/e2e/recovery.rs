//! Crash recovery, graceful shutdown, and a soak that looks for leaks afterwards.

use std::collections::HashSet;

use cella_e2e::{
    Server, cella_bin, cgroups_under, descendants, eventually, host_mounts_containing, json_of,
    parent_cgroups, processes_with_uid_in,
};
use serde_json::json;

/// Namespace inodes referenced by the server and its descendants, as process namespaces or
/// open descriptors (the spawner's pool of network namespaces).
fn namespaces(server: u32) -> HashSet<String> {
    let mut out = HashSet::new();
    let mut pids = cella_e2e::descendants(server);
    pids.push(server);
    for pid in pids {
        for sub in ["ns", "fd"] {
            let Ok(links) = std::fs::read_dir(format!("/proc/{pid}/{sub}")) else {
                continue;
            };
            for l in links.flatten() {
                if let Ok(target) = std::fs::read_link(l.path()) {
                    let t = target.to_string_lossy().into_owned();
                    if t.contains(":[")
                        && (t.starts_with("mnt")
                            || t.starts_with("net")
                            || t.starts_with("pid")
                            || t.starts_with("ipc")
                            || t.starts_with("uts")
                            || t.starts_with("cgroup"))
                    {
                        out.insert(t);
                    }
                }
            }
        }
    }
    out
}

#[test]
fn restart_after_kill9_reaps_everything() {
    let mut s = Server::start();
    let a = s.sandbox(json!({"labels": {"k": "v"}}));
    let b = s.sandbox(json!({}));
    s.post(
        &format!("/sandboxes/{a}/processes"),
        json!({"shell": "sleep 1000"}),
    );
    s.post(
        &format!("/sandboxes/{b}/processes"),
        json!({"shell": "setsid sleep 1000 & sleep 1000"}),
    );
    // Contexts, one of them mid-call: kernels forked from the zygote, and a Node kernel.
    let python = s.context(&b, json!({}));
    let js = s.context(&b, json!({"language": "javascript"}));
    let call = {
        let (http, url) = (
            s.http.clone(),
            s.api(&format!("/sandboxes/{b}/contexts/{python}/execute")),
        );
        std::thread::spawn(move || {
            let _ = http
                .post(url)
                .json(&json!({"code": "import time; time.sleep(1000)"}))
                .send();
        })
    };
    // A Python run in flight: it goes through the zygote and its helper processes.
    let run = {
        let (http, url) = (s.http.clone(), s.api("/runs"));
        std::thread::spawn(move || {
            let body = json!({"language": "python", "code": "import time; time.sleep(1000)", "run_timeout": 1000});
            let _ = http.post(url).json(&body).send();
        })
    };
    assert!(eventually(10.0, || processes_with_uid_in(s.uid_base, 1000)
        .len()
        >= 4));
    assert!(!cgroups_under(&s.cgroup_parent).is_empty());
    let helpers = || descendants(s.pid());
    assert!(!helpers().is_empty());
    let before = helpers();

    s.kill9();
    let _ = run.join();
    let _ = call.join();
    // Nothing the server started outlives it: not the spawner, not the zygote nor its forks.
    assert!(
        eventually(5.0, || before
            .iter()
            .all(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())),
        "server helpers survived: {:?}",
        before
            .iter()
            .filter(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
            .collect::<Vec<_>>()
    );
    // The spawner and every sandbox die with the server: nothing runs as a sandbox uid.
    assert!(
        eventually(5.0, || processes_with_uid_in(s.uid_base, 1000).is_empty()),
        "sandbox processes survived the server: {:?}",
        processes_with_uid_in(s.uid_base, 1000)
    );
    assert!(host_mounts_containing(&s.data_dir.to_string_lossy()).is_empty());

    s.restart();
    assert!(
        cgroups_under(&s.cgroup_parent).is_empty(),
        "cgroups left: {:?}",
        cgroups_under(&s.cgroup_parent)
    );
    let info = json_of(s.get(&format!("/sandboxes/{a}")));
    assert_eq!(info["state"], "stopped", "{info}");
    assert_eq!(info["stop_reason"], "server restarted");
    assert_eq!(info["labels"]["k"], "v");
    assert_eq!(
        s.post(&format!("/sandboxes/{a}/exec"), json!({"shell": "true"}))
            .status(),
        409
    );
    // Its contexts are gone with it, as every face says.
    for context in [&python, &js] {
        let r = s.get(&format!("/sandboxes/{b}/contexts/{context}"));
        assert_eq!(r.status(), 409, "{}", json_of(r));
    }
    let agentrun = json_of(
        s.http
            .get(format!("{}/sandboxes/{b}", s.url))
            .send()
            .unwrap(),
    );
    assert_eq!(agentrun["data"]["status"], "TERMINATED", "{agentrun}");
    // A fresh sandbox works, and the old records can be deleted.
    let c = s.sandbox(json!({}));
    assert_eq!(s.sh(&c, "echo ok")["stdout"], "ok\n");
    assert_eq!(s.delete(&format!("/sandboxes/{a}")).status(), 204);
    assert_eq!(s.get(&format!("/sandboxes/{a}")).status(), 404);
}

#[test]
fn graceful_shutdown_stops_every_sandbox() {
    let mut s = Server::start();
    for _ in 0..3 {
        let id = s.sandbox(json!({}));
        s.post(
            &format!("/sandboxes/{id}/processes"),
            json!({"shell": "sleep 1000"}),
        );
    }
    assert!(eventually(5.0, || processes_with_uid_in(s.uid_base, 1000)
        .len()
        >= 3));
    let status = s.terminate();
    assert!(status.success(), "{status}");
    assert_nothing_left(&s);
}

#[test]
fn a_dead_spawner_stops_the_server_and_a_restart_serves_again() {
    let mut s = Server::start();
    let id = s.sandbox(json!({}));
    s.post(
        &format!("/sandboxes/{id}/processes"),
        json!({"shell": "sleep 1000"}),
    );
    let spawner = descendants(s.pid())
        .into_iter()
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "cella-spawner")
        })
        .expect("the spawner");
    // SAFETY: signalling a process of the server under test.
    unsafe { libc::kill(spawner as i32, libc::SIGKILL) };
    // Nothing could be created any more: the server says so and exits, not serving on broken.
    let status = s.exit_within(10.0).expect("the server exits");
    assert!(!status.success(), "{status}");
    assert_nothing_left(&s);
    s.restart();
    let id = s.sandbox(json!({}));
    assert_eq!(s.sh(&id, "echo again")["stdout"], "again\n");
}

#[test]
fn a_second_server_on_the_same_cgroup_parent_is_refused() {
    let s = Server::start();
    let id = s.sandbox(json!({}));
    let data = s.data_dir.with_extension("second");
    // Were it to start, it would reap the first one's sandboxes.
    let out = refused_start(
        &data,
        &s.cgroup_parent,
        s.uid_base + 500,
        "127.0.0.1:0",
        &[],
    );
    let _ = std::fs::remove_dir_all(&data);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("another cella server"), "{stderr}");
    // The first server's sandbox lives on.
    assert_eq!(s.sh(&id, "echo alive")["stdout"], "alive\n");
}

#[test]
fn shutdown_ends_requests_that_would_outlast_it() {
    let mut s = Server::start();
    let id = s.sandbox(json!({}));
    let stream = {
        let url = s.api(&format!("/sandboxes/{id}/exec/stream"));
        let http = s.http.clone();
        std::thread::spawn(move || {
            let body = json!({"shell": "sleep 1000", "timeout": 1000});
            http.post(url).json(&body).send().unwrap().text().unwrap()
        })
    };
    assert!(eventually(5.0, || !processes_with_uid_in(s.uid_base, 1000).is_empty()));
    let started = std::time::Instant::now();
    let status = s.terminate();
    assert!(status.success(), "{status}");
    // A grace period for requests in flight, then their sandboxes stop: not 1000 s.
    assert!(
        started.elapsed() < cella_e2e::scaled(15.0),
        "{:?}",
        started.elapsed()
    );
    let events = stream.join().unwrap();
    assert!(events.contains(r#""sandbox_lost":true"#), "{events}");
    assert_nothing_left(&s);
}

/// After a clean shutdown: no sandbox process, no sandbox cgroup, and not the parents either.
fn assert_nothing_left(s: &Server) {
    assert!(processes_with_uid_in(s.uid_base, 1000).is_empty());
    assert_eq!(cgroups_under(&s.cgroup_parent), Vec::<String>::new());
    assert_no_cgroup_parent(&s.cgroup_parent);
}

fn assert_no_cgroup_parent(parent: &str) {
    for (_, dir) in parent_cgroups(parent) {
        assert!(!dir.exists(), "{} is left", dir.display());
    }
}

/// `cella serve` on `listen` with a data dir, cgroup parent and uid range of its own, its
/// log piped.
fn serve_command(
    listen: &str,
    data: &std::path::Path,
    parent: &str,
    uid_base: u32,
) -> std::process::Command {
    let mut cmd = std::process::Command::new(cella_bin());
    cmd.args(["serve", "--listen", listen, "--data-dir"])
        .arg(data)
        .env("CELLA_CGROUP_PARENT", parent)
        .env("CELLA_UID_BASE", uid_base.to_string())
        .stderr(std::process::Stdio::piped());
    cmd
}

#[test]
fn shutdown_waits_for_sandboxes_being_destroyed() {
    let mut s = Server::start();
    // A run's sandbox is destroyed after the answer; with many processes that takes a while,
    // and the server is told to stop meanwhile.
    let r = s.run_code(json!({"language": "bash", "code": "for i in $(seq 300); do sleep 1000 & done; echo started", "run_timeout": 60}));
    let r = json_of(r);
    assert_eq!(r["run_result"]["stdout"], "started\n", "{r}");
    let status = s.terminate();
    assert!(status.success(), "{status}");
    assert_nothing_left(&s);
}

#[test]
fn shutdown_in_the_middle_of_creates_leaves_nothing_behind() {
    let mut s = Server::start();
    // Runs claim sandboxes from the warm pool, whose refills create more in the background;
    // some creates are in flight when the server goes away.
    let creators: Vec<_> = (0..8)
        .map(|i| {
            let http = s.http.clone();
            let url = if i % 2 == 0 {
                s.api("/sandboxes")
            } else {
                format!("{}/run_code", s.url)
            };
            let body = json!({"language": "bash", "code": "true"});
            std::thread::spawn(move || while http.post(&url).json(&body).send().is_ok() {})
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let status = s.terminate();
    assert!(status.success(), "{status}");
    for c in creators {
        c.join().unwrap();
    }
    assert_nothing_left(&s);
}

#[test]
fn soak_500_sandboxes_leaves_nothing_behind() {
    let s = Server::start_with(&[("CELLA_POOL__NETNS", "4")]);
    // Let the namespace pool fill before taking the baseline.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let before = namespaces(s.pid()).len();
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (http, api) = (s.http.clone(), s.api(""));
            std::thread::spawn(move || {
                for i in 0..125 {
                    let r = http
                        .post(format!("{api}/sandboxes"))
                        .json(&json!({}))
                        .send()
                        .unwrap();
                    assert_eq!(r.status(), 201);
                    let id = json_of(r)["id"].as_str().unwrap().to_string();
                    if i % 5 == 0 {
                        let r = http
                            .post(format!("{api}/sandboxes/{id}/exec"))
                            .json(&json!({"shell": "sleep 100 & echo $((6*7))"}))
                            .send()
                            .unwrap();
                        assert_eq!(json_of(r)["stdout"], "42\n", "worker {w}");
                    }
                    assert_eq!(
                        http.delete(format!("{api}/sandboxes/{id}"))
                            .send()
                            .unwrap()
                            .status(),
                        204
                    );
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(
        json_of(s.http.get(format!("{}/healthz", s.url)).send().unwrap())["sandboxes"],
        0
    );
    assert!(
        processes_with_uid_in(s.uid_base, 1000).is_empty(),
        "leaked processes"
    );
    assert!(
        cgroups_under(&s.cgroup_parent).is_empty(),
        "leaked cgroups: {:?}",
        cgroups_under(&s.cgroup_parent)
    );
    assert!(
        host_mounts_containing(&s.data_dir.to_string_lossy()).is_empty(),
        "leaked mounts"
    );
    // What the server holds is back to its baseline: its own namespaces and a full pool.
    assert!(
        eventually(10.0, || namespaces(s.pid()).len() == before),
        "namespaces held: {:?} (baseline {before})",
        namespaces(s.pid())
    );
}

/// Runs `cella serve` expecting it to refuse to start; its output once it has exited.
fn refused_start(
    data: &std::path::Path,
    parent: &str,
    uid_base: u32,
    listen: &str,
    env: &[(&str, &str)],
) -> std::process::Output {
    let mut server = serve_command(listen, data, parent, uid_base)
        .envs(env.iter().copied())
        .spawn()
        .unwrap();
    let exited = eventually(10.0, || server.try_wait().unwrap().is_some());
    if !exited {
        let _ = server.kill();
    }
    let out = server.wait_with_output().unwrap();
    assert!(exited, "the server started");
    assert!(!out.status.success());
    out
}

#[test]
fn a_server_that_cannot_start_says_why_and_leaves_nothing() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let in_use = taken.local_addr().unwrap().to_string();
    let parent = format!("cella-test-{}-unstarted", std::process::id());
    let data = std::env::temp_dir().join(&parent);
    let uid_base = 20_000_000 + (std::process::id() % 1000) * 1000;
    let attempt = |listen: &str, env: &[(&str, &str)]| {
        let out = refused_start(&data, &parent, uid_base, listen, env);
        assert_no_cgroup_parent(&parent);
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let said = attempt(&in_use, &[]);
    assert!(said.contains(&format!("listen on {in_use}")), "{said}");
    let said = attempt(
        "127.0.0.1:0",
        &[("CELLA_LIMITS__BODY_READ_TIMEOUT_SECS", "0")],
    );
    assert!(
        said.contains("body_read_timeout_secs must be a positive number"),
        "{said}"
    );
    let said = attempt("127.0.0.1:0", &[("CELLA_API_TOKEN", "two words")]);
    assert!(said.contains("api_token must be printable ASCII"), "{said}");
    let not_a_dir = data.with_extension("file");
    std::fs::write(&not_a_dir, "").unwrap();
    let out = refused_start(&not_a_dir, &parent, uid_base, "127.0.0.1:0", &[]);
    assert_no_cgroup_parent(&parent);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("the data dir: cannot create"), "{said}");
    std::fs::remove_file(&not_a_dir).unwrap();
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn a_ctrl_c_or_hangup_to_the_servers_process_group_shuts_it_down_gracefully() {
    for signal in [libc::SIGINT, libc::SIGHUP] {
        signal_the_process_group_of_a_serving_server(signal);
    }
}

fn signal_the_process_group_of_a_serving_server(signal: libc::c_int) {
    use std::os::unix::process::CommandExt;
    let parent = format!("cella-test-{}-signal-{signal}", std::process::id());
    let data = std::env::temp_dir().join(&parent);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Its own process group, as a shell gives a foreground job: a Ctrl-C, or the terminal's
    // hangup, reaches every process in it, the spawner and the zygotes too.
    let listen = format!("127.0.0.1:{port}");
    let uid_base = 21_000_000 + (std::process::id() % 1000) * 1000;
    let mut server = serve_command(&listen, &data, &parent, uid_base)
        .env("CELLA_LOG", "info")
        .process_group(0)
        .spawn()
        .unwrap();
    let stderr = server.stderr.take().unwrap();
    let log = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let url = format!("http://127.0.0.1:{port}/run_code");
    let http = reqwest::blocking::Client::new();
    // Once a Python run has forked from the zygote, every helper is running.
    let ran = eventually(30.0, || {
        http.post(&url)
            .json(&json!({"language": "python", "code": "print(1)"}))
            .send()
            .and_then(|r| r.json::<serde_json::Value>())
            .is_ok_and(|r| r["run_result"]["stdout"] == "1\n")
    });
    assert!(ran, "the server did not serve");
    // SAFETY: a signal to the process group this test created.
    unsafe { libc::kill(-(server.id() as i32), signal) };
    let exited = eventually(20.0, || server.try_wait().unwrap().is_some());
    if !exited {
        let _ = server.kill();
    }
    let status = server.wait().unwrap();
    let log = log.join().unwrap();
    let _ = std::fs::remove_dir_all(&data);
    assert!(
        exited && status.success(),
        "signal {signal}: {status:?}\n{log}"
    );
    assert!(log.contains("stopped"), "{log}");
    assert!(
        !log.contains("spawner process died") && !log.contains("Traceback"),
        "{log}"
    );
    assert_no_cgroup_parent(&parent);
}
