//! Interleaved timing of a plain and a counted run of the same work, for benchmarks.
//!
//! The machine this runs on is shared and noisy, so the two runs alternate round by round
//! (which one goes first alternates too) and each side reports its median; their ratio
//! is only meaningful within one call.

use std::time::{Duration, Instant};

/// Medians of the two sides of an interleaved comparison.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct Comparison {
    /// Median seconds of one call of the plain side.
    pub plain_s: f64,
    /// Median seconds of one call of the counted side.
    pub counted_s: f64,
    /// How many rounds each side ran.
    pub rounds: usize,
    /// Calls per round (each round's time is divided by it).
    pub calls_per_round: usize,
}

impl Comparison {
    /// `counted_s / plain_s`: what counting costs, 1.0 meaning nothing.
    pub fn ratio(&self) -> f64 {
        self.counted_s / self.plain_s
    }
}

/// Times `plain` and `counted` alternately for `rounds` rounds, each round long enough
/// (about `round_time`) for the clock to resolve it.
pub fn compare(
    rounds: usize,
    round_time: Duration,
    mut plain: impl FnMut(),
    mut counted: impl FnMut(),
) -> Comparison {
    // Warm up both sides and find how many calls fill a round.
    plain();
    counted();
    let calls = calls_per(round_time, &mut plain);
    let mut plain_times = Vec::with_capacity(rounds);
    let mut counted_times = Vec::with_capacity(rounds);
    for round in 0..rounds {
        if round % 2 == 0 {
            plain_times.push(time(calls, &mut plain));
            counted_times.push(time(calls, &mut counted));
        } else {
            counted_times.push(time(calls, &mut counted));
            plain_times.push(time(calls, &mut plain));
        }
    }
    Comparison {
        plain_s: median(&mut plain_times),
        counted_s: median(&mut counted_times),
        rounds,
        calls_per_round: calls,
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
fn calls_per(target: Duration, f: &mut impl FnMut()) -> usize {
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
fn time(calls: usize, f: &mut impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..calls {
        f();
    }
    start.elapsed().as_secs_f64() / calls as f64
}

fn median(values: &mut [f64]) -> f64 {
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
    fn median_of_odd_and_even() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
