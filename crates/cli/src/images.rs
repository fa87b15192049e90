//! `cella image ...` and `cella commit`: images on a running server, with progress bars on
//! pulls and pushes.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::ExitCode;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::client::{Target, call, failure, unreachable};

#[derive(clap::Subcommand)]
pub enum ImageCommand {
    /// List images.
    Ls {
        #[command(flatten)]
        target: Target,
    },
    /// Pull an image from its registry (`busybox`, `127.0.0.1:5000/team/app:1`).
    Pull {
        #[command(flatten)]
        target: Target,
        reference: String,
        #[command(flatten)]
        login: Login,
    },
    /// Import a `docker save` or OCI layout tarball.
    Import {
        #[command(flatten)]
        target: Target,
        file: PathBuf,
        /// Name for the image (default: the names in the archive).
        #[arg(long)]
        name: Option<String>,
    },
    /// Export an image as a tarball (OCI layout with a docker manifest.json).
    Export {
        #[command(flatten)]
        target: Target,
        name: String,
        /// Where to write it.
        #[arg(long, short)]
        output: PathBuf,
    },
    /// Push an image to a registry.
    Push {
        #[command(flatten)]
        target: Target,
        name: String,
        /// Where to (default: the image's own name).
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        login: Login,
    },
    /// Remove an image (and the layers nothing else holds).
    Rm {
        #[command(flatten)]
        target: Target,
        name: String,
    },
}

#[derive(clap::Args)]
pub struct Login {
    /// Registry user name (else the server's configured credentials, else anonymous).
    #[arg(long)]
    username: Option<String>,
    /// Registry password or token (better given as the variable).
    #[arg(long, env = "CELLA_REGISTRY_PASSWORD", hide_env_values = true)]
    password: Option<String>,
}

#[derive(clap::Args)]
pub struct CommitArgs {
    #[command(flatten)]
    target: Target,
    /// The sandbox's id.
    sandbox: String,
    /// The new image's name.
    name: String,
}

pub fn image(command: ImageCommand) -> Result<ExitCode, String> {
    match command {
        ImageCommand::Ls { target } => {
            let (client, url) = target.connect("/images")?;
            let images = call(client.get(url))?;
            println!("{:<48} {:<10} {:>10}  SOURCE", "NAME", "KIND", "SIZE");
            for i in images.as_array().into_iter().flatten() {
                let size = i["size"].as_u64().map(human).unwrap_or_default();
                let source = i["source"].as_str().or(i["path"].as_str()).unwrap_or("");
                println!(
                    "{:<48} {:<10} {:>10}  {source}",
                    i["name"].as_str().unwrap_or(""),
                    i["kind"].as_str().unwrap_or(""),
                    size
                );
            }
        }
        ImageCommand::Pull {
            target,
            reference,
            login,
        } => {
            let (client, url) = target.connect("/images/pull")?;
            let body = login.body(json!({ "reference": reference, "stream": true }));
            let done = follow(client.post(url).json(&body))?;
            println!("{}", done["image"]["name"].as_str().unwrap_or(&reference));
        }
        ImageCommand::Import { target, file, name } => {
            let (client, url) = target.connect("/images/import")?;
            let data =
                std::fs::File::open(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let mut req = client.post(url).body(data);
            if let Some(name) = name {
                req = req.query(&[("name", name)]);
            }
            for i in call(req)?.as_array().into_iter().flatten() {
                println!("{}", i["name"].as_str().unwrap_or(""));
            }
        }
        ImageCommand::Export {
            target,
            name,
            output,
        } => {
            let (client, url) = target.connect(&format!("/images/{}/export", escape(&name)))?;
            let mut resp = client.get(url).send().map_err(unreachable)?;
            if !resp.status().is_success() {
                let status = resp.status();
                return Err(failure(status, &resp.json().unwrap_or(Value::Null)));
            }
            let mut out =
                std::fs::File::create(&output).map_err(|e| format!("{}: {e}", output.display()))?;
            resp.copy_to(&mut out).map_err(|e| e.to_string())?;
        }
        ImageCommand::Push {
            target,
            name,
            to,
            login,
        } => {
            let (client, url) = target.connect(&format!("/images/{}/push", escape(&name)))?;
            let body = login.body(json!({ "reference": to, "stream": true }));
            let done = follow(client.post(url).json(&body))?;
            println!("{}", done["digest"].as_str().unwrap_or(""));
        }
        ImageCommand::Rm { target, name } => {
            let (client, url) = target.connect(&format!("/images/{}", escape(&name)))?;
            call(client.delete(url))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn commit(args: CommitArgs) -> Result<ExitCode, String> {
    let (client, url) = args
        .target
        .connect(&format!("/sandboxes/{}/commit", args.sandbox))?;
    let image = call(client.post(url).json(&json!({ "name": args.name })))?;
    println!("{}", image["name"].as_str().unwrap_or(""));
    Ok(ExitCode::SUCCESS)
}

impl Login {
    fn body(&self, mut body: Value) -> Value {
        if let Some(u) = &self.username {
            body["username"] = json!(u);
            body["password"] = json!(self.password.clone().unwrap_or_default());
        }
        body
    }
}

/// Reads a streamed pull or push, drawing a bar per layer; returns its `done` event.
fn follow(req: reqwest::blocking::RequestBuilder) -> Result<Value, String> {
    let resp = req.send().map_err(unreachable)?;
    let status = resp.status();
    if !status.is_success() {
        return Err(failure(status, &resp.json().unwrap_or(Value::Null)));
    }
    let bars = MultiProgress::new();
    let style =
        ProgressStyle::with_template("{prefix:.bold} {msg:<12} [{bar:30}] {bytes}/{total_bytes}")
            .map_err(|e| e.to_string())?
            .progress_chars("=> ");
    let mut by_layer: HashMap<String, ProgressBar> = HashMap::new();
    for line in BufReader::new(resp).lines() {
        let line = line.map_err(|e| format!("the stream broke: {e}"))?;
        let event: Value = serde_json::from_str(&line).map_err(|e| e.to_string())?;
        match event["type"].as_str() {
            Some("progress") => {
                for layer in event["progress"]["layers"].as_array().into_iter().flatten() {
                    let digest = layer["digest"].as_str().unwrap_or("").to_string();
                    let bar = by_layer.entry(digest.clone()).or_insert_with(|| {
                        let bar = bars.add(ProgressBar::new(layer["size"].as_u64().unwrap_or(0)));
                        bar.set_style(style.clone());
                        let short = digest.trim_start_matches("sha256:");
                        bar.set_prefix(short[..short.len().min(12)].to_string());
                        bar
                    });
                    bar.set_position(layer["done"].as_u64().unwrap_or(0));
                    bar.set_message(layer["state"].as_str().unwrap_or("").to_string());
                }
            }
            Some("done") => {
                by_layer.values().for_each(ProgressBar::finish);
                return Ok(event);
            }
            Some("error") => {
                by_layer.values().for_each(ProgressBar::abandon);
                return Err(event["message"].as_str().unwrap_or("failed").to_string());
            }
            _ => {}
        }
    }
    Err("the server ended the stream without an outcome".into())
}

/// An image name as one path segment.
fn escape(name: &str) -> String {
    name.replace('/', "%2F")
}

fn human(bytes: u64) -> String {
    indicatif::HumanBytes(bytes).to_string()
}
