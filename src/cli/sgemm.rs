//! The reference `opcount bench` and `project` measure this machine's practical peak with: a
//! large `f32` matrix product from the `matrixmultiply` crate, on every core.

use std::time::{Duration, Instant};

use super::timing::time_median;

/// The size of the reference product: n x n times n x n.
const N: usize = 1024;

/// The reference product's operands, made once, so that it can be timed again and again
/// between other measurements.
pub struct Reference {
    a: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
}

impl Reference {
    pub fn new() -> Reference {
        Reference {
            a: (0..N * N).map(|i| (i % 7) as f32 * 0.25).collect(),
            b: (0..N * N).map(|i| (i % 5) as f32 * 0.5).collect(),
            c: vec![0.0f32; N * N],
        }
    }

    /// One product, in floating-point operations (one per multiplication, one per
    /// addition: 2 n^3) per second.
    pub fn flops_per_s(&mut self) -> f64 {
        let started = Instant::now();
        // SAFETY: a, b and c each hold N * N values, laid out row-major with row stride N
        // and column stride 1, exactly as described to sgemm; c is not aliased.
        unsafe {
            matrixmultiply::sgemm(
                N,
                N,
                N,
                1.0,
                self.a.as_ptr(),
                N as isize,
                1,
                self.b.as_ptr(),
                N as isize,
                1,
                0.0,
                self.c.as_mut_ptr(),
                N as isize,
                1,
            );
        }
        let seconds = started.elapsed().as_secs_f64();
        std::hint::black_box(&self.c);
        2.0 * (N * N * N) as f64 / seconds
    }
}

/// The practical peak of this machine for `f32` arithmetic: a 1024 x 1024 x 1024 matrix
/// product (the `matrixmultiply` crate, on every core), in floating-point operations per
/// second, the median of `rounds` runs.
pub fn sgemm_flops(rounds: usize) -> f64 {
    let mut reference = Reference::new();
    let seconds = time_median(rounds, Duration::ZERO, || {
        reference.flops_per_s();
    });
    2.0 * (N * N * N) as f64 / seconds
}
