//! Add: the sum of two values of the same shape, value by value (a residual connection).
//! Forward one add per value; backward no arithmetic (each input's gradient is the output's).

use super::activation::{LINE, PARALLEL_VALUES, on_threads, part_len};
use super::ops::{Backward, Kernel, Operation};
use crate::error::Result;
use crate::estimate::{At, counts};
use crate::phases::NodeCounts;
use crate::scalar::Scalar;
use crate::shape::Shape;

/// Add, resolved: the shape of both inputs and of the output.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Add {
    /// The shape of each input and of the output.
    pub shape: Shape,
}

impl Add {
    /// The shape rule: two inputs of one shape.
    pub(crate) fn resolve(inputs: &[Shape]) -> Result<Add, String> {
        match inputs {
            [a, b] if a == b => Ok(Add { shape: *a }),
            [a, b] => Err(format!(
                "add expects two inputs of the same shape, found {a} and {b}"
            )),
            _ => Err(format!("add expects 2 inputs, found {}", inputs.len())),
        }
    }

    pub(crate) fn kernel(&self) -> AddKernel {
        AddKernel
    }
}

impl Operation for Add {
    fn kind(&self) -> &'static str {
        "add"
    }

    fn output(&self) -> Shape {
        self.shape
    }

    /// Forward `y = a + b`: one add per value. Backward `da = db = dy`: copies, nothing
    /// counted.
    fn closed_form(&self, at: At<'_>, name: &str, _: &[bool]) -> Result<NodeCounts> {
        Ok(NodeCounts {
            forward: counts! { at, format!("{name} forward"); add: at.b() * self.shape.len() }?,
            ..NodeCounts::default()
        })
    }
}

pub(crate) struct AddKernel;

impl<S: Scalar> Kernel<S> for AddKernel {
    fn forward(&mut self, x: &[&[S]], _: &[&[S]], y: &mut [S]) {
        let (a, b) = (x[0], x[1]);
        let part = part_len(y.len(), PARALLEL_VALUES, LINE);
        if part >= y.len() {
            return add(a, b, y);
        }
        let parts: Vec<_> = y
            .chunks_mut(part)
            .zip(a.chunks(part).zip(b.chunks(part)))
            .collect();
        on_threads(parts, |(y, (a, b))| add(a, b, y));
    }

    /// Copies of `dy`, in a part per thread when large (nothing is counted).
    fn backward(&mut self, grads: Backward<'_, S>) {
        let Backward { dy, dx, .. } = grads;
        let part = part_len(dy.len(), PARALLEL_VALUES, LINE);
        for dx in dx.iter_mut().flatten() {
            if part >= dy.len() {
                dx.copy_from_slice(dy);
            } else {
                let parts: Vec<_> = dx.chunks_mut(part).zip(dy.chunks(part)).collect();
                on_threads(parts, |(dx, dy)| dx.copy_from_slice(dy));
            }
        }
    }
}

/// `y = a + b`, value by value.
#[inline(never)]
fn add<S: Scalar>(a: &[S], b: &[S], y: &mut [S]) {
    for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
        *y = a + b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Counted, Counts, tally};

    #[test]
    fn adds_value_by_value_with_one_add_each() {
        let (a, b) = (
            Counted::vec(&[1.0f64, 2.0, 3.0]),
            Counted::vec(&[0.5, 0.25, -3.0]),
        );
        let mut y = vec![Counted::new(0.0); 3];
        let ((), counts) = tally::measure(|| add(&a, &b, &mut y));
        assert_eq!(Counted::unwrap_slice(&y), [1.5, 2.25, 0.0]);
        assert_eq!(counts, Counts::of(crate::Op::Add, 3));
    }

    #[test]
    fn refuses_inputs_of_different_shapes() {
        let err = Add::resolve(&[Shape::flat(3), Shape::flat(4)]).unwrap_err();
        assert!(err.contains("3 and 4"), "{err}");
        assert!(Add::resolve(&[Shape::flat(3)]).is_err());
    }
}
