//! Pooling over non-overlapping windows, and flattening. Max pooling compares (k*k - 1 cmp
//! per output) and routes each gradient to its window's maximum (no arithmetic); average
//! pooling adds (k*k - 1 add and 1 div per output) and spreads each gradient evenly (1 div per
//! output). Windows never overlap (the plan checks stride >= size), so no input receives
//! more than one gradient and the backward passes count nothing data-dependent.

use crate::scalar::Scalar;

/// Pooling geometry over one `height x width` plane.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Window {
    pub size: usize,
    pub stride: usize,
    pub height: usize,
    pub width: usize,
}

impl Window {
    pub fn output(&self) -> (usize, usize) {
        (
            (self.height - self.size) / self.stride + 1,
            (self.width - self.size) / self.stride + 1,
        )
    }

    /// Input offsets (in the plane) of the window of output (y, x), row by row.
    fn cells(&self, y: usize, x: usize) -> impl Iterator<Item = usize> + '_ {
        let (top, left) = (y * self.stride, x * self.stride);
        (0..self.size)
            .flat_map(move |i| (0..self.size).map(move |j| (top + i) * self.width + left + j))
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
