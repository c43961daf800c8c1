//! Training the shipped models: it learns, it is deterministic, and counting does not change a
//! single bit of it.

use std::path::Path;

use opcount::data::Dataset;
use opcount::summary::TrainSummary;
use opcount::train::{LossHistory, Settings, evaluate, train};
use opcount::{Counted, Model, Network, Plan, Scalar, estimate};

fn load(name: &str) -> (Model, Plan, Dataset, Settings) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(name);
    let model = Model::load(&path).unwrap();
    let plan = model.plan(name).unwrap();
    let training = model.training.clone().unwrap();
    let data = Dataset::load(&training.data, path.parent().unwrap(), name, &plan).unwrap();
    (model, plan, data, Settings::of(&training))
}

/// Trains and returns every parameter's bits and every epoch's loss.
fn trained<S: Scalar>(name: &str, epochs: usize) -> (Vec<u32>, LossHistory, Network<S>) {
    let (_, plan, data, mut settings) = load(name);
    settings.epochs = epochs;
    let mut net = Network::<S>::new(&plan);
    let losses = train(&mut net, &data, &settings, |_| {}).unwrap();
    let bits = net
        .params()
        .iter()
        .flat_map(|tensor| tensor.iter())
        .map(|v| v.to_f32().unwrap().to_bits())
        .collect();
    (bits, losses, net)
}

#[test]
fn iris_reaches_95_percent_training_accuracy() {
    let (_, plan, data, settings) = load("iris.ron");
    let mut net = Network::<f32>::new(&plan);
    train(&mut net, &data, &settings, |_| {}).unwrap();
    let result = evaluate(&mut net, &data, settings.batch);
    let accuracy = result.accuracy().unwrap();
    assert!(accuracy >= 0.95, "accuracy {accuracy}");
}

#[test]
fn xor_classifies_all_four_examples() {
    let (_, plan, data, settings) = load("xor.ron");
    let mut net = Network::<f32>::new(&plan);
    train(&mut net, &data, &settings, |_| {}).unwrap();
    assert_eq!(evaluate(&mut net, &data, settings.batch).correct, Some(4));
}

#[test]
fn training_is_deterministic() {
    for name in ["iris.ron", "xor.ron"] {
        let (a, la, _) = trained::<f32>(name, 20);
        let (b, lb, _) = trained::<f32>(name, 20);
        assert_eq!(a, b, "{name}: weights differ run to run");
        assert_eq!(la, lb, "{name}: losses differ run to run");
    }
}

#[test]
fn counted_training_is_bit_identical_to_plain() {
    for name in ["iris.ron", "xor.ron"] {
        let (plain, plain_losses, _) = trained::<f32>(name, 15);
        let (counted, counted_losses, _) = trained::<Counted<f32>>(name, 15);
        assert_eq!(plain, counted, "{name}: weights differ");
        assert_eq!(plain_losses, counted_losses, "{name}: losses differ");
    }
}

#[test]
fn a_saved_model_loads_back_with_the_same_weights() {
    let (_, plan, data, _) = load("iris.ron");
    let (bits, _, net) = trained::<f32>("iris.ron", 5);
    let text = net.to_model().to_ron();
    let again = Model::parse(&text, "saved").unwrap();
    let plan_again = again.plan("saved").unwrap();
    let layout = |p: &opcount::Plan| -> Vec<(String, String)> {
        p.nodes()
            .iter()
            .map(|n| (n.name().to_string(), n.output().to_string()))
            .collect()
    };
    assert_eq!(layout(&plan), layout(&plan_again));
    let mut reloaded = Network::<f32>::new(&plan_again);
    let reloaded_bits: Vec<u32> = reloaded
        .params()
        .iter()
        .flat_map(|tensor| tensor.iter())
        .map(|v| v.to_bits())
        .collect();
    assert_eq!(bits, reloaded_bits);
    let mut original = net;
    assert_eq!(
        evaluate(&mut original, &data, 16),
        evaluate(&mut reloaded, &data, 16)
    );
}

/// A model with every operation that has parameters or state but dense and convolution
/// layers (which `a_saved_model_loads_back_with_the_same_weights` covers): a chain with batch
/// normalisation, whose two convolutions share a name (a chain's names are only labels).
const NORMALISED_CHAIN: &str = r#"(
    name: "normalised chain",
    input: [2, 5, 5],
    layers: [
        Conv2d(name: "c", out_channels: 3, kernel: 3, padding: 1),
        BatchNorm2d,
        Relu,
        Conv2d(name: "c", out_channels: 4, kernel: 3),
        BatchNorm2d,
        GlobalAvgPool2d,
        Dense(units: 3),
    ],
    loss: SoftmaxCrossEntropy,
    init: He(seed: 3),
)"#;

/// A GPT-style model at a tiny size: token and position tables, layer norms, attention, and
/// an output layer tied to the token table; trained with Adam.
const TINY_GPT: &str = r#"(
    name: "tiny gpt",
    input: [4],
    loss: SoftmaxCrossEntropy,
    init: Xavier(seed: 2),
    graph: [
        (name: "wte", op: Embedding(vocab: 6, width: 8)),
        (name: "wpe", op: PositionEmbedding(context: 5)),
        (name: "ln1", op: LayerNorm),
        (name: "q", op: Dense(units: 8)),
        (name: "k", op: Dense(units: 8), inputs: ["ln1"]),
        (name: "v", op: Dense(units: 8), inputs: ["ln1"]),
        (name: "scores", op: Scores(heads: 2), inputs: ["q", "k"]),
        (name: "probs", op: CausalSoftmax),
        (name: "mix", op: Mix(heads: 2), inputs: ["probs", "v"]),
        (name: "res", op: Add, inputs: ["wpe", "mix"]),
        (name: "lnf", op: LayerNorm),
        (name: "logits", op: Unembed(vocab: 6), share: "wte"),
    ],
    training: (data: Inline(inputs: [], targets: Classes([])), epochs: 1, lr: 0.01, batch: 4,
               optimizer: Adam()),
)"#;

/// Every parameter's bits, in storage order.
fn bits<S: Scalar>(net: &Network<S>) -> Vec<u32> {
    net.params()
        .iter()
        .flat_map(|tensor| tensor.iter())
        .map(|v| v.to_f32().unwrap().to_bits())
        .collect()
}

/// Trains `text`'s model a few steps on made-up data, saves it, loads the saved text back,
/// and checks that the reloaded network has the same parameters bit for bit, computes the
/// same loss and outputs, and saves to the same text (so state such as running statistics
/// came back too). Returns the saved text.
fn saved_and_reloaded(text: &str) -> String {
    let model = Model::parse(text, "m.ron").unwrap();
    let plan = model.plan("m.ron").unwrap();
    let data = Dataset::synthetic(&plan, 12, 7);
    let settings = Settings {
        epochs: 3,
        lr: 0.05,
        batch: 4,
        seed: 1,
    };
    let mut net = Network::<f32>::new(&plan);
    train(&mut net, &data, &settings, |_| {}).unwrap();
    let saved = net.to_model().to_ron();
    let again = Model::parse(&saved, "saved.ron").unwrap();
    let plan_again = again.plan("saved.ron").unwrap();
    assert_eq!(plan.params(), plan_again.params());
    let mut reloaded = Network::<f32>::new(&plan_again);
    assert_eq!(bits(&net), bits(&reloaded), "{}: parameters", plan.name());
    assert_eq!(
        evaluate(&mut net, &data, 5),
        evaluate(&mut reloaded, &data, 5),
        "{}: loss and accuracy",
        plan.name()
    );
    assert_eq!(
        net.output(),
        reloaded.output(),
        "{}: outputs of the last batch",
        plan.name()
    );
    assert_eq!(reloaded.to_model().to_ron(), saved, "{}", plan.name());
    saved
}

#[test]
fn every_operation_with_parameters_or_state_saves_and_loads_back() {
    for name in ["iris.ron", "iris-residual.ron", "digits-resnet.ron"] {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("models")
                .join(name),
        )
        .unwrap();
        saved_and_reloaded(&text);
    }
    let gpt = saved_and_reloaded(TINY_GPT);
    for name in [
        "\"wte\"",
        "\"wpe\"",
        "\"ln1\"",
        "\"lnf\"",
        "\"gamma\"",
        "\"table\"",
    ] {
        assert!(gpt.contains(name), "{name} in {gpt}");
    }
    // The tied table is written once, on the embedding that owns it.
    assert_eq!(
        gpt.matches("\"table\"").count(),
        2,
        "wte's and wpe's: {gpt}"
    );
    let chain = saved_and_reloaded(NORMALISED_CHAIN);
    // A chain whose batch normalisation has parameters to write is saved as a graph.
    assert!(
        chain.contains("graph:") && !chain.contains("layers:"),
        "{chain}"
    );
    assert!(chain.contains("\"running_var\""), "{chain}");
    assert!(chain.contains("name: \"c.2\""), "{chain}");
}

#[test]
fn running_statistics_are_saved_as_they_were_after_training() {
    let model = Model::parse(NORMALISED_CHAIN, "m.ron").unwrap();
    let plan = model.plan("m.ron").unwrap();
    let untrained = Network::<f32>::new(&plan).to_model();
    let bn = |m: &Model, name: &str| -> Vec<f32> {
        let entry = m
            .graph
            .iter()
            .find(|e| e.name.is_none() && matches!(e.op, opcount::model::Layer::BatchNorm2d))
            .unwrap();
        entry.params.as_ref().unwrap().get(name).unwrap().to_vec()
    };
    // Before any step: PyTorch's start, mean 0 and variance 1.
    assert_eq!(bn(&untrained, "running_mean"), [0.0; 3]);
    assert_eq!(bn(&untrained, "running_var"), [1.0; 3]);
    let data = Dataset::synthetic(&plan, 4, 1);
    let mut net = Network::<f32>::new(&plan);
    let settings = Settings {
        epochs: 1,
        lr: 0.05,
        batch: 4,
        seed: 1,
    };
    train(&mut net, &data, &settings, |_| {}).unwrap();
    let trained = net.to_model();
    assert_ne!(bn(&trained, "running_mean"), [0.0; 3]);
    assert_ne!(bn(&trained, "running_var"), [1.0; 3]);
}

#[test]
fn digits_resnet_classifies_held_out_digits_far_above_chance() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits-resnet.ron");
    let model = Model::load(&path).unwrap();
    let plan = model.plan("digits-resnet.ron").unwrap();
    let training = model.training.clone().unwrap();
    let (data, held_out) =
        Dataset::load_split(&training.data, path.parent().unwrap(), "digits", &plan).unwrap();
    let held_out = held_out.expect("a fifth of the rows");
    assert_eq!((data.len(), held_out.len()), (1437, 360));
    // One of its 30 epochs (87.5% held out; a debug build takes half a minute);
    // `opcount train models/digits-resnet.ron` runs all 30 (98.9%, docs/model-format.md).
    let settings = Settings {
        epochs: 1,
        ..Settings::of(&training)
    };
    let mut net = Network::<f32>::new(&plan);
    let summary = TrainSummary::train(&mut net, &data, Some(&held_out), &settings, |_| {}).unwrap();
    let held = summary.held_out.expect("evaluated on the held-out rows");
    assert_eq!((held.loss.epochs(), held.accuracy.epochs()), (1, 1));
    // Ten classes: chance is 10%.
    let accuracy = held.last.accuracy().unwrap();
    assert!(accuracy > 0.7, "held-out accuracy {accuracy}");
    assert_eq!(held.last.examples, 360);
    // Evaluating is not part of the counted step: the step is the closed form's, exactly.
    assert_eq!(
        summary.step,
        estimate::step(&plan, settings.batch).unwrap().totals()
    );
}

#[test]
fn evaluation_normalises_with_the_running_statistics() {
    // One channel of four values; after one step the running statistics are
    // mean 0.1 * 2.5 = 0.25 and variance 0.9 + 0.1 * (1.25 * 4 / 3), from PyTorch's formulas
    // (momentum 0.1, unbiased variance), and evaluation uses them, not the batch's.
    let model = Model::parse(
        "(name: \"bn\", input: [1, 2, 2], loss: Mse, graph: [(op: BatchNorm2d, params: {\"gamma\": [2.0], \"beta\": [0.5]})])",
        "bn.ron",
    )
    .unwrap();
    let plan = model.plan("bn.ron").unwrap();
    let mut net = Network::<f64>::new(&plan);
    let x = [1.0, 2.0, 3.0, 4.0];
    let batch = opcount::data::Batch {
        size: 1,
        inputs: x.to_vec(),
        classes: Vec::new(),
        values: vec![0.0; 4],
    };
    net.step(&batch, 0.0);
    let (mean, var) = (0.25, 0.9 + 0.1 * (1.25 * 4.0 / 3.0));
    let expected: Vec<f64> = x
        .iter()
        .map(|v| 2.0 * ((v - mean) * (1.0 / (var + 1e-5f64).sqrt())) + 0.5)
        .collect();
    assert_eq!(net.infer(&x, 1), &expected[..]);
    // Training mode still normalises by the batch: mean 2.5, variance 1.25.
    let out = net.forward(&x, 1).to_vec();
    let inv = 1.0 / (1.25f64 + 1e-5).sqrt();
    assert!(
        (out[0] - (2.0 * (-1.5 * inv) + 0.5)).abs() < 1e-12,
        "{out:?}"
    );
}
