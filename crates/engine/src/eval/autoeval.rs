//! FullStackBench-style problems (`AutoEvalDataset`): a row's `labels` name the
//! `programming_language` (what the completion is written in) and the `execution_language`
//! (how it runs: `python`, `pytest`, `jest`, `junit`, ...); its `test` holds the test `code`,
//! with `#<INSERT>` where the solution goes (else the solution comes first), and `asset`, files
//! (base64) written beside it. Java solutions are split into one file per top-level type and
//! run under JUnit with the test's classes.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use regex::Regex;
use serde_json::{Map, Value, json};

use super::extract;
use super::{EvalConfig, Evaluator, Prompt, Row, Submission, Verdict, field, json_field, labels};
use crate::error::{Error, Result};
use crate::run::RunRequest;

const INSERT: &str = "#<INSERT>";
const JEST_REPORT: &str = "jest-report.json";

pub fn prompt(row: Row, config: &EvalConfig) -> Result<Prompt> {
    let labels = labels(&row)?;
    let question = field(&row, "content")?.as_str().unwrap_or_default();
    let option = |name: &str| -> Option<String> {
        let v = config.extra.get(name).or_else(|| labels.get(name));
        v.and_then(Value::as_str).map(str::to_string)
    };
    let context = option("context");
    let fewshot = if config.is_fewshot {
        option("fewshot")
    } else {
        None
    };
    if config.is_fewshot && fewshot.is_none() {
        let id = row.get("id").map(Value::to_string).unwrap_or_default();
        return Err(Error::invalid(format!("Missing fewshot for id {id}")));
    }
    let prompt = match option("prompt_template") {
        Some(template) => substitute(
            &template,
            &[
                ("question", question),
                ("fewshot", fewshot.as_deref().unwrap_or_default()),
                ("context", context.as_deref().unwrap_or_default()),
                ("locale", config.locale.as_deref().unwrap_or("None")),
            ],
        ),
        None => {
            let (q, a) = if config.locale() == "zh" {
                ("问题：", "答案：")
            } else {
                ("Question:", "Answer:")
            };
            let sep = "----------------";
            match (context, fewshot) {
                (Some(c), Some(f)) => format!("{c}\n\n{sep}\n\n{f}\n\n{q}{question}\n\n{a}\n"),
                (Some(c), None) => format!("{c}\n\n{q}{question}\n\n{a}\n"),
                (None, Some(f)) => format!("{f}\n\n{q}{question}\n\n{a}\n"),
                (None, None) => question.to_string(),
            }
        }
    };
    Ok(Prompt {
        id: field(&row, "id")?.clone(),
        prompt,
        labels,
    })
}

/// Python's `string.Template.safe_substitute`: `$name` and `${name}` of the given names
/// replaced, `$$` a dollar, anything else left as it is.
fn substitute(template: &str, values: &[(&str, &str)]) -> String {
    static PLACEHOLDER: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"\$(?:(\$)|([_a-zA-Z][_a-zA-Z0-9]*)|\{([_a-zA-Z][_a-zA-Z0-9]*)\})").unwrap()
    });
    PLACEHOLDER
        .replace_all(template, |c: &regex::Captures| {
            if c.get(1).is_some() {
                return "$".to_string();
            }
            let name = c.get(2).or(c.get(3)).unwrap().as_str();
            values
                .iter()
                .find(|(n, _)| *n == name)
                .map_or_else(|| c[0].to_string(), |(_, v)| v.to_string())
        })
        .into_owned()
}

pub async fn grade(ev: &Evaluator, sub: &Submission, row: Row) -> Result<Verdict> {
    let labels = labels(&row)?;
    let test = json_field(&row, "test")?;
    let test_code = test.get("code").and_then(Value::as_str).unwrap_or_default();
    let mut assets = assets(&test)?;
    let language = labels
        .get("programming_language")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::invalid("the row's labels have no programming_language"))?;
    let execution = labels
        .get("execution_language")
        .and_then(Value::as_str)
        .unwrap_or(language);
    let compile_timeout = sub.config.compile_timeout_or(40.0);
    let run_timeout = sub.config.run_timeout_or(20.0);

    let (code, full_code, mut run) = if language == "java" {
        let pieces = java_code(&sub.completion);
        let (mut files, test_file) = java_files(&pieces, test_code);
        let full: String = files
            .iter()
            .map(|(name, text)| format!("// {name}\n\n{text}\n\n"))
            .collect();
        // The test class is the program compiled; javac finds the solution's classes beside it.
        let program = test_file
            .and_then(|name| files.remove(&name))
            .unwrap_or_default();
        assets.extend(files.into_iter().map(|(n, t)| (n, t.into_bytes())));
        (
            pieces.join("\n\n"),
            full,
            RunRequest {
                language: "junit".into(),
                code: program,
                ..super::default_run(run_timeout)
            },
        )
    } else {
        let code = extract::without_entry_point(
            &extract::best_block(&sub.completion, language, Vec::new()),
            language,
        );
        let full = if language == "html" && !test_code.contains(INSERT) {
            assets.insert("index.html".into(), code.clone().into_bytes());
            test_code.to_string()
        } else {
            with_tests(&code, test_code, sub.config.flag("repr_code"))
        };
        let full = if matches!(execution, "go" | "go_test") {
            super::family::merge_go_headers(&full)
        } else {
            full
        };
        let fetch_files = if execution == "jest" {
            vec![JEST_REPORT.into()]
        } else {
            Vec::new()
        };
        let run = RunRequest {
            language: execution.into(),
            code: full.clone(),
            fetch_files,
            ..super::default_run(run_timeout)
        };
        (code, full, run)
    };
    run.compile_timeout = compile_timeout;
    run.files = assets.into_iter().collect();
    // `append_flag`: the program must print a flag last, proof its tests were not cut short.
    let mut verdict = if sub.config.flag("append_flag") && execution == "python" {
        ev.run_to_end(run, code).await?
    } else {
        let outcome = ev.run(run).await?;
        Verdict::of_run(code, full_code, outcome)
    };
    let report = verdict.tests[0]
        .outcome
        .fetched
        .files
        .iter()
        .find(|(n, _)| n == JEST_REPORT);
    let mut extra = Map::new();
    if let Some((_, report)) = report {
        extra.insert("jest_cases".into(), Value::Array(jest_cases(report)));
    }
    verdict.extra = Some(extra);
    Ok(verdict)
}

/// The test's assets: a map of names to base64 contents (or a JSON string of one).
fn assets(test: &Value) -> Result<BTreeMap<String, Vec<u8>>> {
    let asset = match test.get("asset") {
        Some(Value::String(s)) => {
            serde_json::from_str(s).map_err(|e| Error::invalid(format!("test.asset: {e}")))?
        }
        Some(v @ Value::Object(_)) => v.clone(),
        _ => json!({}),
    };
    let Value::Object(files) = asset else {
        return Err(Error::invalid("test.asset is not a map of files"));
    };
    files
        .into_iter()
        .map(|(name, content)| {
            let text = content.as_str().unwrap_or_default();
            let bytes = B64
                .decode(text.trim())
                .map_err(|e| Error::invalid(format!("asset {name} is not base64: {e}")))?;
            Ok((name, bytes))
        })
        .collect()
}

/// The solution placed in the test at `#<INSERT>` (as a Python string literal with
/// `repr_code`), or before the test with any `if __name__ ==` block of its own cut off.
fn with_tests(code: &str, test: &str, repr_code: bool) -> String {
    let quote = |c: &str| {
        if repr_code {
            python_repr(c)
        } else {
            c.to_string()
        }
    };
    match test.split_once(INSERT) {
        Some((before, after)) => {
            let after = after.split(INSERT).next().unwrap_or_default();
            format!("{before}{}{after}", quote(code))
        }
        None => {
            let code = code.split("if __name__ ==").next().unwrap_or_default();
            format!("{}\n{test}", quote(code))
        }
    }
}

/// Python's `repr` of a string.
fn python_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::from(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Each case of a jest JSON report: passed, names, file and failure messages.
fn jest_cases(report: &[u8]) -> Vec<Value> {
    let Ok(report) = serde_json::from_slice::<Value>(report) else {
        return Vec::new();
    };
    let suites = report["testResults"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    suites
        .iter()
        .flat_map(|suite| {
            // Jest's `--json` report names them `name` and `assertionResults`; its reporters'
            // own results, which SandboxFusion read, `testFilePath` and `testResults`.
            let file = suite.get("testFilePath").unwrap_or(&suite["name"]).clone();
            let cases = (suite.get("testResults").or(suite.get("assertionResults")))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            cases.into_iter().map(move |case| {
                let ancestors: Vec<&str> = case["ancestorTitles"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                json!({
                    "passed": case["status"] == "passed",
                    "full_name": case["fullName"],
                    "file": file,
                    "suite": ancestors.join(" > "),
                    "test": case["title"],
                    "failure_messages": case["failureMessages"],
                })
            })
        })
        .collect()
}

static JAVA_TAGGED: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?s)\[Java\](.*?)\[/Java\]").unwrap());
static JAVA_BLOCK: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?s)```java[\n\r](.*?)[\n\r]```").unwrap());
static JAVA_BLOCK_ANY: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?s)```java.*?```").unwrap());
static JAVA_BLOCK_ALT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?s)```Java(.*?)```").unwrap());
static JAVA_BLOCK_ALT_ANY: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?s)```Java.*?```").unwrap());
static GENERIC_BLOCK: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?s)```[\n\r](.*?)[\n\r]```").unwrap());

/// The Java code of a completion, as NaturalCodeBench finds it: `[Java]` tags, else fenced
/// blocks (java, Java, untagged), else the text from an `import`, `public`, `interface` or
/// `class` to the first `}}`; `NaN` when none is found.
fn java_code(completion: &str) -> Vec<String> {
    let first = |re: &str| {
        Regex::new(re)
            .ok()
            .and_then(|r| r.find(completion).map(|m| vec![m.as_str().to_string()]))
    };
    let captures = |re: &Regex, text: &str| -> Vec<String> {
        re.captures_iter(text).map(|c| c[1].to_string()).collect()
    };
    let found = if completion.contains("[Java]") {
        JAVA_TAGGED
            .captures(completion)
            .map(|c| vec![c[1].to_string()])
    } else if ["```java", "```Java", "```"]
        .iter()
        .any(|f| completion.contains(f))
    {
        let mut code = captures(&JAVA_BLOCK, completion);
        let rest = JAVA_BLOCK_ANY.replace_all(completion, "");
        code.extend(captures(&JAVA_BLOCK_ALT, &rest));
        let rest = JAVA_BLOCK_ALT_ANY.replace_all(&rest, "");
        code.extend(captures(&GENERIC_BLOCK, &rest));
        Some(code)
    } else if completion.contains("import ") {
        first(r"(?s)import\s(.*?)\}\}")
    } else {
        let starts = [
            ("public ", r"(?s)public\s(.*?)\}\}"),
            ("interface ", r"(?s)interface\s(.*?)\}\}"),
            ("class ", r"(?s)class\s(.*?)\}\}"),
        ];
        let earliest = starts
            .iter()
            .filter_map(|(k, re)| completion.find(k).map(|at| (at, re)))
            .min_by_key(|(at, _)| *at);
        earliest.and_then(|(_, re)| first(re))
    };
    found.unwrap_or_else(|| vec!["NaN".into()])
}

static JAVA_IMPORT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?m)(\n|^)(import .*?)\n").unwrap());
static JAVA_TYPES: LazyLock<[(Regex, Regex); 3]> = LazyLock::new(|| {
    let pair = |body: &str, name: &str| (Regex::new(body).unwrap(), Regex::new(name).unwrap());
    [
        pair(
            r"(?s)((@.*?)?(\n[^\n]*)?interface .*?[;}]\s*\n+\})",
            r"(?s)interface (.*?)\s",
        ),
        pair(
            r"(?s)((@.*?)?(\n[^\n]*)?class .*?[;}]\s*\n+\})",
            r"(?s)class (.*?)\s",
        ),
        pair(
            r"(?s)((@.*?)?(\n[^\n]*)?enum .*?[;}]?\s*\n+\})",
            r"(?s)enum (.*?)\s",
        ),
    ]
});

/// One file per top-level interface, class and enum of the solution and the test, each with
/// JUnit's imports and its own piece's imports; and the name of the test's first file.
fn java_files(code: &[String], test: &str) -> (BTreeMap<String, String>, Option<String>) {
    let mut files = BTreeMap::new();
    let mut test_file = None;
    for (index, piece) in code.iter().map(String::as_str).chain([test]).enumerate() {
        let piece = format!("\n{piece}");
        let imports: Vec<&str> = JAVA_IMPORT
            .captures_iter(&piece)
            .map(|c| c.get(2).unwrap().as_str())
            .collect();
        for (body, name) in JAVA_TYPES.iter() {
            for item in body.captures_iter(&piece) {
                let item = &item[1];
                let Some(type_name) = name.captures(item).map(|c| c[1].to_string()) else {
                    continue;
                };
                let text = format!(
                    "import org.junit.jupiter.api.Test;\nimport static org.junit.jupiter.api.Assertions.*;\n{}\n{item}\n",
                    imports.join("\n")
                );
                let file = format!("{type_name}.java");
                if index == code.len() && test_file.is_none() {
                    test_file = Some(file.clone());
                }
                files.insert(file, text);
            }
        }
    }
    (files, test_file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_and_inserts() {
        assert_eq!(
            substitute(
                "Q: $question ${context} $$ $other",
                &[("question", "a"), ("context", "b")]
            ),
            "Q: a b $ $other"
        );
        assert_eq!(
            with_tests("x = 1", "before\n#<INSERT>\nafter", false),
            "before\nx = 1\nafter"
        );
        assert_eq!(
            with_tests("x = 1\nif __name__ == '__main__':\n  run()", "t()", false),
            "x = 1\n\nt()"
        );
        assert_eq!(with_tests("a'b\n", "s = #<INSERT>", true), "s = \"a'b\\n\"");
        assert_eq!(python_repr("it's \"x\""), "'it\\'s \"x\"'");
    }

    #[test]
    fn java_pieces_become_files() {
        let completion = "Here:\n```java\nimport java.util.List;\npublic class Solution {\n    int f() { return 1; }\n}\n```";
        let code = java_code(completion);
        assert_eq!(code.len(), 1);
        let (files, test) = java_files(
            &code,
            "public class SolutionTest {\n    @Test\n    void t() {}\n}",
        );
        assert!(files["Solution.java"].contains("import java.util.List;"));
        assert_eq!(test.as_deref(), Some("SolutionTest.java"));
        assert!(files.contains_key("SolutionTest.java"));
        assert_eq!(java_code("nothing"), vec!["NaN".to_string()]);
    }
}
