//! Random valid graphs, for the tests that check counts and gradients over branches, joins
//! and shared parameters: dense layers of one width reading any earlier value, sums of two
//! earlier values, products and differences (a value may be added to itself), dense layers that use an earlier
//! layer's parameters, standalone activations, and a head. Every value is used: whatever no
//! node read is summed into the head's input. Included with `#[path]` by each test crate.
#![allow(dead_code)]

use crate::rng::Rng;
use crate::values::{Values, activations};

/// A model text and a batch size.
pub struct Graph {
    pub text: String,
    pub batch: usize,
}

/// A random graph. `smooth` leaves out ReLU, whose kink a finite difference can straddle.
pub fn random_graph(rng: &mut Rng, smooth: bool) -> Graph {
    let names = activations(smooth);
    let activations: Vec<&str> = names.iter().map(String::as_str).collect();
    let width = 1 + rng.below(5);
    // The input has the hidden width half of the time, so that nodes may read it too.
    let inputs = if rng.below(2) == 0 {
        width
    } else {
        1 + rng.below(6)
    };
    let mut entries: Vec<String> = Vec::new();
    // Values of the hidden width.
    let mut values = Values::default();
    if inputs == width {
        values.push("input");
    }
    entries.push(format!(
        "(name: \"n0\", op: Dense(units: {width}, activation: Tanh), inputs: [\"input\"])"
    ));
    values.push("n0");
    // Dense layers that own parameters another may share: (name, bias).
    let mut owners: Vec<(String, bool)> = Vec::new();
    for k in 1..2 + rng.below(6) {
        let name = format!("n{k}");
        let entry = match rng.below(4) {
            0 => {
                let (a, b) = (values.pick(rng), values.pick(rng));
                let op = ["Add", "Mul", "Sub"][rng.below(3)];
                format!("(name: \"{name}\", op: {op}, inputs: [\"{a}\", \"{b}\"])")
            }
            1 if !owners.is_empty() => {
                let (owner, bias) = owners[rng.below(owners.len())].clone();
                let x = values.pick(rng);
                format!(
                    "(name: \"{name}\", op: Dense(units: {width}, bias: {bias}), \
                     inputs: [\"{x}\"], share: \"{owner}\")"
                )
            }
            2 => {
                let x = values.pick(rng);
                let f = activations[rng.below(activations.len())];
                format!("(name: \"{name}\", op: {f}, inputs: [\"{x}\"])")
            }
            _ => {
                let x = values.pick(rng);
                let bias = rng.below(3) > 0;
                let f = activations[rng.below(activations.len())];
                // Only a layer whose input has the hidden width can lend its parameters.
                if x != "input" || inputs == width {
                    owners.push((name.clone(), bias));
                }
                format!(
                    "(name: \"{name}\", op: Dense(units: {width}, bias: {bias}, activation: {f}), \
                     inputs: [\"{x}\"])"
                )
            }
        };
        entries.push(entry);
        values.push(name);
    }
    // Sum whatever was not read, then the head.
    let last = values.join_unread(&mut entries);
    let loss = ["Mse", "SoftmaxCrossEntropy"][rng.below(2)];
    let units = if loss == "Mse" { 1 } else { 2 } + rng.below(3);
    entries.push(format!(
        "(name: \"head\", op: Dense(units: {units}), inputs: [\"{last}\"])"
    ));
    let text = format!(
        "(name: \"graph\", input: [{inputs}], loss: {loss}, init: Xavier(seed: {}),\n graph: [\n  {}\n ])",
        rng.below(1000),
        entries.join(",\n  ")
    );
    Graph {
        text,
        batch: 1 + rng.below(4),
    }
}
