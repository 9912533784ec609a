//! Launchers of `kernels/attention.cu` and `kernels/attention_tc.cu`: fused multi-head
//! attention forward (flash-style). Layout `[B, N, H*D]`, head `h` in columns `h*D..h*D+D`;
//! the f32 kernels also write the log-sum-exp per query row, `lse` `[B, H, N]`. See the .cu
//! files for the math. (The backward kernels were pruned: training runs on the CPU's autograd
//! tape.)
//!
//! Launch configuration (block 128 everywhere):
//! | kernel | D | rows per block | keys per tile | grid |
//! |---|---|---|---|---|
//! | `attention_fwd_d64_f32` | <= 64 | 64 queries | 32 | (ceil(N/64), H, B) |
//! | `attention_fwd_d128_f32` | <= 128 | 32 queries | 16 | (ceil(N/32), H, B) |
//! | `attention_fwd_tc_d64_bf16` (tensor cores, 8.0+) | <= 64 | 64 queries (16 per warp) | 64 | (ceil(N/64), H, B) |
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

    /// The parameter block for a call of `op` on `q`, `k`, `v`, after checking their lengths.
    fn checked_params(
        &self,
        op: &str,
        scale: Option<f32>,
        [q, k, v]: [&CudaSlice<f32>; 3],
    ) -> CudaResult<AttentionParams> {
        let p = self.params(scale)?;
        for (name, t) in [("q", q), ("k", k), ("v", v)] {
            check_len(op, name, t.len(), self.numel())?;
        }
        Ok(p)
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
    let p = dims.checked_params("attention_fwd", scale, [q, k, v])?;
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

/// The largest head dim the tensor-core forward takes (smaller ones are zero-padded to it).
pub const TC_MAX_HEAD_DIM: usize = 64;

/// Forward on tensor cores (`--precision bf16`): q, k, v and the softmax weights rounded to
/// bf16, products summed in f32; returns `o [B,N,H*D]` (no log-sum-exp). Head dim
/// <= [`TC_MAX_HEAD_DIM`]; needs compute capability 8.0+ (the module's load names it
/// otherwise). Error against the f32 forward: about 2^-8 of |v| (see `kernels/attention_tc.cu`).
pub fn attention_fwd_tc(
    dev: &CudaDevice,
    q: &CudaSlice<f32>,
    k: &CudaSlice<f32>,
    v: &CudaSlice<f32>,
    dims: AttentionDims,
    scale: Option<f32>,
) -> CudaResult<CudaSlice<f32>> {
    if dims.head_dim > TC_MAX_HEAD_DIM {
        return Err(CudaError::Invalid(format!(
            "attention_fwd_tc: head_dim {} > {TC_MAX_HEAD_DIM}",
            dims.head_dim
        )));
    }
    let p = dims.checked_params("attention_fwd_tc", scale, [q, k, v])?;
    let mut o = dev.alloc_out::<f32>(dims.numel())?;
    if dims.is_empty() {
        return Ok(o);
    }
    let cfg = dims.grid(64)?;
    let args = &mut [In(q), In(k), In(v), Out(&mut o), Params(&p)];
    // SAFETY: arguments match `(const float* q, k, v, float* o, AttentionParams)`; q/k/v/o
    // hold B*N*H*D elements (checked above) and D <= 64, which is all the kernel indexes for
    // this grid.
    unsafe {
        launch(
            dev,
            KernelModule::AttentionTc,
            "attention_fwd_tc_d64_bf16",
            cfg,
            args,
        )
    }?;
    Ok(o)
}
