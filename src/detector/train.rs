//! Training a detector: create the model directory, register the seen classes (prototypes +
//! calibration), and fit the ProtoFlow on residuals of their held-out normal patches — patches
//! whose images did not build the bank, so the residuals look like those of test images.

use crate::data::dataset::ClassData;
use crate::detector::Detector;
use crate::detector::flow::{FlowConfig, FlowTrainConfig, ProtoFlow};
use crate::detector::model_dir::ModelConfig;
use crate::detector::pipeline::ProgressFn;
use crate::error::Result;
use std::path::Path;
use std::time::Instant;

/// Options of [`train`].
#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub config: ModelConfig,
    /// Flow training epochs (0: no flow; the model then scores by distance only).
    pub flow_epochs: usize,
    pub flow_blocks: usize,
    pub flow_hidden: usize,
    pub flow_lr: f32,
    pub seed: u64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            config: ModelConfig::default(),
            flow_epochs: 6,
            flow_blocks: 4,
            flow_hidden: 256,
            flow_lr: 1e-3,
            seed: 0,
        }
    }
}

/// What happened, for the CLI to print.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TrainReport {
    /// (class, prototypes, normal images, seconds)
    pub classes: Vec<(String, usize, usize, f64)>,
    pub flow_residuals: usize,
    /// Mean negative log-likelihood per dimension, per epoch.
    pub flow_nll: Vec<f32>,
    pub flow_seconds: f64,
}

/// Trains a new model in `out` on the seen `classes` of the dataset at `data`.
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
    let _ = data;
    Detector::create(out, &config)?;
    let mut det = Detector::open(out, backbone)?;
    det.progress = progress;
    let mut flow_cfg = FlowConfig::new(det.features().dim());
    flow_cfg.blocks = opts.flow_blocks;
    flow_cfg.hidden = opts.flow_hidden;
    flow_cfg.seed = opts.seed;
    let mut report = TrainReport {
        classes: Vec::new(),
        flow_residuals: 0,
        flow_nll: Vec::new(),
        flow_seconds: 0.0,
    };
    let (mut residuals, mut cond, mut holdouts) = (Vec::new(), Vec::new(), Vec::new());
    for d in classes {
        let t = Instant::now();
        let (info, hold) = det.register_with_holdout(&d.name, &d.train)?;
        report.classes.push((
            info.name.clone(),
            info.n_prototypes,
            info.n_train_images,
            t.elapsed().as_secs_f64(),
        ));
        let (r, c) = det.residuals(&d.name, &hold, flow_cfg.cond_dim)?;
        residuals.extend(r);
        cond.extend(c);
        holdouts.push((d.name.clone(), hold));
    }
    if opts.flow_epochs > 0 {
        let t = Instant::now();
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
        })?;
        det.progress = progress;
        report.flow_residuals = residuals.len() / det.features().dim();
        report.flow_nll = history;
        det.set_flow(flow)?;
        // Thresholds for the flow score, from the same held-out normal images.
        for (name, hold) in &holdouts {
            det.recalibrate(name, hold)?;
        }
        report.flow_seconds = t.elapsed().as_secs_f64();
    }
    Ok(report)
}
