//! `cella repl` and `cella context ...`: stateful code contexts on a running server.

use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::process::ExitCode;

use reqwest::blocking::Client;
use serde_json::{Value, json};

use crate::client::{Target, call, failure, print_flush, unreachable};

#[derive(clap::Args)]
pub struct ReplArgs {
    #[command(flatten)]
    target: Target,
    /// python, javascript or bash.
    #[arg(long, short, default_value = "python")]
    language: String,
    /// An existing sandbox; without it a fresh sandbox is made, and deleted at the end.
    #[arg(long)]
    sandbox: Option<String>,
    /// Seconds each entry may run (past it, it is interrupted).
    #[arg(long)]
    timeout: Option<f64>,
}

#[derive(clap::Subcommand)]
pub enum ContextCommand {
    /// Start a context in a sandbox and print its id.
    New {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        sandbox: String,
        /// python, javascript or bash.
        #[arg(long, short, default_value = "python")]
        language: String,
        /// Working directory (default the home directory).
        #[arg(long)]
        cwd: Option<String>,
    },
    /// List a sandbox's contexts.
    Ls {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        sandbox: String,
    },
    /// Run code in a context, printing its outputs as they come. Exits 0, 1 if the code
    /// raised, 124 at the timeout.
    Run {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        sandbox: String,
        /// The context's id.
        context: String,
        /// The code; `-` (the default) reads it from stdin.
        #[arg(default_value = "-")]
        code: String,
        /// Seconds it may run.
        #[arg(long)]
        timeout: Option<f64>,
    },
    /// Delete a context.
    Rm {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        sandbox: String,
        context: String,
    },
}

pub fn context(command: ContextCommand) -> Result<ExitCode, String> {
    match command {
        ContextCommand::New {
            target,
            sandbox,
            language,
            cwd,
        } => {
            let (http, url) = target.connect(&format!("/sandboxes/{sandbox}/contexts"))?;
            let made = call(
                http.post(url)
                    .json(&json!({ "language": language, "cwd": cwd })),
            )?;
            println!("{}", made["id"].as_str().unwrap_or_default());
        }
        ContextCommand::Ls { target, sandbox } => {
            let (http, url) = target.connect(&format!("/sandboxes/{sandbox}/contexts"))?;
            for c in call(http.get(url))?.as_array().into_iter().flatten() {
                let state = if c["busy"] == true { "busy" } else { "idle" };
                let field = |k: &str| c[k].as_str().unwrap_or_default().to_string();
                println!(
                    "{}  {:<10} {state:<5} {}",
                    field("id"),
                    field("language"),
                    field("cwd")
                );
            }
        }
        ContextCommand::Run {
            target,
            sandbox,
            context,
            code,
            timeout,
        } => {
            let code = if code == "-" { read_stdin()? } else { code };
            let (http, base) =
                target.connect(&format!("/sandboxes/{sandbox}/contexts/{context}"))?;
            return stream_call(&http, &base, &code, timeout);
        }
        ContextCommand::Rm {
            target,
            sandbox,
            context,
        } => {
            let (http, url) =
                target.connect(&format!("/sandboxes/{sandbox}/contexts/{context}"))?;
            call(http.delete(url))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn read_stdin() -> Result<String, String> {
    let mut code = String::new();
    std::io::stdin()
        .read_to_string(&mut code)
        .map_err(|e| format!("reading stdin: {e}"))?;
    Ok(code)
}

/// A session with a context: at a terminal, entries are read one at a time (a line, or a
/// block ended by an empty line when its first line opens one); piped, all of stdin is one
/// entry.
pub fn repl(args: ReplArgs) -> Result<ExitCode, String> {
    let (http, base) = args.target.connect("")?;
    let (sandbox, fresh) = match args.sandbox {
        Some(id) => (id, false),
        None => {
            let made = call(http.post(format!("{base}/sandboxes")).json(&json!({})))?;
            (made["id"].as_str().unwrap_or_default().to_string(), true)
        }
    };
    let session = (|| {
        let contexts = format!("{base}/sandboxes/{sandbox}/contexts");
        let made = call(
            http.post(&contexts)
                .json(&json!({ "language": args.language })),
        )?;
        let context = format!("{contexts}/{}", made["id"].as_str().unwrap_or_default());
        if !std::io::stdin().is_terminal() {
            return stream_call(&http, &context, &read_stdin()?, args.timeout);
        }
        eprintln!(
            "{} in sandbox {sandbox}; an empty line ends a block, Ctrl-D quits",
            args.language
        );
        while let Some(entry) = read_entry()? {
            stream_call(&http, &context, &entry, args.timeout)?;
        }
        Ok(ExitCode::SUCCESS)
    })();
    if fresh {
        call(http.delete(format!("{base}/sandboxes/{sandbox}")))?;
    }
    session
}

/// One entry at the terminal; `None` at the end of input.
fn read_entry() -> Result<Option<String>, String> {
    let mut entry = String::new();
    let stdin = std::io::stdin();
    loop {
        eprint!("{}", if entry.is_empty() { ">>> " } else { "... " });
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        if stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| e.to_string())?
            == 0
        {
            return Ok((!entry.is_empty()).then_some(entry));
        }
        let blank = line.trim().is_empty();
        if entry.is_empty() && blank {
            continue;
        }
        if !entry.is_empty() && blank {
            return Ok(Some(entry));
        }
        let opens_block = entry.is_empty() && line.trim_end().ends_with([':', '{', '(', '[', '\\']);
        entry.push_str(&line);
        if entry.lines().count() == 1 && !opens_block {
            return Ok(Some(entry));
        }
    }
}

/// Runs `code` through the streaming endpoint of the context at `url`, printing each
/// output as it comes: text as is, a value or display by its text (and what else it holds),
/// an error's traceback, the files it wrote.
fn stream_call(
    http: &Client,
    url: &str,
    code: &str,
    timeout: Option<f64>,
) -> Result<ExitCode, String> {
    let body = json!({ "code": code, "timeout": timeout });
    let resp = http
        .post(format!("{url}/execute/stream"))
        .json(&body)
        .send()
        .map_err(unreachable)?;
    if !resp.status().is_success() {
        let status = resp.status();
        return Err(failure(status, &resp.json().unwrap_or_default()));
    }
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let mut code = ExitCode::FAILURE;
    // The value of the last error shown: a lost kernel is said again only in other words.
    let mut last_error = String::new();
    for line in BufReader::new(resp).lines() {
        let event: Value =
            serde_json::from_str(&line.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        let text = |k: &str| event[k].as_str().unwrap_or_default().to_string();
        match event["type"].as_str().unwrap_or_default() {
            "stream" if event["name"] == "stderr" => print_flush(&mut err, &text("text")),
            "stream" => print_flush(&mut out, &text("text")),
            "result" | "display" => print_flush(&mut out, &describe(&event["data"])),
            "error" => {
                let lines: Vec<&str> = (event["traceback"].as_array().into_iter().flatten())
                    .filter_map(Value::as_str)
                    .collect();
                let shown = match lines.is_empty() {
                    true => format!("{}: {}", text("name"), text("value")),
                    false => lines.join("\n"),
                };
                print_flush(&mut err, &format!("{shown}\n"));
                last_error = text("value");
            }
            "file" => print_flush(
                &mut err,
                &format!("[wrote {} ({} bytes)]\n", text("path"), event["size"]),
            ),
            "failed" => return Err(text("message")),
            "end" => {
                if let Some(lost) = event["kernel_lost"].as_str()
                    && lost != last_error
                {
                    eprintln!("cella: {lost}");
                }
                code = match event["status"].as_str() {
                    Some("ok") => ExitCode::SUCCESS,
                    Some("timeout") => {
                        eprintln!("cella: the code timed out and was interrupted");
                        ExitCode::from(124)
                    }
                    _ => ExitCode::FAILURE,
                };
            }
            _ => {}
        }
    }
    Ok(code)
}

/// A value or display as text: its `text/plain`, and the other forms it comes in.
fn describe(bundle: &Value) -> String {
    let plain = bundle["text/plain"].as_str().unwrap_or_default();
    let others: Vec<&str> = (bundle.as_object().into_iter().flatten())
        .map(|(k, _)| k.as_str())
        .filter(|k| *k != "text/plain")
        .collect();
    match others.is_empty() {
        true => format!("{plain}\n"),
        false => format!("{plain} [{}]\n", others.join(", ")),
    }
}
