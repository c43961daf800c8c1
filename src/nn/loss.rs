//! Losses as free functions returning the batch's loss and writing its gradient with
//! respect to the network's outputs. Both average over the batch, so the gradients the
//! backward pass produces are already the batch means SGD needs.

use crate::scalar::{Scalar, exp};

/// Mean squared error over all `n = batch x outputs` values, `L = sum (y - t)^2 / n`, and
/// `dL/dy = (y - t) * (2 / n)`. Counts: n sub, 2n mul, n-1 add, 2 div.
///
/// # Shapes
/// `y`, `t`, `grad`: batch x outputs.
#[inline(never)]
pub(crate) fn mse<S: Scalar>(y: &[S], t: &[S], grad: &mut [S]) -> S {
    for ((g, &yj), &tj) in grad.iter_mut().zip(y).zip(t) {
        *g = yj - tj;
    }
    let mut sum = grad[0] * grad[0];
    for &d in &grad[1..] {
        sum += d * d;
    }
    let n = count::<S>(y.len());
    let scale = count::<S>(2) / n;
    for g in grad.iter_mut() {
        *g *= scale;
    }
    sum / n
}

/// Softmax cross-entropy on logits against class indices, averaged over the batch.
/// Per example of width W: `loss = ln(sum_j exp(z_j - max)) + max - z_class`, gradient
/// `(softmax(z) - onehot(class)) / batch`. Counts per example: W-1 cmp, W+2 sub, W exp, W add,
/// 1 ln, W div, W mul; per batch: B-1 add and 2 div.
///
/// # Shapes
/// `logits`, `grad`: batch x width; `classes`: batch, each below `width`.
#[inline(never)]
pub(crate) fn softmax_cross_entropy<S: Scalar>(
    logits: &[S],
    classes: &[usize],
    width: usize,
    grad: &mut [S],
) -> S {
    let inv_batch = S::one() / count::<S>(classes.len());
    let mut total: Option<S> = None;
    let rows = logits.chunks_exact(width).zip(grad.chunks_exact_mut(width));
    for ((z, g), &class) in rows.zip(classes) {
        let max = z[1..].iter().fold(z[0], |m, &v| m.max(v));
        for (gj, &zj) in g.iter_mut().zip(z) {
            *gj = exp(zj - max);
        }
        let mut sum = g[0];
        for &e in &g[1..] {
            sum += e;
        }
        let loss = (sum.ln() + max) - z[class];
        total = Some(match total {
            None => loss,
            Some(t) => t + loss,
        });
        for gj in g.iter_mut() {
            *gj = *gj / sum * inv_batch;
        }
        g[class] -= inv_batch;
    }
    total.expect("a batch has at least one example") / count::<S>(classes.len())
}

/// A count as a number (a conversion: free).
fn count<S: Scalar>(n: usize) -> S {
    S::from_usize(n).expect("every Scalar holds a count")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_entropy_of_uniform_logits_is_ln_width() {
        let z = [0.5f64; 8];
        let mut g = [0.0; 8];
        let loss = softmax_cross_entropy(&z, &[1, 3], 4, &mut g);
        assert!((loss - 4f64.ln()).abs() < 1e-12);
        // (1/4 - 1) / 2 at the class, 1/4 / 2 elsewhere.
        assert!((g[1] + 0.375).abs() < 1e-12 && (g[0] - 0.125).abs() < 1e-12);
    }

    #[test]
    fn mse_matches_its_definition() {
        let mut g = [0.0f64; 2];
        let loss = mse(&[1.0, 3.0], &[0.0, 1.0], &mut g);
        assert_eq!(loss, 2.5);
        assert_eq!(g, [1.0, 2.0]);
    }
}
