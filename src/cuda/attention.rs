//! Launchers of `kernels/attention.cu`: fused multi-head attention forward (flash-style, with
//! log-sum-exp for the backward) and its three backward kernels. Layout `[B, N, H*D]`, head `h`
//! in columns `h*D..h*D+D`; `lse`/`delta` are `[B, H, N]`. See the .cu file for the math.
//!
//! Launch configuration (block 128 = 16 x 8 threads everywhere):
//! | kernel | D | rows per block | keys per tile | grid |
//! |---|---|---|---|---|
//! | `attention_fwd_d64_f32` | <= 64 | 64 queries | 32 | (ceil(N/64), H, B) |
//! | `attention_fwd_d128_f32` | <= 128 | 32 queries | 16 | (ceil(N/32), H, B) |
//! | `attention_bwd_dq_d64_f32` | <= 64 | 32 queries | 32 | (ceil(N/32), H, B) |
//! | `attention_bwd_dq_d128_f32` | <= 128 | 16 queries | 16 | (ceil(N/16), H, B) |
//! | `attention_bwd_dkdv_d64_f32` | <= 64 | 32 keys | 32 queries | (ceil(N/32), H, B) |
//! | `attention_bwd_dkdv_d128_f32` | <= 128 | 16 keys | 16 queries | (ceil(N/16), H, B) |
//! | `attention_bwd_delta_f32` | any | 8 (b,n,h) rows | - | ceil(B*N*H/8), block 256 |
//!
//! Tiles are sized so static shared memory stays under 48 KiB (no opt-in attribute needed) and
//! ptxas allocates <= 96 registers without spills; for N = 196 the d64 forward runs
//! 4 x H x B blocks.

use cudarc::driver::LaunchConfig;

use super::CudaSlice;
use super::launch::KernelArg::{In, Out, Params};
use super::launch::launch;

use super::params::AttentionParams;
use super::{CudaDevice, CudaError, CudaResult, KernelModule, blocks, check_len, to_i32};

/// Shape of an attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionDims {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
}

impl AttentionDims {
    /// Elements of one `[B, N, H*D]` tensor.
    pub fn numel(&self) -> usize {
        self.batch * self.seq * self.heads * self.head_dim
    }

    /// Elements of one `[B, H, N]` statistics tensor.
    pub fn stat_numel(&self) -> usize {
        self.batch * self.heads * self.seq
    }

    fn params(&self, scale: Option<f32>) -> CudaResult<AttentionParams> {
        if self.head_dim == 0 || self.head_dim > 128 {
            return Err(CudaError::Invalid(format!(
                "attention: head_dim {} not in 1..=128",
                self.head_dim
            )));
        }
        if self.heads > 65535 || self.batch > 65535 {
            return Err(CudaError::Invalid(format!(
                "attention: heads {} / batch {} exceed the grid limit 65535",
                self.heads, self.batch
            )));
        }
        to_i32(self.numel(), "attention B*N*H*D")?;
        Ok(AttentionParams {
            batch: to_i32(self.batch, "batch")?,
            seq: to_i32(self.seq, "seq")?,
            heads: to_i32(self.heads, "heads")?,
            head_dim: to_i32(self.head_dim, "head_dim")?,
            scale: scale.unwrap_or(1.0 / (self.head_dim as f32).sqrt()),
        })
    }

    fn is_empty(&self) -> bool {
        self.numel() == 0
    }

    fn grid(&self, rows_per_block: usize) -> CudaResult<LaunchConfig> {
        Ok(LaunchConfig {
            grid_dim: (
                blocks(self.seq, rows_per_block)?,
                self.heads as u32,
                self.batch as u32,
            ),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        })
    }
}

/// Forward: returns `(o [B,N,H*D], lse [B,H,N])`. `scale` defaults to `1/sqrt(D)`.
pub fn attention_fwd(
    dev: &CudaDevice,
    q: &CudaSlice<f32>,
    k: &CudaSlice<f32>,
    v: &CudaSlice<f32>,
    dims: AttentionDims,
    scale: Option<f32>,
) -> CudaResult<(CudaSlice<f32>, CudaSlice<f32>)> {
    let p = dims.params(scale)?;
    for (name, t) in [("q", q), ("k", k), ("v", v)] {
        check_len("attention_fwd", name, t.len(), dims.numel())?;
    }
    let mut o = dev.alloc_out::<f32>(dims.numel())?;
    let mut lse = dev.alloc_out::<f32>(dims.stat_numel())?;
    if dims.is_empty() {
        return Ok((o, lse));
    }
    let (name, rows) = if dims.head_dim <= 64 {
        ("attention_fwd_d64_f32", 64)
    } else {
        ("attention_fwd_d128_f32", 32)
    };
    let cfg = dims.grid(rows)?;
    let args = &mut [In(q), In(k), In(v), Out(&mut o), Out(&mut lse), Params(&p)];
    // SAFETY: arguments match `(const float* q, k, v, float* o, float* lse, AttentionParams)`;
    // q/k/v/o hold B*N*H*D and lse B*H*N elements (checked above), which is all the kernel
    // indexes for this grid.
    unsafe { launch(dev, KernelModule::Attention, name, cfg, args) }?;
    Ok((o, lse))
}

/// `delta [B,H,N] = rowsum(dO * O)` per head.
pub fn attention_bwd_delta(
    dev: &CudaDevice,
    o: &CudaSlice<f32>,
    dout: &CudaSlice<f32>,
    dims: AttentionDims,
) -> CudaResult<CudaSlice<f32>> {
    let p = dims.params(None)?;
    check_len("attention_bwd_delta", "o", o.len(), dims.numel())?;
    check_len("attention_bwd_delta", "dout", dout.len(), dims.numel())?;
    let mut delta = dev.alloc_out::<f32>(dims.stat_numel())?;
    if dims.is_empty() {
        return Ok(delta);
    }
    let cfg = LaunchConfig {
        grid_dim: (blocks(dims.stat_numel(), 8)?, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: signature `(const float* o, const float* dout, float* delta, AttentionParams)`;
    // lengths checked; one warp per (b, n, h) row, guarded by the row count.
    unsafe {
        launch(
            dev,
            KernelModule::Attention,
            "attention_bwd_delta_f32",
            cfg,
            &mut [In(o), In(dout), Out(&mut delta), Params(&p)],
        )
    }?;
    Ok(delta)
}

/// `dQ` from q, k, v, dO and the forward's lse plus [`attention_bwd_delta`].
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd_dq(
    dev: &CudaDevice,
    q: &CudaSlice<f32>,
    k: &CudaSlice<f32>,
    v: &CudaSlice<f32>,
    dout: &CudaSlice<f32>,
    lse: &CudaSlice<f32>,
    delta: &CudaSlice<f32>,
    dims: AttentionDims,
    scale: Option<f32>,
) -> CudaResult<CudaSlice<f32>> {
    let p = dims.params(scale)?;
    for (name, t) in [("q", q), ("k", k), ("v", v), ("dout", dout)] {
        check_len("attention_bwd_dq", name, t.len(), dims.numel())?;
    }
    check_len("attention_bwd_dq", "lse", lse.len(), dims.stat_numel())?;
    check_len("attention_bwd_dq", "delta", delta.len(), dims.stat_numel())?;
    let mut dq = dev.alloc_out::<f32>(dims.numel())?;
    if dims.is_empty() {
        return Ok(dq);
    }
    let (name, rows) = if dims.head_dim <= 64 {
        ("attention_bwd_dq_d64_f32", 32)
    } else {
        ("attention_bwd_dq_d128_f32", 16)
    };
    let cfg = dims.grid(rows)?;
    // SAFETY: signature `(q, k, v, dout, lse, delta, float* dq, AttentionParams)`; all lengths
    // checked against dims.
    unsafe {
        launch(
            dev,
            KernelModule::Attention,
            name,
            cfg,
            &mut [
                In(q),
                In(k),
                In(v),
                In(dout),
                In(lse),
                In(delta),
                Out(&mut dq),
                Params(&p),
            ],
        )
    }?;
    Ok(dq)
}

/// `(dK, dV)` from q, k, v, dO, lse and delta.
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd_dkdv(
    dev: &CudaDevice,
    q: &CudaSlice<f32>,
    k: &CudaSlice<f32>,
    v: &CudaSlice<f32>,
    dout: &CudaSlice<f32>,
    lse: &CudaSlice<f32>,
    delta: &CudaSlice<f32>,
    dims: AttentionDims,
    scale: Option<f32>,
) -> CudaResult<(CudaSlice<f32>, CudaSlice<f32>)> {
    let p = dims.params(scale)?;
    for (name, t) in [("q", q), ("k", k), ("v", v), ("dout", dout)] {
        check_len("attention_bwd_dkdv", name, t.len(), dims.numel())?;
    }
    check_len("attention_bwd_dkdv", "lse", lse.len(), dims.stat_numel())?;
    check_len(
        "attention_bwd_dkdv",
        "delta",
        delta.len(),
        dims.stat_numel(),
    )?;
    let mut dk = dev.alloc_out::<f32>(dims.numel())?;
    let mut dv = dev.alloc_out::<f32>(dims.numel())?;
    if dims.is_empty() {
        return Ok((dk, dv));
    }
    let (name, rows) = if dims.head_dim <= 64 {
        ("attention_bwd_dkdv_d64_f32", 32)
    } else {
        ("attention_bwd_dkdv_d128_f32", 16)
    };
    let cfg = dims.grid(rows)?;
    // SAFETY: signature `(q, k, v, dout, lse, delta, float* dk, float* dv, AttentionParams)`;
    // all lengths checked against dims.
    unsafe {
        launch(
            dev,
            KernelModule::Attention,
            name,
            cfg,
            &mut [
                In(q),
                In(k),
                In(v),
                In(dout),
                In(lse),
                In(delta),
                Out(&mut dk),
                Out(&mut dv),
                Params(&p),
            ],
        )
    }?;
    Ok((dk, dv))
}

/// Full backward: `(dQ, dK, dV)` given the forward's `o` and `lse` and the upstream `dout`.
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd(
    dev: &CudaDevice,
    q: &CudaSlice<f32>,
    k: &CudaSlice<f32>,
    v: &CudaSlice<f32>,
    o: &CudaSlice<f32>,
    dout: &CudaSlice<f32>,
    lse: &CudaSlice<f32>,
    dims: AttentionDims,
    scale: Option<f32>,
) -> CudaResult<(CudaSlice<f32>, CudaSlice<f32>, CudaSlice<f32>)> {
    let delta = attention_bwd_delta(dev, o, dout, dims)?;
    let dq = attention_bwd_dq(dev, q, k, v, dout, lse, &delta, dims, scale)?;
    let (dk, dv) = attention_bwd_dkdv(dev, q, k, v, dout, lse, &delta, dims, scale)?;
    Ok((dq, dk, dv))
}
