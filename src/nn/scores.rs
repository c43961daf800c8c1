//! Scores: causal self-attention's first product. Queries and keys `[tokens, width]` are
//! split into H heads of `d = width / H` features (a free reshape), and head h's score of
//! token i for an earlier-or-same token j is `s[h][i][j] = (q_i . k_j) / sqrt(d)`, over that
//! head's features. Later tokens (j > i) are masked: their scores are not computed, and the
//! output holds minus infinity there (a constant). Shape rule, closed form, forward and
//! backward (docs/counting.md, "Causal self-attention").

use rayon::prelude::*;

use super::gemm::madd;
use super::ops::{Backward, Kernel, Operation};
use super::reduce::constant;
use crate::counts::Counts;
use crate::error::Result;
use crate::estimate::{At, Q, counts, when};
use crate::phases::NodeCounts;
use crate::scalar::Scalar;
use crate::shape::Shape;
use crate::tally;

use super::dense::check_size;

/// Causal attention scores over `heads` heads of `tokens` tokens, resolved.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Scores {
    /// H, heads.
    pub heads: usize,
    /// T, tokens per example.
    pub tokens: usize,
    /// W = H·d, features per token of the queries and keys.
    pub width: usize,
}

impl Scores {
    /// The shape rule: queries and keys of one shape `[tokens, width]`, `width` a multiple
    /// of `heads`; out `[heads, tokens, tokens]`.
    pub(crate) fn resolve(heads: usize, inputs: &[Shape]) -> Result<Scores, String> {
        let (q, k) = match inputs {
            [q, k] => (q, k),
            _ => {
                return Err(format!(
                    "scores expects 2 inputs (queries, keys), found {}",
                    inputs.len()
                ));
            }
        };
        let [tokens, width] = *q.dims() else {
            return Err(format!(
                "scores expects queries of [tokens, width], found {q}"
            ));
        };
        if q != k {
            return Err(format!(
                "scores expects queries and keys of one shape, found {q} and {k}"
            ));
        }
        check_size("heads", heads)?;
        if width % heads != 0 {
            return Err(format!(
                "scores: {heads} heads do not divide a width of {width}"
            ));
        }
        heads
            .checked_mul(tokens)
            .and_then(|n| n.checked_mul(tokens))
            .ok_or_else(|| format!("{heads} heads of {tokens} x {tokens} scores are too many"))?;
        Ok(Scores {
            heads,
            tokens,
            width,
        })
    }

    pub(crate) fn kernel(&self) -> ScoresKernel {
        ScoresKernel(*self)
    }
}

/// The (i, j) pairs with j <= i that a head computes for T tokens, T (T + 1) / 2, as a
/// count.
pub(crate) fn causal_pairs(tokens: usize) -> Q {
    let t = tokens as u128;
    Q(t.checked_mul(t + 1).map(|n| n / 2))
}

impl Operation for Scores {
    fn kind(&self) -> &'static str {
        "scores"
    }

    fn output(&self) -> Shape {
        Shape::new(&[self.heads, self.tokens, self.tokens]).expect("rank 3")
    }

    /// One head's scaled score gradients, T x T, for the backward pass (one buffer per
    /// thread at work, while the backward pass runs).
    fn workspace(&self) -> usize {
        self.tokens * self.tokens
    }

    /// Over the P = T (T + 1) / 2 unmasked pairs of each head (docs/counting.md, "Causal
    /// self-attention"), with d = W / H.
    fn closed_form(&self, at: At<'_>, name: &str, grads: &[bool]) -> Result<NodeCounts> {
        let (h, t, w) = (self.heads, self.tokens, self.width);
        let d = w / h;
        // Every pair of every head of every example.
        let p: Q = at.b() * h * causal_pairs(t);
        // Forward, per pair: a dot product of d features (d mul, d - 1 add), / sqrt(d).
        let forward = counts! { at, format!("{name} forward");
            mul: p * d,
            add: p * (d - 1),
            div: p,
        }?;
        // Backward: g = ds / sqrt(d) per pair, if any gradient is wanted; dq_i = sum over
        // j <= i of g_ij k_j and dk_j = sum over i >= j of g_ij q_i: per head and feature,
        // P products and P - T adds each.
        let (dq, dk) = (grads[0], grads[1]);
        let sums = at.b() * h * (causal_pairs(t) - t);
        let backward = counts! { at, format!("{name} backward");
            div: when(dq || dk, p),
            mul: when(dq, p * d) + when(dk, p * d),
            add: when(dq, sums * d) + when(dk, sums * d),
        }?;
        Ok(NodeCounts {
            forward,
            backward,
            ..NodeCounts::default()
        })
    }
}

/// The kernels of the scores; they keep no state.
pub(crate) struct ScoresKernel(Scores);

impl<S: Scalar> Kernel<S> for ScoresKernel {
    /// # Shapes
    /// `x[0]` (queries), `x[1]` (keys): batch x tokens x width; `s`: batch x heads x tokens x
    /// tokens.
    fn forward(&mut self, x: &[&[S]], _: &[&[S]], s: &mut [S]) {
        let Scores {
            heads,
            tokens,
            width,
        } = self.0;
        forward(x[0], x[1], s, heads, tokens, width);
    }

    /// # Shapes
    /// `ds`: batch x heads x tokens x tokens; `dx[0]`, `dx[1]`: batch x tokens x width.
    fn backward(&mut self, grads: Backward<'_, S>) {
        let Backward { x, dy: ds, dx, .. } = grads;
        let Scores {
            heads,
            tokens,
            width,
        } = self.0;
        let (dq, dk) = dx.split_at_mut(1);
        let (dq, dk) = (dq[0].as_deref_mut(), dk[0].as_deref_mut());
        if dq.is_none() && dk.is_none() {
            return;
        }
        let (t, w, d) = (tokens, width, width / heads);
        let scale = constant::<S>((d as f64).sqrt());
        let examples = ds.len() / (heads * t * t);
        // One example per task: each writes its own rows of dq and dk.
        let mut dq = dq.map(|dq| dq.chunks_exact_mut(t * w).map(Some).collect::<Vec<_>>());
        let mut dk = dk.map(|dk| dk.chunks_exact_mut(t * w).map(Some).collect::<Vec<_>>());
        let tasks: Vec<_> = (0..examples)
            .map(|e| {
                let dqe = dq.as_mut().and_then(|v| v[e].take());
                let dke = dk.as_mut().and_then(|v| v[e].take());
                (e, dqe, dke)
            })
            .collect();
        let work = examples * heads * t * t * d;
        in_parallel(tasks, work, |(e, mut dqe, mut dke)| {
            let (qe, ke) = (&x[0][e * t * w..][..t * w], &x[1][e * t * w..][..t * w]);
            let mut scaled = vec![S::zero(); t * t];
            let mut scratch = Scratch::new(t, d);
            for (h, dsh) in ds[e * heads * t * t..][..heads * t * t]
                .chunks_exact(t * t)
                .enumerate()
            {
                let head = Head::of(h, t, w, d);
                scale_causal(dsh, &mut scaled, t, scale);
                if let Some(dqe) = dqe.as_deref_mut() {
                    causal_rows(&scaled, ke, head, dqe, &mut scratch);
                }
                if let Some(dke) = dke.as_deref_mut() {
                    causal_columns(&scaled, qe, head, dke, &mut scratch);
                }
            }
        });
    }
}

/// `s[h][i][j] = (q_i . k_j) / sqrt(d)` for j <= i, minus infinity for j > i.
fn forward<S: Scalar>(q: &[S], k: &[S], s: &mut [S], heads: usize, t: usize, w: usize) {
    let d = w / heads;
    let scale = constant::<S>((d as f64).sqrt());
    // One head of one example per task.
    let tasks: Vec<_> = s.chunks_exact_mut(t * t).enumerate().collect();
    let work = tasks.len() * t * t * d;
    in_parallel(tasks, work, |(at, sh)| {
        let (e, h) = (at / heads, at % heads);
        let (qe, ke) = (&q[e * t * w..][..t * w], &k[e * t * w..][..t * w]);
        causal_dots(
            qe,
            ke,
            Head::of(h, t, w, d),
            Some(scale),
            sh,
            &mut Scratch::new(t, d),
        );
        mask(sh, t, S::neg_infinity());
    });
}

/// `g_ij = ds_ij / sqrt(d)` for j <= i (the rest is never read).
#[inline(never)]
fn scale_causal<S: Scalar>(ds: &[S], g: &mut [S], t: usize, scale: S) {
    for (i, (row, out)) in ds.chunks_exact(t).zip(g.chunks_exact_mut(t)).enumerate() {
        for (o, &v) in out[..=i].iter_mut().zip(&row[..=i]) {
            *o = v / scale;
        }
    }
}

/// Sets the masked entries (j > i) of a `t x t` matrix to `value`, a constant.
pub(crate) fn mask<S: Scalar>(m: &mut [S], t: usize, value: S) {
    for (i, row) in m.chunks_exact_mut(t).enumerate() {
        row[i + 1..].fill(value);
    }
}

// The causal products of one head, shared with `mix.rs`. They run in register tiles of 4
// sums of 16 values side by side (`tile`), over operands first laid out contiguously (16
// features or columns of a head's rows, 4 sums' coefficients side by side), with the same
// sums one at a time near the diagonal and at the edges. Every sum runs in ascending order
// from its first product, each later product added with one fused multiply-add (`madd`, as
// `gemm`), whichever part of a sum falls to which, so the counts are the closed forms' and
// the bits do not depend on the tiling or on the threads. (These products are too small for
// `gemm`: at 64 tokens and 32 features, packing a block costs more than computing it.)

/// Values each sum of a tile holds side by side: two AVX2 vectors of `f32`.
const WIDE: usize = 16;

/// Sums a tile computes side by side (4 x 2 vector accumulators, enough to keep the fused
/// multiply-adds' pipes busy).
const TALL: usize = 4;

/// Below this many multiply-adds the tasks of a causal operation run on the calling thread.
const PARALLEL_WORK: usize = 1 << 16;

/// A head's place in a `[tokens, width]` value: rows of `w` values, the head's `d` features
/// from column `c0`.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Head {
    t: usize,
    w: usize,
    c0: usize,
    d: usize,
}

impl Head {
    /// Head `h` of `d` features in rows of `w` values, `t` rows.
    pub(crate) fn of(h: usize, t: usize, w: usize, d: usize) -> Head {
        Head { t, w, c0: h * d, d }
    }
}

/// Buffers for one head's causal products: an operand's rows laid out `WIDE` values at a
/// time (`panels`), and the coefficients of `TALL` sums side by side (`coefficients`).
pub(crate) struct Scratch<S> {
    panels: Vec<[S; WIDE]>,
    coefficients: Vec<[S; TALL]>,
}

impl<S: Scalar> Scratch<S> {
    /// For heads of `t` tokens and `d` features.
    pub(crate) fn new(t: usize, d: usize) -> Scratch<S> {
        Scratch {
            panels: vec![[S::zero(); WIDE]; t.div_ceil(WIDE) * d],
            coefficients: vec![[S::zero(); TALL]; t.max(d)],
        }
    }
}

/// Runs `task` on every one of `tasks`, on all cores if `work` (multiply-adds) is large: each
/// task is counted on its thread and the counts merged into the caller's tally
/// (`tally::parallel`), so the counts are exact whichever thread runs what.
pub(crate) fn in_parallel<T: Send>(tasks: Vec<T>, work: usize, task: impl Fn(T) + Sync) {
    if tasks.len() < 2 || work < PARALLEL_WORK || rayon::current_num_threads() == 1 {
        tasks.into_iter().for_each(task);
        return;
    }
    tally::parallel(|| {
        let counts: Vec<Counts> = tasks
            .into_par_iter()
            .map(|t| tally::take(|| task(t)).1)
            .collect();
        ((), counts.into_iter().sum())
    });
}

/// The register tile: `acc[r][l] = sum over k of c[k][r] * v[k][l]`, in ascending k, from the
/// first product if `fresh` (there is then at least one term), else continued from what is in
/// `acc`. It writes only `acc`, through a local copy, and its loops cannot panic, so the sums
/// and the counters stay in registers (as in `gemm`'s tiles).
#[inline(never)]
fn tile<S: Scalar, const R: usize>(
    c: &[[S; R]],
    v: &[[S; WIDE]],
    fresh: bool,
    acc: &mut [[S; WIDE]; R],
) {
    let mut sums = *acc;
    let mut terms = c.iter().zip(v);
    if fresh && let Some((ck, vk)) = terms.next() {
        for (row, &cr) in sums.iter_mut().zip(ck) {
            for (s, &vl) in row.iter_mut().zip(vk) {
                *s = cr * vl;
            }
        }
    }
    for (ck, vk) in terms {
        for (row, &cr) in sums.iter_mut().zip(ck) {
            for (s, &vl) in row.iter_mut().zip(vk) {
                *s = madd(*s, cr, vl);
            }
        }
    }
    *acc = sums;
}

/// One sum's coefficients as a tile's (`[c]` per term).
fn single<S>(c: &[S]) -> &[[S; 1]] {
    c.as_chunks::<1>().0
}

/// `sums[l] = sum over k of c_k x[k * w + l]`, from the first term, for fewer than `WIDE`
/// values (what a row's tiles leave).
#[inline(never)]
fn partial_rows<'a, S: Scalar + 'a>(
    c: impl Iterator<Item = &'a S>,
    x: &[S],
    w: usize,
    sums: &mut [S],
) {
    let mut terms = c.zip(x.chunks(w));
    if let Some((&c0, x0)) = terms.next() {
        for (s, &v) in sums.iter_mut().zip(x0) {
            *s = c0 * v;
        }
    }
    for (&ck, xk) in terms {
        for (s, &v) in sums.iter_mut().zip(xk) {
            *s = madd(*s, ck, v);
        }
    }
}

/// Lays out the head's rows `WIDE` at a time, `d` features each: feature f of row j at
/// `panels[(j / WIDE) * d + f][j % WIDE]` (the dot products' second operand).
fn row_panels<S: Scalar>(x: &[S], Head { t, w, c0, d }: Head, panels: &mut [[S; WIDE]]) {
    for (j, xj) in x[c0..].chunks(w).take(t).enumerate() {
        for (f, &v) in xj[..d].iter().enumerate() {
            panels[(j / WIDE) * d + f][j % WIDE] = v;
        }
    }
}

/// Lays out the head's features `WIDE` at a time, for the whole ones: features
/// `k * WIDE..` of row j at `panels[k * t + j]`.
fn feature_panels<S: Scalar>(x: &[S], Head { t, w, c0, d }: Head, panels: &mut [[S; WIDE]]) {
    for (k, panel) in panels.chunks_mut(t).take(d / WIDE).enumerate() {
        for (p, xj) in panel.iter_mut().zip(x[c0 + k * WIDE..].chunks(w)) {
            *p = *xj.first_chunk::<WIDE>().expect("a head's features");
        }
    }
}

/// `out[i][j] = a_i . b_j` over the head's features for j <= i (`/ scale` if given), each a
/// sum from its first product; `out` is `t x t`, its entries j > i left as they are.
pub(crate) fn causal_dots<S: Scalar>(
    a: &[S],
    b: &[S],
    head: Head,
    scale: Option<S>,
    out: &mut [S],
    scratch: &mut Scratch<S>,
) {
    let Head { t, w, c0, d } = head;
    let panels = &mut scratch.panels[..t.div_ceil(WIDE) * d];
    row_panels(b, head, panels);
    let panels = &*panels;
    let row = |i: usize| &a[i * w + c0..][..d];
    let mut i = 0;
    while i + TALL <= t {
        // The panels whose columns are all at or left of the first row's diagonal, for the
        // four rows at once.
        let coefficients = &mut scratch.coefficients[..d];
        for (f, c) in coefficients.iter_mut().enumerate() {
            *c = std::array::from_fn(|k| a[(i + k) * w + c0 + f]);
        }
        let full = (i + 1) / WIDE;
        for (p, panel) in panels.chunks(d).take(full).enumerate() {
            let mut acc = [[S::zero(); WIDE]; TALL];
            tile(coefficients, panel, true, &mut acc);
            for (k, sums) in acc.iter().enumerate() {
                out[(i + k) * t + p * WIDE..][..WIDE].copy_from_slice(sums);
            }
        }
        // The panel on the diagonal: the columns up to the first row's diagonal for the
        // four rows at once, in tiles 8, 4, 2 and 1 wide; then the later rows' last ones.
        let panel = panels.chunks(d).nth(full).unwrap_or_default();
        let (n, col) = (i % WIDE + 1, full * WIDE);
        let mut j0 = 0;
        let mut put = |j0: usize, sums: &[&[S]; TALL]| {
            for (k, sums) in sums.iter().enumerate() {
                out[(i + k) * t + col + j0..][..sums.len()].copy_from_slice(sums);
            }
        };
        if n - j0 >= 8 {
            let acc = narrow_tile::<S, TALL, 8>(coefficients, panel, j0);
            put(j0, &acc.each_ref().map(|s| &s[..]));
            j0 += 8;
        }
        if n - j0 >= 4 {
            let acc = narrow_tile::<S, TALL, 4>(coefficients, panel, j0);
            put(j0, &acc.each_ref().map(|s| &s[..]));
            j0 += 4;
        }
        if n - j0 >= 2 {
            let acc = narrow_tile::<S, TALL, 2>(coefficients, panel, j0);
            put(j0, &acc.each_ref().map(|s| &s[..]));
            j0 += 2;
        }
        if n - j0 >= 1 {
            let acc = narrow_tile::<S, TALL, 1>(coefficients, panel, j0);
            put(j0, &acc.each_ref().map(|s| &s[..]));
        }
        let corner = corner(coefficients, panel, n);
        for (sum, (k, m)) in corner.into_iter().zip(CORNER) {
            out[(i + k) * t + col + n + m] = sum;
        }
        i += TALL;
    }
    for i in i..t {
        dots_row(row(i), panels, d, 0, &mut out[i * t..][..=i]);
    }
    if let Some(scale) = scale {
        for i in 0..t {
            finish_in_place(&mut out[i * t..][..=i], scale);
        }
    }
}

/// `acc[r][l] = sum over k of c[k][r] * v[k][j0 + l]`, in ascending k from the first
/// product: `W` columns of a panel from `j0`, for `R` sums. As [`tile`], it cannot panic in
/// its loops.
#[inline(never)]
fn narrow_tile<S: Scalar, const R: usize, const W: usize>(
    c: &[[S; R]],
    v: &[[S; WIDE]],
    j0: usize,
) -> [[S; W]; R] {
    assert!(j0 + W <= WIDE);
    let mut sums = [[S::zero(); W]; R];
    let mut terms = c.iter().zip(v);
    if let Some((ck, vk)) = terms.next() {
        for (row, &cr) in sums.iter_mut().zip(ck) {
            for (s, &vl) in row.iter_mut().zip(&vk[j0..j0 + W]) {
                *s = cr * vl;
            }
        }
    }
    for (ck, vk) in terms {
        for (row, &cr) in sums.iter_mut().zip(ck) {
            for (s, &vl) in row.iter_mut().zip(&vk[j0..j0 + W]) {
                *s = madd(*s, cr, vl);
            }
        }
    }
    sums
}

/// The pairs of a group of `TALL` rows past the first row's diagonal: (row in the group,
/// column past that diagonal's).
const CORNER: [(usize, usize); 6] = [(1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2)];

/// The [`CORNER`] pairs' dot products, side by side (each a chain of `d` multiply-adds,
/// too long to run one after the other): `c` holds the group's rows side by side, the
/// panel the columns, the first row's diagonal just before column `n`.
#[inline(never)]
fn corner<S: Scalar>(c: &[[S; TALL]], v: &[[S; WIDE]], n: usize) -> [S; 6] {
    assert!(n + TALL - 1 <= WIDE);
    let mut sums = [S::zero(); 6];
    let mut terms = c.iter().zip(v);
    if let Some((ck, vk)) = terms.next() {
        for (s, (r, m)) in sums.iter_mut().zip(CORNER) {
            *s = ck[r] * vk[n + m];
        }
    }
    for (ck, vk) in terms {
        for (s, (r, m)) in sums.iter_mut().zip(CORNER) {
            *s = madd(*s, ck[r], vk[n + m]);
        }
    }
    sums
}

/// `sums[j] = a . b_j` from panel `from` on (`panels` as [`row_panels`] lays them out).
fn dots_row<S: Scalar>(a: &[S], panels: &[[S; WIDE]], d: usize, from: usize, sums: &mut [S]) {
    let (whole, rest) = sums.as_chunks_mut::<WIDE>();
    let mut panel = panels.chunks(d).skip(from);
    for (out, bp) in whole.iter_mut().skip(from).zip(panel.by_ref()) {
        let mut acc = [[S::zero(); WIDE]];
        tile(single(a), bp, true, &mut acc);
        *out = acc[0];
    }
    if !rest.is_empty()
        && let Some(bp) = panel.next()
    {
        partial_dots(a, bp, rest);
    }
}

/// `sums[l] = a . (column l of the panel)`, for the first `sums.len()` columns.
#[inline(never)]
fn partial_dots<S: Scalar>(a: &[S], panel: &[[S; WIDE]], sums: &mut [S]) {
    let mut terms = a.iter().zip(panel);
    if let Some((&a0, b0)) = terms.next() {
        for (s, &bv) in sums.iter_mut().zip(b0) {
            *s = a0 * bv;
        }
    }
    for (&af, bf) in terms {
        for (s, &bv) in sums.iter_mut().zip(bf) {
            *s = madd(*s, af, bv);
        }
    }
}

#[inline(never)]
fn finish_in_place<S: Scalar>(out: &mut [S], scale: S) {
    for o in out {
        *o /= scale;
    }
}

/// `out_i = sum over j <= i of l_ij x_j` over the head's features, from j = 0: `l` is `t x
/// t` (entries j > i not read), `x` and `out` rows of the head's value.
pub(crate) fn causal_rows<S: Scalar>(
    l: &[S],
    x: &[S],
    head: Head,
    out: &mut [S],
    scratch: &mut Scratch<S>,
) {
    let Head { t, w, c0, d } = head;
    let whole = d / WIDE;
    let panels = &mut scratch.panels[..whole * t];
    feature_panels(x, head, panels);
    let panels = &*panels;
    let lrow = |i: usize| &l[i * t..][..=i];
    let mut i = 0;
    while i + TALL <= t {
        // The terms j <= i, shared by the four sums; then each later row's own.
        let coefficients = &mut scratch.coefficients[..=i];
        for (j, c) in coefficients.iter_mut().enumerate() {
            *c = std::array::from_fn(|k| l[(i + k) * t + j]);
        }
        for (f, xp) in panels.chunks(t).enumerate() {
            let mut acc = [[S::zero(); WIDE]; TALL];
            tile(coefficients, xp, true, &mut acc);
            for (k, sums) in acc.iter_mut().enumerate().skip(1) {
                let mut one = [*sums];
                let own = &lrow(i + k)[i + 1..];
                tile(single(own), &xp[i + 1..], false, &mut one);
                *sums = one[0];
            }
            for (k, sums) in acc.iter().enumerate() {
                out[(i + k) * w + c0 + f * WIDE..][..WIDE].copy_from_slice(sums);
            }
        }
        for k in 0..TALL {
            let at = (i + k) * w + c0;
            row_rest(lrow(i + k), x, head, &mut out[at..at + d]);
        }
        i += TALL;
    }
    for i in i..t {
        let c = lrow(i);
        let at = i * w + c0;
        for (f, xp) in panels.chunks(t).enumerate() {
            let mut acc = [[S::zero(); WIDE]];
            tile(single(c), xp, true, &mut acc);
            out[at + f * WIDE..][..WIDE].copy_from_slice(&acc[0]);
        }
        row_rest(c, x, head, &mut out[at..at + d]);
    }
}

/// The features a head's whole `WIDE`s leave, of `sums = sum over k of c_k x_k` (`x` from
/// the sum's first row).
fn row_rest<S: Scalar>(c: &[S], x: &[S], Head { w, c0, d, .. }: Head, sums: &mut [S]) {
    let from = d / WIDE * WIDE;
    if from < d {
        partial_rows(c.iter(), &x[c0 + from..], w, &mut sums[from..]);
    }
}

/// `out_j = sum over i >= j of l_ij x_i` over the head's features, from i = j: `l` is `t x
/// t` (entries j > i not read), `x` and `out` rows of the head's value.
pub(crate) fn causal_columns<S: Scalar>(
    l: &[S],
    x: &[S],
    head: Head,
    out: &mut [S],
    scratch: &mut Scratch<S>,
) {
    let Head { t, w, c0, d } = head;
    let whole = d / WIDE;
    let panels = &mut scratch.panels[..whole * t];
    feature_panels(x, head, panels);
    let panels = &*panels;
    // Column j of l from row j down.
    let column = |j: usize| l[j * t + j..].iter().step_by(t);
    let mut j = 0;
    while j + TALL <= t {
        // Each sum's own first terms, rows j + k to j + TALL - 1; then the rows below,
        // shared by the four sums.
        let mut own = [[[S::zero(); 1]; TALL]; TALL];
        for (k, own) in own.iter_mut().enumerate() {
            for (o, &v) in own.iter_mut().zip(column(j + k)).take(TALL - k) {
                *o = [v];
            }
        }
        let below = &mut scratch.coefficients[..t - j - TALL];
        let rows = l.get((j + TALL) * t + j..).unwrap_or_default();
        for (c, row) in below.iter_mut().zip(rows.chunks(t)) {
            *c = *row.first_chunk::<TALL>().expect("a row of l");
        }
        for (f, xp) in panels.chunks(t).enumerate() {
            let mut acc = [[S::zero(); WIDE]; TALL];
            for (k, (sums, own)) in acc.iter_mut().zip(&own).enumerate() {
                let mut one = [[S::zero(); WIDE]];
                tile(&own[..TALL - k], &xp[j + k..], true, &mut one);
                *sums = one[0];
            }
            tile(below, &xp[j + TALL..], false, &mut acc);
            for (k, sums) in acc.iter().enumerate() {
                out[(j + k) * w + c0 + f * WIDE..][..WIDE].copy_from_slice(sums);
            }
        }
        for k in 0..TALL {
            let at = (j + k) * w + c0;
            column_rest(column(j + k), &x[(j + k) * w..], head, &mut out[at..at + d]);
        }
        j += TALL;
    }
    for j in j..t {
        let at = j * w + c0;
        // Fewer than TALL terms: the rows from j to the last.
        let mut c = [[S::zero(); 1]; TALL];
        for (o, &v) in c.iter_mut().zip(column(j)) {
            *o = [v];
        }
        for (f, xp) in panels.chunks(t).enumerate() {
            let mut acc = [[S::zero(); WIDE]];
            tile(&c[..t - j], &xp[j..], true, &mut acc);
            out[at + f * WIDE..][..WIDE].copy_from_slice(&acc[0]);
        }
        column_rest(column(j), &x[j * w..], head, &mut out[at..at + d]);
    }
}

/// As [`row_rest`], for a column's coefficients.
fn column_rest<'a, S: Scalar + 'a>(
    c: impl Iterator<Item = &'a S>,
    x: &[S],
    Head { w, c0, d, .. }: Head,
    sums: &mut [S],
) {
    let from = d / WIDE * WIDE;
    if from < d {
        partial_rows(c, &x[c0 + from..], w, &mut sums[from..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::ops::Backward;
    use crate::{Counted, Counts, tally};

    #[test]
    fn scores_are_scaled_dot_products_of_earlier_tokens_only() {
        // One head of d = 4, three tokens.
        let q: Vec<f64> = (0..12).map(|v| v as f64 * 0.5).collect();
        let k: Vec<f64> = (0..12).map(|v| 1.0 - v as f64 * 0.25).collect();
        let (qc, kc) = (Counted::vec(&q), Counted::vec(&k));
        let mut s = vec![Counted::new(0.0); 9];
        let ((), counts) = tally::measure(|| forward(&qc, &kc, &mut s, 1, 3, 4));
        let s = Counted::unwrap_slice(&s);
        for i in 0..3 {
            for j in 0..3 {
                let want = if j <= i {
                    (0..4).map(|f| q[i * 4 + f] * k[j * 4 + f]).sum::<f64>() / 2.0
                } else {
                    f64::NEG_INFINITY
                };
                assert!(s[i * 3 + j] == want || (s[i * 3 + j] - want).abs() < 1e-12);
            }
        }
        // 6 pairs: 4 mul, 3 add, 1 div each.
        counts.assert_eq(&Counts {
            mul: 24,
            add: 18,
            div: 6,
            ..Counts::ZERO
        });
        assert_eq!(causal_pairs(3).0, Some(6));
    }

    /// `sum_k a(k) b(k)` over `ks` in order, from the first product, each later one added
    /// with one rounding (fused, as the kernels do here) or two.
    fn sum_of(
        ks: impl Iterator<Item = usize>,
        a: impl Fn(usize) -> f64,
        b: impl Fn(usize) -> f64,
    ) -> f64 {
        let fused = crate::nn::gemm::fuses();
        let mut ks = ks;
        let k0 = ks.next().unwrap();
        ks.fold(a(k0) * b(k0), |acc, k| {
            if fused {
                a(k).mul_add(b(k), acc)
            } else {
                acc + a(k) * b(k)
            }
        })
    }

    fn values(n: usize, seed: usize) -> Vec<f64> {
        (0..n)
            .map(|i| ((i * 7 + seed) % 31) as f64 * 0.13 - 1.9)
            .collect()
    }

    fn bits(v: &[Counted<f64>]) -> Vec<u64> {
        v.iter().map(|v| v.get().to_bits()).collect()
    }

    /// Scores and Mix forward and backward, through their kernels, on one thread and on all:
    /// against the definition (every sum from its first term, in ascending order), bit for
    /// bit, with the closed forms' counts; tokens below, at and past a tile's rows and values,
    /// features fewer than a tile's, a whole number of them and more.
    #[test]
    fn attention_products_match_the_definition_bit_for_bit_with_exact_counts() {
        use crate::nn::mix::Mix;
        for (b, heads, t, d) in [
            (1, 1, 3, 4),
            (2, 3, 16, 5),
            (3, 2, 37, 8),
            (1, 2, 70, 3),
            (2, 2, 64, 32),
            (1, 1, 67, 35),
            (1, 3, 19, 16),
        ] {
            let w = heads * d;
            let (q, k) = (values(b * t * w, 1), values(b * t * w, 2));
            let (ds, dout) = (values(b * heads * t * t, 3), values(b * t * w, 4));
            let p = values(b * heads * t * t, 5);
            let scale = (d as f64).sqrt();
            let run = || {
                let (cq, ck, cds) = (Counted::vec(&q), Counted::vec(&k), Counted::vec(&ds));
                let (cp, cdo) = (Counted::vec(&p), Counted::vec(&dout));
                let scores = Scores {
                    heads,
                    tokens: t,
                    width: w,
                };
                let mix = Mix {
                    heads,
                    tokens: t,
                    width: w,
                };
                let mut s = vec![Counted::new(0.0); b * heads * t * t];
                let mut dq = vec![Counted::new(0.0); b * t * w];
                let mut dk = vec![Counted::new(0.0); b * t * w];
                let mut o = vec![Counted::new(0.0); b * t * w];
                let mut dp = vec![Counted::new(0.0); b * heads * t * t];
                let mut dv = vec![Counted::new(0.0); b * t * w];
                let ((), counts) = tally::measure(|| {
                    let mut kernel = scores.kernel();
                    kernel.forward(&[&cq, &ck], &[], &mut s);
                    kernel.backward(Backward {
                        x: &[&cq, &ck],
                        y: &s,
                        dy: &cds,
                        params: &[],
                        dparams: &mut [],
                        dx: &mut [Some(&mut dq), Some(&mut dk)],
                    });
                    let mut kernel = mix.kernel();
                    kernel.forward(&[&cp, &cq], &[], &mut o);
                    kernel.backward(Backward {
                        x: &[&cp, &cq],
                        y: &o,
                        dy: &cdo,
                        params: &[],
                        dparams: &mut [],
                        dx: &mut [Some(&mut dp), Some(&mut dv)],
                    });
                });
                ([s, dq, dk, o, dp, dv].map(|v| bits(&v)), counts)
            };
            let one = rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .unwrap();
            let (got, counts) = run();
            let (alone, counts_alone) = one.install(run);
            assert_eq!(got, alone, "{b} x {heads} x {t} x {d}: threads change bits");
            assert_eq!(counts, counts_alone);
            // The definition, element by element.
            let tok = |m: &[f64], e: usize, i: usize, h: usize| {
                let base = e * t * w + i * w + h * d;
                m[base..base + d].to_vec()
            };
            let pair = |m: &[f64], e: usize, h: usize, i: usize, j: usize| {
                m[((e * heads + h) * t + i) * t + j]
            };
            let mut want: [Vec<f64>; 6] = Default::default();
            want[0] = vec![0.0; b * heads * t * t];
            want[4] = vec![0.0; b * heads * t * t];
            for v in &mut want[1..4] {
                *v = vec![0.0; b * t * w];
            }
            want[5] = vec![0.0; b * t * w];
            for e in 0..b {
                for h in 0..heads {
                    for i in 0..t {
                        for j in 0..t {
                            let at = ((e * heads + h) * t + i) * t + j;
                            if j > i {
                                want[0][at] = f64::NEG_INFINITY;
                                continue;
                            }
                            let (qi, kj) = (tok(&q, e, i, h), tok(&k, e, j, h));
                            want[0][at] = sum_of(0..d, |f| qi[f], |f| kj[f]) / scale;
                            let (doi, vj) = (tok(&dout, e, i, h), tok(&q, e, j, h));
                            want[4][at] = sum_of(0..d, |f| doi[f], |f| vj[f]);
                        }
                        for f in 0..d {
                            let at = e * t * w + i * w + h * d + f;
                            let g = |i: usize, j: usize| pair(&ds, e, h, i, j) / scale;
                            let col = |m: &[f64], r: usize| m[e * t * w + r * w + h * d + f];
                            want[1][at] = sum_of(0..=i, |j| g(i, j), |j| col(&k, j));
                            want[2][at] = sum_of(i..t, |r| g(r, i), |r| col(&q, r));
                            let pp = |i: usize, j: usize| pair(&p, e, h, i, j);
                            want[3][at] = sum_of(0..=i, |j| pp(i, j), |j| col(&q, j));
                            want[5][at] = sum_of(i..t, |r| pp(r, i), |r| col(&dout, r));
                        }
                    }
                }
            }
            for (n, (got, want)) in got.iter().zip(&want).enumerate() {
                let want: Vec<u64> = want.iter().map(|v| v.to_bits()).collect();
                assert_eq!(got, &want, "{b} x {heads} x {t} x {d}: output {n}");
            }
            // Per head: Scores d P mul, (d - 1) P add, P div forward; P div and twice d P
            // mul, d (P - T) add backward. Mix: d P mul, d (P - T) add forward; d P mul,
            // (d - 1) P add and d P mul, d (P - T) add backward.
            let pairs = (t * (t + 1) / 2) as u128;
            let (n, d, t) = ((b * heads) as u128, d as u128, t as u128);
            counts.assert_eq(&Counts {
                mul: n * 6 * d * pairs,
                add: n * ((d - 1) * pairs * 2 + d * (pairs - t) * 4),
                div: n * 2 * pairs,
                ..Counts::ZERO
            });
        }
    }
}
