//! Published figures of LeNet-5, VGG-16, ResNet-18 and MobileNetV2, reproduced from the
//! closed form and from measured runs.
//!
//! Sources: LeNet-5's 61,706 parameters and per-layer multiplications are the standard
//! figures for its modern form (conv 6@5x5 and 16@5x5 with biases, dense 120-84-10); VGG-16's
//! 138,357,544 parameters and 15,470,264,320 forward multiply-adds are torchvision's
//! (`torchvision.models.vgg16`, reported there as 15.47 GFLOPS). MobileNetV2's 3,504,872
//! parameters and 300,774,272 forward multiply-accumulates are torchvision's
//! (`torchvision.models.mobilenet_v2`, listed there as 0.30 GFLOPS).

use std::path::Path;

use opcount::data::Dataset;
use opcount::model::Layer;
use opcount::{Model, Plan, StepCounts, estimate, measure_step};

fn load(name: &str) -> (Model, Plan) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(name);
    let model = Model::load(&path).unwrap();
    let plan = model.plan(name).unwrap();
    (model, plan)
}

/// Forward multiplications of each convolution and dense node, in order.
fn weighted_sums(plan: &Plan, step: &StepCounts) -> Vec<u128> {
    plan.nodes()
        .iter()
        .zip(&step.nodes)
        .filter(|(n, _)| matches!(n.kind(), "conv2d" | "dense"))
        .map(|(_, c)| c.forward.mul)
        .collect()
}

#[test]
fn lenet5_closed_form_and_measured_run_give_the_published_figures() {
    let (_, plan) = load("lenet5.ron");
    assert_eq!(plan.params(), 61_706);
    let estimated = estimate::step(&plan, 1).unwrap();
    let per_layer = [117_600, 240_000, 48_000, 10_080, 840];
    assert_eq!(weighted_sums(&plan, &estimated), per_layer);
    assert_eq!(per_layer.iter().sum::<u128>(), 416_520);

    let data = Dataset::synthetic(&plan, 1, 9);
    let measured = measure_step(&plan, &data, 1);
    assert_eq!(weighted_sums(&plan, &measured), per_layer);
    assert_eq!(measured.predictable(), estimated);
}

#[test]
fn vgg16_closed_form_gives_the_published_figures() {
    let (_, plan) = load("vgg16.ron");
    assert_eq!(plan.params(), 138_357_544);
    let estimated = estimate::step(&plan, 1).unwrap();
    let sums = weighted_sums(&plan, &estimated);
    assert_eq!(sums.len(), 13 + 3);
    assert_eq!(sums.iter().sum::<u128>(), 15_470_264_320);
    // Each forward sum starts from its bias: as many additions as multiplications.
    let adds: u128 = plan
        .nodes()
        .iter()
        .zip(&estimated.nodes)
        .filter(|(n, _)| matches!(n.kind(), "conv2d" | "dense"))
        .map(|(_, c)| c.forward.add)
        .sum();
    assert_eq!(adds, 15_470_264_320);
}

/// ResNet-18 (torchvision's `resnet18`): 11,689,512 parameters, and 1,814,073,344
/// multiply-accumulates in its convolutions and dense layer forward, which torchvision lists
/// as 1.81 "GFLOPS". The full-size step is measured by `opcount count models/resnet18.ron`
/// (every count equal to its closed form); here the same graph is measured at 32x32, where
/// it runs in the test suite, through every operation it has.
#[test]
fn resnet18_gives_the_published_figures_and_its_graph_measures_as_its_closed_form() {
    let (mut model, plan) = load("resnet18.ron");
    assert_eq!(plan.params(), 11_689_512);
    let estimated = estimate::step(&plan, 1).unwrap();
    let sums = weighted_sums(&plan, &estimated);
    assert_eq!(
        sums.len(),
        20 + 1,
        "17 3x3/7x7 and 3 downsampling convolutions, 1 dense"
    );
    assert_eq!(sums.iter().sum::<u128>(), 1_814_073_344);

    model.input = vec![3, 32, 32];
    let small = model.plan("resnet18 at 32x32").unwrap();
    let data = Dataset::synthetic(&small, 1, 4);
    assert_eq!(
        measure_step(&small, &data, 1).predictable(),
        estimate::step(&small, 1).unwrap()
    );
}

/// MobileNetV2 (torchvision's `mobilenet_v2`, width 1.0): 3,504,872 parameters, and
/// 300,774,272 multiply-accumulates in its convolutions (pointwise, depthwise and the stem)
/// and dense layer forward, which torchvision lists as 0.30 "GFLOPS". The full-size step is
/// measured by `opcount count models/mobilenet-v2.ron` (every count equal to its closed form);
/// here the same graph is measured at 32x32, through every operation it has.
#[test]
fn mobilenet_v2_gives_the_published_figures_and_its_graph_measures_as_its_closed_form() {
    let (mut model, plan) = load("mobilenet-v2.ron");
    assert_eq!(plan.params(), 3_504_872);
    let estimated = estimate::step(&plan, 1).unwrap();
    let sums = weighted_sums(&plan, &estimated);
    assert_eq!(
        sums.len(),
        1 + 17 * 3 - 1 + 1 + 1,
        "the stem, 3 convolutions in each of 17 blocks but the first (2), the last 1x1, 1 dense"
    );
    assert_eq!(sums.iter().sum::<u128>(), 300_774_272);
    // The 17 depthwise convolutions: a 3x3 window of one channel per output value, 9
    // multiply-accumulates each.
    let depthwise: Vec<&str> = model
        .graph
        .iter()
        .filter(|e| matches!(e.op, Layer::Conv2d { groups, .. } if groups > 1))
        .map(|e| e.name.as_deref().unwrap())
        .collect();
    assert_eq!(depthwise.len(), 17);
    for (node, counts) in plan.nodes().iter().zip(&estimated.nodes) {
        if depthwise.contains(&node.name()) {
            let outputs = node.output().len() as u128;
            assert_eq!(counts.forward.mul, 9 * outputs, "{}", node.name());
        }
    }

    model.input = vec![3, 32, 32];
    let small = model.plan("mobilenet-v2 at 32x32").unwrap();
    let data = Dataset::synthetic(&small, 1, 4);
    assert_eq!(
        measure_step(&small, &data, 1).predictable(),
        estimate::step(&small, 1).unwrap()
    );
}
