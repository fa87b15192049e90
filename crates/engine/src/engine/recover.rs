//! Recovery: what a previous server (crashed or killed) left behind is reaped at start-up.

use std::time::Instant;

use tracing::info;

use super::Engine;
use crate::error::Result;
use crate::sandbox::{SandboxInfo, State};

impl Engine {
    /// Reaps what a previous server (crashed or killed) left: its sandboxes' processes and
    /// cgroups. Their mounts and namespaces died with their inits. Records become `stopped`.
    pub(super) fn recover(&self) -> Result<()> {
        let mut reaped = 0;
        for record in self.store.sandboxes()? {
            let (mut info, init) = (record.info(), record.init);
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
                self.store.put_sandbox(&info, None)?;
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

    /// Forgets a stopped sandbox; false if there was none of that id.
    pub(super) fn forget_stopped(&self, id: &str) -> bool {
        let mut stopped = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        stopped.remove(id).is_some()
    }

    pub(super) fn remember_stopped(&self, info: SandboxInfo) {
        self.stopped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(info.id.clone(), (info, Instant::now()));
    }
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
    fn own_start_time_is_readable() {
        assert!(process_start_time(std::process::id() as i32).is_some());
    }
}
