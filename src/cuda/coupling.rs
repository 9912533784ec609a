//! Launchers of `kernels/coupling.cu`: the elementwise part of an affine coupling layer with
//! the soft clamp `s = (2 alpha / pi) atan(s_raw / alpha)`: `y2 = x2 exp(s) + t`,
//! `logdet = sum_c s`, and its backward. One warp per row, 8 rows per 256-thread block.

use cudarc::driver::LaunchConfig;

use super::CudaSlice;
use super::launch::KernelArg::{In, Out, Params};
use super::launch::launch;

use super::params::CouplingParams;
use super::{CudaDevice, CudaResult, KernelModule, check_len, to_i32, warp_per_row};

/// The release's clamp.
pub const DEFAULT_ALPHA: f32 = 1.9;

fn setup(
    op: &str,
    rows: usize,
    cols: usize,
    alpha: f32,
) -> CudaResult<(CouplingParams, LaunchConfig)> {
    if !(alpha > 0.0 && alpha.is_finite()) {
        return Err(super::CudaError::Invalid(format!(
            "{op}: alpha = {alpha} must be > 0"
        )));
    }
    to_i32(rows * cols, "coupling rows*cols")?;
    let p = CouplingParams {
        rows: to_i32(rows, "rows")?,
        cols: to_i32(cols, "cols")?,
        alpha,
    };
    Ok((p, warp_per_row(rows)?))
}

/// Forward: `(y2 [R,C], logdet [R])`.
pub fn coupling_fwd(
    dev: &CudaDevice,
    x2: &CudaSlice<f32>,
    s_raw: &CudaSlice<f32>,
    t: &CudaSlice<f32>,
    rows: usize,
    cols: usize,
    alpha: f32,
) -> CudaResult<(CudaSlice<f32>, CudaSlice<f32>)> {
    for (name, b) in [("x2", x2), ("s_raw", s_raw), ("t", t)] {
        check_len("coupling_fwd", name, b.len(), rows * cols)?;
    }
    let (p, cfg) = setup("coupling_fwd", rows, cols, alpha)?;
    let mut y2 = dev.alloc_out::<f32>(rows * cols)?;
    let mut logdet = dev.alloc_out::<f32>(rows)?;
    if rows == 0 {
        return Ok((y2, logdet));
    }
    // SAFETY: `(x2, s_raw, t, float* y2, float* logdet, CouplingParams)`; [R,C] buffers and
    // logdet [R] checked/allocated above; rows guarded in the kernel.
    unsafe {
        launch(
            dev,
            KernelModule::Coupling,
            "coupling_fwd_f32",
            cfg,
            &mut [
                In(x2),
                In(s_raw),
                In(t),
                Out(&mut y2),
                Out(&mut logdet),
                Params(&p),
            ],
        )
    }?;
    Ok((y2, logdet))
}

/// Backward: `(dx2, ds_raw, dt)`, all `[R,C]`, given `dy2 [R,C]` and `dlogdet [R]`.
#[allow(clippy::too_many_arguments)]
pub fn coupling_bwd(
    dev: &CudaDevice,
    x2: &CudaSlice<f32>,
    s_raw: &CudaSlice<f32>,
    dy2: &CudaSlice<f32>,
    dlogdet: &CudaSlice<f32>,
    rows: usize,
    cols: usize,
    alpha: f32,
) -> CudaResult<(CudaSlice<f32>, CudaSlice<f32>, CudaSlice<f32>)> {
    for (name, b) in [("x2", x2), ("s_raw", s_raw), ("dy2", dy2)] {
        check_len("coupling_bwd", name, b.len(), rows * cols)?;
    }
    check_len("coupling_bwd", "dlogdet", dlogdet.len(), rows)?;
    let (p, cfg) = setup("coupling_bwd", rows, cols, alpha)?;
    let mut dx2 = dev.alloc_out::<f32>(rows * cols)?;
    let mut ds_raw = dev.alloc_out::<f32>(rows * cols)?;
    let mut dt = dev.alloc_out::<f32>(rows * cols)?;
    if rows == 0 || cols == 0 {
        return Ok((dx2, ds_raw, dt));
    }
    // SAFETY: `(x2, s_raw, dy2, dlogdet, float* dx2, float* ds_raw, float* dt,
    // CouplingParams)`; lengths checked/allocated above.
    unsafe {
        launch(
            dev,
            KernelModule::Coupling,
            "coupling_bwd_f32",
            cfg,
            &mut [
                In(x2),
                In(s_raw),
                In(dy2),
                In(dlogdet),
                Out(&mut dx2),
                Out(&mut ds_raw),
                Out(&mut dt),
                Params(&p),
            ],
        )
    }?;
    Ok((dx2, ds_raw, dt))
}
