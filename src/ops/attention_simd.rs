//! The AVX2 attention forward: the online-softmax loop of [`crate::ops::attention`] with its
//! two products run on the register-blocked micro-kernel of [`crate::ops::microgemm`] instead
//! of general GEMM calls, and the softmax exponentials 8 at a time
//! ([`crate::ops::fastexp::exp_nonpositive_avx2`]).
//!
//! One task per (batch, head), on a per-thread scratch buffer (no allocation per call once
//! warm). Per task, once: `K` packed transposed into panels of 16 keys (`[D][16]` each, zero
//! past `N`) and `V` packed into panels of 16 of its `D` columns (`[N][16]` each, zero past
//! `D`), both read straight from the strided `[B, N, H*D]` inputs; every query tile then
//! shares them. `Q` is not copied at all: the micro-kernel broadcasts its elements from the
//! input rows (row stride `H*D`). Per tile of up to [`QUERY_TILE`] query rows and key tile of
//! up to [`KEY_TILE`] keys:
//!
//! 1. `S = Q Kᵀ` (unscaled) for the tile: `[rows, kt16]` (columns past the tile's `kt` keys
//!    are the zero padding's scores and are ignored);
//! 2. per row, the online softmax with the `1/√D` scale folded into the exponent (one FMA):
//!    `m' = max(m, max_j S_j)`, `P_j = exp(c·S_j - c·m')` with `c = 1/√D` (0 in the padding),
//!    `l = l·exp(c·(m - m')) + Σ P_j`, and the accumulator row is rescaled by `exp(c·(m - m'))`;
//! 3. `acc (=|+=) P · V_tile`, over the tile's `kt` real keys only.
//!
//! At the end `O = acc / l`, written straight into this head's columns of `o`, and
//! `lse = c·m + ln l`, exactly as the portable kernel. For the ViT's 196 tokens the key tile
//! covers all keys, so step 2 runs once per row and never rescales.

use crate::ops::attention::AttnShape;
use crate::ops::fastexp::{exp_nonpositive_avx2, fast_exp};
use crate::ops::microgemm::{MR, NR, gemm_packed, pack_cols, pack_rows_transposed};
use rayon::prelude::*;
use std::arch::x86_64::*;
use std::cell::RefCell;

/// Keys per tile (a multiple of [`NR`]). 256 covers the ViT's 196 tokens in one tile.
pub const KEY_TILE: usize = 256;

/// Query rows per tile: two micro-kernel row blocks. The micro-kernel reuses each 16-key panel
/// of `Kᵀ` (4 KiB at D = 64) and each 16-column panel of `V` from L1 across the tile's row
/// blocks, while the tile's scores (`12 x 256` floats, 12 KiB) stay in L1 beside them.
pub const QUERY_TILE: usize = 2 * MR;

/// One thread's reusable buffers: packed `Kᵀ` and `V` of the current head, the score tile and
/// the output accumulator. Grown on demand, never shrunk.
#[derive(Default)]
struct Scratch {
    k_packed: Vec<f32>,
    v_packed: Vec<f32>,
    scores: Vec<f32>,
    acc: Vec<f32>,
}

fn at_least(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// The output buffer shared by all tasks, each writing only its own (batch, head) columns.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: tasks write disjoint elements (see `forward`), and the caller's `&mut o` keeps every
// other reader and writer away for the whole call.
unsafe impl Send for SharedOut {}
// SAFETY: as above.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// Row `t` (`len` floats) at `offset + t * stride`.
    ///
    /// # Safety
    /// In bounds of the buffer, and no other live reference to those elements.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row(&self, offset: usize, len: usize) -> &mut [f32] {
        // SAFETY: by this function's contract.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(offset), len) }
    }
}

/// One (batch, head): writes its `[N, D]` output into `o` (rows `(b*N + t)*H*D + h*D`) and its
/// `[N]` lse.
///
/// # Safety
/// AVX2 and FMA present; `o` holds `s`'s `[B, N, H*D]` elements and no other task writes
/// this head's columns.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn head(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: AttnShape,
    b: usize,
    h: usize,
    o: SharedOut,
    row_lse: &mut [f32],
    scratch: &mut Scratch,
) {
    let (n, d) = (s.tokens, s.head_dim);
    let w = s.heads * d;
    let scale = 1.0 / (d as f32).sqrt();
    // This head's rows start at `(b*n)*w + h*d` with row stride `w` in all four buffers.
    let base = b * n * w + h * d;
    let (n16, d16) = (n.next_multiple_of(NR), d.next_multiple_of(NR));
    let tile = KEY_TILE.min(n16);
    let Scratch {
        k_packed,
        v_packed,
        scores,
        acc,
    } = scratch;
    let kp = at_least(k_packed, n16 * d);
    pack_rows_transposed(&k[base..], n, d, w, kp);
    let vp = at_least(v_packed, d16 * n);
    pack_cols(&v[base..], n, d, w, vp);
    let scores = at_least(scores, QUERY_TILE * tile);
    let acc = at_least(acc, QUERY_TILE * d16);

    for q0 in (0..n).step_by(QUERY_TILE) {
        let rows = QUERY_TILE.min(n - q0);
        let mut m = [f32::NEG_INFINITY; QUERY_TILE];
        let mut l = [0.0f32; QUERY_TILE];
        for k0 in (0..n).step_by(tile) {
            let kt = tile.min(n - k0);
            let kt16 = kt.next_multiple_of(NR);
            // S = Q · K_tileᵀ, Q read in place (row stride w); K panels start at key k0.
            // SAFETY: AVX2/FMA by this function's contract; slice bounds are checked inside.
            unsafe {
                gemm_packed(
                    rows,
                    d,
                    kt16 / NR,
                    &q[base + q0 * w..],
                    w,
                    &kp[k0 * d..],
                    d * NR,
                    scores,
                    kt16,
                    false,
                );
            }
            for i in 0..rows {
                let row = &mut scores[i * kt16..(i + 1) * kt16];
                // SAFETY: AVX2/FMA by this function's contract.
                let (m_new, sum) = unsafe { softmax_tile(row, kt, m[i], scale) };
                let correction = fast_exp(scale * (m[i] - m_new));
                l[i] = l[i] * correction + sum;
                m[i] = m_new;
                if k0 > 0 && correction != 1.0 {
                    for a in &mut acc[i * d16..(i + 1) * d16] {
                        *a *= correction;
                    }
                }
            }
            // acc (=|+=) P · V_tile: V panels are `[n][16]`, this tile is their rows k0..k0+kt.
            // SAFETY: AVX2/FMA by this function's contract; bounds checked inside.
            unsafe {
                gemm_packed(
                    rows,
                    kt,
                    d16 / NR,
                    scores,
                    kt16,
                    &vp[k0 * NR..],
                    n * NR,
                    acc,
                    d16,
                    k0 > 0,
                );
            }
        }
        for i in 0..rows {
            let inv = 1.0 / l[i];
            // SAFETY: row `q0 + i < n` of this head: `base + (q0+i)*w + d <= B*N*H*D`, and
            // only this task writes this head's columns (this function's contract).
            let dst = unsafe { o.row(base + (q0 + i) * w, d) };
            for (o, a) in dst.iter_mut().zip(&acc[i * d16..]) {
                *o = a * inv;
            }
            row_lse[q0 + i] = scale * m[i] + l[i].ln();
        }
    }
}

/// One row of raw scores `S`, padded to `row.len()` (a multiple of 16) past its `kt` keys:
/// finds `m' = max(m_old, max of row[..kt])`, replaces `row[..kt]` by `exp(c·(row - m'))` and
/// the padding by 0, and returns `(m', Σ exp)`. 16 lanes (two vectors) per step, so the
/// exponential's constants are loaded once per two vectors; vectors past `kt` are masked.
///
/// # Safety
/// AVX2 and FMA present.
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_tile(row: &mut [f32], kt: usize, m_old: f32, c: f32) -> (f32, f32) {
    assert!(row.len().is_multiple_of(16) && kt <= row.len());
    // Lane `i` of the vector starting at `j` is a real key when `j + i < kt`.
    let iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let valid = |j: usize| {
        let left = kt.saturating_sub(j).min(8) as i32;
        _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(left), iota))
    };
    let ninf = _mm256_set1_ps(f32::NEG_INFINITY);
    let (mut max0, mut max1) = (ninf, ninf);
    for (i, x) in row.chunks_exact(16).enumerate() {
        // SAFETY: `x` holds 16 floats.
        let (mut x0, mut x1) = unsafe {
            (
                _mm256_loadu_ps(x.as_ptr()),
                _mm256_loadu_ps(x.as_ptr().add(8)),
            )
        };
        if 16 * i + 16 > kt {
            x0 = _mm256_blendv_ps(ninf, x0, valid(16 * i));
            x1 = _mm256_blendv_ps(ninf, x1, valid(16 * i + 8));
        }
        max0 = _mm256_max_ps(max0, x0);
        max1 = _mm256_max_ps(max1, x1);
    }
    let mut lanes = [0.0f32; 8];
    // SAFETY: `lanes` holds 8 floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_max_ps(max0, max1)) };
    let m_new = lanes.iter().fold(m_old, |a, &x| a.max(x));
    // exp(c·x - c·m') as one FMA per lane; the argument is <= 0.
    let (vc, shift) = (_mm256_set1_ps(c), _mm256_set1_ps(-c * m_new));
    let (mut sum0, mut sum1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for (i, x) in row.chunks_exact_mut(16).enumerate() {
        let p = x.as_mut_ptr();
        // SAFETY: `x` holds 16 floats; AVX2/FMA by this function's contract.
        unsafe {
            let mut e0 = exp_nonpositive_avx2(_mm256_fmadd_ps(_mm256_loadu_ps(p), vc, shift));
            let mut e1 =
                exp_nonpositive_avx2(_mm256_fmadd_ps(_mm256_loadu_ps(p.add(8)), vc, shift));
            if 16 * i + 16 > kt {
                e0 = _mm256_and_ps(e0, valid(16 * i));
                e1 = _mm256_and_ps(e1, valid(16 * i + 8));
            }
            _mm256_storeu_ps(p, e0);
            _mm256_storeu_ps(p.add(8), e1);
            sum0 = _mm256_add_ps(sum0, e0);
            sum1 = _mm256_add_ps(sum1, e1);
        }
    }
    // SAFETY: `lanes` holds 8 floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(sum0, sum1)) };
    (m_new, lanes.iter().sum())
}

/// The forward over all (batch, head) pairs, in parallel. Same contract as
/// [`crate::ops::attention::attention_forward`] (which checks the buffer lengths).
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
    let n = s.tokens;
    let numel = s.batch * n * s.heads * s.head_dim;
    assert!(q.len() >= numel && k.len() >= numel && v.len() >= numel && o.len() >= numel);
    let out = SharedOut(o.as_mut_ptr());
    // One task per (batch, head) = one `[N]` chunk of `lse` (`[B, H, N]`).
    lse[..s.batch * s.heads * n]
        .par_chunks_mut(n)
        .enumerate()
        .for_each(|(bh, row_lse)| {
            SCRATCH.with(|cell| {
                // `head` never re-enters rayon, so this thread's scratch is free here.
                let mut scratch = cell.borrow_mut();
                // SAFETY: AVX2/FMA by this function's contract; `o` holds `numel` elements
                // (asserted above) and task `bh` alone writes head `bh % H` of batch item
                // `bh / H`: columns `h*D..h*D+D` of that item's rows, disjoint across tasks.
                unsafe {
                    head(
                        q,
                        k,
                        v,
                        s,
                        bh / s.heads,
                        bh % s.heads,
                        out,
                        row_lse,
                        &mut scratch,
                    )
                };
            })
        });
}
