//! Backward against central finite differences in f64 (the oracle), for every layer type,
//! activation and loss, on random shapes: relative error <= 1e-6 for every parameter tensor.

#[path = "support/gradient.rs"]
mod gradient;
#[path = "support/rng.rs"]
mod rng;
#[path = "support/stacks.rs"]
mod stacks;

use gradient::{check, check_sampled};
use opcount::model::Activation;
use rng::Rng;
use stacks::random_stack;

/// Every activation of the registry, as model files name them.
fn activations() -> Vec<String> {
    Activation::ALL.iter().map(|a| format!("{a:?}")).collect()
}

/// Activations with a kink at 0. Behind a layer whose input can be all zeros (a ReLU's
/// output) with zero biases, such an activation sees exactly 0, where a finite difference
/// measures half a slope: those places take smooth activations.
const KINKED: [&str; 2] = ["Relu", "Relu6"];

/// Every activation but the kinked ones.
fn smooth() -> Vec<String> {
    activations()
        .into_iter()
        .filter(|a| !KINKED.contains(&a.as_str()))
        .collect()
}
const LOSSES: [&str; 2] = ["Mse", "SoftmaxCrossEntropy"];

#[test]
fn every_activation_and_loss_matches_finite_differences() {
    let mut rng = Rng::new(11);
    for activation in activations() {
        for loss in LOSSES {
            for bias in [true, false] {
                let (n, h, m) = (1 + rng.below(5), 1 + rng.below(6), 2 + rng.below(4));
                let batch = 1 + rng.below(4);
                let model = format!(
                    "(name: \"g\", input: [{n}], loss: {loss}, init: Xavier(seed: {}),
                      layers: [
                        Dense(units: {h}, activation: {activation}, bias: {bias}),
                        Dense(units: {m}, bias: {bias}),
                      ])",
                    rng.below(1000)
                );
                check(&model, batch, rng.next_u64());
            }
        }
    }
}

#[test]
fn standalone_activation_layers_match_finite_differences() {
    let mut rng = Rng::new(12);
    // The first sees the data; the middle one sees a layer fed by the first.
    for first in activations() {
        let middles = if KINKED.contains(&first.as_str()) {
            smooth()
        } else {
            activations()
        };
        for middle in middles {
            let (n, h, m) = (2 + rng.below(4), 2 + rng.below(5), 2 + rng.below(3));
            let model = format!(
                "(name: \"g\", input: [{n}], loss: Mse, init: He(seed: {}),
                  layers: [{first}, Dense(units: {h}), {middle}, Dense(units: {m}), Sigmoid])",
                rng.below(1000)
            );
            check(&model, 1 + rng.below(5), rng.next_u64());
        }
    }
}

#[test]
fn deep_stacks_match_finite_differences() {
    let mut rng = Rng::new(13);
    // Softmax works per example, so a stack of it is tested above; here every other one.
    // Any of them first; smooth ones after it (see KINKED).
    let first: Vec<String> = activations()
        .into_iter()
        .filter(|a| a != "Softmax")
        .collect();
    let hidden: Vec<String> = smooth().into_iter().filter(|a| a != "Softmax").collect();
    for _ in 0..10 {
        let depth = 1 + rng.below(4);
        let mut layers = Vec::new();
        for d in 0..depth {
            let choices = if d == 0 { &first } else { &hidden };
            layers.push(format!(
                "Dense(units: {}, activation: {})",
                1 + rng.below(7),
                choices[rng.below(choices.len())]
            ));
        }
        layers.push(format!("Dense(units: {})", 2 + rng.below(4)));
        let model = format!(
            "(name: \"g\", input: [{}], loss: {}, layers: [{}], init: Xavier(seed: {}))",
            1 + rng.below(8),
            LOSSES[rng.below(2)],
            layers.join(", "),
            rng.below(1000)
        );
        check(&model, 1 + rng.below(6), rng.next_u64());
    }
}

/// Random convolution and pooling stacks (kernels 1-5, strides 1-3, padding 0-2, square or
/// not; one group, depthwise or grouped; pooling with gaps, odd and non-square inputs): the
/// shapes `tests/conv_stacks.rs` counts.
#[test]
fn convolutions_and_pooling_match_finite_differences() {
    let mut rng = Rng::new(14);
    for _ in 0..40 {
        let stack = random_stack(&mut rng, true);
        // Every parameter of the small tensors, an even sample of the large ones.
        check_sampled(&stack.text, stack.batch, rng.next_u64(), 48);
    }
}

/// Softmax over the last axis of `[tokens, classes]` and of an image: each row on its own.
#[test]
fn softmax_over_the_last_axis_matches_finite_differences() {
    let mut rng = Rng::new(15);
    for _ in 0..12 {
        let (t, w, m) = (1 + rng.below(4), 1 + rng.below(5), 1 + rng.below(5));
        let tokens = format!(
            "(name: \"g\", input: [{t}, {w}], loss: Mse, init: Xavier(seed: {}),
              layers: [Dense(units: {m}), Softmax, Dense(units: 2)])",
            rng.below(1000)
        );
        check(&tokens, 1 + rng.below(4), rng.next_u64());
        let (c, h) = (1 + rng.below(3), 2 + rng.below(3));
        let image = format!(
            "(name: \"g\", input: [{c}, {h}, {h}], loss: Mse, init: Xavier(seed: {}),
              layers: [Conv2d(out_channels: 2, kernel: 1), Softmax, Flatten, Dense(units: 2)])",
            rng.below(1000)
        );
        check(&image, 1 + rng.below(3), rng.next_u64());
    }
}
