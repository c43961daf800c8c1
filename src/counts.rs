//! The kinds of operation opcount counts ([`Op`]) and a value holding one number per kind
//! ([`Counts`]). The list of kinds is written once, in the `kinds!` call below; the enum, the
//! struct fields, the names and the JSON keys all come from it.
//!
//! A count is a `u128`: a closed form or a projection can pass 2^64 (VGG-16 at a batch of
//! 200 million, or a large model over 3e11 examples), and a count is either exact or an
//! error, never a wrapped number. Every sum and difference here is checked, in release
//! builds too.

use std::fmt;
use std::ops::{Add, AddAssign, Index, IndexMut, Sub, SubAssign};

use serde::{Deserialize, Serialize};

macro_rules! kinds {
    ($( $field:ident => $variant:ident: $what:literal; )+) => {
        /// A kind of operation. See `docs/counting.md` for what each kind counts.
        #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum Op {
            $( #[doc = $what] $variant, )+
        }

        impl Op {
            /// Every kind, in the order tables and JSON objects list them.
            pub const ALL: [Op; Op::COUNT] = [ $( Op::$variant, )+ ];

            /// How many kinds there are.
            pub const COUNT: usize = [ $( stringify!($field), )+ ].len();

            /// The kind's name as used in tables, JSON keys and `docs/counting.md`.
            pub const fn name(self) -> &'static str {
                match self { $( Op::$variant => stringify!($field), )+ }
            }

            /// What the kind counts, in a few words (markdown).
            pub const fn description(self) -> &'static str {
                match self { $( Op::$variant => $what, )+ }
            }
        }

        /// One count per [`Op`] kind, each a `u128`.
        ///
        /// A plain value: add and subtract them, sum them, print them, serialize them (a JSON
        /// object with every kind as a key; a count above 2^53 is written as a string of
        /// decimal digits, so that every JSON reader gets it exactly). Build an expected value
        /// with struct update syntax: `Counts { mul: 3, add: 2, ..Counts::ZERO }`.
        #[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub struct Counts {
            $( #[doc = $what] #[serde(with = "exact")] pub $field: u128, )+
        }

        impl Counts {
            /// All counts zero.
            pub const ZERO: Counts = Counts { $( $field: 0, )+ };

            /// The counts as an array in [`Op::ALL`] order.
            #[inline]
            pub const fn to_array(&self) -> [u128; Op::COUNT] {
                [ $( self.$field, )+ ]
            }

            /// Counts from an array in [`Op::ALL`] order.
            #[inline]
            pub const fn from_array(a: [u128; Op::COUNT]) -> Counts {
                Counts { $( $field: a[Op::$variant as usize], )+ }
            }
        }

        impl Index<Op> for Counts {
            type Output = u128;
            #[inline]
            fn index(&self, op: Op) -> &u128 {
                match op { $( Op::$variant => &self.$field, )+ }
            }
        }

        impl IndexMut<Op> for Counts {
            #[inline]
            fn index_mut(&mut self, op: Op) -> &mut u128 {
                match op { $( Op::$variant => &mut self.$field, )+ }
            }
        }
    };
}

kinds! {
    add => Add: "`a + b`";
    sub => Sub: "`a - b`";
    mul => Mul: "`a * b`";
    div => Div: "`a / b` and `recip`";
    rem => Rem: "`a % b`";
    neg => Neg: "unary `-a`";
    abs => Abs: "sign operations: `abs`, `signum`, `copysign`";
    round => Round: "rounding: `floor`, `ceil`, `round`, `trunc`";
    cmp => Cmp: "comparisons, `max` and `min`";
    exp => Exp: "`exp`, `exp2`, `exp_m1`";
    ln => Ln: "logarithms: `ln`, `log2`, `log10`, `ln_1p`, `log`";
    tanh => Tanh: "`tanh`";
    sqrt => Sqrt: "`sqrt`";
    pow => Pow: "`powi`, `powf`";
    trans => Trans: "other library functions: trigonometric, hyperbolic but `tanh`, `cbrt`, `hypot`";
    act => Act: "activation calls: one per output value of an activation layer (not an operation, not in totals)";
    zmul => Zmul: "multiplications with an operand exactly zero, counted by `CountedZeros` (a part of `mul`, not in totals; data-dependent, no closed form)";
}

impl Op {
    /// Whether the kind is an arithmetic operation of its own, counted in totals. Not
    /// [`Op::Act`] (calls whose arithmetic is counted under its own kinds) nor [`Op::Zmul`]
    /// (a part of [`Op::Mul`]).
    pub const fn is_operation(self) -> bool {
        !matches!(self, Op::Act | Op::Zmul)
    }

    /// Whether a closed form predicts the kind from the shapes alone: every kind but
    /// [`Op::Zmul`], which depends on the data. Comparisons of measured and estimated counts
    /// compare these kinds and no other.
    pub const fn is_predictable(self) -> bool {
        !matches!(self, Op::Zmul)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Counts {
    /// Counts with `n` of one kind and zero of every other.
    pub fn of(op: Op, n: u128) -> Counts {
        let mut c = Counts::ZERO;
        c[op] = n;
        c
    }

    /// The number of arithmetic operations: every kind that is an operation of its own
    /// (see [`Op::is_operation`]).
    ///
    /// # Panics
    ///
    /// If the sum passes `u128::MAX`. Counts measured by a step, and those of
    /// [`estimate::step`](crate::estimate::step) and [`project`](crate::project::project),
    /// never do: those refuse counts whose sums would not fit.
    pub fn total(&self) -> u128 {
        self.checked_total()
            .expect("the total of these counts passes u128::MAX")
    }

    /// The number of arithmetic operations, or `None` if it passes `u128::MAX`.
    pub fn checked_total(&self) -> Option<u128> {
        self.iter()
            .filter(|&(op, _)| op.is_operation())
            .try_fold(0u128, |sum, (_, n)| sum.checked_add(n))
    }

    /// Every count of every kind added up, `act` and `zmul` included, or `None` if that
    /// passes `u128::MAX`. When it fits, so does every sum of a part of these counts.
    pub fn checked_sum_of_kinds(&self) -> Option<u128> {
        self.iter()
            .try_fold(0u128, |sum, (_, n)| sum.checked_add(n))
    }

    /// The counts a closed form can predict: every kind that [`Op::is_predictable`], the
    /// others zero.
    pub fn predictable(&self) -> Counts {
        let mut out = *self;
        for op in Op::ALL.into_iter().filter(|op| !op.is_predictable()) {
            out[op] = 0;
        }
        out
    }

    /// Every kind with its count, in [`Op::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (Op, u128)> + '_ {
        Op::ALL.into_iter().map(move |op| (op, self[op]))
    }

    /// Every kind whose count is not zero.
    pub fn nonzero(&self) -> impl Iterator<Item = (Op, u128)> + '_ {
        self.iter().filter(|&(_, n)| n != 0)
    }

    /// Applies `f` to the counts of each kind pairwise, or `None` if it fails for any kind.
    #[inline]
    fn try_zip_with(self, other: Counts, f: impl Fn(u128, u128) -> Option<u128>) -> Option<Counts> {
        let (a, b) = (self.to_array(), other.to_array());
        let mut out = [0; Op::COUNT];
        for i in 0..Op::COUNT {
            out[i] = f(a[i], b[i])?;
        }
        Some(Counts::from_array(out))
    }

    /// Adds, or `None` if any kind would overflow `u128`.
    pub fn checked_add(self, other: Counts) -> Option<Counts> {
        self.try_zip_with(other, u128::checked_add)
    }

    /// Subtracts, or `None` if any kind would go below zero.
    pub fn checked_sub(self, other: Counts) -> Option<Counts> {
        self.try_zip_with(other, u128::checked_sub)
    }

    /// Multiplies every kind by `k`, or `None` if any kind would overflow `u128`.
    pub fn checked_scale(self, k: u128) -> Option<Counts> {
        self.try_zip_with(Counts::ZERO, |a, _| a.checked_mul(k))
    }

    /// Compares with an expected value: `Ok(())` if equal, otherwise an error whose
    /// `Display` lists every kind that differs with both numbers.
    pub fn check(&self, expected: &Counts) -> Result<(), Box<CountsMismatch>> {
        if self == expected {
            Ok(())
        } else {
            Err(Box::new(CountsMismatch {
                measured: *self,
                expected: *expected,
            }))
        }
    }

    /// Panics, listing expected and measured per kind, unless `self == expected`.
    ///
    /// Meant for unit tests of users' own generic code:
    ///
    /// ```
    /// use opcount::{Counted, Counts, Scalar, tally};
    ///
    /// // Your own generic code, written once for every scalar type.
    /// fn dot<S: Scalar>(a: &[S], b: &[S]) -> S {
    ///     // A sum of k terms costs k-1 adds: start from the first product.
    ///     let mut acc = a[0] * b[0];
    ///     for (&x, &y) in a[1..].iter().zip(&b[1..]) {
    ///         acc = acc + x * y;
    ///     }
    ///     acc
    /// }
    ///
    /// let a = Counted::vec(&[1.0f32, 2.0, 3.0]);
    /// let b = Counted::vec(&[4.0f32, 5.0, 6.0]);
    /// let (value, counts) = tally::measure(|| dot(&a, &b));
    ///
    /// assert_eq!(value.get(), 32.0); // same bits as dot::<f32>
    /// counts.assert_eq(&Counts { mul: 3, add: 2, ..Counts::ZERO });
    /// ```
    #[track_caller]
    pub fn assert_eq(&self, expected: &Counts) {
        if let Err(mismatch) = self.check(expected) {
            panic!("{mismatch}");
        }
    }
}

/// Addition panics, in release builds too, if any kind would pass `u128::MAX`; use
/// [`Counts::checked_add`] where that can happen.
impl Add for Counts {
    type Output = Counts;
    #[inline]
    #[track_caller]
    fn add(self, other: Counts) -> Counts {
        self.checked_add(other)
            .expect("a count passes u128::MAX (use Counts::checked_add)")
    }
}

impl AddAssign for Counts {
    #[track_caller]
    fn add_assign(&mut self, other: Counts) {
        *self = *self + other;
    }
}

/// Subtraction panics, in release builds too, if any kind would go below zero. To measure
/// by difference, use [`tally::measure`](crate::tally::measure).
impl Sub for Counts {
    type Output = Counts;
    #[inline]
    #[track_caller]
    fn sub(self, other: Counts) -> Counts {
        self.checked_sub(other)
            .expect("a count goes below zero (use Counts::checked_sub)")
    }
}

impl SubAssign for Counts {
    #[track_caller]
    fn sub_assign(&mut self, other: Counts) {
        *self = *self - other;
    }
}

impl std::iter::Sum for Counts {
    fn sum<I: Iterator<Item = Counts>>(iter: I) -> Counts {
        iter.fold(Counts::ZERO, Add::add)
    }
}

impl<'a> std::iter::Sum<&'a Counts> for Counts {
    fn sum<I: Iterator<Item = &'a Counts>>(iter: I) -> Counts {
        iter.copied().sum()
    }
}

/// `mul=3 add=2 (total 5)`: the kinds that are not zero, then the total. `act` is shown
/// but not part of the total.
impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut any = false;
        for (op, n) in self.nonzero() {
            if any {
                f.write_str(" ")?;
            }
            write!(f, "{op}={n}")?;
            any = true;
        }
        if !any {
            f.write_str("none")?;
        }
        match self.checked_total() {
            Some(total) => write!(f, " (total {total})"),
            None => f.write_str(" (total past u128::MAX)"),
        }
    }
}

/// Measured counts that differ from the expected ones; `Display` shows a small table of
/// every kind where either is not zero, marking those that differ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CountsMismatch {
    /// What was measured.
    pub measured: Counts,
    /// What was expected.
    pub expected: Counts,
}

impl fmt::Display for CountsMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "operation counts differ")?;
        writeln!(f, "  {:<6} {:>14} {:>14}", "kind", "expected", "measured")?;
        for op in Op::ALL {
            let (e, m) = (self.expected[op], self.measured[op]);
            if e != 0 || m != 0 {
                let mark = if e == m { "" } else { "  <- differs" };
                writeln!(f, "  {:<6} {e:>14} {m:>14}{mark}", op.name())?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for CountsMismatch {}

/// The largest integer every JSON reader holds exactly: 2^53 (JavaScript's numbers, and
/// many readers', are 64-bit floats). Counts above it are written as strings.
pub(crate) const JSON_EXACT_MAX: u128 = 1 << 53;

/// Serde for one count: a number up to [`JSON_EXACT_MAX`], above it a string
/// of decimal digits, in every format; read from a number
/// or a string of decimal digits.
mod exact {
    use serde::de::{self, Deserializer, Visitor};
    use serde::ser::Serializer;

    use super::JSON_EXACT_MAX;

    pub fn serialize<S: Serializer>(n: &u128, s: S) -> Result<S::Ok, S::Error> {
        if *n <= JSON_EXACT_MAX {
            s.serialize_u64(*n as u64)
        } else {
            s.collect_str(n)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        struct Count;
        impl Visitor<'_> for Count {
            type Value = u128;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a count: a whole number, or its decimal digits as a string")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<u128, E> {
                Ok(n.into())
            }
            fn visit_u128<E: de::Error>(self, n: u128) -> Result<u128, E> {
                Ok(n)
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<u128, E> {
                text.parse()
                    .map_err(|_| E::invalid_value(de::Unexpected::Str(text), &self))
            }
        }
        d.deserialize_any(Count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_listed_once_in_order() {
        assert_eq!(Op::ALL.len(), Op::COUNT);
        for (i, op) in Op::ALL.iter().enumerate() {
            assert_eq!(*op as usize, i);
        }
    }

    #[test]
    fn total_leaves_out_activation_calls() {
        let c = Counts {
            mul: 3,
            add: 2,
            act: 7,
            ..Counts::ZERO
        };
        assert_eq!(c.total(), 5);
        assert_eq!(c.to_string(), "add=2 mul=3 act=7 (total 5)");
    }

    #[test]
    fn mismatch_lists_both_numbers() {
        let measured = Counts::of(Op::Mul, 4);
        let expected = Counts::of(Op::Mul, 3);
        let text = measured.check(&expected).unwrap_err().to_string();
        assert!(text.contains("mul"), "{text}");
        assert!(text.contains("3") && text.contains("4"), "{text}");
        assert!(text.contains("differs"), "{text}");
    }

    #[test]
    fn json_has_every_kind_as_a_key() {
        let json = serde_json::to_value(Counts::of(Op::Exp, 1)).unwrap();
        for op in Op::ALL {
            assert!(json.get(op.name()).is_some(), "missing {op}");
        }
    }

    #[test]
    fn checked_arithmetic_refuses_to_wrap() {
        let big = Counts::of(Op::Add, u128::MAX);
        assert_eq!(big.checked_add(Counts::of(Op::Add, 1)), None);
        assert_eq!(big.checked_scale(2), None);
        assert_eq!(Counts::ZERO.checked_sub(Counts::of(Op::Add, 1)), None);
        assert_eq!(
            Counts::of(Op::Add, 3).checked_scale(2),
            Some(Counts::of(Op::Add, 6))
        );
        // Past u64 is not an overflow any more.
        let past = Counts::of(Op::Mul, u64::MAX.into())
            .checked_scale(3)
            .unwrap();
        assert_eq!(past.total(), 3 * u128::from(u64::MAX));
    }

    #[test]
    fn a_total_that_passes_u128_is_none_not_wrapped() {
        let c = Counts {
            add: u128::MAX,
            mul: 1,
            ..Counts::ZERO
        };
        assert_eq!(c.checked_total(), None);
        assert_eq!(
            c.to_string(),
            "add=340282366920938463463374607431768211455 mul=1 (total past u128::MAX)"
        );
        let act = Counts {
            add: u128::MAX,
            act: 1,
            ..Counts::ZERO
        };
        assert_eq!(act.checked_total(), Some(u128::MAX));
        assert_eq!(act.checked_sum_of_kinds(), None);
    }

    #[test]
    fn sums_and_differences_panic_rather_than_wrap() {
        let big = Counts::of(Op::Add, u128::MAX);
        assert!(std::panic::catch_unwind(|| big + Counts::of(Op::Add, 1)).is_err());
        assert!(std::panic::catch_unwind(|| Counts::ZERO - Counts::of(Op::Add, 1)).is_err());
    }

    #[test]
    fn json_writes_counts_past_2_to_the_53_as_strings() {
        let c = Counts {
            add: 1 << 53,
            mul: (1 << 53) + 1,
            sub: u128::MAX,
            ..Counts::ZERO
        };
        let json = serde_json::to_value(c).unwrap();
        assert_eq!(json["add"], serde_json::json!(9_007_199_254_740_992u64));
        assert_eq!(json["mul"], "9007199254740993");
        assert_eq!(json["sub"], "340282366920938463463374607431768211455");
        let back: Counts = serde_json::from_value(json).unwrap();
        assert_eq!(back, c);
    }
}
