//! Sessions: interactive bash on a pseudo-terminal in a sandbox, through the native API.

use std::time::{Duration, Instant};

use cella_e2e::{Server, assert_refused, json_of};
use serde_json::{Value, json};

fn session(s: &Server, id: &str, body: Value) -> String {
    let r = s.post(&format!("/sandboxes/{id}/sessions"), body);
    assert_eq!(r.status(), 201, "{}", json_of(r));
    json_of(r)["name"].as_str().unwrap().to_string()
}

fn run(s: &Server, id: &str, name: &str, command: &str, timeout: f64) -> Value {
    let r = s.post(
        &format!("/sandboxes/{id}/sessions/{name}/run"),
        json!({ "command": command, "timeout": timeout }),
    );
    assert_eq!(r.status(), 200, "{command}: {}", json_of(r));
    json_of(r)
}

#[test]
fn state_stays_between_commands() {
    let s = Server::start();
    let id = s.sandbox(json!({}));
    let name = session(
        &s,
        &id,
        json!({ "name": "main", "env": { "GREETING": "hello" } }),
    );
    assert_eq!(name, "main");
    assert_eq!(
        run(
            &s,
            &id,
            "main",
            "cd /tmp && X=42 && f() { echo \"f:$1\"; }",
            5.0
        )["exit_code"],
        0
    );
    let r = run(
        &s,
        &id,
        "main",
        "pwd; echo $X; f 7; echo $GREETING; whoami",
        5.0,
    );
    assert_eq!(r["output"], "/tmp\n42\nf:7\nhello\nuser\n", "{r}");
    // Stdout and stderr as a terminal shows them, colours removed; exit codes.
    let r = run(
        &s,
        &id,
        "main",
        "echo out; echo err >&2; printf '\\033[31mred\\033[0m\\n'; ls --color=always -d /tmp; (exit 3)",
        5.0,
    );
    assert_eq!(r["output"], "out\nerr\nred\n/tmp\n", "{r}");
    assert_eq!(r["exit_code"], 3);
    // Several lines and a heredoc are one command.
    let r = run(&s, &id, "main", "cat <<EOF\na\nb\nEOF\necho c", 5.0);
    assert_eq!(r["output"], "a\nb\nc\n", "{r}");
    // It runs on a terminal, the sandbox's own.
    let r = run(&s, &id, "main", "test -t 0 && tty", 5.0);
    assert!(
        r["output"].as_str().unwrap().starts_with("/dev/pts/"),
        "{r}"
    );
    // A syntax error is refused before it reaches the shell.
    let r = s.post(
        &format!("/sandboxes/{id}/sessions/main/run"),
        json!({ "command": "echo \"unterminated" }),
    );
    assert_refused(r, 400, "syntax error");
    assert_eq!(run(&s, &id, "main", "echo $X", 5.0)["output"], "42\n");
    // A program that asks for input: its prompt ends the wait, and input goes to it.
    let ask = |command: &str, interactive: bool| {
        let r = s.post(
            &format!("/sandboxes/{id}/sessions/main/run"),
            json!({ "command": command, "expect": [">>> "], "interactive": interactive, "timeout": 10 }),
        );
        json_of(r)
    };
    let r = ask("python3 -q", false);
    assert_eq!(r["matched"], ">>> ", "{r}");
    let r = ask("print(6 * 7)", true);
    assert!(r["output"].as_str().unwrap().contains("42"), "{r}");
    let r = ask("exit()", true);
    assert_eq!(
        (r["matched"].clone(), r["exit_code"].clone()),
        (Value::Null, json!(0)),
        "{r}"
    );
    assert_eq!(run(&s, &id, "main", "echo back", 5.0)["output"], "back\n");
    // Listed, refused twice, closed.
    let listed = json_of(s.get(&format!("/sandboxes/{id}/sessions")));
    assert_eq!(listed[0]["name"], "main");
    assert_refused(
        s.post(
            &format!("/sandboxes/{id}/sessions"),
            json!({ "name": "main" }),
        ),
        409,
        "already exists",
    );
    let cwd = session(&s, &id, json!({ "cwd": "/mnt" }));
    assert_eq!(run(&s, &id, &cwd, "pwd", 5.0)["output"], "/mnt\n");
    assert_eq!(
        s.delete(&format!("/sandboxes/{id}/sessions/main")).status(),
        204
    );
    assert_refused(
        s.post(
            &format!("/sandboxes/{id}/sessions/main/run"),
            json!({ "command": "true" }),
        ),
        404,
        "not found",
    );
}

#[test]
fn timeouts_interrupt_and_the_next_command_runs_at_once() {
    let s = Server::start();
    let id = s.sandbox(json!({}));
    let name = session(&s, &id, json!({}));
    run(&s, &id, &name, "X=kept", 5.0);
    let started = Instant::now();
    let r = run(&s, &id, &name, "echo begun; sleep 30", 1.0);
    assert_eq!(r["timed_out"], true, "{r}");
    assert_eq!(r["exit_code"], 130, "interrupted by Ctrl-C: {r}");
    assert_eq!(r["output"].as_str().unwrap().trim_end(), "begun", "{r}");
    assert_eq!(r["restarted"], false);
    let r = run(&s, &id, &name, "echo $X", 5.0);
    assert_eq!(r["output"], "kept\n", "{r}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // A command that ignores Ctrl-C: the shell is started afresh, and says so.
    let r = run(&s, &id, &name, "trap '' INT; sleep 60", 1.0);
    assert_eq!(
        (r["timed_out"].clone(), r["restarted"].clone()),
        (json!(true), json!(true)),
        "{r}"
    );
    assert_eq!(r["exit_code"], Value::Null);
    assert_eq!(run(&s, &id, &name, "echo \"[$X]\"", 5.0)["output"], "[]\n");
    // Calls on one session run one at a time, in order.
    std::thread::scope(|t| {
        let first = t.spawn(|| run(&s, &id, &name, "sleep 0.5; echo first", 5.0));
        std::thread::sleep(Duration::from_millis(100));
        let second = t.spawn(|| run(&s, &id, &name, "echo second", 5.0));
        assert_eq!(first.join().unwrap()["output"], "first\n");
        assert_eq!(second.join().unwrap()["output"], "second\n");
    });
}

#[test]
fn floods_and_dead_shells() {
    let s = Server::start_with(&[("CELLA_SANDBOX__OUTPUT_CAP_BYTES", "65536")]);
    let id = s.sandbox(json!({}));
    let name = session(&s, &id, json!({}));
    let r = run(&s, &id, &name, "yes | head -c 20000000; echo done", 30.0);
    assert_eq!(r["truncated"], true, "{}", r["exit_code"]);
    assert_eq!(r["exit_code"], 0);
    assert!(r["output"].as_str().unwrap().len() <= 65536);
    assert!(r["output"].as_str().unwrap().starts_with("y\ny\n"));
    assert_eq!(run(&s, &id, &name, "echo fine", 5.0)["output"], "fine\n");
    // `exit` and `kill -9 $$` end the session, with the shell's status; it can be made again.
    let r = run(&s, &id, &name, "exit 7", 5.0);
    assert_eq!(
        (r["ended"].clone(), r["exit_code"].clone()),
        (json!(true), json!(7)),
        "{r}"
    );
    assert_eq!(
        s.get(&format!("/sandboxes/{id}/sessions")).text().unwrap(),
        "[]"
    );
    let again = session(&s, &id, json!({ "name": name }));
    let r = run(&s, &id, &again, "kill -9 $$", 5.0);
    assert_eq!(
        (r["ended"].clone(), r["exit_code"].clone()),
        (json!(true), json!(137)),
        "{r}"
    );
    // Stopping the sandbox ends its sessions' shells and what they started.
    let name = session(&s, &id, json!({}));
    run(&s, &id, &name, "sleep 1000 &", 5.0);
    s.delete(&format!("/sandboxes/{id}"));
    assert_refused(
        s.post(
            &format!("/sandboxes/{id}/sessions/{name}/run"),
            json!({ "command": "true" }),
        ),
        404,
        "not found",
    );
}

/// Runs tmux on a server of the test's own.
fn tmux(socket: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("tmux")
        .args(["-L", socket])
        .args(args)
        .output()
        .expect("tmux (scripts/setup.sh installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn screen_shows(socket: &str, text: &str) -> bool {
    cella_e2e::eventually(10.0, || {
        tmux(socket, &["capture-pane", "-t", "t", "-p"]).contains(text)
    })
}

#[test]
fn cella_shell_is_a_real_terminal() {
    let s = Server::start();
    let socket = format!("cella-shell-{}", std::process::id());
    let command = format!(
        "CELLA_SERVER={} {} shell; echo EXITED $?; sleep 60",
        s.url,
        cella_e2e::cella_bin().display()
    );
    tmux(
        &socket,
        &[
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            "120",
            "-y",
            "40",
            &command,
        ],
    );
    assert!(
        screen_shows(&socket, "user@sandbox-"),
        "{}",
        tmux(&socket, &["capture-pane", "-t", "t", "-p"])
    );
    tmux(
        &socket,
        &[
            "send-keys",
            "-t",
            "t",
            "echo $((6*7)) $(whoami); stty size",
            "Enter",
        ],
    );
    assert!(screen_shows(&socket, "42 user"));
    assert!(screen_shows(&socket, "40 120"));
    // The window's size follows it; a Ctrl-C reaches the sandbox's program, not the CLI.
    tmux(
        &socket,
        &["resize-window", "-t", "t", "-x", "100", "-y", "30"],
    );
    tmux(&socket, &["send-keys", "-t", "t", "sleep 100", "Enter"]);
    std::thread::sleep(Duration::from_millis(300));
    tmux(&socket, &["send-keys", "-t", "t", "C-c", ""]);
    tmux(&socket, &["send-keys", "-t", "t", "stty size", "Enter"]);
    assert!(
        screen_shows(&socket, "30 100"),
        "{}",
        tmux(&socket, &["capture-pane", "-t", "t", "-p"])
    );
    tmux(&socket, &["send-keys", "-t", "t", "exit 7", "Enter"]);
    assert!(
        screen_shows(&socket, "EXITED 7"),
        "{}",
        tmux(&socket, &["capture-pane", "-t", "t", "-p"])
    );
    tmux(&socket, &["kill-server"]);
    // The sandbox it made for itself is gone.
    assert!(cella_e2e::eventually(5.0, || s
        .get("/sandboxes")
        .text()
        .unwrap()
        == "[]"));
}
