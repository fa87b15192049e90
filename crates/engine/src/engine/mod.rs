//! The engine: the registry of live and recently stopped sandboxes, split by verb:
//! `create.rs` makes them, `stop.rs` stops and deletes them, `reaper.rs` stops those past
//! their idle timeout or lifetime, `recover.rs` reaps what a previous server left behind,
//! `uids.rs` hands out the uid each runs as. Every face calls into this.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Instant;

use cella_jail::Spawner;
use cella_jail::cgroup::Cgroups;
use cella_jail::probe::Features;
use tracing::info;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::host_claim::HostClaim;
use crate::image::Images;
use crate::image::content::Content;
use crate::image::registry::Registries;
use crate::pool::Spares;
use crate::process::OutputBudget;
use crate::sandbox::{Sandbox, SandboxInfo};
use crate::store::Store;

mod create;
mod images;
mod reaper;
mod recover;
mod stop;
mod uids;

pub use create::CreateSandbox;
pub(crate) use create::Need;
pub use images::Pull;
pub(crate) use recover::process_start_time;
use stop::remove_cgroup;
use uids::UidPool;

pub struct Engine {
    pub config: Config,
    pub features: Features,
    pub images: Images,
    content: Arc<Content>,
    registries: Registries,
    pulls: images::Pulls,
    spawner: Spawner,
    /// This server's cgroup parent and uids, held against other servers.
    _claim: HostClaim,
    cgroups: Cgroups,
    store: Arc<Store>,
    live: RwLock<HashMap<String, Arc<Sandbox>>>,
    /// The ids of sandboxes being created (see `reserve_slot`).
    creating: Mutex<std::collections::HashSet<String>>,
    /// Warm pools whose ready sandboxes give way to a request that finds the server full,
    /// the first registered first.
    spares: Mutex<Vec<Weak<dyn Spares>>>,
    /// Told each time a sandbox has stopped: its place under the cap is free.
    stopped_one: tokio::sync::Notify,
    stopped: Mutex<HashMap<String, (SandboxInfo, Instant)>>,
    uids: Mutex<UidPool>,
    output_budget: Arc<OutputBudget>,
    /// Set when the server shuts down: no more sandboxes are made.
    stopping: std::sync::atomic::AtomicBool,
    /// Held shared by every create and stop in flight; shutdown takes it exclusively to wait
    /// for them: a sandbox whose create was under way must be stopped too, and one another
    /// task was stopping (a run's, after its answer) must be gone.
    in_flight: tokio::sync::RwLock<()>,
}

impl Engine {
    /// The cgroup layout sandboxes are made in (`cgroup v1 at ...`, `cgroup v2 at ...`).
    pub fn cgroup_layout(&self) -> String {
        self.cgroups.describe()
    }

    /// Opens the state, reaps whatever a previous server left behind, and starts serving.
    /// `spawner` must have been started before any thread.
    pub fn new(
        config: Config,
        config_file: Option<&Path>,
        spawner: Spawner,
        features: Features,
    ) -> Result<Arc<Engine>> {
        // First: without it, the reaping below could be another live server's sandboxes.
        let claim = HostClaim::take(&config)?;
        for dir in [
            config.data_dir.clone(),
            config.scratch_dir(),
            config.images_dir(),
        ] {
            std::fs::create_dir_all(&dir).map_err(|e| {
                Error::Internal(format!(
                    "the data dir: cannot create {} ({e}); give a writable one with \
                         --data-dir or CELLA_DATA_DIR",
                    dir.display()
                ))
            })?;
        }
        let store = Arc::new(Store::open(&config.state_file())?);
        let images = Images::load(&config, config_file, &store)?;
        let limits = cella_jail::layer::Limits {
            max_bytes: config.images.max_layer_bytes,
            max_entries: config.images.max_layer_entries,
        };
        let content = Arc::new(Content::open(&config.content_dir(), limits)?);
        // Registries speak TLS through rustls with ring (which builds in seconds, where
        // aws-lc, rustls's post-quantum default, takes minutes); the first install wins.
        #[allow(deprecated)]
        let _ = rustls::crypto::ring::default_provider().install_default();
        let registries = Registries::new(&config.images.registries);
        let cgroups = Cgroups::detect(&config.cgroup_parent)?;
        let total_mb = match config.limits.total_memory_mb {
            0 => host_memory_mb() * 9 / 10,
            mb => mb,
        };
        cgroups.limit_total_memory(total_mb << 20)?;
        info!(cgroups = %cgroups.describe(), total_memory_mb = total_mb, "cgroups");
        let uids = UidPool::new(config.uid_base, config.uid_count);
        let output_budget = OutputBudget::new(config.limits.max_output_bytes_held);
        let engine = Engine {
            _claim: claim,
            config,
            features,
            images,
            content,
            registries,
            pulls: Default::default(),
            spawner,
            cgroups,
            store,
            live: RwLock::default(),
            stopped: Mutex::default(),
            uids: Mutex::new(uids),
            output_budget,
            stopping: std::sync::atomic::AtomicBool::new(false),
            creating: Mutex::default(),
            spares: Mutex::default(),
            stopped_one: tokio::sync::Notify::new(),
            in_flight: tokio::sync::RwLock::new(()),
        };
        engine.recover()?;
        engine.collect_garbage();
        Ok(Arc::new(engine))
    }

    /// A running sandbox.
    pub fn get(&self, id: &str) -> Result<Arc<Sandbox>> {
        if let Some(s) = self.live.read().unwrap_or_else(|p| p.into_inner()).get(id) {
            return Ok(s.clone());
        }
        if self
            .stopped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(id)
        {
            return Err(Error::Conflict(format!("sandbox {id} is stopped")));
        }
        Err(Error::not_found("sandbox", id))
    }

    /// A sandbox's description, running or recently stopped.
    pub fn info(&self, id: &str) -> Result<SandboxInfo> {
        if let Some(s) = self.live.read().unwrap_or_else(|p| p.into_inner()).get(id) {
            return Ok(s.info());
        }
        self.stopped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .map(|(i, _)| i.clone())
            .ok_or_else(|| Error::not_found("sandbox", id))
    }

    /// Sandboxes whose labels include every `labels` pair, oldest first.
    pub fn list(
        &self,
        labels: &BTreeMap<String, String>,
        include_stopped: bool,
    ) -> Vec<SandboxInfo> {
        let mut all: Vec<SandboxInfo> = self
            .live
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|s| s.info())
            .collect();
        if include_stopped {
            all.extend(
                self.stopped
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .map(|(i, _)| i.clone()),
            );
        }
        // One-shot run sandboxes are internal unless asked for by their label.
        let internal = crate::sandbox::INTERNAL_LABEL;
        all.retain(|i| !i.labels.contains_key(internal) || labels.contains_key(internal));
        all.retain(|i| labels.iter().all(|(k, v)| i.labels.get(k) == Some(v)));
        all.sort_by(|a, b| a.created_at.total_cmp(&b.created_at));
        all
    }

    /// Resolves when the spawner process has died. Its sandboxes die with it, and no new
    /// one can be made: the server can only exit (a restart reaps what is left).
    pub async fn spawner_died(&self) -> std::io::Result<()> {
        let pidfd = cella_jail::async_fd(self.spawner.pidfd().try_clone_to_owned()?)?;
        let _ready = pidfd.readable().await?;
        Ok(())
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn live_count(&self) -> usize {
        self.live.read().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Runs blocking setup (cgroup writes, the spawner round trip) without stalling the runtime:
/// the worker thread hands its other tasks over while it blocks.
fn blocking<T: Send>(f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    tokio::task::block_in_place(f)
}

/// The host's memory in MiB, from `/proc/meminfo`.
fn host_memory_mb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
        })
        .map_or(4096, |kb| kb / 1024)
}
