//! Pooling over NCHW maps: 3x3 average pooling (stride 1, pad 1, padded cells not counted —
//! PaDiM/PatchCore's local aggregation) and global mean pooling.

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use rayon::prelude::*;

/// Slice kernel: `k x k` mean, stride 1, `k/2` padding, dividing by the number of in-bounds
/// cells (`count_include_pad=False`), one plane of `h x w`.
///
/// Separable: first every row's window sums (`Σ_{dx} src[y][x0..=x1]`, left to right), then
/// per output the sum of its rows' window sums, top to bottom — the same additions in the same
/// order as the direct `k x k` loop (`avg_pool_naive` in the tests), so the result is
/// bit-identical, with `2k` adds per output instead of `k²` and loops the compiler vectorises.
pub fn avg_pool_plane(src: &[f32], h: usize, w: usize, k: usize, out: &mut [f32]) {
    assert!(
        src.len() >= h * w && out.len() >= h * w,
        "avg_pool_plane: short buffer"
    );
    if h == 0 || w == 0 {
        return;
    }
    let r = k / 2;
    // The in-bounds window of x (or y): lo..=hi.
    let window = |x: usize, n: usize| (x.saturating_sub(r), (x + r).min(n - 1));
    ROW_SUMS.with_borrow_mut(|rows| {
        rows.clear();
        rows.resize(h * w, 0.0);
        for (line, sums) in src.chunks_exact(w).zip(rows.chunks_exact_mut(w)).take(h) {
            // Interior columns (full window) in one vectorisable pass, the edges apart.
            let (lo_end, hi_start) = (r.min(w), w.saturating_sub(r).max(r.min(w)));
            for x in (0..lo_end).chain(hi_start..w) {
                let (x0, x1) = window(x, w);
                sums[x] = line[x0..=x1].iter().sum::<f32>();
            }
            if hi_start > lo_end {
                let inner = &mut sums[lo_end..hi_start];
                inner.copy_from_slice(&line[..inner.len()]);
                for d in 1..k {
                    let taps = &line[d..d + inner.len()];
                    inner.iter_mut().zip(taps).for_each(|(s, &v)| *s += v);
                }
            }
        }
        for y in 0..h {
            let (y0, y1) = window(y, h);
            let o = &mut out[y * w..(y + 1) * w];
            o.copy_from_slice(&rows[y0 * w..(y0 + 1) * w]);
            for yy in y0 + 1..=y1 {
                o.iter_mut()
                    .zip(&rows[yy * w..(yy + 1) * w])
                    .for_each(|(s, &v)| *s += v);
            }
            let rows_in = (y1 - y0 + 1) as f32;
            for (x, v) in o.iter_mut().enumerate() {
                let (x0, x1) = window(x, w);
                *v /= rows_in * (x1 - x0 + 1) as f32;
            }
        }
    });
}

thread_local! {
    /// Each thread's row window sums for [`avg_pool_plane`], reused across planes.
    static ROW_SUMS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `[B,C,H,W]` -> same shape, `k x k` average (odd `k`).
pub fn avg_pool(x: &Tensor, k: usize) -> Result<Tensor> {
    if x.rank() != 4 || k.is_multiple_of(2) {
        return Err(Error::shape(format!("avg_pool {k}x{k} on {:?}", x.shape())));
    }
    let (h, w) = (x.dim(2), x.dim(3));
    let xv = x.f32s();
    let mut y = vec![0.0; x.numel()];
    y.par_chunks_mut(h * w)
        .zip(xv.par_chunks(h * w))
        .for_each(|(o, i)| avg_pool_plane(i, h, w, k, o));
    Ok(Tensor::from_parts(y, x.shape().to_vec()))
}

/// `[B,C,H,W]` -> `[B,C]`, the mean over each plane.
pub fn global_mean(x: &Tensor) -> Result<Tensor> {
    if x.rank() != 4 {
        return Err(Error::shape(format!("global_mean on {:?}", x.shape())));
    }
    let hw = x.dim(2) * x.dim(3);
    let y: Vec<f32> = x
        .f32s()
        .chunks(hw)
        .map(|p| p.iter().sum::<f32>() / hw as f32)
        .collect();
    Ok(Tensor::from_parts(y, vec![x.dim(0), x.dim(1)]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corners_divide_by_in_bounds_cells() {
        let x = Tensor::new((0..9).map(|v| v as f32).collect(), &[1, 1, 3, 3]).unwrap();
        let y = avg_pool(&x, 3).unwrap();
        let yv = y.f32s();
        assert!((yv[0] - (0.0 + 1.0 + 3.0 + 4.0) / 4.0).abs() < 1e-6);
        assert!((yv[4] - 4.0).abs() < 1e-6);
        assert!((yv[1] - (0.0 + 1.0 + 2.0 + 3.0 + 4.0 + 5.0) / 6.0).abs() < 1e-6);
        assert_eq!(global_mean(&x).unwrap().f32s()[0], 4.0);
    }

    /// The direct `k x k` loop: per output, the rows' window sums added top to bottom.
    fn avg_pool_naive(src: &[f32], h: usize, w: usize, k: usize) -> Vec<f32> {
        let r = (k / 2) as isize;
        let mut out = vec![0.0; h * w];
        for y in 0..h as isize {
            let (y0, y1) = (
                (y - r).max(0) as usize,
                (y + r).min(h as isize - 1) as usize,
            );
            for x in 0..w as isize {
                let (x0, x1) = (
                    (x - r).max(0) as usize,
                    (x + r).min(w as isize - 1) as usize,
                );
                let mut s = 0.0;
                for yy in y0..=y1 {
                    s += src[yy * w + x0..=yy * w + x1].iter().sum::<f32>();
                }
                out[y as usize * w + x as usize] = s / ((y1 - y0 + 1) * (x1 - x0 + 1)) as f32;
            }
        }
        out
    }

    #[test]
    fn separable_equals_the_direct_loop_bit_for_bit() {
        // Windows wider than the plane, one row / column, ragged sides, k 1 / 3 / 5 / 7.
        for (h, w) in [(1, 1), (1, 7), (6, 1), (2, 3), (5, 9), (28, 28), (13, 31)] {
            for k in [1, 3, 5, 7] {
                let src = crate::ops::testutil::seeded(h * w, (h * 100 + w) as u64);
                let mut got = vec![f32::NAN; h * w];
                avg_pool_plane(&src, h, w, k, &mut got);
                let want = avg_pool_naive(&src, h, w, k);
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{h}x{w} k{k}: {got:?} vs {want:?}");
            }
        }
    }
}
