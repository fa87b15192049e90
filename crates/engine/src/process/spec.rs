//! A command to run, validated: what every face's exec request becomes.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::Config;
use crate::error::{Error, Result};

/// A validated command, ready to run.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub stdin: Option<Vec<u8>>,
    /// `None`: runs until it exits or is killed.
    pub timeout: Option<Duration>,
    pub output_cap: usize,
}

/// The argv of a request that gives exactly one of a command (`argv`) or a shell line.
pub fn argv_of(command: Option<Vec<String>>, shell: Option<String>) -> Result<Vec<String>> {
    match (command, shell) {
        (Some(argv), None) if !argv.is_empty() => Ok(argv),
        (None, Some(shell)) => Ok(shell_argv(shell)),
        _ => Err(Error::invalid(
            "give exactly one of `command` (a non-empty list) or `shell`",
        )),
    }
}

/// `bash -c <line>`.
pub fn shell_argv(line: String) -> Vec<String> {
    vec!["bash".into(), "-c".into(), line]
}

/// A requested timeout (`field`, in seconds), checked against the server's bounds.
pub fn checked_timeout(config: &Config, field: &str, secs: f64) -> Result<Duration> {
    let max = config.limits.max_exec_timeout_secs;
    if !(secs > 0.0 && secs <= max) {
        return Err(Error::invalid(format!(
            "{field} must be more than 0 and at most {max} seconds"
        )));
    }
    Ok(Duration::from_secs_f64(secs))
}

pub fn output_cap(config: &Config, cap: Option<usize>) -> Result<usize> {
    let cap = cap.unwrap_or(config.sandbox.output_cap_bytes);
    let max = config.limits.max_output_cap_bytes;
    if cap > max {
        return Err(Error::invalid(format!(
            "output_cap must be at most {max} bytes"
        )));
    }
    Ok(cap)
}
