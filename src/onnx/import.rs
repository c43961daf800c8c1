//! An ONNX graph as a [`Model`]'s `graph`: each ONNX node becomes an entry of the operation
//! that computes the same thing, so an ONNX file and its RON twin are the same model from
//! the plan on. Nodes that only compute shapes (Shape, Gather, Unsqueeze, Concat, Constant
//! feeding a Reshape) are evaluated (`constant.rs`) and leave nothing behind; nodes that move no
//! number (Identity, Dropout, a Reshape or Flatten of a value already flat) become aliases;
//! a MatMul or bias-less Conv followed by the Add of a bias is one Dense or Conv2d; an
//! element-wise operation of a value and a constant is a `ConstOp`.
//! Everything else is refused, naming the node: nothing is ever counted as zero.
//!
//! This file reads the graph (its input, output and order) and dispatches each node; the
//! nodes with parameters or windows are mapped in `import/layers.rs`, element-wise
//! arithmetic in `import/arith.rs`, the ones that only change shapes in `import/shapes.rs`,
//! the exact GELU's pattern in `import/gelu.rs`.

mod arith;
mod gelu;
mod layers;
mod shapes;

use gelu::{erf_gelus, erf_refusal, exact_gelu};

use std::collections::{BTreeSet, HashMap, HashSet};

use super::constant::{FLOAT, INT32, INT64, Tensor, fold, shape_of};
use super::proto::{Attribute, Dim, GraphProto, NodeProto, ValueInfo};
use super::{Import, SUPPORTED};
use crate::model::{Entry, Init, Layer, Loss, Model, Params};
use crate::nn::ops;
use crate::plan::INPUT;
use crate::shape::Shape;

/// A message for the caller to put the file's name in front of.
pub(crate) type Result<T> = std::result::Result<T, String>;

/// A value the network computes: the entry that computes it, its shape there, and its
/// shape as ONNX sees it (they differ after GlobalAveragePool: `[c]` here, `[c, 1, 1]` in
/// ONNX). Both without the batch.
#[derive(Clone, Debug)]
struct Act {
    entry: String,
    ours: Shape,
    onnx: Vec<usize>,
}

#[derive(Clone, Debug)]
enum Value {
    Act(Act),
    Const(Tensor),
}

/// What the importer needs of the file besides its graph.
pub(crate) struct Source<'g, 'a> {
    pub graph: &'g GraphProto<'a>,
    /// The initializers, read.
    pub initializers: HashMap<&'a str, Tensor>,
    pub name: String,
}

/// One node's place, for messages: `node 3 (/layer1/conv1/Conv, Conv)`.
fn place(index: usize, node: &NodeProto<'_>) -> String {
    let name = if node.name.is_empty() {
        node.outputs.first().copied().unwrap_or("")
    } else {
        node.name
    };
    format!("node {index} ({name}, {})", node.op_type)
}

/// The graph as a model: entries in an order where each comes after what it reads.
pub(crate) fn model(src: Source<'_, '_>, import: &Import) -> Result<Model> {
    let g = src.graph;
    let (input_name, input) = graph_input(g, &src.initializers, import)?;
    let output = match &g.outputs[..] {
        [o] => o,
        outs => {
            return Err(format!(
                "the graph has {} outputs; opcount counts models of one output",
                outs.len()
            ));
        }
    };
    let order = topological(g, &src.initializers, input_name)?;
    let mut b = Builder {
        values: HashMap::new(),
        entries: Vec::new(),
        names: HashSet::new(),
        uses: HashMap::new(),
        erf_inputs: HashSet::new(),
        produced: HashMap::new(),
        held_as_onnx: HashMap::new(),
        input_batch: input.batch,
    };
    for node in &g.nodes {
        for &i in &node.inputs {
            *b.uses.entry(i).or_insert(0) += 1;
            if node.op_type == "Erf" {
                b.erf_inputs.insert(i);
            }
        }
    }
    *b.uses.entry(output.name).or_insert(0) += 1;
    for (name, t) in src.initializers {
        b.values.insert(name.to_string(), Value::Const(t));
    }
    let ids = input.ids;
    let ours = Shape::new(&input.dims).ok_or_else(|| {
        format!(
            "input '{input_name}': {} dimensions per example; opcount takes 1 to 3",
            input.dims.len()
        )
    })?;
    b.values.insert(
        input_name.to_string(),
        Value::Act(Act {
            entry: INPUT.to_string(),
            ours,
            onnx: input.dims.clone(),
        }),
    );
    let erf_gelus = erf_gelus(g, &b.values);
    let absorbed: HashSet<usize> = erf_gelus.values().flat_map(|(_, inner)| *inner).collect();
    for &k in order.iter().filter(|k| !absorbed.contains(k)) {
        let node = &g.nodes[k];
        let done = match erf_gelus.get(&k) {
            Some((x, _)) => b.erf_gelu(node, x, import.gelu_as_tanh),
            None => b.node(node, import.gelu_as_tanh),
        };
        done.map_err(|e| format!("{}: {e}", place(k, node)))?;
    }
    let out = match b.values.get(output.name) {
        Some(Value::Act(a)) => a.clone(),
        _ => {
            return Err(format!(
                "the graph's output '{}' is a constant or not computed; nothing to count",
                output.name
            ));
        }
    };
    if out.entry == INPUT {
        return Err("the graph's output is its input: nothing to count".into());
    }
    check_declared(output, &out.onnx, "output")?;
    // Every node left must lead to the output (the plan refuses a node whose output goes
    // nowhere); the output's node comes last.
    let last = b
        .entries
        .iter()
        .rposition(|e| e.name.as_deref() == Some(&out.entry));
    if let Some(at) = last
        && at + 1 != b.entries.len()
    {
        let dead = b.entries[at + 1].name.clone().unwrap_or_default();
        return Err(format!(
            "node '{dead}' computes a value the graph's output does not depend on"
        ));
    }
    // A classifier's logits, flat or one row per token of token ids (next-token
    // prediction), are trained against classes; a softmax's probabilities, or anything
    // else, against values.
    let softmax = matches!(
        b.entries.last(),
        Some(Entry {
            op: Layer::Softmax,
            ..
        })
    );
    let classes = match out.ours.dims() {
        [n] => *n >= 2,
        [_, n] => *n >= 2 && ids,
        _ => false,
    };
    let loss = import.loss.unwrap_or(if classes && !softmax {
        Loss::SoftmaxCrossEntropy
    } else {
        Loss::Mse
    });
    Ok(Model {
        name: src.name,
        input: input.dims,
        layers: Vec::new(),
        graph: b.entries,
        loss,
        init: Init::default(),
        training: None,
    })
}

/// The graph's one input: its name and one example's dimensions.
struct Input {
    dims: Vec<usize>,
    /// It holds token ids (whole numbers).
    ids: bool,
    /// The batch size the file fixes, if any.
    batch: Option<i64>,
}

fn graph_input<'a>(
    g: &GraphProto<'a>,
    initializers: &HashMap<&'a str, Tensor>,
    import: &Import,
) -> Result<(&'a str, Input)> {
    let inputs: Vec<&ValueInfo<'a>> = g
        .inputs
        .iter()
        .filter(|v| !initializers.contains_key(v.name))
        .collect();
    let v = match inputs[..] {
        [v] => v,
        _ => {
            let names: Vec<&str> = inputs.iter().map(|v| v.name).collect();
            return Err(format!(
                "the graph has {} inputs ({}); opcount counts models of one input",
                names.len(),
                names.join(", ")
            ));
        }
    };
    if !matches!(v.elem_type, FLOAT | INT64 | INT32) {
        return Err(format!(
            "input '{}': element type {}; opcount reads float inputs, or int64 token ids",
            v.name, v.elem_type
        ));
    }
    let Some(dims) = &v.dims else {
        return match &import.input_shape {
            Some(shape) => Ok((
                v.name,
                Input {
                    dims: shape.clone(),
                    ids: v.elem_type != FLOAT,
                    batch: None,
                },
            )),
            None => Err(format!(
                "input '{}' declares no shape; give one example's with --input-shape",
                v.name
            )),
        };
    };
    let (batch, rest) = match dims.split_first() {
        Some((b, rest)) if !rest.is_empty() => (b, rest),
        _ => {
            return Err(format!(
                "input '{}': {} dimensions; opcount expects the batch first, then one \
                 example's dimensions",
                v.name,
                dims.len()
            ));
        }
    };
    let batch = match *batch {
        Dim::Value(b) => Some(b),
        _ => None,
    };
    let known: Option<Vec<usize>> = rest
        .iter()
        .map(|d| match *d {
            Dim::Value(n) if n > 0 => usize::try_from(n).ok(),
            _ => None,
        })
        .collect();
    let shown = |d: &[Dim<'_>]| {
        d.iter()
            .map(|d| match d {
                Dim::Value(n) => n.to_string(),
                Dim::Param(p) => (*p).to_string(),
                Dim::Unknown => "?".into(),
            })
            .collect::<Vec<_>>()
            .join("x")
    };
    let dims = match (known, &import.input_shape) {
        (Some(k), Some(given)) if &k != given => {
            return Err(format!(
                "input '{}' is {} per example, but --input-shape says {}",
                v.name,
                shown(rest),
                given
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join("x")
            ));
        }
        (Some(k), _) => k,
        (None, Some(given)) if given.len() == rest.len() => given.clone(),
        (None, Some(given)) => {
            return Err(format!(
                "input '{}' has {} dimensions per example ({}), --input-shape gives {}",
                v.name,
                rest.len(),
                shown(rest),
                given.len()
            ));
        }
        (None, None) => {
            return Err(format!(
                "input '{}' is {} per example, not all sizes known; give them with \
                 --input-shape (e.g. --input-shape 3,32,32)",
                v.name,
                shown(rest)
            ));
        }
    };
    let ids = v.elem_type != FLOAT;
    Ok((v.name, Input { dims, ids, batch }))
}

/// A declared shape (the graph's output's) that disagrees with the computed one.
fn check_declared(v: &ValueInfo<'_>, onnx: &[usize], what: &str) -> Result<()> {
    let Some(dims) = &v.dims else { return Ok(()) };
    let declared = dims.get(1..).unwrap_or(&[]);
    let fits = declared.len() == onnx.len()
        && declared.iter().zip(onnx).all(|(d, &n)| match *d {
            Dim::Value(k) => k == n as i64,
            _ => true,
        });
    if fits {
        return Ok(());
    }
    let shown: Vec<String> = declared
        .iter()
        .map(|d| match d {
            Dim::Value(n) => n.to_string(),
            _ => "?".into(),
        })
        .collect();
    let ours: Vec<String> = onnx.iter().map(|n| n.to_string()).collect();
    Err(format!(
        "{what} '{}' is declared {} per example, but its nodes compute {}",
        v.name,
        shown.join("x"),
        ours.join("x")
    ))
}

/// The nodes in an order where each comes after the nodes whose outputs it reads, the
/// file's order where it can; a cycle, a value read that nothing provides, or a value
/// written twice is an error naming the node.
fn topological(
    g: &GraphProto<'_>,
    initializers: &HashMap<&str, Tensor>,
    input: &str,
) -> Result<Vec<usize>> {
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (k, node) in g.nodes.iter().enumerate() {
        for &o in node.outputs.iter().filter(|o| !o.is_empty()) {
            if producer.insert(o, k).is_some() || o == input || initializers.contains_key(o) {
                return Err(format!(
                    "{}: writes '{o}', which another node, an initializer or the input \
                     also provides",
                    place(k, node)
                ));
            }
        }
    }
    let mut waits = vec![0usize; g.nodes.len()];
    let mut readers: Vec<Vec<usize>> = vec![Vec::new(); g.nodes.len()];
    for (k, node) in g.nodes.iter().enumerate() {
        for &i in node.inputs.iter().filter(|i| !i.is_empty()) {
            match producer.get(i) {
                Some(&p) => {
                    waits[k] += 1;
                    readers[p].push(k);
                }
                None if i == input || initializers.contains_key(i) => {}
                None => {
                    return Err(format!(
                        "{}: reads '{i}', which no node, initializer or input provides",
                        place(k, node)
                    ));
                }
            }
        }
    }
    let mut ready: BTreeSet<usize> = (0..g.nodes.len()).filter(|&k| waits[k] == 0).collect();
    let mut order = Vec::with_capacity(g.nodes.len());
    while let Some(k) = ready.pop_first() {
        order.push(k);
        for &r in &readers[k] {
            waits[r] -= 1;
            if waits[r] == 0 {
                ready.insert(r);
            }
        }
    }
    if let Some(k) = (0..g.nodes.len()).find(|&k| waits[k] > 0) {
        return Err(format!(
            "{}: is part of a cycle (it reads, through other nodes, its own output)",
            place(k, &g.nodes[k])
        ));
    }
    Ok(order)
}

struct Builder<'a> {
    values: HashMap<String, Value>,
    entries: Vec<Entry>,
    names: HashSet<String>,
    /// How many nodes (and the graph's output) read each value.
    uses: HashMap<&'a str, usize>,
    /// The ONNX value each entry's node wrote, by entry name.
    produced: HashMap<String, String>,
    /// A value held otherwise here than in ONNX, by its entry's name: the Reshape that
    /// holds it as ONNX does, made for the first broadcast that needed it.
    held_as_onnx: HashMap<String, Act>,
    /// The values Erf nodes read: the exact GELU's pattern, refused by name.
    erf_inputs: HashSet<&'a str>,
    input_batch: Option<i64>,
}

fn attr<'n, 'a>(node: &'n NodeProto<'a>, name: &str) -> Option<&'n Attribute<'a>> {
    node.attributes.iter().find(|a| a.name == name)
}

pub(super) fn attr_i(node: &NodeProto<'_>, name: &str, default: i64) -> i64 {
    attr(node, name).and_then(|a| a.i).unwrap_or(default)
}

fn attr_f(node: &NodeProto<'_>, name: &str, default: f32) -> f32 {
    attr(node, name).and_then(|a| a.f).unwrap_or(default)
}

fn attr_ints<'n>(node: &'n NodeProto<'_>, name: &str) -> Option<&'n [i64]> {
    attr(node, name).map(|a| &a.ints[..])
}

fn attr_s<'n>(node: &'n NodeProto<'_>, name: &str) -> Option<&'n [u8]> {
    attr(node, name).and_then(|a| a.s)
}

/// A node's name for the entries it becomes: its own, or its first output's if it has none.
fn node_name<'n>(node: &NodeProto<'n>) -> &'n str {
    if node.name.is_empty() {
        node.outputs.first().copied().unwrap_or("node")
    } else {
        node.name
    }
}

fn shown(dims: &[usize]) -> String {
    dims.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join("x")
}

impl<'a> Builder<'a> {
    fn get(&self, name: &str) -> Result<&Value> {
        self.values
            .get(name)
            .ok_or_else(|| format!("reads '{name}', which is not computed"))
    }

    fn act(&self, node: &NodeProto<'_>, i: usize) -> Result<Act> {
        let name = node.inputs.get(i).copied().unwrap_or("");
        match self.get(name)? {
            Value::Act(a) => Ok(a.clone()),
            Value::Const(_) => Err(format!(
                "input {i} ('{name}') is a constant; opcount maps this operation on \
                 computed values only"
            )),
        }
    }

    fn constant(&self, node: &NodeProto<'_>, i: usize) -> Result<Option<Tensor>> {
        match node.inputs.get(i).copied() {
            None | Some("") => Ok(None),
            Some(name) => match self.get(name)? {
                Value::Const(t) => Ok(Some(t.clone())),
                Value::Act(_) => Err(format!(
                    "input {i} ('{name}') is computed; opcount needs it as an initializer"
                )),
            },
        }
    }

    fn floats(&self, node: &NodeProto<'_>, i: usize, what: &str) -> Result<Tensor> {
        let t = self
            .constant(node, i)?
            .ok_or_else(|| format!("no {what} (input {i})"))?;
        if t.floats().is_none() {
            return Err(format!(
                "{what} (input {i}) holds whole numbers, not floats"
            ));
        }
        Ok(t)
    }

    fn set(&mut self, node: &NodeProto<'_>, value: Value) -> Result<()> {
        let out = node.outputs.first().copied().unwrap_or("");
        if out.is_empty() {
            return Err("has no output".into());
        }
        // Outputs past the first (Dropout's mask, MaxPool's indices, BatchNormalization's
        // running statistics) must go unread: opcount does not compute them.
        if let Some(o) = node.outputs[1..]
            .iter()
            .find(|o| !o.is_empty() && self.uses.get(*o).copied().unwrap_or(0) > 0)
        {
            return Err(format!(
                "its output '{o}' is read, and opcount computes only the first"
            ));
        }
        self.values.insert(out.to_string(), value);
        Ok(())
    }

    /// A new entry computing `layer` from `inputs`, its shape from the operation's own shape
    /// rule (the plan's).
    fn push(&mut self, node: &NodeProto<'_>, layer: Layer, inputs: &[&Act]) -> Result<Act> {
        self.push_with(node, layer, inputs, Vec::new())
    }

    /// [`Builder::push`], with named tensors for the entry's `params` (a norm's `gamma` and
    /// `beta`, running statistics, an embedding's `table`).
    pub(super) fn push_with(
        &mut self,
        node: &NodeProto<'_>,
        layer: Layer,
        inputs: &[&Act],
        params: Vec<(&str, Tensor)>,
    ) -> Result<Act> {
        let out = node.outputs.first().copied().unwrap_or("");
        self.push_entry(node_name(node), out, layer, inputs, params)
    }

    /// A new entry computing `layer` from `inputs`, named `base` (made unique), which
    /// computes the ONNX value `out` (empty for an entry of opcount's own).
    fn push_entry(
        &mut self,
        base: &str,
        out: &str,
        layer: Layer,
        inputs: &[&Act],
        params: Vec<(&str, Tensor)>,
    ) -> Result<Act> {
        let shapes: Vec<Shape> = inputs.iter().map(|a| a.ours).collect();
        let op = ops::resolve(&layer, &shapes)?;
        let mut name = base.to_string();
        let mut k = 1;
        while name == INPUT || self.names.contains(&name) {
            k += 1;
            name = format!("{base}#{k}");
        }
        self.names.insert(name.clone());
        self.produced.insert(name.clone(), out.to_string());
        self.entries.push(Entry {
            name: Some(name.clone()),
            op: layer,
            inputs: Some(inputs.iter().map(|a| a.entry.clone()).collect()),
            share: None,
            params: (!params.is_empty()).then(|| {
                Params(
                    params
                        .into_iter()
                        .map(|(n, t)| (n.to_string(), t.floats().unwrap_or(&[]).to_vec()))
                        .collect(),
                )
            }),
        });
        let ours = op.output();
        Ok(Act {
            entry: name,
            ours,
            onnx: ours.dims().to_vec(),
        })
    }

    fn node(&mut self, node: &NodeProto<'_>, gelu_as_tanh: bool) -> Result<()> {
        if !node.domain.is_empty() && node.domain != "ai.onnx" {
            return Err(format!(
                "operator domain '{}' is not ONNX's own; opcount maps {SUPPORTED}",
                node.domain
            ));
        }
        if node.attributes.iter().any(|a| a.graph) {
            return Err(format!("holds a subgraph; opcount maps {SUPPORTED}"));
        }
        // A node whose every input is a constant computes a constant: a shape, folded here.
        let all_const = !node.inputs.is_empty()
            && node
                .inputs
                .iter()
                .all(|i| i.is_empty() || matches!(self.values.get(*i), Some(Value::Const(_))));
        if all_const || node.op_type == "Constant" {
            let inputs = (0..node.inputs.len())
                .map(|i| self.constant(node, i))
                .collect::<Result<Vec<_>>>()?;
            let t = fold(node, &inputs)?;
            return self.set(node, Value::Const(t));
        }
        let value = match node.op_type {
            "Identity" | "Dropout" => Value::Act(self.act(node, 0)?),
            "Shape" => Value::Const(shape_of(node, &self.act(node, 0)?.onnx)),
            "Relu" | "Sigmoid" | "Tanh" | "Gelu" | "Softmax" => {
                let x = self.act(node, 0)?;
                let layer = match node.op_type {
                    "Relu" => Layer::Relu,
                    "Sigmoid" => Layer::Sigmoid,
                    "Tanh" => Layer::Tanh,
                    "Gelu" => match attr_s(node, "approximate") {
                        Some(b"tanh") => Layer::Gelu,
                        _ => exact_gelu(gelu_as_tanh),
                    },
                    _ => {
                        // Over the last axis (the batch is axis 0), of a value held as
                        // ONNX holds it.
                        let axis = attr_i(node, "axis", -1);
                        let last = axis == -1 || axis == x.onnx.len() as i64;
                        if !last || x.ours.dims() != x.onnx {
                            return Err(format!(
                                "softmax over axis {axis} of a {} value: opcount's Softmax \
                                 works over the last axis",
                                shown(&x.onnx)
                            ));
                        }
                        Layer::Softmax
                    }
                };
                // Value by value: the shape ONNX sees stays (`[c, 1, 1]` held as `[c]`).
                let mut y = self.push(node, layer, &[&x])?;
                y.onnx = x.onnx;
                Value::Act(y)
            }
            "Conv" => Value::Act(self.conv(node)?),
            "Gemm" => Value::Act(self.gemm(node)?),
            "MatMul" => Value::Act(self.matmul(node)?),
            "BatchNormalization" => {
                let x = self.act(node, 0)?;
                let Some((c, _, _)) = x.ours.as_image() else {
                    return Err(format!(
                        "expects an image [channels, height, width], found {}",
                        shown(&x.onnx)
                    ));
                };
                let mut params = Vec::with_capacity(4);
                for (i, what, name) in [
                    (1, "scale", "gamma"),
                    (2, "bias", "beta"),
                    (3, "mean", "running_mean"),
                    (4, "variance", "running_var"),
                ] {
                    let t = self.floats(node, i, what)?;
                    if t.len() != c {
                        return Err(format!("{what} of {} values for {c} channels", t.len()));
                    }
                    params.push((name, t));
                }
                Value::Act(self.push_with(node, Layer::BatchNorm2d, &[&x], params)?)
            }
            "LayerNormalization" => {
                let x = self.act(node, 0)?;
                let axis = attr_i(node, "axis", -1);
                if !(axis == -1 || axis == x.onnx.len() as i64) {
                    return Err(format!(
                        "axis {axis}: opcount's LayerNorm normalises over the last axis only"
                    ));
                }
                let width = *x.onnx.last().expect("rank at least 1");
                let scale = self.floats(node, 1, "scale")?;
                let bias = self.constant(node, 2)?.ok_or(
                    "no bias (input 2): opcount's LayerNorm has a learnable shift; \
                     export with bias=True",
                )?;
                if scale.len() != width || bias.len() != width || bias.floats().is_none() {
                    return Err(format!(
                        "scale and bias of {} and {} values for a width of {width}",
                        scale.len(),
                        bias.len()
                    ));
                }
                let params = vec![("gamma", scale), ("beta", bias)];
                Value::Act(self.push_with(node, Layer::LayerNorm, &[&x], params)?)
            }
            "MaxPool" | "AveragePool" => Value::Act(self.pool(node)?),
            "GlobalAveragePool" => {
                let x = self.act(node, 0)?;
                let mut a = self.push(node, Layer::GlobalAvgPool2d, &[&x])?;
                a.onnx = vec![a.ours.len(), 1, 1];
                Value::Act(a)
            }
            "Flatten" => {
                let x = self.act(node, 0)?;
                let axis = attr_i(node, "axis", 1);
                if axis != 1 {
                    return Err(format!(
                        "axis {axis}: opcount flattens each example (axis 1)"
                    ));
                }
                let len = x.onnx.iter().product();
                Value::Act(self.flatten(node, x, len)?)
            }
            "Reshape" => self.reshape(node)?,
            "Squeeze" | "Unsqueeze" => self.squeeze(node)?,
            "ReduceMean" => self.reduce_mean(node)?,
            "Pow" => self.square(node)?,
            "Sqrt" => {
                let x = self.act(node, 0)?;
                let mut y = self.push(node, Layer::Sqrt, &[&x])?;
                y.onnx = x.onnx;
                Value::Act(y)
            }
            "Clip" => self.clip(node)?,
            "Transpose" => {
                let x = self.act(node, 0)?;
                let perm = attr_ints(node, "perm").unwrap_or(&[]);
                let identity = perm.iter().enumerate().all(|(i, &p)| p == i as i64);
                // The batch stays first; the rest is one example's axes (ONNX's less one).
                if perm.first() != Some(&0)
                    || perm[1..].iter().any(|&p| p < 1)
                    || perm.len() != x.onnx.len() + 1
                {
                    return Err(format!(
                        "perm {perm:?} of a {} value: opcount keeps the batch first and \
                         orders an example's axes",
                        shown(&x.onnx)
                    ));
                }
                if identity {
                    Value::Act(x)
                } else if x.ours.dims() != x.onnx {
                    return Err(format!(
                        "perm {perm:?} of a value held as {} here ({} in ONNX)",
                        x.ours,
                        shown(&x.onnx)
                    ));
                } else {
                    let ours = perm[1..].iter().map(|&p| p as usize - 1).collect();
                    let layer = Layer::Transpose { perm: ours };
                    Value::Act(self.push(node, layer, &[&x])?)
                }
            }
            "Gather" => Value::Act(self.embedding(node)?),
            "Erf" => return Err(erf_refusal()),
            "Div" | "Mul" if self.feeds_erf(node) => return Err(erf_refusal()),
            "Add" | "Sub" | "Mul" | "Div" => self.arith(node)?,
            other => {
                return Err(format!(
                    "{other} is not supported (it would be counted as nothing, which \
                     opcount never does); opcount maps {SUPPORTED}"
                ));
            }
        };
        self.set(node, value)
    }
}
