//! The command line's arguments: clap's derive types, whose doc comments are the help text,
//! and their conversions into the library's types.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use opcount::budget::{self, Budget};
use opcount::convention::Convention;
use opcount::model::{Data, Loss, Target};
use opcount::onnx::Import;

/// Count every arithmetic operation of a neural network, by kind.
#[derive(Parser, Debug)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Count one training step per layer, phase and kind: measured by running it with
    /// Counted<f32>, next to the closed form.
    Count(CountArgs),
    /// Train a model with plain f32 (reporting held-out loss and accuracy if its data hold
    /// examples out) and count one training step with Counted<f32>.
    Train(TrainArgs),
    /// Time one SGD step with f32 and with Counted<f32>, interleaved, and print the ratio.
    Bench(BenchArgs),
    /// Project a whole training run (N examples x E epochs): its operations, and its time
    /// on this CPU from a measured step.
    Project(ProjectArgs),
    /// Write an ONNX model as a RON model file, to read and edit (see docs/onnx.md).
    Convert(ConvertArgs),
    /// List the kinds of operation opcount counts (see docs/counting.md).
    Kinds,
}

#[derive(clap::Args, Debug)]
pub struct CountArgs {
    /// The model file (RON, or ONNX: .onnx).
    pub model: PathBuf,
    /// Examples in the step.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    pub format: ReportFormat,
    /// Only the closed form: allocate nothing, run nothing (for models too big to run).
    #[arg(long)]
    pub closed_form_only: bool,
    /// Report in another counter's convention (see docs/conventions.md).
    #[arg(long, value_enum, default_value_t = ConventionArg::Exact)]
    pub convention: ConventionArg,
    /// Write the report to this file (atomically) instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Also draw the step's operations per layer and phase as an SVG chart.
    #[arg(long, value_name = "OUT.svg")]
    pub svg: Option<PathBuf>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// How every command that runs a model runs it.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Refuse models that would need more memory than this to run (bytes, or with a K, M, G
    /// suffix); default: half of the memory available.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub max_memory: Option<u64>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    /// For an ONNX model: the loss to train it against (default: softmax cross-entropy for a
    /// flat output of two or more values, else mse); none counts the forward pass alone.
    #[arg(long, value_enum, value_name = "LOSS")]
    pub loss: Option<LossArg>,
    /// For an ONNX model whose input sizes are symbolic: one example's shape, e.g. 3,32,32
    /// (the batch comes from --batch).
    #[arg(long, value_name = "C,H,W", value_parser = parse_shape)]
    pub input_shape: Option<InputShape>,
    /// For an ONNX model: count the exact (erf) GELU as the tanh form (opcount's Gelu),
    /// which counts other operations, instead of as itself (GeluErf; see docs/onnx.md).
    #[arg(long)]
    pub gelu_as_tanh: bool,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LossArg {
    /// Softmax over each example's outputs, then cross-entropy against its class.
    SoftmaxCrossEntropy,
    /// Mean squared error.
    Mse,
    /// No loss: count the forward pass alone (no backward pass, no update).
    None,
}

/// One example's sizes, `--input-shape 3,32,32` (one value to clap, not a list).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputShape(pub Vec<usize>);

/// Parses `3,32,32`: one example's sizes, each at least 1.
fn parse_shape(text: &str) -> Result<InputShape, String> {
    let sizes: Result<Vec<usize>, _> = text.split(',').map(|s| s.trim().parse()).collect();
    match sizes {
        Ok(s) if !s.is_empty() && s.len() <= 3 && s.iter().all(|&n| n > 0) => Ok(InputShape(s)),
        _ => Err(format!(
            "expected one to three sizes of at least 1, like 3,32,32, found '{text}'"
        )),
    }
}

impl RunArgs {
    /// What an ONNX model needs to be read: its loss and input shape, if given.
    pub fn import(&self) -> Import {
        Import {
            loss: self.loss.map(|l| match l {
                LossArg::SoftmaxCrossEntropy => Loss::SoftmaxCrossEntropy,
                LossArg::Mse => Loss::Mse,
                LossArg::None => Loss::None,
            }),
            input_shape: self.input_shape.as_ref().map(|s| s.0.clone()),
            gelu_as_tanh: self.gelu_as_tanh,
        }
    }

    /// The memory budget: `--max-memory`, or half of the memory this process can count on.
    pub fn budget(&self) -> Budget {
        match self.max_memory {
            Some(bytes) => Budget::new(bytes, "set by --max-memory"),
            None => Budget::new(
                budget::available_memory() / 2,
                "half of the memory available; change it with --max-memory",
            ),
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ConventionArg {
    /// opcount's own: every kind of operation.
    Exact,
    /// Multiply-accumulates of convolution and dense layers (fvcore, ptflops, thop, torchvision).
    Mac,
    /// Two per multiply-accumulate, backward measured (PyTorch FlopCounterMode).
    Flop,
}

impl From<ConventionArg> for Convention {
    fn from(c: ConventionArg) -> Convention {
        match c {
            ConventionArg::Exact => Convention::Exact,
            ConventionArg::Mac => Convention::Mac,
            ConventionArg::Flop => Convention::Flop,
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// Text for people.
    Table,
    /// One JSON object (schema in docs/report-format.md).
    Json,
    /// One row per layer and phase.
    Csv,
}

impl ReportFormat {
    /// The memory budget's charge per node for rendering the report in this format.
    pub fn bytes_per_node(self) -> u64 {
        match self {
            ReportFormat::Table => budget::TABLE_BYTES_PER_NODE,
            ReportFormat::Json => budget::JSON_BYTES_PER_NODE,
            ReportFormat::Csv => budget::CSV_BYTES_PER_NODE,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// The model file (RON, or ONNX: .onnx). It trains on the data of its training block, or
    /// on --data or --synthetic, which an ONNX model (it has no training block) needs.
    pub model: PathBuf,
    /// Train on this CSV file (a header row), in place of the model's data; with --target.
    #[arg(
        long,
        value_name = "FILE.csv",
        requires = "target",
        conflicts_with = "synthetic"
    )]
    pub data: Option<PathBuf>,
    /// The CSV's target: the class column for a model trained with softmax cross-entropy
    /// (its classes 0, 1, ... or the labels of --classes); for mse, one column per output,
    /// comma-separated (or a class column, with --classes).
    #[arg(long, value_name = "COLUMN", value_delimiter = ',', requires = "data")]
    pub target: Vec<String>,
    /// The class labels of the CSV's target column, in output order, comma-separated
    /// (default: the column holds class numbers 0, 1, ...).
    #[arg(
        long,
        value_name = "LABEL,...",
        value_delimiter = ',',
        requires = "data"
    )]
    pub classes: Option<Vec<String>>,
    /// The CSV's feature columns, comma-separated (default: every column but the target's).
    #[arg(
        long,
        value_name = "COLUMN,...",
        value_delimiter = ',',
        requires = "data"
    )]
    pub features: Option<Vec<String>>,
    /// The fraction of the CSV's rows held out of training, to report their loss and
    /// accuracy after every epoch (default: 0).
    #[arg(long, value_name = "FRACTION", requires = "data")]
    pub held_out: Option<f32>,
    /// Train on this many made-up examples (seeded, random targets: nothing to learn), in
    /// place of the model's data: to count and time training without data.
    #[arg(long, value_name = "EXAMPLES")]
    pub synthetic: Option<usize>,
    /// Seed of the shuffles, and of --synthetic's examples (default: the model's, else 0).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Passes over the data (default: the model file's, else 1).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Learning rate (default: the model file's, else 0.01).
    #[arg(long)]
    pub lr: Option<f32>,
    /// Examples per step (default: the model file's, else 32; the whole data at most).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Write the trained model here (same schema, every parameter and running statistic inline).
    #[arg(long, value_name = "OUT.ron")]
    pub save: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    #[command(flatten)]
    pub run: RunArgs,
}

impl TrainArgs {
    /// The data `--data` or `--synthetic` give, if either does, for a model trained with
    /// `loss`: `--target` is a class column with softmax cross-entropy or with `--classes`,
    /// else one column per output. A `--data` path is made absolute: it is relative to where
    /// opcount runs, not to the model file as a training block's is.
    pub fn data(&self, loss: Loss) -> Result<Option<Data>, String> {
        if let Some(examples) = self.synthetic {
            if examples == 0 {
                return Err("--synthetic: expected at least 1 example, found 0".into());
            }
            let seed = self.seed.unwrap_or(0);
            return Ok(Some(Data::Synthetic { examples, seed }));
        }
        let Some(path) = &self.data else {
            return Ok(None);
        };
        let shown = path.display();
        let absolute = std::path::absolute(path).map_err(|e| format!("--data {shown}: {e}"))?;
        let path = absolute
            .to_str()
            .ok_or_else(|| format!("--data {shown}: the path is not valid UTF-8"))?
            .to_string();
        let classifier = matches!(loss, Loss::SoftmaxCrossEntropy);
        let target = match (&self.target[..], &self.classes) {
            ([column], classes) if classifier || classes.is_some() => Target::Class {
                column: column.clone(),
                classes: classes.clone(),
            },
            (columns, Some(_)) => {
                return Err(format!(
                    "--classes: the labels of one --target column, found {} columns",
                    columns.len()
                ));
            }
            (columns, None) if classifier => {
                return Err(format!(
                    "--target: a model trained with softmax cross-entropy learns one class \
                     column, found {} columns",
                    columns.len()
                ));
            }
            (columns, None) => Target::Values {
                columns: columns.to_vec(),
            },
        };
        Ok(Some(Data::Csv {
            path,
            features: self.features.clone(),
            target,
            held_out: self.held_out.unwrap_or(0.0),
        }))
    }
}

#[derive(clap::Args, Debug)]
pub struct ConvertArgs {
    /// The ONNX model file (.onnx).
    pub model: PathBuf,
    /// The RON file to write (atomically); `-` for standard output.
    #[arg(long, value_name = "OUT.ron")]
    pub output: PathBuf,
    /// Write the dense and convolution layers' weights inline (default: they start from the
    /// model's init).
    #[arg(long)]
    pub weights: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// The model file (RON, or ONNX: .onnx).
    pub model: PathBuf,
    /// Examples per step.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Interleaved rounds of each side; the medians are reported (default: 21, or 5 when a
    /// step takes over half a second).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Time the forward pass only, not a whole training step.
    #[arg(long)]
    pub forward_only: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(clap::Args, Debug)]
pub struct ProjectArgs {
    /// The model file (RON, or ONNX: .onnx).
    pub model: PathBuf,
    /// Training examples per epoch.
    #[arg(long)]
    pub examples: usize,
    /// Passes over the examples.
    #[arg(long)]
    pub epochs: usize,
    /// Examples per step (default: the model file's training batch, else 1).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Report in another counter's convention (see docs/conventions.md).
    #[arg(long, value_enum, default_value_t = ConventionArg::Exact)]
    pub convention: ConventionArg,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Text for people.
    Table,
    /// One JSON object.
    Json,
}

/// Parses `1500`, `64K`, `512M`, `2G` (powers of 1024).
fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, scale) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let scale = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("unknown unit '{c}', expected K, M, G or T")),
            };
            (&text[..i], scale)
        }
        _ => (text, 1),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("expected a number of bytes like 512M or 2G, found '{text}'"))?;
    n.checked_mul(scale)
        .ok_or_else(|| format!("{text} is too large"))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn byte_counts_take_binary_units() {
        assert_eq!(parse_bytes("1500"), Ok(1500));
        assert_eq!(parse_bytes("64k"), Ok(64 << 10));
        assert_eq!(parse_bytes(" 2G "), Ok(2 << 30));
        assert_eq!(
            parse_bytes("2X"),
            Err("unknown unit 'X', expected K, M, G or T".into())
        );
        assert_eq!(
            parse_bytes("16777216T"),
            Err("16777216T is too large".into())
        );
    }
}
