//! The embeddable detector API: open a model directory, register a class from its normal
//! images, and score images (anomaly map + image score + verdict).
//!
//! ```no_run
//! # fn main() -> pmad::Result<()> {
//! use pmad::detector::Detector;
//! let mut det = Detector::open("model".as_ref(), None)?;
//! det.register("bottle", &pmad::detector::pipeline::list_images("data/bottle/train/good".as_ref())?)?;
//! let img = pmad::data::load_rgb("photo.png".as_ref())?;
//! let r = det.inspect_image("bottle", &img)?;
//! println!("score {} anomalous {}", r.map.score, r.anomalous);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

use crate::backend::{Backend, DeviceBank};
use crate::data::image::{RgbImage, to_network_input};
use crate::data::view::ImageView;
use crate::detector::class_store;
use crate::detector::device::Device;
use crate::detector::features::FeatureExtractor;
use crate::detector::flow::{FlowConfig, ProtoFlow, abnormality_from_ll, positional_encoding};
use crate::detector::model_dir::{self as md, ClassInfo, InferenceMask, ModelConfig, ScoreKind};
use crate::detector::normal_images::{self, NormalImage};
use crate::detector::reweight::{self, PatchScore};
use crate::detector::scoring::{AnomalyMap, patch_scores_to_map};
use crate::error::{Error, ImageOrigin, Result};
use crate::models::EfficientNetLite;
use crate::models::efficientnet::default_weights_dir;
use crate::ops::nn_search::{BankIndex, IndexParams, Nearest};
use crate::recon::masking::{blockwise_mask, downsample_max, proposal_mask, random_mask};
use crate::recon::tokenizer::{Codebook, pool_to_vit_grid};
use crate::recon::vit::Vit;
use crate::rng::Rng;
use crate::tensor::Tensor;
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

/// Images per backbone batch.
pub const BATCH: usize = 8;

/// A progress callback: (step name, done, total).
pub type ProgressFn = Box<dyn Fn(&str, usize, usize) + Send + Sync>;

/// A registered class, loaded.
#[derive(Clone)]
pub struct ClassModel {
    /// The class's `class.json`: name, thresholds, calibration.
    pub info: ClassInfo,
    /// Prototype bank `[P, D]`.
    pub bank: Vec<f32>,
    /// The bank prepared for exact nearest-prototype search (built at registration; its
    /// k-means centroids are saved beside the bank so loading skips k-means).
    pub index: BankIndex,
    /// The normal image (in registration order) each prototype was taken from (stored beside
    /// the bank; `None` for classes registered by an older pmad): a recalibration (after
    /// `train` installed a flow or ViT) builds its fold banks from it, as `register` did.
    pub source_image: Option<Vec<u32>>,
    /// The bank's copy on the scoring device (uploaded on first use; empty on the CPU).
    pub(crate) on_device: DeviceBank,
}

/// Result of inspecting one image.
#[derive(Clone, Debug)]
pub struct Inspection {
    /// The anomaly map (`map.size`² values, row-major) and the image score (`map.score`).
    pub map: AnomalyMap,
    /// The class's calibrated threshold for the model's score.
    pub threshold: f32,
    /// The verdict: `map.score > threshold`.
    pub anomalous: bool,
}

/// A model directory opened for scoring (see the module docs).
///
/// `Detector` is `Send + Sync`: the inspection and scoring methods take `&self`, so one
/// `Arc<Detector>` can serve many threads. Classes load on first use into a shared cache.
/// What changes the model (`register*`, `recalibrate`, `set_flow`, `set_vit`,
/// `set_device`) takes `&mut self`, and so do the public fields: set `config`,
/// `inference_mask` and `progress` before sharing the detector.
pub struct Detector {
    pub(crate) dir: PathBuf,
    /// The model's `model.json` (read at open; changes here are not saved).
    pub config: ModelConfig,
    pub(crate) features: FeatureExtractor,
    /// The classes loaded so far. Readers clone the `Arc` out and score without holding the
    /// lock; a re-registration swaps the entry, and a reader keeps the model it started with.
    classes: RwLock<HashMap<String, Arc<ClassModel>>>,
    flow: Option<ProtoFlow>,
    /// Positional encoding of the patch grid, `[grid², cond_dim]` (flow condition).
    cond: Vec<f32>,
    /// The reconstruction stage's masked-token ViT (when trained).
    pub(crate) vit: Option<Vit>,
    /// The visual-token codebook the ViT was trained on (absent for external token ids).
    codebook: Option<Codebook>,
    /// Which patches the ViT reconstructs at inference (the proposal by default; random and
    /// blockwise are the paper's ablations).
    pub inference_mask: InferenceMask,
    /// Images masked so far with a random inference mask (seeds the next one, so a run is
    /// reproducible; an atomic, so `&self` scoring can count, though threads scoring at once
    /// with a random mask draw their masks in whatever order they arrive).
    masks_drawn: AtomicU64,
    /// Reports progress of long steps (images embedded so far, total).
    pub progress: Option<ProgressFn>,
    /// Where feature extraction, the nearest-prototype search and the ViT run
    /// ([`Detector::set_device`]).
    backend: Backend,
}

/// Image files of a folder (png/jpg/jpeg), sorted by name.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut v = Vec::new();
    for e in rd {
        let p = e.map_err(|e| Error::io(dir, e))?.path();
        let ext = p
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        if matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg")) {
            v.push(p);
        }
    }
    v.sort();
    Ok(v)
}

/// Nearest upsampling of per-patch values from the ViT grid (`[B * vgrid²]`) to the feature
/// grid (`[B * grid²]`); the feature grid is a multiple of the ViT grid.
fn vit_to_feature_grid(v: &[f32], vgrid: usize, grid: usize) -> Vec<f32> {
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

/// Decodes images (in parallel) into one `[n, 3, S, S]` batch of network inputs.
pub fn load_inputs(paths: &[PathBuf], size: usize) -> Result<Tensor> {
    normal_images::load_inputs(&NormalImage::files(paths), size)
}

/// The ViT must see the backbone's input (same size) on a grid that tiles the feature grid.
fn check_vit_fits(vit: &Vit, config: &ModelConfig, dir: &Path) -> Result<()> {
    let (size, patch) = (vit.config().image_size, vit.config().patch);
    let (fgrid, fdim) = config.features.geometry()?;
    let input = vit.config().input_dim;
    if size != config.features.input_size
        || patch == 0
        || fgrid % (size / patch) != 0
        || (input > 0 && input != fdim)
    {
        return Err(Error::format(
            dir.join(md::VIT_FILE),
            format!(
                "ViT input {size} / patch {patch} (input dim {input}) does not fit the \
                 features ({} input, grid {fgrid}, dim {fdim})",
                config.features.input_size
            ),
        ));
    }
    Ok(())
}

/// Decodes an image and makes the `[3, S, S]` network input (direct resize, no crop).
pub fn image_input(img: &RgbImage, size: usize) -> Vec<f32> {
    to_network_input(&img.resize(size, size), 127.0, 128.0)
}

impl Detector {
    /// Creates a new model directory (must not exist or be empty) with `config`.
    pub fn create(dir: &Path, config: &ModelConfig) -> Result<()> {
        if dir.exists()
            && std::fs::read_dir(dir)
                .map_err(|e| Error::io(dir, e))?
                .next()
                .is_some()
        {
            return Err(Error::invalid(format!(
                "{}: already exists and is not empty",
                dir.display()
            )));
        }
        config.check(&dir.join(md::CONFIG_FILE))?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        md::write_json(&dir.join(md::CONFIG_FILE), config)
    }

    /// Opens a model directory. `backbone` defaults to the fetched weights of the model's
    /// backbone (`features.backbone` in model.json: `weights/efficientnet_liteN.safetensors`).
    pub fn open(dir: &Path, backbone: Option<&Path>) -> Result<Detector> {
        let config = md::read_config(dir)?;
        let variant = config.features.backbone;
        let bpath = backbone
            .map(Path::to_path_buf)
            .unwrap_or_else(|| default_weights_dir().join(variant.weights_file()));
        if !bpath.is_file() {
            return Err(Error::WeightsMissing {
                path: bpath,
                what: format!("EfficientNet-{variant} weights (the model's backbone)"),
                hint: format!("pmad fetch-weights --backbone {variant}"),
            });
        }
        let net = Arc::new(EfficientNetLite::load_as(&bpath, variant)?);
        let features = FeatureExtractor::new(net, config.features.clone())?;
        let flow = match &config.flow {
            None => None,
            Some(v) => {
                let fc: FlowConfig = serde_json::from_value(v.clone()).map_err(|e| {
                    Error::format(
                        dir.join(md::CONFIG_FILE),
                        format!("invalid flow config: {e}"),
                    )
                })?;
                let st = crate::weights::SafeTensors::open(dir.join(md::FLOW_FILE))?;
                Some(ProtoFlow::from_tensors(fc, |n, s| {
                    st.tensor_f32_checked(n, s)
                })?)
            }
        };
        let cond = flow.as_ref().map_or(Vec::new(), |f| {
            positional_encoding(features.grid(), f.config.cond_dim)
        });
        let vit = match &config.recon {
            None => None,
            Some(_) => {
                let vit = Vit::load(&dir.join(md::VIT_FILE))?;
                check_vit_fits(&vit, &config, dir)?;
                Some(vit)
            }
        };
        let cb_file = dir.join(md::TOKENIZER_FILE);
        let codebook = match &config.recon {
            Some(rc) if rc.tokens == "codebook" && cb_file.is_file() => {
                Some(Codebook::load(&cb_file)?)
            }
            _ => None,
        };
        Ok(Detector {
            dir: dir.to_path_buf(),
            config,
            features,
            classes: RwLock::new(HashMap::new()),
            flow,
            cond,
            vit,
            codebook,
            inference_mask: InferenceMask::default(),
            masks_drawn: AtomicU64::new(0),
            backend: Backend::Cpu,
            progress: None,
        })
    }

    /// The model directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The backbone feature extractor.
    pub fn features(&self) -> &FeatureExtractor {
        &self.features
    }

    pub(crate) fn report(&self, what: &str, done: usize, total: usize) {
        if let Some(p) = &self.progress {
            p(what, done, total);
        }
    }

    /// Patch features of images on disk: `[n_images * grid², dim]`, batched through the
    /// backbone. Every image is decoded first so a bad file fails before any work.
    pub fn embed_paths(&self, paths: &[PathBuf], what: &str) -> Result<Vec<f32>> {
        self.embed_images(&NormalImage::files(paths), what)
    }

    /// [`embed_paths`](Self::embed_paths) of files or in-memory images.
    pub(crate) fn embed_images(&self, images: &[NormalImage], what: &str) -> Result<Vec<f32>> {
        let size = self.config.features.input_size;
        let grid = self.features.grid();
        // Reserved up front: growing by doubling would briefly hold ~2x the pool.
        let mut out = Vec::with_capacity(images.len() * grid * grid * self.features.dim());
        for (bi, chunk) in images.chunks(BATCH).enumerate() {
            let x = normal_images::load_inputs(chunk, size)?;
            let f = self.extract_features(&x)?;
            check_finite(&f, grid * grid * self.features.dim(), "", "backbone")
                .map_err(|e| normal_images::name_image(e, chunk))?;
            out.extend_from_slice(&f);
            self.report(
                what,
                (bi * BATCH + chunk.len()).min(images.len()),
                images.len(),
            );
        }
        Ok(out)
    }

    /// The score kinds this model can compute (those that get a threshold).
    pub fn available_scores(&self) -> Vec<ScoreKind> {
        let mut kinds = vec![ScoreKind::Distance];
        if self.flow.is_some() {
            kinds.extend([ScoreKind::Flow, ScoreKind::FlowNll]);
        }
        if self.vit.is_some() {
            kinds.extend([ScoreKind::Product, ScoreKind::Entropy]);
            if self.codebook.is_some() {
                kinds.extend([ScoreKind::ProductCe, ScoreKind::CrossEntropy]);
            }
        }
        kinds
    }

    /// Installs a trained flow: saves it (atomically) and records its config in `model.json`.
    pub fn set_flow(&mut self, flow: ProtoFlow) -> Result<()> {
        let _lock = class_store::lock_writer(&self.dir)?;
        let tensors = flow.to_tensors()?;
        crate::weights::write_safetensors(
            self.dir.join(md::FLOW_FILE),
            tensors.iter().map(|(n, t)| (n.as_str(), t)),
            None,
        )?;
        crate::fault::point("train.flow-saved");
        self.config.flow =
            Some(serde_json::to_value(&flow.config).map_err(|e| Error::invalid(e.to_string()))?);
        md::write_json(&self.dir.join(md::CONFIG_FILE), &self.config)?;
        self.cond = positional_encoding(self.features.grid(), flow.config.cond_dim);
        self.flow = Some(flow);
        Ok(())
    }

    /// Installs a trained ViT (and saves it) with its reconstruction-stage settings.
    pub fn set_vit(&mut self, vit: Vit, recon: md::ReconConfig) -> Result<()> {
        check_vit_fits(&vit, &self.config, &self.dir)?;
        // The GPU copy first: a failed upload leaves model files and memory as they were.
        self.backend.set_vit(&vit)?;
        let _lock = class_store::lock_writer(&self.dir)?;
        vit.save(&self.dir.join(md::VIT_FILE))?;
        crate::fault::point("train.vit-saved");
        let cb_file = self.dir.join(md::TOKENIZER_FILE);
        self.codebook = if recon.tokens == "codebook" && cb_file.is_file() {
            Some(Codebook::load(&cb_file)?)
        } else {
            None
        };
        self.config.recon = Some(recon);
        md::write_json(&self.dir.join(md::CONFIG_FILE), &self.config)?;
        self.vit = Some(vit);
        Ok(())
    }

    /// Moves scoring's nearest-prototype search and ViT to `device` (see
    /// [`crate::detector::device`]). `Device::Cuda` needs a binary built with the `cuda`
    /// feature and a usable GPU (compute capability 7.5+); otherwise a clear error and nothing
    /// changes.
    pub fn set_device(&mut self, device: Device) -> Result<()> {
        self.backend = Backend::open(device, &self.features, self.vit.as_ref())?;
        Ok(())
    }

    /// The device scoring runs on.
    pub fn device(&self) -> Device {
        self.backend.device()
    }

    /// Patch features `[B * grid², dim]` of the network inputs `x`, on the scoring device.
    pub(crate) fn extract_features(&self, x: &Tensor) -> Result<Vec<f32>> {
        self.backend.features(&self.features, x)
    }

    /// Exact nearest prototype of each feature row, on the scoring device.
    fn nearest(&self, model: &ClassModel, feats: &[f32]) -> Result<Nearest> {
        let dim = self.features.dim();
        self.backend
            .nearest(&model.bank, &model.index, &model.on_device, feats, dim)
    }

    /// The trained ViT, if any.
    pub fn vit(&self) -> Option<&Vit> {
        self.vit.as_ref()
    }

    /// Loads (on first use) and returns a registered class (checked: see
    /// `class_store::load`). The returned `Arc` stays valid while the class is re-registered.
    pub fn class(&self, class: &str) -> Result<Arc<ClassModel>> {
        // The map is only ever changed by single inserts, so a poisoned lock (a panic
        // elsewhere while it was held) still guards a consistent map.
        if let Some(m) = self
            .classes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(class)
        {
            return Ok(m.clone());
        }
        // Loaded without the lock held, so a slow load never blocks scoring of other
        // classes. Threads racing on the same unloaded class may each load it (a read-only
        // load of the same files: harmless); the first insert wins and everyone gets that
        // one `Arc`. Simpler than a per-class once-cell, and a failed load is not cached.
        md::check_class_name(class)?;
        let model = Arc::new(self.load_class(class)?);
        let mut map = self.classes.write().unwrap_or_else(PoisonError::into_inner);
        Ok(map.entry(class.to_string()).or_insert(model).clone())
    }

    /// Reads a stored class and prepares its search index.
    fn load_class(&self, class: &str) -> Result<ClassModel> {
        let dim = self.features.dim();
        let stored = class_store::load(&self.dir, class, dim)?;
        let index = match &stored.centroids {
            Some(c) => {
                BankIndex::with_centroids(&stored.bank, dim, c, IndexParams::default().proj_dim)
            }
            None => BankIndex::build(&stored.bank, dim),
        };
        Ok(ClassModel {
            info: stored.info,
            bank: stored.bank,
            index,
            source_image: stored.source_image,
            on_device: DeviceBank::default(),
        })
    }

    /// Puts `model` in the class cache, replacing the class's previous model.
    pub(crate) fn install_class(&mut self, model: ClassModel) {
        let map = self
            .classes
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        map.insert(model.info.name.clone(), Arc::new(model));
    }

    /// Takes a class out of the cache (to change it and install it again).
    pub(crate) fn take_class(&mut self, class: &str) -> Option<Arc<ClassModel>> {
        let map = self
            .classes
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        map.remove(class)
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
    fn score_model(
        &self,
        model: &ClassModel,
        x: &Tensor,
        kind: ScoreKind,
    ) -> Result<Vec<AnomalyMap>> {
        let feats = self.extract_features(x)?;
        Ok(self
            .maps_from_features(model, x, &feats, &[kind])?
            .remove(0))
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

    /// The trained ViT, or an error saying the score needs one.
    fn require_vit(&self) -> Result<&Vit> {
        self.vit.as_ref().ok_or_else(|| {
            Error::invalid(format!(
                "{}: the product/entropy scores need a trained ViT (none in this model; \
                 train with the ViT stage)",
                self.dir.display()
            ))
        })
    }

    /// The inference mask ratio of a class: its own, else the model's, else 0.3.
    fn class_mask_ratio(&self, model: &ClassModel) -> f32 {
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
    fn reconstruction_uncertainty(
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

    /// Scores one decoded image against `class` with the model's default score.
    pub fn inspect_image(&self, class: &str, img: &RgbImage) -> Result<Inspection> {
        let mut v = self.inspect_batch(class, std::slice::from_ref(img))?;
        Ok(v.remove(0))
    }

    /// Scores a raw pixel buffer (see [`ImageView`]) against `class`, like
    /// [`inspect_image`](Self::inspect_image) on its RGB conversion.
    pub fn inspect_view(&self, class: &str, view: &ImageView) -> Result<Inspection> {
        self.inspect_image(class, &view.to_rgb())
    }

    /// [`inspect_view`](Self::inspect_view) for several buffers in one backbone batch.
    pub fn inspect_views(&self, class: &str, views: &[ImageView]) -> Result<Vec<Inspection>> {
        let imgs: Vec<RgbImage> = views.iter().map(ImageView::to_rgb).collect();
        self.inspect_batch(class, &imgs)
    }

    /// Scores decoded images against `class` in one backbone batch (faster than one by one).
    pub fn inspect_batch(&self, class: &str, imgs: &[RgbImage]) -> Result<Vec<Inspection>> {
        if imgs.is_empty() {
            return Ok(Vec::new());
        }
        // The public fields of `RgbImage` may disagree with its buffer: an error here, not an
        // index panic in the resize.
        for (i, img) in imgs.iter().enumerate() {
            img.validate()
                .map_err(|e| e.at_image(ImageOrigin::Batch(i)))?;
        }
        let kind = self.config.score;
        let size = self.config.features.input_size;
        let inputs: Vec<Vec<f32>> = imgs.par_iter().map(|img| image_input(img, size)).collect();
        let x = Tensor::new(inputs.concat(), &[imgs.len(), 3, size, size])?;
        // One model for the maps and the threshold, even if the class is re-registered
        // meanwhile.
        let model = self.class(class)?;
        let maps = self.score_model(&model, &x, kind)?;
        // A class without a threshold for this score cannot give a verdict: an error, never
        // "normal".
        let info_path = class_store::info_path(&self.dir, class);
        let threshold = model.info.threshold(kind, &info_path)?;
        Ok(maps
            .into_iter()
            .map(|map| Inspection {
                anomalous: map.score > threshold,
                threshold,
                map,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One `Arc<Detector>` must be able to serve many threads (a compile-time check).
    #[test]
    fn detector_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Detector>();
        assert_send_sync::<Arc<ClassModel>>();
    }
}
