//! Every limit: timeouts kill the whole tree, memory, pids, disk quota, output cap, CPU — and
//! the server keeps serving while a sandbox misbehaves.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cella_e2e::Server;
use serde_json::json;

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(Server::start)
}

#[test]
fn timeout_kills_the_whole_tree() {
    let s = server();
    let id = s.sandbox(json!({}));
    let started = Instant::now();
    // Children in the background, one detached into its own session, one double-forked.
    let r = s.exec(&id, json!({"shell": "sleep 1000 & setsid sleep 1001 & (sleep 1002 &) ; echo up; sleep 1003", "timeout": 1}));
    assert!(
        started.elapsed() < cella_e2e::scaled(5.0),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(r["timed_out"], true);
    assert_eq!(r["stdout"], "up\n");
    assert_eq!(r["signal"], 9);
    let left = s.sh(&id, "ps -eo comm= | grep -c sleep || true");
    assert_eq!(left["stdout"], "0\n", "the tree survived: {left}");
    s.delete(&format!("/sandboxes/{id}"));
}

#[test]
fn memory_limit_oom_kills_and_says_so() {
    let s = server();
    let id = s.sandbox(json!({"memory_mb": 128}));
    let r = s.exec(&id, json!({"command": ["python3", "-c", "x = bytearray(512 << 20); print('survived')"], "timeout": 30}));
    assert_eq!(r["oom_killed"], true, "{r}");
    assert_eq!(r["signal"], 9);
    assert_eq!(r["stdout"], "");
    // Through a shell (as through a launcher script such as kotlinc's), which reports its
    // child's death as exit code 137.
    let hog = "python3 -c 'x = bytearray(512 << 20)'; exit $?";
    let r = s.exec(&id, json!({"shell": hog, "timeout": 30}));
    assert_eq!(
        (r["exit_code"].as_i64(), r["oom_killed"].as_bool()),
        (Some(137), Some(true)),
        "{r}"
    );
    // That code alone, with no process out of memory, is just a code.
    assert_eq!(s.sh(&id, "exit 137")["oom_killed"], false);
    // The sandbox is still usable afterwards.
    assert_eq!(s.sh(&id, "echo alive")["stdout"], "alive\n");
    s.delete(&format!("/sandboxes/{id}"));
}

#[test]
fn fork_bomb_is_contained_and_the_server_keeps_serving() {
    let s = server();
    let id = s.sandbox(json!({"pids": 64}));
    let pids = || cella_e2e::json_of(s.get(&format!("/sandboxes/{id}/usage")))["pids"].clone();
    // At rest: the init on v1, where it stays in the pids cgroup; nothing on v2.
    let at_rest = pids();
    let bomb = {
        let (http, url) = (s.http.clone(), s.api(&format!("/sandboxes/{id}/exec")));
        std::thread::spawn(move || {
            http.post(url)
                .json(&json!({"shell": "b(){ b|b& }; b; sleep 5", "timeout": 4}))
                .send()
                .unwrap()
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    // Others are served promptly meanwhile.
    let t = Instant::now();
    let other = s.sandbox(json!({}));
    assert_eq!(s.sh(&other, "echo fine")["stdout"], "fine\n");
    assert!(
        t.elapsed() < cella_e2e::scaled(3.0),
        "server slowed to {:?}",
        t.elapsed()
    );
    let during = pids();
    assert!((2..=64).contains(&during.as_u64().unwrap()), "{during}");
    let r = cella_e2e::json_of(bomb.join().unwrap());
    assert_eq!(r["timed_out"], true, "{r}");
    assert!(cella_e2e::eventually(5.0, || pids() == at_rest));
    s.delete(&format!("/sandboxes/{id}"));
    s.delete(&format!("/sandboxes/{other}"));
}

#[test]
fn a_sandbox_at_its_process_limit_refuses_new_commands_until_some_end() {
    let s = server();
    let id = s.sandbox(json!({"pids": 16}));
    let filler = cella_e2e::json_of(s.post(
        &format!("/sandboxes/{id}/processes"),
        json!({"shell": "for i in $(seq 40); do sleep 1000 & done; wait", "timeout": 60}),
    ));
    let usage = || cella_e2e::json_of(s.get(&format!("/sandboxes/{id}/usage")))["pids"].clone();
    assert!(cella_e2e::eventually(5.0, || usage() == 16));
    let r = s.post(
        &format!("/sandboxes/{id}/exec"),
        json!({"command": ["/bin/true"]}),
    );
    // The sandbox's state, not a bad request.
    cella_e2e::assert_refused(r, 409, "limit of 16 processes");
    // So is a Python context, whose kernel the zygote forks outside the sandbox and moves in.
    let r = s.post(
        &format!("/sandboxes/{id}/contexts"),
        json!({"language": "python"}),
    );
    cella_e2e::assert_refused(r, 409, "limit of 16 processes");
    let kill = format!("/sandboxes/{id}/processes/{}/kill", filler["id"]);
    assert_eq!(s.post(&kill, json!({})).status(), 200);
    assert_eq!(s.sh(&id, "echo room again")["stdout"], "room again\n");
    s.delete(&format!("/sandboxes/{id}"));
}

#[test]
fn files_filling_a_sandboxs_memory_kill_the_writer_not_the_sandbox() {
    let s = server();
    let id = s.sandbox(json!({"memory_mb": 64, "disk_mb": 256}));
    let r = s.sh(&id, "head -c 100000000 /dev/zero > /tmp/fill");
    assert_eq!(r["oom_killed"], true, "{r}");
    // With its memory full of the file, a new process in it is killed too, but never the
    // init, whose own memory is charged outside the sandbox's: the sandbox lives on, and the
    // file API, which needs no process in it, frees the memory the file holds.
    for _ in 0..3 {
        let r = s.sh(&id, "cat /tmp/fill | wc -c");
        assert_eq!(r["oom_killed"], true, "{r}");
    }
    let info = cella_e2e::json_of(s.get(&format!("/sandboxes/{id}")));
    assert_eq!(info["state"], "running", "{info}");
    let removed = s.delete(&format!("/sandboxes/{id}/files?path=/tmp/fill"));
    assert!(removed.status().is_success(), "{}", removed.status());
    assert_eq!(s.sh(&id, "echo freed")["stdout"], "freed\n");
    s.delete(&format!("/sandboxes/{id}"));
}

#[test]
fn disk_quota_gives_enospc() {
    let s = server();
    let id = s.sandbox(json!({"disk_mb": 32, "memory_mb": 512}));
    s.sh(&id, "mkdir d; echo kept > d/kept");
    let r = s.sh(
        &id,
        "dd if=/dev/zero of=/tmp/big bs=1M count=100 2>&1; echo rc=$?",
    );
    let out = r["stdout"].as_str().unwrap();
    assert!(
        out.contains("No space left on device") || out.contains("File too large"),
        "{out}"
    );
    let usage = cella_e2e::json_of(s.get(&format!("/sandboxes/{id}/usage")));
    assert!(usage["disk_bytes"].as_u64().unwrap() <= 32 << 20, "{usage}");
    // The file API hits the same quota.
    let r = s
        .http
        .put(s.api(&format!("/sandboxes/{id}/files?path=more")))
        .body(vec![0u8; 40 << 20])
        .send()
        .unwrap();
    assert_eq!(r.status(), 507);
    // A write the disk cannot take leaves the file it was replacing, and no partial copy.
    let content = "x".repeat(1 << 20);
    let r = s.post(
        &format!("/sandboxes/{id}/files/write"),
        json!({"path": "d/kept", "content": content}),
    );
    assert_eq!(r.status(), 507);
    let r = s.sh(&id, "rm /tmp/big; ls -A d; cat d/kept");
    assert_eq!(r["stdout"], "kept\nkept\n", "{r}");
    s.delete(&format!("/sandboxes/{id}"));
}

#[test]
fn huge_output_is_capped_without_blocking() {
    let s = server();
    let id = s.sandbox(json!({}));
    let t = Instant::now();
    let r = s.exec(&id, json!({
        "command": ["python3", "-c", "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(64): sys.stdout.write(chunk)\nprint('done', file=sys.stderr)"],
        "output_cap": 1 << 20,
        "timeout": 30,
    }));
    assert_eq!(r["exit_code"], 0, "{r}");
    assert_eq!(r["stdout_truncated"], true);
    assert_eq!(r["stdout"].as_str().unwrap().len(), 1 << 20);
    assert_eq!(r["stderr"], "done\n");
    assert!(
        t.elapsed() < cella_e2e::scaled(15.0),
        "64 MB took {:?}",
        t.elapsed()
    );
    s.delete(&format!("/sandboxes/{id}"));
}

/// Output held by all execs together is bounded: a background process's kept output in one
/// sandbox leaves less for an exec in another, which is cut and flagged, until it is freed.
#[test]
fn output_held_across_sandboxes_stays_within_the_servers_budget() {
    let s = Server::start_with(&[("CELLA_LIMITS__MAX_OUTPUT_BYTES_HELD", "3000000")]);
    let print_2mb = "head -c 2000000 /dev/zero | tr '\\0' x";
    let held = |s: &Server| s.metric("cella_output_bytes_held");
    let (a, b) = (s.sandbox(json!({})), s.sandbox(json!({})));
    let r = s.post(
        &format!("/sandboxes/{a}/processes"),
        json!({"shell": print_2mb}),
    );
    let background = cella_e2e::json_of(r)["id"].clone();
    let r = s.post(
        &format!("/sandboxes/{a}/processes/{background}/wait?timeout=20"),
        json!(null),
    );
    assert_eq!(cella_e2e::json_of(r)["exit"]["exit_code"], 0);
    let r = s.exec(&b, json!({"shell": format!("{print_2mb}; echo done >&2")}));
    assert_eq!(r["exit_code"], 0, "{r}");
    assert_eq!(r["stdout_truncated"], true, "{r}");
    let kept = r["stdout"].as_str().unwrap().len();
    assert!((990_000..=1_000_000).contains(&kept), "kept {kept}");
    assert!(held(&s) >= 2e6, "{}", s.metrics());
    // Deleting the sandbox frees what its process held.
    assert_eq!(s.delete(&format!("/sandboxes/{a}")).status(), 204);
    let r = s.exec(&b, json!({"shell": print_2mb}));
    assert_eq!(r["stdout_truncated"], false, "{}", r["stderr"]);
    assert_eq!(r["stdout"].as_str().unwrap().len(), 2_000_000);
    assert!(
        cella_e2e::eventually(5.0, || held(&s) == 0.0),
        "{}",
        held(&s)
    );
    s.delete(&format!("/sandboxes/{b}"));
}

#[test]
fn infinite_loop_times_out_and_cpu_is_limited() {
    let s = server();
    let id = s.sandbox(json!({"cpus": 0.25}));
    let r = s.exec(
        &id,
        json!({"command": ["python3", "-c", "while True: pass"], "timeout": 2}),
    );
    assert_eq!(r["timed_out"], true);
    let (wall, cpu) = (
        r["wall_time"].as_f64().unwrap(),
        r["cpu_time"].as_f64().unwrap(),
    );
    // A quarter of a core: well under the wall time.
    assert!(cpu < wall * 0.5, "cpu {cpu} for wall {wall}");
    s.delete(&format!("/sandboxes/{id}"));
}

#[test]
fn idle_sandboxes_are_stopped() {
    let s = server();
    let id = s.sandbox(json!({"idle_timeout_secs": 1}));
    // A running process is activity: the sandbox outlives its idle timeout while one runs.
    let r = s.exec(&id, json!({"shell": "sleep 2.5; echo still here"}));
    assert_eq!(r["stdout"], "still here\n", "{r}");
    assert!(cella_e2e::eventually(6.0, || cella_e2e::json_of(
        s.get(&format!("/sandboxes/{id}"))
    )["state"]
        == "stopped"));
    let info = cella_e2e::json_of(s.get(&format!("/sandboxes/{id}")));
    assert_eq!(info["stop_reason"], "idle timeout");
    assert_eq!(
        s.post(&format!("/sandboxes/{id}/exec"), json!({"shell": "true"}))
            .status(),
        409
    );
    assert_eq!(s.delete(&format!("/sandboxes/{id}")).status(), 204);

    let id = s.sandbox(json!({"max_lifetime_secs": 1}));
    assert!(cella_e2e::eventually(6.0, || cella_e2e::json_of(
        s.get(&format!("/sandboxes/{id}"))
    )["stop_reason"]
        == "max lifetime reached"));
    s.delete(&format!("/sandboxes/{id}"));
}

#[test]
fn the_sandbox_count_is_capped_with_a_retryable_error() {
    let s = Server::start_with(&[
        ("CELLA_LIMITS__MAX_SANDBOXES", "2"),
        ("CELLA_POOL__WARM_SANDBOXES", "0"),
        ("CELLA_POOL__WARM_KERNELS", "0"),
    ]);
    let (a, b) = (s.sandbox(json!({})), s.sandbox(json!({})));
    let r = s.post("/sandboxes", json!({}));
    let error = cella_e2e::assert_refused(r, 503, "maximum of 2");
    assert_eq!(error["code"], "busy", "{error}");
    assert_eq!(s.delete(&format!("/sandboxes/{a}")).status(), 204);
    let c = s.sandbox(json!({}));
    for id in [b, c] {
        s.delete(&format!("/sandboxes/{id}"));
    }
    // Creates at once cannot all pass the count: exactly two of eight are made.
    let creates: Vec<_> = (0..8)
        .map(|_| {
            let (http, url) = (s.http.clone(), s.api("/sandboxes"));
            std::thread::spawn(move || http.post(url).json(&json!({})).send().unwrap())
        })
        .collect();
    let mut made = Vec::new();
    for create in creates {
        let r = create.join().unwrap();
        match r.status().as_u16() {
            201 => made.push(cella_e2e::json_of(r)["id"].as_str().unwrap().to_string()),
            503 => {}
            other => panic!("{other}: {}", cella_e2e::json_of(r)),
        }
    }
    assert_eq!(made.len(), 2, "{made:?}");
    for id in made {
        s.delete(&format!("/sandboxes/{id}"));
    }
}

#[test]
fn warm_pools_give_way_to_requests_at_the_sandbox_cap() {
    // Two ready sandboxes and two with a parked Python: the pools alone fill the cap.
    let s = Server::start_with(&[
        ("CELLA_LIMITS__MAX_SANDBOXES", "4"),
        ("CELLA_POOL__WARM_SANDBOXES", "2"),
        ("CELLA_POOL__WARM_KERNELS", "0"),
    ]);
    let live = || cella_e2e::json_of(s.http.get(format!("{}/healthz", s.url)).send().unwrap());
    let run = |n: u32| {
        let ran = s.run_code(json!({"code": format!("print({n})"), "language": "python"}));
        let ran = cella_e2e::json_of(ran);
        assert_eq!(ran["run_result"]["stdout"], format!("{n}\n"), "{ran}");
    };
    // The first runs also build the home skeleton in a sandbox of its own, which is no
    // pool's to give up: wait until it is done and the pools alone hold the cap.
    run(1);
    let skeleton = s.data_dir.join("skel");
    assert!(cella_e2e::eventually(60.0, || skeleton.is_dir()));
    run(2);
    assert!(
        cella_e2e::eventually(30.0, || live()["sandboxes"] == 4),
        "the pools did not fill: {}",
        live()
    );
    // The last one in may still be parking its Python (milliseconds): let it land.
    std::thread::sleep(Duration::from_millis(300));
    let mine: Vec<String> = (0..4).map(|_| s.sandbox(json!({}))).collect();
    let r = s.post("/sandboxes", json!({}));
    cella_e2e::assert_refused(r, 503, "maximum of 4");
    assert_eq!(live()["sandboxes"], 4);
    for id in &mine {
        assert_eq!(s.sh(id, "echo ok")["stdout"], "ok\n");
        s.delete(&format!("/sandboxes/{id}"));
    }
    // With room again, runs still run (and the pools fill again behind them).
    run(3);
}

#[test]
fn runtimes_size_themselves_to_the_sandboxs_limits() {
    // As in a container: the sandbox's own cgroups under /sys/fs/cgroup, read-only, which
    // the JVM (only with cpuset among them) and Node read their limits from; nothing of
    // the host's hierarchy around them.
    let s = server();
    let id = s.sandbox(json!({"memory_mb": 512, "cpus": 1}));
    let runtimes = "java -XX:+PrintFlagsFinal -version 2>/dev/null | awk '$2 == \"MaxHeapSize\" {print $4}'; \
                    node -p 'process.constrainedMemory()'";
    let r = if cella_e2e::cgroup_v2() {
        // One hierarchy: the sandbox's cgroup is the root of its view; each exec has a cgroup
        // of its own below it (the init another), showing the sandbox's limits.
        let r = s.sh(
            &id,
            &format!(
                "own=/sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup); cat /sys/fs/cgroup/memory.max $own/memory.max $own/cpu.max; \
                 {runtimes}; ls /sys/fs/cgroup | grep -c '^x'; echo 1 > /sys/fs/cgroup/memory.max"
            ),
        );
        assert_eq!(
            r["stdout"], "536870912\n536870912\n100000 100000\n134217728\n536870912\n1\n",
            "{r}"
        );
        r
    } else {
        let r = s.sh(
            &id,
            &format!(
                "cat /sys/fs/cgroup/memory/memory.limit_in_bytes; {runtimes}; \
                 ls /sys/fs/cgroup; find /sys/fs/cgroup/memory -mindepth 1 -type d | wc -l; \
                 echo 1 > /sys/fs/cgroup/memory/memory.limit_in_bytes"
            ),
        );
        assert_eq!(
            r["stdout"],
            "536870912\n134217728\n536870912\ncpu\ncpuacct\ncpuset\nfreezer\nmemory\npids\n0\n",
            "{r}"
        );
        r
    };
    assert!(
        r["stderr"]
            .as_str()
            .unwrap()
            .contains("Read-only file system"),
        "{r}"
    );
    s.delete(&format!("/sandboxes/{id}"));
}
