//! The per-thread tally that [`Counted`](crate::Counted) operations increment, and the ways
//! to read it.
//!
//! # Thread semantics
//!
//! Every thread has its own tally, starting at zero. An operation is counted on the thread
//! that performs it and nowhere else, so two threads counting at once never see each other's
//! operations, and no synchronisation is needed on the per-operation path.
//!
//! Read the tally by difference: [`measure`] runs a closure and returns what it counted on
//! this thread, whatever was counted before. Measurements nest.
//!
//! Work sent to other threads is counted there. To bring it home, the worker runs its part
//! under [`take`], which returns what the part counted and removes it from the worker's
//! tally, and the caller adds the returned [`Counts`] to its own tally with [`merge`]. This is
//! exact even when a thread pool runs a part on the calling thread itself: `take` removes it,
//! `merge` puts it back once.
//!
//! ```
//! use opcount::{Counted, tally};
//!
//! let x = Counted::new(2.0f64);
//! let (_, counts) = tally::measure(|| {
//!     let worker = std::thread::spawn(move || tally::take(|| x * x * x));
//!     let (_cube, worker_counts) = worker.join().unwrap();
//!     tally::merge(worker_counts);
//! });
//! assert_eq!(counts.mul, 2);
//! ```
//!
//! # Thread pools
//!
//! A thread of a work-stealing pool (rayon) that waits for the other parts of a parallel
//! section does not sit idle: it runs other queued tasks, which may be anything the pool was
//! given, such as another caller's whole training step. Their operations would land in the
//! waiting thread's tally, in the middle of its measurement. [`parallel`] closes that gap:
//! it runs a section whose parts each return their counts from [`take`], and afterwards sets
//! the calling thread's tally to what it was before the section plus exactly those counts.
//! Whatever else ran on the thread meanwhile measured itself by its own differences and
//! leaves no trace. Every parallel section in opcount's kernels runs under it, so
//! [`measure`], `measure_step` and the per-node attribution are exact when called from rayon
//! tasks (of the global pool or any other, nested or not) and from any number of threads.
//!
//! ```
//! use opcount::{Counted, Counts, tally};
//! use rayon::prelude::*;
//!
//! let xs = Counted::vec(&[1.0f64; 1000]);
//! let (sum, counts) = tally::measure(|| {
//!     tally::parallel(|| {
//!         let parts: Vec<(Counted<f64>, Counts)> = xs
//!             .par_chunks(100)
//!             .map(|part| tally::take(|| part.iter().copied().sum::<Counted<f64>>()))
//!             .collect();
//!         let (sums, counts): (Vec<_>, Vec<_>) = parts.into_iter().unzip();
//!         (sums, counts.into_iter().sum())
//!     })
//! });
//! assert_eq!(sum.len(), 10);
//! assert_eq!(counts.add, 10 * 99);
//! ```
//!
//! # Range
//!
//! A counter is a `u64`, and [`measure`] takes the difference of two readings modulo 2^64
//! before widening it to a [`Counts`] (`u128`): a measurement is exact as long as one
//! thread counts fewer than 2^64 operations of a kind during it (at a billion operations a
//! second, 580 years). Counts of more than that come from closed forms
//! ([`estimate`](crate::estimate)), not measurements.
//!
//! # Cost
//!
//! The tally is a `thread_local!` array of `Cell<u64>` (each in 16 bytes of its own) with a
//! `const` initializer and no destructor, so reaching it compiles to a plain load and store
//! at a fixed offset from the thread pointer: no lazy-initialisation check, no destructor
//! registration, no atomics.
//! Every function on the per-operation path is `#[inline]`, which lets the compiler keep a
//! counter in a register across a loop and add the trip count once.

use std::cell::Cell;

use crate::counts::{Counts, Op};

/// The counters, one per kind, on cache lines of their own.
#[repr(align(64))]
struct Counters([Counter; Op::COUNT]);

/// One kind's counter, alone in 16 bytes. Packed 8 bytes apart, two kinds that a kernel
/// counts side by side (`sub` and `mul` of `p -= lr * g`) were updated as one 16-byte vector,
/// loaded and stored at once. Most likely, when the kernel before had stored them one by
/// one, that load spanned two stores still on their way to the cache, which the CPU cannot
/// forward to it, and it waited for them. A tiny model's step runs a kernel every few
/// nanoseconds: xor and iris at batch 1 counted 13-15% and 5-7% slower than plain with the
/// counters packed, at most 3% with them apart (`opcount bench`, 5 alternating runs each).
#[repr(align(16))]
struct Counter(Cell<u64>);

thread_local! {
    static TALLY: Counters = const { Counters([const { Counter(Cell::new(0)) }; Op::COUNT]) };
}

/// Adds one operation of kind `op` to this thread's tally. Only `Counted` calls this.
#[inline]
pub(crate) fn bump(op: Op) {
    bump_by(op, 1);
}

/// Adds `n` operations of kind `op` to this thread's tally.
#[inline]
pub(crate) fn bump_by(op: Op, n: u64) {
    TALLY.with(|t| {
        let cell = &t.0[op as usize].0;
        cell.set(cell.get().wrapping_add(n));
    });
}

/// Everything counted on this thread since it started, modulo 2^64 per kind.
///
/// Useful only as the two ends of a difference taken with [`between`]; prefer [`measure`].
#[inline]
pub fn snapshot() -> Counts {
    Counts::from_array(raw().map(u128::from))
}

/// What this thread counted from snapshot `before` to snapshot `after`: per kind, the
/// difference modulo 2^64, widened. Exact when fewer than 2^64 operations of a kind were
/// counted in between, even if a counter wrapped or counts were taken away and merged back.
#[inline]
pub fn between(before: &Counts, after: &Counts) -> Counts {
    // A snapshot's counts are counters' values, below 2^64: `as u64` keeps them whole.
    Counts::from_array(std::array::from_fn(|i| {
        let (b, a) = (before.to_array()[i] as u64, after.to_array()[i] as u64);
        a.wrapping_sub(b).into()
    }))
}

/// Runs `f` and returns its result with the operations it counted on this thread.
///
/// The counts stay in this thread's tally too, so an enclosing `measure` sees them.
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, Counts) {
    let before = snapshot();
    let result = f();
    (result, between(&before, &snapshot()))
}

/// Runs `f` and returns its result with the operations it counted, removing them from this
/// thread's tally. For a worker whose counts the caller will [`merge`].
pub fn take<R>(f: impl FnOnce() -> R) -> (R, Counts) {
    let (result, counts) = measure(f);
    unmerge(counts);
    (result, counts)
}

/// Adds counts returned by another thread (see [`take`]) to this thread's tally.
///
/// # Panics
///
/// If a kind's count is 2^64 or more: more than one measurement holds (see "Range").
pub fn merge(counts: Counts) {
    for (op, n) in counts.iter() {
        let n = u64::try_from(n).expect("a thread's tally merges fewer than 2^64 per kind");
        bump_by(op, n);
    }
}

/// Removes counts that [`take`] hands to another thread. They came from [`measure`], so
/// each fits a counter.
fn unmerge(counts: Counts) {
    for (op, n) in counts.iter() {
        bump_by(op, (n as u64).wrapping_neg());
    }
}

/// Runs `section`, a parallel section whose parts each ran under [`take`] and whose counts it
/// returns added up, and leaves this thread's tally at what it was before plus exactly those
/// counts: work that a thread pool ran on this thread while it waited for the parts (other
/// tasks of the pool) is not charged to it. See "Thread pools" above.
pub fn parallel<R>(section: impl FnOnce() -> (R, Counts)) -> R {
    let before = raw();
    let (result, parts) = section();
    set_raw(before);
    merge(parts);
    result
}

/// This thread's counters as they are.
#[inline]
fn raw() -> [u64; Op::COUNT] {
    TALLY.with(|t| std::array::from_fn(|i| t.0[i].0.get()))
}

/// Sets this thread's counters.
fn set_raw(values: [u64; Op::COUNT]) {
    TALLY.with(|t| {
        for (cell, v) in t.0.iter().zip(values) {
            cell.0.set(v);
        }
    });
}

/// Runs `run` in pools of 1, 2 and 3 threads and asserts the three results are equal: for
/// kernels' tests that their bits and counts do not depend on the thread count.
#[cfg(test)]
pub(crate) fn assert_same_on_1_2_3_threads<R>(run: impl Fn() -> R + Send + Sync)
where
    R: PartialEq + std::fmt::Debug + Send,
{
    let on = |threads| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(&run)
    };
    let alone = on(1);
    assert_eq!(on(2), alone);
    assert_eq!(on(3), alone);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_and_take_cancel() {
        let (_, outer) = measure(|| {
            let ((), taken) = take(|| merge(Counts::of(Op::Mul, 5)));
            assert_eq!(taken, Counts::of(Op::Mul, 5));
        });
        assert_eq!(outer, Counts::ZERO);
    }

    #[test]
    fn a_parallel_section_keeps_only_what_its_parts_returned() {
        let (_, outer) = measure(|| {
            bump(Op::Mul);
            parallel(|| {
                // Work of someone else's that ran here while the section waited ...
                bump_by(Op::Add, 7);
                // ... and the section's own part, taken and returned.
                let ((), part) = take(|| bump_by(Op::Div, 3));
                ((), part)
            });
        });
        assert_eq!(outer, Counts::of(Op::Mul, 1) + Counts::of(Op::Div, 3));
    }

    #[test]
    fn a_measurement_across_a_counter_wrap_is_exact() {
        // Bring this thread's counter to 3 below 2^64, then count 5: the counter wraps to 2.
        let start = snapshot().rem as u64;
        bump_by(Op::Rem, (u64::MAX - 2).wrapping_sub(start));
        let ((), counts) = measure(|| bump_by(Op::Rem, 5));
        assert_eq!(counts, Counts::of(Op::Rem, 5));
        assert_eq!(snapshot().rem, 2);
    }

    #[test]
    fn measurements_nest() {
        let (inner, outer) = measure(|| {
            bump(Op::Add);
            let ((), inner) = measure(|| bump(Op::Add));
            inner
        });
        assert_eq!(inner.add, 1);
        assert_eq!(outer.add, 2);
    }
}
