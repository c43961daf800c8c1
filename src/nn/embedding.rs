//! Embedding: token ids in, one learned row of the table per token out. The forward pass is a
//! lookup (a copy: no arithmetic); the backward pass adds each token's gradient into its
//! token's row of the table's gradient, which starts at zero (docs/counting.md,
//! "Embedding"). Shape rule, closed form, forward and backward.

use super::ops::{Backward, Kernel, Operation, ParamSpec};
use crate::error::Result;
use crate::estimate::{At, counts, q};
use crate::phases::NodeCounts;
use crate::scalar::Scalar;
use crate::shape::Shape;

use super::dense::check_size;

/// The most token ids an embedding takes: every id up to 2^24 is a whole f32 number.
pub const MAX_VOCAB: usize = 1 << 24;

/// An embedding of `vocab` token ids into `width` features, resolved.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Embedding {
    /// T, tokens per example.
    pub tokens: usize,
    /// V, distinct token ids (rows of the table).
    pub vocab: usize,
    /// W, features per token (columns of the table).
    pub width: usize,
}

impl Embedding {
    /// The shape rule: `[tokens]` ids in, `[tokens, width]` out.
    pub(crate) fn resolve(vocab: usize, width: usize, input: Shape) -> Result<Embedding, String> {
        let Some(tokens) = input.as_flat() else {
            return Err(format!(
                "embedding expects [tokens] (token ids), found {input}"
            ));
        };
        check_size("vocab", vocab)?;
        if vocab > MAX_VOCAB {
            return Err(format!(
                "vocab: at most {MAX_VOCAB} (token ids are held as f32 numbers, whole up to \
                 2^24), found {vocab}"
            ));
        }
        check_size("width", width)?;
        vocab
            .checked_mul(width)
            .ok_or_else(|| format!("a table of {vocab} x {width} is too large"))?;
        Ok(Embedding {
            tokens,
            vocab,
            width,
        })
    }

    pub(crate) fn kernel(&self) -> EmbeddingKernel {
        EmbeddingKernel(*self)
    }
}

impl Operation for Embedding {
    fn kind(&self) -> &'static str {
        "embedding"
    }

    fn output(&self) -> Shape {
        Shape::new(&[self.tokens, self.width]).expect("rank 2")
    }

    /// The table, `vocab x width`, row after row.
    fn params(&self) -> Vec<ParamSpec> {
        vec![ParamSpec {
            len: self.vocab * self.width,
            fans: Some((self.vocab, self.width)),
            start: 0.0,
        }]
    }

    fn param_names(&self) -> &'static [&'static str] {
        &["table"]
    }

    fn explain_param(&self, _: usize) -> String {
        format!("a table of {} tokens x {} features", self.vocab, self.width)
    }

    fn token_ids(&self) -> Option<usize> {
        Some(self.vocab)
    }

    /// Forward: a copy per token. Backward: the table's gradient starts at zero (free) and
    /// each of the B·T tokens adds its W gradients into its row: B·T·W adds, whichever ids
    /// repeat. The ids have no gradient. Update: 1 mul and 1 sub per table entry.
    fn closed_form(&self, at: At<'_>, name: &str, _: &[bool]) -> Result<NodeCounts> {
        let table = q(self.vocab) * self.width;
        Ok(NodeCounts {
            forward: Default::default(),
            backward: counts! { at, format!("{name} backward");
                add: at.b() * self.tokens * self.width,
            }?,
            update: counts! { at, format!("{name} update"); mul: table, sub: table }?,
        })
    }
}

/// The kernels of an embedding; they keep no state.
pub(crate) struct EmbeddingKernel(Embedding);

impl<S: Scalar> Kernel<S> for EmbeddingKernel {
    /// `y[e][t] = table[id[e][t]]`.
    ///
    /// # Shapes
    /// `x[0]`: batch x tokens (ids); `params[0]`: vocab x width; `y`: batch x tokens x width.
    fn forward(&mut self, x: &[&[S]], params: &[&[S]], y: &mut [S]) {
        lookup(x[0], params[0], y, self.0.vocab, self.0.width);
    }

    /// `dtable[v] = sum of dy[e][t] over the tokens whose id is v`, from zero.
    ///
    /// # Shapes
    /// `dy`: batch x tokens x width; `dparams[0]`: vocab x width.
    fn backward(&mut self, grads: Backward<'_, S>) {
        let Backward { x, dy, dparams, .. } = grads;
        scatter_add(x[0], dy, dparams[0], self.0.vocab, self.0.width);
    }
}

/// The row of a token id. Ids are checked when the data is loaded (whole numbers below
/// `vocab`); anything else is read as the nearest id in range rather than a panic. A
/// conversion: free.
fn row<S: Scalar>(id: S, vocab: usize) -> usize {
    id.to_usize().unwrap_or(0).min(vocab - 1)
}

#[inline(never)]
fn lookup<S: Scalar>(ids: &[S], table: &[S], y: &mut [S], vocab: usize, width: usize) {
    for (&id, out) in ids.iter().zip(y.chunks_exact_mut(width)) {
        let r = row(id, vocab) * width;
        if let Some(source) = table.get(r..r + width) {
            out.copy_from_slice(source);
        }
    }
}

/// The one sum in opcount that starts from zero rather than from its first term: which
/// tokens share a row depends on the data, and a count must not (docs/counting.md,
/// "Embedding").
#[inline(never)]
fn scatter_add<S: Scalar>(ids: &[S], dy: &[S], dtable: &mut [S], vocab: usize, width: usize) {
    dtable.fill(S::zero());
    for (&id, g) in ids.iter().zip(dy.chunks_exact(width)) {
        let r = row(id, vocab) * width;
        if let Some(target) = dtable.get_mut(r..r + width) {
            for (t, &v) in target.iter_mut().zip(g) {
                *t += v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Counted, Counts, tally};

    #[test]
    fn looks_up_rows_and_adds_gradients_into_them_from_zero() {
        // 3 ids, width 2; ids 2, 0, 2: row 2 gets two gradients, row 1 none.
        let table = Counted::vec(&[0.0f64, 0.5, 1.0, 1.5, 2.0, 2.5]);
        let ids = Counted::vec(&[2.0, 0.0, 2.0]);
        let mut y = vec![Counted::new(0.0); 6];
        let ((), forward) = tally::measure(|| lookup(&ids, &table, &mut y, 3, 2));
        assert_eq!(Counted::unwrap_slice(&y), [2.0, 2.5, 0.0, 0.5, 2.0, 2.5]);
        assert_eq!(forward, Counts::ZERO);
        let dy = Counted::vec(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let mut dtable = vec![Counted::new(9.0); 6];
        let ((), backward) = tally::measure(|| scatter_add(&ids, &dy, &mut dtable, 3, 2));
        assert_eq!(
            Counted::unwrap_slice(&dtable),
            [3.0, 4.0, 0.0, 0.0, 6.0, 8.0]
        );
        // One add per token and feature, whichever ids repeat.
        assert_eq!(backward, Counts::of(crate::Op::Add, 6));
    }
}
