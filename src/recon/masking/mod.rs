//! Masks on the 14x14 ViT grid (METHOD.md "Training the reconstruction model" and §4).
//!
//! A mask is a `Vec<bool>` of [`PATCHES`] entries in row-major order (`index = row * 14 +
//! col`), `true` = masked. Every sampler here masks EXACTLY [`mask_count`]`(ratio)` patches:
//! patches are drawn without replacement (the authors' release drew with replacement and so
//! masked fewer patches than asked; METHOD.md "Pitfalls"). Every sampler draws only from the
//! [`Rng`](crate::rng::Rng) it is given, so a mask is a pure function of the inputs and the generator state.
//!
//! One file per concern:
//! - `cues.rs`, image cues computed once per training image: [`frequency_weights`]
//!   (per-patch high-frequency energy) and [`foreground`] (patches that stand out from the
//!   border);
//! - `placement.rs`, the two placements: [`sample_weighted`] (patches one by one, weighted,
//!   without replacement) and [`sample_blockwise`] (rectangular blocks, appendix Algorithm 1);
//! - `training.rs`: [`CombinationalMasker`], the training-time
//!   [`MaskSource`](super::MaskSource) that draws a region, a weighting and a placement per
//!   image;
//! - `inference.rs`: the inference masks [`proposal_mask`] (top abnormality, METHOD.md §4),
//!   [`random_mask`] and [`blockwise_mask`] (the paper's ablations), and [`downsample_max`] to
//!   bring the 28x28 proposal map to the ViT grid.

mod cues;
mod inference;
mod placement;
#[cfg(test)]
mod tests;
mod training;

pub use cues::{IMAGE_SIDE, MIN_FOREGROUND_PATCHES, PATCH_PX, foreground, frequency_weights};
pub use inference::{blockwise_mask, downsample_max, proposal_mask, random_mask};
pub use placement::{WEIGHT_FLOOR, sample_blockwise, sample_weighted};
pub use training::{CombinationalMasker, MaskingConfig, Placement, Region, Strategy, Weighting};

use super::PATCHES;

/// Number of patches a ratio masks: `round(ratio * 196)`, clamped to `[0, 196]` (NaN -> 0).
pub fn mask_count(ratio: f32) -> usize {
    count_for(ratio, PATCHES)
}

/// `round(ratio * n)` clamped to `[0, n]`; NaN and negative ratios give 0.
pub(crate) fn count_for(ratio: f32, n: usize) -> usize {
    let c = (ratio * n as f32).round();
    if c.is_nan() || c <= 0.0 {
        0
    } else {
        (c as usize).min(n)
    }
}
