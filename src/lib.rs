//! opcount makes the arithmetic of a neural network visible.
//!
//! [`Counted<T>`] is a floating-point number that records every addition, multiplication,
//! comparison, transcendental function and activation call done on it, by kind, in a
//! per-thread [`tally`]. Generic numeric code written against [`Scalar`] runs unchanged with
//! `f32` (fast, plain) and with `Counted<f32>` (measured, same bits).
//!
//! On top of that sits a small neural-network interpreter: a [`Model`] read from a RON file
//! is validated into a [`Plan`], built into a [`Network<S>`](Network) and trained; each
//! node's operations are measured per phase ([`StepCounts`]).
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

pub mod budget;
pub mod convention;
mod counted;
mod counts;
pub mod data;
mod error;
pub mod estimate;
pub mod input;
mod loaded;
pub mod model;
mod nn;
pub mod onnx;
mod phases;
mod plan;
pub mod project;
pub mod report;
mod rng;
mod scalar;
mod shape;
pub mod summary;
pub mod tally;
pub mod text;
pub mod train;

pub use counted::{Counted, CountedNumber, CountedZeros};
pub use counts::{Counts, CountsMismatch, Op};
pub use error::{Error, Result};
pub use loaded::Loaded;
pub use model::{Model, Node, Plan};
pub use nn::{Event, Network, measure_step, measure_step_watched};
pub use phases::{NodeCounts, Phase, StepCounts, Totals};
pub use scalar::{Counting, Scalar, erf, erf_f32, exp, exp_f32, tanh, tanh_f32};
pub use shape::Shape;

/// The README's examples run as doctests, so they cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
