//! The summary of `opcount project`: a whole training run's operations from the closed form
//! of one step, checked against a measured step, and its time on this machine from a timed
//! one.

use serde_json::{Value, json};

use crate::convention::Convention;
use crate::data::Dataset;
use crate::error::Result;
use crate::model::Plan;
use crate::nn::measure_step;
use crate::phases::Totals;
use crate::project::{Projection, project};
use crate::report::{Mismatch, Report, json_number, phase_table, thousands, totals_json};
use crate::text::escape;

use super::{duration, human_time};

/// A training run projected, and what backs the projection up.
#[derive(Clone, Debug, PartialEq)]
pub struct ProjectSummary {
    /// The model's name.
    pub model: String,
    /// Whether each step is the forward pass alone (loss `None`): no backward pass, no update.
    pub forward_only: bool,
    /// The run's operations, per phase and kind.
    pub projection: Projection,
    /// The convention `per_step` and `total` are in.
    pub convention: Convention,
    /// One full step's forward, backward and total numbers in a single-number convention
    /// (mac, flop); `None` for [`Convention::Exact`], whose counts are the projection's.
    pub per_step: Option<[u128; 3]>,
    /// The whole run's, likewise.
    pub total: Option<[u128; 3]>,
    /// Whether a measured step equalled the closed form ([`ProjectSummary::validate`]).
    pub validated: bool,
    /// Why no step was run here, if none was.
    pub not_run_because: Option<String>,
    /// Median seconds of one plain `f32` step on this machine, if one was timed.
    pub step_s: Option<f64>,
    /// This machine's practical peak, in floating-point operations per second, if measured.
    /// The table names it as `opcount project` measures it: a 1024 x 1024 x 1024 sgemm (the
    /// `matrixmultiply` crate) on all cores.
    pub sgemm_flops_per_s: Option<f64>,
}

impl ProjectSummary {
    /// What the projected time takes for granted.
    pub const ASSUMPTIONS: [&'static str; 4] = [
        "plain f32 on this machine, on all its cores, as `opcount train` runs",
        "every step as fast, per operation, as the one measured",
        "the last step of an epoch takes the examples left over",
        "no time for loading data, evaluation or anything but the training steps",
    ];

    /// The closed form of training `plan` on `examples` examples for `epochs` epochs at
    /// `batch` (see [`project`]), in `convention`; nothing measured or timed yet. An
    /// [`Error::Overflow`](crate::Error::Overflow) if a number does not fit in `u128`.
    ///
    /// ```
    /// use opcount::Model;
    /// use opcount::convention::Convention;
    /// use opcount::summary::ProjectSummary;
    ///
    /// let plan = Model::load("models/lenet5.ron".as_ref())?.plan("lenet5")?;
    /// let run = ProjectSummary::new(&plan, 60_000, 10, 32, Convention::Mac)?;
    /// assert_eq!(run.projection.steps(), 1875 * 10);
    /// // 416,520 multiply-accumulates per example forward (docs/conventions.md).
    /// assert_eq!(run.total.unwrap()[0], 416_520 * 60_000 * 10);
    /// # Ok::<(), opcount::Error>(())
    /// ```
    pub fn new(
        plan: &Plan,
        examples: usize,
        epochs: usize,
        batch: usize,
        convention: Convention,
    ) -> Result<ProjectSummary> {
        let projection = project(plan, examples, epochs, batch)?;
        let total = projection.in_convention(plan, convention)?;
        let batch = projection.batch;
        let per_step = project(plan, batch, 1, batch)?.in_convention(plan, convention)?;
        Ok(ProjectSummary {
            model: plan.name().to_string(),
            forward_only: plan.loss().forward_only(),
            projection,
            convention,
            per_step,
            total,
            validated: false,
            not_run_because: None,
            step_s: None,
            sgemm_flops_per_s: None,
        })
    }

    /// Runs one step of `plan` (the projected plan) with counted numbers on `data` and
    /// compares every count with the closed form of the projection's step. Sets `validated`
    /// if they are all equal; returns the ones that differ (a bug in opcount).
    pub fn validate(&mut self, plan: &Plan, data: &Dataset) -> Vec<Mismatch> {
        let batch = self.projection.batch;
        let measured = measure_step(plan, data, batch);
        let report = Report::new(plan, batch, Some(measured), self.projection.step.clone());
        let mismatches = report.mismatches();
        self.validated = mismatches.is_empty();
        mismatches
    }

    /// Arithmetic operations of one full step.
    pub fn step_ops(&self) -> u128 {
        self.projection.step.totals().all.total()
    }

    /// Operations per second of the timed step.
    pub fn ops_per_s(&self) -> Option<f64> {
        self.step_s.map(|s| self.step_ops() as f64 / s)
    }

    /// Seconds the whole run takes at the timed step's rate.
    pub fn projected_s(&self) -> Option<f64> {
        let all = self.projection.total.all.total();
        self.ops_per_s().map(|rate| all as f64 / rate)
    }

    /// The timed step's rate as a fraction of the machine's practical peak.
    pub fn peak_fraction(&self) -> Option<f64> {
        self.ops_per_s()
            .zip(self.sgemm_flops_per_s)
            .map(|(rate, peak)| rate / peak)
    }

    /// The summary as text for people: the run, its operations, the measured step and the
    /// projected time (or why there is none), and the assumptions.
    pub fn table(&self) -> String {
        let p = &self.projection;
        let mut out = format!(
            "{}: {} examples x {} epochs at batch {} = {} steps\n",
            escape(&self.model),
            thousands(p.examples as u128),
            thousands(p.epochs as u128),
            p.batch,
            thousands(p.steps())
        );
        if self.forward_only {
            out.push_str(
                "each step the forward pass alone (loss none: no backward pass, no update)\n",
            );
        }
        match self.total {
            None => out.push_str(&format!(
                "operations of the whole training, per phase (closed form):\n{}\n",
                phase_table(&p.total)
            )),
            Some([f, b, all]) => out.push_str(&format!(
                "{}s of the whole training (closed form), convolution and dense layers: \
                 forward {}, backward {}, in all {}\n",
                self.convention.name(),
                thousands(f),
                thousands(b),
                thousands(all)
            )),
        }
        match (self.validated, self.step_s, self.ops_per_s()) {
            (true, Some(s), Some(rate)) => {
                out.push_str(&format!(
                    "one step: {} operations, the closed form checked against a measured \
                     step; {} per step here (median), {:.2} Gop/s\n",
                    thousands(self.step_ops()),
                    duration(s),
                    rate / 1e9
                ));
                if let Some(peak) = self.sgemm_flops_per_s {
                    out.push_str(&format!(
                        "this machine's practical peak (sgemm 1024^3, all cores): {:.1} \
                         GFLOP/s; the step runs at {:.0}% of it\n",
                        peak / 1e9,
                        100.0 * rate / peak
                    ));
                }
                let projected = self.projected_s().unwrap_or(0.0);
                out.push_str(&format!(
                    "projected training time: {} ({})\n",
                    duration(projected),
                    human_time(projected)
                ));
            }
            _ => out.push_str(&format!(
                "not run here, so no time projected: {}\n",
                self.not_run_because.as_deref().unwrap_or_default()
            )),
        }
        out.push_str("assumptions:\n");
        for a in Self::ASSUMPTIONS {
            out.push_str(&format!("  - {a}\n"));
        }
        out
    }

    /// The summary as one JSON object. Counts are the closed form's, so `zmul` is null.
    pub fn json(&self) -> Value {
        let p = &self.projection;
        let exact = |t: &Totals| totals_json(t, false);
        let numbers = |[f, b, all]: [u128; 3]| {
            json!({
                "forward": json_number(f),
                "backward": json_number(b),
                "all": json_number(all),
            })
        };
        json!({
            "model": self.model,
            "examples": json_number(p.examples as u128),
            "epochs": json_number(p.epochs as u128),
            "batch": json_number(p.batch as u128),
            "steps": json_number(p.steps()),
            "last_batch": json_number(p.last_batch as u128),
            "convention": self.convention.name(),
            "forward_only": self.forward_only,
            "per_step": self.per_step.map_or_else(|| exact(&p.step.totals()), numbers),
            "total": self.total.map_or_else(|| exact(&p.total), numbers),
            "validated": self.validated,
            "not_run_because": self.not_run_because,
            "step_s": self.step_s,
            "ops_per_s": self.ops_per_s(),
            "sgemm_flops_per_s": self.sgemm_flops_per_s,
            "peak_fraction": self.peak_fraction(),
            "projected_s": self.projected_s(),
            "assumptions": Self::ASSUMPTIONS,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Model;

    fn plan() -> Plan {
        Model::parse(
            "(name: \"p\", input: [3], loss: Mse, layers: [Dense(units: 2)])",
            "p",
        )
        .unwrap()
        .plan("p")
        .unwrap()
    }

    #[test]
    fn a_run_not_measured_says_why_and_projects_no_time() {
        let plan = plan();
        let mut run = ProjectSummary::new(&plan, 10, 3, 4, Convention::Mac).unwrap();
        run.not_run_because = Some("too big".into());
        // 3 x 2 multiply-accumulates per example forward, 30 examples; backward only the
        // weights' gradient (the first layer computes no input gradient).
        assert_eq!(run.total, Some([180, 180, 360]));
        assert_eq!(run.per_step, Some([24, 24, 48]));
        assert_eq!(
            run.table(),
            "\
p: 10 examples x 3 epochs at batch 4 = 9 steps
macs of the whole training (closed form), convolution and dense layers: forward 180, backward 180, in all 360
not run here, so no time projected: too big
assumptions:
  - plain f32 on this machine, on all its cores, as `opcount train` runs
  - every step as fast, per operation, as the one measured
  - the last step of an epoch takes the examples left over
  - no time for loading data, evaluation or anything but the training steps
"
        );
        let json = run.json();
        assert_eq!(
            json["per_step"],
            json!({"forward": 24, "backward": 24, "all": 48})
        );
        assert_eq!(json["last_batch"], 2);
        assert_eq!(json["not_run_because"], "too big");
        assert_eq!(json["projected_s"], Value::Null);
        assert_eq!(json["validated"], false);
    }

    #[test]
    fn a_measured_and_timed_run_projects_its_time() {
        let plan = plan();
        let mut run = ProjectSummary::new(&plan, 8, 1000, 4, Convention::Exact).unwrap();
        assert!(
            run.validate(&plan, &Dataset::synthetic(&plan, 4, 0))
                .is_empty()
        );
        assert!(run.validated);
        // Powers of two: every quotient below is exact.
        let ops = run.step_ops() as f64;
        run.step_s = Some(1.0 / 1024.0);
        run.sgemm_flops_per_s = Some(4.0 * 1024.0 * ops);
        assert_eq!(run.ops_per_s(), Some(1024.0 * ops));
        assert_eq!(run.peak_fraction(), Some(0.25));
        // 2 steps an epoch, 1000 epochs.
        assert_eq!(run.projected_s(), Some(2000.0 / 1024.0));
        let table = run.table();
        let step = format!(
            "one step: {} operations, the closed form checked against a measured step; ",
            thousands(run.step_ops())
        );
        assert!(table.contains(&step), "{table}");
        assert!(
            table.contains(
                "GFLOP/s; the step runs at 25% of it\nprojected training time: 1.953 s \
                 (2.0 seconds)\n"
            ),
            "{table}"
        );
        assert!(
            table.contains("operations of the whole training, per phase (closed form):\n╭"),
            "{table}"
        );
        let json = run.json();
        assert_eq!(
            json["total"]["all"]["mul"],
            run.projection.total.all.mul as u64
        );
        assert_eq!(json["peak_fraction"], 0.25);
    }
}
