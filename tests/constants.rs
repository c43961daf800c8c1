//! `ConstOp`, a value and a fixed constant that broadcasts to its shape (`x / 8`, `x - mean`,
//! `x * scale`), over random shapes and broadcasts: measured equals closed form for every
//! node, phase and kind; `Counted<f32>` gives plain `f32`'s bits; the gradients through it
//! match finite differences in f64; and one case worked out by hand.

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

const OPS: [&str; 5] = ["Add", "Sub", "SubFrom", "Mul", "Div"];

/// A `ConstOp` over `dims`: a random operation and a constant of random rank whose sizes are
/// each 1 or the input's, values in [0.5, 2) with a random sign (never zero).
fn const_op(rng: &mut Rng, dims: &[usize]) -> String {
    let shape = fixed::spread_shape(rng, dims);
    let values: Vec<String> = (0..shape.iter().product::<usize>())
        .map(|_| {
            let v = 0.5 + 1.5 * (rng.below(1000) as f64 / 1000.0);
            format!("{}", if rng.below(2) == 0 { v } else { -v })
        })
        .collect();
    format!(
        "ConstOp(op: {}, shape: {shape:?}, values: [{}])",
        OPS[rng.below(OPS.len())],
        values.join(", ")
    )
}

fn random_model(rng: &mut Rng) -> (String, usize) {
    fixed::random_model(rng, const_op, "Tanh")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn random_constants_match_their_closed_forms_and_plain_bits(seed in any::<u64>()) {
        let (text, batch) = random_model(&mut Rng::new(seed));
        if let Err(problem) = counts::closed_form_and_plain_bits(&text, batch, seed) {
            prop_assert!(false, "{}", problem);
        }
    }
}

#[test]
fn gradients_through_a_constant_match_finite_differences() {
    let mut rng = Rng::new(21);
    for _ in 0..48 {
        let (text, batch) = random_model(&mut rng);
        gradient::check(&text, batch, rng.next_u64());
    }
}

/// Attention's `1/sqrt(d)` as exporters write it, on `[4, 8]` values at batch 3: 96 values,
/// one division each forward, and one each backward (the dense layer before it wants the
/// gradient); the constant on the input computes its 3 x 4 x 6 subtractions forward only.
#[test]
fn a_division_by_a_constant_counts_one_division_per_value_each_way() {
    let text = "(name: \"scaled\", input: [4, 6], loss: Mse, layers: [
        ConstOp(op: Sub, shape: [6], values: [1, 2, 3, 4, 5, 6]),
        Dense(units: 8),
        ConstOp(op: Div, values: [2.8284271]),
    ])";
    let plan = Model::parse(text, "scaled")
        .unwrap()
        .plan("scaled")
        .unwrap();
    let step = estimate::step(&plan, 3).unwrap();
    assert_eq!(plan.nodes()[0].kind(), "sub_const");
    assert_eq!(plan.nodes()[2].name(), "const2");
    assert_eq!(step.nodes[0].forward, Counts::of(opcount::Op::Sub, 72));
    assert_eq!(step.nodes[0].backward, Counts::ZERO);
    assert_eq!(step.nodes[2].forward, Counts::of(opcount::Op::Div, 96));
    assert_eq!(step.nodes[2].backward, Counts::of(opcount::Op::Div, 96));
    assert_eq!(step.nodes[2].update, Counts::ZERO);
    assert_eq!(plan.nodes()[2].params(), 0);
    counts::measured_equals_closed_form(text, 3, 1).unwrap();
    // The forward pass computes (x - c) W / s: PyTorch's numbers for these inputs are not
    // needed, plain f64 arithmetic is the oracle.
    let mut net = Network::<f64>::new(&plan);
    let x: Vec<f64> = (0..24).map(|i| i as f64 / 10.0).collect();
    let y = net.forward(&x, 1).to_vec();
    let mut twin = Model::parse(
        &text.replace(
            "ConstOp(op: Sub, shape: [6], values: [1, 2, 3, 4, 5, 6]),",
            "",
        ),
        "twin",
    )
    .unwrap()
    .plan("twin")
    .map(|p| Network::<f64>::new(&p))
    .unwrap();
    let shifted: Vec<f64> = x
        .iter()
        .enumerate()
        .map(|(i, v)| v - (1 + i % 6) as f64)
        .collect();
    let expected: Vec<f64> = twin.forward(&shifted, 1).to_vec();
    assert_eq!(y, expected);
}

#[test]
fn a_constant_that_does_not_broadcast_is_refused_naming_the_node() {
    let text = "(name: \"bad\", input: [2, 3], loss: Mse, layers: [
        ConstOp(op: Mul, shape: [2], values: [1, 2]),
    ])";
    let err = Model::parse(text, "bad.ron")
        .unwrap()
        .plan("bad.ron")
        .unwrap_err()
        .to_string();
    assert!(err.contains("const1"), "{err}");
    assert!(err.contains("does not broadcast"), "{err}");
}
