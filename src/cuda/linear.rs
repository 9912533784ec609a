//! `y = x · wᵀ + bias (+ residual)` on the GPU: one cuBLAS SGEMM, then the bias (and residual)
//! in one elementwise kernel. `w` is `[out, in]` row-major — torch's `nn.Linear` layout and
//! ours ([`crate::autograd`]'s `linear`).
//!
//! cuBLAS is column-major: a row-major `[r, c]` matrix is the column-major `[c, r]` one. So
//! the row-major `Y [M, N] = X [M, K] · Wᵀ` is computed as the column-major
//! `Yᵀ [N, M] = op(W) · Xᵀ` with `op = transpose` on the stored `W` (`K x N` column-major,
//! `lda = K`), `Xᵀ` as stored (`ldb = K`) and `ldc = N`.
//!
//! Precision ([`Precision`]): in `F32` every product is cuBLAS' SGEMM. In `Bf16` both operands
//! are first rounded to bfloat16 on the device (glue.cu `f32_to_bf16`) and the product is
//! `cublasGemmEx` with bf16 inputs, f32 output and `CUBLAS_COMPUTE_32F`: tensor cores, exact
//! bf16 x bf16 products summed in f32. The weights are converted at each call (one pass over
//! them, small against the GEMM's `2 rows` flops per weight at the batch sizes inspection
//! runs), so the model code keeps one f32 copy of every weight. On the emulated device the
//! same converted operands are widened back to f32 and multiplied by the CPU GEMM — the
//! tensor cores' numbers up to the order of the f32 sums.

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{Gemm, GemmConfig, StridedBatchedConfig};

use super::buffer::{HostMem, Mem};
use super::device::Backing;
use super::glue::{bias_residual_add, f32_to_bf16};
use super::{CudaDevice, CudaError, CudaResult, CudaSlice, check_len, to_i32};
use crate::backend::Precision;

/// `x [rows, inp] · w [out, inp]ᵀ + bias [out] (+ residual [rows, out])`.
#[allow(clippy::too_many_arguments)]
pub fn linear(
    dev: &CudaDevice,
    precision: Precision,
    x: &CudaSlice<f32>,
    w: &CudaSlice<f32>,
    bias: &CudaSlice<f32>,
    residual: Option<&CudaSlice<f32>>,
    rows: usize,
    inp: usize,
    out: usize,
) -> CudaResult<CudaSlice<f32>> {
    let y = matmul_wt(dev, precision, x, w, rows, inp, out)?;
    check_len("linear", "bias", bias.len(), out)?;
    bias_residual_add(dev, &y, bias, residual, rows, out)
}

/// `x [rows, inp] · w [out, inp]ᵀ` (no bias).
pub fn matmul_wt(
    dev: &CudaDevice,
    precision: Precision,
    x: &CudaSlice<f32>,
    w: &CudaSlice<f32>,
    rows: usize,
    inp: usize,
    out: usize,
) -> CudaResult<CudaSlice<f32>> {
    match precision {
        Precision::F32 => matmul_wt_in(dev, sgemm, x, w, rows, inp, out),
        Precision::Bf16 => {
            let (x16, w16) = (f32_to_bf16(dev, x)?, f32_to_bf16(dev, w)?);
            matmul_wt_in(dev, gemm_bf16, &x16, &w16, rows, inp, out)
        }
    }
}

/// [`matmul_wt`] of operands already in bf16 (raw bits), f32 result: the GEMM of the bf16
/// nearest-prototype search ([`super::proto_nn::proto_nn_tc`]).
pub fn matmul_wt_bf16(
    dev: &CudaDevice,
    x: &CudaSlice<u16>,
    w: &CudaSlice<u16>,
    rows: usize,
    inp: usize,
    out: usize,
) -> CudaResult<CudaSlice<f32>> {
    matmul_wt_in(dev, gemm_bf16, x, w, rows, inp, out)
}

/// A GEMM over operands of type `T` with an f32 result: [`sgemm`] (f32) or [`gemm_bf16`]
/// (bf16 bits).
type GemmFn<T> = unsafe fn(
    &CudaDevice,
    Sgemm,
    &CudaSlice<T>,
    &CudaSlice<T>,
    &mut CudaSlice<f32>,
) -> CudaResult<()>;

fn matmul_wt_in<T>(
    dev: &CudaDevice,
    gemm: GemmFn<T>,
    x: &CudaSlice<T>,
    w: &CudaSlice<T>,
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
    // SAFETY: with the column-major reading above, A = w is K x N (lda K, N*K elements), B = x
    // is K x M (ldb K, M*K elements), C = y is N x M (ldc N, M*N elements): the lengths were
    // checked, and beta = 0 means y is written, never read.
    unsafe { gemm(dev, Sgemm::One(cfg), w, x, &mut y) }?;
    Ok(y)
}

/// A 1x1 convolution over NCHW maps (no bias): `y[b] [C_out, HW] = w [C_out, C_in] ·
/// x[b] [C_in, HW]` for every image `b`, as one strided-batched cuBLAS GEMM (the weight is
/// shared: batch stride 0). A dense `k x k` conv is the same GEMM on [`super::glue::im2col`]'s
/// columns (`C_in` = `C*k*k`, `HW` = the output plane).
///
/// Column-major reading: `x[b]` is the `HW x C_in` matrix (ld `HW`), `w` the `C_in x C_out`
/// one (ld `C_in`), `y[b]` the `HW x C_out` one (ld `HW`): `y[b] = x[b] · w`, no transposes.
#[allow(clippy::too_many_arguments)]
pub fn pointwise_conv(
    dev: &CudaDevice,
    precision: Precision,
    x: &CudaSlice<f32>,
    w: &CudaSlice<f32>,
    batch: usize,
    c_in: usize,
    c_out: usize,
    plane: usize,
) -> CudaResult<CudaSlice<f32>> {
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
    // SAFETY: per batch entry b, A = x + b*C_in*HW spans HW*C_in elements, B = w (shared)
    // C_in*C_out, C = y + b*C_out*HW spans HW*C_out: all inside the checked lengths; beta = 0
    // means y is only written.
    unsafe { gemm(dev, precision, Sgemm::StridedBatched(cfg), x, w, &mut y) }?;
    Ok(y)
}

/// [`sgemm`] in `precision`: f32 as it is, or both operands rounded to bf16 first and
/// multiplied by [`gemm_bf16`].
///
/// # Safety
/// As [`sgemm`].
unsafe fn gemm(
    dev: &CudaDevice,
    precision: Precision,
    call: Sgemm,
    a: &CudaSlice<f32>,
    b: &CudaSlice<f32>,
    c: &mut CudaSlice<f32>,
) -> CudaResult<()> {
    match precision {
        // SAFETY: the caller's contract.
        Precision::F32 => unsafe { sgemm(dev, call, a, b, c) },
        Precision::Bf16 => {
            let (a16, b16) = (f32_to_bf16(dev, a)?, f32_to_bf16(dev, b)?);
            // SAFETY: the bf16 copies have the f32 buffers' lengths; the caller's contract.
            unsafe { gemm_bf16(dev, call, &a16, &b16, c) }
        }
    }
}

/// A cuBLAS SGEMM call: one product, or a strided batch of them.
#[derive(Clone, Copy, Debug)]
pub enum Sgemm {
    One(GemmConfig<f32>),
    StridedBatched(StridedBatchedConfig<f32>),
}

impl Sgemm {
    /// The call as a strided batch (one product: a batch of one, strides 0).
    fn strided(self) -> StridedBatchedConfig<f32> {
        match self {
            Sgemm::One(gemm) => StridedBatchedConfig {
                gemm,
                batch_size: 1,
                stride_a: 0,
                stride_b: 0,
                stride_c: 0,
            },
            Sgemm::StridedBatched(s) => s,
        }
    }
}

/// Every GEMM operand holds elements: launchers return before a GEMM with a zero dimension,
/// and an empty GPU buffer has no device memory to give cuBLAS.
fn check_operands(op: &str, a: usize, b: usize, c: usize) -> CudaResult<()> {
    if a == 0 || b == 0 || c == 0 {
        return Err(CudaError::Invalid(format!(
            "{op}: an empty operand ({a}, {b}, {c} elements)"
        )));
    }
    Ok(())
}

/// `C = alpha op(A) op(B) + beta C` (column-major, cuBLAS' conventions) on `dev`: cuBLAS on a
/// GPU; on the emulated device the CPU GEMM (the `gemm` crate, as `src/ops/matmul.rs`) reading
/// the same configuration — transposes, leading dimensions, batch strides — after checking
/// that every element it names lies inside the buffers (a wrong `ld*` or stride in a launcher
/// is an error there, where on a GPU it would read out of bounds).
///
/// # Safety
/// On a GPU, as cuBLAS: the configuration must stay inside the three buffers.
pub unsafe fn sgemm(
    dev: &CudaDevice,
    call: Sgemm,
    a: &CudaSlice<f32>,
    b: &CudaSlice<f32>,
    c: &mut CudaSlice<f32>,
) -> CudaResult<()> {
    check_operands("sgemm", a.len(), b.len(), c.len())?;
    match (dev.backing(), &a.mem, &b.mem, &mut c.mem) {
        (Backing::Driver(_), Mem::Driver(a), Mem::Driver(b), Mem::Driver(c)) => {
            let blas = dev.blas()?;
            // SAFETY: the caller's contract.
            match call {
                Sgemm::One(cfg) => unsafe { blas.gemm(cfg, a, b, c) }?,
                Sgemm::StridedBatched(cfg) => unsafe { blas.gemm_strided_batched(cfg, a, b, c) }?,
            }
            Ok(())
        }
        (Backing::Emulated, Mem::Host(a), Mem::Host(b), Mem::Host(c)) => host_sgemm(
            &call.strided(),
            a.as_slice(),
            b.as_slice(),
            c.as_mut_slice(),
        ),
        _ => Err(CudaError::Invalid(
            "sgemm: buffers of another device kind (GPU vs emulated)".into(),
        )),
    }
}

/// `C = alpha op(A) op(B) + beta C` as [`sgemm`], with `A` and `B` bfloat16 (raw `u16` bits)
/// and `C` f32: `cublasGemmEx` / `cublasGemmStridedBatchedEx` with f32 compute on a GPU
/// (tensor cores); on the emulated device the operands widened to f32 (exactly) and the CPU
/// GEMM.
///
/// # Safety
/// On a GPU, as cuBLAS: the configuration must stay inside the three buffers.
pub unsafe fn gemm_bf16(
    dev: &CudaDevice,
    call: Sgemm,
    a: &CudaSlice<u16>,
    b: &CudaSlice<u16>,
    c: &mut CudaSlice<f32>,
) -> CudaResult<()> {
    use cudarc::cublas::{result, sys};
    use cudarc::driver::{DevicePtr, DevicePtrMut};
    check_operands("gemm_bf16", a.len(), b.len(), c.len())?;
    match (dev.backing(), &a.mem, &b.mem, &mut c.mem) {
        (Backing::Driver(d), Mem::Driver(a), Mem::Driver(b), Mem::Driver(c)) => {
            let blas = dev.blas()?;
            let (bf16, f32) = (
                sys::cudaDataType_t::CUDA_R_16BF,
                sys::cudaDataType_t::CUDA_R_32F,
            );
            let compute = sys::cublasComputeType_t::CUBLAS_COMPUTE_32F;
            let algo = sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT;
            let (a, _ra) = a.device_ptr(&d.stream);
            let (b, _rb) = b.device_ptr(&d.stream);
            let (c, _rc) = c.device_ptr_mut(&d.stream);
            // One product is a strided batch of one (strides unused).
            let s = call.strided();
            let g = s.gemm;
            // SAFETY: the caller's contract; alpha and beta are f32, as CUBLAS_COMPUTE_32F reads
            // them, and live through the call.
            unsafe {
                result::gemm_strided_batched_ex(
                    *blas.handle(),
                    g.transa,
                    g.transb,
                    g.m,
                    g.n,
                    g.k,
                    (&g.alpha) as *const f32 as *const _,
                    a as *const _,
                    bf16,
                    g.lda,
                    s.stride_a,
                    b as *const _,
                    bf16,
                    g.ldb,
                    s.stride_b,
                    (&g.beta) as *const f32 as *const _,
                    c as *mut _,
                    f32,
                    g.ldc,
                    s.stride_c,
                    s.batch_size,
                    compute,
                    algo,
                )
            }?;
            Ok(())
        }
        (Backing::Emulated, Mem::Host(a16), Mem::Host(b16), Mem::Host(_)) => {
            // bf16 -> f32 is exact (the bits are the upper half of the f32's).
            let widen = |h: &[u16]| -> Vec<f32> {
                h.iter()
                    .map(|&u| f32::from_bits(u32::from(u) << 16))
                    .collect()
            };
            let host = |v: Vec<f32>| CudaSlice {
                mem: Mem::Host(HostMem::from_slice(&v)),
            };
            let (a, b) = (host(widen(a16.as_slice())), host(widen(b16.as_slice())));
            // SAFETY: the caller's contract (same lengths as the bf16 operands); the emulated
            // sgemm checks every element it touches anyway.
            unsafe { sgemm(dev, call, &a, &b, c) }
        }
        _ => Err(CudaError::Invalid(
            "gemm_bf16: buffers of another device kind (GPU vs emulated)".into(),
        )),
    }
}

/// An operand as cuBLAS reads it: `rows x cols` of `op(X)`, stored column-major with leading
/// dimension `ld` (transposed: the stored matrix is `cols x rows`).
struct Operand {
    name: &'static str,
    rows: usize,
    cols: usize,
    trans: bool,
    ld: usize,
    stride: i64,
}

impl Operand {
    /// `(row stride, column stride)` of `op(X)` in elements.
    fn strides(&self) -> (isize, isize) {
        if self.trans {
            (self.ld as isize, 1)
        } else {
            (1, self.ld as isize)
        }
    }

    /// Checks `ld` (cuBLAS' rule: at least the stored row count) and that `count` batch entries
    /// fit in `len` elements.
    fn check(&self, count: usize, len: usize) -> CudaResult<()> {
        let (stored_rows, stored_cols) = if self.trans {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        };
        let bad =
            |why: String| CudaError::Invalid(format!("sgemm (emulated): {}: {why}", self.name));
        if self.ld < stored_rows.max(1) {
            return Err(bad(format!("ld {} < {stored_rows} rows", self.ld)));
        }
        if self.stride < 0 {
            return Err(bad(format!("negative batch stride {}", self.stride)));
        }
        if stored_rows * stored_cols == 0 || count == 0 {
            return Ok(());
        }
        let span = (count - 1) * self.stride as usize + (stored_cols - 1) * self.ld + stored_rows;
        if span > len {
            return Err(bad(format!("reads {span} elements of a buffer of {len}")));
        }
        Ok(())
    }
}

/// cuBLAS SGEMM semantics on the CPU (see [`sgemm`]).
fn host_sgemm(
    batch: &StridedBatchedConfig<f32>,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
) -> CudaResult<()> {
    let dim = |v: i32, what: &str| {
        usize::try_from(v)
            .map_err(|_| CudaError::Invalid(format!("sgemm (emulated): {what} = {v}")))
    };
    let cfg = &batch.gemm;
    let (m, n, k) = (dim(cfg.m, "m")?, dim(cfg.n, "n")?, dim(cfg.k, "k")?);
    let count = dim(batch.batch_size, "batch")?;
    let is_t = |op: cublasOperation_t| op == cublasOperation_t::CUBLAS_OP_T;
    let op_a = Operand {
        name: "A",
        rows: m,
        cols: k,
        trans: is_t(cfg.transa),
        ld: dim(cfg.lda, "lda")?,
        stride: batch.stride_a,
    };
    let op_b = Operand {
        name: "B",
        rows: k,
        cols: n,
        trans: is_t(cfg.transb),
        ld: dim(cfg.ldb, "ldb")?,
        stride: batch.stride_b,
    };
    let op_c = Operand {
        name: "C",
        rows: m,
        cols: n,
        trans: false,
        ld: dim(cfg.ldc, "ldc")?,
        stride: batch.stride_c,
    };
    for (op, len) in [(&op_a, a.len()), (&op_b, b.len()), (&op_c, c.len())] {
        op.check(count, len)?;
    }
    if m * n == 0 {
        return Ok(());
    }
    let ((a_rs, a_cs), (b_rs, b_cs), (c_rs, c_cs)) =
        (op_a.strides(), op_b.strides(), op_c.strides());
    for i in 0..count {
        let c_i = &mut c[i * batch.stride_c as usize..];
        if k == 0 {
            // An empty sum: C = beta C.
            for j in 0..n {
                for r in 0..m {
                    c_i[r + j * op_c.ld] *= cfg.beta;
                }
            }
            continue;
        }
        let (a_i, b_i) = (
            &a[i * batch.stride_a as usize..],
            &b[i * batch.stride_b as usize..],
        );
        // SAFETY: `Operand::check` proved every element `gemm` reads (A, B) or writes (C) of
        // this batch entry lies inside `a_i`, `b_i`, `c_i`; `c` is borrowed mutably, so it
        // aliases neither input. (The `gemm` crate computes dst = alpha dst + beta lhs rhs:
        // its alpha is cuBLAS' beta and its beta cuBLAS' alpha.)
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c_i.as_mut_ptr(),
                c_cs,
                c_rs,
                cfg.beta != 0.0,
                a_i.as_ptr(),
                a_cs,
                a_rs,
                b_i.as_ptr(),
                b_cs,
                b_rs,
                cfg.beta,
                cfg.alpha,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }
    Ok(())
}
