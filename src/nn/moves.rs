//! Moving values between layouts in vector registers: square tiles transposed, every other
//! value taken, short runs copied.
//!
//! Packing a matrix product's operands is mostly transposing small tiles, or reading a
//! strided convolution's windows, and the compiler does not turn a generic tile's moves or a
//! stride into vector shuffles: it moves one value at a time.
//! Values stored as an `f32` is (`f32` and the counted `f32`s, which wrap one and nothing
//! else) are moved here as 4-byte lanes of AVX registers instead. This is data movement
//! only, never arithmetic, and `f32` and `Counted<f32>` take the same path, so what is
//! measured is still the program that runs; other types take the generic moves. Short runs
//! (`copy_short`) need no such care: copies of a size known to the compiler are vector moves
//! for any type.

use std::any::TypeId;

use crate::{Counted, CountedZeros};

/// Whether `S` is stored exactly as an `f32` is, so that its values may be moved as the 4
/// bytes of one.
#[inline(always)]
fn stored_as_f32<S: 'static>() -> bool {
    let id = TypeId::of::<S>();
    id == TypeId::of::<f32>()
        || id == TypeId::of::<Counted<f32>>()
        || id == TypeId::of::<CountedZeros<f32>>()
}

/// `dst[r * width + j] = runs[j][r]` for `j, r < 8`: eight runs of eight values written side
/// by side as the first eight columns of eight rows `width` apart.
///
/// # Panics
/// If `dst` is shorter than `7 * width + 8`.
#[inline(always)]
pub(crate) fn transpose_8x8<S: Copy + 'static>(runs: [&[S; 8]; 8], dst: &mut [S], width: usize) {
    assert!(
        dst.len() >= 7 * width + 8,
        "a tile's rows lie inside the panel"
    );
    #[cfg(all(target_arch = "x86_64", target_feature = "avx"))]
    if stored_as_f32::<S>() {
        let runs = runs.map(|run| run.as_ptr().cast::<f32>());
        // SAFETY: `S` is `f32` or a transparent wrapper of one, so each run is eight
        // readable `f32`s and `dst` holds eight rows of eight writable `f32`s `width` apart
        // (checked above); AVX is enabled at compile time.
        unsafe { transpose_8x8_avx(runs, dst.as_mut_ptr().cast::<f32>(), width) };
        return;
    }
    for r in 0..8 {
        let row = dst[r * width..]
            .first_chunk_mut::<8>()
            .expect("checked above");
        for (v, run) in row.iter_mut().zip(&runs) {
            *v = run[r];
        }
    }
}

/// `dst[c * 6 + i] = runs[i][c]` for `i < 6`, `c < 8`: six runs of eight values interleaved
/// into eight groups of six, one after the other (a 6-row panel's eight columns).
#[inline(always)]
pub(crate) fn transpose_6x8<S: Copy + 'static>(runs: [&[S; 8]; 6], dst: &mut [S; 48]) {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx"))]
    if stored_as_f32::<S>() {
        use std::arch::x86_64::{_mm256_maskstore_ps, _mm256_set_epi32, _mm256_storeu_ps};
        let [a, b, c, d, e, f] = runs.map(|run| run.as_ptr().cast::<f32>());
        // Two more runs, never stored: the last two lanes of each group.
        let rows = [a, b, c, d, e, f, f, f];
        let dst = dst.as_mut_ptr().cast::<f32>();
        // SAFETY: `S` is `f32` or a transparent wrapper of one, so each run is eight
        // readable `f32`s and `dst` 48 writable ones; AVX is enabled at compile time. Group
        // `c` is stored eight lanes wide at `6 c`: its last two lanes land on the next
        // group's first two, stored right after, and the last group stores six lanes only.
        unsafe {
            let groups = transpose_8x8_avx_registers(rows);
            for (c, group) in groups.into_iter().enumerate().take(7) {
                _mm256_storeu_ps(dst.add(6 * c), group);
            }
            let six = _mm256_set_epi32(0, 0, -1, -1, -1, -1, -1, -1);
            _mm256_maskstore_ps(dst.add(42), six, groups[7]);
        }
        return;
    }
    for (c, group) in dst.chunks_exact_mut(6).enumerate() {
        for (v, run) in group.iter_mut().zip(&runs) {
            *v = run[c];
        }
    }
}

/// [`transpose_8x8`] for `f32`s in AVX registers: the rows are interleaved in pairs, then
/// in pairs of pairs, then the 128-bit halves are swapped across.
///
/// # Safety
/// Each of `runs` points to 8 readable `f32`s; `dst + r * width` to 8 writable ones for
/// every `r < 8`, not overlapping the runs.
#[cfg(all(target_arch = "x86_64", target_feature = "avx"))]
#[inline(always)]
unsafe fn transpose_8x8_avx(runs: [*const f32; 8], dst: *mut f32, width: usize) {
    use std::arch::x86_64::_mm256_storeu_ps;
    // SAFETY: the caller's promise covers every load and store.
    unsafe {
        let rows = transpose_8x8_avx_registers(runs);
        for (r, row) in rows.into_iter().enumerate() {
            _mm256_storeu_ps(dst.add(r * width), row);
        }
    }
}

/// The eight runs of `f32`s, loaded, as the eight rows of their transpose: row `r` holds
/// value `r` of every run.
///
/// # Safety
/// Each of `runs` points to 8 readable `f32`s.
#[cfg(all(target_arch = "x86_64", target_feature = "avx"))]
#[inline(always)]
unsafe fn transpose_8x8_avx_registers(runs: [*const f32; 8]) -> [std::arch::x86_64::__m256; 8] {
    use std::arch::x86_64::{
        _mm256_loadu_ps, _mm256_permute2f128_ps, _mm256_shuffle_ps, _mm256_unpackhi_ps,
        _mm256_unpacklo_ps,
    };
    // SAFETY: the caller's promise covers every load.
    unsafe {
        let v = runs.map(|run| _mm256_loadu_ps(run));
        // Pairs of runs, value by value: (a0 b0 a1 b1 | a4 b4 a5 b5) and the 2, 3, 6, 7s.
        let low = [0, 2, 4, 6].map(|j| _mm256_unpacklo_ps(v[j], v[j + 1]));
        let high = [0, 2, 4, 6].map(|j| _mm256_unpackhi_ps(v[j], v[j + 1]));
        // Four runs, value by value: (a0 b0 c0 d0 | a4 b4 c4 d4), then values 1, 2, 3.
        let quads = |pairs: [_; 4], half: usize| {
            [
                _mm256_shuffle_ps::<0x44>(pairs[2 * half], pairs[2 * half + 1]),
                _mm256_shuffle_ps::<0xEE>(pairs[2 * half], pairs[2 * half + 1]),
            ]
        };
        let [q0, q1] = quads(low, 0);
        let [q2, q3] = quads(high, 0);
        let [q4, q5] = quads(low, 1);
        let [q6, q7] = quads(high, 1);
        [
            _mm256_permute2f128_ps::<0x20>(q0, q4),
            _mm256_permute2f128_ps::<0x20>(q1, q5),
            _mm256_permute2f128_ps::<0x20>(q2, q6),
            _mm256_permute2f128_ps::<0x20>(q3, q7),
            _mm256_permute2f128_ps::<0x31>(q0, q4),
            _mm256_permute2f128_ps::<0x31>(q1, q5),
            _mm256_permute2f128_ps::<0x31>(q2, q6),
            _mm256_permute2f128_ps::<0x31>(q3, q7),
        ]
    }
}

/// `dst[t] = src[2 * t]`: every other value, eight at a time from sixteen in vector
/// registers where the type allows.
///
/// # Panics
/// If `src` is shorter than `2 * dst.len() - 1`.
#[inline(always)]
pub(crate) fn every_other<S: Copy + 'static>(src: &[S], dst: &mut [S]) {
    let n = dst.len();
    assert!(src.len() + 1 >= 2 * n, "every other value of src fills dst");
    let mut t = 0;
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    if stored_as_f32::<S>() {
        use std::arch::x86_64::{
            _mm256_castpd_ps, _mm256_castps_pd, _mm256_loadu_ps, _mm256_permute4x64_pd,
            _mm256_shuffle_ps, _mm256_storeu_ps,
        };
        let (from, to) = (src.as_ptr().cast::<f32>(), dst.as_mut_ptr().cast::<f32>());
        while t + 8 <= n && 2 * t + 16 <= src.len() {
            // SAFETY: `S` is `f32` or a transparent wrapper of one; values 2t..2t+16 of src
            // and t..t+8 of dst are in bounds (the loop's condition); AVX2 is enabled at
            // compile time.
            unsafe {
                let (a, b) = (
                    _mm256_loadu_ps(from.add(2 * t)),
                    _mm256_loadu_ps(from.add(2 * t + 8)),
                );
                // (a0 a2 b0 b2 | a4 a6 b4 b6), then its pairs reordered to a0 a2 a4 a6 b0 ...
                let evens = _mm256_shuffle_ps::<0x88>(a, b);
                let ordered = _mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(evens));
                _mm256_storeu_ps(to.add(t), _mm256_castpd_ps(ordered));
            }
            t += 8;
        }
    }
    for (v, &x) in dst[t..].iter_mut().zip(src[2 * t..].iter().step_by(2)) {
        *v = x;
    }
}

/// `dst = src[..dst.len()]` for a short run (a window row's positions, tens of values), in
/// pieces of a size known to the compiler, the last piece overlapping the one before it
/// where the length is not a whole number of pieces: a few vector moves inline rather than a
/// call to the library's copy for every run.
///
/// # Panics
/// If `src` is shorter than `dst`.
#[inline(always)]
pub(crate) fn copy_short<S: Copy>(src: &[S], dst: &mut [S]) {
    let n = dst.len();
    let src = &src[..n];
    match n {
        16.. => {
            let mut t = 0;
            while t + 16 <= n {
                dst[t..t + 16].copy_from_slice(&src[t..t + 16]);
                t += 16;
            }
            if t < n {
                dst[n - 16..].copy_from_slice(&src[n - 16..]);
            }
        }
        8.. => {
            dst[..8].copy_from_slice(&src[..8]);
            dst[n - 8..].copy_from_slice(&src[n - 8..]);
        }
        4.. => {
            dst[..4].copy_from_slice(&src[..4]);
            dst[n - 4..].copy_from_slice(&src[n - 4..]);
        }
        _ => {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<S: Copy + 'static + PartialEq + std::fmt::Debug>(make: impl Fn(usize) -> S) {
        let width = 11;
        let source: Vec<S> = (0..8 * 13).map(&make).collect();
        let runs: [&[S; 8]; 8] =
            std::array::from_fn(|j| source[j * 13 + 2..].first_chunk::<8>().unwrap());
        let untouched = make(999);
        let mut dst = vec![untouched; 8 * width + 3];
        transpose_8x8(runs, &mut dst[1..], width);
        for (at, &v) in dst.iter().enumerate() {
            let written = at >= 1 && (at - 1) % width < 8 && (at - 1) / width < 8;
            let want = if written {
                let (r, j) = ((at - 1) / width, (at - 1) % width);
                make(j * 13 + 2 + r)
            } else {
                untouched
            };
            assert_eq!(v, want, "at {at}");
        }
    }

    fn check_every_other<S: Copy + 'static + PartialEq + std::fmt::Debug>(
        make: impl Fn(usize) -> S,
    ) {
        for n in 0..40usize {
            for extra in 0..3 {
                let len = (2 * n).saturating_sub(1) + extra;
                let src: Vec<S> = (0..len).map(&make).collect();
                let untouched = make(999);
                let mut dst = vec![untouched; n + 2];
                every_other(&src, &mut dst[1..n + 1]);
                let want: Vec<S> = std::iter::once(untouched)
                    .chain((0..n).map(|t| make(2 * t)))
                    .chain([untouched])
                    .collect();
                assert_eq!(dst, want, "{n} from {len}");
            }
        }
    }

    fn check_6x8<S: Copy + 'static + PartialEq + std::fmt::Debug>(make: impl Fn(usize) -> S) {
        let source: Vec<S> = (0..6 * 9 + 8).map(&make).collect();
        let runs: [&[S; 8]; 6] =
            std::array::from_fn(|i| source[i * 9 + 1..].first_chunk::<8>().unwrap());
        let untouched = make(999);
        let mut dst = [untouched; 50];
        let (_, middle) = dst.split_at_mut(1);
        transpose_6x8(runs, middle.first_chunk_mut::<48>().unwrap());
        let want: Vec<S> = std::iter::once(untouched)
            .chain((0..48).map(|at| make((at % 6) * 9 + 1 + at / 6)))
            .chain([untouched])
            .collect();
        assert_eq!(dst.to_vec(), want);
    }

    #[test]
    fn six_runs_interleave_into_groups_of_six() {
        check_6x8(|i| i as f32);
        check_6x8(|i| Counted::new(i as f32 * 2.0));
        check_6x8(|i| i as f64);
    }

    #[test]
    fn a_short_copy_moves_every_value_of_every_length_and_nothing_else() {
        fn check<S: Copy + PartialEq + std::fmt::Debug>(make: impl Fn(usize) -> S) {
            let source: Vec<S> = (0..80).map(&make).collect();
            for n in 0..70 {
                let untouched = make(999);
                let mut dst = vec![untouched; n + 2];
                copy_short(&source[3..], &mut dst[1..n + 1]);
                let want: Vec<S> = std::iter::once(untouched)
                    .chain((3..n + 3).map(&make))
                    .chain([untouched])
                    .collect();
                assert_eq!(dst, want, "length {n}");
            }
        }
        check(|i| i as f32);
        check(|i| Counted::new(i as f32 * 0.5));
        check(|i| i as f64);
    }

    #[test]
    fn every_other_value_is_taken_in_order() {
        check_every_other(|i| i as f32);
        check_every_other(|i| Counted::new(i as f32 - 0.25));
        check_every_other(|i| i as f64);
    }

    #[test]
    fn every_value_lands_in_its_transposed_place_and_nothing_else_is_written() {
        check(|i| i as f32);
        check(|i| Counted::new(i as f32 + 0.5));
        check(|i| CountedZeros::new(-(i as f32)));
        check(|i| i as f64);
        check(|i| i as u16);
    }
}
