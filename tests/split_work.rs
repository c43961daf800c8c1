//! The operations on each value or plane (BatchNorm, Add, the activations and the GELUs,
//! pooling) split their work among the pool's threads once a layer is large enough, forward
//! and backward. Here every one of them is large enough: measured equals closed form for every node, phase and kind,
//! `Counted<f32>` gives plain `f32`'s bits, and a step gives the same bits on 1, 2 and 3
//! threads (each value's sums in the same order whatever thread computes it).

#[path = "support/counts.rs"]
mod counts;

use opcount::data::Dataset;
use opcount::{Model, Network};

/// Every layer's input holds 2^15 values or more at `BATCH` (where the split starts), but
/// the dense layer's.
const MODEL: &str = "(name: \"split\", input: [8, 128, 128], loss: SoftmaxCrossEntropy,
    graph: [
        (name: \"conv\", op: Conv2d(out_channels: 8, kernel: 3, padding: 1, bias: false),
            inputs: [\"input\"]),
        (name: \"bn\", op: BatchNorm2d),
        (name: \"add\", op: Add, inputs: [\"bn\", \"input\"]),
        (name: \"relu\", op: Relu),
        (name: \"avg\", op: AvgPool2d(size: 2)),
        (name: \"sigmoid\", op: Sigmoid),
        (name: \"avg.overlapping\", op: AvgPool2d(size: 3, stride: 1, padding: 1)),
        (name: \"bn2\", op: BatchNorm2d),
        (name: \"relu6\", op: Relu6),
        (name: \"max\", op: MaxPool2d(size: 2)),
        (name: \"tanh\", op: Tanh),
        (name: \"gelu\", op: Gelu),
        (name: \"gelu_erf\", op: GeluErf),
        (name: \"max.overlapping\", op: MaxPool2d(size: 3, stride: 1, padding: 1)),
        (name: \"gap\", op: GlobalAvgPool2d),
        (name: \"fc\", op: Dense(units: 10)),
    ])";

const BATCH: usize = 4;

#[test]
fn large_layers_split_among_threads_count_exactly_and_keep_plain_bits() {
    counts::closed_form_and_plain_bits(MODEL, BATCH, 7).unwrap();
}

/// The bits of a plain step's loss, output and parameters afterwards, in a pool of `threads`.
fn step_bits(threads: usize) -> Vec<u32> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        let plan = Model::parse(MODEL, "split.ron")
            .unwrap()
            .plan("split.ron")
            .unwrap();
        let data = Dataset::synthetic(&plan, BATCH, 3);
        let mut net = Network::<f32>::new(&plan);
        let mut bits = Vec::new();
        for _ in 0..2 {
            let loss = net.step(&data.head(BATCH, plan.loss()), 0.1);
            bits.push(loss.to_bits());
        }
        bits.extend(net.output().iter().map(|v| v.to_bits()));
        for p in net.params() {
            bits.extend(p.iter().map(|v| v.to_bits()));
        }
        bits
    })
}

#[test]
fn a_step_gives_the_same_bits_on_any_number_of_threads() {
    let alone = step_bits(1);
    assert_eq!(alone, step_bits(2));
    assert_eq!(alone, step_bits(3));
}
