//! Training the shipped models: it learns, it is deterministic, and counting does not change a
//! single bit of it.

use std::path::Path;

use opcount::data::Dataset;
use opcount::train::{LossHistory, Settings, evaluate, train};
use opcount::{Counted, Model, Network, Plan, Scalar};

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
