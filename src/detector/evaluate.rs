//! Evaluation of a registered class on its labelled test set: image AUROC, pixel AUROC,
//! AUPRO (FPR <= 0.3) and F1-max. Test labels are only *compared against* here — nothing
//! computed from them flows back into the detector. A test set without masks (a plain
//! folder of good and bad images) gets image metrics only: its pixel metrics are `None`.
//!
//! [`evaluate_class_detailed`] also returns what `pmad eval --report` draws, from the same
//! pass: the ROC and PRO curves, every test image's score, and the maps of the worst cases
//! (the highest-scored normal images and the lowest-scored defects) — a few maps, not all.

use crate::data::dataset::{ClassData, load_mask};
use crate::detector::model_dir::ScoreKind;
use crate::detector::pipeline::{BATCH, Detector, image_input};
use crate::detector::register::name_image;
use crate::detector::scoring::AnomalyMap;
use crate::error::{Error, Result};
use crate::metrics::{DEFAULT_MAX_FPR, aupro_with_curve, auroc, f1_max, roc_curve};
use crate::tensor::Tensor;
use rayon::prelude::*;
use serde::Serialize;
use std::path::PathBuf;
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

/// One test image as the report lists it.
#[derive(Clone, Debug)]
pub struct ImageRecord {
    pub path: PathBuf,
    pub mask: Option<PathBuf>,
    pub defective: bool,
    pub score: f32,
}

/// A worst case: the index of its image in [`ClassDetails::images`] and its anomaly map.
#[derive(Clone, Debug)]
pub struct WorstCase {
    pub image: usize,
    pub map: AnomalyMap,
}

/// What the report draws besides the metrics (all from the evaluation's one pass).
#[derive(Clone, Debug)]
pub struct ClassDetails {
    /// Image-level ROC curve, `(fpr, tpr)` from `(0, 0)` to `(1, 1)`.
    pub roc: Vec<(f64, f64)>,
    /// Pixel-level PRO curve `(fpr, pro)` up to [`DEFAULT_MAX_FPR`] (the range AUPRO
    /// integrates), thinned for plotting; `None` without masks.
    pub pro: Option<Vec<(f64, f64)>>,
    /// Every test image, in the data set's order.
    pub images: Vec<ImageRecord>,
    /// The highest-scored normal images, highest first.
    pub worst_good: Vec<WorstCase>,
    /// The lowest-scored defective images, lowest first.
    pub worst_defects: Vec<WorstCase>,
}

/// A class's metrics and the report's data.
#[derive(Clone, Debug)]
pub struct ClassEvaluation {
    pub report: ClassReport,
    pub details: ClassDetails,
}

/// At most this many points on a plotted PRO curve.
const PRO_CURVE_POINTS: usize = 1000;

/// Keeps the maps of the `k` worst normal images (highest scores) and the `k` worst defects
/// (lowest scores) seen so far, so no more than `2 k` maps are held for the report.
struct WorstKeeper {
    k: usize,
    good: Vec<WorstCase>,
    defects: Vec<WorstCase>,
}

impl WorstKeeper {
    fn new(k: usize) -> Self {
        WorstKeeper {
            k,
            good: Vec::new(),
            defects: Vec::new(),
        }
    }

    /// Offers image `image`'s map; kept if it is among the worst so far of its kind.
    fn offer(&mut self, image: usize, defective: bool, map: &AnomalyMap) {
        let (list, worse): (_, fn(f32, f32) -> bool) = if defective {
            (&mut self.defects, |a, b| a < b)
        } else {
            (&mut self.good, |a, b| a > b)
        };
        // The position that keeps the list worst first (ties: the earlier image first).
        let at = list
            .iter()
            .position(|w| worse(map.score, w.map.score))
            .unwrap_or(list.len());
        if at < self.k {
            list.insert(
                at,
                WorstCase {
                    image,
                    map: map.clone(),
                },
            );
            list.truncate(self.k);
        }
    }
}

/// Scores every test image of `data` against the registered class of the same name.
pub fn evaluate_class(det: &Detector, data: &ClassData, kind: ScoreKind) -> Result<ClassReport> {
    evaluate_class_detailed(det, data, kind, 0).map(|e| e.report)
}

/// [`evaluate_class`], plus the curves, the per-image scores and the maps of the `worst`
/// highest-scored normal images and `worst` lowest-scored defects.
pub fn evaluate_class_detailed(
    det: &Detector,
    data: &ClassData,
    kind: ScoreKind,
    worst: usize,
) -> Result<ClassEvaluation> {
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
    // Maps are kept for the pixel metrics only; the report's few in `keeper`.
    let mut maps = Vec::new();
    let mut image_scores = Vec::with_capacity(data.test.len());
    let mut keeper = WorstKeeper::new(worst);
    for (bi, chunk) in data.test.chunks(BATCH).enumerate() {
        let inputs: Vec<Vec<f32>> = chunk
            .par_iter()
            .map(|t| crate::data::load_rgb(&t.path).map(|img| image_input(&img, size)))
            .collect::<Result<_>>()?;
        let x = Tensor::new(inputs.concat(), &[chunk.len(), 3, size, size])?;
        let paths: Vec<std::path::PathBuf> = chunk.iter().map(|t| t.path.clone()).collect();
        let scored = det
            .score_inputs(&data.name, &x, kind)
            .map_err(|e| name_image(e, &paths))?;
        for (j, (m, t)) in scored.iter().zip(chunk).enumerate() {
            keeper.offer(bi * BATCH + j, t.is_defective(), m);
            image_scores.push(m.score);
        }
        if pixel_metrics {
            maps.extend(scored);
        }
        if let Some(p) = &det.progress {
            p(
                "eval",
                (bi * BATCH + chunk.len()).min(data.test.len()),
                data.test.len(),
            );
        }
    }
    let image_labels: Vec<bool> = data.test.iter().map(|t| t.is_defective()).collect();
    let pixel_scores: Vec<f32> = maps.iter().flat_map(|m| m.values.iter().copied()).collect();
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
    // AUPRO and the PRO curve from one sweep of the sorted pixels.
    let (aupro, pro) = match pixel_metrics {
        true => {
            let (a, curve) = aupro_with_curve(
                &map_refs,
                &mask_refs,
                map_size,
                map_size,
                DEFAULT_MAX_FPR,
                PRO_CURVE_POINTS,
            )
            .map_err(|e| ctx("AUPRO", e))?;
            (Some(a), Some(curve))
        }
        false => (None, None),
    };
    let report = ClassReport {
        threshold,
        false_alarm_rate,
        detection_rate,
        image_auroc: auroc(&image_scores, &image_labels).map_err(|e| ctx("image AUROC", e))?,
        pixel_auroc: pixel("pixel AUROC", &|| auroc(&pixel_scores, &pixel_labels))?,
        aupro,
        f1_max: f1_max(&image_scores, &image_labels).map_err(|e| ctx("F1-max", e))?,
        pixel_f1_max: pixel("pixel F1-max", &|| f1_max(&pixel_scores, &pixel_labels))?,
        n_images: data.test.len(),
        seconds: start.elapsed().as_secs_f64(),
    };
    let details = ClassDetails {
        roc: roc_curve(&image_scores, &image_labels).map_err(|e| ctx("ROC curve", e))?,
        pro,
        images: data
            .test
            .iter()
            .zip(&image_scores)
            .map(|(t, &score)| ImageRecord {
                path: t.path.clone(),
                mask: t.mask.clone(),
                defective: t.is_defective(),
                score,
            })
            .collect(),
        worst_good: keeper.good,
        worst_defects: keeper.defects,
    };
    Ok(ClassEvaluation { report, details })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(score: f32) -> AnomalyMap {
        AnomalyMap {
            size: 1,
            values: vec![score],
            score,
        }
    }

    #[test]
    fn worst_keeper_keeps_the_k_worst_of_each_kind() {
        let mut k = WorstKeeper::new(2);
        for (i, (defective, s)) in [
            (false, 0.1),
            (true, 0.9),
            (false, 0.5),
            (true, 0.2),
            (false, 0.3),
            (true, 0.4),
            (false, 0.5),
        ]
        .into_iter()
        .enumerate()
        {
            k.offer(i, defective, &map(s));
        }
        let ids = |l: &[WorstCase]| l.iter().map(|w| w.image).collect::<Vec<_>>();
        // Normal: highest first, the tie at 0.5 keeps the earlier image first.
        assert_eq!(ids(&k.good), vec![2, 6]);
        // Defects: lowest first.
        assert_eq!(ids(&k.defects), vec![3, 5]);
        assert!(WorstKeeper::new(0).good.is_empty());
    }
}
