//! `y = x · wᵀ + bias (+ residual)` on the GPU: one cuBLAS SGEMM, then the bias (and residual)
//! in one elementwise kernel. `w` is `[out, in]` row-major — torch's `nn.Linear` layout and
//! ours ([`crate::autograd`]'s `linear`).
//!
//! cuBLAS is column-major: a row-major `[r, c]` matrix is the column-major `[c, r]` one. So
//! the row-major `Y [M, N] = X [M, K] · Wᵀ` is computed as the column-major
//! `Yᵀ [N, M] = op(W) · Xᵀ` with `op = transpose` on the stored `W` (`K x N` column-major,
//! `lda = K`), `Xᵀ` as stored (`ldb = K`) and `ldc = N`.

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{Gemm, GemmConfig};
use cudarc::driver::CudaSlice;

use super::glue::bias_residual_add;
use super::{CudaDevice, CudaResult, check_len, to_i32};

/// `x [rows, inp] · w [out, inp]ᵀ + bias [out] (+ residual [rows, out])`.
#[allow(clippy::too_many_arguments)]
pub fn linear(
    dev: &CudaDevice,
    x: &CudaSlice<f32>,
    w: &CudaSlice<f32>,
    bias: &CudaSlice<f32>,
    residual: Option<&CudaSlice<f32>>,
    rows: usize,
    inp: usize,
    out: usize,
) -> CudaResult<CudaSlice<f32>> {
    let y = matmul_wt(dev, x, w, rows, inp, out)?;
    check_len("linear", "bias", bias.len(), out)?;
    bias_residual_add(dev, &y, bias, residual, rows, out)
}

/// `x [rows, inp] · w [out, inp]ᵀ` (no bias).
pub fn matmul_wt(
    dev: &CudaDevice,
    x: &CudaSlice<f32>,
    w: &CudaSlice<f32>,
    rows: usize,
    inp: usize,
    out: usize,
) -> CudaResult<CudaSlice<f32>> {
    check_len("linear", "x", x.len(), rows * inp)?;
    check_len("linear", "w", w.len(), out * inp)?;
    let (m, n, k) = (
        to_i32(out, "linear out")?,
        to_i32(rows, "linear rows")?,
        to_i32(inp, "linear in")?,
    );
    to_i32(rows * out, "linear rows*out")?;
    let mut y = dev.alloc_out::<f32>(rows * out)?;
    if rows * out == 0 {
        return Ok(y);
    }
    if inp == 0 {
        // Empty sum: cuBLAS would leave y unwritten with k = 0 on some versions.
        return dev.zeros(rows * out);
    }
    let cfg = GemmConfig {
        transa: cublasOperation_t::CUBLAS_OP_T,
        transb: cublasOperation_t::CUBLAS_OP_N,
        m,
        n,
        k,
        alpha: 1.0f32,
        lda: k,
        ldb: k,
        beta: 0.0f32,
        ldc: m,
    };
    let blas = dev.blas()?;
    // SAFETY: with the column-major reading above, A = w is K x N (lda K, N*K elements), B = x
    // is K x M (ldb K, M*K elements), C = y is N x M (ldc N, M*N elements): the lengths were
    // checked, and beta = 0 means y is written, never read.
    unsafe { blas.gemm(cfg, w, x, &mut y) }?;
    Ok(y)
}

/// A 1x1 convolution over NCHW maps (no bias): `y[b] [C_out, HW] = w [C_out, C_in] ·
/// x[b] [C_in, HW]` for every image `b`, as one strided-batched cuBLAS GEMM (the weight is
/// shared: batch stride 0). A dense `k x k` conv is the same GEMM on [`super::glue::im2col`]'s
/// columns (`C_in` = `C*k*k`, `HW` = the output plane).
///
/// Column-major reading: `x[b]` is the `HW x C_in` matrix (ld `HW`), `w` the `C_in x C_out`
/// one (ld `C_in`), `y[b]` the `HW x C_out` one (ld `HW`): `y[b] = x[b] · w`, no transposes.
pub fn pointwise_conv(
    dev: &CudaDevice,
    x: &CudaSlice<f32>,
    w: &CudaSlice<f32>,
    batch: usize,
    c_in: usize,
    c_out: usize,
    plane: usize,
) -> CudaResult<CudaSlice<f32>> {
    use cudarc::cublas::StridedBatchedConfig;
    check_len("pointwise_conv", "x", x.len(), batch * c_in * plane)?;
    check_len("pointwise_conv", "w", w.len(), c_out * c_in)?;
    let n_out = batch * c_out * plane;
    to_i32(n_out, "pointwise_conv output")?;
    to_i32(batch * c_in * plane, "pointwise_conv input")?;
    if n_out == 0 {
        return dev.zeros(0);
    }
    if c_in == 0 {
        return dev.zeros(n_out);
    }
    let (m, n, k) = (
        to_i32(plane, "plane")?,
        to_i32(c_out, "c_out")?,
        to_i32(c_in, "c_in")?,
    );
    let mut y = dev.alloc_out::<f32>(n_out)?;
    let cfg = StridedBatchedConfig {
        gemm: GemmConfig {
            transa: cublasOperation_t::CUBLAS_OP_N,
            transb: cublasOperation_t::CUBLAS_OP_N,
            m,
            n,
            k,
            alpha: 1.0f32,
            lda: m,
            ldb: k,
            beta: 0.0f32,
            ldc: m,
        },
        batch_size: to_i32(batch, "batch")?,
        stride_a: (c_in * plane) as i64,
        stride_b: 0,
        stride_c: (c_out * plane) as i64,
    };
    let blas = dev.blas()?;
    // SAFETY: per batch entry b, A = x + b*C_in*HW spans HW*C_in elements, B = w (shared)
    // C_in*C_out, C = y + b*C_out*HW spans HW*C_out: all inside the checked lengths; beta = 0
    // means y is only written.
    unsafe { blas.gemm_strided_batched(cfg, x, w, &mut y) }?;
    Ok(y)
}
