//! Values that change shape without moving a number: Flatten, Reshape, Squeeze and
//! Unsqueeze of computed values, which become the same value (nothing moves), a Flatten, or a
//! Reshape (values read as another shape, ranks 1 to 4).

use super::{Act, Builder, Result, Value, attr_i, attr_ints, shown};
use crate::model::Layer;
use crate::onnx::constant::ints_shown;
use crate::onnx::proto::NodeProto;

impl Builder<'_> {
    pub(super) fn flatten(&mut self, node: &NodeProto<'_>, x: Act, len: usize) -> Result<Act> {
        if x.ours.rank() == 1 {
            // Already flat here (after GlobalAveragePool): nothing moves.
            return Ok(Act {
                onnx: vec![len],
                ..x
            });
        }
        self.push(node, Layer::Flatten, &[&x])
    }

    pub(super) fn reshape(&mut self, node: &NodeProto<'_>) -> Result<Value> {
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
    pub(super) fn reshaped(
        &mut self,
        node: &NodeProto<'_>,
        x: Act,
        dims: Vec<usize>,
    ) -> Result<Value> {
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
        // Any other shape of as many values (attention's heads split and joined): a Reshape,
        // of a value held as ONNX holds it.
        if x.ours.dims() != x.onnx {
            return Err(format!(
                "reshapes {} (held as {} here) into {}",
                shown(&x.onnx),
                x.ours,
                shown(&dims)
            ));
        }
        Ok(Value::Act(self.push(
            node,
            Layer::Reshape { shape: dims },
            &[&x],
        )?))
    }

    /// The axes of `Squeeze`, `Unsqueeze` or `ReduceMean` (input 1 from opset 13 or 18, an
    /// attribute before), as places in one example's dimensions (the batch is axis 0 in
    /// ONNX, never one of them); `rank` counts the batch.
    pub(super) fn axes(&self, node: &NodeProto<'_>, rank: usize) -> Result<Option<Vec<usize>>> {
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

    pub(super) fn squeeze(&mut self, node: &NodeProto<'_>) -> Result<Value> {
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
}
