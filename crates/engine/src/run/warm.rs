//! The pools runs take from: ready sandboxes of the run shape, sandboxes with a `python`
//! run's interpreter parked in them, and sandboxes with a started Python context.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::{Disposable, Runs};
use crate::context::{Context, ContextSpec, Language as ContextLanguage};
use crate::engine::{CreateSandbox, Need};
use crate::error::{Error, Result};
use crate::language::{self, Language};
use crate::pool::WarmPool;
use crate::process::{self, Parked};
use crate::python::Flavor;

/// The language whose runs can take an interpreter parked ahead of time.
const PARKED_LANGUAGE: &str = "python";

impl Runs {
    /// Keeps `pool` filled by `make` in the background, from the first call on.
    fn keep_warm<T, Fut>(
        self: &Arc<Self>,
        pool: &Arc<WarmPool<T>>,
        make: impl Fn(Arc<Runs>) -> Fut + Send + 'static,
    ) where
        T: Send + 'static,
        Fut: Future<Output = Result<T>> + Send,
    {
        let runs = self.clone();
        let engine = self.engine.clone();
        pool.start(move || make(runs.clone()), move || engine.is_stopping());
    }

    /// A fresh sandbox of the run shape, from the pool when one is ready.
    pub(super) async fn claim(self: &Arc<Self>, need: Need) -> Result<Disposable> {
        self.python.build_skeleton();
        self.keep_warm(&self.sandboxes, |runs| async move {
            runs.create(Need::Spare).await
        });
        // A pooled sandbox may have been stopped meanwhile (its lifetime ran out).
        let pooled = self.sandboxes.take_usable(|s| s.is_running());
        match pooled {
            Some(sandbox) => Ok(sandbox),
            None => self.create(need).await,
        }
    }

    /// A fresh sandbox of `image` for one run.
    pub(super) async fn create_of(&self, image: &str) -> Result<Disposable> {
        let shape = CreateSandbox {
            image: Some(image.to_string()),
            ..self.shape()
        };
        let sandbox = self.engine.create_for(shape, Need::Request).await?;
        Ok(Disposable::new(&self.engine, sandbox))
    }

    async fn create(&self, need: Need) -> Result<Disposable> {
        let sandbox = self.engine.create_for(self.shape(), need).await?;
        Ok(Disposable::new(&self.engine, sandbox))
    }

    /// A fresh sandbox with a `python` run's interpreter parked in it, if the pool has one.
    pub(super) fn claim_parked(self: &Arc<Self>) -> Option<(Disposable, Parked)> {
        self.python.build_skeleton();
        self.keep_warm(
            &self.pythons,
            |runs| async move { runs.park_python().await },
        );
        let usable = |(s, p): &(Disposable, Parked)| s.is_running() && p.waiting();
        self.pythons.take_usable(usable)
    }

    /// Whether a run can take a parked interpreter: plain `python` (other flavours fork from
    /// another zygote) in sandboxes of the `host` image (the zygote is the host's Python).
    pub(super) fn parks(&self, lang: &Language, flavor: Flavor) -> bool {
        let config = &self.engine.config;
        lang.name == PARKED_LANGUAGE
            && config.runs.python_zygote
            && flavor == Flavor::Plain
            && self.engine.images.is_host(&config.sandbox.image)
    }

    async fn park_python(self: &Arc<Self>) -> Result<(Disposable, Parked)> {
        let lang = language::find(PARKED_LANGUAGE).ok_or_else(|| Error::internal("no python"))?;
        let sandbox = self.create(Need::Spare).await?;
        let zygote = (self.python.zygote_for(&sandbox, Flavor::Plain).await)
            .ok_or_else(|| Error::Unavailable("the Python zygote is not running".into()))?;
        let argv = language::render(lang.run, "", self.engine.config.runs.memory_mb);
        let opts = self.exec_options(lang, argv, Duration::ZERO, None);
        let parked = process::park(&sandbox, &opts, &zygote).await?;
        Ok((sandbox, parked))
    }

    /// A fresh sandbox with a started Python context, from the pool when one is ready.
    pub(super) async fn claim_kernel(self: &Arc<Self>) -> Result<(Disposable, Arc<Context>)> {
        self.keep_warm(&self.kernels, |runs| async move {
            runs.start_kernel(Need::Spare).await
        });
        let pooled = self.kernels.take_usable(|(s, _)| s.is_running());
        match pooled {
            Some(ready) => Ok(ready),
            None => self.start_kernel(Need::Request).await,
        }
    }

    async fn start_kernel(self: &Arc<Self>, need: Need) -> Result<(Disposable, Arc<Context>)> {
        let sandbox = self.claim(need).await?;
        let spec = ContextSpec::new(ContextLanguage::Python);
        let context = self.contexts.start_unlisted(&sandbox, spec).await?;
        Ok((sandbox, context))
    }
}
