//! The background tasks: the reaper stopping sandboxes past their idle timeout or lifetime
//! (or whose init died), forgetting old stopped ones, and the state flusher.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::Engine;
use crate::sandbox::{Sandbox, now_secs};
use crate::store::SANDBOXES;

impl Engine {
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
