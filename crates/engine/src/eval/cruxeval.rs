//! CRUXEval (`CruxEvalDataset`): a row's Python function `code`, an `input` and the `output`
//! it gives. In `output` mode the model predicts the output of `f(input)`, in `input` mode an
//! input that gives the output; either way the answer (inside `[ANSWER]` tags, or an
//! `assert f(...) == ...` line) becomes an assert run after the function.

use std::time::Duration;

use serde_json::{Map, Value, json};

use super::{EvalConfig, Evaluator, Prompt, Row, Submission, Verdict, field, text};
use crate::error::{Error, Result};
use crate::run::RunRequest;

const OUTPUT_PROMPT: &str = "You are given a Python function and an assertion containing an input to the function. Complete the assertion with a literal (no unsimplified expressions, no function calls) containing the output when executing the provided code on the given input, even if the function is incorrect or incomplete. Do NOT output any extra information. Provide the full assertion with the correct output in [ANSWER] and [/ANSWER] tags, following the examples.\n\n[PYTHON]\ndef f(n):\n    return n\nassert f(17) == ??\n[/PYTHON]\n[ANSWER]\nassert f(17) == 17\n[/ANSWER]\n\n[PYTHON]\ndef f(s):\n    return s + \"a\"\nassert f(\"x9j\") == ??\n[/PYTHON]\n[ANSWER]\nassert f(\"x9j\") == \"x9ja\"\n[/ANSWER]\n\n[PYTHON]\n{code}\nassert f({input}) == ??\n[/PYTHON]\n[ANSWER]\n";

const INPUT_PROMPT: &str = "You will be given a function f and an output in the form f(??) == output. Find any input such that executing f on the input leads to the given output. There may be multiple answers, but you should only output one. In [ANSWER] and [/ANSWER] tags, complete the assertion with one such input that will produce the output when executing the function.\n\n[PYTHON]\ndef f(my_list):\n    count = 0\n    for i in my_list:\n        if len(i) % 2 == 0:\n            count += 1\n    return count\nassert f(??) == 3\n[/PYTHON]\n[ANSWER]\nassert f([\"mq\", \"px\", \"zy\"]) == 3\n[/ANSWER]\n\n[PYTHON]\ndef f(s1, s2):\n    return s1 + s2\nassert f(??) == \"banana\"\n[/PYTHON]\n[ANSWER]\nassert f(\"ba\", \"nana\") == \"banana\"\n[/ANSWER]\n\n[PYTHON]\n{code}\nassert f(??) == {output}\n[/PYTHON]\n[ANSWER]\n";

const PHIND_OUTPUT_PROMPT: &str = "Based on the given Python code, which may contain errors, complete the assert statement with the output when executing the code on the given test case. Do NOT output any extra information, even if the function is incorrect or incomplete. Output \"# done\" after the assertion.\n\ndef f(n):\n    return n\nassert f(17) == 17 # done\n\ndef f(s):\n    return s + \"a\"\nassert f(\"x9j\") == \"x9ja\" # done\n\n{code}\nassert f({input}) ==";

const WRAP_INSTRUCTION: &str = "Please respond in English and use Markdown format.####Instruction:";
const WRAP_RESPONSE: &str = "Response:";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Input,
    Output,
}

impl Mode {
    fn of(v: &Value) -> Result<Mode> {
        match v.as_str() {
            Some("input") => Ok(Mode::Input),
            Some("output") => Ok(Mode::Output),
            _ => Err(Error::invalid(format!("Invalid code_mode: {v}"))),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Input => "input",
            Mode::Output => "output",
        }
    }
}

/// Prompts in one mode (`extra.mode`), or every row's input prompt then every output one.
pub fn prompts(rows: Vec<Row>, config: &EvalConfig) -> Result<Vec<Prompt>> {
    let modes = match config.extra.get("mode") {
        Some(m) if super::truthy(m) => vec![Mode::of(m)?],
        _ => vec![Mode::Input, Mode::Output],
    };
    let mut prompts = Vec::new();
    for mode in modes {
        for row in &rows {
            prompts.push(prompt_in(row, config, mode)?);
        }
    }
    Ok(prompts)
}

/// A row's prompt in `extra.mode`, `output` by default.
pub fn prompt(row: Row, config: &EvalConfig) -> Result<Prompt> {
    let mode = config
        .extra
        .get("mode")
        .map_or(Ok(Mode::Output), Mode::of)?;
    prompt_in(&row, config, mode)
}

fn prompt_in(row: &Row, config: &EvalConfig, mode: Mode) -> Result<Prompt> {
    if config.flag("use_cot") {
        return Err(Error::invalid(
            "CRUXEval's chain-of-thought prompts (extra.use_cot) are not provided here: \
             send the direct prompt's answer, or make the prompt yourself",
        ));
    }
    let code = text(row, "code")?;
    let template = match mode {
        Mode::Input => INPUT_PROMPT.replace("{output}", text(row, "output")?),
        Mode::Output if config.flag("phind_output") => {
            PHIND_OUTPUT_PROMPT.replace("{input}", text(row, "input")?)
        }
        Mode::Output => OUTPUT_PROMPT.replace("{input}", text(row, "input")?),
    };
    let mut prompt = template.replace("{code}", code);
    if config.flag("coding_wrap_prompt") {
        prompt = format!("{WRAP_INSTRUCTION}\n{prompt}\n{WRAP_RESPONSE}\n");
    }
    let labels: Map<String, Value> = [("mode".to_string(), json!(mode.name()))]
        .into_iter()
        .collect();
    Ok(Prompt {
        id: field(row, "id")?.clone(),
        prompt,
        labels,
    })
}

pub async fn grade(ev: &Evaluator, sub: &Submission, row: Row) -> Result<Verdict> {
    let mode = Mode::of(sub.config.extra.get("mode").unwrap_or(&Value::Null))?;
    let answer = answer(&sub.completion, mode);
    let code = text(&row, "code")?;
    let full = match mode {
        Mode::Input => format!("{code}\nassert {answer} == {}", text(&row, "output")?),
        Mode::Output => format!("{code}\nassert {answer} == f({})", text(&row, "input")?),
    };
    let req = RunRequest {
        code: full,
        compile_timeout: Duration::from_secs(30),
        ..super::default_run(Duration::from_secs(30))
    };
    ev.run_to_end(req, answer).await
}

/// The answer in a completion: before `# done` or `[/ANSWER]`, after `[ANSWER]`; of an
/// `assert f(...) == ...` line, the call (input mode) or the value (output mode).
fn answer(completion: &str, mode: Mode) -> String {
    let mut answer = completion.to_string();
    for stop in ["# done", "[/ANSWER]"] {
        answer = answer.split(stop).next().unwrap_or_default().to_string();
    }
    if answer.contains("[ANSWER]") {
        answer = answer
            .split("[ANSWER]")
            .nth(1)
            .unwrap_or_default()
            .trim()
            .to_string();
    }
    if let Some(call) = answer.split("assert f").nth(1) {
        answer = format!("f{}", call.trim());
    }
    if answer.contains("==") {
        let side = match mode {
            Mode::Input => 0,
            Mode::Output => 1,
        };
        answer = answer
            .split("==")
            .nth(side)
            .unwrap_or_default()
            .trim()
            .to_string();
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        assert_eq!(
            answer("[ANSWER]\nassert f(17) == 17\n[/ANSWER]", Mode::Output),
            "17"
        );
        assert_eq!(
            answer("[ANSWER]assert f([1, 2]) == 3[/ANSWER]", Mode::Input),
            "f([1, 2])"
        );
        assert_eq!(answer(" \"x9ja\" # done", Mode::Output), " \"x9ja\" ");
        assert_eq!(answer("[ANSWER]\nf('a')\n[/ANSWER]", Mode::Input), "f('a')");
    }
}
