//! Backward against central finite differences in f64 (the oracle), for every layer type,
//! activation and loss, on random shapes: relative error <= 1e-6 for every parameter tensor.

use opcount::data::{Batch, Dataset};
use opcount::rng::Rng;
use opcount::{Model, Network, Plan};

const ACTIVATIONS: [&str; 5] = ["Identity", "Sigmoid", "Tanh", "Relu", "Softmax"];
const LOSSES: [&str; 2] = ["Mse", "SoftmaxCrossEntropy"];

/// The loss of a network on a batch, forward only.
fn loss_of(net: &mut Network<f64>, batch: &Batch<f64>) -> f64 {
    net.forward(&batch.inputs, batch.size);
    net.loss(batch)
}

/// Compares every parameter's analytic gradient with `(L(p + h) - L(p - h)) / 2h`.
fn check(model_text: &str, batch_size: usize, seed: u64) {
    let model = Model::parse(model_text, "test").unwrap();
    let plan: Plan = model.plan("test").unwrap();
    let data = Dataset::synthetic(&plan, batch_size, seed);
    let mut batch = Batch::default();
    data.gather(&(0..batch_size).collect::<Vec<_>>(), plan.loss, &mut batch);
    let mut net = Network::<f64>::new(&model, &plan);
    loss_of(&mut net, &batch);
    net.backward();
    let analytic: Vec<Vec<f64>> = net
        .params_and_grads_mut()
        .into_iter()
        .map(|(_, g)| g.to_vec())
        .collect();

    let h = 1e-6;
    for (t, expected) in analytic.iter().enumerate() {
        let mut numeric = Vec::with_capacity(expected.len());
        for i in 0..expected.len() {
            let nudge = |net: &mut Network<f64>, delta: f64| {
                net.params_and_grads_mut()[t].0[i] += delta;
            };
            nudge(&mut net, h);
            let up = loss_of(&mut net, &batch);
            nudge(&mut net, -2.0 * h);
            let down = loss_of(&mut net, &batch);
            nudge(&mut net, h);
            numeric.push((up - down) / (2.0 * h));
        }
        let diff: f64 = expected
            .iter()
            .zip(&numeric)
            .map(|(a, n)| (a - n).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let scale = norm(expected).max(norm(&numeric)).max(1e-12);
        assert!(
            diff / scale <= 1e-6,
            "parameter tensor {t}: relative error {:.2e}\nanalytic {expected:?}\nnumeric  {numeric:?}\nmodel {model_text}",
            diff / scale
        );
    }
}

#[test]
fn every_activation_and_loss_matches_finite_differences() {
    let mut rng = Rng::new(11);
    for activation in ACTIVATIONS {
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
    for first in ACTIVATIONS {
        for middle in ACTIVATIONS {
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
    for _ in 0..10 {
        let depth = 1 + rng.below(4);
        let mut layers = Vec::new();
        for _ in 0..depth {
            layers.push(format!(
                "Dense(units: {}, activation: {})",
                1 + rng.below(7),
                ACTIVATIONS[rng.below(4)]
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

#[test]
fn convolutions_and_pooling_match_finite_differences() {
    let mut rng = Rng::new(14);
    let mut checked = 0;
    for case in 0..24 {
        let (c, h, w) = (1 + rng.below(3), 5 + rng.below(5), 5 + rng.below(5));
        let kernel = 1 + rng.below(3);
        let stride = 1 + rng.below(2);
        let padding = rng.below(3);
        let bias = rng.below(2) == 0;
        let pool = ["MaxPool2d", "AvgPool2d"][case % 2];
        let act = ACTIVATIONS[rng.below(4)];
        let model = format!(
            "(name: \"g\", input: [{c}, {h}, {w}], loss: {}, init: Xavier(seed: {}),
              layers: [
                Conv2d(out_channels: {}, kernel: {kernel}, stride: {stride}, padding: {padding},
                       bias: {bias}, activation: {act}),
                {pool}(size: 2),
                Conv2d(out_channels: 2, kernel: {k2}, stride: {s2}, padding: {p2}),
                Flatten,
                Dense(units: 3),
              ])",
            LOSSES[rng.below(2)],
            rng.below(1000),
            1 + rng.below(3),
            // The second convolution's input gradient goes through col2im; padding k2 - 1
            // keeps it valid on the smallest pooled input.
            k2 = 1 + rng.below(3),
            s2 = 1 + rng.below(2),
            p2 = rng.below(3),
        );
        if Model::parse(&model, "g").unwrap().plan("g").is_err() {
            continue;
        }
        check(&model, 1 + rng.below(3), rng.next_u64());
        checked += 1;
    }
    assert!(checked >= 16, "only {checked} valid random models");
}
