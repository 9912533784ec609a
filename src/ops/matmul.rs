//! Matrix products: `C = beta*C + A·B` with optional transposes, batched products, and
//! `linear` (`y = x·Wᵀ + b`, PyTorch's weight layout).
//!
//! The CPU kernel delegates to the `gemm` crate (packed, cache-blocked FMA micro-kernels).
//! Transposes cost nothing: `gemm` takes row and column strides, so `Aᵀ` is `A` read with
//! its strides swapped.

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Whether an operand is read as stored or transposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trans {
    N,
    T,
}

/// Work (multiply-adds) below which threading costs more than it saves.
const PARALLEL_MIN_MACS: usize = 1 << 18;

fn parallelism(m: usize, n: usize, k: usize) -> gemm::Parallelism {
    // Inside a rayon task (e.g. one image of a batch) the outer loop already fills the cores.
    if m * n * k < PARALLEL_MIN_MACS || rayon::current_thread_index().is_some() {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(0)
    }
}

/// Row-major `C[m,n] = beta*C + A·B` where `A` is `[m,k]` (or `[k,m]` read transposed) and
/// `B` is `[k,n]` (or `[n,k]` transposed). With `beta == 0` the old content of `C` is ignored.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    ta: Trans,
    b: &[f32],
    tb: Trans,
    c: &mut [f32],
    beta: f32,
) {
    assert!(
        a.len() >= m * k && b.len() >= k * n && c.len() >= m * n,
        "gemm: short buffer"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c[..m * n].iter_mut().for_each(|x| *x *= beta);
        return;
    }
    // (column stride, row stride) of each operand as it is *read*.
    let (a_cs, a_rs) = match ta {
        Trans::N => (1, k as isize),
        Trans::T => (m as isize, 1),
    };
    let (b_cs, b_rs) = match tb {
        Trans::N => (1, n as isize),
        Trans::T => (k as isize, 1),
    };
    // SAFETY: the asserts above guarantee every index gemm touches
    // (row < m or k, col < k or n, with the strides chosen for that layout) lies inside the
    // slices; `c` is borrowed mutably so nothing else aliases it.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            beta != 0.0,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            beta,
            1.0,
            false,
            false,
            false,
            parallelism(m, n, k),
        );
    }
}

/// `C = A·B` on the calling thread (no threading: the caller's tasks fill the cores), for
/// row-major operands whose rows are `a_rs`, `b_rs` and `c_rs` values apart (columns
/// contiguous): blocks of rows inside bigger maps, as the fused MBConv uses them.
///
/// # Safety
/// `c` must be valid for writes at `c + i * c_rs + j` for `i < m`, `j < n`, and nothing else
/// may access those elements during the call (other elements between the rows may be in use
/// elsewhere: no reference to the whole strided range is made).
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_rows_serial(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_rs: usize,
    b: &[f32],
    b_rs: usize,
    c: *mut f32,
    c_rs: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        k > 0 && a.len() >= (m - 1) * a_rs + k && b.len() >= (k - 1) * b_rs + n,
        "gemm_rows_serial: short buffer"
    );
    // SAFETY: the assert keeps every read of `a` and `b` inside the slices; the writes to `c`
    // are the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            c_rs as isize,
            false,
            a.as_ptr(),
            1,
            a_rs as isize,
            b.as_ptr(),
            1,
            b_rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `[m,k] · [k,n] -> [m,n]`.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.rank() != 2 || b.rank() != 2 || a.dim(1) != b.dim(0) {
        return Err(Error::shape(format!(
            "matmul {:?} x {:?}",
            a.shape(),
            b.shape()
        )));
    }
    let (m, k, n) = (a.dim(0), a.dim(1), b.dim(1));
    let mut c = vec![0.0; m * n];
    gemm(
        m,
        n,
        k,
        &a.f32s(),
        Trans::N,
        &b.f32s(),
        Trans::N,
        &mut c,
        0.0,
    );
    Ok(Tensor::from_parts(c, vec![m, n]))
}

/// Batched `[B,m,k] · [B,k,n] -> [B,m,n]`; `b` may also be a shared `[k,n]`.
pub fn bmm(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let shared_b = b.rank() == 2;
    let ok = a.rank() == 3
        && (shared_b && a.dim(2) == b.dim(0)
            || b.rank() == 3 && a.dim(0) == b.dim(0) && a.dim(2) == b.dim(1));
    if !ok {
        return Err(Error::shape(format!(
            "bmm {:?} x {:?}",
            a.shape(),
            b.shape()
        )));
    }
    let (bs, m, k, n) = (a.dim(0), a.dim(1), a.dim(2), b.dim(-1));
    let (av, bv) = (a.f32s(), b.f32s());
    let mut c = vec![0.0; bs * m * n];
    for (i, ci) in c.chunks_mut(m * n).enumerate() {
        let bi = if shared_b {
            &bv[..]
        } else {
            &bv[i * k * n..(i + 1) * k * n]
        };
        gemm(
            m,
            n,
            k,
            &av[i * m * k..(i + 1) * m * k],
            Trans::N,
            bi,
            Trans::N,
            ci,
            0.0,
        );
    }
    Ok(Tensor::from_parts(c, vec![bs, m, n]))
}

/// Slice kernel of [`linear`]: `y[r,o] = sum_i x[r,i] * w[o,i] + bias[o]`.
pub fn linear_rows(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    rows: usize,
    d_in: usize,
    d_out: usize,
    y: &mut [f32],
) {
    match bias {
        Some(b) => {
            for row in y[..rows * d_out].chunks_mut(d_out) {
                row.copy_from_slice(&b[..d_out]);
            }
            gemm(rows, d_out, d_in, x, Trans::N, w, Trans::T, y, 1.0);
        }
        None => gemm(rows, d_out, d_in, x, Trans::N, w, Trans::T, y, 0.0),
    }
}

/// `y = x·Wᵀ + b` over the last dimension of `x` (`W` is `[out, in]`, as in PyTorch).
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let d_in = x.dim(-1);
    if w.rank() != 2 || w.dim(1) != d_in || bias.is_some_and(|b| b.numel() != w.dim(0)) {
        return Err(Error::shape(format!(
            "linear: x {:?}, weight {:?}, bias {:?}",
            x.shape(),
            w.shape(),
            bias.map(|b| b.shape().to_vec())
        )));
    }
    let d_out = w.dim(0);
    let rows = x.numel() / d_in.max(1);
    let mut y = vec![0.0; rows * d_out];
    let bv = bias.map(|b| b.f32s());
    linear_rows(
        &x.f32s(),
        &w.f32s(),
        bv.as_deref(),
        rows,
        d_in,
        d_out,
        &mut y,
    );
    let mut shape = x.shape().to_vec();
    *shape.last_mut().unwrap() = d_out;
    Ok(Tensor::from_parts(y, shape))
}

/// The textbook triple loop: the reference the fast path is tested against.
pub fn gemm_naive(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    ta: Trans,
    b: &[f32],
    tb: Trans,
) -> Vec<f32> {
    let at = |i: usize, p: usize| match ta {
        Trans::N => a[i * k + p],
        Trans::T => a[p * m + i],
    };
    let bt = |p: usize, j: usize| match tb {
        Trans::N => b[p * n + j],
        Trans::T => b[j * k + p],
    };
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0f64;
            for p in 0..k {
                s += at(i, p) as f64 * bt(p, j) as f64;
            }
            c[i * n + j] = s as f32;
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::{assert_close, seeded};

    #[test]
    fn gemm_matches_naive_all_transposes_ragged() {
        for &(m, n, k) in &[
            (1, 1, 1),
            (7, 13, 5),
            (33, 17, 65),
            (100, 3, 129),
            (64, 64, 64),
        ] {
            for ta in [Trans::N, Trans::T] {
                for tb in [Trans::N, Trans::T] {
                    let a = seeded(m * k, 1);
                    let b = seeded(k * n, 2);
                    let mut c = vec![0.0; m * n];
                    gemm(m, n, k, &a, ta, &b, tb, &mut c, 0.0);
                    assert_close(&c, &gemm_naive(m, n, k, &a, ta, &b, tb), 1e-5, 1e-5);
                }
            }
        }
    }

    #[test]
    fn gemm_accumulates_with_beta() {
        let (m, n, k) = (5, 6, 7);
        let (a, b) = (seeded(m * k, 3), seeded(k * n, 4));
        let mut c = vec![1.0; m * n];
        gemm(m, n, k, &a, Trans::N, &b, Trans::N, &mut c, 1.0);
        let r: Vec<f32> = gemm_naive(m, n, k, &a, Trans::N, &b, Trans::N)
            .iter()
            .map(|x| x + 1.0)
            .collect();
        assert_close(&c, &r, 1e-5, 1e-5);
    }

    #[test]
    fn linear_and_bmm_shapes() {
        let x = Tensor::new(seeded(2 * 3 * 4, 5), &[2, 3, 4]).unwrap();
        let w = Tensor::new(seeded(5 * 4, 6), &[5, 4]).unwrap();
        let b = Tensor::new(seeded(5, 7), &[5]).unwrap();
        let y = linear(&x, &w, Some(&b)).unwrap();
        assert_eq!(y.shape(), &[2, 3, 5]);
        let xv = x.f32s();
        let (wv, bv) = (w.f32s(), b.f32s());
        let want: f32 = (0..4).map(|i| xv[4 + i] * wv[2 * 4 + i]).sum::<f32>() + bv[2];
        assert!((y.f32s()[5 + 2] - want).abs() < 1e-5);
        assert!(linear(&x, &b.reshape(&[1, 5]).unwrap(), None).is_err());
        let c = bmm(&x, &w.reshape(&[4, 5]).unwrap()).unwrap();
        assert_eq!(c.shape(), &[2, 3, 5]);
    }
}
