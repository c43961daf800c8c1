//! The closed forms of convolutions and pooling against real measured steps, over random
//! stacks: kernels 1-5, strides 1-3, padding 0-2 (each square or a pair), channel groups
//! (depthwise and grouped convolutions), pooling windows with gaps between them, odd and
//! non-square inputs, then Flatten and Dense, at batch 1-4. Measured equals closed
//! form for every node, phase and kind, and `Counted<f32>` gives plain `f32`'s bits.
//! (Gradients over the same shapes: `tests/gradient_check.rs`.)

#[path = "support/counts.rs"]
mod counts;
#[path = "support/rng.rs"]
mod rng;
#[path = "support/stacks.rs"]
mod stacks;

use opcount::Model;
use proptest::prelude::*;
use rng::Rng;
use stacks::random_stack;

/// Every node, phase and kind of one random stack.
fn measured_equals_closed_form(seed: u64) -> Result<(), String> {
    let stack = random_stack(&mut Rng::new(seed), false);
    counts::measured_equals_closed_form(&stack.text, stack.batch, seed)
}

/// One training step of a random stack with `f32` and with `Counted<f32>`: the loss, the
/// output and every parameter afterwards, bit for bit.
fn counted_gives_plain_bits(seed: u64) -> Result<(), String> {
    let stack = random_stack(&mut Rng::new(seed), false);
    counts::counted_gives_plain_bits(&stack.text, stack.batch, seed)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn random_conv_and_pool_stacks_match_their_closed_forms(seed in any::<u64>()) {
        if let Err(problem) = measured_equals_closed_form(seed) {
            prop_assert!(false, "{}", problem);
        }
    }

    #[test]
    fn random_conv_and_pool_stacks_count_without_changing_a_bit(seed in any::<u64>()) {
        if let Err(problem) = counted_gives_plain_bits(seed) {
            prop_assert!(false, "{}", problem);
        }
    }
}

/// The generator really makes what the property claims to cover.
#[test]
fn the_stacks_cover_groups_strides_padding_gaps_and_non_square_inputs() {
    let mut rng = Rng::new(1);
    let texts: Vec<String> = (0..200)
        .map(|_| random_stack(&mut rng, false).text)
        .collect();
    let all = texts.join("\n");
    for wanted in [
        "stride: 3, padding: 2",
        "kernel: 5",
        "Pool2d(size: 2, stride: 3",
        "MaxPool2d(size: 3, stride: 1, padding: 1)",
        "AvgPool2d(size: 3, stride: 2, padding: 1)",
        "Relu",
        "BatchNorm2d",
        "GlobalAvgPool2d",
        "kernel: (",
        "stride: (",
        "padding: (",
        "groups: 2",
        "groups: 3",
    ] {
        assert!(all.contains(wanted), "no stack has {wanted}");
    }
    // Depthwise: a first layer with a group per input channel, and more than one channel.
    let depthwise = texts.iter().filter(|t| {
        let channels = t
            .split("input: [")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap();
        let first = t
            .split("layers: [\n  ")
            .nth(1)
            .unwrap()
            .lines()
            .next()
            .unwrap();
        channels != "1"
            && first.starts_with("Conv2d")
            && first.contains(&format!("groups: {channels},"))
    });
    assert!(depthwise.count() > 10);
    let non_square = texts.iter().filter(|t| {
        let dims = t
            .split("input: [")
            .nth(1)
            .unwrap()
            .split(']')
            .next()
            .unwrap();
        let d: Vec<&str> = dims.split(", ").collect();
        d[1] != d[2]
    });
    assert!(non_square.count() > 100);
}

/// Kernel, stride and padding are written back as the file wrote them (one number where both
/// axes agree, a pair where not), and `groups` only where it is not 1, so a saved model loads
/// back the same and every older file is saved unchanged.
#[test]
fn pairs_and_groups_are_saved_as_written() {
    let text = "(name: \"s\", input: [4, 9, 8], loss: Mse, layers: [
        Conv2d(out_channels: 4, kernel: 3, stride: 2, padding: 1, groups: 4),
        Conv2d(out_channels: 6, kernel: (1, 3), stride: (2, 1), padding: (0, 1), groups: 2),
        Conv2d(out_channels: 2, kernel: (2, 2)),
        Flatten, Dense(units: 1)])";
    let model = Model::parse(text, "s").unwrap();
    let saved = model.to_ron();
    let words = saved.split_whitespace().collect::<Vec<_>>().join(" ");
    for written in [
        "kernel: 3, stride: 2, padding: 1, groups: 4, )",
        "kernel: (1, 3), stride: (2, 1), padding: (0, 1), groups: 2, )",
        "out_channels: 2, kernel: 2, )",
    ] {
        assert!(words.contains(written), "{written} not in {saved}");
    }
    assert_eq!(Model::parse(&saved, "saved").unwrap(), model);
}
