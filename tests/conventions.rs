//! Other counters' conventions, projections and the chart, through the binary as a user runs
//! them.

#[path = "support/cli.rs"]
mod cli;

use serde_json::Value;

use cli::{json, opcount};

fn totals(model: &str, convention: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "count",
        model,
        "--format",
        "json",
        "--convention",
        convention,
    ];
    args.extend(extra);
    json(&opcount(&args))["totals"]["estimated"].clone()
}

#[test]
fn the_mac_view_reproduces_published_forward_figures() {
    // torchvision's VGG-16 "15.47 GFLOPS" are multiply-adds; LeNet-5's 416,520 likewise.
    let vgg = totals("models/vgg16.ron", "mac", &["--closed-form-only"]);
    assert_eq!(vgg["forward"], 15_470_264_320u64);
    let lenet = totals("models/lenet5.ron", "mac", &[]);
    assert_eq!(lenet["forward"], 416_520);
}

#[test]
fn the_figures_docs_conventions_builds_on_hold() {
    // docs/conventions.md reconciles other counters from these; keep them true.
    let figures = [
        ("models/lenet5.ron", 715_440u64, 845_852u64, 2_364_340u64),
        (
            "models/vgg16.ron",
            30_853_824_512,
            30_958_675_456,
            92_821_302_404,
        ),
    ];
    for (model, backward_macs, exact_forward, exact_step) in figures {
        let mac = totals(model, "mac", &["--closed-form-only"]);
        assert_eq!(mac["backward"], backward_macs, "{model}");
        let exact = totals(model, "exact", &["--closed-form-only"]);
        let total = |phase: &str| -> u64 {
            let c = exact[phase].as_object().unwrap();
            c.iter()
                .filter(|(kind, _)| !matches!(kind.as_str(), "act" | "zmul"))
                .map(|(_, n)| n.as_u64().unwrap())
                .sum()
        };
        assert_eq!(total("forward"), exact_forward, "{model}");
        assert_eq!(total("all"), exact_step, "{model}");
    }
}

#[test]
fn the_flop_view_is_exactly_twice_the_mac_view() {
    for model in [
        "models/lenet5.ron",
        "models/vgg16.ron",
        "models/mnist-mlp.ron",
    ] {
        let mac = totals(model, "mac", &["--closed-form-only"]);
        let flop = totals(model, "flop", &["--closed-form-only"]);
        for phase in ["forward", "backward", "all"] {
            assert_eq!(
                flop[phase].as_u64().unwrap(),
                2 * mac[phase].as_u64().unwrap(),
                "{model} {phase}"
            );
        }
    }
}

#[test]
fn the_classic_network_does_4500_multiply_accumulates_forward_and_backward() {
    let out = json(&opcount(&[
        "count",
        "models/mlp-30-30-30.ron",
        "--format",
        "json",
        "--convention",
        "mac",
    ]));
    let measured = &out["totals"]["measured"];
    // Forward 30x30 + 30x30; backward dW of both layers (1,800) and dX of the second (900).
    assert_eq!(measured["forward"], 1_800);
    assert_eq!(measured["backward"], 2_700);
    assert_eq!(measured["all"], 4_500);
    assert_eq!(out["totals"]["estimated"], *measured);
}

#[test]
fn a_projection_is_the_measured_step_times_the_steps() {
    let step = json(&opcount(&[
        "count",
        "models/mnist-mlp.ron",
        "--format",
        "json",
    ]));
    let per_example = &step["totals"]["measured"]["all"];
    let projection = json(&opcount(&[
        "project",
        "models/mnist-mlp.ron",
        "--examples",
        "60000",
        "--epochs",
        "10",
        "--format",
        "json",
    ]));
    assert_eq!(projection["steps"], 600_000);
    assert_eq!(projection["validated"], true);
    let total = &projection["total"]["all"];
    for (kind, n) in per_example.as_object().unwrap() {
        if kind == "zmul" {
            // Multiplications by zero depend on the data: no projection predicts them.
            continue;
        }
        assert_eq!(
            total[kind].as_u64().unwrap(),
            600_000 * n.as_u64().unwrap(),
            "{kind}"
        );
    }
    assert!(projection["projected_s"].as_f64().unwrap() > 0.0);
    assert!(projection["assumptions"].as_array().unwrap().len() >= 3);
}

#[test]
fn the_chart_is_valid_svg_with_a_bar_row_per_layer() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("lenet5.svg");
    let out = opcount(&[
        "count",
        "models/lenet5.ron",
        "--svg",
        svg.to_str().unwrap(),
        "--format",
        "json",
    ]);
    let report = json(&out);
    let text = std::fs::read_to_string(&svg).unwrap();
    let doc = roxmltree::Document::parse(&text).expect("the chart is well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");

    // Every layer is named on the axis, first layer at the top, then the loss. The axis is
    // drawn bottom up, so the labels come last layer first.
    let layers = report["layers"].as_array().unwrap();
    let mut names: Vec<String> = layers
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_string())
        .collect();
    names.push("loss: softmax_cross_entropy".into());
    let mut labels: Vec<String> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text().map(|t| t.trim().to_string()))
        .filter(|t| names.contains(t))
        .collect();
    labels.reverse();
    assert_eq!(labels, names);

    // One row of bars (the phases of a layer share a y) per layer that does any arithmetic.
    let phase_colors = ["#1F77B4", "#FF7F0E", "#2CA02C", "#9467BD"];
    let mut rows: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("rect"))
        .filter(|n| {
            n.attribute("fill")
                .is_some_and(|f| phase_colors.contains(&f))
        })
        .filter(|n| n.attribute("width") != Some("12")) // the legend's swatches
        .filter_map(|n| n.attribute("y"))
        .collect();
    rows.sort();
    rows.dedup();
    // Arithmetic operations of a layer over the step: every kind but act and zmul.
    let operations = |layer: &Value| -> u64 {
        ["forward", "backward", "update"]
            .iter()
            .flat_map(|p| layer["measured"][p].as_object().unwrap())
            .filter(|(kind, _)| !matches!(kind.as_str(), "act" | "zmul"))
            .map(|(_, n)| n.as_u64().unwrap())
            .sum()
    };
    let working = layers.iter().filter(|l| operations(l) > 0).count();
    assert!(working >= 11, "LeNet-5 has 11 layers doing arithmetic");
    assert_eq!(
        rows.len(),
        working + 1,
        "one row per working layer, and the loss"
    );
}
