//! Unembed: a score per token id for every row, `y[v] = sum_i x_i E[v][i]`, with a table E of
//! `vocab x width` laid out as an embedding's, so that it can `share` the token embedding's
//! table (GPT-2's tied output layer: logits = x E^T). No bias. Shape rule, closed form,
//! forward and backward; the counts are a dense layer's without bias. Forward and both
//! gradients are matrix products (`gemm`: each sum from its first product, in ascending
//! order, each product added with one fused multiply-add; on all cores when large).

use super::gemm::{Start, gemm};
use super::matmul::{columns, rows};
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

/// Values of `y^T` computed at a time when the scores are computed transposed (a bound on
/// the scratch buffer: 256 KiB of `f32`).
const TRANSPOSED_BLOCK: usize = 1 << 16;

/// Every row's score for every id, `y = x E^T`: a dot product of W values each, from the
/// first product (a matrix product, `gemm`).
///
/// With more ids than rows (a language model's vocabulary), a block of ids at a time as its
/// transpose, `y^T = E x^T`, copied into `y`: the same products in the same order for every
/// element, so the same bits and counts, but the table is read row by row as it is stored,
/// where `y = x E^T` would gather each of its columns a value at a time.
fn scores<S: Scalar>(x: &[S], table: &[S], y: &mut [S], w: usize, v: usize) {
    let r = x.len() / w;
    if v <= r {
        gemm(
            (r, v, w),
            &rows(x, w),
            &columns(table, w),
            Start::FirstProduct,
            y,
        );
        return;
    }
    let ids = (TRANSPOSED_BLOCK / r).clamp(1, v);
    let mut block = vec![S::zero(); ids * r];
    for v0 in (0..v).step_by(ids) {
        let n = ids.min(v - v0);
        let block = &mut block[..n * r];
        gemm(
            (n, r, w),
            &rows(&table[v0 * w..(v0 + n) * w], w),
            &columns(x, w),
            Start::FirstProduct,
            block,
        );
        for (k, yr) in y.chunks_exact_mut(v).enumerate() {
            for (out, &s) in yr[v0..v0 + n]
                .iter_mut()
                .zip(block.iter().skip(k).step_by(r))
            {
                *out = s;
            }
        }
    }
}

/// `dE[v][i] = sum_r dy[r][v] x[r][i]`, from the first row: `dE = dy^T x`.
fn table_grads<S: Scalar>(x: &[S], dy: &[S], dtable: &mut [S], w: usize, v: usize) {
    let r = x.len() / w;
    gemm(
        (v, w, r),
        &columns(dy, v),
        &rows(x, w),
        Start::FirstProduct,
        dtable,
    );
}

/// `dx[r][i] = sum_v dy[r][v] E[v][i]`, from the first id: `dx = dy E`.
fn input_grads<S: Scalar>(table: &[S], dy: &[S], dx: &mut [S], w: usize, v: usize) {
    let r = dx.len() / w;
    gemm(
        (r, w, v),
        &rows(dy, v),
        &rows(table, w),
        Start::FirstProduct,
        dx,
    );
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

    /// `sum_k a(k) b(k)` from the first product, in ascending k, each later product added
    /// with one rounding (fused, as `gemm` does here) or two.
    fn sum_of(k: usize, a: impl Fn(usize) -> f64, b: impl Fn(usize) -> f64) -> f64 {
        let fused = crate::nn::gemm::fuses();
        (1..k).fold(a(0) * b(0), |acc, i| {
            if fused {
                a(i).mul_add(b(i), acc)
            } else {
                acc + a(i) * b(i)
            }
        })
    }

    #[test]
    fn scores_and_gradients_match_the_definition_bit_for_bit_with_exact_counts() {
        // More ids than rows (computed transposed, here in blocks of 64 ids), and fewer.
        for (r, v, w) in [(1024, 150, 3), (40, 7, 33), (5, 300, 20)] {
            let x: Vec<f64> = (0..r * w).map(|i| (i % 23) as f64 * 0.31 - 3.0).collect();
            let e: Vec<f64> = (0..v * w).map(|i| (i % 19) as f64 * 0.17 - 1.4).collect();
            let dy: Vec<f64> = (0..r * v).map(|i| (i % 29) as f64 * 0.07 - 0.9).collect();
            let (cx, ce, cdy) = (Counted::vec(&x), Counted::vec(&e), Counted::vec(&dy));
            let mut y = vec![Counted::new(0.0); r * v];
            let mut de = vec![Counted::new(0.0); v * w];
            let mut dx = vec![Counted::new(0.0); r * w];
            let ((), fwd) = tally::measure(|| scores(&cx, &ce, &mut y, w, v));
            let ((), bwd) = tally::measure(|| {
                table_grads(&cx, &cdy, &mut de, w, v);
                input_grads(&ce, &cdy, &mut dx, w, v);
            });
            let bits =
                |c: &[Counted<f64>]| -> Vec<u64> { c.iter().map(|v| v.get().to_bits()).collect() };
            let want_y: Vec<u64> = (0..r * v)
                .map(|at| {
                    let (k, id) = (at / v, at % v);
                    sum_of(w, |i| x[k * w + i], |i| e[id * w + i]).to_bits()
                })
                .collect();
            let want_de: Vec<u64> = (0..v * w)
                .map(|at| {
                    let (id, i) = (at / w, at % w);
                    sum_of(r, |k| dy[k * v + id], |k| x[k * w + i]).to_bits()
                })
                .collect();
            let want_dx: Vec<u64> = (0..r * w)
                .map(|at| {
                    let (k, i) = (at / w, at % w);
                    sum_of(v, |id| dy[k * v + id], |id| e[id * w + i]).to_bits()
                })
                .collect();
            assert_eq!(bits(&y), want_y, "{r} x {v} x {w}");
            assert_eq!(bits(&de), want_de, "{r} x {v} x {w}");
            assert_eq!(bits(&dx), want_dx, "{r} x {v} x {w}");
            let (r, v, w) = (r as u128, v as u128, w as u128);
            fwd.assert_eq(&Counts {
                mul: r * v * w,
                add: r * v * (w - 1),
                ..Counts::ZERO
            });
            bwd.assert_eq(&Counts {
                mul: 2 * r * v * w,
                add: (r - 1) * v * w + r * w * (v - 1),
                ..Counts::ZERO
            });
        }
    }
}
