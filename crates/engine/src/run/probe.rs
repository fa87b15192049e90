//! Which languages can run here: each toolchain asked for its version, once, in a sandbox.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tracing::{info, warn};

use super::{Runs, lang_env};
use crate::engine::CreateSandbox;
use crate::error::{Error, Result};
use crate::language::{self, Language, LanguageInfo};
use crate::process::{self, ExecOptions, Outcome};
use crate::sandbox::Sandbox;

impl Runs {
    /// Every language and whether it can run here. The toolchains are checked in a sandbox
    /// the first time this is asked (once; runs never wait for it: a missing toolchain is
    /// also noticed when a run cannot start it).
    pub async fn languages(self: &Arc<Self>) -> Vec<LanguageInfo> {
        let runs = self.clone();
        self.probed
            .get_or_init(|| async move {
                // Its own task, so a client that goes away cannot abandon the probe sandbox.
                let _ = tokio::spawn(async move { runs.probe_languages().await }).await;
            })
            .await;
        self.availability.list()
    }

    async fn probe_languages(&self) {
        let shape = CreateSandbox {
            labels: self.shape().labels,
            ..Default::default()
        };
        let sandbox = match self.engine.create(shape).await {
            Ok(s) => s,
            Err(e) => return warn!(error = %e, "could not probe languages"),
        };
        // Four at a time: some toolchains (JVMs) take a second to answer.
        let limit = Arc::new(Semaphore::new(4));
        // Each check gets an exec's default time (a minute unless configured otherwise).
        let timeout = Duration::from_secs_f64(self.engine.config.sandbox.exec_timeout_secs);
        let probes: Vec<_> = language::LANGUAGES
            .iter()
            .filter(|l| l.missing.is_none())
            .map(|lang| tokio::spawn(probe(sandbox.clone(), lang, limit.clone(), timeout)))
            .collect();
        let mut available = Vec::new();
        for p in probes {
            let Ok((lang, result)) = p.await else {
                continue;
            };
            let info = probe_result(lang, result);
            if info.available {
                available.push(lang.name);
            }
            self.availability.record(info);
        }
        let _ = self.engine.delete(&sandbox.id).await;
        info!(count = available.len(), languages = %available.join(" "), "languages available");
    }
}

async fn probe(
    sandbox: Arc<Sandbox>,
    lang: &'static Language,
    limit: Arc<Semaphore>,
    timeout: Duration,
) -> (&'static Language, Result<Outcome>) {
    let _permit = limit.acquire().await;
    let opts = ExecOptions {
        argv: lang.version.iter().map(|s| s.to_string()).collect(),
        env: lang_env(lang),
        cwd: None,
        stdin: None,
        timeout: Some(timeout),
        output_cap: 4096,
    };
    (lang, process::run(&sandbox, opts).await)
}

fn probe_result(lang: &Language, result: Result<Outcome>) -> LanguageInfo {
    let mut info = LanguageInfo {
        name: lang.name.to_string(),
        available: false,
        version: None,
        reason: None,
        compiled: lang.compile.is_some(),
    };
    match result {
        Ok(Outcome { exit, output }) if exit.exit_code == Some(0) => {
            let text = [output.stdout, output.stderr].concat();
            let text = String::from_utf8_lossy(&text);
            info.available = true;
            // The first line that is not a warning (the JVM launchers print some first),
            // without a log level's prefix (kotlinc says `info: kotlinc-jvm 1.3 ...`).
            info.version = text
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty() && !l.to_ascii_lowercase().contains("warning"))
                .map(|l| l.strip_prefix("info: ").unwrap_or(l).to_string());
        }
        Ok(Outcome { output, .. }) => {
            let err = String::from_utf8_lossy(&output.stderr)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string();
            info.reason = Some(format!(
                "the toolchain check `{}` failed: {err}",
                lang.version.join(" ")
            ));
        }
        Err(Error::MissingProgram(_)) => {
            info.reason = Some(format!("`{}` is not installed", lang.version[0]))
        }
        Err(e) => info.reason = Some(e.to_string()),
    }
    info
}
