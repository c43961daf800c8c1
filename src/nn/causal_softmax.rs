//! CausalSoftmax: causal self-attention's softmax. Row i of every `tokens x tokens` matrix of
//! scores (one per head) becomes probabilities over its first i + 1 entries, the token
//! itself and the earlier ones; the masked entries (j > i) are not read and come out zero (a
//! constant). Shape rule, closed form, forward and backward (docs/counting.md, "Causal
//! self-attention").

use super::ops::{Backward, Kernel, Operation};
use super::scores::{causal_pairs, in_parallel};
use crate::error::Result;
use crate::estimate::{At, counts};
use crate::phases::NodeCounts;
use crate::scalar::{Scalar, exp};
use crate::shape::Shape;

/// A causal softmax over matrices of `tokens x tokens`, resolved.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct CausalSoftmax {
    /// The shape of its input and output: `[..., tokens, tokens]`.
    pub shape: Shape,
}

impl CausalSoftmax {
    /// The shape rule: the last two axes square (`[heads, tokens, tokens]` from `Scores`).
    pub(crate) fn resolve(input: Shape) -> Result<CausalSoftmax, String> {
        match input.dims() {
            [.., a, b] if a == b => Ok(CausalSoftmax { shape: input }),
            _ => Err(format!(
                "causal softmax expects [..., tokens, tokens] (scores), found {input}"
            )),
        }
    }

    /// T, tokens.
    fn tokens(&self) -> usize {
        self.shape.last()
    }

    /// Matrices per example (heads).
    fn matrices(&self) -> usize {
        self.shape.len() / (self.tokens() * self.tokens())
    }

    pub(crate) fn kernel(&self) -> CausalSoftmaxKernel {
        CausalSoftmaxKernel(self.tokens())
    }
}

impl Operation for CausalSoftmax {
    fn kind(&self) -> &'static str {
        "causal_softmax"
    }

    fn output(&self) -> Shape {
        self.shape
    }

    /// Row i is a softmax of n = i + 1 values: over a matrix, P = T (T + 1) / 2 values in T
    /// rows (docs/counting.md, "Causal self-attention").
    fn closed_form(&self, at: At<'_>, name: &str, grads: &[bool]) -> Result<NodeCounts> {
        let t = self.tokens();
        let m = at.b() * self.matrices();
        let p = m * causal_pairs(t); // values computed
        let r = m * t; // rows
        // Per row: max (n - 1 cmp), exp(z - max) (n sub, n exp), their sum (n - 1 add),
        // e / sum (n div), one activation call per value.
        let forward = counts! { at, format!("{name} forward");
            cmp: p - r, sub: p, exp: p, add: p - r, div: p, act: p,
        }?;
        // Per row: s = sum y dy (n mul, n - 1 add); dz = y (dy - s) (n sub, n mul).
        let backward = if grads[0] {
            counts! { at, format!("{name} backward"); mul: p * 2, add: p - r, sub: p }?
        } else {
            Default::default()
        };
        Ok(NodeCounts {
            forward,
            backward,
            ..NodeCounts::default()
        })
    }
}

/// The kernels of a causal softmax, for T tokens; they keep no state.
pub(crate) struct CausalSoftmaxKernel(usize);

impl<S: Scalar> Kernel<S> for CausalSoftmaxKernel {
    /// # Shapes
    /// `x[0]`, `y`: batch x matrices x tokens x tokens.
    fn forward(&mut self, x: &[&[S]], _: &[&[S]], y: &mut [S]) {
        let t = self.0;
        let (per, work) = (matrices_per_part(y.len(), t), y.len() * WORK_PER_VALUE);
        let tasks: Vec<_> = x[0].chunks(per).zip(y.chunks_mut(per)).collect();
        in_parallel(tasks, work, |(z, y)| forward(z, y, t));
    }

    /// `dz = y (dy - sum y dy)` over each row's first i + 1 values; zero beyond.
    ///
    /// # Shapes
    /// `y`, `dy`, `dx[0]`: batch x matrices x tokens x tokens.
    fn backward(&mut self, grads: Backward<'_, S>) {
        let Backward { y, dy, dx, .. } = grads;
        if let Some(dz) = dx[0].as_deref_mut() {
            let t = self.0;
            let per = matrices_per_part(y.len(), t);
            let tasks: Vec<_> = y
                .chunks(per)
                .zip(dy.chunks(per))
                .zip(dz.chunks_mut(per))
                .collect();
            in_parallel(tasks, y.len() * WORK_PER_VALUE, |((y, dy), dz)| {
                backward(y, dy, dz, t);
            });
        }
    }
}

/// Operations per value of a pass, roughly (an `exp` weighs several), to weigh it against a
/// matrix product's multiply-adds when deciding whether to split it among threads.
const WORK_PER_VALUE: usize = 8;

/// Values per thread for `len` values of `t x t` matrices: whole matrices, so that each part's
/// row i of a matrix is row i (at least one matrix).
fn matrices_per_part(len: usize, t: usize) -> usize {
    let matrices = len / (t * t);
    matrices.div_ceil(rayon::current_num_threads()).max(1) * t * t
}

/// Row i of each matrix: a softmax of its first i + 1 values, shifted by their maximum so
/// that `exp` cannot overflow; zeros after them.
#[inline(never)]
fn forward<S: Scalar>(z: &[S], y: &mut [S], t: usize) {
    for (k, (zr, yr)) in z.chunks_exact(t).zip(y.chunks_exact_mut(t)).enumerate() {
        let i = k % t;
        let (seen, masked) = yr.split_at_mut(i + 1);
        let zs = &zr[..=i];
        let max = zs[1..].iter().fold(zs[0], |m, &v| m.max(v));
        for (out, &v) in seen.iter_mut().zip(zs) {
            *out = exp(v - max);
        }
        let mut sum = seen[0];
        for &e in &seen[1..] {
            sum += e;
        }
        for out in seen.iter_mut() {
            S::record_act(); // the call's value is complete here
            *out /= sum;
        }
        masked.fill(S::zero());
    }
}

#[inline(never)]
fn backward<S: Scalar>(y: &[S], dy: &[S], dz: &mut [S], t: usize) {
    let rows = y.chunks_exact(t).zip(dy.chunks_exact(t));
    for (k, ((yr, dyr), dzr)) in rows.zip(dz.chunks_exact_mut(t)).enumerate() {
        let i = k % t;
        let (seen, masked) = dzr.split_at_mut(i + 1);
        let (ys, dys) = (&yr[..=i], &dyr[..=i]);
        let mut s = ys[0] * dys[0];
        for (&a, &b) in ys[1..].iter().zip(&dys[1..]) {
            s += a * b;
        }
        for ((out, &a), &b) in seen.iter_mut().zip(ys).zip(dys) {
            *out = a * (b - s);
        }
        masked.fill(S::zero());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Counted, Counts, tally};

    #[test]
    fn each_row_is_a_softmax_of_itself_and_the_rows_before() {
        // One 3 x 3 matrix; the masked entries hold anything, here 100.
        let z = Counted::vec(&[1.0f64, 100.0, 100.0, 0.0, 2.0, 100.0, 1.0, 1.0, 1.0]);
        let mut y = vec![Counted::new(0.0); 9];
        let ((), counts) = tally::measure(|| forward(&z, &mut y, 3));
        let y = Counted::unwrap_slice(&y);
        let e2 = 2f64.exp();
        let want = [
            1.0,
            0.0,
            0.0,
            1.0 / (1.0 + e2),
            e2 / (1.0 + e2),
            0.0,
            1.0 / 3.0,
            1.0 / 3.0,
            1.0 / 3.0,
        ];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
        // P = 6 values in 3 rows.
        counts.assert_eq(&Counts {
            cmp: 3,
            sub: 6,
            exp: 6,
            add: 3,
            div: 6,
            act: 6,
            ..Counts::ZERO
        });
    }

    /// Matrices shared among threads: the same bits and counts on 1, 2 and 3 threads.
    #[test]
    fn threads_change_no_bit_and_no_count() {
        use crate::nn::ops::step_bits;
        let (matrices, t) = (7, 40);
        let n = matrices * t * t;
        let z: Vec<f64> = (0..n).map(|i| ((i * 7) % 41) as f64 * 0.11 - 2.0).collect();
        let dy: Vec<f64> = (0..n).map(|i| ((i * 5) % 37) as f64 * 0.07 - 1.0).collect();
        let run = || {
            let shape = Shape::new(&[matrices, t, t]).unwrap();
            let mut kernel = CausalSoftmax::resolve(shape).unwrap().kernel();
            step_bits(&mut kernel, &z, &[], &dy)
        };
        tally::assert_same_on_1_2_3_threads(run);
    }
}
