//! The kinds of operation opcount counts ([`Op`]) and a value holding one number per kind
//! ([`Counts`]). The list of kinds is written once, in the `kinds!` call below; the enum, the
//! struct fields, the names and the JSON keys all come from it.

use std::fmt;
use std::ops::{Add, AddAssign, Index, IndexMut, Sub, SubAssign};

use serde::{Deserialize, Serialize};

macro_rules! kinds {
    ($( $field:ident => $variant:ident: $what:literal; )+) => {
        /// A kind of operation. See `docs/counting.md` for what each kind counts.
        #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
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

        /// One count per [`Op`] kind.
        ///
        /// A plain value: add and subtract them, sum them, print them, serialize them (a JSON
        /// object with every kind as a key). Build an expected value with struct update
        /// syntax: `Counts { mul: 3, add: 2, ..Counts::ZERO }`.
        #[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub struct Counts {
            $( #[doc = $what] pub $field: u64, )+
        }

        impl Counts {
            /// All counts zero.
            pub const ZERO: Counts = Counts { $( $field: 0, )+ };

            /// The counts as an array in [`Op::ALL`] order.
            #[inline]
            pub const fn to_array(&self) -> [u64; Op::COUNT] {
                [ $( self.$field, )+ ]
            }

            /// Counts from an array in [`Op::ALL`] order.
            #[inline]
            pub const fn from_array(a: [u64; Op::COUNT]) -> Counts {
                Counts { $( $field: a[Op::$variant as usize], )+ }
            }
        }

        impl Index<Op> for Counts {
            type Output = u64;
            #[inline]
            fn index(&self, op: Op) -> &u64 {
                match op { $( Op::$variant => &self.$field, )+ }
            }
        }

        impl IndexMut<Op> for Counts {
            #[inline]
            fn index_mut(&mut self, op: Op) -> &mut u64 {
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
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Counts {
    /// Counts with `n` of one kind and zero of every other.
    pub fn of(op: Op, n: u64) -> Counts {
        let mut c = Counts::ZERO;
        c[op] = n;
        c
    }

    /// The number of arithmetic operations: every kind that is an operation of its own
    /// (see [`Op::is_operation`]).
    pub fn total(&self) -> u64 {
        self.iter()
            .filter(|&(op, _)| op.is_operation())
            .map(|(_, n)| n)
            .sum()
    }

    /// The counts a closed form can predict: everything but [`Op::Zmul`], which depends on
    /// the data.
    pub fn predictable(&self) -> Counts {
        Counts { zmul: 0, ..*self }
    }

    /// Every kind with its count, in [`Op::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (Op, u64)> + '_ {
        Op::ALL.into_iter().map(move |op| (op, self[op]))
    }

    /// Every kind whose count is not zero.
    pub fn nonzero(&self) -> impl Iterator<Item = (Op, u64)> + '_ {
        self.iter().filter(|&(_, n)| n != 0)
    }

    /// Applies `f` to the counts of each kind pairwise.
    #[inline]
    fn zip_with(self, other: Counts, f: impl Fn(u64, u64) -> u64) -> Counts {
        let (a, b) = (self.to_array(), other.to_array());
        Counts::from_array(std::array::from_fn(|i| f(a[i], b[i])))
    }

    /// Adds, or `None` if any kind would overflow `u64`.
    pub fn checked_add(self, other: Counts) -> Option<Counts> {
        let mut out = Counts::ZERO;
        for op in Op::ALL {
            out[op] = self[op].checked_add(other[op])?;
        }
        Some(out)
    }

    /// Multiplies every kind by `k`, or `None` if any kind would overflow `u64`.
    pub fn checked_scale(self, k: u64) -> Option<Counts> {
        let mut out = Counts::ZERO;
        for op in Op::ALL {
            out[op] = self[op].checked_mul(k)?;
        }
        Some(out)
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

impl Add for Counts {
    type Output = Counts;
    #[inline]
    fn add(self, other: Counts) -> Counts {
        self.zip_with(other, |a, b| a + b)
    }
}

impl AddAssign for Counts {
    fn add_assign(&mut self, other: Counts) {
        *self = *self + other;
    }
}

/// Subtraction is for measuring by difference (`after - before`); it panics in debug
/// builds if any kind would go below zero.
impl Sub for Counts {
    type Output = Counts;
    #[inline]
    fn sub(self, other: Counts) -> Counts {
        self.zip_with(other, |a, b| a - b)
    }
}

impl SubAssign for Counts {
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
        write!(f, " (total {})", self.total())
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
        let big = Counts::of(Op::Add, u64::MAX);
        assert_eq!(big.checked_add(Counts::of(Op::Add, 1)), None);
        assert_eq!(big.checked_scale(2), None);
        assert_eq!(
            Counts::of(Op::Add, 3).checked_scale(2),
            Some(Counts::of(Op::Add, 6))
        );
    }
}
