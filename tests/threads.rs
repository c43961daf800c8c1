//! Counts are exact whatever the caller's threading: `measure_step`, `tally::measure` and
//! the per-node attribution, called from many rayon tasks at once (global or custom pool,
//! nested), from plain threads, and with a watch callback that does counted arithmetic.
//!
//! The model's convolutions are big enough for opcount's kernels to split their work among
//! the pool's threads. While a thread waits for the other parts, rayon lets it run other
//! queued tasks: here, other whole steps. None of their work may land in the waiting step.

use opcount::data::Dataset;
use opcount::{
    Counted, Counts, Event, Model, Op, Plan, StepCounts, estimate, measure_step,
    measure_step_watched, tally,
};
use rayon::prelude::*;

/// Two convolutions whose products and `col2im` go parallel, pooling and a dense layer.
const MODEL: &str = "(name: \"parallel\", input: [4, 24, 24], loss: SoftmaxCrossEntropy,
    layers: [
        Conv2d(out_channels: 16, kernel: 3, padding: 1, activation: Relu),
        Conv2d(out_channels: 8, kernel: 3, stride: 2, activation: Tanh),
        MaxPool2d(size: 2),
        Flatten,
        Dense(units: 10),
    ])";

const BATCH: usize = 2;

/// Steps run at once in a pool.
const STEPS: usize = 96;

fn setup() -> (Plan, Dataset, StepCounts) {
    let model = Model::parse(MODEL, "parallel.ron").unwrap();
    let plan = model.plan("parallel.ron").unwrap();
    let data = Dataset::synthetic(&plan, BATCH, 5);
    let expected = estimate::step(&plan, BATCH).unwrap();
    (plan, data, expected)
}

/// One step measured inside a task: its per-node counts and, around it, `tally::measure`'s
/// total for the thread. Returns a description of what was wrong, if anything.
fn checked_step(plan: &Plan, data: &Dataset, expected: &StepCounts) -> Option<String> {
    let (step, around) = tally::measure(|| measure_step(plan, data, BATCH));
    if step.predictable() != *expected {
        let got = step.predictable().totals().all.total();
        let want = expected.totals().all.total();
        return Some(format!(
            "per-node counts: step total {got}, closed form {want}"
        ));
    }
    if around.predictable() != expected.totals().all {
        return Some(format!(
            "tally::measure around the step: {} operations, closed form {}",
            around.total(),
            expected.totals().all.total()
        ));
    }
    None
}

/// Many steps as tasks of a pool of `threads` threads; every one must equal the closed form.
fn many_steps_in_a_pool(threads: usize) {
    let (plan, data, expected) = setup();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    // Each step is a task of its own, queued on the pool from outside it: a thread that
    // finished its step helps another step's kernel, and a thread that then waits inside
    // that kernel picks up a queued step.
    let wrong = std::sync::Mutex::new(Vec::new());
    pool.in_place_scope(|s| {
        for _ in 0..STEPS {
            s.spawn(|_| {
                if let Some(problem) = checked_step(&plan, &data, &expected) {
                    wrong.lock().unwrap().push(problem);
                }
            });
        }
    });
    let wrong = wrong.into_inner().unwrap();
    assert!(
        wrong.is_empty(),
        "{} of {STEPS} steps wrong: {wrong:?}",
        wrong.len()
    );
}

#[test]
fn steps_run_as_tasks_of_a_two_thread_pool_are_exact() {
    many_steps_in_a_pool(2);
}

#[test]
fn steps_run_as_tasks_of_an_eight_thread_pool_are_exact() {
    many_steps_in_a_pool(8);
}

#[test]
fn steps_in_the_global_pool_nested_in_a_custom_pool_are_exact() {
    let (plan, data, expected) = setup();
    let outer = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    let wrong: Vec<String> = outer.install(|| {
        (0..6)
            .into_par_iter()
            .flat_map_iter(|_| {
                // Tasks of this pool start steps in the global pool, which steal from each
                // other while they wait.
                let inner: Vec<Option<String>> = rayon::scope(|_| {
                    (0..4)
                        .into_par_iter()
                        .map(|_| checked_step(&plan, &data, &expected))
                        .collect()
                });
                inner.into_iter().flatten()
            })
            .collect()
    });
    assert!(wrong.is_empty(), "{wrong:?}");
}

#[test]
fn steps_on_many_plain_threads_at_once_are_exact() {
    let (plan, data, expected) = setup();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..6)
            .map(|_| s.spawn(|| (0..3).find_map(|_| checked_step(&plan, &data, &expected))))
            .collect();
        for worker in workers {
            assert_eq!(worker.join().unwrap(), None);
        }
    });
}

#[test]
fn a_watch_callback_doing_counted_arithmetic_is_not_charged_to_the_step() {
    let (plan, data, expected) = setup();
    let x = Counted::new(3.0f32);
    let mut calls = 0u128;
    let (step, around) = tally::measure(|| {
        measure_step_watched(&plan, &data, BATCH, |_: Event| {
            // One counted multiplication per event, on the step's own thread.
            std::hint::black_box(x * x);
            calls += 1;
        })
    });
    assert!(calls > 0);
    assert_eq!(step.predictable(), expected);
    // The callback's work stays on the thread's tally, outside the step's counts.
    let outside = around - step.totals().all;
    assert_eq!(outside, Counts::of(Op::Mul, calls));
}
