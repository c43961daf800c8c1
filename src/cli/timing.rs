//! Interleaved timing of a plain and a counted run of the same work, for `opcount bench` and
//! `project`, and for `benches/counted.rs`, which includes this file with `#[path]`.
//!
//! The machine this runs on is shared and noisy, so the sides alternate round by round
//! (which one goes first rotates too) and each side reports its median; their ratio is
//! only meaningful within one call.

use std::time::{Duration, Instant};

/// Times several sides in turn for `rounds` rounds (the side that goes first rotates from
/// round to round) and returns each side's median seconds per call. Every side makes as many
/// calls per round as fill about `round_time` for the first side. `on_round` is called after
/// each round (for a progress bar).
pub fn interleave(
    rounds: usize,
    round_time: Duration,
    sides: &mut [&mut dyn FnMut()],
    mut on_round: impl FnMut(usize),
) -> Vec<f64> {
    for side in sides.iter_mut() {
        side();
    }
    let calls = calls_per(round_time, &mut *sides[0]);
    let n = sides.len();
    let mut times: Vec<Samples> = (0..n).map(|_| Samples::default()).collect();
    for round in 0..rounds {
        for i in 0..n {
            let side = (round % n + i) % n;
            times[side].push(time(calls, &mut *sides[side]));
        }
        on_round(round + 1);
    }
    times.iter_mut().map(Samples::median).collect()
}

/// Timings kept for a median in memory that does not grow with the number of rounds: every
/// one up to [`Samples::CAPACITY`], then every second, every fourth, ... of the run so far,
/// evenly spread over it.
#[derive(Clone, Debug, PartialEq)]
pub struct Samples {
    kept: Vec<f64>,
    /// Sample `i` is kept if `i` is a multiple of the stride.
    stride: usize,
    seen: usize,
}

impl Default for Samples {
    fn default() -> Self {
        Samples {
            kept: Vec::new(),
            stride: 1,
            seen: 0,
        }
    }
}

impl Samples {
    /// The most samples kept.
    pub const CAPACITY: usize = 1024;

    /// Adds the next sample.
    pub fn push(&mut self, value: f64) {
        if self.seen.is_multiple_of(self.stride) {
            if self.kept.len() == Self::CAPACITY {
                // Keep the samples at multiples of twice the stride: every other one.
                let mut index = 0;
                self.kept.retain(|_| {
                    index += 1;
                    index % 2 == 1
                });
                self.stride *= 2;
            }
            if self.seen.is_multiple_of(self.stride) {
                self.kept.push(value);
            }
        }
        self.seen += 1;
    }

    /// The median of the samples kept (reordering them).
    pub fn median(&mut self) -> f64 {
        median(&mut self.kept)
    }
}

/// Median seconds of one call of `f`, over `rounds` rounds of about `round_time` each.
pub fn time_median(rounds: usize, round_time: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let calls = calls_per(round_time, &mut f);
    let mut times: Vec<f64> = (0..rounds).map(|_| time(calls, &mut f)).collect();
    median(&mut times)
}

/// How many calls of `f` take about `target` (at least one).
fn calls_per(target: Duration, f: &mut dyn FnMut()) -> usize {
    let mut calls = 1usize;
    loop {
        let start = Instant::now();
        for _ in 0..calls {
            f();
        }
        let elapsed = start.elapsed();
        if elapsed >= target / 4 || calls >= 1 << 30 {
            let per_call = elapsed.as_secs_f64() / calls as f64;
            return ((target.as_secs_f64() / per_call.max(1e-12)) as usize).clamp(1, 1 << 30);
        }
        calls *= 4;
    }
}

/// Seconds per call of `calls` back-to-back calls of `f`.
fn time(calls: usize, f: &mut dyn FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..calls {
        f();
    }
    start.elapsed().as_secs_f64() / calls as f64
}

/// The median of some values (reordering them).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_stay_bounded_and_evenly_spread() {
        let mut s = Samples::default();
        for i in 0..5000 {
            s.push(i as f64);
        }
        // 5000 samples: after thinning to every fourth, 1250 would be too many: every eighth.
        assert_eq!(s.kept.len(), 625);
        assert!(s.kept.iter().enumerate().all(|(k, &v)| v == (8 * k) as f64));
        assert_eq!(s.median(), 2496.0);
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
