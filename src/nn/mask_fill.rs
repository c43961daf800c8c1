//! MaskFill: a fixed mask, broadcast to the value's shape, picks the positions that take a
//! fixed number instead of the value (PyTorch's `masked_fill`, ONNX's `Where` of a constant
//! condition: a causal mask writes `-inf` above the diagonal before a softmax). The mask is
//! part of the model, never trained. It moves numbers and computes none: forward and
//! backward count nothing (the masked positions' gradient is zero, the others' passes).

use super::const_op::{broadcasts, spread};
use super::ops::{Backward, Kernel, Operation};
use crate::counts::Counts;
use crate::error::Result;
use crate::estimate::At;
use crate::phases::NodeCounts;
use crate::scalar::Scalar;
use crate::shape::Shape;

/// MaskFill, resolved: the mask's shape and values, the number written where it is set, and
/// the shape of the input and output.
#[derive(Clone, Debug, PartialEq)]
pub struct MaskFill {
    /// The mask's dimensions, at most the input's rank; each 1 or the input's size on that
    /// axis, counted from the last.
    pub mask: Shape,
    /// Whether each position of the mask is filled, in row-major order.
    pub masked: Vec<bool>,
    /// What a masked position holds: any number, `-inf` included.
    pub fill: f32,
    /// The shape of the input and of the output.
    pub shape: Shape,
}

impl MaskFill {
    /// The shape rule: `dims` broadcasts to `input` (right-aligned, each 1 or equal) and
    /// holds as many values as it says; the fill is not NaN.
    pub(crate) fn resolve(
        dims: &[usize],
        masked: &[bool],
        fill: f32,
        input: Shape,
    ) -> Result<MaskFill, String> {
        let mask = broadcasts("mask", dims, masked.len(), input)?;
        if fill.is_nan() {
            return Err("the fill is NaN, not a number".into());
        }
        Ok(MaskFill {
            mask,
            masked: masked.to_vec(),
            fill,
            shape: input,
        })
    }

    pub(crate) fn kernel<S: Scalar>(&self) -> MaskFillKernel<S> {
        MaskFillKernel {
            masked: spread(&self.masked, self.mask, self.shape),
            fill: crate::data::scalar(self.fill),
        }
    }
}

impl Operation for MaskFill {
    fn kind(&self) -> &'static str {
        "mask_fill"
    }

    fn output(&self) -> Shape {
        self.shape
    }

    /// Nothing either way: forward copies each value or writes the fill, backward passes
    /// each gradient or writes zero; no arithmetic on a value, no comparison of one (the
    /// mask is fixed).
    fn closed_form(&self, _: At<'_>, _: &str, _: &[bool]) -> Result<NodeCounts> {
        Ok(NodeCounts {
            forward: Counts::ZERO,
            backward: Counts::ZERO,
            update: Counts::ZERO,
        })
    }

    /// The mask spread over one example.
    fn workspace(&self) -> usize {
        self.shape.len()
    }
}

pub(crate) struct MaskFillKernel<S> {
    /// The mask at every position of one example.
    masked: Vec<bool>,
    fill: S,
}

impl<S: Scalar> Kernel<S> for MaskFillKernel<S> {
    fn forward(&mut self, x: &[&[S]], _: &[&[S]], y: &mut [S]) {
        pick(&self.masked, x[0], self.fill, y);
    }

    fn backward(&mut self, grads: Backward<'_, S>) {
        let Backward { dy, dx, .. } = grads;
        if let Some(dx) = dx[0].as_deref_mut() {
            pick(&self.masked, dy, S::zero(), dx);
        }
    }
}

/// `out = masked ? fill : x` at each position of each example (`masked` is one example's).
#[inline(never)]
fn pick<S: Scalar>(masked: &[bool], x: &[S], fill: S, out: &mut [S]) {
    let n = masked.len();
    for (x, out) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        for ((o, &v), &m) in out.iter_mut().zip(x).zip(masked) {
            *o = if m { fill } else { v };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Counted, tally};

    #[test]
    fn a_causal_mask_fills_above_the_diagonal_and_counts_nothing() {
        // [1, 2, 2] over [2 heads, 2, 2]: each head's upper triangle.
        let shape = Shape::new(&[2, 2, 2]).unwrap();
        let op = MaskFill::resolve(&[1, 2, 2], &[false, true, false, false], -1.0, shape).unwrap();
        let mut kernel = op.kernel::<Counted<f64>>();
        let x = Counted::vec(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
        let mut y = vec![Counted::new(0.0); 8];
        let ((), counts) = tally::measure(|| kernel.forward(&[&x], &[], &mut y));
        let want = [1.0, -1.0, 3.0, 4.0, 5.0, -1.0, 7.0, 8.0];
        assert_eq!(Counted::unwrap_slice(&y), want);
        assert_eq!(counts, Counts::ZERO);
    }

    #[test]
    fn refuses_a_mask_that_does_not_broadcast_or_a_nan_fill() {
        let input = Shape::new(&[2, 3]).unwrap();
        let err = MaskFill::resolve(&[2], &[true, false], 0.0, input).unwrap_err();
        assert!(err.contains("mask's shape 2 does not broadcast"), "{err}");
        let err = MaskFill::resolve(&[3], &[true], 0.0, input).unwrap_err();
        assert!(err.contains("holds 3 values, found 1"), "{err}");
        let err = MaskFill::resolve(&[1], &[true], f32::NAN, input).unwrap_err();
        assert!(err.contains("NaN"), "{err}");
    }
}
