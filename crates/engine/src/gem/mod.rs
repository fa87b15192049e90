//! GEM environments (`gem-llm`, the game and reasoning environments of an RL stack), each in
//! a sandbox of its own: a driver (`driver.py`) holds the environment and answers JSON lines
//! on a UNIX socket in the sandbox. A hostile env id or action reaches only that sandbox.
//! The sandbox's id is the environment's handle; closing it deletes the sandbox.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::engine::{CreateSandbox, Engine};
use crate::error::{Error, Result, quoted};
use crate::process::{ExecOptions, Process};

/// gem-llm and its dependencies, installed by `scripts/setup.sh`.
pub const GEM_PACKAGES: &str = "/opt/cella/gem";
const DRIVER: &str = include_str!("driver.py");
const SOCKET: &str = "/tmp/.cella-gem.sock";
/// Importing gem (and making an env) takes about a second; Sokoban's hard rooms far longer.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// An answer longer than this (a huge observation) is refused.
const MAX_ANSWER_BYTES: usize = 16 << 20;

/// A failure the environment itself reported, with its Python traceback.
#[derive(Debug)]
pub struct EnvError {
    pub message: String,
    pub traceback: Vec<String>,
}

/// One environment: its sandbox, driver and connection (calls one at a time).
pub struct GemEnv {
    pub sandbox_id: String,
    _driver: Arc<Process>,
    conn: tokio::sync::Mutex<BufReader<UnixStream>>,
}

impl GemEnv {
    /// A request and its answer; `Ok(Err(..))` is the environment's own failure.
    async fn call(&self, request: Value) -> Result<std::result::Result<Value, EnvError>> {
        let mut conn = self.conn.lock().await;
        let mut line = serde_json::to_vec(&request).map_err(Error::internal)?;
        line.push(b'\n');
        let exchange = async {
            conn.get_mut().write_all(&line).await?;
            let mut answer = Vec::new();
            let mut limited = (&mut *conn).take(MAX_ANSWER_BYTES as u64);
            limited.read_until(b'\n', &mut answer).await?;
            Ok::<_, std::io::Error>(answer)
        };
        let answer = tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| Error::Unavailable("the GEM environment did not answer in time".into()))?
            .map_err(|e| Error::Unavailable(format!("the GEM environment is gone ({e})")))?;
        if !answer.ends_with(b"\n") {
            return Err(Error::Unavailable(
                "the GEM environment is gone, or its answer was too large".into(),
            ));
        }
        let answer: Value = serde_json::from_slice(&answer).map_err(Error::internal)?;
        Ok(match answer.get("ok") {
            Some(ok) => Ok(ok.clone()),
            None => Err(EnvError {
                message: answer["error"].as_str().unwrap_or("failed").to_string(),
                traceback: (answer["traceback"].as_array().into_iter().flatten())
                    .filter_map(|l| l.as_str().map(str::to_string))
                    .collect(),
            }),
        })
    }
}

/// Every live environment, by its sandbox's id.
pub struct Gems {
    engine: Arc<Engine>,
    envs: Mutex<HashMap<String, Arc<GemEnv>>>,
}

pub type Answer = Result<std::result::Result<Value, EnvError>>;

impl Gems {
    pub fn new(engine: Arc<Engine>) -> Arc<Gems> {
        Arc::new(Gems {
            engine,
            envs: Mutex::default(),
        })
    }

    /// Makes `env_id` in a new sandbox; returns the sandbox's id.
    pub async fn make(
        self: &Arc<Self>,
        env_id: &str,
    ) -> Result<std::result::Result<String, EnvError>> {
        let sandbox = self.engine.create(CreateSandbox::default()).await?;
        let made = self.start(&sandbox, env_id).await;
        if !matches!(made, Ok(Ok(_))) {
            let _ = self.engine.delete(&sandbox.id).await;
        }
        let env = match made {
            Ok(Ok(env)) => env,
            Ok(Err(e)) => return Ok(Err(e)),
            Err(e) => return Err(e),
        };
        let id = env.sandbox_id.clone();
        (self.envs.lock().unwrap_or_else(|p| p.into_inner())).insert(id.clone(), Arc::new(env));
        // Forgotten when its sandbox stops, however it stops (an idle timeout, a ROCK stop).
        let (gems, stopped, forget) = (Arc::downgrade(self), sandbox.stop_token(), id.clone());
        tokio::spawn(async move {
            stopped.cancelled().await;
            if let Some(gems) = gems.upgrade() {
                (gems.envs.lock().unwrap_or_else(|p| p.into_inner())).remove(&forget);
            }
        });
        Ok(Ok(id))
    }

    async fn start(
        &self,
        sandbox: &Arc<crate::sandbox::Sandbox>,
        env_id: &str,
    ) -> Result<std::result::Result<GemEnv, EnvError>> {
        let opts = ExecOptions {
            // -S: gem's own dependencies only, never Debian's (matplotlib would clash).
            argv: ["python3", "-S", "-c", DRIVER, SOCKET]
                .map(String::from)
                .into(),
            env: [("PYTHONPATH".to_string(), GEM_PACKAGES.to_string())].into(),
            cwd: None,
            stdin: None,
            timeout: None,
            output_cap: 1 << 16,
        };
        let driver =
            crate::process::start_service(sandbox, opts, crate::process::Launcher::Init).await?;
        let deadline = Instant::now() + START_TIMEOUT;
        let stream =
            crate::process::connect_socket(sandbox, &driver, SOCKET, deadline, "GEM environment")
                .await?;
        let env = GemEnv {
            sandbox_id: sandbox.id.clone(),
            _driver: driver,
            conn: tokio::sync::Mutex::new(BufReader::new(stream)),
        };
        Ok(
            match env.call(json!({"op": "make", "env_id": env_id})).await? {
                Ok(_) => Ok(env),
                Err(e) => Err(needs_download(env_id, e)),
            },
        )
    }

    fn env(&self, sandbox_id: &str) -> Result<Arc<GemEnv>> {
        (self.envs.lock().unwrap_or_else(|p| p.into_inner()))
            .get(sandbox_id)
            .cloned()
            .ok_or_else(|| Error::not_found("GEM environment", sandbox_id))
    }

    pub async fn reset(&self, sandbox_id: &str, seed: Option<i64>) -> Answer {
        self.env(sandbox_id)?
            .call(json!({"op": "reset", "seed": seed}))
            .await
    }

    pub async fn step(&self, sandbox_id: &str, action: &str) -> Answer {
        self.env(sandbox_id)?
            .call(json!({"op": "step", "action": action}))
            .await
    }

    pub async fn list(&self, sandbox_id: &str) -> Answer {
        self.env(sandbox_id)?.call(json!({"op": "list"})).await
    }

    /// Forgets the environment and deletes its sandbox.
    pub async fn close(&self, sandbox_id: &str) -> Result<()> {
        let env = (self.envs.lock().unwrap_or_else(|p| p.into_inner())).remove(sandbox_id);
        if env.is_none() {
            return Err(Error::not_found("GEM environment", sandbox_id));
        }
        self.engine.delete(sandbox_id).await
    }
}

/// An env that fetches data at `make` (NLTK's words, Hugging Face datasets) says so.
fn needs_download(env_id: &str, e: EnvError) -> EnvError {
    let wants = [
        "nltk",
        "LookupError",
        "datasets",
        "huggingface",
        "HTTPSConnection",
        "urlopen",
    ];
    if wants.iter().any(|w| e.message.contains(w)) {
        EnvError {
            message: format!(
                "GEM environment {} needs a download, and sandboxes have no network: {}",
                quoted(env_id),
                e.message
            ),
            traceback: e.traceback,
        }
    } else {
        e
    }
}
