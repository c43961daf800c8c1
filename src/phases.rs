//! Counts of one training step, per node and phase. The interpreter fills one by measuring;
//! the closed forms fill another by formula; reports put them side by side.

use serde::Serialize;

use crate::counts::Counts;

/// The four phases of a training step.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Inputs to outputs.
    Forward,
    /// The loss and its gradient with respect to the outputs.
    Loss,
    /// Gradients, last node to first.
    Backward,
    /// The SGD update of the parameters.
    Update,
}

impl Phase {
    /// Every phase, in the order a step runs them.
    pub const ALL: [Phase; 4] = [Phase::Forward, Phase::Loss, Phase::Backward, Phase::Update];

    /// Lower-case name, as in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Forward => "forward",
            Phase::Loss => "loss",
            Phase::Backward => "backward",
            Phase::Update => "update",
        }
    }
}

/// What one node counted in each phase it takes part in.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NodeCounts {
    /// Forward pass.
    pub forward: Counts,
    /// Backward pass.
    pub backward: Counts,
    /// Parameter update.
    pub update: Counts,
}

impl NodeCounts {
    /// The counts of `phase` (zero for [`Phase::Loss`], which belongs to no node).
    pub fn phase(&self, phase: Phase) -> Counts {
        match phase {
            Phase::Forward => self.forward,
            Phase::Backward => self.backward,
            Phase::Update => self.update,
            Phase::Loss => Counts::ZERO,
        }
    }

    /// The counts a closed form can predict (see [`Counts::predictable`]).
    pub fn predictable(&self) -> NodeCounts {
        NodeCounts {
            forward: self.forward.predictable(),
            backward: self.backward.predictable(),
            update: self.update.predictable(),
        }
    }

    /// All phases together.
    pub fn all(&self) -> Counts {
        self.forward + self.backward + self.update
    }
}

/// The counts of a whole training step.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StepCounts {
    /// One entry per node of the plan.
    pub nodes: Vec<NodeCounts>,
    /// The loss and its gradient.
    pub loss: Counts,
}

impl StepCounts {
    /// Zero counts for `nodes` nodes.
    pub fn zero(nodes: usize) -> StepCounts {
        StepCounts {
            nodes: vec![NodeCounts::default(); nodes],
            loss: Counts::ZERO,
        }
    }

    /// The counts a closed form can predict (see [`Counts::predictable`]).
    pub fn predictable(&self) -> StepCounts {
        StepCounts {
            nodes: self.nodes.iter().map(NodeCounts::predictable).collect(),
            loss: self.loss.predictable(),
        }
    }

    /// Everything counted in `phase`.
    pub fn phase(&self, phase: Phase) -> Counts {
        match phase {
            Phase::Loss => self.loss,
            _ => self.nodes.iter().map(|n| n.phase(phase)).sum(),
        }
    }

    /// The totals per phase and over the whole step.
    pub fn totals(&self) -> Totals {
        let [forward, loss, backward, update] = Phase::ALL.map(|p| self.phase(p));
        Totals {
            forward,
            loss,
            backward,
            update,
            all: forward + loss + backward + update,
        }
    }
}

/// Totals of a step, per phase and over all phases.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Forward pass.
    pub forward: Counts,
    /// Loss and its gradient.
    pub loss: Counts,
    /// Backward pass.
    pub backward: Counts,
    /// Parameter update.
    pub update: Counts,
    /// The whole step.
    pub all: Counts,
}
