//! Patch score of the image score: the plain nearest-prototype distance, or PatchCore's
//! reweighting of it (Roth et al., "Towards Total Recall in Industrial Anomaly Detection",
//! CVPR 2022, Eq. 7):
//!
//! ```text
//! s = (1 - exp(|m_test - m*|) / Σ_{m ∈ N_b(m*)} exp(|m_test - m|)) · s*
//! ```
//!
//! `m_test` is the test patch with the largest nearest-prototype distance `s*`, `m*` its nearest
//! prototype and `N_b(m*)` the `b` prototypes nearest to `m*` (`m*` itself among them, as in
//! anomalib's PatchCore, so the weight lies in `[1 - 1/b, 1)`). The weight is close to 1 when
//! `m*` sits alone in the bank (every other neighbour is much farther from `m_test`: a rare
//! normal pattern, so a distance from it means more) and close to `1 - 1/b` when `m*` sits in
//! a dense region the test patch is about equally far from.
//!
//! **Which patch.** As in the paper, the weight of the image's most abnormal patch (the
//! largest raw patch distance, before upsampling and blur) scales the image score; the map
//! and so every pixel metric and mask is unchanged. Reweighting every patch would need the
//! `b` neighbours of every patch's prototype (784 bank scans per image, or a neighbour graph
//! per bank and per calibration fold bank) for a map the paper does not reweight.
//!
//! **Exact and deterministic.** The pruned search index ([`crate::ops::nn_search`]) is exact
//! in distance but may resolve a tie between equidistant prototypes either way (and the GPU
//! search differs again). So the weight does not reuse its answer: `m*` and `N_b(m*)` come
//! from a direct scan of the bank in a fixed order, with direct `Σ (a - b)²` distances and
//! ties broken by the lower bank row, and the softmax is computed in f64 relative to the
//! smallest distance (no overflow: `exp(d_m - d*)` with `d_m >= d*`). The weight is then a
//! function of the patch feature and the bank alone, the same on every device and thread count.

use crate::error::{Error, Result};

/// The patch score behind the image score (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PatchScore {
    /// The nearest-prototype distance (models written before this field).
    #[default]
    Nn,
    /// PatchCore's Eq. 7 with the `b` nearest prototypes of `m*` (`m*` included; the paper
    /// uses `b = 9`).
    Reweighted { b: usize },
}

/// PatchCore's `b`.
pub const DEFAULT_B: usize = 9;
/// Largest `b` a model may ask for (a weight costs `b` distances plus two bank scans).
pub const MAX_B: usize = 1024;

impl std::str::FromStr for PatchScore {
    type Err = String;
    /// `nn`, `reweighted` (b = 9) or `reweighted:B` (2 <= B <= 1024).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || {
            format!(
                "patch score '{s}': expected nn, reweighted or reweighted:B (2 <= B <= {MAX_B})"
            )
        };
        match s {
            "nn" => Ok(PatchScore::Nn),
            "reweighted" => Ok(PatchScore::Reweighted { b: DEFAULT_B }),
            _ => {
                let b = s
                    .strip_prefix("reweighted:")
                    .and_then(|b| b.parse::<usize>().ok())
                    .ok_or_else(bad)?;
                if (2..=MAX_B).contains(&b) {
                    Ok(PatchScore::Reweighted { b })
                } else {
                    Err(bad())
                }
            }
        }
    }
}

/// Direct squared distance (the reference summation order, no expansion).
fn dist2(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Index of the bank row nearest to `q` (`[P, dim]` bank, direct distances, ties to the lower
/// row), and that squared distance.
fn nearest_direct(q: &[f32], bank: &[f32], dim: usize) -> (usize, f32) {
    let mut best = (0, f32::INFINITY);
    for (j, p) in bank.chunks_exact(dim).enumerate() {
        let d = dist2(q, p);
        if d < best.1 {
            best = (j, d);
        }
    }
    best
}

/// The `b` bank rows nearest to row `star` (itself first, then the others by direct
/// distance, ties to the lower row). Fewer when the bank is smaller.
pub fn neighbours_of(star: usize, bank: &[f32], dim: usize, b: usize) -> Vec<usize> {
    let m = &bank[star * dim..(star + 1) * dim];
    let mut others: Vec<(f32, usize)> = bank
        .chunks_exact(dim)
        .enumerate()
        .filter(|&(j, _)| j != star)
        .map(|(j, p)| (dist2(m, p), j))
        .collect();
    let keep = (b.max(1) - 1).min(others.len());
    // (distance, row) is a total order: the selection does not depend on the sort's internals.
    let cmp = |a: &(f32, usize), b: &(f32, usize)| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1));
    if keep > 0 && keep < others.len() {
        others.select_nth_unstable_by(keep - 1, cmp);
    }
    others.truncate(keep);
    others.sort_by(cmp);
    std::iter::once(star)
        .chain(others.into_iter().map(|(_, j)| j))
        .collect()
}

/// PatchCore's weight `1 - exp(|q - m*|) / Σ_{m ∈ N_b(m*)} exp(|q - m|)` of the patch feature
/// `q` against `bank` (`[P, dim]`, `P >= 1`). In `[1 - 1/b, 1)` (0 for a one-row bank).
pub fn weight(q: &[f32], bank: &[f32], dim: usize, b: usize) -> f32 {
    let (star, d_star2) = nearest_direct(q, bank, dim);
    let d_star = (d_star2 as f64).sqrt();
    // exp(|q - m*|) / Σ exp(|q - m|) = 1 / Σ exp(|q - m| - |q - m*|); m* is the nearest row,
    // so every exponent is >= 0 and the sum >= 1 (m* contributes exactly 1).
    let sum: f64 = neighbours_of(star, bank, dim, b)
        .iter()
        .map(|&j| {
            let d = (dist2(q, &bank[j * dim..(j + 1) * dim]) as f64).sqrt();
            (d - d_star).max(0.0).exp()
        })
        .sum();
    (1.0 - 1.0 / sum) as f32
}

/// Index of the largest patch score of one image (the first on a tie).
pub fn argmax(patches: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in patches.iter().enumerate() {
        if v > patches[best] {
            best = i;
        }
    }
    best
}

/// The image-score weight of each image: `patches` is `[n * per]` patch scores, `feats`
/// `[n * per, dim]` their features. A non-finite weight is an error naming the image.
pub fn image_weights(
    patches: &[f32],
    feats: &[f32],
    bank: &[f32],
    dim: usize,
    per: usize,
    b: usize,
    class: &str,
) -> Result<Vec<f32>> {
    use rayon::prelude::*;
    if bank.is_empty() || patches.len() * dim != feats.len() || !patches.len().is_multiple_of(per) {
        return Err(Error::shape(format!(
            "reweighting: {} patch scores, {} features, bank of {} values (dim {dim})",
            patches.len(),
            feats.len(),
            bank.len()
        )));
    }
    let w: Vec<f32> = patches
        .par_chunks(per)
        .enumerate()
        .map(|(i, p)| {
            let r = i * per + argmax(p);
            weight(&feats[r * dim..(r + 1) * dim], bank, dim, b)
        })
        .collect();
    if let Some(i) = w.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite {
            class: class.to_string(),
            image: i,
            stage: "reweighting",
            value: w[i],
        });
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::seeded;

    /// Eq. 7 written out the slow way: all distances, full sorts, exp of raw distances.
    fn brute_force(q: &[f32], bank: &[f32], dim: usize, b: usize) -> f64 {
        let rows: Vec<&[f32]> = bank.chunks(dim).collect();
        let d = |a: &[f32], c: &[f32]| -> f64 {
            a.iter()
                .zip(c)
                .map(|(x, y)| ((x - y) as f64).powi(2))
                .sum::<f64>()
                .sqrt()
        };
        let mut by_q: Vec<(f64, usize)> =
            rows.iter().enumerate().map(|(j, p)| (d(q, p), j)).collect();
        by_q.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let star = by_q[0].1;
        let mut by_star: Vec<(f64, usize)> = rows
            .iter()
            .enumerate()
            .map(|(j, p)| (d(rows[star], p), j))
            .collect();
        by_star.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let nb: Vec<usize> = by_star.iter().take(b).map(|x| x.1).collect();
        assert_eq!(nb[0], star, "m* is its own nearest row (distance 0)");
        let num = d(q, rows[star]).exp();
        let den: f64 = nb.iter().map(|&j| d(q, rows[j]).exp()).sum();
        1.0 - num / den
    }

    #[test]
    fn weight_matches_eq7_by_brute_force_on_random_data() {
        for (seed, (p, dim, b)) in [
            (40, 8, 9),
            (300, 16, 9),
            (57, 5, 3),
            (6, 4, 9),
            (200, 152, 9),
        ]
        .into_iter()
        .enumerate()
        {
            // Small values keep exp(|q - m|) finite for the brute force.
            let bank: Vec<f32> = seeded(p * dim, seed as u64 + 1)
                .iter()
                .map(|v| v * 0.3)
                .collect();
            for k in 0..10 {
                let q: Vec<f32> = seeded(dim, 100 + k).iter().map(|v| v * 0.3).collect();
                let got = weight(&q, &bank, dim, b);
                let want = brute_force(&q, &bank, dim, b);
                assert!(
                    (got as f64 - want).abs() < 1e-5,
                    "p {p} dim {dim} b {b}: {got} vs {want}"
                );
                let lo = 1.0 - 1.0 / b.min(p) as f32;
                assert!(got >= lo - 1e-6 && got < 1.0, "{got} outside [{lo}, 1)");
            }
        }
    }

    #[test]
    fn weight_is_exact_where_raw_exponentials_overflow() {
        // Distances ~1000: exp overflows f64, the shifted form does not.
        let dim = 4;
        let bank = [0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 3.0, 0.0, 0.0];
        let q = [1000.0, 0.0, 0.0, 0.0];
        let w = weight(&q, &bank, dim, 3);
        // d* = 999 (row 1); rows 0 and 2 at 1000 and sqrt(1000² + 9).
        let d2 = (1000.0f64 * 1000.0 + 9.0).sqrt();
        let want = 1.0 - 1.0 / (1.0 + 1f64.exp() + (d2 - 999.0).exp());
        assert!((w as f64 - want).abs() < 1e-4, "{w} vs {want}");
    }

    #[test]
    fn neighbours_break_ties_by_row_and_include_the_row_itself() {
        // Rows 0..4 on a line: 0, 1, -1, 2, 1 (row 4 duplicates row 1).
        let bank = [0.0, 1.0, -1.0, 2.0, 1.0];
        assert_eq!(neighbours_of(0, &bank, 1, 3), vec![0, 1, 2]);
        assert_eq!(neighbours_of(1, &bank, 1, 3), vec![1, 4, 0]);
        assert_eq!(neighbours_of(4, &bank, 1, 2), vec![4, 1]);
        assert_eq!(neighbours_of(3, &bank, 1, 99).len(), 5);
        // A query equidistant from duplicate rows 1 and 4 takes row 1: same weight either way.
        assert_eq!(nearest_direct(&[1.2], &bank, 1).0, 1);
    }

    #[test]
    fn image_weights_use_each_images_most_abnormal_patch() {
        let dim = 2;
        let bank = seeded(50 * dim, 9);
        let feats = seeded(2 * 3 * dim, 10);
        let patches = [0.1, 0.9, 0.3, 0.5, 0.2, 0.7];
        let w = image_weights(&patches, &feats, &bank, dim, 3, 9, "c").unwrap();
        assert_eq!(w[0], weight(&feats[2..4], &bank, dim, 9));
        assert_eq!(w[1], weight(&feats[10..12], &bank, dim, 9));
        assert!(image_weights(&patches, &feats[..4], &bank, dim, 3, 9, "c").is_err());
    }

    #[test]
    fn models_written_before_the_options_load_as_nn_without_augmentation() {
        let mut v =
            serde_json::to_value(crate::detector::model_dir::ModelConfig::default()).unwrap();
        v["map"].as_object_mut().unwrap().remove("patch_score");
        v.as_object_mut().unwrap().remove("augment");
        let c: crate::detector::model_dir::ModelConfig = serde_json::from_value(v).unwrap();
        assert_eq!(c.map.patch_score, PatchScore::Nn);
        assert!(c.augment.is_empty());
        // A bad b in a model.json is refused, naming the field.
        let mut bad = crate::detector::model_dir::ModelConfig::default();
        bad.map.patch_score = PatchScore::Reweighted { b: 1 };
        let e = bad.check("m/model.json".as_ref()).unwrap_err().to_string();
        assert!(e.contains("map.patch_score.reweighted.b"), "{e}");
    }

    #[test]
    fn patch_score_parses_and_rejects_bad_b() {
        assert_eq!("nn".parse::<PatchScore>(), Ok(PatchScore::Nn));
        assert_eq!(
            "reweighted".parse::<PatchScore>(),
            Ok(PatchScore::Reweighted { b: 9 })
        );
        assert_eq!(
            "reweighted:4".parse::<PatchScore>(),
            Ok(PatchScore::Reweighted { b: 4 })
        );
        for bad in [
            "reweighted:1",
            "reweighted:0",
            "reweighted:x",
            "knn",
            "reweighted:5000",
        ] {
            assert!(bad.parse::<PatchScore>().is_err(), "{bad}");
        }
    }
}
