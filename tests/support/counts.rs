//! Measured against closed form for one model text: every node, phase and kind. Included
//! with `#[path]` by each test crate.
#![allow(dead_code)]

use opcount::data::Dataset;
use opcount::{Counted, Model, Network, Phase, estimate, measure_step};

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

/// One training step of `text` at `batch` on seeded data, with `f32` and with `Counted<f32>`:
/// the loss, the output and every parameter afterwards must be the same bits.
pub fn counted_gives_plain_bits(text: &str, batch: usize, seed: u64) -> Result<(), String> {
    let model = Model::parse(text, "model").map_err(|e| format!("{e}\n{text}"))?;
    let plan = model.plan("model").map_err(|e| format!("{e}\n{text}"))?;
    let data = Dataset::synthetic(&plan, batch, seed);
    let mut plain = Network::<f32>::new(&plan);
    let mut counted = Network::<Counted<f32>>::new(&plan);
    let a = plain.step(&data.head(batch, plan.loss()), 0.1);
    let b = counted.step(&data.head(batch, plan.loss()), Counted::new(0.1));
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let same = a.to_bits() == b.get().to_bits()
        && bits(plain.output()) == bits(&Counted::unwrap_slice(counted.output()))
        && plain
            .params()
            .iter()
            .zip(counted.params())
            .all(|(p, q)| bits(p) == bits(&Counted::unwrap_slice(q)));
    if same {
        Ok(())
    } else {
        Err(format!("counted and plain differ\n{text}"))
    }
}

/// Both checks of a random model: measured equals closed form, and counted gives plain bits.
pub fn closed_form_and_plain_bits(text: &str, batch: usize, seed: u64) -> Result<(), String> {
    measured_equals_closed_form(text, batch, seed)?;
    counted_gives_plain_bits(text, batch, seed)
}
