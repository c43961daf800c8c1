//! Flatten: any value as one flat vector of its values, in order. A copy forward and
//! backward: no arithmetic.

use super::ops::{Backward, Kernel, Operation};
use crate::error::Result;
use crate::estimate::At;
use crate::phases::NodeCounts;
use crate::scalar::Scalar;
use crate::shape::Shape;

/// Flatten, resolved: the number of values per example.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Flatten {
    /// Values per example.
    pub len: usize,
}

impl Flatten {
    /// The shape rule: any input; the output has as many values.
    pub(crate) fn resolve(input: Shape) -> Flatten {
        Flatten { len: input.len() }
    }

    pub(crate) fn kernel(&self) -> CopyKernel {
        CopyKernel
    }
}

impl Operation for Flatten {
    fn kind(&self) -> &'static str {
        "flatten"
    }

    fn output(&self) -> Shape {
        Shape::flat(self.len)
    }

    /// A copy, forward and backward.
    fn closed_form(&self, _: At<'_>, _: &str, _: &[bool]) -> Result<NodeCounts> {
        Ok(NodeCounts::default())
    }
}

/// The kernel of the operations that move no value (flatten, reshape): a copy forward and
/// backward.
pub(crate) struct CopyKernel;

impl<S: Scalar> Kernel<S> for CopyKernel {
    fn forward(&mut self, x: &[&[S]], _: &[&[S]], y: &mut [S]) {
        y.copy_from_slice(x[0]);
    }

    fn backward(&mut self, grads: Backward<'_, S>) {
        let Backward { dy, dx, .. } = grads;
        if let Some(dx) = dx[0].as_deref_mut() {
            dx.copy_from_slice(dy);
        }
    }
}
