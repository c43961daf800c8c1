//! A whole training run projected from the closed form of one step: how many operations N
//! examples for E epochs cost, phase by phase and kind by kind.

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
    /// Steps in the whole run.
    pub fn steps(&self) -> u64 {
        (self.full_steps as u64 + u64::from(self.last_batch > 0)) * self.epochs as u64
    }

    /// The whole run's forward and backward numbers in a single-number convention (mac,
    /// flop), or `None` for [`Convention::Exact`]. `plan` is the projected plan.
    pub fn in_convention(&self, plan: &Plan, convention: Convention) -> Option<[u128; 2]> {
        let per_step = |step: &StepCounts| -> Option<[u128; 2]> {
            let mut sums = [0u128; 2];
            for (node, counts) in plan.nodes.iter().zip(&step.nodes) {
                for (sum, phase) in sums.iter_mut().zip([Phase::Forward, Phase::Backward]) {
                    *sum += u128::from(convention.value(
                        node.op.kind(),
                        phase,
                        &counts.phase(phase),
                    )?);
                }
            }
            Some(sums)
        };
        let full = per_step(&self.step)?;
        let last = self.last_step.as_ref().map_or(Some([0, 0]), per_step)?;
        Some([0, 1].map(|i| (full[i] * self.full_steps as u128 + last[i]) * self.epochs as u128))
    }
}

/// The operations of training `plan` on `examples` examples for `epochs` epochs, `batch`
/// examples per step (the last step of an epoch takes what is left).
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
        what: format!(
            "the operations of {epochs} epochs of {examples} examples of {}",
            plan.name
        ),
    };
    // Per phase: epochs x (full steps x one step + the last step).
    let whole = |of: fn(&Totals) -> Counts| -> Result<Counts> {
        let mut epoch = of(&step.totals())
            .checked_scale(full_steps as u64)
            .ok_or_else(overflow)?;
        if let Some(last) = &last_step {
            epoch = epoch.checked_add(of(&last.totals())).ok_or_else(overflow)?;
        }
        epoch.checked_scale(epochs as u64).ok_or_else(overflow)
    };
    let total = Totals {
        forward: whole(|t| t.forward)?,
        loss: whole(|t| t.loss)?,
        backward: whole(|t| t.backward)?,
        update: whole(|t| t.update)?,
        all: whole(|t| t.all)?,
    };
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
