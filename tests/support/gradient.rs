//! Backward against central finite differences in f64 (the oracle): relative error <= 1e-6
//! for every parameter tensor. Included with `#[path]` by each test crate.
#![allow(dead_code)]

use opcount::data::{Batch, Dataset};
use opcount::{Model, Network, Plan};

/// The loss of a network on a batch, forward only.
fn loss_of(net: &mut Network<f64>, batch: &Batch<f64>) -> f64 {
    net.forward_loss(batch)
}

/// Compares every parameter's analytic gradient with `(L(p + h) - L(p - h)) / 2h`.
pub fn check(model_text: &str, batch_size: usize, seed: u64) {
    check_sampled(model_text, batch_size, seed, usize::MAX);
}

/// [`check`] on at most `per_tensor` parameters of each tensor, evenly spaced over it.
pub fn check_sampled(model_text: &str, batch_size: usize, seed: u64, per_tensor: usize) {
    let model = Model::parse(model_text, "test").unwrap();
    let plan: Plan = model.plan("test").unwrap();
    let data = Dataset::synthetic(&plan, batch_size, seed);
    let mut batch = Batch::default();
    data.gather(
        &(0..batch_size).collect::<Vec<_>>(),
        plan.loss(),
        &mut batch,
    );
    let mut net = Network::<f64>::new(&plan);
    loss_of(&mut net, &batch);
    net.backward().unwrap();
    let analytic: Vec<Vec<f64>> = net
        .params_and_grads_mut()
        .into_iter()
        .map(|(_, g)| g.to_vec())
        .collect();

    let h = 1e-6;
    for (t, all) in analytic.iter().enumerate() {
        let step = all.len().div_ceil(per_tensor.max(1)).max(1);
        let picked: Vec<usize> = (0..all.len()).step_by(step).collect();
        let expected: Vec<f64> = picked.iter().map(|&i| all[i]).collect();
        let mut numeric = Vec::with_capacity(expected.len());
        for &i in &picked {
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
        // Relative to the gradient's size, but at least 1e-2: a tensor whose true gradient is zero
        // (a bias right before batch normalisation) measures only rounding, about 1e-10.
        let scale = norm(&expected).max(norm(&numeric)).max(1e-2);
        assert!(
            diff / scale <= 1e-6,
            "parameter tensor {t}: relative error {:.2e}\nanalytic {expected:?}\nnumeric  {numeric:?}\nmodel {model_text}\nbatch {batch_size}, data seed {seed}",
            diff / scale
        );
    }
}
