//! What `opcount bench` and `project` time: a model's step, plain and counted, with the
//! binary's timing harness.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use anyhow::bail;
use opcount::data::Dataset;
use opcount::summary::{BenchTimings, is_kernel};
use opcount::{Counted, Event, Network, Phase, Plan, StepCounts};

use super::args::BenchArgs;
use super::progress::progress_bar;
use super::{sgemm, timing};

/// Whether `opcount bench` times the forward pass alone: `--forward-only`, or a model
/// without a loss.
pub fn forward_only(plan: &Plan, args: &BenchArgs) -> bool {
    args.forward_only || plan.loss().forward_only()
}

/// Times a step (or the forward pass) of `plan` on the first `args.batch` examples of
/// `data` with `f32` and with `Counted<f32>`, interleaved, and the kernel nodes' share of
/// the plain step; returns the counted step's counts and the times. With `share`, the two
/// counted sides are one network (for a model whose three networks do not fit in memory).
/// An error if counting changed a bit of the output.
pub fn bench(
    plan: &Plan,
    data: &Dataset,
    args: &BenchArgs,
    share: bool,
) -> anyhow::Result<(StepCounts, BenchTimings)> {
    // A model without a loss (`--loss none`) has nothing to time but its forward pass.
    let (batch, forward_only) = (args.batch, forward_only(plan, args));
    let mut plain = Network::<f32>::new(plan);
    let mut counted = Network::<Counted<f32>>::new(plan);
    let plain_batch = data.head::<f32>(batch, plan.loss());
    let counted_batch = data.head::<Counted<f32>>(batch, plan.loss());

    // The learning rate is 0 so that thousands of steps on one batch keep the weights (and
    // the speed of the arithmetic) where they started; the step does the same operations.
    // The timed runs call the unwatched entry points, so neither side pays for watching.
    let run_plain = |net: &mut Network<f32>| {
        if forward_only {
            net.forward(&plain_batch.inputs, batch);
        } else {
            net.step(&plain_batch, 0.0);
        }
    };
    let watch_plain = |net: &mut Network<f32>, watch: &mut dyn FnMut(Event)| {
        if forward_only {
            net.forward_watched(&plain_batch.inputs, batch, watch);
        } else {
            net.step_watched(&plain_batch, 0.0, watch);
        }
    };
    let run_counted = |net: &mut Network<Counted<f32>>| {
        if forward_only {
            net.forward(&counted_batch.inputs, batch);
        } else {
            net.step(&counted_batch, Counted::new(0.0));
        }
    };

    // One step of each, untimed: the counts, and a check that counting changed no bit.
    let started = Instant::now();
    run_plain(&mut plain);
    let one_step = started.elapsed();
    run_counted(&mut counted);
    let same = plain
        .output()
        .iter()
        .zip(counted.output())
        .all(|(p, c)| p.to_bits() == c.get().to_bits());
    if !same {
        bail!("internal error: Counted<f32> outputs differ from f32 outputs");
    }
    let step_counts = counted
        .counts()
        .expect("a counted network with attribution on has counts");

    let rounds = args
        .rounds
        .unwrap_or(if one_step > Duration::from_millis(500) {
            5
        } else {
            21
        });
    let expected_s = one_step.as_secs_f64() * 3.0 * rounds as f64;
    let bar = progress_bar(rounds as u64, args.run.quiet || expected_s < 1.0);
    // Three sides, interleaved: plain f32; Counted<f32>, every operation counted in the
    // thread's tally (what counting costs); and Counted<f32> as `opcount count` runs it,
    // with a snapshot of the tally between nodes to attribute the counts to them. Shared,
    // the two counted sides are one network with attribution switched off and on (a flag
    // read at each node), two networks' memory instead of three; the switch costs a tiny
    // model's counted step a few nanoseconds, so it is kept for models that need it.
    let mut attributed = counted;
    let mut counting = (!share).then(|| {
        let mut net = Network::<Counted<f32>>::new(plan);
        net.set_attribution(false);
        net
    });
    let counted = RefCell::new(&mut attributed);
    let medians = timing::interleave(
        rounds,
        Duration::from_millis(40),
        &mut [
            &mut || run_plain(&mut plain),
            &mut || match counting.as_mut() {
                Some(net) => run_counted(net),
                None => {
                    let mut net = counted.borrow_mut();
                    net.set_attribution(false);
                    run_counted(&mut net);
                    net.set_attribution(true);
                }
            },
            &mut || run_counted(&mut counted.borrow_mut()),
        ],
        |round| bar.set_position(round as u64),
    );
    bar.finish_and_clear();
    let (plain_s, counted_s, attributed_s) = (medians[0], medians[1], medians[2]);

    // The convolution and dense kernels alone: their share of plain steps' time, per node.
    // Each sample is followed by three runs of the sgemm reference, so that the kernels and
    // the machine's peak are measured at the same moments, under the same load (a step's
    // kernels take long, a reference product milliseconds: timed apart, a burst of load on
    // either side alone moved their ratio by 10 points here).
    let kernel_nodes: Vec<bool> = plan.nodes().iter().map(is_kernel).collect();
    let mut reference = sgemm::Reference::new();
    reference.flops_per_s(); // its buffers' first touch
    let mut peaks = Vec::new();
    let mut samples: Vec<f64> = (0..rounds.min(9))
        .map(|_| {
            let mut seconds = 0.0;
            let mut last = Instant::now();
            watch_plain(&mut plain, &mut |event| {
                let now = Instant::now();
                let kernel = matches!(event.phase, Phase::Forward | Phase::Backward)
                    && event.node.is_some_and(|k| kernel_nodes[k]);
                if kernel {
                    seconds += (now - last).as_secs_f64();
                }
                last = now;
            });
            peaks.extend((0..3).map(|_| reference.flops_per_s()));
            seconds
        })
        .collect();
    let timings = BenchTimings {
        rounds,
        plain_s,
        counted_s,
        attributed_s,
        kernel_s: timing::median(&mut samples),
        sgemm_flops_per_s: timing::median(&mut peaks),
    };
    Ok((step_counts, timings))
}

/// Median seconds of one plain `f32` training step of `plan` on the first `batch` examples
/// of `data` at learning rate `lr`.
pub fn step_seconds(plan: &Plan, data: &Dataset, batch: usize, lr: f32) -> f64 {
    let mut net = Network::<f32>::new(plan);
    let examples = data.head::<f32>(batch, plan.loss());
    let started = Instant::now();
    net.step(&examples, lr);
    let rounds = if started.elapsed() > Duration::from_millis(500) {
        3
    } else {
        11
    };
    timing::time_median(rounds, Duration::from_millis(20), || {
        net.step(&examples, lr);
    })
}
