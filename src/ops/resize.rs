//! Bilinear resize of NCHW maps with `align_corners=False` (PyTorch `F.interpolate`):
//! output pixel `i` samples input coordinate `(i + 0.5) * in/out - 0.5`, clamped at 0, with
//! edge replication. This is how feature maps and score maps change grid; images use the
//! antialiased resize in `data`.

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use rayon::prelude::*;

/// For each output index: (lower input index, upper input index, weight of the upper one).
fn taps(n_in: usize, n_out: usize) -> Vec<(usize, usize, f32)> {
    let scale = n_in as f32 / n_out as f32;
    (0..n_out)
        .map(|i| {
            let src = ((i as f32 + 0.5) * scale - 0.5).max(0.0);
            let lo = (src.floor() as usize).min(n_in - 1);
            let hi = (lo + 1).min(n_in - 1);
            (lo, hi, src - lo as f32)
        })
        .collect()
}

/// Slice kernel: one `h x w` plane to `oh x ow`.
pub fn bilinear_plane(src: &[f32], h: usize, w: usize, oh: usize, ow: usize, out: &mut [f32]) {
    let (ty, tx) = (taps(h, oh), taps(w, ow));
    for (oy, &(y0, y1, fy)) in ty.iter().enumerate() {
        let (r0, r1) = (&src[y0 * w..(y0 + 1) * w], &src[y1 * w..(y1 + 1) * w]);
        for (ox, &(x0, x1, fx)) in tx.iter().enumerate() {
            let top = r0[x0] + (r0[x1] - r0[x0]) * fx;
            let bot = r1[x0] + (r1[x1] - r1[x0]) * fx;
            out[oy * ow + ox] = top + (bot - top) * fy;
        }
    }
}

/// `[B,C,H,W]` -> `[B,C,oh,ow]`.
pub fn resize_bilinear(x: &Tensor, oh: usize, ow: usize) -> Result<Tensor> {
    if x.rank() != 4 || oh == 0 || ow == 0 || x.dim(2) == 0 || x.dim(3) == 0 {
        return Err(Error::shape(format!("resize {:?} to {oh}x{ow}", x.shape())));
    }
    let (h, w) = (x.dim(2), x.dim(3));
    let xv = x.f32s();
    let mut y = vec![0.0; x.dim(0) * x.dim(1) * oh * ow];
    y.par_chunks_mut(oh * ow)
        .zip(xv.par_chunks(h * w))
        .for_each(|(o, i)| bilinear_plane(i, h, w, oh, ow, o));
    Ok(Tensor::from_parts(y, vec![x.dim(0), x.dim(1), oh, ow]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_torch_align_corners_false() {
        // torch: F.interpolate(arange(4).view(1,1,2,2).float(), size=(4,4), mode='bilinear')
        let x = Tensor::new(vec![0.0, 1.0, 2.0, 3.0], &[1, 1, 2, 2]).unwrap();
        let y = resize_bilinear(&x, 4, 4).unwrap();
        let want = [
            0.0, 0.25, 0.75, 1.0, 0.5, 0.75, 1.25, 1.5, 1.5, 1.75, 2.25, 2.5, 2.0, 2.25, 2.75, 3.0,
        ];
        for (a, b) in y.f32s().iter().zip(want) {
            assert!((a - b).abs() < 1e-6);
        }
        // identity size is a copy
        let z = resize_bilinear(&x, 2, 2).unwrap();
        assert_eq!(z.f32s().as_ref(), x.f32s().as_ref());
    }
}
