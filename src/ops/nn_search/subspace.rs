//! Principal subspace of a set of rows: an orthonormal basis of the `k` directions of largest
//! variance, for the projection lower bound of [`BankIndex`](super::BankIndex).
//!
//! The bound is valid for *any* orthonormal basis; a principal one only makes it tight. So
//! the basis comes from a few rounds of orthogonal (block power) iteration on the `d x d`
//! covariance, `V <- orth(C V)`, rather than a full eigendecomposition: `k·d²` work per
//! round, and the captured variance converges long before the individual eigenvectors do.
//! Orthonormality, which the bound does rely on, is restored by Gram-Schmidt every round
//! (in f64).

use crate::ops::matmul::{Trans, gemm};
use crate::rng::Rng;

/// Unnormalised covariance `Xᵀ X` (`[d, d]`, f64) of the centred rows `x [n, d]`.
pub fn scatter_matrix(x: &[f32], d: usize) -> Vec<f64> {
    let n = x.len() / d;
    let mut c = vec![0.0f32; d * d];
    gemm(d, d, n, x, Trans::T, x, Trans::N, &mut c, 0.0);
    c.into_iter().map(f64::from).collect()
}

/// Orthonormal rows `[k, d]` spanning (approximately, after `iters` rounds) the top-`k`
/// eigenvectors of the symmetric positive semi-definite `c [d, d]`. `k <= d`.
pub fn top_eigenspace(c: &[f64], d: usize, k: usize, iters: usize, seed: u64) -> Vec<f64> {
    assert!(k <= d && c.len() == d * d, "top_eigenspace: k {k}, d {d}");
    let mut rng = Rng::new(seed);
    let mut v: Vec<f64> = (0..k * d).map(|_| rng.normal() as f64).collect();
    orthonormalise(&mut v, d, &mut rng);
    let mut w = vec![0.0f64; k * d];
    for _ in 0..iters {
        // w_i = C v_i (C is symmetric, so rows of C serve as its columns).
        for (wi, vi) in w.chunks_mut(d).zip(v.chunks(d)) {
            for (wr, cr) in wi.iter_mut().zip(c.chunks(d)) {
                *wr = cr.iter().zip(vi).map(|(a, b)| a * b).sum();
            }
        }
        std::mem::swap(&mut v, &mut w);
        orthonormalise(&mut v, d, &mut rng);
    }
    v
}

/// Modified Gram-Schmidt on the rows of `v [k, d]`, done twice ("twice is enough" for
/// orthogonality to working precision). A row that collapses (the matrix has rank below
/// `k`) is replaced by a random one and orthonormalised again.
fn orthonormalise(v: &mut [f64], d: usize, rng: &mut Rng) {
    let k = v.len() / d;
    for i in 0..k {
        for _attempt in 0..8 {
            let before = norm(&v[i * d..(i + 1) * d]);
            for _pass in 0..2 {
                for j in 0..i {
                    let (done, rest) = v.split_at_mut(i * d);
                    let (vj, vi) = (&done[j * d..(j + 1) * d], &mut rest[..d]);
                    let dot: f64 = vi.iter().zip(vj).map(|(a, b)| a * b).sum();
                    vi.iter_mut().zip(vj).for_each(|(a, b)| *a -= dot * b);
                }
            }
            let vi = &mut v[i * d..(i + 1) * d];
            let after = norm(vi);
            if after > 1e-10 * before.max(f64::MIN_POSITIVE) && after > 0.0 {
                vi.iter_mut().for_each(|a| *a /= after);
                break;
            }
            vi.iter_mut().for_each(|a| *a = rng.normal() as f64);
        }
    }
}

fn norm(x: &[f64]) -> f64 {
    x.iter().map(|a| a * a).sum::<f64>().sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Q diag(eig) Qᵀ` for a random orthogonal `Q`; returns it and `Q`'s rows.
    fn known_matrix(eig: &[f64], seed: u64) -> (Vec<f64>, Vec<f64>) {
        let d = eig.len();
        let mut rng = Rng::new(seed);
        let mut q: Vec<f64> = (0..d * d).map(|_| rng.normal() as f64).collect();
        orthonormalise(&mut q, d, &mut rng);
        let mut c = vec![0.0; d * d];
        for (e, qi) in eig.iter().zip(q.chunks(d)) {
            for r in 0..d {
                for s in 0..d {
                    c[r * d + s] += e * qi[r] * qi[s];
                }
            }
        }
        (c, q)
    }

    /// `Σ_i v_i v_iᵀ` of the rows of `v`.
    fn projector(v: &[f64], d: usize) -> Vec<f64> {
        let mut p = vec![0.0; d * d];
        for vi in v.chunks(d) {
            for r in 0..d {
                for s in 0..d {
                    p[r * d + s] += vi[r] * vi[s];
                }
            }
        }
        p
    }

    #[test]
    fn finds_the_top_eigenspace_of_a_known_matrix() {
        let eig = [10.0, 7.0, 5.0, 1.0, 0.5, 0.2, 0.1, 0.0];
        let d = eig.len();
        let (c, q) = known_matrix(&eig, 3);
        let v = top_eigenspace(&c, d, 3, 60, 9);
        // Orthonormal rows.
        for i in 0..3 {
            for j in 0..3 {
                let dot: f64 = v[i * d..(i + 1) * d]
                    .iter()
                    .zip(&v[j * d..(j + 1) * d])
                    .map(|(a, b)| a * b)
                    .sum();
                assert!((dot - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12);
            }
        }
        // Same subspace as the true top-3 eigenvectors: equal projectors.
        let (pv, pq) = (projector(&v, d), projector(&q[..3 * d], d));
        for (a, b) in pv.iter().zip(&pq) {
            assert!((a - b).abs() < 1e-9, "{a} vs {b}");
        }
        // And the top-3 part of C is reconstructed: V C Vᵀ has trace 10 + 7 + 5.
        let trace: f64 = v
            .chunks(d)
            .map(|vi| {
                (0..d)
                    .map(|r| vi[r] * (0..d).map(|s| c[r * d + s] * vi[s]).sum::<f64>())
                    .sum::<f64>()
            })
            .sum();
        assert!((trace - 22.0).abs() < 1e-9);
    }

    #[test]
    fn rank_deficient_matrix_still_gives_an_orthonormal_basis() {
        // Rank 1, k = 3: the extra rows are arbitrary but must stay orthonormal.
        let eig = [4.0, 0.0, 0.0, 0.0, 0.0];
        let d = eig.len();
        let (c, _) = known_matrix(&eig, 4);
        let v = top_eigenspace(&c, d, 3, 10, 1);
        let p = projector(&v, d);
        let trace: f64 = (0..d).map(|i| p[i * d + i]).sum();
        assert!((trace - 3.0).abs() < 1e-9);
    }

    #[test]
    fn scatter_matrix_is_xtx() {
        let x = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let c = scatter_matrix(&x, 2);
        assert_eq!(c, vec![35.0, 44.0, 44.0, 56.0]);
    }
}
