//! A blocked matrix product `C = start + A B`, generic over the number type, on both cores.
//!
//! Every element `C[i][j]` is the sum of its K products `A[i][k] B[k][j]` added one at a time in
//! ascending `k`, starting from a bias, from the value already in `C`, or from the first
//! product. Each product is added with one fused multiply-add, `acc = a.mul_add(b, acc)`, for
//! every number type alike (one multiplication and one addition in `docs/counting.md`, one
//! rounding instead of two). Blocking, packing, vectorizing and splitting C among threads
//! change which element is computed when, never the order of an element's own sum, so
//! results are the same bits on every thread count, and an element costs exactly K
//! multiplications and K (or K - 1) additions.
//!
//! One exception to fusing: a build for a CPU without FMA (not this crate's
//! `.cargo/config.toml`), run on a CPU without AVX2 and FMA, takes the baseline path, which then
//! multiplies and adds separately, since there `mul_add` would be a call into a software
//! routine many times slower. Its results differ from the fused ones in the last bits; its
//! counts do not.
//!
//! The structure is the usual one (Goto and van de Geijn, 2008): blocks of B and A are copied
//! ("packed") into contiguous panels, and a small tile of C is kept in registers while a
//! panel of K is streamed through it. The tile is `MR x NR` with `NR` a multiple of the
//! vector width; the widest instruction set the CPU has is picked at run time. A tile at the
//! edge of C computes exactly its own elements, in a smaller register tile (fewer rows, fewer
//! whole vectors) and the last few elements in memory: no lane does arithmetic on padding,
//! which would be counted.
//!
//! Each tile asks for the next tile's part of C before it runs (a prefetch, no arithmetic),
//! since a sum continued from C finds it out of the cache otherwise. A C a few values past a
//! whole number of vectors wide, or only a few vectors wide, is computed as its transpose,
//! `C^T = B^T A^T`, when the register tiles fit that better (`transposing_pays`): the same
//! products in the same order for every element.
//!
//! C is split among threads along its longer side, on tile boundaries (each part packs all of
//! the other operand, so that the repeated packing is the smaller). Work split among threads
//! is counted on those threads; each part's counts are taken out
//! there and merged into the caller's tally under `tally::parallel`, so the caller's counts
//! are exact, even when the pool runs unrelated tasks on the caller's thread while it waits.

use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::collections::HashMap;

use rayon::prelude::*;

use super::moves::{transpose_6x8, transpose_8x8};
use crate::counts::Counts;
use crate::scalar::Scalar;
use crate::tally;

/// Where each element's sum starts.
#[derive(Copy, Clone, Debug)]
pub(crate) enum Start<'a, S> {
    /// From `bias[i]`, the same for a whole row of C (K additions).
    RowBias(&'a [S]),
    /// From `bias[j]`, the same for a whole column of C (K additions).
    ColumnBias(&'a [S]),
    /// From the value already in C (K additions).
    Existing,
    /// From the first product (K - 1 additions).
    FirstProduct,
}

/// A matrix operand read by element; packing calls it block by block.
pub(crate) trait Operand<S>: Sync {
    /// Copies `rows` x `cols` elements starting at (`r0`, `c0`) into `out`, row by row
    /// (`out[r * cols + c]`).
    fn copy_block(&self, r0: usize, rows: usize, c0: usize, cols: usize, out: &mut [S]);

    /// Packs the block into panels of `width` columns, each panel row by row with rows
    /// `width` apart: element (r, p * width + j) goes to `out[(p * rows + r) * width + j]`.
    /// Columns past the end of a last, narrower panel are left as they are.
    fn pack_columns(
        &self,
        (r0, rows): (usize, usize),
        (c0, cols): (usize, usize),
        width: usize,
        out: &mut [S],
    ) where
        S: Copy + Default,
    {
        // Each row a long piece at a time through a small buffer: one `copy_block` call per
        // piece rather than per panel (for the patch matrices a call works out where its
        // columns are in the image, which costs more than copying a panel's row).
        const PIECE: usize = 512;
        let mut piece = [S::default(); PIECE];
        let pieces = PIECE / width * width;
        for r in 0..rows {
            for c in (0..cols).step_by(pieces) {
                let n = pieces.min(cols - c);
                self.copy_block(r0 + r, 1, c0 + c, n, &mut piece[..n]);
                to_panels(&piece[..n], (r, rows), c / width, width, out);
            }
        }
    }

    /// The block's panels of `height` rows if the operand holds them packed already, laid
    /// out as [`Operand::pack_rows`] would write them; `None` (the default) to have them
    /// packed.
    fn packed_rows(
        &self,
        _rows: (usize, usize),
        _cols: (usize, usize),
        _height: usize,
    ) -> Option<&[S]> {
        None
    }

    /// The block's panels of `width` columns if the operand holds them packed already, laid
    /// out as [`Operand::pack_columns`] would write them; `None` (the default) to have them
    /// packed.
    fn packed_columns(
        &self,
        _rows: (usize, usize),
        _cols: (usize, usize),
        _width: usize,
    ) -> Option<&[S]> {
        None
    }

    /// The height of the row panels the operand holds packed already, if it does
    /// ([`PackedRows`]).
    fn packed_height(&self) -> Option<usize> {
        None
    }

    /// The width of the column panels the operand holds packed already, if it does.
    fn packed_width(&self) -> Option<usize> {
        None
    }

    /// Packs the block into panels of `height` rows, each panel column by column with columns
    /// `height` apart: element (p * height + i, c) goes to `out[(p * cols + c) * height + i]`.
    /// Rows past the end of a last, shorter panel are left as they are.
    fn pack_rows(
        &self,
        (r0, rows): (usize, usize),
        (c0, cols): (usize, usize),
        height: usize,
        out: &mut [S],
    ) where
        S: Copy + Default,
    {
        // Each row through a small buffer, a piece at a time.
        const PIECE: usize = 64;
        let mut piece = [S::default(); PIECE];
        for r in 0..rows {
            let (p, i) = (r / height, r % height);
            let panel = &mut out[p * cols * height..];
            for c in (0..cols).step_by(PIECE) {
                let n = PIECE.min(cols - c);
                self.copy_block(r0 + r, 1, c0 + c, n, &mut piece[..n]);
                for (k, &v) in piece[..n].iter().enumerate() {
                    panel[(c + k) * height + i] = v;
                }
            }
        }
    }
}

/// A matrix stored in a slice: element (r, c) is `data[r * row_stride + c * col_stride]`.
/// Row-major with `col_stride` 1; a transposed view with `row_stride` 1.
pub(crate) struct Strided<'a, S> {
    pub data: &'a [S],
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<S: Copy + Sync + 'static> Operand<S> for Strided<'_, S> {
    fn copy_block(&self, r0: usize, rows: usize, c0: usize, cols: usize, out: &mut [S]) {
        for (r, row) in out.chunks_exact_mut(cols).take(rows).enumerate() {
            let base = (r0 + r) * self.row_stride + c0 * self.col_stride;
            if self.col_stride == 1 {
                row.copy_from_slice(&self.data[base..base + cols]);
            } else {
                for (c, v) in row.iter_mut().enumerate() {
                    *v = self.data[base + c * self.col_stride];
                }
            }
        }
    }

    fn pack_columns(
        &self,
        (r0, rows): (usize, usize),
        (c0, cols): (usize, usize),
        width: usize,
        out: &mut [S],
    ) {
        if self.col_stride != 1 {
            for (p, panel) in out
                .chunks_mut(rows * width)
                .take(cols.div_ceil(width))
                .enumerate()
            {
                let j0 = c0 + p * width;
                let n = width.min(cols - p * width);
                let first = r0 * self.row_stride + j0 * self.col_stride;
                if self.row_stride == 1 {
                    // A transposed view: each of the panel's columns is a run in memory.
                    runs_across(
                        &self.data[first..],
                        self.col_stride,
                        (n, rows),
                        panel,
                        width,
                    );
                } else {
                    for (r, dst) in panel.chunks_mut(width).enumerate() {
                        let base = first + r * self.row_stride;
                        for (v, &x) in dst[..n]
                            .iter_mut()
                            .zip(self.data[base..].iter().step_by(self.col_stride))
                        {
                            *v = x;
                        }
                    }
                }
            }
            return;
        }
        // Row-major: each row a run, a few panels' rows at a time, asking for the same part
        // of the next row first (a prefetch: the hardware's stops at every page, and a
        // large operand, read once per product, comes from memory).
        let piece = 64usize.div_ceil(width) * width;
        for r in 0..rows {
            let start = (r0 + r) * self.row_stride + c0;
            let next = (r + 1 < rows).then(|| &self.data[start + self.row_stride..][..cols]);
            for (p, values) in self.data[start..start + cols].chunks(piece).enumerate() {
                if let Some(next) = next {
                    prefetch(&next[p * piece..][..values.len()]);
                }
                to_panels(values, (r, rows), p * piece / width, width, out);
            }
        }
    }

    fn pack_rows(
        &self,
        (r0, rows): (usize, usize),
        (c0, cols): (usize, usize),
        height: usize,
        out: &mut [S],
    ) {
        // The register tiles' heights, with panels of a size known to the compiler.
        match height {
            6 => self.pack_rows_of::<6>((r0, rows), (c0, cols), out),
            4 => self.pack_rows_of::<4>((r0, rows), (c0, cols), out),
            _ => {
                for (p, panel) in out
                    .chunks_mut(cols * height)
                    .take(rows.div_ceil(height))
                    .enumerate()
                {
                    let i0 = r0 + p * height;
                    let n = height.min(rows - p * height);
                    let first = i0 * self.row_stride + c0 * self.col_stride;
                    if self.col_stride == 1 {
                        // Row-major (the inner operand of a `Transposed` one, packed
                        // into panels of columns): each of the panel's rows is a run.
                        runs_across(
                            &self.data[first..],
                            self.row_stride,
                            (n, cols),
                            panel,
                            height,
                        );
                        continue;
                    }
                    for (c, dst) in panel.chunks_mut(height).enumerate() {
                        let base = first + c * self.col_stride;
                        for (i, v) in dst[..n].iter_mut().enumerate() {
                            *v = self.data[base + i * self.row_stride];
                        }
                    }
                }
            }
        }
    }
}

impl<S: Copy + 'static> Strided<'_, S> {
    /// [`Operand::pack_rows`] into panels `H` rows high.
    #[inline(always)]
    fn pack_rows_of<const H: usize>(
        &self,
        (r0, rows): (usize, usize),
        (c0, cols): (usize, usize),
        out: &mut [S],
    ) {
        let (columns, _) = out.as_chunks_mut::<H>();
        if self.row_stride == 1 {
            // A transposed view: each column of the block is a run in memory, read in one
            // go and cut into the panels' columns, asking for the run a few columns on first
            // (a prefetch: the runs are short, and a page apart after a few).
            const AHEAD: usize = 4;
            let (whole, rest) = (rows / H, rows % H);
            for c in 0..cols {
                let base = r0 + (c0 + c) * self.col_stride;
                if c + AHEAD < cols {
                    prefetch(&self.data[base + AHEAD * self.col_stride..][..rows]);
                }
                let (runs, last) = self.data[base..base + rows].as_chunks::<H>();
                for (p, values) in runs.iter().enumerate() {
                    columns[p * cols + c] = *values;
                }
                if rest > 0 {
                    columns[whole * cols + c][..rest].copy_from_slice(last);
                }
            }
            return;
        }
        for (p, panel) in columns.chunks_mut(cols).take(rows.div_ceil(H)).enumerate() {
            let i0 = r0 + p * H;
            let n = H.min(rows - p * H);
            if self.col_stride == 1 {
                // Row-major: each row read as a run, its values written `H` apart, a cache
                // line's worth at a time, asking for the same line of the next panel's rows
                // first (a prefetch: each row's piece is one block of K, too short for the
                // hardware to see it coming from memory).
                let line = (64 / std::mem::size_of::<S>()).max(1);
                let next = i0 + H;
                let ahead = next + H <= r0 + rows;
                for c in (0..cols).step_by(line) {
                    let w = line.min(cols - c);
                    if ahead {
                        for i in next..next + H {
                            prefetch(&self.data[i * self.row_stride + c0 + c..][..1]);
                        }
                    }
                    // Six whole rows, eight columns at a time: one 6 x 8 tile moved in
                    // vector registers where the type allows (`moves`).
                    let mut tiled = 0;
                    if H == 6 && n == 6 {
                        while tiled + 8 <= w {
                            let at = c0 + c + tiled;
                            let runs = std::array::from_fn(|i| {
                                self.data[(i0 + i) * self.row_stride + at..]
                                    .first_chunk::<8>()
                                    .expect("a tile's run lies inside the operand")
                            });
                            let groups = panel[c + tiled..c + tiled + 8]
                                .as_flattened_mut()
                                .first_chunk_mut::<48>()
                                .expect("six rows by eight columns");
                            transpose_6x8(runs, groups);
                            tiled += 8;
                        }
                    }
                    for i in 0..n {
                        let base = (i0 + i) * self.row_stride + c0 + c + tiled;
                        let values = &self.data[base..base + w - tiled];
                        for (dst, &v) in panel[c + tiled..c + w].iter_mut().zip(values) {
                            dst[i] = v;
                        }
                    }
                }
            } else {
                for (c, dst) in panel.iter_mut().enumerate() {
                    let base = i0 * self.row_stride + (c0 + c) * self.col_stride;
                    for (i, v) in dst[..n].iter_mut().enumerate() {
                        *v = self.data[base + i * self.row_stride];
                    }
                }
            }
        }
    }
}

/// Writes `values`, row `r` of a block of `rows` rows, into the panels of `width` columns
/// from panel `p0` on (as [`Operand::pack_columns`] lays them out): whole panel rows as
/// fixed-size copies, which compile to a few vector moves rather than a call each.
#[inline(always)]
fn to_panels<S: Copy>(
    values: &[S],
    (r, rows): (usize, usize),
    p0: usize,
    width: usize,
    out: &mut [S],
) {
    for (p, run) in values.chunks(width).enumerate() {
        let dst = &mut out[((p0 + p) * rows + r) * width..][..run.len()];
        match run.len() {
            64 => dst[..64].copy_from_slice(&run[..64]),
            16 => dst[..16].copy_from_slice(&run[..16]),
            8 => dst[..8].copy_from_slice(&run[..8]),
            _ => dst.copy_from_slice(run),
        }
    }
}

/// `dst[r * width + j] = src[j * stride + r]` for `j < lines`, `r < len`: `lines` runs of `len`
/// values, `stride` apart, written side by side as the first `lines` columns of `len` rows
/// `width` apart (a transposed operand's runs into a panel). In square tiles of `TILE`
/// runs by `TILE` values, each run's piece read in one go and each panel row's written in one
/// go, so that both sides touch memory in order rather than one value per cache line; what the
/// tiles leave (fewer than `TILE` runs, or the ends of the runs) a value at a time. A tile
/// asks for the same place in the next `TILE` runs before it runs (a prefetch), since a large
/// operand, read once per product, comes from memory.
fn runs_across<S: Copy + 'static>(
    src: &[S],
    stride: usize,
    (lines, len): (usize, usize),
    dst: &mut [S],
    width: usize,
) {
    const TILE: usize = 8;
    let whole = len - len % TILE;
    let mut j = 0;
    while j + TILE <= lines {
        let next = j + TILE;
        for r in (0..whole).step_by(TILE) {
            if next + TILE <= lines {
                // The next tiles' runs, asked for a row of tiles ahead: each run is short
                // (a block of K), too short for the hardware to see it coming.
                for run in next..next + TILE {
                    prefetch(&src[run * stride + r..][..1]);
                }
            }
            transpose_tile(
                &src[j * stride + r..],
                stride,
                &mut dst[r * width + j..],
                width,
            );
        }
        for jj in j..j + TILE {
            for r in whole..len {
                dst[r * width + jj] = src[jj * stride + r];
            }
        }
        j += TILE;
    }
    for jj in j..lines {
        for (r, &v) in src[jj * stride..][..len].iter().enumerate() {
            dst[r * width + jj] = v;
        }
    }
}

/// `dst[r * width + j] = src[j * stride + r]` for `j, r < 8`: one square tile of
/// [`runs_across`], each run bounds-checked once, moved in vector registers where the type
/// allows (see `moves`).
#[inline(always)]
fn transpose_tile<S: Copy + 'static>(src: &[S], stride: usize, dst: &mut [S], width: usize) {
    let runs: [&[S; 8]; 8] = std::array::from_fn(|j| {
        src[j * stride..]
            .first_chunk::<8>()
            .expect("a tile's run lies inside the operand")
    });
    transpose_8x8(runs, dst, width);
}

/// Panel sizes: a packed block of A is `MC x KC`, of B `KC x NC`.
const KC: usize = 256;
const MC: usize = 96;
const NC: usize = 2048;

/// Below this many multiply-adds a product runs on the calling thread alone.
const PARALLEL_WORK: usize = 1 << 18;

/// `C (m x n, row-major) = start + A (m x k) B (k x n)`, on all cores if it is large enough.
pub(crate) fn gemm<S: Scalar>(
    dims: (usize, usize, usize),
    a: &dyn Operand<S>,
    b: &dyn Operand<S>,
    start: Start<'_, S>,
    c: &mut [S],
) {
    product(rayon::current_num_threads(), dims, a, b, start, c);
}

/// [`gemm`] on the calling thread alone: for callers that share out their work among
/// threads themselves (a convolution's input gradient, a block of channels to a task).
pub(crate) fn gemm_here<S: Scalar>(
    dims: (usize, usize, usize),
    a: &dyn Operand<S>,
    b: &dyn Operand<S>,
    start: Start<'_, S>,
    c: &mut [S],
) {
    product(1, dims, a, b, start, c);
}

/// [`gemm`] on at most `threads` threads.
fn product<S: Scalar>(
    threads: usize,
    (m, n, k): (usize, usize, usize),
    a: &dyn Operand<S>,
    b: &dyn Operand<S>,
    start: Start<'_, S>,
    c: &mut [S],
) {
    debug_assert!(c.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    let isa = Isa::detect();
    // An operand packed already ([`PackedRows`], [`PackedColumns`]) was packed for one
    // orientation: an A as A in panels of the tile's rows, or as the B of the transpose in
    // panels of its columns; a B as B in panels of the tile's columns, or as the A of the
    // transpose in panels of its rows.
    let transposed_pays = match (a.packed_height(), b.packed_width()) {
        (Some(height), _) => height != isa.tile().0,
        (None, Some(width)) => width != isa.tile().1,
        (None, None) => transposing_pays((m, n, k), isa.lanes(), matches!(start, Start::Existing)),
    };
    if transposed_pays {
        // C^T = B^T A^T: every element is the same products added in the same order of k
        // (each product's two factors swapped, which changes no bit), so the same bits and
        // counts; C is copied in (if the sums start from it) and out, free.
        let mut transposed = vec![S::zero(); m * n];
        if let Start::Existing = start {
            transpose((m, n), c, &mut transposed);
        }
        let start = match start {
            Start::RowBias(bias) => Start::ColumnBias(bias),
            Start::ColumnBias(bias) => Start::RowBias(bias),
            other => other,
        };
        gemm_as_is(
            isa,
            threads,
            (n, m, k),
            &Transposed(b),
            &Transposed(a),
            start,
            &mut transposed,
        );
        transpose((n, m), &transposed, c);
        return;
    }
    gemm_as_is(isa, threads, (m, n, k), a, b, start, c);
}

/// [`gemm`] computed as it is given, never transposed.
fn gemm_as_is<S: Scalar>(
    isa: Isa,
    threads: usize,
    (m, n, k): (usize, usize, usize),
    a: &dyn Operand<S>,
    b: &dyn Operand<S>,
    start: Start<'_, S>,
    c: &mut [S],
) {
    let job = Job {
        rows: (0, m),
        columns: (0, n),
        k,
        a,
        b,
        start,
    };
    fn whole<S>(c: &mut [S], n: usize) -> Vec<&mut [S]> {
        c.chunks_exact_mut(n).collect()
    }
    if threads == 1 || m * n * k < PARALLEL_WORK {
        isa.run(job, &mut whole(&mut c[..m * n], n));
        return;
    }
    // One part per thread, along the longer side of C: each part packs all of the other
    // operand, so that side's packing is the one repeated; along the other side if that
    // operand is packed already and the parts can share it. Parts are cut at whole vectors
    // (columns) or pairs of rows, which the smaller register tiles handle, rather than at
    // whole tiles, so that the two cores get nearly the same work; at whole panels of an
    // operand packed already.
    let (row_align, column_align) = (
        a.packed_height().unwrap_or(2),
        b.packed_width().unwrap_or(isa.lanes()),
    );
    let split_columns = if a.packed_height().is_some() && n >= threads * column_align {
        true
    } else if b.packed_width().is_some() && m >= threads * row_align {
        false
    } else {
        n >= m
    };
    let parts: Vec<(Job<'_, S>, Vec<&mut [S]>)> = if split_columns {
        let mut parts: Vec<_> = column_parts(n, threads, column_align)
            .into_iter()
            .map(|columns| (Job { columns, ..job }, Vec::with_capacity(m)))
            .collect();
        for mut row in c.chunks_exact_mut(n).take(m) {
            for (job, rows) in &mut parts {
                let (head, tail) = row.split_at_mut(job.columns.1 - job.columns.0);
                rows.push(head);
                row = tail;
            }
        }
        parts
    } else {
        let per = m.div_ceil(threads).next_multiple_of(row_align);
        c[..m * n]
            .chunks_mut(per * n)
            .enumerate()
            .map(|(p, part)| {
                let rows = (p * per, (p * per + per).min(m));
                (Job { rows, ..job }, whole(part, n))
            })
            .collect()
    };
    tally::parallel(|| {
        let counts: Vec<Counts> = parts
            .into_par_iter()
            .map(|(job, mut out)| tally::take(|| isa.run(job, &mut out)).1)
            .collect();
        ((), counts.into_iter().sum())
    });
}

/// `n` columns cut into at most `threads` parts: each the whole number of `lanes`-wide vectors
/// nearest an equal share, the rest to the last part (100 columns of 16-wide vectors on two
/// threads: 48 and 52, where rounding each share up would give 64 and 36).
fn column_parts(n: usize, threads: usize, lanes: usize) -> Vec<(usize, usize)> {
    let per = ((n + threads * lanes / 2) / (threads * lanes)).max(1) * lanes;
    let starts: Vec<usize> = (0..threads)
        .map(|p| p * per)
        .take_while(|&j| j < n)
        .collect();
    starts
        .iter()
        .enumerate()
        .map(|(p, &j)| (j, starts.get(p + 1).copied().unwrap_or(n)))
        .collect()
}

/// Whether C (m x n) is better computed as its transpose, `C^T = B^T A^T`: when the
/// transpose's estimated cost, plus copying C out (and in, if the sums continue from it), is
/// the smaller by a margin. A C whose width is a few values past a whole number of vectors
/// leaves a column edge on every row, done a value at a time, and a narrow C packs all of A
/// for a few columns: the convolutions of small images have such products (49 columns for
/// one 7 x 7 example's patch gradients, 4608 rows), and so has the weight gradient of the
/// first convolution of an RGB model (147 columns: 3 channels x 7 x 7).
fn transposing_pays((m, n, k): (usize, usize, usize), lanes: usize, continues: bool) -> bool {
    let copies = if continues { 4.0 } else { 2.0 } * m as f64 * n as f64;
    let transposed = tile_cost((n, m, k), lanes) + copies;
    transposed < 0.9 * tile_cost((m, n, k), lanes)
}

/// Whether a product of C (m x n) with sums of k from scratch is computed as its transpose on
/// this machine (see `transposing_pays`): how an operand packed once for such products is
/// laid out ([`PackedRows::oriented`], [`PackedColumns::new`]).
pub(crate) fn transposes((m, n, k): (usize, usize, usize)) -> bool {
    transposing_pays((m, n, k), Isa::detect().lanes(), false)
}

/// A rough cost of the register tiles and packing for C (m x n) with sums of k, in vector
/// multiply-adds: each row takes a vector per whole vector of its width, one per narrower
/// register tile (8 and 4 wide), two per value left to the edge; a 1-row tile keeps too few
/// sums in flight to run at full speed, so an odd row costs its vectors twice; packing A
/// moves a value at a time, B a vector at a time.
fn tile_cost((m, n, k): (usize, usize, usize), lanes: usize) -> f64 {
    let vectors = n / lanes + usize::from(lanes > 8 && n % lanes >= 8) + usize::from(n % 8 >= 4);
    let per_row = vectors + 2 * (n % 4);
    let per_k = m * per_row + (m % 2) * vectors;
    k as f64 * (per_k as f64 + 0.5 * m as f64 + (n / lanes) as f64)
}

/// `to[c][r] = from[r][c]` for `from` of `rows x cols`, row-major: its rows are runs `cols`
/// apart, written side by side as the columns of `to` ([`runs_across`]).
fn transpose<S: Copy + 'static>((rows, cols): (usize, usize), from: &[S], to: &mut [S]) {
    runs_across(from, cols, (rows, cols), to, rows);
}

/// An operand read transposed: element (r, c) is the inner operand's (c, r). Packing it into
/// panels of columns is packing the inner one into panels of rows, and the other way round.
struct Transposed<'a, S>(&'a dyn Operand<S>);

impl<S: Scalar> Operand<S> for Transposed<'_, S> {
    /// A value at a time (packing, the hot path, does not come here).
    fn copy_block(&self, r0: usize, rows: usize, c0: usize, cols: usize, out: &mut [S]) {
        for (r, row) in out.chunks_exact_mut(cols).take(rows).enumerate() {
            for (c, v) in row.iter_mut().enumerate() {
                self.0
                    .copy_block(c0 + c, 1, r0 + r, 1, std::slice::from_mut(v));
            }
        }
    }

    fn pack_columns(
        &self,
        rows: (usize, usize),
        cols: (usize, usize),
        width: usize,
        out: &mut [S],
    ) {
        self.0.pack_rows(cols, rows, width, out);
    }

    fn pack_rows(&self, rows: (usize, usize), cols: (usize, usize), height: usize, out: &mut [S]) {
        self.0.pack_columns(cols, rows, height, out);
    }

    fn packed_rows(
        &self,
        rows: (usize, usize),
        cols: (usize, usize),
        height: usize,
    ) -> Option<&[S]> {
        self.0.packed_columns(cols, rows, height)
    }

    fn packed_columns(
        &self,
        rows: (usize, usize),
        cols: (usize, usize),
        width: usize,
    ) -> Option<&[S]> {
        self.0.packed_rows(cols, rows, width)
    }

    fn packed_height(&self) -> Option<usize> {
        self.0.packed_width()
    }

    fn packed_width(&self) -> Option<usize> {
        self.0.packed_height()
    }
}

/// A matrix packed once for products repeated with the same A and other B's (a convolution's
/// weights, chunk of examples after chunk): they then pack none of it, and the threads of a
/// product share the panels instead of each packing their own. It is packed as `gemm` would
/// read it for products of a given width: as A, in panels of the register tile's rows, or,
/// where the product is computed as its transpose (`transposing_pays`), as that product's B,
/// in panels of the tile's columns (a row panel of A is a column panel of A^T); every
/// product with it is then computed that way. The layout is what the blocking loops would
/// pack, block of K after block of K: block `pc` holds the panels of every row,
/// `KC.min(k - pc)` columns each.
pub(crate) struct PackedRows<S: Scalar> {
    data: Vec<S>,
    m: usize,
    k: usize,
    height: usize,
}

impl<S: Scalar> PackedRows<S> {
    /// `a` (m x k) packed for this machine's tiles, for products `n` columns wide whose sums
    /// start afresh (from a bias or their first product); on all cores (moves only).
    pub(crate) fn new(a: &dyn Operand<S>, (m, k): (usize, usize), n: usize) -> PackedRows<S> {
        PackedRows::oriented(a, (m, k), transposes((m, n, k)))
    }

    /// `a` (m x k) packed for products computed as they are given (as A), or as their
    /// transpose (as the B of the transpose) if `transposed`; see [`transposes`].
    pub(crate) fn oriented(a: &dyn Operand<S>, (m, k): (usize, usize), transposed: bool) -> Self {
        let (rows, columns) = Isa::detect().tile();
        let height = if transposed { columns } else { rows };
        // A fresh buffer, freed with the operand: a convolution's weights packed for one pass,
        // not memory the network keeps (ResNet-18's largest is 9 MB).
        PackedRows::in_panels(Vec::new(), a, (m, k), height)
    }

    /// `a` (m x k) packed into `buffer` (grown if it is too short) in panels of `height` rows.
    fn in_panels(
        mut data: Vec<S>,
        a: &dyn Operand<S>,
        (m, k): (usize, usize),
        height: usize,
    ) -> PackedRows<S> {
        let len = m.next_multiple_of(height) * k;
        data.resize(len, S::zero());
        // One part per block of K and of rows (whole panels).
        let mut parts = Vec::new();
        let mut rest = &mut data[..len];
        let step = MC.next_multiple_of(height);
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            for ic in (0..m).step_by(step) {
                let mc = step.min(m - ic);
                let (part, tail) = rest.split_at_mut(mc.next_multiple_of(height) * kc);
                parts.push(((ic, mc), (pc, kc), part));
                rest = tail;
            }
        }
        parts
            .into_par_iter()
            .for_each(|(rows, cols, out)| a.pack_rows(rows, cols, height, out));
        PackedRows { data, m, k, height }
    }

    /// The most values a `PackedRows` of an m x k matrix holds on this machine, whichever
    /// orientation it is packed in (saturating: a size past `usize` is a charge no memory
    /// budget grants).
    pub(crate) fn most_values((m, k): (usize, usize)) -> usize {
        let (rows, columns) = Isa::detect().tile();
        m.next_multiple_of(rows.max(columns)).saturating_mul(k)
    }

    /// Where element (r, c) is.
    fn index(&self, r: usize, c: usize) -> usize {
        let (pc, h) = (c / KC * KC, self.height);
        let kc = KC.min(self.k - pc);
        pc * self.m.next_multiple_of(h) + (r / h * kc + c - pc) * h + r % h
    }
}

impl<S: Scalar> Operand<S> for PackedRows<S> {
    /// A value at a time (the products read the panels themselves).
    fn copy_block(&self, r0: usize, rows: usize, c0: usize, cols: usize, out: &mut [S]) {
        for (r, row) in out.chunks_exact_mut(cols).take(rows).enumerate() {
            for (c, v) in row.iter_mut().enumerate() {
                *v = self.data[self.index(r0 + r, c0 + c)];
            }
        }
    }

    fn packed_rows(
        &self,
        (r0, rows): (usize, usize),
        (c0, cols): (usize, usize),
        height: usize,
    ) -> Option<&[S]> {
        let whole_block = c0 % KC == 0 && cols == KC.min(self.k - c0);
        if height != self.height || r0 % height != 0 || !whole_block || r0 + rows > self.m {
            return None;
        }
        let start = self.index(r0, c0);
        Some(&self.data[start..start + rows.next_multiple_of(height) * cols])
    }

    fn packed_height(&self) -> Option<usize> {
        Some(self.height)
    }
}

/// Rows `r0..` of an A, as a matrix of their own: a block of rows of a [`PackedRows`]
/// starting on a panel's edge reads its panels where they are. (As an A it is packed in
/// panels of rows, or, in a product computed as its transpose, read through `Transposed`,
/// which packs it in panels of rows too.)
pub(crate) struct RowsFrom<'a, S> {
    pub a: &'a dyn Operand<S>,
    pub r0: usize,
}

impl<S: Scalar> Operand<S> for RowsFrom<'_, S> {
    fn copy_block(&self, r0: usize, rows: usize, c0: usize, cols: usize, out: &mut [S]) {
        self.a.copy_block(self.r0 + r0, rows, c0, cols, out);
    }

    fn pack_rows(
        &self,
        (r0, rows): (usize, usize),
        cols: (usize, usize),
        height: usize,
        out: &mut [S],
    ) {
        self.a.pack_rows((self.r0 + r0, rows), cols, height, out);
    }

    fn packed_rows(
        &self,
        (r0, rows): (usize, usize),
        cols: (usize, usize),
        height: usize,
    ) -> Option<&[S]> {
        self.a.packed_rows((self.r0 + r0, rows), cols, height)
    }

    fn packed_height(&self) -> Option<usize> {
        self.a
            .packed_height()
            .filter(|&h| self.r0.is_multiple_of(h))
    }
}

/// A B packed once for products with several A's of about the same height (a convolution's
/// output gradients, by each block of input channels' weights): they then pack none of it,
/// and threads share the panels instead of each packing their own. Like [`PackedRows`], it is
/// packed for one orientation, chosen for products `m` rows high: as B, in panels of the
/// register tile's columns, or, where the product is computed as its transpose, as that
/// product's A, in panels of the tile's rows (a column panel of B is a row panel of B^T).
/// Its buffer is handed in and given back, so that products repeated pass after pass reuse
/// the pages.
pub(crate) struct PackedColumns<S: Scalar>(PackedRows<S>);

impl<S: Scalar> PackedColumns<S> {
    /// `b` (k x n) packed into `buffer` for this machine's tiles, for products computed as
    /// they are given (as B), or as their transpose (as the A of the transpose) if
    /// `transposed` (see [`transposes`]); on all cores (moves only).
    pub(crate) fn new(
        buffer: Vec<S>,
        b: &dyn Operand<S>,
        (k, n): (usize, usize),
        transposed: bool,
    ) -> PackedColumns<S> {
        let (rows, columns) = Isa::detect().tile();
        let width = if transposed { rows } else { columns };
        PackedColumns(PackedRows::in_panels(buffer, &Transposed(b), (n, k), width))
    }

    /// The most values a `PackedColumns` of a k x n matrix holds on this machine.
    pub(crate) fn most_values((k, n): (usize, usize)) -> usize {
        PackedRows::<S>::most_values((n, k))
    }

    /// Its buffer, for the next packing.
    pub(crate) fn into_buffer(self) -> Vec<S> {
        self.0.data
    }
}

impl<S: Scalar> Operand<S> for PackedColumns<S> {
    /// A value at a time (the products read the panels themselves).
    fn copy_block(&self, r0: usize, rows: usize, c0: usize, cols: usize, out: &mut [S]) {
        Transposed(&self.0).copy_block(r0, rows, c0, cols, out);
    }

    fn packed_columns(
        &self,
        rows: (usize, usize),
        cols: (usize, usize),
        width: usize,
    ) -> Option<&[S]> {
        self.0.packed_rows(cols, rows, width)
    }

    fn packed_width(&self) -> Option<usize> {
        self.0.packed_height()
    }
}

/// The rows of this machine's register tile: a product whose height is a multiple of it
/// runs in whole tiles.
pub(crate) fn tile_rows() -> usize {
    Isa::detect().tile().0
}

/// Whether `gemm` fuses each multiply and add on this machine (see the module's notes).
#[cfg(test)]
pub(crate) fn fuses() -> bool {
    Isa::detect().fuses()
}

/// The instruction set the kernels are compiled for, picked once at run time.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Isa {
    /// Whatever the build targets (x86-64-v3 with this crate's `.cargo/config.toml`).
    Baseline,
    /// AVX2 and FMA: 8-wide vectors, 16 registers.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX-512 (with FMA): 16-wide vectors, 32 registers.
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Isa {
    fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            let fma = std::arch::is_x86_feature_detected!("fma");
            let avx2 = std::arch::is_x86_feature_detected!("avx2");
            if fma && avx2 && std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if fma && avx2 {
                return Isa::Avx2;
            }
        }
        Isa::Baseline
    }

    /// Values of `f32` in one vector register (for the baseline, as built for x86-64-v3 by
    /// this crate's `.cargo/config.toml`): where a split between threads may fall.
    fn lanes(self) -> usize {
        match self {
            Isa::Baseline => 8,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => 8,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => 16,
        }
    }

    /// This path's register tile, rows x columns: the height of A's panels and the width of
    /// B's.
    fn tile(self) -> (usize, usize) {
        match self {
            Isa::Baseline => BASELINE_TILE,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => AVX2_TILE,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => AVX512_TILE,
        }
    }

    /// Whether this path's tiles fuse each multiply and add (see the module's notes).
    #[cfg(test)]
    fn fuses(self) -> bool {
        match self {
            Isa::Baseline => BASELINE_FUSES,
            #[cfg(target_arch = "x86_64")]
            _ => true,
        }
    }

    /// Computes the job's block of C into `c`, one slice per row of the block.
    fn run<S: Scalar>(self, job: Job<'_, S>, c: &mut [&mut [S]]) {
        match self {
            Isa::Baseline => {
                rows::<S, { BASELINE_TILE.0 }, { BASELINE_TILE.1 }>(job, c, tile_baseline)
            }
            // SAFETY: `detect` found the instruction set on this CPU.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { rows_avx2(job, c) },
            // SAFETY: `detect` found the instruction set on this CPU.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { rows_avx512(job, c) },
        }
    }
}

/// One call's block of C (rows `rows.0..rows.1`, columns `columns.0..columns.1`) and its
/// operands.
#[derive(Copy, Clone)]
struct Job<'a, S> {
    rows: (usize, usize),
    columns: (usize, usize),
    k: usize,
    a: &'a dyn Operand<S>,
    b: &'a dyn Operand<S>,
    start: Start<'a, S>,
}

/// The tile kernel stands alone, never inlined into the blocking loops: in a small function
/// whose only written memory is its `acc` argument (the caller's local tile), the compiler
/// can tell the tile from the thread-local tally and keeps both the sums and the counters in
/// registers; inlined into the big loop nest it does neither, and the counted kernel runs
/// several times slower.
#[inline(never)]
fn tile_baseline<S: Scalar>(
    a: &[[S; 4]],
    b: &[[S; 8]],
    first: bool,
    acc: &mut [[S; 8]; 4],
    size: (usize, usize),
) {
    tile_of_widths!(
        BASELINE_FUSES,
        4,
        8,
        [4, 2, 1],
        [8, 4],
        a,
        b,
        first,
        acc,
        size
    );
}

/// A tile of `mr x nr` elements (`mr <= MR`, `nr <= NR`): rows in register tiles of the listed
/// heights, from the tallest, each height once if it fits in the rows left; each such band of
/// rows in register tiles of the listed widths (whole vectors; from the widest, each width
/// once if it fits in what is left); what that leaves (columns to the right, rows below) by
/// `edge_tile`.
macro_rules! tile_of_widths {
    ($fuse:expr, $mr:expr, $nr:expr, [$($r:literal),*], $widths:tt, $a:ident, $b:ident, $first:ident, $acc:ident, $size:ident) => {{
        let (mr, nr) = $size;
        let mut rows = 0;
        $(
            if mr - rows >= $r {
                let columns = tile_of_widths!(@widths $fuse, $mr, $nr, $r, $widths, $a, $b, $first, $acc, rows, nr);
                if columns < nr {
                    edge_tile::<S, { $mr }, { $nr }, { $fuse }>($a, $b, $first, $acc, (rows, rows + $r), (columns, nr));
                }
                rows += $r;
            }
        )*
        if rows < mr {
            edge_tile::<S, { $mr }, { $nr }, { $fuse }>($a, $b, $first, $acc, (rows, mr), (0, nr));
        }
    }};
    (@widths $fuse:expr, $mr:expr, $nr:expr, $r:literal, [$($w:literal),*], $a:ident, $b:ident, $first:ident, $acc:ident, $i0:ident, $n:ident) => {{
        let mut columns = 0;
        $(
            if $n - columns >= $w {
                full_tile::<S, { $mr }, { $nr }, $r, $w, { $fuse }>($a, $b, $first, $acc, ($i0, columns));
                columns += $w;
            }
        )*
        columns
    }};
}
use tile_of_widths;

/// Whether the baseline path fuses: only where the build's target has a hardware FMA (as
/// x86-64-v3 and every 64-bit ARM CPU do), so that `mul_add` is one instruction.
const BASELINE_FUSES: bool = cfg!(any(target_feature = "fma", target_arch = "aarch64"));

/// The register tiles, rows x columns. AVX-512: 6 x 64 is 24 vector sums of 32 registers,
/// enough independent multiply-adds in flight to cover the unit's latency on both pipes; the
/// 4 vectors of B and one broadcast of A take the rest. AVX2: 6 x 16, 12 of 16 registers.
#[cfg(target_arch = "x86_64")]
const AVX512_TILE: (usize, usize) = (6, 64);
/// The portable tile: 4 x 8.
const BASELINE_TILE: (usize, usize) = (4, 8);
#[cfg(target_arch = "x86_64")]
const AVX2_TILE: (usize, usize) = (6, 16);

/// The blocking loops and the tile kernel compiled for one instruction set.
macro_rules! kernels_for {
    ($rows:ident, $tile:ident, $feature:literal, $mr:expr, $nr:expr, $heights:tt, $widths:tt) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feature)]
        fn $rows<S: Scalar>(job: Job<'_, S>, c: &mut [&mut [S]]) {
            // The closure inherits the instruction set, so it may call the tile directly.
            rows::<S, { $mr }, { $nr }>(job, c, |a, b, first, acc, size| {
                $tile(a, b, first, acc, size)
            });
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feature)]
        #[inline(never)]
        fn $tile<S: Scalar>(
            a: &[[S; $mr]],
            b: &[[S; $nr]],
            first: bool,
            acc: &mut [[S; $nr]; $mr],
            size: (usize, usize),
        ) {
            tile_of_widths!(true, $mr, $nr, $heights, $widths, a, b, first, acc, size);
        }
    };
}

kernels_for!(
    rows_avx2,
    tile_avx2,
    "avx2,fma",
    AVX2_TILE.0,
    AVX2_TILE.1,
    [6, 4, 2, 1],
    [16, 8, 4]
);
kernels_for!(
    rows_avx512,
    tile_avx512,
    "avx512f,avx2,fma",
    AVX512_TILE.0,
    AVX512_TILE.1,
    [6, 4, 2, 1],
    [64, 48, 32, 16, 8, 4]
);

/// The job's block of C, block by block: for each block of columns and of K, pack B, then
/// for each block of rows pack A and run the tiles. `c` holds the block's rows, each cut to
/// the block's columns.
#[inline(always)]
fn rows<S: Scalar, const MR: usize, const NR: usize>(
    job: Job<'_, S>,
    c: &mut [&mut [S]],
    tile: impl Fn(&[[S; MR]], &[[S; NR]], bool, &mut [[S; NR]; MR], (usize, usize)),
) {
    let Job {
        rows: (i0, i1),
        columns: (j0, j1),
        k,
        a,
        b,
        start,
    } = job;
    // Buffers as large as this product needs, up to one block each, kept by the thread
    // between products: fresh ones would cost a page fault per 4 KiB on every call.
    let (kc_max, nc_max, mc_max) = (KC.min(k), NC.min(j1 - j0), MC.min(i1 - i0));
    let b_len = kc_max * nc_max.next_multiple_of(NR);
    let mut workspace = take_workspace::<S>(b_len + kc_max * mc_max.next_multiple_of(MR));
    let (bpack, apack) = workspace.split_at_mut(b_len);
    let mut acc = [[S::zero(); NR]; MR];
    for jc in (j0..j1).step_by(NC) {
        let nc = NC.min(j1 - jc);
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            let bpanels: &[S] = match b.packed_columns((pc, kc), (jc, nc), NR) {
                Some(panels) => panels,
                None => {
                    b.pack_columns((pc, kc), (jc, nc), NR, bpack);
                    bpack
                }
            };
            // Only the first block of K starts the sums; later blocks continue them.
            let block_start = if pc == 0 { start } else { Start::Existing };
            let first = matches!(block_start, Start::FirstProduct);
            for ic in (i0..i1).step_by(MC) {
                let mc = MC.min(i1 - ic);
                let apanels: &[S] = match a.packed_rows((ic, mc), (pc, kc), MR) {
                    Some(panels) => panels,
                    None => {
                        a.pack_rows((ic, mc), (pc, kc), MR, apack);
                        apack
                    }
                };
                for (jr, bpanel) in bpanels
                    .chunks_exact(kc * NR)
                    .take(nc.div_ceil(NR))
                    .enumerate()
                {
                    let j = jc + jr * NR;
                    let nr = NR.min(j1 - j);
                    let (bk, _) = bpanel.as_chunks::<NR>();
                    for (ir, apanel) in apanels
                        .chunks_exact(kc * MR)
                        .take(mc.div_ceil(MR))
                        .enumerate()
                    {
                        let i = ic + ir * MR;
                        let mr = MR.min(i1 - i);
                        let (ak, _) = apanel.as_chunks::<MR>();
                        // Where the sums start: copied into the tile, free.
                        let j = j - j0;
                        let out = &c[i - i0..i - i0 + mr];
                        for (row, (sums, out)) in acc.iter_mut().zip(out.iter()).enumerate() {
                            match block_start {
                                Start::RowBias(bias) => sums.fill(bias[i + row]),
                                Start::ColumnBias(bias) => copy::<S, NR>(&bias[j + j0..], sums, nr),
                                Start::Existing => copy::<S, NR>(&out[j..], sums, nr),
                                Start::FirstProduct => {}
                            }
                        }
                        // The next tile's part of C, asked for now so that it is in
                        // the cache when that tile starts from it or writes it.
                        let (next_i, next_j) = if i + MR < ic + mc {
                            (i + MR, j)
                        } else {
                            (ic, j + NR)
                        };
                        if next_j + j0 < j1 {
                            let rows = next_i - i0..(next_i - i0 + MR).min(i1 - i0);
                            let cols = NR.min(j1 - j0 - next_j);
                            for row in &c[rows] {
                                prefetch(&row[next_j..next_j + cols]);
                            }
                        }
                        let out = &mut c[i - i0..i - i0 + mr];
                        tile(ak, bk, first, &mut acc, (mr, nr));
                        for (sums, out) in acc.iter().zip(out.iter_mut()) {
                            copy::<S, NR>(sums, &mut out[j..], nr);
                        }
                    }
                }
            }
        }
    }
    give_back_workspace(workspace);
}

/// Asks the CPU to bring the cache lines of `values` into its nearest cache; no arithmetic,
/// and nothing is read that could fault.
#[inline(always)]
fn prefetch<S>(values: &[S]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let bytes = std::mem::size_of_val(values);
        let start = values.as_ptr().cast::<i8>();
        for offset in (0..bytes).step_by(64) {
            // SAFETY: a prefetch reads nothing and cannot fault; the address is inside
            // `values`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.add(offset)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = values;
}

/// Copies the first `n` values of `from` to `to`, `n <= NR`; a whole tile row (the common
/// case) as one fixed-size copy, which compiles to a few vector moves rather than a call.
#[inline(always)]
fn copy<S: Copy, const NR: usize>(from: &[S], to: &mut [S], n: usize) {
    if n == NR {
        to[..NR].copy_from_slice(&from[..NR]);
    } else {
        to[..n].copy_from_slice(&from[..n]);
    }
}

thread_local! {
    /// Each thread's packing workspace, one per number type.
    static WORKSPACES: RefCell<HashMap<TypeId, Box<dyn Any>>> = RefCell::new(HashMap::new());
}

/// This thread's workspace for `S`, at least `len` long (taken out of the cache, so that a
/// nested product cannot find it borrowed).
fn take_workspace<S: Scalar>(len: usize) -> Vec<S> {
    let cached = WORKSPACES.with(|w| w.borrow_mut().remove(&TypeId::of::<S>()));
    let mut buffer = cached
        .and_then(|b| b.downcast::<Vec<S>>().ok())
        .map_or_else(Vec::new, |b| *b);
    if buffer.len() < len {
        buffer.resize(len, S::zero());
    }
    buffer
}

fn give_back_workspace<S: Scalar>(buffer: Vec<S>) {
    WORKSPACES.with(|w| {
        w.borrow_mut()
            .insert(TypeId::of::<S>(), Box::new(buffer) as Box<dyn Any>)
    });
}

/// A tile of `R` of the `MR` rows from `i0` and `W` of the `NR` columns from `j0`: the sums,
/// started in `acc` (or from the first product if `first`), stay in registers while the
/// panel of K streams through. The loop over K cannot panic (iterators, and slices whose
/// bounds are checked once before it), so the counters stay in registers too.
#[inline(always)]
fn full_tile<
    S: Scalar,
    const MR: usize,
    const NR: usize,
    const R: usize,
    const W: usize,
    const FUSE: bool,
>(
    a: &[[S; MR]],
    b: &[[S; NR]],
    first: bool,
    acc: &mut [[S; NR]; MR],
    (i0, j0): (usize, usize),
) {
    assert!(i0 + R <= MR && j0 + W <= NR);
    let mut sums = [[S::zero(); W]; R];
    for (row, all) in sums.iter_mut().zip(&acc[i0..]) {
        row.copy_from_slice(&all[j0..j0 + W]);
    }
    let rest = usize::from(first);
    if first {
        for (row, &ai) in sums.iter_mut().zip(&a[0][i0..]) {
            for (v, &bj) in row.iter_mut().zip(&b[0][j0..j0 + W]) {
                *v = ai * bj;
            }
        }
    }
    for (ak, bk) in a[rest..].iter().zip(&b[rest..]) {
        for (row, &ai) in sums.iter_mut().zip(&ak[i0..i0 + R]) {
            for (v, &bj) in row.iter_mut().zip(&bk[j0..j0 + W]) {
                *v = fused_or_not::<S, FUSE>(*v, ai, bj);
            }
        }
    }
    for (row, all) in sums.iter().zip(&mut acc[i0..]) {
        all[j0..j0 + W].copy_from_slice(row);
    }
}

/// The part of a tile that no register tile covers: rows `i0..i1`, columns `j0..j1` of
/// `acc`, on exactly those elements (the rest of `acc` is left as it is). K is the outer loop,
/// so that the elements' sums, kept in memory here, advance side by side rather than one
/// long chain at a time. Like the full tile, its loops cannot panic.
#[inline(always)]
fn edge_tile<S: Scalar, const MR: usize, const NR: usize, const FUSE: bool>(
    a: &[[S; MR]],
    b: &[[S; NR]],
    first: bool,
    acc: &mut [[S; NR]; MR],
    (i0, i1): (usize, usize),
    (j0, j1): (usize, usize),
) {
    let mut pairs = a.iter().zip(b);
    if first && let Some((ak, bk)) = pairs.next() {
        for (row, &ai) in acc[i0..i1].iter_mut().zip(&ak[i0..]) {
            for (v, &bj) in row[j0..j1].iter_mut().zip(&bk[j0..j1]) {
                *v = ai * bj;
            }
        }
    }
    for (ak, bk) in pairs {
        for (row, &ai) in acc[i0..i1].iter_mut().zip(&ak[i0..]) {
            for (v, &bj) in row[j0..j1].iter_mut().zip(&bk[j0..j1]) {
                *v = fused_or_not::<S, FUSE>(*v, ai, bj);
            }
        }
    }
}

/// `acc + a b`: fused (`a.mul_add(b, acc)`, one rounding) or not (two roundings); one
/// multiplication and one addition either way.
#[inline(always)]
fn fused_or_not<S: Scalar, const FUSE: bool>(acc: S, a: S, b: S) -> S {
    if FUSE { a.mul_add(b, acc) } else { acc + a * b }
}

/// `acc + a b` as the kernels compiled for the build's target (not for a wider instruction
/// set picked at run time) compute it: fused where the target has a hardware FMA, as with
/// this crate's `.cargo/config.toml`. For the dense layers, whose loops vectorize for that
/// target alone.
#[inline(always)]
pub(crate) fn madd<S: Scalar>(acc: S, a: S, b: S) -> S {
    fused_or_not::<S, BASELINE_FUSES>(acc, a, b)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{Counted, Counts, Op};

    /// The definition, one element at a time, each product added with one rounding (`mul_add`)
    /// if `fused`, with two if not.
    fn naive(
        (m, n, k): (usize, usize, usize),
        a: &[f64],
        b: &[f64],
        bias: &[f64],
        fused: bool,
    ) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut acc = bias[i];
                for kk in 0..k {
                    let (x, y) = (a[i * k + kk], b[kk * n + j]);
                    acc = if fused {
                        x.mul_add(y, acc)
                    } else {
                        acc + x * y
                    };
                }
                c[i * n + j] = acc;
            }
        }
        c
    }

    #[test]
    fn matches_the_definition_bit_for_bit_with_exact_counts() {
        for &(m, n, k) in &[
            (1, 1, 1),
            (3, 5, 7),
            (4, 16, 256),
            (9, 33, 300),
            (70, 90, 513),
            // Narrow and deep: computed as its transpose.
            (64, 27, 1100),
            // Narrow and tall: computed as its transpose, whose 49 rows end in a 1-row tile.
            (400, 49, 256),
            // 5 rows: a 4-row tile, then a 1-row tile, each with a column edge.
            (5, 147, 300),
        ] {
            let a: Vec<f64> = (0..m * k).map(|v| (v % 17) as f64 * 0.37 - 2.0).collect();
            let b: Vec<f64> = (0..k * n).map(|v| (v % 13) as f64 * 0.21 - 1.0).collect();
            let bias: Vec<f64> = (0..m).map(|v| v as f64 * 0.5).collect();
            let fused = Isa::detect().fuses();
            let expected = naive((m, n, k), &a, &b, &bias, fused);
            // The data tells fused from unfused sums apart, so a kernel that stopped fusing
            // (or fused where it should not) fails here.
            if k > 100 {
                assert_ne!(expected, naive((m, n, k), &a, &b, &bias, !fused));
            }
            let (ca, cb, cbias) = (Counted::vec(&a), Counted::vec(&b), Counted::vec(&bias));
            let mut c = vec![Counted::new(0.0); m * n];
            let ((), counts) = tally::measure(|| {
                gemm(
                    (m, n, k),
                    &Strided {
                        data: &ca,
                        row_stride: k,
                        col_stride: 1,
                    },
                    &Strided {
                        data: &cb,
                        row_stride: n,
                        col_stride: 1,
                    },
                    Start::RowBias(&cbias),
                    &mut c,
                )
            });
            let got: Vec<u64> = c.iter().map(|v| v.get().to_bits()).collect();
            let want: Vec<u64> = expected.iter().map(|v| v.to_bits()).collect();
            assert_eq!(got, want, "{m}x{n}x{k}");
            let macs = (m * n * k) as u128;
            assert_eq!(
                counts,
                Counts {
                    mul: macs,
                    add: macs,
                    ..Counts::ZERO
                }
            );
        }
    }

    #[test]
    fn an_a_packed_once_gives_the_same_bits_and_counts_in_either_orientation() {
        let mut orientations = [false; 2];
        // (m, k, the width it is packed for, the widths of the products with it)
        for &(m, k, packed_for, widths) in &[
            // As A: rows that end in a part panel, three blocks of K (the last one column).
            (70, 513, 300, &[300, 41, 1][..]),
            // As the B of the transpose (narrow products), split among threads by rows.
            (512, 300, 49 * 6, &[294, 98, 7][..]),
            (130, 600, 27, &[27, 300][..]),
            // Several blocks of rows (as A), of columns (as the transpose's B).
            (200, 40, 600, &[600, 2][..]),
            (2100, 64, 49, &[49][..]),
        ] {
            let a: Vec<f64> = (0..m * k).map(|v| (v % 17) as f64 * 0.37 - 2.0).collect();
            let bias: Vec<f64> = (0..m).map(|v| v as f64 * 0.5).collect();
            let (ca, cbias) = (Counted::vec(&a), Counted::vec(&bias));
            let strided = Strided {
                data: &ca,
                row_stride: k,
                col_stride: 1,
            };
            let packed = PackedRows::new(&strided, (m, k), packed_for);
            let transposed = transposing_pays((m, packed_for, k), Isa::detect().lanes(), false);
            let (rows, columns) = Isa::detect().tile();
            let height = if transposed { columns } else { rows };
            assert_eq!(packed.packed_height(), Some(height));
            // The memory budget's charge covers it.
            assert!(packed.data.len() <= PackedRows::<f64>::most_values((m, k)));
            orientations[usize::from(transposed)] = true;
            for &n in widths {
                let b: Vec<f64> = (0..k * n).map(|v| (v % 13) as f64 * 0.21 - 1.0).collect();
                let cb = Counted::vec(&b);
                let b = Strided {
                    data: &cb,
                    row_stride: n,
                    col_stride: 1,
                };
                for start in [Start::RowBias(&cbias[..]), Start::FirstProduct] {
                    let product = |a: &dyn Operand<Counted<f64>>| {
                        let mut c = vec![Counted::new(0.0); m * n];
                        let ((), counts) = tally::measure(|| gemm((m, n, k), a, &b, start, &mut c));
                        let bits: Vec<u64> = c.iter().map(|v| v.get().to_bits()).collect();
                        (bits, counts)
                    };
                    assert_eq!(product(&packed), product(&strided), "{m}x{n}x{k}");
                }
            }
        }
        assert_eq!(orientations, [true; 2]);
    }

    #[test]
    fn a_b_packed_once_gives_the_same_bits_and_counts_in_either_orientation() {
        let mut orientations = [false; 2];
        // (k, n, the height it is packed for, the heights of the products with it)
        for &(k, n, packed_for, heights) in &[
            // As B: columns that end in a part panel, three blocks of K (the last one row),
            // two blocks of columns.
            (513, 2100, 36, &[36, 7, 1][..]),
            (64, 3136, 72, &[72, 18][..]),
            // As the A of the transpose (products a few values past whole vectors wide).
            (300, 49, 512, &[512, 100][..]),
            (40, 17, 2100, &[2100, 3][..]),
        ] {
            let b: Vec<f64> = (0..k * n).map(|v| (v % 13) as f64 * 0.21 - 1.0).collect();
            let cb = Counted::vec(&b);
            let strided = Strided {
                data: &cb,
                row_stride: n,
                col_stride: 1,
            };
            // A buffer handed in is reused, whatever it held.
            let buffer = vec![Counted::new(9.0); 5];
            let transposed = transposes((packed_for, n, k));
            let packed = PackedColumns::new(buffer, &strided, (k, n), transposed);
            let (rows, columns) = Isa::detect().tile();
            let width = if transposed { rows } else { columns };
            assert_eq!(packed.packed_width(), Some(width));
            assert!(packed.0.data.len() <= PackedColumns::<f64>::most_values((k, n)));
            orientations[usize::from(transposed)] = true;
            for &m in heights {
                let a: Vec<f64> = (0..m * k).map(|v| (v % 17) as f64 * 0.37 - 2.0).collect();
                let bias: Vec<f64> = (0..m).map(|v| v as f64 * 0.5).collect();
                let (ca, cbias) = (Counted::vec(&a), Counted::vec(&bias));
                let a = Strided {
                    data: &ca,
                    row_stride: k,
                    col_stride: 1,
                };
                for start in [Start::RowBias(&cbias[..]), Start::FirstProduct] {
                    let product = |b: &dyn Operand<Counted<f64>>, here: bool| {
                        let mut c = vec![Counted::new(0.0); m * n];
                        let ((), counts) = tally::measure(|| {
                            if here {
                                gemm_here((m, n, k), &a, b, start, &mut c)
                            } else {
                                gemm((m, n, k), &a, b, start, &mut c)
                            }
                        });
                        let bits: Vec<u64> = c.iter().map(|v| v.get().to_bits()).collect();
                        (bits, counts)
                    };
                    let expected = product(&strided, false);
                    assert_eq!(product(&packed, false), expected, "{m}x{n}x{k}");
                    assert_eq!(product(&packed, true), expected, "{m}x{n}x{k}, here");
                }
            }
            let _ = packed.into_buffer();
        }
        assert_eq!(orientations, [true; 2]);
    }

    /// [`Operand::pack_columns`]'s layout, a value at a time from the definition: element
    /// (r, p * width + j) of the block at `out[(p * rows + r) * width + j]`.
    pub(crate) fn columns_one_by_one<S>(
        value: impl Fn(usize, usize) -> S,
        (r0, rows): (usize, usize),
        (c0, cols): (usize, usize),
        width: usize,
        out: &mut [S],
    ) {
        for r in 0..rows {
            for c in 0..cols {
                out[((c / width) * rows + r) * width + c % width] = value(r0 + r, c0 + c);
            }
        }
    }

    /// [`Operand::pack_rows`]'s layout, a value at a time: element (p * height + i, c) of the
    /// block at `out[(p * cols + c) * height + i]`.
    fn rows_one_by_one(
        value: impl Fn(usize, usize) -> f32,
        (r0, rows): (usize, usize),
        (c0, cols): (usize, usize),
        height: usize,
        out: &mut [f32],
    ) {
        for r in 0..rows {
            for c in 0..cols {
                out[((r / height) * cols + c) * height + r % height] = value(r0 + r, c0 + c);
            }
        }
    }

    #[test]
    fn packing_in_tiles_puts_every_value_where_one_at_a_time_does() {
        // Random blocks of random operands: transposed views, row-major matrices and neither,
        // each plain and wrapped in `Transposed`, from random offsets, into panels of every
        // width the tiles use and some they do not, with ragged ends on both sides of the
        // tiles. The buffers start filled with a mark and must end the same bits, the
        // untouched padding of a last, narrower panel (and the space after it) included.
        let mut rng = crate::rng::Rng::new(15);
        const MARK: f32 = -1.0;
        for trial in 0..400 {
            let (r0, c0) = (rng.below(5), rng.below(5));
            let (rows, cols) = (1 + rng.below(70), 1 + rng.below(150));
            let pad = rng.below(4);
            // The matrix is (r0 + rows + pad) x (c0 + cols + pad), stored one of three ways.
            let (height, width) = (r0 + rows + pad, c0 + cols + pad);
            let (row_stride, col_stride) = match trial % 3 {
                0 => (1, height + rng.below(3)),
                1 => (width + rng.below(3), 1),
                _ => (2, 2 * height + 1),
            };
            let len = (height - 1) * row_stride + (width - 1) * col_stride + 1;
            let data: Vec<f32> = (0..len).map(|v| v as f32).collect();
            let strided = Strided {
                data: &data,
                row_stride,
                col_stride,
            };
            let value = |r: usize, c: usize| data[r * row_stride + c * col_stride];
            let across = [3, 4, 6, 8, 13, 16, 64][rng.below(7)];
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let case = format!("{row_stride}x{col_stride} ({r0}, {rows}) ({c0}, {cols}) {across}");

            let size = cols.div_ceil(across) * across * rows + 7;
            let (mut got, mut want) = (vec![MARK; size], vec![MARK; size]);
            strided.pack_columns((r0, rows), (c0, cols), across, &mut got);
            columns_one_by_one(value, (r0, rows), (c0, cols), across, &mut want);
            assert_eq!(bits(&got), bits(&want), "pack_columns {case}");

            let size = rows.div_ceil(across) * across * cols + 7;
            let (mut got, mut want) = (vec![MARK; size], vec![MARK; size]);
            strided.pack_rows((r0, rows), (c0, cols), across, &mut got);
            rows_one_by_one(value, (r0, rows), (c0, cols), across, &mut want);
            assert_eq!(bits(&got), bits(&want), "pack_rows {case}");

            // The same matrix read transposed: its block (c0, cols) x (r0, rows).
            let transposed = Transposed(&strided);
            let value_t = |r: usize, c: usize| value(c, r);
            let size = rows.div_ceil(across) * across * cols + 7;
            let (mut got, mut want) = (vec![MARK; size], vec![MARK; size]);
            transposed.pack_columns((c0, cols), (r0, rows), across, &mut got);
            columns_one_by_one(value_t, (c0, cols), (r0, rows), across, &mut want);
            assert_eq!(bits(&got), bits(&want), "Transposed pack_columns {case}");

            let size = cols.div_ceil(across) * across * rows + 7;
            let (mut got, mut want) = (vec![MARK; size], vec![MARK; size]);
            transposed.pack_rows((c0, cols), (r0, rows), across, &mut got);
            rows_one_by_one(value_t, (c0, cols), (r0, rows), across, &mut want);
            assert_eq!(bits(&got), bits(&want), "Transposed pack_rows {case}");
        }
    }

    #[test]
    fn columns_are_shared_out_in_whole_vectors_nearest_an_equal_share() {
        assert_eq!(column_parts(100, 2, 16), [(0, 48), (48, 100)]);
        assert_eq!(column_parts(50_176, 2, 16), [(0, 25_088), (25_088, 50_176)]);
        assert_eq!(column_parts(20, 2, 16), [(0, 16), (16, 20)]);
        assert_eq!(column_parts(10, 2, 16), [(0, 10)]);
        assert_eq!(
            column_parts(100, 4, 8),
            [(0, 24), (24, 48), (48, 72), (72, 100)]
        );
    }

    #[test]
    fn products_with_a_column_edge_on_every_row_are_computed_transposed() {
        let lanes = Isa::detect().lanes();
        // A 7 x 7 output's patch gradients, 4 examples; the weight gradient of a first
        // convolution of 3 channels with 7 x 7 windows; the product above.
        for shape in [(4608, 196 + 1, 512), (64, 147, 12_544), (400, 49, 256)] {
            assert!(transposing_pays(shape, lanes, false), "{shape:?}");
        }
        // Whole vectors wide, or too short a sum to pay for the copies.
        for shape in [
            (1024, 1024, 1024),
            (64, 3136, 576),
            (5, 147, 300),
            (4608, 49, 1),
        ] {
            assert!(!transposing_pays(shape, lanes, false), "{shape:?}");
        }
    }

    #[test]
    fn a_product_computed_transposed_continues_the_sums_in_c() {
        // 27 columns of 1100-term sums: computed as C^T = B^T A^T (see `transposing_pays`).
        let (m, n, k) = (40, 27, 1100);
        assert!(transposing_pays((m, n, k), Isa::detect().lanes(), true));
        let a: Vec<f64> = (0..m * k).map(|v| (v % 11) as f64 * 0.3 - 1.5).collect();
        let b: Vec<f64> = (0..k * n).map(|v| (v % 7) as f64 * 0.9 - 2.0).collect();
        let start: Vec<f64> = (0..m * n).map(|v| v as f64 * 0.01).collect();
        let mut c = Counted::vec(&start);
        let ((), counts) = tally::measure(|| {
            gemm(
                (m, n, k),
                &Strided {
                    data: &Counted::vec(&a),
                    row_stride: k,
                    col_stride: 1,
                },
                &Strided {
                    data: &Counted::vec(&b),
                    row_stride: n,
                    col_stride: 1,
                },
                Start::Existing,
                &mut c,
            )
        });
        let fused = Isa::detect().fuses();
        for (at, got) in c.iter().enumerate() {
            let (i, j) = (at / n, at % n);
            let mut acc = start[at];
            for kk in 0..k {
                let (x, y) = (a[i * k + kk], b[kk * n + j]);
                acc = if fused {
                    x.mul_add(y, acc)
                } else {
                    acc + x * y
                };
            }
            assert_eq!(got.get().to_bits(), acc.to_bits(), "({i}, {j})");
        }
        let macs = (m * n * k) as u128;
        assert_eq!(
            counts,
            Counts {
                mul: macs,
                add: macs,
                ..Counts::ZERO
            }
        );
    }

    #[test]
    fn first_product_start_costs_one_add_less_per_element() {
        let (m, n, k) = (6, 20, 40);
        let a = Counted::vec(&vec![1.5f32; m * k]);
        let b = Counted::vec(&vec![0.25f32; k * n]);
        let mut c = vec![Counted::new(9.0f32); m * n];
        let ((), counts) = tally::measure(|| {
            gemm(
                (m, n, k),
                &Strided {
                    data: &a,
                    row_stride: k,
                    col_stride: 1,
                },
                &Strided {
                    data: &b,
                    row_stride: 1,
                    col_stride: k,
                },
                Start::FirstProduct,
                &mut c,
            )
        });
        assert!(c.iter().all(|v| v.get() == 1.5 * 0.25 * 40.0));
        assert_eq!(counts[Op::Mul], (m * n * k) as u128);
        assert_eq!(counts[Op::Add], (m * n * (k - 1)) as u128);
    }
}
