//! Activation functions: identity, sigmoid, tanh, relu and softmax, each a node of its own.
//! Their shape rule, closed forms, and forward/backward pairs over a batch. Each forward
//! records one activation call where it computes each output value (docs/counting.md,
//! "Activation calls"); each backward is computed from the forward's output `y`. A long
//! forward or backward (sigmoid, tanh and the GELUs: an `exp`, `tanh` or `erf` per value) is
//! split among the cores; each value is computed alone, so the split changes no bit and no
//! count.

use std::f64::consts::FRAC_1_SQRT_2;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::ops::{Backward, Kernel, NodeOp, Operation};
use super::reduce::constant;
use crate::counts::Counts;
use crate::error::Result;
use crate::estimate::{At, Q, counts};
use crate::phases::NodeCounts;
use crate::scalar::{Scalar, erf, exp, tanh};
use crate::shape::Shape;
use crate::tally;

/// From this many values on, sigmoid, tanh and the GELUs (an `exp`, `tanh` or `erf` per value)
/// run on all cores.
const PARALLEL_CALLS: usize = 1 << 13;

/// An activation function, as model files name it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Activation {
    /// `x` unchanged.
    Identity,
    /// `1 / (1 + exp(-x))`.
    Sigmoid,
    /// `tanh(x)`.
    Tanh,
    /// `max(x, 0)`.
    Relu,
    /// `exp(x_j) / sum_k exp(x_k)` over each row of the last axis (each example's values
    /// when they are flat).
    Softmax,
    /// `min(max(x, 0), 6)` (MobileNetV2).
    Relu6,
    /// `x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2`, the tanh form GPT-2 uses.
    Gelu,
    /// `x (1 + erf(x / sqrt(2))) / 2`, the exact GELU (PyTorch's default `nn.GELU()`, BERT).
    GeluErf,
}

impl Activation {
    /// Every activation, for tests and the fuzz dictionary.
    pub const ALL: [Activation; 8] = [
        Activation::Identity,
        Activation::Sigmoid,
        Activation::Tanh,
        Activation::Relu,
        Activation::Softmax,
        Activation::Relu6,
        Activation::Gelu,
        Activation::GeluErf,
    ];

    /// Lower-case name, as in tables.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Identity => "identity",
            Activation::Sigmoid => "sigmoid",
            Activation::Tanh => "tanh",
            Activation::Relu => "relu",
            Activation::Softmax => "softmax",
            Activation::Relu6 => "relu6",
            Activation::Gelu => "gelu",
            Activation::GeluErf => "gelu_erf",
        }
    }
}

/// An activation node, resolved: the function and the shape it maps.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Act {
    /// The function.
    pub f: Activation,
    /// The shape of its input and output.
    pub shape: Shape,
}

impl Act {
    /// The shape rule: any shape, the same shape out (softmax over its last axis).
    pub(crate) fn resolve(f: Activation, input: Shape) -> Result<NodeOp, String> {
        Ok(NodeOp::Activation(Act { f, shape: input }))
    }

    pub(crate) fn kernel(&self) -> ActKernel {
        ActKernel(*self)
    }
}

impl Operation for Act {
    fn kind(&self) -> &'static str {
        self.f.name()
    }

    fn output(&self) -> Shape {
        self.shape
    }

    /// Forward, per value: one activation call plus its arithmetic. Backward (only if the
    /// input's gradient is needed): the derivative from the output y.
    fn closed_form(&self, at: At<'_>, name: &str, grads: &[bool]) -> Result<NodeCounts> {
        Ok(NodeCounts {
            forward: forward_counts(at, self.f, self.shape, name)?,
            backward: if grads[0] {
                backward_counts(at, self.f, self.shape, name)?
            } else {
                Counts::ZERO
            },
            update: Counts::ZERO,
        })
    }
}

/// B examples of `shape` forward: one call per value, plus its arithmetic.
fn forward_counts(at: At<'_>, f: Activation, shape: Shape, name: &str) -> Result<Counts> {
    let what = format!("{name} forward");
    // Softmax works per row of the last axis: R rows of W values (R = B for a flat value).
    let (b, w): (Q, usize) = (at.b() * (shape.len() / shape.last()), shape.last());
    let e = at.b() * shape.len(); // values
    match f {
        // y = z.
        Activation::Identity => counts! { at, what; act: e },
        // y = 1 / (1 + exp(-z)).
        Activation::Sigmoid => counts! { at, what; neg: e, exp: e, add: e, div: e, act: e },
        // y = tanh(z).
        Activation::Tanh => counts! { at, what; tanh: e, act: e },
        // y = max(z, 0).
        Activation::Relu => counts! { at, what; cmp: e, act: e },
        // Per row: max of W values (W - 1 cmp), exp(z - max) (W sub, W exp), their sum
        // (W - 1 add), y = e / sum (W div).
        Activation::Softmax => counts! { at, what;
            cmp: b * (w - 1), sub: e, exp: e, add: b * (w - 1), div: e, act: e,
        },
        // y = min(max(z, 0), 6).
        Activation::Relu6 => counts! { at, what; cmp: e * 2, act: e },
        // u = z z, v = z + c (u z), t = tanh(s v), y = (h z)(1 + t): 6 mul, 2 add, 1 tanh.
        Activation::Gelu => counts! { at, what; mul: e * 6, add: e * 2, tanh: e, act: e },
        // g = erf(z r), y = (h z)(1 + g): 3 mul, 1 add, 1 erf (a trans).
        Activation::GeluErf => counts! { at, what; mul: e * 3, add: e, trans: e, act: e },
    }
}

/// The gradient through an activation, from its output y: dz = dy * f'(z).
fn backward_counts(at: At<'_>, f: Activation, shape: Shape, name: &str) -> Result<Counts> {
    let what = format!("{name} backward");
    // Softmax's R rows of W values, as forward.
    let (b, w): (Q, usize) = (at.b() * (shape.len() / shape.last()), shape.last());
    let e = at.b() * shape.len();
    match f {
        // dz = dy.
        Activation::Identity => Ok(Counts::ZERO),
        // dz = dy * (y * (1 - y)).
        Activation::Sigmoid => counts! { at, what; sub: e, mul: e * 2 },
        // dz = dy * (1 - y * y).
        Activation::Tanh => counts! { at, what; mul: e * 2, sub: e },
        // dz = dy if y > 0, else 0.
        Activation::Relu => counts! { at, what; cmp: e },
        // Per row: s = sum_k y_k dy_k (W mul, W - 1 add), dz_j = y_j * (dy_j - s)
        // (W sub, W mul).
        Activation::Softmax => counts! { at, what; mul: e * 2, add: b * (w - 1), sub: e },
        // dz = dy if 0 < y < 6, else 0.
        Activation::Relu6 => counts! { at, what; cmp: e * 2 },
        // From z: u, v, t again (4 mul, 1 add, 1 tanh); a = h (1 + t) (1 add, 1 mul);
        // d = 1 - t t (1 mul, 1 sub); e = 1 + 3c u (1 mul, 1 add); b = (h z) d s e (4 mul);
        // dz = dy (a + b) (1 add, 1 mul). In all 12 mul, 4 add, 1 sub, 1 tanh.
        Activation::Gelu => counts! { at, what; mul: e * 12, add: e * 4, sub: e, tanh: e },
        // From z: g = erf(z r) (1 mul, 1 trans); a = h (1 + g) (1 add, 1 mul); the normal
        // density p = k exp(-(z z) h) (3 mul, 1 neg, 1 exp); dz = dy (a + z p) (2 mul, 1 add).
        // In all 7 mul, 2 add, 1 neg, 1 exp, 1 trans.
        Activation::GeluErf => {
            counts! { at, what; mul: e * 7, add: e * 2, neg: e, exp: e, trans: e }
        }
    }
}

pub(crate) struct ActKernel(Act);

impl<S: Scalar> Kernel<S> for ActKernel {
    fn forward(&mut self, x: &[&[S]], _: &[&[S]], y: &mut [S]) {
        forward(self.0.f, x[0], y, self.0.shape.last());
    }

    fn backward(&mut self, grads: Backward<'_, S>) {
        let Backward { x, y, dy, dx, .. } = grads;
        if let Some(dx) = dx[0].as_deref_mut() {
            backward(self.0.f, x[0], y, dy, dx, self.0.shape.last());
        }
    }
}

/// `y = f(z)` for every value; `width` is the length of the last axis (softmax works per
/// row of it). Counts per value: identity nothing; sigmoid 1 neg, 1 exp, 1 add, 1 div; tanh 1
/// tanh; relu 1 cmp. Softmax per example of width W: W-1 cmp, W sub, W exp, W-1 add, W div.
///
/// # Shapes
/// `z`, `y`: batch x width.
#[inline(never)]
pub(crate) fn forward<S: Scalar>(f: Activation, z: &[S], y: &mut [S], width: usize) {
    match f {
        Activation::Identity => map(z, y, |v: S| v),
        Activation::Sigmoid => map_on_all_cores(z, y, PARALLEL_CALLS, SigmoidOf),
        Activation::Tanh => map_on_all_cores(z, y, PARALLEL_CALLS, tanh),
        Activation::Relu => map_on_all_cores(z, y, PARALLEL_VALUES, |v: S| v.max(S::zero())),
        Activation::Softmax => {
            for (ze, ye) in z.chunks_exact(width).zip(y.chunks_exact_mut(width)) {
                softmax(ze, ye);
            }
        }
        Activation::Relu6 => {
            let six = constant::<S>(6.0);
            map_on_all_cores(z, y, PARALLEL_VALUES, move |v: S| v.max(S::zero()).min(six))
        }
        Activation::Gelu => map_on_all_cores(z, y, PARALLEL_CALLS, GeluOf),
        Activation::GeluErf => map_on_all_cores(z, y, PARALLEL_CALLS, GeluErfOf),
    }
}

/// sqrt(2/pi) and the cubic's coefficient in GELU's tanh form.
const GELU_S: f64 = 0.797_884_560_802_865_4;
const GELU_C: f64 = 0.044_715;

/// 1/sqrt(2 pi), the standard normal density at 0 (exact GELU's derivative).
const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// `dz = dy * f'(z)`, from the forward's output `y` (GELU from its input `z`). Counts per
/// value: identity nothing;
/// sigmoid `dy * (y * (1 - y))` 1 sub, 2 mul; tanh `dy * (1 - y * y)` 2 mul, 1 sub; relu 1
/// cmp. Softmax per example of width W, `dz_j = y_j * (dy_j - sum_k y_k dy_k)`: 2W mul, W-1
/// add, W sub.
///
/// # Shapes
/// `y`, `dy`, `dz`: batch x width.
#[inline(never)]
pub(crate) fn backward<S: Scalar>(
    f: Activation,
    z: &[S],
    y: &[S],
    dy: &[S],
    dz: &mut [S],
    width: usize,
) {
    let one = S::one();
    match f {
        Activation::Identity => dz.copy_from_slice(dy),
        Activation::Sigmoid => map2_on_all_cores(y, dy, dz, move |y: S, d: S| d * (y * (one - y))),
        Activation::Tanh => map2_on_all_cores(y, dy, dz, move |y: S, d: S| d * (one - y * y)),
        Activation::Relu => map2_on_all_cores(
            y,
            dy,
            dz,
            move |y: S, d: S| if y > S::zero() { d } else { S::zero() },
        ),
        Activation::Softmax => {
            let rows = y.chunks_exact(width).zip(dy.chunks_exact(width));
            for ((ye, dye), dze) in rows.zip(dz.chunks_exact_mut(width)) {
                let mut dot = ye[0] * dye[0];
                for (&yk, &dk) in ye[1..].iter().zip(&dye[1..]) {
                    dot += yk * dk;
                }
                map2(ye, dye, dze, |yj: S, dj: S| yj * (dj - dot));
            }
        }
        Activation::Relu6 => {
            let six = constant::<S>(6.0);
            map2_on_all_cores(y, dy, dz, move |y: S, d: S| {
                // Both comparisons, whatever the first says (docs/counting.md, principle 2).
                if (y > S::zero()) & (y < six) {
                    d
                } else {
                    S::zero()
                }
            })
        }
        Activation::Gelu => map2_on_all_cores(z, dy, dz, GeluGrad),
        Activation::GeluErf => map2_on_all_cores(z, dy, dz, GeluErfGrad),
    }
}

/// A function of one value, as [`map`] applies it. Its `at` is always inlined into `map`'s
/// loop: a function as long as GELU's, passed as a closure or a function, may stay a call
/// per value, and then neither the plain nor the counted loop is vectorised. Short closures
/// implement it too.
trait Unary<S>: Copy + Sync {
    fn at(self, v: S) -> S;
}

impl<S, F: Fn(S) -> S + Copy + Sync> Unary<S> for F {
    #[inline(always)]
    fn at(self, v: S) -> S {
        self(v)
    }
}

/// A function of two values, as [`map2`] applies it: [`Unary`]'s twin.
trait Binary<S>: Copy + Sync {
    fn at(self, a: S, b: S) -> S;
}

impl<S, F: Fn(S, S) -> S + Copy + Sync> Binary<S> for F {
    #[inline(always)]
    fn at(self, a: S, b: S) -> S {
        self(a, b)
    }
}

/// `1 / (1 + exp(-v))`.
#[derive(Copy, Clone)]
struct SigmoidOf;

impl<S: Scalar> Unary<S> for SigmoidOf {
    #[inline(always)]
    fn at(self, v: S) -> S {
        S::one() / (S::one() + exp(-v))
    }
}

/// `u = v v`, `t = tanh(s (v + c (u v)))`, `(h v)(1 + t)`.
#[derive(Copy, Clone)]
struct GeluOf;

impl<S: Scalar> Unary<S> for GeluOf {
    #[inline(always)]
    fn at(self, v: S) -> S {
        let [s, c, h] = [GELU_S, GELU_C, 0.5].map(constant::<S>);
        let u = v * v;
        let t = tanh(s * (v + c * (u * v)));
        h * v * (S::one() + t)
    }
}

/// GELU's `dy f'(v)` from v and dy: u and t again, `dy (h (1 + t) + (h v)(1 - t t) s (1 +
/// 3c u))`.
#[derive(Copy, Clone)]
struct GeluGrad;

impl<S: Scalar> Binary<S> for GeluGrad {
    #[inline(always)]
    fn at(self, v: S, d: S) -> S {
        let one = S::one();
        let [s, c, h, c3] = [GELU_S, GELU_C, 0.5, 3.0 * GELU_C].map(constant::<S>);
        let u = v * v;
        let t = tanh(s * (v + c * (u * v)));
        let a = h * (one + t);
        let b = h * v * (one - t * t) * s * (one + c3 * u);
        d * (a + b)
    }
}

/// `(h v)(1 + erf(r v))`.
#[derive(Copy, Clone)]
struct GeluErfOf;

impl<S: Scalar> Unary<S> for GeluErfOf {
    #[inline(always)]
    fn at(self, v: S) -> S {
        let [r, h] = [FRAC_1_SQRT_2, 0.5].map(constant::<S>);
        h * v * (S::one() + erf(v * r))
    }
}

/// The exact GELU's `dy f'(v)` from v and dy: `dy (h (1 + erf(r v)) + v k exp(-(v v) h))`.
#[derive(Copy, Clone)]
struct GeluErfGrad;

impl<S: Scalar> Binary<S> for GeluErfGrad {
    #[inline(always)]
    fn at(self, v: S, d: S) -> S {
        let [r, h, k] = [FRAC_1_SQRT_2, 0.5, FRAC_1_SQRT_2PI].map(constant::<S>);
        let a = h * (S::one() + erf(v * r));
        let p = exp(-(v * v * h)) * k;
        d * (a + v * p)
    }
}

/// One example's softmax, shifted by its maximum so that `exp` cannot overflow.
fn softmax<S: Scalar>(z: &[S], y: &mut [S]) {
    let max = z[1..].iter().fold(z[0], |m, &v| m.max(v));
    for (yj, &zj) in y.iter_mut().zip(z) {
        *yj = exp(zj - max);
    }
    let mut sum = y[0];
    for &e in &y[1..] {
        sum += e;
    }
    for yj in y.iter_mut() {
        S::record_act(); // the call's value is complete here
        *yj /= sum;
    }
}

/// `map`, in one part per thread when there are at least `threshold` values.
fn map_on_all_cores<S: Scalar>(z: &[S], y: &mut [S], threshold: usize, f: impl Unary<S>) {
    let part = part_len(z.len(), threshold, LINE);
    if part >= z.len() {
        map(z, y, f);
        return;
    }
    let parts: Vec<_> = y.chunks_mut(part).zip(z.chunks(part)).collect();
    on_threads(parts, |(y, z)| map(z, y, f));
}

/// `map2`, in one part per thread when there are at least [`PARALLEL_VALUES`] values.
fn map2_on_all_cores<S: Scalar>(a: &[S], b: &[S], out: &mut [S], f: impl Binary<S>) {
    let part = part_len(a.len(), PARALLEL_VALUES, LINE);
    if part >= a.len() {
        map2(a, b, out, f);
        return;
    }
    let parts: Vec<_> = out
        .chunks_mut(part)
        .zip(a.chunks(part).zip(b.chunks(part)))
        .collect();
    on_threads(parts, |(out, (a, b))| map2(a, b, out, f));
}

/// From this many values on, a cheap operation on each value alone (relu, an add, a copy)
/// runs on all cores: below it, handing work to another thread costs more than it saves.
pub(crate) const PARALLEL_VALUES: usize = 1 << 15;

/// The length of each of the parts `len` items are split into: all of them below
/// `threshold` items or on one thread, else an equal share per thread, rounded up to a whole
/// number of `unit` items.
pub(crate) fn part_len(len: usize, threshold: usize, unit: usize) -> usize {
    // The size first: asking rayon for its threads costs more than a tiny layer's step.
    if len < threshold || rayon::current_num_threads() == 1 {
        return len.max(1);
    }
    len.div_ceil(rayon::current_num_threads())
        .next_multiple_of(unit)
}

/// Values per part of an operation on each value alone: whole cache lines (64 values cover
/// them for `f32` and `Counted<f32>` alike).
pub(crate) const LINE: usize = 64;

/// Runs `work` on every part, the parts spread over the pool's threads. Each part is
/// counted on the thread that runs it, taken out there and merged into the caller's tally
/// (`tally::parallel`), so the caller's counts are exact whichever thread ran what. Each
/// part computes its own values start to end, so the split changes no bit either. A single
/// part runs on the calling thread, as an unsplit kernel does.
pub(crate) fn on_threads<T: Send>(parts: Vec<T>, work: impl Fn(T) + Sync) {
    if parts.len() <= 1 {
        return parts.into_iter().for_each(work);
    }
    tally::parallel(|| {
        let counts: Vec<Counts> = parts
            .into_par_iter()
            .map(|part| tally::take(|| work(part)).1)
            .collect();
        ((), counts.into_iter().sum())
    });
}

/// `y = f(z)` value by value, one activation call each.
#[inline(never)]
fn map<S: Scalar>(z: &[S], y: &mut [S], f: impl Unary<S>) {
    for (yj, &zj) in y.iter_mut().zip(z) {
        S::record_act();
        *yj = f.at(zj);
    }
}

fn map2<S: Scalar>(a: &[S], b: &[S], out: &mut [S], f: impl Binary<S>) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = f.at(x, y);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Counted, Counts, tally};

    #[test]
    fn softmax_sums_to_one_and_counts_per_example() {
        let z = Counted::vec(&[1.0f64, 2.0, 3.0, -1.0, 0.0, 1000.0]);
        let mut y = vec![Counted::new(0.0); 6];
        let (_, counts) = tally::measure(|| forward(Activation::Softmax, &z, &mut y, 3));
        for example in y.chunks(3) {
            let total: f64 = example.iter().map(|v| v.get()).sum();
            assert!((total - 1.0).abs() < 1e-12);
        }
        counts.assert_eq(&Counts {
            cmp: 2 * 2,
            sub: 2 * 3,
            exp: 2 * 3,
            add: 2 * 2,
            div: 2 * 3,
            act: 6,
            ..Counts::ZERO
        });
    }

    #[test]
    fn relu_backward_passes_gradient_where_the_output_is_positive() {
        let y = [2.0f32, 0.0, 0.5];
        let dy = [1.0f32, 1.0, -3.0];
        let mut dz = [9.0f32; 3];
        backward(Activation::Relu, &y, &y, &dy, &mut dz, 3);
        assert_eq!(dz, [1.0, 0.0, -3.0]);
    }
}
