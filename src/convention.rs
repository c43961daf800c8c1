//! Other counters' conventions, so that opcount's exact counts can be set next to the numbers
//! fvcore, ptflops, PyTorch's FlopCounterMode or DeepSpeed print for the same model (see
//! `docs/conventions.md`).

use std::fmt;

use crate::counts::Counts;
use crate::phases::Phase;

/// How operations are reported.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Convention {
    /// opcount's own: every kind of operation counted separately (`docs/counting.md`).
    #[default]
    Exact,
    /// Multiply-accumulates of the matrix products only, forward and backward: one per
    /// product of the weighted sums of convolution, dense and unembedding layers and of
    /// attention's scores and mix (bias additions, activations, softmax, normalisation,
    /// pooling, the loss and the update count nothing). What fvcore, thop, ptflops and torchvision's
    /// published "GFLOPS" report for the forward pass.
    Mac,
    /// Two floating-point operations per multiply-accumulate, in the same places: what
    /// PyTorch's FlopCounterMode reports, forward and (measured) backward. DeepSpeed's
    /// profiler and calflops use the same unit forward but assume backward = 2x forward.
    Flop,
}

impl Convention {
    /// Lower-case name, as on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Convention::Exact => "exact",
            Convention::Mac => "mac",
            Convention::Flop => "flop",
        }
    }

    /// The single number this convention gives a node (of `kind`, as in
    /// [`NodeOp::kind`](crate::model::NodeOp::kind)) in `phase`, for the conventions that
    /// give one ([`Convention::Mac`], [`Convention::Flop`]); `None` for
    /// [`Convention::Exact`], and if the number would pass `u128::MAX` (flops are twice the
    /// multiplications).
    ///
    /// A convolution's, dense or unembedding layer's, or attention's scores' or mix's
    /// multiply-accumulates are exactly its measured multiplications: forward, one per
    /// product of a weighted sum; backward, one per product of each gradient it computes.
    pub fn value(self, kind: &str, phase: Phase, counts: &Counts) -> Option<u128> {
        // Every matrix product: the weighted layers, the tied output layer, and attention's
        // scores and mix.
        let weighted = matches!(kind, "conv2d" | "dense" | "unembed" | "scores" | "mix");
        let macs = match phase {
            Phase::Forward | Phase::Backward if weighted => counts.mul,
            _ => 0,
        };
        match self {
            Convention::Exact => None,
            Convention::Mac => Some(macs),
            Convention::Flop => macs.checked_mul(2),
        }
    }
}

impl fmt::Display for Convention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_weighted_layers_forward_and_backward_count() {
        let c = Counts {
            mul: 10,
            add: 10,
            exp: 3,
            ..Counts::ZERO
        };
        assert_eq!(Convention::Mac.value("dense", Phase::Forward, &c), Some(10));
        assert_eq!(
            Convention::Flop.value("conv2d", Phase::Backward, &c),
            Some(20)
        );
        assert_eq!(Convention::Mac.value("dense", Phase::Update, &c), Some(0));
        assert_eq!(
            Convention::Mac.value("sigmoid", Phase::Forward, &c),
            Some(0)
        );
        assert_eq!(Convention::Exact.value("dense", Phase::Forward, &c), None);
        let past = Counts::of(crate::Op::Mul, u128::MAX / 2 + 1);
        assert_eq!(Convention::Flop.value("dense", Phase::Forward, &past), None);
        assert_eq!(
            Convention::Mac.value("dense", Phase::Forward, &past),
            Some(u128::MAX / 2 + 1)
        );
    }
}
