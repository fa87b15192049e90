//! The native API, route by route, against a real server; and bad input.

use std::sync::OnceLock;

use cella_e2e::{Server, answer_of, assert_refused, json_of};
use serde_json::{Value, json};

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(Server::start)
}

#[test]
fn health_openapi_and_metrics() {
    let s = server();
    let health = json_of(s.http.get(format!("{}/healthz", s.url)).send().unwrap());
    assert_eq!(health["status"], "ok");
    let info = json_of(s.get("/info"));
    assert!(info["runs"]["max_concurrency"].as_u64().unwrap() >= 1);
    let isolation = &info["isolation"];
    let layout = if cella_e2e::cgroup_v2() {
        "cgroup v2"
    } else {
        "cgroup v1"
    };
    assert!(
        isolation["cgroups"].as_str().unwrap().starts_with(layout),
        "{isolation}"
    );
    let abi = isolation["landlock_abi"].as_i64().unwrap();
    assert_eq!(
        abi > 0,
        isolation["landlock"]
            .as_str()
            .unwrap()
            .starts_with("device nodes refused")
    );
    assert!(
        isolation["seccomp_actions"]
            .as_str()
            .unwrap()
            .contains("errno")
    );
    assert_eq!(info["version"], health["version"]);

    let doc = json_of(
        s.http
            .get(format!("{}/openapi.json", s.url))
            .send()
            .unwrap(),
    );
    assert!(doc["openapi"].as_str().unwrap().starts_with('3'));
    assert!(
        doc.get("security").is_none(),
        "no token, no security: {}",
        doc["security"]
    );
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/v1/sandboxes",
        "/api/v1/sandboxes/{id}",
        "/api/v1/sandboxes/{id}/exec",
        "/api/v1/sandboxes/{id}/exec/stream",
        "/api/v1/sandboxes/{id}/processes",
        "/api/v1/sandboxes/{id}/files",
        "/api/v1/sandboxes/{id}/files/upload",
        "/api/v1/images",
        "/api/v1/sandboxes/{id}/contexts",
        "/api/v1/sandboxes/{id}/contexts/{context}",
        "/api/v1/sandboxes/{id}/contexts/{context}/execute",
        "/api/v1/sandboxes/{id}/contexts/{context}/execute/stream",
        "/api/v1/sandboxes/{id}/contexts/{context}/interrupt",
        "/api/v1/sandboxes/{id}/contexts/{context}/restart",
        "/api/v1/info",
    ] {
        assert!(paths.contains_key(p), "openapi lacks {p}");
    }
    // Every operation has its own id and documents the errors a client can meet.
    let mut ids = std::collections::HashSet::new();
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap();
            assert!(ids.insert(id.to_string()), "operationId {id} is used twice");
            let responses = op["responses"].as_object().unwrap();
            if path.contains("{id}") {
                assert!(responses.contains_key("404"), "{method} {path}: no 404");
            }
            if op["requestBody"]["content"]
                .get("application/json")
                .is_some()
            {
                for status in ["400", "408", "413", "415", "422"] {
                    assert!(
                        responses.contains_key(status),
                        "{method} {path}: no {status}"
                    );
                }
            }
            for (status, r) in responses {
                assert_ne!(r["description"], "", "{method} {path} {status}");
            }
        }
    }

    let id = s.sandbox(json!({}));
    s.sh(&id, "true");
    let metrics = s.metrics();
    for m in [
        "cella_sandbox_create_seconds_bucket",
        "cella_exec_seconds_bucket",
        "cella_sandboxes_live",
        "cella_http_requests_total",
    ] {
        assert!(metrics.contains(m), "metrics lack {m}:\n{metrics}");
    }
    // Made-up methods and paths add no series.
    for n in 0..3 {
        let method = reqwest::Method::from_bytes(format!("MADEUP{n}").as_bytes()).unwrap();
        s.send(s.http.request(method, format!("{}/healthz", s.url)));
        s.send(s.http.get(format!("{}/no/such/path/{n}", s.url)));
    }
    let metrics = s.metrics();
    assert!(!metrics.contains("MADEUP"), "{metrics}");
    assert!(!metrics.contains("/no/such/path"), "{metrics}");
    assert!(
        metrics.contains(r#"method="other",route="/healthz""#),
        "{metrics}"
    );
    assert_eq!(s.delete(&format!("/sandboxes/{id}")).status(), 204);
}

#[test]
fn sandbox_lifecycle() {
    let s = server();
    let r = s.post(
        "/sandboxes",
        // 256.0: a whole number is an integer, however a client spells it.
        json!({"cpus": 0.5, "memory_mb": 256.0, "pids": 64, "disk_mb": 32, "env": {"GREETING": "hi"},
               "labels": {"team": "rl", "run": "7"}, "idle_timeout_secs": 60, "max_lifetime_secs": 120,
               "hostname": "box"}),
    );
    assert_eq!(r.status(), 201);
    let info = json_of(r);
    let id = info["id"].as_str().unwrap().to_string();
    assert_eq!(info["state"], "running");
    assert_eq!(
        (
            info["cpus"].as_f64(),
            info["memory_mb"].as_u64(),
            info["pids"].as_u64()
        ),
        (Some(0.5), Some(256), Some(64))
    );
    assert!(
        info.get("init").is_none(),
        "internal fields must not leak: {info}"
    );

    let got = json_of(s.get(&format!("/sandboxes/{id}")));
    assert_eq!(got["labels"]["team"], "rl");
    let listed = json_of(s.get("/sandboxes?label=team=rl,run=7"));
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == id.as_str())
    );
    let none = json_of(s.get("/sandboxes?label=team=other"));
    assert!(
        !none
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == id.as_str())
    );

    let out = s.sh(&id, "echo $GREETING; hostname; whoami; pwd");
    assert_eq!(out["stdout"], "hi\nbox\nuser\n/home/user\n");

    let usage = json_of(s.get(&format!("/sandboxes/{id}/usage")));
    assert_eq!(usage["memory_limit_bytes"], 256u64 << 20);
    assert_eq!(usage["pids_limit"], 64);
    assert!(usage["cpu_seconds"].as_f64().unwrap() > 0.0);
    assert!(usage["memory_bytes"].as_u64().unwrap() > 0);

    assert_eq!(s.delete(&format!("/sandboxes/{id}")).status(), 204);
    assert_eq!(s.get(&format!("/sandboxes/{id}")).status(), 404);
    assert_eq!(s.delete(&format!("/sandboxes/{id}")).status(), 404);
}

#[test]
fn exec_collects_everything() {
    let s = server();
    let id = s.sandbox(json!({}));
    let r = s.exec(&id, json!({"command": ["python3", "-c", "import sys; print(sys.stdin.read().upper()); print('err', file=sys.stderr); sys.exit(3)"], "stdin": "abc"}));
    assert_eq!(r["exit_code"], 3);
    assert_eq!(r["stdout"], "ABC\n");
    assert_eq!(r["stderr"], "err\n");
    assert_eq!(r["timed_out"], false);
    assert!(r["wall_time"].as_f64().unwrap() > 0.0);
    assert!(r["cpu_time"].as_f64().unwrap() > 0.0, "{r}");

    // Its stdio can be reopened by name, as a program's own pipes can.
    let r = s.exec(
        &id,
        json!({"shell": "cat /dev/stdin > /dev/stdout; echo e > /dev/stderr", "stdin": "in"}),
    );
    assert_eq!(
        (&r["stdout"], &r["stderr"]),
        (&json!("in"), &json!("e\n")),
        "{r}"
    );

    // A background child keeping stdout open does not hold the answer back, nor lose what
    // was written before the program exited.
    let t = std::time::Instant::now();
    let r = s.exec(
        &id,
        json!({"shell": "head -c 300000 /dev/zero | tr '\\0' x; echo; sleep 30 &"}),
    );
    assert!(t.elapsed() < cella_e2e::scaled(5.0), "{:?}", t.elapsed());
    assert_eq!(r["stdout"].as_str().unwrap().len(), 300_001);

    let r = s.exec(&id, json!({"shell": "kill -TERM $$"}));
    assert_eq!(
        (r["exit_code"].clone(), r["signal"].clone()),
        (Value::Null, json!(15))
    );

    let r = s.exec(
        &id,
        json!({"command": ["pwd"], "cwd": "/tmp", "env": {"X": "1"}}),
    );
    assert_eq!(r["stdout"], "/tmp\n");

    // A missing program is a clear 400, not a hang or a 500.
    let r = s.post(
        &format!("/sandboxes/{id}/exec"),
        json!({"command": ["no-such-program"]}),
    );
    assert_refused(r, 400, "No such file");
    let r = s.post(
        &format!("/sandboxes/{id}/exec"),
        json!({"command": ["true"], "cwd": "/nonexistent"}),
    );
    assert_eq!(r.status(), 400);
    s.delete(&format!("/sandboxes/{id}"));
}

#[test]
fn exec_streams_ndjson_and_sse() {
    let s = server();
    let id = s.sandbox(json!({}));
    let body = json!({"shell": "echo one; sleep 0.3; echo two >&2; exit 4"});
    let text = s
        .http
        .post(s.api(&format!("/sandboxes/{id}/exec/stream")))
        .json(&body)
        .send()
        .unwrap()
        .text()
        .unwrap();
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events[0]["type"], "started");
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "stdout" && e["data"] == "one\n")
    );
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "stderr" && e["data"] == "two\n")
    );
    let last = events.last().unwrap();
    assert_eq!(
        (last["type"].as_str(), last["exit_code"].as_i64()),
        (Some("exit"), Some(4))
    );

    let sse = s
        .http
        .post(s.api(&format!("/sandboxes/{id}/exec/stream")))
        .header("accept", "text/event-stream")
        .json(&body)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(sse.contains("event: stdout"), "{sse}");
    assert!(sse.contains("event: exit"), "{sse}");
    s.delete(&format!("/sandboxes/{id}"));
}

#[test]
fn background_processes() {
    let s = server();
    let id = s.sandbox(json!({}));
    let r = s.post(
        &format!("/sandboxes/{id}/processes"),
        json!({"shell": "echo started; sleep 30; echo never"}),
    );
    assert_eq!(r.status(), 201);
    let p = json_of(r);
    let pid = p["id"].as_u64().unwrap();
    assert_eq!(p["running"], true);

    let list = json_of(s.get(&format!("/sandboxes/{id}/processes")));
    assert!(list.as_array().unwrap().iter().any(|x| x["id"] == pid));

    // Waiting with a short limit returns while it still runs, with the output so far.
    let w = json_of(s.post(
        &format!("/sandboxes/{id}/processes/{pid}/wait?timeout=0.5"),
        json!(null),
    ));
    assert_eq!(w["running"], true);
    assert_eq!(w["stdout"], "started\n");

    let k = json_of(s.post(
        &format!("/sandboxes/{id}/processes/{pid}/kill"),
        json!(null),
    ));
    assert_eq!(k["running"], false);
    assert_eq!(k["exit"]["killed"], true);
    assert_eq!(k["stdout"], "started\n");
    assert_eq!(s.sh(&id, "pgrep -c sleep || true")["stdout"], "0\n");

    let quick = json_of(s.post(
        &format!("/sandboxes/{id}/processes"),
        json!({"command": ["sh", "-c", "exit 7"]}),
    ));
    let w = json_of(s.post(
        &format!("/sandboxes/{id}/processes/{}/wait", quick["id"]),
        json!(null),
    ));
    assert_eq!(w["exit"]["exit_code"], 7);
    assert_eq!(
        s.get(&format!("/sandboxes/{id}/processes/999999")).status(),
        404
    );

    // Finished processes are remembered while their output stays small: the server holds it.
    let mut ids = Vec::new();
    for _ in 0..6 {
        let p = json_of(s.post(
            &format!("/sandboxes/{id}/processes"),
            json!({"shell": "head -c 4000000 /dev/zero"}),
        ));
        let wait = format!("/sandboxes/{id}/processes/{}/wait", p["id"]);
        assert_eq!(json_of(s.post(&wait, json!(null)))["exit"]["exit_code"], 0);
        ids.push(p["id"].as_u64().unwrap());
    }
    let list = json_of(s.get(&format!("/sandboxes/{id}/processes")));
    let kept: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .filter(|p| ids.contains(p))
        .collect();
    // The newest, and four older ones (16 MB): the first is forgotten.
    assert_eq!(kept, ids[1..], "{kept:?} of {ids:?}");
    s.delete(&format!("/sandboxes/{id}"));
}

#[test]
fn an_exec_whose_caller_hangs_up_runs_on_and_can_be_waited_on() {
    let s = server();
    let id = s.sandbox(json!({}));
    let body = br#"{"shell": "sleep 1; echo finished", "timeout": 30}"#;
    let head = format!(
        "POST /api/v1/sandboxes/{id}/exec\r\nContent-Type: application/json\r\nContent-Length: {}",
        body.len()
    );
    let caller = s.send_raw(&head, body);
    let listed = || {
        let list = json_of(s.get(&format!("/sandboxes/{id}/processes")));
        list.as_array()
            .unwrap()
            .iter()
            .find(|p| p["command"][2] == "sleep 1; echo finished")
            .map(|p| p["id"].as_u64().unwrap())
    };
    assert!(cella_e2e::eventually(5.0, || listed().is_some()));
    drop(caller);
    // Like E2B's commands, it is the sandbox's, not the connection's: it finishes, and its
    // result is there for whoever asks.
    let pid = listed().expect("still listed after the caller left");
    let w = json_of(s.post(
        &format!("/sandboxes/{id}/processes/{pid}/wait"),
        json!(null),
    ));
    assert_eq!(w["exit"]["exit_code"], 0, "{w}");
    assert_eq!(w["stdout"], "finished\n", "{w}");
    s.delete(&format!("/sandboxes/{id}"));
}

#[test]
fn registered_images() {
    let s = server();
    let list = json_of(s.get("/images"));
    let host = list
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "host")
        .unwrap()
        .clone();
    assert!(
        host["aliases"]
            .as_array()
            .unwrap()
            .contains(&json!("python:3.11"))
    );

    // A minimal root filesystem under the data dir's image root: dash and its C library.
    let root = s.data_dir.join("images/tiny");
    for dir in ["bin", "lib/x86_64-linux-gnu", "lib64", "etc"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::copy("/usr/bin/dash", root.join("bin/sh")).unwrap();
    std::fs::copy(
        "/lib/x86_64-linux-gnu/libc.so.6",
        root.join("lib/x86_64-linux-gnu/libc.so.6"),
    )
    .unwrap();
    std::fs::copy(
        "/lib64/ld-linux-x86-64.so.2",
        root.join("lib64/ld-linux-x86-64.so.2"),
    )
    .unwrap();
    std::fs::write(root.join("etc/marker"), "tiny image\n").unwrap();
    // Mount points that are symlinks in the image must not redirect the sandbox's mounts.
    for (link, target) in [("proc", "/"), ("dev", "/etc"), ("sys", "../upper")] {
        std::os::unix::fs::symlink(target, root.join(link)).unwrap();
    }

    let r = s.post("/images", json!({"name": "team/tiny:1", "path": root}));
    assert_eq!(r.status(), 201, "{}", json_of(r));
    assert_eq!(
        s.post("/images", json!({"name": "team/tiny:1", "path": root}))
            .status(),
        409
    );
    for name in ["", "../tiny", "/tiny", "team//tiny", ".tiny", "a b"] {
        let r = s.post("/images", json!({"name": name, "path": root}));
        assert_refused(r, 400, "invalid image name");
    }
    assert_eq!(
        s.post("/images", json!({"name": "bad", "path": "/nonexistent"}))
            .status(),
        400
    );
    // Only directories under an image root become images, however they are named: no
    // host directory (here `/usr`, which has a `bin/sh`) escapes the `host` image's masks.
    std::os::unix::fs::symlink("/usr", s.data_dir.join("images/escape")).unwrap();
    for path in ["/usr", "/tmp", "images/escape", "images/tiny/.."] {
        let path = s.data_dir.join(path);
        let r = s.post("/images", json!({"name": "bad", "path": path}));
        assert_refused(r, 400, "image root");
    }

    let id = s.sandbox(json!({"image": "team/tiny:1"}));
    let limit = match cella_e2e::cgroup_v2() {
        true => "/sys/fs/cgroup/memory.max",
        false => "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    };
    let script = format!(
        "read x < /etc/marker; echo $x; echo > /tmp/w && echo writable; read l < /proc/self/status; echo $l; \
         read m < {limit} && echo cgroup; echo > /dev/null && echo dev"
    );
    let r = s.exec(&id, json!({"command": ["/bin/sh", "-c", script]}));
    assert_eq!(
        r["stdout"], "tiny image\nwritable\nName: sh\ncgroup\ndev\n",
        "{r}"
    );
    // The image itself is read-only underneath the sandbox.
    assert!(root.join("tmp/w").metadata().is_err());
    s.delete(&format!("/sandboxes/{id}"));
    assert_eq!(s.delete("/images/team%2Ftiny:1").status(), 204);
    // Gone here, it is looked for in its registry (docker.io, which this machine cannot reach).
    let r = s.post("/sandboxes", json!({"image": "team/tiny:1"}));
    assert!(matches!(r.status().as_u16(), 404 | 503), "{}", r.status());
    assert!(json_of(r).to_string().contains("team/tiny:1"));
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn bad_input_gets_clear_4xx() {
    let s = server();
    let raw = |method: reqwest::Method, path: &str, body: &'static str| {
        s.http
            .request(method, s.api(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .unwrap()
    };
    let r = raw(reqwest::Method::POST, "/sandboxes", "{not json");
    assert_eq!(r.status(), 400);
    let e = json_of(r);
    assert_eq!(e["error"]["code"], "invalid_json");

    assert_eq!(
        raw(
            reqwest::Method::POST,
            "/sandboxes",
            r#"{"memory_mb": "lots"}"#
        )
        .status(),
        422
    );
    let fraction = raw(
        reqwest::Method::POST,
        "/sandboxes",
        r#"{"memory_mb": 256.5}"#,
    );
    assert_refused(fraction, 422, "expected u64");
    assert_eq!(
        raw(
            reqwest::Method::POST,
            "/sandboxes",
            r#"{"no_such_field": 1}"#
        )
        .status(),
        422
    );
    // Serde alone would read an array as the fields in order.
    for not_an_object in ["[]", r#"["host", 1.0]"#, "null", "7"] {
        let r = raw(reqwest::Method::POST, "/sandboxes", not_an_object);
        assert_refused(r, 422, "expected a map");
    }
    assert_eq!(s.post("/sandboxes", json!({"memory_mb": 1})).status(), 400);
    assert_eq!(s.post("/sandboxes", json!({"cpus": 1000})).status(), 400);
    let forever = json!({"idle_timeout_secs": u64::MAX});
    assert_eq!(s.post("/sandboxes", forever).status(), 400);
    let r = s.post("/sandboxes", json!({"image": "no-such-image"}));
    assert!(matches!(r.status().as_u16(), 404 | 503), "{}", r.status());
    assert!(json_of(r).to_string().contains("no-such-image"));
    let r = s.post("/sandboxes", json!({"image": "Not A Reference"}));
    assert_refused(r, 400, "invalid image reference");
    for hostname in ["bad host!", "a..b", "-a", "a-", ".a", &"h".repeat(65)] {
        let r = s.post("/sandboxes", json!({ "hostname": hostname }));
        assert_refused(r, 400, "invalid hostname");
    }
    let named = s.sandbox(json!({"hostname": "box-1.example"}));
    assert_eq!(s.sh(&named, "hostname")["stdout"], "box-1.example\n");
    s.delete(&format!("/sandboxes/{named}"));
    // An environment execve could not pass on is refused at once, not at every exec.
    for env in [
        json!({"A=B": "x"}),
        json!({"": "x"}),
        json!({"A": "x\u{0}y"}),
    ] {
        let r = s.post("/sandboxes", json!({ "env": env }));
        assert_refused(r, 400, "invalid environment variable");
    }
    let long = json!({"env": {"A": "x".repeat(200_000)}});
    assert_refused(
        s.post("/sandboxes", long),
        400,
        "a program can be given at most",
    );
    // Labels find sandboxes; they hold no data.
    let many: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
    for labels in [
        json!({"": "v"}),
        json!({"a=b": "v"}),
        json!({"k": "v".repeat(1025)}),
        Value::Object(many),
    ] {
        let r = s.post("/sandboxes", json!({ "labels": labels }));
        assert_refused(r, 400, "label");
    }
    // What was refused is quoted, not echoed back whole.
    let huge = "k".repeat(100_000);
    for (body, status) in [
        (json!({"labels": {&huge: "v"}}), 400),
        (json!({"env": {format!("{huge}="): "v"}}), 400),
        (json!({"hostname": &huge}), 400),
        (json!({"image": &huge}), 400),
    ] {
        let e = assert_refused(s.post("/sandboxes", body), status, "kk\"...");
        assert!(e["message"].as_str().unwrap().len() < 300, "{e}");
    }
    assert_eq!(s.get("/sandboxes/does-not-exist").status(), 404);
    // Malformed path parameters and forms get the same JSON error body.
    let bad_pid = s.get("/sandboxes/does-not-exist/processes/-1");
    assert_eq!(bad_pid.status(), 400);
    assert_eq!(json_of(bad_pid)["error"]["code"], "invalid_argument");
    let not_a_form = s
        .http
        .post(s.api("/sandboxes/does-not-exist/files/upload"))
        .header("content-type", "multipart/form-data")
        .send()
        .unwrap();
    assert_eq!(not_a_form.status(), 400);
    assert_eq!(json_of(not_a_form)["error"]["code"], "invalid_argument");
    assert_eq!(
        s.post("/sandboxes/does-not-exist/exec", json!({"shell": "true"}))
            .status(),
        404
    );
    assert_eq!(
        s.http
            .get(format!("{}/no/such/route", s.url))
            .send()
            .unwrap()
            .status(),
        404
    );

    let id = s.sandbox(json!({}));
    assert_eq!(
        s.post(&format!("/sandboxes/{id}/exec"), json!({})).status(),
        400
    );
    assert_eq!(
        s.post(&format!("/sandboxes/{id}/exec"), json!({"command": []}))
            .status(),
        400
    );
    assert_eq!(
        s.post(
            &format!("/sandboxes/{id}/exec"),
            json!({"shell": "x", "command": ["y"]})
        )
        .status(),
        400
    );
    assert_eq!(
        s.post(
            &format!("/sandboxes/{id}/exec"),
            json!({"shell": "true", "timeout": -1})
        )
        .status(),
        400
    );
    assert_eq!(
        s.post(
            &format!("/sandboxes/{id}/exec"),
            json!({"command": ["a\u{0}b"]})
        )
        .status(),
        400
    );
    assert_eq!(
        s.post(
            &format!("/sandboxes/{id}/exec"),
            json!({"shell": "true", "env": {"A=B": "1"}})
        )
        .status(),
        400
    );

    // A body over the limit is refused from its announced length, before any of it is read,
    // with the API's error shape.
    let head = format!(
        "PUT /api/v1/sandboxes/{id}/files?path=big\r\nContent-Length: {}",
        300u64 << 20
    );
    let (status, answer) = answer_of(s.send_raw(&head, b""));
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error"]["code"], "too_large", "{answer}");
    s.delete(&format!("/sandboxes/{id}"));
}

#[test]
fn a_client_trickling_its_headers_is_cut_off() {
    use std::io::{Read, Write};
    let mut s = Server::start_with(&[("CELLA_LIMITS__HEADER_READ_TIMEOUT_SECS", "1")]);
    // The timeout also closes keep-alive connections idle that long: a pooled one could be
    // reused just as the server closes it, so each request here opens its own.
    s.http = reqwest::blocking::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let address = s.url.trim_start_matches("http://").to_string();
    let mut slow = std::net::TcpStream::connect(&address).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: cella\r\n")
        .unwrap();
    slow.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let closed = slow.read_to_end(&mut answer);
    assert!(closed.is_ok(), "the connection was left open: {closed:?}");
    assert!(started.elapsed() < cella_e2e::scaled(5.0));
    // The limit is on sending headers, not on how long the answer takes.
    let id = s.sandbox(json!({}));
    let r = s.exec(&id, json!({"shell": "sleep 2; echo slow but fine"}));
    assert_eq!(r["stdout"], "slow but fine\n");
}

#[test]
fn large_bodies_share_one_budget_and_small_ones_never_wait() {
    use std::time::{Duration, Instant};
    let s = Server::start_with(&[
        ("CELLA_LIMITS__MAX_BODY_BYTES", "1600000"),
        ("CELLA_LIMITS__MAX_BODY_BYTES_IN_FLIGHT", "2000000"),
    ]);
    // Two runs whose bodies (1.1 MB each) do not fit in the budget together.
    let data = "x".repeat(1_100_000);
    let body = json!({
        "language": "python",
        "code": "import os, time; time.sleep(2); print(os.path.getsize('f'))",
        "files": {"f": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &data)},
    });
    let started = Instant::now();
    let large: Vec<_> = (0..2)
        .map(|_| {
            let (http, url, body) = (s.http.clone(), format!("{}/run_code", s.url), body.clone());
            std::thread::spawn(move || {
                let r: Value = http.post(url).json(&body).send().unwrap().json().unwrap();
                (r["run_result"]["stdout"].clone(), started.elapsed())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let small = json_of(s.run_code(json!({"language": "python", "code": "print(1)"})));
    assert_eq!(small["run_result"]["stdout"], "1\n");
    assert!(t.elapsed() < cella_e2e::scaled(1.0), "{:?}", t.elapsed());
    let mut finished: Vec<Duration> = large
        .into_iter()
        .map(|h| {
            let (stdout, at) = h.join().unwrap();
            assert_eq!(stdout, "1100000\n");
            at
        })
        .collect();
    finished.sort();
    // The second body waited for the first run to answer.
    assert!(finished[1] >= Duration::from_millis(3900), "{finished:?}");
}

#[test]
fn a_client_stalling_its_body_is_answered_and_frees_its_budget() {
    use std::time::{Duration, Instant};
    let s = Server::start_with(&[
        ("CELLA_LIMITS__BODY_READ_TIMEOUT_SECS", "1"),
        ("CELLA_LIMITS__MAX_BODY_BYTES", "1500000"),
        ("CELLA_LIMITS__MAX_BODY_BYTES_IN_FLIGHT", "1500000"),
    ]);
    let id = s.sandbox(json!({}));
    s.sh(&id, "mkdir box; echo before > box/stalled");
    // This upload takes the whole body budget, then stops sending.
    let upload =
        format!("PUT /api/v1/sandboxes/{id}/files?path=box/stalled\r\nContent-Length: 1400000");
    let stalled = s.send_raw(&upload, &[b'x'; 4096]);
    std::thread::sleep(Duration::from_millis(300));
    // The next large upload waits for that share, and gets it once the stalled one is cut off.
    let started = Instant::now();
    let waiting = {
        let req = s
            .http
            .put(s.api(&format!("/sandboxes/{id}/files?path=box/whole")))
            .body(vec![b'y'; 1_000_000])
            .timeout(Duration::from_secs(20));
        std::thread::spawn(move || req.send().map(|r| r.status().as_u16()))
    };
    let (status, body) = answer_of(stalled);
    assert_eq!(status, 408, "{body}");
    assert_eq!(body["error"]["code"], "body_timeout", "{body}");
    assert_eq!(waiting.join().unwrap().unwrap(), 200);
    assert!(
        started.elapsed() < cella_e2e::scaled(5.0),
        "{:?}",
        started.elapsed()
    );
    // The stalled upload left the file it was replacing as it was; the whole one is whole.
    let listed = s.sh(&id, "cd box; ls -A; cat stalled; stat -c %s whole");
    assert_eq!(
        listed["stdout"], "stalled\nwhole\nbefore\n1000000\n",
        "{listed}"
    );
    // A face answers in its own shape: SandboxFusion's `Failed`, which clients do not retry.
    let stalled = s.send_raw("POST /run_code\r\nContent-Length: 100", br#"{"language": "#);
    let (status, body) = answer_of(stalled);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "Failed", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("paused"),
        "{body}"
    );
}

#[test]
fn an_api_token_guards_every_route_but_healthz() {
    let s = Server::start_with(&[("CELLA_API_TOKEN", "s3cret")]);
    let health = s.http.get(format!("{}/healthz", s.url)).send().unwrap();
    assert_eq!(health.status(), 200);
    let code = json!({"code": "print(6 * 7)", "language": "python"});
    let routes = [
        s.http.get(s.api("/sandboxes")),
        s.http.get(format!("{}/metrics", s.url)),
        s.http.get(format!("{}/openapi.json", s.url)),
        s.http.get(format!("{}/v1/ping", s.url)),
        s.http.post(format!("{}/run_code", s.url)).json(&code),
        s.http.get(format!("{}/no/such/route", s.url)),
    ];
    for req in routes {
        let r = req.send().unwrap();
        assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"cella\"");
        assert_refused(r, 401, "wants its API token");
    }
    let wrong = s.http.get(s.api("/sandboxes")).bearer_auth("s3cre7");
    assert_refused(wrong.send().unwrap(), 401, "token is wrong");
    let basic_wrong = s
        .http
        .get(s.api("/sandboxes"))
        .basic_auth("cella", Some("nope"));
    assert_refused(basic_wrong.send().unwrap(), 401, "token is wrong");

    let listed = s.http.get(s.api("/sandboxes")).bearer_auth("s3cret");
    assert_eq!(json_of(listed.send().unwrap()), json!([]));
    let doc = s
        .http
        .get(format!("{}/openapi.json", s.url))
        .bearer_auth("s3cret");
    let doc = json_of(doc.send().unwrap());
    assert_eq!(doc["security"], json!([{"api_token": []}]));
    let sandboxes = &doc["paths"]["/api/v1/sandboxes"]["get"]["responses"];
    assert!(sandboxes.get("401").is_some(), "{sandboxes}");
    // As SandboxFusion's clients send it, from an endpoint `http://cella:s3cret@host:port`.
    let with_url = s.url.replace("http://", "http://cella:s3cret@") + "/run_code";
    let ran = json_of(s.http.post(with_url).json(&code).send().unwrap());
    assert_eq!(ran["run_result"]["stdout"], "42\n", "{ran}");

    // Refused before its body is read: a client without the token holds nothing.
    let huge = s.send_raw("POST /run_code\r\nContent-Length: 1000000000", b"{");
    let (status, body) = answer_of(huge);
    assert_eq!(status, 401, "{body}");

    let cli = |token: Option<&str>| {
        let mut cmd = std::process::Command::new(cella_e2e::cella_bin());
        cmd.args(["exec", "--", "echo", "in"])
            .env("CELLA_SERVER", &s.url);
        match token {
            Some(token) => cmd.env("CELLA_API_TOKEN", token),
            None => cmd.env_remove("CELLA_API_TOKEN"),
        };
        cmd.output().unwrap()
    };
    let out = cli(Some("s3cret"));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "in\n");
    let out = cli(None);
    assert_eq!(out.status.code(), Some(2));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("401 Unauthorized") && said.contains("CELLA_API_TOKEN"),
        "{said}"
    );
}
