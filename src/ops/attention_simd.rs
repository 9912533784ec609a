//! The AVX2 attention forward: the online-softmax loop of [`crate::ops::attention`] with its
//! two products run on the register-blocked micro-kernel of [`crate::ops::microgemm`] instead
//! of general GEMM calls, and the softmax exponentials 8 at a time ([`exp_avx2`]).
//!
//! Per (batch, head), once: `Q/√D` gathered row-major `[N, D]`; `K` packed transposed into
//! panels of 16 keys (`[D][16]` each, zero past `N`), `V` packed into panels of 16 of its `D`
//! columns (`[N16][16]` each, zero past `D` and `N`). Then per block of up to 6 query rows
//! (one micro-kernel's register block) and key tile of up to [`KEY_TILE`] keys:
//!
//! 1. `S = (Q/√D) Kᵀ` for the tile: `[rows, kt16]` (columns past the tile's `kt` keys are the
//!    zero padding's scores and are ignored);
//! 2. per row, the online softmax: `m' = max(m, max_j S_j)`, `P_j = exp(S_j - m')` (0 in the
//!    padding), `l = l·exp(m - m') + Σ P_j`, and the accumulator row is rescaled by
//!    `exp(m - m')`;
//! 3. `acc += P · V_tile` (the padding's zero `P` columns meet `V`'s zero rows).
//!
//! At the end `O = acc / l` and `lse = m + ln l`, exactly as the portable kernel. For the
//! ViT's 196 tokens the key tile covers all keys, so step 2 runs once per row.

use crate::ops::attention::AttnShape;
use crate::ops::fastexp::{exp_avx2, fast_exp};
use crate::ops::microgemm::{MR, NR, gemm_packed, pack_cols, pack_rows_transposed};
use rayon::prelude::*;
use std::arch::x86_64::*;

/// Keys per tile (a multiple of [`NR`]). 256 covers the ViT's 196 tokens in one tile; the
/// score block `6 x 256` floats (6 KiB) stays in L1.
pub const KEY_TILE: usize = 256;

/// One (batch, head): writes its `[N, D]` output and `[N]` lse.
///
/// # Safety
/// AVX2 and FMA present.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn head(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: AttnShape,
    b: usize,
    h: usize,
    out: &mut [f32],
    row_lse: &mut [f32],
) {
    let (n, d) = (s.tokens, s.head_dim);
    let w = s.heads * d;
    let scale = 1.0 / (d as f32).sqrt();
    // This head's rows start at `(b*n)*w + h*d` with row stride `w` in all three inputs.
    let base = b * n * w + h * d;
    let qs: Vec<f32> = (0..n)
        .flat_map(|t| q[base + t * w..][..d].iter().map(|x| x * scale))
        .collect();
    let (n16, d16) = (n.next_multiple_of(NR), d.next_multiple_of(NR));
    let mut kp = vec![0.0f32; n16 * d];
    pack_rows_transposed(&k[base..], n, d, w, &mut kp);
    let mut vp = vec![0.0f32; d16 * n16];
    // V's rows past N must be zero in every panel: pack `n16` rows where the last are zero.
    let mut vrows = vec![0.0f32; n16 * d];
    for t in 0..n {
        vrows[t * d..(t + 1) * d].copy_from_slice(&v[base + t * w..][..d]);
    }
    pack_cols(&vrows, n16, d, d, &mut vp);

    let tile = KEY_TILE.min(n16);
    let mut scores = vec![0.0f32; MR * tile];
    let mut acc = vec![0.0f32; MR * d16];
    for q0 in (0..n).step_by(MR) {
        let rows = MR.min(n - q0);
        let mut m = [f32::NEG_INFINITY; MR];
        let mut l = [0.0f32; MR];
        for k0 in (0..n).step_by(tile) {
            let kt = tile.min(n - k0);
            let kt16 = kt.next_multiple_of(NR);
            // SAFETY: AVX2/FMA by this function's contract; slice bounds are checked inside.
            unsafe {
                gemm_packed(
                    rows,
                    d,
                    kt16 / NR,
                    &qs[q0 * d..],
                    d,
                    &kp[k0 * d..],
                    &mut scores,
                    kt16,
                    false,
                );
            }
            for i in 0..rows {
                let row = &mut scores[i * kt16..(i + 1) * kt16];
                // SAFETY: AVX2/FMA by this function's contract.
                let (m_new, sum) = unsafe { softmax_tile(row, kt, m[i]) };
                let correction = fast_exp(m[i] - m_new);
                l[i] = l[i] * correction + sum;
                m[i] = m_new;
                if k0 > 0 && correction != 1.0 {
                    acc[i * d16..(i + 1) * d16]
                        .iter_mut()
                        .for_each(|a| *a *= correction);
                }
            }
            // acc (=|+=) P · V_tile; V panels are `[n16][16]`, this tile starts at row k0.
            for p in 0..d16 / NR {
                // SAFETY: AVX2/FMA by this function's contract; bounds checked inside.
                unsafe {
                    gemm_packed(
                        rows,
                        kt16,
                        1,
                        &scores,
                        kt16,
                        &vp[(p * n16 + k0) * NR..],
                        &mut acc[p * NR..],
                        d16,
                        k0 > 0,
                    );
                }
            }
        }
        for i in 0..rows {
            let inv = 1.0 / l[i];
            let dst = &mut out[(q0 + i) * d..(q0 + i + 1) * d];
            dst.iter_mut()
                .zip(&acc[i * d16..])
                .for_each(|(o, a)| *o = a * inv);
            row_lse[q0 + i] = m[i] + l[i].ln();
        }
    }
}

/// One row of a score tile: finds `m' = max(m_old, max of row[..kt])`, replaces `row[..kt]`
/// by `exp(row - m')` and `row[kt..]` by 0, and returns `(m', Σ exp)`.
///
/// # Safety
/// AVX2 and FMA present.
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_tile(row: &mut [f32], kt: usize, m_old: f32) -> (f32, f32) {
    let full = kt / 8 * 8;
    let mut vmax = _mm256_set1_ps(f32::NEG_INFINITY);
    for c in row[..full].chunks_exact(8) {
        // SAFETY: `c` holds 8 floats.
        vmax = _mm256_max_ps(vmax, unsafe { _mm256_loadu_ps(c.as_ptr()) });
    }
    let mut lanes = [0.0f32; 8];
    // SAFETY: `lanes` holds 8 floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), vmax) };
    let tile_max = lanes
        .iter()
        .chain(&row[full..kt])
        .fold(f32::NEG_INFINITY, |a, &x| a.max(x));
    let m_new = m_old.max(tile_max);
    let shift = _mm256_set1_ps(m_new);
    let mut vsum = _mm256_setzero_ps();
    for c in row[..full].chunks_exact_mut(8) {
        // SAFETY: `c` holds 8 floats; AVX2/FMA by this function's contract.
        unsafe {
            let e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), shift));
            _mm256_storeu_ps(c.as_mut_ptr(), e);
            vsum = _mm256_add_ps(vsum, e);
        }
    }
    // SAFETY: `lanes` holds 8 floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), vsum) };
    let mut sum: f32 = lanes.iter().sum();
    for x in &mut row[full..kt] {
        *x = fast_exp(*x - m_new);
        sum += *x;
    }
    row[kt..].fill(0.0);
    (m_new, sum)
}

/// The forward over all (batch, head) pairs, in parallel. Same contract as
/// [`crate::ops::attention::attention_forward`].
///
/// # Safety
/// The CPU must have AVX2 and FMA.
pub unsafe fn forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: AttnShape,
    o: &mut [f32],
    lse: &mut [f32],
) {
    let (n, d) = (s.tokens, s.head_dim);
    let w = s.heads * d;
    let results: Vec<(Vec<f32>, Vec<f32>)> = (0..s.batch * s.heads)
        .into_par_iter()
        .map(|bh| {
            let mut out = vec![0.0f32; n * d];
            let mut row_lse = vec![0.0f32; n];
            // SAFETY: AVX2/FMA by this function's contract.
            unsafe {
                head(
                    q,
                    k,
                    v,
                    s,
                    bh / s.heads,
                    bh % s.heads,
                    &mut out,
                    &mut row_lse,
                )
            };
            (out, row_lse)
        })
        .collect();
    // Scatter back in parallel, one batch item (all its heads) per task.
    o[..s.batch * n * w]
        .par_chunks_mut(n * w)
        .zip(lse[..s.batch * s.heads * n].par_chunks_mut(s.heads * n))
        .enumerate()
        .for_each(|(b, (ob, lb))| {
            for h in 0..s.heads {
                let (out, row_lse) = &results[b * s.heads + h];
                for t in 0..n {
                    ob[t * w + h * d..][..d].copy_from_slice(&out[t * d..(t + 1) * d]);
                }
                lb[h * n..(h + 1) * n].copy_from_slice(row_lse);
            }
        });
}
