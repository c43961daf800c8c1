//! PositionEmbedding: a learned vector per position added to each token,
//! `y[t] = x[t] + P[t]`, with a table P of `context x width` for sequences of up to `context`
//! tokens (GPT-2's `wpe`). Shape rule, closed form, forward and backward.

use super::ops::{Backward, Kernel, Operation, ParamSpec};
use crate::error::Result;
use crate::estimate::{At, counts, q};
use crate::phases::NodeCounts;
use crate::scalar::Scalar;
use crate::shape::Shape;

use super::dense::check_size;

/// Learned positions for up to `context` tokens, resolved against `tokens` of `width`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct PositionEmbedding {
    /// C, rows of the table: the longest sequence it can take.
    pub context: usize,
    /// T, tokens per example (at most C).
    pub tokens: usize,
    /// W, features per token.
    pub width: usize,
}

impl PositionEmbedding {
    /// The shape rule: `[tokens, width]` in and out, at most `context` tokens.
    pub(crate) fn resolve(context: usize, input: Shape) -> Result<PositionEmbedding, String> {
        let [tokens, width] = *input.dims() else {
            return Err(format!(
                "position embedding expects [tokens, width], found {input}"
            ));
        };
        check_size("context", context)?;
        if tokens > context {
            return Err(format!(
                "position embedding has {context} positions (context), found {tokens} tokens"
            ));
        }
        context
            .checked_mul(width)
            .ok_or_else(|| format!("a table of {context} x {width} is too large"))?;
        Ok(PositionEmbedding {
            context,
            tokens,
            width,
        })
    }

    pub(crate) fn kernel(&self) -> PositionKernel {
        PositionKernel(*self)
    }
}

impl Operation for PositionEmbedding {
    fn kind(&self) -> &'static str {
        "positions"
    }

    fn output(&self) -> Shape {
        Shape::new(&[self.tokens, self.width]).expect("rank 2")
    }

    /// The table, `context x width`, position after position.
    fn params(&self) -> Vec<ParamSpec> {
        vec![ParamSpec {
            len: self.context * self.width,
            fans: Some((self.context, self.width)),
            start: 0.0,
        }]
    }

    fn param_names(&self) -> &'static [&'static str] {
        &["table"]
    }

    fn explain_param(&self, _: usize) -> String {
        format!(
            "a table of {} positions x {} features",
            self.context, self.width
        )
    }

    /// Forward: one add per value (B·T·W). Backward: `dx = dy` (a copy); the first T rows
    /// of the table's gradient are sums over the B examples (B - 1 adds each, T·W values),
    /// the other C - T rows are zeros (free). Update: 1 mul and 1 sub per table entry, all C
    /// rows: the optimizer does not know which rows a shorter sequence left untouched.
    fn closed_form(&self, at: At<'_>, name: &str, _: &[bool]) -> Result<NodeCounts> {
        let values = q(self.tokens) * self.width;
        let table = q(self.context) * self.width;
        Ok(NodeCounts {
            forward: counts! { at, format!("{name} forward"); add: at.b() * values }?,
            backward: counts! { at, format!("{name} backward"); add: (at.b() - 1) * values }?,
            update: counts! { at, format!("{name} update"); mul: table, sub: table }?,
        })
    }
}

/// The kernels of a position embedding; they keep no state.
pub(crate) struct PositionKernel(PositionEmbedding);

impl<S: Scalar> Kernel<S> for PositionKernel {
    /// `y[e][t] = x[e][t] + P[t]`.
    ///
    /// # Shapes
    /// `x[0]`, `y`: batch x tokens x width; `params[0]`: context x width.
    fn forward(&mut self, x: &[&[S]], params: &[&[S]], y: &mut [S]) {
        let used = self.0.tokens * self.0.width;
        add_positions(x[0], &params[0][..used], y);
    }

    /// `dx = dy`; `dP[t] = sum over examples of dy[e][t]` for t < T, zero beyond.
    ///
    /// # Shapes
    /// `dy`, `dx[0]`: batch x tokens x width; `dparams[0]`: context x width.
    fn backward(&mut self, grads: Backward<'_, S>) {
        let Backward {
            dy, dparams, dx, ..
        } = grads;
        let used = self.0.tokens * self.0.width;
        let (first, rest) = dparams[0].split_at_mut(used);
        sum_examples(dy, first);
        rest.fill(S::zero());
        if let Some(dx) = dx[0].as_deref_mut() {
            dx.copy_from_slice(dy);
        }
    }
}

#[inline(never)]
fn add_positions<S: Scalar>(x: &[S], p: &[S], y: &mut [S]) {
    for (xe, ye) in x.chunks_exact(p.len()).zip(y.chunks_exact_mut(p.len())) {
        for ((out, &v), &w) in ye.iter_mut().zip(xe).zip(p) {
            *out = v + w;
        }
    }
}

/// `into = sum over examples of dy[e]`, from the first example.
#[inline(never)]
fn sum_examples<S: Scalar>(dy: &[S], into: &mut [S]) {
    let mut examples = dy.chunks_exact(into.len());
    if let Some(first) = examples.next() {
        into.copy_from_slice(first);
    }
    for e in examples {
        for (t, &v) in into.iter_mut().zip(e) {
            *t += v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_more_tokens_than_positions() {
        let s = |t, w| Shape::new(&[t, w]).unwrap();
        assert!(PositionEmbedding::resolve(8, s(8, 3)).is_ok());
        let err = PositionEmbedding::resolve(8, s(9, 3)).unwrap_err();
        assert!(err.contains("8 positions"), "{err}");
        assert!(PositionEmbedding::resolve(8, Shape::flat(3)).is_err());
    }
}
