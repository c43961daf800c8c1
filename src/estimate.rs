//! Closed forms: the counts of every node, phase and kind of operation as formulas of the
//! shapes and the batch size alone. Nothing here runs the interpreter or allocates more than
//! the result, so it answers for models far too big to run.
//!
//! Every formula is derived in `docs/counting.md` ("Networks") and reads like the loop it
//! predicts. B is the batch size, N a dense layer's inputs, M its units (or an activation's
//! or loss's values per example). Arithmetic is done in `u128` and checked: a count that does
//! not fit in `u64` is an [`Error::Overflow`], never a wrapped number.

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

/// Builds [`Counts`] from `kind: formula` pairs, failing with [`Error::Overflow`] (naming
/// `$what`) if a formula does not fit in `u64`.
macro_rules! counts {
    ($what:expr; $($kind:ident: $value:expr),* $(,)?) => {{
        let mut c = Counts::ZERO;
        $( c.$kind = fit($value, || format!("{} ({})", $what, stringify!($kind)))?; )*
        Ok::<Counts, Error>(c)
    }};
}

fn fit(value: Q, what: impl Fn() -> String) -> Result<u64> {
    value
        .0
        .and_then(|v| u64::try_from(v).ok())
        .ok_or_else(|| Error::Overflow { what: what() })
}

/// The counts of one training step of `plan` on a batch of `batch` examples.
pub fn step(plan: &Plan, batch: usize) -> Result<StepCounts> {
    let nodes = plan
        .nodes
        .iter()
        .map(|n| node(n, batch))
        .collect::<Result<Vec<_>>>()?;
    let step = StepCounts {
        nodes,
        loss: loss(plan, batch)?,
    };
    // The totals must fit too, so that every sum a report makes is exact.
    let mut all = step.loss;
    for n in &step.nodes {
        for c in [n.forward, n.backward, n.update] {
            all = all.checked_add(c).ok_or_else(|| Error::Overflow {
                what: format!("the total of a step of {}", plan.name),
            })?;
        }
    }
    Ok(step)
}

/// The counts of one node in each phase, for a batch of `batch` examples.
pub fn node(node: &Node, batch: usize) -> Result<NodeCounts> {
    let b = q(batch);
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
            let forward = counts! { format!("{name} forward");
                mul: b * n * m,
                add: if bias { b * n * m } else { b * (n - 1) * m },
            }?;
            // Backward: dW_ij = sum_e x_ei dz_ej (B products, B - 1 adds, for N*M weights);
            // db_j = sum_e dz_ej (B - 1 adds, for M biases); dx_ei = sum_j W_ij dz_ej
            // (M products, M - 1 adds, for B*N inputs) only if an earlier node learns.
            let backward = counts! { format!("{name} backward");
                mul: b * n * m + when(dx, b * n * m),
                add: (b - 1) * n * m + when(bias, (b - 1) * m) + when(dx, b * n * (m - 1)),
            }?;
            // Update: p -= lr * dp, one mul and one sub per parameter.
            let params = q(n) * m + when(bias, q(m));
            let update = counts! { format!("{name} update"); mul: params, sub: params }?;
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
            let forward = counts! { format!("{name} forward");
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
            let backward = counts! { format!("{name} backward");
                mul: all * c_out * patch + when(dx, b * patch * positions * c_out),
                add: (all - 1) * c_out * patch
                    + when(bias, (all - 1) * c_out)
                    + when(dx, b * patch * positions * (c_out - 1))
                    + when(dx, b * c_in * (contributions - reached)),
            }?;
            let params = q(c_out) * patch + when(bias, q(c_out));
            let update = counts! { format!("{name} update"); mul: params, sub: params }?;
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
                forward: counts! { format!("{name} forward"); cmp: outputs * (size * size - 1) }?,
                ..NodeCounts::default()
            })
        }
        NodeOp::AvgPool2d { size, .. } => {
            // Per output value: a sum of size^2 values (size^2 - 1 add) over size^2 (1 div).
            // Backward: each gradient over size^2 (1 div), copied to the window.
            let outputs = b * node.output.len();
            Ok(NodeCounts {
                forward: counts! { format!("{name} forward");
                    add: outputs * (size * size - 1), div: outputs,
                }?,
                backward: counts! { format!("{name} backward"); div: when(dx, outputs) }?,
                update: Counts::ZERO,
            })
        }
        // A copy, forward and backward.
        NodeOp::Flatten => Ok(NodeCounts::default()),
        NodeOp::Activation(f) => {
            let width = node.output.len();
            Ok(NodeCounts {
                forward: activation_forward(f, b, width, name)?,
                backward: if dx {
                    activation_backward(f, b, width, name)?
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
fn activation_forward(f: Activation, b: Q, w: usize, name: &str) -> Result<Counts> {
    let what = format!("{name} forward");
    let e = b * w; // values
    match f {
        // y = z.
        Activation::Identity => counts! { what; act: e },
        // y = 1 / (1 + exp(-z)).
        Activation::Sigmoid => counts! { what; neg: e, exp: e, add: e, div: e, act: e },
        // y = tanh(z).
        Activation::Tanh => counts! { what; tanh: e, act: e },
        // y = max(z, 0).
        Activation::Relu => counts! { what; cmp: e, act: e },
        // Per example: max of W values (W - 1 cmp), exp(z - max) (W sub, W exp), their sum
        // (W - 1 add), y = e / sum (W div).
        Activation::Softmax => counts! { what;
            cmp: b * (w - 1), sub: e, exp: e, add: b * (w - 1), div: e, act: e,
        },
    }
}

/// The gradient through an activation, from its output y: dz = dy * f'(z).
fn activation_backward(f: Activation, b: Q, w: usize, name: &str) -> Result<Counts> {
    let what = format!("{name} backward");
    let e = b * w;
    match f {
        // dz = dy.
        Activation::Identity => Ok(Counts::ZERO),
        // dz = dy * (y * (1 - y)).
        Activation::Sigmoid => counts! { what; sub: e, mul: e * 2 },
        // dz = dy * (1 - y * y).
        Activation::Tanh => counts! { what; mul: e * 2, sub: e },
        // dz = dy if y > 0, else 0.
        Activation::Relu => counts! { what; cmp: e },
        // Per example: s = sum_k y_k dy_k (W mul, W - 1 add), dz_j = y_j * (dy_j - s)
        // (W sub, W mul).
        Activation::Softmax => counts! { what; mul: e * 2, add: b * (w - 1), sub: e },
    }
}

/// The loss of a batch and its gradient with respect to the network's outputs.
pub fn loss(plan: &Plan, batch: usize) -> Result<Counts> {
    let b = q(batch);
    let w = plan.output().len();
    let what = format!("loss {}", plan.loss.name());
    match plan.loss {
        // d = y - t (n sub), sum of d * d (n mul, n - 1 add) over n = B*W values, / n (1 div);
        // gradient d * (2 / n) (1 div for the factor, n mul).
        Loss::Mse => {
            let n = b * w;
            counts! { what; sub: n, mul: n * 2, add: n - 1, div: q(2) }
        }
        // Per example: max (W - 1 cmp), exp(z - max) (W sub, W exp), sum (W - 1 add),
        // loss = (ln(sum) + max) - z_class (1 ln, 1 add, 1 sub); gradient
        // e / sum * (1/B) (W div, W mul) and minus 1/B at the class (1 sub).
        // Per batch: the mean of B losses (B - 1 add, 1 div) and 1/B (1 div).
        Loss::SoftmaxCrossEntropy => counts! { what;
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
        let dense_mul: u64 = [0, 2].iter().map(|&k| s.nodes[k].forward.mul).sum();
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
    fn counts_too_large_for_u64_are_errors_not_wrapped() {
        let p = plan(
            "(name: \"huge\", input: [1000000000], loss: Mse,
              layers: [Dense(units: 1000000000), Dense(units: 1000000000)])",
        );
        // 1e18 weights per layer: a step is about 1.3e19 operations at batch 1, which fits
        // in u64 (up to 1.8e19); at batch 8 every node fits but their total does not; at
        // batch 20 the first layer's forward multiplications alone do not.
        assert!(step(&p, 1).is_ok());
        let err = step(&p, 8).unwrap_err();
        assert!(err.to_string().contains("total"), "{err}");
        let err = step(&p, 20).unwrap_err();
        assert!(matches!(err, Error::Overflow { .. }), "{err}");
        assert!(err.to_string().contains("dense1 forward (mul)"), "{err}");
    }
}
