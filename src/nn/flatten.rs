//! Flatten: any value as one flat vector of its values, in order. A copy forward and
//! backward: no arithmetic.

use super::ops::{Backward, Kernel, Operation, Workspace};
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

    pub(crate) fn kernel(&self) -> FlattenKernel {
        FlattenKernel
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

pub(crate) struct FlattenKernel;

impl<S: Scalar> Kernel<S> for FlattenKernel {
    fn forward(&mut self, x: &[&[S]], _: &[&[S]], y: &mut [S], _: &mut Workspace<S>) {
        y.copy_from_slice(x[0]);
    }

    fn backward(&mut self, grads: Backward<'_, S>, _: &mut Workspace<S>) {
        let Backward { dy, dx, .. } = grads;
        if let Some(dx) = dx[0].as_deref_mut() {
            dx.copy_from_slice(dy);
        }
    }
}
