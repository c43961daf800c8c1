//! Transpose: one example's axes in another order (`perm`, numpy's), as attention written out
//! turns keys `[t, d]` into `[d, t]`. It moves values and computes nothing: no arithmetic
//! forward or backward (the inverse move).

use super::ops::{Backward, Kernel, Operation};
use crate::error::Result;
use crate::estimate::At;
use crate::phases::NodeCounts;
use crate::scalar::Scalar;
use crate::shape::{MAX_RANK, Shape};

/// Transpose, resolved: the input's shape and the order of its axes in the output.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Transpose {
    /// The input's shape.
    pub input: Shape,
    /// Output axis `i` is input axis `perm[i]`.
    pub perm: [usize; MAX_RANK],
}

impl Transpose {
    /// The shape rule: `perm` orders every axis of the input once.
    pub(crate) fn resolve(perm: &[usize], input: Shape) -> Result<Transpose, String> {
        let r = input.rank();
        let mut seen = [false; MAX_RANK];
        let valid = perm.len() == r
            && perm
                .iter()
                .all(|&p| p < r && !std::mem::replace(&mut seen[p], true));
        if !valid {
            return Err(format!(
                "transpose: perm {perm:?} is not an order of the {r} axes of {input}"
            ));
        }
        let mut all = [0; MAX_RANK];
        all[..r].copy_from_slice(perm);
        Ok(Transpose { input, perm: all })
    }

    fn perm(&self) -> &[usize] {
        &self.perm[..self.input.rank()]
    }

    /// For every position of the output, in order, the position of the input it holds.
    fn sources(&self) -> Vec<usize> {
        let dims = self.input.dims();
        let r = dims.len();
        let mut strides = [1; MAX_RANK];
        for k in (0..r.saturating_sub(1)).rev() {
            strides[k] = strides[k + 1] * dims[k + 1];
        }
        let out = self.output();
        (0..out.len())
            .map(|mut i| {
                let mut at = 0;
                for k in (0..r).rev() {
                    let coord = i % out.dims()[k];
                    i /= out.dims()[k];
                    at += coord * strides[self.perm()[k]];
                }
                at
            })
            .collect()
    }

    pub(crate) fn kernel(&self) -> TransposeKernel {
        TransposeKernel(self.sources())
    }
}

impl Operation for Transpose {
    fn kind(&self) -> &'static str {
        "transpose"
    }

    fn output(&self) -> Shape {
        let dims: Vec<usize> = self.perm().iter().map(|&p| self.input.dims()[p]).collect();
        Shape::new(&dims).expect("the input's rank")
    }

    /// Values moved, forward and backward: nothing counted.
    fn closed_form(&self, _: At<'_>, _: &str, _: &[bool]) -> Result<NodeCounts> {
        Ok(NodeCounts::default())
    }

    /// The map from output to input positions, one `usize` per value of an example: the
    /// room of two values (of 4 bytes or more).
    fn workspace(&self) -> usize {
        2 * self.input.len()
    }
}

/// For every output position of one example, the input position it reads.
pub(crate) struct TransposeKernel(Vec<usize>);

impl<S: Scalar> Kernel<S> for TransposeKernel {
    fn forward(&mut self, x: &[&[S]], _: &[&[S]], y: &mut [S]) {
        let n = self.0.len();
        for (x, y) in x[0].chunks_exact(n).zip(y.chunks_exact_mut(n)) {
            for (y, &from) in y.iter_mut().zip(&self.0) {
                *y = x[from];
            }
        }
    }

    fn backward(&mut self, grads: Backward<'_, S>) {
        let Backward { dy, dx, .. } = grads;
        let Some(dx) = dx[0].as_deref_mut() else {
            return;
        };
        let n = self.0.len();
        for (dy, dx) in dy.chunks_exact(n).zip(dx.chunks_exact_mut(n)) {
            for (&d, &to) in dy.iter().zip(&self.0) {
                dx[to] = d;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_axes_as_numpy_does() {
        // [2, 3] to [3, 2]: y[j][i] = x[i][j].
        let t = Transpose::resolve(&[1, 0], Shape::new(&[2, 3]).unwrap()).unwrap();
        assert_eq!(t.output(), Shape::new(&[3, 2]).unwrap());
        assert_eq!(t.sources(), [0, 3, 1, 4, 2, 5]);
        // [2, 3, 4] by (0, 2, 1): y[a][c][b] = x[a][b][c].
        let t = Transpose::resolve(&[0, 2, 1], Shape::new(&[2, 3, 4]).unwrap()).unwrap();
        assert_eq!(t.sources()[..4], [0, 4, 8, 1]);
        assert!(Transpose::resolve(&[0, 0], Shape::new(&[2, 3]).unwrap()).is_err());
        assert!(Transpose::resolve(&[1, 0], Shape::new(&[6]).unwrap()).is_err());
    }
}
