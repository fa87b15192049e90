//! Evaluation: datasets of problems, the prompts made from them, and the grading of a model's
//! completion against a problem's tests, by SandboxFusion's rules for each dataset class.
//!
//! A class is SandboxFusion's name for a way of grading (`HumanEvalDataset`, `CommonOJDataset`,
//! ...); a dataset id names a class and a table of rows. Rows come from the server's
//! [`Datasets`] or with the request (`provided_data`). Grading extracts the code, builds the
//! program each class builds and runs it as any one-shot run is run (in a sandbox, through the
//! run queue); nothing a request sends is executed in the server.

mod autoeval;
mod cruxeval;
pub mod datasets;
pub mod extract;
mod family;
mod livecodebench;
mod mbpp;
pub mod metrics;
mod stdio;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::error::{Error, Result, quoted};
use crate::process;
use crate::run::{RunOutcome, RunRequest, Runs};
pub use datasets::{Datasets, Row};
use extract::{CodeBlock, Extracted};

/// What a request says about how to read and grade a dataset (SandboxFusion's `TestConfig`).
#[derive(Debug, Clone, Default)]
pub struct EvalConfig {
    /// The class to use for a dataset id the server does not know.
    pub dataset_type: Option<String>,
    pub language: Option<String>,
    pub locale: Option<String>,
    pub is_fewshot: bool,
    pub compile_timeout: Option<f64>,
    pub run_timeout: Option<f64>,
    /// Python that adds code blocks to the extraction; run in a sandbox.
    pub custom_extract_logic: Option<String>,
    /// Rows sent with the request: a list for prompts, one object for a row or a submission.
    pub provided_data: Option<Value>,
    /// Class-specific options (`is_freeform`, `run_all_cases`, `mode`, ...).
    pub extra: Map<String, Value>,
}

impl EvalConfig {
    fn flag(&self, name: &str) -> bool {
        self.extra.get(name).is_some_and(truthy)
    }

    fn locale(&self) -> &str {
        self.locale.as_deref().unwrap_or("en")
    }

    fn run_timeout_or(&self, default: f64) -> Duration {
        seconds(self.run_timeout.unwrap_or(default))
    }

    fn compile_timeout_or(&self, default: f64) -> Duration {
        seconds(self.compile_timeout.unwrap_or(default))
    }
}

/// Python's truthiness of a JSON value.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn seconds(s: f64) -> Duration {
    Duration::from_secs_f64(if s.is_finite() {
        s.clamp(0.001, 86_400.0)
    } else {
        20.0
    })
}

pub struct Prompt {
    pub id: Value,
    pub prompt: String,
    pub labels: Map<String, Value>,
}

/// A completion to grade against problem `id` of `dataset`.
pub struct Submission {
    pub dataset: String,
    pub id: Value,
    pub completion: String,
    pub config: EvalConfig,
}

/// The grade of one submission (SandboxFusion's `EvalResult`, without the id it echoes).
pub struct Verdict {
    pub accepted: bool,
    pub extracted_code: String,
    pub full_code: Option<String>,
    pub test_code: Option<String>,
    pub tests: Vec<CaseResult>,
    pub extracted_type: Option<Extracted>,
    pub extra: Option<Map<String, Value>>,
}

impl Verdict {
    /// A verdict of one program run: accepted when it succeeded.
    fn of_run(extracted_code: String, full_code: String, outcome: RunOutcome) -> Verdict {
        let passed = succeeded(&outcome);
        Verdict {
            accepted: passed,
            extracted_code,
            full_code: Some(full_code),
            test_code: None,
            tests: vec![CaseResult {
                passed,
                outcome,
                test_info: None,
            }],
            extracted_type: None,
            extra: None,
        }
    }
}

/// One test case: the run that checked it and whether it passed.
pub struct CaseResult {
    pub passed: bool,
    pub outcome: RunOutcome,
    pub test_info: Option<Value>,
}

/// SandboxFusion's `status == "Success"`: the language ran, the compile (if any) and the
/// program exited 0 within their limits.
pub fn succeeded(outcome: &RunOutcome) -> bool {
    outcome.unavailable.is_none()
        && outcome.compile.as_ref().is_none_or(|c| c.succeeded())
        && outcome.run.as_ref().is_some_and(|r| r.succeeded())
}

/// The ways of grading cella implements, by SandboxFusion's class names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// HumanEval and MultiPL-E: prompt + completion + tests, one language per dataset.
    Family(family::Kind),
    Mbpp,
    CommonOj,
    AutoEval,
    CruxEval,
    LiveCodeBench,
}

const CLASS_NAMES: &[(&str, Class)] = &[
    ("HumanEvalDataset", Class::Family(family::Kind::HumanEval)),
    ("MultiPLEDataset", Class::Family(family::Kind::MultiPle)),
    ("MBPPDataset", Class::Mbpp),
    ("CommonOJDataset", Class::CommonOj),
    ("AutoEvalDataset", Class::AutoEval),
    ("AutoEvalV4Dataset", Class::AutoEval),
    ("AutoEvalV5Dataset", Class::AutoEval),
    ("AutoEvalV6Dataset", Class::AutoEval),
    ("CruxEvalDataset", Class::CruxEval),
    ("LiveCodeBenchDataset", Class::LiveCodeBench),
];

/// The registered dataset ids of the other classes (the family's are in its table).
const REGISTERED: &[(&str, Class)] = &[
    ("code_contests", Class::CommonOj),
    ("cruxeval", Class::CruxEval),
    ("live_code_bench_v1", Class::LiveCodeBench),
    ("mbpp", Class::Mbpp),
];

fn registered(dataset: &str) -> Option<Class> {
    family::registered(dataset).map(Class::Family).or_else(|| {
        REGISTERED
            .iter()
            .find(|(id, _)| *id == dataset)
            .map(|(_, c)| *c)
    })
}

pub struct Evaluator {
    datasets: Datasets,
    runs: Arc<Runs>,
}

impl Evaluator {
    pub fn new(runs: Arc<Runs>, datasets: Datasets) -> Evaluator {
        Evaluator { datasets, runs }
    }

    /// The registered dataset ids, then those the server holds rows of under other ids.
    pub fn dataset_ids(&self) -> Vec<String> {
        let known = family::ids().chain(REGISTERED.iter().map(|(id, _)| *id));
        let mut ids: Vec<String> = known.map(str::to_string).collect();
        let held = self
            .datasets
            .ids()
            .iter()
            .filter(|id| registered(id).is_none());
        ids.extend(held.cloned());
        ids
    }

    /// The class grading `dataset`: its own, or the request's `dataset_type` for an id the
    /// server does not know. The errors are SandboxFusion's 400s.
    fn class(&self, dataset: &str, config: &EvalConfig) -> Result<Class> {
        if let Some(class) = registered(dataset) {
            return Ok(class);
        }
        let Some(name) = &config.dataset_type else {
            return Err(Error::invalid(format!(
                "no eval class found for dataset {dataset}"
            )));
        };
        CLASS_NAMES
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| *c)
            .ok_or_else(|| Error::invalid(format!("eval class {name} not found")))
    }

    /// Rows `offset..offset + limit` of a dataset, or all the rows the request provided.
    fn rows(
        &self,
        dataset: &str,
        config: &EvalConfig,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<Row>> {
        match &config.provided_data {
            Some(Value::Array(rows)) if !rows.is_empty() => rows
                .iter()
                .map(|r| match r {
                    Value::Object(row) => Ok(row.clone()),
                    _ => Err(Error::invalid(
                        "each row of config.provided_data must be an object",
                    )),
                })
                .collect(),
            Some(Value::Object(_)) => Err(Error::invalid(
                "request.config.provided_data should be a list of str -> str | int",
            )),
            _ => self.datasets.page(dataset, offset, limit),
        }
    }

    /// One row of a dataset, or the row the request provided.
    fn row(&self, dataset: &str, config: &EvalConfig, id: &Value) -> Result<Row> {
        match &config.provided_data {
            Some(Value::Object(row)) if !row.is_empty() => Ok(row.clone()),
            Some(Value::Array(rows)) if !rows.is_empty() => Err(Error::invalid(
                "request.config.provided_data should be a dict with str -> str | int",
            )),
            _ => self.datasets.row(dataset, id),
        }
    }

    pub fn prompts(
        &self,
        dataset: &str,
        config: &EvalConfig,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<Prompt>> {
        let class = self.class(dataset, config)?;
        let rows = self.rows(dataset, config, offset, limit)?;
        if class == Class::CruxEval {
            return cruxeval::prompts(rows, config);
        }
        rows.into_iter()
            .map(|row| self.prompt_of(class, dataset, row, config))
            .collect()
    }

    pub fn prompt(&self, dataset: &str, config: &EvalConfig, id: &Value) -> Result<Prompt> {
        let class = self.class(dataset, config)?;
        let row = self.row(dataset, config, id)?;
        self.prompt_of(class, dataset, row, config)
    }

    fn prompt_of(
        &self,
        class: Class,
        dataset: &str,
        row: Row,
        config: &EvalConfig,
    ) -> Result<Prompt> {
        match class {
            Class::Family(kind) => family::prompt(kind, dataset, row, config),
            Class::Mbpp => mbpp::prompt(row, config),
            Class::CommonOj => stdio::prompt(row, config),
            Class::AutoEval => autoeval::prompt(row, config),
            Class::CruxEval => cruxeval::prompt(row, config),
            Class::LiveCodeBench => livecodebench::prompt(row, config),
        }
    }

    pub async fn submit(&self, sub: &Submission) -> Result<Verdict> {
        let class = self.class(&sub.dataset, &sub.config)?;
        let row = self.row(&sub.dataset, &sub.config, &sub.id)?;
        match class {
            Class::Family(kind) => family::grade(self, kind, sub, row).await,
            Class::Mbpp => mbpp::grade(self, sub, row).await,
            Class::CommonOj => stdio::grade(self, sub, row).await,
            Class::AutoEval => autoeval::grade(self, sub, row).await,
            Class::CruxEval => cruxeval::grade(self, sub, row).await,
            Class::LiveCodeBench => livecodebench::grade(self, sub, row).await,
        }
    }

    /// pass@k of graded results (`(problem id, accepted)`, several per problem for k > 1).
    pub fn metrics(
        &self,
        dataset: &str,
        config: &EvalConfig,
        results: &[(Value, bool)],
    ) -> Result<std::collections::BTreeMap<String, f64>> {
        self.class(dataset, config)?;
        let ks: Vec<u64> = match config.extra.get("k") {
            Some(Value::Array(ks)) => ks.iter().filter_map(Value::as_u64).collect(),
            Some(k) => k.as_u64().into_iter().collect(),
            None => vec![1, 5, 10, 100],
        };
        let keyed = results.iter().map(|(id, passed)| {
            (
                datasets::key_of(id).unwrap_or_else(|| id.to_string()),
                *passed,
            )
        });
        Ok(metrics::pass_at(&metrics::tally(keyed), &ks))
    }

    /// Runs a program as a one-shot run. Errors of the server (busy, a sandbox that could not
    /// be made) fail the submission, so that the client retries it, rather than grade it.
    async fn run(&self, req: RunRequest) -> Result<RunOutcome> {
        self.runs.run(req).await
    }

    /// Runs a Python program of tests that must run to their end: a line printing a fresh
    /// random marker is added after them, and the verdict accepts only a run that printed it.
    /// A completion that ends the program early with status 0 (`exit(0)`, `os._exit(0)`,
    /// `raise SystemExit` in the function the tests call) is refused, where SandboxFusion,
    /// which looks only at the status, would accept it.
    async fn run_to_end(&self, mut req: RunRequest, extracted_code: String) -> Result<Verdict> {
        let marker = format!(
            "cella-tests-ran-to-the-end-{}",
            uuid::Uuid::new_v4().simple()
        );
        req.code.push_str(&format!("\nprint({marker:?})\n"));
        let outcome = self.run(req.clone()).await?;
        let stdout = outcome
            .run
            .as_ref()
            .map(|r| process::text(r.output.stdout.clone()));
        let ran_to_end = stdout.is_some_and(|s| s.contains(&marker));
        let mut verdict = Verdict::of_run(extracted_code, req.code, outcome);
        verdict.accepted &= ran_to_end;
        verdict.tests[0].passed = verdict.accepted;
        Ok(verdict)
    }

    /// The code of a completion as SandboxFusion's `default_extract_helper` finds it, with
    /// the blocks of the request's `custom_extract_logic`, run in a sandbox.
    async fn best_code(
        &self,
        completion: &str,
        language: &str,
        config: &EvalConfig,
    ) -> Result<String> {
        let custom = match &config.custom_extract_logic {
            Some(logic) => self.custom_blocks(completion, logic).await?,
            None => Vec::new(),
        };
        Ok(extract::best_block(completion, language, custom))
    }

    async fn custom_blocks(&self, completion: &str, logic: &str) -> Result<Vec<CodeBlock>> {
        const BLOCKS: &str = "blocks.json";
        let outcome = self
            .run(RunRequest {
                language: "python".into(),
                code: include_str!("custom_extract.py").into(),
                files: vec![
                    ("completion.txt".into(), completion.as_bytes().to_vec()),
                    ("logic.py".into(), logic.as_bytes().to_vec()),
                    ("tags.json".into(), extract::tags_json().into_bytes()),
                ],
                fetch_files: vec![BLOCKS.into()],
                ..default_run(Duration::from_secs(10))
            })
            .await?;
        let blocks = outcome
            .fetched
            .files
            .iter()
            .find(|(name, _)| name == BLOCKS);
        match blocks {
            Some((_, json)) if succeeded(&outcome) => serde_json::from_slice(json)
                .map_err(|e| Error::invalid(format!("custom_extract_logic's blocks: {e}"))),
            _ => {
                let stderr = outcome.run.map(|r| process::text(r.output.stderr));
                let tail = stderr.as_deref().unwrap_or_default();
                // Its last 2000 bytes or so, cut where a character starts.
                let from = (tail.len().saturating_sub(2000)..=tail.len())
                    .find(|i| tail.is_char_boundary(*i))
                    .unwrap_or(tail.len());
                let tail = &tail[from..];
                Err(Error::invalid(format!(
                    "custom_extract_logic failed: {}",
                    if tail.is_empty() {
                        "it did not finish"
                    } else {
                        tail
                    }
                )))
            }
        }
    }
}

/// A python run with SandboxFusion's defaults and the given run timeout; other runs change
/// what differs.
fn default_run(run_timeout: Duration) -> RunRequest {
    RunRequest {
        language: "python".into(),
        code: String::new(),
        stdin: None,
        compile_timeout: Duration::from_secs(10),
        run_timeout,
        memory_mb: None,
        files: Vec::new(),
        fetch_files: Vec::new(),
        image: None,
    }
}

/// A row's field; a row without it is the request's fault.
fn field<'r>(row: &'r Row, name: &str) -> Result<&'r Value> {
    row.get(name)
        .ok_or_else(|| Error::invalid(format!("the row has no field {}", quoted(name))))
}

/// A row's string field.
fn text<'r>(row: &'r Row, name: &str) -> Result<&'r str> {
    field(row, name)?
        .as_str()
        .ok_or_else(|| Error::invalid(format!("the row's field {} is not a string", quoted(name))))
}

/// A row's field that may be stored as a JSON string (SandboxFusion's `ensure_json`).
fn json_field(row: &Row, name: &str) -> Result<Value> {
    match field(row, name)? {
        Value::String(s) => serde_json::from_str(s).map_err(|e| {
            Error::invalid(format!("the row's field {} is not JSON: {e}", quoted(name)))
        }),
        other => Ok(other.clone()),
    }
}

/// A row's `labels`, parsed if stored as a string; none is an empty map.
fn labels(row: &Row) -> Result<Map<String, Value>> {
    match row.get("labels") {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(_) => match json_field(row, "labels")? {
            Value::Object(m) => Ok(m),
            _ => Err(Error::invalid("the row's labels are not an object")),
        },
    }
}
