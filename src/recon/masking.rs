//! Masks on the 14x14 ViT grid (METHOD.md "Training the reconstruction model" and §4).
//!
//! A mask is a `Vec<bool>` of [`PATCHES`] entries in row-major order (`index = row * 14 +
//! col`), `true` = masked. Every sampler here masks EXACTLY [`mask_count`]`(ratio)` patches:
//! patches are drawn without replacement (the authors' release drew with replacement and so
//! masked fewer patches than asked; METHOD.md "Pitfalls"). Every sampler draws only from the
//! [`Rng`] it is given, so a mask is a pure function of the inputs and the generator state.
//!
//! Contents:
//! - image cues computed once per training image: [`frequency_weights`] (per-patch
//!   high-frequency energy) and [`foreground`] (patches that stand out from the border);
//! - the two placements: [`sample_weighted`] (patches one by one, weighted, without
//!   replacement) and [`sample_blockwise`] (rectangular blocks, appendix Algorithm 1);
//! - [`CombinationalMasker`], the training-time [`MaskSource`] that draws a region, a weighting
//!   and a placement per image;
//! - the inference masks [`proposal_mask`] (top abnormality, METHOD.md §4), [`random_mask`] and
//!   [`blockwise_mask`] (the paper's ablations), and [`downsample_max`] to bring the 28x28
//!   proposal map to the ViT grid.

use super::{GRID, MaskSource, PATCHES};
use crate::error::{Error, Result};
use crate::rng::Rng;

/// Pixels per patch side (a 224x224 input cut into 16x16 patches).
pub const PATCH_PX: usize = 16;
/// Side of the network input image the cues are computed from.
pub const IMAGE_SIDE: usize = GRID * PATCH_PX;

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
/// [`foreground`] returns the whole image when fewer patches than this qualify.
pub const MIN_FOREGROUND_PATCHES: usize = 4;

/// Number of patches a ratio masks: `round(ratio * 196)`, clamped to `[0, 196]` (NaN -> 0).
pub fn mask_count(ratio: f32) -> usize {
    count_for(ratio, PATCHES)
}

/// `round(ratio * n)` clamped to `[0, n]`; NaN and negative ratios give 0.
fn count_for(ratio: f32, n: usize) -> usize {
    let c = (ratio * n as f32).round();
    if c.is_nan() || c <= 0.0 {
        0
    } else {
        (c as usize).min(n)
    }
}

// ---------------------------------------------------------------------------------------------
// Image cues
// ---------------------------------------------------------------------------------------------

/// Panics unless `image` is a `[3, 224, 224]` CHW image (the network input; its size is fixed
/// by preprocessing, so a wrong length is a bug in the caller, not bad user data).
fn check_image(image: &[f32]) {
    assert_eq!(
        image.len(),
        3 * IMAGE_SIDE * IMAGE_SIDE,
        "masking cues need a [3, {IMAGE_SIDE}, {IMAGE_SIDE}] image"
    );
}

/// Per-patch mean squared Laplacian of the grey image (mean of the three channels), the
/// 4-neighbour stencil `4g - up - down - left - right` with replicated borders. Non-finite
/// energies (from non-finite pixels) count as 0.
fn patch_energy(image: &[f32]) -> Vec<f32> {
    check_image(image);
    let s = IMAGE_SIDE;
    let hw = s * s;
    let grey: Vec<f32> = (0..hw)
        .map(|i| (image[i] + image[hw + i] + image[2 * hw + i]) / 3.0)
        .collect();
    let mut energy = vec![0f32; PATCHES];
    for y in 0..s {
        let (up, down) = (y.saturating_sub(1), (y + 1).min(s - 1));
        for x in 0..s {
            let (left, right) = (x.saturating_sub(1), (x + 1).min(s - 1));
            let lap = 4.0 * grey[y * s + x]
                - grey[up * s + x]
                - grey[down * s + x]
                - grey[y * s + left]
                - grey[y * s + right];
            energy[(y / PATCH_PX) * GRID + x / PATCH_PX] += lap * lap;
        }
    }
    let area = (PATCH_PX * PATCH_PX) as f32;
    energy
        .into_iter()
        .map(|e| if e.is_finite() { e / area } else { 0.0 })
        .collect()
}

/// Per-patch mean colour (one value per channel).
fn patch_colours(image: &[f32]) -> Vec<[f32; 3]> {
    check_image(image);
    let s = IMAGE_SIDE;
    let mut colours = vec![[0f32; 3]; PATCHES];
    for (c, plane) in image.chunks_exact(s * s).enumerate() {
        for (y, row) in plane.chunks_exact(s).enumerate() {
            for (x, &v) in row.iter().enumerate() {
                colours[(y / PATCH_PX) * GRID + x / PATCH_PX][c] += v;
            }
        }
    }
    let area = (PATCH_PX * PATCH_PX) as f32;
    for col in &mut colours {
        col.iter_mut().for_each(|v| *v /= area);
    }
    colours
}

/// Min-max normalisation to `[0, 1]` over the finite values; non-finite values map to 0.
/// When every finite value is equal (or none is finite) every entry is 1 (no preference).
fn min_max(values: &[f32]) -> Vec<f32> {
    let finite = values.iter().copied().filter(|v| v.is_finite());
    let lo = finite.clone().fold(f32::INFINITY, f32::min);
    let hi = finite.fold(f32::NEG_INFINITY, f32::max);
    // `hi <= lo` also covers "no finite value" (hi = -inf, lo = +inf).
    if hi <= lo {
        return vec![1.0; values.len()];
    }
    values
        .iter()
        .map(|&v| {
            if v.is_finite() {
                (v - lo) / (hi - lo)
            } else {
                0.0
            }
        })
        .collect()
}

/// High-frequency energy of each patch (the "frequency" weighting of combinational masking):
/// the mean squared Laplacian of the grey image over the patch's 16x16 pixels, min-max
/// normalised to `[0, 1]` over the 196 patches (all equal -> all 1).
///
/// `image` is the network input, `[3, 224, 224]` CHW, normalised. Panics on another length.
pub fn frequency_weights(image: &[f32]) -> Vec<f32> {
    min_max(&patch_energy(image))
}

/// The patches on the outer ring of the grid (52 of them).
fn border_patches() -> impl Iterator<Item = usize> {
    (0..PATCHES).filter(|&i| {
        let (r, c) = (i / GRID, i % GRID);
        r == 0 || c == 0 || r == GRID - 1 || c == GRID - 1
    })
}

/// Median of a non-empty list (mean of the two middle values for an even count).
fn median(mut v: Vec<f32>) -> f32 {
    v.sort_by(f32::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// `median + 3 sigma` of a sample, with the robust `sigma = 1.4826 * MAD` (median absolute
/// deviation), so that an object reaching into a few border patches does not inflate it.
fn robust_upper(v: Vec<f32>) -> f32 {
    let med = median(v.clone());
    let mad = median(v.into_iter().map(|x| (x - med).abs()).collect());
    med + 3.0 * 1.4826 * mad
}

/// The foreground of an image, estimated from the image itself (no labels, no masks).
///
/// Rule: the border ring of patches is taken as a sample of the background.
/// 1. Background colour = per-channel median of the border patches' mean colours.
/// 2. Colour test: a patch is foreground when the distance of its mean colour from the
///    background colour exceeds `median + 3 sigma` of the border patches' distances plus a
///    margin of 0.1 (about 13 grey levels in the `(x - 127) / 128` scale).
/// 3. Texture test: a patch is foreground when its high-frequency energy (mean squared
///    Laplacian, as in [`frequency_weights`] before normalisation) exceeds twice the border's
///    `median + 3 sigma` energy plus 1e-3 (a floor above 8-bit quantisation noise).
///    `sigma = 1.4826 * MAD` in both tests (robust to an object touching the border).
/// 4. Either test suffices. When fewer than [`MIN_FOREGROUND_PATCHES`] patches qualify (e.g.
///    a texture filling the image, or a flat image), every patch is foreground: the result is
///    never empty.
///
/// Object edges have a strong Laplacian, so the patches just outside an object's outline
/// usually qualify too: the foreground is the object plus a thin rim.
///
/// `image` is the network input, `[3, 224, 224]` CHW, normalised. Panics on another length.
pub fn foreground(image: &[f32]) -> Vec<bool> {
    let colours = patch_colours(image);
    let energy = patch_energy(image);
    let border: Vec<usize> = border_patches().collect();

    let background: [f32; 3] =
        std::array::from_fn(|c| median(border.iter().map(|&i| colours[i][c]).collect()));
    let distance: Vec<f32> = colours
        .iter()
        .map(|col| {
            let d2: f32 = col
                .iter()
                .zip(&background)
                .map(|(a, b)| (a - b) * (a - b))
                .sum();
            if d2.is_finite() { d2.sqrt() } else { 0.0 }
        })
        .collect();
    let colour_threshold = robust_upper(border.iter().map(|&i| distance[i]).collect()) + 0.1;
    let energy_threshold = 2.0 * robust_upper(border.iter().map(|&i| energy[i]).collect()) + 1e-3;

    let fg: Vec<bool> = (0..PATCHES)
        .map(|i| distance[i] > colour_threshold || energy[i] > energy_threshold)
        .collect();
    if fg.iter().filter(|&&f| f).count() < MIN_FOREGROUND_PATCHES {
        vec![true; PATCHES]
    } else {
        fg
    }
}

// ---------------------------------------------------------------------------------------------
// Placements
// ---------------------------------------------------------------------------------------------

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
fn fill_weighted(
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
fn blockwise_fill(
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

// ---------------------------------------------------------------------------------------------
// Combinational training masking
// ---------------------------------------------------------------------------------------------

/// Where masked patches may go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Region {
    /// Only the image's [`foreground`] (filled up from the rest when it is too small).
    Foreground,
    /// Anywhere.
    All,
}

/// What makes a patch more likely to be masked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weighting {
    /// High-frequency energy ([`frequency_weights`]).
    Frequency,
    /// The patch's running reconstruction loss (learned during training).
    Dynamic,
    /// Nothing: every patch alike.
    Uniform,
}

/// How masked patches are grouped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Rectangular blocks ([`sample_blockwise`]).
    Blockwise,
    /// Patch by patch ([`sample_weighted`]).
    Random,
}

/// One combination of the three choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Strategy {
    pub region: Region,
    pub weighting: Weighting,
    pub placement: Placement,
}

impl Strategy {
    /// All 12 combinations.
    pub fn all() -> Vec<Strategy> {
        let mut out = Vec::new();
        for region in [Region::Foreground, Region::All] {
            for weighting in [Weighting::Frequency, Weighting::Dynamic, Weighting::Uniform] {
                for placement in [Placement::Blockwise, Placement::Random] {
                    out.push(Strategy {
                        region,
                        weighting,
                        placement,
                    });
                }
            }
        }
        out
    }
}

/// Settings of [`CombinationalMasker`].
#[derive(Clone, Debug, PartialEq)]
pub struct MaskingConfig {
    /// Fraction of the 196 patches masked per image ([`mask_count`]).
    pub ratio: f32,
    /// Probability of [`Region::Foreground`] (else [`Region::All`]).
    pub p_foreground: f32,
    /// Relative odds of [`Weighting::Frequency`], [`Weighting::Dynamic`], [`Weighting::Uniform`].
    pub weighting_odds: [f32; 3],
    /// Probability of [`Placement::Blockwise`] (else [`Placement::Random`]).
    pub p_blockwise: f32,
    /// Momentum of the running per-patch loss behind [`Weighting::Dynamic`]:
    /// `ema = momentum * ema + (1 - momentum) * loss`.
    pub dynamic_momentum: f32,
}

impl MaskingConfig {
    /// The paper's mix (METHOD.md): region 1/2-1/2, weighting 1/3 each, placement 1/2-1/2;
    /// dynamic momentum 0.9.
    pub fn new(ratio: f32) -> MaskingConfig {
        MaskingConfig {
            ratio,
            p_foreground: 0.5,
            weighting_odds: [1.0, 1.0, 1.0],
            p_blockwise: 0.5,
            dynamic_momentum: 0.9,
        }
    }

    /// Always the one strategy given (ablations, tests).
    pub fn forced(ratio: f32, strategy: Strategy) -> MaskingConfig {
        let one_hot = |w: Weighting| if strategy.weighting == w { 1.0 } else { 0.0 };
        MaskingConfig {
            ratio,
            p_foreground: if strategy.region == Region::Foreground {
                1.0
            } else {
                0.0
            },
            weighting_odds: [
                one_hot(Weighting::Frequency),
                one_hot(Weighting::Dynamic),
                one_hot(Weighting::Uniform),
            ],
            p_blockwise: if strategy.placement == Placement::Blockwise {
                1.0
            } else {
                0.0
            },
            dynamic_momentum: 0.9,
        }
    }

    /// Checks every field is in range; the error names the field.
    pub fn validate(&self) -> Result<()> {
        let unit = |name: &str, v: f32| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(Error::invalid(format!(
                    "masking config: {name} = {v} is not in [0, 1]"
                )))
            }
        };
        unit("ratio", self.ratio)?;
        unit("p_foreground", self.p_foreground)?;
        unit("p_blockwise", self.p_blockwise)?;
        unit("dynamic_momentum", self.dynamic_momentum)?;
        let odds = self.weighting_odds;
        if odds.iter().any(|o| !(o.is_finite() && *o >= 0.0)) || odds.iter().sum::<f32>() <= 0.0 {
            return Err(Error::invalid(format!(
                "masking config: weighting_odds {odds:?} must be finite, non-negative and not all 0"
            )));
        }
        Ok(())
    }
}

/// Combinational masking for training (METHOD.md "Training the reconstruction model"): per
/// image and step, a [`Strategy`] is drawn (region, then weighting, then placement, with the
/// config's probabilities) and a mask of exactly [`mask_count`]`(ratio)` patches is drawn with
/// it.
///
/// Dynamic weighting keeps, per (sample, patch), an exponential moving average of the patch's
/// reconstruction loss (initialised to 1.0), fed by [`MaskSource::observe`] and min-max
/// normalised when used, so patches the model reconstructs badly get masked more often. The
/// table is the masker's only state ([`MaskSource::state`]); it does not depend on the batch
/// size (the release assumed batch size 1).
#[derive(Clone, Debug)]
pub struct CombinationalMasker {
    config: MaskingConfig,
    frequency: Vec<Vec<f32>>,
    foreground: Vec<Vec<bool>>,
    /// `[samples, PATCHES]` running loss.
    running_loss: Vec<f32>,
}

impl CombinationalMasker {
    /// `frequency[s]` and `foreground[s]` are sample `s`'s cues ([`frequency_weights`],
    /// [`foreground`]), computed once by the caller. Errors on a bad config, a count mismatch,
    /// a cue that is not 196 long or a negative / non-finite frequency weight.
    pub fn new(
        frequency: Vec<Vec<f32>>,
        foreground: Vec<Vec<bool>>,
        config: MaskingConfig,
    ) -> Result<CombinationalMasker> {
        config.validate()?;
        if frequency.len() != foreground.len() {
            return Err(Error::invalid(format!(
                "combinational masking: {} frequency maps but {} foregrounds",
                frequency.len(),
                foreground.len()
            )));
        }
        for (s, (f, g)) in frequency.iter().zip(&foreground).enumerate() {
            if f.len() != PATCHES || g.len() != PATCHES {
                return Err(Error::invalid(format!(
                    "combinational masking: sample {s} has {} frequency weights and {} \
                     foreground flags, expected {PATCHES} each",
                    f.len(),
                    g.len()
                )));
            }
            if let Some(p) = f.iter().position(|w| !(w.is_finite() && *w >= 0.0)) {
                return Err(Error::invalid(format!(
                    "combinational masking: sample {s} patch {p} has frequency weight {}",
                    f[p]
                )));
            }
        }
        let running_loss = vec![1.0; frequency.len() * PATCHES];
        Ok(CombinationalMasker {
            config,
            frequency,
            foreground,
            running_loss,
        })
    }

    /// Number of training samples.
    pub fn len(&self) -> usize {
        self.frequency.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frequency.is_empty()
    }

    pub fn config(&self) -> &MaskingConfig {
        &self.config
    }

    /// Draws a strategy: three uniforms, always all three (the stream does not depend on the
    /// outcome).
    pub fn draw_strategy(&self, rng: &mut Rng) -> Strategy {
        let c = &self.config;
        let region = if rng.uniform() < c.p_foreground {
            Region::Foreground
        } else {
            Region::All
        };
        let [f, d, _] = c.weighting_odds;
        let u = rng.uniform() * c.weighting_odds.iter().sum::<f32>();
        let weighting = if u < f {
            Weighting::Frequency
        } else if u < f + d {
            Weighting::Dynamic
        } else {
            Weighting::Uniform
        };
        let placement = if rng.uniform() < c.p_blockwise {
            Placement::Blockwise
        } else {
            Placement::Random
        };
        Strategy {
            region,
            weighting,
            placement,
        }
    }

    /// Sample `sample`'s dynamic weights: its running losses, min-max normalised.
    pub fn dynamic_weights(&self, sample: usize) -> Vec<f32> {
        min_max(&self.running_loss[sample * PATCHES..(sample + 1) * PATCHES])
    }

    /// The mask `strategy` gives for `sample`. Panics when `sample` is out of range.
    pub fn mask_with(&self, sample: usize, strategy: Strategy, rng: &mut Rng) -> Vec<bool> {
        assert!(
            sample < self.len(),
            "sample {sample} of {} masked",
            self.len()
        );
        let count = mask_count(self.config.ratio);
        let allowed = match strategy.region {
            Region::Foreground => Some(&self.foreground[sample][..]),
            Region::All => None,
        };
        let dynamic;
        let weights = match strategy.weighting {
            Weighting::Frequency => Some(&self.frequency[sample][..]),
            Weighting::Dynamic => {
                dynamic = self.dynamic_weights(sample);
                Some(&dynamic[..])
            }
            Weighting::Uniform => None,
        };
        match strategy.placement {
            Placement::Blockwise => blockwise_fill(weights, allowed, count, rng).0,
            Placement::Random => {
                let mut mask = vec![false; PATCHES];
                fill_weighted(
                    &mut mask,
                    weights,
                    allowed.unwrap_or(&[true; PATCHES]),
                    count,
                    rng,
                );
                mask
            }
        }
    }
}

impl MaskSource for CombinationalMasker {
    fn mask(&mut self, sample: usize, rng: &mut Rng) -> Vec<bool> {
        let strategy = self.draw_strategy(rng);
        self.mask_with(sample, strategy, rng)
    }

    /// Updates the running loss of every patch with a finite loss (NaN = unmasked: skipped).
    /// Panics when `sample` is out of range or `patch_loss` is not 196 long (trainer bugs).
    fn observe(&mut self, sample: usize, patch_loss: &[f32]) {
        assert!(
            sample < self.len(),
            "sample {sample} of {} observed",
            self.len()
        );
        assert_eq!(patch_loss.len(), PATCHES, "patch losses must be 196 long");
        let m = self.config.dynamic_momentum;
        let row = &mut self.running_loss[sample * PATCHES..(sample + 1) * PATCHES];
        for (ema, &loss) in row.iter_mut().zip(patch_loss) {
            if loss.is_finite() {
                *ema = m * *ema + (1.0 - m) * loss;
            }
        }
    }

    /// The running-loss table, `[samples * 196]`.
    fn state(&self) -> Vec<f32> {
        self.running_loss.clone()
    }

    /// Restores [`state`](MaskSource::state); errors on a wrong length or a non-finite value.
    fn load_state(&mut self, state: &[f32]) -> Result<()> {
        if state.len() != self.running_loss.len() {
            return Err(Error::invalid(format!(
                "masking state holds {} values, expected {} ({} samples x {PATCHES} patches); \
                 was the checkpoint made on another training set?",
                state.len(),
                self.running_loss.len(),
                self.len()
            )));
        }
        if let Some(i) = state.iter().position(|v| !v.is_finite()) {
            return Err(Error::invalid(format!(
                "masking state: value {i} (sample {}, patch {}) is {}",
                i / PATCHES,
                i % PATCHES,
                state[i]
            )));
        }
        self.running_loss.copy_from_slice(state);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Inference masks
// ---------------------------------------------------------------------------------------------

/// Proposal masking (METHOD.md §4): the `round(ratio * n)` patches of highest abnormality
/// (`n = abnormality.len()`, 196 on the ViT grid). Ties go to the lower index; NaN ranks below
/// every number.
pub fn proposal_mask(abnormality: &[f32], ratio: f32) -> Vec<bool> {
    let n = abnormality.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| {
        let (va, vb) = (abnormality[a], abnormality[b]);
        // Descending value with NaN last; then ascending index.
        match (va.is_nan(), vb.is_nan()) {
            (false, false) => vb.total_cmp(&va),
            (a_nan, b_nan) => a_nan.cmp(&b_nan),
        }
        .then(a.cmp(&b))
    });
    let mut mask = vec![false; n];
    for &i in &order[..count_for(ratio, n)] {
        mask[i] = true;
    }
    mask
}

/// [`mask_count`]`(ratio)` patches chosen uniformly without replacement (inference ablation).
pub fn random_mask(ratio: f32, rng: &mut Rng) -> Vec<bool> {
    let mut order: Vec<usize> = (0..PATCHES).collect();
    rng.shuffle(&mut order);
    let mut mask = vec![false; PATCHES];
    for &i in &order[..mask_count(ratio)] {
        mask[i] = true;
    }
    mask
}

/// [`mask_count`]`(ratio)` patches in uniform blocks (Algorithm 1; inference ablation).
pub fn blockwise_mask(ratio: f32, rng: &mut Rng) -> Vec<bool> {
    blockwise_fill(None, None, mask_count(ratio), rng).0
}

/// Max-pools a `from x from` map (row-major) to `to x to`: output cell `(i, j)` is the max over
/// source rows `[floor(i*from/to), ceil((i+1)*from/to))` and likewise for columns (windows
/// overlap when `to` does not divide `from`). NaN values are ignored unless the whole window
/// is NaN. Brings the 28x28 proposal abnormality to the 14x14 ViT grid.
///
/// Panics when `values.len() != from * from` or `to == 0`.
pub fn downsample_max(values: &[f32], from: usize, to: usize) -> Vec<f32> {
    assert_eq!(
        values.len(),
        from * from,
        "downsample_max: not a {from}x{from} map"
    );
    assert!(to > 0, "downsample_max: empty target grid");
    let window = |i: usize| (i * from / to, ((i + 1) * from).div_ceil(to));
    let mut out = Vec::with_capacity(to * to);
    for i in 0..to {
        let (r0, r1) = window(i);
        for j in 0..to {
            let (c0, c1) = window(j);
            let mut best = f32::NAN;
            for r in r0..r1 {
                for &v in &values[r * from + c0..r * from + c1] {
                    best = best.max(v); // f32::max ignores a NaN operand
                }
            }
            out.push(best);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATIOS: [f32; 6] = [0.0, 1.0 / 196.0, 0.16, 0.42, 0.5, 1.0];

    fn count(mask: &[bool]) -> usize {
        mask.iter().filter(|&&m| m).count()
    }

    /// Number of 4-connected components of the masked cells.
    fn components(mask: &[bool]) -> usize {
        let mut seen = [false; PATCHES];
        let mut n = 0;
        for start in 0..PATCHES {
            if !mask[start] || seen[start] {
                continue;
            }
            n += 1;
            let mut stack = vec![start];
            seen[start] = true;
            while let Some(i) = stack.pop() {
                let (r, c) = (i / GRID, i % GRID);
                let mut push = |j: usize| {
                    if mask[j] && !seen[j] {
                        seen[j] = true;
                        stack.push(j);
                    }
                };
                if r > 0 {
                    push(i - GRID);
                }
                if r + 1 < GRID {
                    push(i + GRID);
                }
                if c > 0 {
                    push(i - 1);
                }
                if c + 1 < GRID {
                    push(i + 1);
                }
            }
        }
        n
    }

    /// Flat grey background with a bright square on patches rows/cols 4..10 (6x6 = 36
    /// patches), plus faint noise.
    fn square_image() -> Vec<f32> {
        let s = IMAGE_SIDE;
        let mut rng = Rng::new(3);
        let mut img = vec![0f32; 3 * s * s];
        for c in 0..3 {
            for y in 0..s {
                for x in 0..s {
                    let inside = (64..160).contains(&y) && (64..160).contains(&x);
                    let base = if inside { 0.8 } else { -0.4 + 0.1 * c as f32 };
                    img[(c * s + y) * s + x] = base + 0.004 * rng.normal();
                }
            }
        }
        img
    }

    fn in_square(i: usize) -> bool {
        let (r, c) = (i / GRID, i % GRID);
        (4..10).contains(&r) && (4..10).contains(&c)
    }

    fn test_masker(ratio: f32) -> CombinationalMasker {
        let img = square_image();
        let mut rng = Rng::new(11);
        let freq2: Vec<f32> = (0..PATCHES).map(|_| rng.uniform()).collect();
        // Sample 0: the square image's cues; sample 1: random weights and a small foreground
        // (9 patches, fewer than most targets).
        let small_fg: Vec<bool> = (0..PATCHES).map(|i| i % GRID < 3 && i / GRID < 3).collect();
        CombinationalMasker::new(
            vec![frequency_weights(&img), freq2],
            vec![foreground(&img), small_fg],
            MaskingConfig::new(ratio),
        )
        .unwrap()
    }

    #[test]
    fn mask_count_rounds_and_clamps() {
        assert_eq!(mask_count(0.0), 0);
        assert_eq!(mask_count(1.0 / 196.0), 1);
        assert_eq!(mask_count(0.16), 31);
        assert_eq!(mask_count(0.42), 82);
        assert_eq!(mask_count(0.5), 98);
        assert_eq!(mask_count(1.0), 196);
        assert_eq!(mask_count(-0.5), 0);
        assert_eq!(mask_count(3.0), 196);
        assert_eq!(mask_count(f32::NAN), 0);
    }

    #[test]
    fn every_strategy_masks_exactly_the_count() {
        let mut rng = Rng::new(1);
        for ratio in RATIOS {
            let want = mask_count(ratio);
            let masker = test_masker(ratio);
            for strategy in Strategy::all() {
                for sample in 0..2 {
                    for _ in 0..3 {
                        let m = masker.mask_with(sample, strategy, &mut rng);
                        assert_eq!(m.len(), PATCHES);
                        assert_eq!(
                            count(&m),
                            want,
                            "{strategy:?} ratio {ratio} sample {sample}"
                        );
                    }
                }
            }
            assert_eq!(count(&random_mask(ratio, &mut rng)), want);
            assert_eq!(count(&blockwise_mask(ratio, &mut rng)), want);
            let abn: Vec<f32> = (0..PATCHES).map(|_| rng.uniform()).collect();
            assert_eq!(count(&proposal_mask(&abn, ratio)), want);
        }
        // Mixed draws through the MaskSource interface too.
        let mut masker = test_masker(0.42);
        for step in 0..50 {
            assert_eq!(count(&masker.mask(step % 2, &mut rng)), 82);
        }
    }

    #[test]
    fn same_seed_same_mask_different_seed_different_mask() {
        // 20 patches: well below the square image's foreground (36-60 patches), so
        // foreground-only masks have room to vary.
        let masker = test_masker(0.1);
        for strategy in Strategy::all() {
            let draw = |seed: u64| masker.mask_with(0, strategy, &mut Rng::new(seed));
            assert_eq!(draw(5), draw(5), "{strategy:?}");
            let differing = (0..20).filter(|&s| draw(100 + s) != draw(200 + s)).count();
            assert!(differing >= 18, "{strategy:?}: only {differing}/20 differ");
        }
        let a = random_mask(0.3, &mut Rng::new(1));
        assert_eq!(a, random_mask(0.3, &mut Rng::new(1)));
        assert_ne!(a, random_mask(0.3, &mut Rng::new(2)));
        let b = blockwise_mask(0.3, &mut Rng::new(1));
        assert_eq!(b, blockwise_mask(0.3, &mut Rng::new(1)));
        assert_ne!(b, blockwise_mask(0.3, &mut Rng::new(2)));
        // The whole MaskSource stream, strategy choices included.
        let run = |seed| {
            let mut m = test_masker(0.3);
            let mut rng = Rng::new(seed);
            (0..10).map(|s| m.mask(s % 2, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(run(9), run(9));
        assert_ne!(run(9), run(10));
    }

    #[test]
    fn foreground_finds_the_square_and_masks_stay_inside() {
        let img = square_image();
        let fg = foreground(&img);
        // The square itself, plus at most its 4-neighbour rim (edges are high-frequency).
        for (i, &is_fg) in fg.iter().enumerate() {
            let (r, c) = (i / GRID, i % GRID);
            let rim = ((3..11).contains(&r) && (4..10).contains(&c))
                || ((4..10).contains(&r) && (3..11).contains(&c));
            if in_square(i) {
                assert!(is_fg, "square patch {i} missed");
            }
            if is_fg {
                assert!(rim, "background patch {i} taken for foreground");
            }
        }
        let fg_count = count(&fg);
        assert!((36..=60).contains(&fg_count), "{fg_count}");

        // Foreground-restricted masks stay inside whenever the foreground can hold them.
        let masker = test_masker(0.18); // 35 patches <= 36
        let mut rng = Rng::new(4);
        for strategy in Strategy::all() {
            if strategy.region != Region::Foreground {
                continue;
            }
            for _ in 0..20 {
                let m = masker.mask_with(0, strategy, &mut rng);
                assert!(
                    (0..PATCHES).all(|i| !m[i] || fg[i]),
                    "{strategy:?} left the foreground"
                );
            }
        }
        // A small foreground (9 patches) is filled completely, the rest comes from outside.
        let m = masker.mask_with(
            1,
            Strategy {
                region: Region::Foreground,
                weighting: Weighting::Uniform,
                placement: Placement::Blockwise,
            },
            &mut rng,
        );
        assert!((0..PATCHES).all(|i| m[i] || !masker.foreground[1][i]));
    }

    #[test]
    fn flat_image_is_all_foreground_and_frequency_is_flat() {
        let img = vec![0.25f32; 3 * IMAGE_SIDE * IMAGE_SIDE];
        assert!(foreground(&img).iter().all(|&f| f));
        assert!(frequency_weights(&img).iter().all(|&w| w == 1.0));
    }

    #[test]
    fn frequency_weights_find_the_textured_patch() {
        let s = IMAGE_SIDE;
        let mut img = vec![0f32; 3 * s * s];
        // A checkerboard inside patch (2, 5) only.
        for c in 0..3 {
            for y in 32..48 {
                for x in 80..96 {
                    img[(c * s + y) * s + x] = if (x + y) % 2 == 0 { 0.5 } else { -0.5 };
                }
            }
        }
        let w = frequency_weights(&img);
        let hot = 2 * GRID + 5;
        assert_eq!(w[hot], 1.0);
        assert!(w.iter().all(|v| (0.0..=1.0).contains(v)));
        // Far from it, nothing.
        assert_eq!(w[13 * GRID + 13], 0.0);
        assert!(w.iter().enumerate().all(|(i, &v)| i == hot || v < 0.2));
    }

    #[test]
    fn blocks_are_contiguous() {
        let mut single_blocks = 0;
        for seed in 0..300 {
            let mut rng = Rng::new(seed);
            let target = 4 + (seed as usize % 9);
            let weights: Vec<f32> = (0..PATCHES).map(|i| (i % 7) as f32).collect();
            for steer in [None, Some(&weights[..])] {
                let (mask, blocks) = blockwise_fill(steer, None, target, &mut rng);
                assert_eq!(count(&mask), target);
                assert!(components(&mask) <= blocks, "seed {seed}");
                if blocks == 1 {
                    single_blocks += 1;
                    assert_eq!(components(&mask), 1, "seed {seed}: one block, split");
                }
            }
        }
        assert!(single_blocks > 100, "{single_blocks}");
    }

    #[test]
    fn weighted_sampling_prefers_heavy_patches_and_respects_allowed() {
        // Left half weight 1, right half 0.1: about 10:1 odds per patch.
        let weights: Vec<f32> = (0..PATCHES)
            .map(|i| if i % GRID < 7 { 1.0 } else { 0.1 })
            .collect();
        let all = vec![true; PATCHES];
        let mut rng = Rng::new(8);
        let (mut heavy, mut total) = (0, 0);
        for _ in 0..200 {
            let m = sample_weighted(&weights, &all, 20, &mut rng);
            assert_eq!(count(&m), 20);
            heavy += (0..PATCHES).filter(|&i| m[i] && i % GRID < 7).count();
            total += 20;
        }
        let frac = heavy as f32 / total as f32;
        assert!(frac > 0.8, "heavy fraction {frac}");

        // Zero weights still get drawn when they must.
        let zeros = vec![0.0; PATCHES];
        assert_eq!(count(&sample_weighted(&zeros, &all, 196, &mut rng)), 196);

        // `allowed` first; when too small, all of it plus the rest.
        let allowed: Vec<bool> = (0..PATCHES).map(|i| i < 30).collect();
        let m = sample_weighted(&weights, &allowed, 25, &mut rng);
        assert!(count(&m) == 25 && (30..PATCHES).all(|i| !m[i]));
        let m = sample_weighted(&weights, &allowed, 50, &mut rng);
        assert!(count(&m) == 50 && (0..30).all(|i| m[i]));
    }

    #[test]
    fn dynamic_weighting_learns_and_its_state_round_trips() {
        let mut masker = CombinationalMasker::new(
            vec![vec![1.0; PATCHES]; 3],
            vec![vec![true; PATCHES]; 3],
            MaskingConfig::forced(
                0.1,
                Strategy {
                    region: Region::All,
                    weighting: Weighting::Dynamic,
                    placement: Placement::Random,
                },
            ),
        )
        .unwrap();
        // Patches 0..20 of sample 1 are hard; everything else is easy; NaN = unmasked.
        let loss: Vec<f32> = (0..PATCHES)
            .map(|i| match i {
                0..20 => 5.0,
                20..40 => f32::NAN,
                _ => 0.1,
            })
            .collect();
        for _ in 0..40 {
            masker.observe(1, &loss);
        }
        let state = masker.state();
        assert_eq!(state.len(), 3 * PATCHES);
        assert!(state[PATCHES + 5] > 4.0 && state[PATCHES + 50] < 0.2);
        assert_eq!(state[PATCHES + 25], 1.0, "NaN losses must not update");
        assert_eq!(state[5], 1.0, "other samples untouched");

        let mut rng = Rng::new(2);
        let m = masker.mask(1, &mut rng);
        assert!(
            (0..20).filter(|&i| m[i]).count() >= 15,
            "hard patches not preferred"
        );

        // Round trip into a fresh masker gives the same masks.
        let mut other = CombinationalMasker::new(
            vec![vec![1.0; PATCHES]; 3],
            vec![vec![true; PATCHES]; 3],
            masker.config().clone(),
        )
        .unwrap();
        other.load_state(&state).unwrap();
        assert_eq!(other.state(), state);
        assert_eq!(
            other.mask(1, &mut Rng::new(6)),
            masker.mask(1, &mut Rng::new(6))
        );
        let e = other.load_state(&state[..10]).unwrap_err().to_string();
        assert!(e.contains("10 values") && e.contains("588"), "{e}");
        let mut bad = state.clone();
        bad[7] = f32::NAN;
        assert!(other.load_state(&bad).is_err());
    }

    #[test]
    fn config_and_cue_errors() {
        let mut c = MaskingConfig::new(1.5);
        assert!(c.validate().unwrap_err().to_string().contains("ratio"));
        c.ratio = 0.5;
        c.weighting_odds = [0.0; 3];
        assert!(c.validate().is_err());
        let ok = MaskingConfig::new(0.5);
        assert!(CombinationalMasker::new(vec![vec![1.0; PATCHES]], vec![], ok.clone()).is_err());
        assert!(
            CombinationalMasker::new(vec![vec![1.0; 10]], vec![vec![true; 10]], ok.clone())
                .is_err()
        );
        assert!(
            CombinationalMasker::new(vec![vec![-1.0; PATCHES]], vec![vec![true; PATCHES]], ok)
                .is_err()
        );
    }

    #[test]
    fn forced_config_always_draws_its_strategy() {
        let mut rng = Rng::new(0);
        for strategy in Strategy::all() {
            let masker = CombinationalMasker::new(
                vec![vec![1.0; PATCHES]],
                vec![vec![true; PATCHES]],
                MaskingConfig::forced(0.3, strategy),
            )
            .unwrap();
            assert!((0..50).all(|_| masker.draw_strategy(&mut rng) == strategy));
        }
        // The default mix visits all 12.
        let masker = test_masker(0.3);
        let seen: std::collections::HashSet<_> = (0..500)
            .map(|_| format!("{:?}", masker.draw_strategy(&mut rng)))
            .collect();
        assert_eq!(seen.len(), 12);
    }

    #[test]
    fn proposal_mask_takes_the_top_with_ties_by_index() {
        let abn = [0.5, f32::NAN, 0.9, 0.5, 0.5, f32::NEG_INFINITY, 0.1];
        // 3 of 7: 0.9 (2), then the tied 0.5s at 0 and 3.
        let m = proposal_mask(&abn, 3.0 / 7.0);
        assert_eq!(m, [true, false, true, true, false, false, false]);
        // All but one: NaN is the one left out.
        let m = proposal_mask(&abn, 6.0 / 7.0);
        assert_eq!(m, [true, false, true, true, true, true, true]);
        let grid: Vec<f32> = (0..PATCHES).map(|i| i as f32).collect();
        let m = proposal_mask(&grid, 0.16);
        assert!((0..PATCHES).all(|i| m[i] == (i >= PATCHES - 31)));
    }

    #[test]
    fn downsample_max_hand_cases() {
        // 4x4 -> 2x2: disjoint 2x2 windows.
        let v: Vec<f32> = (0..16).map(|i| i as f32).collect();
        assert_eq!(downsample_max(&v, 4, 2), vec![5.0, 7.0, 13.0, 15.0]);
        // 3x3 -> 2x2: windows [0,2) and [1,3) overlap on the middle row/column.
        let v = [1.0, 0.0, 0.0, 0.0, 9.0, 0.0, 0.0, 0.0, 2.0];
        assert_eq!(downsample_max(&v, 3, 2), vec![9.0, 9.0, 9.0, 9.0]);
        let v = [1.0, 0.0, 3.0, 0.0, 0.0, 0.0, 4.0, 0.0, 2.0];
        assert_eq!(downsample_max(&v, 3, 2), vec![1.0, 3.0, 4.0, 2.0]);
        // NaN ignored unless the window is all NaN.
        let v = [f32::NAN, 1.0, f32::NAN, f32::NAN];
        let out = downsample_max(&v, 2, 1);
        assert_eq!(out, vec![1.0]);
        assert!(downsample_max(&[f32::NAN], 1, 1)[0].is_nan());
        // 28 -> 14 is plain 2x2 max pooling.
        let v: Vec<f32> = (0..28 * 28).map(|i| ((i * 37) % 101) as f32).collect();
        let out = downsample_max(&v, 28, 14);
        for (k, &o) in out.iter().enumerate() {
            let (r, c) = (2 * (k / 14), 2 * (k % 14));
            let want = [
                v[r * 28 + c],
                v[r * 28 + c + 1],
                v[(r + 1) * 28 + c],
                v[(r + 1) * 28 + c + 1],
            ]
            .into_iter()
            .fold(f32::MIN, f32::max);
            assert_eq!(o, want);
        }
    }
}
