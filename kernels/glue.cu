// glue.cu — the small ops between the big ones (f32, NCHW / row-major, bounds-checked).
//
// layernorm_fwd_f32   y = (x - mean) * rstd * gamma + beta per row of C;
//                     mean = sum x / C, var = sum (x - mean)^2 / C (biased, like torch),
//                     rstd = 1 / sqrt(var + eps). Two passes over the row (no E[x^2]-E[x]^2
//                     cancellation). mean and rstd are written for the backward pass.
//                     One warp per row, 8 rows per 256-thread block.
// gelu_fwd_f32        y = 0.5 x (1 + erf(x / sqrt 2))   (exact form, torch's default)
// f32_to_bf16         y[i] = bf16(x[offset + i]) as raw bits, rounded to nearest, ties to even;
//                     NaN stays a (quiet) NaN: the operands of the bf16 tensor-core GEMMs
//                     (--precision bf16)
// bias_residual_add_f32
//                     y[r, c] = x[r, c] + bias[c] (+ residual[r, c])
// dwconv2d_f32        depthwise conv, weight [C, 1, KH, KW], stride (sh, sw), explicit padding
//                     (top, bottom, left, right) so TF-"same" asymmetric padding is expressible;
//                     out = sum_{kh,kw} x[c, oh*sh - top + kh, ow*sw - left + kw] w[c, kh, kw]
//                     + bias[c] (BN folded into the conv), then optionally ReLU6 = min(max(., 0), 6).
//                     Taps outside the input read 0.
// resize_bilinear_f32 torch F.interpolate(mode='bilinear', align_corners=False):
//                     src = max(0, (dst + 0.5) * scale - 0.5), scale = in/out;
//                     i0 = floor(src), i1 = min(i0 + 1, in - 1), l1 = src - i0, l0 = 1 - l1.
// blur_h_f32, blur_v_f32
//                     separable Gaussian (scipy.ndimage.gaussian_filter, mode='reflect'):
//                     y[i] = sum_{t=-r..r} w[t + r] x[reflect(i + t)], with scipy 'reflect' =
//                     half-sample symmetric (d c b a | a b c d | d c b a). Taps come from the
//                     host (normalised exp(-t^2 / 2 sigma^2), r = int(4 sigma + 0.5)).
// mask_rows_f32       y[r, c] = mask[r] ? token[c] : x[r, c]   (the ViT's [M] embedding
//                     replacing masked patch tokens)
// gather_rows_f32     y[r, c] = x[idx[r], c]; an index outside [0, src_rows) writes 0
// im2col_f32          per image, col[(c*KH + a)*KW + b, oh*OW + ow] =
//                     x[c, oh*sh - top + a, ow*sw - left + b] (0 outside): a dense conv becomes
//                     one GEMM with the weight [C_out, C*KH*KW] (the backbone's stem)
// bias_act_nchw_f32   y = act(x + bias[c]) (+ residual) over NCHW, act = identity or ReLU6
//                     (folded-BN bias after a pointwise-conv GEMM; the MBConv skip)
// avg_pool_f32        k x k mean, stride 1, k/2 padding, dividing by the in-bounds cell
//                     count (count_include_pad=False; PaDiM's local aggregation)
// nchw_to_rows_f32    y[(b*HW + p) * row_width + col_offset + c] = x[(b*C + c)*HW + p]: one
//                     tap's channels into its columns of the [B*HW, dim] feature rows
#include "common.cuh"
#include "params.cuh"

#define GLUE_THREADS 256

// ------------------------------------------------------------------------------- layernorm
// grid ceil(R/8), block 256
extern "C" __global__ void __launch_bounds__(GLUE_THREADS)
    layernorm_fwd_f32(const float* __restrict__ x, const float* __restrict__ gamma,
                      const float* __restrict__ beta, float* __restrict__ y,
                      float* __restrict__ mean_out, float* __restrict__ rstd_out,
                      const LayerNormParams p) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * (GLUE_THREADS / 32) + (threadIdx.x >> 5);
    if (row >= p.rows) return;  // whole warp
    const int C = p.cols;
    const float* xr = x + (size_t)row * C;
    float* yr = y + (size_t)row * C;
    float s = 0.0f;
    for (int c = lane; c < C; c += 32) s += xr[c];
    const float mean = warp_sum(s) / (float)C;
    float v = 0.0f;
    for (int c = lane; c < C; c += 32) {
        const float d = xr[c] - mean;
        v = fmaf(d, d, v);
    }
    const float rstd = 1.0f / sqrtf(warp_sum(v) / (float)C + p.eps);
    for (int c = lane; c < C; c += 32) yr[c] = fmaf((xr[c] - mean) * rstd, gamma[c], beta[c]);
    if (lane == 0) {
        mean_out[row] = mean;
        rstd_out[row] = rstd;
    }
}

// ------------------------------------------------------------------------------------ gelu
// grid-stride; grid min(ceil(n/256), 65535), block 256
extern "C" __global__ void __launch_bounds__(GLUE_THREADS)
    gelu_fwd_f32(const float* __restrict__ x, float* __restrict__ y, const GeluParams p) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (size_t)p.n;
         i += (size_t)gridDim.x * blockDim.x) {
        const float v = x[i];
        y[i] = 0.5f * v * (1.0f + erff(v * 0.7071067811865476f));
    }
}

// ----------------------------------------------------------------------------- f32 -> bf16
// grid-stride; grid min(ceil(n/256), 65535), block 256; the rounding is common.cuh's
// f32_to_bf16_bits (integer arithmetic: every architecture and the emulator).
extern "C" __global__ void __launch_bounds__(GLUE_THREADS)
    f32_to_bf16(const float* __restrict__ x, unsigned short* __restrict__ y,
                const ConvertParams p) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (size_t)p.n;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] = f32_to_bf16_bits(x[(size_t)p.offset + i]);
}

// ------------------------------------------------------------------------ bias + residual
// grid-stride over rows*cols; residual is ignored (may be any buffer) when has_residual == 0
extern "C" __global__ void __launch_bounds__(GLUE_THREADS)
    bias_residual_add_f32(const float* __restrict__ x, const float* __restrict__ bias,
                          const float* __restrict__ residual, float* __restrict__ y,
                          const BiasResidualParams p) {
    const size_t n = (size_t)p.rows * p.cols;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float v = x[i] + bias[i % p.cols];
        if (p.has_residual) v += residual[i];
        y[i] = v;
    }
}

// ---------------------------------------------------------------------- depthwise conv 2d
// grid-stride over N*C*OH*OW outputs (one thread each)
extern "C" __global__ void __launch_bounds__(GLUE_THREADS)
    dwconv2d_f32(const float* __restrict__ x, const float* __restrict__ w,
                 const float* __restrict__ bias, float* __restrict__ y,
                 const DwConv2dParams p) {
    const size_t total = (size_t)p.batch * p.channels * p.out_h * p.out_w;
    for (size_t o = (size_t)blockIdx.x * blockDim.x + threadIdx.x; o < total;
         o += (size_t)gridDim.x * blockDim.x) {
        const int ow = (int)(o % p.out_w);
        const int oh = (int)((o / p.out_w) % p.out_h);
        const size_t plane = o / ((size_t)p.out_w * p.out_h);  // n*C + c
        const int c = (int)(plane % p.channels);
        const float* xp = x + plane * p.in_h * p.in_w;
        const float* wc = w + (size_t)c * p.k_h * p.k_w;
        const int ih0 = oh * p.stride_h - p.pad_top;
        const int iw0 = ow * p.stride_w - p.pad_left;
        float acc = 0.0f;
        for (int kh = 0; kh < p.k_h; ++kh) {
            const int ih = ih0 + kh;
            if (ih < 0 || ih >= p.in_h) continue;
            for (int kw = 0; kw < p.k_w; ++kw) {
                const int iw = iw0 + kw;
                if (iw < 0 || iw >= p.in_w) continue;
                acc = fmaf(xp[(size_t)ih * p.in_w + iw], wc[kh * p.k_w + kw], acc);
            }
        }
        acc += bias[c];
        if (p.relu6) acc = fminf(fmaxf(acc, 0.0f), 6.0f);
        y[o] = acc;
    }
}

// ------------------------------------------------------------------------ bilinear resize
// grid-stride over planes*OH*OW
extern "C" __global__ void __launch_bounds__(GLUE_THREADS)
    resize_bilinear_f32(const float* __restrict__ x, float* __restrict__ y,
                        const ResizeBilinearParams p) {
    const size_t total = (size_t)p.planes * p.out_h * p.out_w;
    for (size_t o = (size_t)blockIdx.x * blockDim.x + threadIdx.x; o < total;
         o += (size_t)gridDim.x * blockDim.x) {
        const int ox = (int)(o % p.out_w);
        const int oy = (int)((o / p.out_w) % p.out_h);
        const size_t plane = o / ((size_t)p.out_w * p.out_h);
        const float sy = fmaxf(((float)oy + 0.5f) * p.scale_h - 0.5f, 0.0f);
        const float sx = fmaxf(((float)ox + 0.5f) * p.scale_w - 0.5f, 0.0f);
        const int y0 = min((int)sy, p.in_h - 1), x0 = min((int)sx, p.in_w - 1);
        const int y1 = y0 + (y0 < p.in_h - 1 ? 1 : 0), x1 = x0 + (x0 < p.in_w - 1 ? 1 : 0);
        const float ly1 = sy - (float)y0, lx1 = sx - (float)x0;
        const float ly0 = 1.0f - ly1, lx0 = 1.0f - lx1;
        const float* xp = x + plane * p.in_h * p.in_w;
        const float v00 = xp[(size_t)y0 * p.in_w + x0], v01 = xp[(size_t)y0 * p.in_w + x1];
        const float v10 = xp[(size_t)y1 * p.in_w + x0], v11 = xp[(size_t)y1 * p.in_w + x1];
        y[o] = ly0 * (lx0 * v00 + lx1 * v01) + ly1 * (lx0 * v10 + lx1 * v11);
    }
}

// ------------------------------------------------------------------------- gaussian blur
// scipy 'reflect': ... d c b a | a b c d | d c b a ...  (period 2n)
__device__ __forceinline__ int reflect_index(int i, int n) {
    if (n == 1) return 0;
    const int period = 2 * n;
    i %= period;
    if (i < 0) i += period;
    return i < n ? i : period - 1 - i;
}

// along W: grid-stride over planes*H*W; taps has 2*radius+1 entries
extern "C" __global__ void __launch_bounds__(GLUE_THREADS)
    blur_h_f32(const float* __restrict__ x, const float* __restrict__ taps,
               float* __restrict__ y, const BlurParams p) {
    const size_t total = (size_t)p.planes * p.h * p.w;
    for (size_t o = (size_t)blockIdx.x * blockDim.x + threadIdx.x; o < total;
         o += (size_t)gridDim.x * blockDim.x) {
        const int c = (int)(o % p.w);
        const float* xr = x + (o - c);
        float acc = 0.0f;
        for (int t = -p.radius; t <= p.radius; ++t)
            acc = fmaf(taps[t + p.radius], xr[reflect_index(c + t, p.w)], acc);
        y[o] = acc;
    }
}

// along H
extern "C" __global__ void __launch_bounds__(GLUE_THREADS)
    blur_v_f32(const float* __restrict__ x, const float* __restrict__ taps,
               float* __restrict__ y, const BlurParams p) {
    const size_t total = (size_t)p.planes * p.h * p.w;
    for (size_t o = (size_t)blockIdx.x * blockDim.x + threadIdx.x; o < total;
         o += (size_t)gridDim.x * blockDim.x) {
        const int c = (int)(o % p.w);
        const int r = (int)((o / p.w) % p.h);
        const float* xp = x + (o - c - (size_t)r * p.w);
        float acc = 0.0f;
        for (int t = -p.radius; t <= p.radius; ++t)
            acc = fmaf(taps[t + p.radius], xp[(size_t)reflect_index(r + t, p.h) * p.w + c], acc);
        y[o] = acc;
    }
}

// ------------------------------------------------------------------------- row selection
// grid-stride over rows*cols
extern "C" __global__ void __launch_bounds__(GLUE_THREADS)
    mask_rows_f32(const float* __restrict__ x, const int* __restrict__ mask,
                  const float* __restrict__ token, float* __restrict__ y,
                  const RowSelectParams p) {
    const size_t n = (size_t)p.rows * p.cols;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t r = i / p.cols;
        y[i] = mask[r] ? token[i - r * p.cols] : x[i];
    }
}

// grid-stride over rows*cols of the output
extern "C" __global__ void __launch_bounds__(GLUE_THREADS)
    gather_rows_f32(const float* __restrict__ x, const int* __restrict__ idx,
                    float* __restrict__ y, const RowSelectParams p) {
    const size_t n = (size_t)p.rows * p.cols;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t r = i / p.cols;
        const int src = idx[r];
        y[i] = (src >= 0 && src < p.src_rows) ? x[(size_t)src * p.cols + (i - r * p.cols)] : 0.0f;
    }
}

// --------------------------------------------------------------------------- backbone glue
// grid-stride over B * C*KH*KW * OH*OW column entries
extern "C" __global__ void __launch_bounds__(GLUE_THREADS)
    im2col_f32(const float* __restrict__ x, float* __restrict__ col, const Im2colParams p) {
    const size_t ohw = (size_t)p.out_h * p.out_w;
    const size_t rows = (size_t)p.channels * p.k_h * p.k_w;
    const size_t total = (size_t)p.batch * rows * ohw;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const int ow = (int)(i % p.out_w);
        const int oh = (int)((i / p.out_w) % p.out_h);
        const size_t r = (i / ohw) % rows;
        const size_t b = i / (ohw * rows);
        const int kb = (int)(r % p.k_w);
        const int ka = (int)((r / p.k_w) % p.k_h);
        const int c = (int)(r / ((size_t)p.k_w * p.k_h));
        const int iy = oh * p.stride_h - p.pad_top + ka;
        const int ix = ow * p.stride_w - p.pad_left + kb;
        float v = 0.0f;
        if (iy >= 0 && iy < p.in_h && ix >= 0 && ix < p.in_w)
            v = x[((b * p.channels + c) * p.in_h + iy) * (size_t)p.in_w + ix];
        col[i] = v;
    }
}

// grid-stride over B*C*HW; residual ignored when has_residual == 0
extern "C" __global__ void __launch_bounds__(GLUE_THREADS)
    bias_act_nchw_f32(const float* __restrict__ x, const float* __restrict__ bias,
                      const float* __restrict__ residual, float* __restrict__ y,
                      const BiasActParams p) {
    const size_t total = (size_t)p.batch * p.channels * p.plane;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        float v = x[i] + bias[(i / p.plane) % p.channels];
        if (p.relu6) v = fminf(fmaxf(v, 0.0f), 6.0f);
        if (p.has_residual) v += residual[i];
        y[i] = v;
    }
}

// grid-stride over planes*H*W
extern "C" __global__ void __launch_bounds__(GLUE_THREADS)
    avg_pool_f32(const float* __restrict__ x, float* __restrict__ y, const PoolParams p) {
    const size_t total = (size_t)p.planes * p.h * p.w;
    const int r = p.k / 2;
    for (size_t o = (size_t)blockIdx.x * blockDim.x + threadIdx.x; o < total;
         o += (size_t)gridDim.x * blockDim.x) {
        const int c = (int)(o % p.w);
        const int rr = (int)((o / p.w) % p.h);
        const float* xp = x + (o - c - (size_t)rr * p.w);
        const int y0 = max(rr - r, 0), y1 = min(rr + r, p.h - 1);
        const int x0 = max(c - r, 0), x1 = min(c + r, p.w - 1);
        float s = 0.0f;
        for (int yy = y0; yy <= y1; ++yy)
            for (int xx = x0; xx <= x1; ++xx) s += xp[(size_t)yy * p.w + xx];
        y[o] = s / (float)((y1 - y0 + 1) * (x1 - x0 + 1));
    }
}

// grid-stride over B*C*HW inputs (each written once)
extern "C" __global__ void __launch_bounds__(GLUE_THREADS)
    nchw_to_rows_f32(const float* __restrict__ x, float* __restrict__ y, const ToRowsParams p) {
    const size_t total = (size_t)p.batch * p.channels * p.plane;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t q = i % p.plane;
        const int c = (int)((i / p.plane) % p.channels);
        const size_t b = i / ((size_t)p.plane * p.channels);
        y[(b * p.plane + q) * p.row_width + p.col_offset + c] = x[i];
    }
}
