//! [`Shape`]: the dimensions of one example's value at some point of a network (the batch is
//! not part of it): `[features]`, `[channels, height, width]`, `[tokens, width]`, ...

use std::fmt;

use serde::{Serialize, Serializer};

/// The largest rank a value may have.
pub const MAX_RANK: usize = 4;

/// The dimensions of one example's value, outermost first. Copy, like a number.
#[derive(Copy, Clone, PartialEq, Eq, Hash)]
pub struct Shape {
    dims: [usize; MAX_RANK],
    rank: usize,
}

impl Shape {
    /// A shape of the given dimensions, or `None` for rank 0 or above 4.
    pub fn new(dims: &[usize]) -> Option<Shape> {
        if dims.is_empty() || dims.len() > MAX_RANK {
            return None;
        }
        let mut all = [0; MAX_RANK];
        all[..dims.len()].copy_from_slice(dims);
        Some(Shape {
            dims: all,
            rank: dims.len(),
        })
    }

    /// A vector of `n` values.
    pub fn flat(n: usize) -> Shape {
        Shape::new(&[n]).expect("rank 1")
    }

    /// `c` channels of `h` x `w`.
    pub fn image(c: usize, h: usize, w: usize) -> Shape {
        Shape::new(&[c, h, w]).expect("rank 3")
    }

    /// The dimensions, outermost first.
    pub fn dims(&self) -> &[usize] {
        &self.dims[..self.rank]
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// `(channels, height, width)` if this is an image.
    pub fn as_image(&self) -> Option<(usize, usize, usize)> {
        match *self.dims() {
            [c, h, w] => Some((c, h, w)),
            _ => None,
        }
    }

    /// The length if this is a flat vector.
    pub fn as_flat(&self) -> Option<usize> {
        match *self.dims() {
            [n] => Some(n),
            _ => None,
        }
    }

    /// The last dimension: a vector's length, an image's width.
    pub fn last(&self) -> usize {
        self.dims[self.rank - 1]
    }

    /// The same shape with its last dimension `n`: what an operation over the last axis
    /// (a dense layer on every token) makes of it.
    pub fn with_last(&self, n: usize) -> Shape {
        let mut out = *self;
        out.dims[self.rank - 1] = n;
        out
    }

    /// Number of values. Only call on shapes whose product is known to fit (every shape of a
    /// validated plan); see [`Shape::checked_len`].
    pub fn len(&self) -> usize {
        self.dims().iter().product()
    }

    /// Number of values, or `None` if it does not fit in `usize`.
    pub fn checked_len(&self) -> Option<usize> {
        self.dims()
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
    }

    /// Whether the shape holds no values (never true for a validated plan).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `30`, `3x32x32`: the dimensions joined by `x`.
impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.dims().iter().enumerate() {
            if i > 0 {
                f.write_str("x")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.dims()).finish()
    }
}

/// As its list of dimensions.
impl Serialize for Shape {
    fn serialize<Z: Serializer>(&self, serializer: Z) -> Result<Z::Ok, Z::Error> {
        self.dims().serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_print_and_measure_themselves() {
        let s = Shape::image(3, 32, 30);
        assert_eq!(s.to_string(), "3x32x30");
        assert_eq!(s.len(), 3 * 32 * 30);
        assert_eq!(s.as_image(), Some((3, 32, 30)));
        assert_eq!(Shape::flat(7).to_string(), "7");
        assert_eq!(Shape::new(&[]), None);
        assert_eq!(Shape::new(&[1, 2, 3, 4, 5]), None);
        assert_eq!(Shape::new(&[usize::MAX, 2]).unwrap().checked_len(), None);
    }
}
