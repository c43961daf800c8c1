//! One model text taken as far through opcount as it will go, asserting what must hold on
//! the way. Shared by the property tests (`tests/bad_inputs.rs`) and the fuzz target
//! (`fuzz/fuzz_targets/model.rs`), which include this file with `#[path]`.
//!
//! Any input may fail with an `Err`; none may panic. A model that validates must have closed
//! forms (or an overflow error), a memory estimate, and, when it is small enough to run
//! here, a measured step equal to its closed form for every node, phase and kind.

use std::path::Path;

use opcount::data::Dataset;
use opcount::{Model, estimate, measure_step};

/// Examples per step: more than one, so that batch loops are exercised.
const BATCH: usize = 3;
/// Models up to this many bytes of parameters and activations are run.
const RUN_BYTES: u128 = 4 << 20;
/// ... and up to this many operations per step.
const RUN_OPS: u128 = 10_000_000;

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

/// Parses, validates, estimates and (if small) runs `text`; relative data paths are read
/// from `dir`. Panics only on a broken invariant, which is a bug.
pub fn exercise(text: &str, dir: &Path) -> Reached {
    let Ok(model) = Model::parse(text, "fuzz.ron") else {
        return Reached::Syntax;
    };
    let Ok(plan) = model.plan("fuzz.ron") else {
        return Reached::Plan;
    };
    let bytes = plan.memory_bytes(BATCH, 4);
    assert!(bytes > 0, "a valid plan needs memory");
    let Ok(estimated) = estimate::step(&plan, BATCH) else {
        return Reached::Estimate;
    };
    // Data from a file or the model text is as big as its source; made-up data is as big as
    // the model's input, so it waits for the size check.
    let data = match &model.training {
        Some(t) => match Dataset::load(&t.data, dir, "fuzz.ron", &plan) {
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
    if bytes > RUN_BYTES || estimated.totals().all.total() > RUN_OPS {
        return Reached::TooBigToRun;
    }
    let data = data.unwrap_or_else(|| Dataset::synthetic(&plan, BATCH, 1));
    let measured = measure_step(&plan, &data, BATCH).predictable();
    assert_eq!(measured, estimated, "measured != closed form for:\n{text}");
    Reached::Ran
}
