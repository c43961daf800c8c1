//! Sub: the difference of two values of the same shape, value by value (`x - mean` where the
//! mean is computed, a residual's difference). Forward one subtraction per value; backward
//! `da = dy` (a copy, nothing counted) and `db = -dy` (one negation per value), each only if
//! wanted.

use super::ops::{Backward, Kernel, Operation};
use crate::error::Result;
use crate::estimate::{At, counts};
use crate::phases::NodeCounts;
use crate::scalar::Scalar;
use crate::shape::Shape;

/// Sub, resolved: the shape of both inputs and of the output.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Sub {
    /// The shape of each input and of the output.
    pub shape: Shape,
}

impl Sub {
    /// The shape rule: two inputs of one shape.
    pub(crate) fn resolve(inputs: &[Shape]) -> Result<Sub, String> {
        match inputs {
            [a, b] if a == b => Ok(Sub { shape: *a }),
            [a, b] => Err(format!(
                "sub expects two inputs of the same shape, found {a} and {b}"
            )),
            _ => Err(format!("sub expects 2 inputs, found {}", inputs.len())),
        }
    }

    pub(crate) fn kernel(&self) -> SubKernel {
        SubKernel
    }
}

impl Operation for Sub {
    fn kind(&self) -> &'static str {
        "sub"
    }

    fn output(&self) -> Shape {
        self.shape
    }

    /// Forward `y = a - b`: one sub per value. Backward `da = dy`, a copy, nothing counted;
    /// `db = -dy`, one neg per value, if that gradient is computed.
    fn closed_form(&self, at: At<'_>, name: &str, grads: &[bool]) -> Result<NodeCounts> {
        let values = at.b() * self.shape.len();
        let negated = values * usize::from(grads[1]);
        Ok(NodeCounts {
            forward: counts! { at, format!("{name} forward"); sub: values }?,
            backward: counts! { at, format!("{name} backward"); neg: negated }?,
            ..NodeCounts::default()
        })
    }
}

pub(crate) struct SubKernel;

impl<S: Scalar> Kernel<S> for SubKernel {
    fn forward(&mut self, x: &[&[S]], _: &[&[S]], y: &mut [S]) {
        sub(x[0], x[1], y);
    }

    fn backward(&mut self, grads: Backward<'_, S>) {
        let Backward { dy, dx, .. } = grads;
        if let Some(da) = dx[0].as_deref_mut() {
            da.copy_from_slice(dy);
        }
        if let Some(db) = dx[1].as_deref_mut() {
            neg(dy, db);
        }
    }
}

/// `y = a - b`, value by value.
#[inline(never)]
fn sub<S: Scalar>(a: &[S], b: &[S], y: &mut [S]) {
    for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
        *y = a - b;
    }
}

/// `y = -x`, value by value.
#[inline(never)]
fn neg<S: Scalar>(x: &[S], y: &mut [S]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = -x;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Counted, Counts, Op, tally};

    #[test]
    fn subtracts_and_negates_with_one_operation_per_value() {
        let (a, b) = (
            Counted::vec(&[1.0f64, 2.0, 3.0]),
            Counted::vec(&[0.5, 0.25, -3.0]),
        );
        let mut y = vec![Counted::new(0.0); 3];
        let ((), counts) = tally::measure(|| sub(&a, &b, &mut y));
        assert_eq!(Counted::unwrap_slice(&y), [0.5, 1.75, 6.0]);
        assert_eq!(counts, Counts::of(Op::Sub, 3));
        let ((), counts) = tally::measure(|| neg(&a, &mut y));
        assert_eq!(Counted::unwrap_slice(&y), [-1.0, -2.0, -3.0]);
        assert_eq!(counts, Counts::of(Op::Neg, 3));
    }

    #[test]
    fn refuses_inputs_of_different_shapes() {
        let err = Sub::resolve(&[Shape::flat(3), Shape::flat(4)]).unwrap_err();
        assert!(err.contains("3 and 4"), "{err}");
        assert!(Sub::resolve(&[Shape::flat(3)]).is_err());
    }
}
