//! The SandboxFusion suite: `/run_code` and `/run_jupyter`, and the anchor workloads.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::Client;
use serde_json::{Value, json};

use crate::{measure, measure_paced, post, record_failure};

/// `body` with a comment of its own added to its code, for a compiled language: the server
/// keeps compiles for runs of the same code, and these figures are of compiling.
fn compiled_afresh(body: &Value) -> Value {
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let mut body = body.clone();
    if matches!(body["language"].as_str(), Some("cpp" | "java")) {
        let n = RUNS.fetch_add(1, Ordering::Relaxed);
        let code = format!("{}\n// run {n}", body["code"].as_str().unwrap_or_default());
        body["code"] = code.into();
    }
    body
}

pub async fn fusion_suite(http: Client, base: String, scale: f64) {
    let n = |k: f64| ((k * scale) as usize).max(4);
    println!("== SandboxFusion /run_code and /run_jupyter ==");
    let url = format!("{base}/run_code");
    let cases = [
        (
            "run_code python print(1)",
            json!({"language": "python", "code": "print(1)"}),
            "1\n",
        ),
        (
            "run_code python import requests",
            json!({"language": "python", "code": "import requests\nprint(1)"}),
            "1\n",
        ),
        (
            "run_code cpp hello",
            json!({"language": "cpp", "code": "#include <cstdio>\nint main(){puts(\"hello\");}"}),
            "hello\n",
        ),
    ];
    for (name, body, expect) in cases {
        let levels: &[usize] = if name.contains("requests") {
            &[1, 16]
        } else {
            &[1, 4, 16, 64]
        };
        for &c in levels {
            let (h, url, body) = (http.clone(), url.clone(), body.clone());
            let count = if name.contains("cpp") {
                n(40.0 + 4.0 * c as f64)
            } else {
                n(150.0 + 10.0 * c as f64)
            };
            measure(name, c, count, move || {
                let (h, url, body) = (h.clone(), url.clone(), compiled_afresh(&body));
                async move {
                    let r = post(&h, &url, &body).await?;
                    if r["status"] != "Success" || r["run_result"]["stdout"] != expect {
                        return Err(format!("unexpected result {r}"));
                    }
                    Ok(())
                }
            })
            .await;
        }
    }
    // An evaluation's runs of one program against its tests: the first compiles, the others
    // take the kept compile.
    let tested = "#include <cstdio>\nint main(){int x; scanf(\"%d\", &x); printf(\"%d\\n\", x);}";
    for c in [1, 16] {
        let (h, url) = (http.clone(), url.clone());
        let tests = Arc::new(AtomicU64::new(0));
        measure(
            "run_code cpp, one program's tests",
            c,
            n(100.0 + 10.0 * c as f64),
            move || {
                let (h, url) = (h.clone(), url.clone());
                let test = tests.fetch_add(1, Ordering::Relaxed);
                async move {
                    let body =
                        json!({"language": "cpp", "code": tested, "stdin": test.to_string()});
                    let r = post(&h, &url, &body).await?;
                    if r["run_result"]["stdout"] != format!("{test}\n") {
                        return Err(format!("unexpected result {r}"));
                    }
                    Ok(())
                }
            },
        )
        .await;
    }
    // The other workloads SandboxFusion was measured on (docs/compat/fusion.md).
    let singles = [
        (
            "run_code python import numpy",
            json!({"language": "python", "code": "import numpy"}),
        ),
        (
            "run_code python matplotlib savefig",
            json!({"language": "python", "code": "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.savefig('a.png')"}),
        ),
        (
            "run_code cpp <bits/stdc++.h>",
            json!({"language": "cpp", "code": "#include <bits/stdc++.h>\nint main(){std::vector<int> v{2,1};std::sort(v.begin(),v.end());std::cout<<v[0]<<std::endl;}"}),
        ),
        (
            "run_code cpp <iostream> hello",
            json!({"language": "cpp", "code": "#include <iostream>\nint main(){std::cout<<\"hello\"<<std::endl;}"}),
        ),
        (
            "run_code java hello",
            json!({"language": "java", "code": "public class Main { public static void main(String[] a) { System.out.println(\"hello\"); } }"}),
        ),
        (
            "run_code go_test hello",
            json!({"language": "go_test", "code": "package main\nimport (\"fmt\"; \"testing\")\nfunc TestHello(t *testing.T) { fmt.Println(\"hello\") }"}),
        ),
        (
            "run_code python printing 1 MB",
            json!({"language": "python", "code": "import sys; sys.stdout.write('x' * (1 << 20))"}),
        ),
    ];
    for (name, body) in singles {
        let (h, url) = (http.clone(), url.clone());
        measure(name, 1, n(40.0), move || {
            let (h, url, body) = (h.clone(), url.clone(), compiled_afresh(&body));
            async move {
                let r = post(&h, &url, &body).await?;
                if r["status"] != "Success" {
                    return Err(format!("unexpected result {}", r["status"]));
                }
                Ok(())
            }
        })
        .await;
    }
    {
        let flood: Vec<_> = (0..8)
            .map(|_| {
                let (h, url) = (http.clone(), url.clone());
                tokio::spawn(async move {
                    let body =
                        json!({"language": "python", "code": "while True: pass", "run_timeout": 5});
                    post(&h, &url, &body).await
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (h, u) = (http.clone(), url.clone());
        measure("print(1) beside 8 infinite loops", 1, n(40.0), move || {
            let (h, url) = (h.clone(), u.clone());
            async move {
                let r = post(&h, &url, &json!({"language": "python", "code": "print(1)"})).await?;
                if r["status"] != "Success" || r["run_result"]["stdout"] != "1\n" {
                    return Err(format!("unexpected result {r}"));
                }
                Ok(())
            }
        })
        .await;
        // The loops themselves end at their time limit, not some other way.
        for f in flood {
            let r = f.await.expect("flood task");
            let status = r.as_ref().map(|r| r["run_result"]["status"].clone());
            if status.as_ref().ok().and_then(|s| s.as_str()) != Some("TimeLimitExceeded") {
                eprintln!("  an infinite loop ended otherwise: {r:?}");
                record_failure("8 infinite loops".into());
            }
        }
    }
    let (h, ping) = (http.clone(), format!("{base}/v1/ping"));
    measure("GET /v1/ping", 8, n(4000.0), move || {
        let (h, ping) = (h.clone(), ping.clone());
        async move {
            let r = h.get(&ping).send().await.map_err(|e| e.to_string())?;
            if r.status().is_success() {
                Ok(())
            } else {
                Err(r.status().to_string())
            }
        }
    })
    .await;
    // Back to back, notebooks outrun the kernel pool and mostly start kernels; one every two
    // seconds finds a warm kernel each time.
    let plain = ["x = 1", "print(x + 1)"];
    let scientific = [
        "import numpy as np, pandas as pd",
        "print(pd.DataFrame({'a': np.arange(3)}).a.sum() - 1)",
    ];
    let plot = [
        "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()",
        "print(2)",
    ];
    for (name, pause, cells) in [
        ("run_jupyter 2 cells, back to back", 0, plain),
        ("run_jupyter 2 cells, 2 s apart", 2000, plain),
        ("run_jupyter numpy+pandas, 2 s apart", 2000, scientific),
        ("run_jupyter a matplotlib PNG, 2 s apart", 2000, plot),
    ] {
        let (h, url) = (http.clone(), format!("{base}/run_jupyter"));
        let count = n(if pause > 0 { 10.0 } else { 20.0 });
        measure_paced(name, 1, count, Duration::from_millis(pause), move || {
            let (h, url) = (h.clone(), url.clone());
            async move {
                let r = post(&h, &url, &json!({ "cells": cells })).await?;
                if r["status"] != "Success" || r["cells"][1]["stdout"] != "2\n" {
                    return Err(format!("unexpected result {r}"));
                }
                Ok(())
            }
        })
        .await;
    }
}
