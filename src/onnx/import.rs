//! An ONNX graph as a [`Model`]'s `graph`: each ONNX node becomes an entry of the operation
//! that computes the same thing, so an ONNX file and its RON twin are the same model from
//! the plan on. Nodes that only compute shapes (Shape, Gather, Unsqueeze, Concat, Constant
//! feeding a Reshape) are evaluated (`constant.rs`) and leave nothing behind; nodes that move no
//! number (Identity, Dropout, a Reshape or Flatten of a value already flat) become aliases;
//! a MatMul or bias-less Conv followed by the Add of a bias is one Dense or Conv2d.
//! Everything else is refused, naming the node: nothing is ever counted as zero.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::constant::{FLOAT, INT32, INT64, Tensor, fold, ints_shown, shape_of};
use super::proto::{Attribute, Dim, GraphProto, NodeProto, ValueInfo};
use super::{Import, SUPPORTED};
use crate::model::{Entry, Init, Layer, Loss, Model, Pair};
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
    let erf_gelus = if import.gelu_as_tanh {
        erf_gelus(g, &b.values)
    } else {
        HashMap::new()
    };
    let absorbed: HashSet<usize> = erf_gelus.values().flat_map(|(_, inner)| *inner).collect();
    for &k in order.iter().filter(|k| !absorbed.contains(k)) {
        let node = &g.nodes[k];
        let done = match erf_gelus.get(&k) {
            Some((x, _)) => b.erf_gelu(node, x),
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

fn shown(dims: &[usize]) -> String {
    dims.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join("x")
}

/// `[a, a]` (or nothing, `default`) as one size: opcount's windows are square.
fn square(node: &NodeProto<'_>, name: &str, default: usize) -> Result<usize> {
    match attr_ints(node, name) {
        None => Ok(default),
        Some([a, b]) if a == b && *a >= 0 => Ok(*a as usize),
        Some(v) => Err(format!(
            "{name} {v:?}: opcount takes the same size along both axes"
        )),
    }
}

/// `[along the height, along the width]` (or nothing, `default` for both).
fn pair(node: &NodeProto<'_>, name: &str, default: usize) -> Result<Pair> {
    match attr_ints(node, name) {
        None => Ok(Pair::square(default)),
        Some(&[h, w]) if h >= 0 && w >= 0 => Ok(Pair {
            height: h as usize,
            width: w as usize,
        }),
        Some(v) => Err(format!(
            "{name} {v:?}: expected two sizes, height and width"
        )),
    }
}

/// Pads `[top, left, bottom, right]` as a pair, the same above as below and left as right.
fn pad_pair(node: &NodeProto<'_>) -> Result<Pair> {
    auto_pad(node)?;
    match attr_ints(node, "pads") {
        None => Ok(Pair::square(0)),
        Some(&[t, l, b, r]) if t == b && l == r && t >= 0 && l >= 0 => Ok(Pair {
            height: t as usize,
            width: l as usize,
        }),
        Some(v) => Err(format!(
            "pads {v:?}: opcount takes the same padding above as below, and left as right"
        )),
    }
}

fn auto_pad(node: &NodeProto<'_>) -> Result<()> {
    match attr_s(node, "auto_pad") {
        None | Some(b"NOTSET") | Some(b"VALID") => Ok(()),
        Some(other) => Err(format!(
            "auto_pad {}: opcount takes explicit pads (re-export with padding given)",
            String::from_utf8_lossy(other)
        )),
    }
}

/// Pads `[top, left, bottom, right]` as one size, all four equal.
fn pads(node: &NodeProto<'_>) -> Result<usize> {
    auto_pad(node)?;
    match attr_ints(node, "pads") {
        None => Ok(0),
        Some([a, b, c, d]) if a == b && b == c && c == d && *a >= 0 => Ok(*a as usize),
        Some(v) => Err(format!(
            "pads {v:?}: opcount takes the same padding on every side"
        )),
    }
}

fn dilations_one(node: &NodeProto<'_>) -> Result<()> {
    match attr_ints(node, "dilations") {
        Some(d) if d.iter().any(|&x| x != 1) => {
            Err(format!("dilations {d:?}: opcount takes dilation 1"))
        }
        _ => Ok(()),
    }
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
        let shapes: Vec<Shape> = inputs.iter().map(|a| a.ours).collect();
        let op = ops::resolve(&layer, &shapes)?;
        let base = if node.name.is_empty() {
            node.outputs.first().copied().unwrap_or("node")
        } else {
            node.name
        };
        let mut name = base.to_string();
        let mut k = 1;
        while name == INPUT || self.names.contains(&name) {
            k += 1;
            name = format!("{base}#{k}");
        }
        self.names.insert(name.clone());
        let out = node.outputs.first().copied().unwrap_or("");
        self.produced.insert(name.clone(), out.to_string());
        self.entries.push(Entry {
            name: Some(name.clone()),
            op: layer,
            inputs: Some(inputs.iter().map(|a| a.entry.clone()).collect()),
            share: None,
        });
        let ours = op.output();
        Ok(Act {
            entry: name,
            ours,
            onnx: ours.dims().to_vec(),
        })
    }

    /// The last node of an exact GELU's pattern, whose input is `x`: opcount's Gelu of `x`.
    fn erf_gelu(&mut self, node: &NodeProto<'_>, x: &str) -> Result<()> {
        let x = match self.get(x)? {
            Value::Act(a) => a.clone(),
            Value::Const(_) => return Err("a GELU of a constant".into()),
        };
        let y = self.push(node, Layer::Gelu, &[&x])?;
        self.set(node, Value::Act(y))
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
                    "Gelu" => {
                        match attr_s(node, "approximate") {
                            Some(b"tanh") => {}
                            _ if gelu_as_tanh => {}
                            _ => return Err(gelu_erf()),
                        }
                        Layer::Gelu
                    }
                    _ => {
                        let axis = attr_i(node, "axis", -1);
                        if x.onnx.len() != 1 || !(axis == -1 || axis == 1) {
                            return Err(format!(
                                "softmax over axis {axis} of a {} value: opcount's Softmax \
                                 takes each example's values, flat",
                                shown(&x.onnx)
                            ));
                        }
                        Layer::Softmax
                    }
                };
                Value::Act(self.push(node, layer, &[&x])?)
            }
            "Conv" => Value::Act(self.conv(node)?),
            "Gemm" => Value::Act(self.gemm(node)?),
            "MatMul" => Value::Act(self.matmul(node)?),
            "Add" => self.add(node)?,
            "BatchNormalization" => {
                let x = self.act(node, 0)?;
                let Some((c, _, _)) = x.ours.as_image() else {
                    return Err(format!(
                        "expects an image [channels, height, width], found {}",
                        shown(&x.onnx)
                    ));
                };
                for (i, what) in [(1, "scale"), (2, "bias"), (3, "mean"), (4, "variance")] {
                    let t = self.floats(node, i, what)?;
                    if t.len() != c {
                        return Err(format!("{what} of {} values for {c} channels", t.len()));
                    }
                }
                Value::Act(self.push(node, Layer::BatchNorm2d, &[&x])?)
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
                if scale.len() != width || bias.len() != width {
                    return Err(format!(
                        "scale and bias of {} and {} values for a width of {width}",
                        scale.len(),
                        bias.len()
                    ));
                }
                Value::Act(self.push(node, Layer::LayerNorm, &[&x])?)
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
            "Clip" => self.clip(node)?,
            "Transpose" => {
                let x = self.act(node, 0)?;
                let perm = attr_ints(node, "perm").unwrap_or(&[]);
                let identity = perm.iter().enumerate().all(|(i, &p)| p == i as i64);
                if perm.is_empty() || !identity {
                    return Err(format!(
                        "perm {perm:?} moves values around; opcount maps a Transpose only \
                         where it moves nothing"
                    ));
                }
                Value::Act(x)
            }
            "Gather" => Value::Act(self.embedding(node)?),
            "Erf" => return Err(erf_refusal(gelu_as_tanh)),
            "Div" | "Mul" if self.feeds_erf(node) => return Err(erf_refusal(gelu_as_tanh)),
            "Mul" => {
                let (x, y) = (self.act(node, 0)?, self.act(node, 1)?);
                if x.onnx != y.onnx {
                    return Err(format!(
                        "multiplies a {} value by a {} value; opcount multiplies values of \
                         one shape",
                        shown(&x.onnx),
                        shown(&y.onnx)
                    ));
                }
                Value::Act(self.push(node, Layer::Mul, &[&x, &y])?)
            }
            other => {
                return Err(format!(
                    "{other} is not supported (it would be counted as nothing, which \
                     opcount never does); opcount maps {SUPPORTED}"
                ));
            }
        };
        self.set(node, value)
    }

    fn feeds_erf(&self, node: &NodeProto<'_>) -> bool {
        node.outputs.iter().any(|o| self.erf_inputs.contains(o))
    }

    fn flatten(&mut self, node: &NodeProto<'_>, x: Act, len: usize) -> Result<Act> {
        if x.ours.rank() == 1 {
            // Already flat here (after GlobalAveragePool): nothing moves.
            return Ok(Act {
                onnx: vec![len],
                ..x
            });
        }
        self.push(node, Layer::Flatten, &[&x])
    }

    fn conv(&mut self, node: &NodeProto<'_>) -> Result<Act> {
        let x = self.act(node, 0)?;
        let Some((c, _, _)) = x.ours.as_image() else {
            return Err(format!(
                "expects an image [channels, height, width], found {}",
                shown(&x.onnx)
            ));
        };
        let w = self.floats(node, 1, "weights")?;
        let &[m, wc, kh, kw] = &w.dims[..] else {
            return Err(format!(
                "weights of shape {}; a 2-D convolution's are out x in x height x width",
                shown(&w.dims)
            ));
        };
        let groups = usize::try_from(attr_i(node, "group", 1))
            .ok()
            .filter(|&g| g >= 1)
            .ok_or_else(|| format!("group {}: expected 1 or more", attr_i(node, "group", 1)))?;
        if wc.checked_mul(groups) != Some(c) {
            let per_group = if groups == 1 {
                String::new()
            } else {
                format!(" per group of {groups}")
            };
            return Err(format!(
                "weights for {wc} input channels{per_group}, but its input has {c} ({})",
                shown(&x.onnx)
            ));
        }
        if let Some(k) = attr_ints(node, "kernel_shape")
            && k != [kh as i64, kw as i64]
        {
            return Err(format!("kernel_shape {k:?} but weights of {kh}x{kw}"));
        }
        dilations_one(node)?;
        let stride = pair(node, "strides", 1)?;
        let padding = pad_pair(node)?;
        let b = self.constant(node, 2)?;
        if let Some(b) = &b
            && (b.len() != m || b.floats().is_none())
        {
            return Err(format!(
                "bias of {} values for {m} output channels",
                b.len()
            ));
        }
        let layer = Layer::Conv2d {
            out_channels: m,
            kernel: Pair {
                height: kh,
                width: kw,
            },
            stride,
            padding,
            groups,
            bias: b.is_some(),
            activation: None,
            name: None,
            weights: w.floats().map(<[f32]>::to_vec),
            biases: b.as_ref().and_then(|b| b.floats()).map(<[f32]>::to_vec),
        };
        self.push(node, layer, &[&x])
    }

    fn gemm(&mut self, node: &NodeProto<'_>) -> Result<Act> {
        let x = self.act(node, 0)?;
        let (alpha, beta) = (attr_f(node, "alpha", 1.0), attr_f(node, "beta", 1.0));
        if alpha != 1.0 || beta != 1.0 || attr_i(node, "transA", 0) != 0 {
            return Err(format!(
                "alpha {alpha}, beta {beta}, transA {}: opcount maps Gemm as a dense layer \
                 (alpha 1, beta 1, transA 0)",
                attr_i(node, "transA", 0)
            ));
        }
        let Some(n) = x.ours.as_flat() else {
            return Err(format!("expects a flat input, found {}", shown(&x.onnx)));
        };
        let w = self.floats(node, 1, "weights")?;
        let weights = dense_weights(&w, n, attr_i(node, "transB", 0) != 0)?;
        let units = weights.len() / n;
        let b = self.constant(node, 2)?;
        if let Some(b) = &b
            && (b.len() != units || b.floats().is_none())
        {
            return Err(format!("bias of {} values for {units} units", b.len()));
        }
        let layer = Layer::Dense {
            units,
            activation: None,
            bias: b.is_some(),
            name: None,
            weights: Some(weights),
            biases: b.as_ref().and_then(|b| b.floats()).map(<[f32]>::to_vec),
        };
        self.push(node, layer, &[&x])
    }

    fn matmul(&mut self, node: &NodeProto<'_>) -> Result<Act> {
        let x = self.act(node, 0)?;
        let b = node.inputs.get(1).copied().unwrap_or("");
        if let Ok(Value::Act(_)) = self.get(b) {
            return Err(format!(
                "a product of two computed values ('{}' and '{b}'), as attention's are: \
                 opcount maps a MatMul by weights only; its attention is the causal Scores, \
                 CausalSoftmax and Mix a RON model writes (docs/transformers.md)",
                node.inputs[0]
            ));
        }
        let n = *x.ours.dims().last().expect("rank at least 1");
        if !matches!(x.ours.rank(), 1 | 2) {
            return Err(format!(
                "a matrix product of a {} value: opcount's Dense takes a flat value or \
                 [tokens, width]",
                shown(&x.onnx)
            ));
        }
        let w = self.floats(node, 1, "weights")?;
        let weights = dense_weights(&w, n, false)?;
        let layer = Layer::Dense {
            units: weights.len() / n,
            activation: None,
            bias: false,
            name: None,
            weights: Some(weights),
            biases: None,
        };
        self.push(node, layer, &[&x])
    }

    fn add(&mut self, node: &NodeProto<'_>) -> Result<Value> {
        let (a, b) = (node.inputs.first(), node.inputs.get(1));
        let (Some(a), Some(b)) = (a, b) else {
            return Err("expects two inputs".into());
        };
        match (self.get(a)?.clone(), self.get(b)?.clone()) {
            (Value::Act(x), Value::Act(y)) => {
                if x.onnx != y.onnx {
                    return Err(format!(
                        "adds a {} value to a {} value; opcount adds values of one shape",
                        shown(&x.onnx),
                        shown(&y.onnx)
                    ));
                }
                Ok(Value::Act(self.push(node, Layer::Add, &[&x, &y])?))
            }
            (Value::Act(x), Value::Const(t)) | (Value::Const(t), Value::Act(x)) => {
                let read = if matches!(self.get(a)?, Value::Act(_)) {
                    a
                } else {
                    b
                };
                self.bias(x, t, read).map(Value::Act)
            }
            _ => unreachable!("all-constant nodes are folded"),
        }
    }

    /// The Add of a bias onto the output of a MatMul or a Conv without one, read nowhere
    /// else: the bias becomes theirs.
    fn bias(&mut self, x: Act, t: Tensor, read: &str) -> Result<Act> {
        let refuse = || {
            format!(
                "adds a constant to '{read}'; opcount maps that only as the bias of the \
                 MatMul or Conv that computes it"
            )
        };
        // Read here only, and straight from its node (not through an Identity another node
        // also reads): the bias changes the value every reader sees.
        let direct = self.produced.get(&x.entry).is_some_and(|v| v == read);
        if !direct || self.uses.get(read).copied().unwrap_or(0) != 1 {
            return Err(refuse());
        }
        let Some(values) = t.floats() else {
            return Err(refuse());
        };
        let Some(entry) = self
            .entries
            .iter_mut()
            .find(|e| e.name.as_deref() == Some(&x.entry))
        else {
            return Err(refuse());
        };
        let ones = |dims: &[usize]| dims.iter().all(|&d| d == 1);
        match &mut entry.op {
            Layer::Dense {
                units,
                bias: bias @ false,
                biases,
                ..
            } if t.len() == *units && t.dims.last() == Some(units) => {
                *bias = true;
                *biases = Some(values.to_vec());
            }
            Layer::Conv2d {
                out_channels,
                bias: bias @ false,
                biases,
                ..
            } if t.len() == *out_channels
                && t.dims.len() >= 3
                && ones(&t.dims[t.dims.len() - 2..]) =>
            {
                *bias = true;
                *biases = Some(values.to_vec());
            }
            _ => return Err(refuse()),
        }
        Ok(x)
    }

    fn pool(&mut self, node: &NodeProto<'_>) -> Result<Act> {
        let x = self.act(node, 0)?;
        if x.ours.as_image().is_none() {
            return Err(format!(
                "expects an image [channels, height, width], found {}",
                shown(&x.onnx)
            ));
        }
        let size = square(node, "kernel_shape", 0)?;
        let stride = square(node, "strides", 1)?;
        let padding = pads(node)?;
        dilations_one(node)?;
        if attr_i(node, "ceil_mode", 0) != 0 {
            return Err("ceil_mode 1: opcount's windows round down (ceil_mode 0)".into());
        }
        let layer = if node.op_type == "MaxPool" {
            if attr_i(node, "storage_order", 0) != 0 {
                return Err("storage_order 1 is not supported".into());
            }
            Layer::MaxPool2d {
                size,
                stride: Some(stride),
                padding,
            }
        } else {
            if padding > 0 && attr_i(node, "count_include_pad", 0) == 0 {
                return Err(
                    "count_include_pad 0 with padding: opcount's AvgPool2d divides by the \
                     whole window, as PyTorch's default does (count_include_pad=True)"
                        .into(),
                );
            }
            Layer::AvgPool2d {
                size,
                stride: Some(stride),
                padding,
            }
        };
        self.push(node, layer, &[&x])
    }

    fn reshape(&mut self, node: &NodeProto<'_>) -> Result<Value> {
        let x = self.act(node, 0)?;
        let target = self.constant(node, 1)?.ok_or("no target shape (input 1)")?;
        let Some(t) = target.ints() else {
            return Err("its target shape holds floats".into());
        };
        if attr_i(node, "allowzero", 0) != 0 {
            return Err("allowzero 1 is not supported".into());
        }
        let len: usize = x.onnx.iter().product();
        // The batch stays first: the file's batch size, the batch itself, 0 (copied) or -1
        // with every other size given.
        let Some((&first, rest)) = t.split_first() else {
            return Err("an empty target shape".into());
        };
        let mut dims = Vec::with_capacity(rest.len());
        let mut infer = None;
        for (i, &d) in rest.iter().enumerate() {
            match d {
                Some(0) => dims.push(
                    *x.onnx
                        .get(i)
                        .ok_or_else(|| format!("target {t:?}: 0 copies a size the input lacks"))?,
                ),
                Some(-1) if infer.is_none() => {
                    infer = Some(i);
                    dims.push(1);
                }
                Some(d) if d > 0 => dims.push(d as usize),
                _ => {
                    return Err(format!(
                        "target shape {}: opcount keeps the batch first and every other \
                         size known",
                        ints_shown(t)
                    ));
                }
            }
        }
        let known: usize = dims.iter().product();
        match (first, infer) {
            (None | Some(0), _) => {}
            (Some(-1), None) => {}
            (Some(b), _) if Some(b) == self.input_batch => {}
            _ => {
                return Err(format!(
                    "target shape {}: opcount keeps the batch first",
                    ints_shown(t)
                ));
            }
        }
        if let Some(i) = infer {
            if known == 0 || !len.is_multiple_of(known) {
                return Err(format!(
                    "target shape {} does not fit {} values per example",
                    ints_shown(t),
                    len
                ));
            }
            dims[i] = len / known;
        }
        if dims.iter().product::<usize>() != len {
            return Err(format!(
                "target shape {} does not fit {} ({len} values per example)",
                ints_shown(t),
                shown(&x.onnx)
            ));
        }
        self.reshaped(node, x, dims)
    }

    /// `x` with ONNX's shape `dims` (as many values): the same value where nothing moves
    /// (the same shape, or sizes of 1 added or removed around a flat value), a Flatten
    /// where an example becomes flat; anything else is refused.
    fn reshaped(&mut self, node: &NodeProto<'_>, x: Act, dims: Vec<usize>) -> Result<Value> {
        let len: usize = x.onnx.iter().product();
        if dims.iter().product::<usize>() != len {
            return Err(format!(
                "{} values per example do not fit {}",
                len,
                shown(&dims)
            ));
        }
        if dims == x.onnx {
            return Ok(Value::Act(x));
        }
        if dims.len() == 1 {
            return Ok(Value::Act(self.flatten(node, x, len)?));
        }
        let ones_around = dims.iter().filter(|&&d| d != 1).count() <= 1;
        if x.ours.rank() == 1 && ones_around {
            return Ok(Value::Act(Act { onnx: dims, ..x }));
        }
        Err(format!(
            "reshapes {} into {}: opcount maps only reshapes that flatten each example",
            shown(&x.onnx),
            shown(&dims)
        ))
    }

    /// The axes of `Squeeze`, `Unsqueeze` or `ReduceMean` (input 1 from opset 13 or 18, an
    /// attribute before), as places in one example's dimensions (the batch is axis 0 in
    /// ONNX, never one of them); `rank` counts the batch.
    fn axes(&self, node: &NodeProto<'_>, rank: usize) -> Result<Option<Vec<usize>>> {
        let given: Option<Vec<i64>> = match self.constant(node, 1)? {
            Some(t) => Some(
                t.ints()
                    .ok_or("axes that are not whole numbers")?
                    .iter()
                    .map(|a| a.ok_or_else(|| "an unknown axis".to_string()))
                    .collect::<Result<_>>()?,
            ),
            None => attr_ints(node, "axes").map(<[i64]>::to_vec),
        };
        let Some(given) = given else { return Ok(None) };
        let mut axes = Vec::with_capacity(given.len());
        for a in given {
            let full = if a < 0 { a + rank as i64 } else { a };
            if full < 1 || full >= rank as i64 {
                return Err(format!(
                    "axis {a}: opcount keeps the batch (axis 0) and needs axes within {rank} \
                     dimensions"
                ));
            }
            axes.push(full as usize - 1);
        }
        axes.sort_unstable();
        axes.dedup();
        Ok(Some(axes))
    }

    fn squeeze(&mut self, node: &NodeProto<'_>) -> Result<Value> {
        let x = self.act(node, 0)?;
        let rank = x.onnx.len() + 1;
        let dims: Vec<usize> = match self.axes(node, rank)? {
            Some(axes) if node.op_type == "Squeeze" => {
                if let Some(&a) = axes.iter().find(|&&a| x.onnx[a] != 1) {
                    return Err(format!("axis {} has size {}, not 1", a + 1, x.onnx[a]));
                }
                (0..x.onnx.len())
                    .filter(|i| !axes.contains(i))
                    .map(|i| x.onnx[i])
                    .collect()
            }
            None if node.op_type == "Squeeze" => {
                x.onnx.iter().copied().filter(|&d| d != 1).collect()
            }
            axes => {
                let axes = axes.ok_or("Unsqueeze without axes")?;
                let rank = x.onnx.len() + axes.len();
                let mut rest = x.onnx.iter();
                (0..rank)
                    .map(|i| {
                        if axes.contains(&i) {
                            Some(1)
                        } else {
                            rest.next().copied()
                        }
                    })
                    .collect::<Option<_>>()
                    .ok_or("axes past the end")?
            }
        };
        if dims.is_empty() {
            return Err("squeezes an example to a single number: opcount keeps one axis".into());
        }
        self.reshaped(node, x, dims)
    }

    /// `ReduceMean` over an image's height and width: a global average pooling.
    fn reduce_mean(&mut self, node: &NodeProto<'_>) -> Result<Value> {
        let x = self.act(node, 0)?;
        let axes = self.axes(node, x.onnx.len() + 1)?;
        if x.ours.as_image().is_none() || axes.as_deref() != Some(&[1, 2]) {
            return Err(format!(
                "a mean over axes {:?} of a {} value: opcount maps only the mean over an \
                 image's height and width (global average pooling)",
                axes.unwrap_or_default()
                    .iter()
                    .map(|a| a + 1)
                    .collect::<Vec<_>>(),
                shown(&x.onnx)
            ));
        }
        let mut y = self.push(node, Layer::GlobalAvgPool2d, &[&x])?;
        if attr_i(node, "keepdims", 1) != 0 {
            y.onnx = vec![y.ours.len(), 1, 1];
        }
        Ok(Value::Act(y))
    }

    /// `Clip` from 0 to 6 (ReLU6) or from 0 up (ReLU).
    fn clip(&mut self, node: &NodeProto<'_>) -> Result<Value> {
        let x = self.act(node, 0)?;
        let bound = |i: usize| -> Result<Option<f32>> {
            match self.constant(node, i)? {
                None => Ok(None),
                Some(t) => match t.floats() {
                    Some([v]) => Ok(Some(*v)),
                    _ => Err(format!("a bound (input {i}) that is not one number")),
                },
            }
        };
        let layer = match (bound(1)?, bound(2)?) {
            (Some(0.0), Some(6.0)) => Layer::Relu6,
            (Some(0.0), None) => Layer::Relu,
            (low, high) => {
                return Err(format!(
                    "a clip to [{}, {}]: opcount maps Clip to [0, 6] (ReLU6) and [0, inf) \
                     (ReLU)",
                    low.map_or("-inf".into(), |v| v.to_string()),
                    high.map_or("inf".into(), |v| v.to_string())
                ));
            }
        };
        Ok(Value::Act(self.push(node, layer, &[&x])?))
    }

    fn embedding(&mut self, node: &NodeProto<'_>) -> Result<Act> {
        let table = self.floats(node, 0, "table")?;
        let ids = self.act(node, 1)?;
        let &[vocab, width] = &table.dims[..] else {
            return Err(format!(
                "a table of shape {}; an embedding's is vocab x width",
                shown(&table.dims)
            ));
        };
        if attr_i(node, "axis", 0) != 0 {
            return Err("axis other than 0: opcount maps Gather as an embedding".into());
        }
        self.push(node, Layer::Embedding { vocab, width }, &[&ids])
    }
}

fn gelu_erf() -> String {
    "the exact (erf) GELU: opcount's Gelu is the tanh form, which counts other \
     operations; export with nn.GELU(approximate='tanh') and opset 20, or count it as the \
     tanh form with --gelu-as-tanh"
        .into()
}

/// An `Erf` (or what feeds it) outside the GELU pattern `--gelu-as-tanh` maps.
fn erf_refusal(gelu_as_tanh: bool) -> String {
    if gelu_as_tanh {
        "an Erf outside the GELU pattern PyTorch exports (Div by sqrt 2, Erf, Add 1, Mul by \
         the input, Mul by 0.5, each value read once): opcount maps only that"
            .into()
    } else {
        gelu_erf()
    }
}

/// The exact GELUs PyTorch exports, `0.5 (x (1 + erf(x / sqrt 2)))`: `Div`, `Erf`, `Add`,
/// `Mul`, `Mul`, each value read once. By the last node's index: the value `x`, and the
/// four nodes before it, which leave nothing behind.
fn erf_gelus<'a>(
    g: &GraphProto<'a>,
    values: &HashMap<String, Value>,
) -> HashMap<usize, (&'a str, [usize; 4])> {
    let mut producer: HashMap<&str, usize> = HashMap::new();
    let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (k, node) in g.nodes.iter().enumerate() {
        for &o in &node.outputs {
            producer.insert(o, k);
        }
        for &i in &node.inputs {
            readers.entry(i).or_default().push(k);
        }
    }
    // The scalar a constant input holds: an initializer or a Constant node's value.
    let scalar = |name: &str| -> Option<f32> {
        let t = match values.get(name) {
            Some(Value::Const(t)) => t.clone(),
            _ => {
                let node = &g.nodes[*producer.get(name)?];
                let a = node.attributes.iter().find(|a| a.name == "value")?;
                (node.op_type == "Constant")
                    .then(|| super::constant::tensor(a.t.as_ref()?, None).ok())??
            }
        };
        match t.floats()? {
            [v] => Some(*v),
            _ => None,
        }
    };
    let near = |name: &str, want: f32| scalar(name).is_some_and(|v| (v - want).abs() < 1e-4);
    // The one node reading `value`, if it is an `op` whose other input is `other`'s.
    let next = |value: &str, op: &str| -> Option<(usize, &'a str)> {
        let [k] = readers.get(value)?[..] else {
            return None;
        };
        let node = &g.nodes[k];
        let other = match node.inputs[..] {
            [a, b] if a == value => b,
            [a, b] if b == value => a,
            _ => return None,
        };
        (node.op_type == op && node.outputs.len() == 1).then_some((k, other))
    };
    let mut found = HashMap::new();
    for (e, erf) in g.nodes.iter().enumerate() {
        let (Some(&input), Some(&out)) = (erf.inputs.first(), erf.outputs.first()) else {
            continue;
        };
        if erf.op_type != "Erf" {
            continue;
        }
        let Some(&d) = producer.get(input) else {
            continue;
        };
        let div = &g.nodes[d];
        let [x, root2] = div.inputs[..] else { continue };
        if div.op_type != "Div" || !near(root2, std::f32::consts::SQRT_2) {
            continue;
        }
        if readers.get(input).map(Vec::len) != Some(1) {
            continue;
        }
        let pattern = || {
            let (a, one) = next(out, "Add")?;
            let (m, by) = next(g.nodes[a].outputs[0], "Mul")?;
            let (h, half) = next(g.nodes[m].outputs[0], "Mul")?;
            (near(one, 1.0) && by == x && near(half, 0.5)).then_some((h, [d, e, a, m]))
        };
        if let Some((h, inner)) = pattern() {
            found.insert(h, (x, inner));
        }
    }
    found
}

/// A dense layer's weights in opcount's order (`units x inputs`, PyTorch's) from a weight
/// matrix of `inputs x units` (MatMul, Gemm) or `units x inputs` (Gemm with transB).
fn dense_weights(w: &Tensor, inputs: usize, trans_b: bool) -> Result<Vec<f32>> {
    let values = w.floats().expect("checked by the caller");
    let &[rows, cols] = &w.dims[..] else {
        return Err(format!(
            "weights of shape {}: expected a matrix",
            shown(&w.dims)
        ));
    };
    let (units, k) = if trans_b { (rows, cols) } else { (cols, rows) };
    if k != inputs {
        return Err(format!("weights {} for {inputs} inputs", shown(&w.dims)));
    }
    if trans_b {
        return Ok(values.to_vec());
    }
    let mut out = Vec::with_capacity(values.len());
    for j in 0..units {
        for i in 0..inputs {
            out.push(values[i * units + j]);
        }
    }
    Ok(out)
}
