//! What counting costs: the same generic kernels with `f32` and `Counted<f32>`, interleaved in
//! one process. Run with `cargo bench --bench counted`. Target: ratio <= 1.05 on each.

use std::hint::black_box;
use std::time::Duration;

use opcount::{Counted, Scalar, tally};

/// The binary's timing harness (not part of the library); this uses only some of it.
#[path = "../src/cli/timing.rs"]
#[allow(dead_code, unused_imports)]
mod timing;

/// Median seconds of a call of `plain` and of `counted`, timed alternately for 31 rounds of
/// about 20 ms.
fn compare(mut plain: impl FnMut(), mut counted: impl FnMut()) -> (f64, f64) {
    let medians = timing::interleave(
        31,
        Duration::from_millis(20),
        &mut [&mut plain, &mut counted],
        |_| {},
    );
    (medians[0], medians[1])
}

/// A dense layer's pre-activation: `z_j = b_j + sum_i x_i * w[i][j]`, accumulated from the
/// bias, weights stored input-major (`w[i * m + j]`).
fn dense_forward<S: Scalar>(w: &[S], b: &[S], x: &[S], z: &mut [S]) {
    let m = b.len();
    z.copy_from_slice(b);
    for (row, &xi) in w.chunks_exact(m).zip(x) {
        for (zj, &wij) in z.iter_mut().zip(row) {
            *zj += xi * wij;
        }
    }
}

/// The logistic function over a slice, in place.
fn sigmoid<S: Scalar>(z: &mut [S]) {
    for v in z.iter_mut() {
        S::record_act();
        *v = S::one() / (S::one() + (-*v).exp());
    }
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 2000) as f32 / 1000.0 - 1.0)
        .collect()
}

fn bench_dense(name: &str, n: usize, m: usize) {
    let (w, b, x) = (values(n * m, 1), values(m, 2), values(n, 3));
    let (cw, cb, cx) = (Counted::vec(&w), Counted::vec(&b), Counted::vec(&x));
    let mut z = vec![0.0f32; m];
    let mut cz = vec![Counted::new(0.0f32); m];
    let (plain_s, counted_s) = compare(
        || {
            dense_forward(
                black_box(&w),
                black_box(&b),
                black_box(&x),
                black_box(&mut z),
            )
        },
        || {
            dense_forward(
                black_box(&cw),
                black_box(&cb),
                black_box(&cx),
                black_box(&mut cz),
            )
        },
    );
    let (_, counts) = tally::measure(|| dense_forward(&cw, &cb, &cx, &mut cz));
    assert_eq!(Counted::unwrap_slice(&cz), z, "counted result differs");
    report(name, plain_s, counted_s, &counts.to_string());
}

fn bench_sigmoid(n: usize) {
    let z0 = values(n, 4);
    let cz0 = Counted::vec(&z0);
    let (mut z, mut cz) = (z0.clone(), cz0.clone());
    let (plain_s, counted_s) = compare(
        || {
            z.copy_from_slice(&z0);
            sigmoid(black_box(&mut z));
        },
        || {
            cz.copy_from_slice(&cz0);
            sigmoid(black_box(&mut cz));
        },
    );
    let (_, counts) = tally::measure(|| {
        cz.copy_from_slice(&cz0);
        sigmoid(&mut cz);
    });
    report(
        &format!("sigmoid over {n}"),
        plain_s,
        counted_s,
        &counts.to_string(),
    );
}

fn report(name: &str, plain_s: f64, counted_s: f64, counts: &str) {
    println!(
        "{name:<22} f32 {:>10.1} ns   Counted<f32> {:>10.1} ns   ratio {:.3}   {counts}",
        plain_s * 1e9,
        counted_s * 1e9,
        counted_s / plain_s
    );
}

fn main() {
    // `cargo test` runs benches once in test mode with --bench absent; keep that quick.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    bench_dense("dense 30x30 forward", 30, 30);
    bench_dense("matvec 784->100", 784, 100);
    bench_sigmoid(4096);
}
