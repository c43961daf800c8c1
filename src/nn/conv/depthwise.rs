//! Depthwise convolutions (every group reads one input channel, as MobileNetV2's) as direct
//! loops rather than matrix products: a one-row product per channel would cost more in
//! packing than in arithmetic. The sums are the ones `conv.rs` documents, in the same order:
//! - forward: from the bias or the first product, in ascending window cells `(i, j)`;
//! - weight gradient: over examples, then positions, in ascending order, one chain per
//!   weight (several weights' chains side by side, so they are not bound by the latency of
//!   one multiply-add after another);
//! - input gradient: each patch gradient over its group's output channels, then added to
//!   the input in `(i, j, y, x)` order (`col2im`), one input plane at a time, so the whole
//!   patch-gradient matrix is never held.
//!
//! Channels (and planes of the forward and input gradient) are shared among threads; each
//! is computed whole by one thread in the same order whatever the thread count, and each
//! part's counts are taken there and merged under `tally::parallel`, so counts are exact.

use std::array::from_fn;

use rayon::prelude::*;

use super::super::gemm::madd;
use super::{Cell, Geometry, col2im_channel};
use crate::counts::Counts;
use crate::scalar::Scalar;
use crate::tally;

/// Below this many multiply-adds a kernel runs on the calling thread alone.
const PARALLEL_WORK: usize = 1 << 16;

/// A row's inputs are gathered this many at a time where windows step by more than one.
const PIECE: usize = 64;

/// Window cells whose weight gradients are summed side by side, at most.
const CELLS: usize = 9;

/// Runs `f` on each item (on all cores when `work` multiply-adds are enough to pay for
/// waking them), with scratch made by `init` for a run of items, and merges each part's
/// counts into this thread's tally exactly.
fn each_counted<I, T>(
    items: I,
    work: usize,
    init: impl Fn() -> T + Sync + Send,
    f: impl Fn(&mut T, I::Item) + Sync + Send,
) where
    I: IndexedParallelIterator,
{
    // One part, run right here, when the work is small; else items in groups of at least
    // `TASK_WORK` multiply-adds, each group's counts taken once.
    let min_len = if work < PARALLEL_WORK { usize::MAX } else { 1 };
    let group = (TASK_WORK / (work / items.len().max(1)).max(1)).max(1);
    tally::parallel(|| {
        let counts = items
            .chunks(group)
            .with_min_len(min_len)
            .map_init(init, |scratch, items| {
                tally::take(|| {
                    for item in items {
                        f(scratch, item);
                    }
                })
                .1
            })
            .reduce(|| Counts::ZERO, |a, b| a + b);
        ((), counts)
    });
}

/// A task of `each_counted` takes items of at least this many multiply-adds in all.
const TASK_WORK: usize = 1 << 13;

/// The forward of a chunk of examples: `out[e][o][y][x] = b[o] + sum over (i, j) of
/// W[o][i][j] image_(e, c)[y*sh + i][x*sw + j]`, with `c = o / (C_out / G)`, summed in
/// ascending `(i, j)` from the bias or the first product, each product added with one fused
/// multiply-add where the matrix product fuses. `images` are the chunk's padded inputs.
pub(super) fn forward<S: Scalar>(g: &Geometry, images: &[S], w: &[S], b: &[S], out: &mut [S]) {
    let (hp, wp) = g.padded();
    let (window, p) = (g.window(), g.positions());
    let image_len = g.in_channels * hp * wp;
    let work = out.len() * window;
    let planes = out.par_chunks_mut(p).enumerate();
    each_counted(
        planes,
        work,
        || (),
        |(), (index, plane)| {
            let (e, o) = (index / g.out_channels, index % g.out_channels);
            let c = o / g.group_out();
            let image = &images[e * image_len + c * hp * wp..][..hp * wp];
            let weights = &w[o * window..][..window];
            forward_plane(g, image, weights, b.get(o).copied(), plane);
        },
    );
}

/// One output plane: row by row, each window cell's products added to the whole row at once
/// (so the loop over the row vectorizes, and each output's sum still runs in ascending
/// `(i, j)`). Where windows step by more than one along the width, each piece of a row's
/// inputs is gathered first (copies, nothing counted).
#[inline(never)]
fn forward_plane<S: Scalar>(
    g: &Geometry,
    image: &[S],
    weights: &[S],
    bias: Option<S>,
    out: &mut [S],
) {
    let (_, wo) = g.output();
    let (_, wp) = g.padded();
    let (kw, (sh, sw)) = (g.kernel.1, g.stride);
    for (y, row) in out.chunks_exact_mut(wo).enumerate() {
        if let Some(bias) = bias {
            row.fill(bias);
        }
        for (ij, &weight) in weights.iter().enumerate() {
            let (i, j) = (ij / kw, ij % kw);
            let line = &image[(y * sh + i) * wp + j..];
            let first = ij == 0 && bias.is_none();
            if sw == 1 {
                scale_or_add(row, weight, &line[..wo], first);
                continue;
            }
            let mut gathered = [S::zero(); PIECE];
            for (piece, src) in row.chunks_mut(PIECE).zip(line.chunks(PIECE * sw)) {
                for (v, &x) in gathered.iter_mut().zip(src.iter().step_by(sw)) {
                    *v = x;
                }
                scale_or_add(piece, weight, &gathered, first);
            }
        }
    }
}

/// The weight gradient's part of a chunk of examples: `dW[o][i][j] (+)= sum over examples and
/// positions of dout[e][o][y][x] image_(e, c)[y*sh + i][x*sw + j]`, in ascending order, from
/// the first product if `first` (the chunk holds the batch's first example), else onto what
/// is there. One output channel's weights on one thread.
pub(super) fn weight_gradient<S: Scalar>(
    g: &Geometry,
    images: &[S],
    dout: &[S],
    dw: &mut [S],
    first: bool,
) {
    let (hp, wp) = g.padded();
    let (window, p) = (g.window(), g.positions());
    let image_len = g.in_channels * hp * wp;
    let examples = dout.len() / (g.out_channels * p);
    let channels = dw.par_chunks_mut(window).enumerate();
    each_counted(
        channels,
        dout.len() * window,
        || (),
        |(), (o, grads)| {
            let c = o / g.group_out();
            for e in 0..examples {
                let image = &images[e * image_len + c * hp * wp..][..hp * wp];
                let plane = &dout[(e * g.out_channels + o) * p..][..p];
                cell_sums(g, image, plane, grads, first && e == 0);
            }
        },
    );
}

/// One example's part of one output channel's weight gradient, `CELLS` window cells at a
/// time.
fn cell_sums<S: Scalar>(g: &Geometry, image: &[S], dout: &[S], grads: &mut [S], first: bool) {
    let mut ij = 0;
    while ij < grads.len() {
        let n = (grads.len() - ij).min(CELLS);
        let sums = &mut grads[ij..ij + n];
        match n {
            9 => cells::<S, 9>(g, image, dout, ij, sums, first),
            8 => cells::<S, 8>(g, image, dout, ij, sums, first),
            7 => cells::<S, 7>(g, image, dout, ij, sums, first),
            6 => cells::<S, 6>(g, image, dout, ij, sums, first),
            5 => cells::<S, 5>(g, image, dout, ij, sums, first),
            4 => cells::<S, 4>(g, image, dout, ij, sums, first),
            3 => cells::<S, 3>(g, image, dout, ij, sums, first),
            2 => cells::<S, 2>(g, image, dout, ij, sums, first),
            _ => cells::<S, 1>(g, image, dout, ij, sums, first),
        }
        ij += n;
    }
}

/// `sums[t] (+)= sum over positions of dout[y][x] image[y*sh + i][x*sw + j]` for the `N`
/// window cells `(i, j)` from `ij0` on, `N` chains side by side, each in ascending positions
/// (from the first product if `first`).
#[inline(never)]
fn cells<S: Scalar, const N: usize>(
    g: &Geometry,
    image: &[S],
    dout: &[S],
    ij0: usize,
    sums: &mut [S],
    first: bool,
) {
    let (_, wo) = g.output();
    let (_, wp) = g.padded();
    let (kw, (sh, sw)) = (g.kernel.1, g.stride);
    // Where each cell lies from the window's first (ascending), and how far the cells reach.
    let offsets: [usize; N] = from_fn(|t| (ij0 + t) / kw * wp + (ij0 + t) % kw);
    let span = offsets[N - 1] + 1;
    let mut acc: Option<[S; N]> = (!first).then(|| from_fn(|t| sums[t]));
    for (y, row) in dout.chunks_exact(wo).enumerate() {
        // The windows of the row's positions, each from its first cell's input.
        let windows = image[y * sh * wp + offsets[0]..].windows(span - offsets[0]);
        let offsets = offsets.map(|off| off - offsets[0]);
        acc = Some(if sw == 1 {
            dot_onto(acc, row, windows, offsets)
        } else {
            dot_onto(acc, row, windows.step_by(sw), offsets)
        });
    }
    sums.copy_from_slice(&acc.expect("at least one position"));
}

/// `start[t] + sum over x of d[x] window_x[offsets[t]]`, in ascending x, `N` sums side by
/// side, from the first products without a `start`. The windows are all as long, so the
/// check of each offset against that length does not depend on x: the compiler moves it
/// out of the loop, which then holds no path to a panic (one would keep the counters of
/// `Counted` in memory rather than in registers).
#[inline(always)]
fn dot_onto<'a, S: Scalar, const N: usize>(
    start: Option<[S; N]>,
    d: &[S],
    windows: impl Iterator<Item = &'a [S]>,
    offsets: [usize; N],
) -> [S; N] {
    let mut terms = d.iter().zip(windows);
    let mut acc = match start {
        Some(acc) => acc,
        None => {
            let (&d, window) = terms.next().expect("a row has positions");
            offsets.map(|off| d * window[off])
        }
    };
    for (&d, window) in terms {
        for (acc, &off) in acc.iter_mut().zip(&offsets) {
            *acc = madd(*acc, d, window[off]);
        }
    }
    acc
}

/// The input gradient of a chunk of examples, one input plane `(e, c)` at a time and in it
/// one window cell `(i, j)` at a time: the cell's patch gradients `dpatches[p] = sum over the
/// output channels o of group c of W[o][i][j] dout[e][o][p]` (from the first product: C_out/G
/// products, C_out/G - 1 adds each), then each one inside the input added to its position
/// (`col2im`, in the same `(i, j, y, x)` order as for the whole patch-gradient matrix).
pub(super) fn input_gradient<S: Scalar>(g: &Geometry, w: &[S], dout: &[S], dx: &mut [S]) {
    let (window, p, plane) = (g.window(), g.positions(), g.height * g.width);
    let group_out = g.group_out();
    let cells: Vec<Option<Cell>> = (0..window).map(|ij| Cell::new(g, ij)).collect();
    let planes = dx.par_chunks_mut(plane).enumerate();
    each_counted(
        planes,
        dout.len() * window,
        Vec::new,
        |row: &mut Vec<S>, (index, dxp)| {
            let (e, c) = (index / g.in_channels, index % g.in_channels);
            row.resize(p, S::zero());
            dxp.fill(S::zero());
            for ij in 0..window {
                for o in c * group_out..(c + 1) * group_out {
                    let d = &dout[(e * g.out_channels + o) * p..][..p];
                    scale_or_add(row, w[o * window + ij], d, o == c * group_out);
                }
                if let Some(cell) = &cells[ij] {
                    col2im_channel(g, std::slice::from_ref(cell), |_| &row[..], dxp);
                }
            }
        },
    );
}

/// `row = weight * d` if `first`, else `row += weight * d` (fused where the matrix product
/// fuses), value by value.
#[inline(never)]
pub(super) fn scale_or_add<S: Scalar>(row: &mut [S], weight: S, d: &[S], first: bool) {
    if first {
        for (v, &d) in row.iter_mut().zip(d) {
            *v = weight * d;
        }
    } else {
        for (v, &d) in row.iter_mut().zip(d) {
            *v = madd(*v, weight, d);
        }
    }
}
