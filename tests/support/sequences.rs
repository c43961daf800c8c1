//! Random valid sequence models, for the tests that check counts and gradients of values of
//! shape `[tokens, width]`: `[tokens, features]` inputs through a dense layer, or token ids
//! through an embedding (and learned positions); then dense layers over the last axis,
//! activations, layer norms, sums of two earlier values and causal self-attention (queries,
//! keys and values from dense layers or straight from earlier values, any number of heads
//! that divides the width); a dense head or an unembedding,
//! tied to the embedding or not; MSE, or softmax cross-entropy at every token. Every value
//! is used: whatever no node read is summed into
//! the head's input. Included with `#[path]` by each test crate.
#![allow(dead_code)]

use crate::rng::Rng;
use crate::values::{Values, activations};

/// A model text and a batch size.
pub struct Sequence {
    pub text: String,
    pub batch: usize,
}

/// A random sequence model. `smooth` leaves out ReLU and ReLU6, whose kinks a finite
/// difference can straddle.
pub fn random_sequence(rng: &mut Rng, smooth: bool) -> Sequence {
    let names = activations(smooth);
    let activation = |rng: &mut Rng| names[rng.below(names.len())].clone();
    let tokens = 1 + rng.below(5);
    let width = 1 + rng.below(5);
    let mut entries: Vec<String> = Vec::new();
    // Values of shape [tokens, width].
    let mut values = Values::default();
    // With token ids in, the embedding's vocabulary.
    let ids = (rng.below(2) == 0).then(|| 1 + rng.below(6));
    let input = match ids {
        Some(vocab) => {
            entries.push(format!(
                "(name: \"n0\", op: Embedding(vocab: {vocab}, width: {width}), inputs: [\"input\"])"
            ));
            if rng.below(2) == 0 {
                let context = tokens + rng.below(3);
                entries.push(format!(
                    "(name: \"pos\", op: PositionEmbedding(context: {context}), inputs: [\"n0\"])"
                ));
                values.push("pos");
            } else {
                values.push("n0");
            }
            format!("[{tokens}]")
        }
        None => {
            let features = if rng.below(2) == 0 {
                width
            } else {
                1 + rng.below(5)
            };
            // An input of the hidden width may be read by any node, as data (no gradient).
            if features == width {
                values.push("input");
            }
            entries.push(format!(
                "(name: \"n0\", op: Dense(units: {width}, activation: {}), inputs: [\"input\"])",
                activation(rng)
            ));
            values.push("n0");
            format!("[{tokens}, {features}]")
        }
    };
    for k in 1..2 + rng.below(5) {
        let name = format!("n{k}");
        let op = match rng.below(5) {
            4 => {
                let divisors: Vec<usize> =
                    (1..=width).filter(|h| width.is_multiple_of(*h)).collect();
                let heads = divisors[rng.below(divisors.len())];
                // Queries, keys and values: a dense layer of an earlier value, or the value.
                let mut project = |rng: &mut Rng, tag: &str| {
                    let x = values.pick(rng);
                    if rng.below(2) == 0 {
                        return x;
                    }
                    let bias = rng.below(2) == 0;
                    entries.push(format!(
                        "(name: \"{name}.{tag}\", op: Dense(units: {width}, bias: {bias}), \
                         inputs: [\"{x}\"])"
                    ));
                    format!("{name}.{tag}")
                };
                let (q, k, v) = (project(rng, "q"), project(rng, "k"), project(rng, "v"));
                entries.push(format!(
                    "(name: \"{name}.s\", op: Scores(heads: {heads}), inputs: [\"{q}\", \"{k}\"])"
                ));
                entries.push(format!("(name: \"{name}.p\", op: CausalSoftmax)"));
                format!("Mix(heads: {heads}), inputs: [\"{name}.p\", \"{v}\"]")
            }
            0 => {
                let (a, b) = (values.pick(rng), values.pick(rng));
                format!("Add, inputs: [\"{a}\", \"{b}\"]")
            }
            1 => format!("{}, inputs: [\"{}\"]", activation(rng), values.pick(rng)),
            2 => format!("LayerNorm, inputs: [\"{}\"]", values.pick(rng)),
            _ => {
                let x = values.pick(rng);
                let bias = rng.below(3) > 0;
                let f = activation(rng);
                format!("Dense(units: {width}, bias: {bias}, activation: {f}), inputs: [\"{x}\"]")
            }
        };
        entries.push(format!("(name: \"{name}\", op: {op})"));
        values.push(name);
    }
    let last = values.join_unread(&mut entries);
    let loss = ["Mse", "SoftmaxCrossEntropy"][rng.below(2)];
    // Cross-entropy needs two classes at least, and an unembedding tied to an embedding of
    // one id has one.
    let two = usize::from(loss != "Mse");
    let ids = ids.filter(|&v| v > two);
    let units = 1 + two + rng.below(4);
    let head = match (rng.below(3), ids) {
        (0, _) => format!("Unembed(vocab: {units}), inputs: [\"{last}\"]"),
        (1, Some(vocab)) => format!("Unembed(vocab: {vocab}), inputs: [\"{last}\"], share: \"n0\""),
        _ => format!("Dense(units: {units}), inputs: [\"{last}\"]"),
    };
    entries.push(format!("(name: \"head\", op: {head})"));
    let text = format!(
        "(name: \"sequence\", input: {input}, loss: {loss}, init: Xavier(seed: {}),\n graph: [\n  {}\n ])",
        rng.below(1000),
        entries.join(",\n  ")
    );
    Sequence {
        text,
        batch: 1 + rng.below(3),
    }
}
