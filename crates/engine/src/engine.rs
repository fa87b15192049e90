//! The engine: creates, tracks, stops and recovers sandboxes. Every face calls into this.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use cella_jail::cgroup::{Cgroups, Limits};
use cella_jail::fsops::SandboxFs;
use cella_jail::probe::Features;
use cella_jail::proto::SandboxSpec;
use cella_jail::{Spawned, Spawner};
use serde::Deserialize;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::control::Control;
use crate::error::{Error, Result, quoted, within};
use crate::host_claim::HostClaim;
use crate::image::Images;
use crate::pool::Spares;
use crate::process::OutputBudget;
use crate::sandbox::{ExecDefaults, Record, Sandbox, SandboxInfo, State, now_secs};
use crate::store::{SANDBOXES, Store};

/// A request for a new sandbox; anything left out takes the configured default.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct CreateSandbox {
    /// Image name or alias (default `host`).
    pub image: Option<String>,
    /// CPU cores (fractional allowed).
    pub cpus: Option<f64>,
    pub memory_mb: Option<u64>,
    /// Maximum number of processes and threads.
    pub pids: Option<u64>,
    /// Size of the writable layer.
    pub disk_mb: Option<u64>,
    /// Environment every exec in the sandbox sees.
    pub env: BTreeMap<String, String>,
    /// What to find the sandbox by (`?label=key=value`): at most 64, keys of 1 to 128 bytes
    /// without `=`, values of at most 1024 bytes.
    pub labels: BTreeMap<String, String>,
    /// Stop after this long without activity (0 = never).
    pub idle_timeout_secs: Option<u64>,
    /// Stop this long after creation (0 = the server's maximum).
    pub max_lifetime_secs: Option<u64>,
    /// Default `sandbox-` and the id's first 8 characters.
    pub hostname: Option<String>,
}

pub struct Engine {
    pub config: Config,
    pub features: Features,
    pub images: Images,
    spawner: Spawner,
    /// This server's cgroup parent and uids, held against other servers.
    _claim: HostClaim,
    cgroups: Cgroups,
    store: Arc<Store>,
    live: RwLock<HashMap<String, Arc<Sandbox>>>,
    /// Sandboxes being created (see `reserve_slot`).
    creating: Mutex<usize>,
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

struct UidPool {
    base: u32,
    count: u32,
    next: u32,
    used: HashSet<u32>,
}

impl UidPool {
    /// Hands out uids round-robin so a just-freed uid is not reused at once.
    fn alloc(&mut self) -> Option<u32> {
        for i in 0..self.count {
            let uid = self.base + (self.next + i) % self.count;
            if self.used.insert(uid) {
                self.next = (uid - self.base + 1) % self.count;
                return Some(uid);
            }
        }
        None
    }

    fn free(&mut self, uid: u32) {
        self.used.remove(&uid);
    }
}

impl Engine {
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
        let cgroups = Cgroups::detect(&config.cgroup_parent)?;
        let total_mb = match config.limits.total_memory_mb {
            0 => host_memory_mb() * 9 / 10,
            mb => mb,
        };
        cgroups.limit_total_memory(total_mb << 20)?;
        info!(cgroups = %cgroups.describe(), total_memory_mb = total_mb, "cgroups");
        let uids = UidPool {
            base: config.uid_base,
            count: config.uid_count.max(1),
            next: 0,
            used: HashSet::new(),
        };
        let output_budget = OutputBudget::new(config.limits.max_output_bytes_held);
        let engine = Engine {
            _claim: claim,
            config,
            features,
            images,
            spawner,
            cgroups,
            store,
            live: RwLock::default(),
            stopped: Mutex::default(),
            uids: Mutex::new(uids),
            output_budget,
            stopping: std::sync::atomic::AtomicBool::new(false),
            creating: Mutex::new(0),
            spares: Mutex::default(),
            stopped_one: tokio::sync::Notify::new(),
            in_flight: tokio::sync::RwLock::new(()),
        };
        engine.recover()?;
        Ok(Arc::new(engine))
    }

    /// Reaps what a previous server (crashed or killed) left: its sandboxes' processes and
    /// cgroups. Their mounts and namespaces died with their inits. Records become `stopped`.
    fn recover(&self) -> Result<()> {
        let records: Vec<Record> = self.store.all(SANDBOXES)?;
        let mut reaped = 0;
        for Record { mut info, init } in records {
            if info.state == State::Running {
                if let Some((pid, start)) = init
                    && process_start_time(pid) == Some(start)
                {
                    let _ = cella_jail::sys::kill(pid, libc::SIGKILL);
                }
                let cg = self.cgroups.sandbox(&info.id);
                cg.kill_all();
                let _ = cg.remove();
                info.state = State::Stopped;
                info.stop_reason = Some("server restarted".into());
                self.store.put(
                    SANDBOXES,
                    &info.id,
                    &Record {
                        info: info.clone(),
                        init: None,
                    },
                    false,
                )?;
                reaped += 1;
            }
            self.remember_stopped(info);
        }
        // Cgroups the store never heard of (a crash between creating and recording).
        let mut swept = 0;
        for name in self.cgroups.list() {
            let cg = self.cgroups.sandbox(&name);
            cg.kill_all();
            if cg.remove().is_ok() {
                swept += 1;
            }
        }
        self.store.flush()?;
        if reaped + swept > 0 {
            info!(reaped, swept, "reaped sandboxes left by a previous server");
        }
        Ok(())
    }

    fn remember_stopped(&self, info: SandboxInfo) {
        self.stopped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(info.id.clone(), (info, Instant::now()));
    }

    /// Starts the idle/lifetime reaper and the state flusher.
    pub fn spawn_background(self: &Arc<Self>) {
        let engine = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(engine) = engine.upgrade() else {
                    return;
                };
                engine.reap_expired().await;
            }
        });
        let engine = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(store) = engine.upgrade().map(|e| e.store.clone()) else {
                    return;
                };
                store.dirtied().await;
                // Coalesce a burst of writes into one fsync.
                tokio::time::sleep(Duration::from_millis(2)).await;
                match tokio::task::spawn_blocking(move || store.flush()).await {
                    Ok(Err(e)) => warn!(error = %e, "state flush failed"),
                    Err(e) => warn!(error = %e, "state flush panicked"),
                    Ok(Ok(())) => {}
                }
            }
        });
    }

    async fn reap_expired(&self) {
        let now = now_secs();
        let candidates: Vec<(Arc<Sandbox>, String)> = self
            .live
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter_map(|s| {
                let info = s.info();
                let lifetime = info.max_lifetime_secs as f64;
                let idle = info.idle_timeout_secs as f64;
                let reason = if s.control().is_closed() {
                    init_exit_reason(s)
                } else if lifetime > 0.0 && now - info.created_at > lifetime {
                    "max lifetime reached".into()
                } else if idle > 0.0 && s.idle_secs() > idle {
                    "idle timeout".into()
                } else {
                    return None;
                };
                Some((s.clone(), reason))
            })
            .collect();
        for (sandbox, reason) in candidates {
            info!(sandbox = %sandbox.id, reason, "stopping sandbox");
            self.stop(&sandbox.id, &reason).await;
        }
        let retention = Duration::from_secs(self.config.limits.stopped_retention_secs);
        let expired: Vec<String> = {
            let mut stopped = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
            let old: Vec<String> = stopped
                .iter()
                .filter(|(_, (_, at))| at.elapsed() > retention)
                .map(|(id, _)| id.clone())
                .collect();
            for id in &old {
                stopped.remove(id);
            }
            old
        };
        for id in expired {
            let _ = self.store.remove(SANDBOXES, &id, false);
        }
    }

    fn resolve(&self, req: &CreateSandbox) -> Result<(SandboxInfo, crate::image::Image)> {
        let d = &self.config.sandbox;
        let l = &self.config.limits;
        let cpus = req.cpus.unwrap_or(d.cpus);
        if !(0.01..=l.max_cpus).contains(&cpus) {
            return Err(Error::invalid(format!(
                "cpus must be between 0.01 and {}",
                l.max_cpus
            )));
        }
        let memory_mb = within(
            "memory_mb",
            req.memory_mb.unwrap_or(d.memory_mb),
            16,
            l.max_memory_mb,
        )?;
        let pids = within("pids", req.pids.unwrap_or(d.pids), 8, l.max_pids)?;
        let disk_mb = within(
            "disk_mb",
            req.disk_mb.unwrap_or(d.disk_mb),
            1,
            l.max_disk_mb,
        )?;
        let lifetime = match req.max_lifetime_secs.unwrap_or(d.max_lifetime_secs) {
            0 => l.max_lifetime_secs,
            s => within("max_lifetime_secs", s, 1, l.max_lifetime_secs)?,
        };
        // 0: never idle; beyond the longest lifetime an idle timeout could never fire.
        let idle_timeout_secs = within(
            "idle_timeout_secs",
            req.idle_timeout_secs.unwrap_or(d.idle_timeout_secs),
            0,
            l.max_lifetime_secs,
        )?;
        crate::sandbox::check_env(&req.env)?;
        check_labels(&req.labels)?;
        let image = self
            .images
            .resolve(req.image.as_deref().unwrap_or(&d.image))?;
        let id = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
        let hostname = match &req.hostname {
            Some(h) if valid_hostname(h) => h.clone(),
            Some(h) => {
                return Err(Error::invalid(format!(
                    "invalid hostname {}: at most 64 characters, in dot-separated parts of \
                     letters, digits and '-', none starting or ending with '-'",
                    quoted(h)
                )));
            }
            None => format!("sandbox-{}", &id[..8]),
        };
        let info = SandboxInfo {
            id,
            image: image.name.clone(),
            state: State::Running,
            stop_reason: None,
            hostname,
            cpus,
            memory_mb,
            pids,
            disk_mb,
            env: req.env.clone(),
            labels: req.labels.clone(),
            idle_timeout_secs,
            max_lifetime_secs: lifetime,
            created_at: now_secs(),
            uid: 0,
        };
        Ok((info, image))
    }

    /// Creates a sandbox for a request (see [`Engine::create_for`]).
    pub async fn create(self: &Arc<Self>, req: CreateSandbox) -> Result<Arc<Sandbox>> {
        self.create_for(req, Need::Request).await
    }

    /// Lets `pool`'s ready sandboxes give way to requests when the server is at its cap.
    pub(crate) fn yield_spares(&self, pool: Weak<dyn Spares>) {
        self.spares
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(pool);
    }

    /// Creates a sandbox for `need`. The work runs to its end in a task of its own: a caller
    /// that goes away mid-way (a dropped request) would otherwise leave a half-made sandbox
    /// behind, and one finished for a caller no longer there is destroyed.
    pub(crate) async fn create_for(
        self: &Arc<Self>,
        req: CreateSandbox,
        need: Need,
    ) -> Result<Arc<Sandbox>> {
        let (reply, created) = tokio::sync::oneshot::channel();
        let engine = self.clone();
        tokio::spawn(async move {
            if let Err(Ok(orphan)) = reply.send(engine.create_now(req, need).await) {
                let _ = engine.delete_now(&orphan.id).await;
            }
        });
        created.await.map_err(Error::internal)?
    }

    async fn create_now(&self, req: CreateSandbox, need: Need) -> Result<Arc<Sandbox>> {
        let started = Instant::now();
        let (mut info, image) = self.resolve(&req)?;
        // Before `in_flight`: a shutdown waiting for it must not wait for room as well.
        let slot = match self.reserve_slot() {
            Err(Error::Busy(_)) if matches!(need, Need::Request) => {
                self.slot_from_a_spare().await?
            }
            reserved => reserved?,
        };
        let _in_flight = self.in_flight.read().await;
        if self.is_stopping() {
            return Err(Error::Unavailable("the server is shutting down".into()));
        }
        info.uid = self
            .uids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .alloc()
            .ok_or_else(|| Error::Busy("no free sandbox uid; retry later".into()))?;
        let result = self.start(&mut info, image).await;
        let sandbox = match result {
            Ok(s) => s,
            Err(e) => {
                self.uids
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .free(info.uid);
                let _ = self.cgroups.sandbox(&info.id).remove();
                return Err(e);
            }
        };
        let live_count = {
            let mut live = self.live.write().unwrap_or_else(|p| p.into_inner());
            live.insert(sandbox.id.clone(), sandbox.clone());
            // Counted as live from here, in the same step (reserve_slot counts under this lock).
            drop(slot);
            live.len()
        };
        if let Err(e) = self
            .store
            .put(SANDBOXES, &sandbox.id, &sandbox.record(), false)
        {
            let _ = self.delete_now(&sandbox.id).await;
            return Err(e);
        }
        metrics::gauge!("cella_sandboxes_live").set(live_count as f64);
        metrics::histogram!("cella_sandbox_create_seconds").record(started.elapsed().as_secs_f64());
        debug!(sandbox = %sandbox.id, image = %info.image, uid = info.uid, elapsed = ?started.elapsed(), "sandbox created");
        Ok(sandbox)
    }

    /// A place for one more sandbox under `limits.max_sandboxes`, counting those being created
    /// as well as those live: concurrent creates cannot all pass a check of the live ones.
    fn reserve_slot(&self) -> Result<Slot<'_>> {
        let live = self.live.read().unwrap_or_else(|p| p.into_inner());
        let mut creating = self.creating.lock().unwrap_or_else(|p| p.into_inner());
        if live.len() + *creating >= self.config.limits.max_sandboxes {
            return Err(Error::Busy(format!(
                "the server runs its maximum of {} sandboxes; retry later",
                self.config.limits.max_sandboxes
            )));
        }
        *creating += 1;
        Ok(Slot(&self.creating))
    }

    /// A slot freed by a warm pool giving up one of its sandboxes; Busy if no pool has one,
    /// or another request took each place freed so.
    async fn slot_from_a_spare(&self) -> Result<Slot<'_>> {
        loop {
            let stopped = self.stopped_one.notified();
            tokio::pin!(stopped);
            stopped.as_mut().enable();
            match self.reserve_slot() {
                Err(Error::Busy(_)) if self.give_up_a_spare() => {
                    // A stop takes milliseconds; the bound is for a stop that never ends.
                    let _ = tokio::time::timeout(Duration::from_secs(5), stopped).await;
                }
                reserved => return reserved,
            }
        }
    }

    fn give_up_a_spare(&self) -> bool {
        let pools: Vec<_> = (self.spares.lock().unwrap_or_else(|p| p.into_inner()))
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        pools.iter().any(|pool| pool.give_up_one())
    }

    async fn start(
        &self,
        info: &mut SandboxInfo,
        image: crate::image::Image,
    ) -> Result<Arc<Sandbox>> {
        let limits = Limits {
            memory_bytes: info.memory_mb << 20,
            pids: info.pids,
            cpus: info.cpus,
        };
        let d = &self.config.sandbox;
        let spec = SandboxSpec {
            id: info.id.clone(),
            hostname: info.hostname.clone(),
            uid: info.uid,
            lowerdirs: image.lowerdirs,
            masks: image.masks,
            disk_bytes: info.disk_mb << 20,
            cgroups: Vec::new(),
            init_memory_cgroup: self.cgroups.init_memory_dir(),
            exec_cgroup_dir: Default::default(),
            scratch_dir: self.config.scratch_dir(),
            shm_bytes: d.shm_mb << 20,
            // Built from the host's own packages, so only for the host image.
            home_skeleton: Some(self.config.skeleton_dir())
                .filter(|d| image.name == crate::image::HOST && d.is_dir()),
        };
        let (cgroup, spawned) = blocking(|| {
            let cgroup = self.cgroups.create(&spec.id, &limits)?;
            let spec = SandboxSpec {
                cgroups: cgroup.named_dirs(),
                exec_cgroup_dir: cgroup.exec_parent(),
                ..spec.clone()
            };
            match self.spawner.spawn(&spec) {
                Ok(s) => Ok((cgroup, s)),
                Err(e) => {
                    let _ = cgroup.remove();
                    Err(Error::from(e))
                }
            }
        })?;
        let Spawned {
            pid,
            pidfd,
            control,
        } = spawned;
        let ready = tokio::time::timeout(Duration::from_secs(30), Control::start(control)).await;
        let control = match ready {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(self.abandon(pidfd, &cgroup, e).await),
            Err(_) => {
                return Err(self
                    .abandon(
                        pidfd,
                        &cgroup,
                        Error::Unavailable("sandbox setup timed out".into()),
                    )
                    .await);
            }
        };
        let fs = match SandboxFs::open(pid, info.uid) {
            Ok(fs) => fs,
            Err(e) => return Err(self.abandon(pidfd, &cgroup, Error::internal(e)).await),
        };
        let init = process_start_time(pid).map(|t| (pid, t));
        let defaults = ExecDefaults {
            open_files: d.open_files,
            disk_bytes: info.disk_mb << 20,
            output_budget: self.output_budget.clone(),
        };
        Ok(Arc::new(Sandbox::new(
            info.clone(),
            init,
            cgroup,
            pidfd,
            control,
            fs,
            defaults,
        )?))
    }

    async fn abandon(
        &self,
        pidfd: std::os::fd::OwnedFd,
        cgroup: &cella_jail::cgroup::SandboxCgroup,
        e: Error,
    ) -> Error {
        use std::os::fd::AsFd;
        let _ = cella_jail::sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
        if let Ok(fd) = cella_jail::async_fd(pidfd) {
            let _ = tokio::time::timeout(Duration::from_secs(5), fd.readable()).await;
        }
        remove_cgroup(cgroup).await;
        e
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
        let internal = crate::run::RUN_LABEL;
        all.retain(|i| !i.labels.contains_key(internal) || labels.contains_key(internal));
        all.retain(|i| labels.iter().all(|(k, v)| i.labels.get(k) == Some(v)));
        all.sort_by(|a, b| a.created_at.total_cmp(&b.created_at));
        all
    }

    /// Stops a sandbox and removes it (and its record), in a task of its own: a caller that
    /// stops waiting (a dropped request) must not leave it half torn down, its cgroup and
    /// uid never released.
    pub async fn delete(self: &Arc<Self>, id: &str) -> Result<()> {
        let (engine, id) = (self.clone(), id.to_owned());
        let deleting = tokio::spawn(async move { engine.delete_now(&id).await });
        deleting.await.map_err(Error::internal)?
    }

    /// The work of [`Engine::delete`], for a caller already in a task that nothing cancels.
    pub(crate) async fn delete_now(&self, id: &str) -> Result<()> {
        let was_live = self.stop(id, "deleted").await;
        let was_stopped = self
            .stopped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
            .is_some();
        if !was_live && !was_stopped {
            return Err(Error::not_found("sandbox", id));
        }
        self.store.remove(SANDBOXES, id, false)
    }

    /// Stops a running sandbox: kills every process, releases its resources and keeps its
    /// record as `stopped`. Returns false if it was not running.
    pub async fn stop(&self, id: &str, reason: &str) -> bool {
        let _in_flight = self.in_flight.read().await;
        let Some(sandbox) = self
            .live
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
        else {
            return false;
        };
        metrics::gauge!("cella_sandboxes_live")
            .set(self.live.read().unwrap_or_else(|p| p.into_inner()).len() as f64);
        sandbox.kill().await;
        remove_cgroup(&sandbox.cgroup).await;
        let info = sandbox.mark_stopped(reason);
        self.uids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .free(info.uid);
        let _ = self.store.put(
            SANDBOXES,
            id,
            &Record {
                info: info.clone(),
                init: None,
            },
            false,
        );
        debug!(sandbox = id, reason, "sandbox stopped");
        self.remember_stopped(info);
        self.stopped_one.notify_waiters();
        true
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

    /// Stops every sandbox (graceful server shutdown).
    pub async fn shutdown(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // Creates that began before the flag was set finish (later ones see it and refuse).
        drop(self.in_flight.write().await);
        let ids: Vec<String> = self
            .live
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        let stops = ids.iter().map(|id| self.stop(id, "server shut down"));
        futures::future::join_all(stops).await;
        // Stops other tasks began meanwhile finish too.
        drop(self.in_flight.write().await);
        self.cgroups.remove_parents();
        let _ = self.store.flush();
    }

    pub fn register_image(&self, name: &str, path: &Path) -> Result<crate::image::ImageInfo> {
        self.images.register(name, path, &self.store)
    }

    pub fn remove_image(&self, name: &str) -> Result<()> {
        self.images.remove(name, &self.store)
    }

    pub fn live_count(&self) -> usize {
        self.live.read().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Removes a dead sandbox's cgroups; its processes may take a moment to leave them.
async fn remove_cgroup(cgroup: &cella_jail::cgroup::SandboxCgroup) {
    for attempt in 0..100 {
        let cg = cgroup.clone();
        let done = tokio::task::spawn_blocking(move || {
            if attempt > 20 {
                cg.kill_all();
            }
            cg.remove().is_ok()
        })
        .await
        .unwrap_or(false);
        if done {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    warn!(
        cgroup = cgroup.name(),
        "cgroup still busy; it will be swept at next start"
    );
}

/// Why a sandbox's init is gone: its spawner reaped it, so its exit status is not ours to
/// read, but the memory cgroup tells whether the OOM killer was at work.
fn init_exit_reason(sandbox: &Sandbox) -> String {
    match sandbox.usage().oom_kills {
        0 => "the sandbox's init exited".into(),
        n => format!(
            "the sandbox's init exited: its memory ({} MB) ran out and the OOM killer ended \
             {n} of its processes (files in the sandbox count against its memory)",
            sandbox.info().memory_mb
        ),
    }
}

/// Runs blocking setup (cgroup writes, the spawner round trip) without stalling the runtime:
/// the worker thread hands its other tasks over while it blocks.
fn blocking<T: Send>(f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    tokio::task::block_in_place(f)
}

/// Whom a sandbox is made for: a request, for which a warm pool gives up a ready sandbox at
/// the sandbox cap; or a warm pool itself, which waits for room like any other (taking
/// another pool's would only move the shortage).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Need {
    Request,
    Spare,
}

/// A sandbox being created, counted against `limits.max_sandboxes` until it is live or has
/// failed.
struct Slot<'a>(&'a Mutex<usize>);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
    }
}

/// Labels find sandboxes again (`?label=key=value`); they are not a place for data.
fn check_labels(labels: &BTreeMap<String, String>) -> Result<()> {
    const MOST: usize = 64;
    if labels.len() > MOST {
        return Err(Error::invalid(format!(
            "{} labels: a sandbox has at most {MOST}",
            labels.len()
        )));
    }
    for (key, value) in labels {
        if key.is_empty() || key.len() > 128 || key.contains('=') || value.len() > 1024 {
            return Err(Error::invalid(format!(
                "invalid label {}: a key is 1 to 128 bytes without '=', a value at most 1024 \
                 bytes",
                quoted(key)
            )));
        }
    }
    Ok(())
}

/// A hostname as RFC 1123 spells one, within the kernel's 64 bytes.
fn valid_hostname(h: &str) -> bool {
    h.len() <= 64
        && h.split('.').all(|part| {
            !part.is_empty()
                && part.len() <= 63
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
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

/// Start time of a process in clock ticks since boot (`/proc/<pid>/stat` field 22).
pub(crate) fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after its closing paren are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_pool_round_robin_and_exhaustion() {
        let mut p = UidPool {
            base: 100,
            count: 3,
            next: 0,
            used: HashSet::new(),
        };
        assert_eq!(p.alloc(), Some(100));
        assert_eq!(p.alloc(), Some(101));
        p.free(100);
        assert_eq!(p.alloc(), Some(102));
        assert_eq!(p.alloc(), Some(100));
        assert_eq!(p.alloc(), None);
    }

    #[test]
    fn own_start_time_is_readable() {
        assert!(process_start_time(std::process::id() as i32).is_some());
    }
}
