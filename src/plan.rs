//! [`Plan`]: a validated model, the graph both the interpreter and the closed forms work
//! from. Nodes in topological order, each naming the values it reads (the model's input or
//! earlier nodes' outputs); parameter tensors in storage order, with their initialisation
//! and the node that owns them; for the backward pass, which input gradients each node
//! computes and which of them add onto a gradient already there.
//!
//! A model file's `layers` (a chain) and `graph` (named entries with inputs) both become a
//! plan here; a chain is the graph whose every entry reads the one before it.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::model::{
    Activation, Data, Entry, Init, Layer, Loss, MAX_DIM, Model, Optimizer, Params, Training,
};
use crate::nn::activation::Act;
use crate::nn::ops::{self, MAX_INPUTS, NodeOp, ParamSpec};
use crate::shape::Shape;
use crate::text::echo;

/// The name by which graph entries read the model's input.
pub const INPUT: &str = "input";

/// A validated model: every node with its shapes, ready to be run or estimated.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    model: Model,
    name: String,
    input: Shape,
    nodes: Vec<Node>,
    params: Vec<Param>,
    loss: Loss,
    init: Init,
    /// `Some(vocab)` if the input holds token ids (an embedding reads it).
    token_ids: Option<usize>,
}

/// One computation of the network: a layer, or the activation a layer declares.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    name: String,
    op: NodeOp,
    /// Value ids read: 0 is the model's input, `k + 1` node k's output.
    inputs: Vec<usize>,
    input_shapes: Vec<Shape>,
    /// Per input: whether the backward pass computes its gradient.
    grads: Vec<bool>,
    /// Per input: whether that gradient adds onto one another node already wrote.
    accumulate: Vec<bool>,
    /// The parameter tensors it uses, in storage order.
    params: Vec<usize>,
    /// Per parameter: whether its gradient adds onto one another node already wrote.
    param_accumulate: Vec<bool>,
    /// Whether it owns its parameters (false for a node using another node's).
    owns_params: bool,
    /// Per tensor of its operation's state (batch normalisation's running statistics): the
    /// values written in the model file, if any.
    state: Vec<Option<Vec<f32>>>,
    /// The layer or graph entry of the model file it comes from.
    entry: usize,
}

/// A parameter tensor.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Param {
    pub spec: ParamSpec,
    /// Values written in the model file, in storage order.
    pub inline: Option<Vec<f32>>,
    /// The node that owns it (declares it, is updated as it).
    pub owner: usize,
}

impl Plan {
    /// The model file this plan was made from.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Shape of one example.
    pub fn input(&self) -> Shape {
        self.input
    }

    /// The nodes, in the order the forward pass runs them.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The loss.
    pub fn loss(&self) -> Loss {
        self.loss
    }

    /// How parameters not written in the model file start.
    pub fn init(&self) -> Init {
        self.init
    }

    /// The optimizer of the model's training block (SGD without one).
    pub fn optimizer(&self) -> Optimizer {
        self.model
            .training
            .as_ref()
            .map_or(Optimizer::Sgd, |t| t.optimizer)
    }

    /// Gives the model a training block in place of the one it has, if any (`opcount train
    /// --data` or `--synthetic` for an ONNX file, which has none). Only what trains changes:
    /// the graph, its shapes and its counts stay as they are. A block the model file could
    /// not hold (no epochs, a learning rate that is not positive, ...) is refused, saying
    /// which field, as in a model file.
    pub fn set_training(&mut self, training: Training, origin: &str) -> Result<()> {
        check_training(&training).map_err(|message| Error::Model {
            origin: origin.to_string(),
            message,
        })?;
        self.model.training = Some(training);
        Ok(())
    }

    /// `Some(vocab)` if the model's input holds token ids, each a whole number below
    /// `vocab` (the smallest vocabulary of the embeddings that read it).
    pub fn token_ids(&self) -> Option<usize> {
        self.token_ids
    }

    /// Shape of one example's output (the last node's).
    pub fn output(&self) -> Shape {
        self.nodes.last().map_or(self.input, |n| n.output())
    }

    /// Number of trainable parameters, a shared tensor once. (Each tensor fits a `usize`;
    /// their sum may not fit a `u64`.)
    pub fn params(&self) -> u128 {
        self.params.iter().map(|p| p.spec.len as u128).sum()
    }

    /// Number of values the operations keep besides their parameters (batch normalisation's
    /// running statistics), written with them when a model is saved.
    pub fn state_values(&self) -> u128 {
        let state = self.nodes.iter().flat_map(|n| n.op.state());
        state.map(|(_, spec)| spec.len as u128).sum()
    }

    pub(crate) fn param_tensors(&self) -> &[Param] {
        &self.params
    }

    /// The shape of value `v` (0 the input, `k + 1` node k's output).
    pub(crate) fn value_shape(&self, v: usize) -> Shape {
        if v == 0 {
            self.input
        } else {
            self.nodes[v - 1].output()
        }
    }

    /// Where the backward pass keeps each value's gradient: for value `v` (0 the input,
    /// `k + 1` node k's output) `slots[v]`, the index of a buffer of `sizes[slot]` numbers
    /// per example, or `None` if nothing computes that gradient.
    ///
    /// Node k's backward reads the gradient of its output and writes those of its inputs, so
    /// a value's gradient lives from the backward of its last reader (the loss, for the
    /// output) down to its producer's. Values whose lives do not overlap share a buffer: a
    /// chain needs two, however deep. Slots are handed out in the order the backward pass
    /// first writes them, each to the free slot that fits best (or a new one).
    pub(crate) fn gradient_slots(&self) -> GradientSlots {
        let n = self.nodes.len();
        let len = |v: usize| self.value_shape(v).len();
        // The first backward step (counting down from n, the loss) that writes each value's
        // gradient; the loss writes the output's.
        let mut first_write: Vec<Option<usize>> = vec![None; n + 1];
        first_write[n] = Some(n);
        for (k, node) in self.nodes.iter().enumerate() {
            for (&v, &g) in node.inputs.iter().zip(&node.grads) {
                if g {
                    first_write[v] = first_write[v].max(Some(k));
                }
            }
        }
        let mut slots = vec![None; n + 1];
        let mut sizes: Vec<usize> = Vec::new();
        let mut free: Vec<usize> = Vec::new();
        for step in (0..=n).rev() {
            for v in (0..=n).filter(|&v| first_write[v] == Some(step)) {
                let need = len(v);
                // The smallest free slot that holds it, else the largest (grown to fit).
                let fits = free.iter().enumerate().filter(|&(_, &s)| sizes[s] >= need);
                let pick = fits
                    .min_by_key(|&(_, &s)| sizes[s])
                    .or_else(|| free.iter().enumerate().max_by_key(|&(_, &s)| sizes[s]))
                    .map(|(i, _)| i);
                let slot = match pick {
                    Some(i) => free.swap_remove(i),
                    None => {
                        sizes.push(0);
                        sizes.len() - 1
                    }
                };
                sizes[slot] = sizes[slot].max(need);
                slots[v] = Some(slot);
            }
            // Node `step`'s backward has read its output's gradient: that slot is free.
            if step < n {
                free.extend(slots[step + 1]);
            }
        }
        GradientSlots { slots, sizes }
    }

    /// About how many bytes a network of this plan needs to run a step on `batch`
    /// examples with numbers of `scalar_bytes` bytes: parameters and their gradients, every
    /// value, the buffers the values' gradients share ([`Plan::gradient_slots`]), the scratch
    /// space for gradients that add up, the kernels' scratch space each node keeps for its
    /// kernels, the largest node's buffers of one call, and max pooling's positions.
    /// Computed without allocating anything.
    pub fn memory_bytes(&self, batch: usize, scalar_bytes: usize) -> u128 {
        let b = batch as u128;
        let mut values: u128 = 2 * self.params();
        // Adam's two moments per parameter.
        if !self.optimizer().is_sgd() {
            values += 2 * self.params();
        }
        values += b * self.input.len() as u128;
        let gradients: u128 = self.gradient_slots().sizes.iter().map(|&s| s as u128).sum();
        values += b * gradients;
        let mut largest_value = 0u128;
        let mut workspace = 0u128;
        let mut transient = 0u128;
        let mut positions = 0u128;
        let mut accumulates = false;
        for node in &self.nodes {
            let out = node.output().len() as u128;
            values += b * out + b * node.op.kept() as u128;
            largest_value = largest_value.max(out);
            workspace += node.op.workspace() as u128;
            transient = transient.max(node.op.transient() as u128);
            accumulates |= node.accumulate.iter().any(|&a| a);
            if node.kind() == "maxpool2d" {
                positions += b * out;
            }
        }
        let mut scratch = 0;
        if accumulates {
            scratch += MAX_INPUTS as u128 * b * largest_value;
        }
        // A shared tensor's second gradient is written aside, then added.
        let shared = self.nodes.iter().flat_map(|n| {
            n.params
                .iter()
                .zip(&n.param_accumulate)
                .filter(|(_, a)| **a)
                .map(|(&p, _)| self.params[p].spec.len as u128)
        });
        scratch += shared.max().unwrap_or(0);
        (values + workspace + transient + scratch) * scalar_bytes as u128 + positions * 8
    }
}

/// [`Plan::gradient_slots`]: which buffer holds each value's gradient, and each buffer's
/// size per example.
pub(crate) struct GradientSlots {
    pub slots: Vec<Option<usize>>,
    pub sizes: Vec<usize>,
}

impl Node {
    /// Name for reports: `dense1`, or `dense1.sigmoid` for a declared activation.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What it computes.
    pub fn op(&self) -> &NodeOp {
        &self.op
    }

    /// Short kind name, as in tables.
    pub fn kind(&self) -> &'static str {
        self.op.kind()
    }

    /// Shape of one example's output.
    pub fn output(&self) -> Shape {
        self.op.output()
    }

    /// Shapes of one example's inputs.
    pub fn input_shapes(&self) -> &[Shape] {
        &self.input_shapes
    }

    /// The values it reads: 0 is the model's input, `k + 1` node k's output.
    pub fn inputs(&self) -> &[usize] {
        &self.inputs
    }

    /// Per input, whether the backward pass computes its gradient.
    pub fn input_grads(&self) -> &[bool] {
        &self.grads
    }

    /// Per input, whether its gradient adds onto one that a node later in the forward order
    /// already wrote (a value read by several nodes).
    pub fn input_grad_adds(&self) -> &[bool] {
        &self.accumulate
    }

    /// Per parameter tensor, whether its gradient adds onto one that another node using
    /// the same tensor already wrote.
    pub fn param_grad_adds(&self) -> &[bool] {
        &self.param_accumulate
    }

    /// Trainable parameters it owns (0 for a node that uses another node's).
    pub fn params(&self) -> u64 {
        if self.owns_params {
            self.op.params()
        } else {
            0
        }
    }

    pub(crate) fn param_ids(&self) -> &[usize] {
        &self.params
    }

    /// Per tensor of its operation's [state](NodeOp::state), the values the model file
    /// gives, if any.
    pub(crate) fn inline_state(&self) -> &[Option<Vec<f32>>] {
        &self.state
    }

    /// Whether it owns its parameters (false for a node that uses another node's).
    pub fn owns_params(&self) -> bool {
        self.owns_params
    }

    /// The layer or graph entry of the model file it comes from.
    pub fn entry(&self) -> usize {
        self.entry
    }
}

/// Checks `model` and lays out its graph, naming the layer or node at fault if something does
/// not fit. `origin` names the file in error messages.
pub(crate) fn build(model: &Model, origin: &str) -> Result<Plan> {
    let model_error = |message: String| Error::Model {
        origin: origin.to_string(),
        message,
    };
    let input = match model.input[..] {
        [n] => Shape::flat(n),
        [t, w] => Shape::new(&[t, w]).expect("rank 2"),
        [c, h, w] => Shape::image(c, h, w),
        _ => {
            return Err(model_error(format!(
                "input: expected [features], [tokens, width] or [channels, height, width], \
                 found {} numbers",
                model.input.len()
            )));
        }
    };
    if let Some(&d) = model.input.iter().find(|&&d| d == 0 || d > MAX_DIM) {
        return Err(model_error(format!(
            "input: every size must be between 1 and {MAX_DIM}, found {d}"
        )));
    }
    input
        .checked_len()
        .ok_or_else(|| model_error(format!("input {input} is too large")))?;
    let entries = entries(model).map_err(&model_error)?;
    let names = names(&entries);
    let entry_error = |index: usize, message: String| Error::Layer {
        origin: origin.to_string(),
        index,
        name: names[index].clone(),
        message,
    };

    // Every entry's inputs, as entry indices (None: the model's input).
    let by_name: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    if let Some(i) = names.iter().position(|n| n == INPUT) {
        return Err(entry_error(
            i,
            format!("the name '{INPUT}' is reserved for the model's input"),
        ));
    }
    // A graph's nodes are read by name, so each name names one node; a chain's names are
    // only labels.
    let mut seen = std::collections::HashSet::new();
    for (i, name) in names.iter().enumerate().filter(|_| !model.graph.is_empty()) {
        if !seen.insert(name.as_str()) {
            return Err(entry_error(
                i,
                format!("another node is also named '{name}'"),
            ));
        }
    }
    let mut reads: Vec<Vec<Option<usize>>> = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let refs = match &entry.inputs {
            None => vec![i.checked_sub(1)],
            Some(list) => list
                .iter()
                .map(|r| match r.as_str() {
                    INPUT => Ok(None),
                    r => by_name.get(r).map(|&j| Some(j)).ok_or_else(|| {
                        entry_error(i, format!("input '{r}': no node has that name"))
                    }),
                })
                .collect::<Result<_>>()?,
        };
        if refs.is_empty() {
            return Err(entry_error(i, "inputs: expected at least one".into()));
        }
        if refs.len() > MAX_INPUTS {
            return Err(entry_error(
                i,
                format!(
                    "inputs: expected at most {MAX_INPUTS}, found {}",
                    refs.len()
                ),
            ));
        }
        reads.push(refs);
    }
    let order = topological(&reads).map_err(|i| {
        entry_error(
            i,
            "its inputs lead back to itself (the graph has a cycle)".into(),
        )
    })?;
    // The output is the one entry nobody reads; every other entry must be read.
    let mut read = vec![false; entries.len()];
    for r in reads.iter().flatten().flatten() {
        read[*r] = true;
    }
    let last = entries.len() - 1;
    if read[last] {
        return Err(entry_error(
            last,
            "the last node is the model's output, but another node reads it".into(),
        ));
    }
    if let Some(i) = (0..entries.len()).find(|&i| !read[i] && i != last) {
        return Err(entry_error(
            i,
            format!(
                "its output is not used: only the last node ({}) may be the model's output",
                names[last]
            ),
        ));
    }

    // Resolve each entry's operation in topological order.
    let mut nodes: Vec<Node> = Vec::new();
    let mut params: Vec<Param> = Vec::new();
    // Per entry: the value its output is, and its main node.
    let mut value_of = vec![0usize; entries.len()];
    let mut main_node = vec![usize::MAX; entries.len()];
    for &i in &order {
        let entry = &entries[i];
        let error = |message: String| entry_error(i, message);
        let inputs: Vec<usize> = reads[i]
            .iter()
            .map(|r| r.map_or(0, |j| value_of[j]))
            .collect();
        let shapes: Vec<Shape> = inputs
            .iter()
            .map(|&v| if v == 0 { input } else { nodes[v - 1].output() })
            .collect();
        let op = ops::resolve(entry.op, &shapes).map_err(&error)?;
        let output = op.output();
        output
            .checked_len()
            .ok_or_else(|| error(format!("output {output} is too large")))?;
        let specs = op.param_specs();
        let (inline, state) = inline_tensors(entry, &op, &specs).map_err(&error)?;
        let (ids, owns) = match &entry.share {
            None => {
                let ids = (params.len()..params.len() + specs.len()).collect();
                for (spec, values) in specs.iter().zip(inline) {
                    params.push(Param {
                        spec: *spec,
                        inline: values,
                        owner: nodes.len(),
                    });
                }
                (ids, true)
            }
            Some(other) => {
                let j = *by_name
                    .get(other.as_str())
                    .ok_or_else(|| error(format!("share '{other}': no node has that name")))?;
                if main_node[j] == usize::MAX {
                    return Err(error(format!(
                        "share '{other}': that node must come before this one"
                    )));
                }
                let owner = &nodes[main_node[j]];
                if !owner.owns_params || owner.params.is_empty() {
                    return Err(error(format!(
                        "share '{other}': that node has no parameters of its own to share"
                    )));
                }
                let theirs: Vec<ParamSpec> = owner.params.iter().map(|&p| params[p].spec).collect();
                // Any operation may use another's tensors if they have the same shapes and
                // start alike (an unembedding uses the token embedding's table).
                if theirs != specs {
                    return Err(error(format!(
                        "share '{other}': its parameters ({} {}) do not fit this {} (needs {})",
                        owner.kind(),
                        describe(owner.op()),
                        op.kind(),
                        describe(&op)
                    )));
                }
                if has_inline(entry.op) {
                    return Err(error(format!(
                        "share '{other}': weights come from that node; remove this node's \
                         weights and biases"
                    )));
                }
                if let Some(j) = inline.iter().position(Option::is_some) {
                    return Err(error(format!(
                        "share '{other}': its parameters come from that node; remove {} from \
                         this node's params",
                        op.param_names()[j]
                    )));
                }
                (owner.params.clone(), false)
            }
        };
        let n = ids.len();
        main_node[i] = nodes.len();
        nodes.push(Node {
            name: names[i].clone(),
            op,
            inputs,
            input_shapes: shapes,
            grads: Vec::new(),
            accumulate: Vec::new(),
            param_accumulate: vec![false; n],
            params: ids,
            owns_params: owns,
            state,
            entry: i,
        });
        if let Some(a) = declared_activation(entry.op) {
            let name = format!("{}.{}", names[i], a.name());
            let op = Act::resolve(a, output).map_err(&error)?;
            nodes.push(Node {
                name,
                op,
                inputs: vec![nodes.len()],
                input_shapes: vec![output],
                grads: Vec::new(),
                accumulate: Vec::new(),
                params: Vec::new(),
                param_accumulate: Vec::new(),
                owns_params: true,
                state: Vec::new(),
                entry: i,
            });
        }
        value_of[i] = nodes.len();
    }
    backward_flows(&mut nodes);
    let mut token_ids: Option<usize> = None;
    for node in &nodes {
        let Some(vocab) = node.op.token_ids() else {
            continue;
        };
        if node.inputs != [0] {
            return Err(entry_error(
                node.entry,
                format!(
                    "{} reads token ids, so its input must be '{INPUT}'",
                    node.kind()
                ),
            ));
        }
        token_ids = Some(token_ids.map_or(vocab, |v| v.min(vocab)));
    }

    let plan = Plan {
        model: model.clone(),
        name: model.name.clone(),
        input,
        nodes,
        params,
        loss: model.loss,
        init: model.init,
        token_ids,
    };
    check_logits(&plan, origin)?;
    check_loss(&plan).map_err(&model_error)?;
    if let Some(t) = &model.training {
        check_training(t).map_err(model_error)?;
    }
    Ok(plan)
}

/// The model's entries: its graph, or its chain of layers as a graph.
fn entries(model: &Model) -> std::result::Result<Vec<EntryRef<'_>>, String> {
    match (model.layers.is_empty(), model.graph.is_empty()) {
        (false, false) => {
            Err("give either layers (a chain) or graph (named nodes), not both".into())
        }
        (true, true) => Err("layers: expected at least one layer".into()),
        (false, true) => Ok(model
            .layers
            .iter()
            .map(|op| EntryRef {
                name: None,
                op,
                inputs: None,
                share: &None,
                params: None,
            })
            .collect()),
        (true, false) => Ok(model.graph.iter().map(EntryRef::of).collect()),
    }
}

/// A layer or graph entry, as the plan reads it.
struct EntryRef<'a> {
    name: Option<&'a str>,
    op: &'a Layer,
    inputs: Option<&'a [String]>,
    share: &'a Option<String>,
    params: Option<&'a Params>,
}

impl<'a> EntryRef<'a> {
    fn of(e: &'a Entry) -> EntryRef<'a> {
        EntryRef {
            name: e.name.as_deref(),
            op: &e.op,
            inputs: e.inputs.as_deref(),
            share: &e.share,
            params: e.params.as_ref(),
        }
    }
}

/// Every entry's name: its own, or its layer's, or the kind and a count (`dense2`).
fn names(entries: &[EntryRef<'_>]) -> Vec<String> {
    let mut counters: HashMap<&str, usize> = HashMap::new();
    entries
        .iter()
        .map(|e| {
            let kind = layer_kind(e.op);
            let k = counters.entry(kind).or_insert(0);
            *k += 1;
            e.name
                .map(str::to_string)
                .or_else(|| layer_name(e.op))
                .unwrap_or_else(|| format!("{kind}{k}"))
        })
        .collect()
}

/// An order in which every entry comes after the entries it reads, as close to the file's
/// order as it can be; `Err` names an entry on a cycle.
fn topological(reads: &[Vec<Option<usize>>]) -> std::result::Result<Vec<usize>, usize> {
    let n = reads.len();
    let mut waiting: Vec<usize> = reads.iter().map(|r| r.iter().flatten().count()).collect();
    let mut readers: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, r) in reads.iter().enumerate() {
        for &j in r.iter().flatten() {
            readers[j].push(i);
        }
    }
    // Ready entries, smallest index first.
    let mut ready: std::collections::BTreeSet<usize> =
        (0..n).filter(|&i| waiting[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &r in &readers[i] {
            waiting[r] -= 1;
            if waiting[r] == 0 {
                ready.insert(r);
            }
        }
    }
    match (0..n).find(|&i| waiting[i] > 0) {
        Some(stuck) => Err(stuck),
        None => Ok(order),
    }
}

/// Which input gradients each node computes (those of values that depend on a parameter),
/// and which of them, and of its parameters' gradients, add onto one already written: the
/// backward pass runs last node first, so the last reader of a value writes its gradient
/// and every earlier reader adds to it.
fn backward_flows(nodes: &mut [Node]) {
    // Whether each value depends on a parameter (value 0, the data, never does).
    let mut learns = vec![false; nodes.len() + 1];
    for (k, node) in nodes.iter_mut().enumerate() {
        node.grads = node.inputs.iter().map(|&v| learns[v]).collect();
        learns[k + 1] = !node.params.is_empty() || node.grads.iter().any(|&g| g);
    }
    let mut written = vec![false; nodes.len() + 1];
    let mut param_written: HashMap<usize, bool> = HashMap::new();
    for node in nodes.iter_mut().rev() {
        node.accumulate = node
            .inputs
            .iter()
            .zip(&node.grads)
            .map(|(&v, &g)| g && std::mem::replace(&mut written[v], true))
            .collect();
        node.param_accumulate = node
            .params
            .iter()
            .map(|p| param_written.insert(*p, true).is_some())
            .collect();
    }
}

/// An operation's parameter tensors, for messages: `8 units x 4 inputs; 8 units`.
fn describe(op: &NodeOp) -> String {
    let parts: Vec<String> = (0..op.param_specs().len())
        .map(|i| op.explain_param(i))
        .collect();
    parts.join("; ")
}

/// The tensors a layer or graph entry writes inline, checked and put in storage order: its
/// parameters (a dense or convolution layer's `weights` and `biases`, or any operation's by
/// name in the entry's `params`) and its state (by name in `params`).
#[allow(clippy::type_complexity)]
fn inline_tensors(
    entry: &EntryRef<'_>,
    op: &NodeOp,
    specs: &[ParamSpec],
) -> std::result::Result<(Vec<Option<Vec<f32>>>, Vec<Option<Vec<f32>>>), String> {
    let mut params = inline_params(entry.op, op, specs)?;
    let state_specs = op.state();
    let mut state: Vec<Option<Vec<f32>>> = vec![None; state_specs.len()];
    let Some(given) = entry.params else {
        return Ok((params, state));
    };
    let param_names = op.param_names();
    for (k, (name, values)) in given.0.iter().enumerate() {
        let shown = echo(name);
        if given.0[..k].iter().any(|(n, _)| n == name) {
            return Err(format!("params: '{shown}' is given twice"));
        }
        let checked = |len: usize, what: String| -> std::result::Result<(), String> {
            if values.len() != len {
                let what = if what.is_empty() {
                    what
                } else {
                    format!(" ({what})")
                };
                return Err(format!(
                    "params: {shown}: expected {len} values{what}, found {}",
                    values.len()
                ));
            }
            match values.iter().position(|v| !v.is_finite()) {
                Some(i) => Err(format!(
                    "params: {shown}: value {i} is {}, expected a finite number",
                    values[i]
                )),
                None => Ok(()),
            }
        };
        if let Some(j) = param_names.iter().position(|n| n == name) {
            if params[j].is_some() {
                return Err(format!(
                    "params: {shown}: given twice, in params and as the layer's {name}"
                ));
            }
            checked(specs[j].len, op.explain_param(j))?;
            params[j] = Some(op.storage_order(j, values));
        } else if let Some(j) = state_specs.iter().position(|(n, _)| n == name) {
            checked(state_specs[j].1.len, String::new())?;
            state[j] = Some(values.clone());
        } else {
            let known: Vec<&str> = param_names
                .iter()
                .copied()
                .chain(state_specs.iter().map(|(n, _)| *n))
                .collect();
            let has = if known.is_empty() {
                "no parameters".to_string()
            } else {
                known.join(", ")
            };
            return Err(format!(
                "params: unknown name '{shown}'; this {} has {has}",
                op.kind()
            ));
        }
    }
    Ok((params, state))
}

/// The inline weights and biases of a layer, checked and put in storage order.
fn inline_params(
    layer: &Layer,
    op: &NodeOp,
    specs: &[ParamSpec],
) -> std::result::Result<Vec<Option<Vec<f32>>>, String> {
    let (weights, biases, bias) = match layer {
        Layer::Dense {
            weights,
            biases,
            bias,
            ..
        }
        | Layer::Conv2d {
            weights,
            biases,
            bias,
            ..
        } => (weights, biases, *bias),
        _ => return Ok(vec![None; specs.len()]),
    };
    if !bias && biases.is_some() {
        return Err("biases are given but bias is false".into());
    }
    let mut out = Vec::new();
    for (index, (what, values)) in [("weights", weights), ("biases", biases)]
        .into_iter()
        .take(specs.len())
        .enumerate()
    {
        let Some(values) = values else {
            out.push(None);
            continue;
        };
        let expected = specs[index].len;
        if values.len() != expected {
            return Err(format!(
                "{what}: expected {expected} values ({}), found {}",
                op.explain_param(index),
                values.len()
            ));
        }
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(format!(
                "{what}: value {i} is {}, expected a finite number",
                values[i]
            ));
        }
        out.push(Some(op.storage_order(index, values)));
    }
    Ok(out)
}

fn has_inline(layer: &Layer) -> bool {
    matches!(
        layer,
        Layer::Dense {
            weights: Some(_),
            ..
        } | Layer::Dense {
            biases: Some(_),
            ..
        } | Layer::Conv2d {
            weights: Some(_),
            ..
        } | Layer::Conv2d {
            biases: Some(_),
            ..
        }
    )
}

fn declared_activation(layer: &Layer) -> Option<Activation> {
    match layer {
        Layer::Dense { activation, .. } | Layer::Conv2d { activation, .. } => *activation,
        _ => None,
    }
}

fn layer_kind(layer: &Layer) -> &'static str {
    match layer {
        Layer::Dense { .. } => "dense",
        Layer::Conv2d { .. } => "conv",
        Layer::MaxPool2d { .. } => "maxpool",
        Layer::AvgPool2d { .. } => "avgpool",
        Layer::Flatten => "flatten",
        Layer::BatchNorm2d => "batchnorm",
        Layer::GlobalAvgPool2d => "globalavgpool",
        Layer::Add => "add",
        Layer::Mul => "mul",
        Layer::Sub => "sub",
        Layer::Div => "div",
        Layer::ConstOp { .. } => "const",
        Layer::Broadcast { .. } => "broadcast",
        Layer::Sqrt => "sqrt",
        Layer::MaskFill { .. } => "mask",
        Layer::MatMul => "matmul",
        Layer::Transpose { .. } => "transpose",
        Layer::Reshape { .. } => "reshape",
        Layer::LayerNorm => "layernorm",
        Layer::Embedding { .. } => "embedding",
        Layer::PositionEmbedding { .. } => "positions",
        Layer::Unembed { .. } => "unembed",
        Layer::Scores { .. } => "scores",
        Layer::CausalSoftmax => "causal_softmax",
        Layer::Mix { .. } => "mix",
        activation => activation
            .activation()
            .expect("every other layer is an activation")
            .name(),
    }
}

fn layer_name(layer: &Layer) -> Option<String> {
    match layer {
        Layer::Dense { name, .. } | Layer::Conv2d { name, .. } => name.clone(),
        _ => None,
    }
}

fn check_training(t: &Training) -> std::result::Result<(), String> {
    for (what, n) in [("epochs", t.epochs), ("batch", t.batch)] {
        if n == 0 {
            return Err(format!("training: {what}: expected at least 1, found 0"));
        }
    }
    if let Data::Synthetic { examples: 0, .. } = t.data {
        return Err("training: data: Synthetic: examples: expected at least 1, found 0".into());
    }
    if !(t.lr.is_finite() && t.lr > 0.0) {
        return Err(format!(
            "training: lr: expected a positive number, found {}",
            t.lr
        ));
    }
    if let Optimizer::Adam { beta1, beta2, eps } = t.optimizer {
        for (what, beta) in [("beta1", beta1), ("beta2", beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return Err(format!(
                    "training: optimizer: {what}: expected from 0 up to (not including) 1, \
                     found {beta}"
                ));
            }
        }
        if !(eps.is_finite() && eps > 0.0) {
            return Err(format!(
                "training: optimizer: eps: expected a positive number, found {eps}"
            ));
        }
    }
    Ok(())
}

/// `SoftmaxCrossEntropy` takes logits: no softmax may come after the last node with
/// parameters (an identity or another activation after it would still hand the loss
/// probabilities, and a double softmax trains, slowly, towards the wrong thing).
fn check_logits(plan: &Plan, origin: &str) -> Result<()> {
    if plan.loss() != Loss::SoftmaxCrossEntropy {
        return Ok(());
    }
    let after_params = plan
        .nodes
        .iter()
        .rposition(|n| !n.params.is_empty())
        .map_or(0, |k| k + 1);
    let softmax = plan.nodes()[after_params..]
        .iter()
        .find(|n| n.kind() == Activation::Softmax.name());
    match softmax {
        Some(node) => Err(Error::Layer {
            origin: origin.to_string(),
            index: node.entry,
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
    if plan.loss() == Loss::SoftmaxCrossEntropy {
        // [classes], or [tokens, classes]: a class for every token.
        match output.dims() {
            [n] | [_, n] if *n >= 2 => {}
            _ => {
                return Err(format!(
                    "loss SoftmaxCrossEntropy needs an output of [classes] or [tokens, classes] \
                     with at least 2 classes, found {output}"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shipped model's gradient buffers: a value's buffer holds its gradient from its
    /// last reader's backward down to its producer's, and no other value's in that time;
    /// each buffer holds the largest value it is given.
    #[test]
    fn values_share_gradient_buffers_only_when_their_lives_do_not_overlap() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        let mut checked = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "ron") {
                continue;
            }
            let plan = crate::Model::load(&path).unwrap().plan("m").unwrap();
            let n = plan.nodes().len();
            let GradientSlots { slots, sizes } = plan.gradient_slots();
            // Life of value v's gradient, in backward steps (n is the loss): from its last
            // reader down to its producer, v - 1 (the input's to the end, -1).
            let mut life: Vec<Option<(i64, i64)>> = vec![None; n + 1];
            life[n] = Some((n as i64, n as i64 - 1));
            for (k, node) in plan.nodes().iter().enumerate() {
                for (&v, &g) in node.inputs().iter().zip(node.input_grads()) {
                    if g {
                        let from = life[v].map_or(k as i64, |(f, _)| f.max(k as i64));
                        life[v] = Some((from, v as i64 - 1));
                    }
                }
            }
            for v in 0..=n {
                assert_eq!(slots[v].is_some(), life[v].is_some(), "{path:?} value {v}");
                let Some(slot) = slots[v] else { continue };
                assert!(sizes[slot] >= plan.value_shape(v).len());
                for u in v + 1..=n {
                    if slots[u] == Some(slot) {
                        let ((a_from, a_to), (b_from, b_to)) = (life[v].unwrap(), life[u].unwrap());
                        assert!(
                            a_from < b_to || b_from < a_to,
                            "{path:?}: values {v} and {u}"
                        );
                    }
                }
            }
            checked += 1;
        }
        assert!(checked >= 12, "{checked}");
    }

    #[test]
    fn a_chain_keeps_two_gradient_buffers_however_deep() {
        let dense = ["Dense(units: 5, activation: Tanh)"; 9].join(", ");
        let text =
            format!("(name: \"c\", input: [3], loss: Mse, layers: [{dense}, Dense(units: 2)])");
        let plan = crate::Model::parse(&text, "c").unwrap().plan("c").unwrap();
        let GradientSlots { slots, sizes } = plan.gradient_slots();
        assert_eq!(sizes, [5, 5]);
        assert_eq!(slots[0], None, "the data's gradient");
        assert!(slots[1..].iter().all(Option::is_some));
    }

    #[test]
    fn docs_list_every_layer_s_default_name() {
        let docs = include_str!("../docs/model-format.md");
        let layers = [
            "Dense(units: 1)",
            "Conv2d(out_channels: 1, kernel: 1)",
            "MaxPool2d(size: 1)",
            "AvgPool2d(size: 1)",
            "GlobalAvgPool2d",
            "Flatten",
            "BatchNorm2d",
            "LayerNorm",
            "Add",
            "Mul",
            "Sub",
            "Div",
            "ConstOp(op: Mul, values: [2])",
            "Broadcast(op: Sub)",
            "Sqrt",
            "MaskFill(masked: [true], fill: 0)",
            "MatMul",
            "Transpose(perm: [0])",
            "Reshape(shape: [1])",
            "Embedding(vocab: 1, width: 1)",
            "PositionEmbedding(context: 1)",
            "Unembed(vocab: 1)",
            "Scores(heads: 1)",
            "CausalSoftmax",
            "Mix(heads: 1)",
            "Identity",
            "Sigmoid",
            "Tanh",
            "Relu",
            "Softmax",
            "Relu6",
            "Gelu",
            "GeluErf",
        ];
        let activations = crate::model::Activation::ALL.len();
        assert_eq!(layers.len(), ops::OPERATIONS.len() + activations);
        for text in layers {
            let layer: Layer = ron::from_str(text).unwrap();
            // Every variant of Layer is in the list above: a new one stops this compiling.
            match layer {
                Layer::Dense { .. }
                | Layer::Conv2d { .. }
                | Layer::MaxPool2d { .. }
                | Layer::AvgPool2d { .. }
                | Layer::GlobalAvgPool2d
                | Layer::Flatten
                | Layer::BatchNorm2d
                | Layer::LayerNorm
                | Layer::Add
                | Layer::Mul
                | Layer::Sub
                | Layer::Div
                | Layer::ConstOp { .. }
                | Layer::Broadcast { .. }
                | Layer::Sqrt
                | Layer::MaskFill { .. }
                | Layer::MatMul
                | Layer::Transpose { .. }
                | Layer::Reshape { .. }
                | Layer::Embedding { .. }
                | Layer::PositionEmbedding { .. }
                | Layer::Unembed { .. }
                | Layer::Scores { .. }
                | Layer::CausalSoftmax
                | Layer::Mix { .. }
                | Layer::Identity
                | Layer::Sigmoid
                | Layer::Tanh
                | Layer::Relu
                | Layer::Softmax
                | Layer::Relu6
                | Layer::Gelu
                | Layer::GeluErf => {}
            }
            let name = format!("`{}1`", layer_kind(&layer));
            assert!(docs.contains(&name), "docs/model-format.md lacks {name}");
        }
    }
}
