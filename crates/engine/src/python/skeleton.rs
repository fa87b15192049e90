//! The home skeleton of the `host` image: files every new home directory starts with, built
//! once in a sandbox (matplotlib's font list takes ~0.4 s to make, in every fresh home).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::{CreateSandbox, Engine, Need};
use crate::error::{Error, Result};
use crate::process::{self, ExecOptions};
use crate::sandbox::INTERNAL_LABEL;

/// Builds the skeleton into `dir`, renamed into place once whole.
pub(super) async fn build(engine: &Arc<Engine>, dir: &Path) -> Result<()> {
    const CACHE: &str = ".cache/matplotlib";
    let sandbox = engine
        .create_for(
            CreateSandbox {
                labels: [(INTERNAL_LABEL.to_string(), "true".to_string())].into(),
                ..Default::default()
            },
            Need::Spare,
        )
        .await?;
    let opts = ExecOptions {
        argv: ["python3", "-c", "import matplotlib.font_manager"]
            .map(String::from)
            .to_vec(),
        env: [("MPLBACKEND".to_string(), "Agg".to_string())].into(),
        cwd: None,
        stdin: None,
        timeout: Some(Duration::from_secs(120)),
        output_cap: 4096,
    };
    let built = process::run(&sandbox, opts).await;
    let home = sandbox.absolute(CACHE);
    let files = sandbox
        .with_fs(move |fs| {
            let entries = fs.list(&home, 1, 64).map_err(|e| Error::file(&home, e))?;
            Ok(entries
                .into_iter()
                .filter_map(|e| fs.read(&e.path, 16 << 20).ok().map(|d| (e.name, d)))
                .collect::<Vec<_>>())
        })
        .await;
    let _ = engine.delete(&sandbox.id).await;
    built?;
    let files = files?;
    // Built aside and renamed into place, so a sandbox never sees half a skeleton.
    let staging = dir.with_extension("new");
    let _ = std::fs::remove_dir_all(&staging);
    let cache = staging.join(CACHE);
    std::fs::create_dir_all(&cache).map_err(Error::internal)?;
    for (name, data) in files {
        std::fs::write(cache.join(name), data).map_err(Error::internal)?;
    }
    std::fs::rename(&staging, dir).map_err(Error::internal)
}
