//! `MatMul` of two computed values, `Transpose` and `Reshape`, attention written out, over
//! random shapes: measured equals closed form for every node, phase and kind; `Counted<f32>`
//! gives plain `f32`'s bits; the gradients through them match finite differences in f64.

#[path = "support/counts.rs"]
mod counts;
#[path = "support/gradient.rs"]
mod gradient;
#[path = "support/rng.rs"]
mod rng;

use opcount::{Counts, Model, Op, estimate};
use proptest::prelude::*;
use rng::Rng;

/// Single-head attention on `[t, w]` (`softmax(q kᵀ / s) v`, `k` transposed), or a product
/// per channel of an image with its own transpose (`[c, h, w]` times `[c, w, h]`); a batch.
fn random_model(rng: &mut Rng) -> (String, usize) {
    let d = |rng: &mut Rng| 1 + rng.below(4);
    let graph = if rng.below(2) == 0 {
        let (t, w, k, n) = (d(rng), d(rng), d(rng), d(rng));
        format!(
            "input: [{t}, {w}], graph: [
                (name: \"q\", op: Dense(units: {k}), inputs: [\"input\"]),
                (name: \"k\", op: Dense(units: {k}), inputs: [\"input\"]),
                (name: \"v\", op: Dense(units: {n}), inputs: [\"input\"]),
                (name: \"kt\", op: Transpose(perm: [1, 0]), inputs: [\"k\"]),
                (name: \"s\", op: MatMul, inputs: [\"q\", \"kt\"]),
                (name: \"scaled\", op: ConstOp(op: Div, values: [2.0]), inputs: [\"s\"]),
                (name: \"p\", op: Softmax, inputs: [\"scaled\"]),
                (name: \"mix\", op: MatMul, inputs: [\"p\", \"v\"]),
                (name: \"flat\", op: Reshape(shape: [{tn}]), inputs: [\"mix\"]),
                (name: \"out\", op: Dense(units: 2), inputs: [\"flat\"]),
            ]",
            tn = t * n
        )
    } else {
        let (c, h, w, m) = (d(rng), d(rng), d(rng), d(rng));
        format!(
            "input: [{c}, {h}, {w}], graph: [
                (name: \"conv\", op: Conv2d(out_channels: {m}, kernel: 1), inputs: [\"input\"]),
                (name: \"t\", op: Transpose(perm: [0, 2, 1]), inputs: [\"conv\"]),
                (name: \"gram\", op: MatMul, inputs: [\"conv\", \"t\"]),
                (name: \"tanh\", op: Tanh, inputs: [\"gram\"]),
                (name: \"flat\", op: Flatten, inputs: [\"tanh\"]),
                (name: \"out\", op: Dense(units: 2), inputs: [\"flat\"]),
            ]"
        )
    };
    let loss = ["Mse", "SoftmaxCrossEntropy"][rng.below(2)];
    let text = format!(
        "(name: \"p\", {graph}, loss: {loss}, init: Xavier(seed: {}))",
        rng.below(1000)
    );
    (text, 1 + rng.below(4))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn random_products_match_their_closed_forms_and_plain_bits(seed in any::<u64>()) {
        let (text, batch) = random_model(&mut Rng::new(seed));
        if let Err(problem) = counts::closed_form_and_plain_bits(&text, batch, seed) {
            prop_assert!(false, "{}", problem);
        }
    }
}

#[test]
fn gradients_through_products_match_finite_differences() {
    let mut rng = Rng::new(31);
    for _ in 0..40 {
        let (text, batch) = random_model(&mut rng);
        gradient::check(&text, batch, rng.next_u64());
    }
}

/// `q kᵀ` of `[5, 4]` queries and keys at batch 2: 2 x 5 x 5 outputs of 4 products each
/// (4 mul, 3 add); backward both inputs' gradients, per value of q 5 mul and 4 add, per
/// value of kᵀ 5 mul and 4 add. The transpose counts nothing.
#[test]
fn scores_count_k_products_per_output() {
    let text = "(name: \"s\", input: [5, 6], loss: Mse, graph: [
        (name: \"q\", op: Dense(units: 4), inputs: [\"input\"]),
        (name: \"k\", op: Dense(units: 4), inputs: [\"input\"]),
        (name: \"kt\", op: Transpose(perm: [1, 0]), inputs: [\"k\"]),
        (name: \"s\", op: MatMul, inputs: [\"q\", \"kt\"]),
    ])";
    let plan = Model::parse(text, "s").unwrap().plan("s").unwrap();
    let step = estimate::step(&plan, 2).unwrap();
    let scores = &step.nodes[3];
    assert_eq!(
        scores.forward,
        Counts::of(Op::Mul, 2 * 25 * 4) + Counts::of(Op::Add, 2 * 25 * 3)
    );
    let per_input = Counts::of(Op::Mul, 2 * 20 * 5) + Counts::of(Op::Add, 2 * 20 * 4);
    assert_eq!(scores.backward, per_input + per_input);
    assert_eq!(step.nodes[2].forward + step.nodes[2].backward, Counts::ZERO);
    counts::measured_equals_closed_form(text, 2, 1).unwrap();
}
