// score.cu — the scoring chain after the nearest-prototype search, kept on the device
// (issue 11 item 3): distance, proposal mask rows, the ViT's input and output placement, the
// product score, the image score, and the fail-closed finiteness record. Each kernel mirrors
// one CPU function, named beside it; the CPU twins are the reference (tests/seam_parity.rs).
//
// sqrt_f32            y[i] = sqrt(x[i])  (distance from the squared distance; IEEE sqrt, as
//                     f32::sqrt)
// downsample_max_f32  per image, a grid x grid map -> vgrid x vgrid: cell (i, j) takes the max
//                     over rows [i*g/v, ceil((i+1)*g/v)) x the same columns, NaN ignored
//                     (recon::masking::downsample_max)
// masked_rows_u32     per image b, the k flat row ids b*n + i of its masked patches in
//                     ascending i (a proposal mask has exactly k per image)
// pool_cells_f32      feature rows [B, g*g, D] -> [B, 14*14, D], the mean of each f x f cell
//                     (f = g / vgrid), summed in the CPU's order (recon::tokenizer::
//                     pool_to_vit_grid)
// scatter_rows_f32    y[idx[r]] = v[r] over a zeroed y (masked-patch values to every patch)
// upsample_product_f32
//                     per image, nearest upsampling of a vgrid map to the feature grid,
//                     times the abnormality a when given: out = up(e) * a  (METHOD.md §7,
//                     full PMAD; detector::stage2::vit_to_feature_grid)
// image_score_f32     per map plane, the mean of its k largest values (k = 1: the max;
//                     detector::scoring::ImageScore): an exact radix select of the k-th
//                     largest value on order-preserving keys, one bit per pass, then the sum
//                     of the values above it in f64 plus its copies
// nonfinite_f32       flags[(i / per) * slots + slot] = x[i] for every non-finite x[i]: which
//                     image and stage went NaN/Inf, read back once per batch (racing writers
//                     all store a non-finite value, so any winner is right)
#include "common.cuh"
#include "params.cuh"

#define SCORE_THREADS 256

// Largest finite f32: |x| <= it is false exactly for NaN and +-Inf.
#define SCORE_FLT_MAX 3.402823466e+38f

__device__ __forceinline__ unsigned int score_order_key(float s) {
    if (s != s) return 0u;    // NaN: lowest
    if (s == 0.0f) s = 0.0f;  // -0 -> +0
    const unsigned int u = __float_as_uint(s);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ float score_key_value(unsigned int k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// Sum of v over the block (every thread gets it); scratch holds one value per warp.
template <class T>
__device__ __forceinline__ T score_block_sum(T v, T* scratch) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(PMAD_FULL_MASK, v, o);
    __syncthreads();  // the previous call's readers are done with scratch
    if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
    __syncthreads();
    T t = 0;
    for (int w = 0; w < SCORE_THREADS / 32; ++w) t += scratch[w];
    return t;
}

// ---------------------------------------------------------------------------------- sqrt
// grid-stride over p.n
extern "C" __global__ void __launch_bounds__(SCORE_THREADS)
    sqrt_f32(const float* __restrict__ x, float* __restrict__ y, const ScoreParams p) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (size_t)p.n;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] = sqrtf(x[i]);
}

// ------------------------------------------------------------------------ downsample max
// grid-stride over images * vgrid^2
extern "C" __global__ void __launch_bounds__(SCORE_THREADS)
    downsample_max_f32(const float* __restrict__ x, float* __restrict__ y,
                       const ScoreParams p) {
    const int g = p.grid, v = p.vgrid;
    const size_t total = (size_t)p.images * v * v;
    for (size_t o = (size_t)blockIdx.x * blockDim.x + threadIdx.x; o < total;
         o += (size_t)gridDim.x * blockDim.x) {
        const int j = (int)(o % v), i = (int)((o / v) % v);
        const size_t b = o / ((size_t)v * v);
        const int r0 = i * g / v, r1 = ((i + 1) * g + v - 1) / v;
        const int c0 = j * g / v, c1 = ((j + 1) * g + v - 1) / v;
        const float* xb = x + b * g * g;
        float best = __int_as_float(0x7fc00000);  // NaN: fmaxf takes the other operand
        for (int r = r0; r < r1; ++r)
            for (int c = c0; c < c1; ++c) best = fmaxf(best, xb[r * g + c]);
        y[o] = best;
    }
}

// --------------------------------------------------------------------------- masked rows
// grid-stride over images (one thread walks an image's n flags: n is 196)
extern "C" __global__ void __launch_bounds__(SCORE_THREADS)
    masked_rows_u32(const int* __restrict__ mask, int* __restrict__ rows,
                    const ScoreParams p) {
    for (int b = blockIdx.x * blockDim.x + threadIdx.x; b < p.images;
         b += gridDim.x * blockDim.x) {
        int found = 0;
        for (int i = 0; i < p.n && found < p.k; ++i)
            if (mask[(size_t)b * p.n + i] != 0) rows[(size_t)b * p.k + found++] = b * p.n + i;
        for (; found < p.k; ++found) rows[(size_t)b * p.k + found] = -1;  // never for top-k
    }
}

// ---------------------------------------------------------------------------- pool cells
// grid-stride over images * vgrid^2 * dim
extern "C" __global__ void __launch_bounds__(SCORE_THREADS)
    pool_cells_f32(const float* __restrict__ x, float* __restrict__ y, const ScoreParams p) {
    const int g = p.grid, v = p.vgrid, d = p.dim, f = p.grid / p.vgrid;
    const float scale = 1.0f / (float)(f * f);
    const size_t total = (size_t)p.images * v * v * d;
    for (size_t o = (size_t)blockIdx.x * blockDim.x + threadIdx.x; o < total;
         o += (size_t)gridDim.x * blockDim.x) {
        const int c = (int)(o % d);
        const int cell = (int)((o / d) % ((size_t)v * v));
        const size_t b = o / ((size_t)d * v * v);
        const int cy = cell / v, cx = cell % v;
        const float* xb = x + b * g * g * d;
        float s = 0.0f;
        for (int yy = cy * f; yy < (cy + 1) * f; ++yy)
            for (int xx = cx * f; xx < (cx + 1) * f; ++xx) s += xb[((size_t)yy * g + xx) * d + c];
        y[o] = s * scale;
    }
}

// --------------------------------------------------------------------------- scatter rows
// grid-stride over p.n values; y is zeroed by the launcher
extern "C" __global__ void __launch_bounds__(SCORE_THREADS)
    scatter_rows_f32(const float* __restrict__ v, const int* __restrict__ idx,
                     float* __restrict__ y, const ScoreParams p) {
    for (int r = blockIdx.x * blockDim.x + threadIdx.x; r < p.n; r += gridDim.x * blockDim.x) {
        const int i = idx[r];
        if (i >= 0 && i < p.k) y[i] = v[r];  // p.k: the length of y
    }
}

// ----------------------------------------------------------------------- upsample product
// grid-stride over images * grid^2; p.flag: a given
extern "C" __global__ void __launch_bounds__(SCORE_THREADS)
    upsample_product_f32(const float* __restrict__ e, const float* __restrict__ a,
                         float* __restrict__ y, const ScoreParams p) {
    const int g = p.grid, v = p.vgrid;
    const size_t total = (size_t)p.images * g * g;
    for (size_t o = (size_t)blockIdx.x * blockDim.x + threadIdx.x; o < total;
         o += (size_t)gridDim.x * blockDim.x) {
        const int c = (int)(o % g), r = (int)((o / g) % g);
        const size_t b = o / ((size_t)g * g);
        const float u = e[b * v * v + (size_t)(r * v / g) * v + c * v / g];
        y[o] = p.flag ? u * a[o] : u;
    }
}

// --------------------------------------------------------------------------- image score
// grid (planes), block 256; p.n values per plane, p.k = how many of the largest to average
extern "C" __global__ void __launch_bounds__(SCORE_THREADS)
    image_score_f32(const float* __restrict__ maps, float* __restrict__ score,
                    const ScoreParams p) {
    __shared__ int cnt_scratch[SCORE_THREADS / 32];
    __shared__ double sum_scratch[SCORE_THREADS / 32];
    const float* x = maps + (size_t)blockIdx.x * p.n;
    // The k-th largest key, bit by bit from the top: keep bit b set when at least `left`
    // keys agree with the prefix so far and have it set; otherwise they all rank above.
    unsigned int prefix = 0u;
    int left = p.k;
    for (int bit = 31; bit >= 0; --bit) {
        const unsigned int want = prefix | (1u << bit);
        const unsigned int high = ~((1u << bit) - 1u);  // bits bit..31
        int c = 0;
        for (int i = threadIdx.x; i < p.n; i += SCORE_THREADS)
            c += (score_order_key(x[i]) & high) == want ? 1 : 0;
        c = score_block_sum<int>(c, cnt_scratch);
        if (c >= left) prefix = want;
        else left -= c;
    }
    // Now `left` (>= 1) copies of the k-th largest value complete the values above it.
    double s = 0.0;
    for (int i = threadIdx.x; i < p.n; i += SCORE_THREADS)
        if (score_order_key(x[i]) > prefix) s += (double)x[i];
    s = score_block_sum<double>(s, sum_scratch);
    if (threadIdx.x == 0)
        score[blockIdx.x] =
            (float)(s + (double)left * (double)score_key_value(prefix)) / (float)p.k;
}

// ----------------------------------------------------------------------------- nonfinite
// grid-stride over images * p.n; flags [images, p.dim slots], slot p.k
extern "C" __global__ void __launch_bounds__(SCORE_THREADS)
    nonfinite_f32(const float* __restrict__ x, float* __restrict__ flags, const ScoreParams p) {
    const size_t total = (size_t)p.images * p.n;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const float v = x[i];
        if (!(fabsf(v) <= SCORE_FLT_MAX)) flags[(i / p.n) * p.dim + p.k] = v;
    }
}
