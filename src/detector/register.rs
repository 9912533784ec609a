//! Registering a class from its normal images, with no retraining: prototypes by greedy
//! k-center coreset, a per-class threshold for every score from held-out normal images (never
//! test images), outlier warnings among the normal images, and an atomic swap of the stored
//! class ([`crate::detector::class_store`]).

use crate::detector::class_store;
use crate::detector::coreset::{CoresetConfig, select_coreset};
use crate::detector::flow::positional_encoding;
use crate::detector::model_dir::{self as md, ClassInfo, Outlier};
use crate::detector::pipeline::{BATCH, ClassModel, Detector, load_inputs};
use crate::detector::scoring::quantile;
use crate::error::{Error, Result};
use crate::ops::nn_search::BankIndex;
use crate::rng::Rng;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Seeded split of a class's normal images into (bank images, held-out calibration images):
/// ~15% (at least 1) held out. The same images and seed always give the same split.
pub fn holdout_split(normal_images: &[PathBuf], seed: u64) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut order: Vec<usize> = (0..normal_images.len()).collect();
    Rng::new(seed ^ 0xCA1B).shuffle(&mut order);
    let n_hold = (normal_images.len() * 15 / 100)
        .max(1)
        .min(normal_images.len());
    let (hold_idx, fit_idx) = order.split_at(n_hold);
    let pick = |idx: &[usize]| -> Vec<PathBuf> {
        let mut v: Vec<usize> = idx.to_vec();
        v.sort();
        v.iter().map(|&i| normal_images[i].clone()).collect()
    };
    (pick(fit_idx), pick(hold_idx))
}

/// The held-out normal images of a registration and their patch features.
pub struct Holdout {
    pub paths: Vec<PathBuf>,
    /// `[n * grid², dim]`.
    pub feats: Vec<f32>,
}

/// Options of a registration.
#[derive(Clone, Debug, Default)]
pub struct RegisterOptions {
    /// The class's inference mask ratio (the fraction of patches the proposal stage masks;
    /// `None`: the model's default). Thresholds are calibrated with it.
    pub mask_ratio: Option<f32>,
    /// Leave the normal images flagged as outliers out of the bank and the calibration.
    pub drop_outliers: bool,
}

/// Modified z-score above which a normal image is reported as an outlier (Iglewicz and
/// Hoaglin's customary cut-off for `0.6745 (x - median) / MAD`).
pub const OUTLIER_Z: f32 = 3.5;

/// Robust z-scores of how far each image is from its nearest other image of the class, in
/// the space of image descriptors (each image's mean patch feature, `[n, dim]`). A corrupt
/// or foreign image in a folder of normal images sits far from all others. The spread is
/// the median absolute deviation, floored at 10% of the median so a folder of near-identical
/// images does not turn tiny differences into huge z-scores.
pub fn outlier_z(descriptors: &[f32], dim: usize) -> Vec<f32> {
    let n = descriptors.len() / dim;
    if n < 3 {
        return vec![0.0; n];
    }
    let row = |i: usize| &descriptors[i * dim..(i + 1) * dim];
    let nn: Vec<f32> = (0..n)
        .map(|i| {
            (0..n)
                .filter(|&j| j != i)
                .map(|j| {
                    row(i)
                        .iter()
                        .zip(row(j))
                        .map(|(a, b)| (a - b) * (a - b))
                        .sum::<f32>()
                })
                .fold(f32::INFINITY, f32::min)
                .sqrt()
        })
        .collect();
    let med = quantile(&nn, 0.5);
    let dev: Vec<f32> = nn.iter().map(|d| (d - med).abs()).collect();
    let mad = quantile(&dev, 0.5);
    let scale = (mad / 0.6745).max(0.1 * med).max(f32::MIN_POSITIVE);
    nn.iter().map(|d| (d - med) / scale).collect()
}

/// Mean patch feature of each image: `[n, dim]` from `[n * per, dim]`.
fn image_descriptors(feats: &[f32], per: usize, dim: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(feats.len() / per);
    for img in feats.chunks(per * dim) {
        let mut d = vec![0.0f32; dim];
        for p in img.chunks(dim) {
            d.iter_mut().zip(p).for_each(|(a, b)| *a += b);
        }
        d.iter_mut().for_each(|a| *a /= per as f32);
        out.extend(d);
    }
    out
}

/// Keeps the images (and their feature rows) whose `keep` flag is set.
fn retain_images(
    paths: &[PathBuf],
    feats: &[f32],
    keep: &[bool],
    row: usize,
) -> (Vec<PathBuf>, Vec<f32>) {
    let mut p = Vec::new();
    let mut f = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        if keep[i] {
            p.push(path.clone());
            f.extend_from_slice(&feats[i * row..(i + 1) * row]);
        }
    }
    (p, f)
}

/// What a registration produced.
pub struct Registration {
    pub info: ClassInfo,
    pub holdout: Holdout,
}

impl Detector {
    /// Registers `class` from its normal images: prototypes by greedy k-center coreset, and a
    /// per-class threshold from held-out normal images (never test images). The stored class
    /// is replaced in one atomic step, after the new one was checked.
    pub fn register(&mut self, class: &str, normal_images: &[PathBuf]) -> Result<ClassInfo> {
        self.register_with(class, normal_images, &RegisterOptions::default())
            .map(|r| r.info)
    }

    /// [`register`](Self::register) with the class's own inference mask ratio (`None`: the
    /// model's default).
    pub fn register_with_mask_ratio(
        &mut self,
        class: &str,
        normal_images: &[PathBuf],
        mask_ratio: Option<f32>,
    ) -> Result<ClassInfo> {
        let opts = RegisterOptions {
            mask_ratio,
            ..Default::default()
        };
        self.register_with(class, normal_images, &opts)
            .map(|r| r.info)
    }

    /// [`register`](Self::register) with options; also returns the held-out normal images
    /// and their patch features (`[n * grid², dim]`), which flow training uses as
    /// out-of-bank residuals. Outliers among the normal images are in `info.outliers`.
    pub fn register_with(
        &mut self,
        class: &str,
        normal_images: &[PathBuf],
        opts: &RegisterOptions,
    ) -> Result<Registration> {
        md::check_class_name(class)?;
        if let Some(r) = opts.mask_ratio
            && !(0.0..=1.0).contains(&r)
        {
            return Err(Error::invalid(format!(
                "class '{class}': mask ratio must be in [0, 1], got {r}"
            )));
        }
        if normal_images.len() < 2 {
            return Err(Error::invalid(format!(
                "class '{class}': registration needs at least 2 normal images, got {}",
                normal_images.len()
            )));
        }
        let (fit, hold) = holdout_split(normal_images, self.config.coreset.seed);
        let dim = self.features.dim();
        let per = self.features.grid() * self.features.grid();
        let pool = self.embed_paths(&fit, "embed")?;
        let hold_feats = self.embed_paths(&hold, "embed")?;

        // Normal images unlike the rest of the class (a corrupt file, a foreign object).
        let mut desc = image_descriptors(&pool, per, dim);
        desc.extend(image_descriptors(&hold_feats, per, dim));
        let z = outlier_z(&desc, dim);
        let all: Vec<&PathBuf> = fit.iter().chain(&hold).collect();
        let outliers: Vec<Outlier> = all
            .iter()
            .zip(&z)
            .filter(|(_, z)| **z > OUTLIER_Z)
            .map(|(p, &z)| Outlier {
                path: (*p).clone(),
                z,
                dropped: opts.drop_outliers,
            })
            .collect();
        let (fit, pool, hold, hold_feats) = if opts.drop_outliers && !outliers.is_empty() {
            let keep: Vec<bool> = z.iter().map(|&z| z <= OUTLIER_Z).collect();
            let (kf, kh) = keep.split_at(fit.len());
            let (fit, pool) = retain_images(&fit, &pool, kf, per * dim);
            let (hold, hold_feats) = retain_images(&hold, &hold_feats, kh, per * dim);
            if fit.is_empty() || hold.is_empty() {
                return Err(Error::invalid(format!(
                    "class '{class}': after dropping {} outliers no {} image is left; check \
                     the normal images or register without --drop-outliers",
                    outliers.len(),
                    if fit.is_empty() { "bank" } else { "held-out" }
                )));
            }
            (fit, pool, hold, hold_feats)
        } else {
            (fit, pool, hold, hold_feats)
        };

        let cfg = CoresetConfig {
            ratio: self.config.coreset.ratio,
            proj_dim: self.config.coreset.proj_dim,
            seed: self.config.coreset.seed,
        };
        self.report("coreset", 0, 1);
        let sel = select_coreset(&pool, dim, &cfg);
        self.report("coreset", 1, 1);
        let mut bank = Vec::with_capacity(sel.len() * dim);
        for &i in &sel {
            bank.extend_from_slice(&pool[i * dim..(i + 1) * dim]);
        }
        drop(pool);
        self.report("index", 0, 1);
        let index = BankIndex::build(&bank, dim);
        self.report("index", 1, 1);
        let mut model = ClassModel {
            info: ClassInfo {
                name: class.to_string(),
                n_train_images: fit.len() + hold.len(),
                n_prototypes: sel.len(),
                thresholds: BTreeMap::new(),
                normal_scores: BTreeMap::new(),
                flow_ref_ll: None,
                mask_ratio: opts.mask_ratio,
                outliers,
            },
            bank,
            index,
        };
        // A bank of this name uploaded earlier is stale from here on (calibration searches
        // the new one).
        self.forget_device_class(class);
        self.calibrate(&mut model, &hold, &hold_feats)?;
        self.save_class(&model)?;
        let info = model.info.clone();
        self.classes.insert(class.to_string(), model);
        Ok(Registration {
            info,
            holdout: Holdout {
                paths: hold,
                feats: hold_feats,
            },
        })
    }

    /// Thresholds (quantile of held-out normal image scores) for every available score kind,
    /// from the held-out normal images `hold` whose patch features are `feats`. Every score
    /// must be finite: a NaN names the image, never becomes a threshold.
    fn calibrate(&self, model: &mut ClassModel, hold: &[PathBuf], feats: &[f32]) -> Result<()> {
        let kinds = self.available_scores();
        let size = self.config.features.input_size;
        let row = self.features.grid() * self.features.grid() * self.features.dim();
        let mut per_kind: Vec<Vec<f32>> = vec![Vec::new(); kinds.len()];
        for (bi, chunk) in hold.chunks(BATCH).enumerate() {
            let x = load_inputs(chunk, size)?;
            let f = &feats[bi * BATCH * row..(bi * BATCH + chunk.len()) * row];
            let maps = self
                .maps_from_features(model, &x, f, &kinds)
                .map_err(|e| name_image(e, chunk))?;
            for (s, m) in per_kind.iter_mut().zip(maps) {
                s.extend(m.iter().map(|m| m.score));
            }
            self.report("calibrate", bi * BATCH + chunk.len(), hold.len());
        }
        for (kind, scores) in kinds.iter().zip(per_kind) {
            let key = kind.name().to_string();
            let t = quantile(&scores, self.config.threshold_quantile);
            if !t.is_finite() {
                return Err(Error::invalid(format!(
                    "class '{}': the '{key}' threshold is not finite ({t}) from {} held-out \
                     images; nothing was registered",
                    model.info.name,
                    scores.len()
                )));
            }
            model.info.thresholds.insert(key.clone(), t);
            model.info.normal_scores.insert(key, scores);
        }
        Ok(())
    }

    /// Re-calibrates the thresholds of `class` from its held-out normal images `hold` (after
    /// a new flow or ViT was installed).
    pub fn recalibrate(&mut self, class: &str, hold: &[PathBuf]) -> Result<()> {
        self.class(class)?;
        let feats = self.embed_paths(hold, "embed")?;
        let mut model = self.classes.remove(class).expect("loaded above");
        let r = self
            .calibrate(&mut model, hold, &feats)
            .and_then(|_| self.save_class(&model));
        self.classes.insert(class.to_string(), model);
        r
    }

    /// Whether the stored thresholds of `class` cover every score this model can compute
    /// (a model trained further since the class was registered needs recalibrating).
    pub fn is_calibrated(&mut self, class: &str) -> Result<bool> {
        let kinds = self.available_scores();
        let info = &self.class(class)?.info;
        Ok(kinds.iter().all(|k| info.thresholds.contains_key(k.name())))
    }

    /// Residuals to the nearest prototype of `class` for image features `[n * grid², dim]`,
    /// with each patch's positional condition. Used to train the flow.
    pub fn residuals(
        &mut self,
        class: &str,
        feats: &[f32],
        cond_dim: usize,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        self.class(class)?;
        let dim = self.features.dim();
        let model = &self.classes[class];
        let nn = model.index.nearest(feats);
        let mut r = feats.to_vec();
        for (row, &j) in r.chunks_mut(dim).zip(&nn.index) {
            let p = &model.bank[j as usize * dim..(j as usize + 1) * dim];
            row.iter_mut().zip(p).for_each(|(a, b)| *a -= b);
        }
        let g2 = self.features.grid() * self.features.grid();
        let pe = positional_encoding(self.features.grid(), cond_dim);
        let n_images = feats.len() / (g2 * dim);
        Ok((r, pe.repeat(n_images)))
    }

    /// Stores the class (a new version, swapped in atomically; see `class_store`).
    fn save_class(&self, model: &ClassModel) -> Result<()> {
        class_store::save(
            &self.dir,
            &model.info,
            &model.bank,
            &model.index.centroids(),
            self.features.dim(),
            None,
        )
    }
}

/// Turns "image i of the batch" in a non-finite error into the image's path.
pub(crate) fn name_image(e: Error, paths: &[PathBuf]) -> Error {
    match e {
        Error::NonFinite { image, .. } if image < paths.len() => {
            Error::invalid(format!("{}: {e}", paths[image].display()))
        }
        e => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outlier_z_flags_the_one_far_image_only() {
        // 8 descriptors on a small ring, one far away.
        let mut d = Vec::new();
        for i in 0..8 {
            let a = i as f32 * 0.785;
            d.extend([a.cos(), a.sin(), 0.1 * i as f32 % 0.3]);
        }
        d.extend([30.0, -20.0, 5.0]);
        let z = outlier_z(&d, 3);
        assert_eq!(z.len(), 9);
        assert!(z[8] > OUTLIER_Z, "{z:?}");
        assert!(z[..8].iter().all(|&v| v <= OUTLIER_Z), "{z:?}");
        // Identical images: the floored spread keeps every z at 0, not NaN.
        let same = outlier_z(&[1.0; 12], 3);
        assert!(
            same.iter().all(|v| v.is_finite() && *v <= OUTLIER_Z),
            "{same:?}"
        );
    }

    #[test]
    fn a_non_finite_error_is_renamed_to_its_image_path() {
        let e = crate::detector::pipeline::check_finite(&[0.0, 1.0, f32::NAN, 2.0], 2, "c", "flow")
            .unwrap_err();
        let paths = [PathBuf::from("a.png"), PathBuf::from("b.png")];
        let msg = name_image(e, &paths).to_string();
        assert!(
            msg.starts_with("b.png:") && msg.contains("flow") && msg.contains("'c'"),
            "{msg}"
        );
    }
}
