//! The engine suite: sandboxes and execs through the native API.

use std::sync::Arc;

use reqwest::Client;
use serde_json::json;

use crate::{delete, measure, post};

pub async fn engine_suite(http: Client, base: String, scale: f64) {
    let n = |k: f64| ((k * scale) as usize).max(4);
    let api = format!("{base}/api/v1");
    println!("== engine: sandboxes and execs ==");

    // create→ready, deleting outside the measured operation; without and with egress.
    let shapes = [
        ("sandbox create→ready", json!({}), 200.0),
        (
            "sandbox create→ready, egress on",
            json!({"network": {"egress": true}}),
            50.0,
        ),
    ];
    for (name, body, count) in shapes {
        let (h, a) = (http.clone(), api.clone());
        let ids = Arc::new(std::sync::Mutex::new(Vec::new()));
        let idsc = ids.clone();
        measure(name, 1, n(count), move || {
            let (h, a, ids, body) = (h.clone(), a.clone(), idsc.clone(), body.clone());
            async move {
                let s = post(&h, &format!("{a}/sandboxes"), &body).await?;
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
