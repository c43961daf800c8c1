//! MatMul: the matrix product of two computed values, `[..., t, k]` times `[..., k, n]`,
//! one product per matrix of the leading axes (which both share): attention written out,
//! `q kᵀ` and `p v`. Every sum starts from its first product: forward, per output, k mul and
//! k - 1 add; backward `da = dc bᵀ` (per value of a, n mul, n - 1 add) and `db = aᵀ dc` (per
//! value of b, t mul, t - 1 add), each only if wanted. No parameters. Each product is a
//! `gemm` (each sum in ascending order from its first product, later ones fused), one matrix
//! per task on all cores when there are many.

use super::gemm::{Start, Strided, gemm};
use super::ops::{Backward, Kernel, Operation};
use super::scores::in_parallel;
use crate::counts::Counts;
use crate::error::Result;
use crate::estimate::{At, counts};
use crate::phases::NodeCounts;
use crate::scalar::Scalar;
use crate::shape::Shape;

/// MatMul, resolved: `m` matrices per example, each `[t, k]` times `[k, n]`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct MatMul {
    /// The shape of the output, `[..., t, n]`.
    pub shape: Shape,
    /// Products per example (the product of the leading axes).
    pub m: usize,
    /// Rows of a and of the output.
    pub t: usize,
    /// Columns of a, rows of b.
    pub k: usize,
    /// Columns of b and of the output.
    pub n: usize,
}

impl MatMul {
    /// The shape rule: `[..., t, k]` and `[..., k, n]`, the same leading axes, rank 2 or more.
    pub(crate) fn resolve(inputs: &[Shape]) -> Result<MatMul, String> {
        let [a, b] = inputs else {
            return Err(format!("matmul expects 2 inputs, found {}", inputs.len()));
        };
        let (ra, rb) = (a.rank(), b.rank());
        if ra < 2 || ra != rb || a.dims()[..ra - 2] != b.dims()[..rb - 2] {
            return Err(format!(
                "matmul expects [..., t, k] and [..., k, n] with the same leading axes, \
                 found {a} and {b}"
            ));
        }
        let (t, k) = (a.dims()[ra - 2], a.dims()[ra - 1]);
        let (k2, n) = (b.dims()[rb - 2], b.dims()[rb - 1]);
        if k != k2 {
            return Err(format!(
                "matmul: {a} times {b}: {k} columns against {k2} rows"
            ));
        }
        let mut out = a.dims().to_vec();
        out[ra - 1] = n;
        Ok(MatMul {
            shape: Shape::new(&out).expect("the rank of an input"),
            m: a.dims()[..ra - 2].iter().product(),
            t,
            k,
            n,
        })
    }

    pub(crate) fn kernel(&self) -> MatMulKernel {
        MatMulKernel(*self)
    }
}

impl Operation for MatMul {
    fn kind(&self) -> &'static str {
        "matmul"
    }

    fn output(&self) -> Shape {
        self.shape
    }

    /// Forward, per output value: k mul, k - 1 add. Backward: per value of a, n mul and
    /// n - 1 add (if its gradient is wanted); per value of b, t mul and t - 1 add (likewise).
    fn closed_form(&self, at: At<'_>, name: &str, grads: &[bool]) -> Result<NodeCounts> {
        let Self { m, t, k, n, .. } = *self;
        let mats = at.b() * m;
        let forward = counts! { at, format!("{name} forward");
        mul: mats * t * n * k, add: mats * t * n * (k - 1) }?;
        let what = format!("{name} backward");
        let da = counts! { at, what; mul: mats * t * k * n, add: mats * t * k * (n - 1) }?;
        let db = counts! { at, what; mul: mats * k * n * t, add: mats * k * n * (t - 1) }?;
        let mut backward = Counts::ZERO;
        for (wanted, c) in grads.iter().zip([da, db]) {
            if *wanted {
                backward = backward
                    .checked_add(c)
                    .ok_or_else(|| at.overflow(format!("{name} backward")))?;
            }
        }
        Ok(NodeCounts {
            forward,
            backward,
            ..NodeCounts::default()
        })
    }
}

pub(crate) struct MatMulKernel(MatMul);

impl<S: Scalar> Kernel<S> for MatMulKernel {
    /// # Shapes
    /// `x[0]`: batch x m x t x k; `x[1]`: batch x m x k x n; `y`: batch x m x t x n.
    fn forward(&mut self, x: &[&[S]], _: &[&[S]], y: &mut [S]) {
        let MatMul { t, k, n, .. } = self.0;
        let work = y.len() * k;
        let tasks: Vec<_> = y.chunks_exact_mut(t * n).enumerate().collect();
        in_parallel(tasks, work, |(i, c)| {
            product(
                &x[0][i * t * k..][..t * k],
                &x[1][i * k * n..][..k * n],
                c,
                k,
                n,
            );
        });
    }

    /// `da = dc b^T`, `db = a^T dc`, each if wanted.
    ///
    /// # Shapes
    /// As the forward's; `dy` as `y`, `dx` as `x`.
    fn backward(&mut self, grads: Backward<'_, S>) {
        let Backward { x, dy, dx, .. } = grads;
        let MatMul { t, k, n, .. } = self.0;
        let (a, b) = (x[0], x[1]);
        let (da, db) = match dx {
            [da, db] => (da, db),
            _ => return,
        };
        if let Some(da) = da.as_deref_mut() {
            let tasks: Vec<_> = da.chunks_exact_mut(t * k).enumerate().collect();
            in_parallel(tasks, dy.len() * k, |(i, da)| {
                times_transposed(
                    &dy[i * t * n..][..t * n],
                    &b[i * k * n..][..k * n],
                    da,
                    n,
                    k,
                );
            });
        }
        if let Some(db) = db.as_deref_mut() {
            let tasks: Vec<_> = db.chunks_exact_mut(k * n).enumerate().collect();
            in_parallel(tasks, dy.len() * k, |(i, db)| {
                transposed_times(
                    &a[i * t * k..][..t * k],
                    &dy[i * t * n..][..t * n],
                    db,
                    t,
                    k,
                    n,
                );
            });
        }
    }
}

/// A row-major matrix of rows `width` long, as a matrix-product operand.
pub(crate) fn rows<S>(data: &[S], width: usize) -> Strided<'_, S> {
    Strided {
        data,
        row_stride: width,
        col_stride: 1,
    }
}

/// The transpose of a row-major matrix of rows `width` long, as a matrix-product operand.
pub(crate) fn columns<S>(data: &[S], width: usize) -> Strided<'_, S> {
    Strided {
        data,
        row_stride: 1,
        col_stride: width,
    }
}

/// `c = a b` (`a` t x k, `b` k x n): k mul and k - 1 add per value.
fn product<S: Scalar>(a: &[S], b: &[S], c: &mut [S], k: usize, n: usize) {
    let t = c.len() / n;
    gemm((t, n, k), &rows(a, k), &rows(b, n), Start::FirstProduct, c);
}

/// `da = dc b^T` (`dc` t x n, `b` k x n): n mul and n - 1 add per value.
fn times_transposed<S: Scalar>(dc: &[S], b: &[S], da: &mut [S], n: usize, k: usize) {
    let t = da.len() / k;
    gemm(
        (t, k, n),
        &rows(dc, n),
        &columns(b, n),
        Start::FirstProduct,
        da,
    );
}

/// `db = a^T dc` (`a` t x k, `dc` t x n): t mul and t - 1 add per value.
fn transposed_times<S: Scalar>(a: &[S], dc: &[S], db: &mut [S], t: usize, k: usize, n: usize) {
    gemm(
        (k, n, t),
        &columns(a, k),
        &rows(dc, n),
        Start::FirstProduct,
        db,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::ops::Backward;
    use crate::{Counted, Op, tally};

    #[test]
    fn multiplies_matrices_with_k_mul_and_k_minus_1_add_per_output() {
        // [[1, 2], [3, 4]] times [[5, 6, 7], [8, 9, 10]].
        let a = Counted::vec(&[1.0f64, 2.0, 3.0, 4.0]);
        let b = Counted::vec(&[5.0f64, 6.0, 7.0, 8.0, 9.0, 10.0]);
        let mut c = vec![Counted::new(0.0); 6];
        let ((), counts) = tally::measure(|| product(&a, &b, &mut c, 2, 3));
        assert_eq!(
            Counted::unwrap_slice(&c),
            [21.0, 24.0, 27.0, 47.0, 54.0, 61.0]
        );
        assert_eq!(counts, Counts::of(Op::Mul, 12) + Counts::of(Op::Add, 6));
    }

    #[test]
    fn refuses_shapes_that_do_not_multiply() {
        let s = |d: &[usize]| Shape::new(d).unwrap();
        assert!(MatMul::resolve(&[s(&[2, 3]), s(&[4, 5])]).is_err());
        assert!(MatMul::resolve(&[s(&[2, 2, 3]), s(&[3, 3, 5])]).is_err());
        assert!(MatMul::resolve(&[s(&[3]), s(&[3])]).is_err());
        let ok = MatMul::resolve(&[s(&[2, 4, 3]), s(&[2, 3, 5])]).unwrap();
        assert_eq!((ok.m, ok.t, ok.k, ok.n), (2, 4, 3, 5));
        assert_eq!(ok.shape, s(&[2, 4, 5]));
    }

    /// Forward and both gradients of 5 matrices against the definition (each sum from its
    /// first product in ascending order, later ones fused as `gemm` does here), bit for bit,
    /// with k, n and t products per value; on 1 and 2 threads alike.
    #[test]
    fn products_match_the_definition_bit_for_bit() {
        let (m, t, k, n) = (5, 7, 300, 9);
        let fused = crate::nn::gemm::fuses();
        let sum = |len: usize, f: &dyn Fn(usize) -> (f64, f64)| {
            let (x, y) = f(0);
            (1..len).fold(x * y, |acc, i| {
                let (x, y) = f(i);
                if fused {
                    x.mul_add(y, acc)
                } else {
                    acc + x * y
                }
            })
        };
        let a: Vec<f64> = (0..m * t * k)
            .map(|i| (i % 13) as f64 * 0.29 - 1.7)
            .collect();
        let b: Vec<f64> = (0..m * k * n)
            .map(|i| (i % 11) as f64 * 0.37 - 1.1)
            .collect();
        let dc: Vec<f64> = (0..m * t * n)
            .map(|i| (i % 7) as f64 * 0.53 - 1.3)
            .collect();
        let op = MatMul::resolve(&[
            Shape::new(&[m, t, k]).unwrap(),
            Shape::new(&[m, k, n]).unwrap(),
        ])
        .unwrap();
        let run = || {
            let (ca, cb, cdc) = (Counted::vec(&a), Counted::vec(&b), Counted::vec(&dc));
            let mut c = vec![Counted::new(0.0); m * t * n];
            let (mut da, mut db) = (
                vec![Counted::new(0.0); m * t * k],
                vec![Counted::new(0.0); m * k * n],
            );
            let mut kernel = op.kernel();
            let ((), counts) = tally::measure(|| {
                kernel.forward(&[&ca, &cb], &[], &mut c);
                kernel.backward(Backward {
                    x: &[&ca, &cb],
                    y: &c,
                    dy: &cdc,
                    params: &[],
                    dparams: &mut [],
                    dx: &mut [Some(&mut da), Some(&mut db)],
                });
            });
            let bits = [c, da, db].map(|v| v.iter().map(|v| v.get().to_bits()).collect::<Vec<_>>());
            (bits, counts)
        };
        let (got, counts) = run();
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        assert_eq!(one.install(run), (got.clone(), counts));
        for i in 0..m {
            let (a, b, dc) = (&a[i * t * k..], &b[i * k * n..], &dc[i * t * n..]);
            for r in 0..t {
                for j in 0..n {
                    let want = sum(k, &|p| (a[r * k + p], b[p * n + j]));
                    assert_eq!(got[0][i * t * n + r * n + j], want.to_bits());
                }
                for p in 0..k {
                    let want = sum(n, &|j| (dc[r * n + j], b[p * n + j]));
                    assert_eq!(got[1][i * t * k + r * k + p], want.to_bits());
                }
            }
            for p in 0..k {
                for j in 0..n {
                    let want = sum(t, &|r| (a[r * k + p], dc[r * n + j]));
                    assert_eq!(got[2][i * k * n + p * n + j], want.to_bits());
                }
            }
        }
        let (m, t, k, n) = (m as u128, t as u128, k as u128, n as u128);
        assert_eq!(counts[Op::Mul], 3 * m * t * k * n);
        assert_eq!(
            counts[Op::Add],
            m * (t * n * (k - 1) + t * k * (n - 1) + k * n * (t - 1))
        );
    }
}
