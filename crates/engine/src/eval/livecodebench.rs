//! LiveCodeBench (`LiveCodeBenchDataset`): a row's `test` holds `input_output`, a JSON string of
//! `inputs`, `outputs` and, for LeetCode-style problems, `fn_name`. A standard-input problem
//! runs the solution once per input; a function problem runs it with a driver that calls
//! `Solution().<fn_name>` (or a top-level function) with the input's lines, one JSON value
//! each, and prints the JSON of what it returned. Each case is a run of its own, in parallel,
//! the first failure ending the rest.

use serde_json::Value;

use super::stdio::{self, Case};
use super::{EvalConfig, Evaluator, Prompt, Row, Submission, Verdict, field, json_field, labels};
use crate::error::{Error, Result};
use crate::run::RunRequest;

/// What LiveCodeBench's harness imports before a solution (solutions take them for granted).
const PRELUDE: &str = "from string import *\nfrom re import *\nfrom datetime import *\nfrom collections import *\nfrom heapq import *\nfrom bisect import *\nfrom copy import *\nfrom math import *\nfrom random import *\nfrom statistics import *\nfrom itertools import *\nfrom functools import *\nfrom operator import *\nfrom io import *\nfrom sys import *\nfrom json import *\nfrom builtins import *\nfrom typing import *\nimport string\nimport re\nimport datetime\nimport collections\nimport heapq\nimport bisect\nimport copy\nimport math\nimport random\nimport statistics\nimport itertools\nimport functools\nimport operator\nimport io\nimport sys\nimport json\nsys.setrecursionlimit(50000)\n";

/// The line before a function's result in a driver's output.
const RESULT_MARK: &str = "\u{1}cella-result\u{1}";

pub fn prompt(row: Row, config: &EvalConfig) -> Result<Prompt> {
    if config.is_fewshot {
        return Err(Error::invalid(
            "LiveCodeBench's few-shot prompt is not provided here: send is_fewshot false",
        ));
    }
    Ok(Prompt {
        id: field(&row, "id")?.clone(),
        prompt: field(&row, "content")?
            .as_str()
            .unwrap_or_default()
            .to_string(),
        labels: labels(&row)?,
    })
}

pub async fn grade(ev: &Evaluator, sub: &Submission, row: Row) -> Result<Verdict> {
    let test = json_field(&row, "test")?;
    let spec: Value = match test.get("input_output") {
        Some(Value::String(s)) => serde_json::from_str(s)
            .map_err(|e| Error::invalid(format!("test.input_output: {e}")))?,
        Some(v) => v.clone(),
        None => return Err(Error::invalid("the row's test has no input_output")),
    };
    let strings = |name: &str| -> Result<Vec<String>> {
        let list = spec
            .get(name)
            .and_then(Value::as_array)
            .ok_or_else(|| Error::invalid(format!("input_output has no {name} list")))?;
        Ok(list
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
            .collect())
    };
    let (inputs, outputs) = (strings("inputs")?, strings("outputs")?);
    if inputs.len() != outputs.len() {
        return Err(Error::invalid("input_output has as many inputs as outputs"));
    }
    let code = ev.best_code(&sub.completion, "python", &sub.config).await?;
    let fn_name = spec
        .get("fn_name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty());
    let (program, same): (String, fn(&str, &str) -> bool) = match fn_name {
        Some(name) => (format!("{PRELUDE}{code}\n{}", driver(name)), same_result),
        None => (format!("{PRELUDE}{code}"), same_lines),
    };
    let cases = inputs
        .into_iter()
        .zip(outputs)
        .map(|(stdin, stdout)| Case {
            raw: serde_json::json!({"input": {"stdin": stdin}, "output": {"stdout": stdout}}),
            stdin,
            stdout,
        })
        .collect();
    let run = RunRequest {
        code: program.clone(),
        ..super::default_run(sub.config.run_timeout_or(6.0))
    };
    let tests = stdio::run_cases(ev, &run, cases, same, &sub.config).await?;
    Ok(Verdict {
        accepted: tests.iter().all(|t| t.passed),
        extracted_code: code,
        full_code: Some(program),
        test_code: fn_name.map(driver),
        tests,
        extracted_type: None,
        extra: None,
    })
}

/// The code after a function problem's solution: call it with stdin's lines as arguments,
/// what it prints kept apart, and print the JSON of its result (a tuple as a list).
fn driver(fn_name: &str) -> String {
    format!(
        r#"
def _cella_call():
    import io as _io, json as _json, sys as _sys
    args = [_json.loads(line) for line in _sys.stdin.read().split("\n") if line.strip()]
    target = globals().get("Solution")
    fn = getattr(target(), {fn_name:?}) if target is not None and hasattr(target, {fn_name:?}) else globals()[{fn_name:?}]
    out, _sys.stdout = _sys.stdout, _io.StringIO()
    try:
        result = fn(*args)
    finally:
        _sys.stdout = out
    if isinstance(result, tuple):
        result = list(result)
    print("\n{RESULT_MARK}" + _json.dumps(result))
_cella_call()
"#
    )
}

/// A function's printed result against the expected JSON; numbers compare by value (`1` is
/// `1.0`), as Python's `==` compares them.
fn same_result(stdout: &str, expected: &str) -> bool {
    let Some(result) = stdout.rsplit_once(RESULT_MARK).map(|(_, r)| r.trim()) else {
        return false;
    };
    match (
        serde_json::from_str::<Value>(result),
        serde_json::from_str::<Value>(expected.trim()),
    ) {
        (Ok(a), Ok(e)) => json_equal(&a, &e),
        _ => false,
    }
}

fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Bool(x), Value::Number(y)) | (Value::Number(y), Value::Bool(x)) => {
            y.as_f64() == Some(f64::from(u8::from(*x)))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_equal(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

/// Standard output against the expected, as LiveCodeBench's harness accepts it: equal once
/// stripped, line by line stripped, token by token, or as numbers within 1e-6.
fn same_lines(actual: &str, expected: &str) -> bool {
    if actual.trim() == expected.trim() {
        return true;
    }
    let lines =
        |s: &str| -> Vec<String> { s.trim().lines().map(|l| l.trim().to_string()).collect() };
    if lines(actual) == lines(expected) {
        return true;
    }
    let (a, e): (Vec<&str>, Vec<&str>) = (
        actual.split_whitespace().collect(),
        expected.split_whitespace().collect(),
    );
    a.len() == e.len()
        && a.iter().zip(&e).all(|(a, e)| {
            a == e || matches!((a.parse::<f64>(), e.parse::<f64>()), (Ok(x), Ok(y)) if (x - y).abs() <= 1e-6 * y.abs().max(1.0))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_and_lines() {
        let out = format!("debug\n\n{RESULT_MARK}[1, 2.0]\n");
        assert!(same_result(&out, "[1.0, 2]"));
        assert!(!same_result(&out, "[1, 3]"));
        assert!(!same_result("[1, 2]", "[1, 2]"));
        assert!(same_result(&format!("{RESULT_MARK}true"), "true"));
        assert!(same_lines("1 2\n3\n", "1 2\n3"));
        assert!(same_lines("1  2 3", "1 2\n3"));
        assert!(same_lines("0.3333333", "0.33333333"));
        assert!(!same_lines("Yes", "yes"));
    }
}
