//! ONNX files as models: the file's bytes read within the memory budget, decoded
//! (`proto.rs`, the part of `onnx.proto` opcount needs, no protobuf compiler) and mapped
//! node by node onto opcount's operations (`import.rs`). The result is a [`Model`] with a
//! `graph`, the same thing a RON file gives, so everything from the plan on (counts, closed
//! forms, reports, conventions, training) works unchanged; `opcount convert` writes it as
//! RON. What is supported, and what is refused and why: docs/onnx.md.

mod constant;
mod import;
mod proto;

use std::io::Read;
use std::path::Path;

use crate::budget::{Budget, human_bytes};
use crate::error::{Error, Result};
use crate::model::{Loss, Model};

/// The operator types opcount maps, for messages and docs/onnx.md.
pub const SUPPORTED: &str = "Add, Sub, Mul, Div (two values that broadcast; a value and a constant \
    that broadcasts to it: all four but constant / value), AveragePool, BatchNormalization, Clip \
    (0 to 6, or from 0), Concat, Constant, Conv, Dropout, Erf (in the exact GELU's pattern), \
    Flatten, Gather (embedding, or of a shape), Gelu (exact or tanh), Gemm, GlobalAveragePool, \
    Identity, LayerNormalization, MatMul (by weights, or of two values), MaxPool, Pow (to 2), \
    ReduceMean (height and width, or the last axis), Relu, Reshape (the batch kept first), Shape, \
    Sigmoid, Softmax (last axis), Sqrt, Squeeze, Tanh, Transpose (the batch kept first), Unsqueeze";

/// The largest ONNX file opcount reads (protobuf's own limit is 2 GiB; larger models keep
/// their weights in external data files).
pub const MAX_ONNX_BYTES: u64 = 2 << 30;

/// What an ONNX file does not say and a model needs: the loss, and one example's shape where
/// the file's is symbolic.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Import {
    /// The loss; `None`: softmax cross-entropy for a flat output of two or more values,
    /// else mean squared error.
    pub loss: Option<Loss>,
    /// One example's dimensions (`[channels, height, width]`, ...), for an input whose sizes
    /// the file leaves symbolic; must agree with the ones it fixes.
    pub input_shape: Option<Vec<usize>>,
    /// Count the exact GELU (`Gelu` without `approximate="tanh"`, or the `Div`, `Erf`,
    /// `Add`, `Mul`, `Mul` PyTorch exports for it) as opcount's `Gelu`, the tanh form,
    /// instead of `GeluErf`: what opcount then runs and counts is the tanh form, which
    /// differs from the exact one by less than 1e-3 and counts other operations.
    pub gelu_as_tanh: bool,
}

/// Whether `path` names an ONNX file (by its extension, `.onnx`).
pub fn is_onnx(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

/// Reads an ONNX file as a model, charging its bytes and everything decoded from them to
/// `budget`. Every error names the file, and the node where there is one.
///
/// ```
/// use opcount::budget::Budget;
/// use opcount::onnx::{self, Import};
///
/// let path = std::path::Path::new("tests/onnx/relu.onnx");
/// let model = onnx::load_within(path, &mut Budget::unlimited(), &Import::default())?;
/// let plan = model.plan("relu.onnx")?;
/// assert_eq!(plan.nodes().iter().map(|n| n.kind()).collect::<Vec<_>>(), ["dense", "relu", "dense"]);
/// # Ok::<(), opcount::Error>(())
/// ```
pub fn load_within(path: &Path, budget: &mut Budget, options: &Import) -> Result<Model> {
    let bytes = read(path, budget)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_stem()
        .map_or("onnx".into(), |s| s.to_string_lossy().into_owned());
    let source = Source {
        origin: &path.display().to_string(),
        name: &name,
        dir,
    };
    parse_within(&bytes, &source, budget, options)
}

/// Where an ONNX model's bytes came from, for [`parse_within`].
#[derive(Copy, Clone, Debug)]
pub struct Source<'a> {
    /// The file as messages name it.
    pub origin: &'a str,
    /// The model's name in reports.
    pub name: &'a str,
    /// The directory external data files are found in (and must stay in).
    pub dir: &'a Path,
}

/// [`load_within`] for bytes already read (the fuzz target's entry point): everything
/// decoded from them, and any external data, charged to `budget`.
pub fn parse_within(
    bytes: &[u8],
    source: &Source<'_>,
    budget: &mut Budget,
    options: &Import,
) -> Result<Model> {
    let origin = source.origin;
    let failed = |message: String| Error::Model {
        origin: origin.to_string(),
        message,
    };
    let mut lists = proto::Lists::new(budget, origin);
    let decoded = proto::model(bytes, &mut lists)
        .map_err(|e| failed(format!("not a readable ONNX model: {e}")))?;
    let onnx_version = decoded
        .opsets
        .iter()
        .find(|(domain, _)| domain.is_empty() || *domain == "ai.onnx")
        .map(|&(_, v)| v);
    let graph = decoded
        .graph
        .as_ref()
        .ok_or_else(|| failed("not an ONNX model: no graph in it (is it an ONNX file?)".into()))?;
    match onnx_version {
        Some(v) if v >= 13 => {}
        Some(v) => {
            return Err(failed(format!(
                "opset {v}; opcount reads opset 13 and later (re-export with \
                 opset_version=13 or later)"
            )));
        }
        None => {
            return Err(failed(
                "not an ONNX model: it imports no version of ONNX's operators".into(),
            ));
        }
    }
    // A Constant node's tensor is read as the graph is mapped: charged here, as the
    // initializers are below (16 bytes a value: the tensor, and copies made of it).
    for node in &graph.nodes {
        for t in node.attributes.iter().filter_map(|a| a.t.as_ref()) {
            let values = t
                .dims
                .iter()
                .try_fold(1u128, |n, &d| n.checked_mul(d.max(0) as u128));
            let bytes = values.unwrap_or(u128::MAX).saturating_mul(16);
            budget.charge(bytes, || {
                format!("{origin}: node '{}''s constant", node.name)
            })?;
        }
    }
    let dir = source.dir;
    let mut initializers = std::collections::HashMap::new();
    for t in &graph.initializers {
        let external = external_data(t, dir, budget).map_err(&failed)?;
        let values = t
            .dims
            .iter()
            .try_fold(1u128, |n, &d| n.checked_mul(d.max(0) as u128));
        let bytes = values.unwrap_or(u128::MAX).saturating_mul(16);
        budget.charge(bytes, || format!("{origin}: initializer '{}'", t.name))?;
        let tensor = constant::tensor(t, external.as_deref()).map_err(&failed)?;
        if initializers.insert(t.name, tensor).is_some() {
            return Err(failed(format!("two initializers are named '{}'", t.name)));
        }
    }
    let source = import::Source {
        graph,
        initializers,
        name: source.name.to_string(),
    };
    import::model(source, options).map_err(failed)
}

/// The file's bytes, at most [`MAX_ONNX_BYTES`], charged before they are read.
fn read(path: &Path, budget: &mut Budget) -> Result<Vec<u8>> {
    let io_error = |source: std::io::Error| Error::Io {
        path: path.to_path_buf(),
        action: "cannot read",
        source,
    };
    if path.is_dir() {
        return Err(io_error(std::io::Error::other(
            "is a directory, expected a file",
        )));
    }
    let file = std::fs::File::open(path).map_err(io_error)?;
    let meta = file.metadata().map_err(io_error)?;
    let size = if meta.is_file() {
        meta.len()
    } else {
        MAX_ONNX_BYTES
    };
    if size > MAX_ONNX_BYTES {
        return Err(io_error(std::io::Error::other(format!(
            "more than the largest ONNX file opcount reads, {}; keep the weights in \
             external data files",
            human_bytes(u128::from(MAX_ONNX_BYTES))
        ))));
    }
    budget.charge(u128::from(size), || {
        format!("{}: its bytes", path.display())
    })?;
    let mut bytes = Vec::new();
    bytes
        .try_reserve(size as usize)
        .map_err(|_| io_error(std::io::Error::other("the system refused the memory")))?;
    file.take(MAX_ONNX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    if bytes.len() as u64 > size {
        return Err(io_error(std::io::Error::other(
            "grew while it was read, or is larger than the largest ONNX file opcount reads",
        )));
    }
    Ok(bytes)
}

/// The bytes of a tensor kept in an external data file (`location` relative to the model's
/// directory, and inside it; `offset` and `length` optional), or `None` for one stored in
/// the model.
fn external_data(
    t: &proto::TensorProto<'_>,
    dir: &Path,
    budget: &mut Budget,
) -> std::result::Result<Option<Vec<u8>>, String> {
    if t.data_location != 1 {
        return Ok(None);
    }
    let key = |k: &str| {
        t.external
            .iter()
            .find(|(key, _)| *key == k)
            .map(|&(_, v)| v)
    };
    let what = format!("initializer '{}'", t.name);
    let location = key("location").ok_or(format!("{what}: external data without a location"))?;
    let relative = Path::new(location);
    let inside = relative
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !inside || location.is_empty() {
        return Err(format!(
            "{what}: external data at '{location}', outside the model's directory"
        ));
    }
    let number = |k: &str| -> std::result::Result<Option<u64>, String> {
        key(k)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| format!("{what}: {k} '{v}' is not a number"))
            })
            .transpose()
    };
    let (offset, length) = (number("offset")?.unwrap_or(0), number("length")?);
    let path = dir.join(relative);
    let shown = path.display().to_string();
    let mut file = std::fs::File::open(&path).map_err(|e| format!("{shown}: cannot read: {e}"))?;
    let size = file
        .metadata()
        .map_err(|e| format!("{shown}: cannot read: {e}"))?
        .len();
    let length = length.unwrap_or(size.saturating_sub(offset));
    if offset.checked_add(length).is_none_or(|end| end > size) {
        return Err(format!(
            "{what}: {length} bytes from byte {offset} of {shown}, which has {size}"
        ));
    }
    budget
        .charge(u128::from(length), || format!("{shown}: {what}"))
        .map_err(|e| e.to_string())?;
    use std::io::Seek;
    file.seek(std::io::SeekFrom::Start(offset))
        .map_err(|e| format!("{shown}: cannot read: {e}"))?;
    let mut bytes = Vec::new();
    bytes
        .try_reserve(length as usize)
        .map_err(|_| format!("{shown}: the system refused the memory"))?;
    file.take(length)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{shown}: cannot read: {e}"))?;
    Ok(Some(bytes))
}

/// An imported model as RON model text. With `weights`, every parameter and the running
/// statistics are written inline (a dense layer's or convolution's `weights` and `biases`, a
/// norm's or embedding's `params`), as `train --save` writes them; without, every parameter
/// starts from the model's `init`. Either way it counts as the ONNX file.
///
/// ```
/// use opcount::Model;
/// use opcount::budget::Budget;
/// use opcount::onnx::{self, Import};
///
/// let path = std::path::Path::new("tests/onnx/batchnorm.onnx");
/// let model = onnx::load_within(path, &mut Budget::unlimited(), &Import::default())?;
/// let text = onnx::convert(&model, "batchnorm.onnx", true);
/// assert!(text.contains("running_var"));
/// let again = Model::parse(&text, "batchnorm.ron")?;
/// assert_eq!(again.plan("batchnorm.ron")?.params(), model.plan("batchnorm.onnx")?.params());
/// # Ok::<(), opcount::Error>(())
/// ```
pub fn convert(model: &Model, source: &str, weights: bool) -> String {
    use crate::model::Layer;
    let mut model = model.clone();
    for entry in model.graph.iter_mut().filter(|_| !weights) {
        entry.params = None;
        if let Layer::Dense {
            weights: w,
            biases: b,
            ..
        }
        | Layer::Conv2d {
            weights: w,
            biases: b,
            ..
        } = &mut entry.op
        {
            (*w, *b) = (None, None);
        }
    }
    let source = crate::text::escape(source).replace('\n', " ");
    let mut text = format!("// Converted from {source} by opcount convert (docs/onnx.md).\n");
    text += if weights {
        "// Every parameter is the file's.\n"
    } else {
        "// Parameters start from `init` (convert with --weights to keep the file's).\n"
    };
    text += &model.to_ron();
    text += "\n";
    text
}
