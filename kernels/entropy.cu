// entropy.cu — per-row softmax statistics of token logits (reconstruction uncertainty).
//
// Math, for a row x[0..V) of logits (V up to 8192, e.g. the visual-token vocabulary):
//   lse     = log sum_v exp(x_v)
//   p_v     = exp(x_v - lse)                          (optional output, [R, V])
//   entropy = -sum_v p_v log p_v = lse - sum_v p_v x_v  (nats)
//   ce      = lse - x_target                          (optional; target < 0 or >= V: ce = 0)
// Single pass, numerically safe: each thread keeps (m, z, w) over its elements,
//   m = running max,  z = sum exp(x - m),  w = sum exp(x - m) (x - m),
// merged across threads by rescaling to the larger max:
//   z = z1 c1 + z2 c2,  w = c1 (w1 + z1 (m1 - m)) + c2 (w2 + z2 (m2 - m)),  c_i = exp(m_i - m).
// Then lse = m + log z and entropy = log z - w / z. Elements equal to -inf contribute nothing.
// Outputs that subtract lse use the split form, ce = (m - x_t) + log z and
// p = exp((x - m) - log z): x - m is exact, whereas lse itself is rounded to the ulp of
// its magnitude (1e-3 absolute at |lse| ~ 1e4), which would show up directly in ce and p.
// One block (256 threads) per row; a second pass over the row writes p when asked.
#include "common.cuh"
#include "params.cuh"

#define ENT_THREADS 256

struct EntState {
    float m, z, w;
};

__device__ __forceinline__ void ent_merge(EntState& a, const EntState& b) {
    if (b.z == 0.0f) return;
    if (a.z == 0.0f) {
        a = b;
        return;
    }
    const float m = fmaxf(a.m, b.m);
    const float c1 = expf(a.m - m), c2 = expf(b.m - m);
    a.w = c1 * fmaf(a.z, a.m - m, a.w) + c2 * fmaf(b.z, b.m - m, b.w);
    a.z = a.z * c1 + b.z * c2;
    a.m = m;
}

__device__ __forceinline__ EntState ent_shfl(const EntState& s, int o) {
    EntState r;
    r.m = __shfl_xor_sync(PMAD_FULL_MASK, s.m, o);
    r.z = __shfl_xor_sync(PMAD_FULL_MASK, s.z, o);
    r.w = __shfl_xor_sync(PMAD_FULL_MASK, s.w, o);
    return r;
}

// grid (R), block 256
extern "C" __global__ void __launch_bounds__(ENT_THREADS)
    entropy_fwd_f32(const float* __restrict__ logits, const int* __restrict__ targets,
                    float* __restrict__ probs, float* __restrict__ lse_out,
                    float* __restrict__ entropy_out, float* __restrict__ ce_out,
                    const EntropyParams p) {
    __shared__ EntState part[ENT_THREADS / 32];
    __shared__ float row_m, row_logz;
    const int row = blockIdx.x;
    const int V = p.vocab;
    const float* x = logits + (size_t)row * V;

    EntState st = {neg_inf(), 0.0f, 0.0f};
    for (int v = threadIdx.x; v < V; v += ENT_THREADS) {
        const float xv = x[v];
        if (xv == neg_inf()) continue;
        if (st.z == 0.0f) {
            st.m = xv;
            st.z = 1.0f;
            st.w = 0.0f;
        } else if (xv > st.m) {
            const float c = expf(st.m - xv);
            st.w = c * fmaf(st.z, st.m - xv, st.w);
            st.z = fmaf(st.z, c, 1.0f);
            st.m = xv;
        } else {
            const float e = expf(xv - st.m);
            st.z += e;
            st.w = fmaf(e, xv - st.m, st.w);
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const EntState other = ent_shfl(st, o);
        ent_merge(st, other);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) part[warp] = st;
    __syncthreads();
    if (warp == 0) {
        st = lane < ENT_THREADS / 32 ? part[lane] : EntState{neg_inf(), 0.0f, 0.0f};
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const EntState other = ent_shfl(st, o);
            ent_merge(st, other);
        }
        if (lane == 0) {
            const float logz = logf(st.z);  // z == 0 (all -inf): lse = -inf, entropy NaN
            row_m = st.m;
            row_logz = logz;
            lse_out[row] = st.m + logz;
            entropy_out[row] = logz - st.w / st.z;
            if (p.has_targets) {
                const int t = targets[row];
                ce_out[row] = (t >= 0 && t < V) ? (st.m - x[t]) + logz : 0.0f;
            }
        }
    }
    if (p.write_probs) {
        __syncthreads();
        const float m = row_m, logz = row_logz;
        float* pr = probs + (size_t)row * V;
        for (int v = threadIdx.x; v < V; v += ENT_THREADS) pr[v] = expf((x[v] - m) - logz);
    }
}
