//! A thin cgroupfs layer: one cgroup per sandbox, limits written as files, usage read back.
//!
//! Both layouts are handled. cgroup v1 (what this project's machines have: memory with memsw,
//! pids, cpu and cpuacct each in their own hierarchy, and cpuset where mounted, which limits
//! nothing but is shown to the sandbox) and the unified v2 hierarchy. Nothing here shells
//! out; creating a sandbox's cgroups is a few `mkdir`s and `write`s.

use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Resource limits of one sandbox.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub memory_bytes: u64,
    pub pids: u64,
    /// CPU bandwidth in cores (1.5 = one and a half cores).
    pub cpus: f64,
}

/// Usage counters of one sandbox, read from its cgroup.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub cpu_ns: u64,
    pub memory_bytes: u64,
    pub memory_peak_bytes: u64,
    pub pids: u64,
    pub oom_kills: u64,
}

#[derive(Debug, Clone)]
enum Layout {
    /// Controller name → mount point, for the controllers we use.
    V1 {
        memory: PathBuf,
        pids: PathBuf,
        cpu: PathBuf,
        cpuacct: PathBuf,
        /// Limits nothing here; joined so that a sandbox sees the hierarchy the JVM needs
        /// before it trusts any container limit.
        cpuset: Option<PathBuf>,
        /// Where mounted: stops a sandbox's processes while its writable layer is committed.
        freezer: Option<PathBuf>,
    },
    V2 {
        root: PathBuf,
    },
}

impl Layout {
    /// The v1 hierarchies sandboxes join (none for v2).
    fn v1_mounts(&self) -> Vec<&PathBuf> {
        match self {
            Layout::V1 {
                memory,
                pids,
                cpu,
                cpuacct,
                cpuset,
                freezer,
            } => [memory, pids, cpu, cpuacct]
                .into_iter()
                .chain(cpuset.as_ref())
                .chain(freezer.as_ref())
                .collect(),
            Layout::V2 { .. } => Vec::new(),
        }
    }
}

/// The cgroup parent all sandboxes live under (`<hierarchy>/<parent>/<sandbox>`).
#[derive(Debug, Clone)]
pub struct Cgroups {
    layout: Layout,
    parent: String,
}

const CPU_PERIOD_US: u64 = 100_000;

impl Cgroups {
    /// Finds the hierarchies from `/proc/self/mountinfo` and creates the parent cgroups.
    pub fn detect(parent: &str) -> Result<Cgroups> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| Error::sys("read /proc/self/mountinfo", e))?;
        let layout = detect_layout(&mountinfo)?;
        let cgroups = Cgroups {
            layout,
            parent: parent.to_string(),
        };
        for dir in cgroups.parent_dirs() {
            fs::create_dir_all(&dir)
                .map_err(|e| Error::sys(format!("create cgroup {}", dir.display()), e))?;
        }
        if let Layout::V2 { root } = &cgroups.layout {
            enable_v2_controllers(root, parent)?;
            let inits = root.join(parent).join(V2_INITS_LEAF);
            fs::create_dir_all(&inits)
                .map_err(|e| Error::sys(format!("create cgroup {}", inits.display()), e))?;
        }
        if let Layout::V1 {
            cpuset: Some(root), ..
        } = &cgroups.layout
        {
            // A v1 cpuset starts with no CPUs and no memory nodes, and takes no process until
            // given some: the parent copies the root's, and its children copy the parent's.
            let dir = root.join(parent);
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let value = fs::read_to_string(root.join(file))
                    .map_err(|e| Error::sys(format!("read {}", root.join(file).display()), e))?;
                write(&dir.join(file), value.trim())?;
            }
            write(&dir.join("cgroup.clone_children"), "1")?;
        }
        Ok(cgroups)
    }

    /// Caps the memory of all sandboxes together, so that their sum can never push the host
    /// (and the server) into a global out-of-memory kill.
    pub fn limit_total_memory(&self, bytes: u64) -> Result<()> {
        let parent = SandboxCgroup {
            layout: self.layout.clone(),
            dirs: self.parent_dirs(),
            name: self.parent.clone(),
        };
        parent.set_memory(bytes)
    }

    /// Removes the parent cgroups once every sandbox has left them (at a clean shutdown);
    /// a parent that still holds a sandbox's cgroup stays.
    pub fn remove_parents(&self) {
        if let Some(inits) = self.v2_inits_dir() {
            let _ = fs::remove_dir(inits);
        }
        for dir in self.parent_dirs() {
            let _ = fs::remove_dir(dir);
        }
    }

    pub fn describe(&self) -> String {
        match &self.layout {
            Layout::V1 { cpuset, .. } => format!(
                "cgroup v1 (memory+memsw, pids, cpu, cpuacct{})",
                if cpuset.is_some() { ", cpuset" } else { "" }
            ),
            Layout::V2 { root } => format!("cgroup v2 at {}", root.display()),
        }
    }

    fn parent_dirs(&self) -> Vec<PathBuf> {
        match &self.layout {
            Layout::V1 { .. } => {
                let mut dirs: Vec<PathBuf> = (self.layout.v1_mounts().iter())
                    .map(|m| m.join(&self.parent))
                    .collect();
                dirs.dedup();
                dirs
            }
            Layout::V2 { root } => vec![root.join(&self.parent)],
        }
    }

    /// Where a sandbox's init keeps its own memory, outside every sandbox's limit (see
    /// `SandboxSpec::init_memory_cgroup`): the v1 memory hierarchy's parent; on v2, where a
    /// cgroup with children may hold no process, a leaf beside the sandboxes.
    pub fn init_memory_dir(&self) -> Option<PathBuf> {
        match &self.layout {
            Layout::V1 { memory, .. } => Some(memory.join(&self.parent)),
            Layout::V2 { .. } => self.v2_inits_dir(),
        }
    }

    fn v2_inits_dir(&self) -> Option<PathBuf> {
        match &self.layout {
            Layout::V1 { .. } => None,
            Layout::V2 { root } => Some(root.join(&self.parent).join(V2_INITS_LEAF)),
        }
    }

    /// The cgroup of sandbox `name`, whether or not it exists yet.
    pub fn sandbox(&self, name: &str) -> SandboxCgroup {
        let dirs = self
            .parent_dirs()
            .into_iter()
            .map(|d| d.join(name))
            .collect();
        SandboxCgroup {
            layout: self.layout.clone(),
            dirs,
            name: name.to_string(),
        }
    }

    /// Creates sandbox `name`'s cgroups and writes its limits.
    pub fn create(&self, name: &str, limits: &Limits) -> Result<SandboxCgroup> {
        let cg = self.sandbox(name);
        for dir in &cg.dirs {
            match fs::create_dir(dir) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                    return Err(Error::sys(format!("create cgroup {}", dir.display()), e));
                }
                _ => {}
            }
        }
        if let Err(e) = cg.set_limits(limits) {
            let _ = cg.remove();
            return Err(e);
        }
        Ok(cg)
    }

    /// Names of the sandbox cgroups that exist under the parent.
    pub fn list(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .parent_dirs()
            .iter()
            .filter_map(|d| fs::read_dir(d).ok())
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| name != V2_INITS_LEAF)
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// Hands the memory, pids and cpu controllers down from the v2 root to the sandboxes' parent.
fn enable_v2_controllers(root: &Path, parent: &str) -> Result<()> {
    let enable = V2_CONTROLLERS;
    let control = root.join("cgroup.subtree_control");
    match fs::write(&control, enable) {
        // A cgroup namespace's root holding processes (a container's, as Docker and
        // Kubernetes start one) cannot hand controllers down: v2 lets no cgroup but the real
        // root have both. As container entrypoints that nest cgroups do, its processes move to
        // a leaf of their own first, when this cgroup is the namespace's root (ours to order).
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) && at_cgroup_namespace_root() => {
            move_processes_to_leaf(root)?;
            write(&control, enable)?;
        }
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            return Err(Error::Unsupported(format!(
                "cgroup v2: cannot enable controllers in {} (processes live in it, and it is \
                 not this process's cgroup namespace root, so cella will not move them): give \
                 cella a cgroup of its own, e.g. a systemd unit with Delegate=yes",
                control.display()
            )));
        }
        result => {
            result.map_err(|e| Error::sys(format!("write {enable} to {}", control.display()), e))?
        }
    }
    write(&root.join(parent).join("cgroup.subtree_control"), enable)?;
    if !root.join(parent).join("memory.swap.max").exists() {
        return Err(Error::Unsupported(
            "cgroup v2 memory has no memory.swap.max: boot with swapaccount=1 so swap cannot \
             bypass the memory limit"
                .into(),
        ));
    }
    Ok(())
}

/// Whether this process sits at the root of its cgroup namespace (`0::/`), as a container's
/// entrypoint does.
fn at_cgroup_namespace_root() -> bool {
    fs::read_to_string("/proc/self/cgroup").is_ok_and(|c| c.lines().any(|l| l == "0::/"))
}

/// Moves every process of the v2 cgroup `dir` into its child `server` (made if missing).
fn move_processes_to_leaf(dir: &Path) -> Result<()> {
    let leaf = dir.join("server");
    match fs::create_dir(&leaf) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
            return Err(Error::sys(format!("create cgroup {}", leaf.display()), e));
        }
        _ => {}
    }
    // Processes may start while they move: read again until none is left.
    for _ in 0..100 {
        let mut pids = Vec::new();
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        if pids.is_empty() {
            tracing::info!(leaf = %leaf.display(), "cgroup v2: moved this container's processes to a leaf, to hand controllers down");
            return Ok(());
        }
        for pid in pids {
            // A process that exited meanwhile is gone already: not an error.
            let _ = fs::write(leaf.join("cgroup.procs"), pid.to_string());
        }
    }
    Err(Error::Unsupported(format!(
        "cgroup v2: processes keep appearing in {}",
        dir.display()
    )))
}

/// The cgroup mounts listed in `/proc/self/mountinfo` text: mount point, filesystem type
/// (`cgroup` or `cgroup2`) and super options.
fn cgroup_mounts(mountinfo: &str) -> impl Iterator<Item = (&str, &str, &str)> {
    mountinfo.lines().filter_map(|line| {
        // ... mount_point ... - fstype source super_options
        let (pre, post) = line.split_once(" - ")?;
        let mount_point = pre.split(' ').nth(4)?;
        let mut post = post.split(' ');
        let (fstype, _source, opts) = (post.next()?, post.next(), post.next().unwrap_or(""));
        fstype
            .starts_with("cgroup")
            .then_some((mount_point, fstype, opts))
    })
}

/// Whether any cgroup hierarchy is mounted with `favordynmods` (the lock it relaxes is shared
/// by all of them).
pub fn favor_dynmods() -> bool {
    fs::read_to_string("/proc/self/mountinfo").is_ok_and(|mountinfo| {
        cgroup_mounts(&mountinfo).any(|(_, _, opts)| opts.split(',').any(|o| o == "favordynmods"))
    })
}

fn detect_layout(mountinfo: &str) -> Result<Layout> {
    let mut v1 = std::collections::HashMap::new();
    let mut v2 = None;
    for (mount_point, fstype, opts) in cgroup_mounts(mountinfo) {
        match fstype {
            "cgroup" => {
                for opt in opts.split(',') {
                    v1.entry(opt.to_string())
                        .or_insert_with(|| PathBuf::from(mount_point));
                }
            }
            "cgroup2" => {
                let controllers =
                    fs::read_to_string(Path::new(mount_point).join("cgroup.controllers"))
                        .unwrap_or_default();
                let has = |c| controllers.split_whitespace().any(|x| x == c);
                if has("memory") && has("pids") && has("cpu") {
                    v2 = Some(PathBuf::from(mount_point));
                }
            }
            _ => {}
        }
    }
    if let Some(root) = v2 {
        return Ok(Layout::V2 { root });
    }
    let get = |c: &str| {
        v1.get(c).cloned().ok_or_else(|| {
            Error::Unsupported(format!(
                "the cgroup controller `{c}` is not mounted (need v1 memory, pids, cpu, cpuacct or v2 with memory, pids, cpu)"
            ))
        })
    };
    let memory = get("memory")?;
    if !memory.join("memory.memsw.limit_in_bytes").exists() {
        return Err(Error::Unsupported(
            "cgroup v1 memory has no memsw files: boot with swapaccount=1 so swap cannot bypass the memory limit".into(),
        ));
    }
    Ok(Layout::V1 {
        memory,
        pids: get("pids")?,
        cpu: get("cpu")?,
        cpuacct: get("cpuacct")?,
        cpuset: v1.get("cpuset").cloned(),
        freezer: v1.get("freezer").cloned(),
    })
}

/// One sandbox's cgroup directories (one per v1 hierarchy, or one v2 directory).
#[derive(Debug, Clone)]
pub struct SandboxCgroup {
    layout: Layout,
    dirs: Vec<PathBuf>,
    name: String,
}

impl SandboxCgroup {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn is_v2(&self) -> bool {
        matches!(self.layout, Layout::V2 { .. })
    }

    fn dir(&self, controller: &str) -> PathBuf {
        let mount = match (&self.layout, controller) {
            (Layout::V1 { memory, .. }, "memory") => memory,
            (Layout::V1 { pids, .. }, "pids") => pids,
            (Layout::V1 { cpu, .. }, "cpu") => cpu,
            (Layout::V1 { cpuacct, .. }, _) => cpuacct,
            (Layout::V2 { root }, _) => root,
        };
        self.dirs
            .iter()
            .find(|d| d.starts_with(mount))
            .cloned()
            .unwrap_or_default()
    }

    pub fn set_limits(&self, limits: &Limits) -> Result<()> {
        let quota = ((limits.cpus * CPU_PERIOD_US as f64) as u64).max(1000);
        match &self.layout {
            Layout::V1 { .. } => {
                self.set_memory(limits.memory_bytes)?;
                write(&self.dir("pids").join("pids.max"), &limits.pids.to_string())?;
                let cpu = self.dir("cpu");
                write(&cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                write(&cpu.join("cpu.cfs_quota_us"), &quota.to_string())
            }
            Layout::V2 { .. } => {
                let dir = self.dir("");
                self.set_memory(limits.memory_bytes)?;
                write(&dir.join("pids.max"), &limits.pids.to_string())?;
                write(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))
            }
        }
    }

    /// Sets the memory limit, swap included (so swap cannot be used to exceed it).
    pub fn set_memory(&self, bytes: u64) -> Result<()> {
        match &self.layout {
            Layout::V1 { .. } => {
                let dir = self.dir("memory");
                let (mem, memsw) = (
                    dir.join("memory.limit_in_bytes"),
                    dir.join("memory.memsw.limit_in_bytes"),
                );
                let value = bytes.to_string();
                // memsw must stay >= limit at every step, so the order depends on the direction.
                if bytes <= read_u64(&mem) {
                    write(&mem, &value)?;
                    write(&memsw, &value)
                } else {
                    write(&memsw, &value)?;
                    write(&mem, &value)
                }
            }
            Layout::V2 { .. } => {
                let dir = self.dir("");
                write(&dir.join("memory.max"), &bytes.to_string())?;
                write(&dir.join("memory.swap.max"), "0")
            }
        }
    }

    /// The sandbox's directories, each with the name its hierarchy has under
    /// `/sys/fs/cgroup` (`memory`, `pids`, ...; empty for the single v2 hierarchy).
    pub fn named_dirs(&self) -> Vec<(String, PathBuf)> {
        let mounts = self.layout.v1_mounts();
        let name = |dir: &Path| {
            let mount = mounts.iter().find(|m| dir.starts_with(m));
            let name = mount.and_then(|m| m.file_name());
            name.map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        self.dirs.iter().map(|d| (name(d), d.clone())).collect()
    }

    /// Where per-exec child cgroups go (the pids hierarchy: it bounds and enumerates a tree).
    pub fn exec_parent(&self) -> PathBuf {
        self.dir("pids")
    }

    /// Creates exec `id`'s own cgroup and returns the `cgroup.procs` files a process joins to
    /// be in the sandbox (every hierarchy) and in that exec (the pids one).
    pub fn exec_procs(&self, id: u64) -> Result<Vec<PathBuf>> {
        let exec = self.exec_dir(id);
        fs::create_dir(&exec)
            .map_err(|e| Error::sys(format!("create cgroup {}", exec.display()), e))?;
        if let Layout::V2 { .. } = self.layout {
            let parent = crate::sys::open(&self.exec_parent(), libc::O_PATH | libc::O_DIRECTORY)
                .and_then(|dir| copy_limits_at(dir.as_fd(), &exec_cgroup_name(id)))
                .map_err(|e| Error::sys(format!("limits of cgroup {}", exec.display()), e));
            if let Err(e) = parent {
                let _ = fs::remove_dir(&exec);
                return Err(e);
            }
        }
        let mut procs: Vec<PathBuf> = self
            .dirs
            .iter()
            .filter(|d| **d != self.exec_parent())
            .map(|d| d.join("cgroup.procs"))
            .collect();
        procs.push(exec.join("cgroup.procs"));
        Ok(procs)
    }

    /// Kills every process of exec `id` from the host side.
    pub fn kill_exec(&self, id: u64) {
        kill_until_empty(&[self.exec_dir(id)]);
    }

    fn exec_dir(&self, id: u64) -> PathBuf {
        self.exec_parent().join(exec_cgroup_name(id))
    }

    pub fn usage(&self) -> Usage {
        match &self.layout {
            Layout::V1 { .. } => {
                let mem = self.dir("memory");
                Usage {
                    cpu_ns: read_u64(&self.dir("cpuacct").join("cpuacct.usage")),
                    memory_bytes: read_u64(&mem.join("memory.usage_in_bytes")),
                    memory_peak_bytes: read_u64(&mem.join("memory.max_usage_in_bytes")),
                    pids: read_u64(&self.dir("pids").join("pids.current")),
                    oom_kills: read_key(&mem.join("memory.oom_control"), "oom_kill"),
                }
            }
            Layout::V2 { .. } => {
                let dir = self.dir("");
                Usage {
                    cpu_ns: read_key(&dir.join("cpu.stat"), "usage_usec") * 1000,
                    memory_bytes: read_u64(&dir.join("memory.current")),
                    memory_peak_bytes: read_u64(&dir.join("memory.peak")),
                    pids: read_u64(&dir.join("pids.current")),
                    oom_kills: read_key(&dir.join("memory.events"), "oom_kill"),
                }
            }
        }
    }

    /// Freezes (or thaws) every process of the sandbox, and waits until they all are.
    pub fn freeze(&self, frozen: bool) -> Result<()> {
        let (file, value, done_file, done) = match &self.layout {
            Layout::V1 {
                freezer: Some(mount),
                ..
            } => {
                let dir = self.dirs.iter().find(|d| d.starts_with(mount));
                let file = dir.map(|d| d.join("freezer.state")).unwrap_or_default();
                let value = if frozen { "FROZEN" } else { "THAWED" };
                (file.clone(), value, file, value.to_string())
            }
            Layout::V1 { .. } => {
                return Err(Error::Unsupported(
                    "the v1 freezer controller is not mounted".into(),
                ));
            }
            Layout::V2 { .. } => {
                let dir = self.dir("");
                let done = format!("frozen {}", u8::from(frozen));
                (
                    dir.join("cgroup.freeze"),
                    if frozen { "1" } else { "0" },
                    dir.join("cgroup.events"),
                    done,
                )
            }
        };
        write(&file, value)?;
        for _ in 0..2000 {
            let state = fs::read_to_string(&done_file).unwrap_or_default();
            if state.lines().any(|l| l.trim() == done) {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_micros(500));
        }
        Err(Error::Unsupported(format!(
            "the sandbox's processes did not reach {value} within a second"
        )))
    }

    /// The host pids of every process in the sandbox's cgroups (the pids hierarchy, which
    /// holds them all on v1; the one directory on v2), its execs' included.
    pub fn pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        collect_pids(&self.dir("pids"), &mut pids);
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// SIGKILLs every process in the sandbox's cgroups until none is left. Used when the
    /// sandbox's init is already gone (e.g. reaping what a crashed server left behind).
    pub fn kill_all(&self) {
        kill_until_empty(&self.dirs);
    }

    /// Removes the cgroup directories, children first. Fails with `EBUSY` while a process is
    /// still inside.
    pub fn remove(&self) -> Result<()> {
        let mut result = Ok(());
        for dir in &self.dirs {
            if let Err(e) = remove_tree(dir)
                && e.kind() != io::ErrorKind::NotFound
            {
                result = Err(Error::sys(format!("remove cgroup {}", dir.display()), e));
            }
        }
        result
    }
}

/// SIGKILLs the processes of cgroups (and their children) until none is left: a process may
/// fork while the list is read, but a killed one cannot, so the list shrinks to nothing.
fn kill_until_empty(dirs: &[PathBuf]) {
    for _ in 0..1000 {
        let mut pids = Vec::new();
        for dir in dirs {
            collect_pids(dir, &mut pids);
        }
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            let _ = crate::sys::kill(pid, libc::SIGKILL);
        }
        std::thread::sleep(std::time::Duration::from_micros(500));
    }
}

/// The name of exec `id`'s cgroup under its sandbox's (pids hierarchy).
pub fn exec_cgroup_name(id: u64) -> String {
    format!("x{id}")
}

/// On v2, the leaf beside the sandboxes' cgroups that their inits move to, so that a
/// sandbox's cgroup, holding no process of its own, can hand its controllers down to its
/// execs' cgroups. No sandbox id can take the name: ids begin with a letter or digit.
const V2_INITS_LEAF: &str = "_inits";
/// The controllers a v2 sandbox hands down to its execs' cgroups.
pub const V2_CONTROLLERS: &str = "+memory +pids +cpu";
/// The limits a v2 exec's cgroup shows as its sandbox has them: runtimes (the JVM, Node)
/// read their own cgroup's files, and a child's are `max` until written. The sandbox's
/// limits bind the whole tree either way.
const V2_LIMIT_FILES: &[&str] = &["memory.max", "memory.swap.max", "cpu.max", "pids.max"];

/// Copies `V2_LIMIT_FILES` from the cgroup directory `parent` to its child `child`.
fn copy_limits_at(parent: BorrowedFd<'_>, child: &str) -> io::Result<()> {
    for file in V2_LIMIT_FILES {
        let value = read_at(parent, file)?;
        let to_path = Path::new(child).join(file);
        // O_CREAT changes nothing on cgroupfs, where the files exist with the directory.
        let to = crate::sys::openat(
            Some(parent),
            &to_path,
            libc::O_WRONLY | libc::O_CREAT,
            0o644,
        )?;
        io::Write::write_all(&mut fs::File::from(to), value.trim().as_bytes())?;
    }
    Ok(())
}

/// Whether the v2 cgroup directory `dir` holds more processes than its `pids.max`. v2 refuses
/// a fork past the limit but lets a process move in past it: one that moved in checks.
pub fn over_pids_limit(dir: BorrowedFd<'_>) -> io::Result<bool> {
    let current: u64 = read_at(dir, "pids.current")?.trim().parse().unwrap_or(0);
    Ok(read_at(dir, "pids.max")?
        .trim()
        .parse::<u64>()
        .is_ok_and(|max| current > max))
}

fn read_at(dir: BorrowedFd<'_>, file: &str) -> io::Result<String> {
    let fd = crate::sys::openat(Some(dir), Path::new(file), libc::O_RDONLY, 0)?;
    let mut value = String::new();
    io::Read::read_to_string(&mut fs::File::from(fd), &mut value)?;
    Ok(value)
}

fn collect_pids(dir: &Path, out: &mut Vec<i32>) {
    if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_pids(&e.path(), out);
            }
        }
    }
}

fn remove_tree(dir: &Path) -> io::Result<()> {
    for e in fs::read_dir(dir)?.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&e.path())?;
        }
    }
    fs::remove_dir(dir)
}

fn write(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value)
        .map_err(|e| Error::sys(format!("write {value} to {}", path.display()), e))
}

fn read_u64(path: &Path) -> u64 {
    fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Reads `key value` from a flat-keyed cgroup file such as `memory.oom_control`.
fn read_key(path: &Path, key: &str) -> u64 {
    fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_layout_from_mountinfo() {
        let mi = "\
35 25 0:30 / /sys/fs/cgroup/cpu rw,relatime shared:11 - cgroup cgroup rw,cpu
36 25 0:31 / /sys/fs/cgroup/cpuacct rw,relatime shared:12 - cgroup cgroup rw,cpuacct
37 25 0:32 / /sys/fs/cgroup/memory rw,relatime shared:13 - cgroup cgroup rw,memory
38 25 0:33 / /sys/fs/cgroup/pids rw,relatime shared:14 - cgroup cgroup rw,pids
";
        match detect_layout(mi) {
            Ok(Layout::V1 { pids, cpuacct, .. }) => {
                assert_eq!(pids, Path::new("/sys/fs/cgroup/pids"));
                assert_eq!(cpuacct, Path::new("/sys/fs/cgroup/cpuacct"));
            }
            // Without memsw files on the test machine the detection must say why.
            Err(Error::Unsupported(msg)) => assert!(msg.contains("memsw")),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn missing_controller_is_a_clear_error() {
        let mi = "35 25 0:30 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        let err = detect_layout(mi).unwrap_err().to_string();
        assert!(err.contains("`memory`"), "{err}");
    }

    /// The v2 files a sandbox's limits go to, on a stand-in hierarchy (this project's
    /// machines mount their controllers as v1).
    #[test]
    fn v2_limits_and_exec_cgroups() {
        let root = std::env::temp_dir().join(format!("cella-cg2-test-{}", std::process::id()));
        fs::create_dir_all(root.join("cella")).unwrap();
        let cgroups = Cgroups {
            layout: Layout::V2 { root: root.clone() },
            parent: "cella".into(),
        };
        let limits = Limits {
            memory_bytes: 256 << 20,
            pids: 64,
            cpus: 1.5,
        };
        let cg = cgroups.create("s1", &limits).unwrap();
        let dir = root.join("cella/s1");
        let read = |f: &str| fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(read("memory.max"), (256u64 << 20).to_string());
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("pids.max"), "64");
        assert_eq!(read("cpu.max"), "150000 100000");
        assert_eq!(cg.named_dirs(), vec![(String::new(), dir.clone())]);
        // In v2 a process joins only its exec's cgroup, below the sandbox's: joining both
        // is impossible in one hierarchy, and the sandbox's limits cover its children.
        let procs = cg.exec_procs(7).unwrap();
        assert_eq!(procs, vec![dir.join("x7/cgroup.procs")]);
        // ... which an exec's cgroup shows as its own, for runtimes that read only theirs.
        for file in V2_LIMIT_FILES {
            assert_eq!(read(&format!("x7/{file}")), read(file), "{file}");
        }
        assert_eq!(cgroups.list(), vec!["s1".to_string()]);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn flat_keyed_files() {
        let dir = std::env::temp_dir().join(format!("cella-cg-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let f = dir.join("memory.oom_control");
        fs::write(&f, "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n").unwrap();
        assert_eq!(read_key(&f, "oom_kill"), 3);
        assert_eq!(read_key(&f, "under_oom"), 0);
        fs::remove_dir_all(&dir).unwrap();
    }
}
