//! The language table: one row per language, saying where the source goes and how it is
//! compiled and run. Adding a language is adding a row (and a test).
//!
//! Commands are argv templates run in the sandbox's work directory, without a shell unless a
//! row asks for one. Placeholders: `{main}` (the class or object name found in the code) and
//! `{memory_mb}` (the run's memory limit, for JVMs that cannot see their cgroup).

use std::collections::BTreeMap;
use std::sync::RwLock;

pub struct Language {
    pub name: &'static str,
    /// File the code is written to; `{main}` is replaced by the detected name.
    pub source: &'static str,
    pub compile: Option<&'static [&'static str]>,
    pub run: &'static [&'static str],
    /// Prints the toolchain's version; also tells whether it is installed.
    pub version: &'static [&'static str],
    /// Extra environment for both steps.
    pub env: &'static [(&'static str, &'static str)],
    /// Files written beside the source (name, content).
    pub support: &'static [(&'static str, &'static str)],
    /// How `{main}` is found in the code.
    pub main: Main,
    /// Set for languages this server cannot run at all, with the reason.
    pub missing: Option<&'static str>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Main {
    None,
    /// `public class X` (default `Main`).
    JavaClass,
    /// `object X`; a run without one is refused.
    ScalaObject,
}

const JUNIT: &str = "/usr/share/java/junit-platform-console-standalone.jar";
/// For the JVM a compiler (javac, scalac) runs in: the quick JIT tier only and the serial
/// collector, which start a short compile a quarter faster. The program's JVM keeps its own.
const COMPILER_QUICK_JIT: &str = "-J-XX:TieredStopAtLevel=1";
const COMPILER_SERIAL_GC: &str = "-J-XX:+UseSerialGC";
/// The class-data-sharing archive of a JVM tool's own classes, dumped by `scripts/setup.sh`
/// with the flags the tool runs with here: the tool starts a fifth to a half faster. The
/// JVM skips an archive it cannot use (missing, or older than the JDK), and with `CDS_QUIET`
/// says nothing: it would say so on the program's stdout.
macro_rules! cds_archive {
    ($jvm_flag:literal, $tool:literal) => {
        concat!(
            $jvm_flag,
            "-XX:SharedArchiveFile=/opt/cella/cds/",
            $tool,
            ".jsa"
        )
    };
}
const CDS_QUIET: &str = "-Xlog:cds*=off";
/// `CDS_QUIET` through a launcher script's `-J`.
const J_CDS_QUIET: &str = "-J-Xlog:cds*=off";
/// The work directory, jars uploaded into it, and javatuples (which MultiPL-E's Java tests
/// and SandboxFusion's own Java runtime use).
const JAVA_CP: &str = ".:*:/usr/share/java/javatuples.jar";
const JUNIT_CP: &str =
    ".:*:/usr/share/java/javatuples.jar:/usr/share/java/junit-platform-console-standalone.jar";
/// javac's argv for one source file against a class path.
macro_rules! javac {
    ($class_path:expr, $source:literal) => {
        &[
            "javac",
            COMPILER_QUICK_JIT,
            COMPILER_SERIAL_GC,
            cds_archive!("-J", "javac"),
            J_CDS_QUIET,
            "-encoding",
            "UTF-8",
            "-cp",
            $class_path,
            $source,
        ]
    };
}
/// g++'s argv for `main.cpp` (with the precompiled `<bits/stdc++.h>`), then `$lib`s.
macro_rules! gpp {
    ($($lib:literal),*) => {
        &["g++", "-std=c++17", PCH_INCLUDE, "main.cpp", "-o", "main", $($lib),*]
    };
}
/// JavaScript tooling lives in one project directory (installed by `scripts/setup.sh`), so
/// that peer packages resolve each other; its `.bin` leads `PATH`.
const NODE_ENV: &[(&str, &str)] = &[
    ("NODE_PATH", "/opt/cella/node/node_modules"),
    (
        "PATH",
        "/opt/cella/node/node_modules/.bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("FORCE_COLOR", "0"),
    ("NO_COLOR", "1"),
];
/// Jest's configuration for a test environment: modules from the shared project, TypeScript
/// and JSX transpiled by ts-jest without type checking (as SandboxFusion's Babel set-up does),
/// its errors without terminal colours.
macro_rules! jest_config {
    ($environment:literal, $setup:literal) => {
        concat!(
            "module.exports = {\n",
            "  testEnvironment: '",
            $environment,
            "',\n",
            "  setupFilesAfterEnv: [",
            $setup,
            "],\n",
            r#"  rootDir: '.',
  modulePaths: ['/opt/cella/node/node_modules'],
  cacheDirectory: '/tmp/jest-cache',
  transform: { '^.+\\.[tj]sx?$': ['/opt/cella/node/node_modules/ts-jest', { tsconfig: {
    isolatedModules: true, allowJs: true, esModuleInterop: true, jsx: 'react-jsx' },
    diagnostics: { pretty: false } }] },
};
"#
        )
    };
}
const JEST_CONFIG: &str = jest_config!("node", "");
/// Writes the JSON report FullStackBench-style graders fetch, as SandboxFusion's runner does.
const JEST_RUN: &[&str] = &["jest", "--ci", "--json", "--outputFile=jest-report.json"];
/// React components tested in a DOM (jsdom) with Testing Library and jest-dom's matchers.
const REACT_JEST_CONFIG: &str = jest_config!(
    "jsdom",
    "'/opt/cella/node/node_modules/@testing-library/jest-dom'"
);
/// Where `scripts/setup.sh` puts a precompiled `<bits/stdc++.h>` (built with `-std=c++17`):
/// ~2 s less per contest-style C++ compile. g++ skips a missing directory, and falls back to
/// the header when the PCH does not match.
const PCH_INCLUDE: &str = "-I/opt/cella/pch";
/// `go test` vets the package first, which needs facts about every standard package it
/// imports: ~1.2 s of work in a fresh sandbox. The build cache `scripts/setup.sh` made holds
/// them; copied in (~25 ms), it is the sandbox's own, writable as Go wants its cache.
const GO_TEST: &str = "mkdir -p \"$HOME/.cache\" && \
                       cp -rnT /opt/cella/go-cache \"$HOME/.cache/go-build\" 2>/dev/null; \
                       exec go test -count=1 main_test.go";
/// Test programs import testify (`github.com/stretchr/testify/assert`), as SandboxFusion's
/// runtime has it: Debian's package of it, found in GOPATH mode without network.
const GO_TEST_ENV: &[(&str, &str)] = &[("GO111MODULE", "off"), ("GOPATH", "/usr/share/gocode")];
/// C# as the .NET SDK builds a console program, which code written for SandboxFusion (whose
/// runtime is `dotnet`) assumes: `DEBUG` defined, so `Debug.Assert` is compiled in, and a
/// failed one ends the program (.NET's `FailFast`: stderr, status 134) where Mono's default
/// listener would print and go on. The listener is compiled in beside the code and named in
/// the program's configuration. The SDK's implicit usings are `CSHARP_IMPLICIT_USINGS`.
const CSHARP_ASSERT_FILE: &str = "cella_debug_assert.cs";
const CSHARP_SUPPORT: &[(&str, &str)] = &[
    (
        CSHARP_ASSERT_FILE,
        "public class CellaAssertListener : System.Diagnostics.DefaultTraceListener {\n\
         \x20   public override void Fail(string message, string detail) {\n\
         \x20       System.Console.Error.WriteLine(\"Process terminated. Assertion failed.\\n\" + message\n\
         \x20           + (string.IsNullOrEmpty(detail) ? \"\" : \"\\n\" + detail));\n\
         \x20       System.Console.Error.Flush();\n\
         \x20       System.Environment.Exit(134);\n\
         \x20   }\n\
         }\n",
    ),
    (
        "main.exe.config",
        "<?xml version=\"1.0\"?>\n<configuration><system.diagnostics><trace><listeners><clear/>\
         <add name=\"cella\" type=\"CellaAssertListener, main\"/></listeners></trace>\
         </system.diagnostics></configuration>\n",
    ),
];
/// The .NET SDK's implicit global usings of a console program, put before the code on its
/// first line (its line numbers stay the code's). Left out when the code starts with what
/// must come first in a file (`#define`, `extern alias`).
const CSHARP_IMPLICIT_USINGS: &str = "using System; using System.IO; using System.Collections.Generic; \
     using System.Linq; using System.Net.Http; using System.Threading; using System.Threading.Tasks; ";
const NO_TOOLCHAIN: &str = "no toolchain for it is packaged for this server's platform";

const fn lang(
    name: &'static str,
    source: &'static str,
    run: &'static [&'static str],
    version: &'static [&'static str],
) -> Language {
    Language {
        name,
        source,
        compile: None,
        run,
        version,
        env: &[],
        support: &[],
        main: Main::None,
        missing: None,
    }
}

const fn compiled(
    name: &'static str,
    source: &'static str,
    compile: &'static [&'static str],
    run: &'static [&'static str],
    version: &'static [&'static str],
) -> Language {
    Language {
        compile: Some(compile),
        ..lang(name, source, run, version)
    }
}

const fn missing(name: &'static str) -> Language {
    Language {
        missing: Some(NO_TOOLCHAIN),
        ..lang(name, "main", &[], &[])
    }
}

/// Every language SandboxFusion (and its newer client) names.
pub static LANGUAGES: &[Language] = &[
    lang(
        "python",
        "main.py",
        &["python3", "main.py"],
        &["python3", "--version"],
    ),
    lang(
        "pytest",
        "test_main.py",
        &[
            "python3",
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "test_main.py",
        ],
        &["python3", "-m", "pytest", "--version"],
    ),
    compiled(
        "cpp",
        "main.cpp",
        gpp!("-lpthread", "-lssl", "-lcrypto"),
        &["./main"],
        &["g++", "--version"],
    ),
    compiled(
        "gtest",
        "main.cpp",
        // Not `-pthread`: it also defines _REENTRANT (a no-op since glibc 2.34), and g++
        // refuses a PCH built without it.
        gpp!("-lgtest", "-lgtest_main", "-lpthread"),
        &["./main"],
        &["g++", "--version"],
    ),
    // Not a SandboxFusion language: cella's own, for `cella run hello.c` and the native API.
    compiled(
        "c",
        "main.c",
        &[
            "gcc",
            "-std=gnu17",
            "-O2",
            "main.c",
            "-o",
            "main",
            "-lm",
            "-lpthread",
        ],
        &["./main"],
        &["gcc", "--version"],
    ),
    compiled(
        "go",
        "main.go",
        &["go", "build", "-o", "main", "main.go"],
        &["./main"],
        &["go", "version"],
    ),
    Language {
        env: GO_TEST_ENV,
        ..lang(
            "go_test",
            "main_test.go",
            &["sh", "-c", GO_TEST],
            &["go", "version"],
        )
    },
    compiled(
        "java",
        "Main.java",
        javac!(JAVA_CP, "Main.java"),
        &[
            "java",
            "-XX:MaxRAM={memory_mb}m",
            "-cp",
            JAVA_CP,
            "-ea",
            "Main",
        ],
        &["javac", "-version"],
    ),
    Language {
        main: Main::JavaClass,
        ..compiled(
            "junit",
            "{main}.java",
            javac!(JUNIT_CP, "{main}.java"),
            &[
                "java",
                "-XX:MaxRAM={memory_mb}m",
                cds_archive!("", "junit"),
                CDS_QUIET,
                "-jar",
                JUNIT,
                "--disable-banner",
                "--disable-ansi-colors",
                "--class-path",
                JAVA_CP,
                "--scan-class-path",
            ],
            &["javac", "-version"],
        )
    },
    Language {
        env: NODE_ENV,
        ..lang(
            "nodejs",
            "main.js",
            &["node", "main.js"],
            &["node", "--version"],
        )
    },
    Language {
        env: NODE_ENV,
        ..lang(
            "typescript",
            "main.ts",
            &["tsx", "main.ts"],
            &["tsc", "--version"],
        )
    },
    Language {
        env: NODE_ENV,
        support: &[("jest.config.js", JEST_CONFIG)],
        ..lang("jest", "main.test.ts", JEST_RUN, &["jest", "--version"])
    },
    Language {
        env: NODE_ENV,
        support: &[("jest.config.js", REACT_JEST_CONFIG)],
        ..lang(
            "react",
            "main.test.tsx",
            JEST_RUN,
            &[
                "node",
                "-p",
                "require('jest-environment-jsdom/package.json') && 'React ' + require('react/package.json').version",
            ],
        )
    },
    lang(
        "php",
        "main.php",
        &["php", "-f", "main.php"],
        &["php", "--version"],
    ),
    Language {
        support: CSHARP_SUPPORT,
        ..compiled(
            "csharp",
            "main.cs",
            &[
                "mcs",
                "-d:DEBUG",
                "-out:main.exe",
                "-r:System.Numerics.dll",
                "-r:System.Net.Http.dll",
                "main.cs",
                CSHARP_ASSERT_FILE,
            ],
            &["mono", "main.exe"],
            &["mcs", "--version"],
        )
    },
    lang(
        "bash",
        "main.sh",
        &["bash", "main.sh"],
        &["bash", "--version"],
    ),
    compiled(
        "rust",
        "main.rs",
        &["rustc", "--edition", "2021", "-o", "main", "main.rs"],
        &["./main"],
        &["rustc", "--version"],
    ),
    lang("lua", "main.lua", &["lua", "main.lua"], &["lua", "-v"]),
    lang(
        "R",
        "main.R",
        &["Rscript", "main.R"],
        &["Rscript", "--version"],
    ),
    lang(
        "perl",
        "main.pl",
        &["perl", "main.pl"],
        &["perl", "-e", "print \"perl $^V\\n\""],
    ),
    lang(
        "ruby",
        "main.rb",
        &["ruby", "main.rb"],
        &["ruby", "--version"],
    ),
    Language {
        main: Main::ScalaObject,
        ..compiled(
            "scala",
            "main.scala",
            &[
                "scalac",
                COMPILER_QUICK_JIT,
                COMPILER_SERIAL_GC,
                cds_archive!("-J", "scalac"),
                J_CDS_QUIET,
                "main.scala",
            ],
            &["scala", cds_archive!("-J", "scala"), J_CDS_QUIET, "{main}"],
            &["scalac", "-version"],
        )
    },
    lang(
        "kotlin_script",
        "main.kts",
        // Debian's kotlinc passes the JVM `-noverify`, which JDK 13+ warns about on every run.
        &[
            "kotlinc",
            "-J-XX:-PrintWarnings",
            cds_archive!("-J", "kotlinc"),
            J_CDS_QUIET,
            "-script",
            "main.kts",
        ],
        &["kotlinc", "-version"],
    ),
    lang(
        "racket",
        "main.rkt",
        &["racket", "main.rkt"],
        &["racket", "--version"],
    ),
    compiled(
        "D_ut",
        "main.d",
        &["ldmd2", "main.d", "-unittest", "-of=main"],
        &["./main"],
        &["ldc2", "--version"],
    ),
    compiled(
        "verilog",
        "main.sv",
        &[
            "iverilog",
            "-Wall",
            "-Winfloop",
            "-Wno-timescale",
            "-g2012",
            "-s",
            "tb",
            "-o",
            "test.vvp",
            "main.sv",
        ],
        &["vvp", "-n", "test.vvp"],
        &["iverilog", "-V"],
    ),
    lang(
        "sql",
        "main.sql",
        &["sqlite3", "-bail", "-batch", ":memory:", ".read main.sql"],
        &["sqlite3", "--version"],
    ),
    missing("julia"),
    missing("swift"),
    missing("lean"),
    missing("cuda"),
    missing("python_gpu"),
    missing("python2"),
];

pub fn find(name: &str) -> Option<&'static Language> {
    LANGUAGES.iter().find(|l| l.name == name)
}

impl Language {
    /// The name `{main}` stands for, found in the code.
    pub fn main_name(&self, code: &str) -> Result<String, String> {
        match self.main {
            Main::None => Ok(String::new()),
            Main::JavaClass => {
                Ok(identifier_after(code, &["public", "class"]).unwrap_or_else(|| "Main".into()))
            }
            Main::ScalaObject => {
                identifier_after(code, &["object"]).ok_or_else(|| "Object name not found.".into())
            }
        }
    }

    /// The code as it is written to the source file.
    pub fn source_text<'a>(&self, code: &'a str) -> std::borrow::Cow<'a, str> {
        if self.name == "php" && !code.contains("<?php") {
            return format!("<?php\n{code}").into();
        }
        let first_in_file = |l: &str| {
            let l = l.trim_start();
            ["#define", "#undef", "extern alias"]
                .iter()
                .any(|d| l.starts_with(d))
        };
        if self.name == "csharp" && !code.lines().any(first_in_file) {
            return format!("{CSHARP_IMPLICIT_USINGS}{code}").into();
        }
        code.into()
    }
}

/// The identifier following the words `keywords` (separated by whitespace) in `code`.
fn identifier_after(code: &str, keywords: &[&str]) -> Option<String> {
    let words: Vec<&str> = code.split_whitespace().collect();
    words.windows(keywords.len() + 1).find_map(|w| {
        if w[..keywords.len()] != *keywords {
            return None;
        }
        let ident: String = w[keywords.len()]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        (!ident.is_empty()).then_some(ident)
    })
}

/// Substitutes placeholders in a command template.
pub fn render(template: &[&str], main: &str, memory_mb: u64) -> Vec<String> {
    template
        .iter()
        .map(|a| {
            a.replace("{main}", main)
                .replace("{memory_mb}", &memory_mb.to_string())
        })
        .collect()
}

/// Whether one language can run here, and with what.
#[derive(Debug, Clone)]
pub struct LanguageInfo {
    pub name: String,
    pub available: bool,
    /// The toolchain's version line, when it is installed.
    pub version: Option<String>,
    /// Why it cannot run, when it cannot.
    pub reason: Option<String>,
    pub compiled: bool,
}

/// Availability of each language, as probed in a sandbox at start-up.
#[derive(Default)]
pub struct Availability {
    probed: RwLock<BTreeMap<&'static str, LanguageInfo>>,
}

impl Availability {
    pub fn record(&self, info: LanguageInfo) {
        let name = LANGUAGES
            .iter()
            .find(|l| l.name == info.name)
            .map_or("", |l| l.name);
        self.probed
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, info);
    }

    /// The version line of `lang`'s toolchain, once probed.
    pub fn version(&self, lang: &Language) -> Option<String> {
        let probed = self.probed.read().unwrap_or_else(|p| p.into_inner());
        probed.get(lang.name).and_then(|i| i.version.clone())
    }

    /// Why `lang` cannot run, if it is known that it cannot.
    pub fn unavailable(&self, lang: &Language) -> Option<String> {
        if let Some(why) = lang.missing {
            return Some(why.to_string());
        }
        let probed = self.probed.read().unwrap_or_else(|p| p.into_inner());
        probed
            .get(lang.name)
            .filter(|i| !i.available)
            .and_then(|i| i.reason.clone())
    }

    pub fn list(&self) -> Vec<LanguageInfo> {
        let probed = self.probed.read().unwrap_or_else(|p| p.into_inner());
        LANGUAGES
            .iter()
            .map(|l| {
                probed.get(l.name).cloned().unwrap_or_else(|| LanguageInfo {
                    name: l.name.to_string(),
                    available: l.missing.is_none(),
                    version: None,
                    reason: l.missing.map(str::to_string),
                    compiled: l.compile.is_some(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_complete() {
        let mut names: Vec<_> = LANGUAGES.iter().map(|l| l.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), LANGUAGES.len());
        for required in [
            "python",
            "cpp",
            "go",
            "java",
            "junit",
            "jest",
            "sql",
            "D_ut",
            "verilog",
            "kotlin_script",
            "gtest",
            "python2",
            "react",
        ] {
            assert!(find(required).is_some(), "{required}");
        }
    }

    #[test]
    fn csharp_gets_the_sdk_usings_unless_its_first_lines_must_stay_first() {
        let cs = find("csharp").unwrap();
        let code = "class P { static void Main() { Console.WriteLine(1); } }";
        let text = cs.source_text(code);
        assert!(text.starts_with("using System; using System.IO;") && text.ends_with(code));
        assert_eq!(text.lines().count(), 1, "the code's line numbers are kept");
        let defines = "#define TRACE\nclass P {}";
        assert_eq!(cs.source_text(defines), defines);
        assert_eq!(find("python").unwrap().source_text(code), code);
    }

    #[test]
    fn main_names() {
        let junit = find("junit").unwrap();
        assert_eq!(
            junit
                .main_name("import x;\npublic class SolutionTest {\n}")
                .unwrap(),
            "SolutionTest"
        );
        assert_eq!(junit.main_name("class Foo {}").unwrap(), "Main");
        let scala = find("scala").unwrap();
        assert_eq!(
            scala.main_name("object Hello extends App {}").unwrap(),
            "Hello"
        );
        assert!(scala.main_name("class X").is_err());
        assert_eq!(
            render(&["java", "-XX:MaxRAM={memory_mb}m", "{main}"], "M", 64),
            ["java", "-XX:MaxRAM=64m", "M"]
        );
        assert_eq!(
            find("php").unwrap().source_text("echo 1;"),
            "<?php\necho 1;"
        );
    }
}
