//! Mul: the product of two values of the same shape, value by value (a gate: SiLU's
//! `x * sigmoid(x)`, a GLU's halves). Forward one multiply per value; backward one multiply
//! per value for each input whose gradient is wanted (`da = dy * b`, `db = dy * a`).

use super::ops::{Backward, Kernel, Operation};
use crate::error::Result;
use crate::estimate::{At, counts};
use crate::phases::NodeCounts;
use crate::scalar::Scalar;
use crate::shape::Shape;

/// Mul, resolved: the shape of both inputs and of the output.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Mul {
    /// The shape of each input and of the output.
    pub shape: Shape,
}

impl Mul {
    /// The shape rule: two inputs of one shape.
    pub(crate) fn resolve(inputs: &[Shape]) -> Result<Mul, String> {
        match inputs {
            [a, b] if a == b => Ok(Mul { shape: *a }),
            [a, b] => Err(format!(
                "mul expects two inputs of the same shape, found {a} and {b}"
            )),
            _ => Err(format!("mul expects 2 inputs, found {}", inputs.len())),
        }
    }

    pub(crate) fn kernel(&self) -> MulKernel {
        MulKernel
    }
}

impl Operation for Mul {
    fn kind(&self) -> &'static str {
        "mul"
    }

    fn output(&self) -> Shape {
        self.shape
    }

    /// Forward `y = a b`: one multiply per value. Backward `da = dy b` and `db = dy a`: one
    /// multiply per value for each gradient computed.
    fn closed_form(&self, at: At<'_>, name: &str, grads: &[bool]) -> Result<NodeCounts> {
        let values = at.b() * self.shape.len();
        let wanted = grads.iter().filter(|&&g| g).count();
        Ok(NodeCounts {
            forward: counts! { at, format!("{name} forward"); mul: values }?,
            backward: counts! { at, format!("{name} backward"); mul: values * wanted }?,
            ..NodeCounts::default()
        })
    }
}

pub(crate) struct MulKernel;

impl<S: Scalar> Kernel<S> for MulKernel {
    fn forward(&mut self, x: &[&[S]], _: &[&[S]], y: &mut [S]) {
        mul(x[0], x[1], y);
    }

    fn backward(&mut self, grads: Backward<'_, S>) {
        let Backward { x, dy, dx, .. } = grads;
        // The gradient of input 0 is dy times input 1, and the other way round.
        for (j, dx) in dx.iter_mut().enumerate() {
            if let Some(dx) = dx.as_deref_mut() {
                mul(dy, x[1 - j], dx);
            }
        }
    }
}

/// `y = a b`, value by value.
#[inline(never)]
fn mul<S: Scalar>(a: &[S], b: &[S], y: &mut [S]) {
    for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
        *y = a * b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Counted, Counts, tally};

    #[test]
    fn multiplies_value_by_value_with_one_multiply_each() {
        let (a, b) = (
            Counted::vec(&[1.0f64, 2.0, 3.0]),
            Counted::vec(&[0.5, 0.25, -3.0]),
        );
        let mut y = vec![Counted::new(0.0); 3];
        let ((), counts) = tally::measure(|| mul(&a, &b, &mut y));
        assert_eq!(Counted::unwrap_slice(&y), [0.5, 0.5, -9.0]);
        assert_eq!(counts, Counts::of(crate::Op::Mul, 3));
    }

    #[test]
    fn refuses_inputs_of_different_shapes() {
        let err = Mul::resolve(&[Shape::flat(3), Shape::flat(4)]).unwrap_err();
        assert!(err.contains("3 and 4"), "{err}");
        assert!(Mul::resolve(&[Shape::flat(3)]).is_err());
    }
}
