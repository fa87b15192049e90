//! What a call on a context produces: its outputs in order, each with the time it came,
//! kept within the call's output cap.

use std::time::SystemTime;

use serde_json::{Value, json};

/// How much of an error's value is kept when the call's output is over its cap.
const SHORT_ERROR_BYTES: usize = 1024;

/// One output of a call, in the order the kernel produced it.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Text the code printed: `name` is `stdout` or `stderr`.
    Stream { name: String, text: String },
    /// A rich display (`display(...)`, a plot): its whole MIME bundle.
    Display { data: Value, metadata: Value },
    /// The value of the last expression, as a MIME bundle.
    Result {
        data: Value,
        metadata: Value,
        execution_count: Option<i64>,
    },
    /// The code raised: the error's name, value and traceback lines.
    Error {
        name: String,
        value: String,
        traceback: Vec<String>,
    },
    /// A file under the context's working directory that the call created or changed.
    File { path: String, size: u64 },
}

impl Output {
    pub fn error(name: &str, value: impl Into<String>) -> Output {
        Output::Error {
            name: name.into(),
            value: value.into(),
            traceback: Vec::new(),
        }
    }
}

/// Where the outputs of a call go as they come (a streamed call), besides its result.
pub type Sink = tokio::sync::mpsc::UnboundedSender<Event>;

/// An output and when the server received it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub at: SystemTime,
    pub output: Output,
}

/// Everything one call produced, and how it ended.
#[derive(Debug, Clone, Default)]
pub struct CellResult {
    pub events: Vec<Event>,
    pub execution_count: Option<i64>,
    /// The call ran past its timeout (or its caller went away) and was interrupted.
    pub timed_out: bool,
    /// Where in `events` those that came after the interrupt begin (what the interrupt
    /// itself raised, such as Python's `KeyboardInterrupt`).
    pub interrupted_at: Option<usize>,
    /// The kernel cannot go on and its state is lost, in words: it died during the call, or
    /// ignored the interrupt at the timeout and was stopped.
    pub kernel_lost: Option<String>,
    /// The call produced more output than its cap; later outputs were dropped.
    pub truncated: bool,
    /// Bytes of output kept (as they came on the wire).
    pub kept_bytes: usize,
}

impl CellResult {
    /// Keeps `output` (of `size` bytes on the wire) within `cap` bytes for the whole call:
    /// of a stream, what fits; of an error, its name and the start of its value (that the
    /// call failed matters more than what it printed); of anything else, all or nothing.
    /// Text following text of the same stream joins it, as a notebook shows it: a kernel
    /// may send one `print` in pieces. What was kept goes to `sink` too, as an event of its
    /// own; returns whether anything was.
    pub fn keep(&mut self, output: Output, size: usize, cap: usize, sink: Option<&Sink>) -> bool {
        let kept = if self.kept_bytes + size <= cap {
            self.kept_bytes += size;
            Some(output)
        } else {
            self.truncated = true;
            match output {
                Output::Stream { name, mut text } if self.kept_bytes < cap => {
                    text.truncate(text.floor_char_boundary(cap - self.kept_bytes));
                    self.kept_bytes = cap;
                    Some(Output::Stream { name, text })
                }
                Output::Error { name, value, .. } => {
                    let short = |s: &str| s[..s.floor_char_boundary(SHORT_ERROR_BYTES)].to_string();
                    Some(Output::error(&short(&name), short(&value)))
                }
                _ => None,
            }
        };
        let Some(output) = kept else {
            return false;
        };
        let event = Event {
            at: SystemTime::now(),
            output,
        };
        if let Some(sink) = sink {
            let _ = sink.send(event.clone());
        }
        if let Output::Result {
            execution_count, ..
        } = &event.output
        {
            self.execution_count = *execution_count;
        }
        let after_interrupt = self.interrupted_at == Some(self.events.len());
        match (self.events.last_mut(), &event.output) {
            (
                Some(Event {
                    output: Output::Stream { name, text },
                    ..
                }),
                Output::Stream {
                    name: more_name,
                    text: more,
                },
            ) if name == more_name && !after_interrupt => text.push_str(more),
            _ => self.events.push(event),
        }
        true
    }

    /// The events that came before the call was interrupted at its timeout (all of them if
    /// it was not).
    pub fn before_interrupt(&self) -> &[Event] {
        &self.events[..self.interrupted_at.unwrap_or(self.events.len())]
    }

    pub fn outputs(&self) -> impl Iterator<Item = &Output> {
        self.events.iter().map(|e| &e.output)
    }

    /// Everything printed to the stream `name`, in order.
    pub fn stream(&self, name: &str) -> String {
        self.outputs()
            .filter_map(|o| match o {
                Output::Stream { name: n, text } if n == name => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    /// MIME bundles of displays and results, in order.
    pub fn displays(&self) -> Vec<Value> {
        self.outputs()
            .filter_map(|o| match o {
                Output::Display { data, .. } | Output::Result { data, .. } => Some(data.clone()),
                _ => None,
            })
            .collect()
    }

    /// Errors as Jupyter spells them (`ename`, `evalue`, `traceback`).
    pub fn errors(&self) -> Vec<Value> {
        self.outputs()
            .filter_map(|o| match o {
                Output::Error {
                    name,
                    value,
                    traceback,
                } => Some(json!({ "ename": name, "evalue": value, "traceback": traceback })),
                _ => None,
            })
            .collect()
    }

    /// How the call ended, in a word: `timeout` (interrupted at its timeout), `error` (the
    /// code raised), or `ok`.
    pub fn status(&self) -> &'static str {
        if self.timed_out {
            "timeout"
        } else if self.error().is_some() {
            "error"
        } else {
            "ok"
        }
    }

    /// The first error the call raised, if any.
    pub fn error(&self) -> Option<&Output> {
        self.outputs().find(|o| matches!(o, Output::Error { .. }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(text: &str) -> Output {
        Output::Stream {
            name: "stdout".into(),
            text: text.into(),
        }
    }

    #[test]
    fn a_call_keeps_what_fits_under_its_cap() {
        let mut cell = CellResult::default();
        cell.keep(stream("abc"), 3, 5, None);
        cell.keep(stream("defg"), 4, 5, None);
        cell.keep(stream("h"), 1, 5, None);
        let display = Output::Display {
            data: json!({"text/plain": "x"}),
            metadata: json!({}),
        };
        assert!(!cell.keep(display, 1, 5, None));
        assert_eq!(cell.stream("stdout"), "abcde");
        assert_eq!(cell.events.len(), 1, "{:?}", cell.events);
        assert_eq!((cell.kept_bytes, cell.truncated), (5, true));
    }

    #[test]
    fn an_error_over_the_cap_is_kept_in_short() {
        let mut cell = CellResult::default();
        let error = Output::Error {
            name: "E".repeat(5000),
            value: "é".repeat(5000),
            traceback: vec!["frame".into(); 1000],
        };
        cell.keep(error, 20_000, 0, None);
        let [
            Output::Error {
                name,
                value,
                traceback,
            },
        ] = &cell.outputs().cloned().collect::<Vec<_>>()[..]
        else {
            panic!("{:?}", cell.events);
        };
        assert_eq!(name.len(), SHORT_ERROR_BYTES);
        assert_eq!(value.len(), SHORT_ERROR_BYTES);
        assert!(traceback.is_empty());
        assert_eq!((cell.kept_bytes, cell.truncated), (0, true));
    }

    #[test]
    fn text_following_text_of_the_same_stream_joins_it() {
        let mut cell = CellResult::default();
        let err = Output::Stream {
            name: "stderr".into(),
            text: "e".into(),
        };
        for output in [stream("1"), stream("\n"), err, stream("2")] {
            assert!(cell.keep(output, 1, 100, None));
        }
        let texts: Vec<&str> = cell
            .outputs()
            .map(|o| match o {
                Output::Stream { text, .. } => text.as_str(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(texts, ["1\n", "e", "2"]);
    }

    #[test]
    fn a_result_sets_the_execution_count() {
        let mut cell = CellResult::default();
        let result = Output::Result {
            data: json!({"text/plain": "2"}),
            metadata: json!({}),
            execution_count: Some(7),
        };
        cell.keep(result, 10, 100, None);
        assert_eq!(cell.execution_count, Some(7));
    }
}
