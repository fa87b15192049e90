//! The ROCK suite: a sandbox's start until alive, one at a time and 100 at once (ROCK's
//! documented figure is a p50 of 4.9 s at 1,000 concurrent starts), and a GEM
//! environment's reset and step.

use reqwest::Client;
use serde_json::json;

use crate::{measure, post};

/// The start the SDK makes (`start_async`), its first status poll, and the stop.
async fn start_alive_stop(h: &Client, api: &str) -> Result<(), String> {
    let started = post(
        h,
        &format!("{api}/start_async"),
        &json!({"image": "python:3.11"}),
    )
    .await?;
    let id = started["result"]["sandbox_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if id.is_empty() {
        return Err(format!("no sandbox: {started}"));
    }
    let status = reqwest_get(
        h,
        &format!("{api}/get_status?sandbox_id={id}&include_all_states=False"),
    )
    .await?;
    if status["result"]["is_alive"] != true {
        return Err(format!("not alive: {status}"));
    }
    post(h, &format!("{api}/stop"), &json!({"sandbox_id": id}))
        .await
        .map(drop)
}

async fn reqwest_get(h: &Client, url: &str) -> Result<serde_json::Value, String> {
    let resp = h.get(url).send().await.map_err(|e| e.to_string())?;
    resp.json().await.map_err(|e| e.to_string())
}

pub async fn rock_suite(http: Client, base: String, scale: f64) {
    let api = format!("{base}/apis/envs/sandbox/v1");
    let n = |x: f64| ((x * scale).round() as usize).max(1);
    for (c, total) in [(1, n(100.0)), (100, 100)] {
        let (h, a) = (http.clone(), api.clone());
        measure(
            "rock: start_async → alive → stop",
            c,
            total,
            move || {
                let (h, a) = (h.clone(), a.clone());
                async move { start_alive_stop(&h, &a).await }
            },
        )
        .await;
    }

    let gem = format!("{base}/apis/v1/envs/gem");
    let made = post(
        &http,
        &format!("{gem}/make"),
        &json!({"env_id": "game:GuessTheNumber-v0-easy"}),
    )
    .await
    .expect("a GEM environment");
    let id = made["sandbox_id"].as_str().unwrap_or_default().to_string();
    let (h, g) = (http.clone(), gem.clone());
    measure("rock: GEM reset + step", 1, n(200.0), move || {
        let (h, g, id) = (h.clone(), g.clone(), id.clone());
        async move {
            post(
                &h,
                &format!("{g}/reset"),
                &json!({"sandbox_id": id, "seed": 42}),
            )
            .await?;
            let step = post(
                &h,
                &format!("{g}/step"),
                &json!({"sandbox_id": id, "action": "\\boxed{5}"}),
            )
            .await?;
            match step["terminated"].as_bool() {
                Some(_) => Ok(()),
                None => Err(format!("unexpected step {step}")),
            }
        }
    })
    .await;
    let _ = post(
        &http,
        &format!("{gem}/close"),
        &json!({"sandbox_id": made["sandbox_id"]}),
    )
    .await;
}
