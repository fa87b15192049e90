//! `cella-bench`: drives a running cella server and reports p50/p99 latency and throughput.
//!
//! Each scenario runs a fixed number of operations at a given concurrency (that many workers
//! issuing back-to-back requests). Latency is what the client observes, end to end.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use reqwest::Client;
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    /// Base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Which suites to run: engine, fusion (comma-separated).
    #[arg(long, default_value = "engine,fusion")]
    suites: String,
    /// Scale the number of operations per scenario.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Figures of an earlier run, printed beside the new ones.
    #[arg(long, default_value = "bench/baseline.json")]
    baseline: std::path::PathBuf,
    /// Record this run's figures as the new baseline.
    #[arg(long)]
    save_baseline: bool,
}

/// One scenario's figures, as kept in the baseline file.
#[derive(serde::Serialize, serde::Deserialize, Clone)]
struct Figures {
    name: String,
    concurrency: usize,
    p50_ms: f64,
    p99_ms: f64,
    per_second: f64,
}

static BASELINE: std::sync::OnceLock<Vec<Figures>> = std::sync::OnceLock::new();
static RESULTS: std::sync::Mutex<Vec<Figures>> = std::sync::Mutex::new(Vec::new());

struct Stats {
    name: String,
    concurrency: usize,
    latencies: Vec<Duration>,
    errors: usize,
    elapsed: Duration,
}

impl Stats {
    fn pct(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i].as_secs_f64() * 1000.0
    }

    fn print(&self) {
        let figures = Figures {
            name: self.name.clone(),
            concurrency: self.concurrency,
            p50_ms: self.pct(0.50),
            p99_ms: self.pct(0.99),
            per_second: self.latencies.len() as f64 / self.elapsed.as_secs_f64(),
        };
        let before = BASELINE
            .get()
            .and_then(|b| {
                b.iter()
                    .find(|f| f.name == figures.name && f.concurrency == figures.concurrency)
            })
            .map(|f| {
                format!(
                    "  (was p50={:.2}ms p99={:.2}ms {:.1}/s)",
                    f.p50_ms, f.p99_ms, f.per_second
                )
            })
            .unwrap_or_default();
        println!(
            "{:<40} c={:<3} n={:<5} p50={:>8.2}ms p99={:>8.2}ms {:>8.1}/s errors={}{before}",
            self.name,
            self.concurrency,
            self.latencies.len(),
            figures.p50_ms,
            figures.p99_ms,
            figures.per_second,
            self.errors
        );
        RESULTS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(figures);
    }
}

/// Runs `op` `total` times with `concurrency` workers.
async fn measure<F, Fut>(name: &str, concurrency: usize, total: usize, op: F) -> Stats
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    measure_paced(name, concurrency, total, Duration::ZERO, op).await
}

/// Like [`measure`], each worker waiting `pause` (not measured) before each operation.
async fn measure_paced<F, Fut>(
    name: &str,
    concurrency: usize,
    total: usize,
    pause: Duration,
    op: F,
) -> Stats
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers = (0..concurrency).map(|_| {
        let (op, next) = (op.clone(), next.clone());
        tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0;
            let mut first_error = None;
            while next.fetch_add(1, Ordering::Relaxed) < total {
                tokio::time::sleep(pause).await;
                let t = Instant::now();
                match op().await {
                    Ok(()) => lat.push(t.elapsed()),
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
            (lat, errors, first_error)
        })
    });
    let mut stats = Stats {
        name: name.into(),
        concurrency,
        latencies: Vec::new(),
        errors: 0,
        elapsed: Duration::ZERO,
    };
    for w in futures::future::join_all(workers).await {
        let (lat, errors, first_error) = w.expect("worker panicked");
        stats.latencies.extend(lat);
        stats.errors += errors;
        if let Some(e) = first_error {
            eprintln!("  {name}: error: {e}");
        }
    }
    stats.elapsed = started.elapsed();
    stats.latencies.sort();
    stats.print();
    stats
}

async fn post(http: &Client, url: &str, body: &Value) -> Result<Value, String> {
    let resp = http
        .post(url)
        .json(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{status}: {text}"));
    }
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

async fn delete(http: &Client, url: &str) -> Result<(), String> {
    let resp = http.delete(url).send().await.map_err(|e| e.to_string())?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(resp.status().to_string())
    }
}

async fn engine_suite(http: Client, base: String, scale: f64) {
    let n = |k: f64| ((k * scale) as usize).max(4);
    let api = format!("{base}/api/v1");
    println!("== engine: sandboxes and execs ==");

    // create→ready, deleting outside the measured operation.
    {
        let (h, a) = (http.clone(), api.clone());
        let ids = Arc::new(std::sync::Mutex::new(Vec::new()));
        let idsc = ids.clone();
        measure("sandbox create→ready", 1, n(200.0), move || {
            let (h, a, ids) = (h.clone(), a.clone(), idsc.clone());
            async move {
                let s = post(&h, &format!("{a}/sandboxes"), &json!({})).await?;
                ids.lock()
                    .unwrap()
                    .push(s["id"].as_str().unwrap_or_default().to_string());
                Ok(())
            }
        })
        .await;
        let ids = std::mem::take(&mut *ids.lock().unwrap());
        for id in ids {
            let _ = delete(&http, &format!("{api}/sandboxes/{id}")).await;
        }
    }

    // exec /bin/true in a live sandbox.
    let sbx = post(&http, &format!("{api}/sandboxes"), &json!({}))
        .await
        .expect("create sandbox");
    let id = sbx["id"].as_str().unwrap_or_default().to_string();
    for c in [1, 8] {
        let (h, url) = (http.clone(), format!("{api}/sandboxes/{id}/exec"));
        measure("exec /bin/true (live sandbox)", c, n(500.0), move || {
            let (h, url) = (h.clone(), url.clone());
            async move {
                let r = post(&h, &url, &json!({"command": ["/bin/true"]})).await?;
                if r["exit_code"] != 0 {
                    return Err(format!("unexpected result {r}"));
                }
                Ok(())
            }
        })
        .await;
    }
    let _ = delete(&http, &format!("{api}/sandboxes/{id}")).await;

    // The full lifecycle.
    for c in [1, 8, 32] {
        let (h, a) = (http.clone(), api.clone());
        measure(
            "create+exec+delete",
            c,
            n(100.0 + 10.0 * c as f64),
            move || {
                let (h, a) = (h.clone(), a.clone());
                async move {
                    let s = post(&h, &format!("{a}/sandboxes"), &json!({})).await?;
                    let id = s["id"].as_str().unwrap_or_default();
                    let r = post(
                        &h,
                        &format!("{a}/sandboxes/{id}/exec"),
                        &json!({"command": ["/bin/true"]}),
                    )
                    .await;
                    delete(&h, &format!("{a}/sandboxes/{id}")).await?;
                    r.map(drop)
                }
            },
        )
        .await;
    }
}

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

async fn fusion_suite(http: Client, base: String, scale: f64) {
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
            "run_code cpp hello",
            json!({"language": "cpp", "code": "#include <cstdio>\nint main(){puts(\"hello\");}"}),
            "hello\n",
        ),
    ];
    for (name, body, expect) in cases {
        for c in [1, 4, 16, 64] {
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
    // The other anchor workloads (shared/specs/anchor_figures.md).
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
                post(&h, &url, &json!({"language": "python", "code": "print(1)"}))
                    .await
                    .map(drop)
            }
        })
        .await;
        for f in flood {
            let _ = f.await;
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

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let http = Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(120))
        .build()
        .expect("http client");
    let base = args.server.trim_end_matches('/').to_string();
    let baseline = std::fs::read(&args.baseline)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let _ = BASELINE.set(baseline);
    for suite in args.suites.split(',') {
        match suite.trim() {
            "engine" => engine_suite(http.clone(), base.clone(), args.scale).await,
            "fusion" => fusion_suite(http.clone(), base.clone(), args.scale).await,
            other => eprintln!("unknown suite {other:?}"),
        }
    }
    if args.save_baseline {
        let results = RESULTS.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let json = serde_json::to_vec_pretty(&results).expect("figures serialize");
        std::fs::write(&args.baseline, json).expect("write the baseline");
        println!("baseline saved to {}", args.baseline.display());
    }
}
