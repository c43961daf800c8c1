//! MatMul: the matrix product of two computed values, `[..., t, k]` times `[..., k, n]`,
//! one product per matrix of the leading axes (which both share): attention written out,
//! `q kᵀ` and `p v`. Every sum starts from its first product: forward, per output, k mul and
//! k - 1 add; backward `da = dc bᵀ` (per value of a, n mul, n - 1 add) and `db = aᵀ dc` (per
//! value of b, t mul, t - 1 add), each only if wanted. No parameters. The loops index
//! plainly, for reading: attention written out is small next to the dense layers around it.

use super::ops::{Backward, Kernel, Operation};
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
    fn forward(&mut self, x: &[&[S]], _: &[&[S]], y: &mut [S]) {
        let MatMul { t, k, n, .. } = self.0;
        let pairs = x[0].chunks_exact(t * k).zip(x[1].chunks_exact(k * n));
        for ((a, b), c) in pairs.zip(y.chunks_exact_mut(t * n)) {
            product(a, b, c, k, n);
        }
    }

    fn backward(&mut self, grads: Backward<'_, S>) {
        let Backward { x, dy, dx, .. } = grads;
        let MatMul { t, k, n, .. } = self.0;
        let (a, b) = (x[0], x[1]);
        let (da, db) = match dx {
            [da, db] => (da, db),
            _ => return,
        };
        if let Some(da) = da.as_deref_mut() {
            let parts = dy.chunks_exact(t * n).zip(b.chunks_exact(k * n));
            for ((dc, b), da) in parts.zip(da.chunks_exact_mut(t * k)) {
                times_transposed(dc, b, da, n, k);
            }
        }
        if let Some(db) = db.as_deref_mut() {
            let parts = a.chunks_exact(t * k).zip(dy.chunks_exact(t * n));
            for ((a, dc), db) in parts.zip(db.chunks_exact_mut(k * n)) {
                transposed_times(a, dc, db, t, k, n);
            }
        }
    }
}

/// `c = a b` for one `[t, k]` a and `[k, n]` b: each sum from its first product.
#[inline(never)]
fn product<S: Scalar>(a: &[S], b: &[S], c: &mut [S], k: usize, n: usize) {
    for (row, c_row) in a.chunks_exact(k).zip(c.chunks_exact_mut(n)) {
        for (j, c) in c_row.iter_mut().enumerate() {
            let mut sum = row[0] * b[j];
            for p in 1..k {
                sum += row[p] * b[p * n + j];
            }
            *c = sum;
        }
    }
}

/// `da = dc bᵀ` for one `[t, n]` dc and `[k, n]` b: da is `[t, k]`.
#[inline(never)]
fn times_transposed<S: Scalar>(dc: &[S], b: &[S], da: &mut [S], n: usize, k: usize) {
    for (dc_row, da_row) in dc.chunks_exact(n).zip(da.chunks_exact_mut(k)) {
        for (da, b_row) in da_row.iter_mut().zip(b.chunks_exact(n)) {
            let mut sum = dc_row[0] * b_row[0];
            for j in 1..n {
                sum += dc_row[j] * b_row[j];
            }
            *da = sum;
        }
    }
}

/// `db = aᵀ dc` for one `[t, k]` a and `[t, n]` dc: db is `[k, n]`.
#[inline(never)]
fn transposed_times<S: Scalar>(a: &[S], dc: &[S], db: &mut [S], t: usize, k: usize, n: usize) {
    for p in 0..k {
        for j in 0..n {
            let mut sum = a[p] * dc[j];
            for i in 1..t {
                sum += a[i * k + p] * dc[i * n + j];
            }
            db[p * n + j] = sum;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
