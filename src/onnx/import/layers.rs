//! The ONNX nodes that become operations with parameters or windows: Conv, Gemm, MatMul
//! (and the Add of their bias), pooling, ReduceMean over an image or the last axis, Clip,
//! Gather as an embedding; each checks the attributes opcount can honour and refuses the rest.

use super::{Act, Builder, Result, Value, attr_f, attr_i, attr_ints, attr_s, shown};
use crate::model::{Layer, Pair};
use crate::onnx::constant::Tensor;
use crate::onnx::proto::NodeProto;

impl Builder<'_> {
    pub(super) fn conv(&mut self, node: &NodeProto<'_>) -> Result<Act> {
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

    pub(super) fn gemm(&mut self, node: &NodeProto<'_>) -> Result<Act> {
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

    pub(super) fn matmul(&mut self, node: &NodeProto<'_>) -> Result<Act> {
        let x = self.act(node, 0)?;
        let b = node.inputs.get(1).copied().unwrap_or("");
        if let Ok(Value::Act(y)) = self.get(b) {
            // Two computed values, as attention written out multiplies: opcount's MatMul,
            // one product per example (and per matrix of the leading axes).
            let y = y.clone();
            if x.ours.dims() != x.onnx || y.ours.dims() != y.onnx {
                return Err(format!(
                    "a product of a {} value and a {} value held otherwise here",
                    shown(&x.onnx),
                    shown(&y.onnx)
                ));
            }
            return self.push(node, Layer::MatMul, &[&x, &y]);
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

    /// The Add of a bias onto the output of a MatMul or a Conv without one, read nowhere
    /// else: the bias becomes theirs.
    pub(super) fn bias(&mut self, x: Act, t: Tensor, read: &str) -> Result<Act> {
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

    pub(super) fn pool(&mut self, node: &NodeProto<'_>) -> Result<Act> {
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

    /// `ReduceMean` over an image's height and width: a global average pooling; over the
    /// last axis of any value (`x.mean(-1, keepdim=True)`): the same of its rows read as
    /// images one value high (`[t, w]` as `[t, 1, w]`), so a mean of w values counts w - 1
    /// adds and 1 div either way.
    pub(super) fn reduce_mean(&mut self, node: &NodeProto<'_>) -> Result<Value> {
        let x = self.act(node, 0)?;
        let axes = self.axes(node, x.onnx.len() + 1)?;
        let keep = attr_i(node, "keepdims", 1) != 0;
        let last = x.onnx.len() - 1;
        if x.ours.as_image().is_some() && axes.as_deref() == Some(&[1, 2]) {
            let mut y = self.push(node, Layer::GlobalAvgPool2d, &[&x])?;
            if keep {
                y.onnx = vec![y.ours.len(), 1, 1];
            }
            return Ok(Value::Act(y));
        }
        if axes.as_deref() == Some(&[last]) && x.ours.dims() == x.onnx && (keep || last > 0) {
            let width = x.onnx[last];
            let rows = x.onnx[..last].iter().product();
            let layer = Layer::Reshape {
                shape: vec![rows, 1, width],
            };
            let base = format!("{}.rows", super::node_name(node));
            let images = self.push_entry(&base, "", layer, &[&x], Vec::new())?;
            let mut y = self.push(node, Layer::GlobalAvgPool2d, &[&images])?;
            y.onnx = x.onnx[..last].to_vec();
            if keep {
                y.onnx.push(1);
            }
            return Ok(Value::Act(y));
        }
        Err(format!(
            "a mean over axes {:?} of a {} value: opcount maps the mean over an image's \
             height and width (global average pooling) and over the last axis",
            axes.unwrap_or_default()
                .iter()
                .map(|a| a + 1)
                .collect::<Vec<_>>(),
            shown(&x.onnx)
        ))
    }

    /// `Clip` from 0 to 6 (ReLU6) or from 0 up (ReLU).
    pub(super) fn clip(&mut self, node: &NodeProto<'_>) -> Result<Value> {
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
        let mut y = self.push(node, layer, &[&x])?;
        y.onnx = x.onnx;
        Ok(Value::Act(y))
    }

    pub(super) fn embedding(&mut self, node: &NodeProto<'_>) -> Result<Act> {
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
        let params = vec![("table", table)];
        self.push_with(node, Layer::Embedding { vocab, width }, &[&ids], params)
    }
}

/// `[a, a]` (or nothing, `default`) as one size: opcount's windows are square.
pub(super) fn square(node: &NodeProto<'_>, name: &str, default: usize) -> Result<usize> {
    match attr_ints(node, name) {
        None => Ok(default),
        Some([a, b]) if a == b && *a >= 0 => Ok(*a as usize),
        Some(v) => Err(format!(
            "{name} {v:?}: opcount takes the same size along both axes"
        )),
    }
}

/// `[along the height, along the width]` (or nothing, `default` for both).
pub(super) fn pair(node: &NodeProto<'_>, name: &str, default: usize) -> Result<Pair> {
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
pub(super) fn pad_pair(node: &NodeProto<'_>) -> Result<Pair> {
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

pub(super) fn auto_pad(node: &NodeProto<'_>) -> Result<()> {
    match attr_s(node, "auto_pad") {
        None | Some(b"NOTSET") | Some(b"VALID") => Ok(()),
        Some(other) => Err(format!(
            "auto_pad {}: opcount takes explicit pads (re-export with padding given)",
            String::from_utf8_lossy(other)
        )),
    }
}

/// Pads `[top, left, bottom, right]` as one size, all four equal.
pub(super) fn pads(node: &NodeProto<'_>) -> Result<usize> {
    auto_pad(node)?;
    match attr_ints(node, "pads") {
        None => Ok(0),
        Some([a, b, c, d]) if a == b && b == c && c == d && *a >= 0 => Ok(*a as usize),
        Some(v) => Err(format!(
            "pads {v:?}: opcount takes the same padding on every side"
        )),
    }
}

pub(super) fn dilations_one(node: &NodeProto<'_>) -> Result<()> {
    match attr_ints(node, "dilations") {
        Some(d) if d.iter().any(|&x| x != 1) => {
            Err(format!("dilations {d:?}: opcount takes dilation 1"))
        }
        _ => Ok(()),
    }
}

/// A dense layer's weights in opcount's order (`units x inputs`, PyTorch's) from a weight
/// matrix of `inputs x units` (MatMul, Gemm) or `units x inputs` (Gemm with transB).
pub(super) fn dense_weights(w: &Tensor, inputs: usize, trans_b: bool) -> Result<Vec<f32>> {
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
