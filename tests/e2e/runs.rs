//! One-shot runs through the native API and the CLI, the Python zygote's isolation, and
//! admission control.

use std::io::Write;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cella_e2e::{Server, assert_refused, cella_bin, json_of};
use serde_json::{Value, json};

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(Server::start)
}

fn run(s: &Server, body: Value) -> Value {
    let r = s.post("/runs", body);
    let status = r.status();
    let v = json_of(r);
    assert_eq!(status, 200, "{v}");
    v
}

#[test]
fn languages_are_listed_with_versions() {
    let s = server();
    let langs = json_of(s.get("/languages"));
    let find = |n: &str| {
        langs
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == n)
            .cloned()
            .unwrap_or_else(|| panic!("{n} is not listed: {langs}"))
    };
    let python = find("python");
    assert_eq!(python["available"], true);
    assert!(python["version"].as_str().unwrap().starts_with("Python 3"));
    assert_eq!(find("cpp")["compiled"], true);
    // The version line, not a launcher's log prefix (`info: kotlinc-jvm ...`).
    let kotlin = find("kotlin_script");
    assert!(
        kotlin["version"]
            .as_str()
            .is_some_and(|v| v.starts_with("kotlinc-jvm")),
        "{kotlin}"
    );
    let julia = find("julia");
    assert_eq!(julia["available"], false);
    assert!(julia["reason"].as_str().is_some());
}

#[test]
fn go_tests_find_the_standard_librarys_vet_facts_in_the_cache_setup_built() {
    let s = server();
    // A go_test run has the cache copied in as its own (setup leaves a stamp in it).
    let stamped = "package main\nimport (\"os\"; \"testing\")\nfunc TestA(t *testing.T) {\n\
                   \t_, err := os.Stat(os.Getenv(\"HOME\") + \"/.cache/go-build/stamp\")\n\
                   \tif err != nil { t.Fatal(err) }\n}\n";
    let r = run(
        s,
        json!({"language": "go_test", "code": stamped, "run_timeout": cella_e2e::scaled(10.0).as_secs_f64()}),
    );
    assert_eq!(r["status"], "success", "{r}");
    let id = s.sandbox(json!({}));
    let test = "package main\nimport (\"testing\"; \"fmt\")\nfunc TestA(t *testing.T) { fmt.Println(1) }\n";
    s.exec(
        &id,
        json!({"shell": "mkdir -p w && cat > w/main_test.go", "stdin": test}),
    );
    // `go test -x` prints each tool it runs: vet once for the package itself with the cache a
    // go_test run copies in, vet for each standard package it imports without.
    let vets = |with_cache: &str| {
        let line =
            format!("cd w && {with_cache} && go test -x -count=1 main_test.go 2>&1 | grep -c /vet");
        let r = s.sh(&id, &line);
        let count = r["stdout"].as_str().unwrap().trim().parse::<u32>();
        count.unwrap_or_else(|_| panic!("{line}: {r}"))
    };
    let copied = "export GOCACHE=/tmp/warm && cp -rnT /opt/cella/go-cache $GOCACHE";
    assert!(vets(copied) < 10);
    assert!(vets("export GOCACHE=/tmp/cold") > 100);
    s.delete(&format!("/sandboxes/{id}"));
}

#[test]
fn jvm_tools_start_from_their_class_data_sharing_archives() {
    let s = server();
    let id = s.sandbox(json!({"memory_mb": 1024}));
    // With `-Xshare:on` a JVM that cannot map its archive fails instead of skipping it: each
    // archive setup dumped maps inside a sandbox, under the flags the language table runs with.
    let archive = |tool: &str| format!("-XX:SharedArchiveFile=/opt/cella/cds/{tool}.jsa");
    let quick = "-J-XX:TieredStopAtLevel=1 -J-XX:+UseSerialGC";
    for line in [
        format!("javac {quick} -J{} -J-Xshare:on -version", archive("javac")),
        format!(
            "java -XX:MaxRAM=1024m {} -Xshare:on -jar \
             /usr/share/java/junit-platform-console-standalone.jar --list-engines",
            archive("junit")
        ),
        format!(
            "scalac {quick} -J{} -J-Xshare:on -version",
            archive("scalac")
        ),
        format!("scala -J{} -J-Xshare:on -version", archive("scala")),
        format!(
            "kotlinc -J-XX:-PrintWarnings -J{} -J-Xshare:on -version",
            archive("kotlinc")
        ),
    ] {
        let r = s.sh(&id, &line);
        assert_eq!(r["exit_code"], 0, "{line}: {r}");
    }
    // An archive the JVM cannot use (here one of another tool's classes) makes it warn on
    // the program's stdout, unless told to keep quiet as the table tells it.
    let mismatched = |quiet: &str| {
        let r = s.sh(&id, &format!("java {} {quiet} -version", archive("junit")));
        assert_eq!(r["exit_code"], 0, "{r}");
        r["stdout"]
            .as_str()
            .unwrap()
            .contains("Unable to use shared archive")
    };
    assert!(mismatched(""));
    assert!(!mismatched("-Xlog:cds*=off"));
    s.delete(&format!("/sandboxes/{id}"));
}

#[test]
fn runs_with_stdin_files_and_fetch() {
    let s = server();
    let r = run(
        s,
        json!({"language": "python", "code": "import sys\nd = open('data/in.txt').read()\nopen('out.txt', 'w').write(d.upper())\nprint(sys.stdin.read())",
               "stdin": "from stdin", "files": {"data/in.txt": "hello"}, "fetch_files": ["out.txt", "nope"]}),
    );
    assert_eq!(r["status"], "success", "{r}");
    assert_eq!(r["run"]["stdout"], "from stdin\n");
    assert_eq!(r["files"]["out.txt"], "SEVMTE8=");
    assert!(r["files"].get("nope").is_none());

    let r = run(s, json!({"language": "cpp", "code": "int main( {"}));
    assert_eq!(r["status"], "failed");
    assert_ne!(r["compile"]["exit_code"], 0);
    assert!(r["run"].is_null());

    let r = run(s, json!({"language": "julia", "code": "println(1)"}));
    assert_eq!(r["status"], "unavailable");
    assert!(r["message"].as_str().unwrap().contains("julia"));
    assert_eq!(
        s.post("/runs", json!({"language": "cobol", "code": ""}))
            .status(),
        400
    );
    // Limits out of bounds are refused, not quietly moved into them.
    for (field, value, says) in [
        ("run_timeout", json!(-1), "run_timeout must be more than 0"),
        (
            "compile_timeout",
            json!(0),
            "compile_timeout must be more than 0",
        ),
        ("run_timeout", json!(1e9), "run_timeout must be more than 0"),
        ("memory_mb", json!(0), "memory_mb must be between"),
    ] {
        let mut body = json!({"language": "python", "code": "print(1)"});
        body[field] = value;
        assert_refused(s.post("/runs", body), 400, says);
    }
}

/// An evaluation runs one program against many tests: its compile is done once, and every
/// run of the same code and files, at once or later, gets that compile's outcome and files.
#[test]
fn runs_of_the_same_code_compile_it_once() {
    let s = Server::start();
    let compiles = |hit: bool| s.metric(&format!("cella_compile_cache_total{{hit=\"{hit}\"}}"));
    let code = "#warning \"from the compiler\"\n#include <cstdio>\n#include \"k.h\"\n\
                int main() { int x; scanf(\"%d\", &x); printf(\"%d\\n\", x * K); }";
    let cpp = |stdin: u32, k: u32, timeout: f64| {
        json!({"language": "cpp", "code": code, "stdin": stdin.to_string(), "compile_timeout": timeout,
               "files": {"k.h": format!("#define K {k}")}})
    };
    let tests: Vec<_> = (0..6)
        .map(|i| {
            let (http, url, body) = (s.http.clone(), s.api("/runs"), cpp(i, 2, 30.0));
            std::thread::spawn(move || json_of(http.post(url).json(&body).send().unwrap()))
        })
        .collect();
    for (i, test) in tests.into_iter().enumerate() {
        let r = test.join().unwrap();
        assert_eq!(r["run"]["stdout"], format!("{}\n", i * 2), "{r}");
        let warning = r["compile"]["stderr"].as_str().unwrap();
        assert!(warning.contains("from the compiler"), "{r}");
    }
    assert_eq!((compiles(false), compiles(true)), (1.0, 5.0));
    // The files are part of what is compiled.
    let r = run(&s, cpp(5, 3, 30.0));
    assert_eq!(r["run"]["stdout"], "15\n", "{r}");
    assert_eq!(compiles(false), 2.0);
    // A compile error is the code's own: kept, and told again.
    let broken = json!({"language": "cpp", "code": "int main() { return missing; }"});
    let (first, again) = (run(&s, broken.clone()), run(&s, broken));
    assert_eq!(first["compile"]["stderr"], again["compile"]["stderr"]);
    assert!(
        again["compile"]["stderr"]
            .as_str()
            .unwrap()
            .contains("missing")
    );
    assert_eq!(compiles(true), 6.0);
    // A compile cut short by its timeout says nothing of the code: not kept.
    let slow = cpp(1, 4, 0.001);
    assert_eq!(run(&s, slow)["compile"]["timed_out"], true);
    let r = run(&s, cpp(1, 4, 30.0));
    assert_eq!(r["run"]["stdout"], "4\n", "{r}");
    assert_eq!((compiles(false), compiles(true)), (5.0, 6.0));
    // A file the compile replaced (named as its output) is had as the compile left it.
    let shadowed = json!({"language": "cpp", "code": "int main() { return 3; }",
                          "files": {"main": "not a program"}});
    for _ in 0..2 {
        let r = run(&s, shadowed.clone());
        assert_eq!(r["run"]["exit_code"], 3, "{r}");
    }
    assert_eq!((compiles(false), compiles(true)), (6.0, 7.0));
}

#[test]
fn python_runs_from_the_zygote_are_fully_confined() {
    let s = server();
    let code = r#"
import os, subprocess
status = dict(l.split(':', 1) for l in open('/proc/self/status').read().splitlines())
print(status['Uid'].split()[0] != '0', status['CapEff'].strip(), status['CapBnd'].strip(), status['NoNewPrivs'].strip(), status['Seccomp'].strip())
print(os.path.exists('/etc/shadow'), sorted(f for f in os.listdir('/home/user') if not f.startswith('.')))
import ctypes; libc = ctypes.CDLL(None, use_errno=True)
print(libc.syscall(165, 0, 0, 0, 0, 0), ctypes.get_errno())  # mount: EPERM
print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit())[:3])
# FIFOs are ordinary files; device nodes are refused.
os.mkfifo('/tmp/fifo')
try: os.mknod('/tmp/null', 0o20666, os.makedev(1, 3))
except OSError as e: print(os.path.exists('/tmp/fifo'), e.errno in (1, 13), os.path.exists('/tmp/null'))
"#;
    let r = run(s, json!({"language": "python", "code": code}));
    assert_eq!(r["status"], "success", "{r}");
    let lines: Vec<&str> = r["run"]["stdout"].as_str().unwrap().lines().collect();
    assert_eq!(lines[0], "True 0000000000000000 0000000000000000 1 2");
    assert_eq!(lines[1], "False ['main.py']");
    assert_eq!(lines[2], "-1 1");
    // Only sandbox processes are visible, with sandbox pids.
    let pids: Vec<i64> = serde_json::from_str(lines[3]).unwrap();
    assert!(pids.iter().all(|&p| p < 100), "{pids:?}");
    assert_eq!(lines[4], "True True False");

    // A timeout kills the program and the processes it started.
    let started = Instant::now();
    let r = run(
        s,
        json!({"language": "python", "run_timeout": 1,
        "code": "import subprocess, time\nsubprocess.Popen(['sleep', '100'])\nsubprocess.Popen(['setsid', 'sleep', '100'])\ntime.sleep(100)"}),
    );
    assert_eq!(r["run"]["status"], "time_limit_exceeded", "{r}");
    assert!(
        started.elapsed() < cella_e2e::scaled(10.0),
        "{:?}: {r}",
        started.elapsed()
    );
    // Killed at once; the sandbox's init reaps the orphans a moment later.
    assert!(cella_e2e::eventually(2.0, || {
        cella_e2e::processes_with_uid_in(s.uid_base, 1000)
            .iter()
            .all(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .map_or(true, |c| c.trim() != "sleep")
            })
    }));

    // Exceptions read as Python prints them, without the zygote's frames.
    let r = run(
        s,
        json!({"language": "python", "code": "def f():\n    raise ValueError('x')\nf()"}),
    );
    let err = r["run"]["stderr"].as_str().unwrap();
    assert!(
        err.starts_with("Traceback (most recent call last):\n  File \"/home/user/main.py\""),
        "{err}"
    );
    assert!(err.ends_with("ValueError: x\n"), "{err}");
    assert!(!err.contains("runpy"), "{err}");
    assert_eq!(r["run"]["exit_code"], 1);
    let r = run(
        s,
        json!({"language": "python", "code": "import sys\nprint('bye')\nsys.exit(4)"}),
    );
    assert_eq!(
        (r["run"]["exit_code"].as_i64(), r["run"]["stdout"].as_str()),
        (Some(4), Some("bye\n"))
    );
}

/// The `cella` CLI, pointed at `s`.
fn cli(s: &Server) -> Command {
    let mut cmd = Command::new(cella_bin());
    cmd.env("CELLA_SERVER", &s.url);
    cmd
}

#[test]
fn cli_run_and_exec() {
    let s = server();
    let dir = s.data_dir.with_extension("cli");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("hello.py");
    std::fs::write(&file, "print('hello from a file')\n").unwrap();
    let out = cli(s).arg("run").arg(&file).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from a file\n");
    // The language comes from the extension; a compiled one exits with the program's code.
    let file = dir.join("hello.c");
    std::fs::write(
        &file,
        "#include <stdio.h>\nint main(void) { puts(\"hello in C\"); return 5; }\n",
    )
    .unwrap();
    let out = cli(s).arg("run").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello in C\n");

    let out = cli(s).arg("languages").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("python ") && l.contains("Python 3")),
        "{listed}"
    );
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("julia ") && l.contains("unavailable: ")),
        "{listed}"
    );

    let out = cli(s)
        .args(["exec", "--", "sh", "-c", "echo out; echo err >&2; exit 3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");

    // `--stdin -` passes the CLI's own standard input.
    let mut child = cli(s)
        .args(["exec", "--stdin", "-", "--", "tr", "a-z", "A-Z"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"piped in\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "PIPED IN\n");

    // Ends as a shell reports them: 128 + a killing signal; 124 at the timeout, as
    // coreutils' `timeout` does, for a command and for a run alike.
    let killed = cli(s)
        .args(["exec", "--", "sh", "-c", "kill -9 $$"])
        .output()
        .unwrap();
    assert_eq!(killed.status.code(), Some(137));
    let said = String::from_utf8_lossy(&killed.stderr);
    assert_eq!(said, "cella: the command was killed by SIGKILL\n");
    // A forbidden system call (321 is bpf on x86-64) ends in a SIGSYS that says what it means.
    let out = cli(s)
        .args(["exec", "--", "python3", "-c"])
        .arg("import ctypes; ctypes.CDLL(None).syscall(321, 0, 0, 0)")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(128 + 31), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("killed by SIGSYS (a system call the sandbox forbids)"),
        "{said}"
    );
    let out = cli(s)
        .args(["exec", "--timeout", "0.5", "--", "sleep", "10"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(124), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("the command timed out"));
    let file = dir.join("slow.py");
    std::fs::write(&file, "import time\ntime.sleep(10)\n").unwrap();
    let out = cli(s)
        .args(["run", "--timeout", "0.5"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(124), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("the run step timed out"));
    std::fs::remove_dir_all(&dir).unwrap();

    let bad = Command::new(cella_bin())
        .args(["exec", "--server", "http://127.0.0.1:1", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(
        said.contains("cannot reach the server at http://127.0.0.1:1: Connection refused"),
        "{said}"
    );
}

#[test]
fn a_full_queue_refuses_at_once() {
    let s = Server::start_with(&[
        ("CELLA_RUNS__MAX_CONCURRENCY", "1"),
        ("CELLA_RUNS__MAX_QUEUE", "1"),
    ]);
    let slow =
        json!({"language": "python", "code": "import time; time.sleep(3)", "run_timeout": 10});
    let hold: Vec<_> = (0..2)
        .map(|_| {
            let (http, url, body) = (s.http.clone(), s.api("/runs"), slow.clone());
            std::thread::spawn(move || http.post(url).json(&body).send().unwrap().status())
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1000));
    let t = Instant::now();
    let r = s.post("/runs", json!({"language": "python", "code": "print(1)"}));
    assert_eq!(r.status(), 503);
    assert_eq!(json_of(r)["error"]["code"], "busy");
    let r = s.run_code(json!({"language": "python", "code": "print(1)"}));
    assert_eq!(
        r.status(),
        504,
        "the SandboxFusion face answers what its clients retry"
    );
    assert!(t.elapsed() < cella_e2e::scaled(1.0));
    for h in hold {
        assert_eq!(h.join().unwrap(), 200);
    }
}

#[test]
fn callers_that_leave_the_queue_free_their_places() {
    let s = Server::start_with(&[
        ("CELLA_RUNS__MAX_CONCURRENCY", "1"),
        ("CELLA_RUNS__MAX_QUEUE", "2"),
    ]);
    let post = |body: Value| {
        let (http, url) = (s.http.clone(), s.api("/runs"));
        std::thread::spawn(move || http.post(url).json(&body).send().unwrap().status())
    };
    let hold = post(json!({"language": "bash", "code": "sleep 3", "run_timeout": 10}));
    std::thread::sleep(Duration::from_millis(500));
    let quick = json!({"language": "python", "code": "print(1)"});
    let impatient = reqwest::blocking::Client::builder()
        .timeout(Duration::from_millis(400))
        .build()
        .unwrap();
    for _ in 0..2 {
        let gone = impatient.post(s.api("/runs")).json(&quick).send();
        assert!(
            gone.is_err(),
            "queued behind the slow run, the caller gave up"
        );
    }
    // Their places are free again: two more callers queue, and only a third is refused.
    let queued: Vec<_> = (0..2).map(|_| post(quick.clone())).collect();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(s.post("/runs", quick.clone()).status(), 503);
    for q in queued {
        assert_eq!(q.join().unwrap(), 200);
    }
    assert_eq!(hold.join().unwrap(), 200);
}

#[test]
fn a_run_whose_caller_goes_away_ends_and_leaves_nothing() {
    let s = Server::start_with(&[
        ("CELLA_RUNS__MAX_CONCURRENCY", "1"),
        ("CELLA_POOL__WARM_SANDBOXES", "0"),
        ("CELLA_POOL__WARM_KERNELS", "0"),
    ]);
    let live = || {
        let health = s.http.get(format!("{}/healthz", s.url)).send().unwrap();
        json_of(health)["sandboxes"].as_u64().unwrap()
    };
    let impatient = reqwest::blocking::Client::builder()
        .timeout(Duration::from_millis(1500))
        .build()
        .unwrap();
    let forever = [
        (
            "/api/v1/runs",
            json!({"language": "python", "code": "while True: pass", "run_timeout": 60}),
        ),
        (
            "/api/v1/runs",
            json!({"language": "bash", "code": "sleep 100", "run_timeout": 60}),
        ),
        (
            "/run_jupyter",
            json!({"cells": ["print(1)", "while True: pass"], "total_timeout": 60}),
        ),
    ];
    for (path, body) in &forever {
        let url = format!("{}{path}", s.url);
        let gone = impatient.post(url).json(body).send();
        assert!(gone.is_err(), "{path}: the caller gave up first");
        // Its sandbox is destroyed with everything in it, not left to run out its timeout.
        assert!(cella_e2e::eventually(10.0, || live() == 0), "{path}");
    }
    // The one run slot is free again at once.
    let t = Instant::now();
    let r = run(&s, json!({"language": "python", "code": "print(1)"}));
    assert_eq!(r["run"]["stdout"], "1\n");
    assert!(t.elapsed() < cella_e2e::scaled(5.0), "{:?}", t.elapsed());
}

#[test]
fn new_homes_start_with_the_skeleton_caches() {
    let s = server();
    run(s, json!({"language": "python", "code": "pass"}));
    let cache = s.data_dir.join("skel/.cache/matplotlib");
    assert!(cella_e2e::eventually(60.0, || std::fs::read_dir(&cache)
        .is_ok_and(|mut d| d.next().is_some())));
    let id = s.sandbox(json!({}));
    let r = s.sh(&id, "stat -c '%U %n' ~/.cache/matplotlib/fontlist-*.json");
    assert!(
        r["stdout"]
            .as_str()
            .unwrap()
            .starts_with("user /home/user/.cache/matplotlib/fontlist-"),
        "{r}"
    );
    s.delete(&format!("/sandboxes/{id}"));
}

#[test]
fn scientific_runs_fork_from_a_zygote_with_numpy_pandas_and_matplotlib() {
    let s = server();
    let code = "import numpy, pandas\nprint(numpy.random.rand(), numpy.dot(numpy.ones(3), numpy.ones(3)), pandas.DataFrame({'a': [1, 2]}).a.sum())";
    let run_timeout = cella_e2e::scaled(10.0).as_secs_f64();
    let outputs: Vec<String> = (0..4)
        .map(|_| {
            let r = run(
                s,
                json!({"language": "python", "code": code, "run_timeout": run_timeout}),
            );
            assert_eq!(r["status"], "success", "{r}");
            r["run"]["stdout"].as_str().unwrap().to_string()
        })
        .collect();
    for out in &outputs {
        assert!(out.ends_with(" 3.0 3\n"), "{out}");
    }
    // Each run draws its own random numbers, as a fresh process would.
    let mut draws: Vec<&str> = outputs
        .iter()
        .map(|o| o.split(' ').next().unwrap())
        .collect();
    draws.sort();
    draws.dedup();
    assert_eq!(draws.len(), outputs.len(), "{outputs:?}");

    // Matplotlib comes preloaded, headless, and keeps its files under the sandbox's home.
    let code = "import sys\npreloaded = 'matplotlib.pyplot' in sys.modules\n\
        import matplotlib, matplotlib.pyplot as plt, os\nplt.plot([1, 2])\nplt.savefig('a.png')\n\
        print(preloaded, matplotlib.get_backend(), matplotlib.get_cachedir(), os.path.getsize('a.png') > 1000)";
    let deadline = Instant::now() + cella_e2e::scaled(60.0);
    loop {
        let r = run(
            s,
            json!({"language": "python", "code": code, "run_timeout": run_timeout}),
        );
        let out = r["run"]["stdout"].as_str().unwrap_or_default().to_string();
        if out.starts_with("True ") {
            assert_eq!(out, "True agg /home/user/.cache/matplotlib True\n", "{r}");
            break;
        }
        assert!(out.ends_with(" True\n"), "{r}");
        assert!(
            Instant::now() < deadline,
            "no run came from a zygote with matplotlib: {r}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The zygotes: the server's own children running `python3 -` (their source on stdin).
/// (A run forked from a zygote shares its command line but is the zygote's child, and ends.)
fn zygotes(s: &Server) -> Vec<u32> {
    cella_e2e::descendants(s.pid())
        .into_iter()
        .filter(|pid| cella_e2e::parent_of(*pid) == Some(s.pid()))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                args.first().is_some_and(|a| a.ends_with(b"python3"))
                    && args.get(1) == Some(&&b"-"[..])
            })
        })
        .collect()
}

#[test]
fn the_zygote_outlives_idle_runtime_threads() {
    let s = server();
    run(s, json!({"language": "python", "code": "print(1)"}));
    let before = zygotes(s);
    assert!(!before.is_empty());
    // Tokio retires idle blocking threads after ten seconds; the zygote must not go with them.
    std::thread::sleep(Duration::from_secs(16));
    run(s, json!({"language": "python", "code": "print(2)"}));
    assert!(
        before.iter().all(|pid| zygotes(s).contains(pid)),
        "{before:?} → {:?}",
        zygotes(s)
    );
}

#[test]
fn zygote_runs_see_the_main_module_a_fresh_interpreter_gives() {
    let s = server();
    let code = r#"
import dataclasses, inspect, pickle, sys
from __future__ import annotations
"#;
    // A misplaced `from __future__` is a SyntaxError, reported as Python reports it.
    let r = run(s, json!({"language": "python", "code": code}));
    let err = r["run"]["stderr"].as_str().unwrap();
    assert!(
        err.starts_with("  File \"/home/user/main.py\", line 3")
            && err.ends_with(
                "SyntaxError: from __future__ imports must occur at the beginning of the file\n"
            ),
        "{err}"
    );
    let code = r#"
from __future__ import annotations
import dataclasses, inspect, pickle, sys

@dataclasses.dataclass
class Point:
    x: int

def f():
    return 1

main = sys.modules["__main__"]
print(__name__, __file__, main.__dict__ is globals(), __spec__, sys.argv, sys.path[0])
print(pickle.loads(pickle.dumps(Point(3))), inspect.getsource(f).splitlines()[0])
"#;
    let r = run(s, json!({"language": "python", "code": code}));
    assert_eq!(
        r["run"]["stdout"],
        "__main__ /home/user/main.py True None ['main.py'] /home/user\n\
         Point(x=3) def f():\n",
        "{r}"
    );
    // The zygote ignores the signals meant for the server's process group; a program has
    // them as a fresh interpreter does, and what it starts, as any exec'd program does (none
    // of SIGHUP, SIGINT, SIGQUIT or SIGTERM ignored).
    let code = r#"
import signal, subprocess
print(signal.getsignal(signal.SIGINT) is signal.default_int_handler,
      all(signal.getsignal(s) == signal.SIG_DFL for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)))
status = subprocess.run(["cat", "/proc/self/status"], capture_output=True, text=True).stdout
ignored = int(next(l for l in status.splitlines() if l.startswith("SigIgn:")).split()[1], 16)
print(hex(ignored & 0x4007))
"#;
    let r = run(s, json!({"language": "python", "code": code}));
    assert_eq!(r["run"]["stdout"], "True True\n0x0\n", "{r}");
}

/// How many times `pool` had an item ready when a run asked, from `/metrics`.
fn pool_hits(s: &Server, pool: &str) -> f64 {
    s.metric(&format!(
        "cella_pool_takes_total{{pool=\"{pool}\",hit=\"true\"}}"
    ))
}

/// Plain Python runs take an interpreter parked ahead of time in a pooled sandbox; from the
/// program's side nothing differs from a fresh start: stdin, argv, exit code, the timeout
/// that kills its tree, its memory limit.
#[test]
fn python_runs_take_a_parked_interpreter() {
    let s = Server::start();
    for i in 0..5 {
        let code = format!("import sys\nprint({i}, sys.stdin.read(), sys.argv)\nsys.exit(3)");
        let r = run(
            &s,
            json!({"language": "python", "code": code, "stdin": "in"}),
        );
        assert_eq!(r["run"]["exit_code"], 3, "{r}");
        assert_eq!(r["run"]["stdout"], format!("{i} in ['main.py']\n"), "{r}");
        // The CPU time is the program's: not the interpreter's set-up before it was let go.
        let cpu = r["run"]["cpu_time"].as_f64().unwrap();
        let wall = r["run"]["wall_time"].as_f64().unwrap();
        assert!(cpu > 0.0 && cpu <= wall, "{r}");
        // Time for the pool to make the next one.
        std::thread::sleep(Duration::from_millis(500));
    }
    let hits = pool_hits(&s, "pythons");
    assert!(hits >= 3.0, "{hits} runs took a parked interpreter");

    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let code =
        "import subprocess, time\nsubprocess.Popen(['sleep', '60'])\nwhile True: time.sleep(1)";
    let r = run(
        &s,
        json!({"language": "python", "code": code, "run_timeout": 1}),
    );
    assert_eq!(r["run"]["status"], "time_limit_exceeded", "{r}");
    assert!(started.elapsed() < cella_e2e::scaled(5.0));

    std::thread::sleep(Duration::from_millis(500));
    let code = "x = bytearray(512 << 20)\nprint('allocated')";
    let r = run(
        &s,
        json!({"language": "python", "code": code, "memory_mb": 128}),
    );
    assert_eq!(r["run"]["oom_killed"], true, "{r}");
    assert!(pool_hits(&s, "pythons") >= hits + 2.0);
}

#[test]
fn the_server_gives_back_the_memory_of_big_outputs() {
    let s = Server::start();
    let flood = json!({"language": "python", "run_timeout": cella_e2e::scaled(2.0).as_secs_f64(),
                       "code": "import sys\nwhile True: sys.stdout.write('x' * 65536)"});
    std::thread::scope(|scope| {
        for _ in 0..16 {
            scope.spawn(|| {
                for _ in 0..6 {
                    let r = run(&s, flood.clone());
                    assert_eq!(r["run"]["stdout_truncated"], true, "{r}");
                }
            });
        }
    });
    // 96 outputs cut at 4 MiB went through the server, 16 at a time.
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap();
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert!(rss_kib < 100 << 10, "the server holds {rss_kib} KiB");
}
