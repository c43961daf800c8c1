//! MaxPool2d and AvgPool2d over non-overlapping windows: shape rule, closed form, forward
//! and backward. Max pooling compares (k*k - 1 cmp
//! per output) and routes each gradient to its window's maximum (no arithmetic); average
//! pooling adds (k*k - 1 add and 1 div per output) and spreads each gradient evenly (1 div per
//! output). Windows never overlap (the plan checks stride >= size), so no input receives
//! more than one gradient and the backward passes count nothing data-dependent.

use super::dense::check_size;
use super::ops::{Backward, Kernel, Operation, Workspace};
use crate::error::Result;
use crate::estimate::{At, counts, when};
use crate::model::MAX_DIM;
use crate::phases::NodeCounts;
use crate::scalar::Scalar;
use crate::shape::Shape;

/// Pooling geometry over one `height x width` plane.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Window {
    /// Window height and width.
    pub size: usize,
    /// Step between windows (at least `size`).
    pub stride: usize,
    /// Input height.
    pub height: usize,
    /// Input width.
    pub width: usize,
    /// Channels (planes).
    pub channels: usize,
}

impl Window {
    /// The shape rule shared by both poolings: an image the window fits, windows apart.
    fn resolve(size: usize, stride: Option<usize>, input: Shape) -> Result<Window, String> {
        let Some((c, h, w)) = input.as_image() else {
            return Err(format!(
                "pooling expects a channels x height x width input, found {input}"
            ));
        };
        check_size("size", size)?;
        let stride = stride.unwrap_or(size);
        if stride < size || stride > MAX_DIM {
            return Err(format!(
                "stride: expected at least the window size {size} (windows must not \
                 overlap, or the backward pass's count would depend on the data), \
                 found {stride}"
            ));
        }
        if size > h || size > w {
            return Err(format!(
                "window {size}x{size} is larger than its input {h}x{w}"
            ));
        }
        Ok(Window {
            size,
            stride,
            height: h,
            width: w,
            channels: c,
        })
    }

    pub fn output(&self) -> (usize, usize) {
        (
            (self.height - self.size) / self.stride + 1,
            (self.width - self.size) / self.stride + 1,
        )
    }

    fn output_shape(&self) -> Shape {
        let (ho, wo) = self.output();
        Shape::image(self.channels, ho, wo)
    }

    /// Input offsets (in the plane) of the window of output (y, x), row by row.
    fn cells(&self, y: usize, x: usize) -> impl Iterator<Item = usize> + '_ {
        let (top, left) = (y * self.stride, x * self.stride);
        (0..self.size)
            .flat_map(move |i| (0..self.size).map(move |j| (top + i) * self.width + left + j))
    }
}

/// Max pooling over windows that do not overlap.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct MaxPool2d(pub Window);

impl MaxPool2d {
    pub(crate) fn resolve(
        size: usize,
        stride: Option<usize>,
        input: Shape,
    ) -> Result<Self, String> {
        Window::resolve(size, stride, input).map(MaxPool2d)
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

    fn closed_form(&self, at: At<'_>, name: &str, _: &[bool]) -> Result<NodeCounts> {
        // Per output value: the largest of size^2 values (size^2 - 1 cmp). Backward only
        // routes each gradient to its window's maximum.
        let outputs = at.b() * self.output().len();
        let size = self.0.size;
        Ok(NodeCounts {
            forward: counts! { at, format!("{name} forward"); cmp: outputs * (size * size - 1) }?,
            ..NodeCounts::default()
        })
    }
}

/// Max pooling remembers where each window's maximum was.
pub(crate) struct MaxPoolKernel {
    window: Window,
    argmax: Vec<usize>,
}

impl<S: Scalar> Kernel<S> for MaxPoolKernel {
    fn forward(&mut self, x: &[&[S]], _: &[&[S]], y: &mut [S], _: &mut Workspace<S>) {
        self.argmax.resize(y.len(), 0);
        max_forward(&self.window, x[0], y, &mut self.argmax);
    }

    fn backward(&mut self, grads: Backward<'_, S>, _: &mut Workspace<S>) {
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
        input: Shape,
    ) -> Result<Self, String> {
        Window::resolve(size, stride, input).map(AvgPool2d)
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
        // Per output value: a sum of size^2 values (size^2 - 1 add) over size^2 (1 div).
        // Backward: each gradient over size^2 (1 div), copied to the window.
        let outputs = at.b() * self.output().len();
        let size = self.0.size;
        Ok(NodeCounts {
            forward: counts! { at, format!("{name} forward");
                add: outputs * (size * size - 1), div: outputs,
            }?,
            backward: counts! { at, format!("{name} backward"); div: when(grads[0], outputs) }?,
            update: Default::default(),
        })
    }
}

pub(crate) struct AvgPoolKernel(Window);

impl<S: Scalar> Kernel<S> for AvgPoolKernel {
    fn forward(&mut self, x: &[&[S]], _: &[&[S]], y: &mut [S], _: &mut Workspace<S>) {
        avg_forward(&self.0, x[0], y);
    }

    fn backward(&mut self, grads: Backward<'_, S>, _: &mut Workspace<S>) {
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
#[inline(never)]
pub(crate) fn max_forward<S: Scalar>(w: &Window, x: &[S], out: &mut [S], argmax: &mut [usize]) {
    let (ho, wo) = w.output();
    let planes = x.chunks_exact(w.height * w.width);
    let outs = out
        .chunks_exact_mut(ho * wo)
        .zip(argmax.chunks_exact_mut(ho * wo));
    for (plane, (o, arg)) in planes.zip(outs) {
        for y in 0..ho {
            for x in 0..wo {
                let mut cells = w.cells(y, x);
                let mut best = cells.next().expect("a window has a cell");
                for cell in cells {
                    if plane[cell] > plane[best] {
                        best = cell;
                    }
                }
                o[y * wo + x] = plane[best];
                arg[y * wo + x] = best;
            }
        }
    }
}

/// Max pooling's gradient: each window's gradient goes to its maximum, nothing to the rest.
#[inline(never)]
pub(crate) fn max_backward<S: Scalar>(w: &Window, dout: &[S], argmax: &[usize], dx: &mut [S]) {
    let (ho, wo) = w.output();
    dx.fill(S::zero());
    let planes = dx.chunks_exact_mut(w.height * w.width);
    for (plane, (d, arg)) in
        planes.zip(dout.chunks_exact(ho * wo).zip(argmax.chunks_exact(ho * wo)))
    {
        for (&g, &at) in d.iter().zip(arg) {
            plane[at] = g;
        }
    }
}

/// Average pooling: `out = (sum of the window) / size^2`.
#[inline(never)]
pub(crate) fn avg_forward<S: Scalar>(w: &Window, x: &[S], out: &mut [S]) {
    let (ho, wo) = w.output();
    let area = area::<S>(w);
    for (plane, o) in x
        .chunks_exact(w.height * w.width)
        .zip(out.chunks_exact_mut(ho * wo))
    {
        for y in 0..ho {
            for x in 0..wo {
                let mut cells = w.cells(y, x);
                let mut sum = plane[cells.next().expect("a window has a cell")];
                for cell in cells {
                    sum += plane[cell];
                }
                o[y * wo + x] = sum / area;
            }
        }
    }
}

/// Average pooling's gradient: each window's gradient divided by size^2 (once per window) to
/// every cell of it.
#[inline(never)]
pub(crate) fn avg_backward<S: Scalar>(w: &Window, dout: &[S], dx: &mut [S]) {
    let (ho, wo) = w.output();
    let area = area::<S>(w);
    dx.fill(S::zero());
    for (plane, d) in dx
        .chunks_exact_mut(w.height * w.width)
        .zip(dout.chunks_exact(ho * wo))
    {
        for y in 0..ho {
            for x in 0..wo {
                let share = d[y * wo + x] / area;
                for cell in w.cells(y, x) {
                    plane[cell] = share;
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
