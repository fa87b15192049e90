//! `cella run`, `cella exec` and `cella languages`: thin clients of a running server's
//! native API, and the helpers every client command shares.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use reqwest::blocking::Client;
use serde_json::{Value, json};

#[derive(clap::Args)]
pub struct Target {
    /// The server's base URL.
    #[arg(long, env = "CELLA_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// The server's API token, if it has one (better given as the variable: a command
    /// line is readable by every user of the machine).
    #[arg(long, env = "CELLA_API_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl Target {
    /// The WebSocket URL of `path` under the native API.
    pub fn ws_url(&self, path: &str) -> Result<String, String> {
        let base = self.server.trim_end_matches('/');
        let ws = base
            .strip_prefix("http://")
            .map(|rest| format!("ws://{rest}"))
            .ok_or("cella shell speaks plain HTTP only (an http:// server)")?;
        Ok(format!("{ws}/api/v1{path}"))
    }

    /// The Authorization header's value, if a token is given.
    pub fn authorization(&self) -> Option<String> {
        self.token.as_ref().map(|t| format!("Bearer {t}"))
    }

    /// A client for the server, sending its token with every request, and the URL of
    /// `path` under its native API.
    pub fn connect(&self, path: &str) -> Result<(Client, String), String> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = &self.token {
            let mut value = reqwest::header::HeaderValue::try_from(format!("Bearer {token}"))
                .map_err(|_| "the API token must be printable ASCII".to_string())?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let client = Client::builder()
            .timeout(None)
            .default_headers(headers)
            .build()
            .map_err(|e| e.to_string())?;
        let url = format!("{}/api/v1{path}", self.server.trim_end_matches('/'));
        Ok((client, url))
    }
}

#[derive(clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    target: Target,
    /// Source file to run.
    file: PathBuf,
    /// Language (default: guessed from the file extension).
    #[arg(long, short)]
    language: Option<String>,
    /// Text passed on stdin; `-` passes this command's own standard input.
    #[arg(long)]
    stdin: Option<String>,
    /// Run timeout in seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
}

#[derive(clap::Args)]
pub struct LanguagesArgs {
    #[command(flatten)]
    target: Target,
}

#[derive(clap::Args)]
pub struct ExecArgs {
    #[command(flatten)]
    target: Target,
    /// An existing sandbox to run in; without it a fresh sandbox is created and deleted.
    #[arg(long)]
    sandbox: Option<String>,
    /// Image of the fresh sandbox.
    #[arg(long)]
    image: Option<String>,
    /// Timeout in seconds.
    #[arg(long)]
    timeout: Option<f64>,
    /// Text passed on stdin; `-` passes this command's own standard input.
    #[arg(long)]
    stdin: Option<String>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// Why a request got no answer, with its root cause (reqwest's own message names only the URL).
pub fn unreachable(e: reqwest::Error) -> String {
    let server = e
        .url()
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_default();
    let cause = std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
        .last()
        .map(ToString::to_string)
        .unwrap_or_default();
    format!(
        "cannot reach the server at {server}: {cause} (is `cella serve` running there? --server or CELLA_SERVER names another)"
    )
}

/// Sends a request and returns its JSON body, or the server's error message.
pub fn call(req: reqwest::blocking::RequestBuilder) -> Result<Value, String> {
    let resp = req.send().map_err(unreachable)?;
    let status = resp.status();
    let body: Value = if status == reqwest::StatusCode::NO_CONTENT {
        Value::Null
    } else {
        resp.json().map_err(|e| e.to_string())?
    };
    if !status.is_success() {
        return Err(failure(status, &body));
    }
    Ok(body)
}

/// How a failed request reads: its status and the server's message.
pub fn failure(status: reqwest::StatusCode, body: &Value) -> String {
    let msg = body["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| body.to_string());
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return format!("{status}: {msg} (give it as CELLA_API_TOKEN)");
    }
    format!("{status}: {msg}")
}

/// The text a `--stdin` value stands for.
fn stdin_text(arg: Option<String>) -> Result<Option<String>, String> {
    if arg.as_deref() != Some("-") {
        return Ok(arg);
    }
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| format!("reading stdin: {e}"))?;
    Ok(Some(text))
}

pub fn exec(args: ExecArgs) -> Result<ExitCode, String> {
    let stdin = stdin_text(args.stdin)?;
    let (http, base) = args.target.connect("")?;
    let (id, fresh) = match args.sandbox {
        Some(id) => (id, false),
        None => {
            let created = call(
                http.post(format!("{base}/sandboxes"))
                    .json(&json!({ "image": args.image })),
            )?;
            (created["id"].as_str().unwrap_or_default().to_string(), true)
        }
    };
    let body = json!({ "command": args.command, "timeout": args.timeout, "stdin": stdin });
    let result = stream_exec(&http, &format!("{base}/sandboxes/{id}/exec/stream"), body);
    if fresh {
        call(http.delete(format!("{base}/sandboxes/{id}")))?;
    }
    result
}

/// Runs a command through the streaming endpoint, printing output as it comes.
fn stream_exec(http: &Client, url: &str, body: Value) -> Result<ExitCode, String> {
    let resp = http.post(url).json(&body).send().map_err(unreachable)?;
    if !resp.status().is_success() {
        let status = resp.status();
        return Err(failure(status, &resp.json().unwrap_or_default()));
    }
    let mut code = ExitCode::FAILURE;
    for line in BufReader::new(resp).lines() {
        let event: Value =
            serde_json::from_str(&line.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        let data = event["data"].as_str().unwrap_or_default();
        match event["type"].as_str() {
            Some("stdout") => print_flush(&mut std::io::stdout(), data),
            Some("stderr") => print_flush(&mut std::io::stderr(), data),
            Some("exit") => code = exit_status(&event, "the command"),
            _ => {}
        }
    }
    Ok(code)
}

/// The status a shell gives a process that ended so: its exit code, 128 + the signal that
/// killed it, or, as coreutils' `timeout` does, 124 at the timeout. Says why on stderr when
/// the server ended it.
fn exit_status(end: &Value, what: &str) -> ExitCode {
    if end["timed_out"].as_bool() == Some(true) {
        eprintln!("cella: {what} timed out");
        return ExitCode::from(124);
    }
    let signal = end["signal"].as_i64();
    if end["oom_killed"].as_bool() == Some(true) {
        eprintln!("cella: {what} was killed at the memory limit");
    } else if let Some(signal) = signal {
        eprintln!("cella: {what} was killed by {}", signal_name(signal));
    }
    let code = (end["exit_code"].as_i64())
        .or_else(|| signal.map(|signal| 128 + signal))
        .unwrap_or(1);
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// A signal as a person reads it; a forbidden system call is how a sandbox ends with SIGSYS.
fn signal_name(signal: i64) -> String {
    const NAMES: [&str; 31] = [
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    let name = usize::try_from(signal - 1).ok().and_then(|i| NAMES.get(i));
    match name {
        Some(&"SIGSYS") => "SIGSYS (a system call the sandbox forbids)".into(),
        Some(name) => (*name).into(),
        None => format!("signal {signal}"),
    }
}

pub fn print_flush(out: &mut impl Write, data: &str) {
    let _ = out.write_all(data.as_bytes());
    let _ = out.flush();
}

/// Prints each language the server knows, with its toolchain's version or why it cannot run.
pub fn languages(args: LanguagesArgs) -> Result<ExitCode, String> {
    let (http, url) = args.target.connect("/languages")?;
    let listed = call(http.get(url))?;
    let mut out = String::new();
    for lang in listed.as_array().into_iter().flatten() {
        let name = lang["name"].as_str().unwrap_or_default();
        let about = match (lang["available"].as_bool(), lang["version"].as_str()) {
            (Some(true), version) => version.unwrap_or("available").to_string(),
            _ => format!(
                "unavailable: {}",
                lang["reason"].as_str().unwrap_or("unknown")
            ),
        };
        out.push_str(&format!("{name:<14} {about}\n"));
    }
    print_flush(&mut std::io::stdout(), &out);
    Ok(ExitCode::SUCCESS)
}

pub fn run(args: RunArgs) -> Result<ExitCode, String> {
    let code =
        std::fs::read_to_string(&args.file).map_err(|e| format!("{}: {e}", args.file.display()))?;
    let stdin = stdin_text(args.stdin)?;
    let language = match args.language {
        Some(l) => l,
        None => language_for(&args.file)?,
    };
    let (http, url) = args.target.connect("/runs")?;
    let result = call(http.post(url).json(&json!({
        "language": language, "code": code, "stdin": stdin, "run_timeout": args.timeout,
    })))?;
    let mut code = ExitCode::FAILURE;
    for stage in ["compile", "run"] {
        let r = &result[stage];
        if r.is_null() {
            continue;
        }
        print_flush(
            &mut std::io::stdout(),
            r["stdout"].as_str().unwrap_or_default(),
        );
        print_flush(
            &mut std::io::stderr(),
            r["stderr"].as_str().unwrap_or_default(),
        );
        code = exit_status(r, &format!("the {stage} step"));
    }
    Ok(code)
}

/// File extensions `cella run` recognises, and the language each one means.
const EXTENSIONS: &[(&str, &str)] = &[
    ("py", "python"),
    ("cpp", "cpp"),
    ("cc", "cpp"),
    ("cxx", "cpp"),
    ("c", "c"),
    ("go", "go"),
    ("java", "java"),
    ("js", "nodejs"),
    ("ts", "typescript"),
    ("tsx", "react"),
    ("rs", "rust"),
    ("sh", "bash"),
    ("rb", "ruby"),
    ("php", "php"),
    ("pl", "perl"),
    ("lua", "lua"),
    ("r", "R"),
    ("R", "R"),
    ("cs", "csharp"),
    ("scala", "scala"),
    ("kts", "kotlin_script"),
    ("rkt", "racket"),
    ("d", "D_ut"),
    ("sv", "verilog"),
    ("v", "verilog"),
    ("sql", "sql"),
];

fn language_for(file: &std::path::Path) -> Result<String, String> {
    let ext = file
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default();
    EXTENSIONS
        .iter()
        .find(|(e, _)| *e == ext)
        .map(|(_, language)| language.to_string())
        .ok_or_else(|| {
            format!(
                "cannot tell the language of {}: pass --language",
                file.display()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_guessed_language_exists() {
        for (ext, language) in EXTENSIONS {
            assert!(
                cella_engine::language::find(language).is_some(),
                ".{ext} names {language}, which is not in the language table"
            );
        }
        assert!(language_for(std::path::Path::new("notes.txt")).is_err());
    }
}
