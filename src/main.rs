//! The `opcount` command line. Owns stdout, stderr and the exit code (0 success, 1 a count
//! that disagrees with its closed form, 2 bad input); everything else is the library's.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use opcount::data::Dataset;
use opcount::model::Data;
use opcount::report::{Report, phase_table, thousands};
use opcount::train::{Settings, evaluate, train};
use opcount::{
    Counted, Event, Model, Network, Op, Phase, Plan, bench, estimate, files, measure_step_watched,
};
use serde_json::json;

/// Count every arithmetic operation of a neural network, by kind.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Count one training step per layer, phase and kind: measured by running it with
    /// Counted<f32>, next to the closed form.
    Count(CountArgs),
    /// Train a model with plain f32 and count one training step with Counted<f32>.
    Train(TrainArgs),
    /// Time one SGD step with f32 and with Counted<f32>, interleaved, and print the ratio.
    Bench(BenchArgs),
    /// List the kinds of operation opcount counts (see docs/counting.md).
    Kinds,
}

#[derive(clap::Args, Debug)]
struct CountArgs {
    /// The model file (RON).
    model: PathBuf,
    /// Examples in the step.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    format: ReportFormat,
    /// Only the closed form: allocate nothing, run nothing (for models too big to run).
    #[arg(long)]
    closed_form_only: bool,
    /// Write the report to this file (atomically) instead of standard output.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum ReportFormat {
    /// Text for people.
    Table,
    /// One JSON object (schema in docs/report-format.md).
    Json,
    /// One row per layer and phase.
    Csv,
}

#[derive(clap::Args, Debug)]
struct TrainArgs {
    /// The model file (RON) with a training block.
    model: PathBuf,
    /// Passes over the data (default: the model file's).
    #[arg(long)]
    epochs: Option<usize>,
    /// SGD learning rate (default: the model file's).
    #[arg(long)]
    lr: Option<f32>,
    /// Examples per step (default: the model file's).
    #[arg(long)]
    batch: Option<usize>,
    /// Write the trained model here (same schema, weights inline).
    #[arg(long, value_name = "OUT.ron")]
    save: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(clap::Args, Debug)]
struct BenchArgs {
    /// The model file (RON).
    model: PathBuf,
    /// Examples per step.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Interleaved rounds of each side; the medians are reported (default: 21, or 5 when a
    /// step takes over half a second).
    #[arg(long)]
    rounds: Option<usize>,
    /// Time the forward pass only, not a whole training step.
    #[arg(long)]
    forward_only: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    /// Text for people.
    Table,
    /// One JSON object.
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("opcount: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Count(args) => return count_command(&args),
        Command::Train(args) => train_command(&args)?,
        Command::Bench(args) => bench_command(&args)?,
        Command::Kinds => {
            for op in Op::ALL {
                println!("{:<6} {}", op.name(), op.description().replace('`', ""));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A model file, read and validated.
struct Loaded {
    model: Model,
    plan: Plan,
    origin: String,
    dir: PathBuf,
}

fn load(path: &Path) -> anyhow::Result<Loaded> {
    let model = Model::load(path)?;
    let origin = path.display().to_string();
    let plan = model.plan(&origin)?;
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    Ok(Loaded {
        model,
        plan,
        origin,
        dir,
    })
}

/// The model's data set, or `n` seeded made-up examples if it has none.
fn data_or_synthetic(loaded: &Loaded, n: usize) -> anyhow::Result<Dataset> {
    Ok(match &loaded.model.training {
        Some(t) => Dataset::load(&t.data, &loaded.dir, &loaded.origin, &loaded.plan)?,
        None => Dataset::synthetic(&loaded.plan, n, 0),
    })
}

fn count_command(args: &CountArgs) -> anyhow::Result<ExitCode> {
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let loaded = load(&args.model)?;
    let estimated = estimate::step(&loaded.plan, args.batch)?;
    let measured = if args.closed_form_only {
        None
    } else {
        let data = data_or_synthetic(&loaded, args.batch)?;
        // A progress bar for steps likely to take over a second (a billion operations).
        let long = estimated.totals().all.total() > 1_000_000_000;
        let nodes = loaded.plan.nodes.len() as u64;
        let bar = progress_bar(3 * nodes + 1, args.quiet || !long);
        let step = measure_step_watched(&loaded.model, &loaded.plan, &data, args.batch, |e| {
            if e.node.is_some() {
                bar.inc(1);
                bar.set_message(e.phase.name());
            }
        });
        bar.finish_and_clear();
        Some(step)
    };
    let report = Report::new(&loaded.plan, args.batch, measured, estimated);
    let text = match args.format {
        ReportFormat::Table => report.table(),
        ReportFormat::Json => serde_json::to_string_pretty(&report.json())? + "\n",
        ReportFormat::Csv => report.csv(),
    };
    match &args.output {
        Some(path) => files::write_atomic(path, text.as_bytes())?,
        None => print!("{text}"),
    }
    let mismatches = report.mismatches();
    if mismatches.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "opcount: bug: {} measured counts differ from their closed forms:",
        mismatches.len()
    );
    for m in &mismatches {
        eprintln!("  {m}");
    }
    eprintln!("Please report this with the model file.");
    Ok(ExitCode::from(1))
}

fn train_command(args: &TrainArgs) -> anyhow::Result<()> {
    let loaded = load(&args.model)?;
    let Some(training) = &loaded.model.training else {
        bail!(
            "{}: the model has no training block, so there is nothing to train on \
             (see docs/model-format.md)",
            loaded.origin
        );
    };
    let mut settings = Settings::of(training);
    settings.epochs = args.epochs.unwrap_or(settings.epochs);
    settings.lr = args.lr.unwrap_or(settings.lr);
    settings.batch = args.batch.unwrap_or(settings.batch);
    check_settings(&settings)?;
    let data = Dataset::load(&training.data, &loaded.dir, &loaded.origin, &loaded.plan)?;

    let mut net = Network::<f32>::new(&loaded.model, &loaded.plan);
    let steps = data.len().div_ceil(settings.batch) * settings.epochs;
    let bar = progress_bar(steps as u64, args.quiet);
    let mut step = 0u64;
    train(&mut net, &data, &settings, |p| {
        step += 1;
        if step.is_multiple_of(64) || step == steps as u64 {
            bar.set_position(step);
            bar.set_message(format!(
                "epoch {}/{} loss {:.4}",
                p.epoch, settings.epochs, p.loss
            ));
        }
    })?;
    bar.finish_and_clear();
    let result = evaluate(&mut net, &data);

    // One counted step at the training batch size (counts depend on shapes only).
    let mut counted = Network::<Counted<f32>>::new(&loaded.model, &loaded.plan);
    let batch_size = settings.batch.min(data.len());
    let batch = data.head::<Counted<f32>>(batch_size, loaded.plan.loss);
    counted.step(&batch, Counted::new(settings.lr));
    let totals = counted
        .counts()
        .expect("a counted network with attribution on has counts")
        .totals();

    if let Some(out) = &args.save {
        let mut saved = net.to_model(&loaded.model);
        if let Some(t) = &mut saved.training {
            relocate_data(&mut t.data, &loaded.dir, out);
        }
        files::write_atomic(out, saved.to_ron().as_bytes())?;
    }

    match args.format {
        Format::Json => {
            let summary = json!({
                "model": loaded.plan.name,
                "params": loaded.plan.params(),
                "examples": data.len(),
                "epochs": settings.epochs,
                "batch": settings.batch,
                "lr": settings.lr,
                "final_loss": result.loss,
                "train_accuracy": result.accuracy(),
                "step_batch": batch_size,
                "step": totals,
            });
            println!("{}", serde_json::to_string_pretty(&summary)?);
        }
        Format::Table => {
            println!(
                "{}: {} parameters, {} examples, {} epochs, batch {}, lr {}",
                loaded.plan.name,
                thousands(loaded.plan.params()),
                data.len(),
                settings.epochs,
                settings.batch,
                settings.lr
            );
            print!("final loss {:.6}", result.loss);
            match (result.accuracy(), result.correct) {
                (Some(acc), Some(correct)) => println!(
                    ", training accuracy {:.1}% ({correct}/{})",
                    acc * 100.0,
                    result.examples
                ),
                _ => println!(),
            }
            println!(
                "\noperations of one training step (batch {batch_size}), counted with Counted<f32>:"
            );
            println!("{}", phase_table(&totals));
            if let Some(out) = &args.save {
                println!("saved the trained model to {}", out.display());
            }
        }
    }
    Ok(())
}

fn check_settings(s: &Settings) -> anyhow::Result<()> {
    if s.epochs == 0 || s.batch == 0 {
        bail!(
            "epochs and batch must be at least 1, found epochs {} and batch {}",
            s.epochs,
            s.batch
        );
    }
    if !(s.lr.is_finite() && s.lr > 0.0) {
        bail!(
            "the learning rate must be a positive number, found {}",
            s.lr
        );
    }
    Ok(())
}

/// Rewrites a CSV path relative to the model file so that it still points at the same file
/// when the model is saved to `out`.
fn relocate_data(data: &mut Data, model_dir: &Path, out: &Path) {
    let Data::Csv { path, .. } = data else { return };
    let Ok(target) = std::fs::canonicalize(model_dir.join(&*path)) else {
        return;
    };
    let out_dir = out.parent().filter(|d| !d.as_os_str().is_empty());
    let Ok(out_dir) = std::fs::canonicalize(out_dir.unwrap_or(Path::new("."))) else {
        return;
    };
    let common = target
        .components()
        .zip(out_dir.components())
        .take_while(|(a, b)| a == b)
        .count();
    let mut relative = PathBuf::new();
    for _ in out_dir.components().skip(common) {
        relative.push("..");
    }
    relative.extend(target.components().skip(common));
    *path = relative.to_string_lossy().into_owned();
}

/// Seconds in the unit that keeps three significant digits readable.
fn duration(seconds: f64) -> String {
    match seconds {
        s if s >= 1.0 => format!("{s:.3} s"),
        s if s >= 1e-3 => format!("{:.3} ms", s * 1e3),
        s => format!("{:.3} us", s * 1e6),
    }
}

fn progress_bar(len: u64, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden());
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} steps {msg} [{elapsed}<{eta}]")
            .expect("a valid template"),
    );
    bar
}

fn bench_command(args: &BenchArgs) -> anyhow::Result<()> {
    if args.batch == 0 || args.rounds == Some(0) {
        bail!("--batch and --rounds must be at least 1");
    }
    let loaded = load(&args.model)?;
    let data = data_or_synthetic(&loaded, args.batch)?;
    let mut plain = Network::<f32>::new(&loaded.model, &loaded.plan);
    let mut counted = Network::<Counted<f32>>::new(&loaded.model, &loaded.plan);
    let plain_batch = data.head::<f32>(args.batch, loaded.plan.loss);
    let counted_batch = data.head::<Counted<f32>>(args.batch, loaded.plan.loss);

    // The learning rate is 0 so that thousands of steps on one batch keep the weights (and
    // the speed of the arithmetic) where they started; the step does the same operations.
    // The timed runs call the unwatched entry points, so neither side pays for watching.
    let run_plain = |net: &mut Network<f32>| {
        if args.forward_only {
            net.forward(&plain_batch.inputs, args.batch);
        } else {
            net.step(&plain_batch, 0.0);
        }
    };
    let watch_plain = |net: &mut Network<f32>, watch: &mut dyn FnMut(Event)| {
        if args.forward_only {
            net.forward_watched(&plain_batch.inputs, args.batch, watch);
        } else {
            net.step_watched(&plain_batch, 0.0, watch);
        }
    };
    let run_counted = |net: &mut Network<Counted<f32>>| {
        if args.forward_only {
            net.forward(&counted_batch.inputs, args.batch);
        } else {
            net.step(&counted_batch, Counted::new(0.0));
        }
    };

    // One step of each, untimed: the counts, and a check that counting changed no bit.
    let started = std::time::Instant::now();
    run_plain(&mut plain);
    let one_step = started.elapsed();
    run_counted(&mut counted);
    let same = plain
        .output()
        .iter()
        .zip(counted.output())
        .all(|(p, c)| p.to_bits() == c.get().to_bits());
    if !same {
        bail!("internal error: Counted<f32> outputs differ from f32 outputs");
    }
    let step_counts = counted
        .counts()
        .expect("a counted network with attribution on has counts");
    let totals = step_counts.totals();
    let ops = if args.forward_only {
        totals.forward
    } else {
        totals.all
    };

    let rounds = args
        .rounds
        .unwrap_or(if one_step > Duration::from_millis(500) {
            5
        } else {
            21
        });
    let expected = one_step * 3 * rounds as u32;
    let bar = progress_bar(
        rounds as u64,
        args.quiet || expected < Duration::from_secs(1),
    );
    // Three sides, interleaved: plain f32; Counted<f32> as `opcount count` runs it, with a
    // snapshot of the tally between nodes; and Counted<f32> with the snapshots turned off,
    // which is what counting alone costs.
    let mut bare = Network::<Counted<f32>>::new(&loaded.model, &loaded.plan);
    bare.set_attribution(false);
    let medians = bench::interleave(
        rounds,
        Duration::from_millis(40),
        &mut [
            &mut || run_plain(&mut plain),
            &mut || run_counted(&mut counted),
            &mut || run_counted(&mut bare),
        ],
        |round| bar.set_position(round as u64),
    );
    bar.finish_and_clear();
    let result = bench::Comparison {
        plain_s: medians[0],
        counted_s: medians[1],
        rounds,
    };
    let bare_s = medians[2];

    // The convolution and dense kernels alone: their share of plain steps' time, per node.
    let kernel_nodes: Vec<bool> = loaded
        .plan
        .nodes
        .iter()
        .map(|n| matches!(n.op.kind(), "conv2d" | "dense"))
        .collect();
    let kernel_ops: u64 = step_counts
        .nodes
        .iter()
        .zip(&kernel_nodes)
        .filter(|&(_, &k)| k)
        .map(|(c, _)| {
            if args.forward_only {
                c.forward.total()
            } else {
                (c.forward + c.backward).total()
            }
        })
        .sum();
    let mut samples: Vec<f64> = (0..rounds.min(9))
        .map(|_| {
            let mut seconds = 0.0;
            let mut last = std::time::Instant::now();
            watch_plain(&mut plain, &mut |event| {
                let now = std::time::Instant::now();
                let kernel = matches!(event.phase, Phase::Forward | Phase::Backward)
                    && event.node.is_some_and(|k| kernel_nodes[k]);
                if kernel {
                    seconds += (now - last).as_secs_f64();
                }
                last = now;
            });
            seconds
        })
        .collect();
    let kernel_s = bench::median(&mut samples);
    let sgemm = bench::sgemm_flops(5);

    let per_s = |seconds: f64| args.batch as f64 / seconds;
    let kernel_rate = kernel_ops as f64 / kernel_s;
    match args.format {
        Format::Json => {
            let out = json!({
                "model": loaded.plan.name,
                "batch": args.batch,
                "forward_only": args.forward_only,
                "rounds": result.rounds,
                "plain_s": result.plain_s,
                "counted_s": result.counted_s,
                "ratio": result.ratio(),
                "counted_unattributed_s": bare_s,
                "ratio_unattributed": bare_s / result.plain_s,
                "plain_examples_per_s": per_s(result.plain_s),
                "counted_examples_per_s": per_s(result.counted_s),
                "ops_per_step": ops.total(),
                "plain_ops_per_s": ops.total() as f64 / result.plain_s,
                "counted_ops_per_s": ops.total() as f64 / result.counted_s,
                "kernels": {
                    "ops": kernel_ops,
                    "seconds": kernel_s,
                    "ops_per_s": kernel_rate,
                },
                "sgemm_flops_per_s": sgemm,
                "kernel_efficiency": kernel_rate / sgemm,
                "counts_per_step": ops,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Format::Table => {
            let what = if args.forward_only {
                "forward pass"
            } else {
                "SGD step"
            };
            println!(
                "{}: one {what} at batch {}, {} operations, median of {} interleaved rounds",
                loaded.plan.name,
                args.batch,
                thousands(ops.total()),
                result.rounds
            );
            for (name, s) in [("f32", result.plain_s), ("Counted<f32>", result.counted_s)] {
                println!(
                    "  {name:<13} {:>12}/step {:>14} examples/s {:>8.2} Gop/s",
                    duration(s),
                    thousands(per_s(s).round() as u64),
                    ops.total() as f64 / s / 1e9
                );
            }
            println!(
                "  ratio counted/plain {:.3} (with per-node attribution, as `count` runs); \
                 {:.3} counting alone",
                result.ratio(),
                bare_s / result.plain_s
            );
            println!(
                "  conv and dense kernels (f32): {} operations in {}, {:.1} Gop/s",
                thousands(kernel_ops),
                duration(kernel_s),
                kernel_rate / 1e9
            );
            println!(
                "  reference sgemm 1024^3 (matrixmultiply, all cores): {:.1} GFLOP/s; kernels at {:.0}% of it",
                sgemm / 1e9,
                100.0 * kernel_rate / sgemm
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
