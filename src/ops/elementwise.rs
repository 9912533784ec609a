//! Element-wise ops: broadcast add / mul (NumPy rules), scale, ReLU6, GELU.

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use rayon::prelude::*;

/// Elements per rayon task for cheap element-wise loops.
const CHUNK: usize = 1 << 15;

/// The broadcast result shape of `a` and `b` (NumPy rules: align right, 1 stretches).
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for i in 0..r {
        let da = if i + a.len() >= r {
            a[i + a.len() - r]
        } else {
            1
        };
        let db = if i + b.len() >= r {
            b[i + b.len() - r]
        } else {
            1
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return Err(Error::shape(format!("cannot broadcast {a:?} with {b:?}"))),
        };
    }
    Ok(out)
}

/// Strides of `shape` read as if broadcast to `out` (0 on stretched dimensions).
fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; out.len()];
    let mut s = 1;
    for i in (0..shape.len()).rev() {
        let oi = i + out.len() - shape.len();
        strides[oi] = if shape[i] == 1 { 0 } else { s };
        s *= shape[i];
    }
    strides
}

fn binary(a: &Tensor, b: &Tensor, f: impl Fn(f32, f32) -> f32 + Sync) -> Result<Tensor> {
    let (av, bv) = (a.f32s(), b.f32s());
    if a.shape() == b.shape() {
        let mut out = vec![0.0; av.len()];
        out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, o)| {
            let base = c * CHUNK;
            for (i, x) in o.iter_mut().enumerate() {
                *x = f(av[base + i], bv[base + i]);
            }
        });
        return Ok(Tensor::from_parts(out, a.shape().to_vec()));
    }
    let shape = broadcast_shape(a.shape(), b.shape())?;
    let (sa, sb) = (
        broadcast_strides(a.shape(), &shape),
        broadcast_strides(b.shape(), &shape),
    );
    let n: usize = shape.iter().product();
    // Walk the output in rows of its last dimension; each row reads a and b with fixed steps.
    let last = *shape.last().unwrap_or(&1);
    let mut out = vec![0.0; n];
    out.par_chunks_mut(last.max(1))
        .enumerate()
        .for_each(|(row, o)| {
            let (mut ia, mut ib, mut rem) = (0usize, 0usize, row);
            for d in (0..shape.len().saturating_sub(1)).rev() {
                let idx = rem % shape[d];
                rem /= shape[d];
                ia += idx * sa[d];
                ib += idx * sb[d];
            }
            let (la, lb) = (sa[shape.len() - 1], sb[shape.len() - 1]);
            for (j, x) in o.iter_mut().enumerate() {
                *x = f(av[ia + j * la], bv[ib + j * lb]);
            }
        });
    Ok(Tensor::from_parts(out, shape))
}

/// `a + b` with broadcasting.
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, |x, y| x + y)
}

/// `a * b` with broadcasting.
pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, |x, y| x * y)
}

/// Applies `f` to every element.
pub fn map(x: &Tensor, f: impl Fn(f32) -> f32 + Sync) -> Tensor {
    let v = x.f32s();
    let mut out = vec![0.0; v.len()];
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, o)| {
        for (i, y) in o.iter_mut().enumerate() {
            *y = f(v[c * CHUNK + i]);
        }
    });
    Tensor::from_parts(out, x.shape().to_vec())
}

pub fn scale(x: &Tensor, s: f32) -> Tensor {
    map(x, |v| v * s)
}

/// `min(max(x, 0), 6)`: MobileNet's activation, bounded for low-precision inference.
#[inline]
pub fn relu6_scalar(x: f32) -> f32 {
    x.clamp(0.0, 6.0)
}

pub fn relu6(x: &Tensor) -> Tensor {
    map(x, relu6_scalar)
}

/// Exact GELU: `x * Φ(x) = x/2 * (1 + erf(x/√2))` (the ViT form, not the tanh approximation).
#[inline]
pub fn gelu_scalar(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `d gelu / dx = Φ(x) + x φ(x)`.
#[inline]
pub fn gelu_grad_scalar(x: f32) -> f32 {
    let cdf = 0.5 * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2));
    let pdf = (-0.5 * x * x).exp() * 0.398_942_3; // 1/sqrt(2π)
    cdf + x * pdf
}

pub fn gelu(x: &Tensor) -> Tensor {
    map(x, gelu_scalar)
}

/// In-place GELU on a slice (used by fused model code).
pub fn gelu_inplace(v: &mut [f32]) {
    v.par_chunks_mut(CHUNK)
        .for_each(|c| c.iter_mut().for_each(|x| *x = gelu_scalar(*x)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_add_mul() {
        let a = Tensor::new((0..6).map(|x| x as f32).collect(), &[2, 3]).unwrap();
        let row = Tensor::new(vec![10.0, 20.0, 30.0], &[3]).unwrap();
        let col = Tensor::new(vec![2.0, 3.0], &[2, 1]).unwrap();
        assert_eq!(
            add(&a, &row).unwrap().f32s().as_ref(),
            &[10.0, 21.0, 32.0, 13.0, 24.0, 35.0]
        );
        assert_eq!(
            mul(&a, &col).unwrap().f32s().as_ref(),
            &[0.0, 2.0, 4.0, 9.0, 12.0, 15.0]
        );
        // [1,C,1,1] channel scale on NCHW
        let x = Tensor::new(vec![1.0; 2 * 3 * 2 * 2], &[2, 3, 2, 2]).unwrap();
        let c = Tensor::new(vec![1.0, 2.0, 3.0], &[1, 3, 1, 1]).unwrap();
        let y = mul(&x, &c).unwrap();
        assert_eq!(y.f32s()[4], 2.0);
        assert_eq!(y.f32s()[12 + 11], 3.0);
        assert!(add(&a, &Tensor::zeros(&[4])).is_err());
    }

    #[test]
    fn gelu_values_and_grad() {
        // Reference values of x*Φ(x).
        for (x, want) in [
            (0.0, 0.0),
            (1.0, 0.841_344_7),
            (-1.0, -0.158_655_3),
            (3.0, 2.995_950_3),
        ] {
            assert!((gelu_scalar(x) - want).abs() < 1e-6, "{x}");
        }
        for x in [-2.0f32, -0.3, 0.0, 0.7, 2.5] {
            let h = 1e-3;
            let fd = (gelu_scalar(x + h) - gelu_scalar(x - h)) / (2.0 * h);
            assert!((fd - gelu_grad_scalar(x)).abs() < 1e-3);
        }
        assert_eq!(
            relu6(&Tensor::new(vec![-1.0, 3.0, 7.0], &[3]).unwrap())
                .f32s()
                .as_ref(),
            &[0.0, 3.0, 6.0]
        );
    }
}
