//! The images suite: a pull of a ~30 MB image from a registry on loopback, sandboxes made
//! from the pulled image (to compare with `host`), and commits of a sandbox with 10 MB
//! written. `scripts/bench.sh` starts the registry and pushes the image (`bench/big:1`).

use std::time::{Duration, Instant};

use reqwest::Client;
use serde_json::json;

use crate::{Stats, delete, measure, post};

pub async fn images_suite(http: Client, base: String, registry: Option<String>, scale: f64) {
    let Some(registry) = registry else {
        eprintln!("images suite skipped: no --registry (scripts/bench.sh starts one)");
        return;
    };
    let api = format!("{base}/api/v1");
    let image = format!("{registry}/bench/big:1");
    let escaped = image.replace('/', "%2F");
    let n = |x: f64| ((x * scale).round() as usize).max(1);

    // Each pull starts from nothing: the image deleted and its layers collected.
    let mut pulls = Vec::new();
    for _ in 0..n(5.0) {
        let _ = delete(&http, &format!("{api}/images/{escaped}")).await;
        let t = Instant::now();
        post(
            &http,
            &format!("{api}/images/pull"),
            &json!({ "reference": image }),
        )
        .await
        .expect("pull the bench image");
        pulls.push(t.elapsed());
    }
    record("images: pull 30 MB from a local registry", pulls);

    for (c, total) in [(1, n(200.0)), (8, n(400.0))] {
        for (label, name) in [("pulled image", image.as_str()), ("host", "host")] {
            let (h, a, name) = (http.clone(), api.clone(), name.to_string());
            measure(
                &format!("images: create+delete, {label}"),
                c,
                total,
                move || {
                    let (h, a, name) = (h.clone(), a.clone(), name.clone());
                    async move {
                        let s =
                            post(&h, &format!("{a}/sandboxes"), &json!({ "image": name })).await?;
                        delete(
                            &h,
                            &format!("{a}/sandboxes/{}", s["id"].as_str().unwrap_or("")),
                        )
                        .await
                    }
                },
            )
            .await;
        }
    }

    // Only the commit is timed; the write before it and the clean-up after are not.
    let mut commits = Vec::new();
    for i in 0..n(10.0) {
        let s = post(
            &http,
            &format!("{api}/sandboxes"),
            &json!({ "image": image }),
        )
        .await
        .expect("a sandbox");
        let id = s["id"].as_str().unwrap_or_default().to_string();
        let write = json!({ "command": ["sh", "-c", "head -c 10485760 /dev/urandom > /mnt/ten"] });
        post(&http, &format!("{api}/sandboxes/{id}/exec"), &write)
            .await
            .expect("write 10 MB");
        let name = format!("bench/commit:{i}");
        let t = Instant::now();
        post(
            &http,
            &format!("{api}/sandboxes/{id}/commit"),
            &json!({ "name": name }),
        )
        .await
        .expect("commit");
        commits.push(t.elapsed());
        let _ = delete(&http, &format!("{api}/sandboxes/{id}")).await;
        let _ = delete(&http, &format!("{api}/images/bench%2Fcommit:{i}")).await;
    }
    record("images: commit, 10 MB written", commits);
}

fn record(name: &str, mut latencies: Vec<Duration>) {
    latencies.sort();
    let stats = Stats {
        name: name.into(),
        concurrency: 1,
        elapsed: latencies.iter().sum(),
        latencies,
        errors: 0,
    };
    stats.print();
}
