//! The registry of operations (`src/nn/ops.rs`) is the one list of what a model may use:
//! each operation and activation it names is documented where users and reviewers look, and
//! the fuzz dictionary is made from it (`examples/fuzz_dictionary.rs`).

use opcount::model::{Activation, OPERATIONS};

fn doc(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs")
        .join(name);
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn every_operation_is_documented_in_the_model_format_and_the_counting_rules() {
    let (format, counting) = (doc("model-format.md"), doc("counting.md"));
    let activations = Activation::ALL.map(|a| format!("{a:?}"));
    for name in OPERATIONS
        .iter()
        .copied()
        .chain(activations.iter().map(|s| s.as_str()))
    {
        assert!(
            format.contains(&format!("`{name}")),
            "docs/model-format.md: no `{name}`"
        );
        // A heading or a table row of its own says how it counts.
        let lower = name.to_lowercase();
        let named = counting.lines().any(|line| {
            let line = line.to_lowercase();
            (line.starts_with('#') || line.starts_with('|'))
                && line
                    .split(|c: char| !c.is_alphanumeric())
                    .any(|word| word == lower)
        });
        assert!(named, "docs/counting.md has no heading or row for {name}");
    }
}

#[test]
fn every_activation_is_also_a_layer_of_its_own() {
    for a in Activation::ALL {
        let text =
            format!("(name: \"a\", input: [3], loss: Mse, layers: [{a:?}, Dense(units: 1)])");
        let plan = opcount::Model::parse(&text, "a")
            .unwrap()
            .plan("a")
            .unwrap();
        assert_eq!(plan.nodes()[0].kind(), a.name());
        assert_eq!(plan.nodes()[0].name(), format!("{}1", a.name()));
    }
}

/// One training step of a model holding `layers`, with `f32` and with `Counted<f32>`: the
/// loss, the output and every parameter afterwards, bit for bit.
fn plain_and_counted_agree(text: &str) {
    use opcount::data::Dataset;
    use opcount::{Counted, Network};
    let model = opcount::Model::parse(text, "m").unwrap();
    let plan = model.plan("m").unwrap();
    let data = Dataset::synthetic(&plan, 3, 9);
    let mut plain = Network::<f32>::new(&plan);
    let mut counted = Network::<Counted<f32>>::new(&plan);
    let a = plain.step(&data.head(3, plan.loss()), 0.1);
    let b = counted.step(&data.head(3, plan.loss()), Counted::new(0.1));
    assert_eq!(a.to_bits(), b.get().to_bits(), "{text}: loss");
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for (p, q) in plain.params().iter().zip(counted.params()) {
        assert_eq!(
            bits(p),
            bits(&Counted::unwrap_slice(q)),
            "{text}: parameters"
        );
    }
    assert_eq!(
        bits(plain.output()),
        bits(&Counted::unwrap_slice(counted.output())),
        "{text}: output"
    );
}

#[test]
fn every_operation_is_bit_identical_counted_and_plain() {
    for a in Activation::ALL {
        plain_and_counted_agree(&format!(
            "(name: \"a\", input: [5], loss: Mse, layers: [Dense(units: 4, activation: {a:?}), Dense(units: 2)])"
        ));
    }
    plain_and_counted_agree(
        "(name: \"c\", input: [2, 9, 8], loss: SoftmaxCrossEntropy, layers: [
            Conv2d(out_channels: 3, kernel: 3, stride: 2, padding: 1), BatchNorm2d, MaxPool2d(size: 2),
            Conv2d(out_channels: 2, kernel: 1), AvgPool2d(size: 1, stride: 2), Flatten,
            Dense(units: 3)])",
    );
    plain_and_counted_agree(
        "(name: \"d\", input: [4, 9, 8], loss: Mse, layers: [
            Conv2d(out_channels: 4, kernel: 3, stride: 2, padding: 1, groups: 4, bias: false),
            BatchNorm2d, Relu6,
            Conv2d(out_channels: 6, kernel: (1, 3), stride: (2, 1), padding: (0, 1), groups: 2),
            Flatten, Dense(units: 2)])",
    );
    plain_and_counted_agree(
        "(name: \"t\", input: [5, 3], loss: Mse, layers: [
            Dense(units: 4, activation: Gelu), LayerNorm, Dense(units: 2, bias: false)])",
    );
    plain_and_counted_agree(
        "(name: \"e\", input: [6], loss: Mse, graph: [
            (name: \"wte\", op: Embedding(vocab: 5, width: 4)),
            (name: \"wpe\", op: PositionEmbedding(context: 8)),
            (name: \"ln\", op: LayerNorm),
            (name: \"logits\", op: Unembed(vocab: 5), share: \"wte\")])",
    );
    plain_and_counted_agree(
        "(name: \"attention\", input: [5, 4], loss: Mse, graph: [
            (name: \"q\", op: Dense(units: 4)),
            (name: \"k\", op: Dense(units: 4), inputs: [\"input\"]),
            (name: \"s\", op: Scores(heads: 2), inputs: [\"q\", \"k\"]),
            (name: \"p\", op: CausalSoftmax),
            (name: \"o\", op: Mix(heads: 2), inputs: [\"p\", \"q\"])])",
    );
    plain_and_counted_agree(
        "(name: \"g\", input: [4], loss: Mse, graph: [
            (name: \"a\", op: Dense(units: 4, activation: Tanh)),
            (name: \"b\", op: Dense(units: 4), share: \"a\"),
            (name: \"s\", op: Add, inputs: [\"a\", \"b\"]),
            (name: \"out\", op: Dense(units: 1))])",
    );
    plain_and_counted_agree(
        "(name: \"q\", input: [4], loss: Mse, graph: [
            (name: \"a\", op: Dense(units: 4)),
            (name: \"b\", op: Dense(units: 4), inputs: [\"input\"]),
            (name: \"gate\", op: Sigmoid, inputs: [\"b\"]),
            (name: \"den\", op: ConstOp(op: Add, values: [1.0]), inputs: [\"gate\"]),
            (name: \"scaled\", op: Div, inputs: [\"input\", \"den\"]),
            (name: \"quot\", op: Div, inputs: [\"a\", \"den\"]),
            (name: \"diff\", op: Sub, inputs: [\"quot\", \"scaled\"]),
            (name: \"out\", op: Dense(units: 1))])",
    );
    plain_and_counted_agree(
        "(name: \"silu\", input: [4], loss: Mse, graph: [
            (name: \"a\", op: Dense(units: 4)),
            (name: \"gate\", op: Sigmoid),
            (name: \"silu\", op: Mul, inputs: [\"a\", \"gate\"]),
            (name: \"square\", op: Mul, inputs: [\"silu\", \"silu\"]),
            (name: \"out\", op: Dense(units: 1))])",
    );
}
