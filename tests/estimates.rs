//! The closed forms against real measured steps: equal for every node, phase and kind of
//! operation, on every shipped model and on random dense stacks.

use std::path::{Path, PathBuf};

use opcount::data::Dataset;
use opcount::model::Activation;
use opcount::report::Report;
use opcount::{Counts, Model, Phase, Plan, StepCounts, estimate, measure_step};
use proptest::prelude::*;

/// Models whose step is too big to run in the test suite; they are checked by
/// `opcount count` in the benchmarks, and their closed forms by their own tests.
const TOO_BIG_TO_RUN_HERE: [&str; 5] = [
    "vgg16",
    "resnet18",
    "mobilenet-v2",
    "gpt-char",
    "gpt2-small",
];

/// Steps above this many operations are not run in tests.
const RUN_BUDGET: u128 = 300_000_000;

fn shipped_models() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "ron"))
        .collect();
    paths.sort();
    paths
}

fn load(path: &Path) -> (Model, Plan, Dataset) {
    let model = Model::load(path).unwrap();
    let plan = model.plan(&path.display().to_string()).unwrap();
    let data = match &model.training {
        Some(t) => Dataset::load(&t.data, path.parent().unwrap(), "m", &plan).unwrap(),
        None => Dataset::synthetic(&plan, 7, 3),
    };
    (model, plan, data)
}

/// Asserts equality node by node, phase by phase, with the differing kinds in the message.
fn assert_same(measured: &StepCounts, estimated: &StepCounts, plan: &Plan, batch: usize) {
    for (k, (m, e)) in measured.nodes.iter().zip(&estimated.nodes).enumerate() {
        for phase in [Phase::Forward, Phase::Backward, Phase::Update] {
            if let Err(mismatch) = m.phase(phase).check(&e.phase(phase)) {
                panic!(
                    "{} batch {batch}: node {} ({}) {}: {mismatch}",
                    plan.name(),
                    k,
                    plan.nodes()[k].name(),
                    phase.name()
                );
            }
        }
    }
    if let Err(mismatch) = measured.loss.check(&estimated.loss) {
        panic!("{} batch {batch}: loss: {mismatch}", plan.name());
    }
}

#[test]
fn every_shipped_model_matches_its_closed_form_at_batch_1_and_7() {
    let mut run = 0;
    for path in shipped_models() {
        let (_, plan, data) = load(&path);
        for batch in [1, 7] {
            let estimated = estimate::step(&plan, batch).unwrap();
            if estimated.totals().all.total() > RUN_BUDGET {
                assert!(
                    TOO_BIG_TO_RUN_HERE.contains(&plan.name()),
                    "{} is too big to run in tests; list it in TOO_BIG_TO_RUN_HERE",
                    plan.name()
                );
                continue;
            }
            let measured = measure_step(&plan, &data, batch).predictable();
            assert_same(&measured, &estimated, &plan, batch);
            assert!(
                Report::new(&plan, batch, Some(measured), estimated)
                    .mismatches()
                    .is_empty()
            );
            run += 1;
        }
    }
    assert!(run >= 8, "only {run} model steps were run");
}

#[test]
fn the_classic_question_in_numbers() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/mlp-30-30-30.ron");
    let (_, plan, data) = load(&path);
    let step = measure_step(&plan, &data, 1);
    let dense: Vec<usize> = (0..plan.nodes().len())
        .filter(|&k| plan.nodes()[k].kind() == "dense")
        .collect();
    assert_eq!(dense, [0, 2]);
    // 30 x 30 + 30 x 30 = 1,800 multiplications forward, and as many additions: each of the
    // 60 neurons sums 30 products onto its bias.
    let forward_mul: u128 = dense.iter().map(|&k| step.nodes[k].forward.mul).sum();
    let forward_add: u128 = dense.iter().map(|&k| step.nodes[k].forward.add).sum();
    assert_eq!(forward_mul, 1_800);
    assert_eq!(forward_add, 1_800);
    // 60 activation calls, one per neuron.
    assert_eq!(step.totals().forward.act, 60);
    // Backward: a derivative for each of the 1,800 weights (one product each at batch 1)
    // and 60 biases (no arithmetic at batch 1: db = dz), plus dX of the second layer.
    assert_eq!(step.nodes[0].backward.mul, 900);
    assert_eq!(step.nodes[2].backward.mul, 900 + 900);
    // Update: every one of the 1,860 parameters gets one mul and one sub.
    assert_eq!(
        step.totals().update,
        Counts {
            mul: 1_860,
            sub: 1_860,
            ..Counts::ZERO
        }
    );
}

#[test]
fn the_xor_table_is_pinned() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/xor.ron");
    let (_, plan, data) = load(&path);
    let measured = measure_step(&plan, &data, 4);
    let estimated = estimate::step(&plan, 4).unwrap();
    let table = Report::new(&plan, 4, Some(measured), estimated).table();
    // Produced by `opcount count models/xor.ron --batch 4` and checked by hand against
    // docs/counting.md (e.g. dense1 backward: dW 4*2*2 mul, 3*2*2 add; db 3*2 add). Half
    // of XOR's eight input values are 0, and each meets 2 weights forward and 2 gradients
    // in dW: 8 multiplications by zero in each.
    let expected = "\
xor: one training step on a batch of 4, measured with CountedZeros<f32> next to the closed form
╭───┬────────────────┬─────────┬────────┬────────┬──────────┬─────┬─────┬───────┬─────┬──────────┬──────────┬───────────┬───┬────────╮
│ # │ layer          │ kind    │ output │ params │ phase    │ mul │ add │ other │ act │ mul by 0 │ measured │ estimated │ = │ share  │
├───┼────────────────┼─────────┼────────┼────────┼──────────┼─────┼─────┼───────┼─────┼──────────┼──────────┼───────────┼───┼────────┤
│ 0 │ dense1         │ dense   │ 2      │      6 │ forward  │  16 │  16 │     0 │   0 │        8 │       32 │        32 │ ✓ │  14.2% │
│   │                │         │        │        │ backward │  16 │  18 │     0 │   0 │        8 │       34 │        34 │ ✓ │  15.0% │
│   │                │         │        │        │ update   │   6 │   0 │     6 │   0 │        0 │       12 │        12 │ ✓ │   5.3% │
│ 1 │ dense1.sigmoid │ sigmoid │ 2      │      0 │ forward  │   0 │   8 │    24 │   8 │        0 │       32 │        32 │ ✓ │  14.2% │
│   │                │         │        │        │ backward │  16 │   0 │     8 │   0 │        0 │       24 │        24 │ ✓ │  10.6% │
│ 2 │ dense2         │ dense   │ 1      │      3 │ forward  │   8 │   8 │     0 │   0 │        0 │       16 │        16 │ ✓ │   7.1% │
│   │                │         │        │        │ backward │  16 │   9 │     0 │   0 │        0 │       25 │        25 │ ✓ │  11.1% │
│   │                │         │        │        │ update   │   3 │   0 │     3 │   0 │        0 │        6 │         6 │ ✓ │   2.7% │
│ 3 │ dense2.sigmoid │ sigmoid │ 1      │      0 │ forward  │   0 │   4 │    12 │   4 │        0 │       16 │        16 │ ✓ │   7.1% │
│   │                │         │        │        │ backward │   8 │   0 │     4 │   0 │        0 │       12 │        12 │ ✓ │   5.3% │
│   │ loss           │ mse     │        │        │ loss     │   8 │   3 │     6 │   0 │        0 │       17 │        17 │ ✓ │   7.5% │
│   │ total          │         │        │      9 │ forward  │  24 │  36 │    36 │  12 │        8 │       96 │        96 │ ✓ │  42.5% │
│   │                │         │        │        │ loss     │   8 │   3 │     6 │   0 │        0 │       17 │        17 │ ✓ │   7.5% │
│   │                │         │        │        │ backward │  56 │  27 │    12 │   0 │        8 │       95 │        95 │ ✓ │  42.0% │
│   │                │         │        │        │ update   │   9 │   0 │     9 │   0 │        0 │       18 │        18 │ ✓ │   8.0% │
│   │                │         │        │        │ step     │  97 │  66 │    63 │  12 │       16 │      226 │       226 │ ✓ │ 100.0% │
╰───┴────────────────┴─────────┴────────┴────────┴──────────┴─────┴─────┴───────┴─────┴──────────┴──────────┴───────────┴───┴────────╯
parameters: 9
backward/forward: 0.99x the arithmetic operations (DeepSpeed and calflops assume 2x)
every measured count equals its closed form
";
    assert_eq!(table, expected);
}

#[test]
fn a_mismatch_is_reported_per_node_phase_and_kind() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/xor.ron");
    let (_, plan, _) = load(&path);
    let estimated = estimate::step(&plan, 2).unwrap();
    let mut measured = estimated.clone();
    measured.nodes[2].backward.add += 1;
    let report = Report::new(&plan, 2, Some(measured), estimated);
    let mismatches = report.mismatches();
    assert_eq!(mismatches.len(), 1);
    assert_eq!(
        mismatches[0].to_string(),
        format!(
            "dense2 backward add: measured {}, closed form {}",
            mismatches[0].estimated + 1,
            mismatches[0].estimated
        )
    );
    assert!(report.table().contains("✗"));
}

fn dense_stack() -> impl Strategy<Value = (String, usize)> {
    let layer = (
        1usize..64,
        proptest::option::of(0..Activation::ALL.len()),
        any::<bool>(),
    );
    (
        1usize..64,
        proptest::collection::vec(layer, 1..=4),
        any::<bool>(),
        1usize..=8,
        any::<u64>(),
    )
        .prop_map(|(input, layers, mse, batch, seed)| {
            let n = layers.len();
            let mut text = Vec::new();
            for (i, (units, act, bias)) in layers.into_iter().enumerate() {
                // Cross-entropy needs at least 2 logits from the last layer and no softmax.
                let last = i + 1 == n;
                let units = if last && !mse { units.max(2) } else { units };
                let act = act.map(|a| Activation::ALL[a]).filter(|&a| {
                    !(last && !mse && a == Activation::Softmax)
                });
                let act = act.map_or(String::new(), |a| format!(", activation: {a:?}"));
                text.push(format!("Dense(units: {units}, bias: {bias}{act})"));
            }
            let loss = if mse { "Mse" } else { "SoftmaxCrossEntropy" };
            let model = format!(
                "(name: \"random\", input: [{input}], loss: {loss}, init: He(seed: {}), layers: [{}])",
                seed % 1000,
                text.join(", ")
            );
            (model, batch)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_dense_stacks_match_their_closed_forms((text, batch) in dense_stack()) {
        let model = Model::parse(&text, "random").unwrap();
        let plan = model.plan("random").unwrap();
        let data = Dataset::synthetic(&plan, batch, 5);
        let measured = measure_step(&plan, &data, batch).predictable();
        let estimated = estimate::step(&plan, batch).unwrap();
        assert_same(&measured, &estimated, &plan, batch);
    }
}

/// A softmax over the last axis of `[3, 4]` values at batch 2 works on 2 x 3 rows of 4
/// (docs/counting.md, per row): forward 6 x 3 cmp, 24 sub, 24 exp, 6 x 3 add, 24 div;
/// backward 48 mul, 6 x 3 add, 24 sub. Measured the same, and on an image's rows too.
#[test]
fn softmax_over_the_last_axis_counts_per_row() {
    let text = "(name: \"rows\", input: [3, 5], loss: Mse,
        layers: [Dense(units: 4), Softmax])";
    let plan = Model::parse(text, "rows").unwrap().plan("rows").unwrap();
    let step = estimate::step(&plan, 2).unwrap();
    let softmax = &step.nodes[1];
    let forward = Counts {
        cmp: 18,
        sub: 24,
        exp: 24,
        add: 18,
        div: 24,
        act: 24,
        ..Counts::ZERO
    };
    assert_eq!(softmax.forward, forward);
    let backward = Counts {
        mul: 48,
        add: 18,
        sub: 24,
        ..Counts::ZERO
    };
    assert_eq!(softmax.backward, backward);
    for (text, batch) in [
        (text, 2),
        (
            "(name: \"image\", input: [2, 3, 5], loss: Mse,
              layers: [Conv2d(out_channels: 3, kernel: 1), Softmax, Flatten, Dense(units: 2)])",
            3,
        ),
    ] {
        let plan = Model::parse(text, "m").unwrap().plan("m").unwrap();
        let data = Dataset::synthetic(&plan, batch, 5);
        let measured = measure_step(&plan, &data, batch).predictable();
        assert_same(
            &measured,
            &estimate::step(&plan, batch).unwrap(),
            &plan,
            batch,
        );
    }
}
