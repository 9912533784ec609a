// Host emulation of the CUDA subset used by kernels/*.cu, for checking kernel logic on a machine
// without a GPU: one fiber per CUDA thread, scheduler-released barriers for __syncthreads /
// __syncwarp, shuffles through a per-block slot array, blocks run one after another. See
// README.md.
#pragma once
#include <math.h>
#include <string.h>
#include <stdint.h>
#include <stddef.h>
#include <setjmp.h>
#include <ucontext.h>
#include <stdlib.h>
#include <mutex>
#include <algorithm>
#include <vector>

struct dim3 { unsigned x = 1, y = 1, z = 1; };
inline dim3 blockDim, gridDim;
struct alignas(16) float4 { float x, y, z, w; };

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

// One CUDA thread = one fiber (ucontext) with its own stack; the fibers of a block take turns
// on the calling OS thread, each running until it reaches a barrier or returns. A barrier is
// released when every live (not yet returned) thread of its block (__syncthreads) or warp
// (__syncwarp, the two halves of a shuffle) waits on it — the semantics of the std::barrier
// this used to be, without an OS thread and a kernel wake-up per CUDA thread.
//
// Switching: a fiber starts once through makecontext/setcontext on its own stack; after that
// every switch is a _setjmp/_longjmp pair, which (unlike swapcontext) saves no signal mask and
// so makes no system call. (Built with _FORTIFY_SOURCE off: its longjmp check refuses jumps
// between stacks.)
struct EmuFiber {
    ucontext_t start;
    jmp_buf jb;
    bool started;
    int state;  // EMU_RUN, EMU_AT_BLOCK, EMU_AT_WARP, EMU_DONE
};
enum { EMU_RUN = 0, EMU_AT_BLOCK = 1, EMU_AT_WARP = 2, EMU_DONE = 3 };
struct EmuBlock {
    int n = 0;
    std::vector<EmuFiber> fibers;
    jmp_buf sched;
    uint64_t slots[1024];
    uint32_t mma_slots[1024][6];  // each lane's A and B registers during an mma
};
// One fiber runs at a time, so these are plain globals: the scheduler sets them before it
// switches to a fiber.
inline dim3 threadIdx, blockIdx;
inline EmuBlock* emu_ctx;
inline int emu_tid;
// 48 KiB: what a GPU grants a launch without the opt-in attribute (static + dynamic; the one
// kernel with dynamic shared memory, topk_mask, has no static), so a launch asking for more
// fails here as it would there.
alignas(16) inline unsigned char emu_dyn_smem[49152];
inline std::mutex emu_atomic_mu;

inline void emu_wait(int state) {
    EmuBlock* c = emu_ctx;
    EmuFiber& f = c->fibers[emu_tid];
    f.state = state;
    if (!_setjmp(f.jb)) _longjmp(c->sched, 1);
}
inline void __syncthreads() { emu_wait(EMU_AT_BLOCK); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu_wait(EMU_AT_WARP); }
template <class T>
inline T __shfl_xor_sync(unsigned, T v, int o) {
    uint64_t s = 0;
    memcpy(&s, &v, sizeof(T));
    const int t = emu_tid;
    emu_ctx->slots[t] = s;
    __syncwarp();
    uint64_t r = emu_ctx->slots[t ^ o];
    __syncwarp();
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
inline int atomicAdd(int* a, int v) {
    std::lock_guard<std::mutex> g(emu_atomic_mu);
    int old = *a;
    *a = old + v;
    return old;
}
// Kernels test this to swap a PTX instruction for its host stand-in (mma.cuh).
#define PMAD_EMU 1

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 for the calling thread's warp, with the
// PTX fragment layout (kernels/mma.cuh): every lane posts its A and B registers, then computes
// its own four D elements from the whole warp's operands. Products of two bf16 are exact in
// f32; they are summed in f32 in k order onto C (tensor cores sum in an unspecified order).
inline float emu_bf16_at(uint32_t reg, int hi) {
    uint32_t bits = hi ? (reg >> 16) : (reg & 0xffffu);
    float f;
    bits <<= 16;
    memcpy(&f, &bits, 4);
    return f;
}
inline void emu_mma_bf16_16816(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    EmuBlock* c = emu_ctx;
    const int t = emu_tid, lane = t & 31, w0 = t - lane;
    for (int i = 0; i < 4; ++i) c->mma_slots[t][i] = a[i];
    for (int i = 0; i < 2; ++i) c->mma_slots[t][4 + i] = b[i];
    __syncwarp();
    const int g = lane >> 2, tg = lane & 3;
    for (int i = 0; i < 4; ++i) {
        const int row = g + 8 * (i >> 1), col = 2 * tg + (i & 1);
        float acc = d[i];
        for (int k = 0; k < 16; ++k) {
            // A(row, k): lane (row % 8) * 4 + (k % 8) / 2, register (row >= 8) + 2 (k >= 8)
            const uint32_t ar = c->mma_slots[w0 + (row & 7) * 4 + ((k & 7) >> 1)][(row >> 3) + 2 * (k >> 3)];
            // B(k, col): lane col * 4 + (k % 8) / 2, register (k >= 8)
            const uint32_t br = c->mma_slots[w0 + col * 4 + ((k & 7) >> 1)][4 + (k >> 3)];
            acc += emu_bf16_at(ar, k & 1) * emu_bf16_at(br, k & 1);
        }
        d[i] = acc;
    }
    __syncwarp();  // every lane has read the operands before any posts the next ones
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

// The kernel call of the current launch, type-erased for the fibers' entry point.
inline void (*emu_body_fn)(void*);
inline void* emu_body_arg;
inline void emu_fiber_entry() {
    emu_body_fn(emu_body_arg);
    emu_ctx->fibers[emu_tid].state = EMU_DONE;
    _longjmp(emu_ctx->sched, 1);  // never returns
}
constexpr size_t EMU_STACK = 128 * 1024;  // per fiber; kernels keep small register tiles

// Runs block `c` to completion. Returns false on a deadlock: live threads wait on barriers
// that can never be released (some of a block's or warp's threads wait elsewhere).
inline bool emu_run_block(EmuBlock& c, dim3 b) {
    static std::vector<void*> stacks;  // reused by every block and launch
    while ((int)stacks.size() < c.n) stacks.push_back(malloc(EMU_STACK));
    c.fibers.assign(c.n, EmuFiber{});
    for (int t = 0; t < c.n; ++t) {
        EmuFiber& f = c.fibers[t];
        getcontext(&f.start);
        f.start.uc_stack.ss_sp = stacks[t];
        f.start.uc_stack.ss_size = EMU_STACK;
        f.start.uc_link = nullptr;
        makecontext(&f.start, emu_fiber_entry, 0);
        f.started = false;
        f.state = EMU_RUN;
    }
    int live = c.n;
    while (live > 0) {
        for (int t = 0; t < c.n; ++t) {
            if (c.fibers[t].state != EMU_RUN) continue;
            emu_tid = t;
            threadIdx = {(unsigned)t % b.x, ((unsigned)t / b.x) % b.y, (unsigned)t / (b.x * b.y)};
            EmuFiber& f = c.fibers[t];
            if (!_setjmp(c.sched)) {
                if (f.started) _longjmp(f.jb, 1);
                f.started = true;
                setcontext(&f.start);
            }
            live -= f.state == EMU_DONE;
        }
        // Every live thread now waits on a barrier: release the complete ones.
        bool released = false;
        for (int w = 0; w * 32 < c.n; ++w) {
            const int lo = 32 * w, hi = std::min(c.n, lo + 32);
            bool all = true, any = false;
            for (int t = lo; t < hi; ++t) {
                all &= c.fibers[t].state == EMU_AT_WARP || c.fibers[t].state == EMU_DONE;
                any |= c.fibers[t].state == EMU_AT_WARP;
            }
            if (all && any) {
                for (int t = lo; t < hi; ++t)
                    if (c.fibers[t].state == EMU_AT_WARP) c.fibers[t].state = EMU_RUN;
                released = true;
            }
        }
        if (!released && live > 0) {
            bool all = true;
            for (auto& f : c.fibers) all &= f.state == EMU_AT_BLOCK || f.state == EMU_DONE;
            if (!all) return false;
            for (auto& f : c.fibers)
                if (f.state == EMU_AT_BLOCK) f.state = EMU_RUN;
        }
    }
    return true;
}

// Runs kernel `k` over grid `g` of blocks `b`, blocks one after another. 0, or 3 on a
// barrier deadlock.
template <class... A, class... B>
int emu_launch(void (*k)(A...), dim3 g, dim3 b, B... args) {
    gridDim = g;
    blockDim = b;
    auto body = [&] { k(args...); };
    emu_body_fn = [](void* p) { (*static_cast<decltype(body)*>(p))(); };
    emu_body_arg = &body;
    EmuBlock c;
    c.n = b.x * b.y * b.z;
    emu_ctx = &c;
    for (unsigned bz = 0; bz < g.z; ++bz)
        for (unsigned by = 0; by < g.y; ++by)
            for (unsigned bx = 0; bx < g.x; ++bx) {
                blockIdx = {bx, by, bz};
                if (!emu_run_block(c, b)) return 3;
            }
    return 0;
}
