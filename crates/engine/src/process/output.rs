//! Output kept from processes: each stream within its cap, all of them together within the
//! server's budget; the rest is counted and dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tracing::warn;

/// The output all processes hold together, at most `limits.max_output_bytes_held`: past it,
/// more output is dropped as if past the exec's own cap, so execs printing up to their caps in
/// many sandboxes at once cannot take the server's memory.
#[derive(Debug)]
pub struct OutputBudget {
    free: AtomicUsize,
}

impl OutputBudget {
    pub fn new(bytes: usize) -> Arc<OutputBudget> {
        Arc::new(OutputBudget {
            free: AtomicUsize::new(bytes),
        })
    }

    /// Takes up to `want` bytes of the budget; returns how many it got.
    pub(super) fn take(&self, want: usize) -> usize {
        if want == 0 {
            return 0;
        }
        let taken = self
            .free
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |free| {
                Some(free - want.min(free))
            })
            .map_or(0, |free| want.min(free));
        metrics::gauge!("cella_output_bytes_held").increment(taken as f64);
        taken
    }

    fn give_back(&self, bytes: usize) {
        self.free.fetch_add(bytes, Ordering::AcqRel);
        metrics::gauge!("cella_output_bytes_held").decrement(bytes as f64);
    }
}

/// Output kept within a cap and the server's budget; the rest is counted and dropped.
#[derive(Debug)]
pub(super) struct Capped {
    pub(super) data: Vec<u8>,
    cap: usize,
    pub(super) truncated: bool,
    budget: Arc<OutputBudget>,
    /// Bytes taken from the budget (still held after `data` is handed on, until this drops).
    held: usize,
}

impl Capped {
    pub(super) fn new(cap: usize, budget: Arc<OutputBudget>) -> Capped {
        Capped {
            data: Vec::new(),
            cap,
            truncated: false,
            budget,
            held: 0,
        }
    }

    pub(super) fn push<'a>(&mut self, chunk: &'a [u8]) -> &'a [u8] {
        let room = self.cap.saturating_sub(self.held);
        let want = chunk.len().min(room);
        let granted = self.budget.take(want);
        if granted < want && !self.truncated {
            warn!(
                "the server holds its limit of output (limits.max_output_bytes_held): an \
                 exec's output is cut short"
            );
        }
        self.held += granted;
        let kept = &chunk[..granted];
        self.truncated |= kept.len() < chunk.len();
        self.data.extend_from_slice(kept);
        kept
    }
}

impl Drop for Capped {
    fn drop(&mut self) {
        self.budget.give_back(self.held);
    }
}

#[derive(Debug)]
pub(super) struct Output {
    pub(super) stdout: Capped,
    pub(super) stderr: Capped,
}

impl Output {
    pub(super) fn new(cap: usize, budget: &Arc<OutputBudget>) -> Output {
        Output {
            stdout: Capped::new(cap, budget.clone()),
            stderr: Capped::new(cap, budget.clone()),
        }
    }
}

/// What a process produced: the kept bytes and whether more was cut.
#[derive(Debug, Clone, Default)]
pub struct Captured {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
}

/// Output as text, invalid UTF-8 replaced; valid output (nearly all) is moved, not copied.
pub fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes)
        .unwrap_or_else(|invalid| String::from_utf8_lossy(invalid.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_keeps_prefix_and_flags_the_rest() {
        let mut c = Capped::new(5, OutputBudget::new(100));
        assert_eq!(c.push(b"abc"), b"abc");
        assert_eq!(c.push(b"defg"), b"de");
        assert_eq!(c.push(b"h"), b"");
        assert_eq!(c.data, b"abcde");
        assert!(c.truncated);
    }

    #[test]
    fn output_past_the_servers_budget_is_cut_until_its_holder_is_dropped() {
        let budget = OutputBudget::new(6);
        let mut first = Capped::new(5, budget.clone());
        assert_eq!(first.push(b"abcd"), b"abcd");
        let mut second = Capped::new(5, budget.clone());
        assert_eq!(second.push(b"wxyz"), b"wx");
        assert!(second.truncated && !first.truncated);
        let taken = std::mem::take(&mut first.data);
        assert_eq!(
            second.push(b"!"),
            b"",
            "handing the bytes on does not free them"
        );
        drop((first, taken));
        let mut third = Capped::new(5, budget.clone());
        assert_eq!(third.push(b"12345"), b"1234");
        drop((second, third));
        assert_eq!(budget.take(100), 6);
    }
}
