//! LayerNorm: every row of the last axis (one per token of a `[tokens, width]` value, one per
//! example of a flat one) normalised by its own mean and variance, then scaled and shifted by
//! learnable `gamma` and `beta`, one of each per feature:
//! `y_i = gamma_i (x_i - mean) / sqrt(var + eps) + beta_i`, with the biased variance
//! `var = sum_i (x_i - mean)^2 / D`, as PyTorch's `LayerNorm` and GPT-2. Shape rule, closed
//! form, forward and backward (docs/counting.md, "LayerNorm").

use super::ops::{Backward, Kernel, Operation, ParamSpec};
use super::reduce::{constant, dot, sum};
use super::scores::in_parallel;
use crate::error::Result;
use crate::estimate::{At, Q, counts, q, when};
use crate::phases::NodeCounts;
use crate::scalar::Scalar;
use crate::shape::Shape;

/// What is added to the variance before its square root (PyTorch's default, and GPT-2's).
const EPS: f64 = 1e-5;

/// LayerNorm, resolved: the shape it normalises, row by row of its last axis.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct LayerNorm {
    /// The shape of its input and output.
    pub shape: Shape,
}

impl LayerNorm {
    /// The shape rule: any value; its last axis holds the D features of each row.
    pub(crate) fn resolve(input: Shape) -> LayerNorm {
        LayerNorm { shape: input }
    }

    /// D, features per row.
    fn width(&self) -> usize {
        self.shape.last()
    }

    /// R, rows per example.
    fn rows(&self) -> usize {
        self.shape.len() / self.width()
    }

    pub(crate) fn kernel<S: Scalar>(&self) -> LayerNormKernel<S> {
        LayerNormKernel {
            width: self.width(),
            normalized: Vec::new(),
            inv: Vec::new(),
        }
    }
}

impl Operation for LayerNorm {
    fn kind(&self) -> &'static str {
        "layernorm"
    }

    fn output(&self) -> Shape {
        self.shape
    }

    /// `gamma` (starting at one), then `beta` (at zero): one per feature.
    fn params(&self) -> Vec<ParamSpec> {
        let d = self.width();
        ParamSpec::scale_and_shift(d)
    }

    fn param_names(&self) -> &'static [&'static str] {
        &["gamma", "beta"]
    }

    fn explain_param(&self, index: usize) -> String {
        let what = ["gamma", "beta"][index.min(1)];
        format!("{} features' {what}", self.width())
    }

    /// The normalised input, and each row's `1 / sqrt(var + eps)`.
    fn kept(&self) -> usize {
        self.shape.len() + self.rows()
    }

    /// Per row of D features, over the B·R rows of a batch (docs/counting.md, "LayerNorm").
    fn closed_form(&self, at: At<'_>, name: &str, grads: &[bool]) -> Result<NodeCounts> {
        let d = self.width();
        let rows: Q = at.b() * self.rows();
        // mean: D - 1 add, 1 div; c = x - mean: D sub; var: D mul, D - 1 add, 1 div;
        // inv = 1 / sqrt(var + eps): 1 add, 1 sqrt, 1 div; xhat = c inv: D mul;
        // y = xhat gamma + beta: D mul, D add.
        let forward = counts! { at, format!("{name} forward");
            add: rows * (q(d - 1) * 2 + 1 + d),
            sub: rows * d,
            mul: rows * (d * 3),
            div: rows * 3,
            sqrt: rows,
        }?;
        // dgamma_i = sum over rows of dy xhat (B·R products, B·R - 1 adds per feature);
        // dbeta_i = sum over rows of dy (B·R - 1 adds per feature). With the input's
        // gradient, per row: g = gamma dy (D mul); m1 = sum g / D (D - 1 add, 1 div);
        // m2 = sum g xhat / D (D mul, D - 1 add, 1 div); dx = inv ((g - m1) - xhat m2)
        // (2 mul, 2 sub per feature).
        let dx = grads[0];
        let backward = counts! { at, format!("{name} backward");
            mul: rows * d + when(dx, rows * (d * 4)),
            add: (rows - 1) * (d * 2) + when(dx, rows * (q(d - 1) * 2)),
            sub: when(dx, rows * (d * 2)),
            div: when(dx, rows * 2),
        }?;
        // SGD on gamma and beta: 1 mul, 1 sub each.
        let update = counts! { at, format!("{name} update"); mul: q(d) * 2, sub: q(d) * 2 }?;
        Ok(NodeCounts {
            forward,
            backward,
            update,
        })
    }
}

/// LayerNorm's kernels keep each value's normalised form and each row's `1 / sqrt(var +
/// eps)` from the forward pass for the backward pass.
pub(crate) struct LayerNormKernel<S> {
    width: usize,
    normalized: Vec<S>,
    inv: Vec<S>,
}

impl<S: Scalar> Kernel<S> for LayerNormKernel<S> {
    /// # Shapes
    /// `x[0]`, `y`: batch x rows x D; `params`: gamma and beta, D each.
    fn forward(&mut self, x: &[&[S]], params: &[&[S]], y: &mut [S]) {
        let d = self.width;
        self.normalized.resize(y.len(), S::zero());
        self.inv.resize(y.len() / d, S::zero());
        let (gamma, beta) = (params[0], params[1]);
        // A range of rows per thread.
        let (per, work) = (rows_per_part(y.len() / d), y.len() * WORK_PER_VALUE);
        let tasks: Vec<_> = x[0]
            .chunks(per * d)
            .zip(y.chunks_mut(per * d))
            .zip(self.normalized.chunks_mut(per * d))
            .zip(self.inv.chunks_mut(per))
            .collect();
        in_parallel(tasks, work, |(((x, y), h), inv)| {
            forward(x, gamma, beta, y, h, inv, d);
        });
    }

    /// # Shapes
    /// `dy`, `dx[0]`: batch x rows x D; `dparams`: dgamma and dbeta, D each.
    fn backward(&mut self, grads: Backward<'_, S>) {
        let Backward {
            dy,
            params,
            dparams,
            dx,
            ..
        } = grads;
        let d = self.width;
        let work = dy.len() * WORK_PER_VALUE;
        let (dgamma, dbeta) = dparams.split_at_mut(1);
        // A range of features per thread, each sum over every row.
        let per = d
            .div_ceil(rayon::current_num_threads())
            .next_multiple_of(16);
        let tasks: Vec<_> = dgamma[0]
            .chunks_mut(per)
            .zip(dbeta[0].chunks_mut(per))
            .enumerate()
            .collect();
        let normalized = &self.normalized;
        in_parallel(tasks, work, |(p, (dg, db))| {
            param_grads(&dy[p * per..], &normalized[p * per..], d, dg, db);
        });
        if let Some(dx) = dx[0].as_deref_mut() {
            let per = rows_per_part(dy.len() / d);
            let tasks: Vec<_> = dy
                .chunks(per * d)
                .zip(self.normalized.chunks(per * d))
                .zip(self.inv.chunks(per))
                .zip(dx.chunks_mut(per * d))
                .collect();
            in_parallel(tasks, work, |(((dy, h), inv), dx)| {
                input_grads(dy, h, inv, params[0], dx, d);
            });
        }
    }
}

/// Operations per value of a LayerNorm pass, roughly, to weigh it against a matrix product's
/// multiply-adds when deciding whether to split it among threads.
const WORK_PER_VALUE: usize = 8;

/// Rows per thread for `rows` rows (at least one).
fn rows_per_part(rows: usize) -> usize {
    rows.div_ceil(rayon::current_num_threads()).max(1)
}

/// Per row: mean and variance, `xhat = (x - mean) inv` into `normalized`, `inv = 1 /
/// sqrt(var + eps)` into `inv`, and `y = xhat gamma + beta`. Every sum from its first term,
/// the sums of [`SIDE`] rows side by side.
#[inline(never)]
fn forward<S: Scalar>(
    x: &[S],
    gamma: &[S],
    beta: &[S],
    y: &mut [S],
    normalized: &mut [S],
    inv: &mut [S],
    d: usize,
) {
    let (n, eps) = (constant::<S>(d as f64), constant::<S>(EPS));
    let blocks = x
        .chunks(SIDE * d)
        .zip(y.chunks_mut(SIDE * d))
        .zip(normalized.chunks_mut(SIDE * d))
        .zip(inv.chunks_mut(SIDE));
    for (((xb, yb), hb), ib) in blocks {
        let sums = row_sums(xb, d);
        for ((xr, hr), &total) in xb.chunks_exact(d).zip(hb.chunks_exact_mut(d)).zip(&sums) {
            let mean = total / n;
            for (h, &v) in hr.iter_mut().zip(xr) {
                *h = v - mean;
            }
        }
        let squares = row_dots(hb, hb, d);
        let rows = hb.chunks_exact_mut(d).zip(yb.chunks_exact_mut(d));
        for ((hr, yr), (inv, &square)) in rows.zip(ib.iter_mut().zip(&squares)) {
            let var = square / n;
            let r = S::one() / (var + eps).sqrt();
            *inv = r;
            for ((h, out), (&g, &b)) in hr.iter_mut().zip(yr).zip(gamma.iter().zip(beta)) {
                *h *= r;
                *out = *h * g + b;
            }
        }
    }
}

/// Rows whose sums run side by side: one row's sum is a chain of dependent adds, which
/// leaves the adders idle most of the time; several rows' chains at once keep them busy.
/// Each sum still runs in its own order, from its first term.
const SIDE: usize = 8;

/// The sum of each row of `block` (rows of `d` values, at most [`SIDE`] of them), from its
/// first value; entries past the last row are zero (not sums).
fn row_sums<S: Scalar>(block: &[S], d: usize) -> [S; SIDE] {
    if block.len() == SIDE * d {
        return sums_side_by_side(block, d);
    }
    let mut sums = [S::zero(); SIDE];
    for (s, row) in sums.iter_mut().zip(block.chunks_exact(d)) {
        *s = sum(row);
    }
    sums
}

/// The dot product of each row of `a` with the same row of `b` (as [`row_sums`]), from the
/// first product, each later one added after its own rounding (as `reduce::dot`).
fn row_dots<S: Scalar>(a: &[S], b: &[S], d: usize) -> [S; SIDE] {
    if a.len() == SIDE * d && b.len() == SIDE * d {
        return dots_side_by_side(a, b, d);
    }
    let mut sums = [S::zero(); SIDE];
    for (s, (ar, br)) in sums
        .iter_mut()
        .zip(a.chunks_exact(d).zip(b.chunks_exact(d)))
    {
        *s = dot(ar, br);
    }
    sums
}

/// [`SIDE`] rows of `d` values, one after another, as slices.
fn split_rows<S>(block: &[S], d: usize) -> [&[S]; SIDE] {
    let mut rows = block.chunks_exact(d);
    std::array::from_fn(|_| rows.next().unwrap_or_default())
}

/// [`row_sums`] of exactly [`SIDE`] rows. The loop is zipped iterators, so it cannot panic
/// and the counters stay in registers.
#[inline(never)]
fn sums_side_by_side<S: Scalar>(block: &[S], d: usize) -> [S; SIDE] {
    let [r0, r1, r2, r3, r4, r5, r6, r7] = split_rows(block, d);
    let mut acc = [S::zero(); SIDE];
    let columns = r0.iter().zip(r1).zip(r2).zip(r3);
    let columns = columns.zip(r4.iter().zip(r5).zip(r6).zip(r7));
    let mut columns = columns.map(|((((&v0, &v1), &v2), &v3), (((&v4, &v5), &v6), &v7))| {
        [v0, v1, v2, v3, v4, v5, v6, v7]
    });
    if let Some(first) = columns.next() {
        acc = first;
    }
    for column in columns {
        for (s, v) in acc.iter_mut().zip(column) {
            *s += v;
        }
    }
    acc
}

/// [`row_dots`] of exactly [`SIDE`] rows, as [`sums_side_by_side`].
#[inline(never)]
fn dots_side_by_side<S: Scalar>(a: &[S], b: &[S], d: usize) -> [S; SIDE] {
    let [a0, a1, a2, a3, a4, a5, a6, a7] = split_rows(a, d);
    let [b0, b1, b2, b3, b4, b5, b6, b7] = split_rows(b, d);
    let mut acc = [S::zero(); SIDE];
    let left = a0.iter().zip(a1).zip(a2).zip(a3);
    let left = left.zip(a4.iter().zip(a5).zip(a6).zip(a7));
    let right = b0.iter().zip(b1).zip(b2).zip(b3);
    let right = right.zip(b4.iter().zip(b5).zip(b6).zip(b7));
    let flat = |((((&v0, &v1), &v2), &v3), (((&v4, &v5), &v6), &v7)): (_, _)| {
        [v0, v1, v2, v3, v4, v5, v6, v7]
    };
    let mut columns = left.map(flat).zip(right.map(flat));
    if let Some((x, y)) = columns.next() {
        for ((s, x), y) in acc.iter_mut().zip(x).zip(y) {
            *s = x * y;
        }
    }
    for (x, y) in columns {
        for ((s, x), y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    acc
}

/// `dgamma_i = sum over rows of dy xhat`, `dbeta_i = sum over rows of dy`, each from the
/// first row, for the features of `dgamma` and `dbeta`: `dy` and `normalized` start at the
/// first of them, rows `d` apart.
#[inline(never)]
fn param_grads<S: Scalar>(dy: &[S], normalized: &[S], d: usize, dgamma: &mut [S], dbeta: &mut [S]) {
    let mut rows = dy.chunks(d).zip(normalized.chunks(d));
    if let Some((g, h)) = rows.next() {
        for (((dg, db), &g), &h) in dgamma.iter_mut().zip(dbeta.iter_mut()).zip(g).zip(h) {
            *dg = g * h;
            *db = g;
        }
    }
    for (g, h) in rows {
        for (((dg, db), &g), &h) in dgamma.iter_mut().zip(dbeta.iter_mut()).zip(g).zip(h) {
            *dg += g * h;
            *db += g;
        }
    }
}

/// Per row: `g = gamma dy`, `m1 = sum g / D`, `m2 = sum g xhat / D`, then
/// `dx = inv ((g - m1) - xhat m2)`. `dx` holds `g` until it is overwritten. The sums of
/// [`SIDE`] rows side by side, each in its own order.
#[inline(never)]
fn input_grads<S: Scalar>(
    dy: &[S],
    normalized: &[S],
    inv: &[S],
    gamma: &[S],
    dx: &mut [S],
    d: usize,
) {
    let n = constant::<S>(d as f64);
    let blocks = dy
        .chunks(SIDE * d)
        .zip(normalized.chunks(SIDE * d))
        .zip(dx.chunks_mut(SIDE * d))
        .zip(inv.chunks(SIDE));
    for (((dyb, hb), dxb), ib) in blocks {
        for (dxr, dyr) in dxb.chunks_exact_mut(d).zip(dyb.chunks_exact(d)) {
            for ((g, &dyv), &gm) in dxr.iter_mut().zip(dyr).zip(gamma) {
                *g = gm * dyv;
            }
        }
        let (m1, m2) = (row_sums(dxb, d), row_dots(dxb, hb, d));
        let rows = dxb.chunks_exact_mut(d).zip(hb.chunks_exact(d));
        for ((dxr, hr), ((&r, &m1), &m2)) in rows.zip(ib.iter().zip(&m1).zip(&m2)) {
            let (m1, m2) = (m1 / n, m2 / n);
            for (g, &h) in dxr.iter_mut().zip(hr) {
                *g = r * ((*g - m1) - h * m2);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Counted, Counts, tally};

    /// One row of four values against the definition, computed in plain f64 by hand.
    #[test]
    fn normalises_a_row_by_its_mean_and_biased_variance() {
        let x = [1.0f64, 2.0, 4.0, 9.0];
        // mean 4, deviations -3 -2 0 5, variance (9 + 4 + 0 + 25) / 4 = 9.5.
        let inv = 1.0 / (9.5f64 + 1e-5).sqrt();
        let (gamma, beta) = ([1.0, 2.0, 0.5, -1.0], [0.0, 0.1, 0.2, 0.3]);
        let expected: Vec<f64> = [-3.0, -2.0, 0.0, 5.0]
            .iter()
            .zip(gamma.iter().zip(&beta))
            .map(|(c, (g, b))| c * inv * g + b)
            .collect();
        let xs = Counted::vec(&x);
        let (g, b) = (Counted::vec(&gamma), Counted::vec(&beta));
        let mut y = vec![Counted::new(0.0); 4];
        let (mut h, mut r) = (vec![Counted::new(0.0); 4], vec![Counted::new(0.0); 1]);
        let ((), counts) = tally::measure(|| forward(&xs, &g, &b, &mut y, &mut h, &mut r, 4));
        for (got, want) in Counted::unwrap_slice(&y).iter().zip(&expected) {
            assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        }
        // One row of D = 4 (docs/counting.md): 3D - 1 add, D sub, 3D mul, 3 div, 1 sqrt.
        counts.assert_eq(&Counts {
            add: 11,
            sub: 4,
            mul: 12,
            div: 3,
            sqrt: 1,
            ..Counts::ZERO
        });
    }

    /// Rows summed side by side give each row's own bits and counts: against one row at a
    /// time (every sum from its first term, as `reduce` sums), for whole groups of rows and
    /// a group cut short.
    #[test]
    fn rows_side_by_side_match_one_row_at_a_time() {
        for (rows, d) in [(19, 5), (8, 1), (3, 7), (16, 128)] {
            let value = |i: usize, m: usize| ((i * m) % 43) as f64 * 0.09 - 1.7;
            let x: Vec<_> = (0..rows * d).map(|i| Counted::new(value(i, 7))).collect();
            let dy: Vec<_> = (0..rows * d).map(|i| Counted::new(value(i, 5))).collect();
            let gamma: Vec<_> = (0..d).map(|i| Counted::new(1.0 + value(i, 3))).collect();
            let beta: Vec<_> = (0..d).map(|i| Counted::new(value(i, 11))).collect();
            let zeros = |n: usize| vec![Counted::new(0.0f64); n];
            let (mut y, mut h, mut inv, mut dx) = (
                zeros(rows * d),
                zeros(rows * d),
                zeros(rows),
                zeros(rows * d),
            );
            let ((), counts) = tally::measure(|| {
                forward(&x, &gamma, &beta, &mut y, &mut h, &mut inv, d);
                input_grads(&dy, &h, &inv, &gamma, &mut dx, d);
            });
            // One row at a time.
            let (n, eps) = (Counted::new(d as f64), Counted::new(EPS));
            let (mut want, mut want_dx) = (zeros(rows * d), zeros(rows * d));
            let ((), want_counts) = tally::measure(|| {
                for r in 0..rows {
                    let xr = &x[r * d..][..d];
                    let mean = sum(xr) / n;
                    let hr: Vec<_> = xr.iter().map(|&v| v - mean).collect();
                    let var = dot(&hr, &hr) / n;
                    let inv = Counted::new(1.0) / num_traits::Float::sqrt(var + eps);
                    let hr: Vec<_> = hr.iter().map(|&v| v * inv).collect();
                    for f in 0..d {
                        want[r * d + f] = hr[f] * gamma[f] + beta[f];
                    }
                    let g: Vec<_> = (0..d).map(|f| gamma[f] * dy[r * d + f]).collect();
                    let (m1, m2) = (sum(&g) / n, dot(&g, &hr) / n);
                    for f in 0..d {
                        want_dx[r * d + f] = inv * ((g[f] - m1) - hr[f] * m2);
                    }
                }
            });
            assert_eq!(Counted::unwrap_slice(&y), Counted::unwrap_slice(&want));
            assert_eq!(Counted::unwrap_slice(&dx), Counted::unwrap_slice(&want_dx));
            counts.assert_eq(&want_counts);
        }
    }

    #[test]
    fn rows_are_the_last_axis() {
        let ln = LayerNorm::resolve(Shape::new(&[5, 8]).unwrap());
        assert_eq!((ln.rows(), ln.width()), (5, 8));
        assert_eq!(ln.params()[0].start, 1.0);
        assert_eq!(LayerNorm::resolve(Shape::flat(6)).rows(), 1);
    }

    /// Rows (forward, input gradient) and features (parameter gradients) shared among
    /// threads: the same bits and counts on 1, 2 and 3 threads.
    #[test]
    fn threads_change_no_bit_and_no_count() {
        use crate::nn::ops::step_bits;
        let (rows, d) = (130, 96);
        let x: Vec<f64> = (0..rows * d)
            .map(|i| ((i * 7) % 41) as f64 * 0.11 - 2.0)
            .collect();
        let dy: Vec<f64> = (0..rows * d)
            .map(|i| ((i * 5) % 37) as f64 * 0.07 - 1.0)
            .collect();
        let gamma: Vec<f64> = (0..d).map(|i| 1.0 + i as f64 * 0.01).collect();
        let beta: Vec<f64> = (0..d).map(|i| i as f64 * 0.02).collect();
        let run = || {
            let mut kernel = LayerNorm::resolve(Shape::new(&[rows, d]).unwrap()).kernel();
            step_bits(&mut kernel, &x, &[&gamma, &beta], &dy)
        };
        tally::assert_same_on_1_2_3_threads(run);
    }
}
