//! The embeddable detector API: open a model directory, register a class from its normal
//! images, and score images (anomaly map + image score + verdict).
//!
//! `Detector` is written across a few files, one concern each: this one opens and configures
//! it and holds the public inspection entry points; `class_cache` loads and shares the
//! registered classes; `patch_scores` scores patches and builds the maps (proposal stage);
//! `stage2` runs the masked ViT (reconstruction stage); `register` and `calibrate` add and
//! calibrate classes.
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

use crate::backend::{Backend, DeviceBank, Precision};
use crate::data::image::{RgbImage, to_network_input};
use crate::data::view::ImageView;
use crate::detector::class_store;
use crate::detector::device::Device;
use crate::detector::features::FeatureExtractor;
use crate::detector::flow::{FlowConfig, ProtoFlow, positional_encoding};
use crate::detector::model_dir::{self as md, InferenceMask, ModelConfig, ScoreKind};
use crate::detector::normal_images::{self, NormalImage};
use crate::detector::scoring::AnomalyMap;
use crate::error::{Error, ImageOrigin, Result};
use crate::models::EfficientNetLite;
use crate::models::efficientnet::default_weights_dir;
use crate::recon::tokenizer::Codebook;
use crate::recon::vit::Vit;
use crate::tensor::Tensor;
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

pub use crate::detector::class_cache::ClassModel;
pub(crate) use crate::detector::patch_scores::check_finite;

/// Images per backbone batch.
pub const BATCH: usize = 8;

/// A progress callback: (step name, done, total).
pub type ProgressFn = Box<dyn Fn(&str, usize, usize) + Send + Sync>;

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
    pub(super) classes: RwLock<HashMap<String, Arc<ClassModel>>>,
    pub(super) flow: Option<ProtoFlow>,
    /// Positional encoding of the patch grid, `[grid², cond_dim]` (flow condition).
    pub(super) cond: Vec<f32>,
    /// The reconstruction stage's masked-token ViT (when trained).
    pub(crate) vit: Option<Vit>,
    /// The visual-token codebook the ViT was trained on (absent for external token ids).
    pub(super) codebook: Option<Codebook>,
    /// The codebook's copy on the scoring device (uploaded on first use; a new codebook
    /// gets a new, empty one).
    pub(super) codebook_on_device: DeviceBank,
    /// Which patches the ViT reconstructs at inference (the proposal by default; random and
    /// blockwise are the paper's ablations).
    pub inference_mask: InferenceMask,
    /// Images masked so far with a random inference mask (seeds the next one, so a run is
    /// reproducible; an atomic, so `&self` scoring can count, though threads scoring at once
    /// with a random mask draw their masks in whatever order they arrive).
    pub(super) masks_drawn: AtomicU64,
    /// Reports progress of long steps (images embedded so far, total).
    pub progress: Option<ProgressFn>,
    /// Where feature extraction, the nearest-prototype search and the ViT run
    /// ([`Detector::set_device`]).
    pub(super) backend: Backend,
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
        md::write_config(&dir.join(md::CONFIG_FILE), config)
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
            codebook_on_device: DeviceBank::default(),
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
        md::write_config(&self.dir.join(md::CONFIG_FILE), &self.config)?;
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
        self.codebook_on_device = DeviceBank::default();
        self.config.recon = Some(recon);
        md::write_config(&self.dir.join(md::CONFIG_FILE), &self.config)?;
        self.vit = Some(vit);
        Ok(())
    }

    /// Moves scoring's nearest-prototype search and ViT to `device` (see
    /// [`crate::detector::device`]). `Device::Cuda` needs a binary built with the `cuda`
    /// feature and a usable GPU (compute capability 7.5+); otherwise a clear error and nothing
    /// changes.
    pub fn set_device(&mut self, device: Device) -> Result<()> {
        self.set_backend(device, Precision::F32)
    }

    /// [`Self::set_device`] with the number format of the GPU's GEMMs: `Precision::Bf16`
    /// runs them on tensor cores (compute capability 8.0+; an error on the CPU).
    pub fn set_backend(&mut self, device: Device, precision: Precision) -> Result<()> {
        self.backend = Backend::open(device, precision, &self.features, self.vit.as_ref())?;
        Ok(())
    }

    /// The number format of the scoring device's GEMMs.
    pub fn precision(&self) -> Precision {
        self.backend.precision()
    }

    /// The device scoring runs on.
    pub fn device(&self) -> Device {
        self.backend.device()
    }

    /// Bytes copied `(host -> device, device -> host)` so far by the scoring device (shared
    /// by every detector of the process); `None` on the CPU.
    pub fn device_bytes_copied(&self) -> Option<(u64, u64)> {
        self.backend.bytes_copied()
    }

    /// Patch features `[B * grid², dim]` of the network inputs `x`, on the scoring device.
    pub(crate) fn extract_features(&self, x: &Tensor) -> Result<Vec<f32>> {
        self.backend.features(&self.features, x)
    }

    /// The trained ViT, if any.
    pub fn vit(&self) -> Option<&Vit> {
        self.vit.as_ref()
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
        self.inspect_batch_with(class, imgs, true)
    }

    /// [`inspect_batch`](Self::inspect_batch), with the maps only when `want_maps`: without
    /// them each `map.values` is empty, and a GPU sends down nothing but the scores.
    pub fn inspect_batch_with(
        &self,
        class: &str,
        imgs: &[RgbImage],
        want_maps: bool,
    ) -> Result<Vec<Inspection>> {
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
        let maps = self.score_model_with(&model, &x, kind, want_maps)?;
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
