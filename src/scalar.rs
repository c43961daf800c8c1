//! [`Scalar`]: the one bound all of opcount's generic numeric code asks for.

use std::fmt::{Debug, Display};
use std::iter::{Product, Sum};
use std::ops::{AddAssign, DivAssign, MulAssign, RemAssign, SubAssign};

use num_traits::{Float, FloatConst, FromPrimitive, Signed};

/// How a number type takes part in counting: whether its operations are counted at all, and
/// its hook for activation calls (a no-op for plain floats, a count of [`Op::Act`] for
/// [`Counted`]).
///
/// Implement it with an empty body (`impl Counting for MyFloat {}`) to use your own number
/// type as a [`Scalar`].
///
/// [`Op::Act`]: crate::Op::Act
/// [`Counted`]: crate::Counted
pub trait Counting {
    /// Whether operations on this type are counted. Code that measures (the interpreter's
    /// per-node attribution) skips measuring for types that count nothing.
    const IS_COUNTED: bool = false;

    /// Records one call of an activation function (see `docs/counting.md`). Call it where
    /// the function is evaluated on a value, once per value, so that the count follows what
    /// the loop really did.
    #[inline]
    fn record_act() {}

    /// Records one call of a library function outside `num_traits::Float` (so far only
    /// [`erf`]), counted as one `trans` (see `docs/counting.md`). A no-op for plain floats.
    #[inline]
    fn record_trans() {}
}

impl Counting for f32 {}
impl Counting for f64 {}

/// A number that opcount's generic code can compute with: `f32`, `f64`, `Counted<f32>`,
/// `Counted<f64>`, or any type with the same abilities.
///
/// An empty trait with a blanket implementation: it only names the bounds once.
/// [`Counting::record_act`] is its hook for counting activation calls.
pub trait Scalar:
    Float
    + FloatConst
    + Signed
    + FromPrimitive
    + Sum
    + Product
    + for<'a> Sum<&'a Self>
    + for<'a> Product<&'a Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + RemAssign
    + Debug
    + Display
    + Default
    + Send
    + Sync
    + 'static
    + Counting
{
}

impl<T> Scalar for T where
    T: Float
        + FloatConst
        + Signed
        + FromPrimitive
        + Sum
        + Product
        + for<'a> Sum<&'a T>
        + for<'a> Product<&'a T>
        + AddAssign
        + SubAssign
        + MulAssign
        + DivAssign
        + RemAssign
        + Debug
        + Display
        + Default
        + Send
        + Sync
        + 'static
        + Counting
{
}

/// The error function, `erf(x) = 2/sqrt(pi) * integral from 0 to x of exp(-t^2) dt`, for any
/// [`Scalar`]: one library call, counted as one `trans` ([`Counting::record_trans`]).
///
/// `num_traits::Float` has no `erf`, so the value is computed in `f64` (the `libm` crate's
/// `erf`, within an ulp) and rounded to `S`: for `f32` and `Counted<f32>` the same bits.
#[inline]
pub fn erf<S: Scalar>(x: S) -> S {
    S::record_trans();
    let wide = x.to_f64().unwrap_or(f64::NAN);
    S::from_f64(libm::erf(wide)).unwrap_or_else(S::nan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Counted, Counts, tally};

    #[test]
    fn erf_is_odd_bounded_and_counted_once() {
        let (values, counts) = tally::measure(|| {
            [0.0, 0.5, -0.5, 3.0, 30.0, -30.0].map(|x| erf(Counted::new(x)).get())
        });
        assert_eq!(values[0], 0.0);
        assert!((values[1] - 0.520_499_877_813_046_5).abs() < 1e-15);
        assert_eq!(values[1], -values[2]);
        assert!((values[3] - 0.999_977_909_503_001_4).abs() < 1e-15);
        assert_eq!((values[4], values[5]), (1.0, -1.0));
        counts.assert_eq(&Counts {
            trans: 6,
            ..Counts::ZERO
        });
        let x = 0.3f32;
        assert_eq!(erf(Counted::new(x)).get().to_bits(), erf(x).to_bits());
    }
}
