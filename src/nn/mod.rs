//! The interpreter: a [`Network<S>`] built from a validated [`Plan`], generic over the
//! number type. Forward over a batch, the loss, backward node by node with analytic
//! derivatives, and the SGD update; every node's work in every phase is measured and kept
//! as [`StepCounts`].
//!
//! Memory is the parameters, their gradients, and one activation and one gradient buffer per
//! node boundary for the current batch: no per-scalar tape.

pub(crate) mod activation;
mod add;
pub(crate) mod batchnorm;
mod broadcast;
mod buffer;
pub(crate) mod causal_softmax;
mod const_op;
pub(crate) mod conv;
pub(crate) mod dense;
mod div;
pub(crate) mod embedding;
pub(crate) mod flatten;
mod gemm;
pub(crate) mod global_pool;
pub(crate) mod layernorm;
mod loss;
mod mask_fill;
mod matmul;
pub(crate) mod mix;
mod moves;
mod mul;
pub(crate) mod ops;
pub(crate) mod optimizer;
pub(crate) mod pool;
pub(crate) mod positions;
mod reduce;
mod reshape;
pub(crate) mod scores;
mod sqrt;
mod sub;
mod transpose;
pub(crate) mod unembed;

use crate::CountedZeros;
use crate::counts::Counts;
use crate::data::{Batch, Dataset, scalar};
use crate::error::{Error, Result};
use crate::model::{Entry, Init, Layer, Loss, Model, Params, Plan};
use crate::phases::{NodeCounts, Phase, StepCounts};
use crate::rng::Rng;
use crate::scalar::Scalar;
use crate::tally;

use buffer::Buffer;
use ops::{Backward, Kernel, MAX_INPUTS, MAX_PARAMS};

/// What a watched step reports: a phase starting (`node` is `None`), or a node finishing its
/// part of a phase (the loss is node 0 of [`Phase::Loss`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The phase.
    pub phase: Phase,
    /// The node that just finished, or `None` when the phase starts.
    pub node: Option<usize>,
}

impl Event {
    fn start(phase: Phase) -> Event {
        Event { phase, node: None }
    }

    fn end(phase: Phase, node: usize) -> Event {
        Event {
            phase,
            node: Some(node),
        }
    }
}

/// Where a network is in a step, so that the passes run in order.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Stage {
    /// No forward pass yet (or the buffers were just resized).
    Fresh,
    /// The forward pass ran; the loss may follow.
    Forward,
    /// The loss set the output's gradient; the backward pass may follow.
    Loss,
}

/// A network ready to run, with numbers of type `S`: the kernels of every node of a plan,
/// its parameters, and a buffer for every value and its gradient.
///
/// ```
/// use opcount::{Model, Network};
///
/// let model = Model::parse(
///     "(name: \"tiny\", input: [2], loss: Mse, layers: [Dense(units: 1, activation: Tanh)])",
///     "tiny.ron",
/// )?;
/// let mut net = Network::<f64>::new(&model.plan("tiny.ron")?);
/// let out = net.forward(&[0.5, -1.0, 2.0, 0.0], 2); // two examples of two values
/// assert_eq!(out.len(), 2);
/// # Ok::<(), opcount::Error>(())
/// ```
pub struct Network<S: Scalar> {
    plan: Plan,
    kernels: Vec<Box<dyn Kernel<S>>>,
    /// Parameter tensors in storage order, and their gradients from the last backward pass.
    params: Vec<Buffer<S>>,
    param_grads: Vec<Buffer<S>>,
    /// `values[0]` is the batch's input, `values[k + 1]` node k's output.
    values: Vec<Buffer<S>>,
    /// dL/d`values[v]` is the head of `grads[grad_slot[v]]` (`None` where nothing needs
    /// it); values whose gradients live at different times share a buffer
    /// ([`Plan::gradient_slots`]).
    grads: Vec<Buffer<S>>,
    grad_slot: Vec<Option<usize>>,
    /// Where a node writes a gradient that it then adds onto one already there: one buffer
    /// per input, one per parameter.
    scratch: [Buffer<S>; MAX_INPUTS],
    param_scratch: [Buffer<S>; MAX_PARAMS],
    /// The update's rule and what it keeps between steps.
    optimizer: optimizer::State<S>,
    batch: usize,
    stage: Stage,
    marks: Marks,
}

impl<S: Scalar> Network<S> {
    /// Builds the network of a validated plan, with the model's inline parameters or its
    /// seeded initialisation.
    pub fn new(plan: &Plan) -> Network<S> {
        let mut rng = Rng::new(match plan.init() {
            Init::Xavier { seed } | Init::He { seed } => seed,
        });
        // Random weights are drawn tensor by tensor in storage order.
        let params: Vec<Buffer<S>> = plan
            .param_tensors()
            .iter()
            .map(|p| match (&p.inline, p.spec.fans) {
                (Some(values), _) => Buffer::from_iter(values.iter().map(|&v| scalar::<S>(v))),
                (None, Some((fan_in, fan_out))) => {
                    let bound = init_bound(plan.init(), fan_in, fan_out);
                    Buffer::from_iter((0..p.spec.len).map(|_| scalar::<S>(rng.symmetric(bound))))
                }
                (None, None) => Buffer::filled(p.spec.len, scalar::<S>(p.spec.start)),
            })
            .collect();
        let param_grads = params
            .iter()
            .map(|p| Buffer::filled(p.len(), S::zero()))
            .collect();
        let shared = plan.nodes().iter().flat_map(|n| {
            n.param_ids()
                .iter()
                .zip(n.param_grad_adds())
                .filter(|(_, adds)| **adds)
                .map(|(&p, _)| plan.param_tensors()[p].spec.len)
        });
        let shared = shared.max().unwrap_or(0);
        let optimizer = optimizer::State::new(plan.optimizer(), params.iter().map(|p| p.len()));
        let mut kernels: Vec<Box<dyn Kernel<S>>> =
            plan.nodes().iter().map(|n| n.op().kernel::<S>()).collect();
        // State the model file gives (running statistics) replaces the kernels' start.
        for (kernel, node) in kernels.iter_mut().zip(plan.nodes()) {
            for (tensor, given) in kernel.state_mut().into_iter().zip(node.inline_state()) {
                if let Some(values) = given {
                    for (v, &x) in tensor.iter_mut().zip(values) {
                        *v = scalar::<S>(x);
                    }
                }
            }
        }
        Network {
            kernels,
            params,
            param_grads,
            values: Vec::new(),
            grads: Vec::new(),
            grad_slot: Vec::new(),
            scratch: std::array::from_fn(|_| Buffer::empty()),
            param_scratch: std::array::from_fn(|_| Buffer::filled(shared, S::zero())),
            optimizer,
            batch: 0,
            stage: Stage::Fresh,
            marks: Marks::new(plan.nodes().len()),
            plan: plan.clone(),
        }
    }

    /// The plan this network runs.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// What each node counted in the most recent call of each phase, or `None` for number
    /// types that count nothing or with attribution turned off.
    pub fn counts(&self) -> Option<StepCounts> {
        (S::IS_COUNTED && self.marks.on).then(|| self.marks.counts())
    }

    /// Turns the per-node attribution of counts on (the default) or off. Off, a counted
    /// network still counts every operation in the thread's tally, but takes no snapshots
    /// between nodes, so [`Network::counts`] has nothing to report; `opcount bench` uses
    /// this to time what counting itself costs.
    pub fn set_attribution(&mut self, on: bool) {
        self.marks.on = on;
    }

    /// Sizes the buffers for `batch` examples (no work if the size is unchanged).
    fn resize(&mut self, batch: usize) {
        if batch == self.batch && !self.values.is_empty() {
            return;
        }
        self.batch = batch;
        self.stage = Stage::Fresh;
        let plan = &self.plan;
        let values = plan.nodes().len() + 1;
        let sizes: Vec<usize> = (0..values)
            .map(|v| plan.value_shape(v).len() * batch)
            .collect();
        let mut scratch = [0usize; MAX_INPUTS];
        for node in plan.nodes() {
            for (j, &v) in node.inputs().iter().enumerate() {
                if node.input_grad_adds()[j] {
                    scratch[j] = scratch[j].max(sizes[v]);
                }
            }
        }
        self.values = sizes
            .iter()
            .map(|&s| Buffer::filled(s, S::zero()))
            .collect();
        let gradients = plan.gradient_slots();
        self.grads = gradients
            .sizes
            .iter()
            .map(|&s| Buffer::filled(s * batch, S::zero()))
            .collect();
        self.grad_slot = gradients.slots;
        self.scratch = scratch.map(|s| Buffer::filled(s, S::zero()));
    }

    /// Runs the batch forward and returns the network's output.
    ///
    /// # Shapes
    /// `inputs`: batch x input values; result: batch x output values.
    pub fn forward(&mut self, inputs: &[S], batch: usize) -> &[S] {
        self.forward_phase(inputs, batch, &mut |_| {});
        self.output()
    }

    /// [`Network::forward`], telling `watch` when the phase starts and each node ends.
    fn forward_phase(&mut self, inputs: &[S], batch: usize, watch: &mut impl FnMut(Event)) {
        self.resize(batch);
        self.values[0].copy_from_slice(inputs);
        self.marks.start::<S>(Phase::Forward, false);
        watch(Event::start(Phase::Forward));
        for k in 0..self.kernels.len() {
            self.forward_node(k, false);
            self.marks.lap::<S>(Phase::Forward, k, true);
            watch(Event::end(Phase::Forward, k));
        }
        self.stage = Stage::Forward;
    }

    /// Node k's forward pass, or with `infer` its evaluation ([`Kernel::infer`]).
    fn forward_node(&mut self, k: usize, infer: bool) {
        let node = &self.plan.nodes()[k];
        let (before, after) = self.values.split_at_mut(k + 1);
        let mut x: [&[S]; MAX_INPUTS] = [&[]; MAX_INPUTS];
        for (slot, &v) in x.iter_mut().zip(node.inputs()) {
            *slot = &before[v];
        }
        let mut p: [&[S]; MAX_PARAMS] = [&[]; MAX_PARAMS];
        for (slot, &id) in p.iter_mut().zip(node.param_ids()) {
            *slot = &self.params[id];
        }
        let (x, p) = (&x[..node.inputs().len()], &p[..node.param_ids().len()]);
        if infer {
            self.kernels[k].infer(x, p, &mut after[0]);
        } else {
            self.kernels[k].forward(x, p, &mut after[0]);
        }
    }

    /// Runs the batch forward as a trained network is used rather than trained (batch
    /// normalisation with its running statistics instead of the batch's, as PyTorch's
    /// `eval()` mode) and returns the output. Not a phase of a step: nothing is attributed to
    /// the nodes ([`Network::counts`] still reports the last step), and no backward pass may
    /// follow it. What it counts stays in the thread's tally.
    ///
    /// # Shapes
    /// `inputs`: batch x input values; result: batch x output values.
    pub fn infer(&mut self, inputs: &[S], batch: usize) -> &[S] {
        self.resize(batch);
        self.values[0].copy_from_slice(inputs);
        for k in 0..self.kernels.len() {
            self.forward_node(k, true);
        }
        self.stage = Stage::Fresh;
        self.output()
    }

    /// [`Network::infer`] on a batch, and the loss of its output against the batch's targets
    /// (attributed to nothing either): how evaluation measures a trained network.
    pub fn infer_loss(&mut self, batch: &Batch<S>) -> S {
        self.infer(&batch.inputs, batch.size);
        let on = std::mem::replace(&mut self.marks.on, false);
        let loss = self.loss_phase(batch, false, &mut |_| {});
        self.marks.on = on;
        self.stage = Stage::Fresh;
        loss
    }

    /// The output of the most recent forward pass.
    pub fn output(&self) -> &[S] {
        self.values.last().map_or(&[], |b| b)
    }

    /// The loss of the most recent forward pass against `batch`'s targets; also sets the
    /// gradient that [`Network::backward`] starts from. An error if no forward pass of a
    /// batch of that size ran before it.
    pub fn loss(&mut self, batch: &Batch<S>) -> Result<S> {
        self.check_stage(Stage::Forward, "the loss needs a forward pass first")?;
        if batch.size != self.batch {
            return Err(Error::Usage(format!(
                "the loss is of a batch of {} but the forward pass ran on {}",
                batch.size, self.batch
            )));
        }
        Ok(self.loss_phase(batch, false, &mut |_| {}))
    }

    /// The forward pass and the loss of a batch, in one call.
    pub fn forward_loss(&mut self, batch: &Batch<S>) -> S {
        self.forward_phase(&batch.inputs, batch.size, &mut |_| {});
        self.loss_phase(batch, false, &mut |_| {})
    }

    fn check_stage(&self, stage: Stage, message: &str) -> Result<()> {
        if self.stage == stage {
            Ok(())
        } else {
            Err(Error::Usage(message.into()))
        }
    }

    /// [`Network::loss`]; `chained` if it runs right after the forward pass, whose last mark
    /// is then also its first.
    fn loss_phase(&mut self, batch: &Batch<S>, chained: bool, watch: &mut impl FnMut(Event)) -> S {
        let last = self.values.len() - 1;
        // Softmax cross-entropy scores each row of the output's last axis: one example of a
        // flat output, one token of a [tokens, classes] output.
        let width = self.plan.output().last();
        let y = &self.values[last];
        let slot = self.grad_slot[last].expect("the output's gradient has a buffer");
        let grad = &mut self.grads[slot][..y.len()];
        self.marks.start::<S>(Phase::Loss, chained);
        watch(Event::start(Phase::Loss));
        let loss = match self.plan.loss() {
            Loss::Mse => loss::mse(y, &batch.values, grad),
            Loss::SoftmaxCrossEntropy => {
                loss::softmax_cross_entropy(y, &batch.classes, width, grad)
            }
            // Forward only: nothing is computed, and no gradient is set.
            Loss::None => S::zero(),
        };
        self.marks.lap::<S>(Phase::Loss, 0, true);
        watch(Event::end(Phase::Loss, 0));
        self.stage = Stage::Loss;
        loss
    }

    /// Gradients of every parameter, last node to first, from the gradient the loss set.
    /// A node computes the gradient of an input only if that input depends on a parameter.
    /// An error if the loss did not run since the last forward pass.
    pub fn backward(&mut self) -> Result<()> {
        self.check_stage(
            Stage::Loss,
            "the backward pass needs a forward pass and a loss first",
        )?;
        self.backward_phase(false, &mut |_| {});
        Ok(())
    }

    /// [`Network::backward`]; `chained` if it runs right after the loss. Without a loss
    /// (forward only) no node does anything.
    fn backward_phase(&mut self, chained: bool, watch: &mut impl FnMut(Event)) {
        let train = !self.plan.loss().forward_only();
        self.marks.start::<S>(Phase::Backward, chained);
        watch(Event::start(Phase::Backward));
        for k in (0..self.kernels.len()).rev() {
            let worked = train && self.backward_node(k);
            self.marks.lap::<S>(Phase::Backward, k, worked);
            watch(Event::end(Phase::Backward, k));
        }
        self.stage = Stage::Fresh;
    }

    /// Node k's backward pass: its kernel writes each wanted gradient straight into place,
    /// or, where the gradient adds onto one already there, into scratch space that is then
    /// added (the additions counted for this node). Returns whether it did anything.
    fn backward_node(&mut self, k: usize) -> bool {
        let node = &self.plan.nodes()[k];
        let (inputs, grads, adds) = (node.inputs(), node.input_grads(), node.input_grad_adds());
        let (ids, param_adds) = (node.param_ids(), node.param_grad_adds());
        if ids.is_empty() && !grads.contains(&true) {
            return false;
        }
        // Take the buffers to write out of the network for the call.
        let mut dx: [Option<Buffer<S>>; MAX_INPUTS] = Default::default();
        for (j, slot) in dx.iter_mut().enumerate().take(inputs.len()) {
            if grads[j] {
                let target = if adds[j] {
                    &mut self.scratch[j]
                } else {
                    &mut self.grads[self.grad_slot[inputs[j]].expect("a wanted gradient")]
                };
                *slot = Some(std::mem::take(target));
            }
        }
        let mut dp: [Buffer<S>; MAX_PARAMS] = Default::default();
        for (j, slot) in dp.iter_mut().enumerate().take(ids.len()) {
            let target = if param_adds[j] {
                &mut self.param_scratch[j]
            } else {
                &mut self.param_grads[ids[j]]
            };
            *slot = std::mem::take(target);
        }
        {
            let mut x: [&[S]; MAX_INPUTS] = [&[]; MAX_INPUTS];
            for (slot, &v) in x.iter_mut().zip(inputs) {
                *slot = &self.values[v];
            }
            let mut p: [&[S]; MAX_PARAMS] = [&[]; MAX_PARAMS];
            for (slot, &id) in p.iter_mut().zip(ids) {
                *slot = &self.params[id];
            }
            let mut dx_slices: [Option<&mut [S]>; MAX_INPUTS] = Default::default();
            for (j, (slot, buffer)) in dx_slices.iter_mut().zip(dx.iter_mut()).enumerate() {
                if let Some(b) = buffer {
                    let len = self.values[inputs[j]].len();
                    *slot = Some(&mut b[..len]);
                }
            }
            let mut dp_slices: [&mut [S]; MAX_PARAMS] = Default::default();
            for (j, (slot, buffer)) in dp_slices.iter_mut().zip(dp.iter_mut()).enumerate() {
                if j < ids.len() {
                    let len = self.params[ids[j]].len();
                    *slot = &mut buffer[..len];
                }
            }
            let grads = Backward {
                x: &x[..inputs.len()],
                y: &self.values[k + 1],
                dy: &self.grads[self.grad_slot[k + 1].expect("a read gradient")]
                    [..self.values[k + 1].len()],
                params: &p[..ids.len()],
                dparams: &mut dp_slices[..ids.len()],
                dx: &mut dx_slices[..inputs.len()],
            };
            self.kernels[k].backward(grads);
        }
        // Put the buffers back, adding where this node's gradient is a second one.
        for (j, buffer) in dx.into_iter().enumerate() {
            let Some(buffer) = buffer else { continue };
            let (slot, len) = (self.grad_slot[inputs[j]], self.values[inputs[j]].len());
            let slot = slot.expect("a wanted gradient");
            if adds[j] {
                accumulate(&mut self.grads[slot][..len], &buffer[..len]);
                self.scratch[j] = buffer;
            } else {
                self.grads[slot] = buffer;
            }
        }
        for (j, buffer) in dp.into_iter().enumerate().take(ids.len()) {
            if param_adds[j] {
                let target = &mut self.param_grads[ids[j]];
                let len = target.len();
                accumulate(target, &buffer[..len]);
                self.param_scratch[j] = buffer;
            } else {
                self.param_grads[ids[j]] = buffer;
            }
        }
        true
    }

    /// One step of the model's optimizer (SGD, `p -= lr * dp`, unless the training block names
    /// another) on every parameter, each tensor once, counted for the node that owns it.
    pub fn update(&mut self, lr: S) {
        self.update_phase(lr, false, &mut |_| {});
    }

    /// [`Network::update`]; `chained` if it runs right after the backward pass. Without a
    /// loss (forward only) nothing is updated.
    fn update_phase(&mut self, lr: S, chained: bool, watch: &mut impl FnMut(Event)) {
        let train = !self.plan.loss().forward_only();
        self.marks.start::<S>(Phase::Update, chained);
        watch(Event::start(Phase::Update));
        if train {
            self.optimizer.start(lr);
        }
        for (k, node) in self.plan.nodes().iter().enumerate() {
            if !train {
                self.marks.lap::<S>(Phase::Update, k, false);
                watch(Event::end(Phase::Update, k));
                continue;
            }
            let owned = if node.owns_params() {
                node.param_ids()
            } else {
                &[]
            };
            for &id in owned {
                self.optimizer
                    .update(id, &mut self.params[id], &self.param_grads[id], lr);
            }
            let updated = self.kernels[k].update();
            self.marks
                .lap::<S>(Phase::Update, k, updated || !owned.is_empty());
            watch(Event::end(Phase::Update, k));
        }
    }

    /// A whole training step on a batch: forward, loss, backward, update. Returns the loss
    /// before the update.
    pub fn step(&mut self, batch: &Batch<S>, lr: S) -> S {
        self.step_phases(batch, lr, &mut |_| {})
    }

    /// [`Network::step`], telling `watch` when each phase starts and each node ends (for
    /// progress bars and per-node timing).
    ///
    /// Counted arithmetic that `watch` itself does is not charged to any node: it is kept
    /// apart while the step runs and added to the thread's tally when the step ends.
    pub fn step_watched(&mut self, batch: &Batch<S>, lr: S, watch: impl FnMut(Event)) -> S {
        let mut watch = Apart::new(watch);
        self.step_phases(batch, lr, &mut |event| watch.call(event))
    }

    /// The four phases of a step, each starting from the snapshot the previous one ended on.
    fn step_phases(&mut self, batch: &Batch<S>, lr: S, watch: &mut impl FnMut(Event)) -> S {
        self.forward_phase(&batch.inputs, batch.size, watch);
        let loss = self.loss_phase(batch, true, watch);
        self.backward_phase(true, watch);
        self.update_phase(lr, true, watch);
        loss
    }

    /// The forward pass alone, watched like [`Network::step_watched`].
    pub fn forward_watched(&mut self, inputs: &[S], batch: usize, watch: impl FnMut(Event)) {
        let mut watch = Apart::new(watch);
        self.forward_phase(inputs, batch, &mut |event| watch.call(event));
    }

    /// Every parameter tensor, in storage order (a dense layer's weights input-major).
    pub fn params(&self) -> Vec<&[S]> {
        self.params.iter().map(|p| &p[..]).collect()
    }

    /// Every parameter tensor with its gradient from the last backward pass, in storage
    /// order. For gradient checks.
    pub fn params_and_grads_mut(&mut self) -> Vec<(&mut [S], &[S])> {
        self.params
            .iter_mut()
            .zip(&self.param_grads)
            .map(|(p, g)| (&mut p[..], &g[..]))
            .collect()
    }

    /// The model file of this network: the plan's model with every parameter and every
    /// operation's state written inline, in the model file's order. A dense or convolution
    /// layer's parameters go into its `weights` and `biases`, every other operation's into
    /// its graph entry's `params` by name, with its state (a tensor shared by several nodes
    /// is written once, on the node that owns it). A chain whose layers need `params` is
    /// written as the graph it is, each node reading the one before.
    pub fn to_model(&self) -> Model {
        let mut out = self.plan.model().clone();
        let entries = out.layers.len().max(out.graph.len());
        let mut named: Vec<Option<Params>> = vec![None; entries];
        for (node, kernel) in self.plan.nodes().iter().zip(&self.kernels) {
            let mut tensors: Vec<Vec<f32>> = Vec::new();
            if node.owns_params() {
                for (j, &id) in node.param_ids().iter().enumerate() {
                    let stored: Vec<f32> = self.params[id].iter().map(|&v| to_f32(v)).collect();
                    tensors.push(node.op().file_order(j, &stored));
                }
            }
            let layer = match out.layers.get_mut(node.entry()) {
                Some(layer) => layer,
                None => &mut out.graph[node.entry()].op,
            };
            let mut map = Vec::new();
            if let Layer::Dense {
                weights, biases, ..
            }
            | Layer::Conv2d {
                weights, biases, ..
            } = layer
            {
                if !tensors.is_empty() {
                    let mut tensors = tensors.into_iter();
                    *weights = tensors.next();
                    *biases = tensors.next();
                }
            } else {
                let names = node.op().param_names();
                map.extend(names.iter().map(|n| n.to_string()).zip(tensors));
            }
            let state = node.op().state().into_iter().zip(kernel.state());
            map.extend(state.map(|((name, _), values)| {
                (
                    name.to_string(),
                    values.iter().map(|&v| to_f32(v)).collect(),
                )
            }));
            if !map.is_empty() {
                named[node.entry()] = Some(Params(map));
            }
        }
        if out.graph.is_empty() && named.iter().any(Option::is_some) {
            out.graph = chain_as_graph(&self.plan, std::mem::take(&mut out.layers));
        }
        for (entry, params) in out.graph.iter_mut().zip(named) {
            entry.params = params;
        }
        out
    }
}

/// A chain's layers as graph entries, each reading the one before, named as the chain named
/// them: by default, or explicitly where a chain's name (only a label there) is also another
/// layer's, with a suffix that makes it unique (`x`, `x.2`).
fn chain_as_graph(plan: &Plan, layers: Vec<Layer>) -> Vec<Entry> {
    let mut names: Vec<String> = vec![String::new(); layers.len()];
    for node in plan.nodes().iter().rev() {
        names[node.entry()] = node.name().to_string();
    }
    let all: std::collections::HashSet<String> = names.iter().cloned().collect();
    let mut taken = std::collections::HashSet::from([crate::plan::INPUT.to_string()]);
    layers
        .into_iter()
        .zip(names)
        .map(|(op, name)| {
            let mut unique = name.clone();
            let mut k = 1;
            while taken.contains(&unique) || (unique != name && all.contains(&unique)) {
                k += 1;
                unique = format!("{name}.{k}");
            }
            taken.insert(unique.clone());
            Entry {
                name: (unique != name).then_some(unique),
                op,
                inputs: None,
                share: None,
                params: None,
            }
        })
        .collect()
}

/// `into += from`, value by value: a gradient added onto one already there.
#[inline(never)]
fn accumulate<S: Scalar>(into: &mut [S], from: &[S]) {
    for (g, &d) in into.iter_mut().zip(from) {
        *g += d;
    }
}

/// Runs one real training step of `plan` with `CountedZeros<f32>` on the first `batch`
/// examples of `data` (starting over if it has fewer), at the model's learning rate, and
/// returns what every node counted in every phase, multiplications by zero included.
///
/// ```
/// use opcount::{Model, data::Dataset, estimate, measure_step};
///
/// let model = Model::parse(
///     "(name: \"tiny\", input: [3], loss: Mse,
///       layers: [Dense(units: 4, activation: Tanh), Dense(units: 2)])",
///     "tiny.ron",
/// )?;
/// let plan = model.plan("tiny.ron")?;
/// let data = Dataset::synthetic(&plan, 5, 42);
/// let measured = measure_step(&plan, &data, 5);
/// // Everything but multiplications by zero, which depend on the data, has a closed form.
/// assert_eq!(measured.predictable(), estimate::step(&plan, 5)?);
/// assert_eq!(measured.nodes[0].forward.mul, 5 * 3 * 4);
/// # Ok::<(), opcount::Error>(())
/// ```
pub fn measure_step(plan: &Plan, data: &Dataset, batch: usize) -> StepCounts {
    measure_step_watched(plan, data, batch, |_| {})
}

/// [`measure_step`], telling `watch` how the step progresses (see [`Network::step_watched`]).
pub fn measure_step_watched(
    plan: &Plan,
    data: &Dataset,
    batch: usize,
    watch: impl FnMut(Event),
) -> StepCounts {
    let mut net = Network::<CountedZeros<f32>>::new(plan);
    let lr = plan.model().training.as_ref().map_or(0.01, |t| t.lr);
    net.step_watched(
        &data.head(batch, plan.loss()),
        CountedZeros::from(lr),
        watch,
    );
    net.counts()
        .expect("a counted network with attribution on has counts")
}

/// A watch callback whose own counted work stays out of the step's per-node counts: each
/// call runs under `tally::take`, and what it counted goes back to the thread's tally when the
/// `Apart` is dropped, after the step.
struct Apart<F: FnMut(Event)> {
    watch: F,
    counted: Counts,
}

impl<F: FnMut(Event)> Apart<F> {
    fn new(watch: F) -> Self {
        Apart {
            watch,
            counted: Counts::ZERO,
        }
    }

    fn call(&mut self, event: Event) {
        let ((), counted) = tally::take(|| (self.watch)(event));
        self.counted += counted;
    }
}

impl<F: FnMut(Event)> Drop for Apart<F> {
    fn drop(&mut self) {
        tally::merge(self.counted);
    }
}

/// Snapshots of the tally between nodes: node k's work in a phase is the difference of the
/// snapshots on either side of it. The differences are only computed when
/// [`Network::counts`] asks, and number types that count nothing take no snapshots at all.
///
/// Reading the whole tally is the one cost of attribution, so a step reads it as few times
/// as it can: a node that does nothing in a phase (an activation's update) reuses the
/// snapshot before it, and in [`Network::step`] each phase starts from the snapshot the
/// previous phase ended on. Snapshots live in `slots`; the rest are indices into it.
#[derive(Clone, Debug)]
struct Marks {
    slots: Vec<Counts>,
    /// Per phase (forward, loss, backward, update), the slot it starts from.
    start: [usize; 4],
    /// Per phase, per node, the slot after the node (the loss has one "node").
    end: [Vec<usize>; 4],
    /// The slot index of the last snapshot taken, where a chained phase starts.
    last: usize,
    /// Whether to take snapshots at all.
    on: bool,
}

impl Marks {
    /// Slots: one own start per phase, then one per node and phase (and one for the loss).
    fn new(nodes: usize) -> Marks {
        Marks {
            slots: vec![Counts::ZERO; 4 + 3 * nodes + 1],
            start: [0, 1, 2, 3],
            end: [vec![0; nodes], vec![0; 1], vec![0; nodes], vec![0; nodes]],
            last: 0,
            on: true,
        }
    }

    fn index(phase: Phase) -> usize {
        match phase {
            Phase::Forward => 0,
            Phase::Loss => 1,
            Phase::Backward => 2,
            Phase::Update => 3,
        }
    }

    /// The slot a phase's node k writes its snapshot to.
    fn slot(&self, phase: Phase, k: usize) -> usize {
        let nodes = self.end[0].len();
        4 + match phase {
            Phase::Forward => k,
            Phase::Loss => nodes,
            Phase::Backward => nodes + 1 + k,
            Phase::Update => 2 * nodes + 1 + k,
        }
    }

    /// Starts `phase`: from a fresh snapshot, or if `chained`, from the last one taken.
    #[inline(always)]
    fn start<S: Scalar>(&mut self, phase: Phase, chained: bool) {
        if S::IS_COUNTED && self.on {
            self.start_counted(phase, chained);
        }
    }

    #[inline(never)]
    fn start_counted(&mut self, phase: Phase, chained: bool) {
        let p = Marks::index(phase);
        if !chained {
            self.slots[p] = tally::snapshot();
            self.last = p;
        }
        self.start[p] = self.last;
    }

    /// Ends node `k` of `phase`: a snapshot if the node did any work, else the snapshot
    /// before it.
    ///
    /// Only the test stays inline: with attribution off (as `opcount bench` times counting
    /// alone) a counted step pays for no call here.
    #[inline(always)]
    fn lap<S: Scalar>(&mut self, phase: Phase, k: usize, worked: bool) {
        if S::IS_COUNTED && self.on {
            self.lap_counted(phase, k, worked);
        }
    }

    #[inline(never)]
    fn lap_counted(&mut self, phase: Phase, k: usize, worked: bool) {
        if worked {
            let slot = self.slot(phase, k);
            self.slots[slot] = tally::snapshot();
            self.last = slot;
        }
        self.end[Marks::index(phase)][k] = self.last;
    }

    fn counts(&self) -> StepCounts {
        let n = self.end[0].len();
        // Node k's counts in a phase: its end snapshot minus the snapshot before it, which
        // is the end of the node that ran just before (or the phase's start).
        let per_node = |p: usize, order: &mut dyn Iterator<Item = usize>| {
            let mut out = vec![Counts::ZERO; n];
            let mut before = self.start[p];
            for k in order {
                let after = self.end[p][k];
                out[k] = tally::between(&self.slots[before], &self.slots[after]);
                before = after;
            }
            out
        };
        let forward = per_node(0, &mut (0..n));
        let backward = per_node(2, &mut (0..n).rev());
        let update = per_node(3, &mut (0..n));
        StepCounts {
            nodes: (0..n)
                .map(|k| NodeCounts {
                    forward: forward[k],
                    backward: backward[k],
                    update: update[k],
                })
                .collect(),
            loss: tally::between(&self.slots[self.start[1]], &self.slots[self.end[1][0]]),
        }
    }
}

/// The uniform bound of an initialisation scheme for a layer of `fan_in` inputs and
/// `fan_out` outputs.
fn init_bound(init: Init, fan_in: usize, fan_out: usize) -> f32 {
    match init {
        Init::Xavier { .. } => (6.0 / (fan_in + fan_out) as f64).sqrt() as f32,
        Init::He { .. } => (6.0 / fan_in as f64).sqrt() as f32,
    }
}

fn to_f32<S: Scalar>(v: S) -> f32 {
    v.to_f32().expect("every Scalar converts to f32")
}
