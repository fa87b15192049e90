//! The contexts of every sandbox: created, found, listed and deleted here, and forgotten
//! with their sandbox when it stops (the sandbox says so: an event, not a poll).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OnceCell;

use super::kernels::Kernels;
use super::{Context, ContextSpec, Language};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::python::Pythons;
use crate::sandbox::Sandbox;

/// The contexts of one sandbox.
#[derive(Default)]
struct Held {
    /// In the order they were made.
    contexts: Vec<Arc<Context>>,
    /// The default context of each language (the one a call names by language only).
    defaults: HashMap<Language, Arc<OnceCell<Arc<Context>>>>,
}

pub struct Contexts {
    engine: Arc<Engine>,
    kernels: Arc<Kernels>,
    held: Mutex<HashMap<String, Held>>,
}

impl Contexts {
    pub fn new(engine: Arc<Engine>, pythons: Arc<Pythons>) -> Arc<Contexts> {
        let config = &engine.config;
        let kernels = Arc::new(Kernels {
            pythons,
            start_timeout: Duration::from_secs_f64(config.contexts.start_timeout_secs),
            output_cap: config.sandbox.output_cap_bytes,
        });
        Arc::new(Contexts {
            engine,
            kernels,
            held: Mutex::default(),
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a context in a running sandbox; returns once its kernel answers.
    pub async fn create(
        self: &Arc<Self>,
        sandbox_id: &str,
        spec: ContextSpec,
    ) -> Result<Arc<Context>> {
        let sandbox = self.engine.get(sandbox_id)?;
        // Checked again once the kernel is up: others may have been made meanwhile.
        self.check_room(&self.held(), sandbox_id)?;
        // In a task of its own: a kernel started for a caller no longer there is stopped
        // when its context is dropped, and nothing is left half registered.
        let (contexts, started) = (self.clone(), sandbox.clone());
        let context = tokio::spawn(async move {
            let max_queued = contexts.engine.config.contexts.max_queued_calls;
            Context::start(started, spec, contexts.kernels.clone(), max_queued).await
        })
        .await
        .map_err(Error::internal)??;
        let context = Arc::new(context);
        self.hold(&sandbox, context.clone())?;
        Ok(context)
    }

    /// Starts a context the registry does not hold (a one-shot notebook's, in a sandbox of
    /// the server's own): its owner closes it.
    pub async fn start_unlisted(
        &self,
        sandbox: &Arc<Sandbox>,
        spec: ContextSpec,
    ) -> Result<Arc<Context>> {
        let max_queued = self.engine.config.contexts.max_queued_calls;
        let context = Context::start(sandbox.clone(), spec, self.kernels.clone(), max_queued);
        Ok(Arc::new(context.await?))
    }

    /// Refuses a context beyond `contexts.max_per_sandbox`.
    fn check_room(&self, held: &HashMap<String, Held>, sandbox_id: &str) -> Result<()> {
        let most = self.engine.config.contexts.max_per_sandbox;
        if held.get(sandbox_id).map_or(0, |h| h.contexts.len()) >= most {
            return Err(Error::Conflict(format!(
                "sandbox {sandbox_id} holds its limit of {most} contexts; delete one first"
            )));
        }
        Ok(())
    }

    /// Registers `context` with its sandbox, if the sandbox still runs and has room.
    fn hold(self: &Arc<Self>, sandbox: &Arc<Sandbox>, context: Arc<Context>) -> Result<()> {
        let mut held = self.held();
        let refused = match sandbox.is_running() {
            false => Some(Error::Conflict(format!(
                "sandbox {} is stopped",
                sandbox.id
            ))),
            true => self.check_room(&held, &sandbox.id).err(),
        };
        if let Some(e) = refused {
            context.close();
            return Err(e);
        }
        (self.held_for(&mut held, sandbox).contexts).push(context);
        Ok(())
    }

    /// What a sandbox holds; the first time, a task is set to forget it when it stops.
    fn held_for<'a>(
        self: &Arc<Self>,
        held: &'a mut HashMap<String, Held>,
        sandbox: &Arc<Sandbox>,
    ) -> &'a mut Held {
        held.entry(sandbox.id.clone()).or_insert_with(|| {
            let (contexts, stopped) = (Arc::downgrade(self), sandbox.stop_token());
            let id = sandbox.id.clone();
            tokio::spawn(async move {
                stopped.cancelled().await;
                if let Some(contexts) = contexts.upgrade() {
                    contexts.forget(&id);
                }
            });
            Held::default()
        })
    }

    /// Drops the contexts of a sandbox that stopped.
    fn forget(&self, sandbox_id: &str) {
        let gone = self.held().remove(sandbox_id);
        for context in gone.into_iter().flat_map(|h| h.contexts) {
            context.close();
        }
    }

    pub fn get(&self, sandbox_id: &str, context_id: &str) -> Result<Arc<Context>> {
        self.engine.get(sandbox_id)?;
        self.held()
            .get(sandbox_id)
            .and_then(|h| h.contexts.iter().find(|c| c.id == context_id))
            .cloned()
            .ok_or_else(|| Error::not_found("context", context_id))
    }

    /// The contexts of a running sandbox, oldest first.
    pub fn list(&self, sandbox_id: &str) -> Result<Vec<Arc<Context>>> {
        self.engine.get(sandbox_id)?;
        Ok(self
            .held()
            .get(sandbox_id)
            .map(|h| h.contexts.clone())
            .unwrap_or_default())
    }

    /// Deletes a context: its kernel stops, and calls waiting on it do not run.
    pub fn delete(&self, sandbox_id: &str, context_id: &str) -> Result<()> {
        self.engine.get(sandbox_id)?;
        let mut held = self.held();
        let h = held.get_mut(sandbox_id);
        let h = h.ok_or_else(|| Error::not_found("context", context_id))?;
        let at = (h.contexts.iter().position(|c| c.id == context_id))
            .ok_or_else(|| Error::not_found("context", context_id))?;
        h.contexts.remove(at).close();
        h.defaults
            .retain(|_, cell| cell.get().is_none_or(|c| c.id != context_id));
        Ok(())
    }

    /// The default context of `language` in a sandbox, made with `spec` on first use (once,
    /// however many calls ask at the same time).
    pub async fn default_for(
        self: &Arc<Self>,
        sandbox_id: &str,
        spec: ContextSpec,
    ) -> Result<Arc<Context>> {
        let sandbox = self.engine.get(sandbox_id)?;
        let cell = (self.held_for(&mut self.held(), &sandbox).defaults)
            .entry(spec.language)
            .or_default()
            .clone();
        let context = cell
            .get_or_try_init(|| self.create(sandbox_id, spec))
            .await?;
        Ok(context.clone())
    }
}
