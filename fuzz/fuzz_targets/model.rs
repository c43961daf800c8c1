//! Model text from the fuzzer through parsing, validation, closed forms, the memory
//! estimate, data loading, a save-and-reload round trip and (for small models) a real
//! counted step that must equal its closed form. Any panic is a bug.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/support/exercise.rs"]
mod exercise;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(text) = std::str::from_utf8(bytes) {
        // Relative data paths resolve against the shipped models, so `data/iris.csv` loads.
        let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
        exercise::exercise(text, &models);
    }
});
