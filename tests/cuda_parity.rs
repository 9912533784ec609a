//! CUDA kernels vs CPU references, one test per op family (the names match `kernels/<op>.cu`).
//!
//! Every test feeds the same seeded inputs, with ragged shapes (not multiples of any block or
//! tile size), to a launcher of `pmad::cuda` and to a small f64 reference written here, then
//! checks `|gpu - ref| <= atol + rtol * |ref|` element-wise and NMSE = sum (gpu-ref)^2 /
//! sum ref^2, printing the worst index. (The references are test-local for now; the CPU ops of
//! `src/ops/` will replace them.)
//!
//! With `--features cuda-emu` (CI: `scripts/test.sh`) every test runs on the emulated device:
//! the same launchers, grids and parameter blocks, the kernels compiled as host C++ and cuBLAS
//! as the CPU GEMM (`src/cuda/launch.rs`); a few shapes are smaller there.
//!
//! Without a usable GPU (no driver library, no device, a driver too old for the PTX ISA, or a
//! GPU below compute capability 7.5) each test prints `skipped: no CUDA device (<reason>)` and
//! passes — unless `PMAD_REQUIRE_GPU=1` (set by `scripts/device_check.sh`), which makes every
//! such skip, and a skip for missing backbone weights, a failure.
#![cfg(feature = "cuda")]

use std::sync::Arc;

use pmad::cuda::attention::{AttentionDims, attention_bwd, attention_fwd};
use pmad::cuda::coupling::{coupling_bwd, coupling_fwd};
use pmad::cuda::entropy::entropy_fwd;
use pmad::cuda::glue::{
    DwConv2dDims, Im2colDims, avg_pool, bias_act_nchw, bias_residual_add, dwconv2d, gather_rows,
    gaussian_blur, gaussian_taps, gelu_fwd, im2col, layernorm_fwd, mask_rows, nchw_to_rows,
    resize_bilinear,
};
use pmad::cuda::linear::{linear, pointwise_conv};
use pmad::cuda::proto_nn::{ProtoBank, proto_nn};
use pmad::cuda::topk_mask::{topk_count, topk_mask};
use pmad::cuda::{CudaDevice, CudaError, CudaSlice};

// ------------------------------------------------------------------------------ harness

fn device() -> Option<Arc<CudaDevice>> {
    match CudaDevice::shared() {
        Ok(d) => Some(d),
        Err(CudaError::Unavailable(reason)) => {
            assert!(
                !pmad::cuda::gpu_required(),
                "{} is set but there is no usable CUDA device: {reason}",
                pmad::cuda::REQUIRE_GPU_VAR
            );
            println!("skipped: no CUDA device ({reason})");
            None
        }
        Err(e) => panic!("opening the CUDA device failed: {e}"),
    }
}

macro_rules! device_or_skip {
    () => {
        match device() {
            Some(d) => d,
            None => return,
        }
    };
}

/// SplitMix64: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.uniform() as f32
    }
    fn normal(&mut self) -> f32 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
    fn normals(&mut self, n: usize, std: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * std).collect()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

#[derive(Clone, Copy)]
struct Tol {
    atol: f64,
    rtol: f64,
    nmse: f64,
}

const TIGHT: Tol = Tol {
    atol: 1e-5,
    rtol: 1e-5,
    nmse: 1e-10,
};

/// Element-wise `|g - r| <= atol + rtol |r|` plus NMSE; prints a summary and the worst index.
/// Non-finite references must be matched exactly (same infinity, or NaN for NaN).
fn compare(name: &str, got: &[f32], want: &[f64], tol: Tol) {
    assert_eq!(got.len(), want.len(), "{name}: length mismatch");
    let (mut fails, mut worst, mut worst_excess) = (0usize, 0usize, f64::NEG_INFINITY);
    let (mut num, mut den, mut max_abs) = (0.0f64, 0.0f64, 0.0f64);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g = g as f64;
        if !w.is_finite() {
            let same = (w.is_nan() && g.is_nan()) || g == w;
            if !same {
                fails += 1;
                if worst_excess < f64::INFINITY {
                    worst = i;
                    worst_excess = f64::INFINITY;
                }
            }
            continue;
        }
        let err = if g.is_finite() {
            (g - w).abs()
        } else {
            f64::INFINITY
        };
        let excess = err - (tol.atol + tol.rtol * w.abs());
        if excess > 0.0 {
            fails += 1;
        }
        if excess > worst_excess {
            worst_excess = excess;
            worst = i;
        }
        max_abs = max_abs.max(err);
        num += if err.is_finite() { err * err } else { f64::MAX };
        den += w * w;
    }
    let nmse = if den > 0.0 { num / den } else { num };
    let (wg, ww) = if got.is_empty() {
        (f32::NAN, f64::NAN)
    } else {
        (got[worst], want[worst])
    };
    println!(
        "{name}: n={} max|err|={max_abs:.3e} nmse={nmse:.3e} worst[{worst}] got={wg:e} ref={ww:e} fails={fails}",
        got.len()
    );
    assert!(
        fails == 0,
        "{name}: {fails} elements outside atol={} rtol={} (worst index {worst}: got {wg:e}, ref {ww:e})",
        tol.atol,
        tol.rtol
    );
    assert!(
        nmse <= tol.nmse,
        "{name}: nmse {nmse:.3e} > {:.1e}",
        tol.nmse
    );
}

fn up(dev: &CudaDevice, v: &[f32]) -> CudaSlice<f32> {
    dev.upload(v).expect("upload")
}

fn down<T: pmad::cuda::DeviceElem>(dev: &CudaDevice, s: &CudaSlice<T>) -> Vec<T> {
    dev.download(s).expect("download")
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

// ----------------------------------------------------------------------------- attention

/// Reference forward + backward in f64. Returns (o, lse, dq, dk, dv).
#[allow(clippy::type_complexity)]
fn attention_ref(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dout: &[f32],
    d: AttentionDims,
    scale: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let (b_, n, h_, dd) = (d.batch, d.seq, d.heads, d.head_dim);
    let hd = h_ * dd;
    let at =
        |t: &[f32], b: usize, i: usize, h: usize, c: usize| t[(b * n + i) * hd + h * dd + c] as f64;
    let mut o = vec![0.0; d.numel()];
    let mut lse = vec![0.0; d.stat_numel()];
    let mut dq = vec![0.0; d.numel()];
    let mut dk = vec![0.0; d.numel()];
    let mut dv = vec![0.0; d.numel()];
    for b in 0..b_ {
        for h in 0..h_ {
            // P [n, n]
            let mut p = vec![0.0f64; n * n];
            for i in 0..n {
                let s: Vec<f64> = (0..n)
                    .map(|j| {
                        scale
                            * (0..dd)
                                .map(|c| at(q, b, i, h, c) * at(k, b, j, h, c))
                                .sum::<f64>()
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                let l = m + z.ln();
                lse[(b * h_ + h) * n + i] = l;
                for j in 0..n {
                    p[i * n + j] = (s[j] - l).exp();
                }
                for c in 0..dd {
                    o[(b * n + i) * hd + h * dd + c] =
                        (0..n).map(|j| p[i * n + j] * at(v, b, j, h, c)).sum();
                }
            }
            // backward
            let mut ds = vec![0.0f64; n * n];
            for i in 0..n {
                let dp: Vec<f64> = (0..n)
                    .map(|j| {
                        (0..dd)
                            .map(|c| at(dout, b, i, h, c) * at(v, b, j, h, c))
                            .sum()
                    })
                    .collect();
                let delta: f64 = (0..n).map(|j| p[i * n + j] * dp[j]).sum();
                for j in 0..n {
                    ds[i * n + j] = p[i * n + j] * (dp[j] - delta);
                }
            }
            for i in 0..n {
                for c in 0..dd {
                    let idx = (b * n + i) * hd + h * dd + c;
                    dq[idx] = scale
                        * (0..n)
                            .map(|j| ds[i * n + j] * at(k, b, j, h, c))
                            .sum::<f64>();
                    dk[idx] = scale
                        * (0..n)
                            .map(|j| ds[j * n + i] * at(q, b, j, h, c))
                            .sum::<f64>();
                    dv[idx] = (0..n).map(|j| p[j * n + i] * at(dout, b, j, h, c)).sum();
                }
            }
        }
    }
    (o, lse, dq, dk, dv)
}

#[test]
fn attention() {
    let dev = device_or_skip!();
    let mut rng = Rng::new(0xA77E);
    // (batch, seq, heads, head_dim): d64 and d128 variants, ragged N and D.
    let cases = [
        (2, 37, 3, 64),
        (1, 196, 2, 64),
        (2, 70, 2, 40),
        (1, 1, 1, 64),
        (2, 50, 2, 128),
        (1, 33, 1, 100),
    ];
    for &(batch, seq, heads, head_dim) in &cases {
        let d = AttentionDims {
            batch,
            seq,
            heads,
            head_dim,
        };
        let scale = 1.0 / (head_dim as f64).sqrt();
        let q = rng.normals(d.numel(), 1.0);
        let k = rng.normals(d.numel(), 1.0);
        let v = rng.normals(d.numel(), 1.0);
        let dout = rng.normals(d.numel(), 1.0);
        let (o_ref, lse_ref, dq_ref, dk_ref, dv_ref) = attention_ref(&q, &k, &v, &dout, d, scale);

        let (qd, kd, vd, gd) = (up(&dev, &q), up(&dev, &k), up(&dev, &v), up(&dev, &dout));
        let (o, lse) = attention_fwd(&dev, &qd, &kd, &vd, d, None).unwrap();
        let tag = format!("attention B{batch} N{seq} H{heads} D{head_dim}");
        let fwd_tol = Tol {
            atol: 2e-5,
            rtol: 1e-4,
            nmse: 1e-9,
        };
        compare(&format!("{tag} o"), &down(&dev, &o), &o_ref, fwd_tol);
        compare(&format!("{tag} lse"), &down(&dev, &lse), &lse_ref, fwd_tol);

        let (dq, dk, dv) = attention_bwd(&dev, &qd, &kd, &vd, &o, &gd, &lse, d, None).unwrap();
        let bwd_tol = Tol {
            atol: 1e-4,
            rtol: 1e-3,
            nmse: 1e-8,
        };
        compare(&format!("{tag} dq"), &down(&dev, &dq), &dq_ref, bwd_tol);
        compare(&format!("{tag} dk"), &down(&dev, &dk), &dk_ref, bwd_tol);
        compare(&format!("{tag} dv"), &down(&dev, &dv), &dv_ref, bwd_tol);
    }
}

// ------------------------------------------------------------------------------ proto_nn

fn sqdist(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Checks GPU (idx, dist) against a brute-force f64 search over the (already dequantised) bank.
/// A different index is accepted only when its true distance is within tolerance of the minimum.
fn check_nn(name: &str, queries: &[f32], bank: &[f64], dim: usize, idx: &[u32], dist: &[f32]) {
    let q = queries.len() / dim;
    let p = bank.len() / dim;
    let mut want = Vec::with_capacity(q);
    let mut mismatched = 0;
    for i in 0..q {
        let qi: Vec<f64> = queries[i * dim..(i + 1) * dim]
            .iter()
            .map(|&x| x as f64)
            .collect();
        let (mut best, mut bi) = (f64::INFINITY, 0usize);
        for j in 0..p {
            let dj = sqdist(&qi, &bank[j * dim..(j + 1) * dim]);
            if dj < best {
                best = dj;
                bi = j;
            }
        }
        want.push(best);
        let gi = idx[i] as usize;
        assert!(
            gi < p,
            "{name}: query {i}: index {gi} out of range (P = {p})"
        );
        if gi != bi {
            mismatched += 1;
            let dg = sqdist(&qi, &bank[gi * dim..(gi + 1) * dim]);
            assert!(
                dg <= best + 1e-5 + 1e-5 * best,
                "{name}: query {i}: gpu index {gi} (dist {dg}) vs ref {bi} (dist {best})"
            );
        }
    }
    println!("{name}: {mismatched} near-tie index differences out of {q}");
    compare(
        &format!("{name} dist"),
        dist,
        &want,
        Tol {
            atol: 1e-4,
            rtol: 1e-5,
            nmse: 1e-10,
        },
    );
}

#[test]
fn proto_nn_f32_f16_bf16() {
    let dev = device_or_skip!();
    let mut rng = Rng::new(0x9E0);
    // (queries, prototypes, dim): ragged everything; the last one makes blocks scan >1 tile.
    // The emulated device reports one SM, so its grid has fewer bank chunks: a smaller last
    // case already scans 4 tiles per block there (and keeps the CI run in seconds).
    let last = if dev.is_emulated() {
        (300, 1300, 20)
    } else {
        (2000, 9000, 20)
    };
    for &(nq, np, dim) in &[(300, 1000, 152), (129, 257, 37), (5, 3, 1), last] {
        let queries = rng.normals(nq * dim, 1.0);
        let bank = rng.normals(np * dim, 1.0);
        let qd = up(&dev, &queries);

        let bd = up(&dev, &bank);
        let (idx, dist) = proto_nn(&dev, &qd, ProtoBank::F32(&bd), nq, np, dim).unwrap();
        let name = format!("proto_nn f32 Q{nq} P{np} D{dim}");
        check_nn(
            &name,
            &queries,
            &f64s(&bank),
            dim,
            &down(&dev, &idx),
            &down(&dev, &dist),
        );

        let h: Vec<half::f16> = bank.iter().map(|&x| half::f16::from_f32(x)).collect();
        let hd = dev
            .upload(&h.iter().map(|x| x.to_bits()).collect::<Vec<u16>>())
            .unwrap();
        let (idx, dist) = proto_nn(&dev, &qd, ProtoBank::F16(&hd), nq, np, dim).unwrap();
        let deq: Vec<f64> = h.iter().map(|x| x.to_f64()).collect();
        let name = format!("proto_nn f16 Q{nq} P{np} D{dim}");
        check_nn(
            &name,
            &queries,
            &deq,
            dim,
            &down(&dev, &idx),
            &down(&dev, &dist),
        );

        let h: Vec<half::bf16> = bank.iter().map(|&x| half::bf16::from_f32(x)).collect();
        let hd = dev
            .upload(&h.iter().map(|x| x.to_bits()).collect::<Vec<u16>>())
            .unwrap();
        let (idx, dist) = proto_nn(&dev, &qd, ProtoBank::Bf16(&hd), nq, np, dim).unwrap();
        let deq: Vec<f64> = h.iter().map(|x| x.to_f64()).collect();
        let name = format!("proto_nn bf16 Q{nq} P{np} D{dim}");
        check_nn(
            &name,
            &queries,
            &deq,
            dim,
            &down(&dev, &idx),
            &down(&dev, &dist),
        );
    }
}

#[test]
fn proto_nn_ties_take_lowest_index() {
    let dev = device_or_skip!();
    let mut rng = Rng::new(0x71E5);
    let (np, dim) = (700, 45);
    let mut bank = rng.normals(np * dim, 1.0);
    // prototype 600 + j duplicates prototype j (they land in different tiles and blocks)
    for j in 0..100 {
        let (src, dst) = (j * dim, (600 + j) * dim);
        bank.copy_within(src..src + dim, dst);
    }
    // queries equal to duplicated prototypes: exact ties at distance 0
    let picks: Vec<usize> = (0..150).map(|_| rng.below(100)).collect();
    let mut queries = Vec::with_capacity(picks.len() * dim);
    for &j in &picks {
        queries.extend_from_slice(&bank[j * dim..(j + 1) * dim]);
    }
    let (qd, bd) = (up(&dev, &queries), up(&dev, &bank));
    let (idx, dist) = proto_nn(&dev, &qd, ProtoBank::F32(&bd), picks.len(), np, dim).unwrap();
    let (idx, dist) = (down(&dev, &idx), down(&dev, &dist));
    for (i, &j) in picks.iter().enumerate() {
        assert_eq!(
            idx[i] as usize, j,
            "query {i}: tie must go to the lower index"
        );
        assert_eq!(dist[i], 0.0, "query {i}");
    }
    println!(
        "proto_nn ties: {} exact ties resolved to the lowest index",
        picks.len()
    );
}

// ------------------------------------------------------------------------------ topk_mask

fn topk_ref(scores: &[f32], n: usize, k: usize) -> Vec<f64> {
    let mut out = vec![0.0; scores.len()];
    for (r, row) in scores.chunks(n).enumerate() {
        let mut order: Vec<usize> = (0..n).collect();
        // descending score, NaN last, ties by lower index (stable sort keeps index order)
        order.sort_by(|&a, &b| {
            let (x, y) = (row[a], row[b]);
            match (x.is_nan(), y.is_nan()) {
                (true, true) => std::cmp::Ordering::Equal,
                (true, false) => std::cmp::Ordering::Greater,
                (false, true) => std::cmp::Ordering::Less,
                _ => y.partial_cmp(&x).unwrap(),
            }
        });
        for &i in &order[..k] {
            out[r * n + i] = 1.0;
        }
    }
    out
}

#[test]
fn topk_mask_rows() {
    let dev = device_or_skip!();
    let mut rng = Rng::new(0x70F);
    for &(rows, n, ratio) in &[
        (5, 196, 0.16),
        (3, 784, 0.48),
        (4, 196, 0.0),
        (2, 196, 1.0),
        (3, 37, 0.5),
    ] {
        let k = topk_count(ratio, n);
        // coarse quantisation -> many ties; a few NaN and signed zeros
        let mut scores: Vec<f32> = (0..rows * n)
            .map(|_| (rng.range(-1.0, 1.0) * 8.0).round() / 8.0)
            .collect();
        for s in scores.iter_mut().step_by(29) {
            *s = f32::NAN;
        }
        for s in scores.iter_mut().skip(3).step_by(31) {
            *s = -0.0;
        }
        let sd = up(&dev, &scores);
        let flags = down(&dev, &topk_mask(&dev, &sd, rows, n, k).unwrap());
        let mask: Vec<f32> = flags.iter().map(|&f| f as f32).collect();
        let want = topk_ref(&scores, n, k);
        compare(
            &format!("topk_mask rows{rows} n{n} k{k}"),
            &mask,
            &want,
            Tol {
                atol: 0.0,
                rtol: 0.0,
                nmse: 0.0,
            },
        );
        for r in 0..rows {
            let ones = mask[r * n..(r + 1) * n]
                .iter()
                .filter(|&&m| m == 1.0)
                .count();
            assert_eq!(ones, k, "row {r}: exactly k ones");
        }
    }
}

// ------------------------------------------------------------------------------- coupling

#[test]
fn coupling() {
    let dev = device_or_skip!();
    let mut rng = Rng::new(0xC0);
    let alpha = 1.9f64;
    let two_over_pi = 2.0 / std::f64::consts::PI;
    for &(rows, cols) in &[(77, 136), (9, 37), (1, 1)] {
        let n = rows * cols;
        let x2 = rng.normals(n, 1.0);
        let s_raw = rng.normals(n, 3.0); // reaches the clamp
        let t = rng.normals(n, 1.0);
        let dy2 = rng.normals(n, 1.0);
        let dlogdet = rng.normals(rows, 1.0);
        let mut y_ref = vec![0.0; n];
        let mut ld_ref = vec![0.0; rows];
        let (mut dx_ref, mut ds_ref, mut dt_ref) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        for r in 0..rows {
            for c in 0..cols {
                let i = r * cols + c;
                let u = s_raw[i] as f64 / alpha;
                let s = two_over_pi * alpha * u.atan();
                let e = s.exp();
                y_ref[i] = x2[i] as f64 * e + t[i] as f64;
                ld_ref[r] += s;
                let g = dy2[i] as f64;
                dx_ref[i] = g * e;
                dt_ref[i] = g;
                ds_ref[i] =
                    (g * x2[i] as f64 * e + dlogdet[r] as f64) * two_over_pi / (1.0 + u * u);
            }
        }
        let (x2d, sd, td) = (up(&dev, &x2), up(&dev, &s_raw), up(&dev, &t));
        let (y, ld) = coupling_fwd(&dev, &x2d, &sd, &td, rows, cols, alpha as f32).unwrap();
        let tag = format!("coupling R{rows} C{cols}");
        let tol = Tol {
            atol: 1e-5,
            rtol: 1e-5,
            nmse: 1e-10,
        };
        compare(&format!("{tag} y2"), &down(&dev, &y), &y_ref, tol);
        compare(
            &format!("{tag} logdet"),
            &down(&dev, &ld),
            &ld_ref,
            Tol { atol: 1e-4, ..tol },
        );
        let (gd, gld) = (up(&dev, &dy2), up(&dev, &dlogdet));
        let (dx, ds, dt) =
            coupling_bwd(&dev, &x2d, &sd, &gd, &gld, rows, cols, alpha as f32).unwrap();
        compare(&format!("{tag} dx2"), &down(&dev, &dx), &dx_ref, tol);
        compare(&format!("{tag} ds_raw"), &down(&dev, &ds), &ds_ref, tol);
        compare(&format!("{tag} dt"), &down(&dev, &dt), &dt_ref, TIGHT);
    }
}

// -------------------------------------------------------------------------------- entropy

#[test]
fn entropy() {
    let dev = device_or_skip!();
    let mut rng = Rng::new(0xE27);
    for &(rows, vocab) in &[(9, 8192), (13, 1000), (4, 37), (3, 1)] {
        let mut logits = rng.normals(rows * vocab, 3.0);
        if vocab > 2 {
            logits[1] = f32::NEG_INFINITY; // row 0: a masked logit
            for v in &mut logits[vocab..2 * vocab] {
                *v += 1.0e4; // row 1: large offset (lse is rounded at 1e-3; ce and p must not be)
            }
        }
        let targets: Vec<i32> = (0..rows)
            .map(|r| {
                if r % 4 == 3 {
                    -1
                } else {
                    rng.below(vocab) as i32
                }
            })
            .collect();
        let (mut lse_r, mut ent_r, mut ce_r) = (vec![0.0; rows], vec![0.0; rows], vec![0.0; rows]);
        let mut probs_r = vec![0.0; rows * vocab];
        for r in 0..rows {
            let x = &logits[r * vocab..(r + 1) * vocab];
            let m = x
                .iter()
                .map(|&v| v as f64)
                .fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = x.iter().map(|&v| (v as f64 - m).exp()).sum();
            let lse = m + z.ln();
            lse_r[r] = lse;
            let mut h = 0.0;
            for (j, &v) in x.iter().enumerate() {
                let p = (v as f64 - lse).exp();
                probs_r[r * vocab + j] = p;
                if p > 0.0 {
                    h -= p * (v as f64 - lse);
                }
            }
            ent_r[r] = h;
            let t = targets[r];
            ce_r[r] = if t >= 0 {
                lse - x[t as usize] as f64
            } else {
                0.0
            };
        }
        let ld = up(&dev, &logits);
        // Ids as the u32 index buffers the kernels read as int: -1 is u32::MAX (no target).
        let t32: Vec<u32> = targets.iter().map(|&t| t as u32).collect();
        let td = dev.upload(&t32).unwrap();
        let out = entropy_fwd(&dev, &ld, rows, vocab, Some(&td), true).unwrap();
        let tag = format!("entropy R{rows} V{vocab}");
        let tol = Tol {
            atol: 2e-5,
            rtol: 2e-5,
            nmse: 1e-10,
        };
        compare(
            &format!("{tag} lse"),
            &down(&dev, &out.lse),
            &lse_r,
            Tol { rtol: 1e-6, ..tol },
        );
        compare(
            &format!("{tag} entropy"),
            &down(&dev, &out.entropy),
            &ent_r,
            Tol { atol: 1e-4, ..tol },
        );
        compare(
            &format!("{tag} ce"),
            &down(&dev, out.ce.as_ref().unwrap()),
            &ce_r,
            Tol {
                atol: 1e-4,
                rtol: 1e-6,
                ..tol
            },
        );
        compare(
            &format!("{tag} probs"),
            &down(&dev, out.probs.as_ref().unwrap()),
            &probs_r,
            Tol {
                atol: 1e-6,
                rtol: 1e-4,
                ..tol
            },
        );
        // without the optional parts
        let out2 = entropy_fwd(&dev, &ld, rows, vocab, None, false).unwrap();
        assert!(out2.ce.is_none() && out2.probs.is_none());
        compare(
            &format!("{tag} entropy (no targets)"),
            &down(&dev, &out2.entropy),
            &ent_r,
            Tol { atol: 1e-4, ..tol },
        );
    }
}

// ----------------------------------------------------------------------------------- glue

unsafe extern "C" {
    /// libm's erf (glibc), the reference for GELU.
    safe fn erf(x: f64) -> f64;
}

#[test]
fn layernorm() {
    let dev = device_or_skip!();
    let mut rng = Rng::new(0x1A);
    for &(rows, cols) in &[(33, 768), (10, 272), (3, 5)] {
        let x: Vec<f32> = (0..rows * cols).map(|_| rng.normal() * 2.0 + 3.0).collect();
        let gamma = rng.normals(cols, 1.0);
        let beta = rng.normals(cols, 1.0);
        let eps = 1e-6f64;
        let (mut y_r, mut mean_r, mut rstd_r) =
            (vec![0.0; rows * cols], vec![0.0; rows], vec![0.0; rows]);
        for r in 0..rows {
            let xr = &x[r * cols..(r + 1) * cols];
            let mean = xr.iter().map(|&v| v as f64).sum::<f64>() / cols as f64;
            let var = xr.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / cols as f64;
            let rstd = 1.0 / (var + eps).sqrt();
            mean_r[r] = mean;
            rstd_r[r] = rstd;
            for c in 0..cols {
                y_r[r * cols + c] = (xr[c] as f64 - mean) * rstd * gamma[c] as f64 + beta[c] as f64;
            }
        }
        let (y, mean, rstd) = layernorm_fwd(
            &dev,
            &up(&dev, &x),
            &up(&dev, &gamma),
            &up(&dev, &beta),
            rows,
            cols,
            eps as f32,
        )
        .unwrap();
        let tag = format!("layernorm R{rows} C{cols}");
        let tol = Tol {
            atol: 2e-5,
            rtol: 1e-5,
            nmse: 1e-10,
        };
        compare(&format!("{tag} y"), &down(&dev, &y), &y_r, tol);
        compare(&format!("{tag} mean"), &down(&dev, &mean), &mean_r, tol);
        compare(&format!("{tag} rstd"), &down(&dev, &rstd), &rstd_r, tol);
    }
}

#[test]
fn gelu() {
    let dev = device_or_skip!();
    let mut rng = Rng::new(0x6E1);
    let x: Vec<f32> = (0..10_007).map(|_| rng.range(-6.0, 6.0)).collect();
    let want: Vec<f64> = x
        .iter()
        .map(|&v| {
            let v = v as f64;
            0.5 * v * (1.0 + erf(v / std::f64::consts::SQRT_2))
        })
        .collect();
    let y = gelu_fwd(&dev, &up(&dev, &x)).unwrap();
    compare("gelu n10007", &down(&dev, &y), &want, TIGHT);
}

#[test]
fn bias_residual() {
    let dev = device_or_skip!();
    let mut rng = Rng::new(0xB1);
    let (rows, cols) = (31, 97);
    let x = rng.normals(rows * cols, 1.0);
    let bias = rng.normals(cols, 1.0);
    let res = rng.normals(rows * cols, 1.0);
    let (xd, bd, rd) = (up(&dev, &x), up(&dev, &bias), up(&dev, &res));
    let with: Vec<f64> = (0..rows * cols)
        .map(|i| x[i] as f64 + bias[i % cols] as f64 + res[i] as f64)
        .collect();
    let without: Vec<f64> = (0..rows * cols)
        .map(|i| x[i] as f64 + bias[i % cols] as f64)
        .collect();
    let y = bias_residual_add(&dev, &xd, &bd, Some(&rd), rows, cols).unwrap();
    compare("bias_residual_add +res", &down(&dev, &y), &with, TIGHT);
    let y = bias_residual_add(&dev, &xd, &bd, None, rows, cols).unwrap();
    compare("bias_residual_add", &down(&dev, &y), &without, TIGHT);
}

fn dwconv_ref(x: &[f32], w: &[f32], bias: &[f32], d: DwConv2dDims, relu6: bool) -> Vec<f64> {
    let (oh, ow) = d.out_hw().unwrap();
    let (t, _, l, _) = d.pad;
    let mut y = vec![0.0; d.batch * d.channels * oh * ow];
    for n in 0..d.batch {
        for c in 0..d.channels {
            let plane = n * d.channels + c;
            for i in 0..oh {
                for j in 0..ow {
                    let mut acc = 0.0f64;
                    for a in 0..d.k_h {
                        for b in 0..d.k_w {
                            let ih = (i * d.stride_h + a) as isize - t as isize;
                            let iw = (j * d.stride_w + b) as isize - l as isize;
                            if ih < 0 || iw < 0 || ih >= d.in_h as isize || iw >= d.in_w as isize {
                                continue;
                            }
                            let xv =
                                x[(plane * d.in_h + ih as usize) * d.in_w + iw as usize] as f64;
                            acc += xv * w[(c * d.k_h + a) * d.k_w + b] as f64;
                        }
                    }
                    acc += bias[c] as f64;
                    if relu6 {
                        acc = acc.clamp(0.0, 6.0);
                    }
                    y[(plane * oh + i) * ow + j] = acc;
                }
            }
        }
    }
    y
}

#[test]
fn dwconv2d_relu6() {
    let dev = device_or_skip!();
    let mut rng = Rng::new(0xD3);
    let cases = [
        // 3x3 stride 1 "same"
        (
            DwConv2dDims {
                batch: 2,
                channels: 5,
                in_h: 17,
                in_w: 13,
                k_h: 3,
                k_w: 3,
                stride_h: 1,
                stride_w: 1,
                pad: (1, 1, 1, 1),
            },
            true,
        ),
        // 5x5 stride 2, TF-same asymmetric padding (1 top/left, 2 bottom/right)
        (
            DwConv2dDims {
                batch: 1,
                channels: 7,
                in_h: 28,
                in_w: 23,
                k_h: 5,
                k_w: 5,
                stride_h: 2,
                stride_w: 2,
                pad: (1, 2, 1, 2),
            },
            false,
        ),
        // 3x3 stride 2, padding only bottom/right
        (
            DwConv2dDims {
                batch: 3,
                channels: 4,
                in_h: 9,
                in_w: 10,
                k_h: 3,
                k_w: 3,
                stride_h: 2,
                stride_w: 2,
                pad: (0, 1, 0, 1),
            },
            true,
        ),
    ];
    for (d, relu6) in cases {
        let x = rng.normals(d.batch * d.channels * d.in_h * d.in_w, 2.0);
        let w = rng.normals(d.channels * d.k_h * d.k_w, 1.0);
        let b = rng.normals(d.channels, 1.0);
        let want = dwconv_ref(&x, &w, &b, d, relu6);
        let y = dwconv2d(&dev, &up(&dev, &x), &up(&dev, &w), &up(&dev, &b), d, relu6).unwrap();
        compare(
            &format!("dwconv2d {d:?} relu6={relu6}"),
            &down(&dev, &y),
            &want,
            TIGHT,
        );
    }
}

/// torch `F.interpolate(mode="bilinear", align_corners=False)` in f64 (same index rules).
fn resize_ref(
    x: &[f32],
    planes: usize,
    (ih, iw): (usize, usize),
    (oh, ow): (usize, usize),
) -> Vec<f64> {
    let src = |o: usize, scale: f64, n: usize| -> (usize, usize, f64) {
        let s = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
        let i0 = (s as usize).min(n - 1);
        let i1 = if i0 < n - 1 { i0 + 1 } else { i0 };
        (i0, i1, s - i0 as f64)
    };
    let (sh, sw) = (ih as f64 / oh as f64, iw as f64 / ow as f64);
    let mut y = vec![0.0; planes * oh * ow];
    for p in 0..planes {
        let xp = &x[p * ih * iw..(p + 1) * ih * iw];
        for i in 0..oh {
            let (y0, y1, ly) = src(i, sh, ih);
            for j in 0..ow {
                let (x0, x1, lx) = src(j, sw, iw);
                let v = |r: usize, c: usize| xp[r * iw + c] as f64;
                y[(p * oh + i) * ow + j] = (1.0 - ly) * ((1.0 - lx) * v(y0, x0) + lx * v(y0, x1))
                    + ly * ((1.0 - lx) * v(y1, x0) + lx * v(y1, x1));
            }
        }
    }
    y
}

#[test]
fn resize_bilinear_torch() {
    let dev = device_or_skip!();
    let mut rng = Rng::new(0x2E5);
    for &(planes, inp, out) in &[
        (3, (14, 14), (224, 224)),
        (2, (28, 28), (224, 224)),
        (4, (17, 9), (5, 31)),
        (1, (1, 1), (3, 2)),
    ] {
        let x = rng.normals(planes * inp.0 * inp.1, 1.0);
        let want = resize_ref(&x, planes, inp, out);
        let y = resize_bilinear(&dev, &up(&dev, &x), planes, inp, out).unwrap();
        compare(
            &format!("resize_bilinear {inp:?}->{out:?}"),
            &down(&dev, &y),
            &want,
            Tol {
                atol: 2e-5,
                rtol: 1e-5,
                nmse: 1e-10,
            },
        );
    }
}

/// scipy 'reflect' by explicit folding (independent of the kernel's modulo formula).
fn reflect(mut i: isize, n: usize) -> usize {
    let n = n as isize;
    loop {
        if i < 0 {
            i = -i - 1;
        } else if i >= n {
            i = 2 * n - 1 - i;
        } else {
            return i as usize;
        }
    }
}

fn blur_ref(x: &[f32], planes: usize, h: usize, w: usize, taps: &[f32]) -> Vec<f64> {
    let r = (taps.len() / 2) as isize;
    let mut tmp = vec![0.0f64; x.len()];
    let mut out = vec![0.0f64; x.len()];
    for p in 0..planes {
        let base = p * h * w;
        for i in 0..h {
            for j in 0..w {
                tmp[base + i * w + j] = (-r..=r)
                    .map(|t| {
                        taps[(t + r) as usize] as f64
                            * x[base + reflect(i as isize + t, h) * w + j] as f64
                    })
                    .sum();
            }
        }
        for i in 0..h {
            for j in 0..w {
                out[base + i * w + j] = (-r..=r)
                    .map(|t| {
                        taps[(t + r) as usize] as f64
                            * tmp[base + i * w + reflect(j as isize + t, w)]
                    })
                    .sum();
            }
        }
    }
    out
}

#[test]
fn gaussian_blur_reflect() {
    let dev = device_or_skip!();
    let mut rng = Rng::new(0xB10);
    let taps = gaussian_taps(4.0, 4.0);
    assert_eq!(taps.len(), 33);
    // 5x7 is smaller than the radius (16): indices fold several times
    for &(planes, h, w, sigma) in &[
        (2, 224, 224, 4.0),
        (3, 57, 31, 4.0),
        (2, 5, 7, 4.0),
        (1, 30, 20, 1.5),
    ] {
        let x: Vec<f32> = (0..planes * h * w).map(|_| rng.range(0.0, 1.0)).collect();
        let want = blur_ref(&x, planes, h, w, &gaussian_taps(sigma, 4.0));
        let y = gaussian_blur(&dev, &up(&dev, &x), planes, h, w, sigma).unwrap();
        compare(
            &format!("gaussian_blur {planes}x{h}x{w} sigma{sigma}"),
            &down(&dev, &y),
            &want,
            Tol {
                atol: 1e-5,
                rtol: 1e-5,
                nmse: 1e-10,
            },
        );
    }
}

#[test]
fn row_selection() {
    let dev = device_or_skip!();
    let mut rng = Rng::new(0x5E1);
    let (rows, cols) = (53, 37);
    let x = rng.normals(rows * cols, 1.0);
    let token = rng.normals(cols, 1.0);
    let mask: Vec<u32> = (0..rows).map(|_| (rng.below(3) == 0) as u32).collect();
    let want: Vec<f64> = (0..rows * cols)
        .map(|i| {
            let (r, c) = (i / cols, i % cols);
            f64::from(if mask[r] != 0 { token[c] } else { x[i] })
        })
        .collect();
    let xd = up(&dev, &x);
    let y = mask_rows(
        &dev,
        &xd,
        &dev.upload(&mask).unwrap(),
        &up(&dev, &token),
        rows,
        cols,
    );
    compare("mask_rows 53x37", &down(&dev, &y.unwrap()), &want, TIGHT);
    // Repeats, any order, and one index past the end (reads as zeros).
    let idx: Vec<u32> = vec![52, 0, 7, 7, 30, rows as u32, 1];
    let xs = &x;
    let want: Vec<f64> = idx
        .iter()
        .flat_map(|&r| {
            (0..cols).map(move |c| {
                if (r as usize) < rows {
                    xs[r as usize * cols + c] as f64
                } else {
                    0.0
                }
            })
        })
        .collect();
    let y = gather_rows(&dev, &xd, &dev.upload(&idx).unwrap(), rows, cols).unwrap();
    compare("gather_rows 7 of 53", &down(&dev, &y), &want, TIGHT);
}

/// The emulated device's cuBLAS (the CPU GEMM) reads the configuration as cuBLAS does and
/// refuses one that leaves the buffers (on a GPU: an out-of-bounds read), instead of reading
/// past them. Emulated device only: on a GPU such a call is undefined behaviour.
#[test]
fn sgemm_emulated_checks_bounds() {
    use cudarc::cublas::GemmConfig;
    use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
    use pmad::cuda::linear::{Sgemm, sgemm};
    let dev = device_or_skip!();
    if !dev.is_emulated() {
        println!("skipped: emulated device only");
        return;
    }
    // Column-major C [2 x 3] = A^T [2 x 4] . B [4 x 3] with padded leading dimensions.
    let (m, n, k, lda, ldb, ldc) = (2usize, 3usize, 4usize, 5usize, 6usize, 3usize);
    let a: Vec<f32> = (0..lda * m).map(|i| i as f32 * 0.5 - 1.0).collect();
    let b: Vec<f32> = (0..ldb * n).map(|i| 2.0 - i as f32 * 0.25).collect();
    let cfg = |lda: usize| GemmConfig {
        transa: CUBLAS_OP_T,
        transb: CUBLAS_OP_N,
        m: m as i32,
        n: n as i32,
        k: k as i32,
        alpha: 1.5f32,
        lda: lda as i32,
        ldb: ldb as i32,
        beta: 0.0f32,
        ldc: ldc as i32,
    };
    let (ad, bd) = (up(&dev, &a), up(&dev, &b));
    let mut cd = dev.zeros::<f32>(ldc * n).unwrap();
    // SAFETY: on the emulated device sgemm checks the configuration against the buffers.
    unsafe { sgemm(&dev, Sgemm::One(cfg(lda)), &ad, &bd, &mut cd) }.unwrap();
    let c = down(&dev, &cd);
    for j in 0..n {
        for i in 0..m {
            let want: f64 = (0..k)
                .map(|l| a[l + i * lda] as f64 * b[l + j * ldb] as f64)
                .sum::<f64>()
                * 1.5;
            let got = c[i + j * ldc] as f64;
            assert!(
                (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                "C[{i},{j}] {got} vs {want}"
            );
        }
    }
    // lda below the stored row count (k for a transposed A): cuBLAS' invalid value.
    let err = unsafe { sgemm(&dev, Sgemm::One(cfg(3)), &ad, &bd, &mut cd) }.unwrap_err();
    assert!(err.to_string().contains("A: ld 3 < 4 rows"), "{err}");
    // A buffer too short for its leading dimension.
    let short = up(&dev, &a[..lda * m - 2]);
    let err = unsafe { sgemm(&dev, Sgemm::One(cfg(lda)), &short, &bd, &mut cd) }.unwrap_err();
    assert!(
        err.to_string()
            .contains("reads 9 elements of a buffer of 8"),
        "{err}"
    );
}

#[test]
fn linear_cublas() {
    let dev = device_or_skip!();
    let mut rng = Rng::new(0x11E);
    for (rows, inp, out) in [(1, 1, 1), (37, 19, 23), (196 * 3, 192, 576), (5, 768, 1003)] {
        let x = rng.normals(rows * inp, 1.0);
        let w = rng.normals(out * inp, 0.1);
        let b = rng.normals(out, 1.0);
        let res = rng.normals(rows * out, 1.0);
        let want: Vec<f64> = (0..rows * out)
            .map(|i| {
                let (r, o) = (i / out, i % out);
                let dot: f64 = (0..inp)
                    .map(|k| x[r * inp + k] as f64 * w[o * inp + k] as f64)
                    .sum();
                dot + b[o] as f64 + res[i] as f64
            })
            .collect();
        let (xd, wd, bd, rd) = (up(&dev, &x), up(&dev, &w), up(&dev, &b), up(&dev, &res));
        let y = linear(&dev, &xd, &wd, &bd, Some(&rd), rows, inp, out).unwrap();
        // f32 GEMM with K up to 768: accumulation-order error ~ sqrt(K) ulp of |x||w|.
        let tol = Tol {
            atol: 1e-4,
            rtol: 1e-4,
            nmse: 1e-9,
        };
        compare(
            &format!("linear {rows}x{inp}->{out}"),
            &down(&dev, &y),
            &want,
            tol,
        );
    }
}

/// End to end: the ViT's entropy and own-token cross-entropy on the GPU vs the CPU model
/// (`pmad::recon::vit`, itself gradchecked), for an encoder-only and an encoder + decoder
/// model, with a ragged batch and masks of different sizes per image.
#[test]
fn vit_token_uncertainty() {
    use pmad::backend::CudaOps;
    use pmad::recon::vit::{Vit, VitConfig};
    use pmad::recon::vit_infer::InferVit;
    let dev = device_or_skip!();
    let mut rng = Rng::new(0x717);
    for (decoder_depth, vocab, batch) in [(0, 97, 3), (2, 1000, 5)] {
        let config = VitConfig {
            image_size: 224,
            patch: 16,
            width: 96,
            depth: 2,
            decoder_depth,
            heads: 3,
            mlp: 160,
            vocab,
            input_dim: 0,
        };
        let mut vit = Vit::new(config.clone(), 7).unwrap();
        // The init (std 0.02) gives near-uniform predictions whose entropy hardly depends on
        // the inner layers; wider weights make every layer count.
        let ids: Vec<_> = vit.params().ids().collect();
        for id in ids {
            for v in vit.params_mut().values_mut(id) {
                *v = rng.normal() * 0.15;
            }
        }
        let n = config.patches();
        let images = rng.normals(batch * config.image_len(), 1.0);
        let mask: Vec<bool> = (0..batch * n)
            .map(|i| rng.below(10) < 1 + (i / n) * 2)
            .collect();
        let tokens: Vec<u32> = (0..batch * n).map(|_| rng.below(vocab) as u32).collect();
        let (e_cpu, c_cpu) = vit
            .token_uncertainty(&images, &mask, Some(&tokens))
            .unwrap();
        let gpu = InferVit::new(CudaOps::new(dev.clone()), &vit).unwrap();
        let (e_gpu, c_gpu) = gpu
            .token_uncertainty(&images, &mask, Some(&tokens))
            .unwrap();
        // Both sides are f32 with different summation orders through ~10 layers.
        let tol = Tol {
            atol: 2e-4,
            rtol: 2e-4,
            nmse: 1e-8,
        };
        let name = format!("vit decoder {decoder_depth} vocab {vocab} batch {batch}");
        compare(&format!("{name} entropy"), &e_gpu, &f64s(&e_cpu), tol);
        compare(
            &format!("{name} cross-entropy"),
            &c_gpu.unwrap(),
            &f64s(&c_cpu.unwrap()),
            tol,
        );
    }
}

#[test]
fn backbone_glue() {
    let dev = device_or_skip!();
    let mut rng = Rng::new(0xBB0);
    // im2col with the stem's kernel and stride, a padded top edge and an unpadded left one.
    let d = Im2colDims {
        batch: 2,
        channels: 3,
        in_h: 37,
        in_w: 29,
        out_h: 19,
        out_w: 15,
        k_h: 3,
        k_w: 3,
        stride: 2,
        pad_top: 1,
        pad_left: 0,
    };
    let x = rng.normals(d.batch * d.channels * d.in_h * d.in_w, 1.0);
    let mut want = vec![0.0f64; d.col_numel()];
    let ohw = d.out_h * d.out_w;
    for (i, w) in want.iter_mut().enumerate() {
        let (p, r, b) = (i % ohw, (i / ohw) % 27, i / (ohw * 27));
        let (c, a, bb) = (r / 9, (r / 3) % 3, r % 3);
        let iy = (p / d.out_w * 2 + a) as isize - 1;
        let ix = (p % d.out_w * 2 + bb) as isize;
        if iy >= 0 && (iy as usize) < d.in_h && (ix as usize) < d.in_w {
            *w = x[((b * 3 + c) * d.in_h + iy as usize) * d.in_w + ix as usize] as f64;
        }
    }
    let col = im2col(&dev, &up(&dev, &x), d).unwrap();
    compare("im2col 2x3x37x29 k3 s2", &down(&dev, &col), &want, TIGHT);
    // bias + ReLU6 + skip, over NCHW.
    let (n, c, plane) = (3, 7, 53);
    let x = rng.normals(n * c * plane, 4.0);
    let bias = rng.normals(c, 1.0);
    let res = rng.normals(n * c * plane, 1.0);
    let want: Vec<f64> = (0..n * c * plane)
        .map(|i| ((x[i] + bias[(i / plane) % c]) as f64).clamp(0.0, 6.0) + res[i] as f64)
        .collect();
    let (xd, bd, rd) = (up(&dev, &x), up(&dev, &bias), up(&dev, &res));
    let y = bias_act_nchw(&dev, &xd, &bd, Some(&rd), n, c, plane, true).unwrap();
    compare("bias_act_nchw relu6 + skip", &down(&dev, &y), &want, TIGHT);
    // 3x3 average pooling, count_include_pad=False.
    let (planes, h, w) = (5, 28, 23);
    let x = rng.normals(planes * h * w, 1.0);
    let mut want = vec![0.0f64; planes * h * w];
    for p in 0..planes {
        for i in 0..h {
            for j in 0..w {
                let (mut s, mut cnt) = (0.0, 0.0);
                for yy in i.saturating_sub(1)..=(i + 1).min(h - 1) {
                    for xx in j.saturating_sub(1)..=(j + 1).min(w - 1) {
                        s += x[(p * h + yy) * w + xx] as f64;
                        cnt += 1.0;
                    }
                }
                want[(p * h + i) * w + j] = s / cnt;
            }
        }
    }
    let y = avg_pool(&dev, &up(&dev, &x), planes, h, w, 3).unwrap();
    compare("avg_pool 5x28x23 k3", &down(&dev, &y), &want, TIGHT);
    // A tap's channels into columns 4..9 of 11-wide rows; other columns untouched.
    let (b, c, plane, width, off) = (2, 5, 13, 11, 4);
    let x = rng.normals(b * c * plane, 1.0);
    let mut rows = up(&dev, &vec![7.0; b * plane * width]);
    nchw_to_rows(&dev, &up(&dev, &x), &mut rows, b, c, plane, width, off).unwrap();
    let want: Vec<f64> = (0..b * plane * width)
        .map(|i| {
            let (r, col) = (i / width, i % width);
            if (off..off + c).contains(&col) {
                x[((r / plane) * c + col - off) * plane + r % plane] as f64
            } else {
                7.0
            }
        })
        .collect();
    compare("nchw_to_rows", &down(&dev, &rows), &want, TIGHT);
}

#[test]
fn pointwise_conv_cublas() {
    let dev = device_or_skip!();
    let mut rng = Rng::new(0x1C0);
    // Ragged, then the stem's im2col GEMM (27 -> 32 over 112²).
    for (batch, c_in, c_out, plane) in [(3, 17, 23, 29), (2, 27, 32, 112 * 112)] {
        let x = rng.normals(batch * c_in * plane, 1.0);
        let w = rng.normals(c_out * c_in, 0.3);
        let want: Vec<f64> = (0..batch * c_out * plane)
            .map(|i| {
                let (p, o, b) = (i % plane, (i / plane) % c_out, i / (plane * c_out));
                (0..c_in)
                    .map(|c| w[o * c_in + c] as f64 * x[(b * c_in + c) * plane + p] as f64)
                    .sum()
            })
            .collect();
        let y = pointwise_conv(
            &dev,
            &up(&dev, &x),
            &up(&dev, &w),
            batch,
            c_in,
            c_out,
            plane,
        );
        let tol = Tol {
            atol: 1e-4,
            rtol: 1e-4,
            nmse: 1e-9,
        };
        let name = format!("pointwise_conv {batch}x{c_in}->{c_out} x{plane}");
        compare(&name, &down(&dev, &y.unwrap()), &want, tol);
    }
}

/// End to end: the GPU feature extraction (backbone + PaDiM pooling) vs the CPU one — the
/// same extraction (`pmad::models::efficientnet_infer`) on the two op sets — on the real
/// pretrained weights (skipped when they were not fetched): the default spec at 224, and the
/// features the GPU used to refuse (inner and projected taps, the stem, `per-image` and
/// `both` input normalisation) at 64.
#[test]
fn backbone_features() {
    use pmad::backend::CudaOps;
    use pmad::detector::features::InputNorm;
    use pmad::detector::{FeatureExtractor, FeatureSpec};
    use pmad::models::EfficientNetLite0;
    use pmad::models::efficientnet::{WEIGHTS_FILE, default_weights_dir};
    use pmad::models::efficientnet_infer::InferFeatures;
    let dev = device_or_skip!();
    let path = default_weights_dir().join(WEIGHTS_FILE);
    if !path.is_file() {
        assert!(
            !pmad::cuda::gpu_required(),
            "{} is set but the backbone weights are missing: {}",
            pmad::cuda::REQUIRE_GPU_VAR,
            path.display()
        );
        println!("skipped: no backbone weights at {}", path.display());
        return;
    }
    let net = Arc::new(EfficientNetLite0::load(&path).unwrap());
    let spec = |taps: &[&str], size, norm| FeatureSpec {
        taps: taps.iter().map(|t| t.to_string()).collect(),
        input_size: size,
        input_norm: norm,
        ..FeatureSpec::default()
    };
    let cases = [
        (
            spec(&["blocks.4", "blocks.10"], 224, InputNorm::Imagenet),
            3,
        ),
        (
            spec(
                &["blocks.3.expand", "blocks.4.dw:16", "stem", "blocks.5"],
                64,
                InputNorm::PerImage,
            ),
            2,
        ),
        (
            spec(&["blocks.4", "blocks.10.dw:32"], 64, InputNorm::Both),
            2,
        ),
    ];
    let mut rng = Rng::new(0xFEA7);
    for (sp, batch) in cases {
        let name = format!(
            "backbone features {:?} {:?} {batch}x{}",
            sp.taps, sp.input_norm, sp.input_size
        );
        let s = sp.input_size;
        let fx = FeatureExtractor::new(net.clone(), sp).unwrap();
        let x = rng.normals(batch * 3 * s * s, 1.0);
        let cpu = fx
            .extract(&pmad::Tensor::new(x.clone(), &[batch, 3, s, s]).unwrap())
            .unwrap()
            .into_f32_vec();
        let gpu = InferFeatures::new(CudaOps::new(dev.clone()), &fx).unwrap();
        let rows = gpu.extract(&x, batch).unwrap();
        // Up to 11 blocks of f32 convs with different summation orders (cuBLAS vs the CPU
        // GEMM).
        let tol = Tol {
            atol: 2e-3,
            rtol: 2e-3,
            nmse: 1e-8,
        };
        compare(&name, &down(&dev, &rows), &f64s(&cpu), tol);
    }
}

#[test]
fn modules_load() {
    let dev = device_or_skip!();
    dev.load_all().unwrap();
    for m in pmad::cuda::KernelModule::ALL {
        for name in m.kernels() {
            dev.check_kernel(m, name).unwrap();
        }
    }
    println!("{dev:?}: all modules loaded");
}

// ------------------------------------------------------------- portability (no GPU needed)

/// The runtime check accepts every GPU the PTX supports and names the reason otherwise.
#[test]
fn support_rules() {
    use pmad::cuda::device::{capability_problem, driver_problem, support_problem};
    use pmad::cuda::ptx::{BASE_ARCH, PTX_ISA, PTX_ISA_MIN_DRIVER};
    assert_eq!(BASE_ARCH, 75, "the f32 kernels target compute_75");
    assert_eq!(PTX_ISA, (8, 0));
    assert_eq!(PTX_ISA_MIN_DRIVER, 12000);
    // T4, A100, A10/RTX 30xx, Orin, L4/RTX 40xx, H100/H200, Blackwell: all accepted on any
    // CUDA 12 or 13 driver.
    for cc in [
        (7, 5),
        (8, 0),
        (8, 6),
        (8, 7),
        (8, 9),
        (9, 0),
        (10, 0),
        (12, 0),
    ] {
        for driver in [12000, 12020, 12090, 13000] {
            assert_eq!(
                support_problem(driver, cc),
                None,
                "cc {cc:?}, driver {driver}"
            );
        }
    }
    // Below Turing: the reason names the capability and the floor.
    for cc in [(6, 1), (7, 0), (7, 2)] {
        let why = capability_problem(cc).expect("refused");
        assert!(
            why.contains(&format!("{}.{}", cc.0, cc.1)) && why.contains("7.5"),
            "{why}"
        );
    }
    // A CUDA 11.8 driver cannot JIT PTX ISA 8.0: the reason names both versions.
    let why = driver_problem(11080).expect("refused");
    assert!(
        why.contains("CUDA 11.8") && why.contains("ISA 8.0") && why.contains("CUDA 12.0"),
        "{why}"
    );
    // The driver is checked first: it is what an operator must change.
    assert_eq!(support_problem(11080, (6, 1)), Some(why));
}

/// Every module's PTX variant declares the ISA and target the runtime check assumes, and every
/// module has a variant for the base capability (no kernel needs more than Turing today).
#[test]
fn ptx_variants_are_portable() {
    use pmad::cuda::KernelModule;
    use pmad::cuda::ptx::{BASE_ARCH, PTX_ISA};
    let version = format!(".version {}.{}", PTX_ISA.0, PTX_ISA.1);
    for m in KernelModule::ALL {
        let variants = m.ptx();
        assert!(!variants.is_empty(), "{}: no PTX", m.name());
        assert!(
            variants.windows(2).all(|w| w[0].0 < w[1].0),
            "{}: variants not sorted",
            m.name()
        );
        for (arch, text) in variants {
            assert!(
                text.lines().any(|l| l.trim() == version),
                "{} compute_{arch}: no `{version}` line",
                m.name()
            );
            assert!(
                text.lines()
                    .any(|l| l.trim() == format!(".target sm_{arch}")),
                "{} compute_{arch}: wrong .target",
                m.name()
            );
            assert!(
                !text.contains("used_bytes_mask"),
                "{}: ISA 8.3 hint left in",
                m.name()
            );
        }
        // The runtime choice: the highest variant not above the GPU, else a named refusal.
        assert_eq!(
            variants[0].0,
            BASE_ARCH,
            "{} needs more than Turing",
            m.name()
        );
        assert_eq!(m.ptx_for((7, 5)).unwrap(), variants[0].1);
        assert_eq!(m.ptx_for((9, 0)).unwrap(), variants.last().unwrap().1);
        let err = m.ptx_for((6, 1)).unwrap_err().to_string();
        assert!(err.contains(m.name()) && err.contains("6.1"), "{err}");
    }
}
