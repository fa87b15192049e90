//! The kernel behind each context language, and how it starts in a sandbox.
//!
//! - `python`: ipykernel, forked from the warm kernel zygote (which has imported ipykernel,
//!   numpy, pandas and matplotlib with its inline backend), or started afresh where the
//!   zygote cannot serve (another image).
//! - `javascript`: cella's own Jupyter kernel on Node.js (`javascript.js`, written into the
//!   kernel's directory): no kernel from a registry installs and runs on Node 20 here
//!   (ijavascript's zeromq 5 does not build; tslab turns results and errors into plain text).
//! - `bash`: bash_kernel from PyPI (installed by `scripts/setup.sh` into
//!   [`PYTHON_PACKAGES`]), started by `bash_kernel.py` (which takes out pexpect's pause
//!   before each line typed into bash), forked from the kernel zygote like python.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::jupyter::{Kernel, KernelFiles};
use crate::error::{Error, Result, quoted};
use crate::process::{ExecOptions, Launcher};
use crate::python::{Flavor, Pythons};
use crate::sandbox::Sandbox;

/// Python packages `scripts/setup.sh` installs for sandboxes beyond Debian's (bash_kernel).
pub const PYTHON_PACKAGES: &str = "/opt/cella/python";
/// The JavaScript packages `scripts/setup.sh` installs (acorn, for top-level `await`).
const NODE_MODULES: &str = "/opt/cella/node/node_modules";
const JAVASCRIPT_KERNEL: &str = include_str!("javascript.js");
const BASH_KERNEL: &str = include_str!("bash_kernel.py");
/// Matplotlib's backend in kernels: figures become `image/png` displays.
pub const INLINE_BACKEND: &str = "module://matplotlib_inline.backend_inline";
const NO_HISTORY: &str = "--HistoryManager.enabled=False";
/// debugpy, which ipykernel imports, otherwise warns about frozen modules on stderr.
const PYTHON_ENV: &[(&str, &str)] = &[
    ("PYDEVD_DISABLE_FILE_VALIDATION", "1"),
    ("MPLBACKEND", INLINE_BACKEND),
];
const BASH_ENV: &[(&str, &str)] = &[
    ("PYDEVD_DISABLE_FILE_VALIDATION", "1"),
    ("PYTHONPATH", PYTHON_PACKAGES),
];
const NODE_ENV: &[(&str, &str)] = &[("NODE_PATH", NODE_MODULES)];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Language {
    Python,
    JavaScript,
    Bash,
}

impl Language {
    pub const ALL: [Language; 3] = [Language::Python, Language::JavaScript, Language::Bash];

    pub fn name(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::JavaScript => "javascript",
            Language::Bash => "bash",
        }
    }

    /// A language by the names clients use for it.
    pub fn parse(name: &str) -> Result<Language> {
        match name.to_ascii_lowercase().as_str() {
            "python" | "python3" | "py" => Ok(Language::Python),
            "javascript" | "js" | "node" | "nodejs" => Ok(Language::JavaScript),
            "bash" | "sh" | "shell" => Ok(Language::Bash),
            _ => Err(Error::invalid(format!(
                "unknown context language {}: one of python, javascript, bash",
                quoted(name)
            ))),
        }
    }
}

/// Starts kernels: what a context needs to begin or begin again.
pub struct Kernels {
    pub(super) pythons: Arc<Pythons>,
    pub(super) start_timeout: Duration,
    pub(super) output_cap: usize,
}

impl Kernels {
    /// Starts a `language` kernel in `sandbox`, its files in `dir`, in `cwd` with `env`
    /// added to the sandbox's environment.
    pub(super) async fn start(
        &self,
        sandbox: &Arc<Sandbox>,
        language: Language,
        dir: String,
        cwd: &str,
        env: &BTreeMap<String, String>,
    ) -> Result<Kernel> {
        let files = KernelFiles { dir };
        let connection = files.connection();
        let (argv, kernel_env, zygote) = match language {
            // Without its history database: a write to SQLite after every call, for nothing.
            Language::Python => (
                [
                    "python3",
                    "-m",
                    "ipykernel_launcher",
                    "-f",
                    &connection,
                    NO_HISTORY,
                ]
                .map(String::from)
                .to_vec(),
                PYTHON_ENV,
                true,
            ),
            Language::Bash => {
                let script = (files.write(sandbox, "kernel.py", BASH_KERNEL.into())).await?;
                (
                    ["python3", &script, "-f", &connection]
                        .map(String::from)
                        .to_vec(),
                    BASH_ENV,
                    true,
                )
            }
            Language::JavaScript => {
                let script = (files.write(sandbox, "kernel.js", JAVASCRIPT_KERNEL.into())).await?;
                (
                    ["node", &script, &connection].map(String::from).to_vec(),
                    NODE_ENV,
                    false,
                )
            }
        };
        let program = argv[0].clone();
        let opts = ExecOptions {
            argv,
            env: kernel_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .chain(env.clone())
                .collect(),
            cwd: Some(cwd.to_string()),
            stdin: None,
            timeout: None,
            output_cap: 64 << 10,
        };
        let zygote = match zygote {
            true => {
                // Later sandboxes' homes then hold matplotlib's font cache, as runs' do.
                self.pythons.build_skeleton();
                self.pythons.zygote_for(sandbox, Flavor::Kernel).await
            }
            false => None,
        };
        let launcher = zygote.as_deref().map_or(Launcher::Init, Launcher::Zygote);
        let started = Kernel::start(
            sandbox,
            &files,
            opts,
            launcher,
            self.start_timeout,
            self.output_cap,
        );
        started.await.map_err(|e| match e {
            Error::MissingProgram(_) => Error::MissingProgram(format!(
                "{} contexts need {program}, which this sandbox's image does not have",
                language.name(),
            )),
            e => e,
        })
    }
}
