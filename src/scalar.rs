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
