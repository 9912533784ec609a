//! The two mask placements: patches one by one, weighted, without replacement
//! ([`sample_weighted`]), and rectangular blocks ([`sample_blockwise`], appendix Algorithm 1).

use super::super::{GRID, PATCHES};
use crate::rng::Rng;

/// Weights below this (zero, negative or non-finite ones included) count as this much, so a
/// zero-weight patch can still be drawn, after the heavier ones (100x less likely than a
/// patch of weight 1).
pub const WEIGHT_FLOOR: f32 = 0.01;

/// Smallest block area Algorithm 1 draws (while at least this many patches remain).
const MIN_BLOCK: usize = 4;
/// Block aspect ratios are drawn uniformly in `[MIN_ASPECT, 1 / MIN_ASPECT)`.
const MIN_ASPECT: f32 = 0.3;
/// Consecutive blocks that add nothing before blockwise placement gives up and fills the
/// remainder by weighted sampling (only the uniform top-left placement can miss: an
/// anchored block always covers its unmasked anchor).
const MAX_FAILED_BLOCKS: usize = 50;

/// A weight as the samplers use it: at least [`WEIGHT_FLOOR`], non-finite -> the floor.
fn floored(w: f32) -> f32 {
    if w.is_finite() {
        w.max(WEIGHT_FLOOR)
    } else {
        WEIGHT_FLOOR
    }
}

/// Adds `count` unmasked patches to `mask` by weighted sampling without replacement
/// (Efraimidis–Spirakis: each candidate gets the key `ln(u) / w`, `u ~ U(0, 1]`, equivalent to
/// `u^(1/w)`, and the largest keys win). Unmasked `allowed` patches are taken first; when
/// fewer than needed remain, all of them are taken and the rest come from the other unmasked
/// patches, still by key. `weights == None` means uniform weights. One uniform is drawn per
/// unmasked patch, in index order. Returns how many patches were added (`count` unless the
/// grid runs out).
pub(super) fn fill_weighted(
    mask: &mut [bool],
    weights: Option<&[f32]>,
    allowed: &[bool],
    count: usize,
    rng: &mut Rng,
) -> usize {
    // (outside the allowed region, key, index) for every unmasked patch.
    let mut candidates: Vec<(bool, f32, usize)> = (0..mask.len())
        .filter(|&i| !mask[i])
        .map(|i| {
            let w = weights.map_or(1.0, |w| floored(w[i]));
            let u = 1.0 - rng.uniform(); // (0, 1]: ln(u) is finite
            (!allowed[i], u.ln() / w, i)
        })
        .collect();
    // Allowed first, then larger key, then lower index (a total order: deterministic).
    candidates.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)).then(a.2.cmp(&b.2)));
    let take = count.min(candidates.len());
    for &(_, _, i) in &candidates[..take] {
        mask[i] = true;
    }
    take
}

/// Weighted sampling without replacement: exactly `min(count, n)` of the `n` patches are
/// masked, patch `i` drawn with odds proportional to `max(weights[i], WEIGHT_FLOOR)`
/// (Efraimidis–Spirakis keys, so zero-weight patches come last but can still be drawn).
///
/// Only `allowed` patches are drawn while there are enough of them. When `allowed` holds fewer
/// than `count` patches, all of them are masked and the remainder is drawn, by weight, from
/// the other patches, so the ratio is always met.
///
/// Panics when `weights` and `allowed` differ in length.
pub fn sample_weighted(
    weights: &[f32],
    allowed: &[bool],
    count: usize,
    rng: &mut Rng,
) -> Vec<bool> {
    assert_eq!(
        weights.len(),
        allowed.len(),
        "weights and allowed differ in length"
    );
    let mut mask = vec![false; weights.len()];
    fill_weighted(&mut mask, Some(weights), allowed, count, rng);
    mask
}

/// One weighted draw among the unmasked patches of `region` (odds `max(w, WEIGHT_FLOOR)`,
/// uniform when `weights` is `None`). `None` when no such patch is left.
fn draw_anchor(
    weights: Option<&[f32]>,
    region: &[bool],
    mask: &[bool],
    rng: &mut Rng,
) -> Option<usize> {
    let candidates: Vec<(usize, f64)> = (0..PATCHES)
        .filter(|&i| region[i] && !mask[i])
        .map(|i| (i, weights.map_or(1.0, |w| floored(w[i])) as f64))
        .collect();
    let total: f64 = candidates.iter().map(|c| c.1).sum();
    let mut target = rng.uniform() as f64 * total;
    for &(i, w) in &candidates {
        if target < w {
            return Some(i);
        }
        target -= w;
    }
    candidates.last().map(|c| c.0) // rounding left a sliver past the end
}

/// Blockwise placement; also returns the number of blocks placed (for the tests).
pub(super) fn blockwise_fill(
    weights: Option<&[f32]>,
    allowed: Option<&[bool]>,
    count: usize,
    rng: &mut Rng,
) -> (Vec<bool>, usize) {
    let target = count.min(PATCHES);
    let everything = [true; PATCHES];
    let allowed_or_all: &[bool] = allowed.unwrap_or(&everything);
    // The paper's placement (uniform top-left) when nothing steers it; otherwise each block is
    // centred on an anchor patch drawn by weight among the unmasked patches of the region.
    let uniform_top_left = weights.is_none() && allowed.is_none();
    let mut mask = vec![false; PATCHES];
    let mut masked = 0usize;
    let mut restricted = allowed.is_some();
    let mut blocks = 0usize;
    let mut failures = 0usize;
    // The cells the last block added, and its centre (row, col), for the final trim.
    let mut last_cells: Vec<usize> = Vec::new();
    let mut last_centre = (0f32, 0f32);

    while masked < target {
        let region: &[bool] = if restricted {
            allowed_or_all
        } else {
            &everything
        };
        if restricted && !(0..PATCHES).any(|i| region[i] && !mask[i]) {
            // The allowed region is full: keep placing blocks anywhere (ratio always met).
            restricted = false;
            continue;
        }
        if failures >= MAX_FAILED_BLOCKS {
            // Safety net against endless misses: weighted sampling for the remainder.
            masked += fill_weighted(&mut mask, weights, allowed_or_all, target - masked, rng);
            last_cells.clear();
            break;
        }
        // Algorithm 1: size ~ U(4, remaining), aspect ~ U(0.3, 1/0.3),
        // h = sqrt(size * aspect), w = sqrt(size / aspect), rounded and clamped to the grid.
        let remaining = target - masked;
        let size = rng.range(MIN_BLOCK.min(remaining) as f32, remaining as f32);
        let aspect = rng.range(MIN_ASPECT, 1.0 / MIN_ASPECT);
        let h = ((size * aspect).sqrt().round() as usize).clamp(1, GRID);
        let w = ((size / aspect).sqrt().round() as usize).clamp(1, GRID);
        let (top, left) = if uniform_top_left {
            (rng.below(GRID - h + 1), rng.below(GRID - w + 1))
        } else {
            let Some(anchor) = draw_anchor(weights, region, &mask, rng) else {
                break; // unreachable: the region has an unmasked patch (checked above)
            };
            let (r, c) = (anchor / GRID, anchor % GRID);
            (
                r.saturating_sub(h / 2).min(GRID - h),
                c.saturating_sub(w / 2).min(GRID - w),
            )
        };
        // Add the block's unmasked cells that lie in the region.
        let mut cells = Vec::new();
        for r in top..top + h {
            for c in left..left + w {
                let i = r * GRID + c;
                if region[i] && !mask[i] {
                    mask[i] = true;
                    cells.push(i);
                }
            }
        }
        if cells.is_empty() {
            failures += 1;
            continue;
        }
        failures = 0;
        blocks += 1;
        masked += cells.len();
        last_cells = cells;
        last_centre = (
            top as f32 + (h - 1) as f32 / 2.0,
            left as f32 + (w - 1) as f32 / 2.0,
        );
    }

    // Algorithm 1 stops once |M| >= target, so the last block may overshoot. Trim it: drop the
    // last block's cells farthest from its centre (ties: higher index first). What remains of
    // the block is the part of the rectangle nearest its centre, still one connected piece.
    if masked > target {
        let dist = |i: usize| {
            let (dr, dc) = (
                (i / GRID) as f32 - last_centre.0,
                (i % GRID) as f32 - last_centre.1,
            );
            dr * dr + dc * dc
        };
        last_cells.sort_by(|&a, &b| dist(b).total_cmp(&dist(a)).then(b.cmp(&a)));
        for &i in &last_cells[..masked - target] {
            mask[i] = false;
        }
    }
    (mask, blocks)
}

/// Blockwise placement (appendix Algorithm 1): rectangular blocks are added until at least
/// `count` patches (capped at 196) are masked, then the overshoot is trimmed so that exactly
/// `count` are.
///
/// Each block: area `size ~ U(4, count - |M|)` (`U(r, r)` = `r` when `r < 4` patches remain),
/// aspect `a ~ U(0.3, 1/0.3)`, `h = round(sqrt(size * a))`, `w = round(sqrt(size / a))`
/// clamped to `[1, 14]`.
/// - With neither `weights` nor `allowed`, the top-left corner is uniform (the paper).
/// - Otherwise the block is centred (then shifted into the grid) on an anchor patch drawn by
///   weight (uniform when `weights` is `None`) among the unmasked `allowed` patches, and only
///   its `allowed` cells are masked. Once the allowed region is full, blocks continue over
///   the whole grid so the ratio is met.
///
/// Trim: the last block's newly masked cells farthest from the block's centre are unmasked
/// (ties: higher index first); earlier blocks are untouched.
/// Guard: after 50 consecutive blocks that add nothing (possible only with the uniform
/// top-left when few cells remain), the remainder is drawn by [`sample_weighted`]'s rule.
///
/// Panics when a given `weights` or `allowed` is not [`PATCHES`] long.
pub fn sample_blockwise(
    weights: Option<&[f32]>,
    allowed: Option<&[bool]>,
    count: usize,
    rng: &mut Rng,
) -> Vec<bool> {
    assert!(
        weights.is_none_or(|w| w.len() == PATCHES),
        "weights must be 196 long"
    );
    assert!(
        allowed.is_none_or(|a| a.len() == PATCHES),
        "allowed must be 196 long"
    );
    blockwise_fill(weights, allowed, count, rng).0
}
