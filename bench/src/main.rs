//! `cella-bench`: drives a running cella server and reports p50/p99 latency and throughput.
//!
//! Each scenario runs a fixed number of operations at a given concurrency (that many workers
//! issuing back-to-back requests). Latency is what the client observes, end to end, failed
//! operations included; throughput counts only the ones that succeeded. Any failure makes the
//! run exit non-zero, and a run with failures is not saved as the baseline.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use reqwest::Client;
use serde_json::Value;

mod contexts;
mod engine;
mod eval;
mod fusion;
mod images;
mod rock;
mod sessions;

#[derive(Parser)]
struct Args {
    /// Base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Which suites to run: engine, fusion, contexts, images, sessions, rock, eval
    /// (comma-separated).
    #[arg(
        long,
        default_value = "engine,fusion,contexts,images,sessions,rock,eval"
    )]
    suites: String,
    /// A registry (`host:port`) holding `bench/big:1`, for the images suite.
    #[arg(long)]
    registry: Option<String>,
    /// Scale the number of operations per scenario.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Figures of an earlier run, printed beside the new ones.
    #[arg(long, default_value = "bench/baseline.json")]
    baseline: std::path::PathBuf,
    /// Record this run's figures in the baseline (other scenarios' figures are kept).
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
/// Scenarios with at least one failed operation, by name.
static FAILED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Marks the run as failed, naming what failed.
fn record_failure(what: String) {
    FAILED.lock().unwrap_or_else(|p| p.into_inner()).push(what);
}

struct Stats {
    name: String,
    concurrency: usize,
    /// Every operation's, failed ones included.
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
            per_second: (self.latencies.len() - self.errors) as f64 / self.elapsed.as_secs_f64(),
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
        if self.errors > 0 {
            record_failure(format!("{} (c={})", self.name, self.concurrency));
        }
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
                let outcome = op().await;
                lat.push(t.elapsed());
                if let Err(e) = outcome {
                    errors += 1;
                    first_error.get_or_insert(e);
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
            "engine" => engine::engine_suite(http.clone(), base.clone(), args.scale).await,
            "fusion" => fusion::fusion_suite(http.clone(), base.clone(), args.scale).await,
            "contexts" => contexts::contexts_suite(http.clone(), base.clone(), args.scale).await,
            "sessions" => sessions::sessions_suite(http.clone(), base.clone(), args.scale).await,
            "rock" => rock::rock_suite(http.clone(), base.clone(), args.scale).await,
            "eval" => eval::eval_suite(http.clone(), base.clone(), args.scale).await,
            "images" => {
                let registry = args.registry.clone();
                images::images_suite(http.clone(), base.clone(), registry, args.scale).await
            }
            other => eprintln!("unknown suite {other:?}"),
        }
    }
    let failed = FAILED.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if !failed.is_empty() {
        eprintln!("failed operations in: {}", failed.join(", "));
        if args.save_baseline {
            eprintln!("the baseline is not saved from a run with failures");
        }
        std::process::exit(1);
    }
    if args.save_baseline {
        // This run's figures replace their scenarios' old ones; the scenarios of suites not
        // run keep theirs.
        let results = RESULTS.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let fresh = |f: &Figures| {
            results
                .iter()
                .any(|r| r.name == f.name && r.concurrency == f.concurrency)
        };
        let mut merged: Vec<Figures> = BASELINE
            .get()
            .into_iter()
            .flatten()
            .filter(|f| !fresh(f))
            .cloned()
            .collect();
        merged.extend(results.iter().cloned());
        let json = serde_json::to_vec_pretty(&merged).expect("figures serialize");
        std::fs::write(&args.baseline, json).expect("write the baseline");
        println!("baseline saved to {}", args.baseline.display());
    }
}
