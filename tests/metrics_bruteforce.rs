//! The exact metrics of `pmad::metrics` against slow, obviously-correct versions written from
//! the definitions, on seeded random data with many ties (scores quantised to a few levels).
//!
//! The brute-force versions share nothing with the library: AUROC counts all pairs, F1 and
//! AUPRO recompute every count at every distinct threshold, regions come from a naive
//! label-propagation loop, and the trapezoid follows the MVTec reference's `trapezoid()`
//! (cut at the bisect point, interpolation as a correction term).

use pmad::metrics::{
    aupro, aupro_with_curve, auroc, f1_max, label_components, pro_curve, roc_curve,
};
use pmad::rng::Rng;

/// `n` scores on `levels` distinct values (0 = continuous) and labels with `P(true) = p_pos`;
/// positives score a little higher on average so the metrics are not all near 0.5.
fn random_scored(rng: &mut Rng, n: usize, levels: usize, p_pos: f32) -> (Vec<f32>, Vec<bool>) {
    let labels: Vec<bool> = (0..n).map(|_| rng.uniform() < p_pos).collect();
    let scores = labels
        .iter()
        .map(|&l| {
            let s = rng.uniform() + if l { 0.3 } else { 0.0 };
            quantise(s, levels)
        })
        .collect();
    (scores, labels)
}

fn quantise(s: f32, levels: usize) -> f32 {
    if levels == 0 {
        s
    } else {
        (s * levels as f32).floor() / levels as f32
    }
}

/// sum over (pos, neg) pairs of [s_p > s_n] + 1/2 [s_p == s_n], over P N.
fn auroc_pairs(scores: &[f32], labels: &[bool]) -> f64 {
    let pos: Vec<f32> = scores
        .iter()
        .zip(labels)
        .filter(|(_, l)| **l)
        .map(|(s, _)| *s)
        .collect();
    let neg: Vec<f32> = scores
        .iter()
        .zip(labels)
        .filter(|(_, l)| !**l)
        .map(|(s, _)| *s)
        .collect();
    let mut twice_wins = 0u64;
    for sp in &pos {
        for sn in &neg {
            twice_wins += if sp > sn {
                2
            } else if sp == sn {
                1
            } else {
                0
            };
        }
    }
    twice_wins as f64 / (2.0 * pos.len() as f64 * neg.len() as f64)
}

/// Distinct scores, highest first.
fn thresholds_desc(scores: &[f32]) -> Vec<f32> {
    let mut t = scores.to_vec();
    t.sort_by(|a, b| b.partial_cmp(a).unwrap());
    t.dedup();
    t
}

fn f1_brute(scores: &[f32], labels: &[bool]) -> f64 {
    let positives = labels.iter().filter(|&&l| l).count();
    let mut best = 0.0f64;
    for t in thresholds_desc(scores) {
        let tp = scores
            .iter()
            .zip(labels)
            .filter(|(s, l)| **s >= t && **l)
            .count();
        let fp = scores
            .iter()
            .zip(labels)
            .filter(|(s, l)| **s >= t && !**l)
            .count();
        let precision = if tp + fp > 0 {
            tp as f64 / (tp + fp) as f64
        } else {
            0.0
        };
        let recall = tp as f64 / positives as f64;
        if precision + recall > 0.0 {
            best = best.max(2.0 * precision * recall / (precision + recall));
        }
    }
    best
}

/// Regions by label propagation: every foreground pixel starts with its own index and takes
/// the minimum over its 8 neighbours until nothing changes. Returns each region's pixel list.
fn regions_naive(mask: &[bool], h: usize, w: usize) -> Vec<Vec<usize>> {
    let mut lab: Vec<usize> = (0..h * w).collect();
    loop {
        let mut changed = false;
        for y in 0..h as isize {
            for x in 0..w as isize {
                let i = (y * w as isize + x) as usize;
                if !mask[i] {
                    continue;
                }
                for dy in -1..=1isize {
                    for dx in -1..=1isize {
                        let (ny, nx) = (y + dy, x + dx);
                        if ny < 0 || nx < 0 || ny >= h as isize || nx >= w as isize {
                            continue;
                        }
                        let j = (ny * w as isize + nx) as usize;
                        if mask[j] && lab[j] < lab[i] {
                            lab[i] = lab[j];
                            changed = true;
                        }
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    let mut roots: Vec<usize> = (0..h * w).filter(|&i| mask[i]).map(|i| lab[i]).collect();
    roots.sort_unstable();
    roots.dedup();
    roots
        .iter()
        .map(|&r| (0..h * w).filter(|&i| mask[i] && lab[i] == r).collect())
        .collect()
}

/// The PRO curve from the definitions: (0, 0), then for every distinct threshold (highest
/// first) the mean region overlap and the false positive rate, each counted from scratch.
fn pro_curve_brute(maps: &[Vec<f32>], masks: &[Vec<bool>], h: usize, w: usize) -> Vec<(f64, f64)> {
    let regions: Vec<(usize, Vec<usize>)> = masks
        .iter()
        .enumerate()
        .flat_map(|(img, m)| regions_naive(m, h, w).into_iter().map(move |r| (img, r)))
        .collect();
    let negatives: usize = masks
        .iter()
        .map(|m| m.iter().filter(|&&b| !b).count())
        .sum();
    let all: Vec<f32> = maps.iter().flatten().copied().collect();
    let mut curve = vec![(0.0, 0.0)];
    for t in thresholds_desc(&all) {
        let pro: f64 = regions
            .iter()
            .map(|(img, r)| {
                r.iter().filter(|&&i| maps[*img][i] >= t).count() as f64 / r.len() as f64
            })
            .sum::<f64>()
            / regions.len() as f64;
        let fp: usize = maps
            .iter()
            .zip(masks)
            .map(|(s, m)| s.iter().zip(m).filter(|(s, m)| **s >= t && !**m).count())
            .sum();
        curve.push((fp as f64 / negatives as f64, pro));
    }
    curve
}

/// The MVTec reference's trapezoid with an upper limit: integrate the points with x <= x_max,
/// plus, when x_max is not a curve x, the piece from the last x below it to x_max with y
/// interpolated between its neighbours.
fn trapezoid_mvtec(curve: &[(f64, f64)], x_max: f64) -> f64 {
    let mut correction = 0.0;
    if !curve.iter().any(|p| p.0 == x_max) {
        let ins = curve.partition_point(|p| p.0 <= x_max); // bisect_right
        assert!(ins > 0 && ins < curve.len());
        let (x0, y0) = curve[ins - 1];
        let (x1, y1) = curve[ins];
        let y_interp = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0);
        correction = 0.5 * (y_interp + y0) * (x_max - x0);
    }
    let kept: Vec<_> = curve.iter().filter(|p| p.0 <= x_max).collect();
    kept.windows(2)
        .map(|p| 0.5 * (p[0].1 + p[1].1) * (p[1].0 - p[0].0))
        .sum::<f64>()
        + correction
}

/// Random masks: per image, no defect (prob 1/3) or random pixels at a random density, which
/// makes many regions of various sizes, diagonal contacts included.
fn random_masks(rng: &mut Rng, n_img: usize, h: usize, w: usize) -> Vec<Vec<bool>> {
    (0..n_img)
        .map(|_| {
            if rng.below(3) == 0 {
                vec![false; h * w]
            } else {
                let density = rng.range(0.05, 0.6);
                (0..h * w).map(|_| rng.uniform() < density).collect()
            }
        })
        .collect()
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

#[test]
fn auroc_matches_pair_count() {
    let mut rng = Rng::new(11);
    for case in 0..60 {
        let n = 2 + rng.below(300);
        let levels = [0, 2, 3, 10, 10, 10][case % 6];
        let p_pos = rng.range(0.05, 0.95);
        let (s, l) = random_scored(&mut rng, n, levels, p_pos);
        let n_pos = l.iter().filter(|&&b| b).count();
        if n_pos == 0 || n_pos == n {
            assert!(auroc(&s, &l).is_err());
            continue;
        }
        let (fast, slow) = (auroc(&s, &l).unwrap(), auroc_pairs(&s, &l));
        assert!(close(fast, slow, 1e-12), "case {case}: {fast} vs {slow}");
        // The ROC curve's trapezoid area is the AUROC.
        let curve = roc_curve(&s, &l).unwrap();
        assert_eq!((curve[0], curve[curve.len() - 1]), ((0.0, 0.0), (1.0, 1.0)));
        let area: f64 = curve
            .windows(2)
            .map(|p| 0.5 * (p[0].1 + p[1].1) * (p[1].0 - p[0].0))
            .sum();
        assert!(close(area, slow, 1e-12), "case {case}: {area} vs {slow}");
    }
    // Larger cases (1e8 pairs), where the parallel sort splits the work.
    for levels in [10, 0] {
        let (s, l) = random_scored(&mut rng, 20_000, levels, 0.5);
        let (fast, slow) = (auroc(&s, &l).unwrap(), auroc_pairs(&s, &l));
        assert!(close(fast, slow, 1e-12), "{fast} vs {slow}");
    }
    // Scores of both signs (the sort keys of negative floats are bit-flipped).
    let (s, l) = random_scored(&mut rng, 20_000, 50, 0.3);
    let s: Vec<f32> = s.iter().map(|x| x - 0.9).collect();
    let (fast, slow) = (auroc(&s, &l).unwrap(), auroc_pairs(&s, &l));
    assert!(close(fast, slow, 1e-12), "{fast} vs {slow}");
}

#[test]
fn auroc_invariances() {
    let mut rng = Rng::new(12);
    let (s, l) = random_scored(&mut rng, 500, 10, 0.3);
    let a = auroc(&s, &l).unwrap();
    // A strictly increasing map of the scores changes nothing (only the order matters).
    let t: Vec<f32> = s.iter().map(|x| 3.0 * x - 7.0).collect();
    assert_eq!(auroc(&t, &l).unwrap(), a);
    // Negating the scores gives 1 - AUROC (ties stay 1/2).
    let neg: Vec<f32> = s.iter().map(|x| -x).collect();
    assert!(close(auroc(&neg, &l).unwrap(), 1.0 - a, 1e-12));
    // Swapping the classes also gives 1 - AUROC.
    let flipped: Vec<bool> = l.iter().map(|b| !b).collect();
    assert!(close(auroc(&s, &flipped).unwrap(), 1.0 - a, 1e-12));
}

#[test]
fn f1_max_matches_brute_force() {
    let mut rng = Rng::new(13);
    for case in 0..60 {
        let n = 1 + rng.below(200);
        let levels = [0, 2, 10][case % 3];
        let p_pos = rng.range(0.05, 0.95);
        let (s, l) = random_scored(&mut rng, n, levels, p_pos);
        if !l.contains(&true) {
            assert!(f1_max(&s, &l).is_err());
            continue;
        }
        let (fast, slow) = (f1_max(&s, &l).unwrap(), f1_brute(&s, &l));
        assert!(close(fast, slow, 1e-12), "case {case}: {fast} vs {slow}");
    }
    // A larger case, scores of both signs.
    let (s, l) = random_scored(&mut rng, 30_000, 20, 0.1);
    let s: Vec<f32> = s.iter().map(|x| x - 0.5).collect();
    let (fast, slow) = (f1_max(&s, &l).unwrap(), f1_brute(&s, &l));
    assert!(close(fast, slow, 1e-12), "{fast} vs {slow}");
}

#[test]
fn components_match_label_propagation() {
    let mut rng = Rng::new(14);
    for _ in 0..50 {
        let (h, w) = (1 + rng.below(12), 1 + rng.below(12));
        let density = rng.range(0.1, 0.7);
        let mask: Vec<bool> = (0..h * w).map(|_| rng.uniform() < density).collect();
        let c = label_components(&mask, h, w).unwrap();
        let naive = regions_naive(&mask, h, w);
        // Same partition: every naive region is exactly one label, with the right size.
        assert_eq!(c.count(), naive.len());
        for r in &naive {
            let l = c.labels[r[0]];
            assert!(l >= 1 && r.iter().all(|&i| c.labels[i] == l));
            assert_eq!(c.sizes[l as usize - 1], r.len());
        }
        // Labels numbered in raster order of first pixel (naive regions are sorted by their
        // smallest index, which is their first pixel).
        let firsts: Vec<u32> = naive.iter().map(|r| c.labels[r[0]]).collect();
        assert_eq!(firsts, (1..=naive.len() as u32).collect::<Vec<_>>());
    }
}

#[test]
fn aupro_matches_brute_force() {
    let mut rng = Rng::new(15);
    let mut checked = 0;
    for case in 0..80 {
        let n_img = 1 + rng.below(4);
        let (h, w) = (1 + rng.below(8), 1 + rng.below(8));
        let levels = [10, 10, 3, 0][case % 4];
        let masks = random_masks(&mut rng, n_img, h, w);
        let maps: Vec<Vec<f32>> = masks
            .iter()
            .map(|m| {
                m.iter()
                    .map(|&b| quantise(rng.uniform() + if b { 0.4 } else { 0.0 }, levels))
                    .collect()
            })
            .collect();
        let map_refs: Vec<&[f32]> = maps.iter().map(|m| m.as_slice()).collect();
        let mask_refs: Vec<&[bool]> = masks.iter().map(|m| m.as_slice()).collect();
        let any_pos = masks.iter().flatten().any(|&b| b);
        let any_neg = masks.iter().flatten().any(|&b| !b);
        if !any_pos || !any_neg {
            assert!(aupro(&map_refs, &mask_refs, h, w, 0.3).is_err());
            continue;
        }
        checked += 1;

        let slow_curve = pro_curve_brute(&maps, &masks, h, w);
        let fast_curve = pro_curve(&map_refs, &mask_refs, h, w).unwrap();
        assert_eq!(fast_curve.len(), slow_curve.len(), "case {case}");
        for (f, s) in fast_curve.iter().zip(&slow_curve) {
            assert!(
                close(f.0, s.0, 1e-12) && close(f.1, s.1, 1e-12),
                "case {case}: {f:?} vs {s:?}"
            );
        }
        for max_fpr in [0.3, 0.05, 1.0, rng.range(0.01, 1.0) as f64] {
            let fast = aupro(&map_refs, &mask_refs, h, w, max_fpr).unwrap();
            let slow = trapezoid_mvtec(&slow_curve, max_fpr) / max_fpr;
            assert!(
                close(fast, slow, 1e-10),
                "case {case} max_fpr {max_fpr}: {fast} vs {slow}"
            );
            // The same area with the curve; unthinned (every step is far above 1e-6), the
            // curve is the brute-force one below max_fpr, then the cut at max_fpr.
            let (with, curve) =
                aupro_with_curve(&map_refs, &mask_refs, h, w, max_fpr, 1_000_000).unwrap();
            assert_eq!(with, fast, "case {case}");
            let below: Vec<_> = slow_curve.iter().filter(|p| p.0 < max_fpr).collect();
            assert_eq!(
                curve.len(),
                below.len() + 1,
                "case {case} {max_fpr}: {curve:?}"
            );
            for (f, s) in curve.iter().zip(below) {
                assert!(
                    close(f.0, s.0, 1e-12) && close(f.1, s.1, 1e-12),
                    "case {case}"
                );
            }
            assert_eq!(curve[curve.len() - 1].0, max_fpr, "case {case}");
        }
    }
    assert!(checked > 40, "only {checked} usable random cases");
}

#[test]
fn aupro_matches_brute_force_large() {
    // 3 images of 96x120 = 34560 pixels, many regions. Quantised scores keep the
    // brute force cheap (one pass over all pixels per distinct score).
    let mut rng = Rng::new(17);
    let (h, w) = (96, 120);
    for levels in [10, 50] {
        let mut masks = random_masks(&mut rng, 3, h, w);
        masks[0] = (0..h * w).map(|_| rng.uniform() < 0.3).collect(); // at least one region
        let maps: Vec<Vec<f32>> = masks
            .iter()
            .map(|m| {
                m.iter()
                    .map(|&b| quantise(rng.uniform() + if b { 0.2 } else { 0.0 }, levels))
                    .collect()
            })
            .collect();
        let map_refs: Vec<&[f32]> = maps.iter().map(|m| m.as_slice()).collect();
        let mask_refs: Vec<&[bool]> = masks.iter().map(|m| m.as_slice()).collect();
        let slow_curve = pro_curve_brute(&maps, &masks, h, w);
        let fast_curve = pro_curve(&map_refs, &mask_refs, h, w).unwrap();
        assert_eq!(fast_curve.len(), slow_curve.len());
        for (f, s) in fast_curve.iter().zip(&slow_curve) {
            assert!(
                close(f.0, s.0, 1e-12) && close(f.1, s.1, 1e-12),
                "{f:?} vs {s:?}"
            );
        }
        for max_fpr in [0.3, 0.01, 1.0] {
            let fast = aupro(&map_refs, &mask_refs, h, w, max_fpr).unwrap();
            let slow = trapezoid_mvtec(&slow_curve, max_fpr) / max_fpr;
            assert!(
                close(fast, slow, 1e-10),
                "max_fpr {max_fpr}: {fast} vs {slow}"
            );
        }
    }
}

/// Manual speed check, not run by default and asserting nothing about time:
/// `cargo test --release --test metrics_bruteforce -- --ignored --nocapture`.
/// 100 maps of 256x256 (6.5M pixels), half with defects.
#[test]
#[ignore]
fn manual_timing_6m_pixels() {
    use std::time::Instant;
    let (n_img, h, w) = (100, 256, 256);
    let mut rng = Rng::new(16);
    let mut masks = vec![vec![false; h * w]; n_img];
    for m in masks.iter_mut().step_by(2) {
        // A few rectangles per defective image.
        for _ in 0..1 + rng.below(4) {
            let (y0, x0) = (rng.below(h - 40), rng.below(w - 40));
            let (dy, dx) = (1 + rng.below(40), 1 + rng.below(40));
            for y in y0..y0 + dy {
                m[y * w + x0..y * w + x0 + dx].fill(true);
            }
        }
    }
    let maps: Vec<Vec<f32>> = masks
        .iter()
        .map(|m| {
            m.iter()
                .map(|&b| rng.normal() + if b { 1.5 } else { 0.0 })
                .collect()
        })
        .collect();
    let map_refs: Vec<&[f32]> = maps.iter().map(|m| m.as_slice()).collect();
    let mask_refs: Vec<&[bool]> = masks.iter().map(|m| m.as_slice()).collect();
    let flat_scores: Vec<f32> = maps.concat();
    let flat_labels: Vec<bool> = masks.concat();

    // Process CPU seconds (all threads; Linux only, 0 elsewhere): on a shared machine the wall
    // time also counts waiting for a core, the CPU time does not.
    let cpu = || -> f64 {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        // After the ")" closing the command name, field k of the file is token k - 3; utime and
        // stime (fields 14, 15) count ticks of 1/100 s.
        let f: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let tick = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
        (tick(11) + tick(12)) / 100.0
    };
    for _ in 0..2 {
        let (t, c) = (Instant::now(), cpu());
        let a = auroc(&flat_scores, &flat_labels).unwrap();
        let (t_auroc, c_auroc) = (t.elapsed().as_secs_f64(), cpu() - c);
        let (t, c) = (Instant::now(), cpu());
        let p = aupro(&map_refs, &mask_refs, h, w, 0.3).unwrap();
        let (t_aupro, c_aupro) = (t.elapsed().as_secs_f64(), cpu() - c);
        let (t, c) = (Instant::now(), cpu());
        let f = f1_max(&flat_scores, &flat_labels).unwrap();
        let (t_f1, c_f1) = (t.elapsed().as_secs_f64(), cpu() - c);
        println!(
            "{} pixels, {} threads (wall s / cpu s): auroc {a:.6} {t_auroc:.3}/{c_auroc:.2}, \
             aupro {p:.6} {t_aupro:.3}/{c_aupro:.2}, f1_max {f:.6} {t_f1:.3}/{c_f1:.2}",
            flat_scores.len(),
            rayon::current_num_threads()
        );
    }
}
