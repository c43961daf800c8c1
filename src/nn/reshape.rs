//! Reshape: one example's values, in the same order, read as another shape (a `[t, w]` value
//! as `[t, heads, w / heads]` to split attention into heads, and back). Nothing moves and
//! nothing is computed: a copy forward and backward.

use super::flatten::CopyKernel;
use super::ops::Operation;
use crate::error::Result;
use crate::estimate::At;
use crate::phases::NodeCounts;
use crate::shape::Shape;

/// Reshape, resolved: the output's shape.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Reshape {
    /// The shape the values are read as.
    pub shape: Shape,
}

impl Reshape {
    /// The shape rule: `dims` (rank 1 to 4) holds as many values as the input.
    pub(crate) fn resolve(dims: &[usize], input: Shape) -> Result<Reshape, String> {
        let shape = Shape::new(dims)
            .filter(|s| s.checked_len() == Some(input.len()))
            .ok_or_else(|| {
                format!(
                    "reshape: {dims:?} (1 to 4 sizes) does not hold the {} values of {input}",
                    input.len()
                )
            })?;
        Ok(Reshape { shape })
    }

    pub(crate) fn kernel(&self) -> CopyKernel {
        CopyKernel
    }
}

impl Operation for Reshape {
    fn kind(&self) -> &'static str {
        "reshape"
    }

    fn output(&self) -> Shape {
        self.shape
    }

    /// A copy, forward and backward.
    fn closed_form(&self, _: At<'_>, _: &str, _: &[bool]) -> Result<NodeCounts> {
        Ok(NodeCounts::default())
    }
}
