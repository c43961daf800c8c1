//! Conv2d: a 2-D convolution as matrix products (docs/counting.md, "Conv2d"). Its shape
//! rule, parameters, closed form, forward and backward.
//!
//! Per example, the input is padded with zeros and seen as the matrix of its patches
//! (`im2col`, never materialised: the product reads it block by block): row `k = (c, i, j)`,
//! column `p = (y, x)` holds `in[c][y*stride_h + i][x*stride_w + j]`. With G channel groups
//! each group has a patch matrix of its own, over its C_in/G input channels, and its C_out/G
//! output channels read only that one (groups = 1 is the ordinary convolution). Small
//! examples are taken several at a time (a chunk), their patch matrices side by side,
//! columns `(e, p)`, so that one product covers the chunk. Then, for each group g:
//! - forward: `out_g (C_out/G x E*P) = bias + W_g (C_out/G x K) patches_g (K x E*P)`;
//! - weight gradient: `dW_g (C_out/G x K) = sum over chunks of dout_g (C_out/G x E*P)
//!   patches_g^T`;
//! - input gradient: `dpatches_g (K x E*P) = W_g^T dout_g`, then every patch entry that lies
//!   inside the input (not in the padding) is added to its input position (`col2im`). This
//!   is done in blocks of input channels (their rows of `W_g^T`), each block's `col2im` right
//!   after its product, while its patch gradients are in the cache: each thread takes its own
//!   run of channels, and `dout_g` is packed once for all of them (`InputGradient`).
//!
//! Every product goes through `gemm`, which sums in ascending order from the first term, so
//! chunking changes no sum: the weight gradient still runs over examples in order, then
//! positions in order.

mod depthwise;

use rayon::prelude::*;

use super::dense::check_size;
use super::gemm::{
    self, Operand, PackedColumns, PackedRows, RowsFrom, Start, Strided, gemm, gemm_here,
};
use super::moves::{copy_short, every_other, transpose_8x8};
use super::ops::{Backward, Kernel, Operation, ParamSpec};
use crate::counts::Counts;
use crate::error::Result;
use crate::estimate::{At, Q, counts, q, when};
use crate::model::MAX_DIM;
use crate::phases::NodeCounts;
use crate::scalar::Scalar;
use crate::shape::Shape;
use crate::tally;

/// Geometry of a convolution. Pairs are (along the height, along the width).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels (filters).
    pub out_channels: usize,
    /// Channel groups: output channel o reads only the input channels of its group
    /// `o / (C_out / G)`, which are `g * C_in / G ..` `(g + 1) * C_in / G`.
    pub groups: usize,
    /// Kernel height and width.
    pub kernel: (usize, usize),
    /// Step between windows, down and across.
    pub stride: (usize, usize),
    /// Zeros above and below, and left and right, of the input.
    pub padding: (usize, usize),
    /// Input height.
    pub height: usize,
    /// Input width.
    pub width: usize,
}

impl Geometry {
    /// Padded input height and width.
    fn padded(&self) -> (usize, usize) {
        (
            self.height + 2 * self.padding.0,
            self.width + 2 * self.padding.1,
        )
    }

    /// Whether each output position reads exactly its own input position: a 1 x 1 window at
    /// stride 1 without padding.
    fn is_pointwise(&self) -> bool {
        self.kernel == (1, 1) && self.stride == (1, 1) && self.padding == (0, 0)
    }

    /// Output height and width.
    pub fn output(&self) -> (usize, usize) {
        let (hp, wp) = self.padded();
        (
            (hp - self.kernel.0) / self.stride.0 + 1,
            (wp - self.kernel.1) / self.stride.1 + 1,
        )
    }

    /// Input channels each output channel reads (those of its group).
    fn group_in(&self) -> usize {
        self.in_channels / self.groups
    }

    /// Output channels of each group.
    fn group_out(&self) -> usize {
        self.out_channels / self.groups
    }

    /// Cells of one window.
    fn window(&self) -> usize {
        self.kernel.0 * self.kernel.1
    }

    /// K: weights per output channel, the rows of one group's patch matrix.
    fn patch(&self) -> usize {
        self.group_in() * self.window()
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
        if self.padding == (0, 0) {
            0
        } else {
            self.in_channels * hp * wp
        }
    }

    /// How many examples to take at once (a chunk), given what one example puts in each
    /// chunk buffer besides the padded input: as many as keep every buffer within
    /// `CHUNK_VALUES`, and at least as many as make the products `CHUNK_COLUMNS` wide.
    fn chunk(&self, per_example: &[usize]) -> usize {
        let largest = per_example
            .iter()
            .fold(self.padded_len(), |m, &v| m.max(v))
            .max(1);
        (CHUNK_VALUES / largest).max(self.narrow_chunk())
    }

    /// The fewest examples a chunk takes: enough that the products are at least
    /// `CHUNK_COLUMNS` wide (one example's columns are its positions). A product a few
    /// positions wide (49 for a 7 x 7 output) would pack its weights again for every
    /// example and spend more time packing than multiplying.
    fn narrow_chunk(&self) -> usize {
        CHUNK_COLUMNS.div_ceil(self.positions().max(1))
    }
}

/// What a model file says of a convolution, sizes as (height, width).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Settings {
    pub out_channels: usize,
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub groups: usize,
    pub bias: bool,
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
    /// The shape rule: a `channels x height x width` input the kernel fits once padded,
    /// channels that the groups divide; every buffer the kernels need must have a size that
    /// fits in memory's numbers.
    pub(crate) fn resolve(s: Settings, input: Shape) -> Result<Conv2d, String> {
        let Some((c, h, w)) = input.as_image() else {
            return Err(format!(
                "conv2d expects a channels x height x width input, found {input}"
            ));
        };
        let Settings {
            out_channels,
            kernel,
            stride,
            padding,
            groups,
            bias,
        } = s;
        check_size("out_channels", out_channels)?;
        check_size("groups", groups)?;
        for (what, (a, b)) in [("kernel", kernel), ("stride", stride)] {
            check_size(what, a)?;
            check_size(what, b)?;
        }
        for p in [padding.0, padding.1] {
            if p > MAX_DIM {
                return Err(format!("padding: expected at most {MAX_DIM}, found {p}"));
            }
        }
        for (what, channels) in [("input", c), ("output", out_channels)] {
            if channels % groups != 0 {
                return Err(format!(
                    "groups: {groups} groups do not divide the {channels} {what} channels"
                ));
            }
        }
        let (ph, pw) = (h + 2 * padding.0, w + 2 * padding.1);
        if kernel.0 > ph || kernel.1 > pw {
            let padding = if padding.0 == padding.1 {
                padding.0.to_string()
            } else {
                format!("{}x{}", padding.0, padding.1)
            };
            return Err(format!(
                "kernel {}x{} is larger than its padded input {ph}x{pw} \
                 ({h}x{w} with padding {padding})",
                kernel.0, kernel.1
            ));
        }
        let geometry = Geometry {
            in_channels: c,
            out_channels,
            groups,
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
        // The padded input and the patch matrices are buffers of their own.
        let padded = Shape::image(c, ph, pw);
        padded
            .checked_len()
            .ok_or_else(|| format!("padded input {padded} is too large"))?;
        [c, kernel.0, kernel.1, ho * wo]
            .iter()
            .try_fold(1usize, |a, &b| a.checked_mul(b))
            .ok_or_else(|| "too many patches".to_string())?;
        [c / groups, kernel.0, kernel.1]
            .iter()
            .try_fold(out_channels, |a, &b| a.checked_mul(b))
            .ok_or_else(|| "too many weights".to_string())?;
        Ok(Conv2d { geometry, bias })
    }

    pub(crate) fn kernel<S: Scalar>(&self) -> ConvKernel<S> {
        ConvKernel {
            g: self.geometry,
            padded: Vec::new(),
            chunked: Vec::new(),
            scratch: Vec::new(),
            packed: Vec::new(),
            tuning: Tuning::DEFAULT,
        }
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

    /// Weights `out x in/groups x kernel height x kernel width` (PyTorch's layout), then `out`
    /// biases. Fans as PyTorch counts them: in, the weights of one output channel; out,
    /// every output channel's window.
    fn params(&self) -> Vec<ParamSpec> {
        let g = self.geometry;
        let mut specs = vec![ParamSpec {
            len: g.out_channels * g.patch(),
            fans: Some((g.patch(), g.out_channels * g.window())),
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
                g.out_channels,
                g.group_in(),
                g.kernel.0,
                g.kernel.1
            ),
            _ => format!("{} out channels", g.out_channels),
        }
    }

    /// Weights packed once for the chunks of a forward pass, or transposed for those of a
    /// backward pass ([`PackedRows`]).
    fn transient(&self) -> usize {
        let g = self.geometry;
        if g.group_in() == 1 && g.groups > 1 {
            return 0;
        }
        let (group_out, k) = (g.group_out(), g.patch());
        let forward = PackedRows::<f32>::most_values((group_out, k));
        let backward = PackedRows::<f32>::most_values((k, group_out));
        forward.max(backward).saturating_mul(g.groups)
    }

    /// The padded input of the fewest examples a chunk takes (one, unless the output is
    /// small: see `Geometry::narrow_chunk`) and, backward, for their input gradient: a group's
    /// output gradients packed, and each thread's block of patch gradients (see
    /// `InputGradient`). A convolution of one input channel per group (depthwise) never holds
    /// patch gradients: it computes each input plane's gradient whole, one row of P patch
    /// gradients at a time (a row for each thread at work), so it is charged one row.
    fn workspace(&self) -> usize {
        let g = self.geometry;
        // Saturating: a size past `usize` is a charge no budget grants, never a wrapped one.
        // (`resolve` checked that one example's patch gradients fit.)
        let padded = g.narrow_chunk().saturating_mul(g.padded_len());
        if g.group_in() == 1 {
            return padded.saturating_add(g.positions());
        }
        let b = Tuning::DEFAULT.blocks(&g, g.narrow_chunk());
        let per_block = g.window().saturating_mul(b.columns);
        let blocks = b.tasks.saturating_mul(b.block).saturating_mul(per_block);
        let packed = PackedColumns::<f32>::most_values((g.group_out(), b.columns));
        padded.saturating_add(blocks).saturating_add(packed)
    }

    fn closed_form(&self, at: At<'_>, name: &str, grads: &[bool]) -> Result<NodeCounts> {
        let g = self.geometry;
        let (b, dx, bias) = (at.b(), grads[0], self.bias);
        let (c_in, c_out, group_out) = (g.in_channels, g.out_channels, g.group_out());
        let (ho, wo) = g.output();
        let patch = g.patch(); // K: products per output value
        let rows = q(c_in) * g.window(); // every group's patch rows, G*K
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
        // db[o] sums B*P values; the input gradient multiplies, per group, W_g^T
        // (K x C_out/G) by dout_g (C_out/G x P) per example (C_out/G products, C_out/G - 1
        // adds, for each of the G*K*P patch values), then adds each patch value that lies
        // inside the input onto its position: per example and input channel, one add per
        // contribution less one per position reached.
        let all = b * positions;
        let (down, across) = (
            reach(g.height, ho, g.kernel.0, g.stride.0, g.padding.0),
            reach(g.width, wo, g.kernel.1, g.stride.1, g.padding.1),
        );
        let contributions = Q(Some(down.0)) * Q(Some(across.0));
        let reached = Q(Some(down.1)) * Q(Some(across.1));
        let backward = counts! { at, format!("{name} backward");
            mul: all * c_out * patch + when(dx, b * rows * positions * group_out),
            add: (all - 1) * c_out * patch
                + when(bias, (all - 1) * c_out)
                + when(dx, b * rows * positions * (group_out - 1))
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
pub(crate) fn reach(
    size: usize,
    out: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> (u128, u128) {
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

/// The kernels of a convolution, with the buffers of one chunk of examples: its padded
/// input, its output before it is put in batch order and its patch gradients.
pub(crate) struct ConvKernel<S> {
    g: Geometry,
    padded: Vec<S>,
    chunked: Vec<S>,
    /// Backward: each task's block of patch gradients.
    scratch: Vec<S>,
    /// Backward: a group's output gradients packed for the input gradient's products.
    packed: Vec<S>,
    tuning: Tuning,
}

/// A chunk of examples holds at most this many values in each of its buffers (padded input,
/// output, patch gradients), unless one example alone needs more: 1 MiB of `f32`. Large
/// convolutions go one example at a time, with no more memory than that example needs,
/// unless their outputs are small (`CHUNK_COLUMNS`).
const CHUNK_VALUES: usize = 1 << 18;

/// A chunk's products are at least this many columns (positions of its examples) wide,
/// whatever its buffers hold: 4 examples of a 7 x 7 output.
const CHUNK_COLUMNS: usize = 192;

impl<S: Scalar> Kernel<S> for ConvKernel<S> {
    /// `out[o][p] = b[o] + sum_k W[o][k] patches_g[k][p]` for every example, over the patch
    /// matrix of output channel o's group g: per output value K mul and K add (K - 1 add
    /// without bias).
    ///
    /// # Shapes
    /// `x`: batch x C_in x H x W, `out`: batch x C_out x H_out x W_out.
    fn forward(&mut self, x: &[&[S]], params: &[&[S]], out: &mut [S]) {
        let (x, w, b) = (x[0], params[0], params.get(1).copied().unwrap_or(&[]));
        let g = self.g;
        let (k, p, group_out) = (g.patch(), g.positions(), g.group_out());
        let out_len = g.out_channels * p;
        let chunk = g.chunk(&[out_len]);
        let depthwise = g.group_in() == 1 && g.groups > 1;
        let weights = |w| Strided {
            data: w,
            row_stride: k,
            col_stride: 1,
        };
        // Each group's weights packed once for every chunk, when there are several.
        let packed: Vec<PackedRows<S>> = if x.len() > chunk * g.input_len() && !depthwise {
            w.chunks(group_out * k)
                .map(|w| PackedRows::new(&weights(w), (group_out, k), chunk * p))
                .collect()
        } else {
            Vec::new()
        };
        for (xc, outc) in x
            .chunks(chunk * g.input_len())
            .zip(out.chunks_mut(chunk * out_len))
        {
            let examples = xc.len() / g.input_len();
            let patches = Patches::new(&g, xc, &mut self.padded);
            if depthwise {
                // Depthwise: each output channel reads one input plane. (A convolution of
                // a single input channel, LeNet-5's first, is one product W (C_out x window)
                // by the patches: the matrix product's tile does it faster than the loops.)
                depthwise::forward(&g, patches.images, w, b, outc);
                continue;
            }
            let n = examples * p;
            // Row o of the product holds every example's channel o side by side; one
            // example's output is that already.
            let product: &mut [S] = if examples == 1 {
                &mut *outc
            } else {
                self.chunked.resize(out_len * examples, S::zero());
                &mut self.chunked
            };
            for (group, (rows, w)) in product
                .chunks_mut(group_out * n)
                .zip(w.chunks(group_out * k))
                .enumerate()
            {
                let start = if b.is_empty() {
                    Start::FirstProduct
                } else {
                    Start::RowBias(&b[group * group_out..])
                };
                let strided = weights(w);
                let weights: &dyn Operand<S> = match packed.get(group) {
                    Some(packed) => packed,
                    None => &strided,
                };
                let patches = patches.of_group(group);
                gemm((group_out, n, k), weights, &patches, start, rows);
            }
            if examples > 1 {
                for (o, row) in self.chunked.chunks_exact(n).enumerate() {
                    for (e, values) in row.chunks_exact(p).enumerate() {
                        outc[e * out_len + o * p..][..p].copy_from_slice(values);
                    }
                }
            }
        }
    }

    /// Gradients from `dout`, group by group:
    /// - `dW[o][k] = sum over examples and positions of dout[o][p] patches_g[k][p]`:
    ///   B*P*C_out*K mul, (B*P - 1)*C_out*K add;
    /// - `db[o] = sum over examples and positions of dout[o][p]`: (B*P - 1)*C_out add;
    /// - if `dx` is wanted: `dpatches_g = W_g^T dout_g` (B*G*K*P*C_out/G mul,
    ///   B*G*K*P*(C_out/G - 1) add), then `col2im`: one add per patch entry inside the input,
    ///   less one per input position reached.
    fn backward(&mut self, grads: Backward<'_, S>) {
        let Backward {
            x,
            dy: dout,
            params,
            dparams,
            dx,
            ..
        } = grads;
        let (x, w, mut dx) = (x[0], params[0], dx[0].as_deref_mut());
        let (dw, db) = dparams.split_at_mut(1);
        let (dw, mut db) = (&mut *dw[0], db.first_mut());
        let g = self.g;
        let (k, p, group_out) = (g.patch(), g.positions(), g.group_out());
        let out_len = g.out_channels * p;
        // Depthwise convolutions need no patch gradients (see `depthwise::input_gradient`).
        let patch_grads = if dx.is_some() && g.group_in() > 1 {
            g.groups * k * p
        } else {
            0
        };
        let chunk = g.chunk(&[out_len, patch_grads]);
        let chunks = x
            .chunks(chunk * g.input_len())
            .zip(dout.chunks(chunk * out_len));
        // Worked out for the first chunk, the largest, when it is first needed.
        let mut input_gradient = None;
        for (index, (xc, doutc)) in chunks.enumerate() {
            let first_chunk = index == 0;
            let examples = xc.len() / g.input_len();
            let n = examples * p;
            let patches = Patches::new(&g, xc, &mut self.padded);
            let start = if first_chunk {
                Start::FirstProduct
            } else {
                Start::Existing
            };
            let e0 = index * chunk;
            let dxc = dx
                .as_deref_mut()
                .map(|dx| &mut dx[e0 * g.input_len()..(e0 + examples) * g.input_len()]);
            if let Some(db) = db.as_deref_mut() {
                for (e, doute) in doutc.chunks_exact(out_len).enumerate() {
                    row_sums(doute, p, db, first_chunk && e == 0);
                }
            }
            if g.group_in() == 1 {
                // Depthwise: each output channel reads one input plane, and each input
                // plane's gradient is computed whole, without the chunk's patch gradients.
                // A convolution of a single input channel (LeNet-5's first) has one group:
                // its weight gradient is one product, as deep as the chunk's positions, which
                // the matrix product's tile does faster than the loops (many output channels
                // side by side in vectors rather than a few chains of single values).
                if g.groups == 1 {
                    let dout = Chunked::of_group(&g, doutc, 0);
                    gemm((group_out, k, n), &dout, &PatchesT::new(patches), start, dw);
                } else {
                    depthwise::weight_gradient(&g, patches.images, doutc, dw, first_chunk);
                }
                if let Some(dxc) = dxc {
                    depthwise::input_gradient(&g, w, doutc, dxc);
                }
                continue;
            }
            for group in 0..g.groups {
                let dout_g = Chunked::of_group(&g, doutc, group);
                let patches_t = PatchesT::new(patches.of_group(group));
                let dw_g = &mut dw[group * group_out * k..][..group_out * k];
                gemm((group_out, k, n), &dout_g, &patches_t, start, dw_g);
            }
            let Some(dxc) = dxc else { continue };
            if examples == 1 && g.is_pointwise() {
                // A 1 x 1 window at stride 1 without padding, one example: the patch gradients
                // are the input gradient itself (each input position has exactly one
                // contribution, so `col2im` would add nothing), and the product writes them
                // there.
                for (group, dx_g) in dxc.chunks_exact_mut(k * n).enumerate() {
                    let dout_g = Chunked::of_group(&g, doutc, group);
                    let w_t = transposed_weights(&w[group * group_out * k..][..group_out * k], k);
                    gemm((k, n, group_out), &w_t, &dout_g, Start::FirstProduct, dx_g);
                }
            } else {
                let plan = input_gradient.get_or_insert_with(|| {
                    let chunks = x.len().div_ceil(chunk * g.input_len());
                    InputGradient::new(&g, self.tuning, w, examples, chunks)
                });
                let buffers = (&mut self.scratch, &mut self.packed);
                plan.chunk(&g, w, doutc, examples, buffers, dxc);
            }
        }
    }
}

/// How the input gradient shares out its work ([`InputGradient`]); tests make them small to
/// reach every path on small shapes.
#[derive(Copy, Clone, Debug)]
struct Tuning {
    /// A block's patch gradients hold about this many values (512 KiB of `f32`: they stay in
    /// a core's cache between the product that writes them and `col2im` that reads them).
    block_values: usize,
    /// From this many multiply-adds on (a chunk's group), the work is split among threads.
    parallel_work: usize,
}

impl Tuning {
    const DEFAULT: Tuning = Tuning {
        block_values: 1 << 17,
        parallel_work: 1 << 18,
    };

    /// How the input gradient of chunks of `examples` is cut: how many tasks share out the
    /// input channels, how many channels each task takes (the last one the rest), and how
    /// many a block of a task holds: about as many as fit in `block_values`, in blocks of
    /// nearly equal size, a whole number of register tiles high where the window allows.
    fn blocks(self, g: &Geometry, examples: usize) -> Blocks {
        let (window, channels) = (g.window(), g.group_in());
        let columns = examples.saturating_mul(g.positions());
        let multiply_adds = g
            .patch()
            .saturating_mul(columns)
            .saturating_mul(g.group_out());
        let tasks = if multiply_adds >= self.parallel_work {
            rayon::current_num_threads().clamp(1, channels.max(1))
        } else {
            1
        };
        let tile = gemm::tile_rows();
        let whole_tiles = tile / gcd(window, tile);
        // Each task's first row on a tile's edge, unless that leaves a thread idle (6
        // channels of 25 rows each on 2 threads: 3 channels each, not 6 and none).
        let even = channels.div_ceil(tasks);
        let aligned = even.next_multiple_of(whole_tiles);
        let (per_task, whole_tasks) = if channels.div_ceil(aligned) == tasks {
            (aligned, true)
        } else {
            (even, false)
        };
        let fit = (self.block_values / window.saturating_mul(columns).max(1)).max(1);
        let block = per_task
            .div_ceil(per_task.div_ceil(fit))
            .next_multiple_of(whole_tiles);
        Blocks {
            columns,
            tasks: channels.div_ceil(per_task),
            per_task,
            block,
            whole_tasks,
        }
    }
}

/// How [`Tuning::blocks`] cuts the input gradient of a chunk.
#[derive(Copy, Clone, Debug)]
struct Blocks {
    /// The product's columns (positions of the chunk's examples).
    columns: usize,
    tasks: usize,
    /// Input channels to a task.
    per_task: usize,
    /// Input channels to a block of a task.
    block: usize,
    /// Whether every task's and block's first row of `W_g^T` is on a tile's edge, where a
    /// packed operand's panels start.
    whole_tasks: bool,
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The input gradient of a backward pass, chunk by chunk, group by group. The group's output
/// gradients are packed once ([`PackedColumns`]); then each task (one per thread) takes a
/// run of the group's input channels, a block of channels at a time: the block's patch
/// gradients `W_block^T dout_g` (window rows per channel) on the task's own thread, then
/// `col2im` of each of the block's planes while they are still in that core's cache. Every sum is the one the whole patch-gradient matrix would have (a row's products
/// in the same order, a position's contributions in the same order), whatever the blocks and
/// the threads. The weights, transposed, are packed once for all chunks when there are
/// several and the products are computed as they are given.
struct InputGradient<S: Scalar> {
    blocks: Blocks,
    transposed: bool,
    /// Each group's `W_g^T`, packed, if it is.
    weights: Vec<PackedRows<S>>,
    cells: Vec<Cell>,
}

impl<S: Scalar> InputGradient<S> {
    /// The plan for chunks of `examples`, and `chunks` of them.
    fn new(g: &Geometry, tuning: Tuning, w: &[S], examples: usize, chunks: usize) -> Self {
        let (k, group_out, window) = (g.patch(), g.group_out(), g.window());
        let blocks = tuning.blocks(g, examples);
        let transposed = gemm::transposes((blocks.block * window, blocks.columns, group_out));
        let weights = if chunks > 1 && !transposed && blocks.whole_tasks {
            w.chunks_exact(group_out * k)
                .map(|w| PackedRows::oriented(&transposed_weights(w, k), (k, group_out), false))
                .collect()
        } else {
            Vec::new()
        };
        let cells = (0..window).filter_map(|ij| Cell::new(g, ij)).collect();
        InputGradient {
            blocks,
            transposed,
            weights,
            cells,
        }
    }

    /// The input gradient of a chunk of `examples`.
    fn chunk(
        &self,
        g: &Geometry,
        w: &[S],
        doutc: &[S],
        examples: usize,
        (scratch, packed): (&mut Vec<S>, &mut Vec<S>),
        dx: &mut [S],
    ) {
        let (k, p, group_out, group_in) = (g.patch(), g.positions(), g.group_out(), g.group_in());
        let (window, plane) = (g.window(), g.height * g.width);
        let Blocks {
            tasks,
            per_task,
            block,
            ..
        } = self.blocks;
        let n = examples * p;
        let block_len = block * window * n;
        scratch.resize(tasks * block_len, S::zero());
        for group in 0..g.groups {
            let dout_g = Chunked::of_group(g, doutc, group);
            let buffer = std::mem::take(packed);
            let dout_g = PackedColumns::new(buffer, &dout_g, (group_out, n), self.transposed);
            let strided = transposed_weights(&w[group * group_out * k..][..group_out * k], k);
            let weights: &dyn Operand<S> = match self.weights.get(group) {
                Some(packed) => packed,
                None => &strided,
            };
            // Each task's planes of this group, example by example, channel by channel.
            let mut planes: Vec<Vec<&mut [S]>> = (0..tasks).map(|_| Vec::new()).collect();
            for dx_e in dx.chunks_exact_mut(g.in_channels * plane) {
                let dx_g = &mut dx_e[group * group_in * plane..][..group_in * plane];
                for (c, dx_c) in dx_g.chunks_exact_mut(plane).enumerate() {
                    planes[c / per_task].push(dx_c);
                }
            }
            let run = |task: usize, planes: &mut [&mut [S]], scratch: &mut [S]| {
                let channels = planes.len() / examples;
                for b0 in (0..channels).step_by(block) {
                    let cb = block.min(channels - b0);
                    let w_t = RowsFrom {
                        a: weights,
                        r0: (task * per_task + b0) * window,
                    };
                    let dpatches = &mut scratch[..cb * window * n];
                    let dims = (cb * window, n, group_out);
                    gemm_here(dims, &w_t, &dout_g, Start::FirstProduct, dpatches);
                    for e in 0..examples {
                        for c in 0..cb {
                            let dx_c = &mut *planes[e * channels + b0 + c];
                            dx_c.fill(S::zero());
                            let row = |ij: usize| &dpatches[(c * window + ij) * n + e * p..][..p];
                            col2im_channel(g, &self.cells, row, dx_c);
                        }
                    }
                }
            };
            if tasks == 1 {
                run(0, &mut planes[0], scratch);
            } else {
                tally::parallel(|| {
                    let parts: Vec<Counts> = planes
                        .into_par_iter()
                        .zip(scratch.par_chunks_mut(block_len))
                        .enumerate()
                        .map(|(task, (mut planes, scratch))| {
                            tally::take(|| run(task, &mut planes, scratch)).1
                        })
                        .collect();
                    ((), parts.into_iter().sum())
                });
            }
            *packed = dout_g.into_buffer();
        }
    }
}

/// A group's weights `W_g` (C_out/G x K, row-major) seen as `W_g^T` (K x C_out/G).
fn transposed_weights<S>(w: &[S], k: usize) -> Strided<'_, S> {
    Strided {
        data: w,
        row_stride: 1,
        col_stride: k,
    }
}

/// Copies each example into the middle of its padded image, whose border stays zero: plane
/// by plane on all cores when there are many values (moves only, nothing to count).
fn pad<S: Scalar>(g: &Geometry, x: &[S], padded: &mut [S]) {
    let (hp, wp) = g.padded();
    let (ph, pw) = g.padding;
    let copy = |(src, dst): (&[S], &mut [S])| {
        for (row, dst_row) in src
            .chunks_exact(g.width)
            .zip(dst.chunks_exact_mut(wp).skip(ph))
        {
            copy_short(row, &mut dst_row[pw..pw + g.width]);
        }
    };
    let (plane, padded_plane) = (g.height * g.width, hp * wp);
    if x.len() < PARALLEL_PAD {
        x.chunks_exact(plane)
            .zip(padded.chunks_exact_mut(padded_plane))
            .for_each(copy);
    } else {
        x.par_chunks_exact(plane)
            .zip(padded.par_chunks_exact_mut(padded_plane))
            .for_each(copy);
    }
}

/// From this many input values on, `pad` copies on all cores.
const PARALLEL_PAD: usize = 1 << 16;

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

/// The patch matrices of one channel group of a chunk's padded images side by side
/// (K x examples*P): row `(c, i, j)` (c counted from the group's first channel), column
/// `(e, y, x)`.
#[derive(Copy, Clone)]
struct Patches<'a, S> {
    /// The chunk's padded images, one after the other.
    images: &'a [S],
    g: Geometry,
    /// The group's first input channel.
    channel0: usize,
}

impl<'a, S: Scalar> Patches<'a, S> {
    /// The patches of the examples `x` (a whole number of them) for the first group: `x`
    /// itself without padding, else a padded copy in `padded`.
    fn new(g: &Geometry, x: &'a [S], padded: &'a mut Vec<S>) -> Patches<'a, S> {
        let images = if g.padding == (0, 0) {
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
        Patches {
            images,
            g: *g,
            channel0: 0,
        }
    }

    /// The same images' patches for channel group `group`.
    fn of_group(&self, group: usize) -> Patches<'a, S> {
        Patches {
            channel0: group * self.g.group_in(),
            ..*self
        }
    }

    fn image_len(&self) -> usize {
        let (hp, wp) = self.g.padded();
        self.g.in_channels * hp * wp
    }

    /// The offset in a padded image of each patch row's element at position (0, 0), for rows
    /// `k`, `k + 1` and on: the row's window cell walked without dividing.
    fn row_offsets(&self, k: usize) -> impl Iterator<Item = usize> {
        let (hp, wp) = self.g.padded();
        let (kh, kw) = self.g.kernel;
        let (mut c, mut i, mut j) = (k / (kh * kw), k / kw % kh, k % kw);
        std::iter::from_fn(move || {
            let offset = (self.channel0 + c) * hp * wp + i * wp + j;
            j += 1;
            if j == kw {
                (i, j) = (i + 1, 0);
                if i == kh {
                    (c, i) = (c + 1, 0);
                }
            }
            Some(offset)
        })
    }
}

impl<S: Scalar> Patches<'_, S> {
    /// The image offset (relative to a row's (0, 0) element) of each of `n` columns from
    /// `column`, walking examples, output rows and columns without dividing: `visit` gets
    /// each run of columns along one output row as (offset of its first, length).
    fn runs(&self, column: usize, n: usize, mut visit: impl FnMut(usize, usize)) {
        let (ho, wo) = self.g.output();
        let (_, wp) = self.g.padded();
        let ((sh, sw), positions) = (self.g.stride, self.g.positions());
        let (mut e, p) = (column / positions, column % positions);
        let (mut y, mut x) = (p / wo, p % wo);
        let mut done = 0;
        while done < n {
            let run = (wo - x).min(n - done);
            visit(e * self.image_len() + y * sh * wp + x * sw, run);
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

impl<S: Scalar> Patches<'_, S> {
    /// `dst[t] = image[start + t * stride]`: a run of positions along one output row reads
    /// every `stride`-th value of one input row.
    #[inline(always)]
    fn read_run(&self, image: &[S], start: usize, dst: &mut [S]) {
        match self.g.stride.1 {
            1 => copy_short(&image[start..], dst),
            2 => every_other(&image[start..], dst),
            s => {
                for (v, &x) in dst.iter_mut().zip(image[start..].iter().step_by(s)) {
                    *v = x;
                }
            }
        }
    }
}

impl<S: Scalar> Operand<S> for Patches<'_, S> {
    fn copy_block(&self, r0: usize, rows: usize, c0: usize, cols: usize, out: &mut [S]) {
        for (dst, offset) in out
            .chunks_exact_mut(cols)
            .take(rows)
            .zip(self.row_offsets(r0))
        {
            let image = &self.images[offset..];
            let mut filled = 0;
            self.runs(c0, cols, |start, run| {
                self.read_run(image, start, &mut dst[filled..filled + run]);
                filled += run;
            });
        }
    }

    /// Row by row (each a window cell of one channel), each run of positions read straight
    /// into the panels it falls in, cut at the panels' edges.
    fn pack_columns(
        &self,
        (r0, rows): (usize, usize),
        (c0, cols): (usize, usize),
        width: usize,
        out: &mut [S],
    ) {
        let s = self.g.stride.1;
        // The columns' runs, cut at the panels' edges, worked out once for every row: (panel,
        // column in it, offset in the image from the row's first, length).
        let mut pieces = Vec::with_capacity(cols.div_ceil(width) + cols / self.g.output().1 + 2);
        let (mut p, mut j) = (0, 0);
        self.runs(c0, cols, |start, run| {
            let mut done = 0;
            while done < run {
                let n = (width - j).min(run - done);
                pieces.push((p, j, start + done * s, n));
                done += n;
                j += n;
                if j == width {
                    (p, j) = (p + 1, 0);
                }
            }
        });
        for (r, offset) in (0..rows).zip(self.row_offsets(r0)) {
            let image = &self.images[offset..];
            for &(p, j, start, n) in &pieces {
                self.read_run(image, start, &mut out[(p * rows + r) * width + j..][..n]);
            }
        }
    }
}

/// The transposed patch matrices (examples*P x K), for the weight gradient, with each
/// column's offset in an image worked out once.
struct PatchesT<'a, S> {
    patches: Patches<'a, S>,
    offsets: Vec<usize>,
}

impl<'a, S: Scalar> PatchesT<'a, S> {
    fn new(patches: Patches<'a, S>) -> PatchesT<'a, S> {
        let offsets = patches.row_offsets(0).take(patches.g.patch()).collect();
        PatchesT { patches, offsets }
    }
}

impl<S: Scalar> Operand<S> for PatchesT<'_, S> {
    fn copy_block(&self, r0: usize, rows: usize, c0: usize, cols: usize, out: &mut [S]) {
        let offsets = &self.offsets[c0..c0 + cols];
        let s = self.patches.g.stride.1;
        let mut r = 0;
        self.patches.runs(r0, rows, |start, run| {
            for t in 0..run {
                let image = &self.patches.images[start + t * s..];
                let dst = &mut out[(r + t) * cols..(r + t + 1) * cols];
                for (v, &off) in dst.iter_mut().zip(offsets) {
                    *v = image[off];
                }
            }
            r += run;
        });
    }

    /// Row by row (each a position), straight into every panel: the position's place in the
    /// image is worked out once for all its columns, and the columns of one window row (`kw`
    /// values side by side in the image) are copied a few at a time, not one by one. At stride
    /// 1, eight positions along one output row are eight values side by side in the image
    /// for every column: eight such runs, for eight columns of one panel, are one square
    /// tile moved in vector registers (`moves::transpose_8x8`).
    fn pack_columns(
        &self,
        (r0, rows): (usize, usize),
        (c0, cols): (usize, usize),
        width: usize,
        out: &mut [S],
    ) {
        let offsets = &self.offsets[c0..c0 + cols];
        // Columns whose offsets follow one another (a window's row), up to 4 and never across
        // a panel, are copied together: (place in a row of the output, offset, length).
        // `pieces` covers every column, `rest` those outside the tiles' groups of 8.
        let mut pieces = Vec::with_capacity(cols);
        let mut rest = Vec::with_capacity(cols);
        let mut groups = Vec::with_capacity(cols / 8);
        let s = self.patches.g.stride.1;
        for (p, panel) in offsets.chunks(width).enumerate() {
            let tiled = if s == 1 { panel.len() / 8 * 8 } else { 0 };
            for j in (0..tiled).step_by(8) {
                groups.push((p * rows * width + j, p * width + j));
            }
            let mut j = 0;
            while j < panel.len() {
                let mut len = 1;
                while len < 4
                    && j + len < panel.len()
                    && j + len != tiled
                    && panel[j + len] == panel[j] + len
                {
                    len += 1;
                }
                pieces.push((p * rows * width + j, panel[j], len));
                if j >= tiled {
                    rest.push((p * rows * width + j, panel[j], len));
                }
                j += len;
            }
        }
        let copy = |row: &mut [S], image: &[S], pieces: &[(usize, usize, usize)]| {
            for &(at, off, len) in pieces {
                let (dst, src) = (&mut row[at..], &image[off..]);
                match len {
                    4 => dst[..4].copy_from_slice(&src[..4]),
                    3 => dst[..3].copy_from_slice(&src[..3]),
                    2 => dst[..2].copy_from_slice(&src[..2]),
                    _ => dst[0] = src[0],
                }
            }
        };
        let mut r = 0;
        self.patches.runs(r0, rows, |start, run| {
            let mut t = 0;
            if !groups.is_empty() {
                while t + 8 <= run {
                    let image = &self.patches.images[start + t..];
                    let block = &mut out[(r + t) * width..];
                    for &(at, column) in &groups {
                        let runs = std::array::from_fn(|j| {
                            image[offsets[column + j]..]
                                .first_chunk::<8>()
                                .expect("a window lies inside the padded image")
                        });
                        transpose_8x8(runs, &mut block[at..], width);
                    }
                    for q in 0..8 {
                        copy(&mut block[q * width..], &image[q..], &rest);
                    }
                    t += 8;
                }
            }
            for t in t..run {
                let image = &self.patches.images[start + t * s..];
                copy(&mut out[(r + t) * width..], image, &pieces);
            }
            r += run;
        });
    }
}

/// Rows `row0..` of a chunk's `rows x row_len` matrices side by side (rows x
/// examples*row_len): element `(r, (e, q))` is `data[e * rows * row_len + (row0 + r) *
/// row_len + q]`. The output gradients of a chunk (of one channel group), seen as one matrix.
struct Chunked<'a, S> {
    data: &'a [S],
    rows: usize,
    row0: usize,
    row_len: usize,
}

impl<'a, S> Chunked<'a, S> {
    /// The output gradients of a chunk (`dout`, every example's C_out x P), group `group`'s
    /// rows.
    fn of_group(g: &Geometry, dout: &'a [S], group: usize) -> Chunked<'a, S> {
        Chunked {
            data: dout,
            rows: g.out_channels,
            row0: group * g.group_out(),
            row_len: g.positions(),
        }
    }
}

impl<S: Scalar> Operand<S> for Chunked<'_, S> {
    fn copy_block(&self, r0: usize, rows: usize, c0: usize, cols: usize, out: &mut [S]) {
        let example_len = self.rows * self.row_len;
        for (r, dst) in out.chunks_exact_mut(cols).take(rows).enumerate() {
            let mut filled = 0;
            while filled < cols {
                let (e, q) = ((c0 + filled) / self.row_len, (c0 + filled) % self.row_len);
                let run = (self.row_len - q).min(cols - filled);
                let start = e * example_len + (self.row0 + r0 + r) * self.row_len + q;
                dst[filled..filled + run].copy_from_slice(&self.data[start..start + run]);
                filled += run;
            }
        }
    }

    /// Panel by panel, each example's run of columns packed as the row-major matrix it is
    /// (in tiles moved in vector registers where the type allows): the weight gradient's
    /// output-gradient operand, and its transpose when the product runs transposed.
    fn pack_rows(
        &self,
        (r0, rows): (usize, usize),
        (c0, cols): (usize, usize),
        height: usize,
        out: &mut [S],
    ) {
        let example_len = self.rows * self.row_len;
        for (p, panel) in out
            .chunks_mut(cols * height)
            .take(rows.div_ceil(height))
            .enumerate()
        {
            let panel_rows = (r0 + p * height, height.min(rows - p * height));
            let mut c = 0;
            while c < cols {
                let (e, q) = ((c0 + c) / self.row_len, (c0 + c) % self.row_len);
                let run = (self.row_len - q).min(cols - c);
                let example = Strided {
                    data: &self.data[e * example_len + self.row0 * self.row_len..],
                    row_stride: self.row_len,
                    col_stride: 1,
                };
                example.pack_rows(panel_rows, (q, run), height, &mut panel[c * height..]);
                c += run;
            }
        }
    }
}

/// Where the patch-gradient row of window cell `(i, j)` lands in an input plane, worked out
/// once for all planes. The first contribution to input position `(yy, xx)` in the order
/// `(i, j, y, x)` comes from the smallest window row `i` that reaches row `yy` and, among its
/// cells, the smallest `j` that reaches column `xx`. A smaller row `i - sh` reaches the same
/// `yy` from output row `y + 1`, so row `i` of output row `y` comes first unless `i >= sh` and
/// `y + 1 < H_out`; likewise cell `j` comes first unless `j >= sw` and `x + 1 < W_out`. So
/// along one row of a patch gradient the first contributions are all of it, its last output
/// column or none, and the rest are adds.
struct Cell {
    ij: usize,
    /// The output columns `x_lo..x_lo + len` whose input column `x*sw + j - pw` lies in
    /// `0..width`; the first of them lands on input column `first_column`.
    x_lo: usize,
    len: usize,
    first_column: usize,
    /// Of an output row whose window row `i` comes first, the columns (of the `len`) whose
    /// cell `j` does.
    first_columns: std::ops::Range<usize>,
    /// The output rows `y_lo..y_hi` whose input row `y*sh + i - ph` lies in `0..height`:
    /// those before `y_first` have no first contributions; from it on, window row `i` comes
    /// first (all of them if `i < sh`, else the last output row if it is reached).
    y_lo: usize,
    y_first: usize,
    y_hi: usize,
    /// The window row.
    i: usize,
}

impl Cell {
    /// `None` if the cell lies in the padding for every output position.
    fn new(g: &Geometry, ij: usize) -> Option<Cell> {
        let (ho, wo) = g.output();
        let (kw, (sh, sw), (ph, pw)) = (g.kernel.1, g.stride, g.padding);
        let (i, j) = (ij / kw, ij % kw);
        let x_lo = pw.saturating_sub(j).div_ceil(sw);
        let x_hi = (g.width + pw).saturating_sub(j).div_ceil(sw).min(wo);
        let y_lo = ph.saturating_sub(i).div_ceil(sh);
        let y_hi = (g.height + ph).saturating_sub(i).div_ceil(sh).min(ho);
        if x_lo >= x_hi || y_lo >= y_hi {
            return None;
        }
        let len = x_hi - x_lo;
        let first_columns = if j < sw {
            0..len
        } else if x_hi == wo {
            len - 1..len
        } else {
            0..0
        };
        let y_first = if i < sh {
            y_lo
        } else if y_hi == ho {
            y_hi - 1
        } else {
            y_hi
        };
        Some(Cell {
            ij,
            x_lo,
            len,
            first_column: x_lo * sw + j - pw,
            first_columns,
            y_lo,
            y_first,
            y_hi,
            i,
        })
    }
}

/// `col2im` for one input channel of one example: `row(ij)` is the patch-gradient row of
/// window cell `ij`, each added to the input positions it lies on (see `Cell`).
#[inline(never)]
fn col2im_channel<'a, S: Scalar>(
    g: &Geometry,
    cells: &[Cell],
    row: impl Fn(usize) -> &'a [S],
    dx: &mut [S],
) {
    let (_, wo) = g.output();
    let ((sh, sw), ph) = (g.stride, g.padding.0);
    // Whole rows of the input, one after the other (stride 1, as wide as the output): a
    // block of output rows is one run of the patch gradient and one of the input.
    let contiguous = (sh, sw) == (1, 1) && wo == g.width;
    for cell in cells {
        let row = row(cell.ij);
        let Cell {
            x_lo,
            len,
            first_column,
            y_lo,
            y_first,
            y_hi,
            ..
        } = *cell;
        let target = |y: usize| (y * sh + cell.i - ph) * g.width + first_column;
        let span = (len - 1) * sw + 1;
        if contiguous && len == wo {
            add(
                &mut dx[target(y_lo)..][..(y_first - y_lo) * len],
                &row[y_lo * wo..y_first * wo],
            );
            if cell.first_columns.len() == len {
                dx[target(y_first)..][..(y_hi - y_first) * len]
                    .copy_from_slice(&row[y_first * wo..y_hi * wo]);
                continue;
            }
        } else {
            for y in y_lo..y_first {
                let values = &row[y * wo + x_lo..][..len];
                if sw == 1 {
                    add(&mut dx[target(y)..][..len], values);
                } else {
                    add_or_set_strided(&mut dx[target(y)..][..span], sw, values, 0..0);
                }
            }
        }
        for y in y_first..y_hi {
            let values = &row[y * wo + x_lo..][..len];
            let targets = &mut dx[target(y)..][..span];
            if sw == 1 {
                add_or_set(targets, values, cell.first_columns.clone());
            } else {
                add_or_set_strided(targets, sw, values, cell.first_columns.clone());
            }
        }
    }
}

/// `d += v` element by element.
#[inline(never)]
fn add<S: Scalar>(d: &mut [S], v: &[S]) {
    for (d, &v) in d.iter_mut().zip(v) {
        *d += v;
    }
}

/// `d += v` element by element, except `d = v` on `set`.
#[inline(never)]
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

/// `add_or_set` on every `stride`-th value of `d`: `d[t * stride] += v[t]`, except
/// `d[t * stride] = v[t]` for `t` in `set`. `d` is `(v.len() - 1) * stride + 1` long.
#[inline(never)]
fn add_or_set_strided<S: Scalar>(d: &mut [S], stride: usize, v: &[S], set: std::ops::Range<usize>) {
    // Three runs: adds, sets, adds; each but the last ends a whole stride before the next.
    let (head, rest) = d.split_at_mut((set.start * stride).min(d.len()));
    let (middle, tail) = rest.split_at_mut((set.len() * stride).min(rest.len()));
    let (v_head, rest) = v.split_at(set.start);
    let (v_middle, v_tail) = rest.split_at(set.len());
    if stride == 2 {
        every::<S, 2, true>(head, v_head);
        every::<S, 2, false>(middle, v_middle);
        every::<S, 2, true>(tail, v_tail);
    } else {
        for (d, &v) in head.iter_mut().step_by(stride).zip(v_head) {
            *d += v;
        }
        for (d, &v) in middle.iter_mut().step_by(stride).zip(v_middle) {
            *d = v;
        }
        for (d, &v) in tail.iter_mut().step_by(stride).zip(v_tail) {
            *d += v;
        }
    }
}

/// `d[t * K] += v[t]` (with `ADD`, else `d[t * K] = v[t]`) for every `t`, in order: the
/// stride a constant, so that the loop runs over whole strides of `d`.
#[inline(always)]
fn every<S: Scalar, const K: usize, const ADD: bool>(d: &mut [S], v: &[S]) {
    let whole = (d.len() / K).min(v.len());
    let (strides, rest) = d.split_at_mut(whole * K);
    for (d, &v) in strides.chunks_exact_mut(K).zip(&v[..whole]) {
        if ADD {
            d[0] += v;
        } else {
            d[0] = v;
        }
    }
    if let (Some(d), Some(&v)) = (rest.first_mut(), v.get(whole)) {
        if ADD {
            *d += v;
        } else {
            *d = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, summed in the documented orders: forward from the bias in ascending
    /// `(c, i, j)` over the output channel's group; the weight gradient over examples then
    /// positions; each patch gradient over its group's output channels, then added to the
    /// input in `(i, j, y, x)` order. Products are added with one rounding where the matrix
    /// product fuses (as it does on this machine or not).
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
        let (_, wo) = g.output();
        let (k, p, (kh, kw)) = (g.patch(), g.positions(), g.kernel);
        let (group_in, group_out) = (g.group_in(), g.group_out());
        let batch = x.len() / g.input_len();
        // The patch entry (r, q) of example e for group `group`, None in the padding.
        let patch = |e: usize, group: usize, r: usize, q: usize| {
            let (c, i, j) = (group * group_in + r / (kh * kw), r / kw % kh, r % kw);
            let (y, xx) = (q / wo, q % wo);
            let (yy, xi) = (y * g.stride.0 + i, xx * g.stride.1 + j);
            let inside = (g.padding.0..g.padding.0 + g.height).contains(&yy)
                && (g.padding.1..g.padding.1 + g.width).contains(&xi);
            inside.then(|| {
                (e * g.in_channels + c) * g.height * g.width + (yy - g.padding.0) * g.width + xi
                    - g.padding.1
            })
        };
        let value = |e, group, r, q| patch(e, group, r, q).map_or(0.0, |at| x[at]);
        let mut out = vec![0.0; batch * g.out_channels * p];
        let mut dw = vec![0.0; g.out_channels * k];
        let mut dx = vec![0.0; x.len()];
        let mut seen = vec![false; x.len()];
        for e in 0..batch {
            for o in 0..g.out_channels {
                for q in 0..p {
                    let at = (e * g.out_channels + o) * p + q;
                    out[at] = (0..k).fold(b[o], |acc, r| {
                        madd(acc, w[o * k + r], value(e, o / group_out, r, q))
                    });
                }
            }
        }
        for o in 0..g.out_channels {
            for r in 0..k {
                let terms = (0..batch).flat_map(|e| (0..p).map(move |q| (e, q)));
                let mut sum = None;
                for (e, q) in terms {
                    let term = (
                        dout[(e * g.out_channels + o) * p + q],
                        value(e, o / group_out, r, q),
                    );
                    sum = Some(sum.map_or(term.0 * term.1, |s| madd(s, term.0, term.1)));
                }
                dw[o * k + r] = sum.unwrap();
            }
        }
        for e in 0..batch {
            // Every group's patch rows in turn: (c, i, j) in ascending order over the input.
            for group in 0..g.groups {
                for r in 0..k {
                    for q in 0..p {
                        let o0 = group * group_out;
                        let dy = |o: usize| dout[(e * g.out_channels + o) * p + q];
                        let grad = (o0 + 1..o0 + group_out)
                            .fold(w[o0 * k + r] * dy(o0), |s, o| madd(s, w[o * k + r], dy(o)));
                        if let Some(at) = patch(e, group, r, q) {
                            dx[at] = if seen[at] { dx[at] + grad } else { grad };
                            seen[at] = true;
                        }
                    }
                }
            }
        }
        (out, dw, dx)
    }

    /// Runs the kernels on made-up numbers and compares them with `reference` bit for bit.
    fn check_against_reference(g: Geometry, batch: usize, bias: bool) {
        check_with(g, batch, bias, Tuning::DEFAULT);
    }

    /// Made-up input, weights, bias and output gradient for `batch` examples.
    fn made_up(g: Geometry, batch: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let seq = |n: usize, m: usize, scale: f64| -> Vec<f64> {
            (0..n).map(|v| (v % m) as f64 * scale - 1.0).collect()
        };
        (
            seq(batch * g.input_len(), 23, 0.09),
            seq(g.out_channels * g.patch(), 11, 0.17),
            seq(g.out_channels, 5, 0.3),
            seq(batch * g.out_channels * g.positions(), 19, 0.11),
        )
    }

    /// [`check_against_reference`] with the input gradient's work shared out by `tuning`.
    fn check_with(g: Geometry, batch: usize, bias: bool, tuning: Tuning) {
        let (x, w, b, dout) = made_up(g, batch);
        let b = if bias { b } else { Vec::new() };
        let zeros = vec![0.0; g.out_channels];
        let (out, dw, dx) = reference(&g, &x, &w, if bias { &b } else { &zeros }, &dout);

        let mut conv = Conv2d { geometry: g, bias }.kernel::<f64>();
        conv.tuning = tuning;
        let mut got = vec![0.0; out.len()];
        let params: Vec<&[f64]> = if bias { vec![&w, &b] } else { vec![&w] };
        conv.forward(&[&x], &params, &mut got);
        assert_eq!(got, out, "forward, {g:?}");
        let (mut got_dw, mut got_db) = (vec![0.0; w.len()], vec![0.0; b.len()]);
        let mut got_dx = vec![0.0; dx.len()];
        let mut dparams: Vec<&mut [f64]> = vec![&mut got_dw];
        if bias {
            dparams.push(&mut got_db);
        }
        conv.backward(Backward {
            x: &[&x],
            y: &got,
            dy: &dout,
            params: &params,
            dparams: &mut dparams,
            dx: &mut [Some(&mut got_dx)],
        });
        assert_eq!(got_dw, dw, "weight gradient, {g:?}");
        assert_eq!(got_dx, dx, "input gradient, {g:?}");
    }

    fn square(
        (in_channels, out_channels, groups): (usize, usize, usize),
        kernel: usize,
        stride: usize,
        padding: usize,
        (height, width): (usize, usize),
    ) -> Geometry {
        Geometry {
            in_channels,
            out_channels,
            groups,
            kernel: (kernel, kernel),
            stride: (stride, stride),
            padding: (padding, padding),
            height,
            width,
        }
    }

    #[test]
    fn patches_pack_in_tiles_where_one_at_a_time_puts_them() {
        use crate::nn::gemm::tests::columns_one_by_one;
        // The transposed patches and the patches: stride 1 (tiles of 8 positions by 8
        // columns where a run allows) and 2 (every other value), runs of positions shorter
        // and longer than 8, several examples, random blocks and panel widths; f32 and the
        // counted f32 move through vector registers, f64 does not.
        fn check<S: Scalar>(rng: &mut crate::rng::Rng, value: impl Fn(usize) -> S) {
            let stride = 1 + rng.below(2);
            let (side, padding, kernel) = (3 + rng.below(20), rng.below(2), 1 + rng.below(3));
            let g = square(
                (1 + rng.below(5), 2, 1),
                kernel,
                stride,
                padding,
                (side, side + 2),
            );
            let examples = 1 + rng.below(3);
            let x: Vec<S> = (0..examples * g.input_len()).map(&value).collect();
            let mut padded = Vec::new();
            let patches_t = PatchesT::new(Patches::new(&g, &x, &mut padded));
            let (n, k) = (examples * g.positions(), g.patch());
            let (r0, c0) = (rng.below(n), rng.below(k));
            let (rows, cols) = (1 + rng.below(n - r0), 1 + rng.below(k - c0));
            let width = [8, 16, 64][rng.below(3)];
            let mark = value(usize::MAX / 2);
            let size = cols.div_ceil(width) * width * rows + 5;
            let (mut got, mut want) = (vec![mark; size], vec![mark; size]);
            // Each value on its own, by `copy_block`.
            let one = |operand: &dyn Operand<S>, r: usize, c: usize| {
                let mut v = [mark];
                operand.copy_block(r, 1, c, 1, &mut v);
                v[0]
            };
            patches_t.pack_columns((r0, rows), (c0, cols), width, &mut got);
            let value = |r, c| one(&patches_t, r, c);
            columns_one_by_one(value, (r0, rows), (c0, cols), width, &mut want);
            let bits = |v: &[S]| {
                v.iter()
                    .map(|x| x.to_f64().unwrap().to_bits())
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                bits(&got),
                bits(&want),
                "{g:?} ({r0}, {rows}) ({c0}, {cols}) {width}"
            );
            // The patches themselves, the same block transposed.
            let patches = &patches_t.patches;
            let size = rows.div_ceil(width) * width * cols + 5;
            let (mut got, mut want) = (vec![mark; size], vec![mark; size]);
            patches.pack_columns((c0, cols), (r0, rows), width, &mut got);
            let value = |r, c| one(patches, r, c);
            columns_one_by_one(value, (c0, cols), (r0, rows), width, &mut want);
            assert_eq!(
                bits(&got),
                bits(&want),
                "{g:?} patches ({c0}, {cols}) ({r0}, {rows}) {width}"
            );
        }
        let mut rng = crate::rng::Rng::new(8);
        for _ in 0..100 {
            check(&mut rng, |v| (v % 1009) as f32);
            check(&mut rng, |v| crate::Counted::new((v % 1009) as f32));
            check(&mut rng, |v| (v % 1009) as f64);
        }
    }

    #[test]
    fn chunks_of_examples_give_the_definition_bit_for_bit() {
        // Big enough images that a chunk holds fewer examples than the batch, and the last
        // chunk fewer than the others.
        for (padding, stride, side) in [(0, 1, 60), (1, 2, 70), (2, 1, 9)] {
            let g = square((2, 8, 1), 3, stride, padding, (side, side + 1));
            if side == 60 {
                assert_eq!(g.chunk(&[g.out_channels * g.positions()]), 9);
                assert_eq!(
                    g.chunk(&[g.out_channels * g.positions(), g.patch() * g.positions()]),
                    4
                );
            }
            check_against_reference(g, 10, true);
        }
        // Weights packed once for all chunks, more rows of them than one block of rows.
        let g = square((2, 100, 1), 3, 1, 1, (40, 40));
        assert_eq!(g.chunk(&[g.out_channels * g.positions()]), 1);
        check_against_reference(g, 3, true);
    }

    #[test]
    fn examples_one_at_a_time_give_the_definition_bit_for_bit() {
        // Examples whose patch gradients alone fill a chunk, so they go one at a time, the
        // weight gradient continued from the previous example's sums after the first: stride
        // 1 and not, grouped or not.
        for (channels, stride, side) in [((16, 2, 1), 1, (50, 51)), ((16, 2, 2), 2, (90, 91))] {
            let g = square(channels, 3, stride, 1, side);
            let patch_grads = g.groups * g.patch() * g.positions();
            assert_eq!(g.chunk(&[g.out_channels * g.positions(), patch_grads]), 1);
            for (batch, bias) in [(1, true), (2, false)] {
                check_against_reference(g, batch, bias);
            }
        }
    }

    #[test]
    fn groups_and_non_square_windows_give_the_definition_bit_for_bit() {
        let mut cases = vec![
            // Depthwise, as MobileNetV2's: stride 1 and 2, padding 1.
            square((6, 6, 6), 3, 1, 1, (9, 8)),
            square((6, 6, 6), 3, 2, 1, (9, 8)),
            // Depthwise with two filters per channel; grouped; without padding.
            square((3, 6, 3), 3, 1, 0, (7, 7)),
            // One input channel, one group (LeNet-5's first convolution, smaller).
            square((1, 6, 1), 5, 1, 0, (9, 8)),
            square((1, 4, 1), 3, 2, 1, (9, 8)),
            square((4, 6, 2), 2, 2, 1, (6, 9)),
            square((6, 4, 2), 1, 1, 0, (5, 5)),
        ];
        // Non-square kernels, strides and padding, grouped or not, stride 1 (col2im's fast
        // path) and not; at stride 1 with "same" padding, col2im adds blocks of whole rows.
        for (groups, kernel, stride, padding) in [
            (1, (1, 3), (1, 1), (0, 1)),
            (1, (5, 5), (1, 1), (2, 2)),
            (2, (5, 3), (1, 1), (2, 1)),
            (2, (3, 1), (1, 1), (1, 0)),
            (1, (2, 5), (2, 1), (1, 2)),
            (3, (3, 2), (1, 3), (2, 0)),
            (3, (4, 4), (3, 2), (0, 1)),
        ] {
            cases.push(Geometry {
                in_channels: 6,
                out_channels: 2 * groups,
                groups,
                kernel,
                stride,
                padding,
                height: 7,
                width: 9,
            });
        }
        for g in cases {
            for (batch, bias) in [(1, true), (3, false)] {
                check_against_reference(g, batch, bias);
            }
        }
    }

    /// Big depthwise images go one example at a time, through more than one chunk.
    #[test]
    fn depthwise_chunks_give_the_definition_bit_for_bit() {
        let g = square((4, 4, 4), 3, 1, 1, (300, 280));
        assert!(g.chunk(&[g.out_channels * g.positions()]) < 3);
        check_against_reference(g, 3, true);
        // Rows longer than the pieces strided inputs are gathered in.
        for stride in [2, 3] {
            check_against_reference(square((2, 2, 2), 3, stride, 1, (7, 200)), 2, false);
        }
    }

    /// The kernels that split their work among threads (the input gradient's runs of
    /// channels, the depthwise loops over channels and planes, several to a task) give the
    /// same bits and counts on 1, 2 and 3 threads.
    #[test]
    fn same_bits_and_counts_on_1_2_3_threads() {
        use crate::nn::ops::step_bits;
        use crate::tally;
        for g in [
            // Small planes: the input gradient at stride 2, then depthwise at stride 2.
            square((40, 24, 1), 3, 2, 1, (17, 17)),
            square((48, 48, 48), 3, 2, 1, (16, 15)),
            square((16, 16, 16), 3, 1, 1, (30, 30)),
        ] {
            let (x, w, b, dout) = made_up(g, 3);
            let run = || {
                let mut conv = Conv2d {
                    geometry: g,
                    bias: true,
                }
                .kernel();
                step_bits(&mut conv, &x, &[&w, &b], &dout)
            };
            tally::assert_same_on_1_2_3_threads(run);
        }
    }

    /// The input gradient in blocks of a few channels (as few as make whole register tiles,
    /// and a last block shorter), shared out among tasks even where the product is small:
    /// the definition's bits on 1, 2 and 3 threads, and the same bits and counts as with
    /// the blocks and tasks of real sizes.
    #[test]
    fn input_gradients_in_small_blocks_give_the_definition_bit_for_bit() {
        use crate::nn::ops::step_bits;
        use crate::tally;
        let geometry = |groups, kernel, stride, padding| Geometry {
            in_channels: 7 * groups,
            out_channels: 2 * groups,
            groups,
            kernel,
            stride,
            padding,
            height: 7,
            width: 9,
        };
        let cases = [
            square((7, 5, 1), 3, 1, 1, (9, 8)),
            square((13, 4, 1), 3, 2, 1, (6, 7)),
            // Pointwise, several examples to a chunk (one example is computed in place).
            square((9, 3, 1), 1, 1, 0, (4, 4)),
            geometry(1, (2, 5), (2, 1), (1, 2)),
            geometry(3, (3, 2), (1, 3), (2, 0)),
            // LeNet-5's second: on two threads, three channels of 25 rows each.
            square((6, 16, 1), 5, 1, 0, (14, 14)),
            // An example to a chunk: the transposed weights packed once for all chunks.
            square((8, 4, 1), 3, 1, 1, (64, 64)),
        ];
        let big = cases[cases.len() - 1];
        assert_eq!(
            big.chunk(&[
                big.out_channels * big.positions(),
                big.patch() * big.positions()
            ]),
            1
        );
        for g in cases {
            for tuning in [
                // As few channels to a block as fill a tile, or about three.
                Tuning {
                    block_values: 1,
                    parallel_work: 0,
                },
                Tuning {
                    block_values: 3 * g.window() * g.positions(),
                    parallel_work: 0,
                },
            ] {
                let (x, w, b, dout) = made_up(g, 3);
                let run = |tuning| {
                    let mut conv = Conv2d {
                        geometry: g,
                        bias: true,
                    }
                    .kernel();
                    conv.tuning = tuning;
                    step_bits(&mut conv, &x, &[&w, &b], &dout)
                };
                let real = run(Tuning::DEFAULT);
                tally::assert_same_on_1_2_3_threads(|| {
                    check_with(g, 1, false, tuning);
                    check_with(g, 3, true, tuning);
                    assert_eq!(run(tuning), real, "{g:?}, {tuning:?}");
                });
            }
        }
    }

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
