//! ONNX bytes from the fuzzer through the decoder and the importer (within a memory
//! budget); a model it gives is converted to RON text, which must read back, and that text
//! goes through every stage of the model target (validation, closed forms, a save and reload,
//! training, a counted step equal to its closed form). Any panic is a bug.

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use opcount::budget::Budget;
use opcount::onnx::{self, Import, Source};

#[allow(dead_code)] // the model target's CSV half is not used here
#[path = "../../tests/support/exercise.rs"]
mod exercise;

/// An empty directory of this process's own: external data is looked for there.
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("opcount-fuzz-onnx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

fuzz_target!(|bytes: &[u8]| {
    let source = Source {
        origin: "fuzz.onnx",
        name: "fuzz",
        dir: scratch(),
    };
    let mut budget = Budget::new(256 << 20, "the fuzz target's");
    let Ok(model) = onnx::parse_within(bytes, &source, &mut budget, &Import::default()) else {
        return;
    };
    let text = onnx::convert(&model, "fuzz.onnx", true);
    let reached = exercise::exercise(&text, scratch());
    assert_ne!(reached, exercise::Reached::Syntax, "{text}");
});
