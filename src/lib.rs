//! opcount makes the arithmetic of a neural network visible.
//!
//! [`Counted<T>`] is a floating-point number that records every addition, multiplication,
//! comparison, transcendental function and activation call done on it, by kind, in a
//! per-thread [`tally`]. Generic numeric code written against [`Scalar`] runs unchanged with
//! `f32` (fast, plain) and with `Counted<f32>` (measured, same bits).
//!
//! What counts as what is decided once, in `docs/counting.md`.
//!
//! ```
//! use opcount::{Counted, Counts, Scalar, tally};
//!
//! // Horner's rule: a polynomial of degree n costs n multiplications and n additions.
//! fn horner<S: Scalar>(coefficients: &[S], x: S) -> S {
//!     let (&last, rest) = coefficients.split_last().unwrap();
//!     rest.iter().rev().fold(last, |acc, &c| acc * x + c)
//! }
//!
//! let c = Counted::vec(&[1.0f64, -2.0, 0.5, 3.0]);
//! let (y, counts) = tally::measure(|| horner(&c, Counted::new(2.0)));
//! assert_eq!(y.get(), horner(&[1.0f64, -2.0, 0.5, 3.0], 2.0));
//! counts.assert_eq(&Counts { mul: 3, add: 3, ..Counts::ZERO });
//! ```
#![warn(missing_docs)]

pub mod bench;
mod counted;
mod counts;
mod scalar;
pub mod tally;

pub use counted::Counted;
pub use counts::{Counts, CountsMismatch, Op};
pub use scalar::{RecordAct, Scalar};

/// The README's examples run as doctests, so they cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
