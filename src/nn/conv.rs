//! A 2-D convolution as matrix products (docs/counting.md, "Conv2d").
//!
//! Per example, the input is padded with zeros and seen as the matrix of its patches
//! (`im2col`, never materialised: the product reads it block by block): row `k = (c, i, j)`,
//! column `p = (y, x)` holds `in[c][y*stride + i][x*stride + j]`. Small examples are taken
//! several at a time (a group), their patch matrices side by side, columns `(e, p)`, so that
//! one product covers the group. Then
//! - forward: `out (C_out x G*P) = bias + W (C_out x K) patches (K x G*P)`;
//! - weight gradient: `dW (C_out x K) = sum over groups of dout (C_out x G*P) patches^T`;
//! - input gradient: `dpatches (K x G*P) = W^T dout`, then every patch entry that lies inside
//!   the input (not in the padding) is added to its input position (`col2im`).
//!
//! Every product goes through `gemm`, which sums in ascending order from the first term, so
//! grouping changes no sum: the weight gradient still runs over examples in order, then
//! positions in order.

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

    /// Values of one example's padded input (none without padding: nothing is copied).
    fn padded_len(&self) -> usize {
        let (hp, wp) = self.padded();
        if self.padding == 0 {
            0
        } else {
            self.in_channels * hp * wp
        }
    }

    /// How many examples to take at once, given what one example puts in each group buffer
    /// besides the padded input: as many as keep every buffer within `GROUP_VALUES`, at
    /// least one.
    fn group(&self, per_example: &[usize]) -> usize {
        let largest = per_example
            .iter()
            .fold(self.padded_len(), |m, &v| m.max(v))
            .max(1);
        (GROUP_VALUES / largest).max(1)
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
    /// A group's padded input (unused without padding: the patches read the input itself).
    padded: Vec<S>,
    /// A group's output, `C_out x G*P`, before it is put in batch order.
    grouped: Vec<S>,
}

/// A group of examples holds at most this many values in each of its buffers (padded input,
/// grouped output, patch gradients), unless one example alone needs more: 1 MiB of `f32`.
/// Large convolutions go one example at a time, with no more memory than that example needs.
const GROUP_VALUES: usize = 1 << 18;

impl<S: Scalar> Conv<S> {
    pub fn new(geometry: Geometry, w: Buffer<S>, b: &[S]) -> Conv<S> {
        Conv {
            geometry,
            dw: Buffer::filled(w.len(), S::zero()),
            w,
            b: Buffer::from_slice(b),
            db: Buffer::filled(b.len(), S::zero()),
            padded: Vec::new(),
            grouped: Vec::new(),
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
        let out_len = g.out_channels * p;
        let group = g.group(&[out_len]);
        for (xg, outg) in x
            .chunks(group * g.input_len())
            .zip(out.chunks_mut(group * out_len))
        {
            let examples = xg.len() / g.input_len();
            let patches = Patches::new(&g, xg, &mut self.padded);
            if examples == 1 {
                gemm((g.out_channels, p, k), &weights, &patches, start, outg);
                continue;
            }
            // Row o of the product holds every example's channel o side by side.
            self.grouped.resize(out_len * examples, S::zero());
            let n = examples * p;
            gemm(
                (g.out_channels, n, k),
                &weights,
                &patches,
                start,
                &mut self.grouped,
            );
            for (o, row) in self.grouped.chunks_exact(n).enumerate() {
                for (e, values) in row.chunks_exact(p).enumerate() {
                    outg[e * out_len + o * p..][..p].copy_from_slice(values);
                }
            }
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
        let out_len = g.out_channels * p;
        let patch_grads = if dx.is_some() { k * p } else { 0 };
        let group = g.group(&[out_len, patch_grads]);
        let groups = x
            .chunks(group * g.input_len())
            .zip(dout.chunks(group * out_len));
        for (index, (xg, doutg)) in groups.enumerate() {
            let first_group = index == 0;
            let examples = xg.len() / g.input_len();
            let n = examples * p;
            let dout_g = Grouped {
                data: doutg,
                rows: g.out_channels,
                row_len: p,
            };
            let patches_t = PatchesT::new(Patches::new(&g, xg, &mut self.padded));
            let start = if first_group {
                Start::FirstProduct
            } else {
                Start::Existing
            };
            gemm(
                (g.out_channels, k, n),
                &dout_g,
                &patches_t,
                start,
                &mut self.dw,
            );
            if !self.db.is_empty() {
                for (e, doute) in doutg.chunks_exact(out_len).enumerate() {
                    row_sums(doute, p, &mut self.db, first_group && e == 0);
                }
            }
            if let Some(dx) = dx.as_deref_mut() {
                scratch.resize(k * n, S::zero());
                let w_t = Strided {
                    data: &self.w,
                    row_stride: 1,
                    col_stride: k,
                };
                gemm(
                    (k, n, g.out_channels),
                    &w_t,
                    &dout_g,
                    Start::FirstProduct,
                    scratch,
                );
                let e0 = index * group;
                let dxg = &mut dx[e0 * g.input_len()..(e0 + examples) * g.input_len()];
                col2im(&g, scratch, examples, dxg, touched);
            }
        }
    }

    /// `p -= lr * dp` for every weight and bias.
    pub fn update(&mut self, lr: S) {
        sgd(&mut self.w, &self.dw, lr);
        sgd(&mut self.b, &self.db, lr);
    }
}

/// Copies each example into the middle of its padded image, whose border stays zero.
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

/// The patch matrices of a group of padded images side by side (K x G*P): row `(c, i, j)`,
/// column `(e, y, x)`.
struct Patches<'a, S> {
    /// The group's padded images, one after the other.
    images: &'a [S],
    g: Geometry,
}

impl<'a, S: Scalar> Patches<'a, S> {
    /// The patches of the examples `x` (a whole number of them): `x` itself without padding,
    /// else a padded copy in `padded`.
    fn new(g: &Geometry, x: &'a [S], padded: &'a mut Vec<S>) -> Patches<'a, S> {
        let images = if g.padding == 0 {
            x
        } else {
            // Only the middle of each image is ever written, so the border stays zero.
            let len = x.len() / g.input_len() * g.padded_len();
            if padded.len() < len {
                padded.resize(len, S::zero());
            }
            pad(g, x, &mut padded[..len]);
            &padded[..len]
        };
        Patches { images, g: *g }
    }

    fn image_len(&self) -> usize {
        let (hp, wp) = self.g.padded();
        self.g.in_channels * hp * wp
    }

    /// The offset in a padded image of patch row `k`'s element at position (0, 0).
    fn row_offset(&self, k: usize) -> usize {
        let (hp, wp) = self.g.padded();
        let kk = self.g.kernel;
        let (c, i, j) = (k / (kk * kk), k / kk % kk, k % kk);
        c * hp * wp + i * wp + j
    }
}

impl<S: Scalar> Patches<'_, S> {
    /// The image offset (relative to a row's (0, 0) element) of each of `n` columns from
    /// `column`, walking examples, output rows and columns without dividing: `visit` gets
    /// each run of columns along one output row as (offset of its first, length).
    fn runs(&self, column: usize, n: usize, mut visit: impl FnMut(usize, usize)) {
        let (ho, wo) = self.g.output();
        let (_, wp) = self.g.padded();
        let (s, positions) = (self.g.stride, self.g.positions());
        let (mut e, p) = (column / positions, column % positions);
        let (mut y, mut x) = (p / wo, p % wo);
        let mut done = 0;
        while done < n {
            let run = (wo - x).min(n - done);
            visit(e * self.image_len() + (y * wp + x) * s, run);
            done += run;
            x = 0;
            y += 1;
            if y == ho {
                y = 0;
                e += 1;
            }
        }
    }
}

impl<S: Scalar> Operand<S> for Patches<'_, S> {
    fn copy_block(&self, r0: usize, rows: usize, c0: usize, cols: usize, out: &mut [S]) {
        let s = self.g.stride;
        for (r, dst) in out.chunks_exact_mut(cols).take(rows).enumerate() {
            let image = &self.images[self.row_offset(r0 + r)..];
            let mut filled = 0;
            // A run of positions along one output row reads every `stride`-th value of one
            // input row.
            self.runs(c0, cols, |start, run| {
                let dst = &mut dst[filled..filled + run];
                if s == 1 {
                    dst.copy_from_slice(&image[start..start + run]);
                } else {
                    for (v, &x) in dst.iter_mut().zip(image[start..].iter().step_by(s)) {
                        *v = x;
                    }
                }
                filled += run;
            });
        }
    }
}

/// The transposed patch matrices (G*P x K), for the weight gradient, with each column's
/// offset in an image worked out once.
struct PatchesT<'a, S> {
    patches: Patches<'a, S>,
    offsets: Vec<usize>,
}

impl<'a, S: Scalar> PatchesT<'a, S> {
    fn new(patches: Patches<'a, S>) -> PatchesT<'a, S> {
        let offsets = (0..patches.g.patch())
            .map(|k| patches.row_offset(k))
            .collect();
        PatchesT { patches, offsets }
    }
}

impl<S: Scalar> Operand<S> for PatchesT<'_, S> {
    fn copy_block(&self, r0: usize, rows: usize, c0: usize, cols: usize, out: &mut [S]) {
        let offsets = &self.offsets[c0..c0 + cols];
        let mut r = 0;
        self.patches.runs(r0, rows, |start, run| {
            for t in 0..run {
                let image = &self.patches.images[start + t * self.patches.g.stride..];
                let dst = &mut out[(r + t) * cols..(r + t + 1) * cols];
                for (v, &off) in dst.iter_mut().zip(offsets) {
                    *v = image[off];
                }
            }
            r += run;
        });
    }

    /// Row by row (each a position), straight into every panel: the position's place in the
    /// image is worked out once for all its columns.
    fn pack_columns(
        &self,
        (r0, rows): (usize, usize),
        (c0, cols): (usize, usize),
        width: usize,
        out: &mut [S],
    ) {
        let offsets = &self.offsets[c0..c0 + cols];
        let mut r = 0;
        self.patches.runs(r0, rows, |start, run| {
            for t in 0..run {
                let image = &self.patches.images[start + t * self.patches.g.stride..];
                for (p, offsets) in offsets.chunks(width).enumerate() {
                    let dst = &mut out[(p * rows + r + t) * width..][..offsets.len()];
                    for (v, &off) in dst.iter_mut().zip(offsets) {
                        *v = image[off];
                    }
                }
            }
            r += run;
        });
    }
}

/// A group's `rows x row_len` matrices side by side (rows x G*row_len): element `(r, (e, q))`
/// is `data[e * rows * row_len + r * row_len + q]`. The output gradients of a group, seen as
/// one matrix.
struct Grouped<'a, S> {
    data: &'a [S],
    rows: usize,
    row_len: usize,
}

impl<S: Scalar> Operand<S> for Grouped<'_, S> {
    fn copy_block(&self, r0: usize, rows: usize, c0: usize, cols: usize, out: &mut [S]) {
        let example_len = self.rows * self.row_len;
        for (r, dst) in out.chunks_exact_mut(cols).take(rows).enumerate() {
            let mut filled = 0;
            while filled < cols {
                let (e, q) = ((c0 + filled) / self.row_len, (c0 + filled) % self.row_len);
                let run = (self.row_len - q).min(cols - filled);
                let start = e * example_len + (r0 + r) * self.row_len + q;
                dst[filled..filled + run].copy_from_slice(&self.data[start..start + run]);
                filled += run;
            }
        }
    }
}

/// Adds every patch gradient that lies inside the input to its input position, example by
/// example and channel by channel (on all cores when there is enough of it). `dpatches` is
/// the group's K x (examples * P) patch gradient. Each position's sum starts from its first
/// contribution (in the order `(i, j, y, x)`), so it costs one add less than it has
/// contributions; positions no patch reaches get zero.
fn col2im<S: Scalar>(
    g: &Geometry,
    dpatches: &[S],
    examples: usize,
    dx: &mut [S],
    touched: &mut Vec<bool>,
) {
    let plane = g.height * g.width;
    let per_channel = g.kernel * g.kernel;
    let p = g.positions();
    touched.clear();
    touched.resize(examples * g.input_len(), false);
    dx.fill(S::zero());
    // Plane `e * C_in + c` reads rows `c * kk..(c + 1) * kk` of the patch gradient, columns
    // `e * P..(e + 1) * P`.
    let rows_of = |index: usize| {
        let (e, c) = (index / g.in_channels, index % g.in_channels);
        let stride = examples * p;
        (0..per_channel).map(move |ij| {
            let row = (c * per_channel + ij) * stride + e * p;
            &dpatches[row..row + p]
        })
    };
    if dpatches.len() < PARALLEL_COL2IM {
        let planes = dx.chunks_mut(plane).zip(touched.chunks_mut(plane));
        for (index, (dxc, seen)) in planes.enumerate() {
            col2im_channel(g, rows_of(index), dxc, seen);
        }
        return;
    }
    tally::parallel(|| {
        let parts: Vec<Counts> = dx
            .par_chunks_mut(plane)
            .zip(touched.par_chunks_mut(plane))
            .enumerate()
            .map(|(index, (dxc, seen))| {
                tally::take(|| col2im_channel(g, rows_of(index), dxc, seen)).1
            })
            .collect();
        ((), parts.into_iter().sum())
    });
}

/// Below this many patch gradients `col2im` runs on the calling thread alone: waking the
/// other threads would cost more than it saves.
const PARALLEL_COL2IM: usize = 1 << 16;

/// `col2im` for one input channel of one example: `rows` are its K/C_in patch rows `(i, j)`.
/// The inner loop walks zipped iterators (no indexing, so no panic path that would pin the
/// counters to memory on every iteration).
#[inline(never)]
fn col2im_channel<'a, S: Scalar>(
    g: &Geometry,
    rows: impl Iterator<Item = &'a [S]>,
    dx: &mut [S],
    seen: &mut [bool],
) {
    let (_, wo) = g.output();
    let (kk, s, pad) = (g.kernel, g.stride, g.padding);
    if s == 1 {
        return col2im_stride_1(g, rows, dx);
    }
    for (ij, row) in rows.enumerate() {
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

/// `col2im_channel` for stride 1, without flags: the first contribution to input position
/// `(yy, xx)` in the order `(i, j, y, x)` comes from the smallest `i` that reaches row `yy`,
/// `max(0, yy + pad + 1 - H_out)`, and among those from the smallest `j` that reaches column
/// `xx`, `max(0, xx + pad + 1 - W_out)`. So along one row of a patch gradient the first
/// contributions form one run (none, a prefix or a single value), and the rest are adds.
fn col2im_stride_1<'a, S: Scalar>(g: &Geometry, rows: impl Iterator<Item = &'a [S]>, dx: &mut [S]) {
    let (ho, wo) = g.output();
    let (kk, pad) = (g.kernel, g.padding);
    for (ij, row) in rows.enumerate() {
        let (i, j) = (ij / kk, ij % kk);
        // Output columns x whose input column x + j - pad lies in 0..width.
        let x_lo = pad.saturating_sub(j);
        let x_hi = (g.width + pad).saturating_sub(j).min(wo);
        if x_lo >= x_hi {
            continue;
        }
        let (first_column, len) = (x_lo + j - pad, x_hi - x_lo);
        for (y, values) in row.chunks_exact(wo).enumerate() {
            let Some(yy) = (y + i).checked_sub(pad).filter(|&yy| yy < g.height) else {
                continue;
            };
            let firsts = if i != (yy + pad + 1).saturating_sub(ho) {
                0..0
            } else if j == 0 {
                // Columns xx with xx + pad + 1 <= W_out.
                0..(wo - pad.min(wo)).saturating_sub(first_column).min(len)
            } else {
                // The one column with xx + pad + 1 - W_out = j.
                match (j + wo - 1).checked_sub(pad + first_column) {
                    Some(t) if t < len => t..t + 1,
                    _ => 0..0,
                }
            };
            let targets = &mut dx[yy * g.width + first_column..][..len];
            add_or_set(targets, &values[x_lo..x_hi], firsts);
        }
    }
}

/// `d += v` element by element, except `d = v` on `set`.
fn add_or_set<S: Scalar>(d: &mut [S], v: &[S], set: std::ops::Range<usize>) {
    let (head, rest) = d.split_at_mut(set.start);
    let (middle, tail) = rest.split_at_mut(set.len());
    for (d, &v) in head.iter_mut().zip(&v[..set.start]) {
        *d += v;
    }
    middle.copy_from_slice(&v[set.clone()]);
    for (d, &v) in tail.iter_mut().zip(&v[set.end..]) {
        *d += v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, summed in the documented orders: forward from the bias in ascending
    /// `(c, i, j)`; the weight gradient over examples then positions; each patch gradient over
    /// output channels, then added to the input in `(i, j, y, x)` order. Products are added
    /// with one rounding where the matrix product fuses (as it does on this machine or not).
    #[allow(clippy::type_complexity)]
    fn reference(
        g: &Geometry,
        x: &[f64],
        w: &[f64],
        b: &[f64],
        dout: &[f64],
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let madd = |acc: f64, u: f64, v: f64| {
            if super::super::gemm::fuses() {
                u.mul_add(v, acc)
            } else {
                acc + u * v
            }
        };
        let (ho, wo) = g.output();
        let (k, p, kk) = (g.patch(), g.positions(), g.kernel);
        let batch = x.len() / g.input_len();
        // The patch entry (k, p) of example e, zero in the padding.
        let patch = |e: usize, r: usize, q: usize| {
            let (c, i, j) = (r / (kk * kk), r / kk % kk, r % kk);
            let (y, xx) = (q / wo, q % wo);
            let (yy, xi) = (y * g.stride + i, xx * g.stride + j);
            let inside = (g.padding..g.padding + g.height).contains(&yy)
                && (g.padding..g.padding + g.width).contains(&xi);
            inside.then(|| {
                (e * g.in_channels + c) * g.height * g.width + (yy - g.padding) * g.width + xi
                    - g.padding
            })
        };
        let value = |e, r, q| patch(e, r, q).map_or(0.0, |at| x[at]);
        let mut out = vec![0.0; batch * g.out_channels * p];
        let mut dw = vec![0.0; g.out_channels * k];
        let mut dx = vec![0.0; x.len()];
        let mut seen = vec![false; x.len()];
        for e in 0..batch {
            for o in 0..g.out_channels {
                for q in 0..p {
                    let at = (e * g.out_channels + o) * p + q;
                    out[at] = (0..k).fold(b[o], |acc, r| madd(acc, w[o * k + r], value(e, r, q)));
                }
            }
        }
        for o in 0..g.out_channels {
            for r in 0..k {
                let terms = (0..batch).flat_map(|e| (0..p).map(move |q| (e, q)));
                let mut sum = None;
                for (e, q) in terms {
                    let term = (dout[(e * g.out_channels + o) * p + q], value(e, r, q));
                    sum = Some(sum.map_or(term.0 * term.1, |s| madd(s, term.0, term.1)));
                }
                dw[o * k + r] = sum.unwrap();
            }
        }
        for e in 0..batch {
            for r in 0..k {
                for q in 0..p {
                    let grad = (1..g.out_channels)
                        .fold(w[r] * dout[e * g.out_channels * p + q], |s, o| {
                            madd(s, w[o * k + r], dout[(e * g.out_channels + o) * p + q])
                        });
                    if let Some(at) = patch(e, r, q) {
                        dx[at] = if seen[at] { dx[at] + grad } else { grad };
                        seen[at] = true;
                    }
                }
            }
        }
        let _ = ho;
        (out, dw, dx)
    }

    #[test]
    fn groups_of_examples_give_the_definition_bit_for_bit() {
        // Big enough images that a group holds fewer examples than the batch, and the last
        // group fewer than the others.
        for (padding, stride, side) in [(0, 1, 60), (1, 2, 70), (2, 1, 9)] {
            let g = Geometry {
                in_channels: 2,
                out_channels: 8,
                kernel: 3,
                stride,
                padding,
                height: side,
                width: side + 1,
            };
            let batch = 10;
            let seq = |n: usize, m: usize, scale: f64| -> Vec<f64> {
                (0..n).map(|v| (v % m) as f64 * scale - 1.0).collect()
            };
            let x = seq(batch * g.input_len(), 23, 0.09);
            let w = seq(g.out_channels * g.patch(), 11, 0.17);
            let b = seq(g.out_channels, 5, 0.3);
            let dout = seq(batch * g.out_channels * g.positions(), 19, 0.11);
            if side == 60 {
                assert_eq!(g.group(&[g.out_channels * g.positions()]), 9);
                assert_eq!(
                    g.group(&[g.out_channels * g.positions(), g.patch() * g.positions()]),
                    4
                );
            }
            let (out, dw, dx) = reference(&g, &x, &w, &b, &dout);

            let mut conv = Conv::new(g, Buffer::from_slice(&w), &b);
            let mut got = vec![0.0; out.len()];
            conv.forward(&x, &mut got);
            assert_eq!(got, out, "forward, padding {padding}, stride {stride}");
            let mut got_dx = vec![0.0; dx.len()];
            conv.backward(
                &x,
                &dout,
                Some(&mut got_dx),
                &mut Vec::new(),
                &mut Vec::new(),
            );
            assert_eq!(&conv.dw[..], &dw[..], "weight gradient");
            assert_eq!(got_dx, dx, "input gradient");
        }
    }
}
