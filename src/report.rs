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
use crate::counts::{Counts, Op};
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
    pub measured: u64,
    /// What the closed form says.
    pub estimated: u64,
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
    pub params: u64,
    /// The loss's name.
    pub loss: &'static str,
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
            .nodes
            .iter()
            .enumerate()
            .map(|(index, n)| NodeInfo {
                index,
                name: n.name.clone(),
                kind: n.op.kind(),
                params: n.op.params(),
                output: n.output.to_string(),
            })
            .collect();
        Report {
            model: plan.name.clone(),
            batch,
            params: plan.params(),
            loss: plan.loss.name(),
            nodes,
            measured,
            estimated,
            convention: Convention::Exact,
        }
    }

    /// The same report in another counter's convention.
    pub fn in_convention(self, convention: Convention) -> Report {
        Report { convention, ..self }
    }

    /// A node's number in phase `phase` of `step`, in a single-number convention.
    fn number(&self, step: &StepCounts, k: usize, phase: Phase) -> u64 {
        let counts = step.nodes[k].phase(phase);
        self.convention
            .value(self.nodes[k].kind, phase, &counts)
            .unwrap_or_else(|| counts.total())
    }

    /// A phase's number over the whole step, in a single-number convention.
    fn phase_number(&self, step: &StepCounts, phase: Phase) -> u64 {
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
            for op in Op::ALL.into_iter().filter(|&op| op != Op::Zmul) {
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

    /// Arithmetic operations of the backward pass per operation of the forward pass.
    pub fn backward_forward_ratio(&self) -> f64 {
        let t = self.shown().totals();
        t.backward.total() as f64 / t.forward.total() as f64
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
        let mut push = |first: Option<(String, &str, &str, &str, Option<u64>)>,
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
                Some(info.params),
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
            "{}: one training step on a batch of {}, {}\n",
            escape(&self.model),
            self.batch,
            match self.measured {
                Some(_) => "measured with CountedZeros<f32> next to the closed form",
                None => "closed form only (nothing was run)",
            }
        );
        out.push_str(&table.to_string());
        out.push('\n');
        out.push_str(&format!(
            "parameters: {}\nbackward/forward: {:.2}x the arithmetic operations \
             (DeepSpeed and calflops assume 2x)\n",
            thousands(self.params),
            self.backward_forward_ratio()
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
        let step_total: u64 = [Phase::Forward, Phase::Backward]
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
        let cells = |m: Option<u64>, e: u64, shown: u64| {
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
            "{}: one training step on a batch of {}, in {} ({}): convolution and dense \
             layers only\n{table}\nparameters: {}\n",
            escape(&self.model),
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
    /// count is an object with every kind; in a single-number convention (mac, flop), the
    /// same layout holds one number per count.
    pub fn json(&self) -> serde_json::Value {
        let exact = self.convention == Convention::Exact;
        let count = |step: &StepCounts, k: usize, phase: Phase| -> serde_json::Value {
            if exact {
                json!(step.nodes[k].phase(phase))
            } else {
                json!(self.number(step, k, phase))
            }
        };
        let phases = |step: &StepCounts, k: usize| {
            json!({
                "forward": count(step, k, Phase::Forward),
                "backward": count(step, k, Phase::Backward),
                "update": count(step, k, Phase::Update),
            })
        };
        let loss = |step: &StepCounts| if exact { json!(step.loss) } else { json!(0) };
        let totals = |step: &StepCounts| {
            if exact {
                let t = step.totals();
                json!({
                    "forward": t.forward, "loss": t.loss, "backward": t.backward,
                    "update": t.update, "all": t.all,
                })
            } else {
                let [f, b] = [Phase::Forward, Phase::Backward].map(|p| self.phase_number(step, p));
                json!({ "forward": f, "loss": 0, "backward": b, "update": 0, "all": f + b })
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
                    "params": info.params,
                    "output": info.output,
                    "measured": self.measured.as_ref().map(|m| phases(m, k)),
                    "estimated": phases(&self.estimated, k),
                })
            })
            .collect();
        let mut report = json!({
            "model": self.model,
            "batch": self.batch,
            "params": self.params,
            "layers": layers,
            "loss": {
                "name": self.loss,
                "measured": self.measured.as_ref().map(loss),
                "estimated": loss(&self.estimated),
            },
            "totals": {
                "measured": self.measured.as_ref().map(totals),
                "estimated": totals(&self.estimated),
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
    /// for the loss, with every kind measured (empty if not run) and estimated; in a
    /// single-number convention, one `measured` and one `estimated` column.
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
        let cells = |c: Option<Counts>, kind: &str, phase: Phase| -> Vec<String> {
            match (
                c,
                self.convention.value(kind, phase, &c.unwrap_or_default()),
            ) {
                (None, _) if exact => vec![String::new(); Op::COUNT + 1],
                (None, _) => vec![String::new()],
                (Some(c), None) => c
                    .iter()
                    .map(|(_, n)| n.to_string())
                    .chain([c.total().to_string()])
                    .collect(),
                (Some(_), Some(n)) => vec![n.to_string()],
            }
        };
        for (k, info) in self.nodes.iter().enumerate() {
            for phase in NODE_PHASES {
                let mut row = vec![
                    info.index.to_string(),
                    info.name.clone(),
                    info.kind.to_string(),
                    info.output.clone(),
                    info.params.to_string(),
                    phase.name().to_string(),
                ];
                let kind = info.kind;
                row.extend(cells(
                    self.measured.as_ref().map(|m| m.nodes[k].phase(phase)),
                    kind,
                    phase,
                ));
                row.extend(cells(
                    Some(self.estimated.nodes[k].phase(phase)),
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
            "loss",
            Phase::Loss,
        ));
        row.extend(cells(Some(self.estimated.loss), "loss", Phase::Loss));
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
    params: Option<u64>,
    phase: &'static str,
    #[tabled(display = "thousands_cell")]
    mul: u64,
    #[tabled(display = "thousands_cell")]
    add: u64,
    #[tabled(display = "thousands_cell")]
    other: u64,
    #[tabled(display = "thousands_cell")]
    act: u64,
    #[tabled(rename = "mul by 0", display = "optional_thousands_or_dash")]
    zero_mul: Option<u64>,
    #[tabled(display = "optional_thousands_or_dash")]
    measured: Option<u64>,
    #[tabled(display = "thousands_cell")]
    estimated: u64,
    #[tabled(rename = "=", display = "match_mark")]
    matches: Option<bool>,
    share: Share,
}

/// A part of a whole, shown as a percentage.
struct Share(u64, u64);

impl fmt::Display for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.1 == 0 {
            f.write_str("-")
        } else {
            write!(f, "{:.1}%", self.0 as f64 * 100.0 / self.1 as f64)
        }
    }
}

fn thousands_cell(n: &u64) -> String {
    thousands(*n)
}

fn optional_thousands(n: &Option<u64>) -> String {
    n.map(thousands).unwrap_or_default()
}

fn optional_thousands_or_dash(n: &Option<u64>) -> String {
    n.map_or_else(|| "-".to_string(), thousands)
}

fn match_mark(m: &Option<bool>) -> String {
    match m {
        Some(true) => "✓".into(),
        Some(false) => "✗".into(),
        None => String::new(),
    }
}
