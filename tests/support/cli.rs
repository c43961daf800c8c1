//! Running the `opcount` binary as a user would, for the tests that do. Included with
//! `#[path]` by each test crate, which may use only some of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

/// The repository's top directory, where `models/` lives.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `opcount args` in the repository's top directory.
pub fn opcount(args: &[&str]) -> Output {
    opcount_in(root(), args)
}

/// Runs `opcount args` in `dir`.
pub fn opcount_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_opcount"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the binary runs")
}

/// The one JSON value a successful run printed.
pub fn json(output: &Output) -> Value {
    assert!(output.status.success(), "stderr: {}", stderr(output));
    serde_json::from_slice(&output.stdout).expect("stdout is one JSON value")
}

/// What a run printed on stderr.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
