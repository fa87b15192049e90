//! `cella`: the server (`cella serve`) and a small client for a running server.

// Every unsafe block lives in cella-jail, behind a safe function.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod client;
mod contexts;
mod eval;
mod images;
mod serve;
mod shell;

#[derive(Parser)]
#[command(
    name = "cella",
    version,
    about = "Self-hosted code-execution sandboxes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Run a source file in a fresh sandbox on a running server and print its output.
    ///
    /// Exits with the program's status (128 + signal if killed; 124 at the timeout).
    Run(client::RunArgs),
    /// Run a command in a sandbox (a fresh one unless --sandbox is given).
    ///
    /// Exits with the command's status (128 + signal if killed; 124 at the timeout).
    Exec(client::ExecArgs),
    /// List the languages a running server can run, with their toolchains' versions.
    Languages(client::LanguagesArgs),
    /// An interactive session with a stateful context (python, javascript or bash) in a
    /// sandbox: variables, imports and the working directory stay from one entry to the
    /// next. Piped, runs all of stdin as one entry.
    Repl(contexts::ReplArgs),
    /// Stateful code contexts in a sandbox: new, ls, run, rm.
    #[command(subcommand)]
    Context(contexts::ContextCommand),
    /// Images: ls, pull, import, export, push, rm.
    #[command(subcommand)]
    Image(images::ImageCommand),
    /// Make an image of a running sandbox: its changes as a layer on top of its image.
    Commit(images::CommitArgs),
    /// Grade a benchmark's completions (JSONL) against a dataset the server holds, with
    /// SandboxFusion's rules: a progress bar, resumable results beside the input, pass@k.
    Eval(eval::EvalArgs),
    /// A terminal into a sandbox (a fresh one unless an id is given): an interactive login
    /// shell, exiting with its status.
    Shell(shell::ShellArgs),
}

#[derive(clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "CELLA_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:8080).
    #[arg(long)]
    listen: Option<String>,
    /// Directory for state and scratch space (default /var/lib/cella).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Run(args) => client::run(args),
        Command::Exec(args) => client::exec(args),
        Command::Image(command) => images::image(command),
        Command::Commit(args) => images::commit(args),
        Command::Shell(args) => shell::shell(args),
        Command::Eval(args) => eval::eval(args),
        Command::Languages(args) => client::languages(args),
        Command::Repl(args) => contexts::repl(args),
        Command::Context(command) => contexts::context(command),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cella: {e}");
            ExitCode::from(2)
        }
    }
}
