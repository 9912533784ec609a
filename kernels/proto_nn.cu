// proto_nn.cu — batched nearest-prototype search.
//
// Math: for each query f_q (row of queries [Q, D]) and a prototype bank [P, D]
//   idx_q  = argmin_p ||f_q - b_p||^2    (ties: the lowest p)
//   dist_q = min_p    ||f_q - b_p||^2    (squared L2, f32)
// Distances use the difference form sum_d (f_qd - b_pd)^2, not |f|^2 + |b|^2 - 2 f.b: the
// residual f - n that ProtoFlow consumes is small, and the expanded form loses it to
// cancellation. The bank may be stored as f32, f16 or bf16 (raw u16 bits); compute is f32.
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

struct PnnF16 {
    __device__ __forceinline__ static float load(const unsigned short* b, size_t i) {
        return f16_bits_to_f32(b[i]);
    }
};
struct PnnBf16 {
    __device__ __forceinline__ static float load(const unsigned short* b, size_t i) {
        return bf16_bits_to_f32(b[i]);
    }
};
struct PnnF32 {
    __device__ __forceinline__ static float load(const float* b, size_t i) { return b[i]; }
};

__device__ __forceinline__ unsigned long long pnn_pack(float d, unsigned int i) {
    return ((unsigned long long)__float_as_uint(d) << 32) | (unsigned long long)i;
}

template <typename Load, typename T>
__device__ __forceinline__ void proto_nn_impl(const float* __restrict__ queries,
                                              const T* __restrict__ bank,
                                              unsigned long long* __restrict__ best,
                                              const ProtoNnParams p) {
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
                    if (p0 + r < P) bv = Load::load(bank, (size_t)(p0 + r) * D + d);
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

// grid (ceil(Q/128), ceil(ceil(P/128) / tiles_per_block)), block 256
extern "C" __global__ void __launch_bounds__(PNN_THREADS, 2)
    proto_nn_f32(const float* __restrict__ queries, const float* __restrict__ bank,
                 unsigned long long* __restrict__ best, const ProtoNnParams p) {
    proto_nn_impl<PnnF32>(queries, bank, best, p);
}

// bank holds IEEE binary16 bits
extern "C" __global__ void __launch_bounds__(PNN_THREADS, 2)
    proto_nn_f16(const float* __restrict__ queries, const unsigned short* __restrict__ bank,
                 unsigned long long* __restrict__ best, const ProtoNnParams p) {
    proto_nn_impl<PnnF16>(queries, bank, best, p);
}

// bank holds bfloat16 bits
extern "C" __global__ void __launch_bounds__(PNN_THREADS, 2)
    proto_nn_bf16(const float* __restrict__ queries, const unsigned short* __restrict__ bank,
                  unsigned long long* __restrict__ best, const ProtoNnParams p) {
    proto_nn_impl<PnnBf16>(queries, bank, best, p);
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
