//! BatchNorm2d in training mode: each channel normalised by its batch statistics, then
//! scaled and shifted by learnable `gamma` and `beta`; the running statistics are updated
//! (momentum 0.1, as PyTorch) in the update phase. Shape rule, closed form, forward and
//! backward (docs/counting.md, "BatchNorm2d").

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

    /// The normalised input.
    fn kept(&self) -> usize {
        self.shape.len()
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
// parameters and statistics alike, so the loops run over channel numbers.
#[allow(clippy::needless_range_loop)]
impl<S: Scalar> Kernel<S> for BatchNormKernel<S> {
    fn forward(&mut self, x: &[&[S]], params: &[&[S]], y: &mut [S]) {
        let (c, plane) = (self.op.channels(), self.op.plane());
        self.normalized.resize(y.len(), S::zero());
        let n = constant::<S>((x[0].len() / c) as f64);
        for ch in 0..c {
            let values = channel(x[0], plane, c, ch);
            // mean, from the first value: n - 1 add, 1 div.
            let mut sum = None;
            for &v in values.clone() {
                sum = Some(sum.map_or(v, |s: S| s + v));
            }
            let mean = sum.expect("a channel has values") / n;
            // d = x - mean, kept in `normalized`; var = sum d d / n.
            let mut var = None;
            for (&v, d) in values.zip(channel_mut(&mut self.normalized, plane, c, ch)) {
                *d = v - mean;
                let sq = *d * *d;
                var = Some(var.map_or(sq, |s: S| s + sq));
            }
            let var = var.expect("a channel has values") / n;
            let inv = S::one() / (var + constant::<S>(EPS)).sqrt();
            let (gamma, beta) = (params[0][ch], params[1][ch]);
            let outs = channel_mut(y, plane, c, ch);
            for (d, out) in channel_mut(&mut self.normalized, plane, c, ch).zip(outs) {
                *d *= inv;
                *out = gamma * *d + beta;
            }
            (self.inv[ch], self.mean[ch], self.var[ch]) = (inv, mean, var);
        }
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
        let (dgamma, dbeta) = dparams.split_at_mut(1);
        for ch in 0..c {
            let xhat = channel(&self.normalized, plane, c, ch);
            let grads = channel(dy, plane, c, ch);
            // dgamma = sum dy xhat; dbeta = sum dy, each from its first term.
            let (mut dg, mut db) = (None, None);
            for (&g, &h) in grads.clone().zip(xhat.clone()) {
                let p = g * h;
                dg = Some(dg.map_or(p, |s: S| s + p));
                db = Some(db.map_or(g, |s: S| s + g));
            }
            let (dg, db) = (dg.expect("values"), db.expect("values"));
            (dgamma[0][ch], dbeta[0][ch]) = (dg, db);
            if let Some(dx) = dx[0].as_deref_mut() {
                let (gamma, inv) = (params[0][ch], self.inv[ch]);
                let m1 = gamma * db / n;
                let m2 = gamma * dg / n;
                let outs = channel_mut(dx, plane, c, ch);
                for ((out, &g), &h) in outs.zip(grads).zip(xhat) {
                    *out = inv * ((gamma * g - m1) - h * m2);
                }
            }
        }
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

/// Channel `ch`'s values of a batch laid out example after example, `c` channels of `plane`
/// values each.
fn channel<S>(values: &[S], plane: usize, c: usize, ch: usize) -> impl Iterator<Item = &S> + Clone {
    values
        .chunks_exact(plane * c)
        .flat_map(move |example| &example[ch * plane..(ch + 1) * plane])
}

fn channel_mut<S>(
    values: &mut [S],
    plane: usize,
    c: usize,
    ch: usize,
) -> impl Iterator<Item = &mut S> {
    values
        .chunks_exact_mut(plane * c)
        .flat_map(move |example| &mut example[ch * plane..(ch + 1) * plane])
}
