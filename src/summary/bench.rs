//! The summary of `opcount bench`: what counting costs on one model (a step timed with `f32`
//! and with `Counted<f32>`), and how fast its convolution and dense kernels run next to a
//! reference matrix product.

use serde_json::{Value, json};

use crate::counts::Counts;
use crate::model::{Node, Plan};
use crate::phases::StepCounts;
use crate::report::{counts_json, json_number, thousands};
use crate::text::escape;

use super::duration;

/// Whether `opcount bench` times a node as a kernel: convolutions and dense layers, the
/// nodes whose arithmetic is matrix products.
pub fn is_kernel(node: &Node) -> bool {
    matches!(node.kind(), "conv2d" | "dense")
}

/// What the caller timed, medians of interleaved rounds.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct BenchTimings {
    /// Rounds each side ran.
    pub rounds: usize,
    /// Seconds of one step (or forward pass) with `f32`.
    pub plain_s: f64,
    /// ... with `Counted<f32>`, every operation counted in the thread's tally.
    pub counted_s: f64,
    /// ... with `Counted<f32>` and the counts attributed to each node, as `opcount count`
    /// runs it.
    pub attributed_s: f64,
    /// Seconds a plain step spends in its kernel nodes ([`is_kernel`]).
    pub kernel_s: f64,
    /// The reference rate the kernels are compared with, in floating-point operations per
    /// second. The table names it as `opcount bench` measures it: a 1024 x 1024 x 1024
    /// sgemm (the `matrixmultiply` crate) on all cores.
    pub sgemm_flops_per_s: f64,
}

/// One model's step timed plain and counted.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchSummary {
    /// The model's name.
    pub model: String,
    /// Examples per step.
    pub batch: usize,
    /// Whether the forward pass alone was timed, not a whole training step.
    pub forward_only: bool,
    /// The operations of what was timed.
    pub ops: Counts,
    /// Of those, the arithmetic operations of the kernel nodes.
    pub kernel_ops: u128,
    /// The times.
    pub timings: BenchTimings,
}

impl BenchSummary {
    /// The summary of timing `plan` at `batch`: `step` is a counted step's counts (of which
    /// the forward pass's if `forward_only`).
    pub fn new(
        plan: &Plan,
        batch: usize,
        forward_only: bool,
        step: &StepCounts,
        timings: BenchTimings,
    ) -> BenchSummary {
        let timed = |forward: Counts, backward: Counts| {
            if forward_only {
                forward
            } else {
                forward + backward
            }
        };
        let totals = step.totals();
        let ops = if forward_only {
            totals.forward
        } else {
            totals.all
        };
        let kernel_ops = plan
            .nodes()
            .iter()
            .zip(&step.nodes)
            .filter(|(node, _)| is_kernel(node))
            .map(|(_, c)| timed(c.forward, c.backward).total())
            .sum();
        BenchSummary {
            model: plan.name().to_string(),
            batch,
            forward_only,
            ops,
            kernel_ops,
            timings,
        }
    }

    /// Counted time over plain time: what counting costs, 1.0 meaning nothing.
    pub fn ratio(&self) -> f64 {
        self.timings.counted_s / self.timings.plain_s
    }

    /// [`ratio`](BenchSummary::ratio) with the counts attributed to each node.
    pub fn ratio_attributed(&self) -> f64 {
        self.timings.attributed_s / self.timings.plain_s
    }

    /// The kernels' operations per second, or `None` if the model has no kernel node.
    pub fn kernel_rate(&self) -> Option<f64> {
        (self.kernel_ops > 0).then(|| self.kernel_ops as f64 / self.timings.kernel_s)
    }

    fn examples_per_s(&self, seconds: f64) -> f64 {
        self.batch as f64 / seconds
    }

    /// The summary as text for people: each side's time, throughput and rate, the ratios,
    /// and the kernels' rate next to the reference's.
    pub fn table(&self) -> String {
        let t = &self.timings;
        let what = if self.forward_only {
            "forward pass"
        } else {
            "SGD step"
        };
        let ops = self.ops.total();
        let mut out = format!(
            "{}: one {what} at batch {}, {} operations, median of {} interleaved rounds\n",
            escape(&self.model),
            self.batch,
            thousands(ops),
            t.rounds
        );
        let sides = [
            ("f32", t.plain_s),
            ("Counted<f32>", t.counted_s),
            ("  + per node", t.attributed_s),
        ];
        for (name, s) in sides {
            out.push_str(&format!(
                "  {name:<13} {:>12}/step {:>14} examples/s {:>8.2} Gop/s\n",
                duration(s),
                thousands(self.examples_per_s(s).round() as u64),
                ops as f64 / s / 1e9
            ));
        }
        out.push_str(&format!(
            "  ratio counted/plain {:.3}; with the counts attributed to each layer \
             (as `count` runs) {:.3}\n",
            self.ratio(),
            self.ratio_attributed()
        ));
        let sgemm = t.sgemm_flops_per_s;
        match self.kernel_rate() {
            Some(rate) => {
                out.push_str(&format!(
                    "  conv and dense kernels (f32): {} operations in {}, {:.1} Gop/s\n",
                    thousands(self.kernel_ops),
                    duration(t.kernel_s),
                    rate / 1e9
                ));
                out.push_str(&format!(
                    "  reference sgemm 1024^3 (matrixmultiply, all cores): {:.1} GFLOP/s; \
                     kernels at {:.0}% of it\n",
                    sgemm / 1e9,
                    100.0 * rate / sgemm
                ));
            }
            None => out.push_str(&format!(
                "  no convolution or dense layers, so no kernel rate; reference sgemm \
                 1024^3 (matrixmultiply, all cores): {:.1} GFLOP/s\n",
                sgemm / 1e9
            )),
        }
        out
    }

    /// The summary as one JSON object; rates are null where there is nothing to divide.
    pub fn json(&self) -> Value {
        let t = &self.timings;
        let ops = self.ops.total();
        let kernel_rate = self.kernel_rate();
        json!({
            "model": self.model,
            "batch": self.batch,
            "forward_only": self.forward_only,
            "rounds": t.rounds,
            "plain_s": t.plain_s,
            "counted_s": t.counted_s,
            "ratio": self.ratio(),
            "attributed_s": t.attributed_s,
            "ratio_attributed": self.ratio_attributed(),
            "plain_examples_per_s": self.examples_per_s(t.plain_s),
            "counted_examples_per_s": self.examples_per_s(t.counted_s),
            "ops_per_step": json_number(ops),
            "plain_ops_per_s": ops as f64 / t.plain_s,
            "counted_ops_per_s": ops as f64 / t.counted_s,
            "kernels": {
                "ops": json_number(self.kernel_ops),
                "seconds": t.kernel_s,
                "ops_per_s": kernel_rate,
            },
            "sgemm_flops_per_s": t.sgemm_flops_per_s,
            "kernel_efficiency": kernel_rate.map(|r| r / t.sgemm_flops_per_s),
            // Counted<f32> does not count multiplications by zero: `zmul` is null.
            "counts_per_step": counts_json(&self.ops, false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Model;

    fn plan() -> Plan {
        Model::parse(
            "(name: \"b\", input: [3], loss: Mse, \
             layers: [Dense(units: 2, activation: Relu), Dense(units: 1)])",
            "b",
        )
        .unwrap()
        .plan("b")
        .unwrap()
    }

    /// Times in powers of two, so that the ratios are exact.
    const TIMINGS: BenchTimings = BenchTimings {
        rounds: 21,
        plain_s: 1.0 / (1 << 21) as f64,
        counted_s: 1.25 / (1 << 21) as f64,
        attributed_s: 2.0 / (1 << 21) as f64,
        kernel_s: 1.0 / (1 << 22) as f64,
        // Twice the kernels' rate below, 64 operations in 2^-22 s.
        sgemm_flops_per_s: 2.0 * 64.0 * (1 << 22) as f64,
    };

    #[test]
    fn the_kernels_are_the_dense_nodes_and_their_ops_the_timed_phases() {
        let plan = plan();
        let step = crate::estimate::step(&plan, 4).unwrap();
        let forward = BenchSummary::new(&plan, 4, true, &step, TIMINGS);
        // Forward: 4 x (3 x 2 + 2 x 1) multiplications and as many additions (the sums
        // start from the bias); the ReLU node is no kernel.
        assert_eq!(forward.kernel_ops, 2 * 4 * 8);
        assert_eq!(forward.ops, step.totals().forward);
        let whole = BenchSummary::new(&plan, 4, false, &step, TIMINGS);
        let dense = |k: usize| (step.nodes[k].forward + step.nodes[k].backward).total();
        assert_eq!(whole.kernel_ops, dense(0) + dense(2));
        assert_eq!(whole.ops, step.totals().all);
    }

    #[test]
    fn the_table_gives_each_side_and_the_ratios() {
        let plan = plan();
        let step = crate::estimate::step(&plan, 4).unwrap();
        let summary = BenchSummary::new(&plan, 4, true, &step, TIMINGS);
        assert_eq!(summary.ops.total(), 72);
        assert_eq!(
            summary.table(),
            "\
b: one forward pass at batch 4, 72 operations, median of 21 interleaved rounds
  f32               0.477 us/step      8,388,608 examples/s     0.15 Gop/s
  Counted<f32>      0.596 us/step      6,710,886 examples/s     0.12 Gop/s
    + per node      0.954 us/step      4,194,304 examples/s     0.08 Gop/s
  ratio counted/plain 1.250; with the counts attributed to each layer (as `count` runs) 2.000
  conv and dense kernels (f32): 64 operations in 0.238 us, 0.3 Gop/s
  reference sgemm 1024^3 (matrixmultiply, all cores): 0.5 GFLOP/s; kernels at 50% of it
"
        );
        let json = summary.json();
        assert_eq!(json["ratio"], 1.25);
        assert_eq!(json["ratio_attributed"], 2.0);
        assert_eq!(json["ops_per_step"], 72);
        assert_eq!(json["kernels"]["ops"], 64);
        assert_eq!(json["kernels"]["ops_per_s"], 64.0 * (1 << 22) as f64);
        assert_eq!(json["kernel_efficiency"], 0.5);
        assert_eq!(json["counts_per_step"]["zmul"], Value::Null);
    }

    #[test]
    fn without_kernels_there_is_no_kernel_rate() {
        let plan = Model::parse("(name: \"a\", input: [3], loss: Mse, layers: [Relu])", "a")
            .unwrap()
            .plan("a")
            .unwrap();
        let step = crate::estimate::step(&plan, 1).unwrap();
        let summary = BenchSummary::new(&plan, 1, false, &step, TIMINGS);
        assert_eq!(summary.kernel_rate(), None);
        assert!(summary.table().ends_with(
            "  no convolution or dense layers, so no kernel rate; reference sgemm 1024^3 \
             (matrixmultiply, all cores): 0.5 GFLOP/s\n"
        ));
        assert_eq!(summary.json()["kernel_efficiency"], Value::Null);
    }
}
