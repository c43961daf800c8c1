//! Div: the quotient of two values of the same shape, value by value (a computed
//! normaliser: `x / x.norm(...)`, `e / e.sum(...)` written out). Forward one division per
//! value; backward, per value, `q = dy / b` once (1 div) if either gradient is wanted, then
//! `da = q` and `db = -(q y)` (1 mul, 1 neg), each only if wanted.

use super::ops::{Backward, Kernel, Operation};
use crate::error::Result;
use crate::estimate::{At, counts};
use crate::phases::NodeCounts;
use crate::scalar::Scalar;
use crate::shape::Shape;

/// Div, resolved: the shape of both inputs and of the output.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Div {
    /// The shape of each input and of the output.
    pub shape: Shape,
}

impl Div {
    /// The shape rule: two inputs of one shape.
    pub(crate) fn resolve(inputs: &[Shape]) -> Result<Div, String> {
        match inputs {
            [a, b] if a == b => Ok(Div { shape: *a }),
            [a, b] => Err(format!(
                "div expects two inputs of the same shape, found {a} and {b}"
            )),
            _ => Err(format!("div expects 2 inputs, found {}", inputs.len())),
        }
    }

    pub(crate) fn kernel(&self) -> DivKernel {
        DivKernel
    }
}

impl Operation for Div {
    fn kind(&self) -> &'static str {
        "div"
    }

    fn output(&self) -> Shape {
        self.shape
    }

    /// Forward `y = a / b`: one div per value. Backward, per value, if either gradient is
    /// computed: `q = dy / b`, 1 div; `da = q`, a copy; `db = -(q y)`, 1 mul and 1 neg, if
    /// that gradient is computed (`-dy a / b²`, with the quotient forward already made).
    fn closed_form(&self, at: At<'_>, name: &str, grads: &[bool]) -> Result<NodeCounts> {
        let values = at.b() * self.shape.len();
        let quotients = values * usize::from(grads[0] || grads[1]);
        let db = values * usize::from(grads[1]);
        Ok(NodeCounts {
            forward: counts! { at, format!("{name} forward"); div: values }?,
            backward: counts! { at, format!("{name} backward"); div: quotients, mul: db, neg: db }?,
            ..NodeCounts::default()
        })
    }
}

pub(crate) struct DivKernel;

impl<S: Scalar> Kernel<S> for DivKernel {
    fn forward(&mut self, x: &[&[S]], _: &[&[S]], y: &mut [S]) {
        div(x[0], x[1], y);
    }

    fn backward(&mut self, grads: Backward<'_, S>) {
        let Backward { x, y, dy, dx, .. } = grads;
        let [da, db] = dx else {
            return; // Div::resolve made it two inputs.
        };
        match (da.as_deref_mut(), db.as_deref_mut()) {
            (Some(da), Some(db)) => both(dy, x[1], y, da, db),
            (Some(da), None) => div(dy, x[1], da),
            (None, Some(db)) => divisor(dy, x[1], y, db),
            (None, None) => {}
        }
    }
}

/// `y = a / b`, value by value.
#[inline(never)]
fn div<S: Scalar>(a: &[S], b: &[S], y: &mut [S]) {
    for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
        *y = a / b;
    }
}

/// The divisor's gradient alone: `db = -((dy / b) y)`.
#[inline(never)]
fn divisor<S: Scalar>(dy: &[S], b: &[S], y: &[S], db: &mut [S]) {
    for (((db, &dy), &b), &y) in db.iter_mut().zip(dy).zip(b).zip(y) {
        *db = -((dy / b) * y);
    }
}

/// Both gradients: `da = dy / b`, `db = -(da y)`, the quotient made once.
#[inline(never)]
fn both<S: Scalar>(dy: &[S], b: &[S], y: &[S], da: &mut [S], db: &mut [S]) {
    for ((((da, db), &dy), &b), &y) in da.iter_mut().zip(db.iter_mut()).zip(dy).zip(b).zip(y) {
        let q = dy / b;
        *da = q;
        *db = -(q * y);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Counted, Counts, Op, tally};

    #[test]
    fn divides_with_one_division_per_value_and_its_gradients_as_the_closed_form_says() {
        let (a, b) = (
            Counted::vec(&[1.0f64, 3.0, -2.0]),
            Counted::vec(&[2.0, 0.5, 4.0]),
        );
        let mut y = vec![Counted::new(0.0); 3];
        let ((), counts) = tally::measure(|| div(&a, &b, &mut y));
        assert_eq!(Counted::unwrap_slice(&y), [0.5, 6.0, -0.5]);
        assert_eq!(counts, Counts::of(Op::Div, 3));
        let dy = Counted::vec(&[1.0, -1.0, 2.0]);
        let (mut da, mut db) = (y.clone(), y.clone());
        // da = dy / b; db = -(dy / b) y = -dy a / b^2.
        let ((), counts) = tally::measure(|| both(&dy, &b, &y, &mut da, &mut db));
        assert_eq!(Counted::unwrap_slice(&da), [0.5, -2.0, 0.5]);
        assert_eq!(Counted::unwrap_slice(&db), [-0.25, 12.0, 0.25]);
        let one_each = Counts::of(Op::Div, 3) + Counts::of(Op::Mul, 3) + Counts::of(Op::Neg, 3);
        assert_eq!(counts, one_each);
        let ((), alone) = tally::measure(|| divisor(&dy, &b, &y, &mut db));
        assert_eq!(Counted::unwrap_slice(&db), [-0.25, 12.0, 0.25]);
        assert_eq!(alone, one_each);
    }

    #[test]
    fn refuses_inputs_of_different_shapes() {
        let err = Div::resolve(&[Shape::flat(3), Shape::flat(4)]).unwrap_err();
        assert!(err.contains("3 and 4"), "{err}");
        assert!(Div::resolve(&[Shape::flat(3)]).is_err());
    }
}
