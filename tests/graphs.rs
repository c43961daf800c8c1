//! Networks as graphs: branches, joins and shared parameters are counted exactly (measured
//! equals closed form for every node, phase and kind, the gradients that add up included),
//! their gradients match finite differences, and the residual iris model learns.

#[path = "support/counts.rs"]
mod counts;
#[path = "support/gradient.rs"]
mod gradient;
#[path = "support/graphs.rs"]
mod graphs;
#[path = "support/rng.rs"]
mod rng;
#[path = "support/values.rs"]
mod values;

use gradient::check;
use graphs::random_graph;
use opcount::data::Dataset;
use opcount::train::{Settings, evaluate, train};
use opcount::{Model, Network, estimate, measure_step};
use proptest::prelude::*;
use rng::Rng;

fn iris_residual() -> (Model, opcount::Plan) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/iris-residual.ron");
    let model = Model::load(&path).unwrap();
    let plan = model.plan("iris-residual.ron").unwrap();
    (model, plan)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn random_graphs_match_their_closed_forms(seed in any::<u64>()) {
        let graph = random_graph(&mut Rng::new(seed), false);
        if let Err(problem) = counts::measured_equals_closed_form(&graph.text, graph.batch, seed) {
            prop_assert!(false, "{}", problem);
        }
    }
}

#[test]
fn random_graphs_match_finite_differences() {
    let mut rng = Rng::new(21);
    for _ in 0..24 {
        let graph = random_graph(&mut rng, true);
        check(&graph.text, graph.batch, rng.next_u64());
    }
}

#[test]
fn the_generator_makes_branches_joins_and_shared_parameters() {
    let mut rng = Rng::new(2);
    let all: String = (0..100)
        .map(|_| random_graph(&mut rng, false).text)
        .collect();
    for wanted in [
        "op: Add",
        "op: Mul",
        "op: Sub",
        "share: ",
        "inputs: [\"input\"]",
        "op: Relu",
    ] {
        assert!(all.contains(wanted), "no graph has {wanted}");
    }
}

#[test]
fn the_residual_iris_model_matches_finite_differences() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/iris-residual.ron");
    let text = std::fs::read_to_string(path).unwrap();
    check(&text, 4, 7);
}

/// The stem's output is read by fc1 and by the sum. Backward runs last node first, so the
/// sum writes that gradient and fc1 adds its own onto it: B x 16 additions in fc1's backward
/// phase, on top of a dense layer's own (docs/counting.md, "Graphs").
#[test]
fn a_value_read_twice_adds_its_gradients_in_the_earlier_reader() {
    let (_, plan) = iris_residual();
    let names: Vec<&str> = plan.nodes().iter().map(|n| n.name()).collect();
    assert_eq!(
        names,
        ["stem", "stem.tanh", "fc1", "fc1.tanh", "fc2", "sum", "head"]
    );
    let b = 5u128;
    let step = estimate::step(&plan, b as usize).unwrap();
    // A dense 16 -> 16 layer's own backward adds at batch B (docs/counting.md, "Dense"):
    // (B-1)*N*M for the weights, (B-1)*M for the biases, B*N*(M-1) for its input's gradient.
    let dense = (b - 1) * 256 + (b - 1) * 16 + b * 16 * 15;
    assert_eq!(
        step.nodes[4].backward.add, dense,
        "fc2 reads fc1.tanh alone"
    );
    assert_eq!(
        step.nodes[2].backward.add,
        dense + b * 16,
        "fc1 adds onto sum's"
    );
    // The sum passes its gradient to both inputs: copies, no arithmetic.
    assert_eq!(step.nodes[5].backward.total(), 0);
    assert_eq!(plan.nodes()[2].input_grad_adds(), [true]);
    // Measured the same.
    let data = Dataset::synthetic(&plan, 5, 1);
    assert_eq!(measure_step(&plan, &data, 5).predictable(), step);
}

/// Two dense layers share one set of parameters: the second's gradients add onto the
/// first's (one add per parameter, in the earlier user's backward), the update touches them
/// once, and the model counts them once.
#[test]
fn shared_parameters_add_their_gradients_and_update_once() {
    let text = "(name: \"tied\", input: [3], loss: Mse, graph: [
        (name: \"a\", op: Dense(units: 3, activation: Tanh)),
        (name: \"b\", op: Dense(units: 3), share: \"a\"),
        (name: \"out\", op: Dense(units: 2)),
    ])";
    let model = Model::parse(text, "tied.ron").unwrap();
    let plan = model.plan("tied.ron").unwrap();
    assert_eq!(plan.params(), 12 + 8);
    let step = estimate::step(&plan, 2).unwrap();
    let [a, _, b, _] = [0, 1, 2, 3].map(|k| &step.nodes[k]);
    assert_eq!(a.update.mul, 12, "the owner updates the shared tensors");
    assert_eq!(b.update.mul, 0, "the user does not update them again");
    // a's backward: a dense 3 -> 3 layer at batch 2 without its input's gradient
    // ((B-1)*N*M + (B-1)*M adds), plus one add per shared parameter onto b's gradients.
    assert_eq!(a.backward.add, 9 + 3 + 12);
    assert_eq!(plan.nodes()[0].param_grad_adds(), [true, true]);
    assert_eq!(plan.nodes()[2].param_grad_adds(), [false, false]);
    let data = Dataset::synthetic(&plan, 2, 3);
    assert_eq!(measure_step(&plan, &data, 2).predictable(), step);
    check(text, 2, 5);
}

#[test]
fn the_residual_iris_model_learns_to_95_percent() {
    let (model, plan) = iris_residual();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let training = model.training.clone().unwrap();
    let data = Dataset::load(&training.data, &path, "iris-residual.ron", &plan).unwrap();
    let mut net = Network::<f32>::new(&plan);
    train(&mut net, &data, &Settings::of(&training), |_| {}).unwrap();
    let accuracy = evaluate(&mut net, &data, training.batch)
        .accuracy()
        .unwrap();
    assert!(accuracy >= 0.95, "accuracy {accuracy}");
}

#[test]
fn passes_out_of_order_are_errors_not_panics() {
    let (_, plan) = iris_residual();
    let mut net = Network::<f64>::new(&plan);
    assert!(net.backward().is_err());
    let data = Dataset::synthetic(&plan, 2, 1);
    let batch = data.head::<f64>(2, plan.loss());
    assert!(net.loss(&batch).is_err());
    net.forward(&batch.inputs, 2);
    net.loss(&batch).unwrap();
    net.backward().unwrap();
    assert!(
        net.backward().is_err(),
        "a second backward needs a new forward pass"
    );
}

/// Mul's backward (`da = dy b`, `db = dy a`), a gate and a value multiplied by itself,
/// against finite differences, and its counts against the closed form.
#[test]
fn a_gated_graph_with_mul_matches_finite_differences() {
    let text = "(name: \"silu\", input: [3], loss: Mse, graph: [
        (name: \"a\", op: Dense(units: 4)),
        (name: \"gate\", op: Sigmoid),
        (name: \"silu\", op: Mul, inputs: [\"a\", \"gate\"]),
        (name: \"square\", op: Mul, inputs: [\"silu\", \"silu\"]),
        (name: \"out\", op: Dense(units: 2))])";
    check(text, 3, 5);
    counts::measured_equals_closed_form(text, 3, 5).unwrap();
}

/// A model of Sub and Div at `width` values: each with both gradients wanted, and with only
/// the second's or the first's (the model's input has none); the divisor `sigmoid(b) + 1`,
/// kept in (1, 2).
fn sub_div_model(width: usize) -> String {
    format!(
        "(name: \"q\", input: [{width}], loss: Mse, graph: [
        (name: \"a\", op: Dense(units: {width}), inputs: [\"input\"]),
        (name: \"b\", op: Dense(units: {width}), inputs: [\"input\"]),
        (name: \"gate\", op: Sigmoid, inputs: [\"b\"]),
        (name: \"den\", op: ConstOp(op: Add, values: [1.0]), inputs: [\"gate\"]),
        (name: \"scaled\", op: Div, inputs: [\"input\", \"den\"]),
        (name: \"quot\", op: Div, inputs: [\"a\", \"den\"]),
        (name: \"diff\", op: Sub, inputs: [\"input\", \"quot\"]),
        (name: \"diff2\", op: Sub, inputs: [\"scaled\", \"diff\"]),
        (name: \"zero\", op: Sub, inputs: [\"diff2\", \"diff2\"]),
        (name: \"both\", op: Add, inputs: [\"diff2\", \"zero\"]),
        (name: \"out\", op: Dense(units: 2), inputs: [\"both\"])])"
    )
}

/// Sub's backward (`da = dy`, `db = -dy`) and Div's (`q = dy / b`, `da = q`, `db = -(q y)`)
/// against finite differences, and their counts against the closed form, over random widths
/// and batches.
#[test]
fn differences_and_quotients_match_finite_differences_and_the_closed_form() {
    let mut rng = Rng::new(31);
    for _ in 0..12 {
        let (width, batch) = (1 + rng.below(6), 1 + rng.below(4));
        let text = sub_div_model(width);
        let seed = rng.next_u64();
        check(&text, batch, seed);
        counts::measured_equals_closed_form(&text, batch, seed).unwrap();
        // Only the first input's gradient: the second is the model's input (counts only: a
        // made-up input may be too near zero for finite differences through a division).
        let first_only = format!(
            "(name: \"d\", input: [{width}], loss: Mse, graph: [
            (name: \"a\", op: Dense(units: {width})),
            (name: \"q\", op: Div, inputs: [\"a\", \"input\"]),
            (name: \"s\", op: Sub, inputs: [\"q\", \"input\"]),
            (name: \"out\", op: Dense(units: 2))])"
        );
        counts::measured_equals_closed_form(&first_only, batch, seed).unwrap();
    }
}
