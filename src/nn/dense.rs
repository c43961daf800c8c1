//! A fully connected layer: `z_j = b_j + sum_i x_i W_ij`, its gradients and its update.
//!
//! Weights are stored input-major, `w[i * units + j]`, so the inner loops of forward and of
//! the weight gradient run over contiguous outputs `j` and vectorize without reordering any
//! sum. Every sum is accumulated in ascending order of its index, starting from the bias or
//! the first product (docs/counting.md: a sum of k terms costs k-1 adds).

use super::buffer::Buffer;
use crate::scalar::Scalar;

/// Parameters and gradients of a dense layer of `inputs` (N) to `units` (M).
#[derive(Clone, Debug)]
pub(crate) struct Dense<S> {
    pub inputs: usize,
    pub units: usize,
    /// `inputs x units`, input-major.
    pub w: Buffer<S>,
    /// `units` biases, or empty for a layer without bias.
    pub b: Buffer<S>,
    pub dw: Buffer<S>,
    pub db: Buffer<S>,
}

impl<S: Scalar> Dense<S> {
    /// A layer with the given weights (input-major) and biases (empty for none).
    pub fn new(inputs: usize, units: usize, w: Buffer<S>, b: &[S]) -> Dense<S> {
        debug_assert_eq!(w.len(), inputs * units);
        Dense {
            inputs,
            units,
            dw: Buffer::filled(w.len(), S::zero()),
            w,
            b: Buffer::from_slice(b),
            db: Buffer::filled(b.len(), S::zero()),
        }
    }

    /// `z[e][j] = b[j] + sum_i x[e][i] * w[i][j]`: per example N*M mul and N*M add (N*M - M
    /// add without bias).
    ///
    /// # Shapes
    /// `x`: batch x N, `z`: batch x M.
    pub fn forward(&self, x: &[S], z: &mut [S]) {
        forward(&self.w, &self.b, x, z, self.inputs, self.units);
    }

    /// Gradients from `dz` = dL/dz:
    /// - `dw[i][j] = sum_e x[e][i] * dz[e][j]`: B*N*M mul, (B-1)*N*M add;
    /// - `db[j] = sum_e dz[e][j]`: (B-1)*M add;
    /// - if `dx` is given, `dx[e][i] = sum_j w[i][j] * dz[e][j]`: B*N*M mul, B*N*(M-1) add.
    ///
    /// # Shapes
    /// `x`: batch x N, `dz`: batch x M, `dx`: batch x N.
    pub fn backward(&mut self, x: &[S], dz: &[S], dx: Option<&mut [S]>) {
        let (n, m) = (self.inputs, self.units);
        weight_grads(x, dz, &mut self.dw, n, m);
        if !self.db.is_empty() {
            bias_grads(dz, &mut self.db);
        }
        if let Some(dx) = dx {
            input_grads(&self.w, dz, dx, n, m);
        }
    }

    /// `p -= lr * dp` for every weight and bias: one mul and one sub each.
    pub fn update(&mut self, lr: S) {
        sgd(&mut self.w, &self.dw, lr);
        sgd(&mut self.b, &self.db, lr);
    }
}

// The kernels are free functions that take every buffer they write as a `&mut` slice
// argument and are never inlined: the compiler then knows those writes cannot touch the
// thread-local tally, keeps the counters in registers across each loop and vectorizes the
// counted loop exactly like the plain one. N is the layer's inputs, M its units.

/// Forward: see [`Dense::forward`]. `b` empty means no bias. Four input rows are added per
/// pass over `z` (one load and store of `z[j]` instead of four); each `z[j]` still receives
/// its products one at a time in ascending `i`.
#[inline(never)]
fn forward<S: Scalar>(w: &[S], b: &[S], x: &[S], z: &mut [S], n: usize, m: usize) {
    for (xe, ze) in x.chunks_exact(n).zip(z.chunks_exact_mut(m)) {
        let mut i = 0;
        if b.is_empty() {
            for (zj, &wj) in ze.iter_mut().zip(&w[..m]) {
                *zj = xe[0] * wj;
            }
            i = 1;
        } else {
            ze.copy_from_slice(b);
        }
        while n - i >= 4 {
            let row = |k: usize| &w[(i + k) * m..(i + k + 1) * m];
            let (x0, x1, x2, x3) = (xe[i], xe[i + 1], xe[i + 2], xe[i + 3]);
            let rows = row(0).iter().zip(row(1)).zip(row(2)).zip(row(3));
            for (zj, (((&w0, &w1), &w2), &w3)) in ze.iter_mut().zip(rows) {
                let mut acc = *zj;
                acc += x0 * w0;
                acc += x1 * w1;
                acc += x2 * w2;
                acc += x3 * w3;
                *zj = acc;
            }
            i += 4;
        }
        for (row, &xi) in w[i * m..].chunks_exact(m).zip(&xe[i..]) {
            for (zj, &wij) in ze.iter_mut().zip(row) {
                *zj += xi * wij;
            }
        }
    }
}

/// `dw[i][j] = sum_e x[e][i] * dz[e][j]`, accumulated from the first example.
#[inline(never)]
fn weight_grads<S: Scalar>(x: &[S], dz: &[S], dw: &mut [S], n: usize, m: usize) {
    for (e, (xe, dze)) in x.chunks_exact(n).zip(dz.chunks_exact(m)).enumerate() {
        for (row, &xi) in dw.chunks_exact_mut(m).zip(xe) {
            if e == 0 {
                for (g, &d) in row.iter_mut().zip(dze) {
                    *g = xi * d;
                }
            } else {
                for (g, &d) in row.iter_mut().zip(dze) {
                    *g += xi * d;
                }
            }
        }
    }
}

/// `db[j] = sum_e dz[e][j]`, accumulated from the first example.
#[inline(never)]
fn bias_grads<S: Scalar>(dz: &[S], db: &mut [S]) {
    let mut rows = dz.chunks_exact(db.len());
    db.copy_from_slice(rows.next().expect("a batch has at least one example"));
    for dze in rows {
        for (g, &d) in db.iter_mut().zip(dze) {
            *g += d;
        }
    }
}

/// `dx[e][i] = sum_j w[i][j] * dz[e][j]`, accumulated from the first product. Each sum runs
/// along a row of `w`, so one sum alone is a chain of dependent adds: four rows are summed
/// side by side to keep the adder busy, each still in ascending `j`.
#[inline(never)]
fn input_grads<S: Scalar>(w: &[S], dz: &[S], dx: &mut [S], n: usize, m: usize) {
    for (dxe, dze) in dx.chunks_exact_mut(n).zip(dz.chunks_exact(m)) {
        let mut blocks = dxe.chunks_exact_mut(4).zip(w.chunks_exact(4 * m));
        for (out, rows) in &mut blocks {
            let (r0, rest) = rows.split_at(m);
            let (r1, rest) = rest.split_at(m);
            let (r2, r3) = rest.split_at(m);
            out.copy_from_slice(&dots4([r0, r1, r2, r3], dze));
        }
        let done = n - n % 4;
        for (out, row) in dxe[done..].iter_mut().zip(w[done * m..].chunks_exact(m)) {
            *out = dot(row, dze);
        }
    }
}

/// Four dot products with `v`, side by side; every row has `v.len()` values. The loop is
/// written with zipped iterators, so it cannot panic: a loop with an exit to a panic must
/// keep the thread's counters up to date on every iteration (the panic could be caught and
/// the tally read), which would stop the compiler from keeping them in registers.
#[inline(always)]
fn dots4<S: Scalar>([r0, r1, r2, r3]: [&[S]; 4], v: &[S]) -> [S; 4] {
    let mut acc = [r0[0] * v[0], r1[0] * v[0], r2[0] * v[0], r3[0] * v[0]];
    let rows = r0[1..].iter().zip(&r1[1..]).zip(&r2[1..]).zip(&r3[1..]);
    for ((((&w0, &w1), &w2), &w3), &d) in rows.zip(&v[1..]) {
        acc[0] += w0 * d;
        acc[1] += w1 * d;
        acc[2] += w2 * d;
        acc[3] += w3 * d;
    }
    acc
}

/// One dot product, accumulated from the first product.
#[inline(always)]
fn dot<S: Scalar>(a: &[S], b: &[S]) -> S {
    let mut acc = a[0] * b[0];
    for (&x, &y) in a[1..].iter().zip(&b[1..]) {
        acc += x * y;
    }
    acc
}

/// `p -= lr * g`, element by element.
#[inline(never)]
pub(crate) fn sgd<S: Scalar>(params: &mut [S], grads: &[S], lr: S) {
    for (p, &g) in params.iter_mut().zip(grads) {
        *p -= lr * g;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Counted, Counts, tally};

    fn layer(n: usize, m: usize, bias: bool) -> Dense<Counted<f64>> {
        let w: Vec<_> = (0..n * m)
            .map(|k| Counted::new(k as f64 * 0.1 - 0.3))
            .collect();
        let b: Vec<_> = if bias {
            (0..m).map(|k| Counted::new(k as f64)).collect()
        } else {
            Vec::new()
        };
        Dense::new(n, m, Buffer::from_slice(&w), &b)
    }

    #[test]
    fn forward_is_the_weighted_sum_from_the_bias() {
        // 2 inputs, 3 units: z_j = b_j + x0 w0j + x1 w1j, weights 0.1k - 0.3.
        let d = layer(2, 3, true);
        let x = Counted::vec(&[1.0, 2.0]);
        let mut z = vec![Counted::new(0.0); 3];
        let (_, counts) = tally::measure(|| d.forward(&x, &mut z));
        let expected = [
            0.0 + 1.0 * -0.3 + 2.0 * (3.0 * 0.1 - 0.3),
            1.0 + 1.0 * (0.1 - 0.3) + 2.0 * (4.0 * 0.1 - 0.3),
            2.0 + 1.0 * (0.2 - 0.3) + 2.0 * (5.0 * 0.1 - 0.3),
        ];
        for (got, want) in z.iter().zip(expected) {
            assert!((got.get() - want).abs() < 1e-12, "{got} vs {want}");
        }
        counts.assert_eq(&Counts {
            mul: 6,
            add: 6,
            ..Counts::ZERO
        });
    }

    #[test]
    fn without_bias_a_sum_of_n_products_costs_n_minus_one_adds() {
        let d = layer(4, 5, false);
        let x = Counted::vec(&[1.0; 8]);
        let mut z = vec![Counted::new(0.0); 10];
        let (_, counts) = tally::measure(|| d.forward(&x, &mut z));
        counts.assert_eq(&Counts {
            mul: 2 * 4 * 5,
            add: 2 * 3 * 5,
            ..Counts::ZERO
        });
    }
}
