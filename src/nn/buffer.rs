//! [`Buffer`]: a fixed-length run of numbers that starts on a cache-line boundary.
//!
//! Vectorized loops run at different speeds depending on whether their loads and stores
//! straddle cache lines, so two networks (say one of `f32` and one of `Counted<f32>`) would
//! otherwise differ in speed by the luck of their allocations. Every parameter, gradient and
//! activation buffer of the interpreter is a `Buffer`.

use std::ops::{Deref, DerefMut};

/// The boundary every buffer starts on, in bytes.
const ALIGN: usize = 64;

/// `len` values starting at a 64-byte boundary; derefs to a slice.
pub(crate) struct Buffer<S> {
    data: Vec<S>,
    start: usize,
    len: usize,
}

impl<S: Clone> Buffer<S> {
    /// `len` copies of `value`.
    pub fn filled(len: usize, value: S) -> Buffer<S> {
        let pad = ALIGN / size_of::<S>().max(1);
        let data = vec![value; len + pad];
        // A Vec's heap block never moves unless it grows, and this one never grows.
        let start = data.as_ptr().align_offset(ALIGN).min(pad);
        Buffer { data, start, len }
    }

    /// The values of an iterator, each written once.
    pub fn from_iter(values: impl ExactSizeIterator<Item = S>) -> Buffer<S> {
        let len = values.len();
        let pad = ALIGN / size_of::<S>().max(1);
        let mut values = values.peekable();
        let Some(first) = values.peek().cloned() else {
            return Buffer::empty();
        };
        let mut data: Vec<S> = Vec::with_capacity(len + pad);
        let start = data.as_ptr().align_offset(ALIGN).min(pad);
        data.extend(std::iter::repeat_n(first.clone(), start));
        data.extend(values);
        data.extend(std::iter::repeat_n(first, pad - start));
        Buffer { data, start, len }
    }

    /// A copy of `values`.
    pub fn from_slice(values: &[S]) -> Buffer<S> {
        let Some(first) = values.first() else {
            return Buffer::empty();
        };
        let mut b = Buffer::filled(values.len(), first.clone());
        b.clone_from_slice(values);
        b
    }
}

impl<S> Buffer<S> {
    /// A buffer of no values.
    pub fn empty() -> Buffer<S> {
        Buffer {
            data: Vec::new(),
            start: 0,
            len: 0,
        }
    }
}

impl<S> Default for Buffer<S> {
    fn default() -> Self {
        Buffer::empty()
    }
}

impl<S> Deref for Buffer<S> {
    type Target = [S];
    fn deref(&self) -> &[S] {
        &self.data[self.start..self.start + self.len]
    }
}

impl<S> DerefMut for Buffer<S> {
    fn deref_mut(&mut self) -> &mut [S] {
        &mut self.data[self.start..self.start + self.len]
    }
}

/// Cloning allocates anew, so the start is found anew.
impl<S: Clone> Clone for Buffer<S> {
    fn clone(&self) -> Buffer<S> {
        Buffer::from_slice(self)
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for Buffer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_a_cache_line_and_keeps_its_values() {
        for len in [0, 1, 7, 30, 1000] {
            let values: Vec<f32> = (0..len).map(|i| i as f32).collect();
            let b = Buffer::from_slice(&values);
            let c = b.clone();
            for buf in [&b, &c] {
                assert_eq!(&buf[..], &values[..]);
                if len > 0 {
                    assert_eq!(buf.as_ptr() as usize % ALIGN, 0);
                }
            }
        }
    }
}
