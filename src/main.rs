//! The `opcount` command line. Owns stdout, stderr and the exit code (0 success, 1 a count
//! that disagrees with its closed form, 2 bad input); everything else is the library's.

/// What only the command line needs, in modules of the binary: its arguments, the progress
/// bar, output files, the SVG chart, and what `bench` and `project` time (with the timing
/// harness and the sgemm reference).
mod cli {
    pub mod args;
    pub mod chart;
    pub mod files;
    pub mod measure;
    pub mod progress;
    pub mod sgemm;
    pub mod timing;
}

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use clap::Parser;
use opcount::budget;
use opcount::model::Data;
use opcount::report::Report;
use opcount::summary::{BenchSummary, ProjectSummary, TrainSummary};
use opcount::text::escape;
use opcount::train::{Settings, relocate_data};
use opcount::{Loaded, Network, Op, estimate, measure_step_watched};

use cli::args::{
    BenchArgs, Cli, Command, ConvertArgs, CountArgs, Format, ProjectArgs, ReportFormat, RunArgs,
    TrainArgs,
};
use cli::progress::progress_bar;
use cli::{chart, files, measure, sgemm};

/// `print!` to standard output, returning the error (saying it was standard output) instead
/// of panicking when it fails, e.g. when a reader such as `head` has closed the pipe.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*).map_err(stdout_error)
    }};
}

/// `println!` to standard output, returning the error instead of panicking (see `out!`).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err(stdout_error)
    }};
}

/// A failed write to standard output, saying so (the system's reason alone, "No space left
/// on device", would not say which file).
fn stdout_error(err: std::io::Error) -> anyhow::Error {
    anyhow::Error::new(err).context("cannot write to standard output")
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return clap_exit(&err),
    };
    // The command runs on a thread of the pool that the kernels split their work over, so
    // that a kernel's parallel parts are shared out within the pool rather than handed to it
    // by a thread outside that then sleeps until they are done (two thread switches per
    // kernel). The thread's stack is as large as the main thread's usually is.
    let pool = rayon::ThreadPoolBuilder::new().stack_size(8 << 20).build();
    let run = match pool {
        Ok(pool) => pool.install(|| run(cli)),
        Err(_) => run(cli),
    };
    // What is still buffered for standard output must get there too, or be an error.
    let run = run.and_then(|code| {
        use std::io::Write as _;
        std::io::stdout().flush().map_err(stdout_error)?;
        Ok(code)
    });
    match run {
        Ok(code) => code,
        // A reader that stopped reading (`opcount ... | head`) is not an error.
        Err(err) if closed_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            // One line: whatever the error quotes (paths, names, the system's reason) is
            // shown with its control characters escaped.
            eprintln!("opcount: {}", escape(&format!("{err:#}")));
            ExitCode::from(2)
        }
    }
}

/// Prints clap's help, version or usage error, and returns its exit code: 0 for help shown,
/// 2 for a mistake, and 2 also when the help cannot be written (`--help > /dev/full`).
fn clap_exit(err: &clap::Error) -> ExitCode {
    let code = ExitCode::from(u8::try_from(err.exit_code()).unwrap_or(2));
    if err.use_stderr() {
        // The message quotes the user's arguments: their control characters are escaped.
        let text = err.render().to_string();
        let lines: Vec<_> = text.lines().map(escape).collect();
        eprintln!("{}", lines.join("\n"));
        return code;
    }
    let printed = err.print().and_then(|()| {
        use std::io::Write as _;
        std::io::stdout().flush()
    });
    match printed {
        Ok(()) => code,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => code,
        Err(e) => {
            eprintln!("opcount: {:#}", stdout_error(e));
            ExitCode::from(2)
        }
    }
}

fn closed_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Count(args) => return count_command(&args),
        Command::Train(args) => train_command(&args)?,
        Command::Bench(args) => bench_command(&args)?,
        Command::Project(args) => return project_command(&args),
        Command::Convert(args) => convert_command(&args)?,
        Command::Kinds => {
            for op in Op::ALL {
                outln!("{:<6} {}", op.name(), op.description().replace('`', ""))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn load(path: &Path, run: &RunArgs) -> anyhow::Result<Loaded> {
    Ok(Loaded::load_with(path, run.budget(), &run.import())?)
}

/// [`Loaded::charge_run`], saying what to do instead when the model does not fit.
fn charge_run(loaded: &mut Loaded, batch: usize, networks: u128) -> anyhow::Result<()> {
    loaded.charge_run(batch, networks).map_err(|e| {
        anyhow!("{e}; `opcount count --closed-form-only` counts it without running it")
    })
}

fn count_command(args: &CountArgs) -> anyhow::Result<ExitCode> {
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let mut loaded = load(&args.model, &args.run)?;
    for out in args.output.iter().chain(&args.svg) {
        check_output(out)?;
    }
    // The report's rendering grows with the nodes, more than anything else for a deep model.
    let per_node =
        args.format.bytes_per_node() + args.svg.as_ref().map_or(0, |_| budget::SVG_BYTES_PER_NODE);
    loaded.charge_report(per_node)?;
    let estimated =
        estimate::step(loaded.plan(), args.batch).with_context(|| loaded.origin().to_string())?;
    let measured = if args.closed_form_only {
        None
    } else {
        charge_run(&mut loaded, args.batch, 2)?;
        let data = loaded.data_or_synthetic(args.batch)?;
        // A progress bar for steps likely to take over a second (a billion operations).
        let long = estimated.totals().all.total() > 1_000_000_000;
        let nodes = loaded.plan().nodes().len() as u64;
        let bar = progress_bar(3 * nodes + 1, args.run.quiet || !long);
        let step = measure_step_watched(loaded.plan(), &data, args.batch, |e| {
            if e.node.is_some() {
                bar.inc(1);
                bar.set_message(e.phase.name());
            }
        });
        bar.finish_and_clear();
        Some(step)
    };
    let report = Report::new(loaded.plan(), args.batch, measured, estimated)
        .in_convention(args.convention.into())
        .with_context(|| loaded.origin().to_string())?;
    if let Some(svg) = &args.svg {
        write_output(svg, chart::svg(&report).as_bytes())?;
    }
    let text = match args.format {
        ReportFormat::Table => report.table(),
        ReportFormat::Json => serde_json::to_string_pretty(&report.json())? + "\n",
        ReportFormat::Csv => report.csv(),
    };
    match &args.output {
        Some(path) => write_output(path, text.as_bytes())?,
        None => out!("{text}")?,
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
        eprintln!("  {}", escape(&m.to_string()));
    }
    eprintln!("Please report this with the model file.");
    Ok(ExitCode::from(1))
}

fn train_command(args: &TrainArgs) -> anyhow::Result<()> {
    let mut loaded = load(&args.model, &args.run)?;
    let data = args
        .data(loaded.plan().loss())
        .map_err(|e| anyhow!("{}: {e}", loaded.origin()))?;
    if let Some(data) = data {
        loaded.train_on(data)?;
    }
    let mut settings = Settings::of(loaded.training()?);
    settings.epochs = args.epochs.unwrap_or(settings.epochs);
    settings.lr = args.lr.unwrap_or(settings.lr);
    settings.batch = args.batch.unwrap_or(settings.batch);
    settings.seed = args.seed.unwrap_or(settings.seed);
    check_settings(&settings)?;
    if let Some(out) = &args.save {
        check_output(out)?;
    }
    let (data, held_out) = loaded.data_and_held_out()?;
    // The batch actually run: the whole data set at most.
    let run = settings.clamped(data.len());
    charge_run(&mut loaded, run.batch, 2)?;
    if args.save.is_some() {
        loaded.charge_save()?;
    }

    let mut net = Network::<f32>::new(loaded.plan());
    // Up to 2^64 - 1 epochs: the bar's length saturates (such a run never ends anyway).
    let steps = (data.len().div_ceil(run.batch) as u64).saturating_mul(run.epochs as u64);
    let bar = progress_bar(steps, args.run.quiet);
    let mut step = 0u64;
    let mut held = String::new();
    let summary = TrainSummary::train(&mut net, &data, held_out.as_ref(), &settings, |p| {
        step = step.saturating_add(1);
        if let Some(e) = p.held_out {
            held = match e.accuracy() {
                Some(a) => format!(", held out {:.4} ({:.1}%)", e.loss, 100.0 * a),
                None => format!(", held out {:.4}", e.loss),
            };
        }
        if step.is_multiple_of(64) || step == steps {
            bar.set_position(step);
            bar.set_message(format!(
                "epoch {}/{} loss {:.4}{held}",
                p.epoch, run.epochs, p.loss
            ));
        }
    })
    .map_err(|err| match &args.save {
        Some(out) => anyhow!(
            "{}: {err}; {} was left as it was",
            loaded.origin(),
            out.display()
        ),
        None => anyhow!("{}: {err}", loaded.origin()),
    })?;
    bar.finish_and_clear();

    if let Some(out) = &args.save {
        let mut saved = net.to_model();
        if let Some(t) = &mut saved.training {
            relocate_data(&mut t.data, loaded.dir(), out);
        }
        write_output(out, saved.to_ron().as_bytes())?;
    }
    match args.format {
        Format::Json => outln!("{}", serde_json::to_string_pretty(&summary.json())?)?,
        Format::Table => {
            out!("{}", summary.table())?;
            let made_up = &loaded.training()?.data;
            if let Data::Synthetic { examples, .. } = made_up {
                outln!(
                    "the {examples} examples were made up (--synthetic): there was nothing \
                     to learn; the step's counts are those of real data"
                )?;
            }
            if let Some(out) = args.save.as_deref().filter(|p| !is_stdout(p)) {
                outln!(
                    "saved the trained model to {}",
                    escape(&out.display().to_string())
                )?;
            }
        }
    }
    Ok(())
}

fn project_command(args: &ProjectArgs) -> anyhow::Result<ExitCode> {
    let mut loaded = load(&args.model, &args.run)?;
    let batch = args
        .batch
        .or(loaded.plan().model().training.as_ref().map(|t| t.batch))
        .unwrap_or(1);
    let mut summary = ProjectSummary::new(
        loaded.plan(),
        args.examples,
        args.epochs,
        batch,
        args.convention.into(),
    )
    .with_context(|| loaded.origin().to_string())?;
    let batch = summary.projection.batch;

    // Validate the closed form with a real counted step, and time a real plain step, if the
    // model fits in memory.
    match charge_run(&mut loaded, batch, 2) {
        Ok(()) => {
            let data = loaded.data_or_synthetic(batch)?;
            if let Some(m) = summary.validate(loaded.plan(), &data).first() {
                bail!("internal error: a measured count differs from its closed form: {m}");
            }
            let lr = loaded
                .plan()
                .model()
                .training
                .as_ref()
                .map_or(0.01, |t| t.lr);
            summary.step_s = Some(measure::step_seconds(loaded.plan(), &data, batch, lr));
        }
        Err(e) => summary.not_run_because = Some(format!("{e:#}")),
    }
    summary.sgemm_flops_per_s = Some(sgemm::sgemm_flops(5));
    match args.format {
        Format::Json => outln!("{}", serde_json::to_string_pretty(&summary.json())?)?,
        Format::Table => out!("{}", summary.table())?,
    }
    Ok(ExitCode::SUCCESS)
}

fn convert_command(args: &ConvertArgs) -> anyhow::Result<()> {
    if !opcount::onnx::is_onnx(&args.model) {
        bail!(
            "{}: convert reads ONNX files (.onnx); a RON model is already one",
            args.model.display()
        );
    }
    check_output(&args.output)?;
    let mut loaded = load(&args.model, &args.run)?;
    loaded.charge_save()?;
    let origin = loaded.origin().to_string();
    let text = opcount::onnx::convert(loaded.plan().model(), &origin, args.weights);
    write_output(&args.output, text.as_bytes())?;
    Ok(())
}

fn bench_command(args: &BenchArgs) -> anyhow::Result<()> {
    if args.batch == 0 || args.rounds == Some(0) {
        bail!("--batch and --rounds must be at least 1");
    }
    let mut loaded = load(&args.model, &args.run)?;
    // Three networks (plain, counted, counted with attribution) where the budget holds
    // them; else the two counted sides share one.
    let share = loaded.charge_run(args.batch, 3).is_err();
    if share {
        charge_run(&mut loaded, args.batch, 2)?;
    }
    let data = loaded.data_or_synthetic(args.batch)?;
    let (step, timings) = measure::bench(loaded.plan(), &data, args, share)?;
    let forward_only = measure::forward_only(loaded.plan(), args);
    let summary = BenchSummary::new(loaded.plan(), args.batch, forward_only, &step, timings);
    match args.format {
        Format::Json => outln!("{}", serde_json::to_string_pretty(&summary.json())?)?,
        Format::Table => out!("{}", summary.table())?,
    }
    Ok(())
}

/// Standard output, for an output file named `-`.
fn is_stdout(path: &Path) -> bool {
    path == Path::new("-")
}

/// Checks before any long work that an output file can be written.
fn check_output(path: &Path) -> anyhow::Result<()> {
    if !is_stdout(path) {
        files::check_writable(path)?;
    }
    Ok(())
}

/// Writes an output file (see `files::write`), or standard output for `-`.
fn write_output(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    if is_stdout(path) {
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(contents)
            .and_then(|()| stdout.flush())
            .map_err(stdout_error)?;
    } else {
        files::write(path, contents)?;
    }
    Ok(())
}

/// Checks the settings given on the command line (the model file's own were checked with it).
fn check_settings(s: &Settings) -> anyhow::Result<()> {
    if s.epochs == 0 || s.batch == 0 {
        bail!(
            "--epochs and --batch must be at least 1, found {} and {}",
            s.epochs,
            s.batch
        );
    }
    if !(s.lr.is_finite() && s.lr > 0.0) {
        bail!("--lr must be a positive number, found {}", s.lr);
    }
    Ok(())
}
