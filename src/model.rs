//! Model files: the serde types that mirror a RON file exactly ([`Model`]). Their validation
//! into a [`Plan`], the graph that both the interpreter and the closed forms work from, is in
//! `src/plan.rs`. Nothing here knows the scalar type.
//!
//! The schema is documented, with an annotated example, in `docs/model-format.md`.

use std::path::Path;

use ron::extensions::Extensions;
use serde::{Deserialize, Serialize};

use crate::budget::Budget;
use crate::error::{Error, Result};
use crate::input::{charged, charged_nested, charged_option, charged_params};
pub use crate::nn::activation::Activation;
pub use crate::nn::ops::{NodeOp, OPERATIONS, ParamSpec};
pub use crate::plan::{Node, Plan};
pub use crate::shape::Shape;

/// A model file, as written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    /// A name for reports.
    pub name: String,
    /// The shape of one example: `[features]`, or `[channels, height, width]`.
    #[serde(deserialize_with = "charged")]
    pub input: Vec<usize>,
    /// The layers, first to last: a chain, each reading the one before. Give this or
    /// `graph`.
    #[serde(
        default,
        deserialize_with = "charged",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub layers: Vec<Layer>,
    /// The nodes of a graph, each naming its inputs. Give this or `layers`.
    #[serde(
        default,
        deserialize_with = "charged",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub graph: Vec<Entry>,
    /// The loss the last layer's output is trained against.
    pub loss: Loss,
    /// How parameters not given inline are initialised.
    #[serde(default)]
    pub init: Init,
    /// Training data and settings, if the model can be trained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<Training>,
}

/// One node of a model's `graph`: an operation, the values it reads, and optionally the
/// parameters of another node it uses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Its name, by which other nodes read its output; default the operation's kind and a
    /// count (`dense2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What it computes.
    pub op: Layer,
    /// The values it reads: `"input"` (the model's input) or other nodes' names. Default:
    /// the entry before it (the model's input for the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Vec<String>>,
    /// Use the parameters of this node (tensors of the same shapes) instead of its own:
    /// weight tying. Their gradients add up, and the update touches them once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<String>,
    /// Parameter tensors (and state, such as batch normalisation's running statistics)
    /// written inline, by the operation's names for them: `{"gamma": [...], "beta": [...]}`.
    /// Each in the order PyTorch stores it. What is not given starts from the model's `init`.
    #[serde(
        default,
        deserialize_with = "charged_params",
        skip_serializing_if = "Option::is_none"
    )]
    pub params: Option<Params>,
}

/// Named tensors of a graph entry, in the order written (a name given twice is kept twice,
/// for the plan to refuse). Written in RON as a map: `{"gamma": [1.0, 1.0], "beta": [0.0, 0.0]}`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Params(pub Vec<(String, Vec<f32>)>);

impl Params {
    /// The values named `name`, if given.
    pub fn get(&self, name: &str) -> Option<&[f32]> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
}

impl Serialize for Params {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (name, values) in &self.0 {
            map.serialize_entry(name, values)?;
        }
        map.end()
    }
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
    /// 2-D convolution over a `channels x height x width` input:
    /// `out[o][y][x] = b_o + sum_{c,i,j} W[o][c][i][j] in[g*C_in/G + c][y*sh+i-ph][x*sw+j-pw]`
    /// over the `C_in / groups` input channels of output channel o's group g, zeros outside the
    /// input. Kernel, stride and padding are one number for both axes or `(height, width)`.
    Conv2d {
        /// Output channels (filters).
        out_channels: usize,
        /// Kernel height and width.
        kernel: Pair,
        /// Step between windows.
        #[serde(default = "Pair::one", skip_serializing_if = "Pair::is_one")]
        stride: Pair,
        /// Zeros added above and below, and left and right, of the input.
        #[serde(default = "Pair::zero", skip_serializing_if = "Pair::is_zero")]
        padding: Pair,
        /// Channel groups: each output channel reads the input channels of its group only
        /// (`in_channels` and `out_channels` divisible by it; depthwise when it is
        /// `in_channels`).
        #[serde(default = "one", skip_serializing_if = "is_one")]
        groups: usize,
        /// Whether each output starts from a bias.
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        bias: bool,
        /// Activation applied to the outputs; it becomes a node (and a table row) of its own.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        activation: Option<Activation>,
        /// A name for reports; default `conv<k>`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// Inline weights, `out_channels x (in_channels / groups) x kernel height x kernel
        /// width` values in that order.
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
        /// Step between windows; default `size`. Windows may overlap (stride < size).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stride: Option<usize>,
        /// Cells of padding on every side, at most half the window.
        #[serde(default, skip_serializing_if = "is_zero")]
        padding: usize,
    },
    /// The mean of each `size x size` window, per channel.
    AvgPool2d {
        /// Window height and width.
        size: usize,
        /// Step between windows; default `size`. Windows may overlap (stride < size).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stride: Option<usize>,
        /// Cells of padding on every side, at most half the window.
        #[serde(default, skip_serializing_if = "is_zero")]
        padding: usize,
    },
    /// `channels x height x width` values as one flat vector, in that order.
    Flatten,
    /// The mean of each channel of an image, as a flat vector.
    GlobalAvgPool2d,
    /// Batch normalisation in training mode, per channel of an image, with learnable scale
    /// and shift.
    BatchNorm2d,
    /// The sum of two values of the same shape (a residual connection); in a `graph` only.
    Add,
    /// The product of two values of the same shape, value by value (a gate, as in SiLU's
    /// `x * sigmoid(x)`); in a `graph` only.
    Mul,
    /// The difference of two values of the same shape, value by value, the second from the
    /// first; in a `graph` only.
    Sub,
    /// The quotient of two values of the same shape, value by value, the first divided by
    /// the second (a computed normaliser); in a `graph` only.
    Div,
    /// Two computed values whose shapes broadcast (numpy's rules, from the last axis: on
    /// each axis the sizes are equal or one of them is 1, a missing axis counting as 1)
    /// combined value by value, `op` the first and the second: `x - mean` with the mean
    /// `[t, 1]` of `[t, w]`, a gate `[c, 1, 1]` times an image `[c, h, w]`. Out the
    /// broadcast shape; in a `graph` only.
    Broadcast {
        /// Which operation: the first input `+`, `-`, `*` or `/` the second.
        op: Arith,
    },
    /// The matrix product of two computed values, `[..., t, k]` times `[..., k, n]`, one
    /// product per matrix of the leading axes they share (attention written out: `q kᵀ`,
    /// `p v`); in a `graph` only.
    MatMul,
    /// One example's values, in the same order, read as another shape of as many values.
    Reshape {
        /// The sizes, 1 to 4 of them.
        #[serde(deserialize_with = "charged")]
        shape: Vec<usize>,
    },
    /// One example's axes in another order: output axis `i` is input axis `perm[i]`.
    Transpose {
        /// An order of every axis of the input, from 0.
        #[serde(deserialize_with = "charged")]
        perm: Vec<usize>,
    },
    /// A value combined, value by value, with a fixed constant (never trained) that
    /// broadcasts to its shape from the last axis: `x + c`, `x - c`, `c - x`, `x * c`, `x / c`.
    ConstOp {
        /// Which operation, and on which side the constant stands.
        op: ConstArith,
        /// The constant's dimensions, at most the input's rank, each 1 or the input's size
        /// on that axis counted from the last; default `[1]`, one number for every value.
        #[serde(default = "one_value", deserialize_with = "charged")]
        shape: Vec<usize>,
        /// The constant's values, in row-major order.
        #[serde(deserialize_with = "charged")]
        values: Vec<f32>,
    },
    /// The square root of every value (`/ sqrt(var + eps)` written out).
    Sqrt,
    /// Each row of the last axis normalised by its mean and variance, then scaled and shifted
    /// by learnable `gamma` and `beta` per feature.
    LayerNorm,
    /// Token ids (the model's `[tokens]` input) to rows of a learned `vocab x width` table.
    Embedding {
        /// Distinct token ids: every id is below it.
        vocab: usize,
        /// Features per token.
        width: usize,
    },
    /// A learned `context x width` table whose row t is added to token t.
    PositionEmbedding {
        /// The longest sequence it takes.
        context: usize,
    },
    /// A score per token id for every row: `y_v = sum_i x_i E_vi`, with a `vocab x width`
    /// table E that may `share` an `Embedding`'s (a tied output layer). No bias.
    Unembed {
        /// Token ids scored.
        vocab: usize,
    },
    /// Causal attention scores of two `[tokens, width]` inputs, queries and keys, split into
    /// `heads`: `s[h][i][j] = q_i . k_j / sqrt(width / heads)` for j <= i, minus infinity
    /// (not computed) for j > i; out `[heads, tokens, tokens]`. In a `graph` only.
    Scores {
        /// Heads; they divide the width.
        heads: usize,
    },
    /// A softmax over each row i of `[..., tokens, tokens]` scores, over its first i + 1
    /// entries; zeros after them.
    CausalSoftmax,
    /// The causal mix of two inputs, probabilities `[heads, tokens, tokens]` and values
    /// `[tokens, width]`: head h of token i is `sum over j <= i of p[h][i][j] v_j`; out
    /// `[tokens, width]`. In a `graph` only.
    Mix {
        /// Heads; they divide the width.
        heads: usize,
    },
    /// `x` unchanged.
    Identity,
    /// `1 / (1 + exp(-x))`.
    Sigmoid,
    /// `tanh(x)`.
    Tanh,
    /// `max(x, 0)`.
    Relu,
    /// `exp(x_j) / sum_k exp(x_k)` over each row of the last axis (each example's values
    /// when they are flat).
    Softmax,
    /// `min(max(x, 0), 6)` (MobileNetV2).
    Relu6,
    /// `x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2`, the tanh form GPT-2 uses.
    Gelu,
    /// `x (1 + erf(x / sqrt(2))) / 2`, the exact GELU (PyTorch's default `nn.GELU()`, BERT).
    GeluErf,
}

impl Layer {
    /// The activation a standalone activation layer applies.
    pub fn activation(&self) -> Option<Activation> {
        Some(match self {
            Layer::Identity => Activation::Identity,
            Layer::Sigmoid => Activation::Sigmoid,
            Layer::Tanh => Activation::Tanh,
            Layer::Relu => Activation::Relu,
            Layer::Softmax => Activation::Softmax,
            Layer::Relu6 => Activation::Relu6,
            Layer::Gelu => Activation::Gelu,
            Layer::GeluErf => Activation::GeluErf,
            _ => return None,
        })
    }
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

fn is_zero_f32(x: &f32) -> bool {
    *x == 0.0
}

/// A size along the two axes of an image, for a convolution's kernel, stride and padding:
/// written as one number for both (`3`) or as `(height, width)`. Written back the same way,
/// one number when both are equal, so a file that used numbers is saved unchanged.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    /// Along the height (rows).
    pub height: usize,
    /// Along the width (columns).
    pub width: usize,
}

impl Pair {
    /// The same size along both axes.
    pub fn square(n: usize) -> Pair {
        Pair {
            height: n,
            width: n,
        }
    }

    fn one() -> Pair {
        Pair::square(1)
    }

    fn zero() -> Pair {
        Pair::square(0)
    }

    fn is_one(&self) -> bool {
        *self == Pair::one()
    }

    fn is_zero(&self) -> bool {
        *self == Pair::zero()
    }
}

impl std::fmt::Display for Pair {
    /// `3x3`, `1x7`: height by width.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.height, self.width)
    }
}

impl Serialize for Pair {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        if self.height == self.width {
            serializer.serialize_u64(self.height as u64)
        } else {
            (self.height, self.width).serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for Pair {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Pair, D::Error> {
        use serde::de::{Error as _, SeqAccess, Unexpected, Visitor};
        struct PairVisitor;
        impl<'de> Visitor<'de> for PairVisitor {
            type Value = Pair;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a size or a pair (height, width) of sizes")
            }

            fn visit_u64<E: serde::de::Error>(self, n: u64) -> std::result::Result<Pair, E> {
                usize::try_from(n)
                    .map(Pair::square)
                    .map_err(|_| E::invalid_value(Unexpected::Unsigned(n), &self))
            }

            fn visit_i64<E: serde::de::Error>(self, n: i64) -> std::result::Result<Pair, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::invalid_value(Unexpected::Signed(n), &self)),
                }
            }

            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Pair, A::Error> {
                let height = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(0, &self))?;
                let width = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(1, &self))?;
                if seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    return Err(A::Error::invalid_length(3, &self));
                }
                Ok(Pair { height, width })
            }
        }
        d.deserialize_any(PairVisitor)
    }
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// A loss function.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Loss {
    /// Mean squared error over every output of every example.
    Mse,
    /// Softmax over each example's outputs (logits), then cross-entropy against its class.
    #[serde(alias = "CrossEntropy")]
    SoftmaxCrossEntropy,
    /// No loss: the network is counted forward only (inference). The loss, the backward pass
    /// and the update compute nothing, and every report says so; such a model cannot be
    /// trained.
    None,
}

impl Loss {
    /// Lower-case name, as in tables.
    pub fn name(self) -> &'static str {
        match self {
            Loss::Mse => "mse",
            Loss::SoftmaxCrossEntropy => "softmax_cross_entropy",
            Loss::None => "none",
        }
    }

    /// Whether a step is the forward pass alone (`Loss::None`): no loss, no backward pass,
    /// no update.
    pub fn forward_only(self) -> bool {
        self == Loss::None
    }
}

/// The operation of a [`Layer::ConstOp`], and on which side its constant `c` stands.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConstArith {
    /// `x + c`.
    Add,
    /// `x - c`.
    Sub,
    /// `c - x`.
    SubFrom,
    /// `x * c`.
    Mul,
    /// `x / c`.
    Div,
}

/// The operation of a [`Layer::Broadcast`]: the first input and the second.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Arith {
    /// `a + b`.
    Add,
    /// `a - b`.
    Sub,
    /// `a * b`.
    Mul,
    /// `a / b`.
    Div,
}

fn one_value() -> Vec<usize> {
    vec![1]
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
    /// How the update phase changes the parameters; default SGD.
    #[serde(default, skip_serializing_if = "Optimizer::is_sgd")]
    pub optimizer: Optimizer,
}

impl Training {
    /// The defaults `opcount train` uses for a model without a training block: `data`, one
    /// epoch, learning rate 0.01, batch 32 (the whole data if smaller), seed 0, SGD.
    pub fn new(data: Data) -> Training {
        Training {
            data,
            epochs: 1,
            lr: 0.01,
            batch: 32,
            seed: 0,
            optimizer: Optimizer::Sgd,
        }
    }
}

/// How the update phase changes each parameter from its gradient g, at learning rate lr.
#[derive(Copy, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub enum Optimizer {
    /// `p -= lr g`.
    #[default]
    Sgd,
    /// Adam (Kingma and Ba, 2015), as PyTorch's `torch.optim.Adam` computes it: moments
    /// `m = beta1 m + (1 - beta1) g` and `v = beta2 v + (1 - beta2) g g`, then
    /// `p -= (lr / c1) m / (sqrt(v) / sqrt(c2) + eps)` with the bias corrections
    /// `c1 = 1 - beta1^t`, `c2 = 1 - beta2^t` of step t.
    Adam {
        /// Decay of the first moment; default 0.9.
        #[serde(default = "beta1")]
        beta1: f32,
        /// Decay of the second moment; default 0.999.
        #[serde(default = "beta2")]
        beta2: f32,
        /// Added to the root of the second moment; default 1e-8.
        #[serde(default = "adam_eps")]
        eps: f32,
    },
}

impl Optimizer {
    /// Whether this is plain SGD.
    pub fn is_sgd(&self) -> bool {
        *self == Optimizer::Sgd
    }
}

fn beta1() -> f32 {
    0.9
}

fn beta2() -> f32 {
    0.999
}

fn adam_eps() -> f32 {
    1e-8
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
        /// The fraction of rows, from the end of the file, kept out of training to measure
        /// the held-out loss and accuracy (rounded up); default 0.
        #[serde(default, skip_serializing_if = "is_zero_f32")]
        held_out: f32,
    },
    /// A text for next-token prediction, every character a token: windows of the model's
    /// input length, each token's target the character after it.
    Text {
        /// Path, relative to the model file; UTF-8.
        path: String,
        /// The fraction of windows, from the end of the text, kept out of training to measure
        /// the held-out loss; default 0.
        #[serde(default, skip_serializing_if = "is_zero_f32")]
        held_out: f32,
    },
    /// Made-up examples, the same for the same seed: inputs uniform in `[-1, 1)` (token ids
    /// uniform below the vocabulary), a random class (softmax cross-entropy) or random
    /// values in `[0, 1)` (mean squared error) as targets. For counting and timing a model's
    /// training without data of its own; there is nothing in them to learn.
    Synthetic {
        /// How many.
        examples: usize,
        /// Seed of the random stream; default 0.
        #[serde(default)]
        seed: u64,
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

/// The largest value any single dimension may have: larger is surely a typo.
pub const MAX_DIM: usize = 1 << 31;

/// How RON files are read and written: `Some(..)` may be left out around optional values.
fn ron_options() -> ron::Options {
    ron::Options::default().with_default_extension(Extensions::IMPLICIT_SOME)
}

impl Model {
    /// Reads and parses a model file (it is not validated yet; see [`Model::plan`]).
    ///
    /// ```
    /// use opcount::Model;
    ///
    /// let model = Model::load(std::path::Path::new("models/xor.ron"))?;
    /// assert_eq!(model.name, "xor");
    /// assert!(Model::load(std::path::Path::new("models/no-such-model.ron")).is_err());
    /// # Ok::<(), opcount::Error>(())
    /// ```
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

    /// How many nodes [`Model::plan`] makes of this model: one per layer or graph entry,
    /// and one more for each activation a dense or convolution layer declares. Known before planning, so
    /// that the memory of the nodes can be charged first.
    pub fn nodes(&self) -> usize {
        let declared = |layer: &Layer| match layer {
            Layer::Dense { activation, .. } | Layer::Conv2d { activation, .. } => {
                usize::from(activation.is_some())
            }
            _ => 0,
        };
        let ops = self.layers.iter().chain(self.graph.iter().map(|e| &e.op));
        ops.map(|layer| 1 + declared(layer)).sum()
    }

    /// Checks the model and lays out its graph, naming the layer or node at fault if
    /// something does not fit. `origin` names the file in error messages.
    ///
    /// ```
    /// use opcount::Model;
    ///
    /// let model = Model::parse(
    ///     "(name: \"m\", input: [1, 8, 8], loss: Mse,
    ///       layers: [Conv2d(out_channels: 2, kernel: 3), Flatten, Dense(units: 1)])",
    ///     "m.ron",
    /// )?;
    /// let plan = model.plan("m.ron")?;
    /// let shapes: Vec<String> = plan.nodes().iter().map(|n| n.output().to_string()).collect();
    /// assert_eq!(shapes, ["2x6x6", "72", "1"]);
    /// assert_eq!(plan.params(), 2 * 9 + 2 + 72 + 1);
    ///
    /// // A layer that does not fit is named.
    /// let bad = Model::parse("(name: \"b\", input: [3], loss: Mse, layers: [Flatten, Conv2d(out_channels: 1, kernel: 1)])", "b.ron")?;
    /// let err = bad.plan("b.ron").unwrap_err().to_string();
    /// assert!(err.starts_with("b.ron: layer 1 (conv1): conv2d expects"), "{err}");
    /// # Ok::<(), opcount::Error>(())
    /// ```
    pub fn plan(&self, origin: &str) -> Result<Plan> {
        crate::plan::build(self, origin)
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
        let names: Vec<&str> = plan.nodes().iter().map(|n| n.name()).collect();
        assert_eq!(
            names,
            ["dense1", "dense1.sigmoid", "dense2", "dense2.sigmoid"]
        );
        assert_eq!(
            Model::parse(XOR, "xor.ron").unwrap().nodes(),
            plan.nodes().len()
        );
        let grads: Vec<&[bool]> = plan.nodes().iter().map(|n| n.input_grads()).collect();
        assert_eq!(grads, [&[false], &[true], &[true], &[true]]);
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
