//! Code extraction from a model's raw completion, with SandboxFusion's rules: complete fenced
//! blocks (priority 30), an unterminated fenced block (20), heuristic extraction of Python,
//! SQL and shell (10), and blocks a `custom_extract_logic` adds (its own priority). Only the
//! highest priority counts; the first block in the wanted language wins, else the first block.

use std::sync::LazyLock;

use regex::Regex;
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CodeBlock {
    pub priority: i64,
    #[serde(default)]
    pub language: String,
    pub code: String,
}

/// How a freeform completion's code was found (`EvalResult.extracted_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extracted {
    Fenced,
    IncompleteFenced,
    Heuristic,
    Empty,
}

impl Extracted {
    pub fn as_str(self) -> &'static str {
        match self {
            Extracted::Fenced => "fenced",
            Extracted::IncompleteFenced => "incomplete_fenced",
            Extracted::Heuristic => "heuristic",
            Extracted::Empty => "empty",
        }
    }
}

/// Each language and the fence tags that name it. Where a tag appears twice, the later
/// language has it (`javascript` is not `nodejs`; `js` is).
const LANGUAGE_TAGS: &[(&str, &[&str])] = &[
    (
        "python",
        &["python", "Python", "py", "Python3", "python3", "PY"],
    ),
    ("cpp", &["cpp", "c++", "C++", "Cpp", "CPP"]),
    (
        "nodejs",
        &["javascript", "Javascript", "JavaScript", "JS", "js"],
    ),
    ("go", &["go", "Go"]),
    ("java", &["java", "Java"]),
    ("php", &["php", "PHP"]),
    ("csharp", &["csharp", "c#", "C#"]),
    ("bash", &["bash", "Bash", "BASH", "sh", "shell"]),
    ("typescript", &["typescript"]),
    ("rust", &["rust", "Rust", "rs"]),
    ("sql", &["sql", "SQL", "Sql"]),
    ("D", &["D", "d"]),
    ("julia", &["julia", "Julia", "jl"]),
    ("lua", &["lua", "Lua"]),
    ("perl", &["perl", "Perl", "PERL"]),
    ("R", &["R", "r"]),
    ("ruby", &["ruby", "Ruby"]),
    ("scala", &["scala", "Scala"]),
    ("kotlin", &["kotlin", "Kotlin"]),
    ("c", &["c", "C"]),
    ("html", &["html", "Html", "HTML"]),
    ("javascript", &["javascript", "Javascript", "JavaScript"]),
    ("verilog", &["verilog", "Verilog", "VERILOG"]),
    ("racket", &["racket"]),
    ("swift", &["swift"]),
];

/// The language a fence tag names, or "".
fn language_of_tag(tag: &str) -> &'static str {
    LANGUAGE_TAGS
        .iter()
        .rev()
        .find(|(_, tags)| tags.contains(&tag))
        .map_or("", |(lang, _)| lang)
}

static FENCED: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?s)```([^\n]*)\n(.*?)\n\s*```").unwrap());
static INCOMPLETE_FENCED: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?s)```([^\n]*)\n(.*)").unwrap());
static HEURISTIC_PYTHON: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?m)(?:^(?:import|from|#)[^\n]+\n)*^(?:def|class) [^\n]+\n(?:\s+[^\n]+\n)+")
        .unwrap()
});
static HEURISTIC_SQL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?mi)^\s*(?:select|with\s[^\n]+as)[^;]*").unwrap());

fn blocks_of(re: &Regex, completion: &str, priority: i64) -> Vec<CodeBlock> {
    re.captures_iter(completion)
        .map(|c| CodeBlock {
            priority,
            language: language_of_tag(c[1].trim()).to_string(),
            code: c[2].to_string(),
        })
        .collect()
}

/// Every complete fenced block.
pub fn fenced(completion: &str) -> Vec<CodeBlock> {
    blocks_of(&FENCED, completion, 30)
}

/// The block of a fence that is never closed (the rest of the completion).
pub fn incomplete_fenced(completion: &str) -> Vec<CodeBlock> {
    blocks_of(&INCOMPLETE_FENCED, completion, 20)
}

/// Code in an unfenced completion: Python definitions with their imports, SQL queries, or the
/// whole text as shell.
pub fn heuristic(completion: &str, language: &str) -> Vec<CodeBlock> {
    let pattern = match language {
        "python" => Some(&*HEURISTIC_PYTHON),
        "sql" => Some(&*HEURISTIC_SQL),
        "bash" => None,
        _ => return Vec::new(),
    };
    let mut text: String = completion
        .split('\n')
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    text.push('\n');
    let block = |code: &str| CodeBlock {
        priority: 10,
        language: language.to_string(),
        code: code.to_string(),
    };
    match pattern {
        Some(re) => re.find_iter(&text).map(|m| block(m.as_str())).collect(),
        None => vec![block(&text)],
    }
}

/// SandboxFusion's `default_extract_helper`: the code of the first highest-priority block in
/// `language`, else of the first highest-priority block; "" when there is none.
pub fn best_block(completion: &str, language: &str, custom: Vec<CodeBlock>) -> String {
    let mut blocks = fenced(completion);
    blocks.extend(heuristic(completion, language));
    blocks.extend(incomplete_fenced(completion));
    blocks.extend(custom);
    let Some(top) = blocks.iter().map(|b| b.priority).max() else {
        return String::new();
    };
    let mut top_blocks = blocks.into_iter().filter(|b| b.priority == top);
    let first = top_blocks.next().expect("a block has the top priority");
    if first.language == language {
        return first.code;
    }
    top_blocks
        .find(|b| b.language == language)
        .unwrap_or(first)
        .code
}

/// SandboxFusion's `extract_code_from_freeform_completion`: fenced blocks, else an
/// unterminated one, else heuristics; the first block's code or all of them joined; then the
/// language's entry point (`if __name__ == "__main__":`, `int main()`, `package main`) and any
/// `# Example usage` cut off.
pub fn freeform(completion: &str, language: &str, first_block_only: bool) -> (String, Extracted) {
    let mut blocks = fenced(completion);
    let mut kind = Extracted::Fenced;
    if blocks.is_empty() {
        blocks = incomplete_fenced(completion);
        kind = Extracted::IncompleteFenced;
    }
    if blocks.is_empty() {
        blocks = heuristic(completion, language);
        kind = Extracted::Heuristic;
    }
    if blocks.is_empty() {
        kind = Extracted::Empty;
    }
    let code = if first_block_only {
        blocks.first().map(|b| b.code.clone()).unwrap_or_default()
    } else {
        let codes: Vec<&str> = blocks.iter().map(|b| b.code.as_str()).collect();
        codes.join("\n\n")
    }
    .replace('\r', "");
    (without_entry_point(&code, language), kind)
}

/// `code` up to `marker`, trimmed, if it holds `marker`; else `code` unchanged.
fn cut_before(code: &str, marker: &str) -> String {
    match code.find(marker) {
        Some(at) => code[..at].trim().to_string(),
        None => code.to_string(),
    }
}

/// SandboxFusion's `remove_entripoints`: a program's entry point cut off, so the test code
/// appended after it runs instead.
pub fn without_entry_point(code: &str, language: &str) -> String {
    let code = match language {
        "python" => cut_before(code, "if __name__ == \"__main__\":"),
        "cpp" => cut_before(code, "int main()"),
        "go" => code.replace("package main", ""),
        _ => code.to_string(),
    };
    cut_before(&code, "# Example usage")
}

/// Every fence tag and the language it names, as JSON (for `custom_extract_logic`'s helpers).
pub fn tags_json() -> String {
    let tags: serde_json::Map<String, serde_json::Value> = LANGUAGE_TAGS
        .iter()
        .flat_map(|(_, tags)| tags.iter())
        .map(|t| (t.to_string(), language_of_tag(t).into()))
        .collect();
    serde_json::Value::Object(tags).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Cases after SandboxFusion's own `test_extraction.py` and completions models write.
    #[test]
    fn fenced_blocks_prefer_the_language() {
        let c = "Here:\n```cpp\nint x;\n```\nand\n```python\nprint(1)\n```\n";
        assert_eq!(best_block(c, "python", vec![]), "print(1)");
        assert_eq!(best_block(c, "cpp", vec![]), "int x;");
        assert_eq!(best_block(c, "go", vec![]), "int x;");
        let blocks = fenced(c);
        assert_eq!(blocks[0].language, "cpp");
        assert_eq!(blocks[1].language, "python");
    }

    #[test]
    fn tags_map_as_sandboxfusion_maps_them() {
        assert_eq!(language_of_tag("js"), "nodejs");
        assert_eq!(language_of_tag("javascript"), "javascript");
        assert_eq!(language_of_tag("Python3"), "python");
        assert_eq!(language_of_tag("d"), "D");
        assert_eq!(language_of_tag("python title=x"), "");
        let tags: serde_json::Value = serde_json::from_str(&tags_json()).unwrap();
        assert_eq!(tags["js"], "nodejs");
        assert_eq!(tags["JavaScript"], "javascript");
    }

    #[test]
    fn an_unclosed_fence_and_heuristics() {
        let c = "```python\ndef f():\n    return 1\n";
        assert_eq!(best_block(c, "python", vec![]), "def f():\n    return 1\n");
        let (code, kind) = freeform(c, "python", true);
        assert_eq!(
            (code.as_str(), kind),
            ("def f():\n    return 1\n", Extracted::IncompleteFenced)
        );

        let prose =
            "The answer is\nimport math\ndef area(r):\n    return math.pi * r * r\nThat is all.";
        let (code, kind) = freeform(prose, "python", true);
        assert_eq!(kind, Extracted::Heuristic);
        assert_eq!(
            code,
            "import math\ndef area(r):\n    return math.pi * r * r\n"
        );

        assert_eq!(
            freeform("no code here", "python", true),
            (String::new(), Extracted::Empty)
        );
        let sql = "Try this:\nSELECT a FROM t WHERE b = 1;\n";
        assert_eq!(heuristic(sql, "sql")[0].code, "SELECT a FROM t WHERE b = 1");
    }

    #[test]
    fn fenced_outranks_heuristic_and_custom_outranks_both() {
        let c = "def g():\n    pass\n```python\nprint(2)\n```";
        assert_eq!(best_block(c, "python", vec![]), "print(2)");
        let custom = CodeBlock {
            priority: 40,
            language: "python".into(),
            code: "print(3)".into(),
        };
        assert_eq!(best_block(c, "python", vec![custom]), "print(3)");
        assert_eq!(best_block("", "python", vec![]), "");
    }

    #[test]
    fn entry_points_and_examples_are_cut() {
        let c = "```python\ndef f():\n    return 1\n\nif __name__ == \"__main__\":\n    f()\n```";
        assert_eq!(freeform(c, "python", false).0, "def f():\n    return 1");
        let c = "```go\npackage main\nfunc F() {}\n```";
        assert_eq!(freeform(c, "go", true).0, "\nfunc F() {}");
        assert_eq!(
            without_entry_point("x = 1\n# Example usage\nprint(x)", "python"),
            "x = 1"
        );
        assert_eq!(
            without_entry_point("int f();\nint main() {}", "cpp"),
            "int f();"
        );
    }

    #[test]
    fn carriage_returns_and_many_blocks_joined() {
        let c = "```\na\r\n```\ntext\n```\nb\n```";
        assert_eq!(freeform(c, "python", false).0, "a\n\nb");
        assert_eq!(freeform(c, "python", true).0, "a");
    }
}
