//! MaxPool2d and AvgPool2d, with padding and windows that may overlap: shape rule, closed
//! form, forward and backward (docs/counting.md, "Pooling"). Max pooling compares (one cmp
//! fewer than the window's cells inside the input) and routes each gradient to its window's
//! maximum; average pooling adds the cells inside and divides by the window's area. Where
//! windows overlap, an input cell may get several gradients, so backward adds every
//! gradient onto a zeroed buffer: one add per routed gradient, the same whatever the values.

use super::activation::{PARALLEL_VALUES, on_threads, part_len};
use super::conv::reach;
use super::dense::check_size;
use super::ops::{Backward, Kernel, Operation};
use crate::error::Result;
use crate::estimate::{At, Q, counts, when};
use crate::phases::NodeCounts;
use crate::scalar::Scalar;
use crate::shape::Shape;

/// Pooling geometry over one `height x width` plane.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Window {
    /// Window height and width.
    pub size: usize,
    /// Step between windows.
    pub stride: usize,
    /// Cells of padding on every side: windows may reach past the input by this much, and
    /// only the cells inside count (max pooling pads with minus infinity, average pooling
    /// with zeros and still divides by `size * size`, as PyTorch does by default).
    pub padding: usize,
    /// Input height.
    pub height: usize,
    /// Input width.
    pub width: usize,
    /// Channels (planes).
    pub channels: usize,
}

impl Window {
    /// The shape rule shared by both poolings: an image the padded window fits, padding at
    /// most half the window (so every window has a cell inside the input).
    fn resolve(
        size: usize,
        stride: Option<usize>,
        padding: usize,
        input: Shape,
    ) -> Result<Window, String> {
        let Some((c, h, w)) = input.as_image() else {
            return Err(format!(
                "pooling expects a channels x height x width input, found {input}"
            ));
        };
        check_size("size", size)?;
        let stride = stride.unwrap_or(size);
        check_size("stride", stride)?;
        if padding > size / 2 {
            return Err(format!(
                "padding: expected at most half the window ({}), found {padding}",
                size / 2
            ));
        }
        if size > h + 2 * padding || size > w + 2 * padding {
            return Err(format!(
                "window {size}x{size} is larger than its input {h}x{w} (padding {padding})"
            ));
        }
        Ok(Window {
            size,
            stride,
            padding,
            height: h,
            width: w,
            channels: c,
        })
    }

    /// Whether windows overlap, so that an input cell may get several gradients.
    fn overlaps(&self) -> bool {
        self.stride < self.size
    }

    /// Per plane: the window cells that lie inside the input, summed over all windows.
    fn cells_inside(&self) -> u128 {
        let (ho, wo) = self.output();
        let rows = reach(self.height, ho, self.size, self.stride, self.padding).0;
        let cols = reach(self.width, wo, self.size, self.stride, self.padding).0;
        rows * cols
    }

    pub fn output(&self) -> (usize, usize) {
        let p = 2 * self.padding;
        (
            (self.height + p - self.size) / self.stride + 1,
            (self.width + p - self.size) / self.stride + 1,
        )
    }

    fn output_shape(&self) -> Shape {
        let (ho, wo) = self.output();
        Shape::image(self.channels, ho, wo)
    }

    /// Each output column's window columns inside the input (see [`Window::span`]).
    fn column_spans(&self) -> Vec<std::ops::Range<usize>> {
        (0..self.output().1)
            .map(|x| self.span(x, self.width))
            .collect()
    }

    /// Calls `cell` with the input offset (in the plane) of every cell of the window of
    /// `rows` and `cols` but its first, row by row: the order its sum or maximum runs in.
    #[inline(always)]
    fn after_first(
        &self,
        rows: &std::ops::Range<usize>,
        cols: &std::ops::Range<usize>,
        mut cell: impl FnMut(usize),
    ) {
        let first = rows.start * self.width;
        (cols.start + 1..cols.end).for_each(|c| cell(first + c));
        for r in rows.start + 1..rows.end {
            cols.clone().for_each(|c| cell(r * self.width + c));
        }
    }

    /// How a batch of `len` input values is split among threads: the input values and the
    /// output values of each part, whole planes each (all of them, one part, when alone).
    fn split(&self, len: usize) -> (usize, usize) {
        let (ho, wo) = self.output();
        let plane = self.height * self.width;
        let planes = (len / plane).max(1);
        let per = part_len(planes, PARALLEL_VALUES.div_ceil(plane), 1);
        if per >= planes {
            return (len, planes * ho * wo);
        }
        (per * plane, per * ho * wo)
    }

    /// The input positions, along an axis of `len`, of window `i`'s cells inside the input.
    fn span(&self, i: usize, len: usize) -> std::ops::Range<usize> {
        let start = i * self.stride;
        let (lo, hi) = (
            start.max(self.padding),
            (start + self.size).min(len + self.padding),
        );
        lo - self.padding..hi - self.padding
    }
}

/// Max pooling over windows that do not overlap.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct MaxPool2d(pub Window);

impl MaxPool2d {
    pub(crate) fn resolve(
        size: usize,
        stride: Option<usize>,
        padding: usize,
        input: Shape,
    ) -> Result<Self, String> {
        Window::resolve(size, stride, padding, input).map(MaxPool2d)
    }

    pub(crate) fn kernel(&self) -> MaxPoolKernel {
        MaxPoolKernel {
            window: self.0,
            argmax: Vec::new(),
        }
    }
}

impl Operation for MaxPool2d {
    fn kind(&self) -> &'static str {
        "maxpool2d"
    }

    fn output(&self) -> Shape {
        self.0.output_shape()
    }

    fn closed_form(&self, at: At<'_>, name: &str, grads: &[bool]) -> Result<NodeCounts> {
        // Per output value: the largest of the window's cells inside the input (one cmp
        // fewer than cells). Backward routes each gradient to its window's maximum: a copy
        // when windows are apart, else added onto the zeroed input gradient (1 add each).
        let w = self.0;
        let (planes, outputs) = (at.b() * w.channels, at.b() * self.output().len());
        let (ho, wo) = w.output();
        let cmp = planes * Q(Some(w.cells_inside() - (ho * wo) as u128));
        Ok(NodeCounts {
            forward: counts! { at, format!("{name} forward"); cmp: cmp }?,
            backward: counts! { at, format!("{name} backward");
                add: when(grads[0] && w.overlaps(), outputs),
            }?,
            update: Default::default(),
        })
    }
}

/// Max pooling remembers where each window's maximum was.
pub(crate) struct MaxPoolKernel {
    window: Window,
    argmax: Vec<usize>,
}

impl<S: Scalar> Kernel<S> for MaxPoolKernel {
    fn forward(&mut self, x: &[&[S]], _: &[&[S]], y: &mut [S]) {
        self.argmax.resize(y.len(), 0);
        max_forward(&self.window, x[0], y, &mut self.argmax);
    }

    fn backward(&mut self, grads: Backward<'_, S>) {
        let Backward { dy, dx, .. } = grads;
        if let Some(dx) = dx[0].as_deref_mut() {
            max_backward(&self.window, dy, &self.argmax, dx);
        }
    }
}

/// Average pooling over windows that do not overlap.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct AvgPool2d(pub Window);

impl AvgPool2d {
    pub(crate) fn resolve(
        size: usize,
        stride: Option<usize>,
        padding: usize,
        input: Shape,
    ) -> Result<Self, String> {
        Window::resolve(size, stride, padding, input).map(AvgPool2d)
    }

    pub(crate) fn kernel(&self) -> AvgPoolKernel {
        AvgPoolKernel(self.0)
    }
}

impl Operation for AvgPool2d {
    fn kind(&self) -> &'static str {
        "avgpool2d"
    }

    fn output(&self) -> Shape {
        self.0.output_shape()
    }

    fn closed_form(&self, at: At<'_>, name: &str, grads: &[bool]) -> Result<NodeCounts> {
        // Per output value: the sum of the window's cells inside the input (one add fewer
        // than cells) over size^2 (1 div). Backward: each gradient over size^2 (1 div), to
        // every cell of its window inside the input: copies when windows are apart, else
        // added onto the zeroed input gradient (1 add per cell).
        let w = self.0;
        let (planes, outputs) = (at.b() * w.channels, at.b() * self.output().len());
        let (ho, wo) = w.output();
        let inside = planes * Q(Some(w.cells_inside()));
        let dx = grads[0];
        Ok(NodeCounts {
            forward: counts! { at, format!("{name} forward");
                add: inside - planes * (ho * wo), div: outputs,
            }?,
            backward: counts! { at, format!("{name} backward");
                div: when(dx, outputs), add: when(dx && w.overlaps(), inside),
            }?,
            update: Default::default(),
        })
    }
}

pub(crate) struct AvgPoolKernel(Window);

impl<S: Scalar> Kernel<S> for AvgPoolKernel {
    fn forward(&mut self, x: &[&[S]], _: &[&[S]], y: &mut [S]) {
        avg_forward(&self.0, x[0], y);
    }

    fn backward(&mut self, grads: Backward<'_, S>) {
        let Backward { dy, dx, .. } = grads;
        if let Some(dx) = dx[0].as_deref_mut() {
            avg_backward(&self.0, dy, dx);
        }
    }
}

/// Max pooling: `out = max of the window`, remembering where the maximum was.
///
/// # Shapes
/// `x`: planes x H x W; `out`, `argmax`: planes x H_out x W_out.
pub(crate) fn max_forward<S: Scalar>(w: &Window, x: &[S], out: &mut [S], argmax: &mut [usize]) {
    let (ins, outs) = w.split(x.len());
    let parts = x
        .chunks(ins)
        .zip(out.chunks_mut(outs).zip(argmax.chunks_mut(outs)));
    on_threads(parts.collect(), |(x, (out, argmax))| {
        max_planes(w, x, out, argmax)
    });
}

/// [`max_forward`] on a run of whole planes. Each window's cells are compared row by row,
/// the first cell against the next (the same order whatever the split).
#[inline(never)]
fn max_planes<S: Scalar>(w: &Window, x: &[S], out: &mut [S], argmax: &mut [usize]) {
    let (ho, wo) = w.output();
    let spans = w.column_spans();
    let planes = x.chunks_exact(w.height * w.width);
    let outs = out
        .chunks_exact_mut(ho * wo)
        .zip(argmax.chunks_exact_mut(ho * wo));
    for (plane, (o, arg)) in planes.zip(outs) {
        let rows = (0..ho).map(|y| w.span(y, w.height));
        for ((rows, o), arg) in rows
            .zip(o.chunks_exact_mut(wo))
            .zip(arg.chunks_exact_mut(wo))
        {
            for ((cols, o), arg) in spans.iter().zip(o).zip(arg) {
                let mut best = rows.start * w.width + cols.start;
                let mut max = plane[best];
                w.after_first(&rows, cols, |cell| {
                    if plane[cell] > max {
                        (best, max) = (cell, plane[cell]);
                    }
                });
                (*o, *arg) = (max, best);
            }
        }
    }
}

/// Max pooling's gradient: each window's gradient goes to its maximum, nothing to the rest.
pub(crate) fn max_backward<S: Scalar>(w: &Window, dout: &[S], argmax: &[usize], dx: &mut [S]) {
    let (ins, outs) = w.split(dx.len());
    let parts = dx
        .chunks_mut(ins)
        .zip(dout.chunks(outs).zip(argmax.chunks(outs)));
    on_threads(parts.collect(), |(dx, (dout, argmax))| {
        max_backward_planes(w, dout, argmax, dx)
    });
}

/// [`max_backward`] on a run of whole planes.
#[inline(never)]
fn max_backward_planes<S: Scalar>(w: &Window, dout: &[S], argmax: &[usize], dx: &mut [S]) {
    let (ho, wo) = w.output();
    dx.fill(S::zero());
    let planes = dx.chunks_exact_mut(w.height * w.width);
    for (plane, (d, arg)) in
        planes.zip(dout.chunks_exact(ho * wo).zip(argmax.chunks_exact(ho * wo)))
    {
        if w.overlaps() {
            // Windows share cells: each gradient is added on (the closed form's 1 add per
            // output, whatever the maxima are).
            for (&g, &at) in d.iter().zip(arg) {
                plane[at] += g;
            }
        } else {
            for (&g, &at) in d.iter().zip(arg) {
                plane[at] = g;
            }
        }
    }
}

/// Average pooling: `out = (sum of the window) / size^2`.
pub(crate) fn avg_forward<S: Scalar>(w: &Window, x: &[S], out: &mut [S]) {
    let (ins, outs) = w.split(x.len());
    let parts = x.chunks(ins).zip(out.chunks_mut(outs));
    on_threads(parts.collect(), |(x, out)| avg_planes(w, x, out));
}

/// [`avg_forward`] on a run of whole planes: each sum from the window's first cell, row by
/// row.
#[inline(never)]
fn avg_planes<S: Scalar>(w: &Window, x: &[S], out: &mut [S]) {
    let (ho, wo) = w.output();
    let area = area::<S>(w);
    let spans = w.column_spans();
    for (plane, o) in x
        .chunks_exact(w.height * w.width)
        .zip(out.chunks_exact_mut(ho * wo))
    {
        let rows = (0..ho).map(|y| w.span(y, w.height));
        for (rows, o) in rows.zip(o.chunks_exact_mut(wo)) {
            for (cols, o) in spans.iter().zip(o) {
                let mut sum = plane[rows.start * w.width + cols.start];
                w.after_first(&rows, cols, |cell| sum += plane[cell]);
                *o = sum / area;
            }
        }
    }
}

/// Average pooling's gradient: each window's gradient divided by size^2 (once per window) to
/// every cell of it.
pub(crate) fn avg_backward<S: Scalar>(w: &Window, dout: &[S], dx: &mut [S]) {
    let (ins, outs) = w.split(dx.len());
    let parts = dx.chunks_mut(ins).zip(dout.chunks(outs));
    on_threads(parts.collect(), |(dx, dout)| {
        avg_backward_planes(w, dout, dx)
    });
}

/// [`avg_backward`] on a run of whole planes.
#[inline(never)]
fn avg_backward_planes<S: Scalar>(w: &Window, dout: &[S], dx: &mut [S]) {
    let (ho, wo) = w.output();
    let area = area::<S>(w);
    let spans = w.column_spans();
    dx.fill(S::zero());
    for (plane, d) in dx
        .chunks_exact_mut(w.height * w.width)
        .zip(dout.chunks_exact(ho * wo))
    {
        let rows = (0..ho).map(|y| w.span(y, w.height));
        for (rows, d) in rows.zip(d.chunks_exact(wo)) {
            for (cols, &g) in spans.iter().zip(d) {
                let share = g / area;
                for r in rows.clone() {
                    let line = &mut plane[r * w.width..][cols.clone()];
                    if w.overlaps() {
                        line.iter_mut().for_each(|cell| *cell += share);
                    } else {
                        line.fill(share);
                    }
                }
            }
        }
    }
}

/// The window's number of cells, as a number (a conversion: free).
fn area<S: Scalar>(w: &Window) -> S {
    S::from_usize(w.size * w.size).expect("every Scalar holds a count")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Counted, Counts, tally};

    #[test]
    fn max_pooling_counts_comparisons_and_routes_gradients() {
        let w = Window {
            size: 2,
            stride: 2,
            padding: 0,
            height: 2,
            width: 4,
            channels: 1,
        };
        let x = Counted::vec(&[1.0f32, 5.0, 2.0, 2.0, 3.0, 4.0, 9.0, 0.0]);
        let mut out = vec![Counted::new(0.0); 2];
        let mut arg = vec![0; 2];
        let ((), counts) = tally::measure(|| max_forward(&w, &x, &mut out, &mut arg));
        assert_eq!(Counted::unwrap_slice(&out), [5.0, 9.0]);
        assert_eq!(
            counts,
            Counts {
                cmp: 2 * 3,
                ..Counts::ZERO
            }
        );
        let mut dx = vec![Counted::new(7.0); 8];
        let ((), counts) =
            tally::measure(|| max_backward(&w, &Counted::vec(&[1.0, 2.0]), &arg, &mut dx));
        assert_eq!(
            Counted::unwrap_slice(&dx),
            [0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0]
        );
        assert_eq!(counts, Counts::ZERO);
    }
}
