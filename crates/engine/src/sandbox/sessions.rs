//! A sandbox's sessions, by name: made, found, listed and closed here; they end with it.

use std::sync::Arc;
use std::time::Duration;

use super::Sandbox;
use crate::error::{Error, Result, quoted};
use crate::session::{Session, SessionCommand, SessionOutcome, SessionSpec};

/// Sessions one sandbox may hold at once.
pub const MAX_SESSIONS: usize = 64;

impl Sandbox {
    /// Starts a session; its name must be new in the sandbox.
    pub async fn create_session(self: &Arc<Self>, spec: SessionSpec) -> Result<Arc<Session>> {
        let name = spec.name.clone();
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(Error::invalid(
                "a session name is 1 to 128 printable characters",
            ));
        }
        self.check_session_room(&name)?;
        let session = Arc::new(Session::start(self, spec).await?);
        let refused = {
            let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            match self.check_session_room_in(&sessions, &name) {
                Ok(()) if self.is_running() => {
                    sessions.insert(name.clone(), session.clone());
                    None
                }
                Ok(()) => Some(Error::Conflict(format!("sandbox {} is stopped", self.id))),
                Err(e) => Some(e),
            }
        };
        if let Some(e) = refused {
            session.close(self).await;
            return Err(e);
        }
        Ok(session)
    }

    fn check_session_room(&self, name: &str) -> Result<()> {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        self.check_session_room_in(&sessions, name)
    }

    fn check_session_room_in(
        &self,
        sessions: &std::collections::BTreeMap<String, Arc<Session>>,
        name: &str,
    ) -> Result<()> {
        if sessions.contains_key(name) {
            return Err(Error::Conflict(format!(
                "session {} already exists",
                quoted(name)
            )));
        }
        if sessions.len() >= MAX_SESSIONS {
            return Err(Error::Conflict(format!(
                "the sandbox holds its maximum of {MAX_SESSIONS} sessions"
            )));
        }
        Ok(())
    }

    pub fn session(&self, name: &str) -> Result<Arc<Session>> {
        (self.sessions.lock().unwrap_or_else(|p| p.into_inner()))
            .get(name)
            .cloned()
            .ok_or_else(|| Error::not_found("session", name))
    }

    /// In the order of their names.
    pub fn sessions(&self) -> Vec<Arc<Session>> {
        (self.sessions.lock().unwrap_or_else(|p| p.into_inner()))
            .values()
            .cloned()
            .collect()
    }

    /// Runs `command` in session `name` (the sandbox kept from idling out meanwhile); a
    /// session whose shell ended is forgotten.
    pub async fn run_in_session(
        self: &Arc<Self>,
        name: &str,
        command: &SessionCommand,
        timeout: Duration,
        max_output: usize,
    ) -> Result<SessionOutcome> {
        let session = self.session(name)?;
        let _active = self.hold_active();
        let outcome = session.run(self, command, timeout, max_output).await?;
        if outcome.ended {
            let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            // Unless another of that name took its place meanwhile.
            if sessions.get(name).is_some_and(|s| Arc::ptr_eq(s, &session)) {
                sessions.remove(name);
            }
        }
        Ok(outcome)
    }

    /// Ends a session and everything its shell started.
    pub async fn close_session(self: &Arc<Self>, name: &str) -> Result<()> {
        let session = (self.sessions.lock().unwrap_or_else(|p| p.into_inner()))
            .remove(name)
            .ok_or_else(|| Error::not_found("session", name))?;
        session.close(self).await;
        Ok(())
    }
}
