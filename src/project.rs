//! A whole training run projected from the closed form of one step: how many operations N
//! examples for E epochs cost, phase by phase and kind by kind, exactly in `u128` or an
//! [`Error::Overflow`] naming the model and what does not fit.

use crate::convention::Convention;
use crate::counts::Counts;
use crate::error::{Error, Result};
use crate::estimate;
use crate::model::Plan;
use crate::phases::{Phase, StepCounts, Totals};

/// The operations of a whole training run.
#[derive(Clone, Debug, PartialEq)]
pub struct Projection {
    /// Examples per epoch.
    pub examples: usize,
    /// Passes over the examples.
    pub epochs: usize,
    /// Examples per step.
    pub batch: usize,
    /// Full steps per epoch.
    pub full_steps: usize,
    /// Examples in the epoch's last, smaller step (0 if the batch size divides the
    /// examples).
    pub last_batch: usize,
    /// One full step.
    pub step: StepCounts,
    /// The last, smaller step, if any.
    pub last_step: Option<StepCounts>,
    /// The whole run, per phase and kind.
    pub total: Totals,
}

impl Projection {
    /// Steps in the whole run. (At most (2^64 - 1) x 2^64: it fits.)
    pub fn steps(&self) -> u128 {
        (self.full_steps as u128 + u128::from(self.last_batch > 0)) * self.epochs as u128
    }

    /// The whole run's forward and backward numbers, and their sum, in a single-number
    /// convention (mac, flop), or `Ok(None)` for [`Convention::Exact`]. `plan` is the
    /// projected plan.
    pub fn in_convention(&self, plan: &Plan, convention: Convention) -> Result<Option<[u128; 3]>> {
        let overflow = || Error::Overflow {
            model: plan.name().to_string(),
            what: format!(
                "the {}s of {} epochs of {} examples at batch {}",
                convention.name(),
                self.epochs,
                self.examples,
                self.batch
            ),
        };
        if convention == Convention::Exact {
            return Ok(None);
        }
        let per_step = |step: &StepCounts| -> Result<[u128; 2]> {
            let mut sums = [0u128; 2];
            for (node, counts) in plan.nodes().iter().zip(&step.nodes) {
                for (sum, phase) in sums.iter_mut().zip([Phase::Forward, Phase::Backward]) {
                    *sum = convention
                        .value(node.kind(), phase, &counts.phase(phase))
                        .and_then(|n| sum.checked_add(n))
                        .ok_or_else(overflow)?;
                }
            }
            Ok(sums)
        };
        let full = per_step(&self.step)?;
        let last = match &self.last_step {
            Some(step) => per_step(step)?,
            None => [0, 0],
        };
        let whole = |i: usize| {
            full[i]
                .checked_mul(self.full_steps as u128)?
                .checked_add(last[i])?
                .checked_mul(self.epochs as u128)
        };
        let [f, b] = [0, 1].map(whole);
        let (f, b) = f.zip(b).ok_or_else(overflow)?;
        Ok(Some([f, b, f.checked_add(b).ok_or_else(overflow)?]))
    }
}

/// The operations of training `plan` on `examples` examples for `epochs` epochs, `batch`
/// examples per step (the last step of an epoch takes what is left).
///
/// Every count fits in `u128`, and so does the sum of all of them, so every total made of
/// them is exact; otherwise an [`Error::Overflow`] names the model and the run.
pub fn project(plan: &Plan, examples: usize, epochs: usize, batch: usize) -> Result<Projection> {
    if examples == 0 || epochs == 0 || batch == 0 {
        return Err(Error::Usage(format!(
            "examples, epochs and batch must be at least 1, found {examples}, {epochs} and {batch}"
        )));
    }
    let batch = batch.min(examples);
    let (full_steps, last_batch) = (examples / batch, examples % batch);
    let step = estimate::step(plan, batch)?;
    let last_step = match last_batch {
        0 => None,
        n => Some(estimate::step(plan, n)?),
    };
    let overflow = || Error::Overflow {
        model: plan.name().to_string(),
        what: format!("the operations of {epochs} epochs of {examples} examples at batch {batch}"),
    };
    // Per phase: epochs x (full steps x one step + the last step).
    let whole = |of: fn(&Totals) -> Counts| -> Result<Counts> {
        let mut epoch = of(&step.totals())
            .checked_scale(full_steps as u128)
            .ok_or_else(overflow)?;
        if let Some(last) = &last_step {
            epoch = epoch.checked_add(of(&last.totals())).ok_or_else(overflow)?;
        }
        epoch.checked_scale(epochs as u128).ok_or_else(overflow)
    };
    let total = Totals {
        forward: whole(|t| t.forward)?,
        loss: whole(|t| t.loss)?,
        backward: whole(|t| t.backward)?,
        update: whole(|t| t.update)?,
        all: whole(|t| t.all)?,
    };
    // The run's grand total must fit too, so that every total a report makes is exact.
    total.all.checked_sum_of_kinds().ok_or_else(overflow)?;
    Ok(Projection {
        examples,
        epochs,
        batch,
        full_steps,
        last_batch,
        step,
        last_step,
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Model;

    #[test]
    fn a_partial_last_step_is_counted_at_its_own_size() {
        let model = Model::parse(
            "(name: \"p\", input: [3], loss: Mse, layers: [Dense(units: 2)])",
            "p",
        )
        .unwrap();
        let plan = model.plan("p").unwrap();
        let p = project(&plan, 10, 3, 4).unwrap();
        assert_eq!((p.full_steps, p.last_batch, p.steps()), (2, 2, 9));
        let four = estimate::step(&plan, 4).unwrap().totals().all;
        let two = estimate::step(&plan, 2).unwrap().totals().all;
        let epoch = four.checked_scale(2).unwrap() + two;
        assert_eq!(p.total.all, epoch.checked_scale(3).unwrap());
        // Forward multiplications are per example: 3 x 2 for each of 30 examples.
        assert_eq!(p.total.forward.mul, 30 * 6);
    }
}
