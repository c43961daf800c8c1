//! Bad input, as users will write it: every file in `tests/bad_inputs/` is refused by the
//! real binary with exit code 2 and a message naming where the problem is; random and
//! mutated model text never panics; a failed or interrupted `train --save` keeps the old file.

#[path = "support/cli.rs"]
mod cli;
#[path = "support/exercise.rs"]
mod exercise;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use cli::{opcount_in, root, stderr};
use exercise::{CSV_NAME, Reached, exercise, exercise_bytes};
use proptest::prelude::*;

/// Exit code 2, one line on stderr holding `fragment`, nothing on stdout, no panic.
fn assert_refused(out: &Output, fragment: &str, what: &str) {
    let stderr = stderr(out);
    assert_eq!(out.status.code(), Some(2), "{what}: stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    assert!(
        stderr.contains(fragment),
        "{what}:\n  expected the message to contain: {fragment}\n  found: {stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{what}: one message: {stderr}");
    assert!(out.stdout.is_empty(), "{what}: nothing on stdout");
}

/// The value of a `// key: value` header line.
fn header<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .take_while(|l| l.starts_with("//"))
        .find_map(|l| l.strip_prefix("// ")?.strip_prefix(key)?.strip_prefix(": "))
}

#[test]
fn every_bad_input_file_is_refused_with_its_place_and_exit_code_2() {
    let dir = root().join("tests/bad_inputs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "ron"))
        .collect();
    files.sort();
    // Each model file is one mistake: in itself, or in the data file it points to.
    assert!(
        files.len() >= 25,
        "at least 25 malformed files, found {}",
        files.len()
    );
    for file in &files {
        let name = file.file_name().unwrap().to_str().unwrap();
        let text = std::fs::read_to_string(file).unwrap();
        let fragment = header(&text, "expect").unwrap_or_else(|| panic!("{name}: no expect"));
        let mut args: Vec<&str> = header(&text, "run")
            .unwrap_or("count")
            .split_whitespace()
            .collect();
        args.extend([name, "--quiet"]);
        let out = opcount_in(&dir, &args);
        assert_refused(&out, fragment, name);
        // Every message names the file at fault: the model, or the data file it points to.
        let stderr = stderr(&out);
        let data = text
            .split_once("path: \"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(path, _)| path);
        assert!(
            stderr.contains(name) || data.is_some_and(|d| stderr.contains(&format!("{d}:"))),
            "{name}: the message names no file: {stderr}"
        );
    }
}

#[test]
fn command_line_mistakes_are_refused_with_exit_code_2() {
    let xor = "models/xor.ron";
    let cases: &[(&[&str], &str)] = &[
        (&["count", "models"], "models: cannot read: is a directory"),
        (
            &["count", "models/nope.ron"],
            "models/nope.ron: cannot read: No such file",
        ),
        (
            &["count", xor, "--output", "no/such/dir/out.json"],
            "no/such/dir/out.json: cannot write: no/such/dir does not exist",
        ),
        (
            &["count", xor, "--svg", "models"],
            "models: cannot write: is a directory",
        ),
        (
            &["count", xor, "--output", "models/xor.ron/out.csv"],
            "models/xor.ron/out.csv: cannot write: models/xor.ron is not a directory",
        ),
        (
            &["train", "models/iris.ron", "--save", "no/such/dir/iris.ron"],
            "cannot write: no/such/dir does not exist",
        ),
        (
            &["count", "models/lenet5.ron", "--max-memory", "400K"],
            "lenet5.ron: running this model at batch 1 needs about",
        ),
        (
            &["count", "models/lenet5.ron", "--max-memory", "400K"],
            "left of the budget of 400.0 KiB (set by --max-memory); \
             `opcount count --closed-form-only` counts it without running it",
        ),
        (
            &["count", xor, "--batch", "0"],
            "--batch must be at least 1",
        ),
        (
            &["train", xor, "--epochs", "0"],
            "--epochs and --batch must be at least 1",
        ),
        (
            &["train", xor, "--lr=-0.5"],
            "--lr must be a positive number, found -0.5",
        ),
        (
            &["train", "models/mlp-30-30-30.ron"],
            "the model has no training block",
        ),
        (
            &["project", xor, "--examples", "0", "--epochs", "1"],
            "examples, epochs and batch must be at least 1",
        ),
    ];
    for (args, fragment) in cases {
        let out = opcount_in(root(), args);
        assert_refused(&out, fragment, &args.join(" "));
    }
    // Flags clap rejects: its own message, with usage, and the same exit code.
    let out = opcount_in(root(), &["count", xor, "--batch", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value 'x' for '--batch"));
}

#[test]
fn closed_forms_that_do_not_fit_are_an_error_not_a_wrapped_count() {
    let dir = tempfile::tempdir().unwrap();
    let huge = dir.path().join("huge.ron");
    std::fs::write(
        &huge,
        "(name: \"huge\", input: [2147483648], loss: Mse,
          layers: [Dense(units: 2147483648), Dense(units: 2147483648)])",
    )
    .unwrap();
    let out = opcount_in(
        dir.path(),
        &[
            "count",
            "huge.ron",
            "--closed-form-only",
            "--batch",
            "18446744073709551615",
        ],
    );
    // Up to 3.4e38 is counted exactly (tests/wide_counts.rs); a step of 2^64 - 1 examples
    // of these 2^62 weights is past it.
    assert_refused(&out, "huge.ron: model huge: ", "huge closed form");
    assert_refused(&out, "does not fit in 128 bits", "huge closed form");
}

#[test]
fn a_reader_that_stops_early_is_not_an_error() {
    // `opcount count ... | head -1`: the pipe closes before the table is written.
    let mut child = Command::new(env!("CARGO_BIN_EXE_opcount"))
        .args(["count", "models/lenet5.ron", "--quiet"])
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = stderr(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A directory with a previous good model saved in it.
fn with_saved_model() -> (tempfile::TempDir, PathBuf, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("saved.ron");
    let good = std::fs::read(root().join("models/xor.ron")).unwrap();
    std::fs::write(&saved, &good).unwrap();
    (dir, saved, good)
}

/// The directory holds `saved.ron` and nothing else (no temporary files left behind).
fn assert_untouched(dir: &Path, saved: &Path, good: &[u8]) {
    assert_eq!(std::fs::read(saved).unwrap(), good, "the old file changed");
    let names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["saved.ron"], "files left behind");
}

#[test]
fn training_that_diverges_does_not_overwrite_the_saved_model() {
    let (dir, saved, good) = with_saved_model();
    let out = opcount_in(
        &root().join("tests/bad_inputs"),
        &[
            "train",
            "diverges.ron",
            "--save",
            saved.to_str().unwrap(),
            "-q",
        ],
    );
    assert_refused(
        &out,
        "diverges.ron: training diverged at epoch 1, step 1",
        "diverges",
    );
    assert_untouched(dir.path(), &saved, &good);
}

#[test]
fn an_update_that_overflows_does_not_replace_the_saved_model() {
    // The loss of the last step is finite; the update after it makes a weight -inf. Saved,
    // that model could not even be loaded again.
    let (dir, saved, good) = with_saved_model();
    let out = opcount_in(
        &root().join("tests/bad_inputs"),
        &[
            "train",
            "last-update-overflows.ron",
            "--save",
            saved.to_str().unwrap(),
            "-q",
        ],
    );
    assert_refused(
        &out,
        "weight 0 of layer 0 (dense1) is -inf; a smaller learning rate (--lr) may help",
        "last update overflows",
    );
    assert!(
        stderr(&out).contains("saved.ron was left as it was"),
        "{}",
        stderr(&out)
    );
    assert_untouched(dir.path(), &saved, &good);
}

/// A child process that is killed when dropped, even if the test fails first.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn killing_train_mid_run_keeps_the_previous_saved_model() {
    let (dir, saved, good) = with_saved_model();
    // Long enough to be killed mid-run, short enough (seconds) to end by itself should the
    // test harness die before killing it.
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_opcount"))
            .args([
                "train",
                "models/iris.ron",
                "--epochs",
                "200000",
                "-q",
                "--save",
            ])
            .arg(&saved)
            .current_dir(root())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "still training when killed"
    );
    drop(child);
    assert_untouched(dir.path(), &saved, &good);
}

/// Resident memory of a running process, in bytes (Linux).
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[test]
fn huge_epochs_and_rounds_run_long_instead_of_crashing() {
    // Up to 2^64 - 1 epochs or rounds: the run may take forever, but it must start, and
    // nothing it keeps may grow with the number (no capacity overflow, no abort).
    let dir = tempfile::tempdir().unwrap();
    let xor = std::fs::read_to_string(root().join("models/xor.ron")).unwrap();
    let in_file = dir.path().join("epochs.ron");
    std::fs::write(
        &in_file,
        xor.replace("epochs: 3000", "epochs: 18446744073709551615"),
    )
    .unwrap();
    let max = "18446744073709551615";
    let runs: Vec<Vec<&str>> = vec![
        vec!["train", "models/xor.ron", "--epochs", max],
        vec!["train", "models/xor.ron", "--epochs", "1000000000000"],
        vec!["train", in_file.to_str().unwrap()],
        vec!["bench", "models/xor.ron", "--rounds", max],
        vec!["bench", "models/xor.ron", "--rounds", "1000000000000"],
    ];
    let children: Vec<KillOnDrop> = runs
        .iter()
        .map(|args| {
            KillOnDrop(
                Command::new(env!("CARGO_BIN_EXE_opcount"))
                    .args(args)
                    .arg("-q")
                    .current_dir(root())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    for (mut child, args) in children.into_iter().zip(&runs) {
        if let Some(status) = child.0.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut err).unwrap();
            panic!("{args:?} ended with {status}: {err}");
        }
        let rss = resident_bytes(child.0.id());
        assert!(rss < 100 << 20, "{args:?}: {rss} bytes resident");
    }
}

/// Runs `opcount args` in `dir` with its address space limited to `kib` KiB (`ulimit -v`),
/// killed if it takes more than a minute.
fn opcount_limited(dir: &Path, kib: u64, args: &[&str]) -> Output {
    let mut script = format!("ulimit -v {kib}; exec timeout 60 \"$0\"");
    for i in 1..=args.len() {
        script += &format!(" \"${i}\"");
    }
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_opcount"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

/// A model with `layers` in its layer list and `training` (may be empty) after it.
fn model_text(layers: &str, training: &str) -> String {
    format!("(name: \"m\", input: [2], loss: Mse, layers: [{layers}], {training})")
}

/// A training block reading `path` with columns a, b and y.
fn csv_training(path: &str) -> String {
    format!(
        "training: (data: Csv(path: \"{path}\", target: Values(columns: [\"y\"])), \
         epochs: 1, lr: 0.1, batch: 1)"
    )
}

#[test]
fn no_input_file_of_any_size_makes_opcount_abort() {
    // Each hostile file ends in exit 2 and one line, under a 2 GB address-space limit, within
    // the minute the helper allows (most in well under a second).
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sparse = |name: &str, bytes: u64| {
        let f = std::fs::File::create(d.join(name)).unwrap();
        f.set_len(bytes).unwrap();
    };
    // 3 GB of NUL bytes, as a model and as a CSV file without a line break.
    sparse("huge.ron", 3 << 30);
    sparse("huge.csv", 3 << 30);
    let write = |name: &str, text: &str| std::fs::write(d.join(name), text).unwrap();
    write(
        "zero-csv.ron",
        &model_text("Dense(units: 1)", &csv_training("/dev/zero")),
    );
    write(
        "huge-csv.ron",
        &model_text("Dense(units: 1)", &csv_training("huge.csv")),
    );
    // 20 million layers in 100 MB, each a list entry of over 100 bytes once parsed.
    write("layers.ron", &model_text(&"Relu,".repeat(20_000_000), ""));
    // 2 million rows of numbers, 20 bytes each once read (with its line number).
    let mut rows = String::from("a,b,y\n");
    rows.push_str(&"0,0,0\n".repeat(2_000_000));
    write("rows.csv", &rows);
    write(
        "rows.ron",
        &model_text("Dense(units: 1)", &csv_training("rows.csv")),
    );
    // 300,000 layers: the report of a step is 10 GB of JSON values.
    write("deep.ron", &model_text(&"Relu,".repeat(300_000), ""));
    let cases: &[(&[&str], &str)] = &[
        (
            &["count", "/dev/zero"],
            "/dev/zero: cannot read: not a model file: a NUL byte at byte 0",
        ),
        (
            &["count", "huge.ron"],
            "huge.ron: cannot read: more than the largest model file",
        ),
        (
            &["count", "zero-csv.ron"],
            "/dev/zero:1: a line longer than 64.0 MiB",
        ),
        (
            &["train", "huge-csv.ron"],
            "huge.csv:1: a line longer than 64.0 MiB",
        ),
        (
            &["count", "layers.ron"],
            "reading the model's lists needs about",
        ),
        (
            &["train", "rows.ron", "--max-memory", "30M"],
            "rows.csv: the examples needs about",
        ),
        (
            &[
                "count",
                "deep.ron",
                "--closed-form-only",
                "--format",
                "json",
            ],
            "deep.ron: the",
        ),
    ];
    for (args, fragment) in cases {
        let out = opcount_limited(d, 2_000_000, &[args, &["-q"][..]].concat());
        assert_refused(&out, fragment, &args.join(" "));
        assert!(stderr(&out).contains("more than") || !fragment.ends_with("about"));
    }
}

#[test]
fn input_echoed_in_an_error_is_clipped() {
    let dir = tempfile::tempdir().unwrap();
    let cell = "x".repeat(100_000);
    std::fs::write(dir.path().join("long.csv"), format!("a,b,y\n1,{cell},0\n")).unwrap();
    let text = model_text("Dense(units: 1)", &csv_training("long.csv"));
    std::fs::write(dir.path().join("long.ron"), text).unwrap();
    let out = opcount_in(dir.path(), &["train", "long.ron", "-q"]);
    assert_refused(
        &out,
        "long.csv:2: column 2 (b): expected a number, found 'xxx",
        "long cell",
    );
    assert!(
        stderr(&out).contains("… (100000 bytes)'"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).len() < 400, "{} bytes", stderr(&out).len());
}

#[test]
fn the_report_and_the_evaluation_are_counted_against_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 100,000 layers: a table of them takes far more than 100 MiB.
    std::fs::write(d.join("deep.ron"), model_text(&"Relu,".repeat(100_000), "")).unwrap();
    let out = opcount_in(d, &["count", "deep.ron", "--max-memory", "100M"]);
    assert_refused(&out, "deep.ron: the", "deep model");
    assert!(
        stderr(&out).contains("nodes needs about"),
        "{}",
        stderr(&out)
    );
    // A wide layer: 13 MiB to train at batch 1, 60 times that to evaluate 256 examples at a
    // time as train once did.
    let csv = "x,y\n".to_string() + &"0.5,1\n".repeat(260);
    std::fs::write(d.join("examples.csv"), csv).unwrap();
    let wide = "(name: \"wide\", input: [1], loss: SoftmaxCrossEntropy,
        layers: [Dense(units: 200000, activation: Relu), Dense(units: 2)],
        training: (data: Csv(path: \"examples.csv\", target: Class(column: \"y\")),
                   epochs: 1, lr: 0.01, batch: 1))";
    std::fs::write(d.join("wide.ron"), wide).unwrap();
    let out = opcount_limited(
        d,
        600_000,
        &["train", "wide.ron", "--max-memory", "40M", "-q"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Pieces of model text: structure and the names the schema knows.
#[rustfmt::skip]
const TOKENS: &[&str] = &[
    "(", ")", "[", "]", ",", ":", "\"", " ", "\n", "/*", "//",
    "name", "input", "layers", "loss", "init", "training", "Dense", "Conv2d", "MaxPool2d",
    "AvgPool2d", "Flatten", "Identity", "Sigmoid", "Tanh", "Relu", "Softmax", "units",
    "activation", "bias", "weights", "biases", "out_channels", "kernel", "stride", "padding",
    "groups",
    "size", "Mse", "SoftmaxCrossEntropy", "Some", "None", "true", "false", "Inline", "inputs",
    "targets", "Classes", "Values", "epochs", "lr", "batch", "seed",
];

/// Numbers for sizes, strides, weights and settings, at and beyond the limits.
#[rustfmt::skip]
const NUMBERS: &[&str] = &[
    "0", "1", "2", "3", "5", "7", "16", "33", "-1", "0.5", "1e30", "NaN", "inf",
    "2147483648", "2147483649", "4294967296", "18446744073709551616",
];

/// Any piece of model text.
fn piece() -> impl Strategy<Value = &'static str> {
    prop_oneof![prop::sample::select(TOKENS), prop::sample::select(NUMBERS)]
}

/// Small shipped models to mutate.
fn seeds() -> Vec<String> {
    ["xor.ron", "mlp-30-30-30.ron", "lenet5.ron", "iris.ron"]
        .iter()
        .map(|m| std::fs::read_to_string(root().join("models").join(m)).unwrap())
        .collect()
}

/// One edit of a model text, at a position given as a fraction of its length.
#[derive(Clone, Debug)]
enum Edit {
    Delete(f64, usize),
    Insert(f64, &'static str),
    /// Replace the n-th number (mod the count) with another.
    Number(usize, &'static str),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        1 => (0.0..1.0, 1..20usize).prop_map(|(at, n)| Edit::Delete(at, n)),
        1 => (0.0..1.0, piece()).prop_map(|(at, t)| Edit::Insert(at, t)),
        // Mostly numbers: the edits that keep the text valid RON and test the validation.
        4 => (any::<usize>(), prop::sample::select(NUMBERS)).prop_map(|(n, t)| Edit::Number(n, t)),
    ]
}

fn apply(text: &str, edit: &Edit) -> String {
    let chars: Vec<char> = text.chars().collect();
    let at = |f: f64| ((f * chars.len() as f64) as usize).min(chars.len());
    let joined = |a: &[char], mid: &str, b: &[char]| {
        a.iter().collect::<String>() + mid + &b.iter().collect::<String>()
    };
    match *edit {
        Edit::Delete(f, n) => {
            let start = at(f);
            let end = (start + n).min(chars.len());
            joined(&chars[..start], "", &chars[end..])
        }
        Edit::Insert(f, t) => joined(&chars[..at(f)], t, &chars[at(f)..]),
        Edit::Number(n, t) => {
            let starts: Vec<usize> = (0..chars.len())
                .filter(|&i| {
                    chars[i].is_ascii_digit() && (i == 0 || !chars[i - 1].is_ascii_digit())
                })
                .collect();
            let Some(&start) = starts.get(n % starts.len().max(1)) else {
                return text.to_string();
            };
            let end = (start..chars.len())
                .find(|&i| !chars[i].is_ascii_digit())
                .unwrap_or(chars.len());
            joined(&chars[..start], t, &chars[end..])
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn random_text_is_an_error_not_a_panic(
        tokens in prop::collection::vec(piece(), 0..60)
    ) {
        let text = tokens.concat();
        prop_assert_ne!(exercise(&text, &root().join("models")), Reached::Ran, "{}", text);
    }

    #[test]
    fn mutated_models_are_refused_or_counted_exactly(
        seed in 0..4usize,
        edits in prop::collection::vec(edit(), 1..5)
    ) {
        let mut text = seeds()[seed].clone();
        for e in &edits {
            text = apply(&text, e);
        }
        // Panics (a broken invariant) fail the test; any stage may refuse the text.
        exercise(&text, &root().join("models"));
    }
}

/// Pieces of CSV text: separators, line endings, quotes, numbers at the limits, labels.
#[rustfmt::skip]
const CSV_PIECES: &[&str] = &[
    ",", ",", "\n", "\r\n", "\r", "\"", " ", "\u{feff}", "a", "b", "y", "label", "setosa",
    "0", "1", "2", "-1", "0.5", "1e30", "1e39", "NaN", "inf", "-0", "18446744073709551616", "x",
];

/// Models that read `fuzz.csv` in every way the schema allows.
fn csv_models() -> Vec<String> {
    let training = |data: &str| {
        format!(
            "(name: \"csv\", input: [2], loss: SoftmaxCrossEntropy, layers: [Dense(units: 2)],
              training: (data: {data}, epochs: 2, lr: 0.5, batch: 2))"
        )
    };
    let path = format!("path: \"{CSV_NAME}\"");
    vec![
        training(&format!("Csv({path}, target: Class(column: \"y\"))")),
        training(&format!(
            "Csv({path}, features: [\"a\", \"b\"], target: Class(column: \"label\", \
             classes: [\"setosa\", \"x\"]))"
        )),
        training(&format!(
            "Csv({path}, target: Values(columns: [\"y\", \"b\"]))"
        ))
        .replace("SoftmaxCrossEntropy", "Mse"),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn random_csv_files_are_an_error_or_trained(
        model in 0..3usize,
        header in prop::sample::select(&["a,b,y\n", "a,b,label\n", "y,a,b\r", "a\n", ""][..]),
        pieces in prop::collection::vec(prop::sample::select(CSV_PIECES), 0..80)
    ) {
        let scratch = tempfile::tempdir().unwrap();
        let input = format!("{}\0{header}{}", csv_models()[model], pieces.concat());
        exercise_bytes(input.as_bytes(), &root().join("models"), scratch.path());
    }
}

#[test]
fn the_csv_test_reaches_training() {
    let scratch = tempfile::tempdir().unwrap();
    let files = [
        "a,b,y\n0,1,1\r\n1,0,1\r0.5,0.5,0\n",
        "\u{feff}label,a,b\nx,0,1\r\nsetosa,1,0\r\n",
        "a,c,y,b\r0,1,1,0\r1,0,0.5,1",
    ];
    for (model, csv) in csv_models().iter().zip(files) {
        let input = format!("{model}\0{csv}");
        let reached = exercise_bytes(input.as_bytes(), &root().join("models"), scratch.path());
        assert_eq!(reached, Reached::Ran, "{model}");
    }
}

#[test]
fn the_mutation_test_reaches_every_stage() {
    // Unedited seeds run; a few hand-made edits stop at each stage, so the property test
    // above is known to exercise more than the parser.
    let models = root().join("models");
    for text in seeds() {
        assert_eq!(exercise(&text, &models), Reached::Ran);
    }
    let xor = &seeds()[0];
    assert_eq!(
        exercise(&apply(xor, &Edit::Delete(0.0, 5)), &models),
        Reached::Syntax
    );
    assert_eq!(
        exercise(&xor.replace("units: 2", "units: 0"), &models),
        Reached::Plan
    );
    let wide = "(name: \"w\", input: [65536], loss: Mse, layers: [Dense(units: 65536), Dense(units: 65536)])";
    assert_eq!(exercise(wide, &models), Reached::TooBigToRun);
}
