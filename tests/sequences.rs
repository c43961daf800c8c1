//! Values of shape `[tokens, width]`, the transformer's: every operation over them counted
//! exactly (measured equals closed form for every node, phase and kind, over random shapes),
//! gradients against finite differences, and each operation against an oracle.

#[path = "support/counts.rs"]
mod counts;
#[path = "support/gradient.rs"]
mod gradient;
#[path = "support/sequences.rs"]
mod sequences;

use opcount::data::Dataset;
use opcount::rng::Rng;
use opcount::{Model, Network, Plan, estimate, measure_step};
use proptest::prelude::*;
use sequences::random_sequence;

fn plan(text: &str) -> Plan {
    Model::parse(text, "t").unwrap().plan("t").unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn random_sequence_models_match_their_closed_forms(seed in any::<u64>()) {
        let model = random_sequence(&mut Rng::new(seed), false);
        if let Err(problem) = counts::measured_equals_closed_form(&model.text, model.batch, seed) {
            prop_assert!(false, "{}", problem);
        }
    }
}

#[test]
fn random_sequence_models_match_finite_differences() {
    let mut rng = Rng::new(14);
    for _ in 0..24 {
        let model = random_sequence(&mut rng, true);
        gradient::check(&model.text, model.batch, rng.next_u64());
    }
}

/// A dense layer over `[tokens, width]` is the same layer applied to every token: B examples
/// of T tokens compute exactly what B*T examples of one token compute, and count the same.
#[test]
fn a_dense_layer_over_tokens_is_one_row_per_token() {
    let (t, n, b) = (5, 3, 2);
    let layers = "layers: [Dense(units: 4, activation: Gelu), Dense(units: 2, bias: false)]";
    let tokens = plan(&format!(
        "(name: \"s\", input: [{t}, {n}], loss: Mse, {layers})"
    ));
    let rows = plan(&format!("(name: \"s\", input: [{n}], loss: Mse, {layers})"));
    assert_eq!(tokens.nodes()[2].output().dims(), [t, 2]);
    assert_eq!(tokens.params(), rows.params());
    assert_eq!(
        estimate::step(&tokens, b).unwrap(),
        estimate::step(&rows, b * t).unwrap()
    );
    let inputs: Vec<f64> = (0..b * t * n).map(|i| (i as f64 * 0.37).sin()).collect();
    let y_tokens = Network::<f64>::new(&tokens).forward(&inputs, b).to_vec();
    let y_rows = Network::<f64>::new(&rows).forward(&inputs, b * t).to_vec();
    assert_eq!(y_tokens, y_rows);
    let data = Dataset::synthetic(&tokens, b, 4);
    assert_eq!(
        measure_step(&tokens, &data, b).predictable(),
        estimate::step(&tokens, b).unwrap()
    );
}

#[test]
fn a_dense_layer_refuses_an_image() {
    let text = "(name: \"i\", input: [2, 3, 4], loss: Mse, layers: [Dense(units: 2)])";
    let err = Model::parse(text, "i.ron")
        .unwrap()
        .plan("i.ron")
        .unwrap_err()
        .to_string();
    assert!(err.contains("found 2x3x4; add a Flatten layer"), "{err}");
}

/// Each token's features come out of a LayerNorm with mean 0 and variance var / (var + eps)
/// (gamma starts at one, beta at zero), whatever the token's scale: checked in f64 against
/// the mean and variance computed here.
#[test]
fn a_layer_norm_normalises_every_token_on_its_own() {
    let (t, d) = (3, 6);
    let p = plan(&format!(
        "(name: \"ln\", input: [{t}, {d}], loss: Mse, layers: [LayerNorm])"
    ));
    assert_eq!(p.params(), 2 * d as u128);
    let x: Vec<f64> = (0..t * d)
        .map(|i| (i / d + 1) as f64 * 10.0 * (i as f64 * 1.3).sin())
        .collect();
    let y = Network::<f64>::new(&p).forward(&x, 1).to_vec();
    for (row, out) in x.chunks(d).zip(y.chunks(d)) {
        let mean = row.iter().sum::<f64>() / d as f64;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
        for (v, o) in row.iter().zip(out) {
            let want = (v - mean) / (var + 1e-5).sqrt();
            assert!((o - want).abs() < 1e-12, "{o} vs {want}");
        }
    }
}

#[test]
fn the_generator_makes_every_sequence_operation() {
    let mut rng = Rng::new(3);
    let all: String = (0..100)
        .map(|_| random_sequence(&mut rng, false).text)
        .collect();
    for wanted in ["op: Add", "op: LayerNorm", "op: Dense", "op: Gelu"] {
        assert!(all.contains(wanted), "no model has {wanted}");
    }
}
