// coupling.cu — elementwise part of a RealNVP/Glow affine coupling layer (ProtoFlow).
//
// The subnet produces, for the transformed half x2 of each row, a raw log-scale s_raw and a
// shift t. With the soft clamp (alpha = 1.9 in the release):
//   s      = (2 alpha / pi) * atan(s_raw / alpha)          (|s| < alpha, smooth)
//   y2     = x2 * exp(s) + t
//   logdet = sum_c s                                       (per row; log|det J| of this layer)
// Backward, given dy2 [R, C] and dlogdet [R]:
//   dx2    = dy2 * exp(s)
//   dt     = dy2
//   ds     = dy2 * x2 * exp(s) + dlogdet
//   ds_raw = ds * ds/ds_raw = ds * (2/pi) / (1 + (s_raw/alpha)^2)
// Layout: x2, s_raw, t, y2 and the gradients are [R, C] row-major; logdet is [R].
// One warp per row (C = 136 typical: ~4 elements per lane), 8 rows per 256-thread block.
#include "common.cuh"
#include "params.cuh"

#define CPL_THREADS 256
#define PMAD_2_OVER_PI 0.6366197723675814f

// grid ceil(R/8), block 256
extern "C" __global__ void __launch_bounds__(CPL_THREADS)
    coupling_fwd_f32(const float* __restrict__ x2, const float* __restrict__ s_raw,
                     const float* __restrict__ t, float* __restrict__ y2,
                     float* __restrict__ logdet, const CouplingParams p) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * (CPL_THREADS / 32) + (threadIdx.x >> 5);
    if (row >= p.rows) return;  // whole warp
    const size_t base = (size_t)row * p.cols;
    const float k = PMAD_2_OVER_PI * p.alpha, inv_alpha = 1.0f / p.alpha;
    float acc = 0.0f;
    for (int c = lane; c < p.cols; c += 32) {
        const float s = k * atanf(s_raw[base + c] * inv_alpha);
        y2[base + c] = fmaf(x2[base + c], expf(s), t[base + c]);
        acc += s;
    }
    acc = warp_sum(acc);
    if (lane == 0) logdet[row] = acc;
}

// grid ceil(R/8), block 256
extern "C" __global__ void __launch_bounds__(CPL_THREADS)
    coupling_bwd_f32(const float* __restrict__ x2, const float* __restrict__ s_raw,
                     const float* __restrict__ dy2, const float* __restrict__ dlogdet,
                     float* __restrict__ dx2, float* __restrict__ ds_raw, float* __restrict__ dt,
                     const CouplingParams p) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * (CPL_THREADS / 32) + (threadIdx.x >> 5);
    if (row >= p.rows) return;
    const size_t base = (size_t)row * p.cols;
    const float k = PMAD_2_OVER_PI * p.alpha, inv_alpha = 1.0f / p.alpha;
    const float gl = dlogdet[row];
    for (int c = lane; c < p.cols; c += 32) {
        const float u = s_raw[base + c] * inv_alpha;
        const float e = expf(k * atanf(u));
        const float g = dy2[base + c];
        dx2[base + c] = g * e;
        dt[base + c] = g;
        const float ds = fmaf(g * x2[base + c], e, gl);
        ds_raw[base + c] = ds * PMAD_2_OVER_PI / fmaf(u, u, 1.0f);
    }
}
