//! Fused multi-head attention, forward and backward, flash style.
//!
//! `O = softmax(Q Kᵀ / √D) V` per (batch, head). Queries are processed in blocks of
//! [`Q_BLOCK`] rows against key tiles of [`K_TILE`] keys with an *online softmax*: each row
//! keeps a running max `m` and running sum `l`; when a new tile raises the max, the old
//! accumulator and sum are rescaled by `exp(m_old - m_new)`. So only a `Q_BLOCK x K_TILE`
//! score tile ever exists — never the `N x N` matrix — and the forward also returns each row's
//! log-sum-exp `lse = m + ln l`, which lets the backward recompute probabilities exactly
//! (`P = exp(S - lse)`) without storing them.
//!
//! Layout: `q, k, v, o` are `[B, N, H*D]` row-major (what a fused QKV linear produces once
//! split); head `h` owns columns `h*D .. h*D+D`. `lse` is `[B, H, N]`.

use crate::error::{Error, Result};
use crate::ops::fastexp::{exp_shifted_sum, fast_exp};
use crate::ops::matmul::{Trans, gemm};
use crate::tensor::Tensor;
use rayon::prelude::*;

/// Largest query block and key tile. Actual sizes are balanced so the last block is not a
/// sliver (196 tokens -> key tiles of 49, not 64+64+64+4).
pub const Q_BLOCK: usize = 32;
pub const K_TILE: usize = 64;

/// `n` split into equal-as-possible pieces of at most `max`.
fn balanced(n: usize, max: usize) -> usize {
    n.div_ceil(n.div_ceil(max).max(1)).max(1)
}

/// Problem size of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    pub batch: usize,
    pub tokens: usize,
    pub heads: usize,
    pub head_dim: usize,
}

impl AttnShape {
    fn width(&self) -> usize {
        self.heads * self.head_dim
    }
    fn numel(&self) -> usize {
        self.batch * self.tokens * self.width()
    }
}

/// Copies head `h` of batch item `b` out of a `[B,N,H*D]` buffer into a contiguous `[N,D]`.
fn gather_head(x: &[f32], s: AttnShape, b: usize, h: usize, out: &mut [f32]) {
    let (n, d, w) = (s.tokens, s.head_dim, s.width());
    for t in 0..n {
        let src = (b * n + t) * w + h * d;
        out[t * d..(t + 1) * d].copy_from_slice(&x[src..src + d]);
    }
}

/// Forward pass. Writes `o` (`[B,N,H*D]`) and `lse` (`[B,H,N]`). On AVX2+FMA CPUs it runs
/// the micro-kernel version (`attention_simd`), elsewhere [`attention_forward_portable`].
pub fn attention_forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: AttnShape,
    o: &mut [f32],
    lse: &mut [f32],
) {
    assert!(q.len() >= s.numel() && k.len() >= s.numel() && v.len() >= s.numel());
    assert!(o.len() >= s.numel() && lse.len() >= s.batch * s.heads * s.tokens);
    if s.numel() == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if crate::ops::microgemm::available() {
        // SAFETY: AVX2 and FMA were detected just above.
        unsafe { crate::ops::attention_simd::forward(q, k, v, s, o, lse) };
        return;
    }
    attention_forward_portable(q, k, v, s, o, lse);
}

/// The forward on general GEMM calls (the `gemm` crate) and scalar softmax: any CPU.
pub fn attention_forward_portable(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: AttnShape,
    o: &mut [f32],
    lse: &mut [f32],
) {
    let (n, d, w) = (s.tokens, s.head_dim, s.width());
    assert!(q.len() >= s.numel() && k.len() >= s.numel() && v.len() >= s.numel());
    assert!(o.len() >= s.numel() && lse.len() >= s.batch * s.heads * n);
    let scale = 1.0 / (d as f32).sqrt();
    // One task per (batch, head); each returns its [N,D] output and its [N] lse.
    let results: Vec<(Vec<f32>, Vec<f32>)> = (0..s.batch * s.heads)
        .into_par_iter()
        .map(|bh| {
            let (b, h) = (bh / s.heads, bh % s.heads);
            let mut qh = vec![0.0; n * d];
            let mut kh = vec![0.0; n * d];
            let mut vh = vec![0.0; n * d];
            gather_head(q, s, b, h, &mut qh);
            gather_head(k, s, b, h, &mut kh);
            gather_head(v, s, b, h, &mut vh);
            qh.iter_mut().for_each(|x| *x *= scale);
            let mut out = vec![0.0; n * d];
            let mut row_lse = vec![0.0; n];
            let mut scores = vec![0.0; Q_BLOCK * K_TILE];
            let mut m = [0.0f32; Q_BLOCK];
            let mut l = [0.0f32; Q_BLOCK];
            let (q_block, k_tile) = (balanced(n, Q_BLOCK), balanced(n, K_TILE));
            for q0 in (0..n).step_by(q_block) {
                let qb = q_block.min(n - q0);
                m[..qb].fill(f32::NEG_INFINITY);
                l[..qb].fill(0.0);
                let acc = &mut out[q0 * d..(q0 + qb) * d];
                for k0 in (0..n).step_by(k_tile) {
                    let kt = k_tile.min(n - k0);
                    let st = &mut scores[..qb * kt];
                    // S = (Q/√D) · K_tileᵀ : [qb, kt]
                    gemm(
                        qb,
                        kt,
                        d,
                        &qh[q0 * d..],
                        Trans::N,
                        &kh[k0 * d..],
                        Trans::T,
                        st,
                        0.0,
                    );
                    for i in 0..qb {
                        let row = &mut st[i * kt..(i + 1) * kt];
                        let tile_max = row.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
                        let m_new = m[i].max(tile_max);
                        let correction = fast_exp(m[i] - m_new);
                        let sum = exp_shifted_sum(row, m_new);
                        l[i] = l[i] * correction + sum;
                        m[i] = m_new;
                        if correction != 1.0 {
                            acc[i * d..(i + 1) * d]
                                .iter_mut()
                                .for_each(|a| *a *= correction);
                        }
                    }
                    // acc += P · V_tile : [qb, d]
                    gemm(qb, d, kt, st, Trans::N, &vh[k0 * d..], Trans::N, acc, 1.0);
                }
                for i in 0..qb {
                    let inv = 1.0 / l[i];
                    acc[i * d..(i + 1) * d].iter_mut().for_each(|a| *a *= inv);
                    row_lse[q0 + i] = m[i] + l[i].ln();
                }
            }
            (out, row_lse)
        })
        .collect();
    for (bh, (out, row_lse)) in results.into_iter().enumerate() {
        let (b, h) = (bh / s.heads, bh % s.heads);
        for t in 0..n {
            let dst = (b * n + t) * w + h * d;
            o[dst..dst + d].copy_from_slice(&out[t * d..(t + 1) * d]);
        }
        lse[bh * n..(bh + 1) * n].copy_from_slice(&row_lse);
    }
}

/// Gradients `(dq, dk, dv)` given `do_`, the forward output `o` and its `lse`.
///
/// With `P = exp(S - lse)`: `dV = Pᵀ dO`, `dP = dO Vᵀ`,
/// `dS = P ⊙ (dP - rowsum(dO ⊙ O))`, `dQ = dS K / √D`, `dK = dSᵀ Q / √D`.
/// Recomputed tile by tile, like the forward, so memory stays O(N·D) per head (the AVX2
/// version keeps a query tile's probabilities against all keys: O(tile·N)). On AVX2+FMA CPUs
/// it runs the micro-kernel version (`attention_simd`), elsewhere
/// [`attention_backward_portable`].
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &[f32],
    lse: &[f32],
    do_: &[f32],
    s: AttnShape,
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    for x in [q, k, v, o, do_] {
        assert!(x.len() >= s.numel());
    }
    assert!(dq.len() >= s.numel() && dk.len() >= s.numel() && dv.len() >= s.numel());
    assert!(lse.len() >= s.batch * s.heads * s.tokens);
    if s.numel() == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if crate::ops::microgemm::available() {
        // SAFETY: AVX2 and FMA were detected just above.
        unsafe { crate::ops::attention_simd::backward(q, k, v, o, lse, do_, s, dq, dk, dv) };
        return;
    }
    attention_backward_portable(q, k, v, o, lse, do_, s, dq, dk, dv);
}

/// The backward on general GEMM calls (the `gemm` crate) and scalar code: any CPU.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_portable(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &[f32],
    lse: &[f32],
    do_: &[f32],
    s: AttnShape,
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let (n, d, w) = (s.tokens, s.head_dim, s.width());
    let scale = 1.0 / (d as f32).sqrt();
    let results: Vec<[Vec<f32>; 3]> = (0..s.batch * s.heads)
        .into_par_iter()
        .map(|bh| {
            let (b, h) = (bh / s.heads, bh % s.heads);
            let buf = |x: &[f32]| {
                let mut t = vec![0.0; n * d];
                gather_head(x, s, b, h, &mut t);
                t
            };
            let (qh, kh, vh, oh, doh) = (buf(q), buf(k), buf(v), buf(o), buf(do_));
            let row_lse = &lse[bh * n..(bh + 1) * n];
            // delta_i = Σ_d dO_id O_id
            let delta: Vec<f32> = (0..n)
                .map(|i| (0..d).map(|c| doh[i * d + c] * oh[i * d + c]).sum())
                .collect();
            let (mut gq, mut gk, mut gv) = (vec![0.0; n * d], vec![0.0; n * d], vec![0.0; n * d]);
            let mut p = vec![0.0; Q_BLOCK * K_TILE];
            let mut dp = vec![0.0; Q_BLOCK * K_TILE];
            let (q_block, k_tile) = (balanced(n, Q_BLOCK), balanced(n, K_TILE));
            for q0 in (0..n).step_by(q_block) {
                let qb = q_block.min(n - q0);
                for k0 in (0..n).step_by(k_tile) {
                    let kt = k_tile.min(n - k0);
                    let (pt, dpt) = (&mut p[..qb * kt], &mut dp[..qb * kt]);
                    gemm(
                        qb,
                        kt,
                        d,
                        &qh[q0 * d..],
                        Trans::N,
                        &kh[k0 * d..],
                        Trans::T,
                        pt,
                        0.0,
                    );
                    for i in 0..qb {
                        for j in 0..kt {
                            pt[i * kt + j] = fast_exp(pt[i * kt + j] * scale - row_lse[q0 + i]);
                        }
                    }
                    // dV_tile += Pᵀ dO_block
                    gemm(
                        kt,
                        d,
                        qb,
                        pt,
                        Trans::T,
                        &doh[q0 * d..],
                        Trans::N,
                        &mut gv[k0 * d..(k0 + kt) * d],
                        1.0,
                    );
                    // dP = dO_block V_tileᵀ
                    gemm(
                        qb,
                        kt,
                        d,
                        &doh[q0 * d..],
                        Trans::N,
                        &vh[k0 * d..],
                        Trans::T,
                        dpt,
                        0.0,
                    );
                    for i in 0..qb {
                        for j in 0..kt {
                            let idx = i * kt + j;
                            dpt[idx] = pt[idx] * (dpt[idx] - delta[q0 + i]) * scale;
                        }
                    }
                    // dQ_block += dS K_tile ; dK_tile += dSᵀ Q_block   (scale folded into dS)
                    gemm(
                        qb,
                        d,
                        kt,
                        dpt,
                        Trans::N,
                        &kh[k0 * d..],
                        Trans::N,
                        &mut gq[q0 * d..(q0 + qb) * d],
                        1.0,
                    );
                    gemm(
                        kt,
                        d,
                        qb,
                        dpt,
                        Trans::T,
                        &qh[q0 * d..],
                        Trans::N,
                        &mut gk[k0 * d..(k0 + kt) * d],
                        1.0,
                    );
                }
            }
            [gq, gk, gv]
        })
        .collect();
    for (bh, grads) in results.into_iter().enumerate() {
        let (b, h) = (bh / s.heads, bh % s.heads);
        for (dst_buf, g) in [&mut *dq, &mut *dk, &mut *dv].into_iter().zip(grads.iter()) {
            for t in 0..n {
                let dst = (b * n + t) * w + h * d;
                dst_buf[dst..dst + d].copy_from_slice(&g[t * d..(t + 1) * d]);
            }
        }
    }
}

/// Tensor-level forward: `q, k, v` are `[B, N, H*D]`; returns `[B, N, H*D]`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    let ok = q.rank() == 3 && q.shape() == k.shape() && q.shape() == v.shape();
    if !ok || heads == 0 || !q.dim(2).is_multiple_of(heads) {
        return Err(Error::shape(format!(
            "attention q {:?} k {:?} v {:?} with {heads} heads",
            q.shape(),
            k.shape(),
            v.shape()
        )));
    }
    let s = AttnShape {
        batch: q.dim(0),
        tokens: q.dim(1),
        heads,
        head_dim: q.dim(2) / heads,
    };
    let mut o = vec![0.0; s.numel()];
    let mut lse = vec![0.0; s.batch * heads * s.tokens];
    attention_forward(&q.f32s(), &k.f32s(), &v.f32s(), s, &mut o, &mut lse);
    Ok(Tensor::from_parts(o, q.shape().to_vec()))
}

/// Unfused reference: materialises the full score matrix. Tests only.
pub fn attention_naive(q: &[f32], k: &[f32], v: &[f32], s: AttnShape) -> Vec<f32> {
    let (n, d, w) = (s.tokens, s.head_dim, s.width());
    let scale = 1.0 / (d as f32).sqrt();
    let mut o = vec![0.0; s.numel()];
    for b in 0..s.batch {
        for h in 0..s.heads {
            for i in 0..n {
                let qi = &q[(b * n + i) * w + h * d..][..d];
                let sc: Vec<f64> = (0..n)
                    .map(|j| {
                        let kj = &k[(b * n + j) * w + h * d..][..d];
                        qi.iter().zip(kj).map(|(a, b)| (a * b) as f64).sum::<f64>() * scale as f64
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = sc.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for c in 0..d {
                    let acc: f64 = (0..n)
                        .map(|j| e[j] * v[(b * n + j) * w + h * d + c] as f64)
                        .sum();
                    o[(b * n + i) * w + h * d + c] = (acc / z) as f32;
                }
            }
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::{assert_close, seeded};

    #[test]
    fn fused_matches_naive_on_ragged_shapes() {
        // Tokens not a multiple of the 6-row block, the 16-key panel or the 256-key tile
        // (300: two key tiles, so the online rescale runs); head dims below / not a multiple
        // of 16.
        for &(batch, tokens, heads, head_dim) in &[
            (1, 1, 1, 4),
            (2, 33, 3, 8),
            (1, 97, 2, 64),
            (2, 196, 1, 16),
            (1, 7, 2, 5),
            (2, 17, 2, 32),
            (1, 300, 1, 24),
        ] {
            let s = AttnShape {
                batch,
                tokens,
                heads,
                head_dim,
            };
            let (q, k, v) = (
                seeded(s.numel(), 1),
                seeded(s.numel(), 2),
                seeded(s.numel(), 3),
            );
            let q: Vec<f32> = q.iter().map(|x| x * 4.0).collect(); // peaky softmax
            let mut o = vec![0.0; s.numel()];
            let mut lse = vec![0.0; batch * heads * tokens];
            let want = attention_naive(&q, &k, &v, s);
            attention_forward(&q, &k, &v, s, &mut o, &mut lse);
            assert_close(&o, &want, 1e-5, 1e-4);
            let mut o2 = vec![0.0; s.numel()];
            let mut lse2 = vec![0.0; batch * heads * tokens];
            attention_forward_portable(&q, &k, &v, s, &mut o2, &mut lse2);
            assert_close(&o2, &want, 1e-5, 1e-4);
            // Both paths' log-sum-exp agree (the backward recomputes P from it).
            assert_close(&lse, &lse2, 1e-5, 1e-5);
        }
    }

    #[test]
    fn backward_paths_agree_on_ragged_shapes() {
        // Tokens not a multiple of 8, 16 or the 48-query backward tile (100: three tiles);
        // head dims below / not a multiple of 16.
        for &(batch, tokens, heads, head_dim) in &[
            (1, 1, 1, 4),
            (2, 33, 3, 8),
            (1, 100, 2, 64),
            (1, 7, 2, 5),
            (2, 49, 1, 24),
        ] {
            let s = AttnShape {
                batch,
                tokens,
                heads,
                head_dim,
            };
            let (q, k, v, g) = (
                seeded(s.numel(), 11),
                seeded(s.numel(), 12),
                seeded(s.numel(), 13),
                seeded(s.numel(), 14),
            );
            let q: Vec<f32> = q.iter().map(|x| x * 4.0).collect(); // peaky softmax
            let mut o = vec![0.0; s.numel()];
            let mut lse = vec![0.0; batch * heads * tokens];
            attention_forward(&q, &k, &v, s, &mut o, &mut lse);
            let mut fast = [(); 3].map(|_| vec![f32::NAN; s.numel()]);
            let mut slow = [(); 3].map(|_| vec![f32::NAN; s.numel()]);
            let [a, b, c] = &mut fast;
            attention_backward(&q, &k, &v, &o, &lse, &g, s, a, b, c);
            let [a, b, c] = &mut slow;
            attention_backward_portable(&q, &k, &v, &o, &lse, &g, s, a, b, c);
            for (f, w) in fast.iter().zip(&slow) {
                assert_close(f, w, 1e-5, 1e-4);
            }
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let s = AttnShape {
            batch: 1,
            tokens: 37,
            heads: 2,
            head_dim: 5,
        };
        let (q, k, v) = (
            seeded(s.numel(), 4),
            seeded(s.numel(), 5),
            seeded(s.numel(), 6),
        );
        let g = seeded(s.numel(), 7); // loss = Σ g ⊙ O
        let loss = |q: &[f32], k: &[f32], v: &[f32]| -> f64 {
            let o = attention_naive(q, k, v, s);
            o.iter().zip(&g).map(|(a, b)| (a * b) as f64).sum()
        };
        let mut o = vec![0.0; s.numel()];
        let mut lse = vec![0.0; s.heads * s.tokens];
        attention_forward(&q, &k, &v, s, &mut o, &mut lse);
        let (mut dq, mut dk, mut dv) = (
            vec![0.0; s.numel()],
            vec![0.0; s.numel()],
            vec![0.0; s.numel()],
        );
        attention_backward(&q, &k, &v, &o, &lse, &g, s, &mut dq, &mut dk, &mut dv);
        let h = 1e-2f32;
        for (which, grad) in [(0, &dq), (1, &dk), (2, &dv)] {
            for idx in [0usize, 7, 101, s.numel() - 1] {
                let mut bufs = [q.clone(), k.clone(), v.clone()];
                bufs[which][idx] += h;
                let up = loss(&bufs[0], &bufs[1], &bufs[2]);
                bufs[which][idx] -= 2.0 * h;
                let down = loss(&bufs[0], &bufs[1], &bufs[2]);
                let fd = ((up - down) / (2.0 * h as f64)) as f32;
                assert!(
                    (fd - grad[idx]).abs() < 2e-3 + 1e-2 * fd.abs(),
                    "input {which} idx {idx}: fd {fd} vs {}",
                    grad[idx]
                );
            }
        }
    }
}
