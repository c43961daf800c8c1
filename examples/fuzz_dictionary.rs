//! Prints the fuzz target's dictionary (libFuzzer's `-dict`): the model format's syntax and
//! field names, and every operation, activation and loss name, taken from the registry so
//! that a new operation reaches the fuzzer without anyone editing a list. See
//! docs/fuzzing.md:
//!
//! ```sh
//! cargo run --example fuzz_dictionary > fuzz/model.dict
//! ```

use opcount::model::{Activation, OPERATIONS};

/// The format's punctuation, field names and edge values.
const SYNTAX: &[&str] = &[
    "(",
    ")",
    "[",
    "]",
    ",",
    ":",
    "name:",
    "input:",
    "layers:",
    "graph:",
    "op:",
    "inputs:",
    "share:",
    "\"input\"",
    "loss:",
    "init:",
    "training:",
    "units:",
    "activation:",
    "bias:",
    "weights:",
    "biases:",
    "out_channels:",
    "kernel:",
    "stride:",
    "padding:",
    "groups:",
    "values:",
    "perm:",
    "shape:",
    "Sub",
    "SubFrom",
    "Div",
    "size:",
    "Mse",
    "SoftmaxCrossEntropy",
    "Xavier",
    "He",
    "seed:",
    "Some",
    "None",
    "true",
    "false",
    "Inline",
    "Csv",
    "Synthetic",
    "examples:",
    "path:",
    "targets:",
    "Classes",
    "Values",
    "Class",
    "column:",
    "classes:",
    "epochs:",
    "lr:",
    "batch:",
    "2147483648",
    "4294967296",
    "18446744073709551616",
    "NaN",
    "inf",
    "1e30",
    "features:",
    "columns:",
    "\"fuzz.csv\"",
    "18446744073709551615",
    "1e39",
    "held_out:",
    "params:",
    "{",
    "}",
    "\"weights\"",
    "\"biases\"",
    "\"gamma\"",
    "\"beta\"",
    "\"table\"",
    "\"running_mean\"",
    "\"running_var\"",
];

/// Bytes for the CSV file a fuzz input carries after a NUL byte (see
/// `tests/support/exercise.rs`), in libFuzzer's escapes: the separator, line endings, a BOM.
const BYTES: &[&str] = &[r"\x00", r"\x0d\x0a", r"\x0d", r"\xef\xbb\xbf"];

fn main() {
    println!("# Tokens of the model format, for libFuzzer's -dict option.");
    println!("# Made by `cargo run --example fuzz_dictionary`; do not edit.");
    let activations = Activation::ALL.map(|a| format!("{a:?}"));
    let names = SYNTAX
        .iter()
        .map(|s| s.to_string())
        .chain(OPERATIONS.iter().map(|s| s.to_string()))
        .chain(activations);
    let mut seen = std::collections::HashSet::new();
    for token in names.filter(|t| seen.insert(t.clone())) {
        println!(
            "{}",
            serde_json::to_string(&token).expect("a string serializes")
        );
    }
    println!("# After a NUL byte, the CSV file the model reads as fuzz.csv.");
    for bytes in BYTES {
        println!("\"{bytes}\"");
    }
}
