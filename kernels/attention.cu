// attention.cu — fused multi-head attention, flash-style (inference forward).
//
// Math (per batch b, head h; rows i index queries, j keys; D = head_dim, c = scale = 1/sqrt(D)):
//   S_ij = c * <q_i, k_j>,   P_ij = exp(S_ij - L_i),   L_i = log sum_j exp(S_ij)  (logsumexp)
//   O_i  = sum_j P_ij v_j
// Forward never materialises S or P in global memory: keys are visited in tiles of BC, and each
// query row keeps a running max m, running sum l and an unnormalised accumulator acc
// (online softmax):  m' = max(m, max_j S_ij);  l' = l e^(m-m') + sum_j e^(S_ij-m');
// acc' = acc e^(m-m') + sum_j e^(S_ij-m') v_j;  at the end O_i = acc/l, L_i = m + log l.
// Exponentials run in base 2 (S is pre-multiplied by log2 e); L is stored in natural log.
//
// L is written too (per query row; what a backward pass would need: training runs on the
// CPU's autograd tape, so the backward kernels were pruned).
//
// Layout: q, k, v, o are [B, N, H*D] row-major; head h owns columns h*D .. h*D+D of each row.
// lse is [B, H, N].
//
// Thread mapping: 128 threads = 16 (ty) x 8 (tx); tx is the fast index, so the 8
// threads sharing a row group are 8 consecutive lanes of one warp and reduce with shuffles.
// Thread (ty, tx) owns rows ty*TM .. ty*TM+TM-1 of the tile, score columns tx + 8*j and output
// columns tx + 8*j (interleaved, so shared-memory reads across tx hit distinct banks; row
// strides are padded by one float for the same reason). Variants: *_d64 for D <= 64 and
// *_d128 for D <= 128 (padding columns are zero-filled); tile sizes keep static shared memory
// under 48 KiB and the register tiles small enough that ptxas reports no spills.
#include "common.cuh"
#include "params.cuh"

#define ATT_THREADS 128
#define ATT_TX 8
#define ATT_TY 16

struct AttPtrs {
    size_t row_stride;  // H*D
    size_t base;        // offset of (b, token 0, head h)
};

__device__ __forceinline__ AttPtrs att_ptrs(const AttentionParams& p, int b, int h) {
    AttPtrs r;
    r.row_stride = (size_t)p.heads * p.head_dim;
    r.base = (size_t)b * p.seq * r.row_stride + (size_t)h * p.head_dim;
    return r;
}

// Copy rows [r0, r0+ROWS) x columns [0, DMAX) of one head into a padded shared tile,
// zero-filling rows >= N and columns >= D.
template <int ROWS, int DMAX, int STRIDE>
__device__ __forceinline__ void att_load_tile(float* __restrict__ dst, const float* __restrict__ src,
                                              const AttPtrs& ap, int r0, int N, int D) {
    for (int e = threadIdx.x; e < ROWS * DMAX; e += ATT_THREADS) {
        const int r = e / DMAX, d = e % DMAX;
        float v = 0.0f;
        if (r0 + r < N && d < D) v = src[ap.base + (size_t)(r0 + r) * ap.row_stride + d];
        dst[r * STRIDE + d] = v;
    }
}

// ============================================ forward ==========================================

template <int DMAX, int BR, int BC>
__device__ __forceinline__ void attention_fwd_impl(const float* __restrict__ q,
                                                   const float* __restrict__ k,
                                                   const float* __restrict__ v,
                                                   float* __restrict__ o, float* __restrict__ lse,
                                                   const AttentionParams p) {
    constexpr int TM = BR / ATT_TY;
    constexpr int TN = BC / ATT_TX;
    constexpr int TD = DMAX / ATT_TX;
    constexpr int DP = DMAX + 1;
    constexpr int PP = BC + 1;
    __shared__ float Qs[BR * DP];
    __shared__ float Ks[BC * DP];
    __shared__ float Vs[BC * DMAX];
    __shared__ float Ps[BR * PP];

    const int tx = threadIdx.x % ATT_TX, ty = threadIdx.x / ATT_TX;
    const int q0 = blockIdx.x * BR, h = blockIdx.y, b = blockIdx.z;
    const int N = p.seq, D = p.head_dim;
    const AttPtrs ap = att_ptrs(p, b, h);
    const float sl2 = p.scale * PMAD_LOG2E;

    att_load_tile<BR, DMAX, DP>(Qs, q, ap, q0, N, D);

    float m[TM], l[TM], acc[TM][TD];
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        m[i] = neg_inf();
        l[i] = 0.0f;
#pragma unroll
        for (int jd = 0; jd < TD; ++jd) acc[i][jd] = 0.0f;
    }

    for (int k0 = 0; k0 < N; k0 += BC) {
        __syncthreads();  // Qs ready (first pass); previous Ks/Vs/Ps reads finished
        for (int e = threadIdx.x; e < BC * DMAX; e += ATT_THREADS) {
            const int r = e / DMAX, d = e % DMAX;
            float kv = 0.0f, vv = 0.0f;
            if (k0 + r < N && d < D) {
                const size_t off = ap.base + (size_t)(k0 + r) * ap.row_stride + d;
                kv = k[off];
                vv = v[off];
            }
            Ks[r * DP + d] = kv;
            Vs[r * DMAX + d] = vv;
        }
        __syncthreads();

        float s[TM][TN];
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
            for (int j = 0; j < TN; ++j) s[i][j] = 0.0f;
#pragma unroll 4
        for (int d = 0; d < D; ++d) {
            float a[TM], bk[TN];
#pragma unroll
            for (int i = 0; i < TM; ++i) a[i] = Qs[(ty * TM + i) * DP + d];
#pragma unroll
            for (int j = 0; j < TN; ++j) bk[j] = Ks[(tx + ATT_TX * j) * DP + d];
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) s[i][j] = fmaf(a[i], bk[j], s[i][j]);
        }

        // online softmax update, one row group (8 lanes) per row
#pragma unroll
        for (int i = 0; i < TM; ++i) {
            float mx = neg_inf();
#pragma unroll
            for (int j = 0; j < TN; ++j) {
                const bool valid = k0 + tx + ATT_TX * j < N;
                s[i][j] = valid ? s[i][j] * sl2 : neg_inf();
                mx = fmaxf(mx, s[i][j]);
            }
            mx = group_max<ATT_TX>(mx);
            const float m_new = fmaxf(m[i], mx);  // finite: every tile holds >= 1 valid key
            const float corr = exp2f(m[i] - m_new);
            float rs = 0.0f;
#pragma unroll
            for (int j = 0; j < TN; ++j) {
                const float pj = exp2f(s[i][j] - m_new);
                rs += pj;
                Ps[(ty * TM + i) * PP + tx + ATT_TX * j] = pj;
            }
            rs = group_sum<ATT_TX>(rs);
            l[i] = l[i] * corr + rs;
            m[i] = m_new;
#pragma unroll
            for (int jd = 0; jd < TD; ++jd) acc[i][jd] *= corr;
        }
        __syncwarp();  // Ps rows are written and read by the same 8-lane group

#pragma unroll 4
        for (int c = 0; c < BC; ++c) {
            float pv[TM];
#pragma unroll
            for (int i = 0; i < TM; ++i) pv[i] = Ps[(ty * TM + i) * PP + c];
#pragma unroll
            for (int jd = 0; jd < TD; ++jd) {
                const float vv = Vs[c * DMAX + tx + ATT_TX * jd];
#pragma unroll
                for (int i = 0; i < TM; ++i) acc[i][jd] = fmaf(pv[i], vv, acc[i][jd]);
            }
        }
    }

#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int row = q0 + ty * TM + i;
        if (row >= N) continue;
        const float inv = 1.0f / l[i];
        float* orow = o + ap.base + (size_t)row * ap.row_stride;
#pragma unroll
        for (int jd = 0; jd < TD; ++jd) {
            const int col = tx + ATT_TX * jd;
            if (col < D) orow[col] = acc[i][jd] * inv;
        }
        if (tx == 0) lse[((size_t)b * p.heads + h) * N + row] = (m[i] + log2f(l[i])) * PMAD_LN2;
    }
}

// grid (ceil(N/64), H, B), block 128
extern "C" __global__ void __launch_bounds__(ATT_THREADS)
    attention_fwd_d64_f32(const float* __restrict__ q, const float* __restrict__ k,
                          const float* __restrict__ v, float* __restrict__ o,
                          float* __restrict__ lse, const AttentionParams p) {
    attention_fwd_impl<64, 64, 32>(q, k, v, o, lse, p);
}

// grid (ceil(N/32), H, B), block 128
extern "C" __global__ void __launch_bounds__(ATT_THREADS)
    attention_fwd_d128_f32(const float* __restrict__ q, const float* __restrict__ k,
                           const float* __restrict__ v, float* __restrict__ o,
                           float* __restrict__ lse, const AttentionParams p) {
    attention_fwd_impl<128, 32, 16>(q, k, v, o, lse, p);
}
