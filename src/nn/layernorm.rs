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
/// sqrt(var + eps)` into `inv`, and `y = xhat gamma + beta`. Every sum from its first term.
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
    let rows = x
        .chunks_exact(d)
        .zip(y.chunks_exact_mut(d))
        .zip(normalized.chunks_exact_mut(d));
    for (((xr, yr), hr), inv) in rows.zip(inv) {
        let mean = sum(xr) / n;
        for (h, &v) in hr.iter_mut().zip(xr) {
            *h = v - mean;
        }
        let var = sum_of_squares(hr) / n;
        let r = S::one() / (var + eps).sqrt();
        *inv = r;
        for ((h, out), (&g, &b)) in hr.iter_mut().zip(yr).zip(gamma.iter().zip(beta)) {
            *h *= r;
            *out = *h * g + b;
        }
    }
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
/// `dx = inv ((g - m1) - xhat m2)`. `dx` holds `g` until it is overwritten.
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
    let rows = dy
        .chunks_exact(d)
        .zip(normalized.chunks_exact(d))
        .zip(dx.chunks_exact_mut(d));
    for (((dyr, hr), dxr), &r) in rows.zip(inv) {
        for ((g, &dyv), &gm) in dxr.iter_mut().zip(dyr).zip(gamma) {
            *g = gm * dyv;
        }
        let m1 = sum(dxr) / n;
        let m2 = dot(dxr, hr) / n;
        for (g, &h) in dxr.iter_mut().zip(hr) {
            *g = r * ((*g - m1) - h * m2);
        }
    }
}

/// `v_0 v_0 + v_1 v_1 + ...`, from the first product: D mul, D - 1 adds.
#[inline(always)]
fn sum_of_squares<S: Scalar>(v: &[S]) -> S {
    dot(v, v)
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
        use crate::nn::ops::Backward;
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
            let (cx, cdy) = (Counted::vec(&x), Counted::vec(&dy));
            let (g, b) = (Counted::vec(&gamma), Counted::vec(&beta));
            let mut y = vec![Counted::new(0.0); rows * d];
            let mut dx = vec![Counted::new(0.0); rows * d];
            let (mut dg, mut db) = (vec![Counted::new(0.0); d], vec![Counted::new(0.0); d]);
            let mut kernel = LayerNorm::resolve(Shape::new(&[rows, d]).unwrap()).kernel();
            let ((), counts) = tally::measure(|| {
                kernel.forward(&[&cx], &[&g, &b], &mut y);
                kernel.backward(Backward {
                    x: &[&cx],
                    y: &y,
                    dy: &cdy,
                    params: &[&g, &b],
                    dparams: &mut [&mut dg, &mut db],
                    dx: &mut [Some(&mut dx)],
                });
            });
            let bits: Vec<u64> = [y, dx, dg, db]
                .iter()
                .flatten()
                .map(|v| v.get().to_bits())
                .collect();
            (bits, counts)
        };
        tally::assert_same_on_1_2_3_threads(run);
    }
}
