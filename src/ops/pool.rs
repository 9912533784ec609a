//! Pooling over NCHW maps: 3x3 average pooling (stride 1, pad 1, padded cells not counted —
//! PaDiM/PatchCore's local aggregation) and global mean pooling.

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use rayon::prelude::*;

/// Slice kernel: `k x k` mean, stride 1, `k/2` padding, dividing by the number of in-bounds
/// cells (`count_include_pad=False`), one plane of `h x w`.
pub fn avg_pool_plane(src: &[f32], h: usize, w: usize, k: usize, out: &mut [f32]) {
    let r = (k / 2) as isize;
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
}
