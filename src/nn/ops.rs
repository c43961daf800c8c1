//! The registry of operations: every operation a node can compute, listed once.
//!
//! An operation lives in a module of its own (`dense.rs`, `conv.rs`, `pool.rs`, `flatten.rs`,
//! `activation.rs`, `add.rs`, `mul.rs`, `sub.rs`, `div.rs`, `broadcast.rs`, `sqrt.rs`, ...) holding, side by side, its shape rule (the resolved struct's
//! constructor), its parameters, its closed form ([`Operation`]) and its forward and backward
//! kernels ([`Kernel`]). This file joins them: [`NodeOp`] has one variant per operation, and
//! `registry!` below writes the dispatch from that one list, so nothing else matches on
//! operations. How to add one: docs/ARCHITECTURE.md, "How to add an operation".

use crate::error::Result;
use crate::estimate::At;
use crate::model::Layer;
use crate::phases::NodeCounts;
use crate::scalar::Scalar;
use crate::shape::Shape;

use super::{activation, add, batchnorm, const_op, conv, dense, flatten, global_pool, mul, pool};
use super::{broadcast, div, mask_fill, reshape, sqrt, sub, unembed};
use super::{causal_softmax, embedding, layernorm, matmul, mix, positions, scores, transpose};

/// One parameter tensor of an operation: its length and how it starts.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct ParamSpec {
    /// Number of values.
    pub len: usize,
    /// `Some((fan_in, fan_out))` for weights drawn at random by the model's initialisation;
    /// `None` for the ones that all start at `start` (biases at zero, a scale at one).
    pub fans: Option<(usize, usize)>,
    /// Every value's start when `fans` is `None`.
    pub start: f32,
}

impl ParamSpec {
    /// A normalisation's learnable `gamma` (starting at one) and `beta` (at zero), `n` each.
    pub(crate) fn scale_and_shift(n: usize) -> Vec<ParamSpec> {
        [1.0, 0.0]
            .map(|start| ParamSpec {
                len: n,
                fans: None,
                start,
            })
            .to_vec()
    }
}

/// What every operation tells about itself, whatever the number type.
pub(crate) trait Operation {
    /// Short kind name, as in tables: `dense`, `conv2d`, `relu`, ...
    fn kind(&self) -> &'static str;

    /// The shape of one example's output.
    fn output(&self) -> Shape;

    /// Its parameter tensors, in storage order (weights, then biases); empty for none.
    fn params(&self) -> Vec<ParamSpec> {
        Vec::new()
    }

    /// The names of its parameter tensors in storage order, by which a graph entry's `params`
    /// gives them inline: `weights`, then `biases`, unless the operation names them otherwise.
    fn param_names(&self) -> &'static [&'static str] {
        &["weights", "biases"]
    }

    /// What it keeps across steps besides its parameters, by name: neither trained nor
    /// counted as parameters, but part of a saved model (batch normalisation's running
    /// statistics). `fans` is always `None`; each value starts at `start`.
    fn state(&self) -> Vec<(&'static str, ParamSpec)> {
        Vec::new()
    }

    /// Parameter `index` in storage order from the order model files use (PyTorch's), and
    /// back (`file_order`). The same order unless the kernel stores it otherwise.
    fn storage_order(&self, index: usize, values: &[f32]) -> Vec<f32> {
        let _ = index;
        values.to_vec()
    }

    /// What parameter `index` holds, for messages: `2 units x 3 inputs`.
    fn explain_param(&self, index: usize) -> String {
        let _ = index;
        String::new()
    }

    /// The inverse of [`Operation::storage_order`].
    fn file_order(&self, index: usize, values: &[f32]) -> Vec<f32> {
        let _ = index;
        values.to_vec()
    }

    /// The closed form: what a node of this operation counts in each phase on `at.batch`
    /// examples, from its shapes alone. `grads[j]` says whether the backward pass computes
    /// the gradient of input `j`. `name` names the node in overflow errors.
    fn closed_form(&self, at: At<'_>, name: &str, grads: &[bool]) -> Result<NodeCounts>;

    /// Scratch space a node of this operation keeps for its kernels, in values, whatever
    /// the batch (a convolution's buffers for a group of examples).
    fn workspace(&self) -> usize {
        0
    }

    /// Values a kernel of this operation allocates within one call and frees before it
    /// returns, at most, whatever the batch (a convolution's weights packed for its chunks).
    /// Nodes run one at a time, so a step needs the largest node's, not their sum.
    fn transient(&self) -> usize {
        0
    }

    /// Values per example a node of this operation keeps from the forward pass to the
    /// backward pass besides its input and output (batch normalisation's normalised input).
    fn kept(&self) -> usize {
        0
    }

    /// `Some(vocab)` if its input holds token ids below `vocab` (an embedding's); the data
    /// are checked against it.
    fn token_ids(&self) -> Option<usize> {
        None
    }
}

/// An operation's kernels for numbers of type `S`, with whatever state they keep between
/// the forward and the backward pass (max pooling's positions).
///
/// Both passes write their outputs whole (never add onto them): where a gradient has to be
/// added to one already there, the interpreter gives the kernel a scratch buffer and adds it
/// itself, counting those additions for the node (docs/counting.md, "Graphs").
pub(crate) trait Kernel<S: Scalar>: Send + Sync {
    /// `y = f(x, params)` for a batch.
    ///
    /// # Shapes
    /// `x[j]`: batch x input j's shape; `y`: batch x the output shape.
    fn forward(&mut self, x: &[&[S]], params: &[&[S]], y: &mut [S]);

    /// From `grads.dy` = dL/dy: every parameter's gradient into `grads.dparams` (same order
    /// as `params`), and the gradient of every input whose `dx` slot is `Some`.
    fn backward(&mut self, grads: Backward<'_, S>);

    /// `y = f(x, params)` for a batch when the network is used, not trained (evaluation):
    /// the same as [`Kernel::forward`] unless the operation behaves otherwise then (batch
    /// normalisation uses its running statistics). Keeps nothing for a backward pass.
    ///
    /// # Shapes
    /// As [`Kernel::forward`].
    fn infer(&mut self, x: &[&[S]], params: &[&[S]], y: &mut [S]) {
        self.forward(x, params, y);
    }

    /// The state of [`Operation::state`], in that order (what a saved model writes).
    fn state(&self) -> Vec<&[S]> {
        Vec::new()
    }

    /// [`Kernel::state`], to write (what a loaded model gives).
    fn state_mut(&mut self) -> Vec<&mut [S]> {
        Vec::new()
    }

    /// Work of the update phase besides the SGD step on the parameters, which the network
    /// does (batch normalisation's running statistics); whether there was any. Nothing by
    /// default.
    fn update(&mut self) -> bool {
        false
    }
}

/// What a node's backward pass reads (its forward's inputs `x`, output `y` and parameters,
/// and the output's gradient `dy`) and writes (`dparams`, one per parameter tensor, and `dx`,
/// one per input, `None` where that gradient is not wanted).
pub(crate) struct Backward<'a, S> {
    pub x: &'a [&'a [S]],
    pub y: &'a [S],
    pub dy: &'a [S],
    pub params: &'a [&'a [S]],
    pub dparams: &'a mut [&'a mut [S]],
    pub dx: &'a mut [Option<&'a mut [S]>],
}

/// The most inputs a node has.
pub(crate) const MAX_INPUTS: usize = 2;

/// The most parameter tensors a node has.
pub(crate) const MAX_PARAMS: usize = 2;

/// Writes [`NodeOp`], the layer names of [`OPERATIONS`], and the dispatch of [`Operation`]
/// and the kernels, from one list of `Variant(module::Type)`.
macro_rules! registry {
    ($($variant:ident($module:ident::$ty:ident)),* $(,)?) => {
        /// What a node computes, resolved against its input shapes: one variant per
        /// operation module.
        #[derive(Clone, Debug, PartialEq)]
        #[non_exhaustive]
        pub enum NodeOp {
            $(
                #[doc = concat!("See `src/nn/", stringify!($module), ".rs`.")]
                $variant($module::$ty),
            )*
        }

        impl NodeOp {
            fn op(&self) -> &dyn Operation {
                match self {
                    $(NodeOp::$variant(op) => op,)*
                }
            }

            /// The kernels of this operation for numbers of type `S`.
            pub(crate) fn kernel<S: Scalar>(&self) -> Box<dyn Kernel<S>> {
                match self {
                    $(NodeOp::$variant(op) => Box::new(op.kernel()),)*
                }
            }
        }
    };
}

registry! {
    Dense(dense::Dense),
    BatchNorm2d(batchnorm::BatchNorm2d),
    Conv2d(conv::Conv2d),
    MaxPool2d(pool::MaxPool2d),
    AvgPool2d(pool::AvgPool2d),
    GlobalAvgPool2d(global_pool::GlobalAvgPool2d),
    Flatten(flatten::Flatten),
    Activation(activation::Act),
    Add(add::Add),
    Mul(mul::Mul),
    Sub(sub::Sub),
    Div(div::Div),
    ConstOp(const_op::ConstOp),
    Broadcast(broadcast::Broadcast),
    Sqrt(sqrt::Sqrt),
    MaskFill(mask_fill::MaskFill),
    MatMul(matmul::MatMul),
    Transpose(transpose::Transpose),
    Reshape(reshape::Reshape),
    LayerNorm(layernorm::LayerNorm),
    Embedding(embedding::Embedding),
    PositionEmbedding(positions::PositionEmbedding),
    Unembed(unembed::Unembed),
    Scores(scores::Scores),
    CausalSoftmax(causal_softmax::CausalSoftmax),
    Mix(mix::Mix),
}

/// Every layer name a model file may use but the activations, which are
/// [`Activation::ALL`](activation::Activation::ALL): for tests, docs and the fuzz dictionary.
pub const OPERATIONS: &[&str] = &[
    "Dense",
    "Conv2d",
    "BatchNorm2d",
    "MaxPool2d",
    "AvgPool2d",
    "GlobalAvgPool2d",
    "Flatten",
    "Add",
    "Mul",
    "Sub",
    "Div",
    "ConstOp",
    "Broadcast",
    "Sqrt",
    "MaskFill",
    "MatMul",
    "Transpose",
    "Reshape",
    "LayerNorm",
    "Embedding",
    "PositionEmbedding",
    "Unembed",
    "Scores",
    "CausalSoftmax",
    "Mix",
];

impl NodeOp {
    /// Short kind name, as in tables: `dense`, `conv2d`, `relu`, ...
    pub fn kind(&self) -> &'static str {
        self.op().kind()
    }

    /// The shape of one example's output.
    pub fn output(&self) -> Shape {
        self.op().output()
    }

    /// Parameter tensors, in storage order.
    pub fn param_specs(&self) -> Vec<ParamSpec> {
        self.op().params()
    }

    /// Number of trainable parameters.
    pub fn params(&self) -> u64 {
        self.param_specs().iter().map(|p| p.len as u64).sum()
    }

    /// The names of its parameter tensors, in storage order (`weights`, `biases`; `gamma`,
    /// `beta`; `table`), as a graph entry's `params` gives them.
    pub fn param_names(&self) -> &'static [&'static str] {
        let names = self.op().param_names();
        &names[..self.param_specs().len().min(names.len())]
    }

    /// What it keeps across steps besides its parameters, by name (batch normalisation's
    /// `running_mean` and `running_var`).
    pub fn state(&self) -> Vec<(&'static str, ParamSpec)> {
        self.op().state()
    }

    pub(crate) fn storage_order(&self, index: usize, values: &[f32]) -> Vec<f32> {
        self.op().storage_order(index, values)
    }

    pub(crate) fn explain_param(&self, index: usize) -> String {
        self.op().explain_param(index)
    }

    pub(crate) fn file_order(&self, index: usize, values: &[f32]) -> Vec<f32> {
        self.op().file_order(index, values)
    }

    pub(crate) fn closed_form(&self, at: At<'_>, name: &str, grads: &[bool]) -> Result<NodeCounts> {
        self.op().closed_form(at, name, grads)
    }

    pub(crate) fn workspace(&self) -> usize {
        self.op().workspace()
    }

    pub(crate) fn transient(&self) -> usize {
        self.op().transient()
    }

    pub(crate) fn kept(&self) -> usize {
        self.op().kept()
    }

    pub(crate) fn token_ids(&self) -> Option<usize> {
        self.op().token_ids()
    }
}

/// A layer of a model file resolved against its input shapes: the node's operation and the
/// activation it declares, if any. Errors say what does not fit, for the plan to prefix with
/// the node's name. This is where a model file's layer names meet the operation modules.
pub(crate) fn resolve(layer: &Layer, inputs: &[Shape]) -> std::result::Result<NodeOp, String> {
    let one = || match inputs {
        [x] => Ok(*x),
        _ => Err(format!("expected 1 input, found {}", inputs.len())),
    };
    Ok(match layer {
        Layer::Dense { units, bias, .. } => {
            NodeOp::Dense(dense::Dense::resolve(*units, *bias, one()?)?)
        }
        Layer::Conv2d {
            out_channels,
            kernel,
            stride,
            padding,
            groups,
            bias,
            ..
        } => {
            let both = |p: &crate::model::Pair| (p.height, p.width);
            let settings = conv::Settings {
                out_channels: *out_channels,
                kernel: both(kernel),
                stride: both(stride),
                padding: both(padding),
                groups: *groups,
                bias: *bias,
            };
            NodeOp::Conv2d(conv::Conv2d::resolve(settings, one()?)?)
        }
        Layer::MaxPool2d {
            size,
            stride,
            padding,
        } => NodeOp::MaxPool2d(pool::MaxPool2d::resolve(*size, *stride, *padding, one()?)?),
        Layer::AvgPool2d {
            size,
            stride,
            padding,
        } => NodeOp::AvgPool2d(pool::AvgPool2d::resolve(*size, *stride, *padding, one()?)?),
        Layer::Flatten => NodeOp::Flatten(flatten::Flatten::resolve(one()?)),
        Layer::BatchNorm2d => NodeOp::BatchNorm2d(batchnorm::BatchNorm2d::resolve(one()?)?),
        Layer::GlobalAvgPool2d => {
            NodeOp::GlobalAvgPool2d(global_pool::GlobalAvgPool2d::resolve(one()?)?)
        }
        Layer::Add => NodeOp::Add(add::Add::resolve(inputs)?),
        Layer::Mul => NodeOp::Mul(mul::Mul::resolve(inputs)?),
        Layer::Sub => NodeOp::Sub(sub::Sub::resolve(inputs)?),
        Layer::Div => NodeOp::Div(div::Div::resolve(inputs)?),
        Layer::Broadcast { op } => NodeOp::Broadcast(broadcast::Broadcast::resolve(*op, inputs)?),
        Layer::MatMul => NodeOp::MatMul(matmul::MatMul::resolve(inputs)?),
        Layer::Reshape { shape } => NodeOp::Reshape(reshape::Reshape::resolve(shape, one()?)?),
        Layer::Transpose { perm } => {
            NodeOp::Transpose(transpose::Transpose::resolve(perm, one()?)?)
        }
        Layer::ConstOp { op, shape, values } => {
            NodeOp::ConstOp(const_op::ConstOp::resolve(*op, shape, values, one()?)?)
        }
        Layer::Sqrt => NodeOp::Sqrt(sqrt::Sqrt::resolve(one()?)),
        Layer::MaskFill {
            shape,
            masked,
            fill,
        } => NodeOp::MaskFill(mask_fill::MaskFill::resolve(shape, masked, *fill, one()?)?),
        Layer::LayerNorm => NodeOp::LayerNorm(layernorm::LayerNorm::resolve(one()?)),
        Layer::Embedding { vocab, width } => {
            NodeOp::Embedding(embedding::Embedding::resolve(*vocab, *width, one()?)?)
        }
        Layer::PositionEmbedding { context } => {
            NodeOp::PositionEmbedding(positions::PositionEmbedding::resolve(*context, one()?)?)
        }
        Layer::Unembed { vocab } => NodeOp::Unembed(unembed::Unembed::resolve(*vocab, one()?)?),
        Layer::Scores { heads } => NodeOp::Scores(scores::Scores::resolve(*heads, inputs)?),
        Layer::CausalSoftmax => {
            NodeOp::CausalSoftmax(causal_softmax::CausalSoftmax::resolve(one()?)?)
        }
        Layer::Mix { heads } => NodeOp::Mix(mix::Mix::resolve(*heads, inputs)?),
        activation => {
            let f = activation
                .activation()
                .expect("every other layer is an activation");
            activation::Act::resolve(f, one()?)?
        }
    })
}

/// A one-input kernel's forward and backward pass in `Counted<f64>` on `x` and `params`
/// (given in `f64`), every gradient wanted: the bits of the output, the input gradient and
/// the parameters' gradients, and the counts. For kernels' tests, with
/// `tally::assert_same_on_1_2_3_threads`.
#[cfg(test)]
pub(crate) fn step_bits(
    kernel: &mut impl Kernel<crate::Counted<f64>>,
    x: &[f64],
    params: &[&[f64]],
    dy: &[f64],
) -> (Vec<u64>, crate::Counts) {
    use crate::{Counted, tally};
    let (x, dy) = (Counted::vec(x), Counted::vec(dy));
    let params: Vec<Vec<Counted<f64>>> = params.iter().map(|p| Counted::vec(p)).collect();
    let params: Vec<&[Counted<f64>]> = params.iter().map(Vec::as_slice).collect();
    let zero = Counted::new(0.0);
    let mut y = vec![zero; dy.len()];
    let mut dx = vec![zero; x.len()];
    let mut dparams: Vec<Vec<Counted<f64>>> = params.iter().map(|p| vec![zero; p.len()]).collect();
    let ((), counts) = tally::measure(|| {
        kernel.forward(&[&x], &params, &mut y);
        let mut dp: Vec<&mut [Counted<f64>]> = dparams.iter_mut().map(Vec::as_mut_slice).collect();
        kernel.backward(Backward {
            x: &[&x],
            y: &y,
            dy: &dy,
            params: &params,
            dparams: &mut dp,
            dx: &mut [Some(&mut dx)],
        });
    });
    let bits = [y, dx]
        .iter()
        .chain(&dparams)
        .flatten()
        .map(|v| v.get().to_bits())
        .collect();
    (bits, counts)
}
