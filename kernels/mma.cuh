// mma.cuh — one warp-wide tensor-core instruction, bf16 x bf16 -> f32, and the bf16 packing
// it reads (the f32 -> bf16 rounding is common.cuh's f32_to_bf16_bits). Needs compute
// capability 8.0+: include it only from files that declare `// pmad-arch: 80` or higher.
//
// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32:  D[16x8] = A[16x16] B[16x8] + C[16x8],
// products exact, summed in f32. Each of the 32 lanes holds a fixed piece of every operand
// (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type"); with
// g = lane / 4 (the group) and t = lane % 4 (the thread in the group):
//   A: a[0] = (row g,   cols 2t, 2t+1)     a[1] = (row g+8, cols 2t, 2t+1)
//      a[2] = (row g,   cols 2t+8, 2t+9)   a[3] = (row g+8, cols 2t+8, 2t+9)
//   B: b[0] = (rows 2t, 2t+1;   col g)     b[1] = (rows 2t+8, 2t+9; col g)
//   C, D: d[0], d[1] = (row g,   cols 2t, 2t+1)   d[2], d[3] = (row g+8, cols 2t, 2t+1)
// a[i] and b[i] are 32-bit registers holding two bf16, the lower index in the low 16 bits.
// (The A layout of two adjacent 8-column C tiles is exactly one 16-column A fragment: what
// lets attention feed its probabilities P back in as A without a trip through shared memory.)
//
// The emulated device (kernels/emu/cuda_emu.h, PMAD_EMU) implements the same instruction for a
// warp of fiber threads with this layout, so a fragment indexing mistake fails there too.
#pragma once

// Two bf16 bits in one register, `lo` in the low half (the operand order of mma).
__device__ __forceinline__ unsigned int pack_bf16x2(unsigned short lo, unsigned short hi) {
    return (unsigned int)lo | ((unsigned int)hi << 16);
}

// d += A B on the tensor cores (every lane of the warp must call it, converged).
__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const unsigned int (&a)[4],
                                               const unsigned int (&b)[2]) {
#ifdef PMAD_EMU
    emu_mma_bf16_16816(d, a, b);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}
