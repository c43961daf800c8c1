//! The closed forms of convolutions and pooling against real measured steps, over random
//! stacks: kernels 1-5, strides 1-3, padding 0-2, pooling windows with gaps between them,
//! odd and non-square inputs, then Flatten and Dense, at batch 1-4. Measured equals closed
//! form for every node, phase and kind. (Gradients over the same shapes:
//! `tests/gradient_check.rs`.)

#[path = "support/counts.rs"]
mod counts;
#[path = "support/rng.rs"]
mod rng;
#[path = "support/stacks.rs"]
mod stacks;

use proptest::prelude::*;
use rng::Rng;
use stacks::random_stack;

/// Every node, phase and kind of one random stack.
fn measured_equals_closed_form(seed: u64) -> Result<(), String> {
    let stack = random_stack(&mut Rng::new(seed), false);
    counts::measured_equals_closed_form(&stack.text, stack.batch, seed)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn random_conv_and_pool_stacks_match_their_closed_forms(seed in any::<u64>()) {
        if let Err(problem) = measured_equals_closed_form(seed) {
            prop_assert!(false, "{}", problem);
        }
    }
}

/// The generator really makes what the property claims to cover.
#[test]
fn the_stacks_cover_strides_padding_gaps_and_non_square_inputs() {
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
    ] {
        assert!(all.contains(wanted), "no stack has {wanted}");
    }
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
