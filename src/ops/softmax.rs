//! Row-wise softmax family over the last dimension, all computed stably by subtracting the
//! row maximum: softmax, log-softmax, entropy `H(p) = -Σ p log p`, and cross-entropy
//! `-log p[target]` over selected rows.

use crate::error::{Error, Result};
use crate::ops::fastexp::{exp_shifted_sum, fast_exp};
use crate::tensor::Tensor;
use rayon::prelude::*;

/// `log Σ exp(x)` of one row, stable.
#[inline]
pub fn logsumexp(row: &[f32]) -> f32 {
    let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    if m == f32::NEG_INFINITY {
        return m;
    }
    m + row.iter().map(|&v| fast_exp(v - m)).sum::<f32>().ln()
}

pub fn softmax_rows(x: &[f32], d: usize, y: &mut [f32]) {
    y.par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .for_each(|(yr, xr)| {
            let m = xr.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            yr.copy_from_slice(xr);
            let inv = 1.0 / exp_shifted_sum(yr, m);
            yr.iter_mut().for_each(|o| *o *= inv);
        });
}

pub fn softmax(x: &Tensor) -> Tensor {
    let d = x.dim(-1);
    let mut y = vec![0.0; x.numel()];
    softmax_rows(&x.f32s(), d, &mut y);
    Tensor::from_parts(y, x.shape().to_vec())
}

pub fn log_softmax(x: &Tensor) -> Tensor {
    let d = x.dim(-1);
    let xv = x.f32s();
    let mut y = vec![0.0; x.numel()];
    y.par_chunks_mut(d)
        .zip(xv.par_chunks(d))
        .for_each(|(yr, xr)| {
            let l = logsumexp(xr);
            yr.iter_mut().zip(xr).for_each(|(o, &v)| *o = v - l);
        });
    Tensor::from_parts(y, x.shape().to_vec())
}

/// Entropy of the softmax of each row: `H = lse - Σ p_i x_i` (no log of a tiny p is taken).
pub fn entropy_rows(x: &[f32], d: usize) -> Vec<f32> {
    x.par_chunks(d)
        .map(|xr| {
            let m = xr.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let (mut s, mut sx) = (0.0f32, 0.0f32);
            for &v in xr {
                let e = fast_exp(v - m);
                s += e;
                sx += e * (v - m);
            }
            // H = log s - (Σ e (x-m)) / s   with e = exp(x-m), p = e/s.
            s.ln() - sx / s
        })
        .collect()
}

/// Per-row softmax entropy of logits `[.., V]` -> `[..]`.
pub fn entropy(logits: &Tensor) -> Tensor {
    let d = logits.dim(-1);
    let h = entropy_rows(&logits.f32s(), d);
    let shape = logits.shape()[..logits.rank() - 1].to_vec();
    Tensor::from_parts(h, shape)
}

/// Mean cross-entropy `-log softmax(x)[r, target[r]]` over the rows listed in `rows`
/// (e.g. only the masked patches). Returns the mean loss.
pub fn cross_entropy(logits: &Tensor, targets: &[usize], rows: &[usize]) -> Result<f32> {
    let d = logits.dim(-1);
    let n_rows = logits.numel() / d;
    let xv = logits.f32s();
    if rows.is_empty() {
        return Err(Error::invalid("cross-entropy over no rows"));
    }
    let mut total = 0.0f64;
    for &r in rows {
        let t = *targets
            .get(r)
            .ok_or_else(|| Error::shape(format!("no target for row {r}")))?;
        if r >= n_rows || t >= d {
            return Err(Error::shape(format!(
                "row {r} / target {t} out of [{n_rows}, {d}]"
            )));
        }
        let xr = &xv[r * d..(r + 1) * d];
        total += (logsumexp(xr) - xr[t]) as f64;
    }
    Ok((total / rows.len() as f64) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_entropy_ce() {
        let x = Tensor::new(vec![1.0, 2.0, 3.0, 1000.0, 1000.0, 1000.0], &[2, 3]).unwrap();
        let p = softmax(&x);
        let pv = p.f32s();
        assert!((pv[..3].iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((pv[3] - 1.0 / 3.0).abs() < 1e-6, "large logits stay finite");
        let h = entropy(&x);
        let direct: f32 = -pv[..3].iter().map(|p| p * p.ln()).sum::<f32>();
        assert!((h.f32s()[0] - direct).abs() < 1e-6);
        assert!((h.f32s()[1] - 3f32.ln()).abs() < 1e-5);
        let ls = log_softmax(&x);
        let ce = cross_entropy(&x, &[2, 0], &[0, 1]).unwrap();
        let want = -(ls.f32s()[2] + ls.f32s()[3]) / 2.0;
        assert!((ce - want).abs() < 1e-6);
        assert!(cross_entropy(&x, &[5, 0], &[0]).is_err());
    }
}
