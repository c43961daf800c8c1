//! Rendering results as text tables (tabled), JSON and CSV. Returns strings; printing is the
//! binary's job.

use std::fmt;

use serde::Serialize;
use serde_json::json;
use tabled::builder::Builder;
use tabled::settings::object::{Columns, Object, Rows};
use tabled::settings::{Alignment, Style};
use tabled::{Table, Tabled};

use crate::convention::Convention;
use crate::counts::{Counts, JSON_EXACT_MAX, Op};
use crate::error::{Error, Result};
use crate::model::Plan;
use crate::phases::{Phase, StepCounts, Totals};
use crate::text::escape;

/// `1234567` as `1,234,567`.
pub fn thousands(n: impl Into<u128>) -> String {
    let digits = n.into().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A whole number as JSON: a number up to 2^53, above it a string of its decimal digits, so
/// that no reader rounds it (most hold numbers as 64-bit floats). Every count, total and
/// size opcount writes as JSON goes through this (or [`Counts`]' serialization, which does
/// the same).
pub fn json_number(n: impl Into<u128>) -> serde_json::Value {
    let n = n.into();
    if n <= JSON_EXACT_MAX {
        serde_json::Value::from(n as u64)
    } else {
        serde_json::Value::String(n.to_string())
    }
}

/// Counts as a JSON object with every kind as a key (numbers as [`json_number`] writes
/// them). `zmul` is `null` unless `zmul_counted`: a closed form does not estimate it (it
/// depends on the data) and `Counted<T>` does not count it; only a measurement with
/// `CountedZeros<T>` has it.
pub fn counts_json(counts: &Counts, zmul_counted: bool) -> serde_json::Value {
    let mut object = json!(counts);
    if !zmul_counted {
        object[Op::Zmul.name()] = serde_json::Value::Null;
    }
    object
}

/// Totals per phase and over the whole step as JSON: `{"forward", "loss", "backward",
/// "update", "all"}`, each as [`counts_json`] writes it.
pub fn totals_json(totals: &Totals, zmul_counted: bool) -> serde_json::Value {
    let c = |counts: &Counts| counts_json(counts, zmul_counted);
    json!({
        "forward": c(&totals.forward), "loss": c(&totals.loss), "backward": c(&totals.backward),
        "update": c(&totals.update), "all": c(&totals.all),
    })
}

/// The kinds that are not zero in `counts`, in [`Op::ALL`] order.
pub fn used_kinds(counts: &Counts) -> Vec<Op> {
    counts.nonzero().map(|(op, _)| op).collect()
}

/// A table of a step's operations per phase: one row per phase and a total row, one column
/// per kind used, and the total of arithmetic operations (`act` is not in it).
pub fn phase_table(totals: &Totals) -> String {
    let kinds = used_kinds(&totals.all);
    let mut builder = Builder::default();
    let mut header = vec!["phase".to_string()];
    header.extend(kinds.iter().map(|op| op.name().to_string()));
    header.push("total".into());
    builder.push_record(header);
    let rows = Phase::ALL
        .iter()
        .map(|&p| (p.name(), phase_of(totals, p)))
        .chain([("step", totals.all)]);
    for (name, counts) in rows {
        let mut record = vec![name.to_string()];
        record.extend(kinds.iter().map(|&op| thousands(counts[op])));
        record.push(thousands(counts.total()));
        builder.push_record(record);
    }
    let mut table = builder.build();
    table
        .with(Style::rounded())
        .modify(Columns::new(1..).not(Rows::first()), Alignment::right());
    table.to_string()
}

fn phase_of(totals: &Totals, phase: Phase) -> Counts {
    match phase {
        Phase::Forward => totals.forward,
        Phase::Loss => totals.loss,
        Phase::Backward => totals.backward,
        Phase::Update => totals.update,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0u64), "0");
        assert_eq!(thousands(999u64), "999");
        assert_eq!(thousands(1800u64), "1,800");
        assert_eq!(thousands(15_470_264_320u64), "15,470,264,320");
        assert_eq!(
            thousands(u128::MAX),
            "340,282,366,920,938,463,463,374,607,431,768,211,455"
        );
    }

    #[test]
    fn json_numbers_past_2_to_the_53_are_strings() {
        assert_eq!(
            json_number(9_007_199_254_740_992u64),
            json!(9_007_199_254_740_992u64)
        );
        assert_eq!(
            json_number(9_007_199_254_740_993u64),
            json!("9007199254740993")
        );
        assert_eq!(json_number(u128::MAX), json!(u128::MAX.to_string()));
    }
}

// ---------------------------------------------------------------------------------------
// The per-layer report of `opcount count`: measured next to estimated.

/// One node of the plan as a report shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeInfo {
    /// Position in the plan, from 0.
    pub index: usize,
    /// Name, e.g. `dense1.sigmoid`.
    pub name: String,
    /// Kind, e.g. `dense`, `sigmoid`.
    pub kind: &'static str,
    /// Trainable parameters.
    pub params: u64,
    /// Shape of one example's output, e.g. `30` or `6x28x28`.
    pub output: String,
}

/// A count that differs from its closed form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// The node's name, or `loss`.
    pub row: String,
    /// The phase.
    pub phase: Phase,
    /// The kind of operation.
    pub op: Op,
    /// What the run counted.
    pub measured: u128,
    /// What the closed form says.
    pub estimated: u128,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}: measured {}, closed form {}",
            self.row,
            self.phase.name(),
            self.op,
            self.measured,
            self.estimated
        )
    }
}

/// One training step of a model: the closed form's counts, and (unless only the closed form
/// was asked for) the counts measured by running it.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The model's name.
    pub model: String,
    /// Examples in the step.
    pub batch: usize,
    /// Trainable parameters of the whole model.
    pub params: u128,
    /// The loss's name (`none` for the forward pass alone).
    pub loss: &'static str,
    /// Whether the step is the forward pass alone (loss `None`): no backward pass, no update.
    pub forward_only: bool,
    /// One entry per node.
    pub nodes: Vec<NodeInfo>,
    /// What one real step counted, if it was run.
    pub measured: Option<StepCounts>,
    /// What the closed forms say.
    pub estimated: StepCounts,
    /// How the table, JSON and CSV report the counts.
    pub convention: Convention,
}

/// The phases a node takes part in, in report order.
const NODE_PHASES: [Phase; 3] = [Phase::Forward, Phase::Backward, Phase::Update];

impl Report {
    /// A report of `plan` at `batch` examples.
    pub fn new(
        plan: &Plan,
        batch: usize,
        measured: Option<StepCounts>,
        estimated: StepCounts,
    ) -> Report {
        let nodes = plan
            .nodes()
            .iter()
            .enumerate()
            .map(|(index, n)| NodeInfo {
                index,
                name: n.name().to_string(),
                kind: n.kind(),
                params: n.params(),
                output: n.output().to_string(),
            })
            .collect();
        Report {
            model: plan.name().to_string(),
            batch,
            params: plan.params(),
            loss: plan.loss().name(),
            forward_only: plan.loss().forward_only(),
            nodes,
            measured,
            estimated,
            convention: Convention::Exact,
        }
    }

    /// The same report in another counter's convention, or an [`Error::Overflow`] if a
    /// step's number in it (flops are twice the multiplications) does not fit in `u128`.
    pub fn in_convention(self, convention: Convention) -> Result<Report> {
        let report = Report { convention, ..self };
        for step in report.measured.iter().chain([&report.estimated]) {
            report.step_number(step).ok_or_else(|| Error::Overflow {
                model: report.model.clone(),
                what: format!(
                    "the {}s of a step at batch {}",
                    convention.name(),
                    report.batch
                ),
            })?;
        }
        Ok(report)
    }

    /// The forward and backward numbers of a whole step in the report's convention, or
    /// `None` if they do not fit in `u128`. Every number the report shows is a part of it.
    fn step_number(&self, step: &StepCounts) -> Option<u128> {
        let mut sum = 0u128;
        for k in 0..self.nodes.len() {
            for phase in [Phase::Forward, Phase::Backward] {
                let counts = step.nodes[k].phase(phase);
                let n = match self.convention {
                    Convention::Exact => counts.checked_total(),
                    c => c.value(self.nodes[k].kind, phase, &counts),
                };
                sum = sum.checked_add(n?)?;
            }
        }
        Some(sum)
    }

    /// A node's number in phase `phase` of `step`, in a single-number convention.
    fn number(&self, step: &StepCounts, k: usize, phase: Phase) -> u128 {
        let counts = step.nodes[k].phase(phase);
        match self.convention {
            Convention::Exact => counts.total(),
            c => c
                .value(self.nodes[k].kind, phase, &counts)
                .expect("in_convention checked that a step's numbers fit"),
        }
    }

    /// A phase's number over the whole step, in a single-number convention.
    fn phase_number(&self, step: &StepCounts, phase: Phase) -> u128 {
        (0..self.nodes.len())
            .map(|k| self.number(step, k, phase))
            .sum()
    }

    /// Every count, per node, phase and kind, that differs from its closed form (none if
    /// nothing was measured).
    pub fn mismatches(&self) -> Vec<Mismatch> {
        let Some(measured) = &self.measured else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut compare = |row: &str, phase: Phase, m: Counts, e: Counts| {
            // Multiplications by zero depend on the data: no closed form predicts them.
            for op in Op::ALL.into_iter().filter(|op| op.is_predictable()) {
                if m[op] != e[op] {
                    out.push(Mismatch {
                        row: row.to_string(),
                        phase,
                        op,
                        measured: m[op],
                        estimated: e[op],
                    });
                }
            }
        };
        for (info, (m, e)) in self
            .nodes
            .iter()
            .zip(measured.nodes.iter().zip(&self.estimated.nodes))
        {
            for phase in NODE_PHASES {
                compare(&info.name, phase, m.phase(phase), e.phase(phase));
            }
        }
        compare("loss", Phase::Loss, measured.loss, self.estimated.loss);
        out
    }

    /// The counts shown: measured if there are any, else estimated.
    fn shown(&self) -> &StepCounts {
        self.measured.as_ref().unwrap_or(&self.estimated)
    }

    /// What a step is, for headings: a training step, or the forward pass alone.
    fn step_name(&self) -> &'static str {
        if self.forward_only {
            "the forward pass alone (loss none: no backward pass, no update)"
        } else {
            "one training step"
        }
    }

    /// Arithmetic operations of the backward pass per operation of the forward pass, or
    /// `None` if the forward pass does none (a model of activations alone) or the step is
    /// the forward pass alone.
    pub fn backward_forward_ratio(&self) -> Option<f64> {
        if self.forward_only {
            return None;
        }
        let t = self.shown().totals();
        let forward = t.forward.total();
        (forward > 0).then(|| t.backward.total() as f64 / forward as f64)
    }

    /// The report as a text table: one row per node and phase it works in, the loss, and
    /// the totals per phase; then the parameter count and the backward/forward ratio.
    pub fn table(&self) -> String {
        if self.convention != Convention::Exact {
            return self.number_table();
        }
        let totals = self.shown().totals();
        let step_total = totals.all.total();
        let measured_totals = self.measured.as_ref().map(StepCounts::totals);
        let mut rows = Vec::new();
        let mut push = |first: Option<(String, &str, &str, &str, Option<u128>)>,
                        phase: &'static str,
                        shown: Counts,
                        measured: Option<Counts>,
                        estimated: Counts| {
            let (index, layer, kind, output, params) = match first {
                Some((i, l, k, o, p)) => {
                    (i, escape(l).into_owned(), k.to_string(), o.to_string(), p)
                }
                None => (
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    None,
                ),
            };
            rows.push(Row {
                index,
                layer,
                kind,
                output,
                params,
                phase,
                mul: shown.mul,
                add: shown.add,
                other: shown.total() - shown.mul - shown.add,
                act: shown.act,
                zero_mul: measured.map(|m| m.zmul),
                measured: measured.map(|m| m.total()),
                estimated: estimated.total(),
                matches: measured.map(|m| m.predictable() == estimated.predictable()),
                share: Share(shown.total(), step_total),
            });
        };
        for (k, info) in self.nodes.iter().enumerate() {
            let shown = &self.shown().nodes[k];
            let mut first = Some((
                info.index.to_string(),
                info.name.as_str(),
                info.kind,
                info.output.as_str(),
                Some(info.params.into()),
            ));
            for phase in NODE_PHASES {
                let estimated = self.estimated.nodes[k].phase(phase);
                let measured = self.measured.as_ref().map(|m| m.nodes[k].phase(phase));
                // Phases a node does nothing in are left out, but every node keeps its
                // forward row, so the table lists every node.
                let idle = estimated == Counts::ZERO && measured.is_none_or(|m| m == Counts::ZERO);
                if idle && phase != Phase::Forward {
                    continue;
                }
                push(
                    first.take(),
                    phase.name(),
                    shown.phase(phase),
                    measured,
                    estimated,
                );
            }
        }
        push(
            Some((String::new(), "loss", self.loss, "", None)),
            Phase::Loss.name(),
            self.shown().loss,
            self.measured.as_ref().map(|m| m.loss),
            self.estimated.loss,
        );
        let estimated_totals = self.estimated.totals();
        let mut first = Some((String::new(), "total", "", "", Some(self.params)));
        for phase in Phase::ALL {
            push(
                first.take(),
                phase.name(),
                phase_of(&totals, phase),
                measured_totals.map(|t| phase_of(&t, phase)),
                phase_of(&estimated_totals, phase),
            );
        }
        push(
            None,
            "step",
            totals.all,
            measured_totals.map(|t| t.all),
            estimated_totals.all,
        );
        let mut table = Table::new(rows);
        table
            .with(Style::rounded())
            .modify(Columns::new(4..5).not(Rows::first()), Alignment::right())
            .modify(Columns::new(6..).not(Rows::first()), Alignment::right());
        let mut out = format!(
            "{}: {} on a batch of {}, {}\n",
            escape(&self.model),
            self.step_name(),
            self.batch,
            match self.measured {
                Some(_) => "measured with CountedZeros<f32> next to the closed form",
                None => "closed form only (nothing was run)",
            }
        );
        out.push_str(&table.to_string());
        out.push('\n');
        let ratio = match self.backward_forward_ratio() {
            Some(r) => {
                format!("{r:.2}x the arithmetic operations (DeepSpeed and calflops assume 2x)")
            }
            None if self.forward_only => "none, forward only (loss none)".to_string(),
            None => "n/a, the forward pass does no arithmetic (DeepSpeed and calflops assume 2x)"
                .to_string(),
        };
        out.push_str(&format!(
            "parameters: {}\nbackward/forward: {ratio}\n",
            thousands(self.params),
        ));
        if self.measured.is_some() {
            let n = self.mismatches().len();
            if n == 0 {
                out.push_str("every measured count equals its closed form\n");
            } else {
                out.push_str(&format!(
                    "{n} measured counts differ from their closed forms\n"
                ));
            }
        }
        out
    }

    /// The table of a single-number convention (mac, flop): one row per convolution or
    /// dense node and phase it works in, and the totals.
    fn number_table(&self) -> String {
        let unit = self.convention.name();
        let shown = self.shown();
        let step_total: u128 = [Phase::Forward, Phase::Backward]
            .iter()
            .map(|&p| self.phase_number(shown, p))
            .sum();
        let mut builder = Builder::default();
        builder.push_record([
            "#".to_string(),
            "layer".into(),
            "kind".into(),
            "output".into(),
            "params".into(),
            "phase".into(),
            format!("{unit}s measured"),
            format!("{unit}s estimated"),
            "=".into(),
            "share".into(),
        ]);
        let cells = |m: Option<u128>, e: u128, shown: u128| {
            [
                m.map_or_else(|| "-".to_string(), thousands),
                thousands(e),
                match m {
                    Some(m) if m == e => "✓".to_string(),
                    Some(_) => "✗".to_string(),
                    None => String::new(),
                },
                Share(shown, step_total).to_string(),
            ]
        };
        for (k, info) in self.nodes.iter().enumerate() {
            let mut first = true;
            for phase in [Phase::Forward, Phase::Backward] {
                let e = self.number(&self.estimated, k, phase);
                if e == 0 {
                    continue;
                }
                let m = self.measured.as_ref().map(|m| self.number(m, k, phase));
                let mut row = if first {
                    vec![
                        info.index.to_string(),
                        escape(&info.name).into_owned(),
                        info.kind.to_string(),
                        info.output.clone(),
                        thousands(info.params),
                    ]
                } else {
                    vec![String::new(); 5]
                };
                first = false;
                row.push(phase.name().to_string());
                row.extend(cells(m, e, m.unwrap_or(e)));
                builder.push_record(row);
            }
        }
        for (i, phase) in [Some(Phase::Forward), Some(Phase::Backward), None]
            .into_iter()
            .enumerate()
        {
            let total = |step: &StepCounts| match phase {
                Some(p) => self.phase_number(step, p),
                None => {
                    self.phase_number(step, Phase::Forward)
                        + self.phase_number(step, Phase::Backward)
                }
            };
            let e = total(&self.estimated);
            let m = self.measured.as_ref().map(total);
            let mut row = vec![String::new(); 5];
            if i == 0 {
                row[1] = "total".into();
                row[4] = thousands(self.params);
            }
            row.push(phase.map_or("step", Phase::name).to_string());
            row.extend(cells(m, e, m.unwrap_or(e)));
            builder.push_record(row);
        }
        let mut table = builder.build();
        table
            .with(Style::rounded())
            .modify(Columns::new(4..5).not(Rows::first()), Alignment::right())
            .modify(Columns::new(6..).not(Rows::first()), Alignment::right());
        format!(
            "{}: {} on a batch of {}, in {} ({}): convolution and dense \
             layers only\n{table}\nparameters: {}\n",
            escape(&self.model),
            self.step_name(),
            self.batch,
            unit,
            match self.convention {
                Convention::Flop => "2 per multiply-accumulate",
                _ => "multiply-accumulates",
            },
            thousands(self.params)
        )
    }

    /// The report as JSON (schema in `docs/report-format.md`). In the exact convention each
    /// count is an object with every kind (the estimated `zmul` is `null`: no closed form
    /// predicts it); in a single-number convention (mac, flop), the same layout holds one
    /// number per count.
    pub fn json(&self) -> serde_json::Value {
        let exact = self.convention == Convention::Exact;
        // `zmul`: whether the counts are measured (with CountedZeros) or estimated.
        let count = |step: &StepCounts, zmul: bool, k: usize, phase: Phase| {
            if exact {
                counts_json(&step.nodes[k].phase(phase), zmul)
            } else {
                json_number(self.number(step, k, phase))
            }
        };
        let phases = |step: &StepCounts, zmul: bool, k: usize| {
            json!({
                "forward": count(step, zmul, k, Phase::Forward),
                "backward": count(step, zmul, k, Phase::Backward),
                "update": count(step, zmul, k, Phase::Update),
            })
        };
        let loss = |step: &StepCounts, zmul: bool| {
            if exact {
                counts_json(&step.loss, zmul)
            } else {
                json!(0)
            }
        };
        let totals = |step: &StepCounts, zmul: bool| {
            if exact {
                totals_json(&step.totals(), zmul)
            } else {
                let [f, b] = [Phase::Forward, Phase::Backward].map(|p| self.phase_number(step, p));
                json!({
                    "forward": json_number(f), "loss": 0, "backward": json_number(b), "update": 0,
                    "all": json_number(f + b),
                })
            }
        };
        let layers: Vec<serde_json::Value> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(k, info)| {
                json!({
                    "index": info.index,
                    "name": info.name,
                    "kind": info.kind,
                    "params": json_number(info.params),
                    "output": info.output,
                    "measured": self.measured.as_ref().map(|m| phases(m, true, k)),
                    "estimated": phases(&self.estimated, false, k),
                })
            })
            .collect();
        let mut report = json!({
            "model": self.model,
            "batch": json_number(self.batch as u128),
            "params": json_number(self.params),
            "forward_only": self.forward_only,
            "layers": layers,
            "loss": {
                "name": self.loss,
                "measured": self.measured.as_ref().map(|m| loss(m, true)),
                "estimated": loss(&self.estimated, false),
            },
            "totals": {
                "measured": self.measured.as_ref().map(|m| totals(m, true)),
                "estimated": totals(&self.estimated, false),
            },
        });
        let extra = if exact {
            (
                "backward_forward_ratio",
                json!(self.backward_forward_ratio()),
            )
        } else {
            ("convention", json!(self.convention.name()))
        };
        report[extra.0] = extra.1;
        report
    }

    /// The report as CSV: one row per node and phase (forward, backward, update) and one
    /// for the loss, with every kind measured (empty if not run) and estimated (`zmul`
    /// empty: no closed form predicts it); in a single-number convention, one `measured`
    /// and one `estimated` column.
    pub fn csv(&self) -> String {
        let mut header = vec!["index", "name", "kind", "output", "params", "phase"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        let exact = self.convention == Convention::Exact;
        for prefix in ["measured", "estimated"] {
            if exact {
                header.extend(Op::ALL.iter().map(|op| format!("{prefix}_{}", op.name())));
                header.push(format!("{prefix}_total"));
            } else {
                header.push(format!("{prefix}_{}", self.convention.name()));
            }
        }
        let mut writer = csv::Writer::from_writer(Vec::new());
        let mut rows = vec![header];
        // `zmul`: whether the counts are measured (with CountedZeros) or estimated.
        let cells = |c: Option<Counts>, zmul: bool, kind: &str, phase: Phase| -> Vec<String> {
            match c {
                None if exact => vec![String::new(); Op::COUNT + 1],
                None => vec![String::new()],
                Some(c) if exact => c
                    .iter()
                    .map(|(op, n)| match op {
                        Op::Zmul if !zmul => String::new(),
                        _ => n.to_string(),
                    })
                    .chain([c.total().to_string()])
                    .collect(),
                Some(c) => {
                    let n = self.convention.value(kind, phase, &c);
                    vec![n.expect("in_convention checked the numbers").to_string()]
                }
            }
        };
        for (k, info) in self.nodes.iter().enumerate() {
            for phase in NODE_PHASES {
                let mut row = vec![
                    info.index.to_string(),
                    escape(&info.name).into_owned(),
                    info.kind.to_string(),
                    info.output.clone(),
                    info.params.to_string(),
                    phase.name().to_string(),
                ];
                let kind = info.kind;
                row.extend(cells(
                    self.measured.as_ref().map(|m| m.nodes[k].phase(phase)),
                    true,
                    kind,
                    phase,
                ));
                row.extend(cells(
                    Some(self.estimated.nodes[k].phase(phase)),
                    false,
                    kind,
                    phase,
                ));
                rows.push(row);
            }
        }
        let mut row = vec![
            String::new(),
            "loss".into(),
            self.loss.into(),
            String::new(),
            "0".into(),
            "loss".into(),
        ];
        row.extend(cells(
            self.measured.as_ref().map(|m| m.loss),
            true,
            "loss",
            Phase::Loss,
        ));
        row.extend(cells(Some(self.estimated.loss), false, "loss", Phase::Loss));
        rows.push(row);
        for row in rows {
            writer
                .write_record(&row)
                .expect("writing CSV to memory cannot fail");
        }
        String::from_utf8(writer.into_inner().expect("a Vec never fails to flush"))
            .expect("CSV of UTF-8 fields is UTF-8")
    }
}

/// A row of the text table; numbers stay numbers until tabled displays them.
#[derive(Tabled)]
struct Row {
    #[tabled(rename = "#")]
    index: String,
    layer: String,
    kind: String,
    output: String,
    #[tabled(display = "optional_thousands")]
    params: Option<u128>,
    phase: &'static str,
    #[tabled(display = "thousands_cell")]
    mul: u128,
    #[tabled(display = "thousands_cell")]
    add: u128,
    #[tabled(display = "thousands_cell")]
    other: u128,
    #[tabled(display = "thousands_cell")]
    act: u128,
    #[tabled(rename = "mul by 0", display = "optional_thousands_or_dash")]
    zero_mul: Option<u128>,
    #[tabled(display = "optional_thousands_or_dash")]
    measured: Option<u128>,
    #[tabled(display = "thousands_cell")]
    estimated: u128,
    #[tabled(rename = "=", display = "match_mark")]
    matches: Option<bool>,
    share: Share,
}

/// A part of a whole, shown as a percentage.
struct Share(u128, u128);

impl fmt::Display for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.1 == 0 {
            f.write_str("-")
        } else {
            write!(f, "{:.1}%", self.0 as f64 * 100.0 / self.1 as f64)
        }
    }
}

fn thousands_cell(n: &u128) -> String {
    thousands(*n)
}

fn optional_thousands(n: &Option<u128>) -> String {
    n.map(thousands).unwrap_or_default()
}

fn optional_thousands_or_dash(n: &Option<u128>) -> String {
    n.map_or_else(|| "-".to_string(), thousands)
}

fn match_mark(m: &Option<bool>) -> String {
    match m {
        Some(true) => "✓".into(),
        Some(false) => "✗".into(),
        None => String::new(),
    }
}
