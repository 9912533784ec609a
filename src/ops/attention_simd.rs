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
use crate::ops::microgemm::{MR, NR, gemm_packed, pack_cols, pack_rows_transposed, transpose};
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

/// Query rows per backward tile (a multiple of 8, for the 8x8 transposes of `P` and `dS`):
/// the tile's `P`, `dS` and their transposes (4 x 48 x 208 floats at 196 tokens, 160 KiB)
/// stay in L2 beside the head's packed `K` and `V`.
pub const BWD_QUERY_TILE: usize = 48;

/// One thread's reusable buffers for the backward (see [`head_backward`]).
#[derive(Default)]
struct BackwardScratch {
    k_t: Vec<f32>,
    v_t: Vec<f32>,
    k_c: Vec<f32>,
    q_c: Vec<f32>,
    do_c: Vec<f32>,
    p: Vec<f32>,
    ds: Vec<f32>,
    p_t: Vec<f32>,
    ds_t: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    delta: Vec<f32>,
}

thread_local! {
    static BWD_SCRATCH: RefCell<BackwardScratch> = RefCell::new(BackwardScratch::default());
}

/// One (batch, head) of the backward: writes this head's columns of `dq, dk, dv`.
///
/// Per head, once: `Kᵀ` and `Vᵀ` packed in 16-key panels (for `S = Q Kᵀ`, `dP = dO Vᵀ`), `K`
/// in 16-column panels (for `dQ = dS K`), and `delta_i = Σ_c dO_ic O_ic`. Then per tile of
/// up to [`BWD_QUERY_TILE`] queries, against all keys:
///
/// 1. `S = Q Kᵀ`, `dP = dO Vᵀ` (`[rows, N16]`, `Q` and `dO` read in place);
/// 2. `P = exp(c·S - lse)`, `dS = c · P ⊙ (dP - delta)` with `c = 1/√D` (0 past `N`);
/// 3. `dQ = dS K` for the tile's rows, written out;
/// 4. `Pᵀ` and `dSᵀ` by 8x8 transposes, the tile's `Q` and `dO` packed in column panels, then
///    `dV (=|+=) Pᵀ dO` and `dK (=|+=) dSᵀ Q` over the tile's queries.
///
/// `dK` and `dV` are written out after the last tile.
///
/// # Safety
/// AVX2 and FMA present; `grads` point to `s`'s `[B, N, H*D]` gradients and no other task
/// writes this head's columns.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn head_backward(
    [q, k, v, o, d_o]: [&[f32]; 5],
    row_lse: &[f32],
    s: AttnShape,
    b: usize,
    h: usize,
    grads: [SharedOut; 3],
    sc: &mut BackwardScratch,
) {
    let (n, d) = (s.tokens, s.head_dim);
    let w = s.heads * d;
    let scale = 1.0 / (d as f32).sqrt();
    let base = b * n * w + h * d;
    let (n16, d16) = (n.next_multiple_of(NR), d.next_multiple_of(NR));
    let tile = BWD_QUERY_TILE.min(n.next_multiple_of(8));
    let k_t = at_least(&mut sc.k_t, n16 * d);
    pack_rows_transposed(&k[base..], n, d, w, k_t);
    let v_t = at_least(&mut sc.v_t, n16 * d);
    pack_rows_transposed(&v[base..], n, d, w, v_t);
    let k_c = at_least(&mut sc.k_c, d16 * n);
    pack_cols(&k[base..], n, d, w, k_c);
    let delta = at_least(&mut sc.delta, n);
    for (t, dt) in delta.iter_mut().enumerate() {
        let (dor, or) = (&d_o[base + t * w..][..d], &o[base + t * w..][..d]);
        *dt = dor.iter().zip(or).map(|(a, b)| a * b).sum();
    }
    let p = at_least(&mut sc.p, tile * n16);
    let ds = at_least(&mut sc.ds, tile * n16);
    let p_t = at_least(&mut sc.p_t, n16 * tile);
    let ds_t = at_least(&mut sc.ds_t, n16 * tile);
    let q_c = at_least(&mut sc.q_c, d16 * tile);
    let do_c = at_least(&mut sc.do_c, d16 * tile);
    let dq = at_least(&mut sc.dq, tile * d16);
    let dk = at_least(&mut sc.dk, n * d16);
    let dv = at_least(&mut sc.dv, n * d16);

    for q0 in (0..n).step_by(tile) {
        let rows = tile.min(n - q0);
        let rows8 = rows.next_multiple_of(8);
        // SAFETY (all micro-kernel and transpose calls): AVX2/FMA by this function's
        // contract; slice bounds are checked inside.
        unsafe {
            gemm_packed(
                rows,
                d,
                n16 / NR,
                &q[base + q0 * w..],
                w,
                k_t,
                d * NR,
                p,
                n16,
                false,
            );
            gemm_packed(
                rows,
                d,
                n16 / NR,
                &d_o[base + q0 * w..],
                w,
                v_t,
                d * NR,
                ds,
                n16,
                false,
            );
        }
        for i in 0..rows {
            let (pr, dsr) = (&mut p[i * n16..][..n16], &mut ds[i * n16..][..n16]);
            // SAFETY: AVX2/FMA by this function's contract.
            unsafe { probs_and_grads(pr, dsr, n, scale, row_lse[q0 + i], delta[q0 + i]) };
        }
        // Rows past the tile's queries are zero, so their transposed columns add nothing.
        p[rows * n16..rows8 * n16].fill(0.0);
        ds[rows * n16..rows8 * n16].fill(0.0);
        // SAFETY: as above.
        unsafe {
            gemm_packed(rows, n, d16 / NR, ds, n16, k_c, n * NR, dq, d16, false);
        }
        for i in 0..rows {
            // SAFETY: row `q0 + i < n` of this head, in bounds; only this task writes this
            // head's columns (this function's contract).
            let dst = unsafe { grads[0].row(base + (q0 + i) * w, d) };
            dst.copy_from_slice(&dq[i * d16..][..d]);
        }
        pack_cols(&q[base + q0 * w..], rows, d, w, q_c);
        pack_cols(&d_o[base + q0 * w..], rows, d, w, do_c);
        // SAFETY: as above.
        unsafe {
            transpose(p, rows8, n16, n16, p_t, rows8);
            transpose(ds, rows8, n16, n16, ds_t, rows8);
            gemm_packed(
                n,
                rows,
                d16 / NR,
                p_t,
                rows8,
                do_c,
                rows * NR,
                dv,
                d16,
                q0 > 0,
            );
            gemm_packed(
                n,
                rows,
                d16 / NR,
                ds_t,
                rows8,
                q_c,
                rows * NR,
                dk,
                d16,
                q0 > 0,
            );
        }
    }
    for t in 0..n {
        for (g, src) in [(grads[1], &*dk), (grads[2], &*dv)] {
            // SAFETY: as for `dq` above.
            let dst = unsafe { g.row(base + t * w, d) };
            dst.copy_from_slice(&src[t * d16..][..d]);
        }
    }
}

/// One query row of the backward: from raw scores `p` and `dP = dO Vᵀ` in `ds` (both padded
/// to a multiple of 8 past `n` keys), `p = exp(c·S - lse)` and `ds = c · p ⊙ (dP - delta)`,
/// both 0 past `n`.
///
/// # Safety
/// AVX2 and FMA present.
#[target_feature(enable = "avx2,fma")]
unsafe fn probs_and_grads(p: &mut [f32], ds: &mut [f32], n: usize, c: f32, lse: f32, delta: f32) {
    assert!(p.len() == ds.len() && p.len().is_multiple_of(8) && n <= p.len());
    let iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let (vc, vlse, vdelta) = (
        _mm256_set1_ps(c),
        _mm256_set1_ps(lse),
        _mm256_set1_ps(delta),
    );
    for (j, (pv, dv)) in p
        .chunks_exact_mut(8)
        .zip(ds.chunks_exact_mut(8))
        .enumerate()
    {
        // SAFETY: `pv` and `dv` hold 8 floats; AVX2/FMA by this function's contract.
        unsafe {
            // c·S - lse <= 0 up to rounding (lse is the log of a sum that includes exp(c·S)).
            let mut e =
                exp_nonpositive_avx2(_mm256_fmsub_ps(_mm256_loadu_ps(pv.as_ptr()), vc, vlse));
            if 8 * j + 8 > n {
                let left = n.saturating_sub(8 * j) as i32;
                let valid = _mm256_cmpgt_epi32(_mm256_set1_epi32(left), iota);
                e = _mm256_and_ps(e, _mm256_castsi256_ps(valid));
            }
            let g = _mm256_mul_ps(
                _mm256_mul_ps(e, vc),
                _mm256_sub_ps(_mm256_loadu_ps(dv.as_ptr()), vdelta),
            );
            _mm256_storeu_ps(pv.as_mut_ptr(), e);
            _mm256_storeu_ps(dv.as_mut_ptr(), g);
        }
    }
}

/// The backward over all (batch, head) pairs, in parallel. Same contract as
/// [`crate::ops::attention::attention_backward`] (which checks the buffer lengths).
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[allow(clippy::too_many_arguments)]
pub unsafe fn backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &[f32],
    lse: &[f32],
    d_o: &[f32],
    s: AttnShape,
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let n = s.tokens;
    let numel = s.batch * n * s.heads * s.head_dim;
    for x in [q, k, v, o, d_o] {
        assert!(x.len() >= numel);
    }
    assert!(dq.len() >= numel && dk.len() >= numel && dv.len() >= numel);
    assert!(lse.len() >= s.batch * s.heads * n);
    let grads = [dq, dk, dv].map(|g| SharedOut(g.as_mut_ptr()));
    (0..s.batch * s.heads).into_par_iter().for_each(|bh| {
        BWD_SCRATCH.with(|cell| {
            // `head_backward` never re-enters rayon, so this thread's scratch is free here.
            let mut scratch = cell.borrow_mut();
            // SAFETY: AVX2/FMA by this function's contract; the gradients hold `numel`
            // elements (asserted above) and task `bh` alone writes head `bh % H` of batch
            // item `bh / H`: columns `h*D..h*D+D` of that item's rows, disjoint across tasks.
            unsafe {
                head_backward(
                    [q, k, v, o, d_o],
                    &lse[bh * n..(bh + 1) * n],
                    s,
                    bh / s.heads,
                    bh % s.heads,
                    grads,
                    &mut scratch,
                )
            };
        })
    });
}
