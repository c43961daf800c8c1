//! Mix: causal self-attention's second product. Head h of token i's output is the mix of the
//! values of the token itself and the earlier ones, weighted by its attention probabilities:
//! `o_i = sum over j <= i of p[h][i][j] v_j`, over that head's `d = width / H` features of the
//! values `[tokens, width]`; the heads' outputs side by side make `[tokens, width]` (a free
//! reshape). The masked probabilities (j > i) are not read. Shape rule, closed form, forward
//! and backward (docs/counting.md, "Causal self-attention").

use super::ops::{Backward, Kernel, Operation};
use super::scores::{
    Head, Scratch, causal_columns, causal_dots, causal_pairs, causal_rows, in_parallel, mask,
};
use crate::error::Result;
use crate::estimate::{At, Q, counts, when};
use crate::phases::NodeCounts;
use crate::scalar::Scalar;
use crate::shape::Shape;

/// The causal mix of `heads` heads of `tokens` tokens, resolved.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Mix {
    /// H, heads.
    pub heads: usize,
    /// T, tokens per example.
    pub tokens: usize,
    /// W = H·d, features per token of the values and the output.
    pub width: usize,
}

impl Mix {
    /// The shape rule: probabilities `[heads, tokens, tokens]` and values `[tokens, width]`,
    /// `width` a multiple of `heads`; out `[tokens, width]`.
    pub(crate) fn resolve(heads: usize, inputs: &[Shape]) -> Result<Mix, String> {
        let (p, v) = match inputs {
            [p, v] => (p, v),
            _ => {
                return Err(format!(
                    "mix expects 2 inputs (probabilities, values), found {}",
                    inputs.len()
                ));
            }
        };
        let [tokens, width] = *v.dims() else {
            return Err(format!("mix expects values of [tokens, width], found {v}"));
        };
        if p.dims() != [heads, tokens, tokens] {
            return Err(format!(
                "mix expects probabilities of {heads}x{tokens}x{tokens} (heads x tokens x \
                 tokens), found {p}"
            ));
        }
        if width % heads != 0 {
            return Err(format!(
                "mix: {heads} heads do not divide a width of {width}"
            ));
        }
        Ok(Mix {
            heads,
            tokens,
            width,
        })
    }

    pub(crate) fn kernel(&self) -> MixKernel {
        MixKernel(*self)
    }
}

impl Operation for Mix {
    fn kind(&self) -> &'static str {
        "mix"
    }

    fn output(&self) -> Shape {
        Shape::new(&[self.tokens, self.width]).expect("rank 2")
    }

    /// Over the P = T (T + 1) / 2 unmasked pairs of each head, with d = W / H
    /// (docs/counting.md, "Causal self-attention").
    fn closed_form(&self, at: At<'_>, name: &str, grads: &[bool]) -> Result<NodeCounts> {
        let (h, t, w) = (self.heads, self.tokens, self.width);
        let d = w / h;
        let p: Q = at.b() * h * causal_pairs(t); // pairs
        let sums: Q = at.b() * h * (causal_pairs(t) - t); // pairs beyond each sum's first
        // Forward: o_i = sum over j <= i of p_ij v_j: per head and feature, P products and
        // P - T adds.
        let forward = counts! { at, format!("{name} forward"); mul: p * d, add: sums * d }?;
        // Backward: dp_ij = do_i . v_j (d mul, d - 1 add per pair); dv_j = sum over i >= j
        // of p_ij do_i (per head and feature, P products and P - T adds).
        let (dp, dv) = (grads[0], grads[1]);
        let backward = counts! { at, format!("{name} backward");
            mul: when(dp, p * d) + when(dv, p * d),
            add: when(dp, p * (d - 1)) + when(dv, sums * d),
        }?;
        Ok(NodeCounts {
            forward,
            backward,
            ..NodeCounts::default()
        })
    }
}

/// The kernels of the mix; they keep no state.
pub(crate) struct MixKernel(Mix);

impl<S: Scalar> Kernel<S> for MixKernel {
    /// # Shapes
    /// `x[0]` (probabilities): batch x heads x tokens x tokens; `x[1]` (values) and `o`:
    /// batch x tokens x width.
    fn forward(&mut self, x: &[&[S]], _: &[&[S]], o: &mut [S]) {
        let Mix {
            heads,
            tokens,
            width,
        } = self.0;
        let (t, w, d) = (tokens, width, width / heads);
        // One example per task: each writes its own rows of the output.
        let tasks: Vec<_> = o.chunks_exact_mut(t * w).enumerate().collect();
        let work = tasks.len() * heads * t * t * d;
        in_parallel(tasks, work, |(e, oe)| {
            let (pe, ve) = (&x[0][e * heads * t * t..], &x[1][e * t * w..][..t * w]);
            let mut scratch = Scratch::new(t, d);
            for (h, ph) in pe.chunks_exact(t * t).take(heads).enumerate() {
                causal_rows(ph, ve, Head::of(h, t, w, d), oe, &mut scratch);
            }
        });
    }

    /// `dp_ij = do_i . v_j` for j <= i, zero beyond; `dv_j = sum over i >= j of p_ij do_i`.
    ///
    /// # Shapes
    /// `do`: batch x tokens x width; `dx[0]`: batch x heads x tokens x tokens; `dx[1]`: batch
    /// x tokens x width.
    fn backward(&mut self, grads: Backward<'_, S>) {
        let Backward {
            x, dy: dout, dx, ..
        } = grads;
        let Mix {
            heads,
            tokens,
            width,
        } = self.0;
        let (t, w, d) = (tokens, width, width / heads);
        let (dp, dv) = dx.split_at_mut(1);
        if let Some(dp) = dp[0].as_deref_mut() {
            // One head of one example per task.
            let tasks: Vec<_> = dp.chunks_exact_mut(t * t).enumerate().collect();
            let work = tasks.len() * t * t * d;
            in_parallel(tasks, work, |(at, dph)| {
                let (e, h) = (at / heads, at % heads);
                let (ve, doe) = (&x[1][e * t * w..][..t * w], &dout[e * t * w..][..t * w]);
                let head = Head::of(h, t, w, d);
                causal_dots(doe, ve, head, None, dph, &mut Scratch::new(t, d));
                mask(dph, t, S::zero());
            });
        }
        if let Some(dv) = dv[0].as_deref_mut() {
            // One example per task.
            let tasks: Vec<_> = dv.chunks_exact_mut(t * w).enumerate().collect();
            let work = tasks.len() * heads * t * t * d;
            in_parallel(tasks, work, |(e, dve)| {
                let (pe, doe) = (&x[0][e * heads * t * t..], &dout[e * t * w..][..t * w]);
                let mut scratch = Scratch::new(t, d);
                for (h, ph) in pe.chunks_exact(t * t).take(heads).enumerate() {
                    causal_columns(ph, doe, Head::of(h, t, w, d), dve, &mut scratch);
                }
            });
        }
    }
}

/// One head: `o_i = sum over j <= i of p_ij v_j`, from j = 0, into columns `cols`.
#[cfg(test)]
fn forward<S: Scalar>(
    p: &[S],
    v: &[S],
    o: &mut [S],
    t: usize,
    w: usize,
    cols: std::ops::Range<usize>,
) {
    let head = Head::of(cols.start / cols.len(), t, w, cols.len());
    causal_rows(p, v, head, o, &mut Scratch::new(t, cols.len()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Counted, Counts, tally};

    #[test]
    fn each_token_mixes_the_values_of_itself_and_earlier_tokens() {
        // One head, two tokens of two features; the masked probability is never read.
        let p = Counted::vec(&[1.0f64, 99.0, 0.25, 0.75]);
        let v = Counted::vec(&[1.0, 2.0, 3.0, 4.0]);
        let mut o = vec![Counted::new(0.0); 4];
        let ((), counts) = tally::measure(|| forward(&p, &v, &mut o, 2, 2, 0..2));
        assert_eq!(Counted::unwrap_slice(&o), [1.0, 2.0, 2.5, 3.5]);
        // P = 3 pairs of d = 2 features: 6 mul; P - T = 1 add per feature.
        counts.assert_eq(&Counts {
            mul: 6,
            add: 2,
            ..Counts::ZERO
        });
    }
}
