//! ONNX models (tests/onnx/, made by tests/onnx/make.py from PyTorch): each counts exactly
//! as its RON twin, measured equals closed form, the weights are read in the right order
//! (opcount's forward pass against PyTorch's outputs), and every malformed file in
//! tests/onnx/bad/ is refused with exit code 2 and one line.

#[path = "support/cli.rs"]
mod cli;

use std::path::{Path, PathBuf};

use cli::{opcount_in, root, stderr};
use opcount::budget::Budget;
use opcount::data::Dataset;
use opcount::onnx::{self, Import};
use opcount::{Model, Network, Phase, Plan, StepCounts, estimate, measure_step};
use proptest::prelude::*;
use serde_json::json;

fn dir() -> PathBuf {
    root().join("tests/onnx")
}

fn load_onnx(name: &str, import: &Import) -> opcount::Result<Plan> {
    let path = dir().join(format!("{name}.onnx"));
    onnx::load_within(&path, &mut Budget::unlimited(), import)?.plan(name)
}

fn load_ron(name: &str) -> Plan {
    let path = dir().join(format!("{name}.ron"));
    Model::load(&path).unwrap().plan(name).unwrap()
}

/// The ONNX files that have a RON twin.
fn twins() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .filter(|p| p.with_extension("ron").exists())
        .map(|p| p.file_stem().unwrap().to_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// Every node's kind, shape, parameters and closed form, node by node.
fn closed_forms(plan: &Plan, batch: usize) -> Vec<String> {
    let step = estimate::step(plan, batch).unwrap();
    let mut rows: Vec<String> = plan
        .nodes()
        .iter()
        .zip(&step.nodes)
        .map(|(n, c)| {
            format!(
                "{} {} {} {:?}",
                n.kind(),
                n.output(),
                n.params(),
                [Phase::Forward, Phase::Backward, Phase::Update].map(|p| c.phase(p))
            )
        })
        .collect();
    rows.push(format!("loss {:?} params {}", step.loss, plan.params()));
    rows
}

fn assert_measured_is_closed_form(plan: &Plan, batch: usize, what: &str) {
    let data = Dataset::synthetic(plan, batch, 7);
    let measured: StepCounts = measure_step(plan, &data, batch);
    let estimated = estimate::step(plan, batch).unwrap();
    assert_eq!(measured.predictable(), estimated, "{what} at batch {batch}");
}

#[test]
fn every_onnx_file_counts_as_its_ron_twin_and_measured_equals_closed_form() {
    let names = twins();
    assert!(names.len() >= 15, "{names:?}");
    for name in &names {
        let plan = load_onnx(name, &Import::default()).unwrap_or_else(|e| panic!("{e}"));
        let twin = load_ron(name);
        assert_eq!(plan.loss(), twin.loss(), "{name}");
        for batch in [1, 3] {
            assert_eq!(
                closed_forms(&plan, batch),
                closed_forms(&twin, batch),
                "{name} at batch {batch}"
            );
        }
        assert_measured_is_closed_form(&plan, 3, name);
    }
}

/// The acceptance figure: a ResNet-style model exported by PyTorch (tests/onnx/make.py:
/// stem, two residual blocks, a 1x1 downsampling shortcut, pooling, a dense head) counts
/// the multiply-accumulates its RON twin and the closed form count, and the number worked
/// out here by hand.
#[test]
fn the_exported_resnet_counts_its_convolutions_and_dense_layer() {
    let plan = load_onnx("resnet", &Import::default()).unwrap();
    let twin = load_ron("resnet");
    // Per example, outputs x window: stem 8x16x16 x 3x3x3; block 1, two of 8x16x16 x 8x3x3;
    // block 2, 16x8x8 x 8x3x3 and 16x8x8 x 16x3x3; the shortcut 16x8x8 x 8; the head 10 x 16.
    let by_hand = 8 * 16 * 16 * 27
        + 2 * 8 * 16 * 16 * 72
        + 16 * 8 * 8 * 72
        + 16 * 8 * 8 * 144
        + 16 * 8 * 8 * 8
        + 10 * 16;
    assert_eq!(by_hand, 579_744);
    let macs = |plan: &Plan, step: &StepCounts| -> u128 {
        plan.nodes()
            .iter()
            .zip(&step.nodes)
            .filter(|(n, _)| matches!(n.kind(), "conv2d" | "dense"))
            .map(|(_, c)| c.phase(Phase::Forward).mul)
            .sum()
    };
    let batch = 2;
    let data = Dataset::synthetic(&plan, batch, 1);
    let measured = measure_step(&plan, &data, batch);
    let closed = estimate::step(&plan, batch).unwrap();
    let twin_closed = estimate::step(&twin, batch).unwrap();
    assert_eq!(macs(&plan, &measured), 2 * by_hand as u128);
    assert_eq!(macs(&plan, &closed), 2 * by_hand as u128);
    assert_eq!(macs(&twin, &twin_closed), 2 * by_hand as u128);
    assert_eq!(plan.params(), 5_266);
    let kinds: Vec<&str> = plan.nodes().iter().map(|n| n.kind()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "batchnorm2d").count(), 6);
    assert_eq!(kinds.iter().filter(|k| **k == "add").count(), 2);
}

/// A batch of two inputs and PyTorch's outputs for them, from `name.io`.
fn oracle(name: &str) -> Option<(Vec<f64>, Vec<f64>)> {
    let text = std::fs::read_to_string(dir().join(format!("{name}.io"))).ok()?;
    let mut lines = text.lines().map(|l| {
        l.split_whitespace()
            .map(|v| v.parse::<f64>().unwrap())
            .collect::<Vec<_>>()
    });
    Some((lines.next()?, lines.next()?))
}

#[test]
fn the_forward_pass_gives_pytorchs_outputs() {
    let mut checked = 0;
    for name in twins() {
        let Some((x, want)) = oracle(&name) else {
            continue;
        };
        let plan = load_onnx(&name, &Import::default()).unwrap();
        let mut net = Network::<f64>::new(&plan);
        let y = net.forward(&x, 2);
        assert_eq!(y.len(), want.len(), "{name}");
        for (i, (a, b)) in y.iter().zip(&want).enumerate() {
            // The weights went through f32, PyTorch computed in f64 from the same f32 values.
            assert!(
                (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                "{name}: output {i} is {a}, PyTorch gives {b}"
            );
        }
        checked += 1;
    }
    assert!(checked >= 12, "{checked}");
}

#[test]
fn symbolic_sizes_come_from_input_shape() {
    let import = |shape: &[usize]| Import {
        input_shape: Some(shape.to_vec()),
        ..Import::default()
    };
    let err = load_onnx("symbolic", &Import::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("3xHxW per example"), "{err}");
    let plan = load_onnx("symbolic", &import(&[3, 8, 8])).unwrap();
    assert_eq!(plan.nodes()[0].output().to_string(), "4x8x8");
    assert_measured_is_closed_form(&plan, 2, "symbolic");
    let err = load_onnx("symbolic", &import(&[4, 8, 8]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("weights for 3 input channels, but its input has 4"),
        "{err}"
    );
    let err = load_onnx("relu", &import(&[9])).unwrap_err().to_string();
    assert!(
        err.contains("input 'x' is 8 per example, but --input-shape says 9"),
        "{err}"
    );
}

#[test]
fn the_loss_is_chosen_or_given() {
    use opcount::model::Loss;
    // A flat output that is already a softmax is not logits: mean squared error.
    assert_eq!(
        load_onnx("softmax", &Import::default()).unwrap().loss(),
        Loss::Mse
    );
    assert_eq!(
        load_onnx("relu", &Import::default()).unwrap().loss(),
        Loss::SoftmaxCrossEntropy
    );
    let mse = Import {
        loss: Some(Loss::Mse),
        ..Import::default()
    };
    assert_eq!(load_onnx("relu", &mse).unwrap().loss(), Loss::Mse);
}

#[test]
fn the_exact_gelu_counts_as_itself_or_as_the_tanh_form_when_asked() {
    // Both spellings, the five nodes of opset 17 and opset 20's Gelu node, are one GeluErf.
    for name in ["gelu_erf", "gelu_erf20"] {
        let plan = load_onnx(name, &Import::default()).unwrap();
        let kinds: Vec<&str> = plan.nodes().iter().map(|n| n.kind()).collect();
        assert_eq!(kinds, ["dense", "gelu_erf", "dense"], "{name}");
        assert_eq!(closed_forms(&plan, 2), closed_forms(&load_ron(name), 2));
        assert_measured_is_closed_form(&plan, 2, name);
    }
    // Asked to, its five nodes are one tanh-form Gelu: the same model as gelu.onnx's twin.
    let tanh = Import {
        gelu_as_tanh: true,
        ..Import::default()
    };
    let plan = load_onnx("gelu_erf", &tanh).unwrap();
    assert_eq!(closed_forms(&plan, 2), closed_forms(&load_ron("gelu"), 2));
    assert_measured_is_closed_form(&plan, 2, "gelu_erf");
}

#[test]
fn every_malformed_file_is_refused_with_one_line_and_exit_code_2() {
    let bad = dir().join("bad");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&bad)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    files.sort();
    assert!(files.len() >= 15, "{files:?}");
    for file in &files {
        let name = file.file_name().unwrap().to_str().unwrap();
        let expect = std::fs::read_to_string(file.with_extension("expect")).unwrap();
        let out = opcount_in(&bad, &["count", name, "--quiet"]);
        let stderr = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{name}: {stderr}");
        assert!(stderr.contains(name), "{name}: names no file: {stderr}");
        assert!(
            stderr.contains(expect.trim()),
            "{name}: expected {expect}found {stderr}"
        );
        assert!(out.stdout.is_empty(), "{name}");
    }
}

fn load_bytes(bytes: &[u8]) -> opcount::Result<Plan> {
    let file = tempfile::Builder::new().suffix(".onnx").tempfile().unwrap();
    std::fs::write(file.path(), bytes).unwrap();
    let mut budget = Budget::new(64 << 20, "set by a test");
    onnx::load_within(file.path(), &mut budget, &Import::default())?.plan("mutated")
}

fn resnet_bytes() -> Vec<u8> {
    std::fs::read(dir().join("resnet.onnx")).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Damaged bytes are an error or a model, never a panic, and a model that plans counts
    /// exactly.
    #[test]
    fn damaged_files_never_panic(
        cuts in prop::collection::vec((0usize..30_000, any::<u8>()), 1..6),
        keep in 0usize..30_000,
    ) {
        let mut bytes = resnet_bytes();
        for (at, b) in cuts {
            let n = bytes.len();
            bytes[at % n] = b;
        }
        bytes.truncate(keep.max(1));
        if let Ok(plan) = load_bytes(&bytes)
            && plan.memory_bytes(1, 4) < 64 << 20
        {
            assert_measured_is_closed_form(&plan, 1, "a damaged file");
        }
    }
}

#[test]
fn a_small_budget_refuses_the_file_not_the_machine() {
    let path = dir().join("resnet.onnx");
    let mut budget = Budget::new(1 << 10, "set by a test");
    let err = onnx::load_within(&path, &mut budget, &Import::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs about"), "{err}");
    assert!(Path::new(&path).exists());
}

#[test]
fn converted_models_load_back_and_count_the_same() {
    for name in twins() {
        let path = dir().join(format!("{name}.onnx"));
        let model = onnx::load_within(&path, &mut Budget::unlimited(), &Import::default()).unwrap();
        let plan = model.plan(&name).unwrap();
        for weights in [false, true] {
            let text = onnx::convert(&model, &name, weights);
            let again = Model::parse(&text, "converted.ron")
                .and_then(|m| m.plan("converted.ron"))
                .unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
            assert_eq!(closed_forms(&again, 2), closed_forms(&plan, 2), "{name}");
            if !weights {
                continue;
            }
            // The same weights: the same outputs, bit for bit.
            let x: Vec<f32> = (0..2 * plan.input().len())
                .map(|i| ((i * 7) % 5) as f32 * 0.25)
                .collect();
            let a = Network::<f32>::new(&plan).forward(&x, 2).to_vec();
            let b = Network::<f32>::new(&again).forward(&x, 2).to_vec();
            assert_eq!(a, b, "{name}");
        }
    }
}

#[test]
fn convert_writes_a_ron_file_the_commands_read() {
    let out = tempfile::Builder::new().suffix(".ron").tempfile().unwrap();
    let target = out.path().to_str().unwrap();
    let run = opcount_in(
        &dir(),
        &["convert", "resnet.onnx", "--output", target, "--weights"],
    );
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(stderr(&run).is_empty(), "{}", stderr(&run));
    let counted = |file: &str| {
        let out = opcount_in(
            &dir(),
            &["count", file, "--batch", "2", "--format", "json", "-q"],
        );
        assert!(out.status.success(), "{file}: {}", stderr(&out));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(json["totals"]["estimated"]["all"]["mul"].as_u64() > Some(1_000_000));
        json["totals"].clone()
    };
    assert_eq!(counted(target), counted("resnet.onnx"));
    let refused = opcount_in(&dir(), &["convert", "resnet.ron", "--output", target]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(stderr(&refused).contains("convert reads ONNX files"));
}

#[test]
fn the_command_line_takes_the_input_shape_and_the_loss_for_onnx_files_only() {
    let json = |args: &[&str]| {
        let out = opcount_in(&dir(), args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let report = json(&[
        "count",
        "symbolic.onnx",
        "--input-shape",
        "3,6,6",
        "--batch",
        "2",
        "--format",
        "json",
        "--loss",
        "mse",
    ]);
    assert_eq!(report["batch"], 2);
    assert_eq!(report["loss"]["name"], "mse");
    let refused = |args: &[&str], fragment: &str| {
        let out = opcount_in(&dir(), args);
        let stderr = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(fragment), "{args:?}: {stderr}");
    };
    refused(
        &["train", "relu.onnx"],
        "an ONNX model has no training block",
    );
    refused(
        &["count", "relu.ron", "--loss", "mse"],
        "--loss, --input-shape and --gelu-as-tanh are for ONNX models",
    );
    refused(
        &["count", "symbolic.onnx", "--input-shape", "3,0,6"],
        "expected one to three sizes of at least 1",
    );
    refused(
        &[
            "count",
            "symbolic.onnx",
            "--input-shape",
            "3,6,6",
            "--max-memory",
            "2K",
        ],
        "needs about",
    );
}

/// `--loss none`: the forward pass alone. Every file's forward closed form is the one it has
/// with a loss; the loss, the backward pass and the update count nothing, measured as
/// estimated; and the RON twin written with `loss: None` counts the same.
#[test]
fn without_a_loss_every_file_counts_its_forward_pass_alone() {
    use opcount::Counts;
    use opcount::model::Loss;
    let none = Import {
        loss: Some(Loss::None),
        ..Import::default()
    };
    for name in &twins() {
        let trained = load_onnx(name, &Import::default()).unwrap();
        let plan = load_onnx(name, &none).unwrap();
        assert_eq!(plan.loss(), Loss::None, "{name}");
        let (with_loss, alone) = (
            estimate::step(&trained, 3).unwrap(),
            estimate::step(&plan, 3).unwrap(),
        );
        assert_eq!(alone.loss, Counts::ZERO, "{name}");
        for (w, a) in with_loss.nodes.iter().zip(&alone.nodes) {
            assert_eq!(a.forward, w.forward, "{name}");
            assert_eq!(
                (a.backward, a.update),
                (Counts::ZERO, Counts::ZERO),
                "{name}"
            );
        }
        assert_eq!(alone.totals().all, with_loss.totals().forward, "{name}");
        assert_measured_is_closed_form(&plan, 3, name);
        // The twin, its loss replaced by `None`, is the same model.
        let text = std::fs::read_to_string(dir().join(format!("{name}.ron"))).unwrap();
        let text = text
            .replace("loss: SoftmaxCrossEntropy", "loss: None")
            .replace("loss: Mse", "loss: None");
        let twin = Model::parse(&text, name).unwrap().plan(name).unwrap();
        assert_eq!(twin.loss(), Loss::None, "{name}");
        assert_eq!(closed_forms(&twin, 3), closed_forms(&plan, 3), "{name}");
    }
}

#[test]
fn every_report_says_a_model_without_a_loss_is_counted_forward_only() {
    let run = |args: &[&str]| {
        let out = opcount_in(&dir(), args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let count = ["count", "resnet.onnx", "--loss", "none", "--batch", "2"];
    let table = run(&count);
    assert!(
        table.starts_with(
            "resnet: the forward pass alone (loss none: no backward pass, no update) on a batch of 2"
        ),
        "{table}"
    );
    assert!(
        table.contains("backward/forward: none, forward only (loss none)\n"),
        "{table}"
    );
    assert!(
        table.contains("every measured count equals its closed form"),
        "{table}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&run(&[&count[..], &["--format", "json"]].concat())).unwrap();
    assert_eq!(report["forward_only"], true);
    assert_eq!(report["loss"]["name"], "none");
    assert_eq!(report["backward_forward_ratio"], serde_json::Value::Null);
    let totals = &report["totals"]["measured"];
    let nothing = |c: &serde_json::Value| c.as_object().unwrap().values().all(|n| n == 0);
    for phase in ["loss", "backward", "update"] {
        assert!(nothing(&totals[phase]), "{phase}: {totals}");
    }
    assert!(!nothing(&totals["forward"]), "{totals}");
    assert_eq!(totals["all"], totals["forward"]);
    // The resnet's 579,744 multiply-accumulates per example forward (docs/onnx.md), and
    // nothing else.
    let macs = run(&[&count[..], &["--convention", "mac", "--format", "json"]].concat());
    let macs: serde_json::Value = serde_json::from_str(&macs).unwrap();
    assert_eq!(macs["totals"]["estimated"]["all"], 2 * 579_744);
    assert_eq!(macs["totals"]["estimated"]["backward"], 0);
    let csv = run(&[&count[..], &["--format", "csv"]].concat());
    assert!(
        csv.lines().last().unwrap().starts_with(",loss,none,"),
        "{csv}"
    );
    let trained = run(&["count", "resnet.onnx", "--batch", "2"]);
    assert!(trained.starts_with("resnet: one training step on a batch of 2"));
    let project = run(&[
        "project",
        "resnet.onnx",
        "--loss",
        "none",
        "--examples",
        "10",
        "--epochs",
        "1",
    ]);
    assert!(
        project.contains("each step the forward pass alone (loss none"),
        "{project}"
    );
    let bench = run(&[
        "bench",
        "resnet.onnx",
        "--loss",
        "none",
        "--rounds",
        "1",
        "--format",
        "json",
    ]);
    let bench: serde_json::Value = serde_json::from_str(&bench).unwrap();
    assert_eq!(bench["forward_only"], true, "{bench}");
}

/// A constant added to a value it cannot be the bias of (the MatMul's output is read by
/// another node too) is a `ConstOp`: one add per value, and the MatMul keeps no bias.
#[test]
fn a_constant_that_cannot_be_a_bias_is_added_as_a_constant() {
    let plan = load_onnx("bias_shared", &Import::default()).unwrap();
    let kinds: Vec<&str> = plan.nodes().iter().map(|n| n.kind()).collect();
    assert_eq!(kinds, ["dense", "add_const", "add"]);
    assert_eq!(plan.params(), 4 * 3, "no bias");
    let step = estimate::step(&plan, 5).unwrap();
    assert_eq!(
        step.nodes[1].forward,
        opcount::Counts::of(opcount::Op::Add, 5 * 3)
    );
    assert_measured_is_closed_form(&plan, 5, "bias_shared");
}

/// The node of `plan` named `name`, and its closed form at `batch`.
fn node_counts(plan: &Plan, name: &str, batch: usize) -> (String, opcount::NodeCounts) {
    let k = plan
        .nodes()
        .iter()
        .position(|n| n.name() == name)
        .unwrap_or_else(|| panic!("no node {name}"));
    let step = estimate::step(plan, batch).unwrap();
    (plan.nodes()[k].kind().to_string(), step.nodes[k])
}

/// Broadcasting between computed values, exported from PyTorch, at batch 2: the
/// squeeze-excitation gate `[4, 1, 1]` times `[4, 5, 5]` (a multiply per output value, and
/// the gate's gradient a sum of 25 terms per channel: 24 adds), and the layer norm written
/// out on `[5, 6]`: `x - mean` and `d / sqrt(var + eps)` with the `[5, 1]` input's gradient
/// a sum of 6 terms per row (5 adds), negated once per row.
#[test]
fn broadcasting_between_computed_values_counts_the_sums_of_spread_gradients() {
    use opcount::{Counts, Op};
    let se = load_onnx("se_gate", &Import::default()).unwrap();
    let (kind, gate) = node_counts(&se, "/Mul", 2);
    assert_eq!(kind, "mul_bcast");
    assert_eq!(gate.forward, Counts::of(Op::Mul, 2 * 100));
    // dgate = sum over 25 values of dy x; dx = dy gate.
    let backward = Counts::of(Op::Mul, 2 * 2 * 100) + Counts::of(Op::Add, 2 * 4 * 24);
    assert_eq!(gate.backward, backward);

    let norm = load_onnx("layernorm_hand", &Import::default()).unwrap();
    let (kind, sub) = node_counts(&norm, "/Sub", 2);
    assert_eq!(kind, "sub_bcast");
    assert_eq!(sub.forward, Counts::of(Op::Sub, 2 * 30));
    let sums = Counts::of(Op::Add, 2 * 5 * 5) + Counts::of(Op::Neg, 2 * 5);
    assert_eq!(sub.backward, sums);
    let (kind, div) = node_counts(&norm, "/Div", 2);
    assert_eq!(kind, "div_bcast");
    assert_eq!(div.forward, Counts::of(Op::Div, 2 * 30));
    let quotients = Counts::of(Op::Div, 2 * 30) + Counts::of(Op::Mul, 2 * 30);
    assert_eq!(div.backward, quotients + sums);
    let (kind, root) = node_counts(&norm, "/Sqrt", 2);
    assert_eq!(kind, "sqrt");
    assert_eq!(root.forward, Counts::of(Op::Sqrt, 2 * 5));
    // The mean over the last axis: a pooling of each row, 5 adds and 1 div per row.
    let (kind, mean) = node_counts(&norm, "/ReduceMean", 2);
    assert_eq!(kind, "globalavgpool2d");
    assert_eq!(
        mean.forward,
        Counts::of(Op::Add, 2 * 5 * 5) + Counts::of(Op::Div, 2 * 5)
    );
    // `d ** 2` is d times itself.
    assert_eq!(node_counts(&norm, "/Pow", 2).0, "mul");
    for (plan, name) in [(&se, "se_gate"), (&norm, "layernorm_hand")] {
        assert_measured_is_closed_form(plan, 2, name);
    }
}

/// `opcount train` on an ONNX file, its data from the command line: what one training step
/// of the report counts, measured with `Counted<f32>`, against the closed form at that batch.
fn train_json(cwd: &Path, args: &[&str]) -> serde_json::Value {
    let out = opcount_in(cwd, &[args, &["--format", "json", "--quiet"]].concat());
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The closed form of a step of an ONNX file at `batch`, as `opcount train` reports a step.
fn step_closed_form(name: &str, import: &Import, batch: usize) -> serde_json::Value {
    let plan = load_onnx(name, import).unwrap();
    opcount::report::totals_json(&estimate::step(&plan, batch).unwrap().totals(), false)
}

#[test]
fn an_onnx_model_trains_on_made_up_examples() {
    let json = train_json(
        &dir(),
        &[
            "train",
            "resnet.onnx",
            "--synthetic",
            "12",
            "--batch",
            "8",
            "--epochs",
            "2",
        ],
    );
    assert_eq!(
        (&json["examples"], &json["epochs"], &json["batch"]),
        (&json!(12), &json!(2), &json!(8))
    );
    assert_eq!(json["lr"].as_f64().unwrap() as f32, 0.01);
    assert_eq!(json["params"], 5_266);
    assert!(json["final_loss"].as_f64().unwrap().is_finite(), "{json}");
    assert_eq!(
        json["step"],
        step_closed_form("resnet", &Import::default(), 8)
    );

    // The defaults: one epoch, batch 32, here the whole 5 examples.
    let json = train_json(&dir(), &["train", "relu.onnx", "--synthetic", "5"]);
    assert_eq!((&json["epochs"], &json["batch"]), (&json!(1), &json!(5)));
    assert_eq!(
        json["step"],
        step_closed_form("relu", &Import::default(), 5)
    );
    // The table says the examples were made up.
    let out = opcount_in(
        &dir(),
        &["train", "relu.onnx", "--synthetic", "5", "--quiet"],
    );
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.starts_with("relu: 195 parameters, 5 examples, 1 epochs, batch 5"),
        "{table}"
    );
    assert!(
        table.contains("the 5 examples were made up (--synthetic)"),
        "{table}"
    );
}

/// 60 rows of 8 features `x0..x7` and, in `label`, which of the first three is largest, as
/// `a`, `b` or `c` (and as the three columns `y0..y2`, one-hot): something to learn.
fn write_rows(path: &Path) {
    let mut text = String::from("x0,x1,x2,x3,x4,x5,x6,x7,label,y0,y1,y2\n");
    for i in 0..60 {
        let x: Vec<f64> = (0..8)
            .map(|j| (1.7 * i as f64 + 2.3 * j as f64 + 0.1 * (i * j) as f64).sin())
            .collect();
        let class = (0..3).fold(0, |best, j| if x[j] > x[best] { j } else { best });
        for v in &x {
            text.push_str(&format!("{v:.4},"));
        }
        let hot: Vec<&str> = (0..3).map(|j| if j == class { "1" } else { "0" }).collect();
        text.push_str(&format!("{},{}\n", ["a", "b", "c"][class], hot.join(",")));
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn an_onnx_model_trains_on_a_csv_file_and_learns() {
    let tmp = tempfile::tempdir().unwrap();
    write_rows(&tmp.path().join("rows.csv"));
    let model = dir().join("relu.onnx");
    let model = model.to_str().unwrap();
    // Relative to where opcount runs, not to the model file.
    let classes = [
        "train",
        model,
        "--data",
        "rows.csv",
        "--target",
        "label",
        "--classes",
        "a,b,c",
        "--features",
        "x0,x1,x2,x3,x4,x5,x6,x7",
        "--held-out",
        "0.2",
        "--lr",
        "0.2",
        "--batch",
        "8",
    ];
    let first = train_json(tmp.path(), &[&classes[..], &["--epochs", "1"]].concat());
    let later = train_json(tmp.path(), &[&classes[..], &["--epochs", "60"]].concat());
    assert_eq!(
        (&later["examples"], &later["held_out_examples"]),
        (&json!(48), &json!(12))
    );
    let loss = |j: &serde_json::Value| j["final_loss"].as_f64().unwrap();
    assert!(loss(&later) < 0.5 * loss(&first), "{first}\n{later}");
    assert!(later["train_accuracy"].as_f64().unwrap() >= 0.9, "{later}");
    assert_eq!(
        later["held_out_by_epoch"]["loss"].as_array().unwrap().len(),
        60
    );
    assert_eq!(
        later["step"],
        step_closed_form("relu", &Import::default(), 8)
    );

    // Regression: one column per output, against mean squared error.
    let mse = Import {
        loss: Some(opcount::model::Loss::Mse),
        ..Import::default()
    };
    let values = [
        "train",
        model,
        "--loss",
        "mse",
        "--data",
        "rows.csv",
        "--target",
        "y0,y1,y2",
        "--features",
        "x0,x1,x2,x3,x4,x5,x6,x7",
        "--lr",
        "0.1",
        "--batch",
        "6",
    ];
    let first = train_json(tmp.path(), &[&values[..], &["--epochs", "1"]].concat());
    let later = train_json(tmp.path(), &[&values[..], &["--epochs", "60"]].concat());
    assert!(loss(&later) < loss(&first), "{first}\n{later}");
    assert_eq!(later["train_accuracy"], serde_json::Value::Null);
    assert_eq!(later["step"], step_closed_form("relu", &mse, 6));
}

/// `--save` writes the model as RON with the training block it trained with, the CSV's path
/// relative to the saved file, so the saved model trains on from anywhere.
#[test]
fn a_trained_onnx_model_is_saved_with_its_data() {
    let tmp = tempfile::tempdir().unwrap();
    write_rows(&tmp.path().join("rows.csv"));
    std::fs::create_dir(tmp.path().join("out")).unwrap();
    let model = dir().join("relu.onnx");
    let save = [
        "train",
        model.to_str().unwrap(),
        "--data",
        "rows.csv",
        "--target",
        "label",
        "--classes",
        "a,b,c",
        "--features",
        "x0,x1,x2,x3,x4,x5,x6,x7",
        "--save",
        "out/trained.ron",
    ];
    train_json(tmp.path(), &save);
    let saved = std::fs::read_to_string(tmp.path().join("out/trained.ron")).unwrap();
    assert!(saved.contains("path: \"../rows.csv\""), "{saved}");
    let again = train_json(&tmp.path().join("out"), &["train", "trained.ron"]);
    assert_eq!(
        (&again["examples"], &again["batch"]),
        (&json!(60), &json!(32))
    );

    train_json(
        tmp.path(),
        &[
            "train",
            model.to_str().unwrap(),
            "--synthetic",
            "7",
            "--seed",
            "3",
            "--save",
            "s.ron",
        ],
    );
    let saved = std::fs::read_to_string(tmp.path().join("s.ron")).unwrap();
    for fragment in ["Synthetic(", "examples: 7", "seed: 3"] {
        assert!(saved.contains(fragment), "{saved}");
    }
    let again = train_json(tmp.path(), &["train", "s.ron"]);
    assert_eq!(again["examples"], 7);
}

#[test]
fn training_an_onnx_model_without_data_or_with_the_wrong_data_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    write_rows(&tmp.path().join("rows.csv"));
    let model = dir().join("relu.onnx");
    let model = model.to_str().unwrap();
    // One line naming the file, exit code 2.
    let refused = |args: &[&str], fragment: &str| {
        let out = opcount_in(tmp.path(), &[&["train", model][..], args].concat());
        let stderr = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(fragment), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    };
    refused(
        &[],
        "`--data FILE.csv --target COLUMN` or `--synthetic EXAMPLES`",
    );
    refused(
        &["--synthetic", "0"],
        "--synthetic: expected at least 1 example, found 0",
    );
    refused(
        &["--synthetic", "4", "--loss", "none"],
        "there is nothing to train",
    );
    refused(
        &["--synthetic", "1000000000000", "--max-memory", "64M"],
        "1000000000000 synthetic examples needs about",
    );
    refused(
        &["--data", "rows.csv", "--target", "y0,y1"],
        "learns one class column, found 2 columns",
    );
    refused(
        &[
            "--loss",
            "mse",
            "--data",
            "rows.csv",
            "--target",
            "y0,y1",
            "--classes",
            "a,b",
        ],
        "--classes: the labels of one --target column, found 2 columns",
    );
    refused(
        &["--data", "missing.csv", "--target", "label"],
        "missing.csv",
    );
    let x = "x0,x1,x2,x3,x4,x5,x6,x7";
    // A label not in --classes: the file and line.
    refused(
        &[
            "--data",
            "rows.csv",
            "--target",
            "label",
            "--classes",
            "a,b",
            "--features",
            x,
        ],
        "rows.csv:",
    );
    // The one-hot columns are features too unless --features says which: 11, not 8.
    refused(&["--data", "rows.csv", "--target", "label"], "rows.csv");
    refused(
        &[
            "--data",
            "rows.csv",
            "--target",
            "label",
            "--held-out",
            "1.5",
        ],
        "held_out: expected a fraction",
    );
    // The arguments themselves: clap's usage message, exit code 2.
    for args in [
        &["--data", "rows.csv"][..],
        &["--target", "label"],
        &[
            "--synthetic",
            "4",
            "--data",
            "rows.csv",
            "--target",
            "label",
        ],
    ] {
        let out = opcount_in(tmp.path(), &[&["train", model][..], args].concat());
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
}
