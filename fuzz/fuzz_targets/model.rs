//! Model text from the fuzzer through parsing (with its lists charged to a memory budget),
//! validation, closed forms, the memory estimate, data loading, a save-and-reload round
//! trip, a real counted step that must equal its closed form, and training with the model's
//! own settings (bounded). An input with a NUL byte carries, after it, the CSV file the model
//! may read as `fuzz.csv`, so the CSV loader is fuzzed too. Any panic is a bug.

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/support/exercise.rs"]
mod exercise;

/// A directory of this process's own for the CSV files.
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("opcount-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

fuzz_target!(|bytes: &[u8]| {
    // Relative data paths resolve against the shipped models, so `data/iris.csv` loads.
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
    exercise::exercise_bytes(bytes, &models, scratch());
});
