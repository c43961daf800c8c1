//! Model files: the serde types that mirror a RON file exactly ([`Model`]), and their
//! validation into a [`Plan`], the flat list of computation nodes with their shapes that
//! both the interpreter and the closed forms work from. Nothing here knows the scalar type.
//!
//! The schema is documented, with an annotated example, in `docs/model-format.md`.

use std::fmt;
use std::path::Path;

use ron::extensions::Extensions;
use serde::{Deserialize, Serialize};

use crate::budget::Budget;
use crate::error::{Error, Result};
use crate::input::{charged, charged_nested, charged_option};

/// A model file, as written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    /// A name for reports.
    pub name: String,
    /// The shape of one example: `[features]`, or `[channels, height, width]`.
    #[serde(deserialize_with = "charged")]
    pub input: Vec<usize>,
    /// The layers, first to last.
    #[serde(deserialize_with = "charged")]
    pub layers: Vec<Layer>,
    /// The loss the last layer's output is trained against.
    pub loss: Loss,
    /// How parameters not given inline are initialised.
    #[serde(default)]
    pub init: Init,
    /// Training data and settings, if the model can be trained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<Training>,
}

/// One layer of a model file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Layer {
    /// Fully connected: `a_j = f(b_j + sum_i W_ji x_i)`.
    Dense {
        /// Number of neurons (outputs).
        units: usize,
        /// Activation applied to the outputs; it becomes a node (and a table row) of its own.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        activation: Option<Activation>,
        /// Whether the layer has biases.
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        bias: bool,
        /// A name for reports; default `dense<k>`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// Inline weights, `units x inputs` values, one neuron's weights after another.
        #[serde(
            default,
            deserialize_with = "charged_option",
            skip_serializing_if = "Option::is_none"
        )]
        weights: Option<Vec<f32>>,
        /// Inline biases, `units` values.
        #[serde(
            default,
            deserialize_with = "charged_option",
            skip_serializing_if = "Option::is_none"
        )]
        biases: Option<Vec<f32>>,
    },
    /// 2-D convolution over a `channels x height x width` input with a square kernel:
    /// `out[o][y][x] = b_o + sum_{c,i,j} W[o][c][i][j] in[c][y*stride+i-padding][x*stride+j-padding]`,
    /// zeros outside the input.
    Conv2d {
        /// Output channels (filters).
        out_channels: usize,
        /// Kernel height and width.
        kernel: usize,
        /// Step between windows.
        #[serde(default = "one", skip_serializing_if = "is_one")]
        stride: usize,
        /// Zeros added on every side of the input.
        #[serde(default, skip_serializing_if = "is_zero")]
        padding: usize,
        /// Whether each output starts from a bias.
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        bias: bool,
        /// Activation applied to the outputs; it becomes a node (and a table row) of its own.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        activation: Option<Activation>,
        /// A name for reports; default `conv<k>`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// Inline weights, `out_channels x in_channels x kernel x kernel` values in that order.
        #[serde(
            default,
            deserialize_with = "charged_option",
            skip_serializing_if = "Option::is_none"
        )]
        weights: Option<Vec<f32>>,
        /// Inline biases, `out_channels` values.
        #[serde(
            default,
            deserialize_with = "charged_option",
            skip_serializing_if = "Option::is_none"
        )]
        biases: Option<Vec<f32>>,
    },
    /// The maximum of each `size x size` window, per channel.
    MaxPool2d {
        /// Window height and width.
        size: usize,
        /// Step between windows; default `size`. Windows must not overlap (stride >= size).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stride: Option<usize>,
    },
    /// The mean of each `size x size` window, per channel.
    AvgPool2d {
        /// Window height and width.
        size: usize,
        /// Step between windows; default `size`. Windows must not overlap (stride >= size).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stride: Option<usize>,
    },
    /// `channels x height x width` values as one flat vector, in that order.
    Flatten,
    /// `x` unchanged.
    Identity,
    /// `1 / (1 + exp(-x))`.
    Sigmoid,
    /// `tanh(x)`.
    Tanh,
    /// `max(x, 0)`.
    Relu,
    /// `exp(x_j) / sum_k exp(x_k)` over each example's values.
    Softmax,
}

fn one() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// An activation function.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Activation {
    /// `x` unchanged.
    Identity,
    /// `1 / (1 + exp(-x))`.
    Sigmoid,
    /// `tanh(x)`.
    Tanh,
    /// `max(x, 0)`.
    Relu,
    /// `exp(x_j) / sum_k exp(x_k)` over each example's values.
    Softmax,
}

impl Activation {
    /// Lower-case name, as in tables.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Identity => "identity",
            Activation::Sigmoid => "sigmoid",
            Activation::Tanh => "tanh",
            Activation::Relu => "relu",
            Activation::Softmax => "softmax",
        }
    }
}

/// A loss function.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Loss {
    /// Mean squared error over every output of every example.
    Mse,
    /// Softmax over each example's outputs (logits), then cross-entropy against its class.
    #[serde(alias = "CrossEntropy")]
    SoftmaxCrossEntropy,
}

impl Loss {
    /// Lower-case name, as in tables.
    pub fn name(self) -> &'static str {
        match self {
            Loss::Mse => "mse",
            Loss::SoftmaxCrossEntropy => "softmax_cross_entropy",
        }
    }
}

/// How parameters not given inline are initialised. Biases start at zero.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Init {
    /// Glorot/Xavier uniform: `U(-a, a)`, `a = sqrt(6 / (fan_in + fan_out))`.
    Xavier {
        /// Seed of the random stream.
        seed: u64,
    },
    /// He/Kaiming uniform: `U(-a, a)`, `a = sqrt(6 / fan_in)`.
    He {
        /// Seed of the random stream.
        seed: u64,
    },
}

impl Default for Init {
    fn default() -> Self {
        Init::Xavier { seed: 0 }
    }
}

/// Training data and settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Training {
    /// Where the examples come from.
    pub data: Data,
    /// Passes over the data.
    pub epochs: usize,
    /// SGD learning rate.
    pub lr: f32,
    /// Examples per step.
    pub batch: usize,
    /// Seed of the shuffle before each epoch.
    #[serde(default)]
    pub seed: u64,
}

/// Training examples.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Data {
    /// A CSV file with a header row.
    Csv {
        /// Path, relative to the model file.
        path: String,
        /// Feature columns by name; default: every column but the target's.
        #[serde(
            default,
            deserialize_with = "charged_option",
            skip_serializing_if = "Option::is_none"
        )]
        features: Option<Vec<String>>,
        /// What to learn.
        target: Target,
    },
    /// Examples written in the model file.
    Inline {
        /// One list of feature values per example.
        #[serde(deserialize_with = "charged_nested")]
        inputs: Vec<Vec<f32>>,
        /// One target per example.
        targets: InlineTargets,
    },
}

/// The target of a CSV data set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Target {
    /// A class per row: a label from `classes`, or an integer `0..outputs` if `classes` is
    /// not given.
    Class {
        /// The column holding the class.
        column: String,
        /// Class labels, in output order.
        #[serde(
            default,
            deserialize_with = "charged_option",
            skip_serializing_if = "Option::is_none"
        )]
        classes: Option<Vec<String>>,
    },
    /// Regression: one column per output.
    Values {
        /// The columns, in output order.
        #[serde(deserialize_with = "charged")]
        columns: Vec<String>,
    },
}

/// The targets of inline data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum InlineTargets {
    /// A class index per example.
    Classes(#[serde(deserialize_with = "charged")] Vec<usize>),
    /// A list of output values per example.
    Values(#[serde(deserialize_with = "charged_nested")] Vec<Vec<f32>>),
}

/// The shape of one example's values at some point of the network.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Shape {
    /// A vector of values.
    Flat(usize),
    /// Channels x height x width.
    Image {
        /// Channels.
        c: usize,
        /// Height.
        h: usize,
        /// Width.
        w: usize,
    },
}

impl Shape {
    /// Number of values.
    pub fn len(self) -> usize {
        match self {
            Shape::Flat(n) => n,
            Shape::Image { c, h, w } => c * h * w,
        }
    }

    /// Whether the shape holds no values (never true for a validated plan).
    pub fn is_empty(self) -> bool {
        self.len() == 0
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shape::Flat(n) => write!(f, "{n}"),
            Shape::Image { c, h, w } => write!(f, "{c}x{h}x{w}"),
        }
    }
}

/// What a node computes.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum NodeOp {
    /// Weighted sums of `inputs` values into `units` outputs.
    Dense {
        /// N, values per example in.
        inputs: usize,
        /// M, values per example out.
        units: usize,
        /// Whether each sum starts from a bias.
        bias: bool,
    },
    /// A 2-D convolution; the node's input and output shapes give the image sizes.
    Conv2d {
        /// Input channels.
        in_channels: usize,
        /// Output channels.
        out_channels: usize,
        /// Kernel height and width.
        kernel: usize,
        /// Step between windows.
        stride: usize,
        /// Zeros on every side of the input.
        padding: usize,
        /// Whether each output starts from a bias.
        bias: bool,
    },
    /// Max pooling over non-overlapping windows.
    MaxPool2d {
        /// Window height and width.
        size: usize,
        /// Step between windows (at least `size`).
        stride: usize,
    },
    /// Average pooling over non-overlapping windows.
    AvgPool2d {
        /// Window height and width.
        size: usize,
        /// Step between windows (at least `size`).
        stride: usize,
    },
    /// An image as a flat vector.
    Flatten,
    /// An activation over every value.
    Activation(Activation),
}

impl NodeOp {
    /// Short kind name for tables.
    pub fn kind(&self) -> &'static str {
        match self {
            NodeOp::Dense { .. } => "dense",
            NodeOp::Conv2d { .. } => "conv2d",
            NodeOp::MaxPool2d { .. } => "maxpool2d",
            NodeOp::AvgPool2d { .. } => "avgpool2d",
            NodeOp::Flatten => "flatten",
            NodeOp::Activation(a) => a.name(),
        }
    }

    /// Number of trainable parameters.
    pub fn params(&self) -> u64 {
        let biases = |bias: bool, n: usize| if bias { n as u64 } else { 0 };
        match *self {
            NodeOp::Dense {
                inputs,
                units,
                bias,
            } => (inputs as u64) * (units as u64) + biases(bias, units),
            NodeOp::Conv2d {
                in_channels,
                out_channels,
                kernel,
                bias,
                ..
            } => {
                (out_channels as u64) * (in_channels as u64) * (kernel as u64).pow(2)
                    + biases(bias, out_channels)
            }
            NodeOp::MaxPool2d { .. }
            | NodeOp::AvgPool2d { .. }
            | NodeOp::Flatten
            | NodeOp::Activation(_) => 0,
        }
    }
}

/// One computation of the network: a layer, or the activation a layer declares.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Index of the layer in the model file this node comes from.
    pub layer: usize,
    /// Name for reports: `dense1`, or `dense1.sigmoid` for a declared activation.
    pub name: String,
    /// What it computes.
    pub op: NodeOp,
    /// Shape of one example's input.
    pub input: Shape,
    /// Shape of one example's output.
    pub output: Shape,
    /// Whether backward computes the gradient with respect to this node's input: only if
    /// some earlier node has parameters.
    pub needs_input_grad: bool,
}

/// A validated model: every node with its shapes, ready to be run or estimated.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The model's name.
    pub name: String,
    /// Shape of one example.
    pub input: Shape,
    /// The nodes, first to last.
    pub nodes: Vec<Node>,
    /// The loss.
    pub loss: Loss,
}

impl Plan {
    /// Shape of one example's output.
    pub fn output(&self) -> Shape {
        self.nodes.last().map_or(self.input, |n| n.output)
    }

    /// Number of trainable parameters. (Each node's fit in a `u64`, their sum may not.)
    pub fn params(&self) -> u128 {
        self.nodes.iter().map(|n| u128::from(n.op.params())).sum()
    }

    /// About how many bytes a network of this plan needs to run a step on `batch`
    /// examples with numbers of `scalar_bytes` bytes: parameters and their gradients, every
    /// activation and its gradient, max pooling's positions, and a convolution's padded
    /// input and patch gradients. Computed without allocating anything.
    pub fn memory_bytes(&self, batch: usize, scalar_bytes: usize) -> u128 {
        let b = batch as u128;
        let mut values: u128 = 2 * self.params();
        let mut largest_scratch: u128 = 0;
        let mut positions: u128 = 0;
        values += 2 * b * self.input.len() as u128;
        for node in &self.nodes {
            values += 2 * b * node.output.len() as u128;
            match (node.op, node.input, node.output) {
                (
                    NodeOp::Conv2d {
                        in_channels,
                        kernel,
                        padding,
                        ..
                    },
                    Shape::Image { h, w, .. },
                    Shape::Image { h: ho, w: wo, .. },
                ) => {
                    let [c, h, w, k, p, ho, wo] =
                        [in_channels, h, w, kernel, padding, ho, wo].map(|n| n as u128);
                    let padded = c * (h + 2 * p) * (w + 2 * p);
                    let patches = c * k * k * ho * wo;
                    values += padded;
                    largest_scratch = largest_scratch.max(patches + padded);
                }
                (NodeOp::MaxPool2d { .. }, _, output) => positions += b * output.len() as u128,
                _ => {}
            }
        }
        (values + largest_scratch) * scalar_bytes as u128 + positions * 8
    }
}

/// The largest value any single dimension may have: larger is surely a typo.
pub const MAX_DIM: usize = 1 << 31;

/// How RON files are read and written: `Some(..)` may be left out around optional values.
fn ron_options() -> ron::Options {
    ron::Options::default().with_default_extension(Extensions::IMPLICIT_SOME)
}

impl Model {
    /// Reads and parses a model file (it is not validated yet; see [`Model::plan`]).
    pub fn load(path: &Path) -> Result<Model> {
        Model::load_within(path, &mut Budget::unlimited())
    }

    /// [`Model::load`], charging the file's text and every list read from it to `budget`:
    /// a file that does not fit is an [`Error::Memory`], never an abort. Files larger than
    /// [`crate::input::MAX_MODEL_BYTES`], or not text, are refused as they are read.
    pub fn load_within(path: &Path, budget: &mut Budget) -> Result<Model> {
        let text = crate::input::read_model_text(path, budget)?;
        Model::parse_within(&text, &path.display().to_string(), budget)
    }

    /// Parses RON text; `origin` names it in error messages. A byte order mark at the start
    /// is skipped, and lines may end in LF, CRLF or CR.
    pub fn parse(text: &str, origin: &str) -> Result<Model> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        ron_options()
            .from_str(text)
            .map_err(|e: ron::error::SpannedError| Error::Syntax {
                origin: origin.to_string(),
                line: position(text, e.span.start).0,
                column: position(text, e.span.start).1,
                // The message may quote the input (an unknown name): a few hundred bytes of it.
                message: crate::text::clip(&e.code.to_string(), 2 * crate::text::ECHO_BYTES)
                    .into_owned(),
            })
    }

    /// [`Model::parse`], charging every list it reads to `budget`.
    pub fn parse_within(text: &str, origin: &str, budget: &mut Budget) -> Result<Model> {
        let (result, refused) = crate::input::charging_lists(budget, || Model::parse(text, origin));
        match (result, refused) {
            (Err(Error::Syntax { line, column, .. }), Some(need)) => Err(budget.refusal(
                format!("{origin}:{line}:{column}: reading the model's lists"),
                need,
            )),
            (result, _) => result,
        }
    }

    /// The model as RON text, in the same schema it was read from.
    pub fn to_ron(&self) -> String {
        let pretty = ron::ser::PrettyConfig::new()
            .struct_names(false)
            .compact_arrays(true);
        ron_options()
            .to_string_pretty(self, pretty)
            .expect("a Model always serializes")
    }

    /// How many nodes [`Model::plan`] makes of this model: one per layer, and one more for
    /// each activation a dense or convolution layer declares. Known before planning, so
    /// that the memory of the nodes can be charged first.
    pub fn nodes(&self) -> usize {
        let declared = |layer: &Layer| match layer {
            Layer::Dense { activation, .. } | Layer::Conv2d { activation, .. } => {
                usize::from(activation.is_some())
            }
            _ => 0,
        };
        self.layers.len() + self.layers.iter().map(declared).sum::<usize>()
    }

    /// Checks the model and lays out its nodes, naming the layer at fault if something does
    /// not fit. `origin` names the file in error messages.
    pub fn plan(&self, origin: &str) -> Result<Plan> {
        let model_error = |message: String| Error::Model {
            origin: origin.to_string(),
            message,
        };
        let input = match self.input[..] {
            [n] => Shape::Flat(n),
            [c, h, w] => Shape::Image { c, h, w },
            _ => {
                return Err(model_error(format!(
                    "input: expected [features] or [channels, height, width], found {} numbers",
                    self.input.len()
                )));
            }
        };
        if let Some(&d) = self.input.iter().find(|&&d| d == 0 || d > MAX_DIM) {
            return Err(model_error(format!(
                "input: every size must be between 1 and {MAX_DIM}, found {d}"
            )));
        }
        checked_len(input).ok_or_else(|| model_error(format!("input {input} is too large")))?;
        if self.layers.is_empty() {
            return Err(model_error("layers: expected at least one layer".into()));
        }

        let mut b = Builder {
            nodes: Vec::new(),
            shape: input,
            seen_params: false,
        };
        let mut counters = std::collections::HashMap::new();
        for (index, layer) in self.layers.iter().enumerate() {
            let kind = layer_kind(layer);
            let k = counters.entry(kind).or_insert(0usize);
            *k += 1;
            let name = layer_name(layer).unwrap_or_else(|| format!("{kind}{k}"));
            let layer_error = |message: String| Error::Layer {
                origin: origin.to_string(),
                index,
                name: name.clone(),
                message,
            };
            let shape = b.shape;
            match layer {
                Layer::Dense {
                    units,
                    activation,
                    bias,
                    weights,
                    biases,
                    ..
                } => {
                    let Shape::Flat(inputs) = shape else {
                        return Err(layer_error(format!(
                            "dense expects a flat input, found {shape}; add a Flatten layer before it"
                        )));
                    };
                    check_size("units", *units).map_err(&layer_error)?;
                    let count = inputs.checked_mul(*units).ok_or_else(|| {
                        layer_error(format!(
                            "{units} units x {inputs} inputs is too many weights"
                        ))
                    })?;
                    check_inline("weights", weights, count, || {
                        format!("{units} units x {inputs} inputs")
                    })
                    .map_err(&layer_error)?;
                    if !bias && biases.is_some() {
                        return Err(layer_error("biases are given but bias is false".into()));
                    }
                    check_inline("biases", biases, *units, || format!("{units} units"))
                        .map_err(&layer_error)?;
                    let op = NodeOp::Dense {
                        inputs,
                        units: *units,
                        bias: *bias,
                    };
                    b.push(index, name.clone(), op, Shape::Flat(*units));
                    if let Some(a) = activation {
                        b.push_activation(index, format!("{name}.{}", a.name()), *a)
                            .map_err(&layer_error)?;
                    }
                }
                Layer::Conv2d {
                    out_channels,
                    kernel,
                    stride,
                    padding,
                    bias,
                    activation,
                    weights,
                    biases,
                    ..
                } => {
                    let Shape::Image { c, h, w } = shape else {
                        return Err(layer_error(format!(
                            "conv2d expects a channels x height x width input, found {shape}"
                        )));
                    };
                    check_size("out_channels", *out_channels).map_err(&layer_error)?;
                    check_size("kernel", *kernel).map_err(&layer_error)?;
                    check_size("stride", *stride).map_err(&layer_error)?;
                    if *padding > MAX_DIM {
                        return Err(layer_error(format!(
                            "padding: expected at most {MAX_DIM}, found {padding}"
                        )));
                    }
                    let (ph, pw) = (h + 2 * padding, w + 2 * padding);
                    if *kernel > ph || *kernel > pw {
                        return Err(layer_error(format!(
                            "kernel {kernel}x{kernel} is larger than its padded input {ph}x{pw} \
                             ({h}x{w} with padding {padding})"
                        )));
                    }
                    let output = Shape::Image {
                        c: *out_channels,
                        h: (ph - kernel) / stride + 1,
                        w: (pw - kernel) / stride + 1,
                    };
                    checked_len(output)
                        .ok_or_else(|| layer_error(format!("output {output} is too large")))?;
                    // The padded input and the patch matrix are buffers of their own.
                    let padded = Shape::Image { c, h: ph, w: pw };
                    checked_len(padded).ok_or_else(|| {
                        layer_error(format!("padded input {padded} is too large"))
                    })?;
                    [c, *kernel, *kernel, output.len() / out_channels]
                        .iter()
                        .try_fold(1usize, |a, &b| a.checked_mul(b))
                        .ok_or_else(|| layer_error("too many patches".into()))?;
                    let count = [c, *kernel, *kernel]
                        .iter()
                        .try_fold(*out_channels, |a, &b| a.checked_mul(b))
                        .ok_or_else(|| layer_error("too many weights".into()))?;
                    check_inline("weights", weights, count, || {
                        format!("{out_channels} out x {c} in x {kernel} x {kernel}")
                    })
                    .map_err(&layer_error)?;
                    if !bias && biases.is_some() {
                        return Err(layer_error("biases are given but bias is false".into()));
                    }
                    check_inline("biases", biases, *out_channels, || {
                        format!("{out_channels} out channels")
                    })
                    .map_err(&layer_error)?;
                    let op = NodeOp::Conv2d {
                        in_channels: c,
                        out_channels: *out_channels,
                        kernel: *kernel,
                        stride: *stride,
                        padding: *padding,
                        bias: *bias,
                    };
                    b.push(index, name.clone(), op, output);
                    if let Some(a) = activation {
                        b.push_activation(index, format!("{name}.{}", a.name()), *a)
                            .map_err(&layer_error)?;
                    }
                }
                Layer::MaxPool2d { size, stride } | Layer::AvgPool2d { size, stride } => {
                    let Shape::Image { c, h, w } = shape else {
                        return Err(layer_error(format!(
                            "pooling expects a channels x height x width input, found {shape}"
                        )));
                    };
                    check_size("size", *size).map_err(&layer_error)?;
                    let stride = stride.unwrap_or(*size);
                    if stride < *size || stride > MAX_DIM {
                        return Err(layer_error(format!(
                            "stride: expected at least the window size {size} (windows must not \
                             overlap, or the backward pass's count would depend on the data), \
                             found {stride}"
                        )));
                    }
                    if *size > h || *size > w {
                        return Err(layer_error(format!(
                            "window {size}x{size} is larger than its input {h}x{w}"
                        )));
                    }
                    let output = Shape::Image {
                        c,
                        h: (h - size) / stride + 1,
                        w: (w - size) / stride + 1,
                    };
                    let op = match layer {
                        Layer::MaxPool2d { .. } => NodeOp::MaxPool2d {
                            size: *size,
                            stride,
                        },
                        _ => NodeOp::AvgPool2d {
                            size: *size,
                            stride,
                        },
                    };
                    b.push(index, name.clone(), op, output);
                }
                Layer::Flatten => {
                    b.push(
                        index,
                        name.clone(),
                        NodeOp::Flatten,
                        Shape::Flat(shape.len()),
                    );
                }
                Layer::Identity | Layer::Sigmoid | Layer::Tanh | Layer::Relu | Layer::Softmax => {
                    b.push_activation(index, name.clone(), standalone_activation(layer))
                        .map_err(&layer_error)?;
                }
            }
        }

        let plan = Plan {
            name: self.name.clone(),
            input,
            nodes: b.nodes,
            loss: self.loss,
        };
        check_logits(&plan, origin)?;
        check_loss(&plan).map_err(&model_error)?;
        if let Some(t) = &self.training {
            check_training(t).map_err(model_error)?;
        }
        Ok(plan)
    }
}

/// The line and column of RON's position `at` in `text`, where a CR, an LF or a CRLF each
/// end a line (RON counts LFs only, so a file with old Mac line endings would be all line 1).
fn position(text: &str, at: ron::error::Position) -> (usize, usize) {
    let (mut ron_line, mut ron_column) = (1, 1);
    let (mut line, mut column) = (1, 1);
    let mut after_cr = false;
    for c in text.chars() {
        if (ron_line, ron_column) == (at.line, at.col) {
            break;
        }
        if c == '\n' {
            (ron_line, ron_column) = (ron_line + 1, 1);
        } else {
            ron_column += 1;
        }
        match c {
            '\n' if after_cr => {}
            '\n' | '\r' => (line, column) = (line + 1, 1),
            _ => column += 1,
        }
        after_cr = c == '\r';
    }
    (line, column)
}

/// Lays out nodes one after another, tracking the current shape and whether any parameters
/// came before (which decides whether a node needs its input's gradient).
struct Builder {
    nodes: Vec<Node>,
    shape: Shape,
    seen_params: bool,
}

impl Builder {
    fn push(&mut self, layer: usize, name: String, op: NodeOp, output: Shape) {
        self.nodes.push(Node {
            layer,
            name,
            op,
            input: self.shape,
            output,
            needs_input_grad: self.seen_params,
        });
        self.seen_params |= op.params() > 0;
        self.shape = output;
    }

    fn push_activation(
        &mut self,
        layer: usize,
        name: String,
        a: Activation,
    ) -> std::result::Result<(), String> {
        if a == Activation::Softmax && !matches!(self.shape, Shape::Flat(_)) {
            return Err(format!(
                "softmax expects a flat input, found {}; add a Flatten layer before it",
                self.shape
            ));
        }
        self.push(layer, name, NodeOp::Activation(a), self.shape);
        Ok(())
    }
}

fn layer_kind(layer: &Layer) -> &'static str {
    match layer {
        Layer::Dense { .. } => "dense",
        Layer::Conv2d { .. } => "conv",
        Layer::MaxPool2d { .. } => "maxpool",
        Layer::AvgPool2d { .. } => "avgpool",
        Layer::Flatten => "flatten",
        other => standalone_activation(other).name(),
    }
}

fn layer_name(layer: &Layer) -> Option<String> {
    match layer {
        Layer::Dense { name, .. } | Layer::Conv2d { name, .. } => name.clone(),
        _ => None,
    }
}

/// The activation of an activation layer. Only called on those five variants.
fn standalone_activation(layer: &Layer) -> Activation {
    match layer {
        Layer::Identity => Activation::Identity,
        Layer::Sigmoid => Activation::Sigmoid,
        Layer::Tanh => Activation::Tanh,
        Layer::Relu => Activation::Relu,
        Layer::Softmax => Activation::Softmax,
        _ => unreachable!("only called on the five activation layers"),
    }
}

fn checked_len(shape: Shape) -> Option<usize> {
    match shape {
        Shape::Flat(n) => Some(n),
        Shape::Image { c, h, w } => c.checked_mul(h)?.checked_mul(w),
    }
}

fn check_size(what: &str, n: usize) -> std::result::Result<(), String> {
    if n == 0 || n > MAX_DIM {
        Err(format!(
            "{what}: expected between 1 and {MAX_DIM}, found {n}"
        ))
    } else {
        Ok(())
    }
}

fn check_inline(
    what: &str,
    values: &Option<Vec<f32>>,
    expected: usize,
    explain: impl Fn() -> String,
) -> std::result::Result<(), String> {
    let Some(values) = values else { return Ok(()) };
    if values.len() != expected {
        return Err(format!(
            "{what}: expected {expected} values ({}), found {}",
            explain(),
            values.len()
        ));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(format!(
            "{what}: value {i} is {}, expected a finite number",
            values[i]
        ));
    }
    Ok(())
}

fn check_training(t: &Training) -> std::result::Result<(), String> {
    for (what, n) in [("epochs", t.epochs), ("batch", t.batch)] {
        if n == 0 {
            return Err(format!("training: {what}: expected at least 1, found 0"));
        }
    }
    if !(t.lr.is_finite() && t.lr > 0.0) {
        return Err(format!(
            "training: lr: expected a positive number, found {}",
            t.lr
        ));
    }
    Ok(())
}

/// `SoftmaxCrossEntropy` takes logits: no softmax may come after the last node with
/// parameters (an identity or another activation after it would still hand the loss
/// probabilities, and a double softmax trains, slowly, towards the wrong thing).
fn check_logits(plan: &Plan, origin: &str) -> Result<()> {
    if plan.loss != Loss::SoftmaxCrossEntropy {
        return Ok(());
    }
    let after_params = plan
        .nodes
        .iter()
        .rposition(|n| n.op.params() > 0)
        .map_or(0, |k| k + 1);
    let softmax = plan.nodes[after_params..]
        .iter()
        .find(|n| n.op == NodeOp::Activation(Activation::Softmax));
    match softmax {
        Some(node) => Err(Error::Layer {
            origin: origin.to_string(),
            index: node.layer,
            name: node.name.clone(),
            message: "loss SoftmaxCrossEntropy applies softmax itself, but this softmax comes \
                      after the last layer with parameters, so the loss would see \
                      probabilities, not logits; remove it"
                .into(),
        }),
        None => Ok(()),
    }
}

fn check_loss(plan: &Plan) -> std::result::Result<(), String> {
    let output = plan.output();
    if plan.loss == Loss::SoftmaxCrossEntropy {
        match output {
            Shape::Flat(n) if n >= 2 => {}
            _ => {
                return Err(format!(
                    "loss SoftmaxCrossEntropy needs a flat output of at least 2 classes, found {output}"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const XOR: &str = r#"(
        name: "xor",
        input: [2],
        layers: [Dense(units: 2, activation: Sigmoid), Dense(units: 1, activation: Sigmoid)],
        loss: Mse,
    )"#;

    #[test]
    fn declared_activations_become_nodes_of_their_own() {
        let plan = Model::parse(XOR, "xor.ron")
            .unwrap()
            .plan("xor.ron")
            .unwrap();
        let names: Vec<&str> = plan.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(
            names,
            ["dense1", "dense1.sigmoid", "dense2", "dense2.sigmoid"]
        );
        assert_eq!(
            Model::parse(XOR, "xor.ron").unwrap().nodes(),
            plan.nodes.len()
        );
        let grads: Vec<bool> = plan.nodes.iter().map(|n| n.needs_input_grad).collect();
        assert_eq!(grads, [false, true, true, true]);
        assert_eq!(plan.params(), 2 * 2 + 2 + 2 + 1);
    }

    #[test]
    fn syntax_errors_carry_line_and_column() {
        let err = Model::parse("(\n  name: \"x\",\n  input: [2,\n", "m.ron").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("m.ron:"), "{text}");
        assert!(matches!(err, Error::Syntax { line: 3, .. }), "{text}");
    }

    #[test]
    fn cross_entropy_refuses_a_softmax_after_the_last_weighted_layer() {
        let model = |layers: &str| {
            let text =
                format!("(name: \"s\", input: [4], loss: SoftmaxCrossEntropy, layers: [{layers}])");
            Model::parse(&text, "s.ron").unwrap().plan("s.ron")
        };
        for (layers, at) in [
            ("Dense(units: 3), Softmax", "layer 1 (softmax1)"),
            ("Dense(units: 3), Softmax, Identity", "layer 1 (softmax1)"),
            (
                "Dense(units: 3, activation: Softmax), Relu",
                "layer 0 (dense1.softmax)",
            ),
            ("Softmax", "layer 0 (softmax1)"),
        ] {
            let err = model(layers).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("s.ron: {at}: ")),
                "{layers}: {err}"
            );
            assert!(err.contains("logits"), "{err}");
        }
        // A softmax inside the network, before a weighted layer, is an activation like any.
        assert!(model("Dense(units: 3, activation: Softmax), Dense(units: 2)").is_ok());
    }

    #[test]
    fn positions_count_every_line_ending() {
        for end in ["\n", "\r\n", "\r"] {
            let text = ["(", "  name: \"x\",", "  input: [2,,],", ")"].join(end);
            let err = Model::parse(&text, "m.ron").unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::Syntax {
                        line: 3,
                        column: 13,
                        ..
                    }
                ),
                "{end:?}: {err}"
            );
        }
    }

    #[test]
    fn round_trips_through_ron() {
        let model = Model::parse(XOR, "xor.ron").unwrap();
        let again = Model::parse(&model.to_ron(), "again").unwrap();
        assert_eq!(model, again);
    }
}
