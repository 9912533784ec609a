//! Stage 2 of a [`Detector`] (METHOD.md §4-7): mask the patches the proposal stage finds
//! most abnormal, let the ViT predict their visual tokens, and measure its uncertainty
//! (entropy, or the cross-entropy of each patch's own token) on the ViT grid.

#![warn(missing_docs)]

use crate::detector::class_cache::ClassModel;
use crate::detector::model_dir::{self as md, InferenceMask};
use crate::detector::pipeline::Detector;
use crate::error::{Error, Result};
use crate::recon::masking::{blockwise_mask, downsample_max, proposal_mask, random_mask};
use crate::recon::tokenizer::pool_to_vit_grid;
use crate::recon::vit::Vit;
use crate::rng::Rng;
use crate::tensor::Tensor;
use std::sync::atomic::Ordering;

/// Nearest upsampling of per-patch values from the ViT grid (`[B * vgrid²]`) to the feature
/// grid (`[B * grid²]`); the feature grid is a multiple of the ViT grid.
pub(crate) fn vit_to_feature_grid(v: &[f32], vgrid: usize, grid: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(v.len() / (vgrid * vgrid) * grid * grid);
    for e in v.chunks(vgrid * vgrid) {
        for r in 0..grid {
            for c in 0..grid {
                out.push(e[(r * vgrid / grid) * vgrid + c * vgrid / grid]);
            }
        }
    }
    out
}

impl Detector {
    /// The trained ViT, or an error saying the score needs one.
    pub(super) fn require_vit(&self) -> Result<&Vit> {
        self.vit.as_ref().ok_or_else(|| {
            Error::invalid(format!(
                "{}: the product/entropy scores need a trained ViT (none in this model; \
                 train with the ViT stage)",
                self.dir.display()
            ))
        })
    }
    /// The inference mask ratio of a class: its own, else the model's, else 0.3.
    pub(super) fn class_mask_ratio(&self, model: &ClassModel) -> f32 {
        model
            .info
            .mask_ratio
            .or(self.config.recon.as_ref().map(|r| r.mask_ratio))
            .unwrap_or(0.3)
    }
    /// Stage 2 (METHOD.md §4-7): per image, mask the patches the proposal stage finds most
    /// abnormal (or random/blockwise ones, for ablations), let the ViT predict their visual
    /// tokens, and return the entropy of each prediction (0 for unmasked patches) and, with
    /// `own_token`, the cross-entropy of each patch's own codebook token — both from one
    /// forward pass, on the ViT grid (`[B * 14²]`).
    pub(super) fn reconstruction_uncertainty(
        &self,
        model: &ClassModel,
        x: &Tensor,
        feats: &[f32],
        abnormality: &[f32],
        own_token: bool,
    ) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
        let vit = self.require_vit()?;
        let grid = self.features.grid();
        let vgrid = vit.config().image_size / vit.config().patch;
        let ratio = self.class_mask_ratio(model);
        let mut masks = Vec::with_capacity(abnormality.len() / (grid * grid) * vgrid * vgrid);
        for a in abnormality.chunks(grid * grid) {
            let m = match self.inference_mask {
                InferenceMask::Proposal => proposal_mask(&downsample_max(a, grid, vgrid), ratio),
                other => {
                    let k = self.masks_drawn.fetch_add(1, Ordering::Relaxed);
                    let mut rng = Rng::new(self.config.coreset.seed ^ 0x3A5C ^ k);
                    if other == InferenceMask::Random {
                        random_mask(ratio, &mut rng)
                    } else {
                        blockwise_mask(ratio, &mut rng)
                    }
                }
            };
            masks.extend(m);
        }
        self.vit_uncertainty(vit, x, feats, &masks, own_token)
    }
    /// One ViT pass over the inputs `x` (or their pooled features `feats`, for
    /// feature-input models) with the given masks (`[B * 14²]`): entropy per patch and, with
    /// `own_token`, the cross-entropy of the patch's own codebook token; 0 where unmasked.
    fn vit_uncertainty(
        &self,
        vit: &Vit,
        x: &Tensor,
        feats: &[f32],
        masks: &[bool],
        own_token: bool,
    ) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
        let grid = self.features.grid();
        // Features on the ViT grid: the input of feature-input models, and what the codebook
        // reads to find each patch's own token.
        let pooled = if vit.config().input_dim > 0 || own_token {
            pool_to_vit_grid(feats, grid, self.features.dim())?
        } else {
            Vec::new()
        };
        let tokens = if own_token {
            let codebook = self.codebook.as_ref().ok_or_else(|| {
                Error::invalid(format!(
                    "{}: the cross-entropy scores need our codebook ({}); this model was \
                     trained on external token ids",
                    self.dir.display(),
                    md::TOKENIZER_FILE
                ))
            })?;
            Some(codebook.assign(&pooled)?)
        } else {
            None
        };
        let pixels;
        let input: &[f32] = if vit.config().input_dim > 0 {
            &pooled
        } else {
            pixels = x.f32s();
            &pixels
        };
        self.backend
            .token_uncertainty(vit, input, masks, tokens.as_deref())
    }
}
