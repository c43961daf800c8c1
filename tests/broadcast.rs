//! `Broadcast` of two computed values over random shape pairs: the first input spread
//! against the second, the second against the first, and both spread (`[3, 1]` with
//! `[1, 4]`), with either input's gradient wanted or not. Measured equals closed form for
//! every node, phase and kind; `Counted<f32>` gives plain `f32`'s bits; the gradients
//! through it match finite differences in f64. The divisors of some are square roots
//! (`Sqrt`), which these check the same way.

#[path = "support/counts.rs"]
mod counts;
#[path = "support/gradient.rs"]
mod gradient;
#[path = "support/rng.rs"]
mod rng;

use opcount::{Counts, Model, Op, estimate};
use proptest::prelude::*;
use rng::Rng;

/// Two shapes that broadcast: for each, from one shape of rank 1 to 3 (sizes 1 to 3), some
/// of its axes made 1 and some leading axes dropped.
fn shapes(rng: &mut Rng) -> (Vec<usize>, Vec<usize>) {
    let rank = 1 + rng.below(3);
    let out: Vec<usize> = (0..rank).map(|_| 1 + rng.below(3)).collect();
    let mut input = || {
        let mut dims: Vec<usize> = out
            .iter()
            .map(|&d| if rng.below(2) == 0 { 1 } else { d })
            .collect();
        let dropped = rng.below(dims.len());
        dims.drain(..dropped);
        dims
    };
    (input(), input())
}

fn list(dims: &[usize]) -> String {
    let items: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    format!("[{}]", items.join(", "))
}

/// A model computing `a op b` for a random pair of shapes and operation: each input a dense
/// layer of the model's input read as its shape, or (its gradient then not wanted) the
/// model's input itself; a divisor kept away from zero (`sigmoid + 1`, or its square root);
/// then a dense head.
fn random_model(rng: &mut Rng) -> (String, usize) {
    let (a, b) = shapes(rng);
    let op = ["Add", "Sub", "Mul", "Div"][rng.below(4)];
    let len = |s: &[usize]| s.iter().product::<usize>();
    let raw = rng.below(3); // 0: neither input is the model's, 1: a is, 2: b is
    let input = match raw {
        1 => a.clone(),
        2 => b.clone(),
        _ => vec![1 + rng.below(3)],
    };
    // The dense layers read the input flat.
    let mut graph = vec![format!(
        "(name: \"in\", op: Reshape(shape: [{}]), inputs: [\"input\"])",
        len(&input)
    )];
    let mut value = |name: &str, dims: &[usize], is_input: bool| -> String {
        if is_input {
            return "input".into();
        }
        graph.push(format!(
            "(name: \"{name}_fc\", op: Dense(units: {}), inputs: [\"in\"])",
            len(dims)
        ));
        graph.push(format!(
            "(name: \"{name}\", op: Reshape(shape: {}), inputs: [\"{name}_fc\"])",
            list(dims)
        ));
        name.to_string()
    };
    let first = value("a", &a, raw == 1);
    let mut second = value("b", &b, raw == 2);
    if op == "Div" {
        graph.push(format!(
            "(name: \"gate\", op: Sigmoid, inputs: [\"{second}\"])"
        ));
        graph.push(
            "(name: \"den\", op: ConstOp(op: Add, values: [1.0]), inputs: [\"gate\"])".into(),
        );
        second = "den".into();
        if rng.below(2) == 0 {
            graph.push("(name: \"root\", op: Sqrt, inputs: [\"den\"])".into());
            second = "root".into();
        }
    }
    graph.push(format!(
        "(name: \"op\", op: Broadcast(op: {op}), inputs: [\"{first}\", \"{second}\"])"
    ));
    graph.push("(name: \"flat\", op: Reshape(shape: [OUT]), inputs: [\"op\"])".into());
    graph.push("(name: \"head\", op: Dense(units: 2), inputs: [\"flat\"])".into());
    let loss = ["Mse", "SoftmaxCrossEntropy"][rng.below(2)];
    let text = format!(
        "(name: \"b\", input: {}, loss: {loss}, init: Xavier(seed: {}), graph: [{}])",
        list(&input),
        rng.below(1000),
        graph.join(", ")
    );
    // The output's values: the broadcast shape's.
    let rank = a.len().max(b.len());
    let at = |s: &[usize], k: usize| (k + s.len()).checked_sub(rank).map_or(1, |i| s[i]);
    let n: usize = (0..rank).map(|k| at(&a, k).max(at(&b, k))).product();
    (text.replace("OUT", &n.to_string()), 1 + rng.below(3))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(160))]

    #[test]
    fn random_broadcasts_match_their_closed_forms_and_plain_bits(seed in any::<u64>()) {
        let (text, batch) = random_model(&mut Rng::new(seed));
        if let Err(problem) = counts::closed_form_and_plain_bits(&text, batch, seed) {
            prop_assert!(false, "{}", problem);
        }
    }
}

#[test]
fn gradients_through_broadcasts_match_finite_differences() {
    let mut rng = Rng::new(77);
    for _ in 0..60 {
        let (text, batch) = random_model(&mut rng);
        gradient::check(&text, batch, rng.next_u64());
    }
}

/// Each operation both ways round and with both inputs spread, by hand: `[3, 1]` and
/// `[1, 4]` make `[3, 4]`, 12 values per example.
#[test]
fn both_inputs_spread_count_as_worked_out_by_hand() {
    for (op, forward) in [
        ("Add", Op::Add),
        ("Sub", Op::Sub),
        ("Mul", Op::Mul),
        ("Div", Op::Div),
    ] {
        for (first, second) in [("col", "row"), ("row", "col")] {
            let text = format!(
                "(name: \"p\", input: [2], loss: Mse, graph: [
                    (name: \"c\", op: Dense(units: 3)), (name: \"col\", op: Reshape(shape: [3, 1])),
                    (name: \"r\", op: Dense(units: 4), inputs: [\"input\"]),
                    (name: \"s\", op: Sigmoid), (name: \"one\", op: ConstOp(op: Add, values: [1.0])),
                    (name: \"row\", op: Reshape(shape: [1, 4])),
                    (name: \"op\", op: Broadcast(op: {op}), inputs: [\"{first}\", \"{second}\"]),
                    (name: \"flat\", op: Reshape(shape: [12])), (name: \"out\", op: Dense(units: 1))])"
            );
            let plan = Model::parse(&text, "p").unwrap().plan("p").unwrap();
            let step = estimate::step(&plan, 2).unwrap();
            let node = &step.nodes[6];
            assert_eq!(node.forward, Counts::of(forward, 24), "{op} {first}");
            // Both gradients: 2 x 12 terms summed into 2 x 3 and 2 x 4 values.
            let (n, na, nb) = (
                24,
                if first == "col" { 6 } else { 8 },
                if first == "col" { 8 } else { 6 },
            );
            let sums = Counts::of(Op::Add, (n - na) + (n - nb));
            let backward = match op {
                "Add" => sums,
                "Sub" => sums + Counts::of(Op::Neg, nb),
                "Mul" => sums + Counts::of(Op::Mul, 2 * n),
                _ => {
                    sums + Counts::of(Op::Div, n) + Counts::of(Op::Mul, n) + Counts::of(Op::Neg, nb)
                }
            };
            assert_eq!(node.backward, backward, "{op} {first}");
            counts::closed_form_and_plain_bits(&text, 2, 5).unwrap();
        }
    }
}

/// Of two inputs of one shape, `Broadcast` counts what `Add`, `Sub`, `Mul` and `Div` count.
#[test]
fn of_one_shape_it_counts_as_the_same_shape_operations() {
    for op in ["Add", "Sub", "Mul", "Div"] {
        let model = |layer: &str| {
            format!(
                "(name: \"p\", input: [2, 3], loss: Mse, graph: [
                    (name: \"a\", op: Dense(units: 3)), (name: \"b\", op: Tanh),
                    (name: \"op\", op: {layer}, inputs: [\"a\", \"b\"]),
                    (name: \"out\", op: Dense(units: 1))])"
            )
        };
        let counted = |text: String| {
            let plan = Model::parse(&text, "p").unwrap().plan("p").unwrap();
            estimate::step(&plan, 3).unwrap().nodes[2]
        };
        let same = counted(model(op));
        let spread = counted(model(&format!("Broadcast(op: {op})")));
        assert_eq!(same.forward, spread.forward, "{op}");
        assert_eq!(same.backward, spread.backward, "{op}");
    }
}

/// `sqrt` of `[2, 3]` values at batch 4: 24 sqrt forward, 24 div and 24 mul backward.
#[test]
fn a_square_root_counts_one_sqrt_per_value_and_a_div_and_a_mul_back() {
    let text = "(name: \"r\", input: [6], loss: Mse, graph: [
        (name: \"fc\", op: Dense(units: 6)), (name: \"s\", op: Sigmoid),
        (name: \"root\", op: Sqrt), (name: \"out\", op: Dense(units: 1))])";
    let plan = Model::parse(text, "r").unwrap().plan("r").unwrap();
    let step = estimate::step(&plan, 4).unwrap();
    assert_eq!(step.nodes[2].forward, Counts::of(Op::Sqrt, 24));
    assert_eq!(
        step.nodes[2].backward,
        Counts::of(Op::Div, 24) + Counts::of(Op::Mul, 24)
    );
    counts::closed_form_and_plain_bits(text, 4, 3).unwrap();
    gradient::check(text, 4, 3);
}
