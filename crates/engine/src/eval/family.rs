//! HumanEval and MultiPL-E (`HumanEvalDataset`, `MultiPLEDataset`): a row holds a `prompt` (a
//! signature and docstring), `tests` and `stop_tokens`; the program is the prompt, the
//! completion cut at its stop tokens, and the tests. With `extra.is_freeform` the completion is
//! a chat answer instead, its code extracted and the prompt left out. HumanEval's own layout
//! (`test`, `entry_point`, no `tests`) is Python, run with `check(entry_point)`.
//!
//! The two classes differ only in data: which dataset ids they know, the language each one is
//! extracted as and run as, and which are graded as whole functions when freeform.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

use super::extract;
use super::{EvalConfig, Evaluator, Prompt, Row, Submission, Verdict, text};
use crate::error::{Error, Result};
use crate::run::RunRequest;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    HumanEval,
    MultiPle,
}

/// One dataset id: its class, the language its code is extracted as, the language it runs
/// as, and whether a freeform completion is taken as whole functions (its first block by
/// priority) rather than as the first fenced block cut at the stop tokens.
struct Set {
    id: &'static str,
    kind: Kind,
    extract: &'static str,
    run: &'static str,
    whole_functions: bool,
}

const fn set(
    id: &'static str,
    kind: Kind,
    extract: &'static str,
    run: &'static str,
    whole: bool,
) -> Set {
    Set {
        id,
        kind,
        extract,
        run,
        whole_functions: whole,
    }
}

use Kind::{HumanEval as H, MultiPle as M};

const SETS: &[Set] = &[
    set("multiple_cpp", M, "cpp", "cpp", false),
    set("multiple_ts", M, "typescript", "typescript", true),
    set("multiple_sh", M, "bash", "bash", false),
    set("multiple_cs", M, "csharp", "csharp", false),
    set("multiple_go", M, "go", "go_test", true),
    set("multiple_java", M, "java", "java", false),
    set("multiple_lua", M, "lua", "lua", true),
    set("multiple_js", M, "js", "nodejs", true),
    set("multiple_php", M, "php", "php", true),
    set("multiple_pl", M, "perl", "perl", true),
    set("multiple_rkt", M, "racket", "racket", true),
    set("multiple_r", M, "r", "R", true),
    set("multiple_rs", M, "rust", "rust", false),
    set("multiple_scala", M, "scala", "scala", false),
    set("multiple_swift", M, "swift", "swift", false),
    set("multiple_rb", M, "ruby", "ruby", true),
    set("multiple_d", M, "d", "D_ut", true),
    set("multiple_jl", M, "julia", "julia", true),
    set("humaneval_python", H, "python", "python", true),
    set("humaneval_cpp", H, "cpp", "cpp", false),
    set("humaneval_typescript", H, "typescript", "typescript", true),
    set("humaneval_bash", H, "bash", "bash", false),
    set("humaneval_csharp", H, "csharp", "csharp", false),
    set("humaneval_go", H, "go", "go_test", true),
    set("humaneval_java", H, "java", "java", false),
    set("shadow_humaneval_python", H, "python", "python", true),
    // Rows name their own language; long tests.
    set("bigcodebench", H, "", "", false),
];

pub fn registered(dataset: &str) -> Option<Kind> {
    SETS.iter().find(|s| s.id == dataset).map(|s| s.kind)
}

pub fn ids() -> impl Iterator<Item = &'static str> {
    SETS.iter().map(|s| s.id)
}

/// Lines put before every program of a language (the imports its tests take for granted).
fn import_helper(language: &str) -> &'static [&'static str] {
    match language {
        "python" => &[
            "import math",
            "import re",
            "import sys",
            "import copy",
            "import datetime",
            "import itertools",
            "import collections",
            "import heapq",
            "import statistics",
            "import functools",
            "import hashlib",
            "import numpy",
            "import numpy as np",
            "import string",
            "from typing import *",
            "from collections import *",
        ],
        "cpp" => &[
            "using namespace std;",
            "#include<optional>",
            "#include<cassert>",
            "#include<stdlib.h>",
            "#include<algorithm>",
            "#include<cmath>",
            "#include<math.h>",
            "#include<numeric>",
            "#include<stdio.h>",
            "#include<vector>",
            "#include<set>",
            "#include<map>",
            "#include<queue>",
            "#include<stack>",
            "#include<list>",
            "#include<deque>",
            "#include<boost/any.hpp>",
            "#include<string>",
            "#include<climits>",
            "#include<cstring>",
            "#include<iostream>",
            "#include<sstream>",
            "#include<fstream>",
        ],
        "java" => &[
            "import java.util.*;",
            "import java.lang.reflect.*;",
            "import org.javatuples.*;",
            "import java.security.*;",
            "import java.math.*;",
            "import java.io.*;",
            "import java.util.stream.*;",
        ],
        "csharp" => &[
            "using System;",
            "using System.Numerics;",
            "using System.Diagnostics;",
            "using System.Collections.Generic;",
            "using System.Linq;",
            "using System.Text;",
            "using System.Security.Cryptography;",
            "using System.Collections.Generic;",
        ],
        "go" => &["import (\"fmt\")"],
        "d" => &["import std.array;", "import std.algorithm;"],
        _ => &[],
    }
}

/// What ends a function body in a language whose completions run on past it.
fn end_tokens(language: &str) -> &'static [&'static str] {
    match language {
        "julia" | "lua" | "ruby" => &["\nend"],
        "cpp" | "csharp" | "typescript" | "perl" | "r" | "d" | "go" | "js" | "php" => &["\n}"],
        _ => &[],
    }
}

/// HumanEval's own stop: a line that starts at column 0 (the function's body has ended).
const HUMANEVAL_STOP: &str = r"re:\n(?!\s|\n)(?=.|\n)";

/// A row of one of the two layouts, as the grading reads it.
struct Problem {
    prompt: String,
    tests: String,
    stop_tokens: Vec<String>,
    /// HumanEval's own layout: the tests define `check`, which must be called.
    entry_point: Option<String>,
    language: Option<String>,
}

impl Problem {
    fn of(row: &Row) -> Result<Problem> {
        let prompt = text(row, "prompt")?.to_string();
        let language = row
            .get("language")
            .and_then(Value::as_str)
            .map(str::to_string);
        if row.contains_key("tests") {
            let stop_tokens = match row.get("stop_tokens") {
                Some(Value::Array(t)) => t
                    .iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect(),
                Some(Value::String(s)) => serde_json::from_str(s).unwrap_or_default(),
                _ => Vec::new(),
            };
            return Ok(Problem {
                prompt,
                tests: text(row, "tests")?.to_string(),
                stop_tokens,
                entry_point: None,
                language,
            });
        }
        Ok(Problem {
            prompt,
            tests: text(row, "test")?.to_string(),
            stop_tokens: vec![HUMANEVAL_STOP.to_string()],
            entry_point: Some(text(row, "entry_point")?.to_string()),
            language: Some("python".into()),
        })
    }
}

/// The languages a dataset's code is extracted and run as.
fn languages(kind: Kind, dataset: &str, row_language: Option<&str>) -> (String, String) {
    let default = match kind {
        Kind::HumanEval => "python",
        Kind::MultiPle => "cpp",
    };
    let row = row_language.unwrap_or(default);
    let row = row.split('.').next().unwrap_or(row);
    match SETS
        .iter()
        .find(|s| s.id == dataset && !s.extract.is_empty())
    {
        Some(s) => (s.extract.to_string(), s.run.to_string()),
        None => (row.to_string(), row.to_string()),
    }
}

pub fn prompt(kind: Kind, dataset: &str, row: Row, config: &EvalConfig) -> Result<Prompt> {
    let mut prompt = text(&row, "prompt")?.to_string();
    if config.flag("is_freeform") {
        let language = row.get("language").and_then(Value::as_str);
        let (language, _) = languages(kind, dataset, language.or(Some("python")));
        let instruction = if config.locale() == "zh" {
            "请按照docstring的要求补全如上代码，写出完整的代码，代码要用markdown语法包裹。代码不要包含`Main`函数"
        } else {
            "Please complete the above code according to the requirements in the docstring. \
             Write the complete code and wrap it in markdown syntax. The code should not \
             contain `Main` function."
        };
        prompt = format!("```{language}\n{prompt}\n```\n\n{instruction}");
    }
    let id = row
        .get("task_id")
        .or_else(|| row.get("name"))
        .cloned()
        .unwrap_or(Value::Null);
    let labels = row.into_iter().filter(|(k, _)| k != "prompt").collect();
    Ok(Prompt { id, prompt, labels })
}

pub async fn grade(ev: &Evaluator, kind: Kind, sub: &Submission, row: Row) -> Result<Verdict> {
    let problem = Problem::of(&row)?;
    let (language, run_language) = languages(kind, &sub.dataset, problem.language.as_deref());
    let whole_functions = SETS
        .iter()
        .find(|s| s.id == sub.dataset)
        .is_some_and(|s| s.whole_functions)
        || (kind == Kind::HumanEval && language == "go");
    let completion = if !sub.config.flag("is_freeform") {
        let cut = stop_token_trim(&sub.completion, &problem.stop_tokens)?;
        stop_after_end_token(&cut, &language)
    } else if whole_functions {
        remove_main(
            &extract::best_block(&sub.completion, &language, Vec::new()),
            &language,
        )
    } else {
        let (code, _) = extract::freeform(&sub.completion, &language, true);
        remove_main(&stop_token_trim(&code, &problem.stop_tokens)?, &language)
    };
    let mut full = import_helper(&language).join("\n");
    full.push('\n');
    if !sub.config.flag("is_freeform") {
        full.push_str(&problem.prompt);
        full.push('\n');
    }
    full.push_str(&format!("{completion}\n{}", problem.tests));
    if let Some(entry_point) = &problem.entry_point {
        full.push_str(&format!("\ncheck({entry_point})"));
    }
    if language == "java" {
        full = full.replace("class Problem", "class Main");
    }
    if language == "go" {
        full = merge_go_headers(&full);
    }
    let default_run = if sub.dataset == "bigcodebench" {
        60.0
    } else {
        20.0
    };
    let req = RunRequest {
        language: run_language,
        code: full.clone(),
        compile_timeout: sub.config.compile_timeout_or(20.0),
        ..super::default_run(sub.config.run_timeout_or(default_run))
    };
    if req.language == "python" {
        return ev.run_to_end(req, completion).await;
    }
    let outcome = ev.run(req).await?;
    Ok(Verdict::of_run(completion, full, outcome))
}

/// The completion up to the first of the row's stop tokens (`re:` ones are regular
/// expressions); `\n\n` is never one.
fn stop_token_trim(s: &str, stop_tokens: &[String]) -> Result<String> {
    let mut s = s.to_string();
    for token in stop_tokens.iter().filter(|t| *t != "\n\n") {
        let cut = match token.strip_prefix("re:") {
            Some(pattern) => {
                let re = fancy_regex::RegexBuilder::new(pattern.trim())
                    .backtrack_limit(1_000_000)
                    .build()
                    .map_err(|e| Error::invalid(format!("stop token {token:?}: {e}")))?;
                re.find(&s)
                    .map_err(|e| Error::invalid(format!("stop token {token:?}: {e}")))?
                    .map(|m| m.start())
            }
            None => s.find(token.as_str()),
        };
        if let Some(at) = cut {
            s.truncate(at);
        }
    }
    Ok(s)
}

/// The completion cut just after the first token that ends a function in its language.
fn stop_after_end_token(s: &str, language: &str) -> String {
    let mut s = s.to_string();
    for token in end_tokens(language) {
        if let Some(at) = s.find(token) {
            s.truncate(at);
            s.push_str(token);
        }
    }
    s
}

/// A `Main` the completion wrote, cut off (the tests bring their own).
fn remove_main(code: &str, language: &str) -> String {
    let token = match language {
        "d" => "void main",
        "csharp" => "public static void Main",
        _ => return code.to_string(),
    };
    match code.find(token) {
        Some(at) => code[..at].to_string(),
        None => code.to_string(),
    }
}

static GO_PACKAGE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"package\s+(\w+)").unwrap());
static GO_IMPORT: LazyLock<Regex> = LazyLock::new(|| Regex::new(r#"import\s+("\w+")"#).unwrap());
static GO_IMPORTS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?s)import\s+\((.*?)\)").unwrap());

/// One Go file from pieces that each had their own `package` and imports: one package clause
/// and every import once, at the top.
pub fn merge_go_headers(code: &str) -> String {
    let packages: BTreeSet<&str> = GO_PACKAGE
        .captures_iter(code)
        .map(|c| c.get(1).unwrap().as_str())
        .collect();
    let mut imports: BTreeSet<String> = GO_IMPORT
        .captures_iter(code)
        .map(|c| c[1].to_string())
        .collect();
    for group in GO_IMPORTS.captures_iter(code) {
        imports.extend(group[1].split('\n').map(|l| l.trim().to_string()));
    }
    imports.remove("");
    let body = GO_PACKAGE.replace_all(code, "");
    let body = GO_IMPORT.replace_all(&body, "");
    let body = GO_IMPORTS.replace_all(&body, "");
    let packages: Vec<String> = packages.iter().map(|p| format!("package {p}")).collect();
    let imports: Vec<String> = imports.iter().map(|i| format!("import {i}")).collect();
    format!(
        "{}\n\n{}\n\n{body}",
        packages.join("\n"),
        imports.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::super::field;
    use super::*;

    #[test]
    fn humaneval_stops_at_the_first_line_at_column_zero() {
        let tokens = vec![HUMANEVAL_STOP.to_string()];
        let c = "    return a + b\n\n\ndef other():\n    pass\n";
        assert_eq!(stop_token_trim(c, &tokens).unwrap(), "    return a + b\n\n");
        let tokens = vec!["\n}".to_string(), "\n\n".to_string()];
        assert_eq!(
            stop_token_trim("x;\n\ny;\n}\nz", &tokens).unwrap(),
            "x;\n\ny;"
        );
        assert!(stop_token_trim("x", &["re:(".to_string()]).is_err());
    }

    #[test]
    fn end_tokens_and_mains() {
        assert_eq!(
            stop_after_end_token("  return 1;\n}\nint main(){}\n}", "cpp"),
            "  return 1;\n}"
        );
        assert_eq!(stop_after_end_token("x\nend\ny", "lua"), "x\nend");
        assert_eq!(
            remove_main("class A {}\npublic static void Main() {}", "csharp"),
            "class A {}\n"
        );
    }

    #[test]
    fn go_headers_merged() {
        let code = "package main\nimport \"fmt\"\nfunc A() {}\npackage main\nimport (\n\t\"strings\"\n\t\"fmt\"\n)\nfunc B() {}";
        let merged = merge_go_headers(code);
        assert!(
            merged.starts_with("package main\n\nimport \"fmt\"\nimport \"strings\"\n\n"),
            "{merged}"
        );
        assert_eq!(merged.matches("package").count(), 1);
        assert!(merged.contains("func A() {}") && merged.contains("func B() {}"));
    }

    #[test]
    fn languages_by_dataset_or_row() {
        assert_eq!(
            languages(Kind::MultiPle, "multiple_js", None),
            ("js".into(), "nodejs".into())
        );
        assert_eq!(
            languages(Kind::HumanEval, "bigcodebench", None),
            ("python".into(), "python".into())
        );
        assert_eq!(
            languages(Kind::MultiPle, "mine", Some("rust.x")),
            ("rust".into(), "rust".into())
        );
        assert!(field(&Row::new(), "prompt").is_err());
    }
}
