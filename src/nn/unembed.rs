//! Unembed: a score per token id for every row, `y[v] = sum_i x_i E[v][i]`, with a table E of
//! `vocab x width` laid out as an embedding's, so that it can `share` the token embedding's
//! table (GPT-2's tied output layer: logits = x E^T). No bias. Shape rule, closed form,
//! forward and backward; the counts are a dense layer's without bias.

use super::ops::{Backward, Kernel, Operation, ParamSpec};
use crate::error::Result;
use crate::estimate::{At, counts, q, when};
use crate::phases::NodeCounts;
use crate::scalar::Scalar;
use crate::shape::Shape;

use super::dense::check_size;

/// Scores over `vocab` ids from rows of `width` features, resolved.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Unembed {
    /// The shape of one example's input: `[W]` or `[R, W]`.
    pub input: Shape,
    /// R, rows per example: 1 for `[width]`, T for `[tokens, width]`.
    pub rows: usize,
    /// V, token ids scored (rows of the table).
    pub vocab: usize,
    /// W, features per row (columns of the table).
    pub width: usize,
}

impl Unembed {
    /// The shape rule: `[width]` or `[tokens, width]` in; `[vocab]` or `[tokens, vocab]` out.
    pub(crate) fn resolve(vocab: usize, input: Shape) -> Result<Unembed, String> {
        let (rows, width) = match *input.dims() {
            [w] => (1, w),
            [t, w] => (t, w),
            _ => {
                return Err(format!(
                    "unembed expects [width] or [tokens, width], found {input}"
                ));
            }
        };
        check_size("vocab", vocab)?;
        vocab
            .checked_mul(width)
            .ok_or_else(|| format!("a table of {vocab} x {width} is too large"))?;
        Ok(Unembed {
            input,
            rows,
            vocab,
            width,
        })
    }

    pub(crate) fn kernel(&self) -> UnembedKernel {
        UnembedKernel(*self)
    }
}

impl Operation for Unembed {
    fn kind(&self) -> &'static str {
        "unembed"
    }

    fn output(&self) -> Shape {
        self.input.with_last(self.vocab)
    }

    /// The table, `vocab x width`, row after row: an embedding's table, to share it.
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

    /// A dense layer of N = W inputs and M = V units without bias, over the B·R rows
    /// (docs/counting.md, "Unembed").
    fn closed_form(&self, at: At<'_>, name: &str, grads: &[bool]) -> Result<NodeCounts> {
        let (r, v, w) = (at.b() * self.rows, self.vocab, self.width);
        let dx = grads[0];
        // Forward, per row and id: W products, W - 1 adds.
        let forward = counts! { at, format!("{name} forward");
            mul: r * v * w,
            add: r * v * (w - 1),
        }?;
        // dE[v][i] = sum over rows of dy[v] x[i] (R products, R - 1 adds, V·W entries);
        // dx[i] = sum over ids of dy[v] E[v][i] (V products, V - 1 adds, R·W values).
        let backward = counts! { at, format!("{name} backward");
            mul: r * v * w + when(dx, r * v * w),
            add: (r - 1) * v * w + when(dx, r * w * (v - 1)),
        }?;
        let table = q(v) * w;
        let update = counts! { at, format!("{name} update"); mul: table, sub: table }?;
        Ok(NodeCounts {
            forward,
            backward,
            update,
        })
    }
}

/// The kernels of an unembedding; they keep no state.
pub(crate) struct UnembedKernel(Unembed);

impl<S: Scalar> Kernel<S> for UnembedKernel {
    /// `y[r][v] = sum_i x[r][i] E[v][i]`.
    ///
    /// # Shapes
    /// `x[0]`: batch x rows x width; `params[0]`: vocab x width; `y`: batch x rows x vocab.
    fn forward(&mut self, x: &[&[S]], params: &[&[S]], y: &mut [S]) {
        scores(x[0], params[0], y, self.0.width, self.0.vocab);
    }

    /// `dE[v] = sum_r dy[r][v] x[r]`; if wanted, `dx[r] = sum_v dy[r][v] E[v]`.
    ///
    /// # Shapes
    /// `dy`: batch x rows x vocab; `dparams[0]`: vocab x width; `dx[0]`: batch x rows x width.
    fn backward(&mut self, grads: Backward<'_, S>) {
        let Backward {
            x,
            dy,
            params,
            dparams,
            dx,
            ..
        } = grads;
        let (w, v) = (self.0.width, self.0.vocab);
        table_grads(x[0], dy, dparams[0], w, v);
        if let Some(dx) = dx[0].as_deref_mut() {
            input_grads(params[0], dy, dx, w, v);
        }
    }
}

/// Every row's score for every id: a dot product of W values each, from the first product.
#[inline(never)]
fn scores<S: Scalar>(x: &[S], table: &[S], y: &mut [S], w: usize, v: usize) {
    for (xr, yr) in x.chunks_exact(w).zip(y.chunks_exact_mut(v)) {
        for (out, e) in yr.iter_mut().zip(table.chunks_exact(w)) {
            let mut acc = xr[0] * e[0];
            for (&a, &b) in xr[1..].iter().zip(&e[1..]) {
                acc += a * b;
            }
            *out = acc;
        }
    }
}

/// `dE[v][i] = sum_r dy[r][v] x[r][i]`, accumulated from the first row.
#[inline(never)]
fn table_grads<S: Scalar>(x: &[S], dy: &[S], dtable: &mut [S], w: usize, v: usize) {
    for (r, (xr, dyr)) in x.chunks_exact(w).zip(dy.chunks_exact(v)).enumerate() {
        for (de, &d) in dtable.chunks_exact_mut(w).zip(dyr) {
            if r == 0 {
                for (g, &xi) in de.iter_mut().zip(xr) {
                    *g = d * xi;
                }
            } else {
                for (g, &xi) in de.iter_mut().zip(xr) {
                    *g += d * xi;
                }
            }
        }
    }
}

/// `dx[r][i] = sum_v dy[r][v] E[v][i]`, accumulated from the first id.
#[inline(never)]
fn input_grads<S: Scalar>(table: &[S], dy: &[S], dx: &mut [S], w: usize, v: usize) {
    for (dxr, dyr) in dx.chunks_exact_mut(w).zip(dy.chunks_exact(v)) {
        for (k, (e, &d)) in table.chunks_exact(w).zip(dyr).enumerate() {
            if k == 0 {
                for (g, &ei) in dxr.iter_mut().zip(e) {
                    *g = d * ei;
                }
            } else {
                for (g, &ei) in dxr.iter_mut().zip(e) {
                    *g += d * ei;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Counted, Counts, tally};

    #[test]
    fn scores_are_dot_products_with_the_table_rows() {
        // Table rows (1, 0), (0, 1), (1, 1); x = (2, 3).
        let table = Counted::vec(&[1.0f64, 0.0, 0.0, 1.0, 1.0, 1.0]);
        let x = Counted::vec(&[2.0, 3.0]);
        let mut y = vec![Counted::new(0.0); 3];
        let ((), counts) = tally::measure(|| scores(&x, &table, &mut y, 2, 3));
        assert_eq!(Counted::unwrap_slice(&y), [2.0, 3.0, 5.0]);
        counts.assert_eq(&Counts {
            mul: 6,
            add: 3,
            ..Counts::ZERO
        });
    }
}
