//! Warm pools: things made ahead of time in the background (ready sandboxes, started Jupyter
//! kernels), so that a request takes one instead of waiting for it to be made.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::error::{Error, Result};

pub struct WarmPool<T> {
    what: &'static str,
    target: usize,
    items: Mutex<Vec<T>>,
    refill: Notify,
    started: AtomicBool,
}

/// What the engine asks of a warm pool when a request finds the server at its sandbox cap.
pub trait Spares: Send + Sync {
    /// Drops one ready item, deleting its sandbox; false if there was none.
    fn give_up_one(&self) -> bool;
}

impl<T: Send + 'static> Spares for WarmPool<T> {
    fn give_up_one(&self) -> bool {
        let item = self.items.lock().unwrap_or_else(|p| p.into_inner()).pop();
        item.is_some() // dropped here, outside the lock
    }
}

impl<T: Send + 'static> WarmPool<T> {
    pub fn new(what: &'static str, target: usize) -> Arc<WarmPool<T>> {
        Arc::new(WarmPool {
            what,
            target,
            items: Mutex::default(),
            refill: Notify::new(),
            started: AtomicBool::new(false),
        })
    }

    /// A ready item that is still `usable`, if there is one; unusable ones are dropped.
    /// Asks for replacements either way.
    pub fn take_usable(&self, usable: impl Fn(&T) -> bool) -> Option<T> {
        let item = loop {
            let Some(item) = self.items.lock().unwrap_or_else(|p| p.into_inner()).pop() else {
                break None;
            };
            if usable(&item) {
                break Some(item);
            }
        };
        self.refill.notify_one();
        let hit = if item.is_some() { "true" } else { "false" };
        metrics::counter!("cella_pool_takes_total", "pool" => self.what, "hit" => hit).increment(1);
        item
    }

    /// Starts keeping `target` items ready (once; later calls do nothing) until `stopping`
    /// says the server is going away. Pools start on first use, so a server that never needs
    /// an item never makes one.
    pub fn start<F, Fut>(self: &Arc<Self>, make: F, stopping: impl Fn() -> bool + Send + 'static)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>> + Send,
    {
        if self.target == 0 || self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let pool = self.clone();
        tokio::spawn(async move {
            loop {
                while pool.items.lock().unwrap_or_else(|p| p.into_inner()).len() < pool.target {
                    match make().await {
                        Ok(item) => pool
                            .items
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(item),
                        Err(_) if stopping() => return,
                        Err(e) => {
                            // At the sandbox cap, the pool waits like any other user.
                            if let Error::Busy(_) = e {
                                debug!(pool = pool.what, error = %e, "could not refill a warm pool");
                            } else {
                                warn!(pool = pool.what, error = %e, "could not refill a warm pool");
                            }
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            break;
                        }
                    }
                }
                pool.refill.notified().await;
                if stopping() {
                    return;
                }
            }
        });
    }
}
