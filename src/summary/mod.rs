//! What `opcount train`, `bench` and `project` report, as values a library user gets too:
//! each summary holds its numbers and renders them as the command line prints them, a text
//! table ([`TrainSummary::table`], ...) or a JSON value ([`TrainSummary::json`], ...).
//!
//! Counts come from the library. Times, which only the command line measures (its timing
//! harness and sgemm reference are not part of the library), are fields the caller fills in.

mod bench;
mod project;
mod train;

pub use bench::{BenchSummary, BenchTimings, is_kernel};
pub use project::ProjectSummary;
pub use train::TrainSummary;

/// Seconds in the unit that keeps three significant digits readable.
fn duration(seconds: f64) -> String {
    match seconds {
        s if s >= 1.0 => format!("{s:.3} s"),
        s if s >= 1e-3 => format!("{:.3} ms", s * 1e3),
        s => format!("{:.3} us", s * 1e6),
    }
}

/// Seconds as minutes, hours or days when they are long.
fn human_time(seconds: f64) -> String {
    match seconds {
        s if s >= 2.0 * 86_400.0 => format!("{:.1} days", s / 86_400.0),
        s if s >= 2.0 * 3600.0 => format!("{:.1} hours", s / 3600.0),
        s if s >= 120.0 => format!("{:.1} minutes", s / 60.0),
        s => format!("{s:.1} seconds"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_keep_three_digits_and_long_times_a_readable_unit() {
        assert_eq!(duration(2.5), "2.500 s");
        assert_eq!(duration(0.0125), "12.500 ms");
        assert_eq!(duration(3.1e-7), "0.310 us");
        assert_eq!(human_time(59.94), "59.9 seconds");
        assert_eq!(human_time(600.0), "10.0 minutes");
        assert_eq!(human_time(3.0 * 3600.0), "3.0 hours");
        assert_eq!(human_time(3.0 * 86_400.0), "3.0 days");
    }
}
