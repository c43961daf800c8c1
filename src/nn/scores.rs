//! Scores: causal self-attention's first product. Queries and keys `[tokens, width]` are
//! split into H heads of `d = width / H` features (a free reshape), and head h's score of
//! token i for an earlier-or-same token j is `s[h][i][j] = (q_i . k_j) / sqrt(d)`, over that
//! head's features. Later tokens (j > i) are masked: their scores are not computed, and the
//! output holds minus infinity there (a constant). Shape rule, closed form, forward and
//! backward (docs/counting.md, "Causal self-attention").

use super::ops::{Backward, Kernel, Operation};
use super::reduce::{constant, dot};
use crate::error::Result;
use crate::estimate::{At, Q, counts, when};
use crate::phases::NodeCounts;
use crate::scalar::Scalar;
use crate::shape::Shape;

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

    pub(crate) fn kernel<S: Scalar>(&self) -> ScoresKernel<S> {
        ScoresKernel(*self, Vec::new())
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

    /// One head's scaled score gradients, T x T, kept for the backward pass.
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

/// The kernels of the scores. The backward pass keeps one head's scaled gradient, T x T
/// values, between calls.
pub(crate) struct ScoresKernel<S>(Scores, Vec<S>);

impl<S: Scalar> Kernel<S> for ScoresKernel<S> {
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
        if self.1.len() < tokens * tokens {
            self.1.resize(tokens * tokens, S::zero());
        }
        let scaled = &mut self.1[..tokens * tokens];
        let (t, w, d) = (tokens, width, width / heads);
        let scale = constant::<S>((d as f64).sqrt());
        let examples = x[0]
            .chunks_exact(t * w)
            .zip(x[1].chunks_exact(t * w))
            .zip(ds.chunks_exact(heads * t * t));
        let (mut dq, mut dk) = (dq, dk);
        for (e, ((qe, ke), dse)) in examples.enumerate() {
            for (h, dsh) in dse.chunks_exact(t * t).enumerate() {
                let cols = h * d..(h + 1) * d;
                scale_causal(dsh, scaled, t, scale);
                if let Some(dq) = dq.as_deref_mut() {
                    let dqe = &mut dq[e * t * w..(e + 1) * t * w];
                    query_grads(scaled, ke, dqe, t, w, cols.clone());
                }
                if let Some(dk) = dk.as_deref_mut() {
                    let dke = &mut dk[e * t * w..(e + 1) * t * w];
                    key_grads(scaled, qe, dke, t, w, cols);
                }
            }
        }
    }
}

/// `s[h][i][j] = (q_i . k_j) / sqrt(d)` for j <= i, minus infinity for j > i.
#[inline(never)]
fn forward<S: Scalar>(q: &[S], k: &[S], s: &mut [S], heads: usize, t: usize, w: usize) {
    let d = w / heads;
    let scale = constant::<S>((d as f64).sqrt());
    let examples = q
        .chunks_exact(t * w)
        .zip(k.chunks_exact(t * w))
        .zip(s.chunks_exact_mut(heads * t * t));
    for ((qe, ke), se) in examples {
        for (h, sh) in se.chunks_exact_mut(t * t).enumerate() {
            let cols = h * d..(h + 1) * d;
            for ((i, row), qi) in sh.chunks_exact_mut(t).enumerate().zip(qe.chunks_exact(w)) {
                let qi = &qi[cols.clone()];
                let (seen, masked) = row.split_at_mut(i + 1);
                for (out, kj) in seen.iter_mut().zip(ke.chunks_exact(w)) {
                    *out = dot(qi, &kj[cols.clone()]) / scale;
                }
                masked.fill(S::neg_infinity());
            }
        }
    }
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

/// One head's `dq_i = sum over j <= i of g_ij k_j`, from j = 0, into columns `cols`.
#[inline(never)]
fn query_grads<S: Scalar>(
    g: &[S],
    k: &[S],
    dq: &mut [S],
    t: usize,
    w: usize,
    cols: std::ops::Range<usize>,
) {
    for (i, (grow, dqi)) in g.chunks_exact(t).zip(dq.chunks_exact_mut(w)).enumerate() {
        let out = &mut dqi[cols.clone()];
        let mut terms = grow[..=i].iter().zip(k.chunks_exact(w));
        if let Some((&g0, k0)) = terms.next() {
            for (o, &kv) in out.iter_mut().zip(&k0[cols.clone()]) {
                *o = g0 * kv;
            }
        }
        for (&gij, kj) in terms {
            for (o, &kv) in out.iter_mut().zip(&kj[cols.clone()]) {
                *o += gij * kv;
            }
        }
    }
}

/// One head's `dk_j = sum over i >= j of g_ij q_i`, from i = j, into columns `cols`.
#[inline(never)]
fn key_grads<S: Scalar>(
    g: &[S],
    q: &[S],
    dk: &mut [S],
    t: usize,
    w: usize,
    cols: std::ops::Range<usize>,
) {
    for (j, dkj) in dk.chunks_exact_mut(w).enumerate() {
        let out = &mut dkj[cols.clone()];
        // Rows i = j, j + 1, ... of column j of g, with their queries.
        let mut terms = g.chunks_exact(t).zip(q.chunks_exact(w)).skip(j);
        if let Some((grow, qi)) = terms.next() {
            let gij = grow[j];
            for (o, &qv) in out.iter_mut().zip(&qi[cols.clone()]) {
                *o = gij * qv;
            }
        }
        for (grow, qi) in terms {
            let gij = grow[j];
            for (o, &qv) in out.iter_mut().zip(&qi[cols.clone()]) {
                *o += gij * qv;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
