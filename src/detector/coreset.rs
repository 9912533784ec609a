//! Greedy k-center coreset selection (minimax facility location), accelerated.
//!
//! Greedy k-center (Gonzalez): start from a random point; repeatedly add the point farthest
//! from every centre chosen so far. It yields a 2-approximation of the minimax cover, and is
//! what PatchCore / PMAD use to shrink a class's patch pool to its prototypes. Following the
//! reference, distances are measured after a seeded Gaussian random projection to
//! `proj_dim` dimensions (Johnson–Lindenstrauss: distances roughly kept, 1/2+ the cost).
//!
//! The textbook loop touches every point for every new centre: O(n·k·d) memory traffic
//! (magnetic_tile: 314k points x 31k centres x 128 dims). We get the *same selection* far
//! faster by grouping points by their current nearest centre and pruning with the triangle
//! inequality: a point `i` of cluster `j` (at distance `r_i` from centre `c_j`) cannot move to
//! a new centre `c` when `|c - c_j| >= 2 r_i`, since then `|i - c| >= |c - c_j| - r_i >= r_i`.
//! So a whole cluster is skipped when `|c - c_j| >= 2 · radius_j`, and inside a visited
//! cluster each point is skipped by the same test before any distance is computed.
//! The farthest point overall is the largest cluster radius, kept per cluster.

use crate::ops::matmul::{Trans, gemm};
use crate::rng::Rng;
use rayon::prelude::*;
use std::collections::BinaryHeap;

/// How to select a coreset.
#[derive(Clone, Debug)]
pub struct CoresetConfig {
    /// Fraction of the pool to keep (at least one point).
    pub ratio: f32,
    /// Dimension of the random projection distances are measured in (0 = no projection).
    pub proj_dim: usize,
    pub seed: u64,
}

impl Default for CoresetConfig {
    fn default() -> Self {
        CoresetConfig {
            ratio: 0.1,
            proj_dim: 128,
            seed: 0,
        }
    }
}

/// The seeded Gaussian matrix `[d, p]` (row-major, entries N(0, 1/p)) of
/// [`random_projection`]: squared distances are kept in expectation.
pub fn random_projection_matrix(d: usize, p: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let scale = 1.0 / (p as f32).sqrt();
    (0..d * p).map(|_| rng.normal() * scale).collect()
}

/// Seeded Gaussian random projection of `[n, d]` rows to `[n, p]` (scaled by 1/√p).
pub fn random_projection(x: &[f32], d: usize, p: usize, seed: u64) -> Vec<f32> {
    let proj = random_projection_matrix(d, p, seed);
    let n = x.len() / d;
    let mut out = vec![0.0; n * p];
    gemm(n, p, d, x, Trans::N, &proj, Trans::N, &mut out, 0.0);
    out
}

#[inline(always)]
fn dist2(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent partial sums so the loop vectorises. The summation order is fixed by
    // this code alone (Rust never fuses or reorders float operations), so the result is the
    // same bits whatever instruction set the caller was compiled for.
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            let t = x[k] - y[k];
            acc[k] += t * t;
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += (x - y) * (x - y);
    }
    s
}

/// Rotated (principal) coordinates kept per point: the lower-bound cascade reads the first
/// `STAGE_A`, then up to `STAGE_B`, then all `ROT` of them before an exact distance.
const ROT: usize = 64;
const STAGE_A: usize = 16;
const STAGE_B: usize = 32;
/// Rows of a refresh task's candidate table: the first `STAGE_A` coordinates, the squared
/// norm and the norm of those; then the same for the next `STAGE_B - STAGE_A` (as many).
const HALF_ROWS: usize = STAGE_A + 2;
const TABLE_ROWS: usize = 2 * HALF_ROWS;
const _: () =
    assert!(STAGE_B - STAGE_A == STAGE_A && STAGE_A.is_multiple_of(8) && ROT.is_multiple_of(8));
/// Centres picked per batch between two full refreshes of every point's distance.
const BATCH: usize = 256;
/// Relative slack on the lower-bound tests (on distances): covers the rounding of the bounds
/// and of the exact distances they stand in for (both ~1e-5 relative at most).
const LB_SLACK: f32 = 1.0 + 1e-3;

/// Every point in an orthonormal basis of the data's leading principal directions. Projecting
/// onto orthonormal directions never lengthens a vector, so the distance between two points'
/// first `k` coordinates is a lower bound on their true distance (up to `err`), and with the
/// directions of largest variance it is a tight one: on real patch features the first 16
/// coordinates alone rule out ~90% of the pairs a refresh tests, 64 over 99%.
struct Rotated {
    /// `[n]` coordinates, zero-padded when `d < ROT`.
    y: Vec<[f32; ROT]>,
    /// Bound on the rounding error of any point's coordinate vector (Euclidean norm).
    err: f32,
}

fn rotate(z: &[f32], d: usize) -> Rotated {
    let n = z.len() / d;
    let k = ROT.min(d);
    // Mean in f64 (centring is where cancellation would hurt).
    let mut mean = vec![0.0f64; d];
    for r in z.chunks_exact(d) {
        mean.iter_mut().zip(r).for_each(|(m, &v)| *m += v as f64);
    }
    let mean: Vec<f32> = mean.iter().map(|&m| (m / n as f64) as f32).collect();
    let centre = |r: &[f32], out: &mut [f32]| {
        out.iter_mut()
            .zip(r.iter().zip(&mean))
            .for_each(|(o, (&v, &m))| *o = v - m);
    };
    // Covariance from an even subsample: the basis only has to be good, not exact.
    let step = n.div_ceil(32768).max(1);
    let rows: Vec<usize> = (0..n).step_by(step).collect();
    let mut sample = vec![0.0f32; rows.len() * d];
    for (o, &i) in sample.chunks_exact_mut(d).zip(&rows) {
        centre(&z[i * d..(i + 1) * d], o);
    }
    let mut cov = vec![0.0f32; d * d];
    gemm(
        d,
        d,
        rows.len(),
        &sample,
        Trans::T,
        &sample,
        Trans::N,
        &mut cov,
        0.0,
    );
    drop(sample);
    let (vals, vecs) = sym_eigen(cov.iter().map(|&v| v as f64).collect(), d);
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&a, &b| vals[b].total_cmp(&vals[a]));
    // `[d, ROT]` basis, zero columns past `k`.
    let mut w = vec![0.0f32; d * ROT];
    for (c, &e) in order.iter().take(k).enumerate() {
        for t in 0..d {
            w[t * ROT + c] = vecs[t * d + e] as f32;
        }
    }
    const CHUNK: usize = 4096;
    let mut y = vec![[0.0f32; ROT]; n];
    let max_norm2 = y
        .par_chunks_mut(CHUNK)
        .zip(z.par_chunks(CHUNK * d))
        .map(|(yc, zc)| {
            let rows = zc.len() / d;
            let mut buf = vec![0.0f32; rows * d];
            let mut norm2 = 0.0f32;
            for (o, r) in buf.chunks_exact_mut(d).zip(zc.chunks_exact(d)) {
                centre(r, o);
                norm2 = norm2.max(o.iter().map(|v| v * v).sum());
            }
            let mut out = vec![0.0f32; rows * ROT];
            gemm(rows, ROT, d, &buf, Trans::N, &w, Trans::N, &mut out, 0.0);
            for (yr, o) in yc.iter_mut().zip(out.chunks_exact(ROT)) {
                yr.copy_from_slice(o);
            }
            norm2
        })
        .reduce(|| 0.0, f32::max);
    // Each coordinate is a d-term f32 dot product of a centred row x with a unit column:
    // error <= (d+1)·u·|x| (any summation order, FMA or not, plus the rounding of the column
    // to f32), so a k-coordinate vector is off by at most sqrt(k)·(d+1)·u·|x|; doubled.
    let u = f32::EPSILON / 2.0;
    let err = 2.0 * (k as f32).sqrt() * (d as f32 + 1.0) * u * max_norm2.sqrt();
    Rotated { y, err }
}

/// Eigen-decomposition of a symmetric `[n, n]` matrix by cyclic Jacobi rotations. Returns the
/// eigenvalues and the eigenvectors as the columns of an `[n, n]` matrix (orthonormal to
/// rounding, being a product of rotations, however far the sweeps got).
fn sym_eigen(mut a: Vec<f64>, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0.0f64; n * n];
    (0..n).for_each(|i| v[i * n + i] = 1.0);
    let total: f64 = a.iter().map(|x| x * x).sum();
    for _sweep in 0..30 {
        let off: f64 = (0..n)
            .flat_map(|p| (0..n).filter(move |&q| q != p).map(move |q| (p, q)))
            .map(|(p, q)| a[p * n + q] * a[p * n + q])
            .sum();
        if off <= 1e-24 * total {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for r in 0..n {
                    let (x, y) = (a[r * n + p], a[r * n + q]);
                    a[r * n + p] = c * x - s * y;
                    a[r * n + q] = s * x + c * y;
                }
                for r in 0..n {
                    let (x, y) = (a[p * n + r], a[q * n + r]);
                    a[p * n + r] = c * x - s * y;
                    a[q * n + r] = s * x + c * y;
                }
                for r in 0..n {
                    let (x, y) = (v[r * n + p], v[r * n + q]);
                    v[r * n + p] = c * x - s * y;
                    v[r * n + q] = s * x + c * y;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

/// Sum of squared differences over two equal-length slices (a multiple of 8 long).
#[inline(always)]
fn partial2(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for k in 0..8 {
            let t = x[k] - y[k];
            acc[k] += t * t;
        }
    }
    acc.iter().sum()
}

/// The rest of the bound cascade after the first `STAGE_A` coordinates (partial sum `acc`):
/// false when the rotated coordinates already prove a distance >= the threshold `thr`.
#[inline(always)]
fn bound_passes(yi: &[f32; ROT], yc: &[f32; ROT], acc: f32, thr: f32) -> bool {
    let b = acc + partial2(&yi[STAGE_A..STAGE_B], &yc[STAGE_A..STAGE_B]);
    b < thr && b + partial2(&yi[STAGE_B..], &yc[STAGE_B..]) < thr
}

/// The squared rotated-coordinate distance at or beyond which a point at squared distance
/// `r2` from its centre provably is not strictly closer to another centre: the true distance
/// is at least sqrt(bound) - 2·err, and we ask for `LB_SLACK` more than sqrt(r2).
#[inline]
fn lb_threshold(r2: f32, err: f32) -> f32 {
    let t = r2.sqrt() * LB_SLACK + 2.0 * err;
    t * t
}

/// A point in a cluster, with what a refresh reads for every member stored inline.
#[derive(Clone, Copy)]
struct Member {
    /// Squared distance to its cluster's centre (= to its nearest centre).
    r2: f32,
    /// `lb_threshold(r2)`.
    thr: f32,
    idx: u32,
    /// The first rotated coordinates (a copy, so a cluster's refresh streams through
    /// memory; the rest are read from the global array, prefetched).
    pre: [f32; STAGE_B],
}

/// Farthest first, lowest index first among equals.
fn sort_members(members: &mut [Member]) {
    members.sort_unstable_by(|a, b| b.r2.total_cmp(&a.r2).then(a.idx.cmp(&b.idx)));
}

#[derive(Clone, Copy)]
struct HeapEntry {
    /// Squared distance to the nearest centre among those compared so far: an upper bound on
    /// the point's current value.
    v: f32,
    idx: u32,
    /// How many of this batch's centres `v` accounts for.
    upto: u32,
}
impl PartialEq for HeapEntry {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == std::cmp::Ordering::Equal
    }
}
impl Eq for HeapEntry {}
impl PartialOrd for HeapEntry {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for HeapEntry {
    /// Larger value first, then lower index (the textbook argmax's tie rule).
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.v.total_cmp(&o.v).then(o.idx.cmp(&self.idx))
    }
}

/// What a refresh task reads besides its members.
struct Ctx<'a> {
    z: &'a [f32],
    d: usize,
    /// The batch's centres (point indices) and their rotated coordinates.
    batch: &'a [usize],
    by: &'a [[f32; ROT]],
    /// Every point's rotated coordinates.
    y: &'a [[f32; ROT]],
    err: f32,
    /// Use the AVX2 bound kernel where the CPU has it (tests turn it off to check the
    /// portable path gives the same selection).
    simd: bool,
}

/// A candidate centre of a refresh: its index in the batch (low half) under a lower bound on
/// its squared distance to the cluster's centre (high half, as f32 bits: non-negative floats
/// order like their bits), so sorting the keys sorts nearest first.
#[inline]
fn cand_key(s: usize, lb: f32) -> u64 {
    ((lb.max(0.0).to_bits() as u64) << 32) | s as u64
}
#[inline]
fn cand_lb(key: u64) -> f32 {
    f32::from_bits((key >> 32) as u32)
}

/// The squared bound on a centre-centre rotated distance at or beyond which the centres are
/// provably at least 2·sqrt(r2) apart (with the margins of [`lb_threshold`]).
#[inline]
fn pair_limit(r2: f32, err: f32) -> f32 {
    let t = 2.0 * r2.sqrt() * LB_SLACK + 2.0 * err;
    t * t
}

/// Refresh of a run of one cluster's members (sorted farthest first) against the batch
/// centres `cands` that may take some of them (keys of [`cand_key`], nearest first).
/// `table` holds the candidates' first `STAGE_A` coordinates transposed (`[STAGE_A, cap]`,
/// padded with +inf) so the first bound is computed for eight candidates at once. Returns the
/// members that move, as (position + `offset`, batch centre, new squared distance).
#[inline(always)]
fn refresh_body<const AVX: bool>(
    members: &[Member],
    offset: u32,
    cands: &[u64],
    table: &[f32],
    cx: &Ctx,
) -> Vec<(u32, u32, f32)> {
    let cap = table.len() / TABLE_ROWS;
    let d = cx.d;
    let row = |i: usize| &cx.z[i * d..(i + 1) * d];
    let mut active = cands.len();
    let mut out = Vec::new();
    for (pos, mb) in members.iter().enumerate() {
        // Centre c_s can only take member i if |c_s - c_j| < 2·r_i; candidates are nearest
        // first and members farthest first, so the usable candidates are a shrinking prefix.
        let lim = pair_limit(mb.r2, cx.err);
        while active > 0 && cand_lb(cands[active - 1]) >= lim {
            active -= 1;
        }
        if active == 0 {
            break;
        }
        // The next member's remaining coordinates and exact row are likely needed (most
        // members visited get an exact distance): start fetching them now.
        let pa: &[f32; STAGE_A] = mb.pre[..STAGE_A].try_into().unwrap();
        let pb: &[f32; STAGE_A] = mb.pre[STAGE_A..].try_into().unwrap();
        let yi = &cx.y[mb.idx as usize];
        let na2: f32 = pa.iter().map(|v| v * v).sum();
        let nb2: f32 = pb.iter().map(|v| v * v).sum();
        let norms = [na2, na2.sqrt(), nb2, nb2.sqrt()];
        let (mut best, mut bs, mut thr) = (mb.r2, u32::MAX, mb.thr);
        for blk in 0..active.div_ceil(8) {
            let col = &table[blk * 8..];
            // Lanes past the usable candidates (the last block's tail) are skipped.
            let tail = u32::MAX >> (32 - (active - blk * 8).min(8));
            #[cfg(target_arch = "x86_64")]
            let (mut mask, acc) = if AVX {
                // SAFETY: `AVX` is only set by `refresh_avx2`, run after checking for the
                // features; `col` has `(TABLE_ROWS - 1) * cap + 8` values from its start.
                unsafe { stage_ab_avx2(pa, pb, &norms, col, cap, thr, tail) }
            } else {
                stage_a(pa, col, cap, thr, tail)
            };
            #[cfg(not(target_arch = "x86_64"))]
            let (mut mask, acc) = stage_a(pa, col, cap, thr, tail);
            while mask != 0 {
                let l = mask.trailing_zeros() as usize;
                mask &= mask - 1;
                let s = cands[blk * 8 + l] as u32 as usize;
                // The AVX2 stage also did the next coordinates; the portable one did not.
                let passes = if AVX {
                    acc[l] + partial2(&yi[STAGE_B..], &cx.by[s][STAGE_B..]) < thr
                } else {
                    bound_passes(yi, &cx.by[s], acc[l], thr)
                };
                if acc[l] >= thr || !passes {
                    continue;
                }
                let dn = dist2(row(mb.idx as usize), row(cx.batch[s]));
                if dn < best {
                    best = dn;
                    bs = s as u32;
                    thr = lb_threshold(dn, cx.err);
                }
            }
        }
        if bs != u32::MAX {
            out.push((offset + pos as u32, bs, best));
        }
    }
    out
}

/// First bound for eight candidates: squared distances over the first `STAGE_A` coordinates
/// between `p` and the eight columns of `t` (row stride `cap`), and the mask of those below
/// `thr`.
#[inline(always)]
fn stage_a(p: &[f32; STAGE_A], t: &[f32], cap: usize, thr: f32, tail: u32) -> (u32, [f32; 8]) {
    let mut acc = [0.0f32; 8];
    for (k, &pk) in p.iter().enumerate() {
        let tk = &t[k * cap..k * cap + 8];
        for l in 0..8 {
            let q = pk - tk[l];
            acc[l] += q * q;
        }
    }
    let mut mask = 0u32;
    for (l, &a) in acc.iter().enumerate() {
        mask |= ((a < thr) as u32) << l;
    }
    (mask & tail, acc)
}

/// [`stage_a`] in AVX2, then for the lanes still in, the next `STAGE_B - STAGE_A`
/// coordinates too (`pb`): each part as |p|² + |t|² - 2·p·t (half the work of the
/// differences), less a bound on that form's rounding, `(STAGE_A+3)·u·(|p|+|t|)²` doubled.
/// `norms` is (|pa|², |pa|, |pb|², |pb|); the table's rows are laid out as `TABLE_ROWS` says.
///
/// # Safety
/// The CPU must have AVX2 and FMA, and `t` must hold `(TABLE_ROWS - 1) * cap + 8` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn stage_ab_avx2(
    pa: &[f32; STAGE_A],
    pb: &[f32; STAGE_A],
    norms: &[f32; 4],
    t: &[f32],
    cap: usize,
    thr: f32,
    tail: u32,
) -> (u32, [f32; 8]) {
    use std::arch::x86_64::*;
    debug_assert!(t.len() >= (TABLE_ROWS - 1) * cap + 8);
    const E: f32 = 2.0 * (STAGE_A as f32 + 3.0) * (f32::EPSILON / 2.0);
    // SAFETY (loads): in bounds by the caller's contract.
    let row = |k: usize| unsafe { _mm256_loadu_ps(t.as_ptr().add(k * cap)) };
    let part = |p: &[f32; STAGE_A], n2: f32, n: f32, r0: usize| {
        let mut dot = _mm256_setzero_ps();
        for (k, &pk) in p.iter().enumerate() {
            dot = _mm256_fmadd_ps(_mm256_set1_ps(pk), row(r0 + k), dot);
        }
        let sq = _mm256_add_ps(_mm256_set1_ps(n2), row(r0 + STAGE_A));
        let acc = _mm256_fnmadd_ps(_mm256_set1_ps(2.0), dot, sq);
        let e = _mm256_add_ps(_mm256_set1_ps(n), row(r0 + STAGE_A + 1));
        _mm256_fnmadd_ps(_mm256_mul_ps(_mm256_set1_ps(E), e), e, acc)
    };
    let vthr = _mm256_set1_ps(thr);
    let mut acc = part(pa, norms[0], norms[1], 0);
    let mut mask = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(acc, vthr)) as u32 & tail;
    if mask != 0 {
        acc = _mm256_add_ps(acc, part(pb, norms[2], norms[3], HALF_ROWS));
        mask &= _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(acc, vthr)) as u32;
    }
    let mut out = [0.0f32; 8];
    // SAFETY: `out` holds eight floats.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), acc) };
    (mask, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn refresh_avx2(
    members: &[Member],
    offset: u32,
    cands: &[u64],
    table: &[f32],
    cx: &Ctx,
) -> Vec<(u32, u32, f32)> {
    refresh_body::<true>(members, offset, cands, table, cx)
}

fn refresh(
    members: &[Member],
    offset: u32,
    cands: &[u64],
    table: &[f32],
    cx: &Ctx,
) -> Vec<(u32, u32, f32)> {
    #[cfg(target_arch = "x86_64")]
    if cx.simd
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
    {
        // SAFETY: the CPU has AVX2 and FMA, checked just above. The exact distances come out
        // the same bits in this build: dist2's operation order is fixed by its code and Rust
        // never contracts a multiply and an add into an FMA on its own.
        return unsafe { refresh_avx2(members, offset, cands, table, cx) };
    }
    refresh_body::<false>(members, offset, cands, table, cx)
}

/// Greedy k-center over the rows of `z` (`[n, d]`, already projected). Returns the selected
/// row indices in selection order; `m` of them (clamped to `1..=n`).
pub fn kcenter_greedy(z: &[f32], d: usize, m: usize, first: usize) -> Vec<usize> {
    kcenter_greedy_with(z, d, m, first, true)
}

/// [`kcenter_greedy`], optionally without the SIMD kernel (same result, slower).
fn kcenter_greedy_with(z: &[f32], d: usize, m: usize, first: usize, simd: bool) -> Vec<usize> {
    let n = z.len() / d;
    if n == 0 {
        return Vec::new();
    }
    let m = m.clamp(1, n);
    let row = |i: usize| &z[i * d..(i + 1) * d];
    let Rotated { y, err } = rotate(z, d);

    // Squared distance of every point to its nearest centre so far: exactly the textbook's.
    let mut mind: Vec<f32> = (0..n)
        .into_par_iter()
        .map(|i| dist2(row(i), row(first)))
        .collect();
    let mut all: Vec<Member> = (0..n)
        .map(|i| Member {
            r2: mind[i],
            thr: lb_threshold(mind[i], err),
            idx: i as u32,
            pre: y[i][..STAGE_B].try_into().unwrap(),
        })
        .collect();
    sort_members(&mut all);
    // Clusters: the points whose nearest centre is centre number j, farthest first.
    let mut radius2: Vec<f32> = vec![all[0].r2];
    let mut clusters: Vec<Vec<Member>> = vec![all];
    // Centres' rotated coordinates and norms, for the batched centre-centre bounds.
    let norm = |v: &[f32; ROT]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let mut cen_y: Vec<[f32; ROT]> = vec![y[first]];
    let mut cen_n: Vec<f32> = vec![norm(&y[first])];
    let mut selected = vec![first];
    // Rounding bound of a squared distance computed as |a|²+|b|²-2a·b from f32 rows of ROT
    // values, as a multiple of (|a|+|b|)²: (ROT+3)·u, generously.
    let u = f32::EPSILON / 2.0;
    let gemm_err = 2.0 * (ROT as f32 + 8.0) * u;
    let mut dot: Vec<f32> = Vec::new();
    'outer: while selected.len() < m {
        // --- Lazy phase: pick up to BATCH centres with a heap of upper bounds. ---
        let mut heap: BinaryHeap<HeapEntry> = mind
            .iter()
            .enumerate()
            .map(|(i, &v)| HeapEntry {
                v,
                idx: i as u32,
                upto: 0,
            })
            .collect();
        let mut batch: Vec<usize> = Vec::new();
        while batch.len() < BATCH && selected.len() < m {
            let Some(mut e) = heap.pop() else { break };
            if (e.upto as usize) < batch.len() {
                let i = e.idx as usize;
                let mut thr = lb_threshold(e.v, err);
                for &c in &batch[e.upto as usize..] {
                    let acc = partial2(&y[i][..STAGE_A], &y[c][..STAGE_A]);
                    if acc >= thr || !bound_passes(&y[i], &y[c], acc, thr) {
                        continue;
                    }
                    let dn = dist2(row(i), row(c));
                    if dn < e.v {
                        e.v = dn;
                        thr = lb_threshold(dn, err);
                    }
                }
                e.upto = batch.len() as u32;
                heap.push(e);
                continue;
            }
            if e.v <= 0.0 {
                // Every remaining point coincides with a centre: take unselected points in order.
                let mut taken = vec![false; n];
                selected.iter().for_each(|&s| taken[s] = true);
                selected.extend((0..n).filter(|&i| !taken[i]).take(m - selected.len()));
                break 'outer;
            }
            selected.push(e.idx as usize);
            batch.push(e.idx as usize);
        }
        drop(heap);

        if selected.len() >= m || batch.is_empty() {
            break;
        }
        // --- Refresh: bring every point up to date with the batch's centres. ---
        let nb = batch.len();
        let m_old = clusters.len();
        let by: Vec<[f32; ROT]> = batch.iter().map(|&c| y[c]).collect();
        let bn: Vec<f32> = by.iter().map(norm).collect();
        dot.resize(m_old * nb, 0.0);
        gemm(
            m_old,
            nb,
            ROT,
            cen_y.as_flattened(),
            Trans::N,
            by.as_flattened(),
            Trans::T,
            &mut dot,
            0.0,
        );
        // Per old cluster: the batch centres that may take a member, nearest first, as
        // `cand_key`s in `cand_buf[cand_at[j]..cand_at[j + 1]]`.
        let bn2: Vec<f32> = bn.iter().map(|v| v * v).collect();
        const GROUP: usize = 64;
        let groups: Vec<(Vec<u64>, Vec<u32>)> = dot
            .par_chunks(nb * GROUP)
            .enumerate()
            .map(|(g, rows)| {
                let mut keys: Vec<u64> = Vec::new();
                let mut ends: Vec<u32> = Vec::with_capacity(GROUP);
                let mut lbs = vec![0.0f32; nb];
                for (jj, drow) in rows.chunks_exact(nb).enumerate() {
                    let j = g * GROUP + jj;
                    let lim = pair_limit(radius2[j], err);
                    let na = cen_n[j];
                    let na2 = na * na;
                    let (drow, bn, bn2) = (&drow[..nb], &bn[..nb], &bn2[..nb]);
                    for s in 0..nb {
                        let e = na + bn[s];
                        lbs[s] = na2 + bn2[s] - 2.0 * drow[s] - gemm_err * e * e;
                    }
                    let start = keys.len();
                    keys.resize(start + nb, 0);
                    let mut len = start;
                    for (s, &lb) in lbs.iter().enumerate() {
                        // Branch-free compaction: write always, advance when kept.
                        keys[len] = cand_key(s, lb);
                        len += (lb < lim) as usize;
                    }
                    keys.truncate(len);
                    keys[start..].sort_unstable();
                    ends.push(len as u32);
                }
                (keys, ends)
            })
            .collect();
        let mut cand_buf: Vec<u64> = Vec::new();
        let mut cand_at: Vec<usize> = vec![0];
        for (keys, ends) in &groups {
            let base = cand_buf.len();
            cand_buf.extend_from_slice(keys);
            cand_at.extend(ends.iter().map(|&e| base + e as usize));
        }
        drop(groups);
        let cands = |j: usize| &cand_buf[cand_at[j]..cand_at[j + 1]];
        // The batch centres' first coordinates, transposed, for building task tables.
        let mut byt = vec![0.0f32; TABLE_ROWS * nb];
        for (s, v) in by.iter().enumerate() {
            for (h, part) in v[..STAGE_B].chunks_exact(STAGE_A).enumerate() {
                let r0 = h * HALF_ROWS;
                for (k, &x) in part.iter().enumerate() {
                    byt[(r0 + k) * nb + s] = x;
                }
                let n2: f32 = part.iter().map(|x| x * x).sum();
                byt[(r0 + STAGE_A) * nb + s] = n2;
                byt[(r0 + STAGE_A + 1) * nb + s] = n2.sqrt();
            }
        }
        // Tasks: runs of at most TASK members of one cluster whose farthest member some
        // candidate may take (a run stops early at its first member none can).
        const TASK: usize = 1024;
        let mut tasks: Vec<(u32, u32, u32)> = Vec::new();
        for (j, cluster) in clusters.iter().enumerate() {
            let len = cluster.len();
            if cands(j).is_empty() {
                continue;
            }
            let mut a = 0;
            while a < len {
                let b = (a + TASK).min(len);
                tasks.push((j as u32, a as u32, b as u32));
                a = b;
            }
        }
        let cx = Ctx {
            z,
            d,
            batch: &batch,
            by: &by,
            y: &y,
            err,
            simd,
        };
        let moved: Vec<Vec<(u32, u32, f32)>> = tasks
            .par_iter()
            .map(|&(j, a, b)| {
                let (j, a, b) = (j as usize, a as usize, b as usize);
                let cl = &clusters[j][a..b];
                let cs = cands(j);
                let r2 = if a == 0 { radius2[j] } else { cl[0].r2 };
                if cand_lb(cs[0]) >= pair_limit(r2, err) {
                    return Vec::new();
                }
                // The candidates' first coordinates, transposed, padded to whole blocks.
                let cap = cs.len().next_multiple_of(8);
                // (Padding lanes are masked off, their values never read.)
                let mut table = vec![0.0f32; TABLE_ROWS * cap];
                for (k, tk) in table.chunks_exact_mut(cap).enumerate() {
                    let src = &byt[k * nb..(k + 1) * nb];
                    for (t, &key) in tk.iter_mut().zip(cs) {
                        *t = src[key as u32 as usize];
                    }
                }
                refresh(cl, a as u32, cs, &table, &cx)
            })
            .collect();
        // Apply: movers leave their clusters (ascending positions per cluster, tasks in order).
        let mut fresh: Vec<Vec<Member>> = vec![Vec::new(); nb];
        let mut ti = 0;
        while ti < tasks.len() {
            let j = tasks[ti].0 as usize;
            let mut gone: Vec<usize> = Vec::new();
            while ti < tasks.len() && tasks[ti].0 as usize == j {
                for &(pos, s, dn) in &moved[ti] {
                    let mut mb = clusters[j][pos as usize];
                    mb.r2 = dn;
                    mb.thr = lb_threshold(dn, err);
                    mind[mb.idx as usize] = dn;
                    fresh[s as usize].push(mb);
                    gone.push(pos as usize);
                }
                ti += 1;
            }
            if gone.is_empty() {
                continue;
            }
            let mut g = gone.into_iter().peekable();
            let mut pos = 0;
            clusters[j].retain(|_| {
                let leave = g.peek() == Some(&pos);
                if leave {
                    g.next();
                }
                pos += 1;
                !leave
            });
            radius2[j] = clusters[j].first().map_or(0.0, |m| m.r2);
        }
        fresh.par_iter_mut().for_each(|f| sort_members(f));
        radius2.extend(fresh.iter().map(|f| f.first().map_or(0.0, |m| m.r2)));
        clusters.extend(fresh);
        cen_y.extend_from_slice(&by);
        cen_n.extend_from_slice(&bn);
    }
    selected
}

/// The textbook O(n·k·d) loop: the reference the accelerated version must reproduce.
pub fn kcenter_greedy_naive(z: &[f32], d: usize, m: usize, first: usize) -> Vec<usize> {
    let n = z.len() / d;
    let m = m.clamp(1, n);
    let row = |i: usize| &z[i * d..(i + 1) * d];
    let mut mind = vec![f32::INFINITY; n];
    let mut selected = Vec::with_capacity(m);
    let mut cur = first;
    while selected.len() < m {
        selected.push(cur);
        let cz = row(cur);
        for (i, md) in mind.iter_mut().enumerate() {
            *md = md.min(dist2(row(i), cz));
        }
        // argmax, lowest index on ties.
        cur = (0..n).fold(0, |b, i| if mind[i] > mind[b] { i } else { b });
    }
    selected
}

/// Selects a coreset of the `[n, d]` feature rows `x` per `cfg`; returns row indices.
pub fn select_coreset(x: &[f32], d: usize, cfg: &CoresetConfig) -> Vec<usize> {
    let n = x.len() / d;
    if n == 0 {
        return Vec::new();
    }
    let m = ((n as f64 * cfg.ratio as f64).round() as usize).clamp(1, n);
    select_coreset_of_size(x, d, cfg, m)
}

/// [`select_coreset`] of `m` rows (clamped to `1..=n`) whatever `cfg.ratio` says: the
/// few-shot augmentation keeps the un-augmented bank size (`detector/augment.rs`).
pub fn select_coreset_of_size(x: &[f32], d: usize, cfg: &CoresetConfig, m: usize) -> Vec<usize> {
    let n = x.len() / d;
    if n == 0 {
        return Vec::new();
    }
    let m = m.clamp(1, n);
    let mut rng = Rng::new(cfg.seed);
    let first = rng.below(n);
    if cfg.proj_dim == 0 || cfg.proj_dim >= d {
        kcenter_greedy(x, d, m, first)
    } else {
        let z = random_projection(x, d, cfg.proj_dim, cfg.seed ^ 0x5EED);
        kcenter_greedy(&z, cfg.proj_dim, m, first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::seeded;

    #[test]
    fn accelerated_selection_equals_textbook_greedy() {
        // The last cases pick more than two batches of centres (BATCH = 256), so they run the
        // refresh path, with rotated coordinates both wider and narrower than `d`.
        for &(n, d, m) in &[
            (1, 3, 1),
            (50, 2, 10),
            (700, 8, 70),
            (2000, 16, 150),
            (6000, 24, 700),
            (4000, 100, 900),
        ] {
            // Clustered data (the realistic case) plus uniform noise.
            let mut x = seeded(n * d, n as u64);
            for (i, v) in x.iter_mut().enumerate() {
                *v += ((i / d) % 7) as f32 * 3.0;
            }
            let fast = kcenter_greedy(&x, d, m, 0);
            let portable = kcenter_greedy_with(&x, d, m, 0, false);
            let slow = kcenter_greedy_naive(&x, d, m, 0);
            assert_eq!(fast.len(), m);
            // Exact: the same selection, in the same order, as the textbook loop.
            assert_eq!(fast, slow, "n={n} d={d} m={m}");
            assert_eq!(portable, slow, "portable path, n={n} d={d} m={m}");
        }
    }

    #[test]
    fn duplicates_and_full_selection() {
        let x = vec![1.0, 1.0, 1.0, 1.0, 2.0, 2.0];
        let s = kcenter_greedy(&x, 2, 3, 0);
        let mut sorted = s.clone();
        sorted.sort();
        assert_eq!(sorted, vec![0, 1, 2]);
        let cfg = CoresetConfig {
            ratio: 0.5,
            proj_dim: 2,
            seed: 3,
        };
        assert_eq!(select_coreset(&seeded(40 * 4, 1), 4, &cfg).len(), 20);
    }
}
