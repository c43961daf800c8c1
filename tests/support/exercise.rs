//! One model text (and, optionally, the CSV file it reads) taken as far through opcount as it
//! will go, asserting what must hold on the way. Shared by the property tests
//! (`tests/bad_inputs.rs`) and the fuzz target (`fuzz/fuzz_targets/model.rs`), which include
//! this file with `#[path]`.
//!
//! Any input may fail with an `Err`; none may panic. A model that validates must have closed
//! forms (or an overflow error), a memory estimate, and, when it is small enough to run
//! here, a measured step equal to its closed form for every node, phase and kind. A model
//! with training settings is trained (a bounded number of steps): it ends in a loss history
//! of bounded size and a model that saves and loads back, or in an error.

use std::path::Path;

use opcount::budget::Budget;
use opcount::data::Dataset;
use opcount::train::{LossHistory, Settings, evaluate, train};
use opcount::{Model, Network, estimate, measure_step};

/// Examples per step: more than one, so that batch loops are exercised.
const BATCH: usize = 3;
/// Models up to this many bytes of parameters and activations are run.
const RUN_BYTES: u128 = 4 << 20;
/// ... and up to this many operations per step.
const RUN_OPS: u128 = 10_000_000;
/// Training runs at most this many operations (each epoch at least once).
const TRAIN_OPS: u128 = 2_000_000;
/// The budget models and data are read within: far more than any fuzz input needs.
const BUDGET: u64 = 256 << 20;
/// The CSV file a model text can read in [`exercise_bytes`].
pub const CSV_NAME: &str = "fuzz.csv";

/// How far a text got: the first stage that refused it, or `Ran`.
#[derive(Debug, PartialEq, Eq)]
pub enum Reached {
    Syntax,
    Plan,
    Estimate,
    Data,
    TooBigToRun,
    Ran,
}

/// A fuzz input: model text, then, after a NUL byte, the contents of the CSV file the model
/// may read as [`CSV_NAME`] (written to `scratch`, a directory of the caller's own). Without
/// a NUL, relative data paths are read from `models`.
pub fn exercise_bytes(bytes: &[u8], models: &Path, scratch: &Path) -> Reached {
    let (text, dir) = match bytes.iter().position(|&b| b == 0) {
        None => (bytes, models),
        Some(at) => {
            std::fs::write(scratch.join(CSV_NAME), &bytes[at + 1..]).unwrap();
            (&bytes[..at], scratch)
        }
    };
    match std::str::from_utf8(text) {
        Ok(text) => exercise(text, dir),
        Err(_) => Reached::Syntax,
    }
}

/// Parses, validates, estimates and (if small) runs and trains `text`; relative data paths
/// are read from `dir`. Panics only on a broken invariant, which is a bug.
pub fn exercise(text: &str, dir: &Path) -> Reached {
    let mut budget = Budget::new(BUDGET, "the fuzz target's");
    let parsed = Model::parse_within(text, "fuzz.ron", &mut budget);
    // Charging the lists changes nothing but the budget (compared as text: NaN != NaN).
    let unbounded = Model::parse(text, "fuzz.ron");
    assert_eq!(
        parsed.as_ref().ok().map(Model::to_ron),
        unbounded.as_ref().ok().map(Model::to_ron),
        "parse_within and parse disagree on:\n{text}"
    );
    let Ok(model) = parsed else {
        return Reached::Syntax;
    };
    let Ok(plan) = model.plan("fuzz.ron") else {
        return Reached::Plan;
    };
    assert_eq!(
        model.nodes(),
        plan.nodes().len(),
        "nodes known before planning:\n{text}"
    );
    let bytes = plan.memory_bytes(BATCH, 4);
    assert!(bytes > 0, "a valid plan needs memory");
    let Ok(estimated) = estimate::step(&plan, BATCH) else {
        return Reached::Estimate;
    };
    // Data from a file or the model text is as big as its source; made-up data is as big as
    // the model's input, so it waits for the size check.
    let data = match &model.training {
        Some(t) => match Dataset::load_within(&t.data, dir, "fuzz.ron", &plan, &mut budget) {
            Ok(data) => Some(data),
            Err(_) => return Reached::Data,
        },
        None => None,
    };
    // Every number is finite now, so a saved model must read back equal.
    let again = Model::parse(&model.to_ron(), "saved.ron").expect("a saved model loads back");
    assert_eq!(
        again, model,
        "a saved model changed on the way back:\n{text}"
    );
    let step_ops = estimated.totals().all.total();
    if bytes > RUN_BYTES || step_ops > RUN_OPS {
        return Reached::TooBigToRun;
    }
    if let (Some(training), Some(data)) = (&model.training, &data) {
        exercise_training(&model, &Settings::of(training), data, step_ops, text);
    }
    let data = data.unwrap_or_else(|| Dataset::synthetic(&plan, BATCH, 1));
    let measured = measure_step(&plan, &data, BATCH).predictable();
    assert_eq!(measured, estimated, "measured != closed form for:\n{text}");
    Reached::Ran
}

/// Trains with the model's own settings, for as many epochs as fit in [`TRAIN_OPS`] (at
/// least one): the run diverges (an error) or leaves finite parameters that save and load
/// back, and a loss history of one value per epoch.
fn exercise_training(
    model: &Model,
    settings: &Settings,
    data: &Dataset,
    step_ops: u128,
    text: &str,
) {
    let plan = model.plan("fuzz.ron").expect("planned before");
    let steps = data.len().div_ceil(settings.batch) as u128;
    let epochs = (TRAIN_OPS / step_ops.max(1) / steps).max(1);
    let settings = Settings {
        epochs: settings.epochs.min(epochs as usize),
        ..*settings
    };
    let mut net = Network::<f32>::new(&plan);
    let mut calls = 0;
    let Ok(history) = train(&mut net, data, &settings, |_| calls += 1) else {
        return;
    };
    assert_eq!(calls as u128, steps * settings.epochs as u128, "{text}");
    assert_eq!(history.epochs(), settings.epochs as u64, "{text}");
    assert!(history.values().len() <= LossHistory::CAPACITY);
    evaluate(&mut net, data, settings.batch);
    let saved = net.to_model();
    let again = Model::parse(&saved.to_ron(), "trained.ron").expect("a trained model loads");
    again
        .plan("trained.ron")
        .expect("a trained model validates: every parameter finite");
}
