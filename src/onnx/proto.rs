//! A decoder of protocol buffers' wire format for the part of `onnx.proto` opcount reads:
//! `ModelProto`, `GraphProto`, `NodeProto`, `AttributeProto`, `TensorProto` and the shapes of
//! `ValueInfoProto`. Fields it does not need are skipped by their wire type.
//!
//! Hostile bytes are an `Err`, never a panic: every read is bounds-checked, lengths are
//! checked against what is left before anything is sliced, and every list it builds is
//! charged to the memory budget as it grows. Strings and raw tensor bytes borrow from the
//! file's bytes. Nesting is fixed by the schema (a tensor in an attribute in a node in a
//! graph in a model), so there is no recursion an input could deepen; subgraphs (`If`,
//! `Loop` bodies) are skipped, and refused later with their node.

use crate::budget::Budget;

/// Where in the file and what went wrong: a message for the importer to put a file name on.
pub(crate) type Result<T> = std::result::Result<T, String>;

/// One field's value, by wire type.
#[derive(Copy, Clone, Debug)]
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// A cursor over one message's bytes; `base` is its offset in the file, for messages.
struct Fields<'a> {
    bytes: &'a [u8],
    at: usize,
    base: usize,
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8], base: usize) -> Fields<'a> {
        Fields { bytes, at: 0, base }
    }

    fn offset(&self) -> usize {
        self.base + self.at
    }

    fn varint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let Some(&byte) = self.bytes.get(self.at) else {
                return Err(format!(
                    "byte {}: the file ends inside a number",
                    self.offset()
                ));
            };
            self.at += 1;
            if shift == 63 && byte > 1 {
                break;
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(format!(
            "byte {}: a number longer than 64 bits",
            self.offset()
        ))
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        let left = self.bytes.len() - self.at;
        if n > left as u64 {
            return Err(format!(
                "byte {}: a field of {n} bytes, but only {left} are left",
                self.offset()
            ));
        }
        let slice = &self.bytes[self.at..self.at + n as usize];
        self.at += n as usize;
        Ok(slice)
    }

    /// The next field's number, its value, and the offset of its value in the file.
    fn next(&mut self) -> Result<Option<(u64, Wire<'a>, usize)>> {
        if self.at == self.bytes.len() {
            return Ok(None);
        }
        let start = self.offset();
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 {
            return Err(format!(
                "byte {start}: field number 0, which protobuf never uses"
            ));
        }
        let at = self.offset();
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => Wire::Fixed64(u64::from_le_bytes(
                self.take(8)?.try_into().expect("8 bytes"),
            )),
            2 => {
                let n = self.varint()?;
                let at = self.offset();
                return Ok(Some((field, Wire::Bytes(self.take(n)?), at)));
            }
            5 => Wire::Fixed32(u32::from_le_bytes(
                self.take(4)?.try_into().expect("4 bytes"),
            )),
            other => {
                return Err(format!(
                    "byte {start}: wire type {other}, which is not in ONNX's schema \
                     (not an ONNX file, or a damaged one)"
                ));
            }
        };
        Ok(Some((field, wire, at)))
    }
}

/// Charges every list the decoder builds, as it grows.
pub(crate) struct Lists<'b> {
    budget: &'b mut Budget,
    origin: &'b str,
}

impl<'b> Lists<'b> {
    pub(crate) fn new(budget: &'b mut Budget, origin: &'b str) -> Lists<'b> {
        Lists { budget, origin }
    }

    /// Pushes `value`, charging twice its size (a list may have doubled its capacity).
    fn push<T>(&mut self, list: &mut Vec<T>, value: T) -> Result<()> {
        let bytes = 2 * std::mem::size_of::<T>() as u128;
        let origin = self.origin;
        self.budget
            .charge(bytes, || format!("{origin}: the ONNX graph's lists"))
            .map_err(|e| e.to_string())?;
        list.try_reserve(1).map_err(|_| {
            format!("{origin}: the system refused memory for the ONNX graph's lists")
        })?;
        list.push(value);
        Ok(())
    }
}

fn text(bytes: &[u8], at: usize) -> Result<&str> {
    std::str::from_utf8(bytes).map_err(|_| format!("byte {at}: a name that is not UTF-8"))
}

fn int(wire: Wire<'_>, at: usize) -> Result<i64> {
    match wire {
        Wire::Varint(v) => Ok(v as i64),
        _ => Err(format!("byte {at}: expected a whole number")),
    }
}

/// A repeated field of varints, packed or one by one.
fn ints(lists: &mut Lists<'_>, out: &mut Vec<i64>, wire: Wire<'_>, at: usize) -> Result<()> {
    match wire {
        Wire::Varint(v) => lists.push(out, v as i64),
        Wire::Bytes(b) => {
            let mut packed = Fields::new(b, at);
            while packed.at < b.len() {
                let v = packed.varint()?;
                lists.push(out, v as i64)?;
            }
            Ok(())
        }
        _ => Err(format!("byte {at}: expected whole numbers")),
    }
}

/// A repeated field of 32-bit floats, packed or one by one.
fn floats(lists: &mut Lists<'_>, out: &mut Vec<f32>, wire: Wire<'_>, at: usize) -> Result<()> {
    match wire {
        Wire::Fixed32(v) => lists.push(out, f32::from_bits(v)),
        Wire::Bytes(b) if b.len() % 4 == 0 => {
            for chunk in b.chunks_exact(4) {
                let v = f32::from_le_bytes(chunk.try_into().expect("4 bytes"));
                lists.push(out, v)?;
            }
            Ok(())
        }
        _ => Err(format!("byte {at}: expected 32-bit floats")),
    }
}

/// A repeated field of 64-bit floats, packed or one by one.
fn doubles(lists: &mut Lists<'_>, out: &mut Vec<f64>, wire: Wire<'_>, at: usize) -> Result<()> {
    match wire {
        Wire::Fixed64(v) => lists.push(out, f64::from_bits(v)),
        Wire::Bytes(b) if b.len() % 8 == 0 => {
            for chunk in b.chunks_exact(8) {
                let v = f64::from_le_bytes(chunk.try_into().expect("8 bytes"));
                lists.push(out, v)?;
            }
            Ok(())
        }
        _ => Err(format!("byte {at}: expected 64-bit floats")),
    }
}

fn bytes(wire: Wire<'_>, at: usize) -> Result<&[u8]> {
    match wire {
        Wire::Bytes(b) => Ok(b),
        _ => Err(format!("byte {at}: expected a length-delimited field")),
    }
}

/// `ModelProto`: the opsets it imports and its graph.
#[derive(Debug, Default)]
pub(crate) struct ModelProto<'a> {
    /// `(domain, version)`; the empty domain is ONNX's own operators.
    pub opsets: Vec<(&'a str, i64)>,
    pub graph: Option<GraphProto<'a>>,
}

/// `GraphProto`: nodes, initializers, inputs and outputs.
#[derive(Debug, Default)]
pub(crate) struct GraphProto<'a> {
    pub nodes: Vec<NodeProto<'a>>,
    pub initializers: Vec<TensorProto<'a>>,
    pub inputs: Vec<ValueInfo<'a>>,
    pub outputs: Vec<ValueInfo<'a>>,
}

/// `NodeProto`.
#[derive(Debug, Default)]
pub(crate) struct NodeProto<'a> {
    pub inputs: Vec<&'a str>,
    pub outputs: Vec<&'a str>,
    pub name: &'a str,
    pub op_type: &'a str,
    pub domain: &'a str,
    pub attributes: Vec<Attribute<'a>>,
}

/// `AttributeProto`, the fields opcount reads.
#[derive(Debug, Default)]
pub(crate) struct Attribute<'a> {
    pub name: &'a str,
    pub f: Option<f32>,
    pub i: Option<i64>,
    pub s: Option<&'a [u8]>,
    pub t: Option<TensorProto<'a>>,
    pub floats: Vec<f32>,
    pub ints: Vec<i64>,
    /// It holds a graph (a subgraph, which opcount does not read).
    pub graph: bool,
}

/// `TensorProto`: dimensions, element type, and its data in whichever field holds it.
#[derive(Debug, Default)]
pub(crate) struct TensorProto<'a> {
    pub dims: Vec<i64>,
    pub data_type: i64,
    pub name: &'a str,
    pub raw: Option<&'a [u8]>,
    pub float_data: Vec<f32>,
    pub int32_data: Vec<i64>,
    pub int64_data: Vec<i64>,
    pub double_data: Vec<f64>,
    /// `external_data` entries: `location`, `offset`, `length`, ...
    pub external: Vec<(&'a str, &'a str)>,
    /// 1 if the data is in an external file.
    pub data_location: i64,
    /// Where the tensor starts in the file, for messages.
    pub at: usize,
}

/// One dimension of a declared shape.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Dim<'a> {
    Value(i64),
    Param(&'a str),
    Unknown,
}

/// `ValueInfoProto`: a name and, for a tensor, its element type and shape if declared.
#[derive(Debug, Default)]
pub(crate) struct ValueInfo<'a> {
    pub name: &'a str,
    pub elem_type: i64,
    pub dims: Option<Vec<Dim<'a>>>,
}

/// Decodes a whole `ModelProto`.
pub(crate) fn model<'a>(file: &'a [u8], lists: &mut Lists<'_>) -> Result<ModelProto<'a>> {
    let mut m = ModelProto::default();
    let mut f = Fields::new(file, 0);
    while let Some((field, wire, at)) = f.next()? {
        match field {
            7 => {
                if m.graph.is_some() {
                    return Err(format!("byte {at}: a second graph"));
                }
                m.graph = Some(graph(bytes(wire, at)?, at, lists)?);
            }
            8 => {
                let (mut domain, mut version) = ("", 0);
                let mut g = Fields::new(bytes(wire, at)?, at);
                while let Some((field, wire, at)) = g.next()? {
                    match field {
                        1 => domain = text(bytes(wire, at)?, at)?,
                        2 => version = int(wire, at)?,
                        _ => {}
                    }
                }
                lists.push(&mut m.opsets, (domain, version))?;
            }
            _ => {}
        }
    }
    Ok(m)
}

fn graph<'a>(bytes_in: &'a [u8], base: usize, lists: &mut Lists<'_>) -> Result<GraphProto<'a>> {
    let mut g = GraphProto::default();
    let mut f = Fields::new(bytes_in, base);
    while let Some((field, wire, at)) = f.next()? {
        match field {
            1 => {
                let n = node(bytes(wire, at)?, at, lists)?;
                lists.push(&mut g.nodes, n)?;
            }
            5 => {
                let t = tensor(bytes(wire, at)?, at, lists)?;
                lists.push(&mut g.initializers, t)?;
            }
            11 => {
                let v = value_info(bytes(wire, at)?, at, lists)?;
                lists.push(&mut g.inputs, v)?;
            }
            12 => {
                let v = value_info(bytes(wire, at)?, at, lists)?;
                lists.push(&mut g.outputs, v)?;
            }
            _ => {}
        }
    }
    Ok(g)
}

fn node<'a>(bytes_in: &'a [u8], base: usize, lists: &mut Lists<'_>) -> Result<NodeProto<'a>> {
    let mut n = NodeProto::default();
    let mut f = Fields::new(bytes_in, base);
    while let Some((field, wire, at)) = f.next()? {
        match field {
            1 => {
                let s = text(bytes(wire, at)?, at)?;
                lists.push(&mut n.inputs, s)?;
            }
            2 => {
                let s = text(bytes(wire, at)?, at)?;
                lists.push(&mut n.outputs, s)?;
            }
            3 => n.name = text(bytes(wire, at)?, at)?,
            4 => n.op_type = text(bytes(wire, at)?, at)?,
            5 => {
                let a = attribute(bytes(wire, at)?, at, lists)?;
                lists.push(&mut n.attributes, a)?;
            }
            7 => n.domain = text(bytes(wire, at)?, at)?,
            _ => {}
        }
    }
    Ok(n)
}

fn attribute<'a>(bytes_in: &'a [u8], base: usize, lists: &mut Lists<'_>) -> Result<Attribute<'a>> {
    let mut a = Attribute::default();
    let mut f = Fields::new(bytes_in, base);
    while let Some((field, wire, at)) = f.next()? {
        match field {
            1 => a.name = text(bytes(wire, at)?, at)?,
            2 => match wire {
                Wire::Fixed32(v) => a.f = Some(f32::from_bits(v)),
                _ => return Err(format!("byte {at}: expected a 32-bit float")),
            },
            3 => a.i = Some(int(wire, at)?),
            4 => a.s = Some(bytes(wire, at)?),
            5 => a.t = Some(tensor(bytes(wire, at)?, at, lists)?),
            6 | 11 => a.graph = true,
            7 => floats(lists, &mut a.floats, wire, at)?,
            8 => ints(lists, &mut a.ints, wire, at)?,
            _ => {}
        }
    }
    Ok(a)
}

fn tensor<'a>(bytes_in: &'a [u8], base: usize, lists: &mut Lists<'_>) -> Result<TensorProto<'a>> {
    let mut t = TensorProto {
        at: base,
        ..TensorProto::default()
    };
    let mut f = Fields::new(bytes_in, base);
    while let Some((field, wire, at)) = f.next()? {
        match field {
            1 => ints(lists, &mut t.dims, wire, at)?,
            2 => t.data_type = int(wire, at)?,
            4 => floats(lists, &mut t.float_data, wire, at)?,
            5 => ints(lists, &mut t.int32_data, wire, at)?,
            7 => ints(lists, &mut t.int64_data, wire, at)?,
            8 => t.name = text(bytes(wire, at)?, at)?,
            9 => t.raw = Some(bytes(wire, at)?),
            10 => doubles(lists, &mut t.double_data, wire, at)?,
            13 => {
                let (mut key, mut value) = ("", "");
                let mut e = Fields::new(bytes(wire, at)?, at);
                while let Some((field, wire, at)) = e.next()? {
                    match field {
                        1 => key = text(bytes(wire, at)?, at)?,
                        2 => value = text(bytes(wire, at)?, at)?,
                        _ => {}
                    }
                }
                lists.push(&mut t.external, (key, value))?;
            }
            14 => t.data_location = int(wire, at)?,
            _ => {}
        }
    }
    Ok(t)
}

fn value_info<'a>(bytes_in: &'a [u8], base: usize, lists: &mut Lists<'_>) -> Result<ValueInfo<'a>> {
    let mut v = ValueInfo::default();
    let mut f = Fields::new(bytes_in, base);
    while let Some((field, wire, at)) = f.next()? {
        match field {
            1 => v.name = text(bytes(wire, at)?, at)?,
            // TypeProto: tensor_type (1) holds elem_type (1) and shape (2), a list of dim (1)
            // each a dim_value (1) or a dim_param (2).
            2 => {
                let mut ty = Fields::new(bytes(wire, at)?, at);
                while let Some((field, wire, at)) = ty.next()? {
                    if field != 1 {
                        continue;
                    }
                    let mut tensor = Fields::new(bytes(wire, at)?, at);
                    while let Some((field, wire, at)) = tensor.next()? {
                        match field {
                            1 => v.elem_type = int(wire, at)?,
                            2 => {
                                let mut dims = Vec::new();
                                let mut shape = Fields::new(bytes(wire, at)?, at);
                                while let Some((field, wire, at)) = shape.next()? {
                                    if field != 1 {
                                        continue;
                                    }
                                    let mut dim = Dim::Unknown;
                                    let mut d = Fields::new(bytes(wire, at)?, at);
                                    while let Some((field, wire, at)) = d.next()? {
                                        match field {
                                            1 => dim = Dim::Value(int(wire, at)?),
                                            2 => dim = Dim::Param(text(bytes(wire, at)?, at)?),
                                            _ => {}
                                        }
                                    }
                                    lists.push(&mut dims, dim)?;
                                }
                                v.dims = Some(dims);
                            }
                            _ => {}
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> Result<ModelProto<'_>> {
        let mut budget = Budget::unlimited();
        model(bytes, &mut Lists::new(&mut budget, "t.onnx"))
    }

    #[test]
    fn varints_and_lengths_are_bounds_checked() {
        // A key, then a length running past the end.
        assert!(
            decode(&[0x3a, 0x05, 0x0a])
                .unwrap_err()
                .contains("only 1 are left")
        );
        // A varint that never ends.
        assert!(
            decode(&[0x08, 0xff, 0xff])
                .unwrap_err()
                .contains("ends inside")
        );
        assert!(decode(&[0x08; 1]).is_err());
        let eleven = [
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
        ];
        assert!(decode(&eleven).unwrap_err().contains("longer than 64 bits"));
        // Groups are not in ONNX's schema.
        assert!(decode(&[0x0b]).unwrap_err().contains("wire type 3"));
        assert!(decode(&[0x00]).unwrap_err().contains("field number 0"));
        // An empty message is a model without a graph, for the importer to refuse.
        assert!(decode(&[]).unwrap().graph.is_none());
    }

    #[test]
    fn a_node_with_packed_and_unpacked_ints() {
        // NodeProto { op_type: "Relu", attribute { name: "a", ints: [1, 2] packed, ints: 3 } }
        let attr = [0x0a, 0x01, b'a', 0x42, 0x02, 0x01, 0x02, 0x40, 0x03];
        let mut node = vec![0x22, 0x04, b'R', b'e', b'l', b'u', 0x2a, attr.len() as u8];
        node.extend(attr);
        let mut graph = vec![0x0a, node.len() as u8];
        graph.extend(node);
        let mut file = vec![0x3a, graph.len() as u8];
        file.extend(graph);
        let m = decode(&file).unwrap();
        let n = &m.graph.unwrap().nodes[0];
        assert_eq!(n.op_type, "Relu");
        assert_eq!(n.attributes[0].ints, [1, 2, 3]);
    }
}
