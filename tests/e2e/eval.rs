//! Evaluation datasets from a directory (indexed at start, paged, looked up by id) and
//! `cella eval` over them: results beside the input, resumed after an interruption, refused
//! when they belong to other completions; a malformed dataset stops the server at start.

use std::path::{Path, PathBuf};
use std::process::Command;

use cella_e2e::{Server, cella_bin, json_of};
use serde_json::{Value, json};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cella-eval-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn jsonl(path: &Path, rows: &[Value]) {
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(path, text).unwrap();
}

/// A standard-input problem: print the sum of the numbers on stdin.
fn sum_row(id: u64) -> Value {
    let cases: Vec<Value> = (0..3)
        .map(|i| json!({"input": {"stdin": format!("{id} {i}\n")}, "output": {"stdout": format!("{}\n", id + i)}}))
        .collect();
    json!({"id": id, "content": format!("Problem {id}: add."), "labels": {}, "test": cases.to_vec()})
}

fn dataset_server(dir: &Path) -> Server {
    Server::start_with(&[("CELLA_DATASETS__DIR", dir.to_str().unwrap())])
}

#[test]
fn datasets_from_a_directory_are_paged_and_found_by_id() {
    let dir = scratch("dir");
    // SandboxFusion's own file naming (code_eval_<id>) and a blank line are both fine.
    let rows: Vec<Value> = (1..=5).map(sum_row).collect();
    let mut text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    text.push('\n');
    std::fs::write(dir.join("code_eval_sums.jsonl"), text).unwrap();
    std::fs::write(dir.join("notes.txt"), "not a dataset").unwrap();
    let server = dataset_server(&dir);

    let ids = json_of(server.get_root("/list_datasets"));
    let ids: Vec<&str> = ids
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(ids.last(), Some(&"sums"));
    assert!(ids.contains(&"humaneval_python") && ids.contains(&"code_contests"));

    let config = json!({"dataset_type": "CommonOJDataset", "language": "python"});
    let page = json_of(server.post_root(
        "/get_prompts",
        json!({"dataset": "sums", "config": config, "offset": 1, "limit": 2}),
    ));
    let page_ids: Vec<u64> = page
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect();
    assert_eq!(page_ids, [2, 3]);
    assert!(
        page[0]["prompt"]
            .as_str()
            .unwrap()
            .starts_with("Problem 2: add.")
    );
    let ids = json_of(server.post_root("/list_ids", json!({"dataset": "sums", "config": config})));
    assert_eq!(ids, json!([1, 2, 3, 4, 5]));
    for id in [json!(4), json!("4")] {
        let one = json_of(server.post_root(
            "/get_prompt_by_id",
            json!({"dataset": "sums", "id": id, "config": config}),
        ));
        assert_eq!(one["id"], 4);
    }
    let missing = server.post_root(
        "/get_prompt_by_id",
        json!({"dataset": "sums", "id": 9, "config": config}),
    );
    assert_eq!(missing.status(), 404);
    // Without a class for an id the server does not register, SandboxFusion's 400.
    let r = server.post_root("/get_prompts", json!({"dataset": "sums", "config": {}}));
    assert_eq!(r.status(), 400);

    let good = "```python\nprint(sum(map(int, input().split())))\n```";
    let verdict = json_of(server.post_root(
        "/submit",
        json!({"dataset": "sums", "id": 3, "completion": good, "config": config}),
    ));
    assert_eq!(verdict["accepted"], true, "{verdict}");
    assert_eq!(verdict["tests"].as_array().unwrap().len(), 3);
    assert_eq!(verdict["id"], 3);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_malformed_dataset_stops_the_start_with_its_line() {
    let dir = scratch("bad");
    std::fs::write(dir.join("broken.jsonl"), "{\"id\": 1}\n{not json\n").unwrap();
    let out = Command::new(cella_bin())
        .args(["serve", "--listen", "127.0.0.1:1", "--data-dir"])
        .arg(dir.join("data"))
        .env("CELLA_DATASETS__DIR", &dir)
        .env(
            "CELLA_CGROUP_PARENT",
            format!("cella-eval-bad-{}", std::process::id()),
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("broken.jsonl") && stderr.contains("line 2"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn eval(server: &Server, completions: &Path, extra: &[&str]) -> std::process::Output {
    let config = r#"{"dataset_type": "CommonOJDataset", "language": "python"}"#;
    Command::new(cella_bin())
        .args([
            "eval",
            "--server",
            &server.url,
            "--dataset",
            "sums",
            "--config",
            config,
            "--k",
            "1,2",
        ])
        .args(extra)
        .arg(completions)
        .output()
        .unwrap()
}

fn results(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn cella_eval_grades_resumes_and_summarises() {
    let dir = scratch("cli");
    jsonl(
        &dir.join("sums.jsonl"),
        &(1..=4).map(sum_row).collect::<Vec<_>>(),
    );
    let server = dataset_server(&dir);
    let work = scratch("cli-work");
    let good = "```python\nprint(sum(map(int, input().split())))\n```";
    let bad = "```python\nprint(0)\n```";
    // Two samples per problem: problems 1 and 2 right twice, 3 once, 4 never; one sample names
    // a problem the dataset does not have.
    let mut samples = Vec::new();
    for (id, answers) in [
        (1, [good, good]),
        (2, [good, good]),
        (3, [good, bad]),
        (4, [bad, bad]),
    ] {
        for a in answers {
            samples.push(json!({"task_id": id, "completion": a}));
        }
    }
    let completions = work.join("run.jsonl");
    jsonl(&completions, &samples);

    let out = eval(&server, &completions, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("sums: 4 problems, 8 samples (2 per problem)"),
        "{stdout}"
    );
    assert!(stdout.contains("pass@1      62.50%"), "{stdout}");
    assert!(stdout.contains("pass@2      75.00%"), "{stdout}");
    let written = work.join("run.results.jsonl");
    let first = results(&written);
    assert_eq!(first.len(), 8);
    assert_eq!(first.iter().filter(|r| r["accepted"] == true).count(), 5);

    // An interrupted run: the last results lost, one cut mid-line. The rerun grades only those.
    let text = std::fs::read_to_string(&written).unwrap();
    let kept: Vec<&str> = text.lines().take(5).collect();
    std::fs::write(
        &written,
        format!("{}\n{{\"sample\": 7, \"acc", kept.join("\n")),
    )
    .unwrap();
    let out = eval(&server, &completions, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("graded    3 in"),
        "{stdout}"
    );
    assert!(stdout.contains("pass@1      62.50%"), "{stdout}");
    let mut graded: Vec<u64> = results(&written)
        .iter()
        .map(|r| r["sample"].as_u64().unwrap())
        .collect();
    graded.sort();
    assert_eq!(graded, (0..8).collect::<Vec<_>>());

    // A problem the dataset lacks is a refused sample, with the server's reason.
    let other = work.join("other.jsonl");
    jsonl(
        &other,
        &[
            json!({"task_id": 99, "completion": good}),
            json!({"id": 1, "completion": good}),
        ],
    );
    let out = eval(&server, &other, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("refused   1"),
        "{stdout}"
    );
    let refused = results(&work.join("other.results.jsonl"));
    assert!(
        refused
            .iter()
            .any(|r| r["id"] == 99 && r["error"].as_str().unwrap().contains("not found"))
    );

    // Results of other completions are not mixed in.
    let out = eval(&server, &other, &["--output", written.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds results of other completions"));
    // Nor is a malformed completions file graded at all.
    std::fs::write(work.join("broken.jsonl"), "{\"task_id\": 1}\n").unwrap();
    let out = eval(&server, &work.join("broken.jsonl"), &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1: no completion string"));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&work);
}
