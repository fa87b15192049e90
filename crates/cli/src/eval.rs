//! `cella eval`: a whole benchmark's completions graded by a running server (SandboxFusion's
//! `/submit`), with a progress bar, a results file beside the input that a rerun resumes from,
//! and a pass@k table.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cella_engine::eval::datasets::key_of;
use cella_engine::eval::metrics::{pass_at, tally};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::client::{Target, unreachable};

#[derive(clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    target: Target,
    /// The dataset id, as `GET /list_datasets` names it (e.g. humaneval_python).
    #[arg(long)]
    dataset: String,
    /// Completions, JSONL: one `{"task_id": ..., "completion": "..."}` per line (`id` also
    /// names the problem); several lines of one problem are samples for pass@k.
    completions: PathBuf,
    /// Where results go (default: `<completions>.results.jsonl` beside the input). A rerun
    /// skips the samples it already holds.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Submissions at once (default: as many as the server runs at once).
    #[arg(long)]
    concurrency: Option<usize>,
    /// The k of pass@k, for each k that every problem has samples enough for.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 10, 100])]
    k: Vec<u64>,
    /// SandboxFusion's `TestConfig` as JSON, e.g. '{"language": "python", "extra": {"is_freeform": true}}'.
    #[arg(long)]
    config: Option<String>,
}

/// One line of the completions file.
struct Sample {
    index: usize,
    id: Value,
    completion: String,
}

/// A submission the server could not take is tried again this many times, with a growing
/// pause, before the run stops (its results so far kept for the rerun).
const ATTEMPTS: u32 = 5;

pub fn eval(args: EvalArgs) -> Result<ExitCode, String> {
    let config: Value = match &args.config {
        Some(text) => {
            serde_json::from_str(text).map_err(|e| format!("--config is not JSON: {e}"))?
        }
        None => json!({}),
    };
    let samples = read_samples(&args.completions)?;
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| results_path(&args.completions));
    let done = read_results(&output, &samples)?;
    let (http, info_url) = args.target.connect("/info")?;
    let concurrency = match args.concurrency {
        Some(n) => n.max(1),
        None => server_concurrency(&http, &info_url),
    };
    let submit_url = info_url.replace("/api/v1/info", "/submit");
    let pending: Vec<&Sample> = samples
        .iter()
        .filter(|s| !done.contains_key(&s.index))
        .collect();

    let bar = ProgressBar::new(samples.len() as u64).with_position(done.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} {elapsed} ETA {eta}")
            .expect("a valid template"),
    );
    let passed_before = done.values().filter(|r| r["accepted"] == true).count();
    let tally = Mutex::new((passed_before, done.len()));
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(&output)
        .map_err(|e| format!("{}: {e}", output.display()))?;
    // A line an interrupted run cut short is ended, so the next result starts a line.
    if ends_mid_line(&mut file).map_err(|e| format!("{}: {e}", output.display()))? {
        file.write_all(b"\n")
            .map_err(|e| format!("{}: {e}", output.display()))?;
    }
    let file = Mutex::new(file);
    let queue = Mutex::new(pending.into_iter());
    let stopped: Mutex<Option<String>> = Mutex::new(None);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..concurrency {
            scope.spawn(|| {
                loop {
                    if stopped.lock().unwrap().is_some() {
                        return;
                    }
                    let Some(sample) = queue.lock().unwrap().next() else {
                        return;
                    };
                    let result = match grade(&http, &submit_url, &args.dataset, &config, sample) {
                        Ok(result) => result,
                        Err(why) => {
                            stopped.lock().unwrap().get_or_insert(why);
                            return;
                        }
                    };
                    let mut line = result.to_string();
                    line.push('\n');
                    if let Err(e) = file.lock().unwrap().write_all(line.as_bytes()) {
                        stopped
                            .lock()
                            .unwrap()
                            .get_or_insert(format!("{}: {e}", output.display()));
                        return;
                    }
                    let mut t = tally.lock().unwrap();
                    t.0 += usize::from(result["accepted"] == true);
                    t.1 += 1;
                    bar.set_message(format!("pass {:.1}%", 100.0 * t.0 as f64 / t.1 as f64));
                    bar.inc(1);
                }
            });
        }
    });
    bar.finish_and_clear();
    let graded = started.elapsed();
    if let Some(why) = stopped.into_inner().unwrap() {
        return Err(format!(
            "{why}\nthe results so far are in {}: run the same command again to go on",
            output.display()
        ));
    }
    let before = done.len();
    let done = read_results(&output, &samples)?;
    print_summary(
        &args,
        &samples,
        &done,
        &output,
        (done.len().saturating_sub(before), graded),
    );
    Ok(ExitCode::SUCCESS)
}

fn ends_mid_line(file: &mut File) -> std::io::Result<bool> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(false);
    }
    let mut last = [0u8];
    file.seek(SeekFrom::Start(len - 1))?;
    file.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

fn results_path(completions: &Path) -> PathBuf {
    let stem = completions
        .file_stem()
        .unwrap_or_default()
        .to_string_lossy();
    completions.with_file_name(format!("{stem}.results.jsonl"))
}

fn read_samples(path: &Path) -> Result<Vec<Sample>, String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut samples = Vec::new();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{} line {}", path.display(), n + 1);
        let row: Value = serde_json::from_str(&line).map_err(|e| format!("{}: {e}", at()))?;
        let id = row.get("task_id").or_else(|| row.get("id")).cloned();
        let id = id
            .filter(|id| key_of(id).is_some())
            .ok_or_else(|| format!("{}: no task_id or id", at()))?;
        let completion = row["completion"]
            .as_str()
            .ok_or_else(|| format!("{}: no completion string", at()))?;
        samples.push(Sample {
            index: n,
            id,
            completion: completion.to_string(),
        });
    }
    Ok(samples)
}

/// The results already in `path`, by sample (the completion's line); they must be of these
/// completions.
fn read_results(path: &Path, samples: &[Sample]) -> Result<HashMap<usize, Value>, String> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let ids: HashMap<usize, &Value> = samples.iter().map(|s| (s.index, &s.id)).collect();
    let mut results = HashMap::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
        // A line cut short by an interrupted run is graded again.
        let Ok(result) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let Some(index) = result["sample"].as_u64().map(|i| i as usize) else {
            continue;
        };
        if ids.get(&index).map(|id| key_of(id)) != Some(key_of(&result["id"])) {
            return Err(format!(
                "{} holds results of other completions (line {} is not problem {}); give another --output",
                path.display(),
                index + 1,
                result["id"]
            ));
        }
        results.insert(index, result);
    }
    Ok(results)
}

fn server_concurrency(http: &reqwest::blocking::Client, info_url: &str) -> usize {
    let info = http
        .get(info_url)
        .send()
        .ok()
        .and_then(|r| r.json::<Value>().ok());
    info.and_then(|i| i["runs"]["max_concurrency"].as_u64())
        .map_or(8, |n| n.max(1) as usize)
}

/// Submits one sample, trying again while the server is busy or unreachable. What the
/// server refuses (an unknown id, a row it cannot grade) is a result, not a stop.
fn grade(
    http: &reqwest::blocking::Client,
    url: &str,
    dataset: &str,
    config: &Value,
    sample: &Sample,
) -> Result<Value, String> {
    let body = json!({ "dataset": dataset, "id": sample.id, "completion": sample.completion, "config": config });
    let mut pause = Duration::from_secs(1);
    for attempt in 1..=ATTEMPTS {
        let last = attempt == ATTEMPTS;
        let resp = match http.post(url).json(&body).send() {
            Ok(resp) => resp,
            Err(e) if last => return Err(unreachable(e)),
            Err(_) => {
                std::thread::sleep(pause);
                pause *= 2;
                continue;
            }
        };
        let status = resp.status();
        let answer: Value = resp.json().unwrap_or(Value::Null);
        if status.is_success() {
            let tests = answer["tests"].as_array().map_or(0, Vec::len);
            let passed = answer["tests"]
                .as_array()
                .map_or(0, |t| t.iter().filter(|t| t["passed"] == true).count());
            return Ok(json!({
                "sample": sample.index, "id": sample.id, "accepted": answer["accepted"] == true,
                "tests": tests, "tests_passed": passed,
            }));
        }
        let retry = status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS;
        if !retry {
            let why = answer["detail"]
                .as_str()
                .map_or_else(|| answer.to_string(), str::to_string);
            return Ok(
                json!({ "sample": sample.index, "id": sample.id, "accepted": false, "error": why }),
            );
        }
        if last {
            return Err(format!("the server answered {status}: {answer}"));
        }
        std::thread::sleep(pause);
        pause *= 2;
    }
    unreachable!("the last attempt returns")
}

/// The table of a finished evaluation; `graded` is how many samples this run graded, in how
/// long.
fn print_summary(
    args: &EvalArgs,
    samples: &[Sample],
    done: &HashMap<usize, Value>,
    output: &Path,
    graded: (usize, Duration),
) {
    // The summary follows a run that graded every sample, so every problem has its tally.
    let results = samples.iter().filter_map(|s| {
        let result = done.get(&s.index)?;
        Some((
            key_of(&s.id).unwrap_or_default(),
            result["accepted"] == true,
        ))
    });
    let tallies = tally(results);
    let accepted: u64 = tallies.iter().map(|t| t.passed).sum();
    let errors = done.values().filter(|r| r.get("error").is_some()).count();
    let fewest = tallies.iter().map(|t| t.samples).min().unwrap_or(0);
    let most = tallies.iter().map(|t| t.samples).max().unwrap_or(0);
    let per = if fewest == most {
        format!("{fewest}")
    } else {
        format!("{fewest} to {most}")
    };
    println!(
        "{}: {} problems, {} samples ({per} per problem)",
        args.dataset,
        tallies.len(),
        samples.len()
    );
    for (k, v) in pass_at(&tallies, &args.k) {
        println!("  {k:<9} {:>7.2}%", 100.0 * v);
    }
    println!("  accepted  {accepted} / {}", done.len());
    if errors > 0 {
        println!("  refused   {errors} (the server's reason is in each result's \"error\")");
    }
    let (count, time) = graded;
    let rate = count as f64 / time.as_secs_f64().max(1e-3);
    println!(
        "  graded    {count} in {:.1} s ({rate:.1} samples/s)",
        time.as_secs_f64()
    );
    println!("results: {}", output.display());
}
