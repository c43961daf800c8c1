//! The tables of docs/transformers.md: a transformer's training step per token, opcount's
//! exact count next to the `mac` and `flop` views and to Kaplan et al.'s 6N and 6N plus
//! attention, from the closed form (nothing is run).
//!
//! `cargo run --release --example transformer_costs -- models/gpt2-small.ron`
//!
//! N is Kaplan et al.'s: the weights of the matrices inside the blocks (here every dense
//! layer's `inputs x units`; no biases, norms, embeddings or output layer), and their
//! attention term is 6 n_layer n_ctx d_attn per token (n_ctx = T, d_attn = the width of
//! the queries).

use std::path::Path;

use opcount::convention::Convention;
use opcount::model::NodeOp;
use opcount::{Counts, Model, Phase, Plan, StepCounts, estimate};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or("models/gpt2-small.ron".into());
    let text = std::fs::read_to_string(Path::new(&path))?;
    let plan = Model::parse(&text, &path)?.plan(&path)?;
    let t0 = plan.input().len();
    println!(
        "## {} at its context of {t0} tokens, batch of one sequence\n",
        plan.name()
    );
    per_token_by_kind(&plan)?;
    println!();
    against_estimates(&plan)?;
    println!();
    by_part(&plan)?;
    println!();
    println!("## {} from 128 to 8,192 tokens of context\n", plan.name());
    println!(
        "| context T | exact, forward + backward | exact, whole step | flop view | 6N | 6N + 6 L T d | exact / 6N | exact / (6N + attention) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for t in [128, 256, 512, 1024, 2048, 4096, 8192] {
        let resized = text
            .replace(&format!("input: [{t0}]"), &format!("input: [{t}]"))
            .replace(
                &format!("PositionEmbedding(context: {t0})"),
                &format!("PositionEmbedding(context: {t})"),
            );
        let p = Model::parse(&resized, &path)?.plan(&path)?;
        let step = estimate::step(&p, 1)?;
        let k = Kaplan::of(&p);
        let exact = fwd_bwd(&step).total() as f64 / t as f64;
        let whole = step.totals().all.total() as f64 / t as f64;
        let flop = 2.0 * macs(&p, &step) as f64 / t as f64;
        println!(
            "| {t} | {} | {} | {} | {} | {} | {:.2} | {:.2} |",
            big(exact),
            big(whole),
            big(flop),
            big(k.six_n()),
            big(k.with_attention()),
            exact / k.six_n(),
            exact / k.with_attention()
        );
    }
    Ok(())
}

/// Kaplan et al.'s N and attention term for a plan.
struct Kaplan {
    n: u128,
    /// Sum over attention layers of the queries' width, times T.
    layers_ctx_d: u128,
}

impl Kaplan {
    fn of(plan: &Plan) -> Kaplan {
        let mut k = Kaplan {
            n: 0,
            layers_ctx_d: 0,
        };
        for node in plan.nodes() {
            match node.op() {
                NodeOp::Dense(d) => k.n += (d.inputs * d.units) as u128,
                NodeOp::Scores(s) => k.layers_ctx_d += (s.tokens * s.width) as u128,
                _ => {}
            }
        }
        k
    }

    fn six_n(&self) -> f64 {
        6.0 * self.n as f64
    }

    fn with_attention(&self) -> f64 {
        self.six_n() + 6.0 * self.layers_ctx_d as f64
    }
}

/// Forward, loss and backward: the work of a step before the update.
fn fwd_bwd(step: &StepCounts) -> Counts {
    let t = step.totals();
    t.forward + t.loss + t.backward
}

/// The `mac` view of a step, forward and backward.
fn macs(plan: &Plan, step: &StepCounts) -> u128 {
    plan.nodes()
        .iter()
        .zip(&step.nodes)
        .map(|(n, c)| {
            [Phase::Forward, Phase::Backward]
                .iter()
                .map(|&ph| {
                    Convention::Mac
                        .value(n.kind(), ph, &c.phase(ph))
                        .unwrap_or(0)
                })
                .sum::<u128>()
        })
        .sum()
}

fn per_token_by_kind(plan: &Plan) -> Result<(), Box<dyn std::error::Error>> {
    let t = plan.input().len() as f64;
    let step = estimate::step(plan, 1)?;
    let totals = step.totals();
    let phases = [
        ("forward", totals.forward),
        ("loss", totals.loss),
        ("backward", totals.backward),
        ("update", totals.update),
        ("step", totals.all),
    ];
    let kinds: Vec<_> = totals.all.nonzero().map(|(op, _)| op).collect();
    let header: Vec<String> = kinds.iter().map(|op| op.name().to_string()).collect();
    println!("Per token (the step's counts divided by T = {t}):\n");
    println!("| phase | {} | operations |", header.join(" | "));
    println!("|---|{}---:|", "---:|".repeat(kinds.len()));
    for (name, c) in phases {
        let cells: Vec<String> = kinds.iter().map(|&op| big(c[op] as f64 / t)).collect();
        println!(
            "| {name} | {} | {} |",
            cells.join(" | "),
            big(c.total() as f64 / t)
        );
    }
    Ok(())
}

fn against_estimates(plan: &Plan) -> Result<(), Box<dyn std::error::Error>> {
    let t = plan.input().len() as f64;
    let step = estimate::step(plan, 1)?;
    let k = Kaplan::of(plan);
    let mac = macs(plan, &step) as f64 / t;
    println!("N (Kaplan et al.) = {}\n", k.n);
    println!("| per token | operations | / 6N |");
    println!("|---|---:|---:|");
    let rows = [
        ("6N", k.six_n()),
        ("6N + 6 L T d (attention)", k.with_attention()),
        ("opcount `mac` view, forward + backward", mac),
        ("opcount `flop` view (2 per mac)", 2.0 * mac),
        (
            "opcount exact, forward + loss + backward",
            fwd_bwd(&step).total() as f64 / t,
        ),
        (
            "opcount exact, whole step (with the update)",
            step.totals().all.total() as f64 / t,
        ),
    ];
    for (name, v) in rows {
        println!("| {name} | {} | {:.3} |", big(v), v / k.six_n());
    }
    Ok(())
}

/// Exact operations per token, forward + backward, by what they are for.
fn by_part(plan: &Plan) -> Result<(), Box<dyn std::error::Error>> {
    let t = plan.input().len() as f64;
    let step = estimate::step(plan, 1)?;
    let parts: [(&str, &[&str]); 8] = [
        ("dense layers (in the blocks)", &["dense"]),
        ("attention products (scores, mix)", &["scores", "mix"]),
        ("attention softmax", &["causal_softmax"]),
        ("output layer (tied unembedding)", &["unembed"]),
        (
            "embeddings (lookup, scatter-add, positions)",
            &["embedding", "positions"],
        ),
        ("layer norms", &["layernorm"]),
        ("GELU", &["gelu"]),
        ("residual adds", &["add"]),
    ];
    let all = fwd_bwd(&step).total() as f64 + step.totals().update.total() as f64;
    println!("| part, per token | forward + backward | share of the step |");
    println!("|---|---:|---:|");
    for (name, kinds) in parts {
        let ops: u128 = plan
            .nodes()
            .iter()
            .zip(&step.nodes)
            .filter(|(n, _)| kinds.contains(&n.kind()))
            .map(|(_, c)| (c.forward + c.backward).total())
            .sum();
        let v = ops as f64 / t;
        println!("| {name} | {} | {:.2}% |", big(v), 100.0 * v / (all / t));
    }
    for (name, c) in [
        ("loss (softmax cross-entropy)", step.totals().loss),
        (
            "optimizer update, batch of one sequence",
            step.totals().update,
        ),
    ] {
        let v = c.total() as f64 / t;
        println!("| {name} | {} | {:.2}% |", big(v), 100.0 * v / (all / t));
    }
    Ok(())
}

/// A number with thousands separators, to one decimal place below 1,000.
fn big(v: f64) -> String {
    if v < 1000.0 {
        return format!("{v:.1}");
    }
    let digits = format!("{:.0}", v);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
