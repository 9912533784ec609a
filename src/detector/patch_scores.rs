//! Proposal-stage scoring of a [`Detector`] (METHOD.md §3 and §7): the nearest-prototype
//! search on the scoring backend, the per-patch abnormality of each score kind (distance,
//! flow), and the anomaly maps and image scores, with every stage checked finite. The
//! reconstruction-stage kinds get their uncertainty from [`super::stage2`].

#![warn(missing_docs)]

use crate::detector::class_cache::ClassModel;
use crate::detector::device::Device;
use crate::detector::flow::abnormality_from_ll;
use crate::detector::model_dir::ScoreKind;
use crate::detector::pipeline::Detector;
use crate::detector::resident::{self, Settings};
use crate::detector::reweight::{self, PatchScore};
use crate::detector::scoring::{AnomalyMap, patch_scores_to_map};
use crate::detector::stage2::vit_to_feature_grid;
use crate::error::{Error, Result};
use crate::ops::nn_search::Nearest;
use crate::tensor::Tensor;
use rayon::prelude::*;

/// A NaN/Inf in `v` (`per` values per image) as an error naming the class, the image of the
/// batch and the stage.
pub(crate) fn check_finite(v: &[f32], per: usize, class: &str, stage: &'static str) -> Result<()> {
    match crate::weights::first_non_finite(v) {
        None => Ok(()),
        Some(i) => Err(Error::NonFinite {
            class: class.to_string(),
            image: i / per.max(1),
            stage,
            value: v[i],
        }),
    }
}

impl Detector {
    /// Exact nearest prototype of each feature row, on the scoring device.
    fn nearest(&self, model: &ClassModel, feats: &[f32]) -> Result<Nearest> {
        let dim = self.features.dim();
        self.backend.nearest(model, feats, dim)
    }
    /// Per-patch abnormality of the features `[n * grid², dim]` of `n` whole images (one
    /// search for all of them: the index amortises better over many queries).
    pub fn patch_abnormality(
        &self,
        model: &ClassModel,
        feats: &[f32],
        kind: ScoreKind,
    ) -> Result<Vec<f32>> {
        Ok(self.patch_abnormalities(model, feats, &[kind])?.remove(0))
    }
    /// [`patch_abnormality`](Self::patch_abnormality) for several score kinds at once: the
    /// nearest-prototype search and the flow's log-likelihoods are computed once for all.
    pub fn patch_abnormalities(
        &self,
        model: &ClassModel,
        feats: &[f32],
        kinds: &[ScoreKind],
    ) -> Result<Vec<Vec<f32>>> {
        let dim = self.features.dim();
        let per = self.features.grid() * self.features.grid();
        if !feats.len().is_multiple_of(per * dim) {
            return Err(Error::shape(format!(
                "patch_abnormality: {} features are not whole images of {per} x {dim}",
                feats.len()
            )));
        }
        if let Some(k) = kinds.iter().find(|k| k.uses_vit()) {
            return Err(Error::invalid(format!(
                "patch_abnormality computes proposal-stage scores; '{}' needs the images \
                 (use score_inputs)",
                k.name()
            )));
        }
        let name = model.info.name.as_str();
        check_finite(feats, per * dim, name, "backbone")?;
        let nn = self.nearest(model, feats)?;
        check_finite(&nn.dist2, per, name, "search")?;
        // Per-patch log-likelihood of the residual to the nearest prototype, if asked for.
        let mut ll: Option<Vec<f32>> = None;
        if kinds.iter().any(|k| k.uses_flow()) {
            let flow = self.flow.as_ref().ok_or_else(|| {
                Error::invalid(format!(
                    "{}: the flow score needs a trained flow (none in this model)",
                    self.dir.display()
                ))
            })?;
            let mut r = feats.to_vec();
            for (row, &j) in r.chunks_mut(dim).zip(&nn.index) {
                let p = &model.bank[j as usize * dim..(j as usize + 1) * dim];
                row.iter_mut().zip(p).for_each(|(a, b)| *a -= b);
            }
            let mut all = Vec::with_capacity(nn.index.len());
            for image in r.chunks(per * dim) {
                all.extend(flow.log_likelihood(image, &self.cond)?);
            }
            check_finite(&all, per, name, "flow")?;
            ll = Some(all);
        }
        Ok(kinds
            .iter()
            .map(|kind| match (kind, &ll) {
                // (The reconstruction-stage kinds were rejected above.)
                (
                    ScoreKind::Distance
                    | ScoreKind::Product
                    | ScoreKind::Entropy
                    | ScoreKind::ProductCe
                    | ScoreKind::CrossEntropy,
                    _,
                )
                | (_, None) => nn.dist2.iter().map(|d| d.sqrt()).collect(),
                (ScoreKind::FlowNll, Some(ll)) => ll.iter().map(|l| -l).collect(),
                // Eq. 1 over the patches of each image: a_i = max_j p_j - p_i.
                (ScoreKind::Flow, Some(ll)) => ll
                    .chunks(per)
                    .flat_map(|img| {
                        let top = img.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                        abnormality_from_ll(img, top)
                    })
                    .collect(),
            })
            .collect())
    }
    /// Anomaly maps of a batch of network inputs `[B, 3, S, S]`.
    pub fn score_inputs(
        &self,
        class: &str,
        x: &Tensor,
        kind: ScoreKind,
    ) -> Result<Vec<AnomalyMap>> {
        let model = self.class(class)?;
        self.score_model(&model, x, kind)
    }
    /// [`score_inputs`](Self::score_inputs) against an already loaded class.
    pub(super) fn score_model(
        &self,
        model: &ClassModel,
        x: &Tensor,
        kind: ScoreKind,
    ) -> Result<Vec<AnomalyMap>> {
        self.score_model_with(model, x, kind, true)
    }
    /// [`score_model`](Self::score_model); the maps' values only when `want_maps`. A GPU
    /// backend scores resident ([`crate::detector::resident`]) whatever it covers; the CPU,
    /// and a GPU for the rest, take the staged path.
    pub(super) fn score_model_with(
        &self,
        model: &ClassModel,
        x: &Tensor,
        kind: ScoreKind,
        want_maps: bool,
    ) -> Result<Vec<AnomalyMap>> {
        if self.device() != Device::Cpu
            && resident::covers(kind, self.inference_mask, &self.config.map)
        {
            return self.resident_maps(model, x, kind, want_maps);
        }
        let feats = self.extract_features(x)?;
        Ok(self
            .maps_from_features(model, x, &feats, &[kind])?
            .remove(0))
    }
    /// The maps of `kind` for the inputs `x` from the resident pass on the scoring backend
    /// (on the CPU: the resident pass's CPU twin, which the staged path must equal; tests
    /// hold the two together). `values` empty unless `want_maps`.
    pub fn resident_maps(
        &self,
        model: &ClassModel,
        x: &Tensor,
        kind: ScoreKind,
        want_maps: bool,
    ) -> Result<Vec<AnomalyMap>> {
        if kind.uses_vit() {
            self.require_vit()?;
        }
        if !resident::covers(kind, self.inference_mask, &self.config.map) {
            return Err(Error::invalid(format!(
                "score '{}' with these settings (flow, reweighted patch score or a random \
                 inference mask) is scored on the staged path only",
                kind.name()
            )));
        }
        let settings = Settings {
            grid: self.features.grid(),
            dim: self.features.dim(),
            spec: &self.config.map,
            mask_ratio: self.class_mask_ratio(model),
            codebook: self
                .codebook
                .as_ref()
                .map(|c| (c.codes(), &self.codebook_on_device)),
        };
        self.backend.score_resident(
            &self.features,
            self.vit.as_ref(),
            settings,
            model,
            &x.f32s(),
            x.dim(0),
            kind,
            want_maps,
        )
    }
    /// Anomaly maps for each of `kinds` (outer) and each image (inner) of the inputs `x`
    /// `[B, 3, S, S]` whose patch features are `feats`. The nearest-prototype search, the
    /// flow and the ViT each run once, whatever the kinds share.
    pub(crate) fn maps_from_features(
        &self,
        model: &ClassModel,
        x: &Tensor,
        feats: &[f32],
        kinds: &[ScoreKind],
    ) -> Result<Vec<Vec<AnomalyMap>>> {
        let grid = self.features.grid();
        // The proposal-stage scores asked for, plus the distance the ViT scores build on.
        let mut base: Vec<ScoreKind> = kinds.iter().filter(|k| !k.uses_vit()).copied().collect();
        let needs_vit = kinds.iter().any(|k| k.uses_vit());
        if needs_vit && !base.contains(&ScoreKind::Distance) {
            base.push(ScoreKind::Distance);
        }
        let base_patches = self.patch_abnormalities(model, feats, &base)?;
        let distance = base
            .iter()
            .position(|k| *k == ScoreKind::Distance)
            .map(|i| &base_patches[i]);
        let own = kinds.iter().any(|k| k.uses_own_token());
        // Uncertainties, brought from the ViT grid to the feature grid once for all kinds.
        let (entropy, cross) = match (needs_vit, distance) {
            (true, Some(a)) => {
                let (e, c) = self.reconstruction_uncertainty(model, x, feats, a, own)?;
                let vit = self.require_vit()?.config();
                let vper = (vit.image_size / vit.patch).pow(2);
                check_finite(&e, vper, &model.info.name, "vit")?;
                if let Some(c) = &c {
                    check_finite(c, vper, &model.info.name, "vit")?;
                }
                let vit = self.require_vit()?.config();
                let up = |u: &[f32]| vit_to_feature_grid(u, vit.image_size / vit.patch, grid);
                (Some(up(&e)), c.as_deref().map(up))
            }
            _ => (None, None),
        };
        kinds
            .iter()
            .map(|kind| {
                let stage2 = if kind.uses_own_token() {
                    &cross
                } else {
                    &entropy
                };
                let patches: Vec<f32> = match (kind, stage2, distance) {
                    (ScoreKind::Entropy | ScoreKind::CrossEntropy, Some(e), _) => e.clone(),
                    // Full PMAD (METHOD.md §7): uncertainty x abnormality, 0 where unmasked.
                    (ScoreKind::Product | ScoreKind::ProductCe, Some(e), Some(a)) => {
                        e.iter().zip(a).map(|(e, a)| e * a).collect()
                    }
                    _ => {
                        let i = base.iter().position(|k| k == kind).expect("computed above");
                        base_patches[i].clone()
                    }
                };
                self.maps_of_patches(model, *kind, &patches, feats)
            })
            .collect()
    }
    /// The maps of one score kind from its patch scores `[n * grid²]` (features `feats`,
    /// `[n * grid², dim]`): upsampled and blurred, the image score per `config.map`
    /// (PatchCore's reweighting for the `distance` kind when asked for), every score checked
    /// finite.
    fn maps_of_patches(
        &self,
        model: &ClassModel,
        kind: ScoreKind,
        patches: &[f32],
        feats: &[f32],
    ) -> Result<Vec<AnomalyMap>> {
        let grid = self.features.grid();
        let mut maps: Vec<AnomalyMap> = patches
            .par_chunks(grid * grid)
            .map(|p| patch_scores_to_map(p, grid, &self.config.map))
            .collect();
        // PatchCore's reweighting scales the distance kind's image score by the weight of
        // its most abnormal patch; the map itself is unchanged.
        if let (ScoreKind::Distance, PatchScore::Reweighted { b }) =
            (kind, self.config.map.patch_score)
        {
            let w = reweight::image_weights(
                patches,
                feats,
                &model.bank,
                self.features.dim(),
                grid * grid,
                b,
                &model.info.name,
            )?;
            maps.iter_mut().zip(w).for_each(|(m, w)| m.score *= w);
        }
        // The last line of defence: no non-finite score leaves the detector.
        for (i, m) in maps.iter().enumerate() {
            if !m.score.is_finite() {
                return Err(Error::NonFinite {
                    class: model.info.name.clone(),
                    image: i,
                    stage: "map",
                    value: m.score,
                });
            }
        }
        Ok(maps)
    }
    /// Image scores of the `distance` kind for patch features `[n * grid², dim]` (no image
    /// needed: the proposal stage only).
    pub(crate) fn distance_image_scores(
        &self,
        model: &ClassModel,
        feats: &[f32],
    ) -> Result<Vec<f32>> {
        let patches = self.patch_abnormality(model, feats, ScoreKind::Distance)?;
        Ok(self
            .maps_of_patches(model, ScoreKind::Distance, &patches, feats)?
            .into_iter()
            .map(|m| m.score)
            .collect())
    }
}
