//! Counts past 2^64: every count, total, share, projection and convention view is exact, in
//! the table, the JSON and the CSV, or the run stops with exit code 2 and one line naming the
//! model and what does not fit. Never a wrapped number.

#[path = "support/cli.rs"]
mod cli;

use std::process::Output;

use num_bigint::BigInt;
use opcount::convention::Convention;
use opcount::data::Dataset;
use opcount::project::project;
use opcount::report::{Report, json_number, thousands};
use opcount::{Counts, Error, Model, Op, StepCounts, estimate, measure_step};
use proptest::prelude::*;
use serde_json::Value;

use cli::{json, opcount, stderr};

/// A JSON count: a number, or (above 2^53) a string of decimal digits; nothing else.
fn count(v: &Value) -> BigInt {
    match v {
        Value::Number(n) => {
            let n = n.as_u64().expect("a whole number");
            assert!(n <= 1 << 53, "{n} is above 2^53 but written as a number");
            n.into()
        }
        Value::String(s) => {
            let n: BigInt = s.parse().expect("decimal digits");
            assert!(n > BigInt::from(1u64 << 53), "{n} is written as a string");
            n
        }
        other => panic!("not a count: {other}"),
    }
}

/// The arithmetic operations of a JSON counts object: every kind but `act` and `zmul`.
fn operations(counts: &Value) -> BigInt {
    counts
        .as_object()
        .unwrap()
        .iter()
        .filter(|(kind, _)| !matches!(kind.as_str(), "act" | "zmul"))
        .map(|(_, n)| count(n))
        .sum()
}

/// Exit code 2 and one line on stderr holding every fragment.
fn assert_refused(out: &Output, fragments: &[&str]) {
    let text = stderr(out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");
    for f in fragments {
        assert!(text.contains(f), "expected {f:?} in: {text}");
    }
    assert!(out.stdout.is_empty());
}

/// Every percentage in a table, as written.
fn shares(table: &str) -> Vec<f64> {
    table
        .split('│')
        .filter_map(|cell| cell.trim().strip_suffix('%')?.parse().ok())
        .collect()
}

#[test]
fn vgg16_at_a_batch_of_200_million_is_counted_exactly() {
    // The step of VGG-16 is affine in the batch (docs/counting.md): from the exact counts at
    // batch 1 and 2, the count at batch B is c1 + (B - 1) (c2 - c1), per kind.
    let at = |batch: &str| {
        json(&opcount(&[
            "count",
            "models/vgg16.ron",
            "--closed-form-only",
            "--format",
            "json",
            "--batch",
            batch,
        ]))
    };
    let (one, two, big) = (at("1"), at("2"), at("200000000"));
    let all = |report: &Value| report["totals"]["estimated"]["all"].clone();
    let (c1, c2) = (operations(&all(&one)), operations(&all(&two)));
    let expected = &c1 + BigInt::from(200_000_000 - 1) * (&c2 - &c1);
    assert_eq!(operations(&all(&big)), expected);
    // Before: 89,844,898,228,805,929 (wrapped past 2^64), exit code 0.
    assert_eq!(expected.to_string(), "18536588971938357545");

    let out = opcount(&[
        "count",
        "models/vgg16.ron",
        "--closed-form-only",
        "--batch",
        "200000000",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8(out.stdout).unwrap();
    let step = table.lines().find(|l| l.contains("│ step ")).unwrap();
    assert!(step.contains("18,536,588,971,938,357,545"), "{step}");
    assert!(shares(&table).iter().all(|&s| s <= 100.0), "{table}");

    let csv = String::from_utf8(
        opcount(&[
            "count",
            "models/vgg16.ron",
            "--closed-form-only",
            "--batch",
            "200000000",
            "--format",
            "csv",
        ])
        .stdout,
    )
    .unwrap();
    // conv1_1's forward multiplications: 200e6 x 64 x 224 x 224 x 27, every digit.
    assert!(csv.contains(&(200_000_000u128 * 64 * 224 * 224 * 27).to_string()));
}

#[test]
fn a_projection_past_2_to_the_64_is_exact() {
    let out = json(&opcount(&[
        "project",
        "models/vgg16.ron",
        "--examples",
        "200000000",
        "--epochs",
        "1",
        "--max-memory",
        "1M",
        "--format",
        "json",
    ]));
    // 200 million steps of batch 1, each 92,821,302,404 operations (tests/conventions.rs).
    // Before: the row said 117,516,407,090,448,384, its kinds 18,564,260,480,800,000,000.
    let expected = BigInt::from(200_000_000u64) * BigInt::from(92_821_302_404u64);
    assert_eq!(operations(&out["total"]["all"]), expected);
    assert_eq!(expected.to_string(), "18564260480800000000");
    let phases = ["forward", "loss", "backward", "update"];
    let sum: BigInt = phases.iter().map(|p| operations(&out["total"][p])).sum();
    assert_eq!(sum, expected);

    let table = opcount(&[
        "project",
        "models/vgg16.ron",
        "--examples",
        "200000000",
        "--epochs",
        "1",
        "--max-memory",
        "1M",
    ]);
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(text.contains("18,564,260,480,800,000,000"), "{text}");
}

/// A model of 12 dense layers of 120,000 units: 1.73e11 parameters.
fn write_175_billion(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("huge.ron");
    let layers = ["Dense(units: 120000, activation: Relu)"; 12].join(", ");
    std::fs::write(
        &path,
        format!("(name: \"huge\", input: [120000], loss: Mse, layers: [{layers}])"),
    )
    .unwrap();
    path
}

#[test]
fn flops_of_a_175_billion_parameter_model_over_3e11_examples_are_written_as_strings() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_175_billion(dir.path());
    // Before: "the operations of 1 epochs of 300000000000 examples of huge does not fit in
    // 64 bits", exit code 2.
    let out = json(&opcount(&[
        "project",
        path.to_str().unwrap(),
        "--examples",
        "300000000000",
        "--epochs",
        "1",
        "--convention",
        "flop",
        "--max-memory",
        "1M",
        "--format",
        "json",
    ]));
    let examples = BigInt::from(300_000_000_000u64);
    // Forward: 2 flops per weight of each of the 12 layers and example.
    let forward = BigInt::from(2u64 * 12 * 120_000 * 120_000) * &examples;
    assert_eq!(count(&out["total"]["forward"]), forward);
    assert_eq!(count(&out["per_step"]["forward"]), forward / &examples);
    let backward = count(&out["per_step"]["backward"]) * &examples;
    assert_eq!(count(&out["total"]["backward"]), backward);
    assert_eq!(
        count(&out["total"]["all"]),
        count(&out["total"]["forward"]) + backward
    );
    assert_eq!(out["steps"], 300_000_000_000u64);
}

#[test]
fn a_step_past_2_to_the_64_has_shares_of_at_most_100_percent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.ron");
    std::fs::write(
        &path,
        "(name: \"p\", input: [1000000000], loss: Mse,
          layers: [Dense(units: 1000000000), Dense(units: 1000000000)])",
    )
    .unwrap();
    // Before: at batch 2, a step total of 3,553,255,938,290,448,385 (wrapped) and shares
    // up to 281.4%; at batch 8, "the total of a step of p does not fit in 64 bits".
    for batch in ["2", "8"] {
        let out = opcount(&[
            "count",
            path.to_str().unwrap(),
            "--closed-form-only",
            "--batch",
            batch,
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        let table = String::from_utf8(out.stdout).unwrap();
        let shares = shares(&table);
        assert!(!shares.is_empty());
        assert!(shares.iter().all(|&s| s <= 100.0), "{table}");
    }
    let out = json(&opcount(&[
        "count",
        path.to_str().unwrap(),
        "--closed-form-only",
        "--batch",
        "2",
        "--format",
        "json",
    ]));
    // Per docs/counting.md with B = 2, N = M = 1e9 (as in src/estimate.rs's unit test).
    assert_eq!(
        operations(&out["totals"]["estimated"]["all"]).to_string(),
        "22000000012000000001"
    );
}

#[test]
fn counts_past_2_to_the_128_are_refused_naming_the_file_and_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wide.ron");
    std::fs::write(
        &path,
        "(name: \"wide\", input: [2147483648], loss: Mse,
          layers: [Dense(units: 2147483648), Dense(units: 2147483648)])",
    )
    .unwrap();
    let max = usize::MAX.to_string();
    let out = opcount(&[
        "count",
        path.to_str().unwrap(),
        "--closed-form-only",
        "--batch",
        &max,
    ]);
    assert_refused(&out, &["wide.ron", "model wide", "128 bits", &max]);

    let huge = write_175_billion(dir.path());
    let out = opcount(&[
        "project",
        huge.to_str().unwrap(),
        "--examples",
        &max,
        "--epochs",
        &max,
        "--max-memory",
        "1M",
    ]);
    assert_refused(&out, &["huge.ron", "model huge", "128 bits", "epochs"]);
}

// ---------------------------------------------------------------------------------------
// Every total of random models at batch, examples and epochs up to usize::MAX, against
// exact big-integer arithmetic.

/// Random stacks of dense layers with every activation and both losses, some after a small
/// convolution and pooling.
fn stack() -> impl Strategy<Value = String> {
    let activations = ["Identity", "Sigmoid", "Tanh", "Relu", "Softmax"];
    let dense = (1usize..12, proptest::option::of(0usize..5), any::<bool>());
    (
        proptest::option::of((1usize..3, 3usize..7, 1usize..3, 0usize..2, any::<bool>())),
        1usize..10,
        proptest::collection::vec(dense, 1..=3),
        any::<bool>(),
    )
        .prop_map(move |(conv, input, layers, mse)| {
            let mut text = Vec::new();
            let input = match conv {
                Some((c, size, kernel, padding, max)) => {
                    text.push(format!(
                        "Conv2d(out_channels: 2, kernel: {kernel}, padding: {padding}, activation: Relu)"
                    ));
                    let pool = if max { "MaxPool2d" } else { "AvgPool2d" };
                    text.push(format!("{pool}(size: 2)"));
                    text.push("Flatten".to_string());
                    format!("[{c}, {size}, {}]", size + 1)
                }
                None => format!("[{input}]"),
            };
            let n = layers.len();
            for (i, (units, act, bias)) in layers.into_iter().enumerate() {
                let last = i + 1 == n;
                let units = if last && !mse { units.max(2) } else { units };
                // Cross-entropy takes logits: no softmax after the last weighted layer.
                let act = act.filter(|&a| !(last && !mse && a == 4));
                let act = act.map_or(String::new(), |a| format!(", activation: {}", activations[a]));
                text.push(format!("Dense(units: {units}, bias: {bias}{act})"));
            }
            let loss = if mse { "Mse" } else { "SoftmaxCrossEntropy" };
            format!(
                "(name: \"wide\", input: {input}, loss: {loss}, layers: [{}])",
                text.join(", ")
            )
        })
}

/// Sizes up to the limit, with the edges: 2^53 and its neighbours, 2^64 - 1.
fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        1usize..5,
        Just(usize::MAX),
        Just(usize::MAX - 1),
        Just(1 << 53),
        Just((1 << 53) + 1),
        (1u32..64).prop_map(|s| 1usize << s),
        any::<usize>().prop_map(|n| n.max(1)),
    ]
}

/// One count per row (node and phase, then the loss) and kind, as `c0 + B d`: a step's
/// counts are affine in the batch size B (every formula of docs/counting.md is). Found from
/// steps measured by running the network at batch 1, 2 and 3, so it shares no code with
/// the closed forms.
struct Affine {
    rows: Vec<[(BigInt, BigInt); Op::COUNT]>,
}

fn rows(step: &StepCounts) -> Vec<Counts> {
    let mut out: Vec<Counts> = step
        .nodes
        .iter()
        .flat_map(|n| [n.forward, n.backward, n.update])
        .collect();
    out.push(step.loss);
    out
}

impl Affine {
    fn measure(plan: &opcount::Plan) -> Affine {
        let data = Dataset::synthetic(plan, 3, 7);
        let [m1, m2, m3] = [1, 2, 3].map(|b| rows(&measure_step(plan, &data, b).predictable()));
        let rows = (0..m1.len())
            .map(|r| {
                std::array::from_fn(|i| {
                    let op = Op::ALL[i];
                    let [c1, c2, c3] = [&m1, &m2, &m3].map(|m| BigInt::from(m[r][op]));
                    let d = &c2 - &c1;
                    assert_eq!(&c3 - &c2, d, "row {r} {op} is not affine in the batch");
                    (c1 - &d, d)
                })
            })
            .collect();
        Affine { rows }
    }

    /// Row `r`, kind `i` at batch `b`.
    fn at(&self, r: usize, i: usize, b: &BigInt) -> BigInt {
        let (c0, d) = &self.rows[r][i];
        c0 + b * d
    }

    /// Row `r`, kind `i`, summed over a run: `steps` steps covering `examples` examples.
    fn run(&self, r: usize, i: usize, steps: &BigInt, examples: &BigInt) -> BigInt {
        let (c0, d) = &self.rows[r][i];
        c0 * steps + examples * d
    }
}

fn fits(n: &BigInt) -> bool {
    *n <= BigInt::from(u128::MAX)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn every_total_is_exact_up_to_usize_max_or_an_overflow_error(
        text in stack(),
        batch in size(),
        examples in size(),
        epochs in size(),
    ) {
        let model = Model::parse(&text, "wide").unwrap();
        let plan = model.plan("wide").unwrap();
        let affine = Affine::measure(&plan);
        let nodes = plan.nodes().len();
        // Rows 3k, 3k+1, 3k+2: node k forward, backward, update; the last row the loss.
        let phase_of_row = |r: usize| if r == 3 * nodes { 1 } else { [0, 2, 3][r % 3] };
        let operation = |i: usize| Op::ALL[i].is_operation();
        let weighted = |r: usize| {
            r < 3 * nodes && r % 3 < 2 && matches!(plan.nodes()[r / 3].kind(), "dense" | "conv2d")
        };
        let mul = Op::Mul as usize;

        // One step.
        let b = BigInt::from(batch);
        let grand: BigInt = (0..=3 * nodes)
            .flat_map(|r| (0..Op::COUNT).map(move |i| (r, i)))
            .map(|(r, i)| affine.at(r, i, &b))
            .sum();
        match estimate::step(&plan, batch) {
            Ok(step) => {
                prop_assert!(fits(&grand));
                for (r, counts) in rows(&step).iter().enumerate() {
                    for i in 0..Op::COUNT {
                        prop_assert_eq!(BigInt::from(counts[Op::ALL[i]]), affine.at(r, i, &b));
                    }
                }
                let t = step.totals();
                let phase_totals = [t.forward, t.loss, t.backward, t.update];
                for (p, counts) in phase_totals.iter().enumerate() {
                    let expected: BigInt = (0..=3 * nodes)
                        .filter(|&r| phase_of_row(r) == p)
                        .flat_map(|r| (0..Op::COUNT).filter(|&i| operation(i)).map(move |i| (r, i)))
                        .map(|(r, i)| affine.at(r, i, &b))
                        .sum();
                    prop_assert_eq!(BigInt::from(counts.total()), expected);
                }
                let total: BigInt = (0..=3 * nodes)
                    .flat_map(|r| (0..Op::COUNT).filter(|&i| operation(i)).map(move |i| (r, i)))
                    .map(|(r, i)| affine.at(r, i, &b))
                    .sum();
                prop_assert_eq!(BigInt::from(t.all.total()), total.clone());

                // The report: JSON with strings above 2^53, every digit in the table.
                let report = Report::new(&plan, batch, None, step.clone());
                let json = report.json();
                for op in Op::ALL.into_iter().filter(|op| op.is_predictable()) {
                    let n = BigInt::from(t.all[op]);
                    prop_assert_eq!(count(&json["totals"]["estimated"]["all"][op.name()]), n);
                }
                let table = report.table();
                prop_assert!(table.contains(&thousands(t.all.total())));
                prop_assert!(shares(&table).iter().all(|&s| s <= 100.0));
                let macs: BigInt = (0..3 * nodes)
                    .filter(|&r| weighted(r))
                    .map(|r| affine.at(r, mul, &b))
                    .sum();
                match Report::new(&plan, batch, None, step).in_convention(Convention::Flop) {
                    Ok(flop) => {
                        let all = &flop.json()["totals"]["estimated"]["all"];
                        prop_assert_eq!(count(all), BigInt::from(2) * macs);
                    }
                    Err(e) => prop_assert!(!fits(&(BigInt::from(2) * macs)), "{e}"),
                }
            }
            Err(Error::Overflow { .. }) => prop_assert!(!fits(&grand)),
            Err(e) => prop_assert!(false, "{e}"),
        }

        // A whole run: ceil(examples / batch) steps per epoch, the last one smaller.
        let per_step = batch.min(examples);
        let steps = BigInt::from(examples.div_ceil(per_step));
        let (e, n) = (BigInt::from(epochs), BigInt::from(examples));
        let run = |r: usize, i: usize| affine.run(r, i, &steps, &n) * &e;
        let grand: BigInt = (0..=3 * nodes)
            .flat_map(|r| (0..Op::COUNT).map(move |i| (r, i)))
            .map(|(r, i)| run(r, i))
            .sum();
        match project(&plan, examples, epochs, batch) {
            Ok(p) => {
                prop_assert!(fits(&grand));
                prop_assert_eq!(BigInt::from(p.steps()), &steps * &e);
                let t = p.total;
                for (phase, counts) in [t.forward, t.loss, t.backward, t.update].iter().enumerate() {
                    for i in 0..Op::COUNT {
                        let expected: BigInt = (0..=3 * nodes)
                            .filter(|&r| phase_of_row(r) == phase)
                            .map(|r| run(r, i))
                            .sum();
                        prop_assert_eq!(BigInt::from(counts[Op::ALL[i]]), expected);
                    }
                }
                let total: BigInt = (0..=3 * nodes)
                    .flat_map(|r| (0..Op::COUNT).filter(|&i| operation(i)).map(move |i| (r, i)))
                    .map(|(r, i)| run(r, i))
                    .sum();
                prop_assert_eq!(BigInt::from(t.all.total()), total);
                let macs = |phase: usize| -> BigInt {
                    (0..3 * nodes)
                        .filter(|&r| weighted(r) && r % 3 == phase)
                        .map(|r| run(r, mul))
                        .sum()
                };
                let (f, bw) = (macs(0), macs(1));
                let mac = p.in_convention(&plan, Convention::Mac).unwrap().unwrap();
                prop_assert_eq!(mac.map(BigInt::from), [f.clone(), bw.clone(), &f + &bw]);
                match p.in_convention(&plan, Convention::Flop) {
                    Ok(flop) => {
                        let two = BigInt::from(2);
                        let expected = [&two * &f, &two * &bw, &two * (&f + &bw)];
                        prop_assert_eq!(flop.unwrap().map(BigInt::from), expected);
                    }
                    Err(err) => prop_assert!(!fits(&(BigInt::from(2) * (&f + &bw))), "{err}"),
                }
                prop_assert_eq!(count(&json_number(t.all.total())), BigInt::from(t.all.total()));
            }
            Err(Error::Overflow { model, .. }) => {
                prop_assert_eq!(model, "wide");
                prop_assert!(!fits(&grand));
            }
            Err(e) => prop_assert!(false, "{e}"),
        }
    }
}
