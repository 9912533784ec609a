//! Launcher of `kernels/topk_mask.cu`: per row of `n` abnormality scores, 0/1 flags of the
//! `k` highest (ties to the lower index; NaN ranks last). One 256-thread block per row, the
//! row's `n` 64-bit sort keys in dynamic shared memory (`8 n` bytes, hence `n <= 6144`).

use cudarc::driver::LaunchConfig;

use super::CudaSlice;
use super::launch::KernelArg::{In, Out, Params};
use super::launch::launch;

use super::params::TopkMaskParams;
use super::{CudaDevice, CudaError, CudaResult, KernelModule, check_len, to_i32};

/// Largest row the kernel accepts (keys must fit 48 KiB of shared memory).
pub const TOPK_MAX_N: usize = 6144;

/// `k = round(ratio * n)` clamped to `0..=n` (half away from zero), the paper's `mN`.
pub fn topk_count(ratio: f64, n: usize) -> usize {
    let k = (ratio * n as f64).round();
    if k.is_nan() || k <= 0.0 {
        0
    } else {
        (k as usize).min(n)
    }
}

/// Flags `[rows, n]` (0/1) of the top `k` scores of each row of `scores` `[rows, n]`.
pub fn topk_mask(
    dev: &CudaDevice,
    scores: &CudaSlice<f32>,
    rows: usize,
    n: usize,
    k: usize,
) -> CudaResult<CudaSlice<u32>> {
    check_len("topk_mask", "scores", scores.len(), rows * n)?;
    if n > TOPK_MAX_N {
        return Err(CudaError::Invalid(format!(
            "topk_mask: n = {n} > {TOPK_MAX_N} (shared-memory key buffer)"
        )));
    }
    if k > n {
        return Err(CudaError::Invalid(format!("topk_mask: k = {k} > n = {n}")));
    }
    to_i32(rows * n, "topk_mask rows*n")?;
    let mut mask = dev.alloc_out::<u32>(rows * n)?;
    if rows == 0 || n == 0 {
        return Ok(mask);
    }
    let p = TopkMaskParams {
        rows: to_i32(rows, "rows")?,
        n: to_i32(n, "n")?,
        k: to_i32(k, "k")?,
    };
    let cfg = LaunchConfig {
        grid_dim: (
            u32::try_from(rows)
                .map_err(|_| CudaError::Invalid("topk_mask: too many rows".into()))?,
            1,
            1,
        ),
        block_dim: (256, 1, 1),
        shared_mem_bytes: (n * 8) as u32,
    };
    // SAFETY: `(const float* scores, int* mask, TopkMaskParams)`, both rows*n elements (u32
    // flags 0/1 read as int);
    // dynamic shared memory holds the n keys the kernel indexes.
    unsafe {
        launch(
            dev,
            KernelModule::TopkMask,
            "topk_mask_f32",
            cfg,
            &mut [In(scores), Out(&mut mask), Params(&p)],
        )
    }?;
    Ok(mask)
}
