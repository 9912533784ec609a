// topk_mask.cu — per-image proposal mask: the k highest abnormality scores of a row -> 1
// (int flags, what mask_rows_f32 reads).
//
// Math: for a row s[0..n) and k = round(m*n) (computed on the host), mask[i] = 1 iff
//   rank(i) < k,  rank(i) = #{ j : s_j > s_i  or (s_j == s_i and j < i) }
// i.e. a stable descending sort, ties broken by the lower index: exactly k ones per row,
// deterministic. NaN scores rank below every number (they are selected last); -0.0 == +0.0.
//
// Implementation: one block per row. Every score becomes a unique 64-bit key
//   key = (order-preserving u32 of the score) << 32 | (0xFFFFFFFF - i)
// so that "larger key" == "ranks earlier", and rank(i) = #{ j : key_j > key_i }, counted
// against the row's keys held in shared memory (all threads read the same key_j at once:
// broadcast, no bank conflicts). O(n^2 / threads) compares: 784^2/256 = 2.4k per thread, far
// cheaper than a sort's synchronisation at these sizes. n <= 6144 (keys fit 48 KiB of
// dynamic shared memory: the launcher passes n*8 bytes).
#include "common.cuh"
#include "params.cuh"

#define TOPK_THREADS 256

__device__ __forceinline__ unsigned int topk_order_key(float s) {
    if (s != s) return 0u;    // NaN: lowest
    if (s == 0.0f) s = 0.0f;  // -0 -> +0
    const unsigned int u = __float_as_uint(s);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// grid (rows), block 256, dynamic shared memory n * 8 bytes
extern "C" __global__ void __launch_bounds__(TOPK_THREADS)
    topk_mask_f32(const float* __restrict__ scores, int* __restrict__ mask,
                  const TopkMaskParams p) {
    extern __shared__ unsigned long long topk_keys[];
    const int row = blockIdx.x;
    const int n = p.n;
    const float* s = scores + (size_t)row * n;
    int* out = mask + (size_t)row * n;

    for (int i = threadIdx.x; i < n; i += blockDim.x)
        topk_keys[i] = ((unsigned long long)topk_order_key(s[i]) << 32) |
                       (unsigned long long)(0xffffffffu - (unsigned int)i);
    __syncthreads();

    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const unsigned long long mine = topk_keys[i];
        int rank = 0;
#pragma unroll 8
        for (int j = 0; j < n; ++j) rank += topk_keys[j] > mine ? 1 : 0;
        out[i] = rank < p.k ? 1 : 0;
    }
}
