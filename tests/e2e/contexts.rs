//! Contexts through the native API: state kept between calls in python, javascript and
//! bash; events in order; timeouts that interrupt; kernels that die, ignore interrupts or
//! run out of memory; calls in order and bounded; streaming; bad input; and contexts dying
//! with their sandbox.

use std::io::{BufRead, BufReader};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cella_e2e::{Server, answer_of, assert_refused, eventually, json_of, processes_with_uid_in};
use serde_json::{Value, json};

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    // A small code limit, queue bound and body limit, to test them without huge bodies or
    // many calls.
    SERVER.get_or_init(|| {
        Server::start_with(&[
            ("CELLA_CONTEXTS__MAX_CODE_BYTES", "65536"),
            ("CELLA_CONTEXTS__MAX_QUEUED_CALLS", "2"),
            ("CELLA_CONTEXTS__MAX_PER_SANDBOX", "4"),
            ("CELLA_LIMITS__MAX_BODY_BYTES", "1048576"),
        ])
    })
}

/// The events of an answer, each as `type` plus the fields asked for.
fn kinds(answer: &Value) -> Vec<String> {
    answer["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect()
}

fn result_text(answer: &Value) -> &str {
    let results = answer["events"].as_array().unwrap().iter();
    let mut results = results.filter(|e| e["type"] == "result");
    results
        .next()
        .map_or("", |e| e["data"]["text/plain"].as_str().unwrap())
}

#[test]
fn a_python_context_keeps_state_and_reports_every_kind_of_event_in_order() {
    let s = server();
    let id = s.sandbox(json!({}));
    let c = s.context(&id, json!({}));
    let info = json_of(s.get(&format!("/sandboxes/{id}/contexts/{c}")));
    assert_eq!(
        (info["language"].as_str(), info["cwd"].as_str()),
        (Some("python"), Some("/home/user"))
    );

    assert_eq!(
        kinds(&s.execute(&id, &c, "x = 41", json!({}))),
        Vec::<String>::new()
    );
    let r = s.execute(&id, &c, "x + 1", json!({}));
    assert_eq!((r["status"].as_str(), result_text(&r)), (Some("ok"), "42"));
    let code = "import sys\nprint('out', flush=True)\nprint('err', file=sys.stderr, flush=True)\n\
                print('again')\nx";
    let r = s.execute(&id, &c, code, json!({}));
    assert_eq!(kinds(&r), ["stream", "stream", "stream", "result"], "{r}");
    assert_eq!(r["events"][1]["name"], "stderr");
    assert_eq!(
        (r["stdout"].as_str(), r["stderr"].as_str()),
        (Some("out\nagain\n"), Some("err\n"))
    );
    assert!(r["events"][0]["timestamp"].as_str().unwrap().ends_with('Z'));

    let r = s.execute(&id, &c, "1 / 0", json!({}));
    assert_eq!(r["status"], "error");
    let e = &r["events"][0];
    assert_eq!(
        (e["name"].as_str(), e["value"].as_str()),
        (Some("ZeroDivisionError"), Some("division by zero"))
    );
    assert!(!e["traceback"].as_array().unwrap().is_empty());

    // A plot comes back as image/png with its text, the whole MIME bundle.
    let plot = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()";
    let r = s.execute(&id, &c, plot, json!({}));
    assert_eq!(kinds(&r), ["display"], "{r}");
    assert!(r["events"][0]["data"]["image/png"].as_str().unwrap().len() > 100);
    assert!(r["events"][0]["data"]["text/plain"].is_string());

    // Files created or changed under the working directory, and only those, are events;
    // hidden ones are not.
    let write = "open('a.txt', 'w').write('abc'); import os; os.makedirs('d', exist_ok=True)\n\
                 open('d/b.txt', 'w').write('b'); open('.hidden', 'w').write('h')";
    let r = s.execute(&id, &c, write, json!({}));
    let files: Vec<(String, u64)> = r["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "file")
        .map(|e| {
            (
                e["path"].as_str().unwrap().to_string(),
                e["size"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        files,
        [
            ("/home/user/a.txt".into(), 3),
            ("/home/user/d/b.txt".into(), 1)
        ]
    );
    let r = s.execute(&id, &c, "open('a.txt').read()", json!({}));
    assert_eq!(kinds(&r), ["result"], "reading changes nothing: {r}");
    let r = s.execute(&id, &c, "open('a.txt', 'a').write('d')", json!({}));
    assert!(
        kinds(&r).contains(&"file".to_string()),
        "an append is a change: {r}"
    );

    // A second context of the sandbox has its own state and working directory.
    let other = s.context(&id, json!({"cwd": "/tmp/work", "env": {"GREETING": "hi"}}));
    let r = s.execute(
        &id,
        &other,
        "import os\n'x' in dir(), os.getcwd(), os.environ['GREETING']",
        json!({}),
    );
    assert_eq!(result_text(&r), "(False, '/tmp/work', 'hi')");
    let listed = json_of(s.get(&format!("/sandboxes/{id}/contexts")));
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let gone = s.delete(&format!("/sandboxes/{id}/contexts/{other}"));
    assert_eq!(gone.status(), 204);
    assert_refused(
        s.get(&format!("/sandboxes/{id}/contexts/{other}")),
        404,
        "not found",
    );
    // The kernels are not among the sandbox's listed processes.
    let processes = json_of(s.get(&format!("/sandboxes/{id}/processes")));
    assert_eq!(processes, json!([]));
    s.delete(&format!("/sandboxes/{id}"));
}

#[test]
fn javascript_and_bash_contexts_keep_their_state() {
    let s = server();
    let id = s.sandbox(json!({}));
    let js = s.context(&id, json!({"language": "javascript"}));
    s.execute(
        &id,
        &js,
        "let x = 41; function twice(n) { return 2 * n }",
        json!({}),
    );
    assert_eq!(result_text(&s.execute(&id, &js, "x + 1", json!({}))), "42");
    let r = s.execute(
        &id,
        &js,
        "console.log('hi', twice(2)); console.error('oops')",
        json!({}),
    );
    assert_eq!(
        (r["stdout"].as_str(), r["stderr"].as_str()),
        (Some("hi 4\n"), Some("oops\n"))
    );
    let r = s.execute(&id, &js, "throw new TypeError('bad thing')", json!({}));
    let e = &r["events"][0];
    assert_eq!(
        (e["type"].as_str(), e["name"].as_str(), e["value"].as_str()),
        (Some("error"), Some("TypeError"), Some("bad thing"))
    );
    assert!(
        e["traceback"][0]
            .as_str()
            .unwrap()
            .contains("TypeError: bad thing"),
        "{e}"
    );
    let r = s.execute(
        &id,
        &js,
        "const y = await Promise.resolve(x); y * 2",
        json!({}),
    );
    assert_eq!(result_text(&r), "82", "{r}");
    assert_eq!(
        result_text(&s.execute(&id, &js, "y", json!({}))),
        "41",
        "top-level await keeps declarations"
    );
    assert_eq!(
        result_text(&s.execute(&id, &js, "require('os').userInfo().username", json!({}))),
        "'user'"
    );

    let sh = s.context(&id, json!({"language": "bash"}));
    s.execute(
        &id,
        &sh,
        "cd /tmp && n=5 && greet() { echo \"hello $1\"; }",
        json!({}),
    );
    let r = s.execute(&id, &sh, "greet $n; pwd", json!({}));
    assert_eq!(
        (r["status"].as_str(), r["stdout"].as_str()),
        (Some("ok"), Some("hello 5\n/tmp\n"))
    );
    let r = s.execute(&id, &sh, "ls /nonexistent", json!({}));
    assert_eq!(r["status"], "error", "a failing command is an error: {r}");
    assert!(
        r["stdout"].as_str().unwrap().contains("No such file"),
        "{r}"
    );
    assert_refused(
        s.post(
            &format!("/sandboxes/{id}/contexts"),
            json!({"language": "cobol"}),
        ),
        422,
        "unknown variant",
    );
    s.delete(&format!("/sandboxes/{id}"));
}

#[test]
fn a_timeout_interrupts_the_call_and_the_next_runs_at_once_with_state_kept() {
    let s = server();
    let id = s.sandbox(json!({}));
    let c = s.context(&id, json!({}));
    s.execute(&id, &c, "x = 1", json!({}));
    let started = Instant::now();
    let r = s.execute(
        &id,
        &c,
        "import time\nprint('before')\ntime.sleep(30)",
        json!({"timeout": 1}),
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        (r["status"].as_str(), r["kernel_lost"].as_str()),
        (Some("timeout"), None),
        "{r}"
    );
    assert_eq!(r["stdout"], "before\n");
    // What the interrupt raised is there too, after what came before it.
    assert_eq!(
        r["events"].as_array().unwrap().last().unwrap()["name"],
        "KeyboardInterrupt"
    );
    let started = Instant::now();
    let r = s.execute(&id, &c, "x + 1", json!({}));
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(result_text(&r), "2");
    // A timeout that fires before the kernel has even begun the call (which ignores SIGINT
    // until then) still interrupts the call, not the kernel's life.
    for _ in 0..5 {
        let r = s.execute(
            &id,
            &c,
            "import time; time.sleep(5)",
            json!({"timeout": 0.001}),
        );
        let outcome = (r["status"].as_str(), r["kernel_lost"].as_str());
        assert_eq!(outcome, (Some("timeout"), None), "{r}");
    }
    assert_eq!(result_text(&s.execute(&id, &c, "x", json!({}))), "1");
    s.delete(&format!("/sandboxes/{id}"));
}

#[test]
fn a_kernel_that_ignores_the_interrupt_is_stopped_and_the_next_call_gets_a_fresh_one() {
    let s = server();
    let id = s.sandbox(json!({}));
    let c = s.context(&id, json!({}));
    s.execute(&id, &c, "x = 1", json!({}));
    let deaf = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass";
    let started = Instant::now();
    let r = s.execute(&id, &c, deaf, json!({"timeout": 1}));
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(r["status"], "timeout");
    assert!(
        r["kernel_lost"].as_str().unwrap().contains("state is lost"),
        "{r}"
    );
    let r = s.execute(&id, &c, "x", json!({}));
    assert_eq!(r["events"][0]["name"], "NameError", "a fresh kernel: {r}");
    assert_eq!(result_text(&s.execute(&id, &c, "1 + 1", json!({}))), "2");
    s.delete(&format!("/sandboxes/{id}"));
}

#[test]
fn a_kernel_that_dies_ends_its_call_saying_so_and_the_sandbox_goes_on() {
    let s = server();
    let id = s.sandbox(json!({"memory_mb": 300}));
    let c = s.context(&id, json!({}));
    let r = s.execute(&id, &c, "import os\nos._exit(3)", json!({}));
    assert_eq!(r["events"][0]["name"], "DeadKernelError", "{r}");
    assert!(
        r["kernel_lost"]
            .as_str()
            .unwrap()
            .contains("exited with code 3"),
        "{r}"
    );
    assert_eq!(result_text(&s.execute(&id, &c, "1 + 1", json!({}))), "2");
    // Out of memory: the sandbox's limit holds its kernels too.
    let hog = "chunks = []\nwhile True: chunks.append(bytearray(50 << 20))";
    let r = s.execute(&id, &c, hog, json!({"timeout": 30}));
    assert!(
        r["kernel_lost"].as_str().unwrap().contains("out of memory"),
        "{r}"
    );
    let usage = json_of(s.get(&format!("/sandboxes/{id}/usage")));
    assert!(usage["oom_kills"].as_u64().unwrap() >= 1, "{usage}");
    assert_eq!(result_text(&s.execute(&id, &c, "2 + 2", json!({}))), "4");
    let sh = s.sh(&id, "echo alive");
    assert_eq!(sh["stdout"], "alive\n");
    // A segfault in native code is a death like any other.
    let r = s.execute(&id, &c, "import ctypes\nctypes.string_at(0)", json!({}));
    assert!(
        r["kernel_lost"].as_str().unwrap().contains("signal 11"),
        "{r}"
    );
    s.delete(&format!("/sandboxes/{id}"));
}

#[test]
fn calls_run_one_at_a_time_in_order_each_timed_from_its_start() {
    let s = server();
    let id = s.sandbox(json!({}));
    let c = s.context(&id, json!({}));
    s.execute(&id, &c, "import time\nlog = []", json!({}));
    // Three calls at once: each waits for the one before, and the third's 1 s timeout does
    // not count its wait.
    let calls: Vec<_> = (0..3)
        .map(|i| {
            let (id, c) = (id.clone(), c.clone());
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(150 * i));
                let code = format!(
                    "log.append(('start', {i}))\ntime.sleep(0.6)\nlog.append(('end', {i}))"
                );
                server().execute(&id, &c, &code, json!({"timeout": 1}))
            })
        })
        .collect();
    for call in calls {
        assert_eq!(call.join().unwrap()["status"], "ok");
    }
    let r = s.execute(&id, &c, "log", json!({}));
    assert_eq!(
        result_text(&r),
        "[('start', 0), ('end', 0), ('start', 1), ('end', 1), ('start', 2), ('end', 2)]"
    );
    s.delete(&format!("/sandboxes/{id}"));
}

#[test]
fn a_context_with_too_many_calls_waiting_refuses_more() {
    let s = server();
    let id = s.sandbox(json!({}));
    let c = s.context(&id, json!({}));
    // One running and two waiting (the server's bound here): a fourth is refused at once.
    let running: Vec<_> = (0..3)
        .map(|_| {
            let (id, c) = (id.clone(), c.clone());
            std::thread::spawn(move || {
                server().execute(&id, &c, "import time; time.sleep(1)", json!({}))
            })
        })
        .collect();
    assert!(eventually(5.0, || {
        json_of(s.get(&format!("/sandboxes/{id}/contexts/{c}")))["queued"] == 2
    }));
    let r = s.post(
        &format!("/sandboxes/{id}/contexts/{c}/execute"),
        json!({"code": "1"}),
    );
    assert_refused(r, 503, "calls waiting already");
    for call in running {
        assert_eq!(call.join().unwrap()["status"], "ok");
    }
    s.delete(&format!("/sandboxes/{id}"));
}

#[test]
fn a_sandbox_holds_at_most_its_limit_of_contexts_however_many_are_asked_for_at_once() {
    let s = server();
    let id = s.sandbox(json!({}));
    // Eight at once where the server's limit is four: four are made, the rest refused.
    let asked: Vec<_> = (0..8)
        .map(|_| {
            let id = id.clone();
            std::thread::spawn(move || {
                let r = server().post(&format!("/sandboxes/{id}/contexts"), json!({}));
                (r.status().as_u16(), json_of(r))
            })
        })
        .collect();
    let answers: Vec<(u16, Value)> = asked.into_iter().map(|a| a.join().unwrap()).collect();
    let made = answers.iter().filter(|(status, _)| *status == 201).count();
    assert_eq!(made, 4, "{answers:?}");
    for (status, body) in answers.iter().filter(|(status, _)| *status != 201) {
        assert_eq!(*status, 409, "{body}");
        assert!(body.to_string().contains("limit of 4 contexts"), "{body}");
    }
    let listed = json_of(s.get(&format!("/sandboxes/{id}/contexts")));
    assert_eq!(listed.as_array().unwrap().len(), 4, "{listed}");
    // One deleted makes room for one more.
    let first = listed[0]["id"].as_str().unwrap();
    s.delete(&format!("/sandboxes/{id}/contexts/{first}"));
    s.context(&id, json!({}));
    s.delete(&format!("/sandboxes/{id}"));
}

#[test]
fn a_streamed_call_delivers_each_output_as_it_comes_then_its_end() {
    let s = server();
    let id = s.sandbox(json!({}));
    let c = s.context(&id, json!({}));
    let code = "import time\nprint('first', flush=True)\ntime.sleep(1)\nprint('second')\n7";
    let started = Instant::now();
    let r = s
        .http
        .post(s.api(&format!("/sandboxes/{id}/contexts/{c}/execute/stream")))
        .json(&json!({"code": code}))
        .send()
        .unwrap();
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let mut lines = BufReader::new(r).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(
        (first["type"].as_str(), first["text"].as_str()),
        (Some("stream"), Some("first\n"))
    );
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "the first line came at {:?}",
        started.elapsed()
    );
    let rest: Vec<Value> = lines
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    let types: Vec<&str> = rest.iter().map(|l| l["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["stream", "result", "end"], "{rest:?}");
    assert_eq!(rest[2]["status"], "ok");
    s.delete(&format!("/sandboxes/{id}"));
}

#[test]
fn a_streamed_call_whose_code_ends_the_kernel_streams_the_error_it_answers_with() {
    let s = server();
    let id = s.sandbox(json!({}));
    let c = s.context(&id, json!({}));
    let r = s.send(
        s.http
            .post(s.api(&format!("/sandboxes/{id}/contexts/{c}/execute/stream")))
            .json(&json!({"code": "import os\nos._exit(3)"})),
    );
    let lines: Vec<Value> = (r.text().unwrap().lines())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let types: Vec<&str> = lines.iter().map(|l| l["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["error", "end"], "{lines:?}");
    assert_eq!(lines[0]["name"], "DeadKernelError", "{lines:?}");
    assert_eq!(lines[1]["status"], "error", "{lines:?}");
    assert!(lines[1]["kernel_lost"].is_string(), "{lines:?}");
    s.delete(&format!("/sandboxes/{id}"));
}

#[test]
fn interrupt_and_restart_through_the_api() {
    let s = server();
    let id = s.sandbox(json!({}));
    let c = s.context(&id, json!({}));
    s.execute(&id, &c, "x = 5", json!({}));
    let call = {
        let (id, c) = (id.clone(), c.clone());
        std::thread::spawn(move || {
            server().execute(&id, &c, "import time; time.sleep(60)", json!({}))
        })
    };
    assert!(eventually(5.0, || json_of(
        s.get(&format!("/sandboxes/{id}/contexts/{c}"))
    )["busy"]
        == true));
    let r = s.post(
        &format!("/sandboxes/{id}/contexts/{c}/interrupt"),
        json!({}),
    );
    assert_eq!(r.status(), 204);
    let r = call.join().unwrap();
    assert_eq!(
        (r["status"].as_str(), r["events"][0]["name"].as_str()),
        (Some("error"), Some("KeyboardInterrupt")),
        "{r}"
    );
    assert_eq!(result_text(&s.execute(&id, &c, "x", json!({}))), "5");
    let restarted = s.post(&format!("/sandboxes/{id}/contexts/{c}/restart"), json!({}));
    assert_eq!(restarted.status(), 200);
    let r = s.execute(&id, &c, "x", json!({}));
    assert_eq!(r["events"][0]["name"], "NameError", "{r}");
    s.delete(&format!("/sandboxes/{id}"));
}

#[test]
fn bad_input_gets_a_clear_error() {
    let s = server();
    let id = s.sandbox(json!({}));
    let c = s.context(&id, json!({}));
    assert_refused(
        s.post("/sandboxes/nope/contexts", json!({})),
        404,
        "sandbox \"nope\" not found",
    );
    assert_refused(
        s.get(&format!("/sandboxes/{id}/contexts/nope")),
        404,
        "context \"nope\" not found",
    );
    let execute = format!("/sandboxes/{id}/contexts/{c}/execute");
    assert_refused(
        s.post(&execute, json!({"code": "1", "timeout": 0})),
        400,
        "timeout",
    );
    assert_refused(
        s.post(&execute, json!({"code": "x".repeat(70_000)})),
        413,
        "max_code_bytes",
    );
    assert_refused(s.post(&execute, json!({"cod": "1"})), 422, "unknown field");
    let r = s.post(
        &format!("/sandboxes/{id}/contexts"),
        json!({"cwd": "/proc/cella"}),
    );
    assert!(r.status().is_client_error(), "{}", json_of(r));
    assert_refused(
        s.post(
            &format!("/sandboxes/{id}/contexts"),
            json!({"cwd": "/etc/passwd"}),
        ),
        400,
        "not a directory",
    );
    // The context still answers after all that.
    assert_eq!(result_text(&s.execute(&id, &c, "3", json!({}))), "3");
    s.delete(&format!("/sandboxes/{id}"));
    assert_refused(
        s.get(&format!("/sandboxes/{id}/contexts/{c}")),
        404,
        "not found",
    );
}

#[test]
fn kernels_are_confined_and_die_with_their_sandbox_which_they_do_not_keep_alive() {
    let s = server();
    let id = s.sandbox(json!({"idle_timeout_secs": 2}));
    let info = json_of(s.get(&format!("/sandboxes/{id}")));
    let uid = info["uid"].as_u64().unwrap() as u32;
    let c = s.context(&id, json!({}));
    let probe = "status = open('/proc/self/status').read()\n\
                 [l.split()[1] for l in status.splitlines() if l.split(':')[0] in ('Uid', 'CapEff', 'NoNewPrivs', 'Seccomp')]";
    let r = s.execute(&id, &c, probe, json!({}));
    assert_eq!(
        result_text(&r),
        format!("['{uid}', '0000000000000000', '1', '2']"),
        "{r}"
    );
    let js = s.context(&id, json!({"language": "javascript"}));
    assert!(!processes_with_uid_in(uid, 1).is_empty());
    // Idle with two kernels started: the sandbox stops anyway, and its kernels with it.
    assert!(eventually(10.0, || json_of(
        s.get(&format!("/sandboxes/{id}"))
    )["state"]
        == "stopped"));
    assert!(eventually(5.0, || processes_with_uid_in(uid, 1).is_empty()));
    assert_refused(
        s.get(&format!("/sandboxes/{id}/contexts/{js}")),
        409,
        "stopped",
    );
}

#[test]
fn the_cli_runs_code_in_contexts() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let s = server();
    let cli = || {
        let mut cmd = Command::new(cella_e2e::cella_bin());
        cmd.env("CELLA_SERVER", &s.url);
        cmd
    };
    // `repl` with piped input: all of it one entry, in a sandbox made and deleted for it.
    let mut repl = cli()
        .args(["repl", "--language", "python"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    repl.stdin
        .take()
        .unwrap()
        .write_all(b"import math\nprint('pi', round(math.pi, 2))\nmath.e > 2\n")
        .unwrap();
    let out = repl.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "pi 3.14\nTrue\n");

    let id = s.sandbox(json!({}));
    let made = cli()
        .args(["context", "new", "--sandbox", &id, "-l", "bash"])
        .output()
        .unwrap();
    let context = String::from_utf8_lossy(&made.stdout).trim().to_string();
    let run = |code: &str| {
        cli()
            .args([
                "context",
                "run",
                "--sandbox",
                &id,
                &context,
                code,
                "--timeout",
                "1",
            ])
            .output()
            .unwrap()
    };
    assert!(run("n=7").status.success());
    let out = run("echo $((n * 6))");
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).as_ref()
        ),
        (Some(0), "42\n")
    );
    assert_eq!(run("false").status.code(), Some(1));
    assert_eq!(run("sleep 5").status.code(), Some(124));
    let listed = cli()
        .args(["context", "ls", "--sandbox", &id])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&context));
    assert!(
        cli()
            .args(["context", "rm", "--sandbox", &id, &context])
            .status()
            .unwrap()
            .success()
    );
    let gone = run("echo hi");
    assert_eq!(gone.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("not found"),
        "{gone:?}"
    );
    s.delete(&format!("/sandboxes/{id}"));
}

#[test]
fn oversized_code_and_bodies_are_refused_in_each_faces_shape() {
    let s = server();
    let id = s.sandbox(json!({}));
    let c = s.context(&id, json!({}));
    // On a connection of its own: over the body limit, the server answers and closes
    // before reading the rest.
    let post = |path: &str, body: &Value| {
        let body = serde_json::to_vec(body).unwrap();
        let head = format!(
            "POST {path}\r\nContent-Type: application/json\r\nContent-Length: {}",
            body.len()
        );
        answer_of(s.send_raw(&head, &body))
    };
    for code in ["x".repeat(70_000), "x".repeat(2 << 20)] {
        let body = json!({"code": code});
        let (status, native) = post(
            &format!("/api/v1/sandboxes/{id}/contexts/{c}/execute"),
            &body,
        );
        assert_eq!(
            (status, native["error"]["code"].as_str()),
            (413, Some("too_large")),
            "{native}"
        );
        let (status, codegeex) = post("/execute", &body);
        assert_eq!(status, 413);
        assert!(codegeex["error"].as_str().is_some(), "{codegeex}");
        let (status, agentrun) = post(&format!("/sandboxes/{id}/contexts/execute"), &body);
        assert_eq!(
            (status, agentrun["code"].as_str()),
            (413, Some("PayloadTooLarge")),
            "{agentrun}"
        );
        assert!(agentrun["requestId"].is_string());
    }
    // The context is none the worse.
    assert_eq!(result_text(&s.execute(&id, &c, "1", json!({}))), "1");
    s.delete(&format!("/sandboxes/{id}"));
}

#[test]
fn an_output_flood_is_cut_or_ends_its_kernel_never_the_server() {
    let s = server();
    let id = s.sandbox(json!({}));
    // Node's output goes out as it is written: cut at the cap, flagged, the kernel intact.
    let js = s.context(&id, json!({"language": "javascript"}));
    let flood = "while (true) console.log('y'.repeat(10000))";
    let r = s.execute(&id, &js, flood, json!({"timeout": 2}));
    assert_eq!(
        (r["status"].as_str(), r["truncated"].as_bool()),
        (Some("timeout"), Some(true)),
        "{}",
        r["kernel_lost"]
    );
    // The cap counts messages as they came, their framing too.
    let kept = r["stdout"].as_str().unwrap().len();
    assert!(((4 << 20) - (64 << 10)..=4 << 20).contains(&kept), "{kept}");
    assert_eq!(result_text(&s.execute(&id, &js, "1 + 1", json!({}))), "2");
    // ipykernel holds what is printed between its flushes: the flood fills the sandbox's
    // memory and the kernel is killed, which the call says; the next call runs afresh.
    let py = s.context(&id, json!({}));
    let r = s.execute(
        &id,
        &py,
        "while True: print('x' * 10000)",
        json!({"timeout": 10}),
    );
    let ended = r["status"] == "timeout"
        || r["kernel_lost"]
            .as_str()
            .is_some_and(|l| l.contains("out of memory"));
    assert!(
        ended,
        "{}",
        json!({"status": r["status"], "lost": r["kernel_lost"]})
    );
    assert_eq!(result_text(&s.execute(&id, &py, "1 + 1", json!({}))), "2");
    s.delete(&format!("/sandboxes/{id}"));
}
