//! Reading input files within bounds, whatever they hold: a model file is text of at most
//! [`MAX_MODEL_BYTES`], refused at its first NUL byte or invalid UTF-8 (so `/dev/zero` or a
//! binary ends at once); the lists serde builds from it are charged to the memory budget as
//! they grow; a CSV file is read one bounded line at a time (`Lines`), and its line breaks
//! (LF, CRLF or a lone CR) all count as lines.

use std::cell::Cell;
use std::fmt;
use std::io::{self, Read};
use std::marker::PhantomData;
use std::path::Path;

use serde::de::{Deserialize, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};

use crate::budget::{Budget, human_bytes};
use crate::error::{Error, Result};
use crate::model::Params;

/// The largest model file opcount reads: 1 GiB, about 80 million parameters written inline.
pub const MAX_MODEL_BYTES: u64 = 1 << 30;

/// The longest line of a CSV file opcount reads: 64 MiB, several million features.
pub const MAX_CSV_LINE_BYTES: usize = 64 << 20;

/// Reads a model file as text: at most [`MAX_MODEL_BYTES`], UTF-8 without NUL bytes, its
/// bytes charged to `budget` (and kept charged: they bound the strings parsed from them).
pub fn read_model_text(path: &Path, budget: &mut Budget) -> Result<String> {
    let refuse = |reason: String| Error::Io {
        path: path.to_path_buf(),
        action: "cannot read",
        source: io::Error::other(reason),
    };
    let io_error = |source: io::Error| Error::Io {
        path: path.to_path_buf(),
        action: "cannot read",
        source,
    };
    if path.is_dir() {
        return Err(refuse("is a directory, expected a file".into()));
    }
    let file = std::fs::File::open(path).map_err(io_error)?;
    let too_big = || {
        refuse(format!(
            "more than the largest model file opcount reads, {} (see docs/model-format.md)",
            human_bytes(u128::from(MAX_MODEL_BYTES))
        ))
    };
    // A regular file says its size; a device or FIFO is read until it ends or is too big.
    let size = file.metadata().map_err(io_error)?;
    let expected = if size.is_file() { size.len() } else { 0 };
    if expected > MAX_MODEL_BYTES {
        return Err(too_big());
    }
    let what = || format!("{}: its text", path.display());
    let mut bytes: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    let mut checked = 0;
    let mut reader = file.take(MAX_MODEL_BYTES + 1);
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_error(e)),
        };
        if (bytes.len() + n) as u64 > MAX_MODEL_BYTES {
            return Err(too_big());
        }
        if let Some(at) = chunk[..n].iter().position(|&b| b == 0) {
            return Err(refuse(format!(
                "not a model file: a NUL byte at byte {} (model files are RON text, or ONNX \
                 files named .onnx)",
                bytes.len() + at
            )));
        }
        if bytes.len() + n > bytes.capacity() {
            let want = (bytes.len() + n)
                .max(expected as usize)
                .max(2 * bytes.capacity());
            let more = want - bytes.capacity();
            budget.charge(more as u128, what)?;
            bytes
                .try_reserve_exact(want - bytes.len())
                .map_err(|_| out_of_memory(what(), more))?;
        }
        bytes.extend_from_slice(&chunk[..n]);
        // UTF-8 as it comes, so that a binary file is refused at its first bad byte.
        match std::str::from_utf8(&bytes[checked..]) {
            Ok(_) => checked = bytes.len(),
            Err(e) if e.error_len().is_none() => checked += e.valid_up_to(),
            Err(e) => {
                return Err(refuse(format!(
                    "not UTF-8 text (at byte {})",
                    checked + e.valid_up_to()
                )));
            }
        }
    }
    String::from_utf8(bytes).map_err(|e| {
        refuse(format!(
            "not UTF-8 text (at byte {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

/// An allocation the budget allowed but the system refused: an error, not an abort. (A
/// budget of 0 marks it; see `Error::Memory`'s message.)
pub(crate) fn out_of_memory(what: String, bytes: usize) -> Error {
    Error::Memory {
        what,
        need: bytes as u128,
        left: 0,
        limit: 0,
        note: "a smaller --max-memory keeps within what it can give",
    }
}

/// What the lists of the model being parsed may still take, have taken, and (once past the
/// budget) asked for.
#[derive(Copy, Clone, Debug)]
struct Allowance {
    left: u128,
    used: u128,
    refused: Option<u128>,
}

thread_local! {
    /// The allowance of the parse running on this thread; `None` outside [`charging_lists`].
    static LISTS: Cell<Option<Allowance>> = const { Cell::new(None) };
}

/// Runs `parse` with every list it deserializes through [`charged`] charged to `budget`.
/// Returns its result and, if a list did not fit, the bytes it asked for.
pub(crate) fn charging_lists<T>(
    budget: &mut Budget,
    parse: impl FnOnce() -> T,
) -> (T, Option<u128>) {
    /// Ends the allowance even if `parse` panics.
    struct End;
    impl Drop for End {
        fn drop(&mut self) {
            LISTS.with(|l| l.set(None));
        }
    }
    let end = End;
    LISTS.with(|l| {
        l.set(Some(Allowance {
            left: budget.left(),
            used: 0,
            refused: None,
        }))
    });
    let result = parse();
    let allowance = LISTS.with(Cell::get);
    drop(end);
    let Some(allowance) = allowance else {
        return (result, None);
    };
    // `used` never exceeds what was left, so this charge fits.
    let _ = budget.charge(allowance.used, String::new);
    (result, allowance.refused)
}

/// Takes `bytes` from the running parse's allowance, or fails past it.
fn take(bytes: u128) -> std::result::Result<(), String> {
    LISTS.with(|l| {
        let Some(mut allowance) = l.get() else {
            return Ok(());
        };
        if bytes > allowance.left {
            allowance.refused = Some(bytes);
            l.set(Some(allowance));
            return Err("the model's lists do not fit in the memory budget".into());
        }
        allowance.left -= bytes;
        allowance.used += bytes;
        l.set(Some(allowance));
        Ok(())
    })
}

/// Deserializes a list, charging its storage to the budget of [`charging_lists`] as it grows
/// (and failing, rather than aborting, if the system has no memory to give).
pub(crate) fn charged<'de, D, T>(d: D) -> std::result::Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(d.deserialize_seq(ChargedVisitor(PhantomData))?.0)
}

/// [`charged`] for an optional list.
pub(crate) fn charged_option<'de, D, T>(d: D) -> std::result::Result<Option<Vec<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Charged<T>>::deserialize(d)?.map(|c| c.0))
}

/// [`charged`] for a list of lists.
pub(crate) fn charged_nested<'de, D, T>(d: D) -> std::result::Result<Vec<Vec<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(charged::<D, Charged<T>>(d)?
        .into_iter()
        .map(|c| c.0)
        .collect())
}

/// A graph entry's named tensors (`{"gamma": [...], ...}`), each list charged as it grows
/// like [`charged`]'s, and the map's own entries too.
pub(crate) fn charged_params<'de, D>(d: D) -> std::result::Result<Option<Params>, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(Option::<ChargedParams>::deserialize(d)?.map(|c| c.0))
}

struct ChargedParams(Params);

impl<'de> Deserialize<'de> for ChargedParams {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_map(ParamsVisitor)
    }
}

struct ParamsVisitor;

impl<'de> Visitor<'de> for ParamsVisitor {
    type Value = ChargedParams;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map of names to lists of numbers")
    }

    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<ChargedParams, A::Error> {
        let mut list: Vec<(String, Vec<f32>)> = Vec::new();
        while let Some((name, values)) = map.next_entry::<String, Charged<f32>>()? {
            if list.len() == list.capacity() {
                let more = list.capacity().max(4);
                take((more * size_of::<(String, Vec<f32>)>()) as u128).map_err(A::Error::custom)?;
                list.try_reserve_exact(more)
                    .map_err(|_| A::Error::custom("out of memory reading a map"))?;
            }
            list.push((name, values.0));
        }
        Ok(ChargedParams(Params(list)))
    }
}

/// A list deserialized through [`charged`].
struct Charged<T>(Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Charged<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_seq(ChargedVisitor(PhantomData))
    }
}

struct ChargedVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for ChargedVisitor<T> {
    type Value = Charged<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Charged<T>, A::Error> {
        let mut list: Vec<T> = Vec::new();
        while let Some(value) = seq.next_element()? {
            if list.len() == list.capacity() {
                let more = list.capacity().max(4);
                take((more * size_of::<T>()) as u128).map_err(A::Error::custom)?;
                list.try_reserve_exact(more)
                    .map_err(|_| A::Error::custom("out of memory reading a list"))?;
            }
            list.push(value);
        }
        Ok(Charged(list))
    }
}

/// A reader of CSV text that passes at most [`MAX_CSV_LINE_BYTES`] bytes between line
/// breaks and turns each lone CR into an LF, so that the CSV parser's buffers stay bounded
/// and its line numbers count old Mac line endings too.
pub(crate) struct Lines<R> {
    inner: R,
    /// Bytes since the last line break.
    line_bytes: usize,
    /// Line breaks passed, for the message about a line too long.
    line: u64,
    /// The last byte passed was a CR (so an LF right after it is the same break).
    after_cr: bool,
}

impl<R: Read> Lines<R> {
    pub(crate) fn new(inner: R) -> Lines<R> {
        Lines {
            inner,
            line_bytes: 0,
            line: 1,
            after_cr: false,
        }
    }
}

impl<R: Read> Read for Lines<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.inner.read(buf)?;
            let mut kept = 0;
            for i in 0..n {
                let b = buf[i];
                let b = match b {
                    b'\n' if self.after_cr => {
                        self.after_cr = false;
                        continue;
                    }
                    b'\r' => {
                        self.after_cr = true;
                        b'\n'
                    }
                    _ => {
                        self.after_cr = false;
                        b
                    }
                };
                if b == b'\n' {
                    self.line_bytes = 0;
                    self.line += 1;
                } else {
                    self.line_bytes += 1;
                    if self.line_bytes > MAX_CSV_LINE_BYTES {
                        return Err(io::Error::other(LineTooLong(self.line)));
                    }
                }
                buf[kept] = b;
                kept += 1;
            }
            // A read that was all the second half of a CRLF is not the end of the file.
            if kept > 0 || n == 0 {
                return Ok(kept);
            }
        }
    }
}

/// The error a [`Lines`] reader returns for a line longer than [`MAX_CSV_LINE_BYTES`].
#[derive(Debug)]
pub(crate) struct LineTooLong(pub u64);

impl fmt::Display for LineTooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a line longer than {}, the longest CSV line opcount reads",
            human_bytes(MAX_CSV_LINE_BYTES as u128)
        )
    }
}

impl std::error::Error for LineTooLong {}

#[cfg(test)]
mod tests {
    use super::*;

    fn through_lines(text: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        // Tiny reads, so that a CRLF falls across two of them.
        let mut reader = Lines::new(io::BufReader::with_capacity(1, text));
        reader.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn every_line_ending_becomes_one_lf() {
        assert_eq!(through_lines(b"a\r\nb\rc\n\rd").unwrap(), b"a\nb\nc\n\nd");
        assert_eq!(through_lines(b"\r\r\n\n").unwrap(), b"\n\n\n");
    }

    #[test]
    fn a_line_too_long_is_an_error_with_its_number() {
        let mut text = b"a,b\n1,2\n".to_vec();
        text.resize(text.len() + MAX_CSV_LINE_BYTES + 1, b'9');
        let err = through_lines(&text).unwrap_err();
        let too_long = err.get_ref().unwrap().downcast_ref::<LineTooLong>();
        assert_eq!(too_long.map(|t| t.0), Some(3), "{err}");
    }
}
