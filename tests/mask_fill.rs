//! `MaskFill`, a fixed mask that broadcasts to a value's shape and puts a fixed number where
//! it is set (a causal mask's `-inf`), over random shapes and masks: measured equals closed
//! form (nothing, every phase) for every node; `Counted<f32>` gives plain `f32`'s bits; the
//! gradients through it match finite differences in f64; and a causal mask before a
//! softmax worked out by hand.

#[path = "support/counts.rs"]
mod counts;
#[path = "support/fixed.rs"]
mod fixed;
#[path = "support/gradient.rs"]
mod gradient;
#[path = "support/rng.rs"]
mod rng;

use opcount::{Counts, Model, Network, estimate};
use proptest::prelude::*;
use rng::Rng;

/// A `MaskFill` over `dims`: a mask of random rank whose sizes are each 1 or the input's,
/// each position set with probability one half, and a finite fill.
fn mask_fill(rng: &mut Rng, dims: &[usize]) -> String {
    let shape = fixed::spread_shape(rng, dims);
    let masked: Vec<&str> = (0..shape.iter().product::<usize>())
        .map(|_| ["false", "true"][rng.below(2)])
        .collect();
    let fill = rng.below(2001) as f64 / 1000.0 - 1.0;
    format!(
        "MaskFill(shape: {shape:?}, masked: [{}], fill: {fill})",
        masked.join(", ")
    )
}

fn random_model(rng: &mut Rng) -> (String, usize) {
    fixed::random_model(rng, mask_fill, "Softmax")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn random_masks_match_their_closed_forms_and_plain_bits(seed in any::<u64>()) {
        let (text, batch) = random_model(&mut Rng::new(seed));
        if let Err(problem) = counts::closed_form_and_plain_bits(&text, batch, seed) {
            prop_assert!(false, "{}", problem);
        }
    }
}

#[test]
fn gradients_through_a_mask_match_finite_differences() {
    let mut rng = Rng::new(33);
    for _ in 0..48 {
        let (text, batch) = random_model(&mut rng);
        gradient::check(&text, batch, rng.next_u64());
    }
}

/// A causal mask over `[2 heads, 3, 3]` scores at batch 2, then a softmax per row: the mask
/// counts nothing, the softmax computes all 36 of its exponentials (the masked ones give 0),
/// and each row's probabilities are those of its unmasked scores alone.
#[test]
fn a_causal_mask_before_a_softmax_keeps_each_row_to_its_past() {
    let text = "(name: \"causal\", input: [2, 3, 3], loss: Mse, layers: [
        MaskFill(shape: [3, 3], masked: [false, true, true, false, false, true, false, false, false], fill: -inf),
        Softmax,
    ])";
    let plan = Model::parse(text, "causal")
        .unwrap()
        .plan("causal")
        .unwrap();
    assert_eq!(plan.nodes()[0].name(), "mask1");
    assert_eq!(plan.nodes()[0].kind(), "mask_fill");
    let step = estimate::step(&plan, 2).unwrap();
    assert_eq!(step.nodes[0].all(), Counts::ZERO);
    assert_eq!(step.nodes[1].forward.exp, 36);
    let x: Vec<f64> = (0..36).map(|i| (i as f64 * 0.7).sin()).collect();
    let mut net = Network::<f64>::new(&plan);
    let y = net.forward(&x, 2).to_vec();
    for (row, (xs, ys)) in x.chunks(3).zip(y.chunks(3)).enumerate() {
        let seen = row % 3 + 1;
        let sum: f64 = xs[..seen].iter().map(|v| v.exp()).sum();
        for j in 0..3 {
            let want = if j < seen { xs[j].exp() / sum } else { 0.0 };
            assert!(
                (ys[j] - want).abs() < 1e-15,
                "row {row}, {j}: {} vs {want}",
                ys[j]
            );
        }
    }
}

#[test]
fn a_mask_that_does_not_broadcast_is_refused_naming_the_node() {
    let text = "(name: \"bad\", input: [2, 3], loss: Mse, layers: [
        MaskFill(shape: [2], masked: [true, false], fill: 0),
    ])";
    let err = Model::parse(text, "bad.ron")
        .unwrap()
        .plan("bad.ron")
        .unwrap_err()
        .to_string();
    assert!(err.contains("mask1"), "{err}");
    assert!(err.contains("does not broadcast"), "{err}");
}
