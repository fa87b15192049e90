//! Standard-input problems (`CommonOJDataset`: code_contests and RL-style online-judge data):
//! a row's `test` is a list of `{"input": {"stdin"}, "output": {"stdout"}}`. The program runs
//! once per case, cases in parallel within the run queue's bounds (a compiled language
//! compiles once: later cases take the kept compile), and in order of the list the first
//! failure ends the grading unless `extra.run_all_cases`.

use futures::StreamExt;
use serde_json::{Map, Value, json};

use super::{
    CaseResult, EvalConfig, Evaluator, Prompt, Row, Submission, Verdict, field, json_field, labels,
    succeeded,
};
use crate::error::{Error, Result};
use crate::language;
use crate::process;
use crate::run::RunRequest;

fn instruction(locale: &str, language: &str) -> String {
    let zh = locale == "zh";
    match (zh, language) {
        (false, "cpp") => "Please implement complete executable code including a main function in C++. Your program should read input from standard input and write output to standard output.".into(),
        (false, "python") => "Please implement a complete Python script. Your program should read input from standard input and write output to standard output.".into(),
        (false, "java") => "Please implement a complete Java program with a public class named Main. Your class should include a public static void main(String[] args) method. Your program should read input from System.in and write output to System.out.".into(),
        (false, _) => format!("Please implement complete executable code with an entry point in {language}. Your program should read input from standard input and write output to standard output."),
        (true, "cpp") => "请使用 C++ 实现一个完整的可执行程序，包含 main 函数。你的程序应该从标准输入读取数据，并将结果输出到标准输出。".into(),
        (true, "python") => "请编写一个完整的 Python 脚本。你的程序应该从标准输入读取数据，并将结果输出到标准输出。".into(),
        (true, "java") => "请实现一个完整的 Java 程序，包含一个名为 Main 的公共类。你的类中应包含 public static void main(String[] args) 方法。你的程序应该从 System.in 读取输入，并将结果输出到 System.out。".into(),
        (true, _) => format!("请使用 {language} 实现一个完整的可执行程序，包含程序入口。你的程序应该从标准输入读取数据，并将结果输出到标准输出。"),
    }
}

pub fn prompt(row: Row, config: &EvalConfig) -> Result<Prompt> {
    let content = field(&row, "content")?.as_str().unwrap_or_default();
    let language = config.language.as_deref().unwrap_or("None");
    Ok(Prompt {
        id: field(&row, "id")?.clone(),
        prompt: format!("{content}\n\n{}", instruction(config.locale(), language)),
        labels: labels(&row)?,
    })
}

/// One case: what goes to stdin and what stdout must be.
pub(super) struct Case {
    pub raw: Value,
    pub stdin: String,
    pub stdout: String,
}

fn cases(row: &Row) -> Result<Vec<Case>> {
    let Value::Array(cases) = json_field(row, "test")? else {
        return Err(Error::invalid("the row's test is not a list of cases"));
    };
    cases
        .into_iter()
        .map(|raw| {
            let stream = |side: &str, name: &str| {
                raw.get(side)
                    .and_then(|s| s.get(name))
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| {
                        Error::invalid(format!("a test case has no {side}.{name} string"))
                    })
            };
            Ok(Case {
                stdin: stream("input", "stdin")?,
                stdout: stream("output", "stdout")?,
                raw,
            })
        })
        .collect()
}

pub async fn grade(ev: &Evaluator, sub: &Submission, row: Row) -> Result<Verdict> {
    let config = &sub.config;
    let Some(lang) = config.language.as_deref() else {
        return Err(Error::invalid(
            "config.language field must exist for CommonOJDataset, got None",
        ));
    };
    let cases = cases(&row)?;
    let code = ev.best_code(&sub.completion, lang, config).await?;
    let compiles = language::find(lang).is_some_and(|l| l.compile.is_some());
    let run = RunRequest {
        language: lang.to_string(),
        code: code.clone(),
        compile_timeout: config.compile_timeout_or(10.0),
        ..super::default_run(config.run_timeout_or(if compiles { 10.0 } else { 20.0 }))
    };
    let tests = run_cases(ev, &run, cases, same_output, config).await?;
    Ok(Verdict {
        accepted: tests.iter().all(|t| t.passed),
        extracted_code: code,
        full_code: None,
        test_code: None,
        tests,
        extracted_type: None,
        extra: None,
    })
}

/// Runs `run` once per case with the case's stdin, cases in parallel up to the run slots,
/// and compares stdout with `same`. In the cases' order, the first failure ends the rest
/// (the runs still going are dropped, their sandboxes with them) unless
/// `extra.run_all_cases`.
pub(super) async fn run_cases(
    ev: &Evaluator,
    run: &RunRequest,
    cases: Vec<Case>,
    same: fn(&str, &str) -> bool,
    config: &EvalConfig,
) -> Result<Vec<CaseResult>> {
    let full_case = config.flag("return_full_case");
    let parallel = ev.runs.engine().config.runs.max_concurrency.max(1);
    let mut checks = futures::stream::iter(cases)
        .map(|case| {
            let req = RunRequest {
                stdin: Some(case.stdin.clone().into_bytes()),
                ..run.clone()
            };
            async move {
                let outcome = ev.run(req).await?;
                let stdout = outcome
                    .run
                    .as_ref()
                    .map(|r| process::text(r.output.stdout.clone()));
                let passed = succeeded(&outcome)
                    && same(stdout.as_deref().unwrap_or_default(), &case.stdout);
                let info = if passed && !full_case {
                    truncated(&case.raw)
                } else {
                    case.raw
                };
                Ok::<_, Error>(CaseResult {
                    passed,
                    outcome,
                    test_info: Some(info),
                })
            }
        })
        .buffered(parallel);
    let run_all = config.flag("run_all_cases");
    let mut tests = Vec::new();
    while let Some(case) = checks.next().await {
        let case = case?;
        let failed = !case.passed;
        tests.push(case);
        if failed && !run_all {
            break;
        }
    }
    Ok(tests)
}

/// SandboxFusion's comparison: lines of the stripped outputs, each stripped and compared
/// without case; two numbers within a relative 1e-5 are equal.
pub fn same_output(actual: &str, expected: &str) -> bool {
    let actual: Vec<&str> = actual.trim().split('\n').collect();
    let expected: Vec<&str> = expected.trim().split('\n').collect();
    actual.len() == expected.len()
        && actual.iter().zip(&expected).all(|(a, e)| {
            let (a, e) = (a.to_lowercase(), e.to_lowercase());
            let (a, e) = (a.trim(), e.trim());
            a == e || matches!((number(a), number(e)), (Some(a), Some(e)) if (a - e).abs() / e.abs().max(1e-10) < 1e-5)
        })
}

/// A number as Python's `float()` reads one.
fn number(s: &str) -> Option<f64> {
    s.trim().replace('_', "").parse().ok()
}

/// A case with each stream cut to 1000 characters, its two ends kept (`truncate_str`).
fn truncated(case: &Value) -> Value {
    let cut = |v: &Value| -> Value {
        let Some(map) = v.as_object() else {
            return v.clone();
        };
        let map: Map<String, Value> = map
            .iter()
            .map(|(k, s)| {
                (
                    k.clone(),
                    s.as_str().map_or(s.clone(), |s| json!(truncate_str(s))),
                )
            })
            .collect();
        Value::Object(map)
    };
    json!({
        "input": cut(&case["input"]),
        "output": cut(&case["output"]),
    })
}

fn truncate_str(s: &str) -> String {
    const MOST: usize = 1000;
    let chars: Vec<char> = s.chars().collect();
    if chars.len() <= MOST {
        return s.to_string();
    }
    let keep = (MOST - 3) / 2;
    let head: String = chars[..keep].iter().collect();
    let tail: String = chars[chars.len() - keep..].iter().collect();
    format!("{head}...{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_compare_as_sandboxfusion_compares_them() {
        assert!(same_output("3\n", "3"));
        assert!(same_output("  YES \nno\n\n", "yes\nNO"));
        assert!(same_output("0.333333", "0.3333333333"));
        assert!(!same_output("0.33", "0.3333333333"));
        assert!(!same_output("1\n2", "1"));
        assert!(!same_output("", "1"));
        assert!(same_output("", ""));
        assert!(same_output("1e3", "1000.0"));
    }

    #[test]
    fn long_cases_are_cut_in_the_middle() {
        let long = "x".repeat(5000);
        let t = truncated(&json!({"input": {"stdin": long}, "output": {"stdout": "1"}}));
        assert_eq!(t["input"]["stdin"].as_str().unwrap().len(), 999);
        assert_eq!(t["output"]["stdout"], "1");
    }
}
