//! [`Counted<T>`] and [`CountedZeros<T>`]: floating-point numbers that record every operation
//! done on them.
//!
//! Each operation calls the same operation of `T`, so results are bit-identical to `T`, and
//! bumps the counter(s) that `docs/counting.md` assigns to it. The arithmetic operators are
//! written out below; the long tail of `Float` methods is forwarded one line per method by
//! small macros, with the counted kind on the same line.

use std::cmp::Ordering;
use std::fmt;
use std::iter::{Product, Sum};
use std::num::FpCategory;
use std::ops::{
    Add, AddAssign, Div, DivAssign, Mul, MulAssign, Neg, Rem, RemAssign, Sub, SubAssign,
};

use num_traits::float::TotalOrder;
use num_traits::{
    Bounded, Float, FloatConst, FromPrimitive, Num, NumCast, One, Signed, ToPrimitive, Zero,
};
use serde::{Deserialize, Serialize};

use crate::counts::Op;
use crate::scalar::Counting;
use crate::tally::{bump, bump_by};

/// A number of type `T` (`f32`, `f64`) whose operations are counted in the thread's tally:
/// [`CountedNumber`] without the count of multiplications by zero.
///
/// Same size and layout as `T`; every operation gives the same bits as on `T`. Constructing,
/// copying, converting and printing are free; see `docs/counting.md` for what each operation
/// counts.
///
/// ```
/// use opcount::{Counted, tally};
///
/// let x = Counted::new(3.0f32);
/// let (y, counts) = tally::measure(|| x * x + x);
/// assert_eq!(y.get(), 12.0);
/// assert_eq!((counts.mul, counts.add), (1, 1));
/// ```
pub type Counted<T> = CountedNumber<T, false>;

/// [`Counted`] that also counts multiplications with an operand exactly zero
/// ([`Op::Zmul`]): work a sparse kernel could skip. Costs a comparison per multiplication, so
/// plain `Counted` leaves it out.
///
/// ```
/// use opcount::{CountedZeros, tally};
///
/// let x = CountedZeros::vec(&[0.0f32, 2.0]);
/// let (_, counts) = tally::measure(|| x[0] * x[1] + x[1] * x[1]);
/// assert_eq!((counts.mul, counts.zmul), (2, 1));
/// ```
pub type CountedZeros<T> = CountedNumber<T, true>;

/// The number type behind [`Counted`] (`ZEROS = false`) and [`CountedZeros`] (`ZEROS =
/// true`); use those two names. (They are aliases rather than one type with a default
/// parameter so that `Counted::new(1.0)` and `CountedZeros::new(1.0)` both need no
/// annotation.)
#[derive(Copy, Clone, Default, Serialize, Deserialize)]
#[serde(transparent)]
#[repr(transparent)]
pub struct CountedNumber<T, const ZEROS: bool>(T);

impl<T, const Z: bool> CountedNumber<T, Z> {
    /// Wraps a value. Free.
    #[inline]
    pub const fn new(value: T) -> Self {
        CountedNumber(value)
    }

    /// Views a slice of plain numbers as counted numbers, without copying (the type is
    /// `repr(transparent)`).
    ///
    /// ```
    /// use opcount::{Counted, tally};
    ///
    /// let plain = [1.0f32, 2.0, 3.0];
    /// let (sum, counts) = tally::measure(|| Counted::from_slice(&plain).iter().copied().sum::<Counted<f32>>());
    /// assert_eq!((sum.get(), counts.add), (6.0, 2));
    /// ```
    pub fn from_slice(values: &[T]) -> &[Self] {
        // SAFETY: `CountedNumber<T, Z>` is `repr(transparent)` over `T`, so a slice of one
        // has the layout of a slice of the other, and the lifetime is kept.
        unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<Self>(), values.len()) }
    }
}

impl<T: Copy, const Z: bool> CountedNumber<T, Z> {
    /// Wraps every value of a slice.
    pub fn vec(values: &[T]) -> Vec<Self> {
        values.iter().map(|&v| CountedNumber(v)).collect()
    }
}

impl<T, const Z: bool> CountedNumber<T, Z> {
    /// The wrapped value. Free.
    #[inline]
    pub fn get(self) -> T {
        self.0
    }
}

impl<T: Copy, const Z: bool> CountedNumber<T, Z> {
    /// Unwraps every value of a slice.
    pub fn unwrap_slice(values: &[CountedNumber<T, Z>]) -> Vec<T> {
        values.iter().map(|v| v.0).collect()
    }
}

impl<T, const Z: bool> From<T> for CountedNumber<T, Z> {
    #[inline]
    fn from(value: T) -> Self {
        CountedNumber(value)
    }
}

impl<T: Float + Counting, const Z: bool> Counting for CountedNumber<T, Z> {
    const IS_COUNTED: bool = true;

    #[inline(always)]
    fn exp_kernel(self) -> Self {
        bump(Op::Exp);
        CountedNumber(self.0.exp_kernel())
    }

    #[inline(always)]
    fn tanh_kernel(self) -> Self {
        bump(Op::Tanh);
        CountedNumber(self.0.tanh_kernel())
    }

    #[inline]
    fn record_act() {
        bump(Op::Act);
    }

    #[inline(always)]
    fn erf_kernel(self) -> Self {
        bump(Op::Trans);
        CountedNumber(self.0.erf_kernel())
    }
}

// ---------------------------------------------------------------------------------------
// Formatting: free, and shows the number as `T` would.

macro_rules! forward_fmt {
    ($($Trait:ident),*) => {$(
        impl<T: fmt::$Trait, const Z: bool> fmt::$Trait for CountedNumber<T, Z> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::$Trait::fmt(&self.0, f)
            }
        }
    )*};
}
forward_fmt!(Debug, Display, LowerExp, UpperExp);

// ---------------------------------------------------------------------------------------
// Arithmetic operators: one count each, for owned and borrowed operands and the *Assign form.

macro_rules! binary_operator {
    ($Trait:ident::$method:ident, $Assign:ident::$assign:ident, $kind:ident, $op:tt) => {
        impl<T: Float, const Z: bool> $Trait for CountedNumber<T, Z> {
            type Output = Self;
            #[inline]
            fn $method(self, rhs: Self) -> Self {
                bump(Op::$kind);
                CountedNumber(self.0 $op rhs.0)
            }
        }
        borrowed_forms!($Trait::$method, $Assign::$assign);
    };
}

/// The forms with borrowed operands and the assigning form, all through the owned one.
macro_rules! borrowed_forms {
    ($Trait:ident::$method:ident, $Assign:ident::$assign:ident) => {
        impl<T: Float, const Z: bool> $Trait<&CountedNumber<T, Z>> for CountedNumber<T, Z> {
            type Output = CountedNumber<T, Z>;
            #[inline]
            fn $method(self, rhs: &CountedNumber<T, Z>) -> CountedNumber<T, Z> {
                self.$method(*rhs)
            }
        }
        impl<T: Float, const Z: bool> $Trait<CountedNumber<T, Z>> for &CountedNumber<T, Z> {
            type Output = CountedNumber<T, Z>;
            #[inline]
            fn $method(self, rhs: CountedNumber<T, Z>) -> CountedNumber<T, Z> {
                (*self).$method(rhs)
            }
        }
        impl<T: Float, const Z: bool> $Trait<&CountedNumber<T, Z>> for &CountedNumber<T, Z> {
            type Output = CountedNumber<T, Z>;
            #[inline]
            fn $method(self, rhs: &CountedNumber<T, Z>) -> CountedNumber<T, Z> {
                (*self).$method(*rhs)
            }
        }
        impl<T: Float, const Z: bool> $Assign for CountedNumber<T, Z> {
            #[inline]
            fn $assign(&mut self, rhs: Self) {
                *self = (*self).$method(rhs);
            }
        }
        impl<T: Float, const Z: bool> $Assign<&CountedNumber<T, Z>> for CountedNumber<T, Z> {
            #[inline]
            fn $assign(&mut self, rhs: &CountedNumber<T, Z>) {
                *self = (*self).$method(*rhs);
            }
        }
    };
}

/// Multiplication also counts a zero operand, for [`CountedZeros`] (`Z`); for plain
/// `Counted` the check compiles away.
impl<T: Float, const Z: bool> Mul for CountedNumber<T, Z> {
    type Output = Self;
    #[inline]
    fn mul(self, rhs: Self) -> Self {
        bump(Op::Mul);
        count_zero_operand::<T, Z>(self.0, rhs.0);
        CountedNumber(self.0 * rhs.0)
    }
}
borrowed_forms!(Mul::mul, MulAssign::mul_assign);

/// Bumps [`Op::Zmul`] if `Z` and either factor is exactly zero (either sign).
#[inline]
fn count_zero_operand<T: Float, const Z: bool>(a: T, b: T) {
    if Z {
        bump_by(Op::Zmul, (a == T::zero() || b == T::zero()) as u64);
    }
}

binary_operator!(Add::add, AddAssign::add_assign, Add, +);
binary_operator!(Sub::sub, SubAssign::sub_assign, Sub, -);
binary_operator!(Div::div, DivAssign::div_assign, Div, /);
binary_operator!(Rem::rem, RemAssign::rem_assign, Rem, %);

impl<T: Float, const Z: bool> Neg for CountedNumber<T, Z> {
    type Output = Self;
    #[inline]
    fn neg(self) -> Self {
        bump(Op::Neg);
        CountedNumber(-self.0)
    }
}

impl<T: Float, const Z: bool> Neg for &CountedNumber<T, Z> {
    type Output = CountedNumber<T, Z>;
    #[inline]
    fn neg(self) -> CountedNumber<T, Z> {
        -*self
    }
}

/// A sum of k values costs k-1 additions: it starts from the first value. The standard
/// library starts from `-0.0`, which gives the same bits because `-0.0 + x == x`.
impl<T: Float, const Z: bool> Sum for CountedNumber<T, Z> {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.reduce(|a, b| a + b)
            .unwrap_or(CountedNumber(T::neg_zero()))
    }
}

impl<'a, T: Float, const Z: bool> Sum<&'a CountedNumber<T, Z>> for CountedNumber<T, Z> {
    fn sum<I: Iterator<Item = &'a Self>>(iter: I) -> Self {
        iter.copied().sum()
    }
}

/// A product of k values costs k-1 multiplications: it starts from the first value.
impl<T: Float, const Z: bool> Product for CountedNumber<T, Z> {
    fn product<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.reduce(|a, b| a * b).unwrap_or(CountedNumber(T::one()))
    }
}

impl<'a, T: Float, const Z: bool> Product<&'a CountedNumber<T, Z>> for CountedNumber<T, Z> {
    fn product<I: Iterator<Item = &'a Self>>(iter: I) -> Self {
        iter.copied().product()
    }
}

// ---------------------------------------------------------------------------------------
// Comparisons: one `cmp` each. Written out rather than derived so that `lt`, `le`, ... call
// `T`'s own comparison once instead of going through `partial_cmp`.

impl<T: Float, const Z: bool> PartialEq for CountedNumber<T, Z> {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        bump(Op::Cmp);
        self.0 == other.0
    }
    #[inline]
    #[allow(clippy::partialeq_ne_impl)] // counted once, like `eq`
    fn ne(&self, other: &Self) -> bool {
        bump(Op::Cmp);
        self.0 != other.0
    }
}

impl<T: Float, const Z: bool> PartialOrd for CountedNumber<T, Z> {
    #[inline]
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        bump(Op::Cmp);
        self.0.partial_cmp(&other.0)
    }
    #[inline]
    fn lt(&self, other: &Self) -> bool {
        bump(Op::Cmp);
        self.0 < other.0
    }
    #[inline]
    fn le(&self, other: &Self) -> bool {
        bump(Op::Cmp);
        self.0 <= other.0
    }
    #[inline]
    fn gt(&self, other: &Self) -> bool {
        bump(Op::Cmp);
        self.0 > other.0
    }
    #[inline]
    fn ge(&self, other: &Self) -> bool {
        bump(Op::Cmp);
        self.0 >= other.0
    }
}

impl<T: Float + TotalOrder, const Z: bool> TotalOrder for CountedNumber<T, Z> {
    #[inline]
    fn total_cmp(&self, other: &Self) -> Ordering {
        bump(Op::Cmp);
        self.0.total_cmp(&other.0)
    }
}

// ---------------------------------------------------------------------------------------
// num-traits: constants, conversions and classification are free.

impl<T: Float, const Z: bool> Zero for CountedNumber<T, Z> {
    #[inline]
    fn zero() -> Self {
        CountedNumber(T::zero())
    }
    #[inline]
    fn is_zero(&self) -> bool {
        self.0.is_zero()
    }
}

impl<T: Float, const Z: bool> One for CountedNumber<T, Z> {
    #[inline]
    fn one() -> Self {
        CountedNumber(T::one())
    }
    // Written out: the default body compares with `==`, which would count.
    #[inline]
    fn is_one(&self) -> bool {
        self.0.is_one()
    }
}

impl<T: Float, const Z: bool> Num for CountedNumber<T, Z> {
    type FromStrRadixErr = T::FromStrRadixErr;
    fn from_str_radix(s: &str, radix: u32) -> Result<Self, Self::FromStrRadixErr> {
        T::from_str_radix(s, radix).map(CountedNumber)
    }
}

impl<T: Float, const Z: bool> NumCast for CountedNumber<T, Z> {
    #[inline]
    fn from<N: ToPrimitive>(n: N) -> Option<Self> {
        <T as NumCast>::from(n).map(CountedNumber)
    }
}

macro_rules! forward_to_primitive {
    ($($method:ident -> $ty:ty;)*) => {
        impl<T: Float, const Z: bool> ToPrimitive for CountedNumber<T, Z> {
            $( #[inline] fn $method(&self) -> Option<$ty> { self.0.$method() } )*
        }
    };
}
forward_to_primitive! {
    to_isize -> isize; to_i8 -> i8; to_i16 -> i16; to_i32 -> i32; to_i64 -> i64;
    to_i128 -> i128; to_usize -> usize; to_u8 -> u8; to_u16 -> u16; to_u32 -> u32;
    to_u64 -> u64; to_u128 -> u128; to_f32 -> f32; to_f64 -> f64;
}

macro_rules! forward_from_primitive {
    ($($method:ident($ty:ty);)*) => {
        impl<T: Float + FromPrimitive, const Z: bool> FromPrimitive for CountedNumber<T, Z> {
            $( #[inline] fn $method(n: $ty) -> Option<Self> { T::$method(n).map(CountedNumber) } )*
        }
    };
}
forward_from_primitive! {
    from_isize(isize); from_i8(i8); from_i16(i16); from_i32(i32); from_i64(i64);
    from_i128(i128); from_usize(usize); from_u8(u8); from_u16(u16); from_u32(u32);
    from_u64(u64); from_u128(u128); from_f32(f32); from_f64(f64);
}

impl<T: Float + Bounded, const Z: bool> Bounded for CountedNumber<T, Z> {
    #[inline]
    fn min_value() -> Self {
        CountedNumber(<T as Bounded>::min_value())
    }
    #[inline]
    fn max_value() -> Self {
        CountedNumber(<T as Bounded>::max_value())
    }
}

macro_rules! forward_float_const {
    ($($name:ident)*) => {
        impl<T: Float + FloatConst, const Z: bool> FloatConst for CountedNumber<T, Z> {
            $( #[inline] fn $name() -> Self { CountedNumber(T::$name()) } )*
        }
    };
}
forward_float_const! {
    E FRAC_1_PI FRAC_1_SQRT_2 FRAC_2_PI FRAC_2_SQRT_PI FRAC_PI_2 FRAC_PI_3 FRAC_PI_4
    FRAC_PI_6 FRAC_PI_8 LN_10 LN_2 LOG10_E LOG2_E PI SQRT_2 TAU LOG10_2 LOG2_10
}

impl<T: Float + Signed, const Z: bool> Signed for CountedNumber<T, Z> {
    #[inline]
    fn abs(&self) -> Self {
        bump(Op::Abs);
        CountedNumber(Signed::abs(&self.0))
    }
    #[inline]
    fn abs_sub(&self, other: &Self) -> Self {
        bump(Op::Sub);
        bump(Op::Cmp);
        CountedNumber(Signed::abs_sub(&self.0, &other.0))
    }
    #[inline]
    fn signum(&self) -> Self {
        bump(Op::Abs);
        CountedNumber(Signed::signum(&self.0))
    }
    #[inline]
    fn is_positive(&self) -> bool {
        self.0.is_positive()
    }
    #[inline]
    fn is_negative(&self) -> bool {
        self.0.is_negative()
    }
}

// ---------------------------------------------------------------------------------------
// num_traits::Float, one line per method with what it counts. Every method is written out,
// the six with default bodies included, so no default body can count by accident.

macro_rules! float_methods {
    (
        constants { $($c:ident)* }
        predicates { $($p:ident)* }
        unary { $($u:ident => [$($uk:ident)+];)* }
        binary { $($b:ident => [$($bk:ident)+];)* }
    ) => {
        $( #[inline] fn $c() -> Self { CountedNumber(<T as Float>::$c()) } )*
        $( #[inline] fn $p(self) -> bool { <T as Float>::$p(self.0) } )*
        $(
            #[inline]
            fn $u(self) -> Self {
                $( bump(Op::$uk); )+
                CountedNumber(<T as Float>::$u(self.0))
            }
        )*
        $(
            #[inline]
            fn $b(self, other: Self) -> Self {
                $( bump(Op::$bk); )+
                CountedNumber(<T as Float>::$b(self.0, other.0))
            }
        )*
    };
}

impl<T: Float, const Z: bool> Float for CountedNumber<T, Z> {
    float_methods! {
        constants {
            nan infinity neg_infinity neg_zero min_value min_positive_value epsilon max_value
        }
        predicates {
            is_nan is_infinite is_finite is_normal is_subnormal is_sign_positive
            is_sign_negative
        }
        unary {
            floor => [Round];
            ceil => [Round];
            round => [Round];
            trunc => [Round];
            fract => [Round Sub];
            abs => [Abs];
            signum => [Abs];
            recip => [Div];
            sqrt => [Sqrt];
            exp => [Exp];
            exp2 => [Exp];
            exp_m1 => [Exp];
            ln => [Ln];
            log2 => [Ln];
            log10 => [Ln];
            ln_1p => [Ln];
            to_degrees => [Mul];
            to_radians => [Mul];
            tanh => [Tanh];
            cbrt => [Trans];
            sin => [Trans];
            cos => [Trans];
            tan => [Trans];
            asin => [Trans];
            acos => [Trans];
            atan => [Trans];
            sinh => [Trans];
            cosh => [Trans];
            asinh => [Trans];
            acosh => [Trans];
            atanh => [Trans];
        }
        binary {
            powf => [Pow];
            log => [Ln Ln Div];
            max => [Cmp];
            min => [Cmp];
            abs_sub => [Sub Cmp];
            hypot => [Trans];
            atan2 => [Trans];
            copysign => [Abs];
        }
    }

    #[inline]
    fn classify(self) -> FpCategory {
        self.0.classify()
    }

    #[inline]
    fn integer_decode(self) -> (u64, i16, i8) {
        self.0.integer_decode()
    }

    #[inline]
    fn mul_add(self, a: Self, b: Self) -> Self {
        bump(Op::Mul);
        count_zero_operand::<T, Z>(self.0, a.0);
        bump(Op::Add);
        CountedNumber(self.0.mul_add(a.0, b.0))
    }

    #[inline]
    fn powi(self, n: i32) -> Self {
        bump(Op::Pow);
        CountedNumber(self.0.powi(n))
    }

    /// Both bounds are compared whatever the value (counts never depend on data).
    #[inline]
    fn clamp(self, min: Self, max: Self) -> Self {
        bump_by(Op::Cmp, 2);
        CountedNumber(<T as Float>::clamp(self.0, min.0, max.0))
    }

    #[inline]
    fn sin_cos(self) -> (Self, Self) {
        bump_by(Op::Trans, 2);
        let (s, c) = self.0.sin_cos();
        (CountedNumber(s), CountedNumber(c))
    }
}
