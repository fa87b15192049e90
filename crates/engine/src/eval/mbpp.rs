//! MBPP (`MBPPDataset`): a row's `content` (the task) and `test_list` (asserts), with
//! `labels.test_setup_code`. The completion is cut at `[DONE]`, its first code block taken and
//! cut before any `assert` or docstring it goes on with; the program is the setup code, the
//! code and every assert (only the last when few-shot, the others having been in the prompt).

use serde_json::Value;

use super::extract;
use super::{EvalConfig, Evaluator, Prompt, Row, Submission, Verdict, field, json_field, labels};
use crate::error::{Error, Result};
use crate::run::RunRequest;

/// MBPP's own three worked examples (tasks 2, 3 and 4), before a few-shot prompt's task.
const FEWSHOT: &str = "You are an expert Python programmer, and here is your task: Write a function to find the similar elements from the given two tuple lists. Your code should pass these tests:\n\nassert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)\nassert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)\nassert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)\n[BEGIN]\ndef similar_elements(test_tup1, test_tup2):\r\n  res = tuple(set(test_tup1) & set(test_tup2))\r\n  return (res)\n[DONE]\nYou are an expert Python programmer, and here is your task: Write a python function to identify non-prime numbers. Your code should pass these tests:\n\nassert is_not_prime(2) == False\nassert is_not_prime(10) == True\nassert is_not_prime(35) == True\n[BEGIN]\nimport math\r\ndef is_not_prime(n):\r\n    result = False\r\n    for i in range(2,int(math.sqrt(n)) + 1):\r\n        if n % i == 0:\r\n            result = True\r\n    return result\n[DONE]\nYou are an expert Python programmer, and here is your task: Write a function to find the largest integers from a given list of numbers using heap queue algorithm. Your code should pass these tests:\n\nassert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],3)==[85, 75, 65] \nassert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],2)==[85, 75]\nassert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],5)==[85, 75, 65, 58, 35]\n[BEGIN]\nimport heapq as hq\r\ndef heap_queue_largest(nums,n):\r\n  largest_nums = hq.nlargest(n, nums)\r\n  return largest_nums\n[DONE]\n";

fn tests(row: &Row) -> Result<Vec<String>> {
    match json_field(row, "test_list")? {
        Value::Array(t) => Ok(t
            .iter()
            .map(|s| s.as_str().unwrap_or_default().to_string())
            .collect()),
        _ => Err(Error::invalid("the row's test_list is not a list")),
    }
}

pub fn prompt(row: Row, config: &EvalConfig) -> Result<Prompt> {
    let tests = tests(&row)?;
    let content = field(&row, "content")?.as_str().unwrap_or_default();
    let task = "You are an expert Python programmer, and here is your task:";
    let prompt = if config.is_fewshot {
        let shown = tests.iter().take(2).cloned().collect::<Vec<_>>().join("\n");
        format!(
            "{FEWSHOT}{task} {content} Your code should pass these tests:\n\n{shown}\n[BEGIN]\n"
        )
    } else {
        format!(
            "{task} {content} Your code should pass these tests:\n\n{}",
            tests.join("\n")
        )
    };
    Ok(Prompt {
        id: field(&row, "id")?.clone(),
        prompt,
        labels: labels(&row)?,
    })
}

pub async fn grade(ev: &Evaluator, sub: &Submission, row: Row) -> Result<Verdict> {
    let tests = tests(&row)?;
    let setup = labels(&row)?
        .get("test_setup_code")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let mut code = format!("{setup}\n{}", solution(&sub.completion));
    if let Some(at) = code.find("if __name__ ==") {
        code.truncate(at);
    }
    let mut full = code.clone();
    let asserts = if sub.config.is_fewshot {
        &tests[tests.len().saturating_sub(1)..]
    } else {
        &tests[..]
    };
    for test in asserts {
        full.push_str(&format!("\n{test}\n"));
    }
    let req = RunRequest {
        code: full,
        ..super::default_run(sub.config.run_timeout_or(20.0))
    };
    ev.run_to_end(req, code).await
}

/// The code of an MBPP completion (SandboxFusion's `postprocess_completion`).
fn solution(completion: &str) -> String {
    let completion = completion.split("[DONE]").next().unwrap_or_default();
    let (mut code, _) = extract::freeform(completion, "python", true);
    for stop in ["\nassert", "\n\"\"\""] {
        if let Some(at) = code.find(stop) {
            code.truncate(at);
        }
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_solution_is_cut_at_done_and_asserts() {
        let c = "```python\ndef f(x):\n    return x\nassert f(1) == 1\n```\n[DONE] more";
        assert_eq!(solution(c), "def f(x):\n    return x");
        assert_eq!(
            solution("def f():\n    return 2\n[DONE]\n```python\nx\n```"),
            "def f():\n    return 2\n"
        );
    }
}
