// common.cuh — small device helpers shared by every kernel file.
//
// Everything here is header-only and self-contained: no CUDA runtime or CCCL header is
// included, so a kernel file compiles with bare NVRTC (`-I kernels`) as well as with nvcc.
// Compute is f32 throughout; f16/bf16 are storage formats converted on load.
#pragma once

#define PMAD_FULL_MASK 0xffffffffu
#define PMAD_LOG2E 1.4426950408889634f
#define PMAD_LN2 0.6931471805599453f

// Integer ceil-division for launch arithmetic inside kernels.
__host__ __device__ __forceinline__ int ceil_div(int a, int b) { return (a + b - 1) / b; }

// ---- warp reductions (all 32 lanes must participate) ---------------------------------------

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(PMAD_FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(PMAD_FULL_MASK, v, o));
    return v;
}

// Reductions over aligned groups of G consecutive lanes (G a power of two <= 32). Every lane
// of the warp must call them (the shuffles use the full mask); each group gets its own result.
template <int G>
__device__ __forceinline__ float group_sum(float v) {
#pragma unroll
    for (int o = G / 2; o > 0; o >>= 1) v += __shfl_xor_sync(PMAD_FULL_MASK, v, o);
    return v;
}

template <int G>
__device__ __forceinline__ float group_max(float v) {
#pragma unroll
    for (int o = G / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(PMAD_FULL_MASK, v, o));
    return v;
}

// Block-wide sum for blockDim.x a multiple of 32 (<= 1024). `scratch` holds >= 32 floats.
// Every thread gets the result. Contains __syncthreads(): call from all threads.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nwarps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nwarps ? scratch[lane] : 0.0f;
    return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nwarps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nwarps ? scratch[lane] : -__int_as_float(0x7f800000);
    return warp_max(v);
}

// ---- storage conversions (no cuda_fp16.h / cuda_bf16.h needed) ------------------------------

// IEEE binary16 bits -> f32, exact (PTX cvt).
__device__ __forceinline__ float f16_bits_to_f32(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

// bfloat16 bits -> f32, exact (bf16 is the top half of an f32).
__device__ __forceinline__ float bf16_bits_to_f32(unsigned short h) {
    return __uint_as_float(((unsigned int)h) << 16);
}

// f32 -> bfloat16 bits, rounded to nearest, ties to even. Integer arithmetic (no
// cuda_bf16.h, so it runs on every architecture and in the emulator): adding 0x7fff plus the
// lowest kept bit to the f32 bits and truncating rounds to nearest even (a carry into the
// exponent is the correct rounding up, to infinity past the largest bf16); a NaN stays a
// quiet NaN.
__device__ __forceinline__ unsigned short f32_to_bf16_bits(float x) {
    const unsigned int u = __float_as_uint(x);
    return (u & 0x7fffffffu) > 0x7f800000u ? (unsigned short)((u >> 16) | 0x0040u)
                                           : (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

__device__ __forceinline__ float neg_inf() { return -__int_as_float(0x7f800000); }
__device__ __forceinline__ float pos_inf() { return __int_as_float(0x7f800000); }
