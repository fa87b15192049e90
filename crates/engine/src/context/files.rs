//! File events: the files under a context's working directory that a call created or
//! changed, found by comparing the directory before and after the call.
//!
//! Hidden names (starting with `.`, such as caches and `.ipython`) and what lies below them
//! are left out, and so is anything past [`MOST_FILES`] entries or [`DEPTH`] levels: a
//! working directory with a large tree gets events only for its first part.

use std::collections::HashMap;

use cella_jail::fsops::Kind;

use super::output::Output;
use crate::sandbox::Sandbox;

const MOST_FILES: usize = 4096;
const DEPTH: u32 = 8;

/// Each regular file under a directory: its size and modification time.
pub(super) struct Snapshot(HashMap<String, (u64, i64, i64)>);

impl Snapshot {
    /// The files under `dir` now; `None` if it cannot be listed (then there are no events).
    pub(super) async fn take(sandbox: &Sandbox, dir: &str) -> Option<Snapshot> {
        let dir = dir.to_string();
        let listed = sandbox.with_fs(move |fs| Ok(fs.list_visible(&dir, DEPTH, MOST_FILES)));
        let entries = listed.await.ok()?.ok()?;
        Some(Snapshot(
            entries
                .into_iter()
                .filter(|e| e.kind == Kind::File)
                .map(|e| (e.path, (e.size, e.mtime, e.mtime_nsec)))
                .collect(),
        ))
    }

    /// The files of `after` that are new or changed since `self`, in path order.
    pub(super) fn changes(&self, after: &Snapshot) -> Vec<Output> {
        let mut changed: Vec<(&String, u64)> = (after.0.iter())
            .filter(|(path, stamp)| self.0.get(*path) != Some(stamp))
            .map(|(path, (size, ..))| (path, *size))
            .collect();
        changed.sort_unstable();
        (changed.into_iter())
            .map(|(path, size)| Output::File {
                path: path.clone(),
                size,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(files: &[(&str, u64, i64)]) -> Snapshot {
        Snapshot(
            files
                .iter()
                .map(|(p, size, ns)| (p.to_string(), (*size, 1, *ns)))
                .collect(),
        )
    }

    #[test]
    fn new_and_changed_files_are_events_unchanged_and_removed_ones_not() {
        let before = snapshot(&[
            ("/d/same", 1, 0),
            ("/d/grown", 1, 0),
            ("/d/gone", 1, 0),
            ("/d/touched", 5, 0),
        ]);
        let after = snapshot(&[
            ("/d/same", 1, 0),
            ("/d/grown", 2, 0),
            ("/d/new", 3, 0),
            ("/d/touched", 5, 7),
        ]);
        let paths: Vec<(String, u64)> = before
            .changes(&after)
            .into_iter()
            .map(|o| match o {
                Output::File { path, size } => (path, size),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            paths,
            [
                ("/d/grown".into(), 2),
                ("/d/new".into(), 3),
                ("/d/touched".into(), 5)
            ]
        );
    }
}
