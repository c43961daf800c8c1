//! The update phase's arithmetic per parameter: SGD, or Adam with its two moments per
//! parameter. Each optimizer's update kernel sits beside its closed form
//! ([`per_parameter`]), which `src/estimate.rs` puts in place of SGD's in every node's update
//! (docs/counting.md, "Optimizers").

use super::reduce::constant;
use crate::counts::Counts;
use crate::model::Optimizer;
use crate::scalar::Scalar;

use super::buffer::Buffer;

/// What one parameter's update counts: SGD `p -= lr g` is 1 mul and 1 sub; Adam 6 mul,
/// 3 add, 1 sqrt, 2 div and 1 sub (see [`adam`]).
pub(crate) fn per_parameter(optimizer: Optimizer) -> Counts {
    match optimizer {
        Optimizer::Sgd => Counts {
            mul: 1,
            sub: 1,
            ..Counts::ZERO
        },
        Optimizer::Adam { .. } => Counts {
            mul: 6,
            add: 3,
            sqrt: 1,
            div: 2,
            sub: 1,
            ..Counts::ZERO
        },
    }
}

/// An optimizer with whatever it keeps between steps (Adam's moments, one pair of buffers
/// per parameter tensor, and its step count).
pub(crate) enum State<S: Scalar> {
    Sgd,
    Adam {
        /// beta1, beta2, eps.
        settings: (f32, f32, f32),
        moments: Vec<(Buffer<S>, Buffer<S>)>,
        steps: i32,
        /// This step's constants (see [`Adam`]).
        now: Adam<S>,
    },
}

/// Adam's constants for one step: the moments' weights, and the bias corrections folded into
/// the step size and the root's divisor. They depend on the step number, the settings and
/// the learning rate only, never on a parameter, so they are computed in `f64` and converted
/// (free), like the learning rate itself: a schedule, not arithmetic on the network's values.
#[derive(Copy, Clone)]
pub(crate) struct Adam<S> {
    beta1: S,
    one_minus_beta1: S,
    beta2: S,
    one_minus_beta2: S,
    /// `lr / (1 - beta1^t)`.
    step: S,
    /// `sqrt(1 - beta2^t)`.
    root_correction: S,
    eps: S,
}

impl<S: Scalar> State<S> {
    /// The optimizer's state for parameter tensors of these lengths, before the first step.
    pub(crate) fn new(optimizer: Optimizer, lens: impl Iterator<Item = usize>) -> State<S> {
        match optimizer {
            Optimizer::Sgd => State::Sgd,
            Optimizer::Adam { beta1, beta2, eps } => State::Adam {
                settings: (beta1, beta2, eps),
                moments: lens
                    .map(|n| (Buffer::filled(n, S::zero()), Buffer::filled(n, S::zero())))
                    .collect(),
                steps: 0,
                now: Adam::at((beta1, beta2, eps), 1, 0.0),
            },
        }
    }

    /// Starts an update phase at learning rate `lr`.
    pub(crate) fn start(&mut self, lr: S) {
        if let State::Adam {
            settings,
            steps,
            now,
            ..
        } = self
        {
            *steps = steps.saturating_add(1);
            *now = Adam::at(*settings, *steps, lr.to_f64().unwrap_or(f64::NAN));
        }
    }

    /// Updates parameter tensor `id` from its gradient.
    pub(crate) fn update(&mut self, id: usize, params: &mut [S], grads: &[S], lr: S) {
        match self {
            State::Sgd => super::dense::sgd(params, grads, lr),
            State::Adam { moments, now, .. } => {
                let (m, v) = &mut moments[id];
                adam(params, grads, m, v, *now);
            }
        }
    }
}

impl<S: Scalar> Adam<S> {
    fn at((beta1, beta2, eps): (f32, f32, f32), t: i32, lr: f64) -> Adam<S> {
        let (b1, b2) = (f64::from(beta1), f64::from(beta2));
        let c = constant::<S>;
        Adam {
            beta1: c(b1),
            one_minus_beta1: c(1.0 - b1),
            beta2: c(b2),
            one_minus_beta2: c(1.0 - b2),
            step: c(lr / (1.0 - b1.powi(t))),
            root_correction: c((1.0 - b2.powi(t)).sqrt()),
            eps: c(f64::from(eps)),
        }
    }
}

/// Per parameter: `m = b1 m + (1 - b1) g` (2 mul, 1 add); `v = b2 v + (1 - b2) (g g)` (3 mul,
/// 1 add); `p -= step (m / (sqrt(v) / sqrt(c2) + eps))` (1 sqrt, 2 div, 1 add, 1 mul, 1 sub).
#[inline(never)]
fn adam<S: Scalar>(params: &mut [S], grads: &[S], m: &mut [S], v: &mut [S], k: Adam<S>) {
    let moments = m.iter_mut().zip(v.iter_mut());
    for ((p, &g), (m, v)) in params.iter_mut().zip(grads).zip(moments) {
        *m = k.beta1 * *m + k.one_minus_beta1 * g;
        *v = k.beta2 * *v + k.one_minus_beta2 * (g * g);
        *p -= k.step * (*m / (v.sqrt() / k.root_correction + k.eps));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Counted, tally};

    /// Two steps of Adam on one parameter against the algorithm written out in f64 (the
    /// update PyTorch's `torch.optim.Adam` documents).
    #[test]
    fn adam_follows_its_definition_and_counts_per_parameter() {
        let settings = Optimizer::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        };
        let mut state = State::<Counted<f64>>::new(settings, [1].into_iter());
        let mut p = Counted::vec(&[0.5]);
        let (lr, grads) = (0.01, [0.3, -0.2]);
        // The settings are f32 numbers, 0.9f32 is not 0.9.
        let (b1, b2, eps) = (f64::from(0.9f32), f64::from(0.999f32), f64::from(1e-8f32));
        let (mut want, mut m, mut v) = (0.5f64, 0.0, 0.0);
        for (t, g) in grads.iter().enumerate() {
            let t = t as i32 + 1;
            m = b1 * m + (1.0 - b1) * g;
            v = b2 * v + (1.0 - b2) * g * g;
            let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
            want -= lr / c1 * m / (v.sqrt() / c2.sqrt() + eps);
            state.start(Counted::new(lr));
            let g = Counted::vec(&[*g]);
            let ((), counts) = tally::measure(|| state.update(0, &mut p, &g, Counted::new(lr)));
            assert_eq!(counts, per_parameter(settings));
            assert!(
                (p[0].get() - want).abs() < 1e-15,
                "{} vs {want}",
                p[0].get()
            );
        }
    }
}
