//! Every operator and every num-traits method of `Counted<T>`: it bumps exactly the counters
//! `docs/counting.md` gives it, and returns the same bits as plain `T` (the oracle) on
//! special and random inputs, for `f32` and `f64`.

use std::cmp::Ordering;
use std::num::FpCategory;

use num_traits::float::TotalOrder;
use num_traits::{Bounded, Float, NumCast, Signed};
use opcount::{Counted, Counts, Op, Scalar, tally};

/// Turns any result into integers that are equal exactly when the results are bit-identical.
///
/// Every NaN maps to one value: Rust does not specify the sign and payload of a NaN that an
/// operation produces (RFC 3514), and the compiler may swap the operands of `a + b`, so even
/// two plain `f32` additions may give different NaN bits.
trait Observe {
    fn observe(&self) -> Vec<u64>;
}

const ANY_NAN: u64 = u64::MAX;

impl Observe for f32 {
    fn observe(&self) -> Vec<u64> {
        vec![if self.is_nan() {
            ANY_NAN
        } else {
            self.to_bits() as u64
        }]
    }
}
impl Observe for f64 {
    fn observe(&self) -> Vec<u64> {
        vec![if self.is_nan() {
            ANY_NAN
        } else {
            self.to_bits()
        }]
    }
}
impl<T: Observe + Copy> Observe for Counted<T> {
    fn observe(&self) -> Vec<u64> {
        self.get().observe()
    }
}
impl Observe for bool {
    fn observe(&self) -> Vec<u64> {
        vec![*self as u64]
    }
}
impl Observe for Ordering {
    fn observe(&self) -> Vec<u64> {
        vec![*self as i8 as u64]
    }
}
impl Observe for FpCategory {
    fn observe(&self) -> Vec<u64> {
        vec![*self as u64]
    }
}
impl Observe for i64 {
    fn observe(&self) -> Vec<u64> {
        vec![*self as u64]
    }
}
impl Observe for u64 {
    fn observe(&self) -> Vec<u64> {
        vec![*self]
    }
}
impl<A: Observe> Observe for Option<A> {
    fn observe(&self) -> Vec<u64> {
        match self {
            None => vec![u64::MAX - 7],
            Some(a) => a.observe(),
        }
    }
}
impl<A: Observe, B: Observe> Observe for (A, B) {
    fn observe(&self) -> Vec<u64> {
        [self.0.observe(), self.1.observe()].concat()
    }
}
impl Observe for (u64, i16, i8) {
    fn observe(&self) -> Vec<u64> {
        vec![self.0, self.1 as u64, self.2 as u64]
    }
}

/// The operator forms with borrowed operands, which a generic bound cannot express (bounds
/// on `&S` are not implied), written once per concrete type by `ref_ops!`.
trait RefOps: Sized {
    fn add_refs(&self, o: &Self) -> Self;
    fn add_ref_left(&self, o: Self) -> Self;
    fn add_ref_right(self, o: &Self) -> Self;
    fn add_assign_ref(&mut self, o: &Self);
    fn sub_refs(&self, o: &Self) -> Self;
    fn sub_assign_ref(&mut self, o: &Self);
    fn mul_refs(&self, o: &Self) -> Self;
    fn mul_assign_ref(&mut self, o: &Self);
    fn div_refs(&self, o: &Self) -> Self;
    fn div_assign_ref(&mut self, o: &Self);
    fn rem_refs(&self, o: &Self) -> Self;
    fn rem_assign_ref(&mut self, o: &Self);
    fn neg_ref(&self) -> Self;
}

macro_rules! ref_ops {
    ($($T:ty),*) => {$(
        impl RefOps for $T {
            fn add_refs(&self, o: &Self) -> Self { self + o }
            fn add_ref_left(&self, o: Self) -> Self { self + o }
            fn add_ref_right(self, o: &Self) -> Self { self + o }
            fn add_assign_ref(&mut self, o: &Self) { *self += o }
            fn sub_refs(&self, o: &Self) -> Self { self - o }
            fn sub_assign_ref(&mut self, o: &Self) { *self -= o }
            fn mul_refs(&self, o: &Self) -> Self { self * o }
            fn mul_assign_ref(&mut self, o: &Self) { *self *= o }
            fn div_refs(&self, o: &Self) -> Self { self / o }
            fn div_assign_ref(&mut self, o: &Self) { *self /= o }
            fn rem_refs(&self, o: &Self) -> Self { self % o }
            fn rem_assign_ref(&mut self, o: &Self) { *self %= o }
            fn neg_ref(&self) -> Self { -self }
        }
    )*};
}
ref_ops!(f32, f64, Counted<f32>, Counted<f64>);

/// What the generic operations need beyond `Scalar`.
trait Full: Scalar + Bounded + TotalOrder + RefOps + Observe {}
impl<T: Scalar + Bounded + TotalOrder + RefOps + Observe> Full for T {}

/// One case per operation: a generic function of three inputs and the counts it must bump.
/// `cases!` turns each into a function evaluated with plain and counted numbers.
struct Case {
    name: &'static str,
    expected: Counts,
    run_f32: fn(f32, f32, f32) -> Vec<u64>,
    run_counted_f32: fn(f32, f32, f32) -> Vec<u64>,
    run_f64: fn(f64, f64, f64) -> Vec<u64>,
    run_counted_f64: fn(f64, f64, f64) -> Vec<u64>,
}

macro_rules! cases {
    ($( $name:ident |$a:ident, $b:ident, $c:ident| $body:expr => { $($kind:ident: $n:expr),* }; )*) => {
        fn all_cases() -> Vec<Case> {
            vec![$({
                #[allow(unused_variables, unused_mut, clippy::all)]
                fn op<S: Full>($a: S, $b: S, $c: S) -> Vec<u64> {
                    $body.observe()
                }
                Case {
                    name: stringify!($name),
                    expected: Counts { $($kind: $n,)* ..Counts::ZERO },
                    run_f32: |a, b, c| op::<f32>(a, b, c),
                    run_counted_f32: |a, b, c| op::<Counted<f32>>(a.into(), b.into(), c.into()),
                    run_f64: |a, b, c| op::<f64>(a, b, c),
                    run_counted_f64: |a, b, c| op::<Counted<f64>>(a.into(), b.into(), c.into()),
                }
            },)*]
        }
    };
}

fn k<S: Scalar>(x: f64) -> S {
    S::from_f64(x).unwrap()
}

cases! {
    // Arithmetic operators, owned, borrowed and assigning.
    add |a, b, c| a + b => { add: 1 };
    add_refs |a, b, c| a.add_refs(&b) => { add: 1 };
    add_ref_left |a, b, c| a.add_ref_left(b) => { add: 1 };
    add_ref_right |a, b, c| a.add_ref_right(&b) => { add: 1 };
    add_assign |a, b, c| { let mut x = a; x += b; x } => { add: 1 };
    add_assign_ref |a, b, c| { let mut x = a; x.add_assign_ref(&b); x } => { add: 1 };
    sub |a, b, c| a - b => { sub: 1 };
    sub_refs |a, b, c| a.sub_refs(&b) => { sub: 1 };
    sub_assign |a, b, c| { let mut x = a; x -= b; x } => { sub: 1 };
    sub_assign_ref |a, b, c| { let mut x = a; x.sub_assign_ref(&b); x } => { sub: 1 };
    mul |a, b, c| a * b => { mul: 1 };
    mul_refs |a, b, c| a.mul_refs(&b) => { mul: 1 };
    mul_assign |a, b, c| { let mut x = a; x *= b; x } => { mul: 1 };
    mul_assign_ref |a, b, c| { let mut x = a; x.mul_assign_ref(&b); x } => { mul: 1 };
    div |a, b, c| a / b => { div: 1 };
    div_refs |a, b, c| a.div_refs(&b) => { div: 1 };
    div_assign |a, b, c| { let mut x = a; x /= b; x } => { div: 1 };
    div_assign_ref |a, b, c| { let mut x = a; x.div_assign_ref(&b); x } => { div: 1 };
    rem |a, b, c| a % b => { rem: 1 };
    rem_refs |a, b, c| a.rem_refs(&b) => { rem: 1 };
    rem_assign |a, b, c| { let mut x = a; x %= b; x } => { rem: 1 };
    rem_assign_ref |a, b, c| { let mut x = a; x.rem_assign_ref(&b); x } => { rem: 1 };
    neg |a, b, c| -a => { neg: 1 };
    neg_ref |a, b, c| a.neg_ref() => { neg: 1 };
    sum3 |a, b, c| [a, b, c].into_iter().sum::<S>() => { add: 2 };
    sum3_refs |a, b, c| [a, b, c].iter().sum::<S>() => { add: 2 };
    product3 |a, b, c| [a, b, c].into_iter().product::<S>() => { mul: 2 };
    product3_refs |a, b, c| [a, b, c].iter().product::<S>() => { mul: 2 };

    // Comparisons.
    eq |a, b, c| a == b => { cmp: 1 };
    ne |a, b, c| a != b => { cmp: 1 };
    lt |a, b, c| a < b => { cmp: 1 };
    le |a, b, c| a <= b => { cmp: 1 };
    gt |a, b, c| a > b => { cmp: 1 };
    ge |a, b, c| a >= b => { cmp: 1 };
    partial_cmp |a, b, c| a.partial_cmp(&b) => { cmp: 1 };
    total_cmp |a, b, c| a.total_cmp(&b) => { cmp: 1 };

    // Free: copies, constants, conversions, classification.
    clone |a, b, c| a.clone() => {};
    default |a, b, c| S::default() => {};
    zero |a, b, c| S::zero() => {};
    one |a, b, c| S::one() => {};
    is_zero |a, b, c| a.is_zero() => {};
    is_one |a, b, c| a.is_one() => {};
    set_zero |a, b, c| { let mut x = a; x.set_zero(); x } => {};
    set_one |a, b, c| { let mut x = a; x.set_one(); x } => {};
    from_str_radix |a, b, c| S::from_str_radix("-12.5", 10).ok() => {};
    num_cast |a, b, c| <S as NumCast>::from(a) => {};
    to_i64 |a, b, c| a.to_i64() => {};
    to_u64 |a, b, c| a.to_u64() => {};
    to_f64 |a, b, c| a.to_f64() => {};
    from_f64 |a, b, c| S::from_f64(1.25) => {};
    from_i64 |a, b, c| S::from_i64(-3) => {};
    bounded_min |a, b, c| <S as Bounded>::min_value() => {};
    bounded_max |a, b, c| <S as Bounded>::max_value() => {};
    const_pi |a, b, c| S::PI() => {};
    const_e |a, b, c| S::E() => {};
    const_tau |a, b, c| S::TAU() => {};
    const_log10_2 |a, b, c| S::LOG10_2() => {};
    const_log2_10 |a, b, c| S::LOG2_10() => {};
    const_frac_1_sqrt_2 |a, b, c| S::FRAC_1_SQRT_2() => {};
    signed_is_positive |a, b, c| Signed::is_positive(&a) => {};
    signed_is_negative |a, b, c| Signed::is_negative(&a) => {};

    // Signed.
    signed_abs |a, b, c| Signed::abs(&a) => { abs: 1 };
    signed_signum |a, b, c| Signed::signum(&a) => { abs: 1 };
    signed_abs_sub |a, b, c| Signed::abs_sub(&a, &b) => { sub: 1, cmp: 1 };

    // num_traits::Float, in the order the trait declares its methods.
    nan |a, b, c| S::nan() => {};
    infinity |a, b, c| S::infinity() => {};
    neg_infinity |a, b, c| S::neg_infinity() => {};
    neg_zero |a, b, c| S::neg_zero() => {};
    min_value |a, b, c| <S as Float>::min_value() => {};
    min_positive_value |a, b, c| S::min_positive_value() => {};
    epsilon |a, b, c| S::epsilon() => {};
    max_value |a, b, c| <S as Float>::max_value() => {};
    is_nan |a, b, c| a.is_nan() => {};
    is_infinite |a, b, c| a.is_infinite() => {};
    is_finite |a, b, c| a.is_finite() => {};
    is_normal |a, b, c| a.is_normal() => {};
    is_subnormal |a, b, c| a.is_subnormal() => {};
    classify |a, b, c| a.classify() => {};
    floor |a, b, c| a.floor() => { round: 1 };
    ceil |a, b, c| a.ceil() => { round: 1 };
    round |a, b, c| a.round() => { round: 1 };
    trunc |a, b, c| a.trunc() => { round: 1 };
    fract |a, b, c| a.fract() => { round: 1, sub: 1 };
    abs |a, b, c| Float::abs(a) => { abs: 1 };
    signum |a, b, c| Float::signum(a) => { abs: 1 };
    is_sign_positive |a, b, c| a.is_sign_positive() => {};
    is_sign_negative |a, b, c| a.is_sign_negative() => {};
    mul_add |a, b, c| a.mul_add(b, c) => { mul: 1, add: 1 };
    recip |a, b, c| a.recip() => { div: 1 };
    powi |a, b, c| a.powi(3) => { pow: 1 };
    powi_negative |a, b, c| a.powi(-2) => { pow: 1 };
    powf |a, b, c| a.powf(b) => { pow: 1 };
    sqrt |a, b, c| a.sqrt() => { sqrt: 1 };
    exp |a, b, c| a.exp() => { exp: 1 };
    exp2 |a, b, c| a.exp2() => { exp: 1 };
    ln |a, b, c| a.ln() => { ln: 1 };
    log |a, b, c| a.log(b) => { ln: 2, div: 1 };
    log2 |a, b, c| a.log2() => { ln: 1 };
    log10 |a, b, c| a.log10() => { ln: 1 };
    to_degrees |a, b, c| a.to_degrees() => { mul: 1 };
    to_radians |a, b, c| a.to_radians() => { mul: 1 };
    max |a, b, c| a.max(b) => { cmp: 1 };
    min |a, b, c| a.min(b) => { cmp: 1 };
    clamp |a, b, c| Float::clamp(a, k(-1.5), k(2.0)) => { cmp: 2 };
    abs_sub |a, b, c| { #[allow(deprecated)] Float::abs_sub(a, b) } => { sub: 1, cmp: 1 };
    cbrt |a, b, c| a.cbrt() => { trans: 1 };
    hypot |a, b, c| a.hypot(b) => { trans: 1 };
    sin |a, b, c| a.sin() => { trans: 1 };
    cos |a, b, c| a.cos() => { trans: 1 };
    tan |a, b, c| a.tan() => { trans: 1 };
    asin |a, b, c| a.asin() => { trans: 1 };
    acos |a, b, c| a.acos() => { trans: 1 };
    atan |a, b, c| a.atan() => { trans: 1 };
    atan2 |a, b, c| a.atan2(b) => { trans: 1 };
    sin_cos |a, b, c| a.sin_cos() => { trans: 2 };
    exp_m1 |a, b, c| a.exp_m1() => { exp: 1 };
    ln_1p |a, b, c| a.ln_1p() => { ln: 1 };
    sinh |a, b, c| a.sinh() => { trans: 1 };
    cosh |a, b, c| a.cosh() => { trans: 1 };
    tanh |a, b, c| a.tanh() => { tanh: 1 };
    asinh |a, b, c| a.asinh() => { trans: 1 };
    acosh |a, b, c| a.acosh() => { trans: 1 };
    atanh |a, b, c| a.atanh() => { trans: 1 };
    integer_decode |a, b, c| a.integer_decode() => {};
    copysign |a, b, c| a.copysign(b) => { abs: 1 };

    // The activation hook.
    record_act |a, b, c| { S::record_act(); a } => { act: 1 };
}

/// A small deterministic generator (SplitMix64) for random bit patterns.
struct Bits(u64);
impl Bits {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn specials_f64() -> Vec<f64> {
    vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        0.5,
        -2.75,
        3.0,
        1e-310,  // subnormal
        -4e-320, // subnormal
        f64::MIN_POSITIVE,
        f64::MAX,
        f64::MIN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        -f64::NAN,
        f64::EPSILON,
    ]
}

fn specials_f32() -> Vec<f32> {
    vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        0.5,
        -2.75,
        3.0,
        1e-40,  // subnormal
        -3e-44, // subnormal
        f32::MIN_POSITIVE,
        f32::MAX,
        f32::MIN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        f32::EPSILON,
    ]
}

/// Triples of inputs: every pair of special values (third from a rotation), then random bit
/// patterns and random ordinary numbers.
fn inputs<T: Copy>(specials: &[T], random: impl Fn(&mut Bits) -> T) -> Vec<(T, T, T)> {
    let mut out = Vec::new();
    for (i, &a) in specials.iter().enumerate() {
        for (j, &b) in specials.iter().enumerate() {
            out.push((a, b, specials[(i + j) % specials.len()]));
        }
    }
    let mut bits = Bits(2026);
    for _ in 0..2000 {
        out.push((random(&mut bits), random(&mut bits), random(&mut bits)));
    }
    out
}

fn inputs_f64() -> Vec<(f64, f64, f64)> {
    inputs(&specials_f64(), |r| {
        if r.next() % 2 == 0 {
            f64::from_bits(r.next())
        } else {
            (r.next() % 20_000) as f64 / 1000.0 - 10.0
        }
    })
}

fn inputs_f32() -> Vec<(f32, f32, f32)> {
    inputs(&specials_f32(), |r| {
        if r.next() % 2 == 0 {
            f32::from_bits(r.next() as u32)
        } else {
            (r.next() % 20_000) as f32 / 1000.0 - 10.0
        }
    })
}

#[test]
fn every_operation_bumps_exactly_its_documented_counters() {
    for case in all_cases() {
        for &(a, b, c) in &inputs_f64()[..40] {
            let (_, counts) = tally::measure(|| (case.run_counted_f64)(a, b, c));
            if let Err(mismatch) = counts.check(&case.expected) {
                panic!("{} on f64 ({a}, {b}, {c}): {mismatch}", case.name);
            }
        }
        for &(a, b, c) in &inputs_f32()[..40] {
            let (_, counts) = tally::measure(|| (case.run_counted_f32)(a, b, c));
            if let Err(mismatch) = counts.check(&case.expected) {
                panic!("{} on f32 ({a}, {b}, {c}): {mismatch}", case.name);
            }
        }
    }
}

#[test]
fn plain_numbers_count_nothing() {
    for case in all_cases() {
        let (_, counts) = tally::measure(|| {
            (case.run_f32)(1.5, -2.0, 0.25);
            (case.run_f64)(1.5, -2.0, 0.25)
        });
        assert_eq!(counts, Counts::ZERO, "{}", case.name);
    }
}

#[test]
fn every_operation_is_bit_identical_to_plain_f64() {
    let inputs = inputs_f64();
    for case in all_cases() {
        for &(a, b, c) in &inputs {
            assert_eq!(
                (case.run_counted_f64)(a, b, c),
                (case.run_f64)(a, b, c),
                "{} on ({a:e}, {b:e}, {c:e})",
                case.name
            );
        }
    }
}

#[test]
fn every_operation_is_bit_identical_to_plain_f32() {
    let inputs = inputs_f32();
    for case in all_cases() {
        for &(a, b, c) in &inputs {
            assert_eq!(
                (case.run_counted_f32)(a, b, c),
                (case.run_f32)(a, b, c),
                "{} on ({a:e}, {b:e}, {c:e})",
                case.name
            );
        }
    }
}

#[test]
fn a_sum_of_k_terms_costs_k_minus_one_adds() {
    for k in 0..50usize {
        let values: Vec<Counted<f32>> = (0..k).map(|i| Counted::new(i as f32 * 0.37)).collect();
        let (sum, counts) = tally::measure(|| values.iter().sum::<Counted<f32>>());
        assert_eq!(counts, Counts::of(Op::Add, k.saturating_sub(1) as u128));
        let plain: f32 = Counted::unwrap_slice(&values).iter().sum();
        assert_eq!(sum.get().to_bits(), plain.to_bits(), "k = {k}");
        let (product, counts) = tally::measure(|| values.iter().product::<Counted<f32>>());
        assert_eq!(counts, Counts::of(Op::Mul, k.saturating_sub(1) as u128));
        let plain: f32 = Counted::unwrap_slice(&values).iter().product();
        assert_eq!(product.get().to_bits(), plain.to_bits(), "k = {k}");
    }
}

#[test]
fn counted_is_the_size_of_its_float() {
    assert_eq!(size_of::<Counted<f32>>(), 4);
    assert_eq!(size_of::<Counted<f64>>(), 8);
    assert_eq!(align_of::<Counted<f32>>(), align_of::<f32>());
}

#[test]
fn two_threads_counting_at_once_see_only_their_own_counts() {
    let barrier = std::sync::Barrier::new(2);
    std::thread::scope(|s| {
        let adder = s.spawn(|| {
            tally::measure(|| {
                let mut x = Counted::new(0.0f64);
                barrier.wait();
                for _ in 0..100_000 {
                    x += Counted::new(1.0);
                }
                x
            })
        });
        let multiplier = s.spawn(|| {
            tally::measure(|| {
                let mut x = Counted::new(1.0f64);
                barrier.wait();
                for _ in 0..70_000 {
                    x *= Counted::new(1.0);
                }
                x
            })
        });
        let (_, adds) = adder.join().unwrap();
        let (_, muls) = multiplier.join().unwrap();
        assert_eq!(adds, Counts::of(Op::Add, 100_000));
        assert_eq!(muls, Counts::of(Op::Mul, 70_000));
    });
}

#[test]
fn counts_from_workers_merge_exactly() {
    let values = Counted::vec(&[1.0f64; 1000]);
    let (_, counts) = tally::measure(|| {
        let parts: Vec<Counts> = std::thread::scope(|s| {
            let handles: Vec<_> = values
                .chunks(300)
                .map(|chunk| s.spawn(move || tally::take(|| chunk.iter().sum::<Counted<f64>>()).1))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // A part run on this very thread is taken out and merged back once, too.
        let (_, mine) = tally::take(|| values[..10].iter().sum::<Counted<f64>>());
        for part in parts.into_iter().chain([mine]) {
            tally::merge(part);
        }
    });
    // Chunks of 300, 300, 300, 100 and 10 values.
    assert_eq!(counts, Counts::of(Op::Add, 299 * 3 + 99 + 9));
}

#[test]
fn serde_is_transparent() {
    let x = Counted::new(1.5f32);
    assert_eq!(serde_json::to_string(&x).unwrap(), "1.5");
    let y: Counted<f32> = serde_json::from_str("2.25").unwrap();
    assert_eq!(y.get(), 2.25);
    assert_eq!(format!("{x} {x:?} {x:.3} {x:e}"), "1.5 1.5 1.500 1.5e0");
}

#[test]
fn counted_zeros_counts_multiplications_by_zero_and_nothing_else_changes() {
    use opcount::CountedZeros;
    let z = |v: f64| -> CountedZeros<f64> { v.into() };
    let (_, counts) = tally::measure(|| {
        let _ = z(0.0) * z(3.0); // zero operand
        let _ = z(2.0) * z(-0.0); // negative zero is zero
        let _ = z(2.0) * z(3.0); // none
        let mut x = z(5.0);
        x *= z(0.0); // assigning form
        let _ = z(0.0).mul_add(z(1.0), z(1.0)); // the multiplication of a mul_add
        let _ = z(1.0) + z(0.0); // additions never count here
    });
    assert_eq!(counts.mul, 5);
    assert_eq!(counts.zmul, 4);
    assert_eq!(counts.add, 2);
    assert_eq!(
        counts.total(),
        7,
        "zmul is a part of mul, not an operation of its own"
    );
    // Same bits as plain Counted.
    let (a, b) = (z(0.1).get(), Counted::new(0.1f64).get());
    assert_eq!(a.to_bits(), b.to_bits());
}
