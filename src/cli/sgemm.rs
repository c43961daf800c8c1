//! The reference `opcount bench` and `project` measure this machine's practical peak with: a
//! large `f32` matrix product from the `matrixmultiply` crate, on every core.

use std::time::Duration;

use super::timing::time_median;

/// The practical peak of this machine for `f32` arithmetic: a 1024 x 1024 x 1024 matrix
/// product (the `matrixmultiply` crate, on every core), in floating-point operations (one
/// per multiplication, one per addition: 2 n^3) per second, the median of `rounds` runs.
pub fn sgemm_flops(rounds: usize) -> f64 {
    const N: usize = 1024;
    let a: Vec<f32> = (0..N * N).map(|i| (i % 7) as f32 * 0.25).collect();
    let b: Vec<f32> = (0..N * N).map(|i| (i % 5) as f32 * 0.5).collect();
    let mut c = vec![0.0f32; N * N];
    let seconds = time_median(rounds, Duration::ZERO, || {
        // SAFETY: a, b and c each hold N * N values, laid out row-major with row stride N
        // and column stride 1, exactly as described to sgemm; c is not aliased.
        unsafe {
            matrixmultiply::sgemm(
                N,
                N,
                N,
                1.0,
                a.as_ptr(),
                N as isize,
                1,
                b.as_ptr(),
                N as isize,
                1,
                0.0,
                c.as_mut_ptr(),
                N as isize,
                1,
            );
        }
    });
    std::hint::black_box(&c);
    2.0 * (N * N * N) as f64 / seconds
}
