//! Closed forms: the counts of every node, phase and kind of operation as formulas of the
//! shapes and the batch size alone. Nothing here runs the interpreter or allocates more than
//! the result, so it answers for models far too big to run.
//!
//! Every formula is derived in `docs/counting.md` ("Networks") and reads like the loop it
//! predicts. Each operation's own formulas live beside its kernels (`src/nn/*.rs`,
//! `Operation::closed_form`); this module adds what the graph does between nodes (gradients
//! that add up where a value or a parameter is used twice) and the loss. B is the batch size, N a dense layer's inputs, M its units (or an activation's
//! or loss's values per example). Counts are `u128` and every step of a formula is checked: a
//! count that does not fit is an [`Error::Overflow`] naming the model, the node and the kind,
//! never a wrapped number.

use std::ops::{Add, Mul, Sub};

use crate::counts::Counts;
use crate::error::{Error, Result};
use crate::model::{Loss, Node, Optimizer, Plan};
use crate::nn::optimizer::per_parameter;
use crate::phases::{NodeCounts, StepCounts};

/// A count under construction: `None` once any step overflowed or went below zero.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Q(pub Option<u128>);

/// A size as a count.
pub(crate) fn q(n: usize) -> Q {
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
pub(crate) fn when(cond: bool, q: Q) -> Q {
    if cond { q } else { NONE }
}

/// Where a count is computed, for the error if it does not fit: the model and the batch.
#[derive(Copy, Clone)]
pub(crate) struct At<'a> {
    pub model: &'a str,
    pub batch: usize,
}

impl At<'_> {
    /// The batch size as a count.
    pub fn b(self) -> Q {
        q(self.batch)
    }

    pub fn overflow(self, what: impl std::fmt::Display) -> Error {
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
        let mut c = $crate::counts::Counts::ZERO;
        $( c.$kind = ($value).0.ok_or_else(|| $at.overflow(format!("{} ({})", $what, stringify!($kind))))?; )*
        Ok::<$crate::counts::Counts, $crate::error::Error>(c)
    }};
}
pub(crate) use counts;

/// The counts of one training step of `plan` on a batch of `batch` examples.
///
/// ```
/// use opcount::{Model, estimate};
///
/// // The classic question: 30 inputs, two dense layers of 30 sigmoid neurons.
/// let model = Model::load(std::path::Path::new("models/mlp-30-30-30.ron"))?;
/// let step = estimate::step(&model.plan("mlp-30-30-30.ron")?, 1)?;
/// let dense_forward_mul: u128 = [0, 2].iter().map(|&k| step.nodes[k].forward.mul).sum();
/// assert_eq!(dense_forward_mul, 1_800);
/// assert_eq!(step.totals().all.total(), 11_431);
/// # Ok::<(), opcount::Error>(())
/// ```
///
/// Every count fits in `u128`, and so does the sum of all of them (every node, phase and
/// kind, `act` and `zmul` included), so every total a report or a projection makes of them
/// is exact; otherwise an [`Error::Overflow`] names what does not fit.
pub fn step(plan: &Plan, batch: usize) -> Result<StepCounts> {
    let at = At {
        model: plan.name(),
        batch,
    };
    let nodes = plan
        .nodes()
        .iter()
        .map(|n| node(at, plan, n))
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

/// The counts of one node in each phase: its operation's closed form (its update only if it
/// owns its parameters), and in the backward
/// pass the additions of gradients it adds onto ones already written (docs/counting.md,
/// "Graphs"): B values per value of an input read by a node later in the forward order, one
/// per value of a parameter tensor another node also uses.
fn node(at: At<'_>, plan: &Plan, node: &Node) -> Result<NodeCounts> {
    let mut counts = node.op().closed_form(at, node.name(), node.input_grads())?;
    // Without a loss a step is the forward pass alone: no gradient, no update.
    if plan.loss().forward_only() {
        counts.backward = Counts::ZERO;
        counts.update = Counts::ZERO;
        return Ok(counts);
    }
    // Parameters shared with an earlier node are updated once, by that node.
    if !node.owns_params() {
        counts.update = Counts::ZERO;
    }
    // Every operation's closed form counts SGD's update, 1 mul and 1 sub per parameter it
    // owns; another optimizer's arithmetic per parameter takes its place (docs/counting.md,
    // "Optimizers").
    let optimizer = plan.optimizer();
    if node.owns_params() && !optimizer.is_sgd() {
        let owned = node
            .param_ids()
            .iter()
            .map(|&p| plan.param_tensors()[p].spec.len as u128)
            .sum::<u128>();
        let per = |c: Counts| c.checked_scale(owned);
        counts.update = per(per_parameter(Optimizer::Sgd))
            .and_then(|sgd| counts.update.checked_sub(sgd))
            .zip(per(per_parameter(optimizer)))
            .and_then(|(rest, update)| rest.checked_add(update))
            .ok_or_else(|| at.overflow(format!("{} update", node.name())))?;
    }
    let mut sums = NONE;
    for (&v, &adds) in node.inputs().iter().zip(node.input_grad_adds()) {
        sums = sums + when(adds, at.b() * plan.value_shape(v).len());
    }
    for (&p, &adds) in node.param_ids().iter().zip(node.param_grad_adds()) {
        sums = sums + when(adds, q(plan.param_tensors()[p].spec.len));
    }
    let sums = counts! { at, format!("{} backward", node.name()); add: sums }?;
    counts.backward = counts
        .backward
        .checked_add(sums)
        .ok_or_else(|| at.overflow(format!("{} backward (add)", node.name())))?;
    Ok(counts)
}

/// The loss of a batch and its gradient with respect to the network's outputs.
pub fn loss(plan: &Plan, batch: usize) -> Result<Counts> {
    let at = At {
        model: plan.name(),
        batch,
    };
    let b = q(batch);
    let w = plan.output().len();
    let what = format!("loss {}", plan.loss().name());
    // Cross-entropy's rows: one per example of a flat output, one per token of a
    // [tokens, classes] output.
    let (rows, classes) = (b * (w / plan.output().last()), plan.output().last());
    match plan.loss() {
        // No loss, nothing computed.
        Loss::None => Ok(Counts::ZERO),
        // d = y - t (n sub), sum of d * d (n mul, n - 1 add) over n = B*W values, / n (1 div);
        // gradient d * (2 / n) (1 div for the factor, n mul).
        Loss::Mse => {
            let n = b * w;
            counts! { at, what; sub: n, mul: n * 2, add: n - 1, div: q(2) }
        }
        // Per row of W classes (R rows): max (W - 1 cmp), exp(z - max) (W sub, W exp), sum
        // (W - 1 add), loss = (ln(sum) + max) - z_class (1 ln, 1 add, 1 sub); gradient
        // e / sum * (1/R) (W div, W mul) and minus 1/R at the class (1 sub).
        // Per batch: the mean of R losses (R - 1 add, 1 div) and 1/R (1 div).
        Loss::SoftmaxCrossEntropy => {
            let (b, w) = (rows, classes);
            counts! { at, what;
                cmp: b * (w - 1),
                sub: b * (w + 2),
                exp: b * w,
                add: b * w + (b - 1),
                ln: b,
                div: b * w + 2,
                mul: b * w,
            }
        }
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
