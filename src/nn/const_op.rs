//! ConstOp: a value combined, value by value, with a fixed constant tensor that broadcasts
//! to its shape (numpy's rules, from the last axis): `x + c`, `x - c`, `c - x`, `x * c`,
//! `x / c`. What exporters write for attention's `1/sqrt(d)`, a normalising mean and scale,
//! a shift. The constant is part of the model, never trained: no parameter, no update.
//! Forward one operation of its kind per value; backward per value nothing (`+`, `x - c`),
//! one neg (`c - x`), one mul (`x * c`) or one div (`x / c`).

use super::ops::{Backward, Kernel, Operation};
use crate::counts::Counts;
use crate::error::Result;
use crate::estimate::{At, counts};
use crate::model::ConstArith;
use crate::phases::NodeCounts;
use crate::scalar::Scalar;
use crate::shape::Shape;

/// ConstOp, resolved: the operation, the constant (its shape and values, in row-major
/// order), and the shape of the input and output.
#[derive(Clone, Debug, PartialEq)]
pub struct ConstOp {
    /// Which operation, and on which side the constant stands.
    pub op: ConstArith,
    /// The constant's dimensions, at most the input's rank; each 1 or the input's size on
    /// that axis, counted from the last.
    pub constant: Shape,
    /// The constant's values.
    pub values: Vec<f32>,
    /// The shape of the input and of the output.
    pub shape: Shape,
}

impl ConstOp {
    /// The shape rule: `dims` broadcasts to `input` (right-aligned, each 1 or equal) and
    /// holds as many `values` as it says, every one finite (and none zero for a division).
    pub(crate) fn resolve(
        op: ConstArith,
        dims: &[usize],
        values: &[f32],
        input: Shape,
    ) -> Result<ConstOp, String> {
        let constant = broadcasts("constant", dims, values.len(), input)?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(format!(
                "constant value {i} is {}, not a finite number",
                values[i]
            ));
        }
        if op == ConstArith::Div && values.contains(&0.0) {
            return Err("a division by a constant that holds a zero".into());
        }
        Ok(ConstOp {
            op,
            constant,
            values: values.to_vec(),
            shape: input,
        })
    }

    /// The constant spread over one example's shape: the value each position reads.
    fn spread(&self) -> Vec<f32> {
        spread(&self.values, self.constant, self.shape)
    }

    pub(crate) fn kernel<S: Scalar>(&self) -> ConstKernel<S> {
        ConstKernel {
            op: self.op,
            c: self.spread().into_iter().map(crate::data::scalar).collect(),
        }
    }
}

/// The shape rule of a fixed tensor (the `what`: a constant, a mask) of `dims` holding
/// `len` values, spread over an input of shape `input` as numpy broadcasts: right-aligned,
/// each size 1 or the input's, at most the input's rank.
pub(crate) fn broadcasts(
    what: &str,
    dims: &[usize],
    len: usize,
    input: Shape,
) -> Result<Shape, String> {
    let fixed = Shape::new(dims)
        .filter(|c| c.rank() <= input.rank())
        .ok_or_else(|| {
            format!(
                "the {what}'s shape {dims:?} must have 1 to {} dimensions, the input's rank",
                input.rank()
            )
        })?;
    let offset = input.rank() - fixed.rank();
    for (k, &d) in fixed.dims().iter().enumerate() {
        let n = input.dims()[offset + k];
        if d != 1 && d != n {
            return Err(format!(
                "the {what}'s shape {fixed} does not broadcast to the input's {input}: \
                 size {d} against {n}"
            ));
        }
    }
    if fixed.checked_len() != Some(len) {
        return Err(format!(
            "the {what}'s shape {fixed} holds {} values, found {len}",
            fixed.checked_len().unwrap_or(usize::MAX),
        ));
    }
    Ok(fixed)
}

/// `values`, of a shape `fixed` that broadcasts to `shape` ([`broadcasts`]), spread over one
/// example of `shape`: the value each position reads.
pub(crate) fn spread<T: Copy>(values: &[T], fixed: Shape, shape: Shape) -> Vec<T> {
    let (dims, c) = (shape.dims(), fixed.dims());
    let offset = dims.len() - c.len();
    (0..shape.len())
        .map(|mut i| {
            // The position's index along each axis, last first, and the fixed tensor's
            // index from the axes where it is not 1.
            let (mut at, mut stride) = (0, 1);
            for k in (0..dims.len()).rev() {
                let coord = i % dims[k];
                i /= dims[k];
                if k >= offset && c[k - offset] != 1 {
                    at += coord * stride;
                    stride *= c[k - offset];
                }
            }
            values[at]
        })
        .collect()
}

impl Operation for ConstOp {
    fn kind(&self) -> &'static str {
        match self.op {
            ConstArith::Add => "add_const",
            ConstArith::Sub => "sub_const",
            ConstArith::SubFrom => "const_sub",
            ConstArith::Mul => "mul_const",
            ConstArith::Div => "div_const",
        }
    }

    fn output(&self) -> Shape {
        self.shape
    }

    /// Forward one operation of its kind per value. Backward, if the input's gradient is
    /// wanted, per value: `dx = dy` for `x + c` and `x - c` (copies, nothing counted),
    /// `dx = -dy` for `c - x` (1 neg), `dx = dy * c` (1 mul), `dx = dy / c` (1 div).
    fn closed_form(&self, at: At<'_>, name: &str, grads: &[bool]) -> Result<NodeCounts> {
        let n = at.b() * self.shape.len();
        let (f, b) = (format!("{name} forward"), format!("{name} backward"));
        let wanted = grads[0];
        let (forward, backward) = match self.op {
            ConstArith::Add => (counts! { at, f; add: n }?, Counts::ZERO),
            ConstArith::Sub => (counts! { at, f; sub: n }?, Counts::ZERO),
            ConstArith::SubFrom => (counts! { at, f; sub: n }?, counts! { at, b; neg: n }?),
            ConstArith::Mul => (counts! { at, f; mul: n }?, counts! { at, b; mul: n }?),
            ConstArith::Div => (counts! { at, f; div: n }?, counts! { at, b; div: n }?),
        };
        Ok(NodeCounts {
            forward,
            backward: if wanted { backward } else { Counts::ZERO },
            ..NodeCounts::default()
        })
    }

    /// The constant spread over one example.
    fn workspace(&self) -> usize {
        self.shape.len()
    }
}

pub(crate) struct ConstKernel<S> {
    op: ConstArith,
    /// The constant at every position of one example.
    c: Vec<S>,
}

impl<S: Scalar> Kernel<S> for ConstKernel<S> {
    fn forward(&mut self, x: &[&[S]], _: &[&[S]], y: &mut [S]) {
        let n = self.c.len();
        for (x, y) in x[0].chunks_exact(n).zip(y.chunks_exact_mut(n)) {
            forward(self.op, x, &self.c, y);
        }
    }

    fn backward(&mut self, grads: Backward<'_, S>) {
        let Backward { dy, dx, .. } = grads;
        let Some(dx) = dx[0].as_deref_mut() else {
            return;
        };
        let n = self.c.len();
        for (dy, dx) in dy.chunks_exact(n).zip(dx.chunks_exact_mut(n)) {
            backward(self.op, dy, &self.c, dx);
        }
    }
}

/// One example: `y = x op c`, one operation per value.
#[inline(never)]
fn forward<S: Scalar>(op: ConstArith, x: &[S], c: &[S], y: &mut [S]) {
    let values = y.iter_mut().zip(x).zip(c);
    match op {
        ConstArith::Add => values.for_each(|((y, &x), &c)| *y = x + c),
        ConstArith::Sub => values.for_each(|((y, &x), &c)| *y = x - c),
        ConstArith::SubFrom => values.for_each(|((y, &x), &c)| *y = c - x),
        ConstArith::Mul => values.for_each(|((y, &x), &c)| *y = x * c),
        ConstArith::Div => values.for_each(|((y, &x), &c)| *y = x / c),
    }
}

/// One example: `dx = dy * d(x op c)/dx`.
#[inline(never)]
fn backward<S: Scalar>(op: ConstArith, dy: &[S], c: &[S], dx: &mut [S]) {
    match op {
        ConstArith::Add | ConstArith::Sub => dx.copy_from_slice(dy),
        ConstArith::SubFrom => dx.iter_mut().zip(dy).for_each(|(dx, &dy)| *dx = -dy),
        ConstArith::Mul => {
            let values = dx.iter_mut().zip(dy).zip(c);
            values.for_each(|((dx, &dy), &c)| *dx = dy * c)
        }
        ConstArith::Div => {
            let values = dx.iter_mut().zip(dy).zip(c);
            values.for_each(|((dx, &dy), &c)| *dx = dy / c)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Counted, Op, tally};

    fn op(op: ConstArith, dims: &[usize], values: &[f32], input: &[usize]) -> ConstOp {
        ConstOp::resolve(op, dims, values, Shape::new(input).unwrap()).unwrap()
    }

    #[test]
    fn a_constant_broadcasts_from_the_last_axis() {
        // A row of 3 over [2, 3], and a column of 2 ([2, 1]) over [2, 3].
        let row = op(ConstArith::Add, &[3], &[1.0, 2.0, 3.0], &[2, 3]);
        assert_eq!(row.spread(), [1.0, 2.0, 3.0, 1.0, 2.0, 3.0]);
        let column = op(ConstArith::Add, &[2, 1], &[10.0, 20.0], &[2, 3]);
        assert_eq!(column.spread(), [10.0, 10.0, 10.0, 20.0, 20.0, 20.0]);
        // A channel's constant over an image ([c, 1, 1] over [c, h, w]).
        let channel = op(ConstArith::Mul, &[2, 1, 1], &[5.0, 7.0], &[2, 1, 2]);
        assert_eq!(channel.spread(), [5.0, 5.0, 7.0, 7.0]);
        let scalar = op(ConstArith::Div, &[1], &[8.0], &[2, 2]);
        assert_eq!(scalar.spread(), [8.0; 4]);
    }

    #[test]
    fn each_operation_counts_one_of_its_kind_per_value() {
        let x = Counted::vec(&[1.0f64, -2.0, 4.0]);
        let c = Counted::vec(&[2.0f64, 4.0, 8.0]);
        let mut y = vec![Counted::new(0.0); 3];
        for (op, kind, expected) in [
            (ConstArith::Add, Op::Add, [3.0, 2.0, 12.0]),
            (ConstArith::Sub, Op::Sub, [-1.0, -6.0, -4.0]),
            (ConstArith::SubFrom, Op::Sub, [1.0, 6.0, 4.0]),
            (ConstArith::Mul, Op::Mul, [2.0, -8.0, 32.0]),
            (ConstArith::Div, Op::Div, [0.5, -0.5, 0.5]),
        ] {
            let ((), counts) = tally::measure(|| forward(op, &x, &c, &mut y));
            assert_eq!(Counted::unwrap_slice(&y), expected, "{op:?}");
            assert_eq!(counts, Counts::of(kind, 3), "{op:?}");
        }
    }

    #[test]
    fn refuses_a_constant_that_does_not_broadcast() {
        let input = Shape::new(&[2, 3]).unwrap();
        let err = ConstOp::resolve(ConstArith::Add, &[2], &[1.0, 2.0], input).unwrap_err();
        assert!(err.contains("size 2 against 3"), "{err}");
        let err = ConstOp::resolve(ConstArith::Add, &[3], &[1.0], input).unwrap_err();
        assert!(err.contains("holds 3 values, found 1"), "{err}");
        let err = ConstOp::resolve(ConstArith::Add, &[1, 2, 3], &[1.0; 6], input).unwrap_err();
        assert!(err.contains("1 to 2 dimensions"), "{err}");
        let err = ConstOp::resolve(ConstArith::Div, &[1], &[0.0], input).unwrap_err();
        assert!(err.contains("zero"), "{err}");
        let err = ConstOp::resolve(ConstArith::Mul, &[1], &[f32::NAN], input).unwrap_err();
        assert!(err.contains("finite"), "{err}");
    }
}
