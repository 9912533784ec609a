//! From per-patch abnormality to the outputs a user sees (METHOD.md §7 and issue spec):
//! the `grid x grid` patch scores are bilinearly upsampled to the map size, blurred with a
//! Gaussian (σ = 4 at 256 px, scaled with the map size), and the image score is the map's max.
//! Nothing here looks at any other image: no normalisation by test-set statistics.

use crate::ops::blur::gaussian_blur;
use crate::ops::resize::bilinear_plane;

/// How patch scores become a map.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MapSpec {
    /// Side of the output anomaly map in pixels.
    pub size: usize,
    /// Gaussian σ in pixels of a 256-pixel map; scaled proportionally for other sizes.
    pub sigma_at_256: f32,
}

impl Default for MapSpec {
    fn default() -> Self {
        MapSpec {
            size: 256,
            sigma_at_256: 4.0,
        }
    }
}

/// An anomaly map and its image-level score.
#[derive(Clone, Debug)]
pub struct AnomalyMap {
    pub size: usize,
    pub values: Vec<f32>,
    pub score: f32,
}

/// Patch scores `[grid*grid]` -> blurred map + max.
pub fn patch_scores_to_map(patch: &[f32], grid: usize, spec: &MapSpec) -> AnomalyMap {
    let mut values = vec![0.0; spec.size * spec.size];
    bilinear_plane(patch, grid, grid, spec.size, spec.size, &mut values);
    gaussian_blur(
        &mut values,
        spec.size,
        spec.size,
        spec.sigma_at_256 * spec.size as f32 / 256.0,
    );
    let score = values.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    AnomalyMap {
        size: spec.size,
        values,
        score,
    }
}

/// Value at quantile `q` (0..=1, linear interpolation) of `v` (not modified).
pub fn quantile(v: &[f32], q: f32) -> f32 {
    if v.is_empty() {
        return f32::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let pos = q.clamp(0.0, 1.0) * (s.len() - 1) as f32;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    s[lo] + (s[hi] - s[lo]) * (pos - lo as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_peaks_where_the_patch_is_abnormal() {
        let grid = 28;
        let mut p = vec![0.0; grid * grid];
        p[10 * grid + 20] = 5.0;
        let m = patch_scores_to_map(&p, grid, &MapSpec::default());
        let argmax = m
            .values
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0;
        let (y, x) = (argmax / 256, argmax % 256);
        // Patch (10, 20) covers pixels ~[91..100] x [183..192].
        assert!((88..104).contains(&y) && (180..196).contains(&x), "{y} {x}");
        assert!(m.score > 0.0 && m.score < 5.0, "blur spreads the peak");
        assert_eq!(quantile(&[3.0, 1.0, 2.0], 0.5), 2.0);
        assert_eq!(quantile(&[1.0, 2.0], 0.25), 1.25);
    }
}
