//! A 2-D convolution as matrix products (docs/counting.md, "Conv2d").
//!
//! Per example, the input is padded with zeros and seen as the matrix of its patches
//! (`im2col`, never materialised: the product reads it block by block): row `k = (c, i, j)`,
//! column `p = (y, x)` holds `in[c][y*stride + i][x*stride + j]`. Then
//! - forward: `out (C_out x P) = bias + W (C_out x K) patches (K x P)`;
//! - weight gradient: `dW (C_out x K) = sum over examples of dout (C_out x P) patches^T`;
//! - input gradient: `dpatches (K x P) = W^T dout`, then every patch entry that lies inside
//!   the input (not in the padding) is added to its input position (`col2im`).
//!
//! Every product goes through `gemm`, which sums in ascending order from the first term.

use rayon::prelude::*;

use super::buffer::Buffer;
use super::dense::sgd;
use super::gemm::{Operand, Start, Strided, gemm};
use crate::counts::Counts;
use crate::scalar::Scalar;
use crate::tally;

/// Geometry of a convolution.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    /// Input height and width.
    pub height: usize,
    pub width: usize,
}

impl Geometry {
    /// Padded input height and width.
    fn padded(&self) -> (usize, usize) {
        (
            self.height + 2 * self.padding,
            self.width + 2 * self.padding,
        )
    }

    /// Output height and width.
    pub fn output(&self) -> (usize, usize) {
        let (hp, wp) = self.padded();
        (
            (hp - self.kernel) / self.stride + 1,
            (wp - self.kernel) / self.stride + 1,
        )
    }

    /// K: weights per output channel.
    fn patch(&self) -> usize {
        self.in_channels * self.kernel * self.kernel
    }

    /// P: output positions per channel.
    fn positions(&self) -> usize {
        let (ho, wo) = self.output();
        ho * wo
    }

    fn input_len(&self) -> usize {
        self.in_channels * self.height * self.width
    }
}

/// Parameters, gradients and scratch space of a convolution.
#[derive(Clone, Debug)]
pub(crate) struct Conv<S> {
    pub geometry: Geometry,
    /// `out_channels x K`, K = `(c, i, j)` in that order (PyTorch's layout).
    pub w: Buffer<S>,
    /// `out_channels` biases, or empty.
    pub b: Buffer<S>,
    pub dw: Buffer<S>,
    pub db: Buffer<S>,
    /// One example's padded input.
    padded: Buffer<S>,
}

impl<S: Scalar> Conv<S> {
    pub fn new(geometry: Geometry, w: Buffer<S>, b: &[S]) -> Conv<S> {
        let (hp, wp) = geometry.padded();
        Conv {
            geometry,
            dw: Buffer::filled(w.len(), S::zero()),
            w,
            b: Buffer::from_slice(b),
            db: Buffer::filled(b.len(), S::zero()),
            padded: Buffer::filled(geometry.in_channels * hp * wp, S::zero()),
        }
    }

    /// `out[o][p] = b[o] + sum_k W[o][k] patches[k][p]` for every example: per output value K
    /// mul and K add (K - 1 add without bias).
    ///
    /// # Shapes
    /// `x`: batch x C_in x H x W, `out`: batch x C_out x H_out x W_out.
    pub fn forward(&mut self, x: &[S], out: &mut [S]) {
        let g = self.geometry;
        let (k, p) = (g.patch(), g.positions());
        let start = if self.b.is_empty() {
            Start::FirstProduct
        } else {
            Start::RowBias(&self.b)
        };
        let weights = Strided {
            data: &self.w,
            row_stride: k,
            col_stride: 1,
        };
        for (xe, oute) in x
            .chunks_exact(g.input_len())
            .zip(out.chunks_exact_mut(g.out_channels * p))
        {
            pad(&g, xe, &mut self.padded);
            let patches = Patches {
                image: &self.padded,
                g,
            };
            gemm((g.out_channels, p, k), &weights, &patches, start, oute);
        }
    }

    /// Gradients from `dout`:
    /// - `dW[o][k] = sum over examples and positions of dout[o][p] patches[k][p]`: B*P*C_out*K
    ///   mul, (B*P - 1)*C_out*K add;
    /// - `db[o] = sum over examples and positions of dout[o][p]`: (B*P - 1)*C_out add;
    /// - if `dx` is given: `dpatches = W^T dout` (B*K*P*C_out mul, B*K*P*(C_out - 1) add), then
    ///   `col2im`: one add per patch entry inside the input, less one per input position
    ///   reached.
    ///
    /// `scratch` is reused between calls for the patch gradients.
    ///
    /// # Shapes
    /// `x`, `dx`: batch x C_in x H x W; `dout`: batch x C_out x H_out x W_out.
    pub fn backward(
        &mut self,
        x: &[S],
        dout: &[S],
        mut dx: Option<&mut [S]>,
        scratch: &mut Vec<S>,
        touched: &mut Vec<bool>,
    ) {
        let g = self.geometry;
        let (k, p) = (g.patch(), g.positions());
        let examples = x
            .chunks_exact(g.input_len())
            .zip(dout.chunks_exact(g.out_channels * p));
        for (e, (xe, doute)) in examples.enumerate() {
            pad(&g, xe, &mut self.padded);
            let dout_e = Strided {
                data: doute,
                row_stride: p,
                col_stride: 1,
            };
            let patches_t = PatchesT(Patches {
                image: &self.padded,
                g,
            });
            let start = if e == 0 {
                Start::FirstProduct
            } else {
                Start::Existing
            };
            gemm(
                (g.out_channels, k, p),
                &dout_e,
                &patches_t,
                start,
                &mut self.dw,
            );
            if !self.db.is_empty() {
                row_sums(doute, p, &mut self.db, e == 0);
            }
            if let Some(dx) = dx.as_deref_mut() {
                scratch.resize(k * p, S::zero());
                let w_t = Strided {
                    data: &self.w,
                    row_stride: 1,
                    col_stride: k,
                };
                gemm(
                    (k, p, g.out_channels),
                    &w_t,
                    &dout_e,
                    Start::FirstProduct,
                    scratch,
                );
                let dxe = &mut dx[e * g.input_len()..(e + 1) * g.input_len()];
                col2im(&g, scratch, dxe, touched);
            }
        }
    }

    /// `p -= lr * dp` for every weight and bias.
    pub fn update(&mut self, lr: S) {
        sgd(&mut self.w, &self.dw, lr);
        sgd(&mut self.b, &self.db, lr);
    }
}

/// Copies one example into the middle of the padded buffer, whose border stays zero.
fn pad<S: Scalar>(g: &Geometry, x: &[S], padded: &mut [S]) {
    let (hp, wp) = g.padded();
    for (src, dst) in x
        .chunks_exact(g.height * g.width)
        .zip(padded.chunks_exact_mut(hp * wp))
    {
        for (row, dst_row) in src
            .chunks_exact(g.width)
            .zip(dst.chunks_exact_mut(wp).skip(g.padding))
        {
            dst_row[g.padding..g.padding + g.width].copy_from_slice(row);
        }
    }
}

/// `db[o] (+)= sum_p dout[o][p]`, from the first term if `first`, else onto `db`.
#[inline(never)]
fn row_sums<S: Scalar>(dout: &[S], p: usize, db: &mut [S], first: bool) {
    for (row, sum) in dout.chunks_exact(p).zip(db.iter_mut()) {
        let (&head, rest) = row.split_first().expect("at least one position");
        let mut acc = if first { head } else { *sum + head };
        for &v in rest {
            acc += v;
        }
        *sum = acc;
    }
}

/// The patch matrix of a padded image (K x P): row `(c, i, j)`, column `(y, x)`.
struct Patches<'a, S> {
    image: &'a [S],
    g: Geometry,
}

impl<S: Scalar> Patches<'_, S> {
    /// The offset in the padded image of patch row `k`'s element at position (0, 0).
    fn row_offset(&self, k: usize) -> usize {
        let (hp, wp) = self.g.padded();
        let kk = self.g.kernel;
        let (c, i, j) = (k / (kk * kk), k / kk % kk, k % kk);
        c * hp * wp + i * wp + j
    }

    /// The offset of position `p` relative to a row's (0, 0) element.
    fn column_offset(&self, p: usize) -> usize {
        let (_, wp) = self.g.padded();
        let (_, wo) = self.g.output();
        let (y, x) = (p / wo, p % wo);
        (y * wp + x) * self.g.stride
    }
}

impl<S: Scalar> Operand<S> for Patches<'_, S> {
    fn copy_block(&self, r0: usize, rows: usize, c0: usize, cols: usize, out: &mut [S]) {
        let (_, wo) = self.g.output();
        let (_, wp) = self.g.padded();
        let s = self.g.stride;
        for (r, dst) in out.chunks_exact_mut(cols).take(rows).enumerate() {
            let base = self.row_offset(r0 + r);
            let (mut y, mut x) = (c0 / wo, c0 % wo);
            let mut filled = 0;
            while filled < cols {
                // A run of positions along one output row reads every `stride`-th value of
                // one input row.
                let run = (wo - x).min(cols - filled);
                let start = base + y * s * wp + x * s;
                if s == 1 {
                    dst[filled..filled + run].copy_from_slice(&self.image[start..start + run]);
                } else {
                    for (t, v) in dst[filled..filled + run].iter_mut().enumerate() {
                        *v = self.image[start + t * s];
                    }
                }
                filled += run;
                y += 1;
                x = 0;
            }
        }
    }
}

/// The transposed patch matrix (P x K), for the weight gradient.
struct PatchesT<'a, S>(Patches<'a, S>);

impl<S: Scalar> Operand<S> for PatchesT<'_, S> {
    fn copy_block(&self, r0: usize, rows: usize, c0: usize, cols: usize, out: &mut [S]) {
        let offsets: Vec<usize> = (c0..c0 + cols).map(|k| self.0.row_offset(k)).collect();
        for (r, dst) in out.chunks_exact_mut(cols).take(rows).enumerate() {
            let at = self.0.column_offset(r0 + r);
            for (v, &off) in dst.iter_mut().zip(&offsets) {
                *v = self.0.image[off + at];
            }
        }
    }
}

/// Adds every patch gradient that lies inside the input to its input position, channel by
/// channel on all cores. Each position's sum starts from its first contribution (in the
/// order `(i, j, y, x)`), so it costs one add less than it has contributions; positions no
/// patch reaches get zero.
fn col2im<S: Scalar>(g: &Geometry, dpatches: &[S], dx: &mut [S], touched: &mut Vec<bool>) {
    let plane = g.height * g.width;
    let per_channel = g.kernel * g.kernel * g.positions();
    touched.clear();
    touched.resize(g.input_len(), false);
    dx.fill(S::zero());
    tally::parallel(|| {
        let parts: Vec<Counts> = dx
            .par_chunks_mut(plane)
            .zip(touched.par_chunks_mut(plane))
            .zip(dpatches.par_chunks(per_channel))
            .map(|((dxc, seen), rows)| tally::take(|| col2im_channel(g, rows, dxc, seen)).1)
            .collect();
        ((), parts.into_iter().sum())
    });
}

/// `col2im` for one input channel: `rows` are its K/C_in patch rows `(i, j)`. The inner loop
/// walks zipped iterators (no indexing, so no panic path that would pin the counters to
/// memory on every iteration).
#[inline(never)]
fn col2im_channel<S: Scalar>(g: &Geometry, rows: &[S], dx: &mut [S], seen: &mut [bool]) {
    let (ho, wo) = g.output();
    let (kk, s, pad) = (g.kernel, g.stride, g.padding);
    for (ij, row) in rows.chunks_exact(ho * wo).enumerate() {
        let (i, j) = (ij / kk, ij % kk);
        // Output columns x whose input column x*s + j - pad lies in 0..width.
        let x_lo = pad.saturating_sub(j).div_ceil(s);
        let x_hi = (g.width + pad).saturating_sub(j).div_ceil(s).min(wo);
        if x_lo >= x_hi {
            continue;
        }
        let first_column = x_lo * s + j - pad;
        for (y, values) in row.chunks_exact(wo).enumerate() {
            let Some(yy) = (y * s + i).checked_sub(pad).filter(|&yy| yy < g.height) else {
                continue;
            };
            let line = yy * g.width..(yy + 1) * g.width;
            let targets = dx[line.clone()][first_column..].iter_mut().step_by(s);
            let flags = seen[line][first_column..].iter_mut().step_by(s);
            for ((d, seen), &v) in targets.zip(flags).zip(&values[x_lo..x_hi]) {
                if *seen {
                    *d += v;
                } else {
                    *d = v;
                    *seen = true;
                }
            }
        }
    }
}
