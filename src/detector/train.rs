//! Training a detector, in stages (each skippable):
//! 1. register the seen classes (prototypes + calibration) — always;
//! 2. **flow**: fit the ProtoFlow on out-of-bank residuals of their normal patches — patches
//!    of a calibration fold against the bank of the other folds, so the residuals look like
//!    those of test images;
//! 3. **tokenizer**: a k-means codebook over backbone features on the ViT grid (or token ids
//!    from a file made elsewhere, e.g. by a dVAE);
//! 4. **vit**: the masked-token ViT, trained with combinational masking on the seen classes'
//!    normal images (checkpointed; `resume` continues a killed run to the same weights).
//!
//! With `resume`, an existing model directory is reopened and every finished stage is kept:
//! registered classes, the flow, the codebook and the ViT checkpoint.

use crate::data::dataset::ClassData;
use crate::detector::Detector;
use crate::detector::flow::{FlowConfig, FlowTrainConfig, ProtoFlow, positional_encoding};
use crate::detector::model_dir::{self as md, ModelConfig, ReconConfig};
use crate::detector::pipeline::{BATCH, ProgressFn, load_inputs};
use crate::detector::register::RegisterOptions;
use crate::error::{Error, Result};
use crate::recon::masking::{CombinationalMasker, MaskingConfig, foreground, frequency_weights};
use crate::recon::tokenizer::{Codebook, default_vocab, load_token_ids, pool_to_vit_grid};
use crate::recon::trainer::{self, TrainConfig, TrainSample};
use crate::recon::vit::{Vit, VitConfig};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Which stages [`train`] runs (registration of the seen classes always runs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stages {
    pub flow: bool,
    pub tokenizer: bool,
    pub vit: bool,
}

impl Default for Stages {
    fn default() -> Self {
        Stages {
            flow: true,
            tokenizer: true,
            vit: true,
        }
    }
}

/// Options of the reconstruction stage.
#[derive(Clone, Debug)]
pub struct ReconOptions {
    /// ViT preset: tiny | small | base.
    pub preset: String,
    /// Vocabulary size (None: sized to the data).
    pub vocab: Option<usize>,
    /// Token ids made elsewhere (a safetensors file, one tensor per image named by its path
    /// relative to the data root) instead of our codebook.
    pub tokens_file: Option<PathBuf>,
    /// Mask ratio while training (combinational masking).
    pub train_mask_ratio: f32,
    /// Default inference mask ratio stored in the model (per class overridable at register).
    pub mask_ratio: f32,
    pub kmeans_iters: usize,
    /// Feed the ViT the backbone's features pooled to its grid instead of pixels (see
    /// `VitConfig::input_dim`).
    pub feature_input: bool,
    pub train: TrainConfig,
}

impl Default for ReconOptions {
    fn default() -> Self {
        ReconOptions {
            preset: "small".into(),
            vocab: None,
            tokens_file: None,
            train_mask_ratio: 0.4,
            mask_ratio: 0.3,
            kmeans_iters: 10,
            feature_input: false,
            train: TrainConfig::default(),
        }
    }
}

/// Options of [`train`].
#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub config: ModelConfig,
    pub stages: Stages,
    /// Flow training epochs (0 skips the flow, like `stages.flow = false`).
    pub flow_epochs: usize,
    pub flow_blocks: usize,
    pub flow_hidden: usize,
    pub flow_lr: f32,
    pub recon: ReconOptions,
    /// Reopen an existing model directory and continue (see the module docs).
    pub resume: bool,
    pub seed: u64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            config: ModelConfig::default(),
            stages: Stages::default(),
            flow_epochs: 6,
            flow_blocks: 4,
            flow_hidden: 256,
            flow_lr: 1e-3,
            recon: ReconOptions::default(),
            resume: false,
            seed: 0,
        }
    }
}

/// What happened, for the CLI to print.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct TrainReport {
    /// (class, prototypes, normal images, seconds)
    pub classes: Vec<(String, usize, usize, f64)>,
    /// Normal images of the seen classes that looked unlike the rest (class, image).
    pub outliers: Vec<(String, md::Outlier)>,
    pub flow_residuals: usize,
    /// Mean negative log-likelihood per dimension, per epoch.
    pub flow_nll: Vec<f32>,
    pub flow_seconds: f64,
    pub vocab: usize,
    pub tokenizer_seconds: f64,
    /// Mean masked-token cross-entropy per epoch.
    pub vit_loss: Vec<f32>,
    pub vit_images_per_s: f64,
    pub vit_seconds: f64,
}

/// Trains a model in `out` on the seen `classes` of the dataset at `data`.
pub fn train(
    data: &Path,
    classes: &[ClassData],
    out: &Path,
    opts: &TrainOptions,
    backbone: Option<&Path>,
    progress: Option<ProgressFn>,
) -> Result<TrainReport> {
    let mut config = opts.config.clone();
    config.trained_on = classes.iter().map(|c| c.name.clone()).collect();
    let reopen = opts.resume && out.join(md::CONFIG_FILE).is_file();
    if !reopen {
        Detector::create(out, &config)?;
    }
    let mut det = Detector::open(out, backbone)?;
    det.progress = progress;
    let mut report = TrainReport::default();

    // Stage 1: register the seen classes (kept when resuming).
    let registered = md::registered_classes(out)?;
    let mut class_residuals: Vec<(String, Vec<f32>)> = Vec::new();
    for d in classes {
        if registered.contains(&d.name) {
            continue;
        }
        let t = Instant::now();
        let r = det.register_with(&d.name, &d.train, &RegisterOptions::default())?;
        report.classes.push((
            r.info.name.clone(),
            r.info.n_prototypes,
            r.info.n_train_images,
            t.elapsed().as_secs_f64(),
        ));
        report.outliers.extend(
            r.info
                .outliers
                .iter()
                .map(|o| (r.info.name.clone(), o.clone())),
        );
        class_residuals.push((d.name.clone(), r.residuals));
        crate::fault::point("train.class-registered");
    }

    // Stage 2: the flow.
    let mut recalibrate = false;
    if opts.stages.flow && opts.flow_epochs > 0 && det.config.flow.is_none() {
        train_flow(&mut det, classes, class_residuals, opts, &mut report)?;
        recalibrate = true;
        crate::fault::point("train.flow-installed");
    }

    // Stages 3-4: tokens and the ViT.
    if opts.stages.vit && det.config.recon.is_none() {
        train_recon(&mut det, data, classes, opts, &mut report)?;
        recalibrate = true;
    } else if opts.stages.tokenizer && !opts.stages.vit {
        // Tokenizer alone (e.g. to inspect the codebook): fitted and saved, no ViT.
        let (inputs, _) = load_class_images(&det, classes)?;
        let pooled = pooled_features(&det, &inputs)?;
        tokens_for(&det, data, classes, &pooled, opts, &mut report)?;
    }

    // Thresholds for the new scores, from the same normal images. A run killed after a
    // stage was installed but before this point left classes without thresholds for it:
    // `--resume` recalibrates every class that lacks one.
    for d in classes {
        if recalibrate || !det.is_calibrated(&d.name)? {
            det.recalibrate(&d.name, &d.train)?;
        }
    }
    crate::fault::point("train.done");
    Ok(report)
}

/// Fits the flow on out-of-bank residuals of the seen classes' normal patches (see
/// [`crate::detector::calibrate`]).
fn train_flow(
    det: &mut Detector,
    classes: &[ClassData],
    mut class_residuals: Vec<(String, Vec<f32>)>,
    opts: &TrainOptions,
    report: &mut TrainReport,
) -> Result<()> {
    let t = Instant::now();
    let mut flow_cfg = FlowConfig::new(det.features().dim());
    flow_cfg.blocks = opts.flow_blocks;
    flow_cfg.hidden = opts.flow_hidden;
    flow_cfg.seed = opts.seed;
    // Classes registered by an earlier (resumed) run: their residuals again.
    for d in classes {
        if !class_residuals.iter().any(|(n, _)| n == &d.name) {
            class_residuals.push((
                d.name.clone(),
                det.out_of_bank_residuals(&d.name, &d.train)?,
            ));
        }
    }
    // Each patch's condition is its position (the same encoding for every image).
    let grid = det.features().grid();
    let pe = positional_encoding(grid, flow_cfg.cond_dim);
    let (mut residuals, mut cond) = (Vec::new(), Vec::new());
    for (_, r) in &class_residuals {
        let n_images = r.len() / (grid * grid * det.features().dim());
        residuals.extend_from_slice(r);
        cond.extend(pe.repeat(n_images));
    }
    let mut flow = ProtoFlow::new(flow_cfg)?;
    let train_cfg = FlowTrainConfig {
        epochs: opts.flow_epochs,
        lr: opts.flow_lr,
        seed: opts.seed,
        ..Default::default()
    };
    let progress = det.progress.take();
    let history = flow.fit(&residuals, &cond, &train_cfg, &|step, total, _| {
        if let Some(p) = &progress {
            p("flow", step, total);
        }
    });
    det.progress = progress;
    report.flow_nll = history?;
    report.flow_residuals = residuals.len() / det.features().dim();
    det.set_flow(flow)?;
    report.flow_seconds = t.elapsed().as_secs_f64();
    Ok(())
}

/// Every train/good image of the seen classes as network inputs (`[3, S, S]` each), with
/// their paths.
fn load_class_images(
    det: &Detector,
    classes: &[ClassData],
) -> Result<(Vec<Vec<f32>>, Vec<PathBuf>)> {
    let size = det.config.features.input_size;
    let paths: Vec<PathBuf> = classes.iter().flat_map(|c| c.train.clone()).collect();
    let per = 3 * size * size;
    let mut inputs = Vec::with_capacity(paths.len());
    for chunk in paths.chunks(BATCH) {
        let x = load_inputs(chunk, size)?;
        inputs.extend(x.f32s().chunks(per).map(|c| c.to_vec()));
    }
    Ok((inputs, paths))
}

/// Backbone features of network inputs pooled onto the ViT grid: `[n, vit patches, dim]`.
fn pooled_features(det: &Detector, inputs: &[Vec<f32>]) -> Result<Vec<f32>> {
    let size = det.config.features.input_size;
    let (grid, dim) = (det.features().grid(), det.features().dim());
    let mut rows = Vec::new();
    for (bi, chunk) in inputs.chunks(BATCH).enumerate() {
        let x = crate::tensor::Tensor::new(chunk.concat(), &[chunk.len(), 3, size, size])?;
        let f = det.features().extract(&x)?;
        rows.extend(pool_to_vit_grid(&f.f32s(), grid, dim)?);
        det.report("features", bi * BATCH + chunk.len(), inputs.len());
    }
    Ok(rows)
}

/// Token ids `[n][patches]` for the training images: from the external file when given,
/// else from a codebook fitted on (or, when resuming, loaded from) the model directory.
fn tokens_for(
    det: &Detector,
    data: &Path,
    classes: &[ClassData],
    pooled: &[f32],
    opts: &TrainOptions,
    report: &mut TrainReport,
) -> Result<(Vec<Vec<u32>>, usize, String)> {
    let paths: Vec<PathBuf> = classes.iter().flat_map(|c| c.train.clone()).collect();
    if let Some(file) = &opts.recon.tokens_file {
        let ids = load_token_ids(file, opts.recon.vocab)?;
        let mut out = Vec::with_capacity(paths.len());
        for p in &paths {
            let key = relative_key(data, p);
            let t = ids
                .get(&key)
                .ok_or_else(|| Error::format(file, format!("no token ids for image '{key}'")))?;
            out.push(t.clone());
        }
        let vocab = match opts.recon.vocab {
            Some(v) => v,
            None => out
                .iter()
                .flatten()
                .map(|&t| t as usize + 1)
                .max()
                .unwrap_or(1),
        };
        return Ok((out, vocab, file.display().to_string()));
    }
    let t = Instant::now();
    let dim = det.features().dim();
    let rows = pooled;
    let file = det.dir().join(md::TOKENIZER_FILE);
    let codebook = if opts.resume && file.is_file() {
        Codebook::load(&file)?
    } else {
        let vocab = opts
            .recon
            .vocab
            .unwrap_or_else(|| default_vocab(rows.len() / dim));
        det.report("codebook", 0, 1);
        let cb = Codebook::fit(rows, dim, vocab, opts.recon.kmeans_iters, opts.seed)?;
        det.report("codebook", 1, 1);
        cb.save(&file)?;
        cb
    };
    let ids = codebook.assign(rows)?;
    let per = ids.len() / paths.len().max(1);
    report.vocab = codebook.k();
    report.tokenizer_seconds = t.elapsed().as_secs_f64();
    Ok((
        ids.chunks(per).map(|c| c.to_vec()).collect(),
        codebook.k(),
        "codebook".into(),
    ))
}

/// `path` relative to the data root, with `/` separators (the key of external token ids).
fn relative_key(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// Stages 3-4: tokens, then the masked-token ViT with combinational masking.
fn train_recon(
    det: &mut Detector,
    data: &Path,
    classes: &[ClassData],
    opts: &TrainOptions,
    report: &mut TrainReport,
) -> Result<()> {
    let (inputs, _) = load_class_images(det, classes)?;
    let pooled = pooled_features(det, &inputs)?;
    let (tokens, vocab, source) = tokens_for(det, data, classes, &pooled, opts, report)?;
    let t = Instant::now();
    let mut vit_cfg = VitConfig::preset(&opts.recon.preset, vocab)?;
    if opts.recon.feature_input {
        vit_cfg.input_dim = det.features().dim();
    }
    let mut vit = Vit::new(vit_cfg.clone(), opts.seed)?;
    // Per-image cues of the combinational masking, computed once.
    let freq: Vec<Vec<f32>> = inputs.iter().map(|x| frequency_weights(x)).collect();
    let fg: Vec<Vec<bool>> = inputs.iter().map(|x| foreground(x)).collect();
    let mut masker =
        CombinationalMasker::new(freq, fg, MaskingConfig::new(opts.recon.train_mask_ratio))?;
    // What the ViT sees of each image: its pixels, or its pooled backbone features.
    let per_image = pooled.len() / inputs.len().max(1);
    let views: Vec<Vec<f32>> = if opts.recon.feature_input {
        drop(inputs);
        pooled.chunks(per_image).map(|c| c.to_vec()).collect()
    } else {
        inputs
    };
    drop(pooled);
    let samples: Vec<TrainSample> = views
        .into_iter()
        .zip(tokens)
        .map(|(image, tokens)| TrainSample { image, tokens })
        .collect();
    let mut train_cfg = opts.recon.train.clone();
    train_cfg.seed = opts.seed;
    let ckpt = det.dir().join(md::CHECKPOINT_FILE);
    let resume = opts.resume && ckpt.is_file();
    let progress = det.progress.take();
    let result = trainer::train(
        &mut vit,
        &samples,
        &mut masker,
        &train_cfg,
        Some(&ckpt),
        resume,
        &mut |s| {
            if let Some(p) = &progress {
                p("vit", s.step, s.total_steps);
            }
        },
    );
    det.progress = progress;
    let r = result?;
    // Mean loss of each epoch this call ran (a resumed run reports its remaining epochs).
    let per_epoch = (r.total_steps / train_cfg.epochs.max(1)).max(1);
    let first = r.start_step / per_epoch;
    report.vit_loss = (first..r.end_step.div_ceil(per_epoch))
        .map(|e| {
            let (a, b) = (
                (e * per_epoch).max(r.start_step) - r.start_step,
                ((e + 1) * per_epoch).min(r.end_step) - r.start_step,
            );
            r.losses[a..b].iter().sum::<f32>() / (b - a).max(1) as f32
        })
        .collect();
    report.vit_images_per_s = r.images_per_sec as f64;
    report.vit_seconds = t.elapsed().as_secs_f64();
    det.set_vit(
        vit,
        ReconConfig {
            preset: opts.recon.preset.clone(),
            vit: vit_cfg,
            vocab,
            mask_ratio: opts.recon.mask_ratio,
            tokens: source,
            trained_on: classes.iter().map(|c| c.name.clone()).collect(),
        },
    )?;
    // The finished weights are saved: the checkpoint (weights + optimiser state) is spent.
    let _ = std::fs::remove_file(&ckpt);
    Ok(())
}
