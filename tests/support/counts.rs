//! Measured against closed form for one model text: every node, phase and kind. Included
//! with `#[path]` by each test crate.
#![allow(dead_code)]

use opcount::data::Dataset;
use opcount::{Model, Phase, estimate, measure_step};

/// Runs one real step of `text` at `batch` and compares it with the closed form; the first
/// difference as an error naming the node, phase and model.
pub fn measured_equals_closed_form(text: &str, batch: usize, seed: u64) -> Result<(), String> {
    let model = Model::parse(text, "model").map_err(|e| format!("{e}\n{text}"))?;
    let plan = model.plan("model").map_err(|e| format!("{e}\n{text}"))?;
    let data = Dataset::synthetic(&plan, batch, seed);
    let measured = measure_step(&plan, &data, batch);
    let estimated = estimate::step(&plan, batch).map_err(|e| e.to_string())?;
    for ((m, e), node) in measured
        .nodes
        .iter()
        .zip(&estimated.nodes)
        .zip(plan.nodes())
    {
        for phase in [Phase::Forward, Phase::Backward, Phase::Update] {
            m.phase(phase)
                .predictable()
                .check(&e.phase(phase))
                .map_err(|mismatch| {
                    format!(
                        "{} {} at batch {batch}: {mismatch}\n{text}",
                        node.name(),
                        phase.name()
                    )
                })?;
        }
    }
    measured
        .loss
        .predictable()
        .check(&estimated.loss)
        .map_err(|mismatch| format!("loss: {mismatch}\n{text}"))
}
