//! Launcher of `kernels/proto_nn.cu`: for each query row, the index and squared L2 distance of
//! the nearest prototype of an f32 bank: [`proto_nn`] on CUDA cores, [`proto_nn_tc`] with its
//! bulk on tensor cores (`--precision bf16`), the same result.
//!
//! Three launches on the stream: `proto_nn_init_u64` (fill packed keys with `u64::MAX`), the
//! search (`proto_nn_f32`: 128 queries x 128 prototypes per tile, 256 threads,
//! 8x8 register tile per thread, atomicMin of packed `(dist bits << 32) | idx` per query and
//! block), then `proto_nn_finalize_u64` (unpack). Grid: `x = ceil(Q/128)` query tiles,
//! `y` = bank chunks, chosen so that about 8 blocks per SM exist (2 fit per SM at 121
//! registers x 256 threads): a few thousand queries still fill the GPU, and each block scans
//! `tiles_per_block` consecutive tiles of 128 prototypes. Ties go to the lowest index, the
//! result does not depend on the launch order (integer min of unique keys).

use super::CudaSlice;
use super::launch::KernelArg::{In, Out, Params};
use super::launch::launch;

use super::glue::{f32_to_bf16, f32_to_bf16_range};
use super::linear::matmul_wt_bf16;
use super::params::{ProtoNnParams, ProtoNnTcParams};
use super::{
    CudaDevice, CudaError, CudaResult, KernelModule, block_per_item, blocks, check_len, grid_of,
    thread_per_item, to_i32,
};

/// Queries and prototypes per tile (`PNN_TQ`, `PNN_TP` in the kernel).
const TILE: usize = 128;

/// Nearest prototype of each query: `(idx [Q] u32, dist [Q] f32 squared L2)`.
/// `queries` is `[num_queries, dim]`, the bank `[num_protos, dim]`. With `num_protos == 0`
/// every index is `u32::MAX` and every distance NaN.
pub fn proto_nn(
    dev: &CudaDevice,
    queries: &CudaSlice<f32>,
    bank: &CudaSlice<f32>,
    num_queries: usize,
    num_protos: usize,
    dim: usize,
) -> CudaResult<(CudaSlice<u32>, CudaSlice<f32>)> {
    check_len("proto_nn", "queries", queries.len(), num_queries * dim)?;
    check_len("proto_nn", "bank", bank.len(), num_protos * dim)?;
    if dim == 0 && num_queries > 0 {
        return Err(CudaError::Invalid("proto_nn: dim must be >= 1".into()));
    }
    to_i32(num_queries * dim, "proto_nn Q*D")?;
    to_i32(num_protos * dim, "proto_nn P*D")?;
    if num_queries == 0 {
        return Ok((dev.alloc_out::<u32>(0)?, dev.alloc_out::<f32>(0)?));
    }

    let grid_x = blocks(num_queries, TILE)?;
    let p_tiles = num_protos.div_ceil(TILE).max(1);
    let target_blocks = 8 * dev.sm_count() as usize;
    let chunks = target_blocks
        .div_ceil(grid_x as usize)
        .clamp(1, p_tiles)
        .min(65535);
    let tiles_per_block = p_tiles.div_ceil(chunks);
    let chunks = p_tiles.div_ceil(tiles_per_block);
    let p = ProtoNnParams {
        num_queries: to_i32(num_queries, "num_queries")?,
        num_protos: to_i32(num_protos, "num_protos")?,
        dim: to_i32(dim, "dim")?,
        tiles_per_block: to_i32(tiles_per_block, "tiles_per_block")?,
    };

    let mut best = dev.alloc_out::<u64>(num_queries)?;
    let small = thread_per_item(num_queries)?;
    // SAFETY: `(unsigned long long* best, ProtoNnParams)`; best has num_queries elements and
    // the kernel writes indices < num_queries.
    unsafe {
        launch(
            dev,
            KernelModule::ProtoNn,
            "proto_nn_init_u64",
            small,
            &mut [Out(&mut best), Params(&p)],
        )
    }?;

    if num_protos > 0 {
        let cfg = grid_of(grid_x, chunks as u32);
        let args = &mut [In(queries), In(bank), Out(&mut best), Params(&p)];
        // SAFETY: `(const float* queries, const float* bank, unsigned long long* best,
        // ProtoNnParams)`; queries holds Q*D, bank P*D, best Q elements (checked); the kernel
        // bounds-checks rows and dims.
        unsafe { launch(dev, KernelModule::ProtoNn, "proto_nn_f32", cfg, args) }?;
    }

    finalize(dev, &best, &p)
}

/// Rows of the dot-product matrix one chunk of [`proto_nn_tc`] may hold: 2^26 f32 (256 MiB)
/// on a GPU; 2^15 on the emulated device, so that its tests run several chunks.
fn tc_chunk_floats(dev: &CudaDevice) -> usize {
    if dev.is_emulated() { 1 << 15 } else { 1 << 26 }
}

/// [`proto_nn`] over an f32 bank with the bulk of the work on tensor cores, and the same
/// result: per chunk of queries, the dot products of the bf16-rounded queries and bank as one
/// cuBLAS GEMM ([`super::linear::matmul_wt_bf16`]), then per query the 16 nearest by that
/// approximation re-ranked with proto_nn_f32's own f32 distance, and a certificate (an error
/// bound of the bf16 rounding, `kernels/proto_nn.cu`) that no other prototype can be nearer;
/// a query without one is scanned in f32. Indices and distances equal [`proto_nn`]'s
/// bit for bit. Also returns the device counter of the queries that needed the f32 scan.
pub fn proto_nn_tc(
    dev: &CudaDevice,
    queries: &CudaSlice<f32>,
    bank: &CudaSlice<f32>,
    num_queries: usize,
    num_protos: usize,
    dim: usize,
) -> CudaResult<(CudaSlice<u32>, CudaSlice<f32>, CudaSlice<i32>)> {
    check_len("proto_nn_tc", "queries", queries.len(), num_queries * dim)?;
    check_len("proto_nn_tc", "bank", bank.len(), num_protos * dim)?;
    let rescans = dev.zeros::<i32>(1)?;
    if num_protos == 0 || num_queries == 0 || dim == 0 {
        // Nothing to multiply: the f32 kernel's answer (and its errors).
        let (idx, dist) = proto_nn(dev, queries, bank, num_queries, num_protos, dim)?;
        return Ok((idx, dist, rescans));
    }
    let mut rescans = rescans;
    let tc = |rows: usize, q_offset: usize| -> CudaResult<ProtoNnTcParams> {
        Ok(ProtoNnTcParams {
            rows: to_i32(rows, "rows")?,
            num_protos: to_i32(num_protos, "num_protos")?,
            dim: to_i32(dim, "dim")?,
            q_offset: to_i32(q_offset, "q_offset")?,
        })
    };
    to_i32(num_queries * dim, "proto_nn_tc Q*D")?;
    to_i32(num_protos * dim, "proto_nn_tc P*D")?;
    // |p|^2 of the f32 bank, and the bank in bf16, once per call.
    let mut pnorm = dev.alloc_out::<f32>(num_protos)?;
    let sq = tc(num_protos, 0)?;
    // SAFETY: `(const float* x, float* y, ProtoNnTcParams)`: rows = P rows of D in the bank
    // (checked), y has P elements.
    unsafe {
        launch(
            dev,
            KernelModule::ProtoNn,
            "proto_nn_sqnorm_f32",
            thread_per_item(num_protos)?,
            &mut [In(bank), Out(&mut pnorm), Params(&sq)],
        )
    }?;
    let bank16 = f32_to_bf16(dev, bank)?;
    let mut best = dev.alloc_out::<u64>(num_queries)?;
    let chunk = (tc_chunk_floats(dev) / num_protos).clamp(1, num_queries.min(65535));
    for q0 in (0..num_queries).step_by(chunk) {
        let rows = chunk.min(num_queries - q0);
        let q16 = f32_to_bf16_range(dev, queries, q0 * dim, rows * dim)?;
        let dots = matmul_wt_bf16(dev, &q16, &bank16, rows, dim, num_protos)?;
        let p = tc(rows, q0)?;
        let cfg = block_per_item(rows)?;
        // SAFETY: `(const float* queries, const float* bank, const float* pnorm, const float*
        // dots, unsigned long long* best, int* rescans, ProtoNnTcParams)`: block r reads query
        // q0 + r < Q (D floats), the bank (P x D), pnorm (P), dots row r of rows x P, and
        // writes best[q0 + r] (Q elements) and the one counter.
        unsafe {
            launch(
                dev,
                KernelModule::ProtoNn,
                "proto_nn_rerank_f32",
                cfg,
                &mut [
                    In(queries),
                    In(bank),
                    In(&pnorm),
                    In(&dots),
                    Out(&mut best),
                    Out(&mut rescans),
                    Params(&p),
                ],
            )
        }?;
    }
    let fin = ProtoNnParams {
        num_queries: to_i32(num_queries, "num_queries")?,
        num_protos: to_i32(num_protos, "num_protos")?,
        dim: to_i32(dim, "dim")?,
        tiles_per_block: 1,
    };
    let (idx, dist) = finalize(dev, &best, &fin)?;
    Ok((idx, dist, rescans))
}

/// Unpacks the per-query keys `best` (`(dist bits << 32) | idx`, `u64::MAX` for none) into
/// `(idx, dist)`, `p.num_queries` of each.
fn finalize(
    dev: &CudaDevice,
    best: &CudaSlice<u64>,
    p: &ProtoNnParams,
) -> CudaResult<(CudaSlice<u32>, CudaSlice<f32>)> {
    let n = best.len();
    let mut idx = dev.alloc_out::<u32>(n)?;
    let mut dist = dev.alloc_out::<f32>(n)?;
    // SAFETY: `(const unsigned long long* best, unsigned* idx, float* dist, ProtoNnParams)`,
    // all three of num_queries = n elements.
    unsafe {
        launch(
            dev,
            KernelModule::ProtoNn,
            "proto_nn_finalize_u64",
            thread_per_item(n)?,
            &mut [In(best), Out(&mut idx), Out(&mut dist), Params(p)],
        )
    }?;
    Ok((idx, dist))
}
