//! Sqrt: the square root of every value (a normaliser written out: `/ sqrt(var + eps)`).
//! Forward one sqrt per value; backward `dx = (dy / y) * 0.5`, one div and one mul per value,
//! the square root reused from the forward pass.

use super::ops::{Backward, Kernel, Operation};
use super::reduce::constant;
use crate::error::Result;
use crate::estimate::{At, counts};
use crate::phases::NodeCounts;
use crate::scalar::Scalar;
use crate::shape::Shape;

/// Sqrt, resolved: the shape of its input and output.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Sqrt {
    /// The shape of the input and of the output.
    pub shape: Shape,
}

impl Sqrt {
    /// The shape rule: any shape, the same shape out.
    pub(crate) fn resolve(input: Shape) -> Sqrt {
        Sqrt { shape: input }
    }

    pub(crate) fn kernel(&self) -> SqrtKernel {
        SqrtKernel
    }
}

impl Operation for Sqrt {
    fn kind(&self) -> &'static str {
        "sqrt"
    }

    fn output(&self) -> Shape {
        self.shape
    }

    /// Forward `y = sqrt(x)`: one sqrt per value. Backward, if the input's gradient is
    /// computed, `dx = (dy / y) * 0.5`: one div and one mul per value.
    fn closed_form(&self, at: At<'_>, name: &str, grads: &[bool]) -> Result<NodeCounts> {
        let values = at.b() * self.shape.len();
        let wanted = values * usize::from(grads[0]);
        Ok(NodeCounts {
            forward: counts! { at, format!("{name} forward"); sqrt: values }?,
            backward: counts! { at, format!("{name} backward"); div: wanted, mul: wanted }?,
            ..NodeCounts::default()
        })
    }
}

pub(crate) struct SqrtKernel;

impl<S: Scalar> Kernel<S> for SqrtKernel {
    fn forward(&mut self, x: &[&[S]], _: &[&[S]], y: &mut [S]) {
        sqrt(x[0], y);
    }

    fn backward(&mut self, grads: Backward<'_, S>) {
        let Backward { y, dy, dx, .. } = grads;
        if let Some(dx) = dx[0].as_deref_mut() {
            derivative(dy, y, dx);
        }
    }
}

/// `y = sqrt(x)`, value by value.
#[inline(never)]
fn sqrt<S: Scalar>(x: &[S], y: &mut [S]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = x.sqrt();
    }
}

/// `dx = (dy / y) * 0.5`, value by value: d sqrt(x) / dx = 1 / (2 sqrt(x)).
#[inline(never)]
fn derivative<S: Scalar>(dy: &[S], y: &[S], dx: &mut [S]) {
    let half: S = constant(0.5);
    for ((dx, &dy), &y) in dx.iter_mut().zip(dy).zip(y) {
        *dx = (dy / y) * half;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Counted, Counts, Op, tally};

    #[test]
    fn one_sqrt_per_value_forward_and_a_div_and_a_mul_back() {
        let x = Counted::vec(&[4.0f64, 9.0, 0.25]);
        let mut y = vec![Counted::new(0.0); 3];
        let ((), counts) = tally::measure(|| sqrt(&x, &mut y));
        assert_eq!(Counted::unwrap_slice(&y), [2.0, 3.0, 0.5]);
        assert_eq!(counts, Counts::of(Op::Sqrt, 3));
        let dy = Counted::vec(&[1.0, 6.0, 1.0]);
        let mut dx = y.clone();
        let ((), counts) = tally::measure(|| derivative(&dy, &y, &mut dx));
        assert_eq!(Counted::unwrap_slice(&dx), [0.25, 1.0, 1.0]);
        assert_eq!(counts, Counts::of(Op::Div, 3) + Counts::of(Op::Mul, 3));
    }
}
