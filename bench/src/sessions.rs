//! The sessions suite: `echo hi` in a bash session on a pseudo-terminal (each worker has a
//! session of its own), and a session's start.

use std::sync::{Arc, Mutex};

use reqwest::Client;
use serde_json::json;

use crate::{delete, measure, post};

pub async fn sessions_suite(http: Client, base: String, scale: f64) {
    let api = format!("{base}/api/v1");
    let n = |x: f64| ((x * scale).round() as usize).max(1);
    let sandbox = post(&http, &format!("{api}/sandboxes"), &json!({}))
        .await
        .expect("a sandbox");
    let id = sandbox["id"].as_str().unwrap_or_default().to_string();
    let sessions = format!("{api}/sandboxes/{id}/sessions");

    let (h, url) = (http.clone(), sessions.clone());
    measure("sessions: start+close", 1, n(100.0), move || {
        let (h, url) = (h.clone(), url.clone());
        async move {
            let s = post(&h, &url, &json!({})).await?;
            delete(&h, &format!("{url}/{}", s["name"].as_str().unwrap_or(""))).await
        }
    })
    .await;

    for c in [1, 8] {
        let mut names = Vec::new();
        for _ in 0..c {
            let s = post(&http, &sessions, &json!({})).await.expect("a session");
            names.push(s["name"].as_str().unwrap_or_default().to_string());
        }
        let pool = Arc::new(Mutex::new(names));
        let (h, url) = (http.clone(), sessions.clone());
        measure("sessions: run `echo hi`", c, n(1000.0), move || {
            let (h, url, pool) = (h.clone(), url.clone(), pool.clone());
            async move {
                let name = pool.lock().unwrap().pop().expect("a session per worker");
                let r = post(
                    &h,
                    &format!("{url}/{name}/run"),
                    &json!({ "command": "echo hi" }),
                )
                .await;
                pool.lock().unwrap().push(name);
                match r?["output"].as_str() {
                    Some("hi\n") => Ok(()),
                    other => Err(format!("unexpected output {other:?}")),
                }
            }
        })
        .await;
    }
    let _ = delete(&http, &format!("{api}/sandboxes/{id}")).await;
}
