//! Random valid convolutional stacks, for the tests that check counts and gradients over
//! many shapes: Conv2d (kernel 1-5, stride 1-3, padding 0-2, each square or not; one group,
//! depthwise or grouped, one to three filters per group), max and average pooling
//! (padded, with windows that overlap, touch or leave gaps), batch normalisation, on odd and
//! non-square inputs, then Flatten and Dense. Included with `#[path]` by each test crate.
#![allow(dead_code)]

use crate::rng::Rng;
use opcount::model::Activation;

/// `3` for (3, 3), `(2, 5)` otherwise: both ways a model file may write a convolution's sizes.
fn pair((a, b): (usize, usize)) -> String {
    if a == b {
        a.to_string()
    } else {
        format!("({a}, {b})")
    }
}

/// A model text and a batch size.
pub struct Stack {
    pub text: String,
    pub batch: usize,
}

/// A random stack. `smooth` leaves out ReLU, whose kink a finite difference can straddle.
pub fn random_stack(rng: &mut Rng, smooth: bool) -> Stack {
    // Every activation of the registry but softmax (which works per row of the last axis, tested on its own), and with
    // `smooth` none with a kink.
    let names: Vec<String> = Activation::ALL
        .iter()
        .map(|a| format!("{a:?}"))
        .filter(|a| a != "Softmax" && !(smooth && ["Relu", "Relu6"].contains(&a.as_str())))
        .collect();
    let activations: Vec<&str> = names.iter().map(String::as_str).collect();
    let pick = |rng: &mut Rng| activations[rng.below(activations.len())];
    let (channels, height, width) = (1 + rng.below(4), 5 + rng.below(8), 5 + rng.below(8));
    let (mut c, mut h, mut w) = (channels, height, width);
    let mut layers = Vec::new();
    for _ in 0..1 + rng.below(3) {
        if rng.below(3) < 2 {
            // Square (one number) or not (a pair), each of kernel, stride and padding.
            let padding = (rng.below(3), rng.below(3));
            let padding = if rng.below(2) == 0 {
                (padding.0, padding.0)
            } else {
                padding
            };
            // The kernel fits the padded input.
            let kernel = (
                (1 + rng.below(5)).min(h + 2 * padding.0),
                (1 + rng.below(5)).min(w + 2 * padding.1),
            );
            let kernel = if rng.below(2) == 0 {
                let k = kernel.0.min(kernel.1);
                (k, k)
            } else {
                kernel
            };
            let stride = (1 + rng.below(3), 1 + rng.below(3));
            let stride = if rng.below(2) == 0 {
                (stride.0, stride.0)
            } else {
                stride
            };
            // One group, depthwise (a group per channel), or any number that divides the
            // channels; one to three filters per group.
            let divisors: Vec<usize> = (1..=c).filter(|g| c % g == 0).collect();
            let groups = match rng.below(3) {
                0 => 1,
                1 => c,
                _ => divisors[rng.below(divisors.len())],
            };
            let out_channels = groups * (1 + rng.below(3));
            let groups = match groups {
                1 => String::new(),
                g => format!(", groups: {g}"),
            };
            let activation = match rng.below(activations.len() + 1) {
                0 => String::new(),
                _ => format!(", activation: {}", pick(rng)),
            };
            layers.push(format!(
                "Conv2d(out_channels: {out_channels}, kernel: {}, stride: {}, padding: {}, \
                 bias: {}{groups}{activation})",
                pair(kernel),
                pair(stride),
                pair(padding),
                rng.below(2) == 0,
            ));
            c = out_channels;
            h = (h + 2 * padding.0 - kernel.0) / stride.0 + 1;
            w = (w + 2 * padding.1 - kernel.1) / stride.1 + 1;
            if rng.below(3) == 0 {
                layers.push("BatchNorm2d".into());
            }
        } else {
            let size = 1 + rng.below(3);
            let padding = rng.below(size / 2 + 1);
            let size = size.min(h.min(w) + 2 * padding);
            let padding = padding.min(size / 2);
            // Windows overlapping (stride below the window), touching, or apart.
            let stride = 1 + rng.below(size + 1);
            let kind = ["MaxPool2d", "AvgPool2d"][rng.below(2)];
            layers.push(format!(
                "{kind}(size: {size}, stride: {stride}, padding: {padding})"
            ));
            h = (h + 2 * padding - size) / stride + 1;
            w = (w + 2 * padding - size) / stride + 1;
        }
    }
    // A global average pool or a flatten.
    layers.push(["Flatten", "GlobalAvgPool2d"][rng.below(2)].into());
    if rng.below(2) == 0 {
        layers.push(format!(
            "Dense(units: {}, activation: {})",
            1 + rng.below(6),
            pick(rng)
        ));
    }
    let loss = ["Mse", "SoftmaxCrossEntropy"][rng.below(2)];
    // Cross-entropy needs two classes at least.
    let units = if loss == "Mse" { 1 } else { 2 } + rng.below(3);
    layers.push(format!("Dense(units: {units})"));
    let text = format!(
        "(name: \"stack\", input: [{channels}, {height}, {width}], loss: {loss}, \
         init: Xavier(seed: {}),\n layers: [\n  {}\n ])",
        rng.below(1000),
        layers.join(",\n  ")
    );
    Stack {
        text,
        batch: 1 + rng.below(4),
    }
}
