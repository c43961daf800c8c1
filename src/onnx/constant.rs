//! Constants: tensors read from initializers and `Constant` nodes, and the shapes the
//! nodes that compute shapes (Shape, Gather, Unsqueeze, Concat, ...) give, evaluated while
//! the graph is read. A whole number may be the batch size, unknown until a step runs.

use super::import::{Result, attr_i};
use super::proto::{NodeProto, TensorProto};

/// ONNX's element types opcount reads.
pub(super) const FLOAT: i64 = 1;
pub(super) const INT32: i64 = 6;
pub(super) const INT64: i64 = 7;
pub(super) const DOUBLE: i64 = 11;

/// A constant: an initializer, a `Constant`, or a shape computed from them. `None` in
/// whole numbers is the batch size, which a model file does not fix.
#[derive(Clone, Debug)]
pub(crate) struct Tensor {
    pub(super) dims: Vec<usize>,
    pub(super) data: Data,
}

#[derive(Clone, Debug)]
pub(crate) enum Data {
    Float(Vec<f32>),
    Int(Vec<Option<i64>>),
}

impl Tensor {
    pub(super) fn len(&self) -> usize {
        match &self.data {
            Data::Float(v) => v.len(),
            Data::Int(v) => v.len(),
        }
    }

    pub(super) fn floats(&self) -> Option<&[f32]> {
        match &self.data {
            Data::Float(v) => Some(v),
            Data::Int(_) => None,
        }
    }

    pub(super) fn ints(&self) -> Option<&[Option<i64>]> {
        match &self.data {
            Data::Int(v) => Some(v),
            Data::Float(_) => None,
        }
    }
}

/// Reads a tensor's data (typed fields or raw bytes; external data already read into
/// `external`), checking its length against its dimensions.
pub(crate) fn tensor(t: &TensorProto<'_>, external: Option<&[u8]>) -> Result<Tensor> {
    let what = || {
        if t.name.is_empty() {
            format!("the tensor at byte {}", t.at)
        } else {
            format!("tensor '{}'", t.name)
        }
    };
    let mut dims = Vec::with_capacity(t.dims.len().min(8));
    let mut len = 1usize;
    for &d in &t.dims {
        let d = usize::try_from(d).map_err(|_| format!("{}: a negative dimension, {d}", what()))?;
        len = len
            .checked_mul(d)
            .filter(|&n| n <= crate::model::MAX_DIM)
            .ok_or_else(|| format!("{}: more values than opcount takes", what()))?;
        dims.push(d);
    }
    let raw = external.or(t.raw);
    let size = match t.data_type {
        FLOAT | INT32 => 4,
        INT64 | DOUBLE => 8,
        other => {
            return Err(format!(
                "{}: element type {other}; opcount reads float, double, int32 and int64",
                what()
            ));
        }
    };
    let wrong = |found: usize| format!("{}: {len} values expected, {found} found", what());
    let data = match raw {
        Some(bytes) => {
            if bytes.len() != len * size {
                return Err(wrong(bytes.len() / size));
            }
            match t.data_type {
                FLOAT => Data::Float(
                    bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
                        .collect(),
                ),
                DOUBLE => Data::Float(
                    bytes
                        .chunks_exact(8)
                        .map(|c| f64::from_le_bytes(c.try_into().expect("8")) as f32)
                        .collect(),
                ),
                INT32 => Data::Int(
                    bytes
                        .chunks_exact(4)
                        .map(|c| Some(i64::from(i32::from_le_bytes(c.try_into().expect("4")))))
                        .collect(),
                ),
                _ => Data::Int(
                    bytes
                        .chunks_exact(8)
                        .map(|c| Some(i64::from_le_bytes(c.try_into().expect("8"))))
                        .collect(),
                ),
            }
        }
        None => {
            let data = match t.data_type {
                FLOAT => Data::Float(t.float_data.clone()),
                DOUBLE => Data::Float(t.double_data.iter().map(|&x| x as f32).collect()),
                INT32 => Data::Int(t.int32_data.iter().map(|&x| Some(x)).collect()),
                _ => Data::Int(t.int64_data.iter().map(|&x| Some(x)).collect()),
            };
            let found = match &data {
                Data::Float(v) => v.len(),
                Data::Int(v) => v.len(),
            };
            if found != len {
                return Err(wrong(found));
            }
            data
        }
    };
    Ok(Tensor { dims, data })
}

/// The constant a node computes from constants.
pub(super) fn fold(node: &NodeProto<'_>, inputs: &[Option<Tensor>]) -> Result<Tensor> {
    let c = |i: usize| -> Result<Tensor> {
        inputs
            .get(i)
            .cloned()
            .flatten()
            .ok_or_else(|| format!("no input {i}"))
    };
    let ints = |t: &Tensor| -> Result<Vec<Option<i64>>> {
        t.ints()
            .map(<[_]>::to_vec)
            .ok_or_else(|| "expects whole numbers (a shape), found floats".into())
    };
    let t = match node.op_type {
        "Constant" => {
            let a = node
                .attributes
                .first()
                .ok_or("a Constant without a value")?;
            match a.name {
                "value" => tensor(a.t.as_ref().ok_or("no tensor")?, None)?,
                "value_int" => int_vec(vec![a.i.ok_or("no value_int")?], false),
                "value_ints" => int_vec(a.ints.clone(), true),
                "value_float" => Tensor {
                    dims: vec![],
                    data: Data::Float(vec![a.f.ok_or("no value_float")?]),
                },
                other => return Err(format!("a Constant's {other} is not supported")),
            }
        }
        "Identity" | "Cast" => {
            let t = c(0)?;
            match (node.op_type, attr_i(node, "to", INT64), &t.data) {
                ("Identity", ..) | (_, INT64 | INT32, Data::Int(_)) => t,
                (_, FLOAT | DOUBLE, Data::Float(_)) => t,
                (_, to, _) => return Err(format!("a Cast to type {to} is not supported")),
            }
        }
        "Shape" => return Err("Shape of a constant is not supported".into()),
        "Gather" => {
            let data = ints(&c(0)?)?;
            let idx = c(1)?;
            if attr_i(node, "axis", 0) != 0 || c(0)?.dims.len() != 1 {
                return Err("Gather of shapes: opcount folds 1-D, axis 0".into());
            }
            let picked: Result<Vec<Option<i64>>> = ints(&idx)?
                .iter()
                .map(|&i| {
                    let i = i.ok_or("an unknown index")?;
                    let n = data.len() as i64;
                    let k = if i < 0 { i + n } else { i };
                    data.get(usize::try_from(k).map_err(|_| "index out of range")?)
                        .copied()
                        .ok_or_else(|| format!("index {i} of {n} values"))
                })
                .collect();
            Tensor {
                dims: idx.dims.clone(),
                data: Data::Int(picked?),
            }
        }
        "Unsqueeze" | "Squeeze" => {
            let t = c(0)?;
            let n = t.len();
            Tensor {
                dims: if node.op_type == "Unsqueeze" && t.dims.is_empty() {
                    vec![1]
                } else if n == 1 && node.op_type == "Squeeze" {
                    vec![]
                } else {
                    vec![n]
                },
                data: t.data,
            }
        }
        "Concat" => {
            let mut all = Vec::new();
            for i in 0..node.inputs.len() {
                all.extend(ints(&c(i)?)?);
            }
            Tensor {
                dims: vec![all.len()],
                data: Data::Int(all),
            }
        }
        "Mul" | "Div" | "Add" | "Sub" => {
            let (x, y) = (ints(&c(0)?)?, ints(&c(1)?)?);
            let dims = if x.len() >= y.len() {
                c(0)?.dims
            } else {
                c(1)?.dims
            };
            let n = x.len().max(y.len());
            if !(x.len() == y.len() || x.len() == 1 || y.len() == 1) {
                return Err("arithmetic on shapes of different lengths".into());
            }
            let at = |v: &[Option<i64>], i: usize| v[if v.len() == 1 { 0 } else { i }];
            let out = (0..n)
                .map(|i| match (at(&x, i), at(&y, i)) {
                    (Some(a), Some(b)) => match node.op_type {
                        "Mul" => a.checked_mul(b),
                        "Add" => a.checked_add(b),
                        "Sub" => a.checked_sub(b),
                        _ => a.checked_div(b),
                    },
                    _ => None,
                })
                .collect();
            Tensor {
                dims,
                data: Data::Int(out),
            }
        }
        other => {
            return Err(format!(
                "{other} of constants: opcount folds Shape, Gather, Unsqueeze, Squeeze, \
                 Concat, Cast and integer arithmetic on shapes only"
            ));
        }
    };
    Ok(t)
}

pub(super) fn int_vec(v: Vec<i64>, list: bool) -> Tensor {
    Tensor {
        dims: if list { vec![v.len()] } else { vec![] },
        data: Data::Int(v.into_iter().map(Some).collect()),
    }
}

pub(super) fn ints_shown(t: &[Option<i64>]) -> String {
    let parts: Vec<String> = t
        .iter()
        .map(|d| d.map_or("batch".into(), |d| d.to_string()))
        .collect();
    format!("[{}]", parts.join(", "))
}

/// `Shape(x)` of a computed value, one example's sizes `onnx`: the batch (unknown), then
/// those sizes.
pub(super) fn shape_of(node: &NodeProto<'_>, onnx: &[usize]) -> Tensor {
    let mut all: Vec<Option<i64>> = vec![None];
    all.extend(onnx.iter().map(|&d| Some(d as i64)));
    let n = all.len() as i64;
    let clamp = |i: i64| (if i < 0 { i + n } else { i }).clamp(0, n) as usize;
    let start = clamp(attr_i(node, "start", 0));
    let end = clamp(attr_i(node, "end", n)).max(start);
    let all = all[start..end].to_vec();
    Tensor {
        dims: vec![all.len()],
        data: Data::Int(all),
    }
}
