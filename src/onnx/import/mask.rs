//! What a causal self-attention block written in PyTorch exports beyond products and
//! softmax: `Where` of a fixed mask (`masked_fill(mask == 0, -inf)`), opcount's `MaskFill`;
//! and `Split` of a dense layer's output into query, key and value (`qkv(x).split(C, 2)`),
//! which becomes one dense layer per part: the same sums in each output, and backward the
//! same terms in each input gradient (the parts' gradients add where the whole layer's sum
//! was), so the counts are the whole layer's.

use super::{Act, Builder, Result, Value, attr_i, attr_ints, shown};
use crate::model::{Entry, Layer};
use crate::onnx::constant::Tensor;
use crate::onnx::proto::NodeProto;

impl Builder<'_> {
    /// `Where(condition, a, b)` with a constant condition, one of `a` and `b` a single
    /// constant number (the fill) and the other computed: a `MaskFill` of the computed one.
    pub(super) fn where_mask(&mut self, node: &NodeProto<'_>) -> Result<Value> {
        let refuse = || {
            "opcount maps Where of a constant condition between a computed value and one \
             constant number (masked_fill)"
                .to_string()
        };
        if node.inputs.len() != 3 {
            return Err("expects three inputs".into());
        }
        let Some(condition) = self.constant(node, 0)? else {
            return Err(refuse());
        };
        let truths = condition
            .truths()
            .ok_or("its condition depends on the batch size")?;
        let (x, fill, masked) = match (self.get(node.inputs[1])?, self.get(node.inputs[2])?) {
            (Value::Const(fill), Value::Act(x)) => (x.clone(), fill.clone(), truths),
            (Value::Act(x), Value::Const(fill)) => {
                (x.clone(), fill.clone(), truths.iter().map(|t| !t).collect())
            }
            _ => return Err(refuse()),
        };
        let fill = match fill.floats() {
            Some([v]) => *v,
            _ => return Err(refuse()),
        };
        let shape = self.fixed_dims("mask", &condition, &x)?;
        let layer = Layer::MaskFill {
            shape,
            masked,
            fill,
        };
        let mut y = self.push(node, layer, &[&x])?;
        y.onnx = x.onnx;
        Ok(Value::Act(y))
    }

    /// The dimensions of a fixed tensor `t` (a constant, a mask) spread over the value `x`,
    /// as opcount's broadcasting takes them: the batch's axis, if `t` has one, must be 1 and
    /// is dropped; more axes than the value has would grow it (numpy's rules), which
    /// opcount's values never do. A value held otherwise here than in ONNX (`[c]` for
    /// GlobalAveragePool's `[c, 1, 1]`) takes a single number only.
    pub(super) fn fixed_dims(&self, what: &str, t: &Tensor, x: &Act) -> Result<Vec<usize>> {
        let mut dims = t.dims.as_slice();
        if dims.len() > x.onnx.len() + 1 {
            return Err(format!(
                "a {} {what} against a {} value (the batch first): it has more axes, so \
                 numpy's rules would grow the value, which opcount does not compute",
                shown(&t.dims),
                shown(&x.onnx)
            ));
        }
        if dims.len() == x.onnx.len() + 1 {
            if dims[0] != 1 {
                return Err(format!(
                    "a {} {what} against a {} value: it would give each example of the \
                     batch its own, which opcount does not compute",
                    shown(&t.dims),
                    shown(&x.onnx)
                ));
            }
            dims = &dims[1..];
        }
        if dims.is_empty() || (t.len() == 1 && x.ours.dims() != x.onnx) {
            return Ok(vec![1]);
        }
        if x.ours.dims() != x.onnx {
            return Err(format!(
                "a {} {what} against a value opcount holds as {} ({} in ONNX); opcount \
                 maps a single number there",
                shown(&t.dims),
                x.ours,
                shown(&x.onnx)
            ));
        }
        Ok(dims.to_vec())
    }

    /// `Split` of a dense layer's output along its last axis, read by nothing else: one
    /// dense layer per part, each with its rows of the weights and biases, in place of the
    /// whole, named `<layer>[from:to]`.
    pub(super) fn split(&mut self, node: &NodeProto<'_>) -> Result<()> {
        let read = node.inputs.first().copied().unwrap_or("");
        let x = self.act(node, 0)?;
        let refuse = || {
            format!(
                "splits '{read}'; opcount maps Split only of a dense layer's (MatMul's or \
                 Gemm's) output along its last axis, read by nothing else"
            )
        };
        let rank = x.onnx.len() as i64 + 1;
        let axis = attr_i(node, "axis", 0);
        if (if axis < 0 { axis + rank } else { axis }) != rank - 1 || x.ours.dims() != x.onnx {
            return Err(refuse());
        }
        let width = *x.onnx.last().ok_or_else(refuse)?;
        let parts = node.outputs.len();
        let sizes: Vec<usize> = match (self.constant(node, 1)?, attr_ints(node, "split")) {
            (Some(t), _) => t
                .ints()
                .ok_or("its sizes are not whole numbers")?
                .iter()
                .map(|s| s.and_then(|s| usize::try_from(s).ok()))
                .collect::<Option<_>>()
                .ok_or("a size that is negative or the batch's")?,
            (None, Some(s)) => s.iter().map(|&s| s.max(0) as usize).collect(),
            (None, None) => {
                // Equal parts (the last smaller), opset 18's `num_outputs`.
                let each = width.div_ceil(parts.max(1));
                (0..parts)
                    .map(|i| each.min(width.saturating_sub(i * each)))
                    .collect()
            }
        };
        if sizes.len() != parts || sizes.iter().sum::<usize>() != width || sizes.contains(&0) {
            return Err(format!(
                "sizes {sizes:?} for {parts} outputs of a {} value",
                shown(&x.onnx)
            ));
        }
        // The dense layer that computes the value, straight from its node, read here only.
        let direct = self.produced.get(&x.entry).is_some_and(|v| v == read);
        if !direct || self.uses.get(read).copied().unwrap_or(0) != 1 {
            return Err(refuse());
        }
        let at = self
            .entries
            .iter()
            .position(|e| e.name.as_deref() == Some(&x.entry))
            .ok_or_else(refuse)?;
        let whole = self.entries.remove(at);
        let Layer::Dense {
            activation: None,
            bias,
            weights: Some(weights),
            biases,
            ..
        } = &whole.op
        else {
            self.entries.insert(at, whole);
            return Err(refuse());
        };
        let inputs = weights.len() / width;
        self.names.remove(&x.entry);
        self.produced.remove(&x.entry);
        let mut from = 0;
        for (k, (&size, &out)) in sizes.iter().zip(&node.outputs).enumerate() {
            let to = from + size;
            let mut name = format!("{}[{from}:{to}]", x.entry);
            while self.names.contains(&name) {
                name.push('\'');
            }
            self.names.insert(name.clone());
            self.produced.insert(name.clone(), out.to_string());
            let part = Layer::Dense {
                units: size,
                activation: None,
                bias: *bias,
                name: None,
                weights: Some(weights[from * inputs..to * inputs].to_vec()),
                biases: biases.as_ref().map(|b| b[from..to].to_vec()),
            };
            self.entries.insert(
                at + k,
                Entry {
                    name: Some(name.clone()),
                    op: part,
                    inputs: whole.inputs.clone(),
                    share: None,
                    params: None,
                },
            );
            let mut dims = x.onnx.clone();
            *dims.last_mut().expect("a last axis") = size;
            let shape = crate::shape::Shape::new(&dims).ok_or_else(refuse)?;
            let part = Act {
                entry: name,
                ours: shape,
                onnx: dims,
            };
            if !out.is_empty() {
                self.values.insert(out.to_string(), Value::Act(part));
            }
            from = to;
        }
        Ok(())
    }
}
