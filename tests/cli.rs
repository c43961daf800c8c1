//! The `opcount` binary, run as a user would.

#[path = "support/cli.rs"]
mod cli;

use std::path::PathBuf;

use serde_json::Value;

use cli::{json, opcount, root, stderr};

fn model(name: &str) -> PathBuf {
    root().join("models").join(name)
}

#[test]
fn train_prints_a_json_summary() {
    let out = json(&opcount(&["train", "models/xor.ron", "--format", "json"]));
    assert_eq!(out["epochs"], 3000);
    assert_eq!(out["train_accuracy"], 1.0);
    assert!(out["final_loss"].as_f64().unwrap() < 0.05);
    for phase in ["forward", "loss", "backward", "update", "all"] {
        assert!(out["step"][phase]["mul"].as_u64().is_some(), "{phase}");
    }
}

#[test]
fn train_saves_a_model_that_loads_and_trains_again() {
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("iris-trained.ron");
    let first = opcount(&[
        "train",
        model("iris.ron").to_str().unwrap(),
        "--epochs",
        "3",
        "--save",
        saved.to_str().unwrap(),
    ]);
    assert!(first.status.success(), "{}", stderr(&first));
    let text = std::fs::read_to_string(&saved).unwrap();
    assert!(text.contains("weights:"), "{text}");
    // The data path was rewritten relative to the new location.
    let again = json(&opcount(&[
        "train",
        saved.to_str().unwrap(),
        "--epochs",
        "1",
        "--format",
        "json",
    ]));
    assert_eq!(again["examples"], 150);
}

#[test]
fn train_reports_the_held_out_rows_apart_from_the_training_rows() {
    let dir = tempfile::tempdir().unwrap();
    let iris = std::fs::read_to_string(model("iris.ron")).unwrap();
    let data = model("data/iris.csv");
    let held = iris
        .replace(
            "\"data/iris.csv\"",
            &format!("{:?}", data.to_str().unwrap()),
        )
        .replace("target: Class(", "held_out: 0.2, target: Class(");
    assert_ne!(held, iris);
    let path = dir.path().join("iris-held.ron");
    std::fs::write(&path, held).unwrap();
    let path = path.to_str().unwrap();
    let out = json(&opcount(&["train", path, "--format", "json"]));
    // Iris's 150 rows are sorted by species; every fifth row holds 10 of each out.
    assert_eq!(
        (out["examples"].as_u64(), out["held_out_examples"].as_u64()),
        (Some(120), Some(30))
    );
    let accuracy = out["held_out_accuracy"].as_f64().unwrap();
    assert!(accuracy > 0.9, "{accuracy}");
    let by_epoch = &out["held_out_by_epoch"];
    assert_eq!(by_epoch["loss"].as_array().unwrap().len(), 200);
    assert_eq!(by_epoch["accuracy"][199], out["held_out_accuracy"]);
    // The table says it under the training figures.
    let table = opcount(&["train", path, "--epochs", "2"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("\nheld-out loss "), "{text}");
    assert!(text.contains("(30 examples), held-out accuracy "), "{text}");
    // Without held-out rows, the keys are null.
    let plain = json(&opcount(&[
        "train",
        "models/xor.ron",
        "--epochs",
        "1",
        "--format",
        "json",
    ]));
    assert_eq!(plain["held_out_accuracy"], Value::Null);
}

#[test]
fn bench_reports_both_medians_and_their_ratio() {
    let out = json(&opcount(&[
        "bench",
        "models/mlp-30-30-30.ron",
        "--rounds",
        "1",
        "--format",
        "json",
    ]));
    let (plain, counted) = (
        out["plain_s"].as_f64().unwrap(),
        out["counted_s"].as_f64().unwrap(),
    );
    assert!(plain > 0.0 && counted > 0.0);
    assert!((out["ratio"].as_f64().unwrap() - counted / plain).abs() < 1e-9);
    // Forward 900 + 900; MSE 2 x 30; backward: sigmoids 2 x 30 each, dense2 dW 900 and dX
    // 900, dense1 dW 900; update 930 + 930.
    assert_eq!(
        out["counts_per_step"]["mul"],
        1800 + 60 + 60 + 1800 + 60 + 900 + 1860
    );
}

#[test]
fn bench_can_time_the_forward_pass_alone() {
    let out = json(&opcount(&[
        "bench",
        "models/lenet5.ron",
        "--forward-only",
        "--rounds",
        "1",
        "--format",
        "json",
    ]));
    assert_eq!(out["forward_only"], true);
    // The forward pass of LeNet-5: 416,520 multiplications and as many additions in its
    // convolution and dense layers, plus activations and pooling.
    assert!(out["ops_per_step"].as_u64().unwrap() > 2 * 416_520);
    assert_eq!(out["counts_per_step"]["mul"], 416_520);
}

#[test]
fn count_prints_json_with_every_kind_measured_and_estimated() {
    let out = json(&opcount(&[
        "count",
        "models/iris.ron",
        "--batch",
        "7",
        "--format",
        "json",
    ]));
    assert_eq!(out["batch"], 7);
    assert_eq!(out["params"], 4 * 16 + 16 + 16 * 3 + 3);
    let layers = out["layers"].as_array().unwrap();
    // dense1, dense1.tanh, dense2.
    assert_eq!(layers.len(), 3);
    for layer in layers {
        for key in ["index", "name", "kind", "params", "output"] {
            assert!(!layer[key].is_null(), "{key}");
        }
        for phase in ["forward", "backward", "update"] {
            assert_same_predictable(&layer["measured"][phase], &layer["estimated"][phase]);
            for kind in ["mul", "add", "sub", "div", "cmp", "exp", "tanh", "act"] {
                assert!(layer["estimated"][phase][kind].is_u64(), "{phase} {kind}");
            }
        }
    }
    assert_same_predictable(&out["loss"]["measured"], &out["loss"]["estimated"]);
    for phase in ["forward", "loss", "backward", "update", "all"] {
        assert_same_predictable(
            &out["totals"]["measured"][phase],
            &out["totals"]["estimated"][phase],
        );
    }
}

/// Measured and estimated JSON counts agree on every kind a closed form predicts; `zmul`
/// is measured (a number) and not estimated (null).
fn assert_same_predictable(measured: &Value, estimated: &Value) {
    let (m, e) = (
        measured.as_object().unwrap(),
        estimated.as_object().unwrap(),
    );
    assert_eq!(m.len(), e.len());
    for (kind, n) in m {
        if kind == "zmul" {
            assert!(n.is_u64(), "measured zmul: {n}");
            assert!(e[kind].is_null(), "estimated zmul: {}", e[kind]);
        } else {
            assert_eq!(*n, e[kind], "{kind}");
        }
    }
}

#[test]
fn docs_counting_md_shows_the_real_output_of_count() {
    let out = opcount(&["count", "models/mlp-30-30-30.ron"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8(out.stdout).unwrap();
    let docs = std::fs::read_to_string(root().join("docs/counting.md")).unwrap();
    assert!(
        docs.contains(&format!("```text\n{table}```")),
        "docs/counting.md's block differs from `opcount count models/mlp-30-30-30.ron`:\n{table}"
    );
}

#[test]
fn zmul_is_measured_not_estimated() {
    // Half of XOR's inputs are 0: 8 multiplications by zero in dense1's forward pass.
    let out = json(&opcount(&[
        "count",
        "models/xor.ron",
        "--batch",
        "4",
        "--format",
        "json",
    ]));
    let dense1 = &out["layers"][0];
    assert_eq!(dense1["measured"]["forward"]["zmul"], 8);
    assert!(dense1["estimated"]["forward"]["zmul"].is_null());
    assert!(out["totals"]["estimated"]["all"]["zmul"].is_null());
    assert_same_predictable(
        &out["totals"]["measured"]["all"],
        &out["totals"]["estimated"]["all"],
    );

    let csv = String::from_utf8(
        opcount(&["count", "models/xor.ron", "--batch", "4", "--format", "csv"]).stdout,
    )
    .unwrap();
    let mut lines = csv.lines().map(|l| l.split(',').collect::<Vec<_>>());
    let header = lines.next().unwrap();
    let column = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let dense1_forward = lines.next().unwrap();
    assert_eq!(dense1_forward[column("measured_zmul")], "8");
    assert_eq!(dense1_forward[column("estimated_zmul")], "");
    assert_eq!(
        dense1_forward[column("measured_mul")],
        dense1_forward[column("estimated_mul")]
    );

    // Closed forms and Counted<f32> do not count it either.
    let projection = json(&opcount(&[
        "project",
        "models/xor.ron",
        "--examples",
        "4",
        "--epochs",
        "1",
        "--format",
        "json",
    ]));
    assert!(projection["total"]["all"]["zmul"].is_null());
    assert!(projection["per_step"]["all"]["zmul"].is_null());
    let train = json(&opcount(&[
        "train",
        "models/xor.ron",
        "--epochs",
        "1",
        "--format",
        "json",
    ]));
    assert!(train["step"]["all"]["zmul"].is_null());
    assert!(train["step"]["all"]["mul"].is_u64());
}

#[test]
fn a_model_without_forward_arithmetic_has_no_backward_forward_ratio() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("id.ron");
    std::fs::write(
        &path,
        "(name: \"id\", input: [3], loss: Mse, layers: [Identity])",
    )
    .unwrap();
    let path = path.to_str().unwrap();
    // Before: "backward/forward: NaNx the arithmetic operations".
    let out = opcount(&["count", path]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(!table.contains("NaN"), "{table}");
    assert!(
        table.contains("backward/forward: n/a, the forward pass does no arithmetic"),
        "{table}"
    );
    let out = json(&opcount(&["count", path, "--format", "json"]));
    assert!(out["backward_forward_ratio"].is_null());
    let xor = json(&opcount(&["count", "models/xor.ron", "--format", "json"]));
    assert!(xor["backward_forward_ratio"].as_f64().unwrap() > 0.0);
}

#[test]
fn a_model_written_as_a_graph_is_charged_for_its_nodes() {
    // Its entries are under `graph`, not `layers`: the nodes' bookkeeping is charged for
    // them all the same (this once underflowed).
    let out = json(&opcount(&[
        "count",
        "models/iris-residual.ron",
        "--format",
        "json",
    ]));
    assert_eq!(out["layers"].as_array().unwrap().len(), 7);
    let out = opcount(&["count", "models/iris-residual.ron", "--max-memory", "40K"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the counts and bookkeeping of up to 10 nodes needs about 60.0 KiB"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn count_writes_csv_with_a_row_per_layer_and_phase() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("xor.csv");
    let out = opcount(&[
        "count",
        "models/xor.ron",
        "--format",
        "csv",
        "--output",
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // A header, 4 nodes x 3 phases, and the loss.
    assert_eq!(lines.len(), 1 + 4 * 3 + 1);
    assert!(lines[0].starts_with("index,name,kind,output,params,phase,measured_add"));
    assert!(lines[1].starts_with("0,dense1,dense,2,6,forward,"));
}

#[test]
fn closed_form_only_counts_a_175_billion_parameter_model_without_running_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.ron");
    // 12 dense layers of 120,000 units: 12 x 1.44e10 = 1.73e11 weights (plus biases);
    // running it would need about 700 GB for the weights alone.
    let layers = ["Dense(units: 120000, activation: Relu)"; 12].join(", ");
    std::fs::write(
        &path,
        format!("(name: \"huge\", input: [120000], loss: Mse, layers: [{layers}])"),
    )
    .unwrap();
    let out = json(&opcount(&[
        "count",
        path.to_str().unwrap(),
        "--closed-form-only",
        "--format",
        "json",
    ]));
    assert_eq!(out["params"], 12u64 * (120_000 * 120_000 + 120_000));
    assert!(out["totals"]["measured"].is_null());
    assert_eq!(
        out["layers"][0]["estimated"]["forward"]["mul"],
        120_000u64 * 120_000
    );
}

/// A model whose names hold a newline and the escape sequence that clears a terminal.
const HOSTILE_NAMES: &str = r#"(
    name: "clear\u{1b}[2J\u{7}",
    input: [2],
    layers: [Dense(units: 2, name: "a\nb\u{1b}[2J\u{0}", activation: Tanh), Dense(units: 1)],
    loss: Mse,
    training: (
        data: Inline(inputs: [[0, 1], [1, 0]], targets: Values([[1], [0]])),
        epochs: 2, lr: 0.1, batch: 2,
    ),
)"#;

/// Whether text holds a character a terminal would act on (anything but the newlines that
/// end its lines).
fn has_control_characters(text: &str) -> bool {
    text.chars().any(|c| c.is_control() && c != '\n')
}

#[test]
fn names_with_control_characters_are_escaped_in_every_table_and_chart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hostile.ron");
    std::fs::write(&path, HOSTILE_NAMES).unwrap();
    let path = path.to_str().unwrap();
    let svg = dir.path().join("chart.svg");
    let runs: &[&[&str]] = &[
        &["count", path, "--svg", svg.to_str().unwrap()],
        &["count", path, "--convention", "mac"],
        &["count", path, "--closed-form-only"],
        &["train", path],
        &["bench", path, "--rounds", "1"],
        &["project", path, "--examples", "4", "--epochs", "1"],
    ];
    for args in runs {
        let out = opcount(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(!has_control_characters(&text), "{args:?}:\n{text}");
        assert!(text.contains("clear\\u{1b}[2J\\u{7}"), "{args:?}:\n{text}");
    }
    let table = String::from_utf8(opcount(&["count", path]).stdout).unwrap();
    assert!(table.contains("a\\nb\\u{1b}[2J\\0"), "{table}");
    // CSV keeps a newline inside a quoted field as data, but a terminal still acts on it and
    // on the escape sequence: names are escaped as in the tables.
    let csv = String::from_utf8(opcount(&["count", path, "--format", "csv"]).stdout).unwrap();
    assert!(!has_control_characters(&csv), "{csv}");
    assert!(csv.contains("a\\nb\\u{1b}[2J\\0"), "{csv}");
    // The chart is well-formed XML (which has no escape for most control characters).
    let chart = std::fs::read_to_string(&svg).unwrap();
    roxmltree::Document::parse(&chart).unwrap();
    assert!(!has_control_characters(&chart));
}

#[test]
fn a_batch_larger_than_the_data_is_clamped_to_it_and_said() {
    // xor has 4 examples: a batch of 10^9 would be refused as needing 119 GiB, though the
    // batch actually run is 4.
    let out = json(&opcount(&[
        "train",
        "models/xor.ron",
        "--batch",
        "1000000000",
        "--epochs",
        "2",
        "--format",
        "json",
    ]));
    assert_eq!(out["batch"], 4);
    assert_eq!(out["batch_asked"], 1_000_000_000);
    assert_eq!(out["step_batch"], 4);
    let table = opcount(&[
        "train",
        "models/xor.ron",
        "--batch",
        "1000000000",
        "--epochs",
        "2",
    ]);
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(
        text.contains("batch 4 (asked for 1000000000, more than the examples)"),
        "{text}"
    );
}

#[test]
fn bench_of_a_model_without_kernels_prints_no_nan() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("acts.ron");
    std::fs::write(
        &path,
        "(name: \"acts\", input: [4], loss: Mse, layers: [Relu, Sigmoid])",
    )
    .unwrap();
    let out = opcount(&["bench", path.to_str().unwrap(), "--rounds", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains("NaN"), "{text}");
    assert!(text.contains("no convolution or dense layers"), "{text}");
}

#[test]
fn a_byte_order_mark_is_skipped_and_every_line_ending_counts() {
    let dir = tempfile::tempdir().unwrap();
    let model = "(name: \"x\", input: [2], loss: Mse, layers: [Dense(units: 1)])";
    let bom = dir.path().join("bom.ron");
    std::fs::write(&bom, format!("\u{feff}{model}")).unwrap();
    let out = opcount(&["count", bom.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The same mistake on line 5, whatever ends the lines.
    for (name, end) in [("lf", "\n"), ("crlf", "\r\n"), ("cr", "\r")] {
        let text = [
            "(",
            "  name: \"x\",",
            "  input: [2],",
            "  loss: Mse,",
            "  layers: [Dense(units: 2x)],",
            ")",
        ]
        .join(end);
        let path = dir.path().join(format!("{name}.ron"));
        std::fs::write(&path, text).unwrap();
        let out = opcount(&["count", path.to_str().unwrap()]);
        assert!(
            stderr(&out).contains(&format!("{name}.ron:5:")),
            "{name}: {}",
            stderr(&out)
        );
    }
    // And in a CSV file: its third line holds the bad number.
    let csv = dir.path().join("cr.csv");
    std::fs::write(&csv, "\u{feff}a,b,y\r1,2,0\r3,x,1\r").unwrap();
    let model = dir.path().join("csv.ron");
    std::fs::write(
        &model,
        "(name: \"x\", input: [2], loss: SoftmaxCrossEntropy, layers: [Dense(units: 2)],
          training: (data: Csv(path: \"cr.csv\", target: Class(column: \"y\")),
                     epochs: 1, lr: 0.1, batch: 1))",
    )
    .unwrap();
    let out = opcount(&["train", model.to_str().unwrap()]);
    assert!(
        stderr(&out).contains("cr.csv:3: column 2 (b)"),
        "{}",
        stderr(&out)
    );
}

/// Runs `opcount args` with standard output on /dev/full, where every write fails.
fn opcount_into_full(args: &[&str]) -> std::process::Output {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_opcount"))
        .args(args)
        .current_dir(cli::root())
        .stdout(full)
        .output()
        .unwrap()
}

#[test]
fn a_full_standard_output_is_an_error_that_says_so() {
    for args in [
        &["count", "models/xor.ron"][..],
        &["kinds"],
        &["--help"],
        &["count", "--help"],
    ] {
        let out = opcount_into_full(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_eq!(
            stderr(&out),
            "opcount: cannot write to standard output: No space left on device (os error 28)\n",
            "{args:?}"
        );
    }
}

/// A pseudo-terminal: (the side a terminal emulator reads, the side a program writes to).
fn pty() -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd;
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two descriptors, which are then owned by the Files below.
    let status = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(status, 0, "openpty");
    // SAFETY: both descriptors were just opened for us and have no other owner.
    unsafe {
        (
            std::fs::File::from_raw_fd(master),
            std::fs::File::from_raw_fd(slave),
        )
    }
}

#[test]
fn an_interrupted_progress_bar_leaves_its_line_ended() {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    use std::sync::{Arc, Mutex};
    // Standard error on a terminal, so that the bar is drawn.
    let (mut terminal, program_side) = pty();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_opcount"))
        .args(["train", "models/iris.ron", "--epochs", "100000000"])
        .current_dir(cli::root())
        .stdout(std::process::Stdio::null())
        .stderr(program_side)
        .spawn()
        .unwrap();
    let shown = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let shown = Arc::clone(&shown);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends with an error (EIO) once no program holds the terminal.
            while let Ok(n @ 1..) = terminal.read(&mut buf) {
                shown.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let drawn = || String::from_utf8_lossy(&shown.lock().unwrap()).contains(" steps ");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !drawn() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(drawn(), "no progress bar");
    // SAFETY: kill sends a signal to the child we spawned; no memory is involved.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGINT), "dies of the interrupt");
    reader.join().unwrap();
    let shown = shown.lock().unwrap();
    assert_eq!(
        shown.last(),
        Some(&b'\n'),
        "{}",
        String::from_utf8_lossy(&shown)
    );
}

/// `--synthetic` and `--data` give a RON model without a training block its data (with
/// `Training::new`'s settings), and replace the data of one that has one, keeping its
/// settings; the step counted is the closed form's.
#[test]
fn train_takes_its_data_from_the_command_line() {
    use opcount::budget::Budget;
    let mlp = json(&opcount(&[
        "train",
        "models/mlp-30-30-30.ron",
        "--synthetic",
        "10",
        "--batch",
        "4",
        "--format",
        "json",
    ]));
    assert_eq!(
        (&mlp["examples"], &mlp["epochs"], &mlp["batch"]),
        (&Value::from(10), &Value::from(1), &Value::from(4))
    );
    let loaded = opcount::Loaded::load(&model("mlp-30-30-30.ron"), Budget::unlimited()).unwrap();
    let closed = opcount::estimate::step(loaded.plan(), 4).unwrap().totals();
    assert_eq!(mlp["step"], opcount::report::totals_json(&closed, false));

    // iris's own settings (200 epochs, lr 0.05, batch 10), its CSV given on the command
    // line, a fifth of the rows held out.
    let iris = json(&opcount(&[
        "train",
        "models/iris.ron",
        "--data",
        "models/data/iris.csv",
        "--target",
        "species",
        "--classes",
        "setosa,versicolor,virginica",
        "--held-out",
        "0.2",
        "--format",
        "json",
    ]));
    assert_eq!(
        (&iris["examples"], &iris["held_out_examples"]),
        (&Value::from(120), &Value::from(30))
    );
    assert_eq!(
        (&iris["epochs"], &iris["batch"]),
        (&Value::from(200), &Value::from(10))
    );
    assert_eq!(iris["lr"].as_f64().unwrap() as f32, 0.05);
    assert!(iris["train_accuracy"].as_f64().unwrap() > 0.9, "{iris}");
}
