//! Small arithmetic that several kernels share, each piece counting what docs/counting.md
//! says: a sum of k terms is k - 1 additions, a dot product of length k is k multiplications
//! and k - 1 additions, and a constant costs nothing.

use crate::scalar::Scalar;

/// `v_0 + v_1 + ...`, from the first value: k - 1 adds.
#[inline(always)]
pub(crate) fn sum<S: Scalar>(v: &[S]) -> S {
    let (&first, rest) = v.split_first().expect("a sum of at least one value");
    rest.iter().fold(first, |acc, &x| acc + x)
}

/// `a_0 b_0 + a_1 b_1 + ...`, from the first product: k mul, k - 1 adds.
#[inline(always)]
pub(crate) fn dot<S: Scalar>(a: &[S], b: &[S]) -> S {
    let mut acc = a[0] * b[0];
    for (&x, &y) in a[1..].iter().zip(&b[1..]) {
        acc += x * y;
    }
    acc
}

/// A constant as a number (a conversion: free).
#[inline(always)]
pub(crate) fn constant<S: Scalar>(v: f64) -> S {
    S::from_f64(v).expect("every Scalar holds a constant")
}
