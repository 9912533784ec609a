//! AUPRO: area under the per-region-overlap (PRO) curve up to a false positive rate limit
//! (MVTec AD, Bergmann et al., IJCV 2021), computed exactly over every distinct threshold.
//!
//! Definitions, for a threshold `t` (a pixel is predicted anomalous when its score `>= t`):
//! - ground-truth regions: the 8-connected components of every image's mask (see
//!   [`label_components`]; the MVTec evaluation code uses `scipy.ndimage.label` with the full
//!   3x3 structure, i.e. 8-connectivity), `R` regions over all images;
//! - `PRO(t) = (1/R) * sum over regions r of |{p in r : s_p >= t}| / |r|`, the mean over regions
//!   of the fraction of the region predicted anomalous — every region weighs the same, whatever
//!   its size (unlike pixel AUROC, where large defects dominate);
//! - `FPR(t) = |{p negative : s_p >= t}| / N`, over the `N` ground-truth-negative pixels of all
//!   images (images without defects contribute negatives only);
//! - the PRO curve is the polyline through `(FPR(t), PRO(t))` for `t` from +inf (the point
//!   (0, 0)) down through every distinct score (the last point is (1, 1));
//! - `AUPRO(max_fpr) = (1 / max_fpr) * integral from 0 to max_fpr of PRO d FPR`, by the
//!   trapezoid rule on that polyline, the PRO at exactly `max_fpr` linearly interpolated within
//!   the segment that crosses it. The field's standard limit is `max_fpr = 0.3`.
//!
//! Computation (the MVTec reference's exact method): pack every pixel with its region, sort
//! all pixels by descending score, and sweep. Admitting a pixel of region `r` raises PRO by
//! `1 / (|r| R)`; admitting a negative raises the false positive count by 1. A curve point is
//! emitted only after a whole tie group, so tied scores form one (possibly diagonal) segment.
//! False positives are counted in integers; the PRO sum is compensated (Neumaier) so millions
//! of small increments do not drift.

use super::label_components;
use super::sorted::{check_no_nan, key, pack, payload, sort_by_score};
use crate::error::{Error, Result};
use rayon::prelude::*;

/// The FPR limit of the MVTec AD benchmark.
pub const DEFAULT_MAX_FPR: f64 = 0.3;

/// AUPRO of anomaly `maps` against ground-truth `masks` (`true` = anomalous), all images
/// `height x width` row-major, integrated up to `max_fpr` (`0 < max_fpr <= 1`, usually
/// [`DEFAULT_MAX_FPR`]) and normalised by it, so a perfect map gives 1 and a constant map gives
/// `max_fpr / 2`. Errors on mismatched counts or sizes, a NaN score, no ground-truth region, or
/// no negative pixel.
pub fn aupro(
    maps: &[&[f32]],
    masks: &[&[bool]],
    height: usize,
    width: usize,
    max_fpr: f64,
) -> Result<f64> {
    if !(max_fpr > 0.0 && max_fpr <= 1.0) {
        return Err(Error::invalid(format!(
            "aupro: max_fpr must be in (0, 1], got {max_fpr}"
        )));
    }
    let pixels = SortedPixels::new(maps, masks, height, width)?;
    let mut area = Trapezoid::new(max_fpr);
    pixels.sweep(|fpr, pro| area.push(fpr, pro));
    Ok(area.area / max_fpr)
}

/// [`aupro`] and, from the same sweep, the PRO curve up to `max_fpr` for plotting: `(0, 0)`
/// first, the last point at exactly `max_fpr` (interpolated as the area is), and in between
/// at most about `max_points` points (a point is kept once FPR or PRO moved by
/// `1 / max_points` of its range since the last kept one, so a flat run costs nothing).
pub fn aupro_with_curve(
    maps: &[&[f32]],
    masks: &[&[bool]],
    height: usize,
    width: usize,
    max_fpr: f64,
    max_points: usize,
) -> Result<(f64, Vec<(f64, f64)>)> {
    if !(max_fpr > 0.0 && max_fpr <= 1.0) {
        return Err(Error::invalid(format!(
            "aupro: max_fpr must be in (0, 1], got {max_fpr}"
        )));
    }
    let pixels = SortedPixels::new(maps, masks, height, width)?;
    let step = 1.0 / max_points.max(1) as f64;
    let mut area = Trapezoid::new(max_fpr);
    let mut curve = vec![(0.0, 0.0)];
    let mut prev = (0.0, 0.0);
    pixels.sweep(|fpr, pro| {
        let (x0, y0) = prev;
        if fpr >= max_fpr {
            // The segment crossing the limit: its point at max_fpr ends the curve.
            let y_at = y0 + (pro - y0) * ((max_fpr - x0) / (fpr - x0));
            curve.push((max_fpr, y_at));
            return area.push(fpr, pro);
        }
        let last = curve[curve.len() - 1];
        if (fpr - last.0) / max_fpr >= step || pro - last.1 >= step {
            curve.push((fpr, pro));
        }
        prev = (fpr, pro);
        area.push(fpr, pro)
    });
    Ok((area.area / max_fpr, curve))
}

/// The whole PRO curve as `(fpr, pro)` points: `(0, 0)` first, then one point per distinct
/// score from the highest down, ending at `(1, 1)`. Same inputs and errors as [`aupro`].
/// (One point per distinct score: up to one per pixel.)
pub fn pro_curve(
    maps: &[&[f32]],
    masks: &[&[bool]],
    height: usize,
    width: usize,
) -> Result<Vec<(f64, f64)>> {
    let pixels = SortedPixels::new(maps, masks, height, width)?;
    let mut curve = Vec::new();
    pixels.sweep(|fpr, pro| {
        curve.push((fpr, pro));
        true
    });
    Ok(curve)
}

/// All pixels of all images packed as (score, region) and sorted by ascending score.
struct SortedPixels {
    /// `pack(score, g)`: `g = 0` for a negative pixel, else the 1-based global region id.
    sorted: Vec<u64>,
    /// `inv_size[g - 1] = 1 / |region g|`.
    inv_size: Vec<f64>,
    /// Number of negative pixels `N`.
    negatives: usize,
}

impl SortedPixels {
    fn new(maps: &[&[f32]], masks: &[&[bool]], height: usize, width: usize) -> Result<Self> {
        if maps.len() != masks.len() {
            return Err(Error::invalid(format!(
                "aupro: {} maps but {} masks",
                maps.len(),
                masks.len()
            )));
        }
        let hw = height
            .checked_mul(width)
            .filter(|&hw| hw > 0)
            .ok_or_else(|| Error::shape(format!("aupro: bad image size {height}x{width}")))?;
        if maps.is_empty() {
            return Err(Error::invalid("aupro: no images"));
        }
        for (i, (m, g)) in maps.iter().zip(masks).enumerate() {
            if m.len() != hw || g.len() != hw {
                return Err(Error::shape(format!(
                    "aupro: image {i}: map of {} and mask of {} pixels, expected {height}x{width}",
                    m.len(),
                    g.len()
                )));
            }
            check_no_nan(m, &format!("aupro: map {i}"))?;
        }

        // Regions of every mask, then a global numbering: image i's region k is offsets[i] + k.
        let comps = masks
            .par_iter()
            .map(|g| label_components(g, height, width))
            .collect::<Result<Vec<_>>>()?;
        let mut offsets = Vec::with_capacity(comps.len());
        let mut inv_size = Vec::new();
        for c in &comps {
            offsets.push(inv_size.len());
            inv_size.extend(c.sizes.iter().map(|&s| 1.0 / s as f64));
        }
        if inv_size.is_empty() {
            return Err(Error::invalid("aupro: the masks hold no anomalous region"));
        }
        if inv_size.len() >= u32::MAX as usize {
            return Err(Error::invalid("aupro: too many regions for a u32 id"));
        }
        let positives: usize = comps.iter().flat_map(|c| &c.sizes).sum();
        let negatives = maps.len() * hw - positives;
        if negatives == 0 {
            return Err(Error::invalid("aupro: the masks hold no negative pixel"));
        }

        let mut sorted = vec![0u64; maps.len() * hw];
        sorted
            .par_chunks_mut(hw)
            .zip(
                maps.par_iter()
                    .zip(comps.par_iter().zip(offsets.par_iter())),
            )
            .for_each(|(out, (map, (c, &off)))| {
                for ((o, &s), &l) in out.iter_mut().zip(map.iter()).zip(&c.labels) {
                    // Local label 0 (background) stays 0; region k becomes off + k (1-based).
                    let g = if l == 0 { 0 } else { off as u32 + l };
                    *o = pack(s, g);
                }
            });
        drop(comps);
        sort_by_score(&mut sorted);
        Ok(SortedPixels {
            sorted,
            inv_size,
            negatives,
        })
    }

    /// Calls `emit(fpr, pro)` for (0, 0) and then after each tie group, from the highest score
    /// down, until `emit` returns false or the curve reaches (1, 1).
    fn sweep(&self, mut emit: impl FnMut(f64, f64) -> bool) {
        if !emit(0.0, 0.0) {
            return;
        }
        let regions = self.inv_size.len() as f64;
        let n = self.negatives as f64;
        let mut false_pos = 0usize;
        // Sum over admitted positive pixels of 1/|region|; PRO = this / R.
        let mut overlap = Neumaier::default();
        for group in self.sorted.chunk_by(|a, b| key(*a) == key(*b)).rev() {
            for &p in group {
                match payload(p) {
                    0 => false_pos += 1,
                    g => overlap.add(self.inv_size[g as usize - 1]),
                }
            }
            // PRO can exceed 1 by a rounding error only; clamp as the MVTec code does.
            let pro = (overlap.value() / regions).min(1.0);
            if !emit(false_pos as f64 / n, pro) {
                return;
            }
        }
    }
}

/// Compensated summation (Neumaier's variant of Kahan's): the running error of each addition
/// is kept in `c`, so the sum of millions of terms is accurate to about one rounding.
#[derive(Default)]
struct Neumaier {
    sum: f64,
    c: f64,
}

impl Neumaier {
    fn add(&mut self, x: f64) {
        let t = self.sum + x;
        if self.sum.abs() >= x.abs() {
            self.c += (self.sum - t) + x;
        } else {
            self.c += (x - t) + self.sum;
        }
        self.sum = t;
    }

    fn value(&self) -> f64 {
        self.sum + self.c
    }
}

/// Trapezoid area under a polyline fed point by point (x non-decreasing, starting at (0, 0)),
/// from x = 0 to `max_x`; the segment crossing `max_x` is cut there, y linearly interpolated.
struct Trapezoid {
    max_x: f64,
    prev: (f64, f64),
    area: f64,
}

impl Trapezoid {
    fn new(max_x: f64) -> Self {
        Trapezoid {
            max_x,
            prev: (0.0, 0.0),
            area: 0.0,
        }
    }

    /// Adds the segment from the previous point to `(x, y)`; false once `max_x` is reached.
    fn push(&mut self, x: f64, y: f64) -> bool {
        let (x0, y0) = self.prev;
        if x >= self.max_x {
            // Here x0 < max_x <= x, so the division is safe (and exact 1 when x == max_x).
            let y_at = y0 + (y - y0) * ((self.max_x - x0) / (x - x0));
            self.area += 0.5 * (y0 + y_at) * (self.max_x - x0);
            return false;
        }
        self.area += 0.5 * (y0 + y) * (x - x0);
        self.prev = (x, y);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    // A worked example: two 2x3 images (scores | mask, '#' = anomalous).
    //
    //   image A              image B
    //   0.9  0.2  0.6 | # # .     0.6  0.1  0.2 | . . .
    //   0.1  0.1  0.1 | . . .     0.1  0.1  0.7 | . . #
    //
    // Regions: r1 = A's top-left pair (size 2), r2 = B's bottom-right pixel (size 1); R = 2.
    // Negatives: 4 in A + 5 in B, N = 9.
    // Thresholds from the top (PRO = (frac r1 + frac r2) / 2, FPR = FP / 9):
    //   t = 0.9: r1 1/2, r2 0          -> PRO 0.25, FP 0 -> (0, 0.25)
    //   t = 0.7: r2 1                  -> PRO 0.75, FP 0 -> (0, 0.75)
    //   t = 0.6: A(0,2), B(0,0) neg    -> PRO 0.75, FP 2 -> (2/9, 0.75)
    //   t = 0.2: r1 full AND B(0,2) neg (a tie across classes: one diagonal segment)
    //                                  -> PRO 1,    FP 3 -> (1/3, 1)
    //   t = 0.1: everything            -> (1, 1)
    // Area to 0.3: flat 0.75 over [0, 2/9] = 1/6; the diagonal (2/9, 0.75)-(1/3, 1) has slope
    // 9/4, so PRO(0.3) = 0.75 + 9/4 * (0.3 - 2/9) = 0.75 + 9/4 * 7/90 = 0.925, and the cut
    // trapezoid is (0.75 + 0.925)/2 * 7/90 = 67/80 * 7/90 = 469/7200. Total 1669/7200;
    // AUPRO = 1669/7200 / 0.3 = 1669/2160.
    // Area to 1: 1/6 + (0.75 + 1)/2 * 1/9 + 1 * 2/3 = 67/72.
    // Area to 0.1 (inside the flat part): 0.75 * 0.1 -> AUPRO 0.75.
    const A: [f32; 6] = [0.9, 0.2, 0.6, 0.1, 0.1, 0.1];
    const B: [f32; 6] = [0.6, 0.1, 0.2, 0.1, 0.1, 0.7];
    const MA: [bool; 6] = [true, true, false, false, false, false];
    const MB: [bool; 6] = [false, false, false, false, false, true];

    #[test]
    fn worked_example_curve() {
        let c = pro_curve(&[&A, &B], &[&MA, &MB], 2, 3).unwrap();
        let want = [
            (0.0, 0.0),
            (0.0, 0.25),
            (0.0, 0.75),
            (2.0 / 9.0, 0.75),
            (1.0 / 3.0, 1.0),
            (1.0, 1.0),
        ];
        assert_eq!(c.len(), want.len(), "{c:?}");
        for (got, want) in c.iter().zip(want) {
            assert!(close(got.0, want.0) && close(got.1, want.1), "{c:?}");
        }
    }

    #[test]
    fn worked_example_area() {
        let au = |max_fpr| aupro(&[&A, &B], &[&MA, &MB], 2, 3, max_fpr).unwrap();
        assert!(close(au(0.3), 1669.0 / 2160.0), "{}", au(0.3));
        assert!(close(au(1.0), 67.0 / 72.0), "{}", au(1.0));
        assert!(close(au(0.1), 0.75), "{}", au(0.1));
        // Exactly at a curve point (1/3): 1/6 + 7/72 = 19/72 over 1/3 = 19/24.
        assert!(close(au(1.0 / 3.0), 19.0 / 24.0), "{}", au(1.0 / 3.0));
        assert!(close(au(DEFAULT_MAX_FPR), au(0.3)));
    }

    #[test]
    fn worked_example_area_and_curve_in_one_sweep() {
        let (a, c) = aupro_with_curve(&[&A, &B], &[&MA, &MB], 2, 3, 0.3, 1000).unwrap();
        assert!(close(a, 1669.0 / 2160.0), "{a}");
        // The curve up to 0.3, cut at PRO(0.3) = 0.925.
        let want = [
            (0.0, 0.0),
            (0.0, 0.25),
            (0.0, 0.75),
            (2.0 / 9.0, 0.75),
            (0.3, 0.925),
        ];
        assert_eq!(c.len(), want.len(), "{c:?}");
        for (got, want) in c.iter().zip(want) {
            assert!(close(got.0, want.0) && close(got.1, want.1), "{c:?}");
        }
        // One point: no inner point moved a whole range, so only the two ends are left, and
        // the area is still exact.
        let (a, c) = aupro_with_curve(&[&A, &B], &[&MA, &MB], 2, 3, 0.3, 1).unwrap();
        assert_eq!(c.len(), 2, "{c:?}");
        assert!(close(a, 1669.0 / 2160.0), "{a}");
    }

    #[test]
    fn defect_free_image_adds_negatives_only() {
        // Add an image C with no defect and all scores 0 (below everything): N = 15, so the
        // curve becomes (0, .25) (0, .75) (2/15, .75) (3/15, 1) (9/15, 1) (1, 1).
        // Area to 0.3: 0.75 * 2/15 + (0.75 + 1)/2 * 1/15 + 1 * (0.3 - 0.2) = 31/120;
        // AUPRO = 31/120 / 0.3 = 31/36.
        let c = [0.0f32; 6];
        let mc = [false; 6];
        let a = aupro(&[&A, &B, &c], &[&MA, &MB, &mc], 2, 3, 0.3).unwrap();
        assert!(close(a, 31.0 / 36.0), "{a}");
    }

    #[test]
    fn perfect_constant_and_inverted_maps() {
        let mask = [true, false, false, true, true, false];
        let perfect: Vec<f32> = mask.iter().map(|&m| if m { 1.0 } else { 0.0 }).collect();
        let inverted: Vec<f32> = perfect.iter().map(|s| 1.0 - s).collect();
        let constant = [0.5f32; 6];
        let au = |map: &[f32], max_fpr| aupro(&[map], &[&mask], 2, 3, max_fpr).unwrap();
        for max_fpr in [0.3, 0.05, 1.0] {
            assert_eq!(au(&perfect, max_fpr), 1.0);
            assert_eq!(au(&inverted, max_fpr), 0.0);
            // One tie group: the diagonal (0, 0)-(1, 1), mean height max_fpr / 2.
            assert!(close(au(&constant, max_fpr), max_fpr / 2.0));
        }
    }

    #[test]
    fn regions_weigh_equally_whatever_their_size() {
        // 1x6: a region of 3 pixels and one of 1 pixel (not touching), 2 negatives.
        // Scores find the small region first: (0, 0.5) then the big one: (0, 1).
        let mask = [true, true, true, false, true, false];
        let map = [0.5f32, 0.5, 0.5, 0.0, 0.9, 0.0];
        let c = pro_curve(&[&map], &[&mask], 1, 6).unwrap();
        assert_eq!(c, vec![(0.0, 0.0), (0.0, 0.5), (0.0, 1.0), (1.0, 1.0)]);
    }

    #[test]
    fn diagonal_pixels_form_one_region() {
        // 2x4 mask:   # . . #
        //             . # . .
        // 8-connectivity: r1 = {(0,0), (1,1)} (diagonal contact), r2 = {(0,3)}; R = 2.
        // Only (0,3) scores high: PRO = (0 + 1) / 2 = 0.5. (4-connectivity would see 3 regions
        // and give 1/3.)
        let mask = [true, false, false, true, false, true, false, false];
        let map = [0.0f32, 0.0, 0.0, 0.9, 0.0, 0.0, 0.0, 0.0];
        let c = pro_curve(&[&map], &[&mask], 2, 4).unwrap();
        assert_eq!(c[1], (0.0, 0.5), "{c:?}");
    }

    #[test]
    fn errors() {
        let m = [0.1f32, 0.2];
        let g = [true, false];
        assert!(aupro(&[&m], &[&g], 1, 2, 0.3).is_ok());
        assert!(aupro(&[&m], &[&g], 1, 2, 0.0).is_err());
        assert!(aupro(&[&m], &[&g], 1, 2, 1.5).is_err());
        assert!(aupro(&[&m], &[&g], 1, 2, f64::NAN).is_err());
        assert!(aupro(&[&m], &[&g], 2, 2, 0.3).is_err()); // wrong size
        assert!(aupro(&[&m], &[], 1, 2, 0.3).is_err()); // count mismatch
        assert!(aupro(&[], &[], 1, 2, 0.3).is_err()); // no images
        assert!(aupro(&[&m], &[&[false, false]], 1, 2, 0.3).is_err()); // no region
        assert!(aupro(&[&m], &[&[true, true]], 1, 2, 0.3).is_err()); // no negative
        assert!(aupro(&[&[0.1, f32::NAN]], &[&g], 1, 2, 0.3).is_err());
    }

    #[test]
    fn trapezoid_cuts_and_interpolates() {
        // y = x from (0,0) to (1,1): area to 0.5 is 0.125.
        let mut t = Trapezoid::new(0.5);
        assert!(!t.push(1.0, 1.0));
        assert!(close(t.area, 0.125));
        // A vertical jump at exactly max_x adds nothing.
        let mut t = Trapezoid::new(0.5);
        assert!(t.push(0.25, 0.0));
        assert!(!t.push(0.5, 0.0));
        assert_eq!(t.area, 0.0);
    }

    #[test]
    fn neumaier_sums_small_terms() {
        let mut s = Neumaier::default();
        let n = 3_000_000;
        for _ in 0..n {
            s.add(1.0 / n as f64);
        }
        assert!((s.value() - 1.0).abs() < 1e-15);
    }
}
