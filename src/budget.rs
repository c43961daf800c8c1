//! The memory budget: a limit on the bytes opcount takes for everything that grows with its
//! input — the model file's text and what it parses into, the training data, the networks,
//! the per-node bookkeeping of plans, counts and reports, and a saved model's text. Each is
//! charged before it is allocated (or, for what a parser builds, as it grows), so input too
//! big for the budget is an [`Error::Memory`] naming what did not fit, not an abort.
//!
//! Charges only add up: what is freed early (the model's text once parsed) is released, the
//! rest is counted until the end, which overstates a little and never understates.

use crate::error::{Error, Result};
use crate::model::Plan;

/// Bytes per node of the plan, the closed forms and the measured counts of a step, the
/// interpreter's bookkeeping (buffers are charged by [`crate::Plan::memory_bytes`]) and the
/// report's rows before rendering. Measured with a counting allocator (`tests/memory.rs`
/// checks it): about 4.5 KiB for a dense layer in the graph plan (its node, parameter
/// tensors and kernel) with 128-bit counts.
pub const NODE_BYTES: u64 = 6 << 10;

/// Bytes per node of rendering a report, measured as [`NODE_BYTES`] is: the text table (about
/// 5.4 KiB for a dense layer), CSV (3.7 KiB), JSON (29 KiB: it is built as a tree of values
/// before it is written) and the SVG chart (1 KiB).
pub const TABLE_BYTES_PER_NODE: u64 = 6 << 10;
/// See [`TABLE_BYTES_PER_NODE`].
pub const CSV_BYTES_PER_NODE: u64 = 5 << 10;
/// See [`TABLE_BYTES_PER_NODE`].
pub const JSON_BYTES_PER_NODE: u64 = 32 << 10;
/// See [`TABLE_BYTES_PER_NODE`].
pub const SVG_BYTES_PER_NODE: u64 = 2 << 10;

/// Bytes per parameter of saving a trained model: its copy as a [`crate::Model`] and its
/// RON text (about 15 characters a number, in a string that may have doubled its capacity).
pub const SAVE_BYTES_PER_PARAM: u64 = 48;

/// How many bytes may still be taken, and by whose decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Budget {
    limit: u64,
    used: u128,
    note: &'static str,
}

impl Budget {
    /// A budget of `limit` bytes; `note` says in messages where the limit came from (e.g.
    /// "set by --max-memory").
    pub fn new(limit: u64, note: &'static str) -> Budget {
        Budget {
            limit,
            used: 0,
            note,
        }
    }

    /// No limit worth the name (`u64::MAX` bytes), for callers that bound memory themselves.
    pub fn unlimited() -> Budget {
        Budget::new(u64::MAX, "unlimited")
    }

    /// The limit, in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes charged so far.
    pub fn used(&self) -> u128 {
        self.used
    }

    /// Bytes that may still be charged.
    pub fn left(&self) -> u128 {
        u128::from(self.limit).saturating_sub(self.used)
    }

    /// Charges `bytes` for `what` (e.g. "models/x.ron: the training data"), or fails with
    /// [`Error::Memory`] if they do not fit, leaving the budget as it was.
    pub fn charge(&mut self, bytes: u128, what: impl FnOnce() -> String) -> Result<()> {
        if bytes > self.left() {
            return Err(self.refusal(what(), bytes));
        }
        self.used += bytes;
        Ok(())
    }

    /// Charges what `networks` networks of `plan` need to run a step on `batch` examples of
    /// 4-byte numbers ([`Plan::memory_bytes`]), before any of it is allocated. `origin`
    /// names the model in the error.
    pub fn charge_run(
        &mut self,
        plan: &Plan,
        batch: usize,
        networks: u128,
        origin: &str,
    ) -> Result<()> {
        let need = plan.memory_bytes(batch, 4).saturating_mul(networks);
        self.charge(need, || {
            format!("{origin}: running this model at batch {batch}")
        })
    }

    /// The error for `what`, which needs `need` bytes that the budget does not have.
    pub fn refusal(&self, what: String, need: u128) -> Error {
        Error::Memory {
            what,
            need,
            left: self.left(),
            limit: self.limit,
            note: self.note,
        }
    }

    /// Gives back bytes charged earlier, once what they held is freed.
    pub fn release(&mut self, bytes: u128) {
        self.used = self.used.saturating_sub(bytes);
    }
}

/// Bytes this process can count on: the memory available (`MemAvailable` in /proc/meminfo,
/// or 8 GiB where it cannot be read), or the address space it may still map if that is
/// limited (`ulimit -v`) and less.
pub fn available_memory() -> u64 {
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            kib.checked_mul(1024)
        })
        .unwrap_or(8 << 30);
    available.min(address_space_left())
}

/// The address space this process may still map under its limit (`RLIMIT_AS`), or
/// `u64::MAX` if it is not limited.
fn address_space_left() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the one struct it is given.
    let known = unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } == 0;
    if !known || limit.rlim_cur == libc::RLIM_INFINITY {
        return u64::MAX;
    }
    let mapped = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmSize:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            kib.checked_mul(1024)
        })
        .unwrap_or(0);
    limit.rlim_cur.saturating_sub(mapped)
}

/// A byte count with a binary unit, e.g. `1.5 GiB`.
pub fn human_bytes(n: u128) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_add_up_to_the_limit_and_no_further() {
        let mut budget = Budget::new(1000, "set by a test");
        budget.charge(600, || "first".into()).unwrap();
        let err = budget.charge(500, || "second".into()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "second needs about 500 B of memory, more than the 400 B left of the budget \
             of 1000 B (set by a test)"
        );
        assert_eq!(budget.used(), 600);
        budget.release(600);
        budget.charge(1000, || "third".into()).unwrap();
        assert_eq!(budget.left(), 0);
    }

    #[test]
    fn human_bytes_picks_the_unit() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
