//! Conv2d: a 2-D convolution as matrix products (docs/counting.md, "Conv2d"). Its shape
//! rule, parameters, closed form, forward and backward.
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

use super::dense::check_size;
use super::gemm::{Operand, Start, Strided, gemm};
use super::ops::{Backward, Kernel, Operation, ParamSpec, Workspace};
use crate::counts::Counts;
use crate::error::Result;
use crate::estimate::{At, Q, counts, q, when};
use crate::model::MAX_DIM;
use crate::phases::NodeCounts;
use crate::scalar::Scalar;
use crate::shape::Shape;
use crate::tally;

/// Geometry of a convolution.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels (filters).
    pub out_channels: usize,
    /// Kernel height and width.
    pub kernel: usize,
    /// Step between windows.
    pub stride: usize,
    /// Zeros on every side of the input.
    pub padding: usize,
    /// Input height.
    pub height: usize,
    /// Input width.
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

    fn padded_len(&self) -> usize {
        let (hp, wp) = self.padded();
        self.in_channels * hp * wp
    }
}

/// A 2-D convolution, resolved.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Conv2d {
    /// Its geometry.
    pub geometry: Geometry,
    /// Whether each output starts from a bias.
    pub bias: bool,
}

impl Conv2d {
    /// The shape rule: a `channels x height x width` input the kernel fits once padded;
    /// every buffer the kernels need must have a size that fits in memory's numbers.
    pub(crate) fn resolve(
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        bias: bool,
        input: Shape,
    ) -> Result<Conv2d, String> {
        let Some((c, h, w)) = input.as_image() else {
            return Err(format!(
                "conv2d expects a channels x height x width input, found {input}"
            ));
        };
        check_size("out_channels", out_channels)?;
        check_size("kernel", kernel)?;
        check_size("stride", stride)?;
        if padding > MAX_DIM {
            return Err(format!(
                "padding: expected at most {MAX_DIM}, found {padding}"
            ));
        }
        let (ph, pw) = (h + 2 * padding, w + 2 * padding);
        if kernel > ph || kernel > pw {
            return Err(format!(
                "kernel {kernel}x{kernel} is larger than its padded input {ph}x{pw} \
                 ({h}x{w} with padding {padding})"
            ));
        }
        let geometry = Geometry {
            in_channels: c,
            out_channels,
            kernel,
            stride,
            padding,
            height: h,
            width: w,
        };
        let (ho, wo) = geometry.output();
        let output = Shape::image(out_channels, ho, wo);
        output
            .checked_len()
            .ok_or_else(|| format!("output {output} is too large"))?;
        // The padded input and the patch matrix are buffers of their own.
        let padded = Shape::image(c, ph, pw);
        padded
            .checked_len()
            .ok_or_else(|| format!("padded input {padded} is too large"))?;
        [c, kernel, kernel, ho * wo]
            .iter()
            .try_fold(1usize, |a, &b| a.checked_mul(b))
            .ok_or_else(|| "too many patches".to_string())?;
        [c, kernel, kernel]
            .iter()
            .try_fold(out_channels, |a, &b| a.checked_mul(b))
            .ok_or_else(|| "too many weights".to_string())?;
        Ok(Conv2d { geometry, bias })
    }

    pub(crate) fn kernel(&self) -> ConvKernel {
        ConvKernel(*self)
    }
}

impl Operation for Conv2d {
    fn kind(&self) -> &'static str {
        "conv2d"
    }

    fn output(&self) -> Shape {
        let (ho, wo) = self.geometry.output();
        Shape::image(self.geometry.out_channels, ho, wo)
    }

    /// Weights `out x in x kernel x kernel` (PyTorch's layout), then `out` biases.
    fn params(&self) -> Vec<ParamSpec> {
        let g = self.geometry;
        let area = g.kernel * g.kernel;
        let mut specs = vec![ParamSpec {
            len: g.out_channels * g.patch(),
            fans: Some((g.in_channels * area, g.out_channels * area)),
            start: 0.0,
        }];
        if self.bias {
            specs.push(ParamSpec {
                len: g.out_channels,
                fans: None,
                start: 0.0,
            });
        }
        specs
    }

    fn explain_param(&self, index: usize) -> String {
        let g = self.geometry;
        match index {
            0 => format!(
                "{} out x {} in x {} x {}",
                g.out_channels, g.in_channels, g.kernel, g.kernel
            ),
            _ => format!("{} out channels", g.out_channels),
        }
    }

    /// The padded input and, backward, the patch gradients.
    fn workspace(&self) -> usize {
        let g = self.geometry;
        g.padded_len() + g.patch() * g.positions()
    }

    fn closed_form(&self, at: At<'_>, name: &str, grads: &[bool]) -> Result<NodeCounts> {
        let g = self.geometry;
        let (b, dx, bias) = (at.b(), grads[0], self.bias);
        let (c_in, c_out) = (g.in_channels, g.out_channels);
        let (ho, wo) = g.output();
        let patch = g.patch(); // K: products per output value
        let positions = q(ho) * wo; // P: output values per channel
        // Forward, per example, output channel and position: K products summed onto the
        // bias (K adds), or from the first product (K - 1 adds).
        let forward = counts! { at, format!("{name} forward");
            mul: b * positions * c_out * patch,
            add: if bias {
                b * positions * c_out * patch
            } else {
                b * positions * c_out * (patch - 1)
            },
        }?;
        // Backward: dW[o][k] sums B*P products (B*P - 1 adds) for C_out*K weights;
        // db[o] sums B*P values; the input gradient multiplies W^T (K x C_out) by dout
        // (C_out x P) per example (C_out products, C_out - 1 adds, for K*P patch values),
        // then adds each patch value that lies inside the input onto its position:
        // per example and input channel, one add per contribution less one per position
        // reached.
        let all = b * positions;
        let (rows, cols) = (
            reach(g.height, ho, g.kernel, g.stride, g.padding),
            reach(g.width, wo, g.kernel, g.stride, g.padding),
        );
        let contributions = Q(Some(rows.0)) * Q(Some(cols.0));
        let reached = Q(Some(rows.1)) * Q(Some(cols.1));
        let backward = counts! { at, format!("{name} backward");
            mul: all * c_out * patch + when(dx, b * patch * positions * c_out),
            add: (all - 1) * c_out * patch
                + when(bias, (all - 1) * c_out)
                + when(dx, b * patch * positions * (c_out - 1))
                + when(dx, b * c_in * (contributions - reached)),
        }?;
        let params = q(c_out) * patch + when(bias, q(c_out));
        let update = counts! { at, format!("{name} update"); mul: params, sub: params }?;
        Ok(NodeCounts {
            forward,
            backward,
            update,
        })
    }
}

/// Along one axis of a convolution's input (`size` long, `out` windows of `kernel` cells,
/// `stride` apart, the first starting `padding` cells before the input): how many window
/// cells lie inside the input (the (position, offset) pairs whose gradient `col2im` adds),
/// and how many input cells at least one window covers.
///
/// Derived from the windows, not from any loop of the kernel: every window has `kernel`
/// cells, less what sticks out past either edge. The windows stick out past the start by
/// `padding`, `padding - stride`, ... cells, and past the end, counting back from the last
/// window, by `(out - 1) * stride + kernel - padding - size`, then `stride` less each window
/// (see [`overhang`]). A window that sticks out on both sides covers the whole input, and
/// the two overhangs then add up to exactly `kernel - size`. Windows that overlap or touch
/// (`stride < kernel`) cover one unbroken run; windows that do not cover their own cells.
/// The unit tests check both numbers against brute-force enumeration.
fn reach(size: usize, out: usize, kernel: usize, stride: usize, padding: usize) -> (u128, u128) {
    let [size, out, kernel, stride, padding] =
        [size, out, kernel, stride, padding].map(|n| n as u128);
    let last_end = (out - 1) * stride + kernel; // where the last window ends, padded
    let before = overhang(out, padding, stride, kernel);
    let after = overhang(out, last_end.saturating_sub(padding + size), stride, kernel);
    let inside = out * kernel - before - after;
    let covered = if stride >= kernel {
        inside
    } else {
        size.min(last_end.saturating_sub(padding))
    };
    (inside, covered)
}

/// Of `n` windows of `kernel` cells, the first sticking out `first` cells past an edge and each
/// next one `stride` cells less, how many cells stick out in all: the sum over windows of
/// `min(kernel, max(0, first - y * stride))`. Windows entirely outside are counted whole;
/// at most `kernel / stride + 1` are partly outside.
fn overhang(n: u128, first: u128, stride: u128, kernel: u128) -> u128 {
    let whole = if first >= kernel {
        n.min((first - kernel) / stride + 1)
    } else {
        0
    };
    let partial: u128 = (whole..n)
        .map(|y| first.saturating_sub(y * stride))
        .take_while(|&cells| cells > 0)
        .sum();
    whole * kernel + partial
}

/// The kernels of a convolution; the padded input and the patch gradients live in the
/// shared workspace.
pub(crate) struct ConvKernel(Conv2d);

impl<S: Scalar> Kernel<S> for ConvKernel {
    /// `out[o][p] = b[o] + sum_k W[o][k] patches[k][p]` for every example: per output value K
    /// mul and K add (K - 1 add without bias).
    fn forward(&mut self, x: &[&[S]], params: &[&[S]], out: &mut [S], ws: &mut Workspace<S>) {
        let g = self.0.geometry;
        let (k, p) = (g.patch(), g.positions());
        let start = match params.get(1) {
            Some(b) => Start::RowBias(b),
            None => Start::FirstProduct,
        };
        let weights = Strided {
            data: params[0],
            row_stride: k,
            col_stride: 1,
        };
        let padded = prepare(&g, &mut ws.values, 0);
        for (xe, oute) in x[0]
            .chunks_exact(g.input_len())
            .zip(out.chunks_exact_mut(g.out_channels * p))
        {
            pad(&g, xe, padded);
            let patches = Patches { image: padded, g };
            gemm((g.out_channels, p, k), &weights, &patches, start, oute);
        }
    }

    /// Gradients from `dout`:
    /// - `dW[o][k] = sum over examples and positions of dout[o][p] patches[k][p]`: B*P*C_out*K
    ///   mul, (B*P - 1)*C_out*K add;
    /// - `db[o] = sum over examples and positions of dout[o][p]`: (B*P - 1)*C_out add;
    /// - if `dx` is wanted: `dpatches = W^T dout` (B*K*P*C_out mul, B*K*P*(C_out - 1) add),
    ///   then `col2im`: one add per patch entry inside the input, less one per input position
    ///   reached.
    fn backward(&mut self, grads: Backward<'_, S>, ws: &mut Workspace<S>) {
        let Backward {
            x,
            dy: dout,
            params,
            dparams,
            dx,
            ..
        } = grads;
        let g = self.0.geometry;
        let (k, p) = (g.patch(), g.positions());
        let padded_len = g.padded_len();
        prepare(&g, &mut ws.values, k * p);
        let (padded, dpatches) = ws.values.split_at_mut(padded_len);
        let dpatches = &mut dpatches[..k * p];
        let (dw, db) = dparams.split_at_mut(1);
        let examples = x[0]
            .chunks_exact(g.input_len())
            .zip(dout.chunks_exact(g.out_channels * p));
        for (e, (xe, doute)) in examples.enumerate() {
            pad(&g, xe, padded);
            let dout_e = Strided {
                data: doute,
                row_stride: p,
                col_stride: 1,
            };
            let patches_t = PatchesT(Patches { image: padded, g });
            let start = if e == 0 {
                Start::FirstProduct
            } else {
                Start::Existing
            };
            gemm((g.out_channels, k, p), &dout_e, &patches_t, start, dw[0]);
            if let Some(db) = db.first_mut() {
                row_sums(doute, p, db, e == 0);
            }
            if let Some(dx) = dx[0].as_deref_mut() {
                let w_t = Strided {
                    data: params[0],
                    row_stride: 1,
                    col_stride: k,
                };
                gemm(
                    (k, p, g.out_channels),
                    &w_t,
                    &dout_e,
                    Start::FirstProduct,
                    dpatches,
                );
                let dxe = &mut dx[e * g.input_len()..(e + 1) * g.input_len()];
                col2im(&g, dpatches, dxe, &mut ws.flags);
            }
        }
    }
}

/// Sizes the workspace for this convolution (its padded input, whose border must be zero,
/// then `extra` values) and returns the padded input.
fn prepare<'a, S: Scalar>(g: &Geometry, values: &'a mut Vec<S>, extra: usize) -> &'a mut [S] {
    let padded_len = g.padded_len();
    if values.len() < padded_len + extra {
        values.resize(padded_len + extra, S::zero());
    }
    // Another node may have left values here: the border must be zeros.
    let padded = &mut values[..padded_len];
    if g.padding > 0 {
        padded.fill(S::zero());
    }
    padded
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `reach` against enumeration: every (window, cell) pair of one axis, and the input
    /// cells they land on.
    #[test]
    fn reach_matches_brute_force() {
        for size in 1..12usize {
            for kernel in 1..7 {
                for stride in 1..5 {
                    for padding in 0..5 {
                        let padded = size + 2 * padding;
                        if padded < kernel {
                            continue;
                        }
                        let out = (padded - kernel) / stride + 1;
                        let mut inside = 0u128;
                        let mut covered = vec![false; size];
                        for y in 0..out {
                            for i in 0..kernel {
                                let at = (y * stride + i) as i64 - padding as i64;
                                if (0..size as i64).contains(&at) {
                                    inside += 1;
                                    covered[at as usize] = true;
                                }
                            }
                        }
                        let covered = covered.iter().filter(|&&c| c).count() as u128;
                        assert_eq!(
                            reach(size, out, kernel, stride, padding),
                            (inside, covered),
                            "size {size} kernel {kernel} stride {stride} padding {padding}"
                        );
                    }
                }
            }
        }
    }
}
