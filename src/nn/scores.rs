//! Scores: causal self-attention's first product. Queries and keys `[tokens, width]` are
//! split into H heads of `d = width / H` features (a free reshape), and head h's score of
//! token i for an earlier-or-same token j is `s[h][i][j] = (q_i . k_j) / sqrt(d)`, over that
//! head's features. Later tokens (j > i) are masked: their scores are not computed, and the
//! output holds minus infinity there (a constant). Shape rule, closed form, forward and
//! backward (docs/counting.md, "Causal self-attention").

use rayon::prelude::*;

use super::gemm::{Start, Strided, gemm, madd};
use super::ops::{Backward, Kernel, Operation};
use super::reduce::constant;
use crate::counts::Counts;
use crate::error::Result;
use crate::estimate::{At, Q, counts, when};
use crate::phases::NodeCounts;
use crate::scalar::Scalar;
use crate::shape::Shape;
use crate::tally;

use super::dense::check_size;

/// Causal attention scores over `heads` heads of `tokens` tokens, resolved.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Scores {
    /// H, heads.
    pub heads: usize,
    /// T, tokens per example.
    pub tokens: usize,
    /// W = H·d, features per token of the queries and keys.
    pub width: usize,
}

impl Scores {
    /// The shape rule: queries and keys of one shape `[tokens, width]`, `width` a multiple
    /// of `heads`; out `[heads, tokens, tokens]`.
    pub(crate) fn resolve(heads: usize, inputs: &[Shape]) -> Result<Scores, String> {
        let (q, k) = match inputs {
            [q, k] => (q, k),
            _ => {
                return Err(format!(
                    "scores expects 2 inputs (queries, keys), found {}",
                    inputs.len()
                ));
            }
        };
        let [tokens, width] = *q.dims() else {
            return Err(format!(
                "scores expects queries of [tokens, width], found {q}"
            ));
        };
        if q != k {
            return Err(format!(
                "scores expects queries and keys of one shape, found {q} and {k}"
            ));
        }
        check_size("heads", heads)?;
        if width % heads != 0 {
            return Err(format!(
                "scores: {heads} heads do not divide a width of {width}"
            ));
        }
        heads
            .checked_mul(tokens)
            .and_then(|n| n.checked_mul(tokens))
            .ok_or_else(|| format!("{heads} heads of {tokens} x {tokens} scores are too many"))?;
        Ok(Scores {
            heads,
            tokens,
            width,
        })
    }

    pub(crate) fn kernel(&self) -> ScoresKernel {
        ScoresKernel(*self)
    }
}

/// The (i, j) pairs with j <= i that a head computes for T tokens, T (T + 1) / 2, as a
/// count.
pub(crate) fn causal_pairs(tokens: usize) -> Q {
    let t = tokens as u128;
    Q(t.checked_mul(t + 1).map(|n| n / 2))
}

impl Operation for Scores {
    fn kind(&self) -> &'static str {
        "scores"
    }

    fn output(&self) -> Shape {
        Shape::new(&[self.heads, self.tokens, self.tokens]).expect("rank 3")
    }

    /// One head's scaled score gradients, T x T, for the backward pass (one buffer per
    /// thread at work, while the backward pass runs).
    fn workspace(&self) -> usize {
        self.tokens * self.tokens
    }

    /// Over the P = T (T + 1) / 2 unmasked pairs of each head (docs/counting.md, "Causal
    /// self-attention"), with d = W / H.
    fn closed_form(&self, at: At<'_>, name: &str, grads: &[bool]) -> Result<NodeCounts> {
        let (h, t, w) = (self.heads, self.tokens, self.width);
        let d = w / h;
        // Every pair of every head of every example.
        let p: Q = at.b() * h * causal_pairs(t);
        // Forward, per pair: a dot product of d features (d mul, d - 1 add), / sqrt(d).
        let forward = counts! { at, format!("{name} forward");
            mul: p * d,
            add: p * (d - 1),
            div: p,
        }?;
        // Backward: g = ds / sqrt(d) per pair, if any gradient is wanted; dq_i = sum over
        // j <= i of g_ij k_j and dk_j = sum over i >= j of g_ij q_i: per head and feature,
        // P products and P - T adds each.
        let (dq, dk) = (grads[0], grads[1]);
        let sums = at.b() * h * (causal_pairs(t) - t);
        let backward = counts! { at, format!("{name} backward");
            div: when(dq || dk, p),
            mul: when(dq, p * d) + when(dk, p * d),
            add: when(dq, sums * d) + when(dk, sums * d),
        }?;
        Ok(NodeCounts {
            forward,
            backward,
            ..NodeCounts::default()
        })
    }
}

/// The kernels of the scores; they keep no state.
pub(crate) struct ScoresKernel(Scores);

impl<S: Scalar> Kernel<S> for ScoresKernel {
    /// # Shapes
    /// `x[0]` (queries), `x[1]` (keys): batch x tokens x width; `s`: batch x heads x tokens x
    /// tokens.
    fn forward(&mut self, x: &[&[S]], _: &[&[S]], s: &mut [S]) {
        let Scores {
            heads,
            tokens,
            width,
        } = self.0;
        forward(x[0], x[1], s, heads, tokens, width);
    }

    /// # Shapes
    /// `ds`: batch x heads x tokens x tokens; `dx[0]`, `dx[1]`: batch x tokens x width.
    fn backward(&mut self, grads: Backward<'_, S>) {
        let Backward { x, dy: ds, dx, .. } = grads;
        let Scores {
            heads,
            tokens,
            width,
        } = self.0;
        let (dq, dk) = dx.split_at_mut(1);
        let (dq, dk) = (dq[0].as_deref_mut(), dk[0].as_deref_mut());
        if dq.is_none() && dk.is_none() {
            return;
        }
        let (t, w, d) = (tokens, width, width / heads);
        let scale = constant::<S>((d as f64).sqrt());
        let examples = ds.len() / (heads * t * t);
        // One example per task: each writes its own rows of dq and dk.
        let mut dq = dq.map(|dq| dq.chunks_exact_mut(t * w).map(Some).collect::<Vec<_>>());
        let mut dk = dk.map(|dk| dk.chunks_exact_mut(t * w).map(Some).collect::<Vec<_>>());
        let tasks: Vec<_> = (0..examples)
            .map(|e| {
                let dqe = dq.as_mut().and_then(|v| v[e].take());
                let dke = dk.as_mut().and_then(|v| v[e].take());
                (e, dqe, dke)
            })
            .collect();
        let work = examples * heads * t * t * d;
        in_parallel(tasks, work, |(e, mut dqe, mut dke)| {
            let (qe, ke) = (&x[0][e * t * w..][..t * w], &x[1][e * t * w..][..t * w]);
            let mut scaled = vec![S::zero(); t * t];
            let mut scratch = Scratch::new(t, d);
            for (h, dsh) in ds[e * heads * t * t..][..heads * t * t]
                .chunks_exact(t * t)
                .enumerate()
            {
                let head = Head::of(h, t, w, d);
                scale_causal(dsh, &mut scaled, t, scale);
                if let Some(dqe) = dqe.as_deref_mut() {
                    causal_rows(&scaled, ke, head, dqe, &mut scratch);
                }
                if let Some(dke) = dke.as_deref_mut() {
                    causal_columns(&scaled, qe, head, dke, &mut scratch);
                }
            }
        });
    }
}

/// `s[h][i][j] = (q_i . k_j) / sqrt(d)` for j <= i, minus infinity for j > i.
fn forward<S: Scalar>(q: &[S], k: &[S], s: &mut [S], heads: usize, t: usize, w: usize) {
    let d = w / heads;
    let scale = constant::<S>((d as f64).sqrt());
    // One head of one example per task.
    let tasks: Vec<_> = s.chunks_exact_mut(t * t).enumerate().collect();
    let work = tasks.len() * t * t * d;
    in_parallel(tasks, work, |(at, sh)| {
        let (e, h) = (at / heads, at % heads);
        let (qe, ke) = (&q[e * t * w..][..t * w], &k[e * t * w..][..t * w]);
        causal_dots(
            qe,
            ke,
            Head::of(h, t, w, d),
            Some(scale),
            sh,
            &mut Scratch::new(t, d),
        );
        mask(sh, t, S::neg_infinity());
    });
}

/// `g_ij = ds_ij / sqrt(d)` for j <= i (the rest is never read).
#[inline(never)]
fn scale_causal<S: Scalar>(ds: &[S], g: &mut [S], t: usize, scale: S) {
    for (i, (row, out)) in ds.chunks_exact(t).zip(g.chunks_exact_mut(t)).enumerate() {
        for (o, &v) in out[..=i].iter_mut().zip(&row[..=i]) {
            *o = v / scale;
        }
    }
}

/// Sets the masked entries (j > i) of a `t x t` matrix to `value`, a constant.
pub(crate) fn mask<S: Scalar>(m: &mut [S], t: usize, value: S) {
    for (i, row) in m.chunks_exact_mut(t).enumerate() {
        row[i + 1..].fill(value);
    }
}

// The causal products of one head, shared with `mix.rs`. A head's T x T matrix is done in
// blocks of `BLOCK` rows: the part left of the block's diagonal square is a matrix product
// (`gemm`), the triangle on the diagonal a loop. Every sum runs in ascending order from its
// first product, each later product added with one fused multiply-add (`madd`, as `gemm`),
// whichever part of a sum falls to which, so the counts are the closed forms' and the bits
// do not depend on the blocking or on the threads.

/// Rows of a causal matrix per block: the diagonal triangles, done by loops, are
/// (BLOCK + 1) / (T + 1) of the pairs.
const BLOCK: usize = 16;

/// Below this many multiply-adds the tasks of a causal operation run on the calling thread.
const PARALLEL_WORK: usize = 1 << 16;

/// A head's place in a `[tokens, width]` value: rows of `w` values, the head's `d` features
/// from column `c0`.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Head {
    t: usize,
    w: usize,
    c0: usize,
    d: usize,
}

impl Head {
    /// Head `h` of `d` features in rows of `w` values, `t` rows.
    pub(crate) fn of(h: usize, t: usize, w: usize, d: usize) -> Head {
        Head { t, w, c0: h * d, d }
    }
}

/// Buffers for one head's causal products: a block of a product's output, and a block of
/// rows transposed.
pub(crate) struct Scratch<S> {
    block: Vec<S>,
    transposed: Vec<S>,
}

impl<S: Scalar> Scratch<S> {
    /// For heads of `t` tokens and `d` features.
    pub(crate) fn new(t: usize, d: usize) -> Scratch<S> {
        Scratch {
            block: vec![S::zero(); BLOCK * t.max(d)],
            transposed: vec![S::zero(); BLOCK * d.max(BLOCK)],
        }
    }
}

/// Runs `task` on every one of `tasks`, on all cores if `work` (multiply-adds) is large: each
/// task is counted on its thread and the counts merged into the caller's tally
/// (`tally::parallel`), so the counts are exact whichever thread runs what.
pub(crate) fn in_parallel<T: Send>(tasks: Vec<T>, work: usize, task: impl Fn(T) + Sync) {
    if tasks.len() < 2 || work < PARALLEL_WORK || rayon::current_num_threads() == 1 {
        tasks.into_iter().for_each(task);
        return;
    }
    tally::parallel(|| {
        let counts: Vec<Counts> = tasks
            .into_par_iter()
            .map(|t| tally::take(|| task(t)).1)
            .collect();
        ((), counts.into_iter().sum())
    });
}

/// `out[i][j] = a_i . b_j` over the head's features for j <= i (`/ scale` if given), each a
/// sum from its first product; `out` is `t x t`, its entries j > i left as they are.
pub(crate) fn causal_dots<S: Scalar>(
    a: &[S],
    b: &[S],
    head: Head,
    scale: Option<S>,
    out: &mut [S],
    scratch: &mut Scratch<S>,
) {
    let Head { t, w, c0, d } = head;
    for i0 in (0..t).step_by(BLOCK) {
        let n = BLOCK.min(t - i0);
        if i0 > 0 {
            // Rows i0.. against the columns j < i0: a_i . b_j as (A B^T)[i][j].
            let block = &mut scratch.block[..n * i0];
            let rows = Strided {
                data: &a[i0 * w + c0..],
                row_stride: w,
                col_stride: 1,
            };
            let columns = Strided {
                data: &b[c0..],
                row_stride: 1,
                col_stride: w,
            };
            gemm((n, i0, d), &rows, &columns, Start::FirstProduct, block);
            for (row, sums) in out[i0 * t..]
                .chunks_exact_mut(t)
                .zip(block.chunks_exact(i0))
            {
                finish(sums, &mut row[..i0], scale);
            }
        }
        let (a, b) = (&a[i0 * w + c0..], &b[i0 * w + c0..]);
        let t_block = &mut scratch.transposed[..d * BLOCK];
        for (jj, bj) in b.chunks(w).take(n).enumerate() {
            for (f, &v) in bj[..d].iter().enumerate() {
                t_block[((jj / LANES) * d + f) * LANES + jj % LANES] = v;
            }
        }
        diagonal_dots(a, t_block, (n, w, d), &mut out[i0 * t + i0..], t);
        if let Some(scale) = scale {
            for (ii, row) in out[i0 * t + i0..].chunks_mut(t).take(n).enumerate() {
                finish_in_place(&mut row[..=ii], scale);
            }
        }
    }
}

/// `out = sums / scale` (or the sums themselves).
#[inline(never)]
fn finish<S: Scalar>(sums: &[S], out: &mut [S], scale: Option<S>) {
    match scale {
        Some(scale) => {
            for (o, &v) in out.iter_mut().zip(sums) {
                *o = v / scale;
            }
        }
        None => out.copy_from_slice(sums),
    }
}

#[inline(never)]
fn finish_in_place<S: Scalar>(out: &mut [S], scale: S) {
    for o in out {
        *o /= scale;
    }
}

/// Pairs a diagonal triangle's loop computes side by side.
const LANES: usize = 8;

/// The triangle on a block's diagonal: `out[ii][jj] = a_ii . b_jj` for jj <= ii < n, with
/// `bt` holding the block's rows of b transposed, `LANES` rows at a time (feature f of row
/// jj at `((jj / LANES) * d + f) * LANES + jj % LANES`), so that a row's sums advance
/// `LANES` side by side, a feature at a time. `out`'s rows are `t` apart.
#[inline(never)]
fn diagonal_dots<S: Scalar>(
    a: &[S],
    bt: &[S],
    (n, w, d): (usize, usize, usize),
    out: &mut [S],
    t: usize,
) {
    // Iterators only, zipped to the shorter side: nothing in the inner loops can panic, so
    // the counters stay in registers (see `gemm`'s tiles).
    let (panels, _) = bt.as_chunks::<LANES>();
    for (ii, (ai, row)) in a.chunks(w).zip(out.chunks_mut(t)).take(n).enumerate() {
        let Some(sums) = row.get_mut(..=ii) else {
            break;
        };
        let ai = ai.get(..d).unwrap_or(ai);
        let (whole, rest) = sums.as_chunks_mut::<LANES>();
        let mut panel = panels.chunks(d);
        for (out, bp) in whole.iter_mut().zip(panel.by_ref()) {
            let mut acc = [S::zero(); LANES];
            let mut features = ai.iter().zip(bp);
            if let Some((&a0, b0)) = features.next() {
                for (s, &bv) in acc.iter_mut().zip(b0) {
                    *s = a0 * bv;
                }
            }
            for (&af, bf) in features {
                for (s, &bv) in acc.iter_mut().zip(bf) {
                    *s = madd(*s, af, bv);
                }
            }
            *out = acc;
        }
        if let Some(bp) = panel.next()
            && !rest.is_empty()
        {
            let mut features = ai.iter().zip(bp);
            if let Some((&a0, b0)) = features.next() {
                for (s, &bv) in rest.iter_mut().zip(b0) {
                    *s = a0 * bv;
                }
            }
            for (&af, bf) in features {
                for (s, &bv) in rest.iter_mut().zip(bf) {
                    *s = madd(*s, af, bv);
                }
            }
        }
    }
}

/// `out_i = sum over j <= i of l_ij x_j` over the head's features, from j = 0: `l` is `t x
/// t` (entries j > i not read), `x` and `out` rows of the head's value.
pub(crate) fn causal_rows<S: Scalar>(
    l: &[S],
    x: &[S],
    head: Head,
    out: &mut [S],
    scratch: &mut Scratch<S>,
) {
    let Head { t, w, c0, d } = head;
    for i0 in (0..t).step_by(BLOCK) {
        let n = BLOCK.min(t - i0);
        let block = &mut scratch.block[..n * d];
        if i0 > 0 {
            // The terms j < i0: rows i0.. of l against the rows of x before them.
            let rows = Strided {
                data: &l[i0 * t..],
                row_stride: t,
                col_stride: 1,
            };
            let values = Strided {
                data: &x[c0..],
                row_stride: w,
                col_stride: 1,
            };
            gemm((n, d, i0), &rows, &values, Start::FirstProduct, block);
        }
        let (l, x) = (&l[i0 * t + i0..], &x[i0 * w + c0..]);
        diagonal_rows(l, x, (n, t, w, d), i0 == 0, block);
        to_head(block, &mut out[i0 * w + c0..], w, d);
    }
}

/// Continues the sums `block[ii] += l[ii][jj] x[jj]` for jj <= ii < n (from the first term
/// if `fresh`).
#[inline(never)]
fn diagonal_rows<S: Scalar>(
    l: &[S],
    x: &[S],
    (n, t, w, d): (usize, usize, usize, usize),
    fresh: bool,
    block: &mut [S],
) {
    // As in `diagonal_dots`, nothing in the loops can panic.
    for (ii, (sums, lrow)) in block
        .chunks_exact_mut(d)
        .zip(l.chunks(t))
        .take(n)
        .enumerate()
    {
        let mut terms = lrow.iter().take(ii + 1).zip(x.chunks(w));
        if fresh && let Some((&l0, x0)) = terms.next() {
            for (s, &v) in sums.iter_mut().zip(x0) {
                *s = l0 * v;
            }
        }
        for (&lj, xj) in terms {
            for (s, &v) in sums.iter_mut().zip(xj) {
                *s = madd(*s, lj, v);
            }
        }
    }
}

/// `out_j = sum over i >= j of l_ij x_i` over the head's features, from i = j: `l` is `t x
/// t` (entries j > i not read), `x` and `out` rows of the head's value.
pub(crate) fn causal_columns<S: Scalar>(
    l: &[S],
    x: &[S],
    head: Head,
    out: &mut [S],
    scratch: &mut Scratch<S>,
) {
    let Head { t, w, c0, d } = head;
    for j0 in (0..t).step_by(BLOCK) {
        let (n, j1) = (BLOCK.min(t - j0), (j0 + BLOCK).min(t));
        let lt = &mut scratch.transposed[..BLOCK * BLOCK];
        for (ii, row) in l[j0 * t + j0..].chunks(t).take(n).enumerate() {
            for (jj, &v) in row[..=ii].iter().enumerate() {
                lt[jj * BLOCK + ii] = v;
            }
        }
        let block = &mut scratch.block[..n * d];
        diagonal_columns(lt, &x[j0 * w + c0..], (n, w, d), block);
        if j1 < t {
            // The terms i >= j1: column j of l below the block, against those rows of x.
            let columns = Strided {
                data: &l[j1 * t + j0..],
                row_stride: 1,
                col_stride: t,
            };
            let values = Strided {
                data: &x[j1 * w + c0..],
                row_stride: w,
                col_stride: 1,
            };
            gemm((n, d, t - j1), &columns, &values, Start::Existing, block);
        }
        to_head(block, &mut out[j0 * w + c0..], w, d);
    }
}

/// Starts the sums `block[jj] = sum over jj <= ii < n of l[ii][jj] x[ii]`, with `lt` holding
/// the block's square of `l` transposed (`l[ii][jj]` at `jj * BLOCK + ii`).
#[inline(never)]
fn diagonal_columns<S: Scalar>(
    lt: &[S],
    x: &[S],
    (n, w, d): (usize, usize, usize),
    block: &mut [S],
) {
    // As in `diagonal_dots`, nothing in the loops can panic.
    for (jj, (sums, lcol)) in block
        .chunks_exact_mut(d)
        .zip(lt.chunks_exact(BLOCK))
        .enumerate()
    {
        let (Some(lcol), Some(x)) = (lcol.get(jj..n), x.get(jj * w..)) else {
            break;
        };
        let mut terms = lcol.iter().zip(x.chunks(w));
        if let Some((&l0, x0)) = terms.next() {
            for (s, &v) in sums.iter_mut().zip(x0) {
                *s = l0 * v;
            }
        }
        for (&li, xi) in terms {
            for (s, &v) in sums.iter_mut().zip(xi) {
                *s = madd(*s, li, v);
            }
        }
    }
}

/// Copies a block of rows of `d` values into the head's columns of rows `w` apart.
fn to_head<S: Copy>(block: &[S], out: &mut [S], w: usize, d: usize) {
    for (row, sums) in out.chunks_mut(w).zip(block.chunks_exact(d)) {
        row[..d].copy_from_slice(sums);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::ops::Backward;
    use crate::{Counted, Counts, tally};

    #[test]
    fn scores_are_scaled_dot_products_of_earlier_tokens_only() {
        // One head of d = 4, three tokens.
        let q: Vec<f64> = (0..12).map(|v| v as f64 * 0.5).collect();
        let k: Vec<f64> = (0..12).map(|v| 1.0 - v as f64 * 0.25).collect();
        let (qc, kc) = (Counted::vec(&q), Counted::vec(&k));
        let mut s = vec![Counted::new(0.0); 9];
        let ((), counts) = tally::measure(|| forward(&qc, &kc, &mut s, 1, 3, 4));
        let s = Counted::unwrap_slice(&s);
        for i in 0..3 {
            for j in 0..3 {
                let want = if j <= i {
                    (0..4).map(|f| q[i * 4 + f] * k[j * 4 + f]).sum::<f64>() / 2.0
                } else {
                    f64::NEG_INFINITY
                };
                assert!(s[i * 3 + j] == want || (s[i * 3 + j] - want).abs() < 1e-12);
            }
        }
        // 6 pairs: 4 mul, 3 add, 1 div each.
        counts.assert_eq(&Counts {
            mul: 24,
            add: 18,
            div: 6,
            ..Counts::ZERO
        });
        assert_eq!(causal_pairs(3).0, Some(6));
    }

    /// `sum_k a(k) b(k)` over `ks` in order, from the first product, each later one added
    /// with one rounding (fused, as the kernels do here) or two.
    fn sum_of(
        ks: impl Iterator<Item = usize>,
        a: impl Fn(usize) -> f64,
        b: impl Fn(usize) -> f64,
    ) -> f64 {
        let fused = crate::nn::gemm::fuses();
        let mut ks = ks;
        let k0 = ks.next().unwrap();
        ks.fold(a(k0) * b(k0), |acc, k| {
            if fused {
                a(k).mul_add(b(k), acc)
            } else {
                acc + a(k) * b(k)
            }
        })
    }

    fn values(n: usize, seed: usize) -> Vec<f64> {
        (0..n)
            .map(|i| ((i * 7 + seed) % 31) as f64 * 0.13 - 1.9)
            .collect()
    }

    fn bits(v: &[Counted<f64>]) -> Vec<u64> {
        v.iter().map(|v| v.get().to_bits()).collect()
    }

    /// Scores and Mix forward and backward, through their kernels, on one thread and on all:
    /// against the definition (every sum from its first term, in ascending order), bit for
    /// bit, with the closed forms' counts; tokens below, at and past a block of rows.
    #[test]
    fn attention_products_match_the_definition_bit_for_bit_with_exact_counts() {
        use crate::nn::mix::Mix;
        for (b, heads, t, d) in [(1, 1, 3, 4), (2, 3, 16, 5), (3, 2, 37, 8), (1, 2, 70, 3)] {
            let w = heads * d;
            let (q, k) = (values(b * t * w, 1), values(b * t * w, 2));
            let (ds, dout) = (values(b * heads * t * t, 3), values(b * t * w, 4));
            let p = values(b * heads * t * t, 5);
            let scale = (d as f64).sqrt();
            let run = || {
                let (cq, ck, cds) = (Counted::vec(&q), Counted::vec(&k), Counted::vec(&ds));
                let (cp, cdo) = (Counted::vec(&p), Counted::vec(&dout));
                let scores = Scores {
                    heads,
                    tokens: t,
                    width: w,
                };
                let mix = Mix {
                    heads,
                    tokens: t,
                    width: w,
                };
                let mut s = vec![Counted::new(0.0); b * heads * t * t];
                let mut dq = vec![Counted::new(0.0); b * t * w];
                let mut dk = vec![Counted::new(0.0); b * t * w];
                let mut o = vec![Counted::new(0.0); b * t * w];
                let mut dp = vec![Counted::new(0.0); b * heads * t * t];
                let mut dv = vec![Counted::new(0.0); b * t * w];
                let ((), counts) = tally::measure(|| {
                    let mut kernel = scores.kernel();
                    kernel.forward(&[&cq, &ck], &[], &mut s);
                    kernel.backward(Backward {
                        x: &[&cq, &ck],
                        y: &s,
                        dy: &cds,
                        params: &[],
                        dparams: &mut [],
                        dx: &mut [Some(&mut dq), Some(&mut dk)],
                    });
                    let mut kernel = mix.kernel();
                    kernel.forward(&[&cp, &cq], &[], &mut o);
                    kernel.backward(Backward {
                        x: &[&cp, &cq],
                        y: &o,
                        dy: &cdo,
                        params: &[],
                        dparams: &mut [],
                        dx: &mut [Some(&mut dp), Some(&mut dv)],
                    });
                });
                ([s, dq, dk, o, dp, dv].map(|v| bits(&v)), counts)
            };
            let one = rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .unwrap();
            let (got, counts) = run();
            let (alone, counts_alone) = one.install(run);
            assert_eq!(got, alone, "{b} x {heads} x {t} x {d}: threads change bits");
            assert_eq!(counts, counts_alone);
            // The definition, element by element.
            let tok = |m: &[f64], e: usize, i: usize, h: usize| {
                let base = e * t * w + i * w + h * d;
                m[base..base + d].to_vec()
            };
            let pair = |m: &[f64], e: usize, h: usize, i: usize, j: usize| {
                m[((e * heads + h) * t + i) * t + j]
            };
            let mut want: [Vec<f64>; 6] = Default::default();
            want[0] = vec![0.0; b * heads * t * t];
            want[4] = vec![0.0; b * heads * t * t];
            for v in &mut want[1..4] {
                *v = vec![0.0; b * t * w];
            }
            want[5] = vec![0.0; b * t * w];
            for e in 0..b {
                for h in 0..heads {
                    for i in 0..t {
                        for j in 0..t {
                            let at = ((e * heads + h) * t + i) * t + j;
                            if j > i {
                                want[0][at] = f64::NEG_INFINITY;
                                continue;
                            }
                            let (qi, kj) = (tok(&q, e, i, h), tok(&k, e, j, h));
                            want[0][at] = sum_of(0..d, |f| qi[f], |f| kj[f]) / scale;
                            let (doi, vj) = (tok(&dout, e, i, h), tok(&q, e, j, h));
                            want[4][at] = sum_of(0..d, |f| doi[f], |f| vj[f]);
                        }
                        for f in 0..d {
                            let at = e * t * w + i * w + h * d + f;
                            let g = |i: usize, j: usize| pair(&ds, e, h, i, j) / scale;
                            let col = |m: &[f64], r: usize| m[e * t * w + r * w + h * d + f];
                            want[1][at] = sum_of(0..=i, |j| g(i, j), |j| col(&k, j));
                            want[2][at] = sum_of(i..t, |r| g(r, i), |r| col(&q, r));
                            let pp = |i: usize, j: usize| pair(&p, e, h, i, j);
                            want[3][at] = sum_of(0..=i, |j| pp(i, j), |j| col(&q, j));
                            want[5][at] = sum_of(i..t, |r| pp(r, i), |r| col(&dout, r));
                        }
                    }
                }
            }
            for (n, (got, want)) in got.iter().zip(&want).enumerate() {
                let want: Vec<u64> = want.iter().map(|v| v.to_bits()).collect();
                assert_eq!(got, &want, "{b} x {heads} x {t} x {d}: output {n}");
            }
            // Per head: Scores d P mul, (d - 1) P add, P div forward; P div and twice d P
            // mul, d (P - T) add backward. Mix: d P mul, d (P - T) add forward; d P mul,
            // (d - 1) P add and d P mul, d (P - T) add backward.
            let pairs = (t * (t + 1) / 2) as u128;
            let (n, d, t) = ((b * heads) as u128, d as u128, t as u128);
            counts.assert_eq(&Counts {
                mul: n * 6 * d * pairs,
                add: n * ((d - 1) * pairs * 2 + d * (pairs - t) * 4),
                div: n * 2 * pairs,
                ..Counts::ZERO
            });
        }
    }
}
