//! The interpreter: a [`Network<S>`] built from a validated [`Plan`], generic over the
//! number type. Forward over a batch, the loss, backward node by node with analytic
//! derivatives, and the SGD update; every node's work in every phase is measured and kept
//! as [`StepCounts`].
//!
//! Memory is the parameters, their gradients, and one activation and one gradient buffer per
//! node boundary for the current batch: no per-scalar tape.

mod activation;
mod buffer;
mod conv;
mod dense;
mod gemm;
mod loss;
mod pool;

use crate::CountedZeros;
use crate::counts::Counts;
use crate::data::{Batch, Dataset, scalar};
use crate::model::{Activation, Init, Layer, Loss, Model, NodeOp, Plan, Shape};
use crate::phases::{NodeCounts, Phase, StepCounts};
use crate::rng::Rng;
use crate::scalar::Scalar;
use crate::tally;

use buffer::Buffer;
use conv::{Conv, Geometry};
use dense::Dense;
use pool::Window;

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

/// A node's runtime state: parameters for the layers that have them.
#[derive(Clone, Debug)]
enum State<S> {
    Dense(Dense<S>),
    Conv(Conv<S>),
    /// Max pooling remembers where each window's maximum was.
    MaxPool(Window, Vec<usize>),
    AvgPool(Window),
    Flatten,
    Activation(Activation),
}

/// A network ready to run, with numbers of type `S`.
#[derive(Clone, Debug)]
pub struct Network<S> {
    plan: Plan,
    states: Vec<State<S>>,
    /// `acts[k]` is node k's input for the current batch; the last is the network's output.
    acts: Vec<Buffer<S>>,
    /// `grads[k]` is dL/d`acts[k]` (left empty where nothing needs it).
    grads: Vec<Buffer<S>>,
    batch: usize,
    marks: Marks,
    /// Scratch space shared by the nodes' backward passes (a convolution's patch
    /// gradients and which input positions they reached).
    scratch: Vec<S>,
    touched: Vec<bool>,
}

impl<S: Scalar> Network<S> {
    /// Builds the network of a validated plan, with the model's inline parameters or its
    /// seeded initialisation.
    pub fn new(model: &Model, plan: &Plan) -> Network<S> {
        let mut rng = Rng::new(match model.init {
            Init::Xavier { seed } | Init::He { seed } => seed,
        });
        let states = plan
            .nodes
            .iter()
            .map(|node| {
                let (weights, biases) = match &model.layers[node.layer] {
                    Layer::Dense {
                        weights, biases, ..
                    }
                    | Layer::Conv2d {
                        weights, biases, ..
                    } => (weights.as_deref(), biases.as_deref()),
                    _ => (None, None),
                };
                // Random weights are drawn in the layer's storage order; inline weights come
                // in PyTorch's order (dense `[unit][input]`, conv `[out][in][i][j]`).
                let init = model.init;
                let mut draw = |count: usize, fan_in: usize, fan_out: usize| {
                    let bound = init_bound(init, fan_in, fan_out);
                    Buffer::from_iter((0..count).map(|_| scalar::<S>(rng.symmetric(bound))))
                };
                let biases = |bias: bool, n: usize| -> Vec<S> {
                    match (bias, biases) {
                        (false, _) => Vec::new(),
                        (true, Some(b)) => b.iter().map(|&v| scalar(v)).collect(),
                        (true, None) => vec![S::zero(); n],
                    }
                };
                match node.op {
                    NodeOp::Dense {
                        inputs,
                        units,
                        bias,
                    } => {
                        let b = biases(bias, units);
                        State::Dense(match weights {
                            // The layer keeps its weights input-major: `w[i][j]`.
                            Some(w) => Dense::new(
                                inputs,
                                units,
                                Buffer::from_iter(
                                    (0..inputs * units)
                                        .map(|at| scalar(w[(at % units) * inputs + at / units])),
                                ),
                                &b,
                            ),
                            None => {
                                Dense::new(inputs, units, draw(inputs * units, inputs, units), &b)
                            }
                        })
                    }
                    NodeOp::Conv2d {
                        in_channels,
                        out_channels,
                        kernel,
                        stride,
                        padding,
                        bias,
                    } => {
                        let Shape::Image { h, w, .. } = node.input else {
                            unreachable!("the plan gives a convolution an image input")
                        };
                        let area = kernel * kernel;
                        let count = out_channels * in_channels * area;
                        let weights = match weights {
                            Some(w) => Buffer::from_iter(w.iter().map(|&v| scalar(v))),
                            None => draw(count, in_channels * area, out_channels * area),
                        };
                        let geometry = Geometry {
                            in_channels,
                            out_channels,
                            kernel,
                            stride,
                            padding,
                            height: h,
                            width: w,
                        };
                        State::Conv(Conv::new(geometry, weights, &biases(bias, out_channels)))
                    }
                    NodeOp::MaxPool2d { size, stride } => {
                        State::MaxPool(window(node.input, size, stride), Vec::new())
                    }
                    NodeOp::AvgPool2d { size, stride } => {
                        State::AvgPool(window(node.input, size, stride))
                    }
                    NodeOp::Flatten => State::Flatten,
                    NodeOp::Activation(a) => State::Activation(a),
                }
            })
            .collect();
        Network {
            plan: plan.clone(),
            states,
            acts: Vec::new(),
            grads: Vec::new(),
            batch: 0,
            marks: Marks::new(plan.nodes.len()),
            scratch: Vec::new(),
            touched: Vec::new(),
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
        if batch == self.batch && !self.acts.is_empty() {
            return;
        }
        self.batch = batch;
        let mut sizes = vec![self.plan.input.len()];
        sizes.extend(self.plan.nodes.iter().map(|n| n.output.len()));
        self.acts = sizes
            .iter()
            .map(|&s| Buffer::filled(s * batch, S::zero()))
            .collect();
        self.grads = sizes
            .iter()
            .enumerate()
            .map(|(k, &s)| {
                let needed = k == sizes.len() - 1 || self.plan.nodes[k].needs_input_grad;
                Buffer::filled(if needed { s * batch } else { 0 }, S::zero())
            })
            .collect();
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
        self.acts[0].copy_from_slice(inputs);
        self.marks.start::<S>(Phase::Forward, false);
        watch(Event::start(Phase::Forward));
        for k in 0..self.states.len() {
            let (before, after) = self.acts.split_at_mut(k + 1);
            let (x, y) = (&before[k], &mut after[0]);
            let width = self.plan.nodes[k].output.len();
            match &mut self.states[k] {
                State::Dense(d) => d.forward(x, y),
                State::Conv(c) => c.forward(x, y),
                State::MaxPool(w, argmax) => {
                    argmax.resize(y.len(), 0);
                    pool::max_forward(w, x, y, argmax);
                }
                State::AvgPool(w) => pool::avg_forward(w, x, y),
                State::Flatten => y.copy_from_slice(x),
                State::Activation(a) => activation::forward(*a, x, y, width),
            }
            self.marks.lap::<S>(Phase::Forward, k, true);
            watch(Event::end(Phase::Forward, k));
        }
    }

    /// The output of the most recent forward pass.
    pub fn output(&self) -> &[S] {
        self.acts.last().map_or(&[], |b| b)
    }

    /// The loss of the most recent forward pass against `batch`'s targets; also sets the
    /// gradient that [`Network::backward`] starts from.
    pub fn loss(&mut self, batch: &Batch<S>) -> S {
        self.loss_phase(batch, false, &mut |_| {})
    }

    /// [`Network::loss`]; `chained` if it runs right after the forward pass, whose last mark
    /// is then also its first.
    fn loss_phase(&mut self, batch: &Batch<S>, chained: bool, watch: &mut impl FnMut(Event)) -> S {
        let last = self.acts.len() - 1;
        let width = self.plan.output().len();
        let (y, grad) = (&self.acts[last], &mut self.grads[last]);
        self.marks.start::<S>(Phase::Loss, chained);
        watch(Event::start(Phase::Loss));
        let loss = match self.plan.loss {
            Loss::Mse => loss::mse(y, &batch.values, grad),
            Loss::SoftmaxCrossEntropy => {
                loss::softmax_cross_entropy(y, &batch.classes, width, grad)
            }
        };
        self.marks.lap::<S>(Phase::Loss, 0, true);
        watch(Event::end(Phase::Loss, 0));
        loss
    }

    /// Gradients of every parameter, last node to first, from the gradient the loss set.
    /// A node computes the gradient of its input only if an earlier node has parameters.
    pub fn backward(&mut self) {
        self.backward_phase(false, &mut |_| {});
    }

    /// [`Network::backward`]; `chained` if it runs right after the loss.
    fn backward_phase(&mut self, chained: bool, watch: &mut impl FnMut(Event)) {
        let n = self.states.len();
        self.marks.start::<S>(Phase::Backward, chained);
        watch(Event::start(Phase::Backward));
        for k in (0..n).rev() {
            let (before, after) = self.grads.split_at_mut(k + 1);
            let dy = &after[0];
            let dx = if self.plan.nodes[k].needs_input_grad {
                Some(&mut *before[k])
            } else {
                None
            };
            let (x, y) = (&self.acts[k], &self.acts[k + 1]);
            let width = self.plan.nodes[k].output.len();
            let worked = match (&mut self.states[k], dx) {
                (State::Dense(d), dx) => {
                    d.backward(x, dy, dx);
                    true
                }
                (State::Conv(c), dx) => {
                    c.backward(x, dy, dx, &mut self.scratch, &mut self.touched);
                    true
                }
                (_, None) => false,
                (State::MaxPool(w, argmax), Some(dx)) => {
                    pool::max_backward(w, dy, argmax, dx);
                    true
                }
                (State::AvgPool(w), Some(dx)) => {
                    pool::avg_backward(w, dy, dx);
                    true
                }
                (State::Flatten, Some(dx)) => {
                    dx.copy_from_slice(dy);
                    true
                }
                (State::Activation(a), Some(dx)) => {
                    activation::backward(*a, y, dy, dx, width);
                    true
                }
            };
            self.marks.lap::<S>(Phase::Backward, k, worked);
            watch(Event::end(Phase::Backward, k));
        }
    }

    /// One SGD step on every parameter: `p -= lr * dp`.
    pub fn update(&mut self, lr: S) {
        self.update_phase(lr, false, &mut |_| {});
    }

    /// [`Network::update`]; `chained` if it runs right after the backward pass.
    fn update_phase(&mut self, lr: S, chained: bool, watch: &mut impl FnMut(Event)) {
        self.marks.start::<S>(Phase::Update, chained);
        watch(Event::start(Phase::Update));
        for (k, state) in self.states.iter_mut().enumerate() {
            let worked = match state {
                State::Dense(d) => {
                    d.update(lr);
                    true
                }
                State::Conv(c) => {
                    c.update(lr);
                    true
                }
                _ => false,
            };
            self.marks.lap::<S>(Phase::Update, k, worked);
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

    /// Every node's parameters, in plan order, as `(weights, biases)` in the layer's own
    /// storage order (dense: input-major).
    pub fn params(&self) -> Vec<(&[S], &[S])> {
        self.states
            .iter()
            .filter_map(|s| match s {
                State::Dense(d) => Some((&*d.w, &*d.b)),
                State::Conv(c) => Some((&*c.w, &*c.b)),
                _ => None,
            })
            .collect()
    }

    /// Mutable parameters together with their gradients from the last backward pass, as
    /// `[(params, grads)]`, two entries (weights, biases) per dense node. For gradient checks.
    pub fn params_and_grads_mut(&mut self) -> Vec<(&mut [S], &[S])> {
        let mut out = Vec::new();
        for s in &mut self.states {
            match s {
                State::Dense(d) => {
                    out.push((&mut *d.w, &*d.dw));
                    out.push((&mut *d.b, &*d.db));
                }
                State::Conv(c) => {
                    out.push((&mut *c.w, &*c.dw));
                    out.push((&mut *c.b, &*c.db));
                }
                _ => {}
            }
        }
        out
    }

    /// The model file of this network: `model` with every parameter written inline.
    pub fn to_model(&self, model: &Model) -> Model {
        let mut out = model.clone();
        for (node, state) in self.plan.nodes.iter().zip(&self.states) {
            let (torch_order, b): (Vec<f32>, &[S]) = match state {
                State::Dense(d) => {
                    let mut neuron_major = Vec::with_capacity(d.w.len());
                    for j in 0..d.units {
                        for i in 0..d.inputs {
                            neuron_major.push(to_f32(d.w[i * d.units + j]));
                        }
                    }
                    (neuron_major, &d.b)
                }
                State::Conv(c) => (c.w.iter().map(|&v| to_f32(v)).collect(), &c.b),
                _ => continue,
            };
            if let Layer::Dense {
                weights, biases, ..
            }
            | Layer::Conv2d {
                weights, biases, ..
            } = &mut out.layers[node.layer]
            {
                *weights = Some(torch_order);
                *biases = (!b.is_empty()).then(|| b.iter().map(|&v| to_f32(v)).collect());
            }
        }
        out
    }
}

/// The pooling window of a node with an image input.
fn window(input: Shape, size: usize, stride: usize) -> Window {
    let Shape::Image { h, w, .. } = input else {
        unreachable!("the plan gives pooling an image input")
    };
    Window {
        size,
        stride,
        height: h,
        width: w,
    }
}

/// Runs one real training step of `model` with `CountedZeros<f32>` on the first `batch`
/// examples of `data` (starting over if it has fewer) and returns what every node counted in
/// every phase, multiplications by zero included.
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
/// let measured = measure_step(&model, &plan, &data, 5);
/// // Everything but multiplications by zero, which depend on the data, has a closed form.
/// assert_eq!(measured.predictable(), estimate::step(&plan, 5)?);
/// assert_eq!(measured.nodes[0].forward.mul, 5 * 3 * 4);
/// # Ok::<(), opcount::Error>(())
/// ```
pub fn measure_step(model: &Model, plan: &Plan, data: &Dataset, batch: usize) -> StepCounts {
    measure_step_watched(model, plan, data, batch, |_| {})
}

/// [`measure_step`], telling `watch` how the step progresses (see [`Network::step_watched`]).
pub fn measure_step_watched(
    model: &Model,
    plan: &Plan,
    data: &Dataset,
    batch: usize,
    watch: impl FnMut(Event),
) -> StepCounts {
    let mut net = Network::<CountedZeros<f32>>::new(model, plan);
    let lr = model.training.as_ref().map_or(0.01, |t| t.lr);
    net.step_watched(&data.head(batch, plan.loss), CountedZeros::from(lr), watch);
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
    #[inline]
    fn start<S: Scalar>(&mut self, phase: Phase, chained: bool) {
        if !S::IS_COUNTED || !self.on {
            return;
        }
        let p = Marks::index(phase);
        if !chained {
            self.slots[p] = tally::snapshot();
            self.last = p;
        }
        self.start[p] = self.last;
    }

    /// Ends node `k` of `phase`: a snapshot if the node did any work, else the snapshot
    /// before it.
    #[inline]
    fn lap<S: Scalar>(&mut self, phase: Phase, k: usize, worked: bool) {
        if !S::IS_COUNTED || !self.on {
            return;
        }
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
