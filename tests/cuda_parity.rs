//! CUDA kernels vs the CPU ops, one test per op family (the names match `kernels/<op>.cu`).
//!
//! Every test feeds the same seeded inputs, with ragged shapes (not multiples of any block or
//! tile size), to a launcher of `pmad::cuda` and to its CPU twin in the crate — the op of
//! `src/ops/` the CPU path runs, `CpuOps` for the row copies, the flow's `affine_coupling`
//! (its gradients through the autograd tape) and `proposal_mask` — then checks
//! `|gpu - cpu| <= atol + rtol * |cpu|` element-wise and NMSE = sum (gpu-cpu)^2 / sum cpu^2,
//! printing the worst index and how much of the tolerance the worst element used. Both sides
//! round in f32; the tolerances are those the kernels had against exact (f64) references, and
//! the CPU ops' own distance from such references uses at most a fifth of any of them.
//!
//! A few expectations are written out, each with a comment saying why: where the kernel
//! guarantees what the CPU op cannot express (`gather_rows`' zero row for an index past the
//! end, `entropy`'s zero cross-entropy for a row without a target and its finite entropy for
//! a row with a `-inf` logit, the emulated cuBLAS' leading dimensions), and `proto_nn`'s
//! exact ties.
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

use pmad::Tensor;
use pmad::autograd::Tape;
use pmad::backend::Precision::{Bf16, F32};
use pmad::backend::{ConvOps, CpuOps, InferOps};
use pmad::cuda::attention::{AttentionDims, attention_fwd};
use pmad::cuda::coupling::{coupling_bwd, coupling_fwd};
use pmad::cuda::entropy::entropy_fwd;
use pmad::cuda::glue::{
    DwConv2dDims, Im2colDims, avg_pool, bias_act_nchw, bias_residual_add, dwconv2d, gather_rows,
    gaussian_blur, gaussian_taps, gelu_fwd, im2col, layernorm_fwd, mask_rows, nchw_to_rows,
    resize_bilinear,
};
use pmad::cuda::linear::{linear, pointwise_conv};
use pmad::cuda::proto_nn::proto_nn;
use pmad::cuda::topk_mask::{topk_count, topk_mask};
use pmad::cuda::{CudaDevice, CudaError, CudaSlice};
use pmad::detector::flow::affine_coupling;
use pmad::ops::attention::{AttnShape, attention_forward};
use pmad::ops::blur::gaussian_kernel;
use pmad::ops::conv::{Activation, ConvShape, Padding, conv2d_into};
use pmad::ops::elementwise::{add, gelu_inplace, relu6};
use pmad::ops::layernorm::layernorm_rows;
use pmad::ops::matmul::linear_rows;
use pmad::ops::nn_search::{nearest_rows, row_sq_norms};
use pmad::ops::pool::avg_pool_plane;
use pmad::ops::resize::bilinear_plane;
use pmad::ops::softmax::{entropy_rows, logsumexp, softmax_rows};
use pmad::ops::topk::topk_rows;
use pmad::recon::masking::proposal_mask;

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

/// Element-wise `|g - r| <= atol + rtol |r|` plus NMSE, in f64, of the GPU result `got`
/// against the CPU result `want` (f32, or f64 for a written-out expectation); prints a summary
/// and the worst index. Non-finite expectations must be matched exactly (same infinity, or NaN
/// for NaN).
fn compare<W: Copy + Into<f64>>(name: &str, got: &[f32], want: &[W], tol: Tol) {
    assert_eq!(got.len(), want.len(), "{name}: length mismatch");
    let (mut fails, mut worst, mut worst_excess) = (0usize, 0usize, f64::NEG_INFINITY);
    let (mut num, mut den, mut max_abs, mut used) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let (g, w): (f64, f64) = (g.into(), w.into());
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
        let allowed = tol.atol + tol.rtol * w.abs();
        let excess = err - allowed;
        if err > 0.0 {
            used = used.max(err / allowed);
        }
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
        (got[worst], want[worst].into())
    };
    println!(
        "{name}: n={} max|err|={max_abs:.3e} nmse={nmse:.3e} tol-used={:.0}% worst[{worst}] got={wg:e} ref={ww:e} fails={fails}",
        got.len(),
        100.0 * used
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

/// A CPU-side tensor of the given values.
fn tensor(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::new(v.to_vec(), shape).expect("tensor shape")
}

// ----------------------------------------------------------------------------- attention

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
        let q = rng.normals(d.numel(), 1.0);
        let k = rng.normals(d.numel(), 1.0);
        let v = rng.normals(d.numel(), 1.0);
        // The CPU op (scale 1/√D, like the launcher's default).
        let s = AttnShape {
            batch,
            tokens: seq,
            heads,
            head_dim,
        };
        let (mut o_cpu, mut lse_cpu) = (vec![0.0; d.numel()], vec![0.0; d.stat_numel()]);
        attention_forward(&q, &k, &v, s, &mut o_cpu, &mut lse_cpu);

        let (qd, kd, vd) = (up(&dev, &q), up(&dev, &k), up(&dev, &v));
        let (o, lse) = attention_fwd(&dev, &qd, &kd, &vd, d, None).unwrap();
        let tag = format!("attention B{batch} N{seq} H{heads} D{head_dim}");
        let fwd_tol = Tol {
            atol: 2e-5,
            rtol: 1e-4,
            nmse: 1e-9,
        };
        compare(&format!("{tag} o"), &down(&dev, &o), &o_cpu, fwd_tol);
        compare(&format!("{tag} lse"), &down(&dev, &lse), &lse_cpu, fwd_tol);
    }
}

/// The tensor-core forward (`--precision bf16`) against the CPU op, on ragged shapes (N not a
/// multiple of the 64-key tile, D < 64 zero-padded). Two references: the CPU op on q, k, v
/// rounded to bf16 first (what the kernel reads), where only the rounding of the softmax
/// weights to bf16 is left (<= 2^-9 relative each); and on the f32 inputs, where bf16's
/// rounding of every operand adds about 2^-8 |v|.
#[test]
fn attention_tensor_cores() {
    use pmad::backend::bf16_bits;
    use pmad::cuda::attention::attention_fwd_tc;
    let dev = device_or_skip!();
    if !dev.is_emulated() && dev.compute_capability() < (8, 0) {
        println!("attention_tensor_cores: skipped (compute capability < 8.0)");
        return;
    }
    let round = |v: &[f32]| -> Vec<f32> {
        v.iter()
            .map(|&x| f32::from_bits(u32::from(bf16_bits(x)) << 16))
            .collect()
    };
    let mut rng = Rng::new(0x7C47);
    for &(batch, seq, heads, head_dim) in &[
        (2, 37, 3, 64),
        (1, 196, 2, 64),
        (2, 70, 2, 40),
        (1, 1, 1, 64),
        (1, 130, 1, 16),
    ] {
        let d = AttentionDims {
            batch,
            seq,
            heads,
            head_dim,
        };
        let s = AttnShape {
            batch,
            tokens: seq,
            heads,
            head_dim,
        };
        let q = rng.normals(d.numel(), 1.0);
        let k = rng.normals(d.numel(), 1.0);
        let v = rng.normals(d.numel(), 1.0);
        let cpu = |q: &[f32], k: &[f32], v: &[f32]| {
            let (mut o, mut lse) = (vec![0.0; d.numel()], vec![0.0; d.stat_numel()]);
            attention_forward(q, k, v, s, &mut o, &mut lse);
            o
        };
        let o = down(
            &dev,
            &attention_fwd_tc(&dev, &up(&dev, &q), &up(&dev, &k), &up(&dev, &v), d, None).unwrap(),
        );
        let tag = format!("attention_tc B{batch} N{seq} H{heads} D{head_dim}");
        let rounded_in = cpu(&round(&q), &round(&k), &round(&v));
        let tight = Tol {
            atol: 2e-3,
            rtol: 1e-2,
            nmse: 1e-5,
        };
        compare(
            &format!("{tag} vs CPU on bf16 inputs"),
            &o,
            &rounded_in,
            tight,
        );
        let loose = Tol {
            atol: 1e-2,
            rtol: 2e-2,
            nmse: 1e-4,
        };
        compare(&format!("{tag} vs CPU f32"), &o, &cpu(&q, &k, &v), loose);
    }
    // Over 64: refused with a message, not run wrong.
    let d = AttentionDims {
        batch: 1,
        seq: 3,
        heads: 1,
        head_dim: 80,
    };
    let x = up(&dev, &vec![0.0; d.numel()]);
    let err = attention_fwd_tc(&dev, &x, &x, &x, d, None).unwrap_err();
    assert!(err.to_string().contains("head_dim 80"), "{err}");
}

// ------------------------------------------------------------------------------ proto_nn

/// Checks GPU (idx, dist) against the CPU search, `nearest_rows` (the `|q|² - 2 q·p + |p|²`
/// expansion the CPU path runs), over the same f32 bank. A different index is accepted only
/// when the CPU's distance to it is within the distance tolerance of the CPU's minimum (a
/// near tie the two summation orders may break differently).
fn check_nn(name: &str, queries: &[f32], bank: &[f32], dim: usize, idx: &[u32], dist: &[f32]) {
    // f32 on both sides, the kernel's difference form Σ (q-p)² and the CPU's expansion: a few
    // ulp of |q|² + |p|² (~300 at D = 152) apart.
    let tol = Tol {
        atol: 1e-4,
        rtol: 1e-5,
        nmse: 1e-10,
    };
    let (q, p) = (queries.len() / dim, bank.len() / dim);
    let cpu = nearest_rows(queries, bank, &row_sq_norms(bank, dim), dim);
    let mut mismatched = 0;
    for i in 0..q {
        let (gi, ci) = (idx[i] as usize, cpu.index[i] as usize);
        assert!(
            gi < p,
            "{name}: query {i}: index {gi} out of range (P = {p})"
        );
        if gi != ci {
            mismatched += 1;
            let (query, row) = (&queries[i * dim..][..dim], &bank[gi * dim..][..dim]);
            let dg = nearest_rows(query, row, &row_sq_norms(row, dim), dim).dist2[0] as f64;
            let best = cpu.dist2[i] as f64;
            assert!(
                dg <= best + tol.atol + tol.rtol * best,
                "{name}: query {i}: gpu index {gi} (dist {dg}) vs cpu {ci} (dist {best})"
            );
        }
    }
    println!("{name}: {mismatched} near-tie index differences out of {q}");
    compare(&format!("{name} dist"), dist, &cpu.dist2, tol);
}

#[test]
fn proto_nn_f32() {
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
        let (idx, dist) = proto_nn(&dev, &qd, &bd, nq, np, dim).unwrap();
        let name = format!("proto_nn f32 Q{nq} P{np} D{dim}");
        let (idx, dist) = (down(&dev, &idx), down(&dev, &dist));
        check_nn(&name, &queries, &bank, dim, &idx, &dist);
    }
}

/// Exact ties, written out: the kernel's difference form gives exactly 0 for a query equal to
/// a prototype (the CPU's expansion need not), and the lower of two equal prototypes wins.
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
    let (idx, dist) = proto_nn(&dev, &qd, &bd, picks.len(), np, dim).unwrap();
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

/// The bf16 tensor-core search (`proto_nn_tc`) returns exactly what the f32 kernel returns
/// (indices and distances bit for bit) on ragged shapes, several query chunks, banks of 16
/// prototypes or fewer (no bound needed) and one over (the 17th is the bound), exact ties
/// (lowest index), clustered banks whose near ties defeat the certificate (the f32 rescan)
/// and a NaN query (no finite candidate: index u32::MAX, distance NaN, as the f32 kernel).
#[test]
fn proto_nn_tensor_cores_exact() {
    use pmad::cuda::proto_nn::proto_nn_tc;
    let dev = device_or_skip!();
    let mut rng = Rng::new(0x7C);
    // (name, queries, dim, query rows, bank rows)
    type Case = (String, usize, usize, Vec<f32>, Vec<f32>);
    let mut cases: Vec<Case> = Vec::new();
    for &(nq, np, dim) in &[
        (300, 1000, 152),
        (129, 257, 37),
        (5, 3, 1),
        (40, 16, 8),
        (40, 17, 8),
    ] {
        let q = rng.normals(nq * dim, 1.0);
        let b = rng.normals(np * dim, 1.0);
        cases.push((format!("random Q{nq} P{np} D{dim}"), nq, dim, q, b));
    }
    // Clustered: prototypes = 40 centres + tiny noise, queries near the centres: many
    // prototypes within the bf16 error of the nearest, so certificates fail and rows rescan.
    let (dim, centres) = (64, 40);
    let c = rng.normals(centres * dim, 3.0);
    let mut b = Vec::new();
    for i in 0..1200 {
        let k = i % centres;
        b.extend((0..dim).map(|d| c[k * dim + d] + 1e-3 * rng.normal()));
    }
    let mut q = Vec::new();
    for i in 0..200 {
        let k = (i * 7) % centres;
        q.extend((0..dim).map(|d| c[k * dim + d] + 1e-3 * rng.normal()));
    }
    // exact ties: prototype 1100 + j duplicates prototype j; two queries equal to them; a NaN query
    for j in 0..50 {
        b.copy_within(j * dim..(j + 1) * dim, (1100 + j) * dim);
    }
    q[..dim].copy_from_slice(&b[3 * dim..4 * dim]);
    q[dim..2 * dim].copy_from_slice(&b[1120 * dim..1121 * dim]);
    q[5 * dim + 7] = f32::NAN;
    cases.push(("clustered, ties, a NaN query".into(), 200, dim, q, b));

    for (name, nq, dim, q, b) in cases {
        let np = b.len() / dim;
        let (qd, bd) = (up(&dev, &q), up(&dev, &b));
        let (wi, wd) = proto_nn(&dev, &qd, &bd, nq, np, dim).unwrap();
        let (gi, gd, rescans) = proto_nn_tc(&dev, &qd, &bd, nq, np, dim).unwrap();
        let (wi, wd, gi, gd) = (
            down(&dev, &wi),
            down(&dev, &wd),
            down(&dev, &gi),
            down(&dev, &gd),
        );
        let rescans = down(&dev, &rescans)[0];
        for i in 0..nq {
            assert_eq!(gi[i], wi[i], "{name}: query {i}: index");
            assert_eq!(
                gd[i].to_bits(),
                wd[i].to_bits(),
                "{name}: query {i}: distance"
            );
        }
        println!(
            "proto_nn_tc {name}: {nq} queries equal to proto_nn f32 bit for bit, {rescans} rescanned in f32"
        );
        if name.starts_with("clustered") {
            assert!(
                rescans > 0,
                "{name}: the near ties should defeat some certificates"
            );
            assert_eq!(gi[0], 3, "{name}: tie to the lower index");
            assert_eq!(gi[1], 1120 - 1100, "{name}: tie to the lower index");
            assert_eq!(
                (gi[5], gd[5].is_nan()),
                (u32::MAX, true),
                "{name}: NaN query"
            );
        } else if np > 16 {
            assert!(rescans < nq as i32, "{name}: some certificates should hold");
        }
    }
}

// ------------------------------------------------------------------------------ topk_mask

/// 0/1 flags of the chosen indices of each row of `n`.
fn flags(chosen: &[Vec<usize>], n: usize) -> Vec<f32> {
    let mut out = vec![0.0; chosen.len() * n];
    for (r, idx) in chosen.iter().enumerate() {
        for &i in idx {
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
        let got = down(&dev, &topk_mask(&dev, &sd, rows, n, k).unwrap());
        let mask: Vec<f32> = got.iter().map(|&f| f as f32).collect();
        let name = format!("topk_mask rows{rows} n{n} k{k}");
        let exact = Tol {
            atol: 0.0,
            rtol: 0.0,
            nmse: 0.0,
        };
        // `ops::topk`: descending, NaN last, ties (-0.0 == +0.0 included) to the lower index,
        // as the kernel.
        let want = flags(&topk_rows(&scores, n, k).unwrap(), n);
        compare(&name, &mask, &want, exact);
        // The proposal mask the CPU path runs (`CpuOps::proposal_mask`; the CUDA backend's is
        // this kernel) ranks by `f32::total_cmp`, which puts -0.0 below +0.0 where the kernel
        // ties them: it gets the scores with the signed zeros made +0.0 (same ranking for the
        // kernel), and must then agree exactly.
        let unsigned: Vec<f32> = scores
            .iter()
            .map(|&s| if s == 0.0 { 0.0 } else { s })
            .collect();
        let want: Vec<f32> = unsigned
            .chunks(n)
            .flat_map(|row| proposal_mask(row, ratio as f32))
            .map(f32::from)
            .collect();
        compare(&format!("{name} (proposal_mask)"), &mask, &want, exact);
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
    let alpha = 1.9f32;
    for &(rows, cols) in &[(77, 136), (9, 37), (1, 1)] {
        let n = rows * cols;
        let x2 = rng.normals(n, 1.0);
        let s_raw = rng.normals(n, 3.0); // reaches the clamp
        let t = rng.normals(n, 1.0);
        let dy2 = rng.normals(n, 1.0);
        let dlogdet = rng.normals(rows, 1.0);
        // The flow's coupling on the autograd tape; the backward from the GPU's seeds:
        // loss = Σ dy2 ⊙ y2 + Σ dlogdet ⊙ logdet has dloss/dy2 = dy2, dloss/dlogdet = dlogdet.
        let tape = Tape::new();
        let var = |v: &[f32]| tape.variable(v.to_vec(), &[rows, cols]).unwrap();
        let (x2v, sv, tv) = (var(&x2), var(&s_raw), var(&t));
        let (y2v, ldv) = affine_coupling(&tape, x2v, sv, tv, alpha).unwrap();
        let (y_cpu, ld_cpu) = (tape.to_vec(y2v), tape.to_vec(ldv));
        let seed_y = tape.constant(dy2.clone(), &[rows, cols]).unwrap();
        let seed_ld = tape.constant(dlogdet.clone(), &[rows]).unwrap();
        let loss = tape
            .add(
                tape.sum(tape.mul(y2v, seed_y).unwrap()),
                tape.sum(tape.mul(ldv, seed_ld).unwrap()),
            )
            .unwrap();
        let mut grads = tape.backward(loss).unwrap();
        let mut grad = |v| grads.take(v).expect("a gradient");
        let (dx_cpu, ds_cpu, dt_cpu) = (grad(x2v), grad(sv), grad(tv));

        let (x2d, sd, td) = (up(&dev, &x2), up(&dev, &s_raw), up(&dev, &t));
        let (y, ld) = coupling_fwd(&dev, &x2d, &sd, &td, rows, cols, alpha).unwrap();
        let tag = format!("coupling R{rows} C{cols}");
        let tol = Tol {
            atol: 1e-5,
            rtol: 1e-5,
            nmse: 1e-10,
        };
        compare(&format!("{tag} y2"), &down(&dev, &y), &y_cpu, tol);
        compare(
            &format!("{tag} logdet"),
            &down(&dev, &ld),
            &ld_cpu,
            Tol { atol: 1e-4, ..tol },
        );
        let (gd, gld) = (up(&dev, &dy2), up(&dev, &dlogdet));
        let (dx, ds, dt) = coupling_bwd(&dev, &x2d, &sd, &gd, &gld, rows, cols, alpha).unwrap();
        compare(&format!("{tag} dx2"), &down(&dev, &dx), &dx_cpu, tol);
        compare(&format!("{tag} ds_raw"), &down(&dev, &ds), &ds_cpu, tol);
        compare(&format!("{tag} dt"), &down(&dev, &dt), &dt_cpu, TIGHT);
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
        // The CPU ops of the CPU path's `entropy` (`CpuOps::entropy`, `vit_infer`).
        let lse_cpu: Vec<f32> = logits.chunks(vocab).map(logsumexp).collect();
        let mut ent_cpu = entropy_rows(&logits, vocab);
        if vocab > 2 {
            // A -inf logit has p = 0 and adds nothing to H, as the kernel computes; the CPU op
            // makes it 0 · -inf = NaN (ViT logits are never -inf). So that row's entropy is
            // the CPU op's on the row without that logit, the same number.
            let row: Vec<f32> = logits[..vocab]
                .iter()
                .copied()
                .filter(|v| v.is_finite())
                .collect();
            assert!(
                ent_cpu[0].is_nan(),
                "entropy_rows handles a -inf logit now: compare with it directly"
            );
            ent_cpu[0] = entropy_rows(&row, row.len())[0];
        }
        let mut probs_cpu = vec![0.0; rows * vocab];
        softmax_rows(&logits, vocab, &mut probs_cpu);
        // ce = lse - x[t] as `CpuOps::entropy`, but on the row shifted by its max (exact in
        // f32; ce does not change): unshifted, the f32 lse of the +1e4 row rounds at its ulp
        // (~1e-3; measured 1.2e-4 off in ce), which the kernel avoids. A row without a target
        // (-1) has ce 0 by the kernel's contract, which no CPU op expresses: written out.
        let ce_cpu: Vec<f32> = logits
            .chunks(vocab)
            .zip(&targets)
            .map(|(row, &t)| {
                if t < 0 {
                    return 0.0;
                }
                let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                let shifted: Vec<f32> = row.iter().map(|&v| v - m).collect();
                logsumexp(&shifted) - shifted[t as usize]
            })
            .collect();
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
            &lse_cpu,
            Tol { rtol: 1e-6, ..tol },
        );
        compare(
            &format!("{tag} entropy"),
            &down(&dev, &out.entropy),
            &ent_cpu,
            Tol { atol: 1e-4, ..tol },
        );
        compare(
            &format!("{tag} ce"),
            &down(&dev, out.ce.as_ref().unwrap()),
            &ce_cpu,
            Tol {
                atol: 1e-4,
                rtol: 1e-6,
                ..tol
            },
        );
        compare(
            &format!("{tag} probs"),
            &down(&dev, out.probs.as_ref().unwrap()),
            &probs_cpu,
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
            &ent_cpu,
            Tol { atol: 1e-4, ..tol },
        );
    }
}

// ----------------------------------------------------------------------------------- glue

#[test]
fn layernorm() {
    let dev = device_or_skip!();
    let mut rng = Rng::new(0x1A);
    for &(rows, cols) in &[(33, 768), (10, 272), (3, 5)] {
        let x: Vec<f32> = (0..rows * cols).map(|_| rng.normal() * 2.0 + 3.0).collect();
        let gamma = rng.normals(cols, 1.0);
        let beta = rng.normals(cols, 1.0);
        let eps = 1e-6f32;
        let mut y_cpu = vec![0.0; rows * cols];
        let mut stats = vec![0.0; 2 * rows]; // means, then rstds
        layernorm_rows(&x, &gamma, &beta, cols, eps, &mut y_cpu, Some(&mut stats));
        let (mean_cpu, rstd_cpu) = stats.split_at(rows);
        let (y, mean, rstd) = layernorm_fwd(
            &dev,
            &up(&dev, &x),
            &up(&dev, &gamma),
            &up(&dev, &beta),
            rows,
            cols,
            eps,
        )
        .unwrap();
        let tag = format!("layernorm R{rows} C{cols}");
        let tol = Tol {
            atol: 2e-5,
            rtol: 1e-5,
            nmse: 1e-10,
        };
        compare(&format!("{tag} y"), &down(&dev, &y), &y_cpu, tol);
        compare(&format!("{tag} mean"), &down(&dev, &mean), mean_cpu, tol);
        compare(&format!("{tag} rstd"), &down(&dev, &rstd), rstd_cpu, tol);
    }
}

#[test]
fn gelu() {
    let dev = device_or_skip!();
    let mut rng = Rng::new(0x6E1);
    let x: Vec<f32> = (0..10_007).map(|_| rng.range(-6.0, 6.0)).collect();
    let mut want = x.clone();
    gelu_inplace(&mut want);
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
    // `ops::elementwise::add`, the bias broadcast over the rows: (x + b) + r.
    let without = add(&tensor(&x, &[rows, cols]), &tensor(&bias, &[cols])).unwrap();
    let with = add(&without, &tensor(&res, &[rows, cols])).unwrap();
    let y = bias_residual_add(&dev, &xd, &bd, Some(&rd), rows, cols).unwrap();
    compare(
        "bias_residual_add +res",
        &down(&dev, &y),
        &with.into_f32_vec(),
        TIGHT,
    );
    let y = bias_residual_add(&dev, &xd, &bd, None, rows, cols).unwrap();
    compare(
        "bias_residual_add",
        &down(&dev, &y),
        &without.into_f32_vec(),
        TIGHT,
    );
}

/// The CPU conv's geometry of a depthwise call (the CPU conv has one stride for both axes).
fn depthwise_shape(d: DwConv2dDims) -> ConvShape {
    assert_eq!(d.stride_h, d.stride_w, "one stride for both axes");
    let (top, bottom, left, right) = d.pad;
    let s = ConvShape {
        batch: d.batch,
        c_in: d.channels,
        h: d.in_h,
        w: d.in_w,
        c_out: d.channels,
        kh: d.k_h,
        kw: d.k_w,
        stride: d.stride_h,
        groups: d.channels,
        pad: Padding {
            top,
            bottom,
            left,
            right,
        },
    };
    assert_eq!(d.out_hw(), Some((s.out_h(), s.out_w())), "{d:?}");
    s
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
        // `ops::conv::conv2d_into` with groups = channels: the CPU's depthwise kernel.
        let s = depthwise_shape(d);
        let act = if relu6 {
            Activation::Relu6
        } else {
            Activation::None
        };
        let mut want = vec![0.0; s.batch * s.c_out * s.out_h() * s.out_w()];
        conv2d_into(&x, &w, Some(&b), &s, act, &mut want);
        let y = dwconv2d(&dev, &up(&dev, &x), &up(&dev, &w), &up(&dev, &b), d, relu6).unwrap();
        compare(
            &format!("dwconv2d {d:?} relu6={relu6}"),
            &down(&dev, &y),
            &want,
            TIGHT,
        );
    }
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
        // `ops::resize::bilinear_plane`, torch's `align_corners=False` rules, plane by plane.
        let mut want = vec![0.0; planes * out.0 * out.1];
        for (src, dst) in x.chunks(inp.0 * inp.1).zip(want.chunks_mut(out.0 * out.1)) {
            bilinear_plane(src, inp.0, inp.1, out.0, out.1, dst);
        }
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

#[test]
fn gaussian_blur_reflect() {
    let dev = device_or_skip!();
    let mut rng = Rng::new(0xB10);
    assert_eq!(gaussian_taps(4.0, 4.0).len(), 33);
    for sigma in [4.0, 1.5] {
        // The launcher's taps (f64, rounded once) vs the CPU's (f32).
        compare(
            &format!("gaussian taps sigma{sigma}"),
            &gaussian_taps(sigma, 4.0),
            &gaussian_kernel(sigma as f32, 4.0),
            Tol {
                atol: 1e-7,
                rtol: 1e-6,
                nmse: 1e-12,
            },
        );
    }
    // 5x7 is smaller than the radius (16): indices fold several times
    for &(planes, h, w, sigma) in &[
        (2, 224, 224, 4.0),
        (3, 57, 31, 4.0),
        (2, 5, 7, 4.0),
        (1, 30, 20, 1.5),
    ] {
        let x: Vec<f32> = (0..planes * h * w).map(|_| rng.range(0.0, 1.0)).collect();
        // `ops::blur::gaussian_blur` (scipy's 'reflect' borders), in place, plane by plane.
        let mut want = x.clone();
        pmad::ops::blur::gaussian_blur(&mut want, h, w, sigma as f32);
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

/// A `CpuOps` weight of the given values.
fn cpu_weight(v: &[f32]) -> <CpuOps as InferOps>::Weight {
    CpuOps.weight(&Arc::new(v.to_vec()), 0..v.len()).unwrap()
}

#[test]
fn row_selection() {
    let dev = device_or_skip!();
    let mut rng = Rng::new(0x5E1);
    let (rows, cols) = (53, 37);
    let x = rng.normals(rows * cols, 1.0);
    let token = rng.normals(cols, 1.0);
    let mask: Vec<u32> = (0..rows).map(|_| (rng.below(3) == 0) as u32).collect();
    let want = CpuOps
        .mask_rows(x.clone(), &mask, &cpu_weight(&token), cols)
        .unwrap();
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
    // Repeats, any order, and one index past the end. The kernel reads that one as a row of
    // zeros (its guarantee); the CPU op refuses it, so that row's zeros are written out.
    let idx: Vec<u32> = vec![52, 0, 7, 7, 30, rows as u32, 1];
    assert!(CpuOps.gather_rows(&x, &vec![rows as u32], cols).is_err());
    let want: Vec<f32> = idx
        .iter()
        .flat_map(|&r| {
            if (r as usize) < rows {
                CpuOps.gather_rows(&x, &vec![r], cols).unwrap()
            } else {
                vec![0.0; cols]
            }
        })
        .collect();
    let y = gather_rows(&dev, &xd, &dev.upload(&idx).unwrap(), rows, cols).unwrap();
    compare("gather_rows 7 of 53", &down(&dev, &y), &want, TIGHT);
}

/// The emulated device's cuBLAS (the CPU GEMM) reads the configuration as cuBLAS does and
/// refuses one that leaves the buffers (on a GPU: an out-of-bounds read), instead of reading
/// past them. Emulated device only: on a GPU such a call is undefined behaviour. The expected
/// product is written out: the CPU GEMM (`ops::matmul::gemm`) takes no leading dimensions.
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
        // `ops::matmul::linear_rows`, then the residual, as `CpuOps::linear`.
        let mut want = vec![0.0; rows * out];
        linear_rows(&x, &w, Some(&b), rows, inp, out, &mut want);
        want.iter_mut().zip(&res).for_each(|(y, &r)| *y += r);
        let (xd, wd, bd, rd) = (up(&dev, &x), up(&dev, &w), up(&dev, &b), up(&dev, &res));
        let y = linear(&dev, F32, &xd, &wd, &bd, Some(&rd), rows, inp, out).unwrap();
        // Two f32 GEMMs with K up to 768: accumulation-order error ~ sqrt(K) ulp of |x||w|
        // on each side.
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
        let gpu = InferVit::new(CudaOps::new(dev.clone(), F32), &vit).unwrap();
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
        compare(&format!("{name} entropy"), &e_gpu, &e_cpu, tol);
        compare(
            &format!("{name} cross-entropy"),
            &c_gpu.unwrap(),
            &c_cpu.unwrap(),
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
    // `ops::conv::im2col`, image by image, on the conv geometry with the same output size:
    // the bottom/right padding it implies (1 and 2) only sets that size.
    let s = ConvShape {
        batch: 1,
        c_in: d.channels,
        h: d.in_h,
        w: d.in_w,
        c_out: 1,
        kh: d.k_h,
        kw: d.k_w,
        stride: d.stride,
        groups: 1,
        pad: Padding {
            top: d.pad_top,
            bottom: 1,
            left: d.pad_left,
            right: 2,
        },
    };
    assert_eq!((s.out_h(), s.out_w()), (d.out_h, d.out_w));
    let mut want = vec![0.0; d.col_numel()];
    let per_image = d.col_numel() / d.batch;
    for (img, cols) in x
        .chunks(d.channels * d.in_h * d.in_w)
        .zip(want.chunks_mut(per_image))
    {
        pmad::ops::conv::im2col(img, d.channels, &s, cols);
    }
    let col = im2col(&dev, &up(&dev, &x), d).unwrap();
    compare("im2col 2x3x37x29 k3 s2", &down(&dev, &col), &want, TIGHT);
    // bias + ReLU6 + skip, over NCHW.
    let (n, c, plane) = (3, 7, 53);
    let x = rng.normals(n * c * plane, 4.0);
    let bias = rng.normals(c, 1.0);
    let res = rng.normals(n * c * plane, 1.0);
    // `ops::elementwise`: relu6(x + bias broadcast over each plane) + res.
    let biased = add(&tensor(&x, &[n, c, plane]), &tensor(&bias, &[c, 1])).unwrap();
    let want = add(&relu6(&biased), &tensor(&res, &[n, c, plane]))
        .unwrap()
        .into_f32_vec();
    let (xd, bd, rd) = (up(&dev, &x), up(&dev, &bias), up(&dev, &res));
    let y = bias_act_nchw(&dev, &xd, &bd, Some(&rd), n, c, plane, true).unwrap();
    compare("bias_act_nchw relu6 + skip", &down(&dev, &y), &want, TIGHT);
    // 3x3 average pooling, count_include_pad=False.
    let (planes, h, w) = (5, 28, 23);
    let x = rng.normals(planes * h * w, 1.0);
    // `ops::pool::avg_pool_plane`, plane by plane.
    let mut want = vec![0.0; planes * h * w];
    for (src, dst) in x.chunks(h * w).zip(want.chunks_mut(h * w)) {
        avg_pool_plane(src, h, w, 3, dst);
    }
    let y = avg_pool(&dev, &up(&dev, &x), planes, h, w, 3).unwrap();
    compare("avg_pool 5x28x23 k3", &down(&dev, &y), &want, TIGHT);
    // A tap's channels into columns 4..9 of 11-wide rows; other columns untouched.
    let (b, c, plane, width, off) = (2, 5, 13, 11, 4);
    let x = rng.normals(b * c * plane, 1.0);
    let mut rows = up(&dev, &vec![7.0; b * plane * width]);
    nchw_to_rows(&dev, &up(&dev, &x), &mut rows, b, c, plane, width, off).unwrap();
    let mut want = vec![7.0; b * plane * width];
    CpuOps
        .nchw_to_rows(&x, &mut want, b, c, plane, width, off)
        .unwrap();
    compare("nchw_to_rows", &down(&dev, &rows), &want, TIGHT);
}

/// The 1x1 conv GEMM in both precisions against `ops::conv::conv2d_into` (the CPU's pointwise
/// GEMM) on the operands as the GPU multiplies them: as given in f32, rounded to bf16 in bf16
/// (exact products, f32 sums on both sides: the f32 tolerance either way).
#[test]
fn pointwise_conv_cublas() {
    use pmad::backend::bf16_bits;
    let dev = device_or_skip!();
    let mut rng = Rng::new(0x1C0);
    // Ragged, then the stem's im2col GEMM (27 -> 32 over 112²).
    for (batch, c_in, c_out, plane) in [(3, 17, 23, 29), (2, 27, 32, 112 * 112)] {
        let x = rng.normals(batch * c_in * plane, 1.0);
        let w = rng.normals(c_out * c_in, 0.3);
        let s = ConvShape {
            batch,
            c_in,
            h: plane,
            w: 1,
            c_out,
            kh: 1,
            kw: 1,
            stride: 1,
            groups: 1,
            pad: Padding::default(),
        };
        for precision in [F32, Bf16] {
            let operand = |v: &[f32]| -> Vec<f32> {
                match precision {
                    F32 => v.to_vec(),
                    Bf16 => v
                        .iter()
                        .map(|&x| f32::from_bits(u32::from(bf16_bits(x)) << 16))
                        .collect(),
                }
            };
            let mut want = vec![0.0; batch * c_out * plane];
            conv2d_into(
                &operand(&x),
                &operand(&w),
                None,
                &s,
                Activation::None,
                &mut want,
            );
            let y = pointwise_conv(
                &dev,
                precision,
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
            let name = format!("pointwise_conv {precision:?} {batch}x{c_in}->{c_out} x{plane}");
            compare(&name, &down(&dev, &y.unwrap()), &want, tol);
        }
    }
}

/// `--precision bf16`: the conversion kernel against the host's rounding bit for bit, then the
/// bf16 linear (the pointwise conv: [`pointwise_conv_cublas`]) against the CPU op twice — on the operands rounded to
/// bf16 (the same products: f32 tolerances), and on the f32 operands (the rounding's own
/// error, bounded per element by `2^-8 Σ_k |x_k w_k|`: each operand's relative rounding
/// error is at most 2^-9).
#[test]
fn gemms_in_bf16() {
    use pmad::backend::bf16_bits;
    use pmad::cuda::glue::f32_to_bf16;
    let dev = device_or_skip!();
    let mut rng = Rng::new(0xBF16);
    let round = |v: &[f32]| -> Vec<f32> {
        v.iter()
            .map(|&x| f32::from_bits(u32::from(bf16_bits(x)) << 16))
            .collect()
    };
    // The conversion: ragged length, ties both ways, subnormals, signed zeros, the largest
    // finite values (rounding up to infinity), infinities and NaNs.
    let mut x = rng.normals(1037, 10.0);
    x.extend([
        1.0 + 1.0 / 256.0,
        1.0 + 3.0 / 256.0,
        -(1.0 + 1.0 / 256.0),
        1e-40,
        -1e-42,
        0.0,
        -0.0,
        f32::MAX,
        -f32::MAX,
        3.389_531_4e38,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::from_bits(0x7f80_0001),
    ]);
    let got = down(&dev, &f32_to_bf16(&dev, &up(&dev, &x)).unwrap());
    for (i, (&g, &v)) in got.iter().zip(&x).enumerate() {
        let want = bf16_bits(v);
        if v.is_nan() {
            assert!(
                f32::from_bits(u32::from(g) << 16).is_nan(),
                "[{i}] NaN -> {g:#06x}"
            );
        } else {
            assert_eq!(g, want, "[{i}] bf16({v:e}): {g:#06x} vs {want:#06x}");
        }
    }
    println!(
        "f32_to_bf16: {} values bit-identical to the host rounding",
        x.len()
    );

    // Per element, the bound of the rounding's error: 2^-8 Σ_k |x_rk w_ck| (+ f32 slack).
    let bound = |x: &[f32], w: &[f32], rows: usize, inp: usize, out: usize| -> Vec<f64> {
        let mut b = vec![0.0f64; rows * out];
        for r in 0..rows {
            for c in 0..out {
                let s: f64 = (0..inp)
                    .map(|k| f64::from(x[r * inp + k].abs()) * f64::from(w[c * inp + k].abs()))
                    .sum();
                b[r * out + c] = s / 256.0 + 1e-4;
            }
        }
        b
    };
    let f32_tol = Tol {
        atol: 1e-4,
        rtol: 1e-4,
        nmse: 1e-9,
    };
    for (rows, inp, out) in [(1, 1, 1), (37, 19, 23), (196 * 2, 192, 576), (5, 768, 1003)] {
        let x = rng.normals(rows * inp, 1.0);
        let w = rng.normals(out * inp, 0.1);
        let b = rng.normals(out, 1.0);
        let (xd, wd, bd) = (up(&dev, &x), up(&dev, &w), up(&dev, &b));
        let y = down(
            &dev,
            &linear(&dev, Bf16, &xd, &wd, &bd, None, rows, inp, out).unwrap(),
        );
        let name = format!("linear bf16 {rows}x{inp}->{out}");
        // The same products on the CPU: the operands rounded as the GPU rounds them.
        let mut want = vec![0.0; rows * out];
        linear_rows(&round(&x), &round(&w), Some(&b), rows, inp, out, &mut want);
        compare(&format!("{name} (bf16 operands)"), &y, &want, f32_tol);
        // Against f32: within the rounding bound everywhere.
        let mut exact = vec![0.0; rows * out];
        linear_rows(&x, &w, Some(&b), rows, inp, out, &mut exact);
        let lim = bound(&x, &w, rows, inp, out);
        let (mut worst, mut used) = (0.0f64, 0.0f64);
        for i in 0..y.len() {
            let err = (f64::from(y[i]) - f64::from(exact[i])).abs();
            assert!(
                err <= lim[i],
                "{name} [{i}]: |{} - {}| > {:e}",
                y[i],
                exact[i],
                lim[i]
            );
            worst = worst.max(err);
            used = used.max(err / lim[i]);
        }
        println!(
            "{name} vs f32: max|err| {worst:.3e}, {:.0}% of the bound",
            100.0 * used
        );
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
        let gpu = InferFeatures::new(CudaOps::new(dev.clone(), F32), &fx).unwrap();
        let rows = gpu.extract(&x, batch).unwrap();
        // Up to 11 blocks of f32 convs with different summation orders (cuBLAS vs the CPU
        // GEMM).
        let tol = Tol {
            atol: 2e-3,
            rtol: 2e-3,
            nmse: 1e-8,
        };
        compare(&name, &down(&dev, &rows), &cpu, tol);
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

/// Zero-length buffers: no device allocation behind them (a 0-byte `cuMemAlloc` is an error on
/// a GPU), they download as empty, a kernel given one (an empty bank) does not touch it, and
/// the device works on afterwards.
#[test]
fn empty_buffers() {
    let dev = device_or_skip!();
    let e = up(&dev, &[]);
    assert!(e.is_empty() && down(&dev, &e).is_empty());
    let z = dev.zeros::<u32>(0).unwrap();
    assert!(down(&dev, &z).is_empty());
    // No queries: empty results.
    let (idx, dist) = proto_nn(&dev, &e, &up(&dev, &[1.0; 6]), 0, 2, 3).unwrap();
    assert!(idx.is_empty() && dist.is_empty());
    // No prototypes: every query is told so (no index), not given a made-up neighbour.
    let (idx, dist) = proto_nn(&dev, &up(&dev, &[1.0; 6]), &e, 2, 0, 3).unwrap();
    let (idx, dist) = (down(&dev, &idx), down(&dev, &dist));
    assert_eq!(idx.len(), 2);
    assert!(
        idx.iter().all(|&i| i == u32::MAX) && dist.iter().all(|d| !d.is_finite() || *d > 1e30),
        "{idx:?} {dist:?}"
    );
    drop((e, z));
    dev.synchronize().unwrap();
    let (idx, _) = proto_nn(
        &dev,
        &up(&dev, &[0.0, 1.0]),
        &up(&dev, &[5.0, 0.0, 1.0]),
        2,
        3,
        1,
    )
    .unwrap();
    assert_eq!(down(&dev, &idx), vec![1, 2]);
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
        // Every module runs on Turing but the tensor-core attention (mma bf16: Ampere, 8.0).
        let floor = match m {
            KernelModule::AttentionTc => 80,
            _ => BASE_ARCH,
        };
        assert_eq!(variants[0].0, floor, "{}: lowest variant", m.name());
        if floor > 75 {
            let err = m.ptx_for((7, 5)).unwrap_err().to_string();
            assert!(err.contains(m.name()) && err.contains("8.0"), "{err}");
        } else {
            assert_eq!(m.ptx_for((7, 5)).unwrap(), variants[0].1);
        }
        assert_eq!(m.ptx_for((9, 0)).unwrap(), variants.last().unwrap().1);
        let err = m.ptx_for((6, 1)).unwrap_err().to_string();
        assert!(err.contains(m.name()) && err.contains("6.1"), "{err}");
    }
}
