//! The registry of operations (`src/nn/ops.rs`) is the one list of what a model may use:
//! each operation and activation it names is documented where users and reviewers look, and
//! the fuzz dictionary is made from it (`examples/fuzz_dictionary.rs`).

use opcount::model::{Activation, OPERATIONS};

fn doc(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs")
        .join(name);
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn every_operation_is_documented_in_the_model_format_and_the_counting_rules() {
    let (format, counting) = (doc("model-format.md"), doc("counting.md"));
    let activations = Activation::ALL.map(|a| format!("{a:?}"));
    for name in OPERATIONS
        .iter()
        .copied()
        .chain(activations.iter().map(|s| s.as_str()))
    {
        assert!(
            format.contains(&format!("`{name}")),
            "docs/model-format.md: no `{name}`"
        );
        // A heading or a table row of its own says how it counts.
        let lower = name.to_lowercase();
        let named = counting.lines().any(|line| {
            let line = line.to_lowercase();
            (line.starts_with('#') || line.starts_with('|'))
                && line
                    .split(|c: char| !c.is_alphanumeric())
                    .any(|word| word == lower)
        });
        assert!(named, "docs/counting.md has no heading or row for {name}");
    }
}

#[test]
fn every_activation_is_also_a_layer() {
    for a in Activation::ALL {
        let name = format!("{a:?}");
        assert!(
            OPERATIONS.contains(&name.as_str()),
            "{name} is not in OPERATIONS"
        );
    }
}
