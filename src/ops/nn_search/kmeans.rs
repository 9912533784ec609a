//! Lloyd's k-means on rows: partitions a prototype bank into compact clusters for
//! [`BankIndex`](super::BankIndex).
//!
//! The search bounds are correct for *any* centroids (each cluster's radius is measured on
//! its final rows); k-means only makes the clusters small, so the bounds prune well. An
//! iteration assigns every row to its nearest centroid (one [`nearest_rows`] GEMM pass) and
//! moves each centroid to the mean of its rows (summed in f64).

use super::{nearest_rows, row_sq_norms};
use crate::rng::Rng;

/// `k` centroids `[k', d]` (`k' = min(k, n)`) of the rows `x [n, d]` after `iters` Lloyd
/// iterations, started from `k'` distinct random rows drawn with `seed`. A centroid that
/// loses all its rows stays where it was (the index drops empty clusters).
pub fn kmeans(x: &[f32], d: usize, k: usize, iters: usize, seed: u64) -> Vec<f32> {
    let n = x.len() / d;
    let k = k.min(n);
    let mut pick: Vec<usize> = (0..n).collect();
    Rng::new(seed).shuffle(&mut pick);
    let mut centroids: Vec<f32> = pick[..k]
        .iter()
        .flat_map(|&i| x[i * d..(i + 1) * d].iter().copied())
        .collect();
    for _ in 0..iters {
        let assign = nearest_rows(x, &centroids, &row_sq_norms(&centroids, d), d).index;
        let mut sum = vec![0f64; k * d];
        let mut count = vec![0usize; k];
        for (row, &a) in x.chunks(d).zip(&assign) {
            let a = a as usize;
            count[a] += 1;
            for (s, &v) in sum[a * d..(a + 1) * d].iter_mut().zip(row) {
                *s += v as f64;
            }
        }
        for ((c, s), &m) in centroids.chunks_mut(d).zip(sum.chunks(d)).zip(&count) {
            if m > 0 {
                c.iter_mut()
                    .zip(s)
                    .for_each(|(c, &s)| *c = (s / m as f64) as f32);
            }
        }
    }
    centroids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separates_well_separated_blobs() {
        // Three tight blobs far apart: k-means with k = 3 puts one centroid on each.
        let d = 4;
        let centers = [
            [0.0f32, 0.0, 0.0, 0.0],
            [50.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 50.0, 0.0],
        ];
        let mut rng = Rng::new(5);
        let mut x = Vec::new();
        for i in 0..90 {
            for &c in &centers[i % 3] {
                x.push(c + rng.range(-1.0, 1.0));
            }
        }
        // Enough restarts of the seed to be robust to an unlucky start (two seeds in one blob).
        let ok = (0..5).any(|seed| {
            let cent = kmeans(&x, d, 3, 10, seed);
            centers.iter().all(|c| {
                cent.chunks(d)
                    .any(|m| m.iter().zip(c).map(|(a, b)| (a - b) * (a - b)).sum::<f32>() < 1.0)
            })
        });
        assert!(ok);
    }

    #[test]
    fn caps_k_at_the_row_count() {
        let x = [1.0f32, 2.0, 3.0, 4.0];
        assert_eq!(kmeans(&x, 2, 5, 3, 1).len(), 4);
    }
}
