//! The model directory: everything a trained detector needs, written atomically.
//!
//! ```text
//! MODEL_DIR/
//!   model.json                      ModelConfig (format version, features, maps, flow config)
//!   flow.safetensors                ProtoFlow weights (when trained)
//!   tokenizer.safetensors           visual-token codebook (when the ViT was trained)
//!   vit.safetensors                 masked-token ViT weights (when trained)
//!   vit.checkpoint.safetensors      training checkpoint (params, optimiser, step), for --resume
//!   classes/<name>/CURRENT          the class's current version, e.g. "v000002"
//!   classes/<name>/v000002/prototypes.safetensors   the class's prototype bank [P, D]
//!   classes/<name>/v000002/class.json     ClassInfo (calibrated image and pixel thresholds,
//!                                         normal scores)
//! ```
//! Every file is written to a temporary name in the same folder and renamed into place, so a
//! crash never leaves a half-written model; a class is replaced in one atomic step
//! ([`crate::detector::class_store`]). Every number is range-checked when read
//! ([`ModelConfig::check`], [`ClassInfo::check`]).

use crate::detector::features::FeatureSpec;
use crate::detector::scoring::MapSpec;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The newest `model.json` format this pmad reads and writes; bumped whenever the directory
/// layout or a file's meaning changes. Version 2 adds what a version-1 reader would misread
/// or silently ignore: per-image input normalisation, inner (`blocks.N.expand`/`.dw`) and
/// projected (`NAME:DIM`) taps.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest format this pmad still reads. A model is written with the lowest version that
/// can hold it ([`ModelConfig::required_format_version`]), so a model that uses nothing of
/// version 2 stays readable by an older pmad, and one that does is refused by it with a
/// version message instead of being scored wrongly.
pub const MIN_FORMAT_VERSION: u32 = 1;
pub const CONFIG_FILE: &str = "model.json";
pub const FLOW_FILE: &str = "flow.safetensors";
pub const TOKENIZER_FILE: &str = "tokenizer.safetensors";
pub const VIT_FILE: &str = "vit.safetensors";
pub const CHECKPOINT_FILE: &str = "vit.checkpoint.safetensors";
pub const CLASSES_DIR: &str = "classes";
pub const BANK_FILE: &str = "prototypes.safetensors";
pub const CLASS_FILE: &str = "class.json";

/// How a patch's abnormality is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScoreKind {
    /// Euclidean distance to the nearest prototype (PatchCore).
    Distance,
    /// ProtoFlow, eq. 1 as written: `a_i = max_j p_j - p_i` over the image's patches, with
    /// `p = exp(ll/D)` the flow density of the residual to the nearest prototype.
    Flow,
    /// ProtoFlow in log space: `a_i = -ll_i/D`, the residual's negative log-likelihood per
    /// dimension. Monotone in eq. 1's `p_i` but without its per-image reference, so image
    /// scores are comparable across images.
    FlowNll,
    /// Full PMAD (METHOD.md §7): on the patches masked by the proposal stage, the entropy of
    /// the ViT's predicted token distribution times the patch's abnormality (distance);
    /// unmasked patches score 0.
    Product,
    /// The entropy alone on the proposal-masked patches (ablation).
    Entropy,
    /// The authors' release's variant of [`Product`](Self::Product): the cross-entropy of
    /// the patch's own visual token (`-log p(token)`, from our codebook) instead of the
    /// entropy — it looks at what the hidden patch really is, not only at how sure the
    /// context is — times the abnormality.
    ProductCe,
    /// That cross-entropy alone (ablation).
    CrossEntropy,
}

impl ScoreKind {
    /// The name used on the command line and as a key in `class.json`.
    pub fn name(self) -> &'static str {
        match self {
            ScoreKind::Distance => "distance",
            ScoreKind::Flow => "flow",
            ScoreKind::FlowNll => "flow-nll",
            ScoreKind::Product => "product",
            ScoreKind::Entropy => "entropy",
            ScoreKind::ProductCe => "product-ce",
            ScoreKind::CrossEntropy => "cross-entropy",
        }
    }

    /// Whether this score runs the reconstruction stage (needs the trained ViT).
    pub fn uses_vit(self) -> bool {
        matches!(
            self,
            ScoreKind::Product
                | ScoreKind::Entropy
                | ScoreKind::ProductCe
                | ScoreKind::CrossEntropy
        )
    }

    /// Whether this score reads the patch's own visual token (needs the codebook).
    pub fn uses_own_token(self) -> bool {
        matches!(self, ScoreKind::ProductCe | ScoreKind::CrossEntropy)
    }

    /// Whether this score needs the trained flow.
    pub fn uses_flow(self) -> bool {
        matches!(self, ScoreKind::Flow | ScoreKind::FlowNll)
    }
}

impl std::str::FromStr for ScoreKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "distance" => Ok(ScoreKind::Distance),
            "flow" => Ok(ScoreKind::Flow),
            "flow-nll" => Ok(ScoreKind::FlowNll),
            "product" => Ok(ScoreKind::Product),
            "entropy" => Ok(ScoreKind::Entropy),
            "product-ce" => Ok(ScoreKind::ProductCe),
            "cross-entropy" => Ok(ScoreKind::CrossEntropy),
            // The proposal stage's abnormality alone (the ablation "proposal-only").
            "abnormality" => Ok(ScoreKind::Distance),
            _ => Err(format!(
                "unknown score '{s}' (distance | flow | flow-nll | product | entropy | \
                 product-ce | cross-entropy | abnormality)"
            )),
        }
    }
}

/// Which patches the ViT is asked to reconstruct at inference (METHOD.md §4; the
/// alternatives are the paper's ablations).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InferenceMask {
    /// The top `m` fraction of patches by proposal abnormality.
    #[default]
    Proposal,
    /// `m` of the patches drawn uniformly at random.
    Random,
    /// `m` of the patches covered by random blocks (appendix Algorithm 1).
    Blockwise,
}

impl std::str::FromStr for InferenceMask {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "proposal" => Ok(InferenceMask::Proposal),
            "random" => Ok(InferenceMask::Random),
            "blockwise" => Ok(InferenceMask::Blockwise),
            _ => Err(format!(
                "unknown inference mask '{s}' (proposal | random | blockwise)"
            )),
        }
    }
}

/// The reconstruction stage's settings, in `model.json` once the ViT is trained.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReconConfig {
    /// The ViT's shape (preset name and sizes).
    pub preset: String,
    pub vit: crate::recon::vit::VitConfig,
    /// Visual-token vocabulary size.
    pub vocab: usize,
    /// Fraction of patches masked at inference for classes registered without their own
    /// ratio (METHOD.md §4; the paper's per-class MVTec ratios range .04-.48).
    pub mask_ratio: f32,
    /// Where the training tokens came from: "codebook" (ours) or the external file's path.
    pub tokens: String,
    /// Classes whose normal images trained the tokenizer and the ViT.
    pub trained_on: Vec<String>,
}

/// Coreset parameters used at registration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CoresetParams {
    pub ratio: f32,
    pub proj_dim: usize,
    pub seed: u64,
}

impl Default for CoresetParams {
    fn default() -> Self {
        CoresetParams {
            ratio: 0.1,
            proj_dim: 128,
            seed: 0,
        }
    }
}

/// `model.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelConfig {
    pub format_version: u32,
    pub pmad_version: String,
    pub features: FeatureSpec,
    pub map: MapSpec,
    pub coreset: CoresetParams,
    /// Default abnormality used by `inspect`/`eval` when not overridden.
    pub score: ScoreKind,
    /// Quantile of out-of-fold normal image scores used as the per-class threshold.
    pub threshold_quantile: f32,
    /// The threshold is at least `median + z * MAD / 0.6745` of the same scores (a robust z
    /// cut-off, see [`crate::detector::calibrate`]); 0 turns this floor off. Models written
    /// before this field: 3.5 from their next calibration on.
    #[serde(default = "default_threshold_robust_z")]
    pub threshold_robust_z: f32,
    /// Classes whose normal images trained the flow.
    pub trained_on: Vec<String>,
    /// Flow hyper-parameters (present when a flow was trained).
    pub flow: Option<serde_json::Value>,
    /// Reconstruction stage (present when the ViT was trained).
    #[serde(default)]
    pub recon: Option<ReconConfig>,
    /// Augmentation candidates `register` tries for each class (few-shot registration,
    /// `detector/augment.rs`); each is kept or not per class, from its normal images. Models
    /// written before this field: none.
    #[serde(default)]
    pub augment: Vec<crate::detector::augment::Augment>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            format_version: FORMAT_VERSION,
            pmad_version: env!("CARGO_PKG_VERSION").to_string(),
            features: FeatureSpec::default(),
            map: MapSpec::default(),
            coreset: CoresetParams::default(),
            score: ScoreKind::Distance,
            threshold_quantile: 0.99,
            threshold_robust_z: default_threshold_robust_z(),
            trained_on: Vec::new(),
            flow: None,
            recon: None,
            augment: Vec::new(),
        }
    }
}

fn default_threshold_robust_z() -> f32 {
    crate::detector::register::OUTLIER_Z
}

/// A normal image that looks unlike the rest of its class.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Outlier {
    pub path: PathBuf,
    /// Robust z-score of its distance to the nearest other normal image
    /// (`crate::detector::register::outlier_z`).
    pub z: f32,
    /// Whether it was left out (`drop_outliers`).
    pub dropped: bool,
}

/// `classes/<name>/class.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClassInfo {
    pub name: String,
    pub n_train_images: usize,
    pub n_prototypes: usize,
    /// Image score above which `inspect` says "anomalous", per score kind (out-of-fold
    /// scores of the class's normal images only).
    pub thresholds: std::collections::BTreeMap<String, f32>,
    /// Out-of-fold normal image scores per score kind (for reports and re-calibration).
    pub normal_scores: std::collections::BTreeMap<String, Vec<f32>>,
    /// Reference log-likelihood per dimension for the flow score (max over held-out normal
    /// patches), so eq. 1 never needs test-set statistics.
    pub flow_ref_ll: Option<f32>,
    /// Inference mask ratio of this class (None: the model's default).
    #[serde(default)]
    pub mask_ratio: Option<f32>,
    /// Normal images that looked unlike the rest at registration (warnings).
    #[serde(default)]
    pub outliers: Vec<Outlier>,
    /// Folds of the k-fold calibration behind `thresholds` (`normal_scores` then holds one
    /// out-of-fold score per image of the folds scored, see `detector/calibrate.rs`); 0: a
    /// single 15% held-out split (older pmad).
    #[serde(default)]
    pub calibration_folds: usize,
    /// Anomaly-map value above which `inspect --save-mask` marks a pixel defective, per score
    /// kind: a high quantile of the out-of-fold map pixels of the class's normal images
    /// (`detector/calibrate.rs`). Absent in class.json files of older pmad (register again).
    #[serde(default)]
    pub pixel_thresholds: std::collections::BTreeMap<String, f32>,
    /// The augmentation candidates tried at registration and which were kept in the bank
    /// (`detector/augment.rs`; decided from the class's normal images only). Empty: none tried.
    #[serde(default)]
    pub augmentation: Vec<crate::detector::augment::AugmentTrial>,
}

/// Writes `bytes` to `path` atomically (temp file in the same folder, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let res = (|| -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::invalid(format!("{}: {e}", path.display())))?;
    write_atomic(path, text.as_bytes())
}

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::format(path, format!("invalid JSON: {e}")))
}

/// Reads and checks `model.json` of `dir`.
pub fn read_config(dir: &Path) -> Result<ModelConfig> {
    let path = dir.join(CONFIG_FILE);
    if !path.is_file() {
        return Err(Error::format(
            dir,
            "not a pmad model directory (no model.json)",
        ));
    }
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    parse_config(&bytes, &path)
}

/// Parses and checks the bytes of a `model.json` (`path` names it in errors).
pub fn parse_config(bytes: &[u8], path: &Path) -> Result<ModelConfig> {
    // Check the version before the full parse so an old/new layout gets a clear message.
    let raw: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::format(path, format!("invalid JSON: {e}")))?;
    let v = match raw.get("format_version") {
        None => "missing".to_string(),
        Some(serde_json::Value::Number(n))
            if n.as_u64().is_some_and(|v| {
                (MIN_FORMAT_VERSION as u64..=FORMAT_VERSION as u64).contains(&v)
            }) =>
        {
            String::new()
        }
        Some(serde_json::Value::Number(n)) => n.to_string(),
        Some(other) => format!("{other} (a {}, not an integer)", json_kind(other)),
    };
    if !v.is_empty() {
        return Err(Error::ModelVersion {
            path: path.to_path_buf(),
            found: v,
            supported: FORMAT_VERSION,
        });
    }
    let config: ModelConfig = serde_json::from_value(raw)
        .map_err(|e| Error::format(path, format!("invalid model config: {e}")))?;
    config.check(path)?;
    Ok(config)
}

/// Writes `config` as the `model.json` at `path` (atomically), stamped with the lowest
/// format version that holds it.
pub fn write_config(path: &Path, config: &ModelConfig) -> Result<()> {
    let mut stamped = config.clone();
    stamped.format_version = config.required_format_version();
    write_json(path, &stamped)
}

/// Parses and checks the bytes of a `class.json` (`path` names it in errors).
pub fn parse_class_info(bytes: &[u8], path: &Path) -> Result<ClassInfo> {
    let info: ClassInfo = serde_json::from_slice(bytes)
        .map_err(|e| Error::format(path, format!("invalid JSON: {e}")))?;
    info.check(path)?;
    Ok(info)
}

/// "string", "array", ... for messages about a JSON value of the wrong type.
fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

/// An error naming the file and the field of a config value out of its range.
fn field_error(path: &Path, field: &str, msg: impl std::fmt::Display) -> Error {
    Error::format(path, format!("field '{field}': {msg}"))
}

/// `Ok` when `ok`, else an error naming the field with `msg()`.
fn require(path: &Path, field: &str, ok: bool, msg: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(field_error(path, field, msg()))
    }
}

/// Checks that `v` lies in `lo..=hi` (an integer field).
fn in_range(path: &Path, field: &str, v: usize, lo: usize, hi: usize) -> Result<()> {
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(field_error(
            path,
            field,
            format!("{v} is outside {lo}..={hi}"),
        ))
    }
}

/// Checks that `v` is finite and lies in `lo..=hi` (a float field).
fn in_range_f(path: &Path, field: &str, v: f32, lo: f32, hi: f32) -> Result<()> {
    if v.is_finite() && (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(field_error(
            path,
            field,
            format!("{v} is outside {lo}..={hi}"),
        ))
    }
}

/// Bounds on the sizes a model directory may ask for. They keep every allocation derived
/// from a config (feature maps, anomaly maps, flow and ViT parameters) bounded, far above
/// anything the method uses (224 px input, 256 px maps, a 4x256 flow, ViT-B).
pub mod limits {
    pub const INPUT_SIZE: (usize, usize) = (32, 1024);
    pub const MAP_SIZE: (usize, usize) = (8, 4096);
    pub const SIGMA_AT_256: (f32, f32) = (1e-3, 64.0);
    pub const POOL_MAX: usize = 15;
    pub const PROJ_DIM_MAX: usize = 8192;
    pub const FLOW_BLOCKS: (usize, usize) = (1, 64);
    pub const FLOW_HIDDEN: (usize, usize) = (1, 16384);
    pub const FLOW_COND_DIM: (usize, usize) = (4, 1024);
    pub const MAX_TAPS: usize = 16;
}

impl ModelConfig {
    /// The lowest `model.json` format version that can hold this config: 2 when it uses
    /// per-image input normalisation or an inner or projected tap (a version-1 reader would
    /// ignore the first and refuse the others by their names), else 1.
    pub fn required_format_version(&self) -> u32 {
        let f = &self.features;
        let new_taps = f
            .taps
            .iter()
            .any(|t| t.contains(':') || t.ends_with(".expand") || t.ends_with(".dw"));
        if f.input_norm != crate::detector::features::InputNorm::Imagenet || new_taps {
            2
        } else {
            1
        }
    }

    /// Range-checks every number (the message names `path` and the field). Allocation sizes
    /// derived from the config are bounded by [`limits`].
    pub fn check(&self, path: &Path) -> Result<()> {
        use limits::*;
        let f = &self.features;
        if f.taps.is_empty() || f.taps.len() > MAX_TAPS {
            return Err(field_error(
                path,
                "features.taps",
                format!("{} taps (1..={MAX_TAPS} expected)", f.taps.len()),
            ));
        }
        in_range(
            path,
            "features.input_size",
            f.input_size,
            INPUT_SIZE.0,
            INPUT_SIZE.1,
        )?;
        // TF-SAME padding takes any size; a multiple of 4 admits every Lite's native size
        // (224, 240, 260) and keeps odd sizes out.
        require(
            path,
            "features.input_size",
            f.input_size.is_multiple_of(4),
            || format!("{} is not a multiple of 4", f.input_size),
        )?;
        in_range(path, "features.pool", f.pool, 1, POOL_MAX)?;
        require(path, "features.pool", !f.pool.is_multiple_of(2), || {
            format!("{} is even; the averaging window must be odd", f.pool)
        })?;
        let (_, dim) = f.geometry().map_err(|e| field_error(path, "features", e))?;
        in_range(path, "map.size", self.map.size, MAP_SIZE.0, MAP_SIZE.1)?;
        in_range_f(
            path,
            "map.sigma_at_256",
            self.map.sigma_at_256,
            SIGMA_AT_256.0,
            SIGMA_AT_256.1,
        )?;
        if let crate::detector::scoring::ImageScore::TopMean { q } = self.map.image_score {
            in_range_f(path, "map.image_score.top-mean.q", q, 1e-6, 1.0)?;
        }
        if let crate::detector::reweight::PatchScore::Reweighted { b } = self.map.patch_score {
            in_range(
                path,
                "map.patch_score.reweighted.b",
                b,
                2,
                crate::detector::reweight::MAX_B,
            )?;
        }
        if !(self.coreset.ratio.is_finite()
            && self.coreset.ratio > 0.0
            && self.coreset.ratio <= 1.0)
        {
            return Err(field_error(
                path,
                "coreset.ratio",
                format!("{} is outside (0, 1]", self.coreset.ratio),
            ));
        }
        in_range(
            path,
            "coreset.proj_dim",
            self.coreset.proj_dim,
            0,
            PROJ_DIM_MAX,
        )?;
        in_range_f(
            path,
            "threshold_quantile",
            self.threshold_quantile,
            0.5,
            1.0,
        )?;
        in_range_f(
            path,
            "threshold_robust_z",
            self.threshold_robust_z,
            0.0,
            20.0,
        )?;
        if let Some(v) = &self.flow {
            let fc: crate::detector::flow::FlowConfig =
                serde_json::from_value(v.clone()).map_err(|e| field_error(path, "flow", e))?;
            if fc.dim != dim {
                return Err(field_error(
                    path,
                    "flow.dim",
                    format!("{} where the features have {dim} dimensions", fc.dim),
                ));
            }
            in_range(path, "flow.blocks", fc.blocks, FLOW_BLOCKS.0, FLOW_BLOCKS.1)?;
            in_range(path, "flow.hidden", fc.hidden, FLOW_HIDDEN.0, FLOW_HIDDEN.1)?;
            in_range(
                path,
                "flow.cond_dim",
                fc.cond_dim,
                FLOW_COND_DIM.0,
                FLOW_COND_DIM.1,
            )?;
            require(path, "flow.cond_dim", fc.cond_dim.is_multiple_of(4), || {
                format!("{} is not a multiple of 4", fc.cond_dim)
            })?;
            in_range_f(path, "flow.clamp_alpha", fc.clamp_alpha, 1e-3, 100.0)?;
        }
        if let Some(r) = &self.recon {
            in_range_f(path, "recon.mask_ratio", r.mask_ratio, 0.0, 1.0)?;
            r.vit
                .validate()
                .map_err(|e| field_error(path, "recon.vit", e))?;
            if r.vit.vocab != r.vocab {
                return Err(field_error(
                    path,
                    "recon.vocab",
                    format!("{} where recon.vit.vocab is {}", r.vocab, r.vit.vocab),
                ));
            }
        }
        // Last, so that a field's own range error is named first.
        let need = self.required_format_version();
        if self.format_version < need {
            return Err(field_error(
                path,
                "format_version",
                format!(
                    "{} cannot hold this model's features (per-image input normalisation or \
                     inner/projected taps need version {need})",
                    self.format_version
                ),
            ));
        }
        Ok(())
    }
}

impl ClassInfo {
    /// Checks every number of a `class.json` (the message names `path` and the field):
    /// thresholds, pixel thresholds and normal scores finite (and non-negative for every score but
    /// `flow-nll`, a log-likelihood), counts positive, the mask ratio in [0, 1].
    pub fn check(&self, path: &Path) -> Result<()> {
        check_class_name(&self.name).map_err(|e| field_error(path, "name", e))?;
        if self.n_prototypes == 0 {
            return Err(field_error(
                path,
                "n_prototypes",
                "0: the class has no prototypes",
            ));
        }
        if self.thresholds.is_empty() {
            return Err(field_error(
                path,
                "thresholds",
                "none calibrated: register the class again",
            ));
        }
        check_thresholds(path, "thresholds", &self.thresholds)?;
        check_thresholds(path, "pixel_thresholds", &self.pixel_thresholds)?;
        for (kind, v) in &self.normal_scores {
            if let Some(x) = v.iter().find(|x| !x.is_finite()) {
                return Err(field_error(
                    path,
                    &format!("normal_scores.{kind}"),
                    format!("non-finite score {x}"),
                ));
            }
        }
        if let Some(r) = self.mask_ratio {
            in_range_f(path, "mask_ratio", r, 0.0, 1.0)?;
        }
        for t in &self.augmentation {
            if !(t.mean_with.is_finite() && t.mean_without.is_finite()) {
                return Err(field_error(
                    path,
                    "augmentation",
                    format!("non-finite mean score in the '{}' trial", t.augment.name()),
                ));
            }
        }
        if let Some(l) = self.flow_ref_ll
            && !l.is_finite()
        {
            return Err(field_error(
                path,
                "flow_ref_ll",
                format!("{l} is not finite"),
            ));
        }
        Ok(())
    }

    /// The calibrated pixel threshold of `kind` (for defect masks), or an error naming the
    /// class.json and saying to register again: a mask is never made without one.
    pub fn pixel_threshold(&self, kind: ScoreKind, path: &Path) -> Result<f32> {
        self.pixel_thresholds
            .get(kind.name())
            .copied()
            .ok_or_else(|| {
                field_error(
                    path,
                    &format!("pixel_thresholds.{}", kind.name()),
                    format!(
                        "missing: class '{}' has no pixel threshold for the '{}' score (needed for \
                     defect masks; class.json files of older pmad have none); register it \
                     again with this pmad",
                        self.name,
                        kind.name(),
                    ),
                )
            })
    }

    /// The calibrated threshold of `kind`, or an error saying the class lacks it.
    pub fn threshold(&self, kind: ScoreKind, path: &Path) -> Result<f32> {
        self.thresholds.get(kind.name()).copied().ok_or_else(|| {
            field_error(
                path,
                &format!("thresholds.{}", kind.name()),
                format!(
                    "missing: class '{}' has no threshold for the '{}' score (calibrated: \
                     {}); register it again with this model",
                    self.name,
                    kind.name(),
                    self.thresholds
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })
    }
}

/// Checks a map of thresholds per score kind (`field` names it in errors): known score names,
/// finite values, non-negative for every score but `flow-nll` (a log-likelihood).
fn check_thresholds(
    path: &Path,
    field: &str,
    thresholds: &std::collections::BTreeMap<String, f32>,
) -> Result<()> {
    for (kind, &t) in thresholds {
        let field = format!("{field}.{kind}");
        let k: ScoreKind = kind
            .parse()
            .map_err(|e: String| field_error(path, &field, e))?;
        if !t.is_finite() {
            return Err(field_error(path, &field, format!("{t} is not finite")));
        }
        // Every score but the flow's log-likelihood is a distance or an entropy.
        if t < 0.0 && k != ScoreKind::FlowNll {
            return Err(field_error(
                path,
                &field,
                format!("{t} is negative; a '{kind}' score never is"),
            ));
        }
    }
    Ok(())
}

pub fn class_dir(dir: &Path, class: &str) -> PathBuf {
    dir.join(CLASSES_DIR).join(class)
}

/// Class names registered in `dir` (sorted).
pub fn registered_classes(dir: &Path) -> Result<Vec<String>> {
    crate::detector::class_store::list(dir)
}

/// Class names must be plain folder names.
pub fn check_class_name(class: &str) -> Result<()> {
    let ok = !class.is_empty()
        && !class.starts_with('.')
        && class
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid class name '{class}' (letters, digits, _ and - only)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::features::InputNorm;

    /// A model that uses nothing of format 2 is written as format 1 (older pmad reads it);
    /// one that does is written as 2, and both read back.
    #[test]
    fn models_are_stamped_with_the_lowest_version_that_holds_them() {
        let dir = std::env::temp_dir().join(format!("pmad-format-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(CONFIG_FILE);
        let plain = ModelConfig::default();
        assert_eq!(plain.required_format_version(), 1);
        let mut per_image = ModelConfig::default();
        per_image.features.input_norm = InputNorm::PerImage;
        let mut inner = ModelConfig::default();
        inner.features.taps = vec!["blocks.4".into(), "blocks.10.dw:64".into()];
        for (config, want) in [(plain, 1), (per_image, 2), (inner, 2)] {
            write_config(&path, &config).unwrap();
            let raw: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            assert_eq!(raw["format_version"].as_u64(), Some(want));
            let back = read_config(&dir).unwrap();
            assert_eq!(back.features.input_norm, config.features.input_norm);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
