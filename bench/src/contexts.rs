//! The contexts suite: stateful kernels through the native API (create, `1+1`, a plot), in
//! each language, and the memory an idle one holds.

use std::sync::{Arc, Mutex};

use reqwest::Client;
use serde_json::{Value, json};

use crate::{delete, measure, post};

/// Contexts workers take one of, use, and give back: each worker has one to itself.
#[derive(Clone)]
struct Pool(Arc<Mutex<Vec<String>>>);

impl Pool {
    fn take(&self) -> String {
        self.0.lock().unwrap().pop().expect("a context per worker")
    }

    fn give(&self, url: String) {
        self.0.lock().unwrap().push(url);
    }
}

async fn sandbox(http: &Client, api: &str) -> String {
    let s = post(http, &format!("{api}/sandboxes"), &json!({}))
        .await
        .expect("create a sandbox");
    s["id"].as_str().unwrap_or_default().to_string()
}

/// A context of `language` in sandbox `id`: the URL of its `execute`.
async fn context(http: &Client, api: &str, id: &str, language: &str) -> String {
    let c = post(
        http,
        &format!("{api}/sandboxes/{id}/contexts"),
        &json!({ "language": language }),
    )
    .await
    .expect("create a context");
    format!(
        "{api}/sandboxes/{id}/contexts/{}/execute",
        c["id"].as_str().unwrap_or_default()
    )
}

/// Runs `code` on the pool's contexts, checking what `check` says of each answer.
async fn calls(
    http: &Client,
    name: &str,
    pool: Pool,
    concurrency: usize,
    total: usize,
    code: &'static str,
    check: fn(&Value) -> bool,
) {
    let h = http.clone();
    measure(name, concurrency, total, move || {
        let (h, pool) = (h.clone(), pool.clone());
        async move {
            let url = pool.take();
            let r = post(&h, &url, &json!({ "code": code })).await;
            pool.give(url);
            let r = r?;
            if r["status"] != "ok" || !check(&r) {
                return Err(format!("unexpected result {r}"));
            }
            Ok(())
        }
    })
    .await;
}

pub async fn contexts_suite(http: Client, base: String, scale: f64) {
    let n = |k: f64| ((k * scale) as usize).max(4);
    let api = format!("{base}/api/v1");
    println!("== contexts: stateful kernels ==");
    let sandboxes: Vec<String> =
        futures::future::join_all((0..8).map(|_| sandbox(&http, &api))).await;

    // The memory one idle python context holds, from its sandbox's cgroup.
    {
        let id = sandbox(&http, &api).await;
        let usage = |http: Client, url: String| async move {
            let u = http
                .get(&url)
                .send()
                .await
                .ok()?
                .json::<Value>()
                .await
                .ok()?;
            u["memory_bytes"].as_f64()
        };
        let url = format!("{api}/sandboxes/{id}/usage");
        let before = usage(http.clone(), url.clone()).await.unwrap_or(0.0);
        let exec = context(&http, &api, &id, "python").await;
        let _ = post(&http, &exec, &json!({"code": "1+1"})).await;
        let after = usage(http.clone(), url).await.unwrap_or(0.0);
        println!(
            "{:<40} {:.1} MB",
            "idle python context memory",
            (after - before) / 1e6
        );
        let _ = delete(&http, &format!("{api}/sandboxes/{id}")).await;
    }

    // Creates, spread over the sandboxes (each holds a limited number); deleted afterwards.
    for c in [1, 8] {
        let created = Arc::new(Mutex::new(Vec::new()));
        let (h, a, boxes, made) = (
            http.clone(),
            api.clone(),
            sandboxes.clone(),
            created.clone(),
        );
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        measure("context create (python)", c, n(40.0), move || {
            let (h, a, made) = (h.clone(), a.clone(), made.clone());
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let id = boxes[i % boxes.len()].clone();
            async move {
                let r = post(&h, &format!("{a}/sandboxes/{id}/contexts"), &json!({})).await?;
                let cid = r["id"].as_str().unwrap_or_default();
                made.lock()
                    .unwrap()
                    .push(format!("{a}/sandboxes/{id}/contexts/{cid}"));
                Ok(())
            }
        })
        .await;
        let created = std::mem::take(&mut *created.lock().unwrap());
        for url in created {
            let _ = delete(&http, &url).await;
        }
    }

    let plot = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()";
    for c in [1, 8] {
        let contexts = futures::future::join_all(
            sandboxes[..c]
                .iter()
                .map(|id| context(&http, &api, id, "python")),
        )
        .await;
        let pool = Pool(Arc::new(Mutex::new(contexts)));
        let two = |r: &Value| r["events"][0]["data"]["text/plain"] == "2";
        calls(
            &http,
            "context 1+1 (python)",
            pool.clone(),
            c,
            n(400.0),
            "1+1",
            two,
        )
        .await;
        let png = |r: &Value| r["events"][0]["data"]["image/png"].is_string();
        calls(
            &http,
            "context plot cell (python)",
            pool,
            c,
            n(60.0),
            plot,
            png,
        )
        .await;
    }
    for (language, code, name) in [
        ("javascript", "1+1", "context 1+1 (javascript)"),
        ("bash", "echo 2", "context echo 2 (bash)"),
    ] {
        let url = context(&http, &api, &sandboxes[0], language).await;
        let pool = Pool(Arc::new(Mutex::new(vec![url])));
        let two = |r: &Value| r["stdout"] == "2\n" || r["events"][0]["data"]["text/plain"] == "2";
        calls(&http, name, pool, 1, n(300.0), code, two).await;
    }
    // CodeGeeX4's /execute: the default sandbox at c=1; at c=8 one sandbox per worker
    // through /codegeex/{id}/ (one sandbox's calls run one at a time, as in the original).
    for c in [1, 8] {
        let urls: Vec<String> = match c {
            1 => vec![format!("{base}/execute")],
            _ => sandboxes[..c]
                .iter()
                .map(|id| format!("{base}/codegeex/{id}/execute"))
                .collect(),
        };
        let pool = Pool(Arc::new(Mutex::new(urls)));
        let h = http.clone();
        measure("codegeex /execute print(1)", c, n(300.0), move || {
            let (h, pool) = (h.clone(), pool.clone());
            async move {
                let url = pool.take();
                let r = post(&h, &url, &json!({"code": "print(1)", "timeout_secs": 10})).await;
                pool.give(url);
                let r = r?;
                if r["status"] != "ok" || r["events"][0]["data"]["text"] != "1\n" {
                    return Err(format!("unexpected result {r}"));
                }
                Ok(())
            }
        })
        .await;
    }
    for id in sandboxes {
        let _ = delete(&http, &format!("{api}/sandboxes/{id}")).await;
    }
}
