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
pub(super) const BOOL: i64 = 9;

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
    /// A mask: what `Equal`, `Not` or a `Cast` to bool give, or a bool initializer.
    Bool(Vec<bool>),
}

impl Tensor {
    pub(super) fn len(&self) -> usize {
        match &self.data {
            Data::Float(v) => v.len(),
            Data::Int(v) => v.len(),
            Data::Bool(v) => v.len(),
        }
    }

    /// The values as a mask: a bool tensor's, or whether each number is other than zero
    /// (an unknown batch size is not).
    pub(super) fn truths(&self) -> Option<Vec<bool>> {
        match &self.data {
            Data::Bool(v) => Some(v.clone()),
            Data::Float(v) => Some(v.iter().map(|&x| x != 0.0).collect()),
            Data::Int(v) => v.iter().map(|x| x.map(|x| x != 0)).collect(),
        }
    }

    /// The tensor's values at the flat positions `at`, in that order.
    fn gather(&self, dims: Vec<usize>, at: &[usize]) -> Tensor {
        let data = match &self.data {
            Data::Float(v) => Data::Float(at.iter().map(|&i| v[i]).collect()),
            Data::Int(v) => Data::Int(at.iter().map(|&i| v[i]).collect()),
            Data::Bool(v) => Data::Bool(at.iter().map(|&i| v[i]).collect()),
        };
        Tensor { dims, data }
    }

    pub(super) fn floats(&self) -> Option<&[f32]> {
        match &self.data {
            Data::Float(v) => Some(v),
            Data::Int(_) | Data::Bool(_) => None,
        }
    }

    pub(super) fn ints(&self) -> Option<&[Option<i64>]> {
        match &self.data {
            Data::Int(v) => Some(v),
            Data::Float(_) | Data::Bool(_) => None,
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
        BOOL => 1,
        FLOAT | INT32 => 4,
        INT64 | DOUBLE => 8,
        other => {
            return Err(format!(
                "{}: element type {other}; opcount reads float, double, int32, int64 and bool",
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
                BOOL => Data::Bool(bytes.iter().map(|&b| b != 0).collect()),
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
                BOOL => Data::Bool(t.int32_data.iter().map(|&x| x != 0).collect()),
                _ => Data::Int(t.int64_data.iter().map(|&x| Some(x)).collect()),
            };
            let found = Tensor {
                dims: Vec::new(),
                data: data.clone(),
            }
            .len();
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
                (_, BOOL, _) => Tensor {
                    data: Data::Bool(t.truths().ok_or("a Cast to bool of the batch size")?),
                    dims: t.dims,
                },
                (_, FLOAT | DOUBLE, Data::Int(v)) => Tensor {
                    data: Data::Float(
                        v.iter()
                            .map(|x| x.map(|x| x as f32))
                            .collect::<Option<_>>()
                            .ok_or("a Cast to float of the batch size")?,
                    ),
                    dims: t.dims,
                },
                (_, FLOAT | DOUBLE, Data::Bool(v)) => Tensor {
                    data: Data::Float(v.iter().map(|&b| f32::from(u8::from(b))).collect()),
                    dims: t.dims,
                },
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
        "Mul" | "Div" | "Add" | "Sub" | "Pow"
            if c(0)?.floats().is_some() && c(1)?.floats().is_some() =>
        {
            let (a, b) = (c(0)?, c(1)?);
            let (x, y) = (a.floats().unwrap_or(&[]), b.floats().unwrap_or(&[]));
            if !(x.len() == y.len() || x.len() == 1 || y.len() == 1) {
                return Err("arithmetic on constants of different lengths".into());
            }
            let at = |v: &[f32], i: usize| v[if v.len() == 1 { 0 } else { i }];
            let out = (0..x.len().max(y.len()))
                .map(|i| {
                    let (p, q) = (at(x, i), at(y, i));
                    match node.op_type {
                        "Mul" => p * q,
                        "Div" => p / q,
                        "Add" => p + q,
                        "Sub" => p - q,
                        _ => p.powf(q),
                    }
                })
                .collect();
            Tensor {
                dims: if x.len() >= y.len() { a.dims } else { b.dims },
                data: Data::Float(out),
            }
        }
        "Reciprocal" | "Sqrt" => {
            let t = c(0)?;
            let x = t.floats().ok_or("of whole numbers")?;
            let out = x
                .iter()
                .map(|&v| {
                    if node.op_type == "Sqrt" {
                        v.sqrt()
                    } else {
                        1.0 / v
                    }
                })
                .collect();
            Tensor {
                dims: t.dims,
                data: Data::Float(out),
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
        "Slice" => slice(&c(0)?, [&c(1)?, &c(2)?], [c(3).ok(), c(4).ok()])?,
        "Equal" => equal(&c(0)?, &c(1)?)?,
        "Not" => match c(0)?.data {
            Data::Bool(v) => Tensor {
                dims: c(0)?.dims,
                data: Data::Bool(v.iter().map(|b| !b).collect()),
            },
            _ => return Err("Not of numbers, not of a mask".into()),
        },
        other => {
            return Err(format!(
                "{other} of constants: opcount folds Shape, Gather, Unsqueeze, Squeeze, \
                 Concat, Cast, Slice, Equal, Not, arithmetic on shapes and on float \
                 numbers, Pow, Sqrt and Reciprocal only"
            ));
        }
    };
    Ok(t)
}

/// `Slice` of a constant: along each axis given (all, in order, by default) the positions
/// from `start` (inclusive) to `end` (exclusive) by `step` (1 by default; only steps of 1
/// or more), both clamped to the axis as ONNX says.
fn slice(
    t: &Tensor,
    [starts, ends]: [&Tensor; 2],
    [axes, steps]: [Option<Tensor>; 2],
) -> Result<Tensor> {
    let known = |t: &Tensor, what: &str| -> Result<Vec<i64>> {
        t.ints()
            .ok_or_else(|| format!("a Slice's {what} are not whole numbers"))?
            .iter()
            .map(|v| v.ok_or_else(|| format!("a Slice's {what} depend on the batch size")))
            .collect()
    };
    let (starts, ends) = (known(starts, "starts")?, known(ends, "ends")?);
    let rank = t.dims.len() as i64;
    let axes = match &axes {
        Some(a) => known(a, "axes")?,
        None => (0..starts.len() as i64).collect(),
    };
    let steps = match &steps {
        Some(s) => known(s, "steps")?,
        None => vec![1; starts.len()],
    };
    if starts.len() != ends.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return Err("a Slice's starts, ends, axes and steps differ in length".into());
    }
    // Per axis: the first position, the step and the count kept.
    let mut keep: Vec<(usize, usize, usize)> = t.dims.iter().map(|&d| (0, 1, d)).collect();
    for (((&start, &end), &axis), &step) in starts.iter().zip(&ends).zip(&axes).zip(&steps) {
        let a = if axis < 0 { axis + rank } else { axis };
        let a = usize::try_from(a)
            .ok()
            .filter(|&a| a < t.dims.len())
            .ok_or_else(|| format!("a Slice along axis {axis} of a rank-{rank} constant"))?;
        if step < 1 {
            return Err(format!(
                "a Slice by step {step}: opcount folds steps of 1 or more"
            ));
        }
        let n = t.dims[a] as i64;
        let clamp = |i: i64| (if i < 0 { i + n } else { i }).clamp(0, n);
        let (from, to) = (clamp(start), clamp(end).max(clamp(start)));
        let count = (to - from + step - 1) / step;
        keep[a] = (from as usize, step as usize, count as usize);
    }
    let dims: Vec<usize> = keep.iter().map(|&(_, _, n)| n).collect();
    let total: usize = dims.iter().product();
    let mut at = Vec::with_capacity(total);
    for mut i in 0..total {
        // The kept position's index along each axis, last first, and its source offset.
        let (mut offset, mut stride) = (0, 1);
        for (k, &(from, step, n)) in keep.iter().enumerate().rev() {
            offset += (from + (i % n) * step) * stride;
            i /= n;
            stride *= t.dims[k];
        }
        at.push(offset);
    }
    Ok(t.gather(dims, &at))
}

/// `Equal` of two constants, one of them a single value or both of one shape: a mask.
fn equal(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (a, b) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    if b.len() != 1 && b.dims != a.dims {
        return Err(
            "Equal of two constants of different shapes: opcount folds a \
                    constant against one number or one of its shape"
                .into(),
        );
    }
    let at = |i: usize| if b.len() == 1 { 0 } else { i };
    let same: Vec<bool> = match (&a.data, &b.data) {
        (Data::Float(x), Data::Float(y)) => (0..x.len()).map(|i| x[i] == y[at(i)]).collect(),
        (Data::Int(x), Data::Int(y)) => (0..x.len())
            .map(|i| match (x[i], y[at(i)]) {
                (Some(p), Some(q)) => Ok(p == q),
                _ => Err("Equal of the batch size"),
            })
            .collect::<std::result::Result<_, _>>()?,
        (Data::Bool(x), Data::Bool(y)) => (0..x.len()).map(|i| x[i] == y[at(i)]).collect(),
        _ => return Err("Equal of a number and a mask, or of floats and whole numbers".into()),
    };
    Ok(Tensor {
        dims: a.dims.clone(),
        data: Data::Bool(same),
    })
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
