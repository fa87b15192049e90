//! Creating sandboxes: the request resolved against the configuration, a place under
//! `limits.max_sandboxes` (a warm pool giving way at the cap), a uid, cgroups, and an init
//! cloned into new namespaces by the spawner.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use cella_jail::Spawned;
use cella_jail::cgroup::Limits;
use cella_jail::fsops::SandboxFs;
use cella_jail::proto::SandboxSpec;
use tracing::debug;

use super::{Engine, blocking, process_start_time, remove_cgroup};
use crate::control::Control;
use crate::error::{Error, Result, quoted, within};
use crate::pool::Spares;
use crate::sandbox::{ExecDefaults, Sandbox, SandboxInfo, State, now_secs};

/// A request for a new sandbox; anything left out takes the configured default.
#[derive(Debug, Clone, Default)]
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
    /// The sandbox's id, chosen by the caller (AgentRun's `sandboxId`): 1 to 63 letters,
    /// digits, `-` and `_`, starting with a letter or digit. Default: 16 random hex digits.
    pub id: Option<String>,
    /// Network egress (none unless asked for).
    pub network: Option<crate::network::NetworkPolicy>,
}

impl Engine {
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
            .resolve(req.image.as_deref().unwrap_or(&d.image), &self.content)?;
        let id = match &req.id {
            Some(id) if valid_id(id) => id.clone(),
            Some(id) => {
                return Err(Error::invalid(format!(
                    "invalid sandbox id {}: 1 to 63 letters, digits, '-' and '_', starting \
                     with a letter or digit",
                    quoted(id)
                )));
            }
            None => uuid::Uuid::new_v4().simple().to_string()[..16].to_string(),
        };
        let hostname = match &req.hostname {
            Some(h) if valid_hostname(h) => h.clone(),
            Some(h) => {
                return Err(Error::invalid(format!(
                    "invalid hostname {}: at most 64 characters, in dot-separated parts of \
                     letters, digits and '-', none starting or ending with '-'",
                    quoted(h)
                )));
            }
            None => format!("sandbox-{}", default_hostname_part(&id)),
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
            network: req.network.clone().filter(|n| n.egress).unwrap_or_default(),
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
            let image = req.image.as_deref().unwrap_or(&engine.config.sandbox.image);
            let created = match engine.ensure_image(image).await {
                Ok(()) => engine.create_now(req, need).await,
                Err(e) => Err(e),
            };
            if let Err(Ok(orphan)) = reply.send(created) {
                let _ = engine.delete_now(&orphan.id).await;
            }
        });
        created.await.map_err(Error::internal)?
    }

    async fn create_now(&self, req: CreateSandbox, need: Need) -> Result<Arc<Sandbox>> {
        let started = Instant::now();
        let (mut info, image) = self.resolve(&req)?;
        // A policy's mistakes (a name that does not resolve) are found before anything is made.
        let egress_rules = match info.network.egress {
            true => Some(
                crate::network::ruleset(&info.network, self.config.network.max_bandwidth_mbps)
                    .await?,
            ),
            false => None,
        };
        // Before `in_flight`: a shutdown waiting for it must not wait for room as well.
        let slot = match self.reserve_slot(&info.id) {
            Err(Error::Busy(_)) if matches!(need, Need::Request) => {
                self.slot_from_a_spare(&info.id).await?
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
        let result = match self.start(&mut info, image).await {
            Ok(sandbox) => match egress_rules {
                Some(rules) => self.connect(sandbox, rules).await,
                None => Ok(sandbox),
            },
            Err(e) => Err(e),
        };
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
        if let Err(e) = self.store.put_sandbox(&sandbox.info(), sandbox.init) {
            let _ = self.delete_now(&sandbox.id).await;
            return Err(e);
        }
        metrics::gauge!("cella_sandboxes_live").set(live_count as f64);
        metrics::histogram!("cella_sandbox_create_seconds").record(started.elapsed().as_secs_f64());
        debug!(sandbox = %sandbox.id, image = %info.image, uid = info.uid, elapsed = ?started.elapsed(), "sandbox created");
        Ok(sandbox)
    }

    /// A place for sandbox `id` under `limits.max_sandboxes`, counting those being created
    /// as well as those live: concurrent creates cannot all pass a check of the live ones,
    /// nor make two sandboxes of one id. A stopped sandbox of that id is forgotten.
    fn reserve_slot(&self, id: &str) -> Result<Slot<'_>> {
        let live = self.live.read().unwrap_or_else(|p| p.into_inner());
        let mut creating = self.creating.lock().unwrap_or_else(|p| p.into_inner());
        if live.contains_key(id) || creating.contains(id) {
            return Err(Error::Conflict(format!("sandbox {id} already exists")));
        }
        if live.len() + creating.len() >= self.config.limits.max_sandboxes {
            return Err(Error::Busy(format!(
                "the server runs its maximum of {} sandboxes; retry later",
                self.config.limits.max_sandboxes
            )));
        }
        if self.forget_stopped(id) {
            let _ = self.store.remove(crate::store::SANDBOXES, id, false);
        }
        creating.insert(id.to_string());
        Ok(Slot(&self.creating, id.to_string()))
    }

    /// A slot freed by a warm pool giving up one of its sandboxes; Busy if no pool has one,
    /// or another request took each place freed so.
    async fn slot_from_a_spare(&self, id: &str) -> Result<Slot<'_>> {
        loop {
            let stopped = self.stopped_one.notified();
            tokio::pin!(stopped);
            stopped.as_mut().enable();
            match self.reserve_slot(id) {
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
            lowerdirs: image.lowerdirs.clone(),
            masks: image.masks.clone(),
            keep_image_home: image.keep_home,
            host_base: image.host_base,
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
        let (control, upper) = match ready {
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
            (control, upper),
            fs,
            defaults,
            image,
        )?))
    }

    /// Gives a started sandbox its way out (see `crate::network`), or destroys it.
    async fn connect(&self, sandbox: Arc<Sandbox>, rules: String) -> Result<Arc<Sandbox>> {
        let linked = async {
            let (pid, _) = sandbox
                .init
                .ok_or_else(|| Error::internal("the sandbox has no init"))?;
            let uplink = crate::network::connect(pid, rules).await?;
            let resolv = crate::network::resolv_conf();
            sandbox
                .on_path("/etc/resolv.conf", move |fs, path| {
                    fs.write(path, resolv.as_bytes(), 0o644, false)
                })
                .await?;
            sandbox.attach_uplink(uplink);
            Ok(())
        };
        match linked.await {
            Ok(()) => Ok(sandbox),
            Err(e) => {
                sandbox.kill().await;
                remove_cgroup(&sandbox.cgroup).await;
                Err(e)
            }
        }
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
}

/// Whom a sandbox is made for: a request, for which a warm pool gives up a ready sandbox at
/// the sandbox cap; or a warm pool itself, which waits for room like any other (taking
/// another pool's would only move the shortage).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Need {
    Request,
    Spare,
}

/// A sandbox being created (by id), counted against `limits.max_sandboxes` until it is live
/// or has failed.
struct Slot<'a>(&'a Mutex<HashSet<String>>, String);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.1);
    }
}

fn valid_id(id: &str) -> bool {
    (1..=63).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// What of an id goes in the default hostname: its first 8 characters that a hostname may
/// hold, `_` read as `-`.
fn default_hostname_part(id: &str) -> String {
    let part: String = id
        .chars()
        .take(8)
        .map(|c| if c == '_' { '-' } else { c })
        .collect();
    part.trim_end_matches('-').to_string()
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
