// proto_nn.cu — batched nearest-prototype search.
//
// Math: for each query f_q (row of queries [Q, D]) and a prototype bank [P, D]
//   idx_q  = argmin_p ||f_q - b_p||^2    (ties: the lowest p)
//   dist_q = min_p    ||f_q - b_p||^2    (squared L2, f32)
// Distances use the difference form sum_d (f_qd - b_pd)^2, not |f|^2 + |b|^2 - 2 f.b: the
// residual f - n that ProtoFlow consumes is small, and the expanded form loses it to
// cancellation. (--precision bf16 searches with proto_nn_tc, at the end of this file: tensor
// cores for the bulk, the same result.)
//
// Tiling: a block owns PNN_TQ=128 queries and scans `tiles_per_block` tiles of PNN_TP=128
// prototypes (grid.y splits the bank so that all SMs are busy even for a few thousand
// queries). Per tile, D is walked in chunks of PNN_KD=16 through shared memory (stored
// transposed [KD][128+4], so each thread reads its 8 queries / 8 prototypes as two float4),
// and each of the 256 threads (16 x 16) accumulates an 8x8 register tile of distances.
// Thread (ty, tx) owns queries {4ty..4ty+3, 64+4ty..64+4ty+3} and prototypes
// {4tx..4tx+3, 64+4tx..64+4tx+3}: the float4 reads of 16 lanes cover 64 consecutive floats,
// so they are bank-conflict free.
//
// Fused argmin across tiles and blocks: after each prototype tile, every thread takes, per
// query, its best of its 8 columns (strict <, increasing index), the 16 lanes sharing the
// query take the min packed key = (float bits of dist) << 32 | idx with shuffles, and the
// owner lane folds it into a per-block shared array (each query row has exactly one owner
// group, so no atomics there). At the end the block does one global atomicMin per query.
// (Keeping the running best in shared memory rather than registers is what lets the 8x8
// tile fit 128 registers, i.e. two blocks per SM, without spills.)
// Why atomics on packed keys rather than per-block partials + a second reduction kernel:
//   * the result is exact and order independent (integer min is associative and commutative),
//     so it is deterministic despite the atomics, and ties go to the lowest index exactly like
//     a sequential CPU argmin;
//   * dist >= 0, and non-negative IEEE floats order like their bit patterns as unsigned ints;
//     a NaN distance (bits 0x7fc00000..) loses to every number and to +inf;
//   * no partial buffer sized by the grid; contention is one atomic per query per block.
// Cost: an init kernel (fill with ~0) before and a finalize kernel (unpack) after. A query
// with no finite candidate finalizes to idx 0xFFFFFFFF and dist NaN.
#include "common.cuh"
#include "params.cuh"

#define PNN_THREADS 256
#define PNN_TQ 128
#define PNN_TP 128
#define PNN_KD 16
#define PNN_STRIDE (PNN_TQ + 4)

__device__ __forceinline__ unsigned long long pnn_pack(float d, unsigned int i) {
    return ((unsigned long long)__float_as_uint(d) << 32) | (unsigned long long)i;
}

// grid (ceil(Q/128), ceil(ceil(P/128) / tiles_per_block)), block 256
extern "C" __global__ void __launch_bounds__(PNN_THREADS, 2)
    proto_nn_f32(const float* __restrict__ queries, const float* __restrict__ bank,
                 unsigned long long* __restrict__ best, const ProtoNnParams p) {
    __shared__ __align__(16) float Qs[PNN_KD * PNN_STRIDE];
    __shared__ __align__(16) float Bs[PNN_KD * PNN_STRIDE];

    const int tid = threadIdx.x;
    const int tx = tid % 16, ty = tid / 16;
    const int q0 = blockIdx.x * PNN_TQ;
    const int Q = p.num_queries, P = p.num_protos, D = p.dim;

    // running best packed key per query of this block, updated once per prototype tile
    __shared__ unsigned long long best_s[PNN_TQ];
    for (int r = tid; r < PNN_TQ; r += PNN_THREADS) best_s[r] = ~0ull;
    __syncthreads();

    for (int t = 0; t < p.tiles_per_block; ++t) {
        const int p0 = (blockIdx.y * p.tiles_per_block + t) * PNN_TP;
        if (p0 >= P) break;  // uniform across the block

        float acc[8][8];
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
            for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;

        for (int k0 = 0; k0 < D; k0 += PNN_KD) {
            __syncthreads();  // previous chunk fully consumed
            // 128 rows x 16 dims of each operand; 8 elements per thread each
#pragma unroll
            for (int e = tid; e < PNN_TQ * PNN_KD; e += PNN_THREADS) {
                const int r = e / PNN_KD, kk = e % PNN_KD;
                const int d = k0 + kk;
                float qv = 0.0f, bv = 0.0f;
                if (d < D) {
                    if (q0 + r < Q) qv = queries[(size_t)(q0 + r) * D + d];
                    if (p0 + r < P) bv = bank[(size_t)(p0 + r) * D + d];
                }
                Qs[kk * PNN_STRIDE + r] = qv;
                Bs[kk * PNN_STRIDE + r] = bv;
            }
            __syncthreads();
#pragma unroll
            for (int kk = 0; kk < PNN_KD; ++kk) {
                const float4 qa = *reinterpret_cast<const float4*>(&Qs[kk * PNN_STRIDE + 4 * ty]);
                const float4 qb =
                    *reinterpret_cast<const float4*>(&Qs[kk * PNN_STRIDE + 64 + 4 * ty]);
                const float4 ba = *reinterpret_cast<const float4*>(&Bs[kk * PNN_STRIDE + 4 * tx]);
                const float4 bb =
                    *reinterpret_cast<const float4*>(&Bs[kk * PNN_STRIDE + 64 + 4 * tx]);
                const float a[8] = {qa.x, qa.y, qa.z, qa.w, qb.x, qb.y, qb.z, qb.w};
                const float b[8] = {ba.x, ba.y, ba.z, ba.w, bb.x, bb.y, bb.z, bb.w};
#pragma unroll
                for (int i = 0; i < 8; ++i)
#pragma unroll
                    for (int j = 0; j < 8; ++j) {
                        const float diff = a[i] - b[j];
                        acc[i][j] = fmaf(diff, diff, acc[i][j]);
                    }
            }
        }

        // fold this tile into the block's running best: per query, the thread's best of its 8
        // columns (increasing index, strict <), then the min packed key over the 16 lanes
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            float bd = pos_inf();
            unsigned int bi = 0xffffffffu;
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const int col = p0 + (j < 4 ? 4 * tx + j : 64 + 4 * tx + (j - 4));
                if (col < P && acc[i][j] < bd) {
                    bd = acc[i][j];
                    bi = (unsigned int)col;
                }
            }
            unsigned long long key = bi == 0xffffffffu ? ~0ull : pnn_pack(bd, bi);
#pragma unroll
            for (int o = 8; o > 0; o >>= 1) {
                const unsigned long long other = __shfl_xor_sync(PMAD_FULL_MASK, key, o);
                key = other < key ? other : key;
            }
            const int r = i < 4 ? 4 * ty + i : 64 + 4 * ty + (i - 4);
            if (tx == 0 && key < best_s[r]) best_s[r] = key;  // row r has a single owner group
        }
    }

    // one atomic per query and block
    __syncthreads();
    for (int r = tid; r < PNN_TQ; r += PNN_THREADS)
        if (q0 + r < Q && best_s[r] != ~0ull) atomicMin(&best[q0 + r], best_s[r]);
}

// best[q] = ~0 (the identity of min). grid ceil(Q/256), block 256
extern "C" __global__ void proto_nn_init_u64(unsigned long long* __restrict__ best,
                                             const ProtoNnParams p) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < p.num_queries) best[i] = ~0ull;
}

// Unpack: idx = low 32 bits, dist = high 32 bits as f32. grid ceil(Q/256), block 256
extern "C" __global__ void proto_nn_finalize_u64(const unsigned long long* __restrict__ best,
                                             unsigned int* __restrict__ idx,
                                             float* __restrict__ dist, const ProtoNnParams p) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= p.num_queries) return;
    const unsigned long long key = best[i];
    idx[i] = (unsigned int)(key & 0xffffffffull);
    dist[i] = __uint_as_float((unsigned int)(key >> 32));
}

// ------------------------------------------------ the bf16 tensor-core search (exact, re-ranked)
// --precision bf16 (src/cuda/proto_nn.rs `proto_nn_tc`): the host computes, per chunk of
// queries, the dot products s = q~ . p~ of the bf16-rounded queries and bank as one cuBLAS
// GEMM on tensor cores (f32 sums), and |p|^2 of the f32 bank (proto_nn_sqnorm_f32). Then one
// block per query (proto_nn_rerank_f32):
//   1. approximate distances v(p) = |p|^2 - 2 s(p) (|q|^2 is the same for every p of the row);
//      the PNN_K + 1 smallest, as keys (order-preserving bits of v) << 32 | p (ties: lowest p);
//   2. the PNN_K best re-ranked with the exact f32 distance, computed exactly as proto_nn_f32
//      does (sum over d in order of fmaf(q_d - p_d, q_d - p_d, acc)), so the chosen (dist, idx)
//      is the f32 kernel's whenever the true nearest is among them;
//   3. a certificate that it is: bf16 rounds each operand with relative error <= 2^-9, so
//      |s~ - s| <= (2^-8 + 2^-18) sum_d |q_d p_d| <= 2^-8 (1 + 2^-10) |q| |p| and the
//      approximate distance |q|^2 + v is within eps = 2^-7 * 1.03 |q| max|p| (+ the f32
//      rounding of the norms) of the true one. Every prototype outside the candidates has
//      |q|^2 + v >= |q|^2 + v_K (v_K: the (K+1)-th smallest), so its true distance is at least
//      |q|^2 + v_K - eps and its f32 distance at least that times (1 - (D + 8) 2^-22). If that
//      exceeds the best candidate's f32 distance, no prototype outside can win: certified.
//   4. otherwise (or on any NaN / infinity) the block scans the whole bank in f32 exactly like
//      proto_nn_f32 and counts the row in `rescans`. Either way best[q] is what proto_nn_f32
//      would have produced (distances bit-identical), so the result is exact.
#define PNN_K 16

// Order-preserving u32 image of a float (negatives below positives); NaN never reaches it.
__device__ __forceinline__ unsigned int pnn_ordered(float v) {
    const unsigned int u = __float_as_uint(v);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float pnn_unordered(unsigned int k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// proto_nn_f32's distance of query q to prototype row b: the same fmaf chain, d in order.
__device__ __forceinline__ float pnn_dist(const float* __restrict__ q, const float* __restrict__ b,
                                         int D) {
    float acc = 0.0f;
    for (int d = 0; d < D; ++d) {
        const float diff = q[d] - b[d];
        acc = fmaf(diff, diff, acc);
    }
    return acc;
}

__device__ __forceinline__ unsigned long long pnn_warp_min(unsigned long long k) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const unsigned long long other = __shfl_xor_sync(PMAD_FULL_MASK, k, o);
        k = other < k ? other : k;
    }
    return k;
}

// Block-wide min of a u64 (blockDim 256). Contains __syncthreads(): call from all threads.
__device__ __forceinline__ unsigned long long pnn_block_min(unsigned long long k,
                                                            unsigned long long* red) {
    k = pnn_warp_min(k);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = k;
    __syncthreads();
    k = (threadIdx.x & 31) < PNN_THREADS / 32 ? red[threadIdx.x & 31] : ~0ull;
    return pnn_warp_min(k);
}

// y[i] = sum_d x[i, d]^2 over `rows` rows. grid ceil(rows/256), block 256
extern "C" __global__ void __launch_bounds__(PNN_THREADS)
    proto_nn_sqnorm_f32(const float* __restrict__ x, float* __restrict__ y,
                        const ProtoNnTcParams p) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= p.rows) return;
    const float* r = x + (size_t)i * p.dim;
    float acc = 0.0f;
    for (int d = 0; d < p.dim; ++d) acc = fmaf(r[d], r[d], acc);
    y[i] = acc;
}

// grid p.rows (one block per query of the chunk), block 256. dots: [rows, P] (chunk-local),
// queries: all [Q, D] (row q_offset + blockIdx.x), best: all [Q], rescans: one counter.
extern "C" __global__ void __launch_bounds__(PNN_THREADS)
    proto_nn_rerank_f32(const float* __restrict__ queries, const float* __restrict__ bank,
                        const float* __restrict__ pnorm, const float* __restrict__ dots,
                        unsigned long long* __restrict__ best, int* __restrict__ rescans,
                        const ProtoNnTcParams p) {
    __shared__ unsigned long long lists[PNN_THREADS * PNN_K];  // each thread's K best, sorted
    __shared__ unsigned long long red[PNN_THREADS / 32];
    __shared__ unsigned long long cand[PNN_K + 1];
    __shared__ float fred[32];
    __shared__ int bad_s;
    const int tid = threadIdx.x;
    const int P = p.num_protos, D = p.dim;
    const size_t g = (size_t)p.q_offset + blockIdx.x;
    const float* q = queries + g * D;
    const float* s = dots + (size_t)blockIdx.x * P;
    unsigned long long* mine = lists + tid * PNN_K;

    // 1. each thread's PNN_K smallest approximate distances (insertion into a sorted list)
    for (int j = 0; j < PNN_K; ++j) mine[j] = ~0ull;
    if (tid == 0) bad_s = 0;
    __syncthreads();  // before any thread can set it
    float pmax = 0.0f;
    int bad = 0;
    for (int i = tid; i < P; i += PNN_THREADS) {
        const float pn = pnorm[i];
        const float v = pn - 2.0f * s[i];
        if (!(fabsf(v) <= 3.0e38f) || !(pn <= 3.0e38f)) {  // NaN or (near) infinity
            bad = 1;
            continue;
        }
        pmax = fmaxf(pmax, pn);
        const unsigned long long key = ((unsigned long long)pnn_ordered(v) << 32) | (unsigned)i;
        if (key < mine[PNN_K - 1]) {
            int j = PNN_K - 1;
            while (j > 0 && mine[j - 1] > key) {
                mine[j] = mine[j - 1];
                --j;
            }
            mine[j] = key;
        }
    }
    float qq = 0.0f;
    for (int d = tid; d < D; d += PNN_THREADS) qq = fmaf(q[d], q[d], qq);
    if (bad) bad_s = 1;  // every writer writes 1
    const float qn = block_sum(qq, fred);
    pmax = block_max(pmax, fred);

    // 2. the block's PNN_K + 1 smallest: K + 1 rounds of a block min over the lists' heads
    int head = 0;
    for (int round = 0; round <= PNN_K; ++round) {
        const unsigned long long mine_head = head < PNN_K ? mine[head] : ~0ull;
        const unsigned long long m = pnn_block_min(mine_head, red);
        if (tid == 0) cand[round] = m;
        if (m != ~0ull && mine_head == m) ++head;  // keys are unique (they hold the index)
    }
    __syncthreads();

    // 3. exact f32 distances of the K candidates (thread t: candidate t), the best key
    unsigned long long ek = ~0ull;
    if (tid < PNN_K && cand[tid] != ~0ull) {
        const unsigned int i = (unsigned int)(cand[tid] & 0xffffffffull);
        const float dist = pnn_dist(q, bank + (size_t)i * D, D);
        if (dist < pos_inf()) ek = pnn_pack(dist, i);  // as proto_nn_f32: NaN / inf never win
    }
    const unsigned long long best_key = pnn_block_min(ek, red);
    int certified = !bad_s && best_key != ~0ull;
    if (certified && cand[PNN_K] != ~0ull) {
        // a prototype outside the candidates exists: the bound of step 3 above
        const float vk = pnn_unordered((unsigned int)(cand[PNN_K] >> 32));
        const float eps = 1.03f * 0.0078125f * sqrtf(qn) * sqrtf(pmax) +
                          (float)(D + 8) * 2.384185791015625e-7f * (qn + pmax);
        const float shrink = 1.0f - (float)(D + 8) * 2.384185791015625e-7f;
        const float best_dist = __uint_as_float((unsigned int)(best_key >> 32));
        certified = (qn + vk - eps) * shrink > best_dist;
    }
    if (certified) {
        if (tid == 0) best[g] = best_key;
        return;  // block-uniform
    }

    // 4. no certificate: the f32 scan (each thread its prototypes in increasing order, strict <)
    float bd = pos_inf();
    unsigned int bi = 0xffffffffu;
    for (int i = tid; i < P; i += PNN_THREADS) {
        const float dist = pnn_dist(q, bank + (size_t)i * D, D);
        if (dist < bd) {
            bd = dist;
            bi = (unsigned int)i;
        }
    }
    const unsigned long long k = pnn_block_min(bi == 0xffffffffu ? ~0ull : pnn_pack(bd, bi), red);
    if (tid == 0) {
        best[g] = k;
        atomicAdd(rescans, 1);
    }
}
