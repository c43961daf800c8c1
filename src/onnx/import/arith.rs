//! Element-wise Add, Sub, Mul and Div: of two computed values of one shape (`Add`, `Sub`,
//! `Mul`, `Div`), or of a computed value and a constant that broadcasts to it (`ConstOp`:
//! `x / 8`, `x - mean`, `x * scale`, `1 - x`). An `Add` of a constant onto a MatMul or bias-less Conv
//! read nowhere else stays that layer's bias.

use super::{Act, Builder, Result, Value, shown};
use crate::model::{ConstArith, Layer};
use crate::onnx::constant::Tensor;
use crate::onnx::proto::NodeProto;

impl Builder<'_> {
    pub(super) fn arith(&mut self, node: &NodeProto<'_>) -> Result<Value> {
        let (Some(&a), Some(&b), 2) = (node.inputs.first(), node.inputs.get(1), node.inputs.len())
        else {
            return Err("expects two inputs".into());
        };
        let what = match node.op_type {
            "Add" => "adds",
            "Sub" => "subtracts",
            "Mul" => "multiplies",
            _ => "divides",
        };
        let act = match (self.get(a)?.clone(), self.get(b)?.clone()) {
            (Value::Act(x), Value::Act(y)) => {
                let (layer, to) = match node.op_type {
                    "Add" => (Layer::Add, "to"),
                    "Sub" => (Layer::Sub, "from"),
                    "Mul" => (Layer::Mul, "by"),
                    _ => (Layer::Div, "by"),
                };
                if x.onnx != y.onnx {
                    // `x - y` subtracts y from x; the others read in order.
                    let (first, second) = match layer {
                        Layer::Sub => (&y.onnx, &x.onnx),
                        _ => (&x.onnx, &y.onnx),
                    };
                    return Err(format!(
                        "{what} a {} value {to} a {} value; opcount {what} two computed \
                         values of one shape only",
                        shown(first),
                        shown(second)
                    ));
                }
                self.push(node, layer, &[&x, &y])?
            }
            (Value::Act(x), Value::Const(t)) => {
                // A bias of the MatMul or Conv that computes it, if it can be one.
                if node.op_type == "Add"
                    && let Ok(fused) = self.bias(x.clone(), t.clone(), a)
                {
                    fused
                } else {
                    let op = match node.op_type {
                        "Add" => ConstArith::Add,
                        "Sub" => ConstArith::Sub,
                        "Mul" => ConstArith::Mul,
                        _ => ConstArith::Div,
                    };
                    self.with_constant(node, op, x, &t)?
                }
            }
            (Value::Const(t), Value::Act(x)) => {
                if node.op_type == "Add"
                    && let Ok(fused) = self.bias(x.clone(), t.clone(), b)
                {
                    return Ok(Value::Act(fused));
                }
                let op = match node.op_type {
                    "Add" => ConstArith::Add,
                    "Sub" => ConstArith::SubFrom,
                    "Mul" => ConstArith::Mul,
                    _ => {
                        return Err(format!(
                            "divides a constant by the computed '{b}'; opcount divides a \
                             computed value by a constant only (x / c)"
                        ));
                    }
                };
                self.with_constant(node, op, x, &t)?
            }
            (Value::Const(_), Value::Const(_)) => {
                unreachable!("all-constant nodes are folded")
            }
        };
        Ok(Value::Act(act))
    }

    /// A `ConstOp` of `x` and the constant `t`, which must broadcast to `x` without growing
    /// it: its dimensions, less any leading ones (the batch's among them), each 1 or
    /// `x`'s size on that axis, counted from the last.
    fn with_constant(
        &mut self,
        node: &NodeProto<'_>,
        op: ConstArith,
        x: Act,
        t: &Tensor,
    ) -> Result<Act> {
        let Some(values) = t.floats() else {
            return Err("its constant holds whole numbers, not floats".into());
        };
        let mut dims = t.dims.as_slice();
        while dims.len() > x.onnx.len() {
            if dims[0] != 1 {
                return Err(format!(
                    "a {} constant against a {} value: it would give each example of the \
                     batch its own, which opcount does not compute",
                    shown(&t.dims),
                    shown(&x.onnx)
                ));
            }
            dims = &dims[1..];
        }
        let single = values.len() == 1;
        // A value whose shape here differs from ONNX's (GlobalAveragePool's `[c]`, `[c, 1, 1]`
        // in ONNX) takes a single number only.
        let dims: Vec<usize> = if dims.is_empty() || (single && x.ours.dims() != x.onnx) {
            vec![1]
        } else if x.ours.dims() != x.onnx {
            return Err(format!(
                "a {} constant against a value opcount holds as {} ({} in ONNX); opcount \
                 maps a single number there",
                shown(&t.dims),
                x.ours,
                shown(&x.onnx)
            ));
        } else {
            dims.to_vec()
        };
        let layer = Layer::ConstOp {
            op,
            shape: dims,
            values: values.to_vec(),
        };
        let mut out = self.push(node, layer, &[&x])?;
        out.onnx = x.onnx;
        Ok(out)
    }
}
