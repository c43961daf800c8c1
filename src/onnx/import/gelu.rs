//! The exact GELU, `0.5 x (1 + erf(x / sqrt 2))`: a `Gelu` node, or the five nodes PyTorch
//! exports for it, mapped to opcount's `GeluErf` (or, with `--gelu-as-tanh`, to the tanh-form
//! `Gelu`).

use std::collections::HashMap;

use super::{Builder, Result, Value};
use crate::model::Layer;
use crate::onnx::proto::{GraphProto, NodeProto};

impl Builder<'_> {
    /// The last node of an exact GELU's pattern, whose input is `x`: one GELU of `x`.
    pub(super) fn erf_gelu(&mut self, node: &NodeProto<'_>, x: &str, as_tanh: bool) -> Result<()> {
        let x = match self.get(x)? {
            Value::Act(a) => a.clone(),
            Value::Const(_) => return Err("a GELU of a constant".into()),
        };
        let y = self.push(node, exact_gelu(as_tanh), &[&x])?;
        self.set(node, Value::Act(y))
    }

    pub(super) fn feeds_erf(&self, node: &NodeProto<'_>) -> bool {
        node.outputs.iter().any(|o| self.erf_inputs.contains(o))
    }
}

/// The layer an exact GELU becomes: itself, or the tanh form if the user asked for it.
pub(super) fn exact_gelu(as_tanh: bool) -> Layer {
    if as_tanh { Layer::Gelu } else { Layer::GeluErf }
}

/// An `Erf` (or what feeds it) outside the GELU pattern.
pub(super) fn erf_refusal() -> String {
    "an Erf outside the GELU pattern PyTorch exports (Div by sqrt 2, Erf, Add 1, Mul by the \
     input, Mul by 0.5, each value read once): opcount maps only that"
        .into()
}

/// The exact GELUs PyTorch exports, `0.5 (x (1 + erf(x / sqrt 2)))`: `Div`, `Erf`, `Add`,
/// `Mul`, `Mul`, each value read once. By the last node's index: the value `x`, and the
/// four nodes before it, which leave nothing behind.
pub(super) fn erf_gelus<'a>(
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
                    .then(|| crate::onnx::constant::tensor(a.t.as_ref()?, None).ok())??
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
