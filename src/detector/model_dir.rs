//! The model directory: everything a trained detector needs, written atomically.
//!
//! ```text
//! MODEL_DIR/
//!   model.json                      ModelConfig (format version, features, maps, flow config)
//!   flow.safetensors                ProtoFlow weights (when trained)
//!   tokenizer.safetensors           visual-token codebook (when the ViT was trained)
//!   vit.safetensors                 masked-token ViT weights (when trained)
//!   vit.checkpoint.safetensors      training checkpoint (params, optimiser, step), for --resume
//!   classes/<name>/prototypes.safetensors   the class's prototype bank [P, D]
//!   classes/<name>/class.json       ClassInfo (calibrated threshold, normal-score statistics)
//! ```
//! Every file is written to a temporary name in the same folder and renamed into place, so a
//! crash never leaves a half-written model; a class is registered by writing its folder under
//! a temporary name and renaming it.

use crate::detector::features::FeatureSpec;
use crate::detector::scoring::MapSpec;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Bumped whenever the directory layout or a file's meaning changes.
pub const FORMAT_VERSION: u32 = 1;
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
    /// Quantile of held-out normal image scores used as the per-class threshold.
    pub threshold_quantile: f32,
    /// Classes whose normal images trained the flow.
    pub trained_on: Vec<String>,
    /// Flow hyper-parameters (present when a flow was trained).
    pub flow: Option<serde_json::Value>,
    /// Reconstruction stage (present when the ViT was trained).
    #[serde(default)]
    pub recon: Option<ReconConfig>,
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
            trained_on: Vec::new(),
            flow: None,
            recon: None,
        }
    }
}

/// `classes/<name>/class.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClassInfo {
    pub name: String,
    pub n_train_images: usize,
    pub n_prototypes: usize,
    /// Image score above which `inspect` says "anomalous", per score kind (from held-out
    /// normal images only).
    pub thresholds: std::collections::BTreeMap<String, f32>,
    /// Held-out normal image scores per score kind (for reports and re-calibration).
    pub normal_scores: std::collections::BTreeMap<String, Vec<f32>>,
    /// Reference log-likelihood per dimension for the flow score (max over held-out normal
    /// patches), so eq. 1 never needs test-set statistics.
    pub flow_ref_ll: Option<f32>,
    /// Inference mask ratio of this class (None: the model's default).
    #[serde(default)]
    pub mask_ratio: Option<f32>,
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
    // Check the version before the full parse so an old/new layout gets a clear message.
    let raw: serde_json::Value = read_json(&path)?;
    let v = raw.get("format_version").and_then(|v| v.as_u64());
    if v != Some(FORMAT_VERSION as u64) {
        return Err(Error::format(
            &path,
            format!(
                "model format version {} is not supported by this pmad (expects {FORMAT_VERSION}); retrain or use a matching pmad",
                v.map_or("missing".to_string(), |v| v.to_string())
            ),
        ));
    }
    serde_json::from_value(raw)
        .map_err(|e| Error::format(&path, format!("invalid model config: {e}")))
}

pub fn class_dir(dir: &Path, class: &str) -> PathBuf {
    dir.join(CLASSES_DIR).join(class)
}

/// Class names registered in `dir` (sorted).
pub fn registered_classes(dir: &Path) -> Result<Vec<String>> {
    let cdir = dir.join(CLASSES_DIR);
    if !cdir.is_dir() {
        return Ok(Vec::new());
    }
    let mut v = Vec::new();
    for e in std::fs::read_dir(&cdir).map_err(|e| Error::io(&cdir, e))? {
        let e = e.map_err(|e| Error::io(&cdir, e))?;
        let name = e.file_name().to_string_lossy().to_string();
        if !name.starts_with('.') && e.path().join(CLASS_FILE).is_file() {
            v.push(name);
        }
    }
    v.sort();
    Ok(v)
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
