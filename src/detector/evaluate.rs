//! Evaluation of a registered class on its labelled test set: image AUROC, pixel AUROC,
//! AUPRO (FPR <= 0.3) and F1-max. Test labels are only *compared against* here — nothing
//! computed from them flows back into the detector. A test set without masks (a plain
//! folder of good and bad images) gets image metrics only: its pixel metrics are `None`.

use crate::data::dataset::{ClassData, load_mask};
use crate::detector::model_dir::ScoreKind;
use crate::detector::pipeline::{BATCH, Detector, image_input};
use crate::detector::register::name_image;
use crate::error::{Error, Result};
use crate::metrics::{DEFAULT_MAX_FPR, aupro, auroc, f1_max};
use crate::tensor::Tensor;
use rayon::prelude::*;
use serde::Serialize;
use std::time::Instant;

/// Metrics of one class (field names are the `pmad eval --json` schema).
#[derive(Clone, Debug, Serialize)]
pub struct ClassReport {
    pub image_auroc: f64,
    /// Pixel metrics: `None` (JSON `null`) when the defective images have no masks.
    pub pixel_auroc: Option<f64>,
    pub aupro: Option<f64>,
    /// Image-level F1-max (best threshold over the test set: a reported figure, never used
    /// to set a deployment threshold).
    pub f1_max: f64,
    pub pixel_f1_max: Option<f64>,
    /// The class's calibrated verdict threshold for this score (from its normal training
    /// images), and at it: the fraction of test/good images called anomalous (false alarms)
    /// and of defective images called anomalous (detections).
    pub threshold: f32,
    pub false_alarm_rate: f64,
    pub detection_rate: f64,
    pub n_images: usize,
    pub seconds: f64,
}

/// Scores every test image of `data` against the registered class of the same name.
pub fn evaluate_class(
    det: &mut Detector,
    data: &ClassData,
    kind: ScoreKind,
) -> Result<ClassReport> {
    let start = Instant::now();
    let info_path = crate::detector::class_store::info_path(det.dir(), &data.name);
    let threshold = det.class(&data.name)?.info.threshold(kind, &info_path)?;
    let size = det.config.features.input_size;
    let map_size = det.config.map.size;
    // Masks first: a missing or broken mask fails before the expensive part.
    let pixel_metrics = data.has_masks();
    let masks: Vec<Vec<bool>> = if pixel_metrics {
        data.test
            .iter()
            .map(|t| match &t.mask {
                Some(m) => load_mask(m, map_size, map_size),
                None => Ok(vec![false; map_size * map_size]),
            })
            .collect::<Result<_>>()?
    } else {
        Vec::new()
    };
    let mut maps = Vec::with_capacity(data.test.len());
    for (bi, chunk) in data.test.chunks(BATCH).enumerate() {
        let inputs: Vec<Vec<f32>> = chunk
            .par_iter()
            .map(|t| crate::data::load_rgb(&t.path).map(|img| image_input(&img, size)))
            .collect::<Result<_>>()?;
        let x = Tensor::new(inputs.concat(), &[chunk.len(), 3, size, size])?;
        let paths: Vec<std::path::PathBuf> = chunk.iter().map(|t| t.path.clone()).collect();
        maps.extend(
            det.score_inputs(&data.name, &x, kind)
                .map_err(|e| name_image(e, &paths))?,
        );
        if let Some(p) = &det.progress {
            p(
                "eval",
                (bi * BATCH + chunk.len()).min(data.test.len()),
                data.test.len(),
            );
        }
    }
    let image_scores: Vec<f32> = maps.iter().map(|m| m.score).collect();
    let image_labels: Vec<bool> = data.test.iter().map(|t| t.is_defective()).collect();
    let pixel_scores: Vec<f32> = match pixel_metrics {
        true => maps.iter().flat_map(|m| m.values.iter().copied()).collect(),
        false => Vec::new(),
    };
    let pixel_labels: Vec<bool> = masks.iter().flatten().copied().collect();
    let map_refs: Vec<&[f32]> = maps.iter().map(|m| &m.values[..]).collect();
    let mask_refs: Vec<&[bool]> = masks.iter().map(|m| &m[..]).collect();
    // A metric that cannot be computed says which class and folder lack what.
    let ctx = |what: &str, e: Error| {
        Error::format(
            &data.dir,
            format!(
                "class '{}': cannot compute the {what} ({e}); the test set needs normal \
                 images (MVTec AD: test/good) and defective ones (test/DEFECT, masks in \
                 ground_truth/)",
                data.name
            ),
        )
    };
    let pixel = |what: &str, f: &dyn Fn() -> Result<f64>| -> Result<Option<f64>> {
        if pixel_metrics {
            f().map(Some).map_err(|e| ctx(what, e))
        } else {
            Ok(None)
        }
    };
    // Verdicts at the calibrated threshold (the same rule as `inspect`: score > threshold).
    let rate = |defective: bool| {
        let (n, hit) = image_scores
            .iter()
            .zip(&image_labels)
            .filter(|(_, l)| **l == defective)
            .fold((0usize, 0usize), |(n, h), (s, _)| {
                (n + 1, h + usize::from(*s > threshold))
            });
        hit as f64 / n.max(1) as f64
    };
    let (false_alarm_rate, detection_rate) = (rate(false), rate(true));
    Ok(ClassReport {
        threshold,
        false_alarm_rate,
        detection_rate,
        image_auroc: auroc(&image_scores, &image_labels).map_err(|e| ctx("image AUROC", e))?,
        pixel_auroc: pixel("pixel AUROC", &|| auroc(&pixel_scores, &pixel_labels))?,
        aupro: pixel("AUPRO", &|| {
            aupro(&map_refs, &mask_refs, map_size, map_size, DEFAULT_MAX_FPR)
        })?,
        f1_max: f1_max(&image_scores, &image_labels).map_err(|e| ctx("F1-max", e))?,
        pixel_f1_max: pixel("pixel F1-max", &|| f1_max(&pixel_scores, &pixel_labels))?,
        n_images: data.test.len(),
        seconds: start.elapsed().as_secs_f64(),
    })
}
