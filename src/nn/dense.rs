//! Dense: a fully connected layer, `z_j = b_j + sum_i x_i W_ij`, applied to every row of its
//! input's last axis (a `[features]` value is one row, a `[tokens, width]` value one row per
//! token). Its shape rule, parameters, closed form, forward and backward.
//!
//! Weights are stored input-major, `w[i * units + j]`, so the inner loops of forward and of
//! the weight gradient run over contiguous outputs `j` and vectorize without reordering any
//! sum. Every sum is accumulated in ascending order of its index, starting from the bias or
//! the first product (docs/counting.md: a sum of k terms costs k-1 adds), each product added
//! with one fused multiply-add as in the matrix product (`gemm::madd`).
//!
//! Large layers run on all cores: each part computes whole values (a range of units, of
//! inputs, of examples or of parameters), each value's sum in the same order as alone, so
//! the split changes no bit and no count.

use rayon::prelude::*;

use super::gemm::{Start, Strided, gemm, madd};
use super::ops::{Backward, Kernel, Operation, ParamSpec};
use crate::counts::Counts;
use crate::error::Result;
use crate::estimate::{At, Q, counts, q, when};
use crate::phases::NodeCounts;
use crate::scalar::Scalar;
use crate::shape::Shape;
use crate::tally;

/// Below this many multiply-adds (or updated values) a kernel runs on the calling thread.
const PARALLEL_WORK: usize = 1 << 20;

/// From this many examples on, and `GEMM_WORK` multiply-adds, forward and gradients are
/// matrix products (`gemm`): the same sums in the same order, each product added with the
/// same fused multiply-add, so the same bits as the loops below, which serve smaller batches
/// (a matrix product of one row would copy every weight for one use) and smaller layers
/// (where setting up a product costs more than it saves). (Only a build for a CPU without FMA, whose loops do not
/// fuse, run where `gemm` finds AVX2 or AVX-512 and does, would give other bits.)
const GEMM_BATCH: usize = 6;
const GEMM_WORK: usize = 1 << 14;

/// A row-major matrix of rows `width` long, as a matrix-product operand.
fn rows<S>(data: &[S], width: usize) -> Strided<'_, S> {
    Strided {
        data,
        row_stride: width,
        col_stride: 1,
    }
}

/// The transpose of a row-major matrix of rows `width` long.
fn columns<S>(data: &[S], width: usize) -> Strided<'_, S> {
    Strided {
        data,
        row_stride: 1,
        col_stride: width,
    }
}

/// Runs `kernel` on pieces of `out`, each a whole number of `unit` values, one per thread,
/// with the offset of its first value; each piece is counted on its thread and merged into
/// the caller's tally (`tally::parallel`). Alone on the calling thread if `work` is small.
fn in_parts<S: Scalar>(
    out: &mut [S],
    unit: usize,
    work: usize,
    kernel: impl Fn(&mut [S], usize) + Sync,
) {
    // The size first: asking rayon for its threads costs more than a tiny layer's step.
    if work < PARALLEL_WORK || out.len() < 2 * unit || rayon::current_num_threads() == 1 {
        kernel(out, 0);
        return;
    }
    let threads = rayon::current_num_threads();
    let per = (out.len() / unit).div_ceil(threads) * unit;
    tally::parallel(|| {
        let counts: Vec<Counts> = out
            .par_chunks_mut(per)
            .enumerate()
            .map(|(p, piece)| tally::take(|| kernel(piece, p * per)).1)
            .collect();
        ((), counts.into_iter().sum())
    });
}

/// A dense layer of `inputs` (N) to `units` (M), applied to R rows per example, resolved.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Dense {
    /// The shape of one example's input: `[N]` or `[R, N]`.
    pub input: Shape,
    /// R, rows per example: 1 for a `[features]` input, T for `[tokens, width]`.
    pub rows: usize,
    /// N, values per row in.
    pub inputs: usize,
    /// M, values per row out.
    pub units: usize,
    /// Whether each sum starts from a bias.
    pub bias: bool,
}

impl Dense {
    /// The shape rule: N values (`[N]`), or R rows of N (`[R, N]`). An image is refused
    /// rather than read as rows of pixels: a dense layer after a convolution almost always
    /// means a missing Flatten.
    pub(crate) fn resolve(units: usize, bias: bool, input: Shape) -> Result<Dense, String> {
        let (rows, inputs) = match *input.dims() {
            [n] => (1, n),
            [r, n] => (r, n),
            _ => {
                return Err(format!(
                    "dense expects [features] or [tokens, width], found {input}; \
                     add a Flatten layer before it"
                ));
            }
        };
        check_size("units", units)?;
        inputs
            .checked_mul(units)
            .ok_or_else(|| format!("{units} units x {inputs} inputs is too many weights"))?;
        Ok(Dense {
            input,
            rows,
            inputs,
            units,
            bias,
        })
    }

    pub(crate) fn kernel(&self) -> DenseKernel {
        DenseKernel(*self)
    }
}

impl Operation for Dense {
    fn kind(&self) -> &'static str {
        "dense"
    }

    fn output(&self) -> Shape {
        self.input.with_last(self.units)
    }

    /// Weights `inputs x units` (stored input-major), then `units` biases.
    fn params(&self) -> Vec<ParamSpec> {
        let (n, m) = (self.inputs, self.units);
        let mut specs = vec![ParamSpec {
            len: n * m,
            fans: Some((n, m)),
            start: 0.0,
        }];
        if self.bias {
            specs.push(ParamSpec {
                len: m,
                fans: None,
                start: 0.0,
            });
        }
        specs
    }

    /// Model files give weights neuron-major (`[unit][input]`, PyTorch's order).
    fn storage_order(&self, index: usize, values: &[f32]) -> Vec<f32> {
        let (n, m) = (self.inputs, self.units);
        match index {
            0 => (0..n * m).map(|at| values[(at % m) * n + at / m]).collect(),
            _ => values.to_vec(),
        }
    }

    fn explain_param(&self, index: usize) -> String {
        match index {
            0 => format!("{} units x {} inputs", self.units, self.inputs),
            _ => format!("{} units", self.units),
        }
    }

    fn file_order(&self, index: usize, values: &[f32]) -> Vec<f32> {
        let (n, m) = (self.inputs, self.units);
        match index {
            0 => (0..n * m).map(|at| values[(at % n) * m + at / n]).collect(),
            _ => values.to_vec(),
        }
    }

    fn closed_form(&self, at: At<'_>, name: &str, grads: &[bool]) -> Result<NodeCounts> {
        // Every row of every example is one row of the product: B*R of them.
        let (b, n, m, bias) = (at.b() * self.rows, self.inputs, self.units, self.bias);
        let dx = grads[0];
        // Forward, per row and unit: z_j = b_j + sum_i x_i W_ij, N products summed
        // from the bias (N adds), or from the first product without bias (N - 1 adds).
        let forward = counts! { at, format!("{name} forward");
            mul: b * n * m,
            add: if bias { b * n * m } else { b * (n - 1) * m },
        }?;
        // Backward, over the B*R rows r: dW_ij = sum_r x_ri dz_rj (B*R products, B*R - 1
        // adds, for N*M weights); db_j = sum_r dz_rj (B*R - 1 adds, for M biases);
        // dx_ri = sum_j W_ij dz_rj (M products, M - 1 adds, for B*R*N inputs) only if an
        // earlier node learns.
        let backward = counts! { at, format!("{name} backward");
            mul: b * n * m + when(dx, b * n * m),
            add: (b - 1) * n * m + when(bias, (b - 1) * m) + when(dx, b * n * (m - 1)),
        }?;
        // Update: p -= lr * dp, one mul and one sub per parameter.
        let params: Q = q(n) * m + when(bias, q(m));
        let update = counts! { at, format!("{name} update"); mul: params, sub: params }?;
        Ok(NodeCounts {
            forward,
            backward,
            update,
        })
    }
}

/// Sizes between 1 and [`MAX_DIM`](crate::model::MAX_DIM).
pub(crate) fn check_size(what: &str, n: usize) -> Result<(), String> {
    let max = crate::model::MAX_DIM;
    if n == 0 || n > max {
        Err(format!("{what}: expected between 1 and {max}, found {n}"))
    } else {
        Ok(())
    }
}

/// The kernels of a dense layer; it keeps no state. They see a batch as B*R rows of N
/// values (`e` below is a row), so the closed form's B is the kernels' B*R.
pub(crate) struct DenseKernel(Dense);

impl<S: Scalar> Kernel<S> for DenseKernel {
    /// `z[e][j] = b[j] + sum_i x[e][i] * w[i][j]`: per row N*M mul and N*M add (N*M - M
    /// add without bias).
    fn forward(&mut self, x: &[&[S]], params: &[&[S]], z: &mut [S]) {
        let (n, m) = (self.0.inputs, self.0.units);
        let (x, w) = (x[0], params[0]);
        let b = params.get(1).copied().unwrap_or(&[]);
        let work = z.len() * n;
        let batch = z.len() / m;
        if batch >= GEMM_BATCH && work >= GEMM_WORK {
            let start = if b.is_empty() {
                Start::FirstProduct
            } else {
                Start::ColumnBias(b)
            };
            gemm((batch, m, n), &rows(x, n), &rows(w, m), start, z);
        } else if batch == 1 {
            // One example: a range of units per thread.
            in_parts(z, 16, work, |zp, j0| {
                let bias = b.get(j0..j0 + zp.len()).unwrap_or(&[]);
                forward(&w[j0..], m, bias, x, zp, n, zp.len());
            });
        } else {
            in_parts(z, m, work, |zp, off| {
                forward(w, m, b, &x[off / m * n..], zp, n, m);
            });
        }
    }

    /// Gradients from `dz` = dL/dz, over the B rows `e`:
    /// - `dw[i][j] = sum_e x[e][i] * dz[e][j]`: B*N*M mul, (B-1)*N*M add;
    /// - `db[j] = sum_e dz[e][j]`: (B-1)*M add;
    /// - if `dx` is wanted, `dx[e][i] = sum_j w[i][j] * dz[e][j]`: B*N*M mul, B*N*(M-1) add.
    fn backward(&mut self, grads: Backward<'_, S>) {
        let Backward {
            x,
            dy: dz,
            params,
            dparams,
            dx,
            ..
        } = grads;
        let (n, m, w, x) = (self.0.inputs, self.0.units, params[0], x[0]);
        let work = dz.len() * n;
        let batch = dz.len() / m;
        let (dw, db) = dparams.split_at_mut(1);
        let gemm_sized = batch >= GEMM_BATCH && work >= GEMM_WORK;
        if gemm_sized {
            gemm(
                (n, m, batch),
                &columns(x, n),
                &rows(dz, m),
                Start::FirstProduct,
                dw[0],
            );
        } else {
            // A range of inputs (rows of dw) per thread.
            in_parts(dw[0], m, work, |dwp, off| {
                weight_grads(&x[off / m..], dz, dwp, n, m);
            });
        }
        if let Some(db) = db.first_mut() {
            bias_grads(dz, db);
        }
        if let Some(dx) = dx[0].as_deref_mut() {
            if gemm_sized {
                gemm(
                    (batch, n, m),
                    &rows(dz, m),
                    &columns(w, m),
                    Start::FirstProduct,
                    dx,
                );
            } else if dx.len() == n {
                // One example: a range of inputs per thread.
                in_parts(dx, 4, work, |dxp, i0| {
                    input_grads(&w[i0 * m..], dz, dxp, dxp.len(), m);
                });
            } else {
                in_parts(dx, n, work, |dxp, off| {
                    input_grads(w, &dz[off / n * m..], dxp, n, m);
                });
            }
        }
    }
}

// The kernels are free functions that take every buffer they write as a `&mut` slice
// argument and are never inlined: the compiler then knows those writes cannot touch the
// thread-local tally, keeps the counters in registers across each loop and vectorizes the
// counted loop exactly like the plain one. N is the layer's inputs, M its units.

/// Forward: see [`Dense::forward`], for `m` units whose weights are the first `m` of each row
/// of `w` (rows `ldw` apart). `b` empty means no bias. Four input rows are added per pass
/// over `z` (one load and store of `z[j]` instead of four); each `z[j]` still receives its
/// products one at a time in ascending `i`.
#[inline(never)]
fn forward<S: Scalar>(w: &[S], ldw: usize, b: &[S], x: &[S], z: &mut [S], n: usize, m: usize) {
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
            let row = |k: usize| &w[(i + k) * ldw..(i + k) * ldw + m];
            let (x0, x1, x2, x3) = (xe[i], xe[i + 1], xe[i + 2], xe[i + 3]);
            let rows = row(0).iter().zip(row(1)).zip(row(2)).zip(row(3));
            for (zj, (((&w0, &w1), &w2), &w3)) in ze.iter_mut().zip(rows) {
                let mut acc = *zj;
                acc = madd(acc, x0, w0);
                acc = madd(acc, x1, w1);
                acc = madd(acc, x2, w2);
                acc = madd(acc, x3, w3);
                *zj = acc;
            }
            i += 4;
        }
        for (r, &xi) in xe.iter().enumerate().skip(i) {
            for (zj, &wij) in ze.iter_mut().zip(&w[r * ldw..r * ldw + m]) {
                *zj = madd(*zj, xi, wij);
            }
        }
    }
}

/// `dw[i][j] = sum_e x[e][i] * dz[e][j]`, accumulated from the first example, for the rows
/// of `dw` given (the first of them is input 0 of `x`, whose examples are `n` apart).
#[inline(never)]
fn weight_grads<S: Scalar>(x: &[S], dz: &[S], dw: &mut [S], n: usize, m: usize) {
    for (e, (xe, dze)) in x.chunks(n).zip(dz.chunks_exact(m)).enumerate() {
        for (row, &xi) in dw.chunks_exact_mut(m).zip(xe) {
            if e == 0 {
                for (g, &d) in row.iter_mut().zip(dze) {
                    *g = xi * d;
                }
            } else {
                for (g, &d) in row.iter_mut().zip(dze) {
                    *g = madd(*g, xi, d);
                }
            }
        }
    }
}

/// `db[j] = sum_e dz[e][j]`, accumulated from the first row.
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
/// along a row of `w`, so one sum alone is a chain of dependent adds: eight rows are summed
/// side by side (then four) to keep both of the core's multiply-add units busy through
/// their latency, each still in ascending `j`.
#[inline(never)]
fn input_grads<S: Scalar>(w: &[S], dz: &[S], dx: &mut [S], n: usize, m: usize) {
    for (dxe, dze) in dx.chunks_exact_mut(n).zip(dz.chunks_exact(m)) {
        let mut done = 0;
        for (out, rows) in dxe.chunks_exact_mut(8).zip(w.chunks_exact(8 * m)) {
            out.copy_from_slice(&dots::<S, 8>(rows, dze));
            done += 8;
        }
        let (dxe, w) = (&mut dxe[done..], &w[done * m..]);
        let mut done = 0;
        for (out, rows) in dxe.chunks_exact_mut(4).zip(w.chunks_exact(4 * m)) {
            out.copy_from_slice(&dots::<S, 4>(rows, dze));
            done += 4;
        }
        for (out, row) in dxe[done..].iter_mut().zip(w[done * m..].chunks_exact(m)) {
            *out = dot(row, dze);
        }
    }
}

/// `R` dot products with `v`, side by side, of the rows of `rows` (`R` rows of `v.len()`
/// values). Every row is cut to exactly `v.len()` values first, so the loop's indexing
/// cannot go out of bounds and the compiler drops the checks: a loop with an exit to a
/// panic must keep the thread's counters up to date on every iteration (the panic could be
/// caught and the tally read), which would stop the compiler from keeping them in registers.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // value j of row r, the rows side by side
fn dots<S: Scalar, const R: usize>(rows: &[S], v: &[S]) -> [S; R] {
    let m = v.len();
    let rows: [&[S]; R] = std::array::from_fn(|r| &rows[r * m..][..m]);
    let mut acc: [S; R] = std::array::from_fn(|r| rows[r][0] * v[0]);
    for j in 1..m {
        let d = v[j];
        for r in 0..R {
            acc[r] = madd(acc[r], rows[r][j], d);
        }
    }
    acc
}

/// One dot product, accumulated from the first product.
#[inline(always)]
fn dot<S: Scalar>(a: &[S], b: &[S]) -> S {
    let mut acc = a[0] * b[0];
    for (&x, &y) in a[1..].iter().zip(&b[1..]) {
        acc = madd(acc, x, y);
    }
    acc
}

/// `p -= lr * g`, element by element (on all cores when there are many).
pub(crate) fn sgd<S: Scalar>(params: &mut [S], grads: &[S], lr: S) {
    let work = params.len();
    in_parts(params, 1024, work, |part, off| {
        sgd_part(part, &grads[off..], lr)
    });
}

#[inline(never)]
fn sgd_part<S: Scalar>(params: &mut [S], grads: &[S], lr: S) {
    for (p, &g) in params.iter_mut().zip(grads) {
        *p -= lr * g;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Counted, Counts, tally};

    /// Weights 0.1k - 0.3 (input-major), biases k.
    fn layer(n: usize, m: usize, bias: bool) -> (Vec<Counted<f64>>, Vec<Counted<f64>>) {
        let w = (0..n * m)
            .map(|k| Counted::new(k as f64 * 0.1 - 0.3))
            .collect();
        let b = if bias {
            (0..m).map(|k| Counted::new(k as f64)).collect()
        } else {
            Vec::new()
        };
        (w, b)
    }

    #[test]
    fn forward_is_the_weighted_sum_from_the_bias() {
        // 2 inputs, 3 units: z_j = b_j + x0 w0j + x1 w1j, weights 0.1k - 0.3.
        let (w, b) = layer(2, 3, true);
        let x = Counted::vec(&[1.0, 2.0]);
        let mut z = vec![Counted::new(0.0); 3];
        let (_, counts) = tally::measure(|| forward(&w, 3, &b, &x, &mut z, 2, 3));
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
    fn a_layer_split_among_threads_or_run_as_matrix_products_gives_the_loops_bits_and_counts() {
        // Big enough for every kernel to run in parts (when there are threads): one example
        // splits units or inputs, two split examples; seven run as matrix products.
        // A multiple of 4 inputs leaves no rows after the forward's blocks of four; 1030 does.
        for (n, m, batch) in [
            (1028, 1024, 1),
            (1030, 1020, 1),
            (1030, 1020, 2),
            (1030, 1020, GEMM_BATCH + 1),
        ] {
            let (w, b) = layer(n, m, true);
            let op = Dense {
                input: Shape::flat(n),
                rows: 1,
                inputs: n,
                units: m,
                bias: true,
            };
            let mut kernel = op.kernel();
            let x: Vec<_> = (0..batch * n)
                .map(|k| Counted::new((k % 7) as f64 - 3.1))
                .collect();
            let dz: Vec<_> = (0..batch * m)
                .map(|k| Counted::new((k % 5) as f64 * 0.7))
                .collect();
            let mut z = vec![Counted::new(0.0); batch * m];
            let (_, counts) = tally::measure(|| {
                Kernel::<Counted<f64>>::forward(&mut kernel, &[&x], &[&w, &b], &mut z)
            });
            let mut serial = vec![Counted::new(0.0); batch * m];
            forward(&w, m, &b, &x, &mut serial, n, m);
            assert_eq!(Counted::unwrap_slice(&z), Counted::unwrap_slice(&serial));
            let macs = (batch * n * m) as u128;
            counts.assert_eq(&Counts {
                mul: macs,
                add: macs,
                ..Counts::ZERO
            });

            let (mut dw_split, mut db_split) =
                (vec![Counted::new(0.0); n * m], vec![Counted::new(0.0); m]);
            let mut dx = vec![Counted::new(0.0); batch * n];
            let (_, counts) = tally::measure(|| {
                let grads = Backward {
                    x: &[&x],
                    y: &z,
                    dy: &dz,
                    params: &[&w, &b],
                    dparams: &mut [&mut dw_split, &mut db_split],
                    dx: &mut [Some(&mut dx)],
                };
                Kernel::<Counted<f64>>::backward(&mut kernel, grads)
            });
            let mut dw = vec![Counted::new(0.0); n * m];
            let mut serial_dx = vec![Counted::new(0.0); batch * n];
            weight_grads(&x, &dz, &mut dw, n, m);
            input_grads(&w, &dz, &mut serial_dx, n, m);
            assert_eq!(Counted::unwrap_slice(&dw_split), Counted::unwrap_slice(&dw));
            assert_eq!(
                Counted::unwrap_slice(&dx),
                Counted::unwrap_slice(&serial_dx)
            );
            let b = batch as u128;
            let (nm, n1, m1) = ((n * m) as u128, n as u128, m as u128);
            counts.assert_eq(&Counts {
                mul: 2 * b * nm,
                add: (b - 1) * nm + (b - 1) * m1 + b * n1 * (m1 - 1),
                ..Counts::ZERO
            });
        }
    }

    #[test]
    fn without_bias_a_sum_of_n_products_costs_n_minus_one_adds() {
        let (w, b) = layer(4, 5, false);
        let x = Counted::vec(&[1.0; 8]);
        let mut z = vec![Counted::new(0.0); 10];
        let (_, counts) = tally::measure(|| forward(&w, 5, &b, &x, &mut z, 4, 5));
        counts.assert_eq(&Counts {
            mul: 2 * 4 * 5,
            add: 2 * 3 * 5,
            ..Counts::ZERO
        });
    }

    #[test]
    fn file_order_round_trips() {
        let d = Dense {
            input: Shape::flat(3),
            rows: 1,
            inputs: 3,
            units: 2,
            bias: true,
        };
        let file: Vec<f32> = (0..6).map(|v| v as f32).collect();
        let stored = d.storage_order(0, &file);
        // Unit 0's weights are 0, 1, 2; stored input-major: w[i][j] at i * 2 + j.
        assert_eq!(stored, [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        assert_eq!(d.file_order(0, &stored), file);
    }
}
