//! The async side of a sandbox init's control channel.
//!
//! Commands are sent from any task; one reader task routes each event to the exec it belongs
//! to. When the channel closes (the init died), every waiting exec is told so.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};

use cella_jail::proto::{self, Command, Event};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};

use crate::error::{Error, Result};

/// What an exec learns from the init.
#[derive(Debug)]
pub enum ExecEvent {
    Started {
        pid: i32,
    },
    SpawnFailed {
        error: String,
        missing_program: bool,
    },
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
        cpu_us: u64,
    },
    /// The sandbox died before the exec finished.
    Lost,
}

type Waiters = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<ExecEvent>>>>;

pub struct Control {
    fd: Arc<AsyncFd<OwnedFd>>,
    send_lock: tokio::sync::Mutex<()>,
    waiters: Waiters,
    alive: watch::Receiver<bool>,
}

impl Control {
    /// Waits for the init's first event (`Ready` or `SetupFailed`), then starts routing.
    /// Returns the sandbox's writable layer (the overlay's upper directory) with it.
    pub async fn start(fd: OwnedFd) -> Result<(Control, OwnedFd)> {
        cella_jail::sys::set_nonblocking(fd.as_fd()).map_err(Error::internal)?;
        let fd = Arc::new(cella_jail::async_fd(fd).map_err(Error::internal)?);
        let mut buf = Vec::new();
        let upper = match recv(&fd, &mut buf).await {
            Some((Event::Ready, mut fds)) if fds.len() == 1 => fds.remove(0),
            Some((Event::SetupFailed { error }, _)) => {
                return Err(Error::Internal(format!("sandbox setup failed: {error}")));
            }
            other => {
                return Err(Error::Internal(format!(
                    "sandbox init did not start (got {:?})",
                    other.map(|(event, _)| event)
                )));
            }
        };
        let waiters: Waiters = Arc::default();
        let (alive_tx, alive) = watch::channel(true);
        tokio::spawn(route(fd.clone(), waiters.clone(), alive_tx, buf));
        let control = Control {
            fd,
            send_lock: tokio::sync::Mutex::new(()),
            waiters,
            alive,
        };
        Ok((control, upper))
    }

    /// Registers for the events of exec `id`; call before sending its `Exec`.
    pub fn subscribe(&self, id: u64) -> mpsc::UnboundedReceiver<ExecEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        // Checked under the lock the router drains under, so no exec misses `Lost`.
        let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        if !*self.alive.borrow() {
            let _ = tx.send(ExecEvent::Lost);
        }
        waiters.insert(id, tx);
        rx
    }

    pub fn unsubscribe(&self, id: u64) {
        self.waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    pub async fn send(&self, cmd: &Command, fds: &[BorrowedFd<'_>]) -> Result<()> {
        let _guard = self.send_lock.lock().await;
        loop {
            let mut ready = self.fd.writable().await.map_err(Error::internal)?;
            match ready.try_io(|fd| proto::send(fd.get_ref().as_fd(), cmd, fds)) {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e))
                    if e.raw_os_error() == Some(libc::EMSGSIZE)
                        || e.kind() == std::io::ErrorKind::InvalidInput =>
                {
                    return Err(Error::TooLarge(
                        "the command and its environment are too large".into(),
                    ));
                }
                Ok(Err(_)) => return Err(Error::Conflict("the sandbox is not running".into())),
                Err(_would_block) => continue,
            }
        }
    }

    pub fn is_closed(&self) -> bool {
        !*self.alive.borrow()
    }

    /// Resolves when the init is gone.
    pub async fn closed(&self) {
        let mut alive = self.alive.clone();
        let _ = alive.wait_for(|a| !*a).await;
    }
}

async fn recv(fd: &AsyncFd<OwnedFd>, buf: &mut Vec<u8>) -> Option<(Event, Vec<OwnedFd>)> {
    loop {
        let mut ready = fd.readable().await.ok()?;
        match ready.try_io(|fd| proto::recv::<Event>(fd.get_ref().as_fd(), buf)) {
            Ok(Ok(Some(message))) => return Some(message),
            Ok(Ok(None)) | Ok(Err(_)) => return None,
            Err(_would_block) => continue,
        }
    }
}

/// An init (or zygote) event as the exec it concerns sees it.
fn exec_event(event: Event) -> Option<(u64, ExecEvent)> {
    Some(match event {
        Event::Started { id, pid } => (id, ExecEvent::Started { pid }),
        Event::SpawnFailed {
            id,
            error,
            missing_program,
        } => (
            id,
            ExecEvent::SpawnFailed {
                error,
                missing_program,
            },
        ),
        Event::Exited {
            id,
            code,
            signal,
            cpu_us,
        } => (
            id,
            ExecEvent::Exited {
                code,
                signal,
                cpu_us,
            },
        ),
        Event::Ready | Event::SetupFailed { .. } => return None,
    })
}

async fn route(
    fd: Arc<AsyncFd<OwnedFd>>,
    waiters: Waiters,
    alive: watch::Sender<bool>,
    mut buf: Vec<u8>,
) {
    while let Some((event, _)) = recv(&fd, &mut buf).await {
        let Some((id, event)) = exec_event(event) else {
            continue;
        };
        let waiters = waiters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = waiters.get(&id) {
            let _ = tx.send(event);
        }
    }
    let mut waiters = waiters.lock().unwrap_or_else(|p| p.into_inner());
    let _ = alive.send(false);
    for (_, tx) in waiters.drain() {
        let _ = tx.send(ExecEvent::Lost);
    }
}

/// The events of one process reported on a channel of its own (the zygote's); `Lost` when
/// the channel closes early.
pub fn events_of(fd: OwnedFd) -> Result<mpsc::UnboundedReceiver<ExecEvent>> {
    cella_jail::sys::set_nonblocking(fd.as_fd()).map_err(Error::internal)?;
    let fd = cella_jail::async_fd(fd).map_err(Error::internal)?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf = Vec::new();
        while let Some((event, _)) = recv(&fd, &mut buf).await {
            if let Some((_, event)) = exec_event(event) {
                let done = matches!(
                    event,
                    ExecEvent::Exited { .. } | ExecEvent::SpawnFailed { .. }
                );
                let _ = tx.send(event);
                if done {
                    return;
                }
            }
        }
        let _ = tx.send(ExecEvent::Lost);
    });
    Ok(rx)
}
