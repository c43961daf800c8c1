//! Every shipped model's `opcount count --format json` at batch 1 and 3, as the chain
//! interpreter printed it before networks became graphs (`tests/pinned/`, made with the
//! release binary of commit a66b9ad; VGG-16 by its closed form only, the
//! rest measured too). The graph interpreter must print the same: node names, shapes,
//! parameters, measured and estimated counts, multiplications by zero included.
//! Two models came later, each pinned as the release binary of the commit that added it
//! printed it: MobileNetV2 by its closed form only, as VGG-16 (a measured step at 224x224 is
//! `tests/published.rs`'s and the command line's, too slow for this test's debug binary),
//! and digits-resnet measured too. One key came later still, `forward_only` (false for
//! every shipped model).

#[path = "support/cli.rs"]
mod cli;

use cli::{json, opcount, root};

#[test]
fn every_shipped_model_reports_what_the_chain_interpreter_reported() {
    let dir = root().join("tests/pinned");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
        let (model, batch) = stem.rsplit_once('-').unwrap();
        let file = format!("models/{model}.ron");
        let mut args = vec!["count", &file, "--batch", batch, "--format", "json", "-q"];
        if ["vgg16", "mobilenet-v2"].contains(&model) {
            args.push("--closed-form-only");
        }
        let mut now = json(&opcount(&args));
        // `forward_only` came after these were pinned (docs/report-format.md): every shipped
        // model has a loss, so it is false; the rest must be as pinned.
        let forward_only = now.as_object_mut().unwrap().remove("forward_only");
        assert_eq!(forward_only, Some(serde_json::json!(false)), "{stem}");
        let pinned: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert!(now == pinned, "{stem}: the report changed");
        checked += 1;
    }
    assert_eq!(checked, 16, "eight models at two batch sizes");
}
