// attention_tc.cu — fused multi-head attention on tensor cores (bf16 operands, f32
// accumulation), flash-style, for head dim <= 64: what `--precision bf16` runs.
// pmad-arch: 80
//
// Same math as attention.cu's f32 forward (per batch b, head h; c = scale):
//   S_ij = c <q_i, k_j>,   O_i = sum_j softmax_j(S_i.) v_j
// with an online softmax over key tiles of 64 (running max m, sum l, unnormalised O; base-2
// exponentials). The two products run as mma.m16n8k16 (mma.cuh):
//   S = Q K^T:  A = Q (bf16, 16 queries x 16 dims per step), B = K^T (K rows are B's columns,
//               so K stays row-major in shared memory);
//   O += P V:   A = P (bf16), taken straight from S's accumulator registers (two adjacent
//               8-key C tiles are one 16-key A fragment, see mma.cuh), B = V (stored
//               transposed in shared memory, so the two keys a register holds are adjacent).
// Rounding: q, k, v and P are rounded to bf16 (relative error <= 2^-9 each); every product is
// exact and summed in f32; m, l, the rescaling and the final 1/l are f32. l sums the *rounded*
// P, so the weights that multiply V are exactly normalised.
//
// Layout: q, k, v, o are [B, N, H*D] row-major, head h in columns h*D .. h*D+D (as attention.cu).
// No log-sum-exp output (inference only).
//
// Block: 4 warps, 64 queries (16 per warp: one mma row tile), grid (ceil(N/64), H, B). Each
// lane holds rows g and g+8 of its warp's tile (g = lane/4), so a row's max and sum reduce
// over the 4 lanes of a group. Shared tiles are bf16 with rows padded to 72 elements (36
// words): the fragment reads (8 rows x 4 words) then hit 32 distinct banks.
#include "common.cuh"
#include "params.cuh"
#include "mma.cuh"

#define ATC_THREADS 128
#define ATC_BR 64   // queries per block
#define ATC_BC 64   // keys per tile
#define ATC_D 64    // head dim (smaller D is zero-padded)
#define ATC_LD 72   // shared row stride in bf16 elements

// Row-major [rows, 64] tile of one head as bf16, zero-filled past N rows and D columns.
// `transposed` stores element (r, d) at [d][r] instead (V).
__device__ __forceinline__ void atc_load_tile(unsigned short* __restrict__ dst,
                                              const float* __restrict__ src, size_t base,
                                              size_t row_stride, int r0, int N, int D,
                                              bool transposed) {
    for (int e = threadIdx.x; e < ATC_BC * ATC_D; e += ATC_THREADS) {
        const int r = e / ATC_D, d = e % ATC_D;
        float x = 0.0f;
        if (r0 + r < N && d < D) x = src[base + (size_t)(r0 + r) * row_stride + d];
        dst[transposed ? d * ATC_LD + r : r * ATC_LD + d] = f32_to_bf16_bits(x);
    }
}

// The 32-bit register holding elements [i][j] and [i][j+1] of a bf16 shared tile.
__device__ __forceinline__ unsigned int atc_pair(const unsigned short* t, int i, int j) {
    return *reinterpret_cast<const unsigned int*>(t + i * ATC_LD + j);
}

// grid (ceil(N/64), H, B), block 128
extern "C" __global__ void __launch_bounds__(ATC_THREADS)
    attention_fwd_tc_d64_bf16(const float* __restrict__ q, const float* __restrict__ k,
                              const float* __restrict__ v, float* __restrict__ o,
                              const AttentionParams p) {
    __shared__ __align__(16) unsigned short Qs[ATC_BR * ATC_LD];
    __shared__ __align__(16) unsigned short Ks[ATC_BC * ATC_LD];
    __shared__ __align__(16) unsigned short Vt[ATC_D * ATC_LD];

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane / 4, t = lane % 4;
    const int q0 = blockIdx.x * ATC_BR, h = blockIdx.y, b = blockIdx.z;
    const int N = p.seq, D = p.head_dim;
    const size_t row_stride = (size_t)p.heads * D;
    const size_t base = (size_t)b * N * row_stride + (size_t)h * D;
    const float sl2 = p.scale * PMAD_LOG2E;

    // Q fragments for this warp's 16 rows, all four 16-dim steps, kept in registers.
    atc_load_tile(Qs, q, base, row_stride, q0, N, D, false);
    __syncthreads();
    unsigned int qa[4][4];
    const int r0 = warp * 16 + g;
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
        qa[kk][0] = atc_pair(Qs, r0, kk * 16 + 2 * t);
        qa[kk][1] = atc_pair(Qs, r0 + 8, kk * 16 + 2 * t);
        qa[kk][2] = atc_pair(Qs, r0, kk * 16 + 2 * t + 8);
        qa[kk][3] = atc_pair(Qs, r0 + 8, kk * 16 + 2 * t + 8);
    }

    // Rows g (index 0) and g+8 (index 1) of the warp's tile: running max, sum, output.
    float m[2] = {neg_inf(), neg_inf()}, l[2] = {0.0f, 0.0f};
    float acc[8][4];  // [8-dim tile][C register]
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[nt][i] = 0.0f;

    for (int k0 = 0; k0 < N; k0 += ATC_BC) {
        __syncthreads();  // the previous tile's Ks/Vt reads are done
        atc_load_tile(Ks, k, base, row_stride, k0, N, D, false);
        atc_load_tile(Vt, v, base, row_stride, k0, N, D, true);
        __syncthreads();

        // S = Q K^T for 16 rows x 64 keys: 8 key tiles of 8, 4 dim steps of 16.
        float s[8][4];
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
            for (int i = 0; i < 4; ++i) s[nt][i] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < 4; ++kk) {
                const unsigned int kb[2] = {atc_pair(Ks, nt * 8 + g, kk * 16 + 2 * t),
                                            atc_pair(Ks, nt * 8 + g, kk * 16 + 2 * t + 8)};
                mma_bf16_16816(s[nt], qa[kk], kb);
            }
        }

        // Online softmax (base 2); keys past N get -inf, i.e. weight 0. Each tile holds at
        // least one valid key, so the new max is finite and exp2(m - m_new) is 0 at first.
        float mx[2] = {neg_inf(), neg_inf()};
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const bool valid = k0 + nt * 8 + 2 * t + (i & 1) < N;
                s[nt][i] = valid ? s[nt][i] * sl2 : neg_inf();
                mx[i >> 1] = fmaxf(mx[i >> 1], s[nt][i]);
            }
        float corr[2], rs[2] = {0.0f, 0.0f};
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const float m_new = fmaxf(m[r], group_max<4>(mx[r]));
            corr[r] = exp2f(m[r] - m_new);
            m[r] = m_new;
        }
        // P = exp2(S - m) rounded to bf16, packed straight into the A fragments of the P V
        // product: key step kk takes 8-key tiles 2kk (registers 0, 1) and 2kk+1 (2, 3).
        unsigned int pa[4][4];
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const unsigned short lo = f32_to_bf16_bits(exp2f(s[nt][2 * r] - m[r]));
                const unsigned short hi = f32_to_bf16_bits(exp2f(s[nt][2 * r + 1] - m[r]));
                rs[r] += bf16_bits_to_f32(lo) + bf16_bits_to_f32(hi);
                pa[nt / 2][2 * (nt % 2) + r] = pack_bf16x2(lo, hi);
            }
#pragma unroll
        for (int r = 0; r < 2; ++r) l[r] = l[r] * corr[r] + group_sum<4>(rs[r]);
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[nt][i] *= corr[i >> 1];

        // O += P V: 4 key steps of 16, 8 dim tiles of 8.
#pragma unroll
        for (int kk = 0; kk < 4; ++kk)
#pragma unroll
            for (int nt = 0; nt < 8; ++nt) {
                const unsigned int vb[2] = {atc_pair(Vt, nt * 8 + g, kk * 16 + 2 * t),
                                            atc_pair(Vt, nt * 8 + g, kk * 16 + 2 * t + 8)};
                mma_bf16_16816(acc[nt], pa[kk], vb);
            }
    }

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = q0 + r0 + 8 * r;
        if (row >= N) continue;
        const float inv = 1.0f / l[r];
        float* orow = o + base + (size_t)row * row_stride;
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
            for (int c = 0; c < 2; ++c) {
                const int col = nt * 8 + 2 * t + c;
                if (col < D) orow[col] = acc[nt][2 * r + c] * inv;
            }
    }
}
