//! Closed forms: the counts of every node, phase and kind of operation as formulas of the
//! shapes and the batch size alone. Nothing here runs the interpreter or allocates more than
//! the result, so it answers for models far too big to run.
//!
//! Every formula is derived in `docs/counting.md` ("Networks") and reads like the loop it
//! predicts. B is the batch size, N a dense layer's inputs, M its units (or an activation's
//! or loss's values per example). Counts are `u128` and every step of a formula is checked: a
//! count that does not fit is an [`Error::Overflow`] naming the model, the node and the kind,
//! never a wrapped number.

use std::ops::{Add, Mul, Sub};

use crate::counts::Counts;
use crate::error::{Error, Result};
use crate::model::{Activation, Loss, Node, NodeOp, Plan, Shape};
use crate::phases::{NodeCounts, StepCounts};

/// A count under construction: `None` once any step overflowed or went below zero.
#[derive(Copy, Clone, Debug)]
struct Q(Option<u128>);

/// A size as a count.
fn q(n: usize) -> Q {
    Q(Some(n as u128))
}

impl Mul<usize> for Q {
    type Output = Q;
    fn mul(self, n: usize) -> Q {
        Q(self.0.and_then(|a| a.checked_mul(n as u128)))
    }
}

impl Mul for Q {
    type Output = Q;
    fn mul(self, other: Q) -> Q {
        Q(self.0.zip(other.0).and_then(|(a, b)| a.checked_mul(b)))
    }
}

impl Add for Q {
    type Output = Q;
    fn add(self, other: Q) -> Q {
        Q(self.0.zip(other.0).and_then(|(a, b)| a.checked_add(b)))
    }
}

impl Add<usize> for Q {
    type Output = Q;
    fn add(self, n: usize) -> Q {
        self + q(n)
    }
}

impl Sub for Q {
    type Output = Q;
    fn sub(self, other: Q) -> Q {
        Q(self.0.zip(other.0).and_then(|(a, b)| a.checked_sub(b)))
    }
}

impl Sub<usize> for Q {
    type Output = Q;
    fn sub(self, n: usize) -> Q {
        Q(self.0.and_then(|a| a.checked_sub(n as u128)))
    }
}

/// Zero, for terms that do not apply.
const NONE: Q = Q(Some(0));

/// `q` if `cond`, else zero.
fn when(cond: bool, q: Q) -> Q {
    if cond { q } else { NONE }
}

/// Where a count is computed, for the error if it does not fit: the model and the batch.
#[derive(Copy, Clone)]
struct At<'a> {
    model: &'a str,
    batch: usize,
}

impl At<'_> {
    fn overflow(self, what: impl std::fmt::Display) -> Error {
        Error::Overflow {
            model: self.model.to_string(),
            what: format!("{what} at batch {}", self.batch),
        }
    }
}

/// Builds [`Counts`] from `kind: formula` pairs, failing with [`Error::Overflow`] (naming
/// the model, `$what` and the kind) if a formula does not fit in `u128`.
macro_rules! counts {
    ($at:expr, $what:expr; $($kind:ident: $value:expr),* $(,)?) => {{
        let mut c = Counts::ZERO;
        $( c.$kind = ($value).0.ok_or_else(|| $at.overflow(format!("{} ({})", $what, stringify!($kind))))?; )*
        Ok::<Counts, Error>(c)
    }};
}

/// The counts of one training step of `plan` on a batch of `batch` examples.
///
/// Every count fits in `u128`, and so does the sum of all of them (every node, phase and
/// kind, `act` and `zmul` included), so every total a report or a projection makes of them
/// is exact; otherwise an [`Error::Overflow`] names what does not fit.
pub fn step(plan: &Plan, batch: usize) -> Result<StepCounts> {
    let at = At {
        model: &plan.name,
        batch,
    };
    let nodes = plan
        .nodes
        .iter()
        .map(|n| node(at, n))
        .collect::<Result<Vec<_>>>()?;
    let step = StepCounts {
        nodes,
        loss: loss(plan, batch)?,
    };
    let phases = step
        .nodes
        .iter()
        .flat_map(|n| [n.forward, n.backward, n.update]);
    std::iter::once(step.loss)
        .chain(phases)
        .try_fold(0u128, |sum, c| sum.checked_add(c.checked_sum_of_kinds()?))
        .ok_or_else(|| at.overflow("the total of a step"))?;
    Ok(step)
}

/// The counts of one node in each phase.
fn node(at: At<'_>, node: &Node) -> Result<NodeCounts> {
    let b = q(at.batch);
    let dx = node.needs_input_grad;
    let name = &node.name;
    match node.op {
        NodeOp::Dense {
            inputs: n,
            units: m,
            bias,
        } => {
            // Forward, per example and unit: z_j = b_j + sum_i x_i W_ij, N products summed
            // from the bias (N adds), or from the first product without bias (N - 1 adds).
            let forward = counts! { at, format!("{name} forward");
                mul: b * n * m,
                add: if bias { b * n * m } else { b * (n - 1) * m },
            }?;
            // Backward: dW_ij = sum_e x_ei dz_ej (B products, B - 1 adds, for N*M weights);
            // db_j = sum_e dz_ej (B - 1 adds, for M biases); dx_ei = sum_j W_ij dz_ej
            // (M products, M - 1 adds, for B*N inputs) only if an earlier node learns.
            let backward = counts! { at, format!("{name} backward");
                mul: b * n * m + when(dx, b * n * m),
                add: (b - 1) * n * m + when(bias, (b - 1) * m) + when(dx, b * n * (m - 1)),
            }?;
            // Update: p -= lr * dp, one mul and one sub per parameter.
            let params = q(n) * m + when(bias, q(m));
            let update = counts! { at, format!("{name} update"); mul: params, sub: params }?;
            Ok(NodeCounts {
                forward,
                backward,
                update,
            })
        }
        NodeOp::Conv2d {
            in_channels: c_in,
            out_channels: c_out,
            kernel: k,
            stride,
            padding,
            bias,
        } => {
            let (Shape::Image { h, w, .. }, Shape::Image { h: ho, w: wo, .. }) =
                (node.input, node.output)
            else {
                unreachable!("the plan gives a convolution image shapes")
            };
            let patch = c_in * k * k; // K: products per output value
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
                reach(h, ho, k, stride, padding),
                reach(w, wo, k, stride, padding),
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
        NodeOp::MaxPool2d { size, .. } => {
            // Per output value: the largest of size^2 values (size^2 - 1 cmp). Backward
            // only routes each gradient to its window's maximum.
            let outputs = b * node.output.len();
            Ok(NodeCounts {
                forward: counts! { at, format!("{name} forward"); cmp: outputs * (size * size - 1) }?,
                ..NodeCounts::default()
            })
        }
        NodeOp::AvgPool2d { size, .. } => {
            // Per output value: a sum of size^2 values (size^2 - 1 add) over size^2 (1 div).
            // Backward: each gradient over size^2 (1 div), copied to the window.
            let outputs = b * node.output.len();
            Ok(NodeCounts {
                forward: counts! { at, format!("{name} forward");
                    add: outputs * (size * size - 1), div: outputs,
                }?,
                backward: counts! { at, format!("{name} backward"); div: when(dx, outputs) }?,
                update: Counts::ZERO,
            })
        }
        // A copy, forward and backward.
        NodeOp::Flatten => Ok(NodeCounts::default()),
        NodeOp::Activation(f) => {
            let width = node.output.len();
            Ok(NodeCounts {
                forward: activation_forward(at, f, width, name)?,
                backward: if dx {
                    activation_backward(at, f, width, name)?
                } else {
                    Counts::ZERO
                },
                update: Counts::ZERO,
            })
        }
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

/// An activation over B examples of `w` values: one call per value, plus its arithmetic.
fn activation_forward(at: At<'_>, f: Activation, w: usize, name: &str) -> Result<Counts> {
    let what = format!("{name} forward");
    let b = q(at.batch);
    let e = b * w; // values
    match f {
        // y = z.
        Activation::Identity => counts! { at, what; act: e },
        // y = 1 / (1 + exp(-z)).
        Activation::Sigmoid => counts! { at, what; neg: e, exp: e, add: e, div: e, act: e },
        // y = tanh(z).
        Activation::Tanh => counts! { at, what; tanh: e, act: e },
        // y = max(z, 0).
        Activation::Relu => counts! { at, what; cmp: e, act: e },
        // Per example: max of W values (W - 1 cmp), exp(z - max) (W sub, W exp), their sum
        // (W - 1 add), y = e / sum (W div).
        Activation::Softmax => counts! { at, what;
            cmp: b * (w - 1), sub: e, exp: e, add: b * (w - 1), div: e, act: e,
        },
    }
}

/// The gradient through an activation, from its output y: dz = dy * f'(z).
fn activation_backward(at: At<'_>, f: Activation, w: usize, name: &str) -> Result<Counts> {
    let what = format!("{name} backward");
    let b = q(at.batch);
    let e = b * w;
    match f {
        // dz = dy.
        Activation::Identity => Ok(Counts::ZERO),
        // dz = dy * (y * (1 - y)).
        Activation::Sigmoid => counts! { at, what; sub: e, mul: e * 2 },
        // dz = dy * (1 - y * y).
        Activation::Tanh => counts! { at, what; mul: e * 2, sub: e },
        // dz = dy if y > 0, else 0.
        Activation::Relu => counts! { at, what; cmp: e },
        // Per example: s = sum_k y_k dy_k (W mul, W - 1 add), dz_j = y_j * (dy_j - s)
        // (W sub, W mul).
        Activation::Softmax => counts! { at, what; mul: e * 2, add: b * (w - 1), sub: e },
    }
}

/// The loss of a batch and its gradient with respect to the network's outputs.
pub fn loss(plan: &Plan, batch: usize) -> Result<Counts> {
    let at = At {
        model: &plan.name,
        batch,
    };
    let b = q(batch);
    let w = plan.output().len();
    let what = format!("loss {}", plan.loss.name());
    match plan.loss {
        // d = y - t (n sub), sum of d * d (n mul, n - 1 add) over n = B*W values, / n (1 div);
        // gradient d * (2 / n) (1 div for the factor, n mul).
        Loss::Mse => {
            let n = b * w;
            counts! { at, what; sub: n, mul: n * 2, add: n - 1, div: q(2) }
        }
        // Per example: max (W - 1 cmp), exp(z - max) (W sub, W exp), sum (W - 1 add),
        // loss = (ln(sum) + max) - z_class (1 ln, 1 add, 1 sub); gradient
        // e / sum * (1/B) (W div, W mul) and minus 1/B at the class (1 sub).
        // Per batch: the mean of B losses (B - 1 add, 1 div) and 1/B (1 div).
        Loss::SoftmaxCrossEntropy => counts! { at, what;
            cmp: b * (w - 1),
            sub: b * (w + 2),
            exp: b * w,
            add: b * w + (b - 1),
            ln: b,
            div: b * w + 2,
            mul: b * w,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Model;

    fn plan(text: &str) -> Plan {
        Model::parse(text, "t").unwrap().plan("t").unwrap()
    }

    #[test]
    fn the_classic_question_forward() {
        let p = plan(
            "(name: \"c\", input: [30], loss: Mse, layers: [
                Dense(units: 30, activation: Sigmoid), Dense(units: 30, activation: Sigmoid)])",
        );
        let s = step(&p, 1).unwrap();
        let dense_mul: u128 = [0, 2].iter().map(|&k| s.nodes[k].forward.mul).sum();
        assert_eq!(dense_mul, 1800);
        assert_eq!(s.totals().forward.act, 60);
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

    #[test]
    fn counts_past_u64_are_exact_and_past_u128_are_errors() {
        let p = plan(
            "(name: \"huge\", input: [1000000000], loss: Mse,
              layers: [Dense(units: 1000000000), Dense(units: 1000000000)])",
        );
        // 1e18 weights per layer. At batch 8 the step's total passes 2^64 (1.8e19), at
        // batch 20 the first layer's forward multiplications alone do: both are exact now.
        // From docs/counting.md, with N = M = e9: dense1 (no input gradient) forward 2 B e18;
        // backward B e18 mul, (B-1) e18 + (B-1) e9 add; update 2 (e18 + e9). dense2 the same,
        // and its input gradient: B e18 mul, B (e18 - e9) add.
        let (e9, e18) = (1_000_000_000u128, 1_000_000_000_000_000_000u128);
        let at = |b: u128| {
            let dense1 = 2 * b * e18 + b * e18 + (b - 1) * (e18 + e9) + 2 * (e18 + e9);
            let dense2 = dense1 + b * e18 + b * (e18 - e9);
            // MSE over n = B e9 values: n sub, 2n mul, n-1 add, 2 div.
            let n = b * e9;
            dense1 + dense2 + n + 2 * n + (n - 1) + 2
        };
        for b in [1, 8, 20] {
            let total = step(&p, b).unwrap().totals().all.total();
            assert_eq!(total, at(b as u128), "batch {b}");
        }
        assert!(at(8) > u128::from(u64::MAX));
        // Past u128 (3.4e38): the first layer's forward multiplications at batch 2^64 - 1
        // are 1.8e37, its backward ones too, but a step of them all is past 2^128 at 4e20
        // examples; no usize batch gets there, so a wider model does.
        let wide = plan(
            "(name: \"wide\", input: [2147483648], loss: Mse,
              layers: [Dense(units: 2147483648), Dense(units: 2147483648)])",
        );
        let err = step(&wide, usize::MAX).unwrap_err();
        assert!(matches!(err, Error::Overflow { .. }), "{err}");
        let text = err.to_string();
        assert!(text.starts_with("model wide: "), "{text}");
        assert!(text.contains(&format!("at batch {}", usize::MAX)), "{text}");
    }
}
