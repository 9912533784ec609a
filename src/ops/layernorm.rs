//! Layer normalisation over the last dimension:
//! `y = (x - mean) / sqrt(var + eps) * gamma + beta`, `var` the biased variance.

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use rayon::prelude::*;

/// Slice kernel. Also returns, per row, `mean` and `rstd = 1/sqrt(var+eps)` (what the backward
/// pass needs) when `stats` is given (`2*rows` values: means then rstds).
pub fn layernorm_rows(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    d: usize,
    eps: f32,
    y: &mut [f32],
    stats: Option<&mut [f32]>,
) {
    let rows = x.len() / d;
    let mut local = Vec::new();
    let stats = match stats {
        Some(s) => s,
        None => {
            local.resize(2 * rows, 0.0);
            &mut local[..]
        }
    };
    let (means, rstds) = stats.split_at_mut(rows);
    y.par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .zip(means.par_iter_mut().zip(rstds.par_iter_mut()))
        .for_each(|((yr, xr), (m, r))| {
            // Two passes in f64-free f32: mean first, then centred variance (stable).
            let mean = xr.iter().sum::<f32>() / d as f32;
            let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
            let rstd = 1.0 / (var + eps).sqrt();
            for i in 0..d {
                yr[i] = (xr[i] - mean) * rstd * gamma[i] + beta[i];
            }
            *m = mean;
            *r = rstd;
        });
}

pub fn layernorm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<Tensor> {
    let d = x.dim(-1);
    if gamma.numel() != d || beta.numel() != d {
        return Err(Error::shape(format!(
            "layernorm over {d} features with gamma {:?} beta {:?}",
            gamma.shape(),
            beta.shape()
        )));
    }
    let mut y = vec![0.0; x.numel()];
    layernorm_rows(&x.f32s(), &gamma.f32s(), &beta.f32s(), d, eps, &mut y, None);
    Ok(Tensor::from_parts(y, x.shape().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::seeded;

    #[test]
    fn rows_are_normalised() {
        let (rows, d) = (5, 37);
        let x: Vec<f32> = seeded(rows * d, 1).iter().map(|v| v * 3.0 + 2.0).collect();
        let (g, b) = (vec![1.0; d], vec![0.0; d]);
        let mut y = vec![0.0; rows * d];
        layernorm_rows(&x, &g, &b, d, 1e-6, &mut y, None);
        for r in y.chunks(d) {
            let m = r.iter().sum::<f32>() / d as f32;
            let v = r.iter().map(|x| (x - m) * (x - m)).sum::<f32>() / d as f32;
            assert!(m.abs() < 1e-5 && (v - 1.0).abs() < 1e-3);
        }
    }
}
