//! Element-wise Add, Sub, Mul and Div: of two computed values of one shape (`Add`, `Sub`,
//! `Mul`, `Div`), of two whose shapes broadcast (`Broadcast`: `x - mean`, `x * gate`), or
//! of a computed value and a constant that broadcasts to it (`ConstOp`:
//! `x / 8`, `x - mean`, `x * scale`, `1 - x`). An `Add` of a constant onto a MatMul or bias-less Conv
//! read nowhere else stays that layer's bias.

use super::{Act, Builder, Result, Value, node_name, shown};
use crate::model::{Arith, ConstArith, Layer};
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
                if x.onnx == y.onnx {
                    // Held alike here, or both read as ONNX holds them (`[c]` after
                    // GlobalAveragePool against a `[c, 1, 1]` value).
                    let (x, y) = if x.ours == y.ours {
                        (x, y)
                    } else {
                        (self.as_onnx(node, x)?, self.as_onnx(node, y)?)
                    };
                    let layer = match node.op_type {
                        "Add" => Layer::Add,
                        "Sub" => Layer::Sub,
                        "Mul" => Layer::Mul,
                        _ => Layer::Div,
                    };
                    self.push(node, layer, &[&x, &y])?
                } else {
                    self.broadcast(node, what, x, y)?
                }
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

    /// `Pow` of a computed value to the constant 2 (`d ** 2`, `d.pow(2)`): the value times
    /// itself, opcount's `Mul` of it by itself, counted as such (1 mul per value; backward
    /// `dy x` for each factor and their sum). Other exponents are refused.
    pub(super) fn square(&mut self, node: &NodeProto<'_>) -> Result<Value> {
        let x = self.act(node, 0)?;
        let e = self.constant(node, 1)?.ok_or("no exponent (input 1)")?;
        let two = match (e.floats(), e.ints()) {
            (Some([v]), _) => *v == 2.0,
            (_, Some([v])) => *v == Some(2),
            _ => false,
        };
        if !two {
            return Err(
                "an exponent other than the number 2: opcount maps Pow as a square, x * x".into(),
            );
        }
        let mut y = self.push(node, Layer::Mul, &[&x, &x])?;
        y.onnx = x.onnx;
        Ok(Value::Act(y))
    }

    /// A `Broadcast` of two computed values of different shapes that broadcast as ONNX
    /// (numpy) broadcasts them: one example's axes each of the same size or 1 in one of
    /// them. Both have the batch first, so they must have as many axes (else one's batch
    /// would meet another's axis). A value held here otherwise than in ONNX (`[c]` for
    /// GlobalAveragePool's `[c, 1, 1]`) is read as ONNX's shape first, by a Reshape.
    fn broadcast(&mut self, node: &NodeProto<'_>, what: &str, x: Act, y: Act) -> Result<Act> {
        let to = match node.op_type {
            "Add" => "to",
            "Sub" => "from",
            _ => "by",
        };
        // `x - y` subtracts y from x; the others read in order.
        let (first, second) = match node.op_type {
            "Sub" => (&y.onnx, &x.onnx),
            _ => (&x.onnx, &y.onnx),
        };
        let spreads = x.onnx.len() == y.onnx.len()
            && x.onnx
                .iter()
                .zip(&y.onnx)
                .all(|(&a, &b)| a == b || a == 1 || b == 1);
        if !spreads {
            return Err(format!(
                "{what} a {} value {to} a {} value: the shapes do not broadcast (with the \
                 batch first, numpy's rules need as many axes, each of one size or 1 in \
                 either)",
                shown(first),
                shown(second)
            ));
        }
        let op = match node.op_type {
            "Add" => Arith::Add,
            "Sub" => Arith::Sub,
            "Mul" => Arith::Mul,
            _ => Arith::Div,
        };
        let (x, y) = (self.as_onnx(node, x)?, self.as_onnx(node, y)?);
        self.push(node, Layer::Broadcast { op }, &[&x, &y])
    }

    /// `x`, or where it is held otherwise here than in ONNX, a Reshape of it to ONNX's
    /// shape (a copy: nothing counted), named after the first node that needs it and made
    /// once.
    fn as_onnx(&mut self, node: &NodeProto<'_>, x: Act) -> Result<Act> {
        if x.ours.dims() == x.onnx {
            return Ok(x);
        }
        if let Some(held) = self.held_as_onnx.get(&x.entry) {
            return Ok(held.clone());
        }
        let base = format!("{}.reshape", node_name(node));
        let layer = Layer::Reshape {
            shape: x.onnx.clone(),
        };
        let held = self.push_entry(&base, "", layer, &[&x], Vec::new())?;
        self.held_as_onnx.insert(x.entry, held.clone());
        Ok(held)
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
