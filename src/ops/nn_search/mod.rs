//! Nearest-prototype search: for every query row, the index of the closest bank row and the
//! squared Euclidean distance to it.
//!
//! `|q - p|² = |q|² - 2 q·p + |p|²`. The cross term for a block of queries against a tile of
//! the bank is one GEMM; the argmin is fused right after it while the tile is in cache, so the
//! full `Q x P` distance matrix never exists. Work is split over query blocks (one thread
//! each), each walking the whole bank.
//!
//! Exactness note: the expansion loses a few ulps against a direct `Σ (q-p)²`; distances are
//! clamped at 0 and ties may resolve differently from a direct loop only for near-equal
//! distances (the tests check the chosen distance is within tolerance of the true minimum).
//!
//! [`nearest_rows`] is the brute force: it reads every bank row for every query. For a bank
//! searched many times, [`BankIndex`] (built once) gives the same answer several times
//! faster: two exact lower bounds (cluster balls, and a principal-subspace projection) skip
//! the rows that provably lie farther than one already found.

mod index;
mod kmeans;
mod subspace;

pub use index::{BankIndex, IndexParams, SearchStats};
pub use kmeans::kmeans;
pub use subspace::{scatter_matrix, top_eigenspace};

use crate::error::{Error, Result};
use crate::ops::matmul::{Trans, gemm};
use crate::tensor::Tensor;
use rayon::prelude::*;

pub const QUERY_BLOCK: usize = 128;
pub const BANK_TILE: usize = 512;

/// Result of a search: per query, best bank index and squared distance.
#[derive(Clone, Debug, Default)]
pub struct Nearest {
    pub index: Vec<u32>,
    pub dist2: Vec<f32>,
}

/// Squared norm of each `d`-wide row.
pub fn row_sq_norms(x: &[f32], d: usize) -> Vec<f32> {
    x.par_chunks(d)
        .map(|r| r.iter().map(|v| v * v).sum())
        .collect()
}

/// Slice kernel. `queries` is `[nq, d]`, `bank` is `[np, d]`, `bank_sq` its row norms.
pub fn nearest_rows(queries: &[f32], bank: &[f32], bank_sq: &[f32], d: usize) -> Nearest {
    let nq = queries.len() / d;
    let np = bank.len() / d;
    assert!(np > 0, "nearest search in an empty bank");
    let blocks: Vec<(Vec<u32>, Vec<f32>)> = queries
        .par_chunks(QUERY_BLOCK * d)
        .map(|qblk| {
            let qb = qblk.len() / d;
            let mut best = vec![f32::INFINITY; qb];
            let mut best_i = vec![0u32; qb];
            let mut dots = vec![0.0f32; qb * BANK_TILE];
            for p0 in (0..np).step_by(BANK_TILE) {
                let pt = BANK_TILE.min(np - p0);
                let dt = &mut dots[..qb * pt];
                gemm(
                    qb,
                    pt,
                    d,
                    qblk,
                    Trans::N,
                    &bank[p0 * d..(p0 + pt) * d],
                    Trans::T,
                    dt,
                    0.0,
                );
                let psq = &bank_sq[p0..p0 + pt];
                for i in 0..qb {
                    // Fused argmin of |p|² - 2 q·p over the tile (|q|² is constant per row).
                    let row = &dt[i * pt..(i + 1) * pt];
                    let (mut bv, mut bj) = (best[i], u32::MAX);
                    for (j, (&dot, &sq)) in row.iter().zip(psq).enumerate() {
                        let v = sq - 2.0 * dot;
                        if v < bv {
                            bv = v;
                            bj = j as u32;
                        }
                    }
                    if bj != u32::MAX {
                        best[i] = bv;
                        best_i[i] = p0 as u32 + bj;
                    }
                }
            }
            for (i, b) in best.iter_mut().enumerate() {
                let qsq: f32 = qblk[i * d..(i + 1) * d].iter().map(|v| v * v).sum();
                *b = (*b + qsq).max(0.0);
            }
            (best_i, best)
        })
        .collect();
    let mut out = Nearest {
        index: Vec::with_capacity(nq),
        dist2: Vec::with_capacity(nq),
    };
    for (i, dd) in blocks {
        out.index.extend(i);
        out.dist2.extend(dd);
    }
    out
}

/// Tensor-level search: `queries [Q, D]`, `bank [P, D]` (any float storage).
pub fn nearest(queries: &Tensor, bank: &Tensor) -> Result<Nearest> {
    if queries.rank() != 2 || bank.rank() != 2 || queries.dim(1) != bank.dim(1) || bank.dim(0) == 0
    {
        return Err(Error::shape(format!(
            "nearest: queries {:?} bank {:?}",
            queries.shape(),
            bank.shape()
        )));
    }
    let d = bank.dim(1);
    let bv = bank.f32s();
    let sq = row_sq_norms(&bv, d);
    Ok(nearest_rows(&queries.f32s(), &bv, &sq, d))
}

/// Direct `Σ (q-p)²` loop: the reference.
pub fn nearest_naive(queries: &[f32], bank: &[f32], d: usize) -> Nearest {
    let mut out = Nearest::default();
    for q in queries.chunks(d) {
        let (mut bi, mut bd) = (0u32, f32::INFINITY);
        for (j, p) in bank.chunks(d).enumerate() {
            let dd: f32 = q.iter().zip(p).map(|(a, b)| (a - b) * (a - b)).sum();
            if dd < bd {
                bd = dd;
                bi = j as u32;
            }
        }
        out.index.push(bi);
        out.dist2.push(bd);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::seeded;

    #[test]
    fn matches_direct_search_on_ragged_sizes() {
        for &(nq, np, d) in &[(1, 1, 3), (130, 517, 17), (300, 1100, 152)] {
            let q = seeded(nq * d, 1);
            let p = seeded(np * d, 2);
            let sq = row_sq_norms(&p, d);
            let got = nearest_rows(&q, &p, &sq, d);
            let want = nearest_naive(&q, &p, d);
            for i in 0..nq {
                // Same distance within rounding; the index may differ only on a near tie.
                assert!(
                    (got.dist2[i] - want.dist2[i]).abs() <= 1e-4 * (1.0 + want.dist2[i]),
                    "query {i}"
                );
                if got.index[i] != want.index[i] {
                    let pi = &p[got.index[i] as usize * d..][..d];
                    let true_d: f32 = q[i * d..(i + 1) * d]
                        .iter()
                        .zip(pi)
                        .map(|(a, b)| (a - b) * (a - b))
                        .sum();
                    assert!((true_d - want.dist2[i]).abs() <= 1e-4 * (1.0 + want.dist2[i]));
                }
            }
        }
    }

    #[test]
    fn finds_exact_copies() {
        let d = 8;
        let p = seeded(50 * d, 3);
        let q: Vec<f32> = p[17 * d..18 * d].to_vec();
        let r = nearest(
            &Tensor::new(q, &[1, d]).unwrap(),
            &Tensor::new(p, &[50, d]).unwrap(),
        )
        .unwrap();
        assert_eq!(r.index[0], 17);
        assert!(r.dist2[0] < 1e-5);
    }
}
