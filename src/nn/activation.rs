//! Activation functions as forward/backward pairs over a batch. Each forward records one
//! activation call where it computes each output value (docs/counting.md, "Activation
//! calls"); each backward is computed from the forward's output `y`. A long forward of an
//! expensive function (sigmoid, tanh: a library call per value) is split among the cores;
//! each value is computed alone, so the split changes no bit and no count.

use rayon::prelude::*;

use crate::counts::Counts;
use crate::model::Activation;
use crate::scalar::Scalar;
use crate::tally;

/// From this many values on, sigmoid and tanh run on all cores.
const PARALLEL_CALLS: usize = 1 << 13;

/// `y = f(z)` for every value; `width` is one example's number of values (softmax works per
/// example). Counts per value: identity nothing; sigmoid 1 neg, 1 exp, 1 add, 1 div; tanh 1
/// tanh; relu 1 cmp. Softmax per example of width W: W-1 cmp, W sub, W exp, W-1 add, W div.
///
/// # Shapes
/// `z`, `y`: batch x width.
#[inline(never)]
pub(crate) fn forward<S: Scalar>(f: Activation, z: &[S], y: &mut [S], width: usize) {
    let one = S::one();
    match f {
        Activation::Identity => map(z, y, |v| v),
        Activation::Sigmoid => map_on_all_cores(z, y, |v| one / (one + (-v).exp())),
        Activation::Tanh => map_on_all_cores(z, y, |v| v.tanh()),
        Activation::Relu => map(z, y, |v| v.max(S::zero())),
        Activation::Softmax => {
            for (ze, ye) in z.chunks_exact(width).zip(y.chunks_exact_mut(width)) {
                softmax(ze, ye);
            }
        }
    }
}

/// `dz = dy * f'(z)`, from the forward's output `y`. Counts per value: identity nothing;
/// sigmoid `dy * (y * (1 - y))` 1 sub, 2 mul; tanh `dy * (1 - y * y)` 2 mul, 1 sub; relu 1
/// cmp. Softmax per example of width W, `dz_j = y_j * (dy_j - sum_k y_k dy_k)`: 2W mul, W-1
/// add, W sub.
///
/// # Shapes
/// `y`, `dy`, `dz`: batch x width.
#[inline(never)]
pub(crate) fn backward<S: Scalar>(f: Activation, y: &[S], dy: &[S], dz: &mut [S], width: usize) {
    let one = S::one();
    match f {
        Activation::Identity => dz.copy_from_slice(dy),
        Activation::Sigmoid => map2(y, dy, dz, |y, d| d * (y * (one - y))),
        Activation::Tanh => map2(y, dy, dz, |y, d| d * (one - y * y)),
        Activation::Relu => map2(y, dy, dz, |y, d| if y > S::zero() { d } else { S::zero() }),
        Activation::Softmax => {
            let rows = y.chunks_exact(width).zip(dy.chunks_exact(width));
            for ((ye, dye), dze) in rows.zip(dz.chunks_exact_mut(width)) {
                let mut dot = ye[0] * dye[0];
                for (&yk, &dk) in ye[1..].iter().zip(&dye[1..]) {
                    dot += yk * dk;
                }
                map2(ye, dye, dze, |yj, dj| yj * (dj - dot));
            }
        }
    }
}

/// One example's softmax, shifted by its maximum so that `exp` cannot overflow.
fn softmax<S: Scalar>(z: &[S], y: &mut [S]) {
    let max = z[1..].iter().fold(z[0], |m, &v| m.max(v));
    for (yj, &zj) in y.iter_mut().zip(z) {
        *yj = (zj - max).exp();
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

/// `map`, in one part per thread when there are enough values; each part is counted on its
/// thread and merged into the caller's tally (`tally::parallel`).
fn map_on_all_cores<S: Scalar>(z: &[S], y: &mut [S], f: impl Fn(S) -> S + Sync) {
    if z.len() < PARALLEL_CALLS || rayon::current_num_threads() == 1 {
        map(z, y, f);
        return;
    }
    let threads = rayon::current_num_threads();
    let part = z.len().div_ceil(threads).next_multiple_of(64);
    tally::parallel(|| {
        let counts: Vec<Counts> = y
            .par_chunks_mut(part)
            .zip(z.par_chunks(part))
            .map(|(y, z)| tally::take(|| map(z, y, &f)).1)
            .collect();
        ((), counts.into_iter().sum())
    });
}

/// `y = f(z)` value by value, one activation call each.
#[inline(never)]
fn map<S: Scalar>(z: &[S], y: &mut [S], f: impl Fn(S) -> S) {
    for (yj, &zj) in y.iter_mut().zip(z) {
        S::record_act();
        *yj = f(zj);
    }
}

fn map2<S: Scalar>(a: &[S], b: &[S], out: &mut [S], f: impl Fn(S, S) -> S) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = f(x, y);
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
        backward(Activation::Relu, &y, &dy, &mut dz, 3);
        assert_eq!(dz, [1.0, 0.0, -3.0]);
    }
}
