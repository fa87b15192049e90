//! Stopping and deleting sandboxes, one at a time or all at once at shutdown.

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, warn};

use super::Engine;
use crate::error::{Error, Result};
use crate::store::SANDBOXES;

impl Engine {
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
        let _ = self.store.put_sandbox(&info, None);
        debug!(sandbox = id, reason, "sandbox stopped");
        self.remember_stopped(info);
        self.stopped_one.notify_waiters();
        true
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
}

/// Removes a dead sandbox's cgroups; its processes may take a moment to leave them.
pub(super) async fn remove_cgroup(cgroup: &cella_jail::cgroup::SandboxCgroup) {
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
