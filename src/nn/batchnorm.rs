//! BatchNorm2d in training mode: each channel normalised by its batch statistics, then
//! scaled and shifted by learnable `gamma` and `beta`; the running statistics are updated
//! (momentum 0.1, as PyTorch) in the update phase. Shape rule, closed form, forward and
//! backward (docs/counting.md, "BatchNorm2d").

use super::activation::{PARALLEL_VALUES, on_threads, part_len};
use super::ops::{Backward, Kernel, Operation, ParamSpec};
use super::reduce::constant;
use crate::error::Result;
use crate::estimate::{At, Q, counts, when};
use crate::phases::NodeCounts;
use crate::scalar::Scalar;
use crate::shape::Shape;

/// What is added to the variance before its square root (PyTorch's default).
const EPS: f64 = 1e-5;

/// The weight of the newest batch in the running statistics (PyTorch's default).
const MOMENTUM: f64 = 0.1;

/// BatchNorm2d, resolved: the image it normalises.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct BatchNorm2d {
    /// Channels, height, width of one example.
    pub shape: Shape,
}

impl BatchNorm2d {
    /// The shape rule: an image (statistics per channel over the batch, height and width).
    pub(crate) fn resolve(input: Shape) -> Result<BatchNorm2d, String> {
        match input.as_image() {
            Some(_) => Ok(BatchNorm2d { shape: input }),
            None => Err(format!(
                "batchnorm2d expects a channels x height x width input, found {input}"
            )),
        }
    }

    fn channels(&self) -> usize {
        self.shape.dims()[0]
    }

    /// Values per example and channel.
    fn plane(&self) -> usize {
        self.shape.len() / self.channels()
    }

    pub(crate) fn kernel<S: Scalar>(&self) -> BatchNormKernel<S> {
        let c = self.channels();
        BatchNormKernel {
            op: *self,
            normalized: Vec::new(),
            inv: vec![S::zero(); c],
            mean: vec![S::zero(); c],
            var: vec![S::zero(); c],
            running_mean: vec![S::zero(); c],
            running_var: vec![S::one(); c],
        }
    }
}

impl Operation for BatchNorm2d {
    fn kind(&self) -> &'static str {
        "batchnorm2d"
    }

    fn output(&self) -> Shape {
        self.shape
    }

    /// `gamma`, then `beta`: one per channel. `gamma` starts at one.
    fn params(&self) -> Vec<ParamSpec> {
        let c = self.channels();
        ParamSpec::scale_and_shift(c)
    }

    /// The running mean (starts at zero) and running variance (at one), one per channel:
    /// what evaluation normalises with.
    fn state(&self) -> Vec<(&'static str, ParamSpec)> {
        let starting = |start| ParamSpec {
            len: self.channels(),
            fans: None,
            start,
        };
        vec![
            ("running_mean", starting(0.0)),
            ("running_var", starting(1.0)),
        ]
    }

    /// The normalised input.
    fn kept(&self) -> usize {
        self.shape.len()
    }

    fn param_names(&self) -> &'static [&'static str] {
        &["gamma", "beta"]
    }

    fn explain_param(&self, index: usize) -> String {
        let what = ["gamma", "beta"][index.min(1)];
        format!("{} channels' {what}", self.channels())
    }

    /// Per channel, over its n = B·H·W values (docs/counting.md, "BatchNorm2d").
    fn closed_form(&self, at: At<'_>, name: &str, grads: &[bool]) -> Result<NodeCounts> {
        let c = self.channels();
        let n: Q = at.b() * self.plane(); // values per channel
        let per = |x: Q| x * c; // over every channel
        // mean: n - 1 add, 1 div; d = x - mean: n sub; var: n mul, n - 1 add, 1 div;
        // inv = 1 / sqrt(var + eps): 1 add, 1 sqrt, 1 div; xhat = d inv: n mul;
        // y = gamma xhat + beta: n mul, n add.
        let forward = counts! { at, format!("{name} forward");
            add: per((n - 1) * 3 + 1 + 1),
            sub: per(n),
            mul: per(n * 3),
            div: per(Q(Some(3))),
            sqrt: per(Q(Some(1))),
        }?;
        // dgamma = sum dy xhat: n mul, n - 1 add; dbeta = sum dy: n - 1 add. With the
        // input's gradient: m1 = gamma dbeta / n and m2 = gamma dgamma / n (2 mul, 2 div),
        // then per value dx = inv ((gamma dy - m1) - xhat m2): 3 mul, 2 sub.
        let dx = grads[0];
        let backward = counts! { at, format!("{name} backward");
            mul: per(n + when(dx, n * 3 + 2)),
            add: per((n - 1) * 2),
            sub: per(when(dx, n * 2)),
            div: per(when(dx, Q(Some(2)))),
        }?;
        // SGD on gamma and beta (1 mul, 1 sub each); the running mean
        // (1 - m) rm + m mean (2 mul, 1 add) and running variance, unbiased,
        // (1 - m) rv + m (var n / (n - 1)) (3 mul, 1 add).
        let update = counts! { at, format!("{name} update");
            mul: per(Q(Some(2 + 5))),
            sub: per(Q(Some(2))),
            add: per(Q(Some(2))),
        }?;
        Ok(NodeCounts {
            forward,
            backward,
            update,
        })
    }
}

/// Batch normalisation keeps each value's normalised form and each channel's statistics
/// between the passes, and the running statistics across steps.
pub(crate) struct BatchNormKernel<S> {
    op: BatchNorm2d,
    /// `xhat` of the last forward pass, in the input's layout.
    normalized: Vec<S>,
    /// Per channel: `1 / sqrt(var + eps)`, the batch mean and (biased) variance.
    inv: Vec<S>,
    mean: Vec<S>,
    var: Vec<S>,
    /// What inference would use; updated in the update phase.
    running_mean: Vec<S>,
    running_var: Vec<S>,
}

// `ch` picks a channel's values out of every example and indexes the per-channel
// parameters and statistics alike, so the loops run over channel numbers. The loops over
// values are small free functions over one example's plane (see docs/ARCHITECTURE.md,
// "Kernels and the counters": there the counters stay in registers), each sum carried from
// one example's plane to the next. Large batches split their channels into runs, one per
// thread ([`Channels`]): a channel's sums run in the same order whatever thread runs them.
#[allow(clippy::needless_range_loop)]
impl<S: Scalar> Kernel<S> for BatchNormKernel<S> {
    fn forward(&mut self, x: &[&[S]], params: &[&[S]], y: &mut [S]) {
        let (c, plane) = (self.op.channels(), self.op.plane());
        self.normalized.resize(y.len(), S::zero());
        let n = constant::<S>((x[0].len() / c) as f64);
        let per = channels_per_run(x[0].len(), c);
        let stats = self.inv.chunks_mut(per).zip(self.mean.chunks_mut(per));
        let runs = Channels::runs(&mut self.normalized, plane, c, per)
            .zip(Channels::runs(y, plane, c, per))
            .zip(stats.zip(self.var.chunks_mut(per)));
        let (x, gamma, beta) = (x[0], params[0], params[1]);
        on_threads(
            runs.collect(),
            |((mut kept, mut out), ((inv, mean), var))| {
                let mut k = 0;
                while k < inv.len() {
                    // mean and variance of a group of channels side by side (see `width`).
                    let w = width(inv.len() - k);
                    let stats = (&mut mean[k..k + w], &mut var[k..k + w]);
                    let at = (plane, c, kept.first + k);
                    match w {
                        8 => moments::<S, 8>(x, at, &mut kept, k, n, stats),
                        4 => moments::<S, 4>(x, at, &mut kept, k, n, stats),
                        _ => moments::<S, 1>(x, at, &mut kept, k, n, stats),
                    }
                    for k in k..k + w {
                        let ch = kept.first + k;
                        // inv = 1 / sqrt(var + eps); y = gamma xhat + beta.
                        inv[k] = S::one() / (var[k] + constant::<S>(EPS)).sqrt();
                        for (d, out) in kept.group(k, 1).zip(out.group(k, 1)) {
                            normalize(d, out, inv[k], gamma[ch], beta[ch]);
                        }
                    }
                    k += w;
                }
            },
        );
    }

    /// Evaluation: each channel normalised by its running statistics instead of the batch's,
    /// `y = gamma (x - rm) / sqrt(rv + eps) + beta`, as PyTorch's `eval()` mode.
    fn infer(&mut self, x: &[&[S]], params: &[&[S]], y: &mut [S]) {
        let (c, plane) = (self.op.channels(), self.op.plane());
        for ch in 0..c {
            let inv = S::one() / (self.running_var[ch] + constant::<S>(EPS)).sqrt();
            let (mean, gamma, beta) = (self.running_mean[ch], params[0][ch], params[1][ch]);
            for (values, outs) in planes(x[0], plane, c, ch, 1).zip(planes_mut(y, plane, c, ch)) {
                for (&v, out) in values.iter().zip(outs) {
                    *out = gamma * ((v - mean) * inv) + beta;
                }
            }
        }
    }

    fn state(&self) -> Vec<&[S]> {
        vec![&self.running_mean, &self.running_var]
    }

    fn state_mut(&mut self) -> Vec<&mut [S]> {
        vec![&mut self.running_mean, &mut self.running_var]
    }

    fn backward(&mut self, grads: Backward<'_, S>) {
        let Backward {
            dy,
            params,
            dparams,
            dx,
            ..
        } = grads;
        let (c, plane) = (self.op.channels(), self.op.plane());
        let n = constant::<S>((dy.len() / c) as f64);
        let per = channels_per_run(dy.len(), c);
        let (dgamma, dbeta) = dparams.split_at_mut(1);
        let sums = dgamma[0].chunks_mut(per).zip(dbeta[0].chunks_mut(per));
        // Without the input's gradient, runs of channels with nothing to write per value.
        let outs: Vec<Option<Channels<'_, S>>> = match dx[0].as_deref_mut() {
            Some(dx) => Channels::runs(dx, plane, c, per).map(Some).collect(),
            None => (0..c.div_ceil(per)).map(|_| None).collect(),
        };
        let (kept, inv, gamma) = (&self.normalized, &self.inv, params[0]);
        let runs = sums.zip(outs).enumerate();
        on_threads(runs.collect(), |(r, ((dgamma, dbeta), mut out))| {
            let mut k = 0;
            while k < dgamma.len() {
                let w = width(dgamma.len() - k);
                let sums = (&mut dgamma[k..k + w], &mut dbeta[k..k + w]);
                let at = (plane, c, r * per + k);
                match w {
                    8 => gradient_sums::<S, 8>(dy, kept, at, sums),
                    4 => gradient_sums::<S, 4>(dy, kept, at, sums),
                    _ => gradient_sums::<S, 1>(dy, kept, at, sums),
                }
                if let Some(out) = out.as_mut() {
                    for k in k..k + w {
                        let ch = r * per + k;
                        let (gamma, inv) = (gamma[ch], inv[ch]);
                        let m1 = gamma * dbeta[k] / n;
                        let m2 = gamma * dgamma[k] / n;
                        let values = planes(dy, plane, c, ch, 1).zip(planes(kept, plane, c, ch, 1));
                        for (out, (grads, xhat)) in out.group(k, 1).zip(values) {
                            input_gradient(out, grads, xhat, inv, gamma, (m1, m2));
                        }
                    }
                }
                k += w;
            }
        });
    }

    /// The running statistics: `r = (1 - m) r + m s` for the mean and for the unbiased
    /// variance `var n / (n - 1)`.
    fn update(&mut self) -> bool {
        let c = self.op.channels();
        let n = (self.normalized.len() / c) as f64;
        let keep = constant::<S>(1.0 - MOMENTUM);
        let take = constant::<S>(MOMENTUM);
        let unbias = constant::<S>(if n > 1.0 { n / (n - 1.0) } else { 1.0 });
        for ch in 0..c {
            self.running_mean[ch] = keep * self.running_mean[ch] + take * self.mean[ch];
            self.running_var[ch] = keep * self.running_var[ch] + take * (self.var[ch] * unbias);
        }
        true
    }
}

/// The planes of channels `ch..ch + width`, side by side, in each example of a batch laid
/// out example after example, `c` channels of `plane` values each.
fn planes<S>(
    values: &[S],
    plane: usize,
    c: usize,
    ch: usize,
    width: usize,
) -> impl Iterator<Item = &[S]> {
    values
        .chunks_exact(plane * c)
        .map(move |example| &example[ch * plane..(ch + width) * plane])
}

fn planes_mut<S>(
    values: &mut [S],
    plane: usize,
    c: usize,
    ch: usize,
) -> impl Iterator<Item = &mut [S]> {
    values
        .chunks_exact_mut(plane * c)
        .map(move |example| &mut example[ch * plane..(ch + 1) * plane])
}

/// A run of channels, `first` and those after it, in every example of a batch: the part of
/// each example a thread writes.
struct Channels<'a, S> {
    first: usize,
    plane: usize,
    examples: Vec<&'a mut [S]>,
}

impl<'a, S> Channels<'a, S> {
    /// `values`, examples of `c` channels of `plane` values each, cut into runs of `per`
    /// channels (the last run may be shorter).
    fn runs(
        values: &'a mut [S],
        plane: usize,
        c: usize,
        per: usize,
    ) -> impl Iterator<Item = Channels<'a, S>> {
        let mut runs: Vec<Channels<'a, S>> = (0..c.div_ceil(per))
            .map(|r| Channels {
                first: r * per,
                plane,
                examples: Vec::new(),
            })
            .collect();
        for example in values.chunks_exact_mut(plane * c) {
            for (run, part) in runs.iter_mut().zip(example.chunks_mut(per * plane)) {
                run.examples.push(part);
            }
        }
        runs.into_iter()
    }

    /// The planes of the run's channels `k..k + width`, side by side, in each example.
    fn group(&mut self, k: usize, width: usize) -> impl Iterator<Item = &mut [S]> {
        let plane = self.plane;
        self.examples
            .iter_mut()
            .map(move |example| &mut example[k * plane..(k + width) * plane])
    }
}

/// Channels per run for a batch of `len` values in `c` channels: all of them when alone (see
/// [`part_len`]), else an equal share per thread.
fn channels_per_run(len: usize, c: usize) -> usize {
    part_len(c, PARALLEL_VALUES.div_ceil((len / c).max(1)), 1)
}

/// Channels summed side by side: 8 when at least 8 are left, then 4, then 1. Each channel's
/// sum is a chain of adds in a fixed order; a group's chains are independent, so the CPU
/// runs them at once instead of waiting for each add in turn.
fn width(left: usize) -> usize {
    [8, 4, 1].into_iter().find(|&w| w <= left).unwrap_or(1)
}

/// The mean and (biased) variance of `N` channels from `ch` on (`at` is the plane, the
/// channels per example and `ch`), keeping each value's `d = x - mean` in the run's channels
/// from its `k`th on. Per channel of n values: the sum from its first value (n - 1 add, 1
/// div), d (n sub), the sum of d d from its first square (n mul, n - 1 add, 1 div).
#[allow(clippy::needless_range_loop)] // value i of plane j, the planes side by side
fn moments<S: Scalar, const N: usize>(
    x: &[S],
    (plane, c, ch): (usize, usize, usize),
    kept: &mut Channels<'_, S>,
    k: usize,
    n: S,
    (mean, var): (&mut [S], &mut [S]),
) {
    let mut sum = None;
    for values in planes(x, plane, c, ch, N) {
        sum = Some(sums::<S, N>(values, sum));
    }
    let sum = sum.expect("a channel has values");
    let m: [S; N] = std::array::from_fn(|j| sum[j] / n);
    let mut squares = None;
    for (values, d) in planes(x, plane, c, ch, N).zip(kept.group(k, N)) {
        squares = Some(deviations::<S, N>(values, m, d, squares));
    }
    let squares = squares.expect("a channel has values");
    for j in 0..N {
        (mean[j], var[j]) = (m[j], squares[j] / n);
    }
}

/// `dgamma = sum dy xhat` and `dbeta = sum dy` of `N` channels from `ch` on, each from its
/// first term.
fn gradient_sums<S: Scalar, const N: usize>(
    dy: &[S],
    xhat: &[S],
    (plane, c, ch): (usize, usize, usize),
    (dgamma, dbeta): (&mut [S], &mut [S]),
) {
    let mut sums = None;
    let values = planes(dy, plane, c, ch, N).zip(planes(xhat, plane, c, ch, N));
    for (grads, xhat) in values {
        sums = Some(two_sums::<S, N>(grads, xhat, sums));
    }
    let (dg, db) = sums.expect("a channel has values");
    dgamma.copy_from_slice(&dg);
    dbeta.copy_from_slice(&db);
}

/// `values`, `N` planes side by side, as one slice per plane.
fn split<S, const N: usize>(values: &[S]) -> [&[S]; N] {
    let plane = values.len() / N;
    std::array::from_fn(|j| &values[j * plane..(j + 1) * plane])
}

/// Each of `N` planes side by side summed onto its `start`, from its first value without one.
#[allow(clippy::needless_range_loop)] // value i of plane j, the planes side by side
#[inline(never)]
fn sums<S: Scalar, const N: usize>(values: &[S], start: Option<[S; N]>) -> [S; N] {
    let p = split::<S, N>(values);
    let (mut acc, from) = match start {
        Some(acc) => (acc, 0),
        None => (std::array::from_fn(|j| p[j][0]), 1),
    };
    for i in from..p[0].len() {
        for j in 0..N {
            acc[j] += p[j][i];
        }
    }
    acc
}

/// For `N` planes side by side: `d = x - mean` of each value, and each plane's `start + sum
/// of d d` (from its first square without a start). The deviations are written first, plane
/// by plane, and the squares summed from them after: a loop that both stores and indexes
/// planes side by side keeps the counters of `Counted` in memory (a store before a possible
/// panic must be seen with the counts up to it), one that only reads does not.
#[inline(never)]
fn deviations<S: Scalar, const N: usize>(
    x: &[S],
    mean: [S; N],
    d: &mut [S],
    start: Option<[S; N]>,
) -> [S; N] {
    let x = split::<S, N>(x);
    for ((d, x), mean) in d.chunks_exact_mut(x[0].len()).zip(x).zip(mean) {
        for (d, &x) in d.iter_mut().zip(x) {
            *d = x - mean;
        }
    }
    square_sums::<S, N>(d, start)
}

/// Each of `N` planes side by side: `start + sum of d d`, from its first square without a
/// start.
#[allow(clippy::needless_range_loop)] // value i of plane j, the planes side by side
#[inline(never)]
fn square_sums<S: Scalar, const N: usize>(d: &[S], start: Option<[S; N]>) -> [S; N] {
    let d = split::<S, N>(d);
    let (mut acc, from) = match start {
        Some(acc) => (acc, 0),
        None => (std::array::from_fn(|j| d[j][0] * d[j][0]), 1),
    };
    for i in from..d[0].len() {
        for j in 0..N {
            let sq = d[j][i] * d[j][i];
            acc[j] += sq;
        }
    }
    acc
}

/// `xhat = d inv`, kept in place of `d`, and `y = gamma xhat + beta`.
#[inline(never)]
fn normalize<S: Scalar>(d: &mut [S], out: &mut [S], inv: S, gamma: S, beta: S) {
    for (d, out) in d.iter_mut().zip(out) {
        *d *= inv;
        *out = gamma * *d + beta;
    }
}

/// For `N` planes side by side, each plane's `(sum of dy xhat, sum of dy)` onto `start`, from
/// its first terms without it.
#[allow(clippy::needless_range_loop)] // value i of plane j, the planes side by side
#[inline(never)]
fn two_sums<S: Scalar, const N: usize>(
    dy: &[S],
    xhat: &[S],
    start: Option<([S; N], [S; N])>,
) -> ([S; N], [S; N]) {
    let (g, h) = (split::<S, N>(dy), split::<S, N>(xhat));
    let ((mut dg, mut db), from) = match start {
        Some(sums) => (sums, 0),
        None => (
            (
                std::array::from_fn(|j| g[j][0] * h[j][0]),
                std::array::from_fn(|j| g[j][0]),
            ),
            1,
        ),
    };
    for i in from..g[0].len() {
        for j in 0..N {
            let p = g[j][i] * h[j][i];
            dg[j] += p;
            db[j] += g[j][i];
        }
    }
    (dg, db)
}

/// `dx = inv ((gamma dy - m1) - xhat m2)` for each value.
#[inline(never)]
fn input_gradient<S: Scalar>(
    out: &mut [S],
    dy: &[S],
    xhat: &[S],
    inv: S,
    gamma: S,
    (m1, m2): (S, S),
) {
    for ((out, &g), &h) in out.iter_mut().zip(dy).zip(xhat) {
        *out = inv * ((gamma * g - m1) - h * m2);
    }
}
