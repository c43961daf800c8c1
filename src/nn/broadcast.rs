//! Broadcast: two computed values whose shapes broadcast (numpy's rules, from the last axis)
//! combined value by value: `x - mean` with the mean `[t, 1]` of `[t, w]`, a squeeze-excitation
//! gate `[c, 1, 1]` times an image `[c, h, w]`, `mean - x` the other way round, `[t, 1]`
//! against `[1, w]` where both grow.
//!
//! Forward one operation of its kind per output value. Backward, the gradient of an input
//! that was broadcast is the sum, over the axes it was spread along, of what each output
//! value gives it: a sum of k terms is k - 1 adds, so an input of `n_a` values under an output
//! of `n` costs `n - n_a` adds (none if it was not broadcast). What each output value gives is
//! `dy` (`+`, `-`), `dy * b` and `dy * a` (`*`: one multiply per output value per gradient),
//! `q = dy / b` and `q * y` (`/`: one division per output value if either gradient is
//! wanted, one multiply for the divisor's); the subtrahend's and divisor's sums are negated
//! once each (one neg per value of that input). Of two inputs of one shape this is exactly
//! what `Add`, `Sub`, `Mul` and `Div` count.

use super::ops::{Backward, Kernel, Operation};
use super::reduce::sum;
use crate::error::Result;
use crate::estimate::{At, counts, when};
use crate::model::Arith;
use crate::phases::NodeCounts;
use crate::scalar::Scalar;
use crate::shape::Shape;

/// Broadcast, resolved: the operation, both inputs' shapes and the output's.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Broadcast {
    /// The first input `op` the second.
    pub op: Arith,
    /// The first input's shape.
    pub a: Shape,
    /// The second input's shape.
    pub b: Shape,
    /// The output's shape: on each axis the larger of the two sizes.
    pub shape: Shape,
}

impl Broadcast {
    /// The shape rule: two inputs whose shapes, aligned at the last axis, have on every axis
    /// the same size or a 1 in one of them (an axis one of them lacks counts as 1).
    pub(crate) fn resolve(op: Arith, inputs: &[Shape]) -> Result<Broadcast, String> {
        let &[a, b] = inputs else {
            return Err(format!(
                "broadcast expects 2 inputs, found {}",
                inputs.len()
            ));
        };
        let dims = broadcast(a.dims(), b.dims()).ok_or_else(|| {
            format!("broadcast: {a} and {b} do not broadcast (numpy's rules, from the last axis)")
        })?;
        let shape = Shape::new(&dims).expect("the rank of the larger input");
        Ok(Broadcast { op, a, b, shape })
    }

    /// Per axis of one example, the sizes of the first input, the second and the output,
    /// with the axes where the output has size 1 left out and neighbouring axes that each
    /// input either fills or is 1 along, both, merged into one; at least one axis.
    fn axes(&self) -> Vec<Axis> {
        let rank = self.shape.rank();
        let padded = |s: Shape| {
            let mut dims = vec![1; rank - s.rank()];
            dims.extend_from_slice(s.dims());
            dims
        };
        let (a, b) = (padded(self.a), padded(self.b));
        let mut axes: Vec<Axis> = Vec::with_capacity(rank);
        for ((&a, &b), &o) in a.iter().zip(&b).zip(self.shape.dims()) {
            if o == 1 {
                continue;
            }
            match axes.last_mut() {
                Some(last) if (last.a == 1) == (a == 1) && (last.b == 1) == (b == 1) => {
                    *last = Axis {
                        a: last.a * a,
                        b: last.b * b,
                        out: last.out * o,
                    };
                }
                _ => axes.push(Axis { a, b, out: o }),
            }
        }
        if axes.is_empty() {
            axes.push(Axis { a: 1, b: 1, out: 1 });
        }
        axes
    }

    pub(crate) fn kernel<S: Scalar>(&self) -> BroadcastKernel<S> {
        let scratch = matches!(self.op, Arith::Mul | Arith::Div);
        let axes = self.axes();
        BroadcastKernel {
            op: self.op,
            by_b: axes.iter().map(|x| Axis { a: x.out, ..*x }).collect(),
            by_a: axes.iter().map(|x| Axis { b: x.out, ..*x }).collect(),
            into_a: axes.iter().map(|x| (x.out, x.a)).collect(),
            into_b: axes.iter().map(|x| (x.out, x.b)).collect(),
            axes,
            sizes: [self.a.len(), self.b.len(), self.shape.len()],
            scratch: vec![S::zero(); if scratch { self.shape.len() } else { 0 }],
        }
    }
}

/// The shape two shapes broadcast to (numpy's rules, from the last axis), or `None`.
fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    let at = |s: &[usize], k: usize| {
        // Axis k of the output, counted from the first, is axis k - (rank - len) of `s`.
        (k + s.len()).checked_sub(rank).map_or(1, |i| s[i])
    };
    (0..rank)
        .map(|k| match (at(a, k), at(b, k)) {
            (x, y) if x == y || y == 1 => Some(x),
            (1, y) => Some(y),
            _ => None,
        })
        .collect()
}

impl Operation for Broadcast {
    fn kind(&self) -> &'static str {
        match self.op {
            Arith::Add => "add_bcast",
            Arith::Sub => "sub_bcast",
            Arith::Mul => "mul_bcast",
            Arith::Div => "div_bcast",
        }
    }

    fn output(&self) -> Shape {
        self.shape
    }

    /// With n = B·|out|, n_a = B·|a|, n_b = B·|b|: forward n operations of its kind. Backward,
    /// for each input x whose gradient is wanted, the sum of its n / n_x terms for each of
    /// its n_x values, n - n_x adds; before it, per output value, nothing (`+`, `-`), one mul
    /// (`*`: `dy b` for a, `dy a` for b), for `/` one div (`q = dy / b`) if either gradient is
    /// wanted and one mul (`q y`) for b's; after it, b's n_b values negated for `-` and `/`
    /// (`db = -sum dy`, `db = -sum q y`).
    fn closed_form(&self, at: At<'_>, name: &str, grads: &[bool]) -> Result<NodeCounts> {
        let n = at.b() * self.shape.len();
        let (na, nb) = (at.b() * self.a.len(), at.b() * self.b.len());
        let (wa, wb) = (grads[0], grads[1]);
        let sums = when(wa, n - na) + when(wb, n - nb);
        let f = format!("{name} forward");
        let b = format!("{name} backward");
        let (forward, backward) = match self.op {
            Arith::Add => (counts! { at, f; add: n }?, counts! { at, b; add: sums }?),
            Arith::Sub => (
                counts! { at, f; sub: n }?,
                counts! { at, b; add: sums, neg: when(wb, nb) }?,
            ),
            Arith::Mul => (
                counts! { at, f; mul: n }?,
                counts! { at, b; mul: when(wa, n) + when(wb, n), add: sums }?,
            ),
            Arith::Div => (
                counts! { at, f; div: n }?,
                counts! { at, b;
                    div: when(wa || wb, n), mul: when(wb, n), add: sums, neg: when(wb, nb)
                }?,
            ),
        };
        Ok(NodeCounts {
            forward,
            backward,
            ..NodeCounts::default()
        })
    }

    /// One example's output values, where `*` and `/` make their gradients' terms.
    fn workspace(&self) -> usize {
        match self.op {
            Arith::Mul | Arith::Div => self.shape.len(),
            Arith::Add | Arith::Sub => 0,
        }
    }
}

/// One axis of the kernels' loops: the first input's size along it, the second's and the
/// output's (each input's either the output's or 1).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct Axis {
    a: usize,
    b: usize,
    out: usize,
}

pub(crate) struct BroadcastKernel<S> {
    op: Arith,
    axes: Vec<Axis>,
    /// The axes of `dy op b` and `a op dy`: the output's sizes in place of the other input's.
    by_b: Vec<Axis>,
    by_a: Vec<Axis>,
    /// The sums of a gradient's terms into each input: `(output's size, input's)` per axis.
    into_a: Vec<(usize, usize)>,
    into_b: Vec<(usize, usize)>,
    /// Values per example of the first input, the second and the output.
    sizes: [usize; 3],
    /// One example's terms of a gradient (`*` and `/` only).
    scratch: Vec<S>,
}

impl<S: Scalar> Kernel<S> for BroadcastKernel<S> {
    fn forward(&mut self, x: &[&[S]], _: &[&[S]], y: &mut [S]) {
        let [na, nb, n] = self.sizes;
        let examples = x[0].chunks_exact(na).zip(x[1].chunks_exact(nb));
        for ((a, b), y) in examples.zip(y.chunks_exact_mut(n)) {
            spread(self.op, &self.axes, a, b, y);
        }
    }

    fn backward(&mut self, grads: Backward<'_, S>) {
        let Backward { x, y, dy, dx, .. } = grads;
        let [na, nb, n] = self.sizes.map(|s| s.max(1));
        let [da, db] = dx else {
            return; // Broadcast::resolve made it two inputs.
        };
        let mut da = da.as_deref_mut().map(|d| d.chunks_exact_mut(na));
        let mut db = db.as_deref_mut().map(|d| d.chunks_exact_mut(nb));
        let examples = dy.chunks_exact(n).zip(y.chunks_exact(n));
        let inputs = x[0].chunks_exact(na).zip(x[1].chunks_exact(nb));
        for ((dy, y), (a, b)) in examples.zip(inputs) {
            let da = da.as_mut().and_then(Iterator::next);
            let db = db.as_mut().and_then(Iterator::next);
            self.example(Example { a, b, y, dy }, da, db);
        }
    }
}

/// One example's inputs, output and output gradient, for the backward pass.
struct Example<'a, S> {
    a: &'a [S],
    b: &'a [S],
    y: &'a [S],
    dy: &'a [S],
}

impl<S: Scalar> BroadcastKernel<S> {
    /// One example's input gradients, those wanted.
    fn example(&mut self, e: Example<'_, S>, da: Option<&mut [S]>, db: Option<&mut [S]>) {
        let Example { a, b, y, dy } = e;
        let t = &mut self.scratch;
        let (into_a, into_b) = (&self.into_a, &self.into_b);
        match self.op {
            Arith::Add | Arith::Sub => {
                if let Some(da) = da {
                    reduce(into_a, dy, da, true);
                }
                if let Some(db) = db {
                    reduce(into_b, dy, db, true);
                    if self.op == Arith::Sub {
                        negate(db);
                    }
                }
            }
            Arith::Mul => {
                if let Some(da) = da {
                    spread(Arith::Mul, &self.by_b, dy, b, t);
                    reduce(into_a, t, da, true);
                }
                if let Some(db) = db {
                    spread(Arith::Mul, &self.by_a, a, dy, t);
                    reduce(into_b, t, db, true);
                }
            }
            Arith::Div => {
                if da.is_none() && db.is_none() {
                    return;
                }
                spread(Arith::Div, &self.by_b, dy, b, t);
                if let Some(da) = da {
                    reduce(into_a, t, da, true);
                }
                if let Some(db) = db {
                    times(t, y);
                    reduce(into_b, t, db, true);
                    negate(db);
                }
            }
        }
    }
}

/// `y = a op b` over one example, each input spread along the axes where it has size 1.
fn spread<S: Scalar>(op: Arith, axes: &[Axis], a: &[S], b: &[S], y: &mut [S]) {
    let Some((&axis, inner)) = axes.split_first() else {
        return;
    };
    if inner.is_empty() {
        return match (axis.a == axis.out, axis.b == axis.out) {
            (true, true) => each(op, a, b, y),
            (false, _) => a.first().map_or((), |&a| left(op, a, b, y)),
            (true, false) => b.first().map_or((), |&b| right(op, a, b, y)),
        };
    }
    let size = |n: usize, len: usize| len / n.max(1);
    let (sa, sb, sy) = (
        size(axis.a, a.len()),
        size(axis.b, b.len()),
        size(axis.out, y.len()),
    );
    let (mut ai, mut bi) = (a.chunks_exact(sa.max(1)), b.chunks_exact(sb.max(1)));
    for y in y.chunks_exact_mut(sy.max(1)) {
        let a = if axis.a == 1 {
            a
        } else {
            ai.next().unwrap_or(&[])
        };
        let b = if axis.b == 1 {
            b
        } else {
            bi.next().unwrap_or(&[])
        };
        spread(op, inner, a, b, y);
    }
}

/// `dst = sum of src` over the axes where `dst` has size 1 (`(src's size, dst's)` per axis),
/// in `src`'s order; with `first` false, added onto what `dst` holds. Each value of `src`
/// after the first to reach a value of `dst` is one add.
fn reduce<S: Scalar>(axes: &[(usize, usize)], src: &[S], dst: &mut [S], first: bool) {
    let Some((&(n, m), inner)) = axes.split_first() else {
        return;
    };
    if inner.is_empty() {
        return match (m == n, first) {
            (true, true) => dst.copy_from_slice(src),
            (true, false) => accumulate(dst, src),
            (false, _) => dst.first_mut().map_or((), |d| total(src, d, first)),
        };
    }
    let (ss, ds) = (src.len() / n.max(1), dst.len() / m.max(1));
    if m == n {
        for (s, d) in src
            .chunks_exact(ss.max(1))
            .zip(dst.chunks_exact_mut(ds.max(1)))
        {
            reduce(inner, s, d, first);
        }
    } else {
        for (i, s) in src.chunks_exact(ss.max(1)).enumerate() {
            reduce(inner, s, dst, first && i == 0);
        }
    }
}

/// `y = a op b`, value by value.
#[inline(never)]
fn each<S: Scalar>(op: Arith, a: &[S], b: &[S], y: &mut [S]) {
    let v = y.iter_mut().zip(a).zip(b);
    match op {
        Arith::Add => v.for_each(|((y, &a), &b)| *y = a + b),
        Arith::Sub => v.for_each(|((y, &a), &b)| *y = a - b),
        Arith::Mul => v.for_each(|((y, &a), &b)| *y = a * b),
        Arith::Div => v.for_each(|((y, &a), &b)| *y = a / b),
    }
}

/// `y = a op b` for one `a` and every `b`.
#[inline(never)]
fn left<S: Scalar>(op: Arith, a: S, b: &[S], y: &mut [S]) {
    let v = y.iter_mut().zip(b);
    match op {
        Arith::Add => v.for_each(|(y, &b)| *y = a + b),
        Arith::Sub => v.for_each(|(y, &b)| *y = a - b),
        Arith::Mul => v.for_each(|(y, &b)| *y = a * b),
        Arith::Div => v.for_each(|(y, &b)| *y = a / b),
    }
}

/// `y = a op b` for every `a` and one `b`.
#[inline(never)]
fn right<S: Scalar>(op: Arith, a: &[S], b: S, y: &mut [S]) {
    let v = y.iter_mut().zip(a);
    match op {
        Arith::Add => v.for_each(|(y, &a)| *y = a + b),
        Arith::Sub => v.for_each(|(y, &a)| *y = a - b),
        Arith::Mul => v.for_each(|(y, &a)| *y = a * b),
        Arith::Div => v.for_each(|(y, &a)| *y = a / b),
    }
}

/// `into += from`, value by value.
#[inline(never)]
fn accumulate<S: Scalar>(into: &mut [S], from: &[S]) {
    for (d, &s) in into.iter_mut().zip(from) {
        *d += s;
    }
}

/// `d = v_0 + v_1 + ...` (k - 1 adds), or with `first` false `d += v_0 + ...`, one value
/// at a time (k adds).
#[inline(never)]
fn total<S: Scalar>(v: &[S], d: &mut S, first: bool) {
    *d = if first {
        sum(v)
    } else {
        v.iter().fold(*d, |acc, &x| acc + x)
    };
}

/// `v = -v`, value by value.
#[inline(never)]
fn negate<S: Scalar>(v: &mut [S]) {
    for v in v.iter_mut() {
        *v = -*v;
    }
}

/// `t = t * y`, value by value.
#[inline(never)]
fn times<S: Scalar>(t: &mut [S], y: &[S]) {
    for (t, &y) in t.iter_mut().zip(y) {
        *t *= y;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Counted, Counts, Op, tally};

    fn shape(dims: &[usize]) -> Shape {
        Shape::new(dims).unwrap()
    }

    fn op(op: Arith, a: &[usize], b: &[usize]) -> Broadcast {
        Broadcast::resolve(op, &[shape(a), shape(b)]).unwrap()
    }

    #[test]
    fn shapes_broadcast_from_the_last_axis() {
        assert_eq!(op(Arith::Add, &[3, 1], &[1, 4]).shape, shape(&[3, 4]));
        assert_eq!(
            op(Arith::Mul, &[2, 5, 6], &[2, 1, 1]).shape,
            shape(&[2, 5, 6])
        );
        assert_eq!(op(Arith::Sub, &[4], &[3, 4]).shape, shape(&[3, 4]));
        assert_eq!(op(Arith::Div, &[5, 1], &[5, 7]).shape, shape(&[5, 7]));
        let err = Broadcast::resolve(Arith::Add, &[shape(&[2, 4]), shape(&[8])]).unwrap_err();
        assert!(err.contains("2x4 and 8 do not broadcast"), "{err}");
        assert!(Broadcast::resolve(Arith::Add, &[shape(&[2])]).is_err());
    }

    #[test]
    fn axes_leave_out_ones_and_merge_neighbours_spread_alike() {
        // A gate [c, 1, 1] over [c, h, w]: the image's h and w are one axis.
        let gate = op(Arith::Mul, &[3, 4, 5], &[3, 1, 1]).axes();
        assert_eq!(
            gate,
            [
                Axis { a: 3, b: 3, out: 3 },
                Axis {
                    a: 20,
                    b: 1,
                    out: 20
                }
            ]
        );
        // [1, 3, 1] against [2, 1, 1]: the output's size-1 axis is left out.
        let both = op(Arith::Add, &[1, 3, 1], &[2, 1, 1]).axes();
        assert_eq!(
            both,
            [Axis { a: 1, b: 2, out: 2 }, Axis { a: 3, b: 1, out: 3 }]
        );
        let one = op(Arith::Add, &[1, 1], &[1]).axes();
        assert_eq!(one, [Axis { a: 1, b: 1, out: 1 }]);
    }

    #[test]
    fn the_forward_pass_spreads_both_inputs_with_one_operation_per_output_value() {
        // [2, 1] - [1, 3]: a column minus a row.
        let o = op(Arith::Sub, &[2, 1], &[1, 3]);
        let (a, b) = (
            Counted::vec(&[10.0f64, 20.0]),
            Counted::vec(&[1.0, 2.0, 3.0]),
        );
        let mut y = vec![Counted::new(0.0); 6];
        let mut kernel = o.kernel::<Counted<f64>>();
        let ((), counts) = tally::measure(|| kernel.forward(&[&a, &b], &[], &mut y));
        assert_eq!(Counted::unwrap_slice(&y), [9.0, 8.0, 7.0, 19.0, 18.0, 17.0]);
        assert_eq!(counts, Counts::of(Op::Sub, 6));
    }

    #[test]
    fn a_broadcast_input_s_gradient_sums_over_the_axes_it_was_spread_along() {
        // y = a * b, a [2, 3], b [2, 1]: da = dy b (6 mul), db = row sums of dy a (6 mul,
        // 2 x 2 adds).
        let o = op(Arith::Mul, &[2, 3], &[2, 1]);
        let a = Counted::vec(&[1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let b = Counted::vec(&[2.0, -1.0]);
        let dy = Counted::vec(&[1.0, 1.0, 1.0, 1.0, 0.5, 0.0]);
        let mut kernel = o.kernel::<Counted<f64>>();
        let mut y = vec![Counted::new(0.0); 6];
        kernel.forward(&[&a, &b], &[], &mut y);
        let (mut da, mut db) = (vec![Counted::new(0.0); 6], vec![Counted::new(0.0); 2]);
        let ((), counts) = tally::measure(|| {
            kernel.backward(Backward {
                x: &[&a, &b],
                y: &y,
                dy: &dy,
                params: &[],
                dparams: &mut [],
                dx: &mut [Some(&mut da), Some(&mut db)],
            })
        });
        assert_eq!(Counted::unwrap_slice(&da), [2.0, 2.0, 2.0, -1.0, -0.5, 0.0]);
        assert_eq!(Counted::unwrap_slice(&db), [6.0, 6.5]);
        assert_eq!(counts, Counts::of(Op::Mul, 12) + Counts::of(Op::Add, 4));
    }
}
