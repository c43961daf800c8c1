//! The shipped transformers: GPT-2 small's published size and its closed form at full
//! context, and gpt-char, the character model of Pride and Prejudice, measured against its
//! closed form and fed from its text.

use std::path::{Path, PathBuf};

use opcount::convention::Convention;
use opcount::data::Dataset;
use opcount::{Model, Phase, Plan, estimate, measure_step};

fn path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(name)
}

fn text(name: &str) -> String {
    std::fs::read_to_string(path(name)).unwrap()
}

fn plan_of(text: &str) -> Plan {
    Model::parse(text, "m.ron").unwrap().plan("m.ron").unwrap()
}

/// The parameters each node owns, by name.
fn owned(plan: &Plan, name: &str) -> u64 {
    plan.nodes()
        .iter()
        .find(|n| n.name() == name)
        .unwrap_or_else(|| panic!("no node {name}"))
        .params()
}

/// GPT-2 small has 124,439,808 parameters (the 124M checkpoint; Radford et al. 2019, and
/// Hugging Face's `gpt2` reports the same `num_parameters()`), from d = 768, L = 12, a
/// 50,257-token vocabulary and 1,024 positions: the token table V d, the position table
/// 1024 d, per block two layer norms (2 d each), q, k, v and the projection (d d + d each)
/// and the MLP (d 4d + 4d, then 4d d + d), the final layer norm, and no output layer of its
/// own (tied).
#[test]
fn gpt2_small_has_its_published_124_439_808_parameters() {
    let plan = plan_of(&text("gpt2-small.ron"));
    let (d, v, c, l) = (768u64, 50_257u64, 1024u64, 12u64);
    assert_eq!(owned(&plan, "wte"), v * d);
    assert_eq!(owned(&plan, "wpe"), c * d);
    let block = 2 * (2 * d) + 4 * (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d);
    assert_eq!(block, 7_087_872);
    let blocks: u64 = plan
        .nodes()
        .iter()
        .filter(|n| n.name().starts_with("h3."))
        .map(|n| n.params())
        .sum();
    assert_eq!(blocks, block);
    assert_eq!(owned(&plan, "logits"), 0, "tied to wte");
    assert_eq!(plan.params(), u128::from(v * d + c * d + l * block + 2 * d));
    assert_eq!(plan.params(), 124_439_808);
}

/// GPT-2 small's forward multiply-accumulates at its full context of T = 1,024 tokens, by
/// hand: the dense layers 12 L d^2 per token (Kaplan et al.'s N, 84,934,656), the tied
/// output layer V d per token, and attention's scores and mix d T (T + 1) / 2 each per layer
/// (masked pairs not computed). The `mac` view of the closed form gives the same.
#[test]
fn gpt2_small_forward_at_full_context() {
    let plan = plan_of(&text("gpt2-small.ron"));
    let step = estimate::step(&plan, 1).unwrap();
    let (t, d, v, l) = (1024u128, 768u128, 50_257u128, 12u128);
    let kaplan_n = 12 * l * d * d;
    assert_eq!(kaplan_n, 84_934_656);
    let pairs = t * (t + 1) / 2;
    let expected = t * kaplan_n + t * v * d + l * 2 * d * pairs;
    assert_eq!(expected, 136_169_914_368);
    let macs: u128 = plan
        .nodes()
        .iter()
        .zip(&step.nodes)
        .map(|(n, c)| {
            Convention::Mac
                .value(n.kind(), Phase::Forward, &c.forward)
                .unwrap()
        })
        .sum();
    assert_eq!(macs, expected);
}

/// gpt-char: 811,136 parameters (per block 198,272), a vocabulary of the text's 75
/// characters, and its text cut into 64-token windows with the last tenth held out.
#[test]
fn gpt_char_is_sized_as_documented_and_reads_its_text() {
    let model = Model::load(&path("gpt-char.ron")).unwrap();
    let plan = model.plan("gpt-char.ron").unwrap();
    let (d, v, t) = (128u64, 75u64, 64u64);
    let block = 2 * (2 * d) + 4 * (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d);
    assert_eq!(block, 198_272);
    assert_eq!(plan.params(), u128::from(v * d + t * d + 4 * block + 2 * d));
    assert_eq!(plan.params(), 811_136);
    let data = &model.training.as_ref().unwrap().data;
    let (train, held_out) = Dataset::load_split(data, &path(""), "gpt-char.ron", &plan).unwrap();
    assert_eq!((train.len(), held_out.unwrap().len()), (9_629, 1_070));
}

/// gpt-char measured against its closed form, every node, phase and kind, at a context of 16
/// tokens (the whole model at 64 is measured by `opcount count models/gpt-char.ron`).
#[test]
fn gpt_char_measured_equals_closed_form() {
    let short = text("gpt-char.ron").replace("input: [64]", "input: [16]");
    let model = Model::parse(&short, "gpt-char.ron").unwrap();
    let plan = model.plan("gpt-char.ron").unwrap();
    assert_eq!(plan.params(), 811_136, "the position table keeps 64 rows");
    let data = Dataset::synthetic(&plan, 2, 1);
    let measured = measure_step(&plan, &data, 2).predictable();
    assert_eq!(measured, estimate::step(&plan, 2).unwrap());
}

/// The `mac` view of a step, forward and backward.
fn macs(plan: &Plan, batch: usize) -> u128 {
    let step = estimate::step(plan, batch).unwrap();
    plan.nodes()
        .iter()
        .zip(&step.nodes)
        .map(|(n, c)| {
            [Phase::Forward, Phase::Backward]
                .iter()
                .map(|&p| Convention::Mac.value(n.kind(), p, &c.phase(p)).unwrap())
                .sum::<u128>()
        })
        .sum()
}

/// PyTorch's FlopCounterMode on the same models, forward and backward on one sequence
/// (`benches/gpt_flopcounter.py` with PyTorch 2.15.0 on CPU printed the totals below), is
/// twice opcount's `mac` view plus attention's masked pairs and recomputed scores, which it
/// counts and opcount does not compute: L d (4 T^2 - 3 T) multiply-accumulates
/// (docs/transformers.md, "Against PyTorch's FlopCounterMode").
#[test]
fn flop_counter_mode_is_twice_the_mac_view_but_for_attention() {
    for (file, from, to, flop_counter_mode, layers, width) in [
        (
            "gpt2-small.ron",
            "input: [1024]",
            "input: [8]",
            5_937_795_072u128,
            12u128,
            768u128,
        ),
        (
            "gpt-char.ron",
            "input: [64]",
            "input: [64]",
            335_036_416,
            4,
            128,
        ),
    ] {
        let plan = plan_of(&text(file).replace(from, to));
        let t = plan.input().len() as u128;
        let attention = layers * width * (4 * t * t - 3 * t);
        assert_eq!(macs(&plan, 1) + attention, flop_counter_mode / 2, "{file}");
    }
}

/// Figures quoted in docs/transformers.md: GPT-2 small's step at 1,024 tokens is
/// 819,513,175,041 operations, 800,305,835 per token (rounded), 1.57 x 6N.
#[test]
fn the_figures_of_docs_transformers_md() {
    let plan = plan_of(&text("gpt2-small.ron"));
    let step = estimate::step(&plan, 1).unwrap();
    assert_eq!(step.totals().all.total(), 819_513_175_041);
    assert_eq!(macs(&plan, 1), 398_935_296 * 1024);
    // Measured by `opcount count` at 8 tokens (docs/transformers.md, "Measured").
    let short = plan_of(&text("gpt2-small.ron").replace("input: [1024]", "input: [8]"));
    assert_eq!(
        estimate::step(&short, 1).unwrap().totals().all.total(),
        6_110_277_593
    );
    let chars = plan_of(&text("gpt-char.ron"));
    assert_eq!(
        estimate::step(&chars, 1).unwrap().totals().all.total(),
        333_469_377
    );
}
