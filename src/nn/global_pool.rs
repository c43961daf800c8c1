//! GlobalAvgPool2d: the mean of each channel of an image, as a flat vector of one value per
//! channel (a ResNet's last pooling). Shape rule, closed form, forward and backward.

use super::activation::{PARALLEL_VALUES, on_threads, part_len};
use super::ops::{Backward, Kernel, Operation};
use crate::error::Result;
use crate::estimate::{At, counts, when};
use crate::phases::NodeCounts;
use crate::scalar::Scalar;
use crate::shape::Shape;

/// Global average pooling, resolved: channels and values per channel.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct GlobalAvgPool2d {
    /// Channels.
    pub channels: usize,
    /// Height times width.
    pub plane: usize,
}

impl GlobalAvgPool2d {
    /// The shape rule: an image.
    pub(crate) fn resolve(input: Shape) -> Result<GlobalAvgPool2d, String> {
        match input.as_image() {
            Some((c, h, w)) => Ok(GlobalAvgPool2d {
                channels: c,
                plane: h * w,
            }),
            None => Err(format!(
                "globalavgpool2d expects a channels x height x width input, found {input}"
            )),
        }
    }

    pub(crate) fn kernel(&self) -> GlobalPoolKernel {
        GlobalPoolKernel(*self)
    }
}

impl Operation for GlobalAvgPool2d {
    fn kind(&self) -> &'static str {
        "globalavgpool2d"
    }

    fn output(&self) -> Shape {
        Shape::flat(self.channels)
    }

    /// Per channel: the sum of its H·W values (H·W - 1 add) over H·W (1 div). Backward:
    /// each channel's gradient over H·W (1 div), copied to its values.
    fn closed_form(&self, at: At<'_>, name: &str, grads: &[bool]) -> Result<NodeCounts> {
        let planes = at.b() * self.channels;
        Ok(NodeCounts {
            forward: counts! { at, format!("{name} forward");
                add: planes * (self.plane - 1), div: planes,
            }?,
            backward: counts! { at, format!("{name} backward"); div: when(grads[0], planes) }?,
            update: Default::default(),
        })
    }
}

pub(crate) struct GlobalPoolKernel(GlobalAvgPool2d);

impl<S: Scalar> Kernel<S> for GlobalPoolKernel {
    /// Runs of whole planes, one per thread when large.
    fn forward(&mut self, x: &[&[S]], _: &[&[S]], y: &mut [S]) {
        let (x, plane) = (x[0], self.0.plane);
        let per = part_len(y.len(), PARALLEL_VALUES.div_ceil(plane), 1);
        if per >= y.len() {
            return means(x, plane, y);
        }
        let parts: Vec<_> = x.chunks(per * plane).zip(y.chunks_mut(per)).collect();
        on_threads(parts, |(x, y)| means(x, plane, y));
    }

    fn backward(&mut self, grads: Backward<'_, S>) {
        let Backward { dy, dx, .. } = grads;
        let plane = self.0.plane;
        if let Some(dx) = dx[0].as_deref_mut() {
            let per = part_len(dy.len(), PARALLEL_VALUES.div_ceil(plane), 1);
            if per >= dy.len() {
                return spread(dy, plane, dx);
            }
            let parts: Vec<_> = dy.chunks(per).zip(dx.chunks_mut(per * plane)).collect();
            on_threads(parts, |(dy, dx)| spread(dy, plane, dx));
        }
    }
}

/// `y[p] = (sum of plane p) / plane`, each sum from its first value.
#[inline(never)]
fn means<S: Scalar>(x: &[S], plane: usize, y: &mut [S]) {
    let area = S::from_usize(plane).expect("every Scalar holds a count");
    for (values, out) in x.chunks_exact(plane).zip(y.iter_mut()) {
        let (&first, rest) = values.split_first().expect("a plane has values");
        let mut sum = first;
        for &v in rest {
            sum += v;
        }
        *out = sum / area;
    }
}

/// `dx[p][i] = dy[p] / plane` for every value i of plane p.
#[inline(never)]
fn spread<S: Scalar>(dy: &[S], plane: usize, dx: &mut [S]) {
    let area = S::from_usize(plane).expect("every Scalar holds a count");
    for (values, &g) in dx.chunks_exact_mut(plane).zip(dy) {
        values.fill(g / area);
    }
}
