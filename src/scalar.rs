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

    /// `exp(x)` as opcount's kernels compute it: [`exp`] calls this. By default the type's
    /// own [`Float::exp`]; `f32` overrides it with a form the compiler can vectorise
    /// ([`exp_f32`]), and [`Counted`] counts one `exp` and calls its inner type's, so the
    /// counted and the plain number compute the same bits.
    ///
    /// [`Counted`]: crate::Counted
    #[inline]
    fn exp_kernel(self) -> Self
    where
        Self: Float,
    {
        self.exp()
    }

    /// `tanh(x)` as opcount's kernels compute it: [`tanh`] calls this. As
    /// [`exp_kernel`](Counting::exp_kernel), with [`tanh_f32`] for `f32` and one `tanh`
    /// counted by [`Counted`].
    ///
    /// [`Counted`]: crate::Counted
    #[inline]
    fn tanh_kernel(self) -> Self
    where
        Self: Float,
    {
        self.tanh()
    }

    /// `erf(x)` as opcount's kernels compute it: [`erf`] calls this. By default the `libm`
    /// crate's `erf` in `f64`, rounded to the type; [`erf_f32`] for `f32`, and one `trans`
    /// counted by [`Counted`], as [`exp_kernel`](Counting::exp_kernel).
    ///
    /// [`Counted`]: crate::Counted
    #[inline]
    fn erf_kernel(self) -> Self
    where
        Self: Float,
    {
        let wide = self.to_f64().unwrap_or(f64::NAN);
        Self::from(libm::erf(wide)).unwrap_or_else(Self::nan)
    }
}

impl Counting for f32 {
    #[inline(always)]
    fn exp_kernel(self) -> f32 {
        exp_f32(self)
    }

    #[inline(always)]
    fn tanh_kernel(self) -> f32 {
        tanh_f32(self)
    }

    #[inline(always)]
    fn erf_kernel(self) -> f32 {
        erf_f32(self)
    }
}

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
/// [`Scalar`], counted as one `trans`: as [`exp`], through [`Counting::erf_kernel`]
/// ([`erf_f32`] for `f32` and `Counted<f32>`; the `libm` crate's `erf` in `f64` for the
/// others, as `num_traits::Float` has none).
#[inline(always)]
pub fn erf<S: Scalar>(x: S) -> S {
    x.erf_kernel()
}

/// `exp(x)` for any [`Scalar`], counted as one `exp`. What the kernels call instead of
/// [`Float::exp`]: the same function, but through [`Counting::exp_kernel`], so that `f32` (and
/// `Counted<f32>`, bit for bit) use [`exp_f32`], which vectorises.
#[inline(always)]
pub fn exp<S: Scalar>(x: S) -> S {
    x.exp_kernel()
}

/// `tanh(x)` for any [`Scalar`], counted as one `tanh`: as [`exp`], through
/// [`Counting::tanh_kernel`] ([`tanh_f32`] for `f32` and `Counted<f32>`).
#[inline(always)]
pub fn tanh<S: Scalar>(x: S) -> S {
    x.tanh_kernel()
}

// ---------------------------------------------------------------------------------------
// exp, tanh and erf of f32 in straight-line f64 arithmetic: no call and no branch, so a loop
// of them becomes vector instructions, where the C library's `expf` and `tanhf` (and the
// `libm` crate's `erf`) are one call per value. The f64 intermediate is within about 1e-13 (relative) of the true value, so the
// f32 result is the correctly rounded one except when the true value lies within that
// distance of a halfway point between two f32 values; it is always within 1 ulp.

/// ln 2 split in two: 0.693147180369... ending in 21 zero bits, so that `k * LN2_HI` is
/// exact for every `|k| < 2^11`, and the remaining 1.9082e-10.
const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);

/// 1.5 * 2^52: adding it to a number of magnitude below 2^51 rounds that number to an
/// integer, which then sits in the low bits of the sum's representation.
const ROUND: f64 = 6_755_399_441_055_744.0;

/// `exp(x)` for `|x| <= 708` (NaN stays NaN): x = k ln 2 + r with `|r| <= ln 2 / 2`, exp(r) by
/// its Taylor polynomial to r^10 (the next term is below 3e-13 relative), and 2^k built
/// from its bits.
#[inline(always)]
fn exp_reduced(x: f64) -> f64 {
    let t = x * std::f64::consts::LOG2_E + ROUND;
    let k = t - ROUND;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let mut p = 1.0 / 3_628_800.0;
    for c in [
        1.0 / 362_880.0,
        1.0 / 40_320.0,
        1.0 / 5_040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = p * r + c;
    }
    // t's bits minus ROUND's are k (two's complement); k + 1023 is 2^k's biased exponent.
    let k_bits = t.to_bits().wrapping_sub(ROUND.to_bits());
    p * f64::from_bits(k_bits.wrapping_add(1023) << 52)
}

/// `exp(x)` of an `f32`, computed in `f64` and rounded once (within 1 ulp, almost always
/// the correctly rounded value): overflow gives infinity and underflow zero, as `expf`.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    let x = f64::from(x);
    // Beyond +-200, exp overflows or underflows f32 anyway; NaN stays NaN.
    let x = x.clamp(-200.0, 200.0);
    exp_reduced(x) as f32
}

/// `tanh(x)` of an `f32`, computed in `f64` and rounded once, as [`exp_f32`]: `1 - 2 /
/// (exp(2|x|) + 1)` with x's sign, and below `|x| = 1/16`, where that difference would lose
/// digits, its odd Taylor polynomial to x^9 (the next term is below 1e-14 relative).
#[inline(always)]
pub fn tanh_f32(x: f32) -> f32 {
    let x = f64::from(x);
    // From |x| = 9.1 on, tanh rounds to 1 in f32; NaN fails the test and stays.
    let a = x.abs();
    let a = if a > 10.0 { 10.0 } else { a };
    let far = 1.0 - 2.0 / (exp_reduced(2.0 * a) + 1.0);
    let s = a * a;
    let near =
        a + a * s * (-1.0 / 3.0 + s * (2.0 / 15.0 + s * (-17.0 / 315.0 + s * (62.0 / 2835.0))));
    let t = if a < 0.0625 { near } else { far };
    t.copysign(x) as f32
}

/// `erf(x) / x` near zero, as a polynomial in `x^2` for `|x| < 1.5` (highest power first):
/// a least-squares fit at Chebyshev points, within 5e-15 (relative) of erf there.
const ERF_NEAR: [f64; 13] = [
    3.404916688604428e-11,
    -9.076445652038679e-10,
    1.3710328113690066e-8,
    -1.61147068337447e-7,
    1.6422519502708757e-6,
    -1.492131626227197e-5,
    0.00012055005977489729,
    -0.0008548310409824334,
    0.005223977081471251,
    -0.026866170538674884,
    0.11283791669865371,
    -0.3761263890313921,
    1.1283791670955094,
];

/// `erfc(x) exp(x^2)` for `1.5 <= x <= 4`, as a polynomial in `t = (x - 2.75) / 1.25`
/// (highest power first), fitted as [`ERF_NEAR`]: erf within 2e-13 (relative) there.
const ERF_FAR: [f64; 15] = [
    5.0485530877064734e-8,
    -1.7688410032558475e-7,
    4.3108505982640187e-7,
    -1.4712071794414182e-6,
    5.160746757430181e-6,
    -1.680135186690728e-5,
    5.3277915438760425e-5,
    -0.0001654321119778971,
    0.0005004213184505685,
    -0.0014715476607040936,
    0.0041981976518214665,
    -0.011590503234445519,
    0.03087280155755738,
    -0.07904704696347432,
    0.193662096278952,
];

/// `p(t)` by Horner's rule, `p` highest power first.
#[inline(always)]
fn polynomial<const N: usize>(p: &[f64; N], t: f64) -> f64 {
    p[1..].iter().fold(p[0], |sum, &c| sum * t + c)
}

/// `erf(x)` of an `f32`, computed in `f64` and rounded once, as [`exp_f32`]: `x` times a
/// polynomial in `x^2` below `|x| = 1.5`, `1 - exp(-x^2)` times a polynomial in `|x|` above
/// (with x's sign); from `|x| = 4` on, erf rounds to 1 in f32.
#[inline(always)]
pub fn erf_f32(x: f32) -> f32 {
    let x = f64::from(x);
    // NaN fails the test and stays.
    let a = x.abs();
    let a = if a > 4.0 { 4.0 } else { a };
    let s = a * a; // exact: an f32's square fits in f64
    let near = a * polynomial(&ERF_NEAR, s);
    let far = 1.0 - exp_reduced(-s) * polynomial(&ERF_FAR, (a - 2.75) * 0.8);
    let e = if a < 1.5 { near } else { far };
    e.copysign(x) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Counted, Counts, tally};

    /// Every 4099th f32 bit pattern: exp_f32, tanh_f32 and erf_f32 within 1 ulp of `exp`,
    /// `tanh` and `erf` in f64 rounded to f32, the special values as the C library gives
    /// them, and Counted<f32> with the same bits, counting one `exp`, `tanh` or `trans` each.
    #[test]
    fn exp_tanh_and_erf_of_f32_are_within_an_ulp_and_counted_once() {
        let ulps = |a: f32, b: f32| (i64::from(a.to_bits()) - i64::from(b.to_bits())).abs();
        let mut bits = 0u32;
        while let Some(next) = bits.checked_add(4099) {
            let x = f32::from_bits(bits);
            let wide = f64::from(x);
            if x.is_finite() {
                assert!(ulps(exp_f32(x), wide.exp() as f32) <= 1, "exp({x:e})");
                assert!(ulps(tanh_f32(x), wide.tanh() as f32) <= 1, "tanh({x:e})");
                assert!(ulps(erf_f32(x), libm::erf(wide) as f32) <= 1, "erf({x:e})");
            }
            bits = next;
        }
        for x in [f32::NAN, -f32::NAN] {
            assert!(exp_f32(x).is_nan() && tanh_f32(x).is_nan() && erf_f32(x).is_nan());
        }
        assert_eq!(
            (erf_f32(f32::INFINITY), erf_f32(f32::NEG_INFINITY)),
            (1.0, -1.0)
        );
        assert_eq!(erf_f32(-0.0).to_bits(), (-0.0f32).to_bits());
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(89.0), f32::INFINITY);
        assert_eq!(exp_f32(-104.0), 0.0);
        assert_eq!(exp_f32(-100.0), (-100f64).exp() as f32); // subnormal
        assert_eq!(
            (tanh_f32(f32::INFINITY), tanh_f32(f32::NEG_INFINITY)),
            (1.0, -1.0)
        );
        assert_eq!(tanh_f32(-0.0).to_bits(), (-0.0f32).to_bits());

        let xs = [-3.5f32, -0.01, 0.0, 0.7, 12.0];
        let (counted, counts) = tally::measure(|| {
            xs.map(|x| {
                let x = Counted::new(x);
                [exp(x), tanh(x), erf(x)].map(|v| v.get().to_bits())
            })
        });
        assert_eq!(
            counted,
            xs.map(|x| [exp(x), tanh(x), erf(x)].map(f32::to_bits))
        );
        counts.assert_eq(&Counts {
            exp: 5,
            tanh: 5,
            trans: 5,
            ..Counts::ZERO
        });
    }

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
