//! cella's engine: images, sandboxes, processes, files, and one-shot runs, on top of the jail.
//! Every API face is a thin translation onto the types here.

// Every unsafe block lives in cella-jail, behind a safe function (tests aside).
#![deny(unsafe_code)]

pub mod config;
pub mod context;
pub mod control;
pub mod engine;
pub mod error;
pub mod eval;
pub mod gem;
mod host_claim;
pub mod image;
pub mod language;
pub mod network;
mod pool;
pub mod process;
pub mod python;
pub mod run;
pub mod sandbox;
pub mod session;
pub mod store;

pub use cella_jail::fsops::{Entry as FileEntry, Kind as FileKind, SandboxFs, Side};
pub use cella_jail::{SANDBOX_HOME, Spawner, SpawnerConfig, probe};
pub use config::Config;
pub use engine::{CreateSandbox, Engine};
pub use error::{Error, Result};
pub use sandbox::{Sandbox, SandboxInfo};
