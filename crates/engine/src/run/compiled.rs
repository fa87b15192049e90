//! Compiles kept for later runs of the same code. An evaluation runs one solution against
//! many tests, each a run with the same code and files and only its stdin its own, and the
//! compile (0.05 to 2 s) is most of such a run: its outcome, and on success the files it
//! made, are kept in memory (least recently used first out, `runs.compile_cache_mb`) under a
//! key over everything the compile reads, and a run with that key has them written into its
//! sandbox instead of compiling. Runs with the same key at once wait for the first one's
//! compile instead of each compiling.
//!
//! What is kept comes from the compile step alone, before any of the run's own code runs, so
//! one run cannot change what another gets (code that runs while compiling, such as a Java
//! annotation processor in an uploaded jar, is in the key like every file). A compile cut short (timeout, out of memory,
//! killed, failed to start) says nothing about the code and is not kept.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cella_jail::fsops::Kind;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::{Step, StepStatus};
use crate::error::{Error, Result};
use crate::sandbox::Sandbox;

/// Hash of everything a compile reads.
pub(super) type Key = [u8; 32];

/// At most this many files of a compile are kept (a build that makes more is not kept).
const MAX_FILES: usize = 1000;

/// The digest of one file's content.
pub(super) fn digest(data: &[u8]) -> Key {
    Sha256::digest(data).into()
}

/// Hash of everything a compile reads: the language, its toolchain, the command and the
/// files written before it (the work directory holds nothing else at that point), each by
/// its path in the sandbox and [`digest`].
pub(super) fn key(
    language: &str,
    toolchain: &str,
    argv: &[String],
    files: &[(String, Key)],
) -> Key {
    let mut key = KeyBuilder::default()
        .part(language.as_bytes())
        .part(toolchain.as_bytes())
        .part(&argv.len().to_le_bytes());
    for arg in argv {
        key = key.part(arg.as_bytes());
    }
    for (path, digest) in files {
        key = key.part(path.as_bytes()).part(digest);
    }
    key.finish()
}

/// Builds a [`Key`] from its parts, each length-prefixed so no two lists of parts collide.
#[derive(Default)]
struct KeyBuilder(Sha256);

impl KeyBuilder {
    fn part(mut self, bytes: &[u8]) -> Self {
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
        self
    }

    fn finish(self) -> Key {
        self.0.finalize().into()
    }
}

/// A file a compile made: its path in the sandbox, permission bits and content.
#[derive(Debug, Clone)]
pub(super) struct Artifact {
    pub path: String,
    pub mode: u32,
    pub data: Vec<u8>,
}

/// A compile's outcome and, when it succeeded, the files it made.
#[derive(Debug)]
pub(super) struct Compiled {
    pub step: Step,
    pub artifacts: Vec<Artifact>,
}

impl Compiled {
    /// Whether a compile that ended as `step` tells the code's own outcome.
    pub fn keeps(step: &Step) -> bool {
        step.status == StepStatus::Finished
            && step.exit.as_ref().is_some_and(|e| {
                e.exit_code.is_some() && !e.oom_killed && !e.killed && !e.sandbox_lost
            })
    }

    fn bytes(&self) -> usize {
        let output = self.step.output.stdout.len() + self.step.output.stderr.len();
        output
            + self
                .artifacts
                .iter()
                .map(|a| a.path.len() + a.data.len())
                .sum::<usize>()
    }
}

/// What a run does about its compile.
pub(super) enum Lookup {
    /// Kept from an earlier run: write its files and skip the compile.
    Hit(Arc<Compiled>),
    /// Compile, then [`Leader::keep`] what came of it (or drop the leader: nothing kept).
    Compile(Leader),
}

impl Lookup {
    /// A miss: the run compiles.
    fn compile(leader: Leader) -> Lookup {
        metrics::counter!("cella_compile_cache_total", "hit" => "false").increment(1);
        Lookup::Compile(leader)
    }
}

/// What the runs waiting for a compile of their key learn.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Settled {
    Pending,
    /// It ended in nothing to keep: each compiles for itself.
    Unkept,
}

#[derive(Default)]
struct State {
    entries: HashMap<Key, (Arc<Compiled>, u64)>,
    /// Entries by last use, oldest first.
    by_use: BTreeMap<u64, Key>,
    ticks: u64,
    bytes: usize,
    /// Compiles under way, each told to its waiters when it settles or its run goes away.
    compiling: HashMap<Key, watch::Receiver<Settled>>,
}

pub(super) struct CompileCache {
    capacity: usize,
    state: Mutex<State>,
}

impl CompileCache {
    pub fn new(capacity: usize) -> Arc<CompileCache> {
        Arc::new(CompileCache {
            capacity,
            state: Mutex::default(),
        })
    }

    /// Largest compile kept: an eighth of the cache, so one cannot empty it.
    fn max_entry_bytes(&self) -> usize {
        self.capacity / 8
    }

    /// The files a compile made or changed: the regular files of the work directory but its
    /// `inputs` as they were written, outside hidden directories (tool caches). `None` when
    /// there are more, or more bytes, than the compile cache keeps of one compile, anything
    /// but files and directories, or anything the sandbox's user cannot read.
    pub async fn capture(
        &self,
        sandbox: &Arc<Sandbox>,
        inputs: HashMap<String, Key>,
    ) -> Option<Vec<Artifact>> {
        let (max_files, max_bytes) = (MAX_FILES, self.max_entry_bytes());
        let found = sandbox
            .with_fs(move |fs| {
                let (mut dirs, mut files) = (vec![cella_jail::SANDBOX_HOME.to_string()], vec![]);
                let mut seen = 0;
                while let Some(dir) = dirs.pop() {
                    let Ok(entries) = fs.list(&dir, 1, max_files + 1) else {
                        return Ok(None);
                    };
                    for entry in entries {
                        seen += 1;
                        if seen > max_files {
                            return Ok(None);
                        }
                        match entry.kind {
                            _ if entry.name.starts_with('.') => {}
                            Kind::Dir => dirs.push(entry.path),
                            Kind::File => files.push(entry),
                            Kind::Symlink | Kind::Other => return Ok(None),
                        }
                    }
                }
                let (mut artifacts, mut bytes) = (Vec::new(), 0);
                for entry in files {
                    let input = inputs.get(&entry.path);
                    let limit = if input.is_some() {
                        entry.size
                    } else {
                        max_bytes as u64
                    };
                    let Ok(data) = fs.read(&entry.path, limit) else {
                        return Ok(None);
                    };
                    if input == Some(&digest(&data)) {
                        continue;
                    }
                    bytes += data.len();
                    if bytes > max_bytes {
                        return Ok(None);
                    }
                    artifacts.push(Artifact {
                        path: entry.path,
                        mode: entry.mode & 0o777,
                        data,
                    });
                }
                Ok(Some(artifacts))
            })
            .await;
        found.ok().flatten()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The kept compile of `key`, or the lead of its compile. While another run compiles the
    /// same key this waits for it, for at most `patience` (the run's own compile timeout);
    /// if that one ends in nothing kept, or takes longer, this run compiles too.
    pub async fn lookup(self: &Arc<Self>, key: Key, patience: Duration) -> Lookup {
        if self.capacity == 0 {
            return Lookup::compile(Leader::unregistered(self, key));
        }
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let mut settled = {
                let mut state = self.state();
                if let Some(compiled) = state.touch(&key) {
                    metrics::counter!("cella_compile_cache_total", "hit" => "true").increment(1);
                    return Lookup::Hit(compiled);
                }
                match state.compiling.get(&key) {
                    Some(settled) => settled.clone(),
                    None => {
                        let (tx, rx) = watch::channel(Settled::Pending);
                        state.compiling.insert(key, rx);
                        return Lookup::compile(Leader {
                            cache: self.clone(),
                            key,
                            settled: Some(tx),
                        });
                    }
                }
            };
            let unkept = settled.wait_for(|s| *s == Settled::Unkept);
            match tokio::time::timeout_at(deadline, unkept).await {
                Ok(Ok(_)) | Err(_) => return Lookup::compile(Leader::unregistered(self, key)),
                // The leader kept it or went away (its run did): look again.
                Ok(Err(_)) => {}
            }
        }
    }

    /// Keeps `compiled` unless it is too big; says whether it did.
    fn insert(&self, key: Key, compiled: Compiled) -> bool {
        let bytes = compiled.bytes();
        if bytes > self.max_entry_bytes() {
            return false;
        }
        let mut state = self.state();
        state.remove(&key);
        while state.bytes + bytes > self.capacity {
            let Some((_, oldest)) = state.by_use.pop_first() else {
                break;
            };
            state.remove(&oldest);
        }
        state.ticks += 1;
        let tick = state.ticks;
        state.by_use.insert(tick, key);
        state.entries.insert(key, (Arc::new(compiled), tick));
        state.bytes += bytes;
        true
    }
}

impl State {
    /// The entry of `key`, marked as just used.
    fn touch(&mut self, key: &Key) -> Option<Arc<Compiled>> {
        self.ticks += 1;
        let tick = self.ticks;
        let (compiled, used) = self.entries.get_mut(key)?;
        self.by_use.remove(used);
        *used = tick;
        self.by_use.insert(tick, *key);
        Some(compiled.clone())
    }

    fn remove(&mut self, key: &Key) {
        if let Some((compiled, used)) = self.entries.remove(key) {
            self.by_use.remove(&used);
            self.bytes -= compiled.bytes();
        }
    }
}

/// The run that compiles a key. Dropped without [`Leader::keep`], its waiters look again.
pub(super) struct Leader {
    cache: Arc<CompileCache>,
    key: Key,
    /// `None` for a run compiling on its own (others were not waiting for it).
    settled: Option<watch::Sender<Settled>>,
}

impl Leader {
    fn unregistered(cache: &Arc<CompileCache>, key: Key) -> Leader {
        Leader {
            cache: cache.clone(),
            key,
            settled: None,
        }
    }

    /// Keeps `compiled` (`None`: nothing to keep) and tells the runs waiting for it.
    pub fn keep(mut self, compiled: Option<Compiled>) {
        let kept = compiled.is_some_and(|c| self.cache.insert(self.key, c));
        if let Some(settled) = self.settled.take() {
            self.cache.state().compiling.remove(&self.key);
            // Kept: they find it when they look again (on the sender's drop).
            if !kept {
                let _ = settled.send(Settled::Unkept);
            }
        }
    }
}

impl Drop for Leader {
    /// A leader gone without keeping anything (its run went away): its waiters look again,
    /// and one of them leads.
    fn drop(&mut self) {
        if self.settled.is_some() {
            self.cache.state().compiling.remove(&self.key);
        }
    }
}

/// A kept compile's outcome, its files written into `sandbox`; its time is the writing's.
pub(super) async fn restore(sandbox: &Arc<Sandbox>, kept: &Arc<Compiled>) -> Result<Step> {
    let started = Instant::now();
    let writing = kept.clone();
    sandbox
        .with_fs(move |fs| {
            for file in &writing.artifacts {
                fs.write(&file.path, &file.data, file.mode, true)
                    .map_err(|e| Error::file(&file.path, e))?;
            }
            Ok(())
        })
        .await?;
    let mut step = kept.step.clone();
    if let Some(exit) = &mut step.exit {
        exit.wall_time = started.elapsed().as_secs_f64();
        exit.cpu_time = 0.0;
    }
    Ok(step)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::{Captured, Exit};

    const PATIENCE: Duration = Duration::from_secs(60);

    fn key(n: u8) -> Key {
        KeyBuilder::default().part(&[n]).finish()
    }

    fn compiled(code: i32, stderr: &str, file: usize) -> Compiled {
        Compiled {
            step: Step {
                status: StepStatus::Finished,
                exit: Some(Exit {
                    exit_code: Some(code),
                    signal: None,
                    wall_time: 0.1,
                    cpu_time: 0.1,
                    timed_out: false,
                    oom_killed: false,
                    killed: false,
                    sandbox_lost: false,
                }),
                output: Captured {
                    stderr: stderr.into(),
                    ..Default::default()
                },
            },
            artifacts: vec![Artifact {
                path: "m".into(),
                mode: 0o755,
                data: vec![0; file],
            }],
        }
    }

    async fn hit(cache: &Arc<CompileCache>, key: Key) -> Option<Arc<Compiled>> {
        match cache.lookup(key, PATIENCE).await {
            Lookup::Hit(c) => Some(c),
            Lookup::Compile(_) => None,
        }
    }

    #[test]
    fn keys_tell_their_parts_apart() {
        let k = |parts: &[&[u8]]| {
            parts
                .iter()
                .fold(KeyBuilder::default(), |b, p| b.part(p))
                .finish()
        };
        assert_ne!(k(&[b"ab", b"c"]), k(&[b"a", b"bc"]));
        assert_eq!(k(&[b"ab", b"c"]), k(&[b"ab", b"c"]));
    }

    #[tokio::test]
    async fn the_least_recently_used_go_first_and_big_ones_are_not_kept() {
        let cache = CompileCache::new(8000);
        for n in 0..3 {
            let Lookup::Compile(leader) = cache.lookup(key(n), PATIENCE).await else {
                panic!("an empty cache hit");
            };
            leader.keep(Some(compiled(0, "", 900)));
        }
        assert!(hit(&cache, key(0)).await.is_some());
        // Nine do not fit in 8000 bytes: the least recently used (key 1) goes.
        for n in 3..9 {
            let Lookup::Compile(leader) = cache.lookup(key(n), PATIENCE).await else {
                panic!()
            };
            leader.keep(Some(compiled(0, "", 900)));
        }
        assert!(hit(&cache, key(0)).await.is_some(), "recently used stays");
        assert!(
            hit(&cache, key(1)).await.is_none(),
            "least recently used went"
        );
        assert!(cache.state().bytes <= 8000);
        let Lookup::Compile(leader) = cache.lookup(key(9), PATIENCE).await else {
            panic!()
        };
        leader.keep(Some(compiled(0, "", 2000)));
        assert!(
            hit(&cache, key(9)).await.is_none(),
            "over an eighth of the cache"
        );
    }

    #[tokio::test]
    async fn runs_of_one_key_at_once_wait_for_the_first_compile() {
        let cache = CompileCache::new(1 << 20);
        let Lookup::Compile(leader) = cache.lookup(key(1), PATIENCE).await else {
            panic!()
        };
        let waiter = tokio::spawn({
            let cache = cache.clone();
            async move { hit(&cache, key(1)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !waiter.is_finished(),
            "the second run waits for the first's compile"
        );
        leader.keep(Some(compiled(1, "error: x", 0)));
        let kept = waiter
            .await
            .unwrap()
            .expect("the waiter gets the first's outcome");
        assert_eq!(kept.step.output.stderr, b"error: x");
    }

    #[tokio::test]
    async fn a_run_waits_for_anothers_compile_no_longer_than_its_own_would_take() {
        let cache = CompileCache::new(1 << 20);
        let Lookup::Compile(_leader) = cache.lookup(key(1), PATIENCE).await else {
            panic!()
        };
        let impatient = cache.lookup(key(1), Duration::from_millis(20));
        let Lookup::Compile(_) = tokio::time::timeout(PATIENCE, impatient).await.unwrap() else {
            panic!("nothing was kept")
        };
    }

    #[tokio::test]
    async fn waiters_compile_themselves_when_the_first_keeps_nothing_or_goes_away() {
        let cache = CompileCache::new(1 << 20);
        let Lookup::Compile(leader) = cache.lookup(key(1), PATIENCE).await else {
            panic!()
        };
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { hit(&cache, key(1)).await.is_none() })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        leader.keep(None);
        for waiter in waiters {
            assert!(waiter.await.unwrap(), "each compiles for itself");
        }
        // A first run that goes away hands the lead to a waiter.
        let Lookup::Compile(leader) = cache.lookup(key(2), PATIENCE).await else {
            panic!()
        };
        let waiter = tokio::spawn({
            let cache = cache.clone();
            async move {
                match cache.lookup(key(2), PATIENCE).await {
                    Lookup::Compile(next) => next.keep(Some(compiled(0, "", 10))),
                    Lookup::Hit(_) => panic!("nothing was kept"),
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(leader);
        waiter.await.unwrap();
        assert!(hit(&cache, key(2)).await.is_some());
    }
}
