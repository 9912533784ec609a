// Host emulation of the CUDA subset used by kernels/*.cu, for checking kernel logic on a machine
// without a GPU: one OS thread per CUDA thread, std::barrier for __syncthreads/__syncwarp,
// shuffles through a per-block slot array, blocks run one after another. See README.md.
#pragma once
#include <math.h>
#include <string.h>
#include <stdint.h>
#include <stddef.h>
#include <barrier>
#include <mutex>
#include <thread>
#include <vector>
#include <memory>

struct dim3 { unsigned x = 1, y = 1, z = 1; };
inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
struct alignas(16) float4 { float x, y, z, w; };

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

struct EmuBlock {
    std::unique_ptr<std::barrier<>> block;
    std::vector<std::unique_ptr<std::barrier<>>> warps;
    uint64_t slots[1024];
};
inline thread_local EmuBlock* emu_ctx;
inline thread_local int emu_tid;
alignas(16) inline unsigned char emu_dyn_smem[65536];
inline std::mutex emu_atomic_mu;

inline void __syncthreads() { emu_ctx->block->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu_ctx->warps[emu_tid / 32]->arrive_and_wait(); }
template <class T>
inline T __shfl_xor_sync(unsigned, T v, int o) {
    auto& w = *emu_ctx->warps[emu_tid / 32];
    uint64_t s = 0;
    memcpy(&s, &v, sizeof(T));
    emu_ctx->slots[emu_tid] = s;
    w.arrive_and_wait();
    uint64_t r = emu_ctx->slots[emu_tid ^ o];
    w.arrive_and_wait();
    T out;
    memcpy(&out, &r, sizeof(T));
    return out;
}
inline unsigned long long atomicMin(unsigned long long* a, unsigned long long v) {
    std::lock_guard<std::mutex> g(emu_atomic_mu);
    unsigned long long old = *a;
    if (v < old) *a = v;
    return old;
}
inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
inline float __uint_as_float(unsigned i) { float f; memcpy(&f, &i, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned i; memcpy(&i, &f, 4); return i; }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline float emu_f16(unsigned short h) {
    unsigned s = (h >> 15) & 1, e = (h >> 10) & 31, m = h & 1023;
    float v;
    if (e == 0) v = ldexpf((float)m, -24);
    else if (e == 31) v = m ? NAN : INFINITY;
    else v = ldexpf((float)(m | 1024), (int)e - 25);
    return s ? -v : v;
}

template <class... A, class... B>
void emu_launch(void (*k)(A...), dim3 g, dim3 b, B... args) {
    gridDim = g;
    blockDim = b;
    const int n = b.x * b.y * b.z;
    for (unsigned bz = 0; bz < g.z; ++bz)
        for (unsigned by = 0; by < g.y; ++by)
            for (unsigned bx = 0; bx < g.x; ++bx) {
                EmuBlock c;
                c.block = std::make_unique<std::barrier<>>(n);
                for (int w = 0; w < (n + 31) / 32; ++w)
                    c.warps.push_back(std::make_unique<std::barrier<>>(std::min(32, n - 32 * w)));
                std::vector<std::thread> ts;
                for (int t = 0; t < n; ++t)
                    ts.emplace_back([&, t] {
                        emu_ctx = &c;
                        emu_tid = t;
                        threadIdx = {(unsigned)t % b.x, ((unsigned)t / b.x) % b.y, (unsigned)t / (b.x * b.y)};
                        blockIdx = {bx, by, bz};
                        k(args...);
                        c.warps[t / 32]->arrive_and_drop();
                        c.block->arrive_and_drop();
                    });
                for (auto& th : ts) th.join();
            }
}
