//! Verdict thresholds from a class's own normal images, by k-fold cross-validation.
//!
//! **Out-of-fold scores.** An image scored against a bank holding its own patches scores ~0
//! and says nothing about unseen normal images. A single held-out split (what pmad did before;
//! `calibration_folds: 0` in `class.json`) spent 15% of the images on calibration, so a
//! 31-image class had a 0.99 quantile of 4 scores. Here the normal images are split into `k`
//! folds; each fold is scored against a bank built from the other folds, so EVERY normal image
//! gives one out-of-fold score, while the class's stored bank is built from all of them (no
//! image is lost to calibration). A fold's bank is the class's full bank (its greedy k-center
//! coreset) less the prototypes taken from the fold's own images: no second coreset, so
//! calibrating costs index builds and the scoring of the folds, not coresets. That bank is a
//! little sparser than a fresh coreset of the other folds would be, so out-of-fold scores are
//! slightly higher than an unseen normal image's against the full bank: the threshold errs
//! towards fewer false alarms. (Where the prototypes' images are unknown — a class registered
//! by an older pmad — a fresh coreset of the other folds is built instead.) Large classes
//! stop once [`CALIBRATION_MIN_SCORES`] out-of-fold scores are in hand. The fold-0 residuals
//! (fold-0 patches minus their nearest prototype in the fold-0 bank) are out-of-bank, like a
//! test image's: the ProtoFlow trains on them.
//!
//! **The threshold** is the `threshold_quantile` (0.99) quantile of the out-of-fold scores, and
//! at least their robust outlier cut-off `median + z MAD / 0.6745` (`threshold_robust_z`, 3.5:
//! Iglewicz and Hoaglin's customary cut-off, the one that flags outliers among normal images at
//! `register`). Why the floor: with 50 normal images the 0.99 quantile is about their maximum,
//! and a class's normal images at test time drift a little from its training images (light, a
//! new batch); a score must stand out from the normal spread, not just top the few images seen,
//! before it is called a defect. On the development set it took metal_plate's false-alarm rate
//! on test/good from 0.133 to 0.033 at an unchanged detection rate (1.000), kept bottle's and
//! magnetic_tile's at 0.000 (magnetic_tile's detection rate fell 0.294 -> 0.175).
//!
//! The same out-of-fold maps give the pixel thresholds of the defect masks: a high quantile
//! ([`PIXEL_THRESHOLD_QUANTILE`]) of a deterministic sample of their pixels.

use crate::detector::coreset::{CoresetConfig, select_coreset, select_coreset_of_size};
use crate::detector::model_dir::ClassInfo;
use crate::detector::normal_images::{NormalImage, load_inputs, name_image};
use crate::detector::pipeline::{BATCH, ClassModel, Detector};
use crate::detector::scoring::{quantile, robust_upper};
use crate::error::{Error, Result};
use crate::ops::nn_search::BankIndex;
use crate::rng::Rng;
use std::path::PathBuf;
use std::sync::Arc;

/// Number of calibration folds (fewer when the class has fewer normal images).
pub const CALIBRATION_FOLDS: usize = 5;

/// Folds are scored until at least this many out-of-fold scores are in hand: a large class
/// (400 images: 80 per fold) stops after 2 of its 5 fold banks, since every fold bank costs
/// a coreset of `(k-1)/k` of the class, while a small one (< 100 images) scores every fold.
/// 100 scores put the 0.99 quantile between the two highest.
pub const CALIBRATION_MIN_SCORES: usize = 100;

/// Quantile of the out-of-fold normal map pixels stored as a class's pixel threshold (the
/// defect masks of `inspect --save-mask`). Why 0.999: a defect-free image then marks about
/// one pixel in a thousand, a small false-positive area, while a defect's pixels score far
/// above the normal pixel distribution. Set from normal images only, never from test labels.
pub const PIXEL_THRESHOLD_QUANTILE: f32 = 0.999;

/// Map pixels sampled per normal image for the pixel threshold. Keeps the memory bounded
/// (a 160-image calibration of 256x256 maps keeps ~0.7 M values per score, not 10 M) while
/// leaving thousands of samples above the 0.999 quantile.
pub const PIXEL_SAMPLES_PER_IMAGE: usize = 4096;

/// A deterministic sample of about [`PIXEL_SAMPLES_PER_IMAGE`] values of a map: every
/// `stride`-th pixel of the row-major map, with `stride` odd so that on the usual
/// power-of-two map sides consecutive rows sample different columns (no striping).
pub fn sample_pixels(values: &[f32]) -> impl Iterator<Item = f32> + '_ {
    let stride = (values.len() / PIXEL_SAMPLES_PER_IMAGE).max(1) | 1;
    values.iter().step_by(stride).copied()
}

/// Fold of each of `n` images: a seeded shuffle dealt round-robin, so fold sizes differ by
/// at most one and the same `(n, seed)` always gives the same folds. `k` is clamped to
/// `[1, n]` (every fold holds at least one image).
pub fn fold_of(n: usize, k: usize, seed: u64) -> Vec<usize> {
    let k = k.clamp(1, n.max(1));
    let mut order: Vec<usize> = (0..n).collect();
    Rng::new(seed ^ 0xCA1B).shuffle(&mut order);
    let mut fold = vec![0; n];
    for (pos, &i) in order.iter().enumerate() {
        fold[i] = pos % k;
    }
    fold
}

/// Rows `[n * row]` of the images whose fold is (`inside`) or is not `fold`.
fn rows_of(feats: &[f32], row: usize, folds: &[usize], fold: usize, inside: bool) -> Vec<f32> {
    folds
        .iter()
        .enumerate()
        .filter(|&(_, &f)| (f == fold) == inside)
        .flat_map(|(i, _)| &feats[i * row..(i + 1) * row])
        .copied()
        .collect()
}

/// A class's full prototype bank `[m, dim]` and the image (index into the calibration's
/// images) each prototype was taken from.
pub struct FullBank<'a> {
    /// The prototypes, `[m, dim]`.
    pub bank: &'a [f32],
    /// The image (index into the calibration's images) of each prototype, `[m]`.
    pub source_image: &'a [u32],
}

/// The prototypes of `full` whose image is not in fold `fold` (`folds[image]`), `[m', dim]`.
fn prototypes_outside_fold(full: &FullBank, dim: usize, folds: &[usize], fold: usize) -> Vec<f32> {
    full.source_image
        .iter()
        .enumerate()
        .filter(|&(_, &img)| folds[img as usize] != fold)
        .flat_map(|(j, _)| &full.bank[j * dim..(j + 1) * dim])
        .copied()
        .collect()
}

/// The folds of `n` normal images, their number `k`, and how many are scored (all of them, or
/// as many as give [`CALIBRATION_MIN_SCORES`] scores).
pub(crate) fn fold_plan(n: usize, seed: u64) -> (Vec<usize>, usize, usize) {
    let folds = fold_of(n, CALIBRATION_FOLDS, seed);
    let k = folds.iter().max().map_or(1, |m| m + 1);
    let fold_size = n / k;
    let scored = CALIBRATION_MIN_SCORES
        .div_ceil(fold_size.max(1))
        .clamp(1, k);
    (folds, k, scored)
}

/// What a calibration produced besides the thresholds.
pub struct Calibrated {
    /// Fold-0 residuals `[m * grid², dim]` against the fold-0 bank (out-of-bank).
    pub residuals: Vec<f32>,
}

impl Detector {
    /// The prototype bank of the patch features `pool` (`[rows, dim]`): greedy k-center
    /// coreset, then the exact-search index. Also returns the pool row of each prototype.
    pub(crate) fn build_bank(&self, pool: &[f32]) -> (Vec<f32>, BankIndex, Vec<usize>) {
        self.build_bank_of_size(pool, None)
    }

    /// [`build_bank`](Self::build_bank) with `size` prototypes (`None`: the coreset ratio's
    /// share of the pool).
    pub(crate) fn build_bank_of_size(
        &self,
        pool: &[f32],
        size: Option<usize>,
    ) -> (Vec<f32>, BankIndex, Vec<usize>) {
        let dim = self.features.dim();
        let cfg = CoresetConfig {
            ratio: self.config.coreset.ratio,
            proj_dim: self.config.coreset.proj_dim,
            seed: self.config.coreset.seed,
        };
        let sel = match size {
            None => select_coreset(pool, dim, &cfg),
            Some(m) => select_coreset_of_size(pool, dim, &cfg, m),
        };
        let mut bank = Vec::with_capacity(sel.len() * dim);
        for &i in &sel {
            bank.extend_from_slice(&pool[i * dim..(i + 1) * dim]);
        }
        let index = BankIndex::build(&bank, dim);
        (bank, index, sel)
    }

    /// The bank that scores fold `fold`: with the class's full bank and the image each of its
    /// prototypes came from, the prototypes of the other folds' images (no new coreset: a
    /// fold bank then costs one index build instead of a coreset over (k-1)/k of the class);
    /// otherwise a fresh coreset of the other folds' patches.
    fn fold_bank(
        &self,
        full: Option<&FullBank>,
        feats: &[f32],
        folds: &[usize],
        fold: usize,
    ) -> (Vec<f32>, BankIndex) {
        let dim = self.features.dim();
        match full {
            Some(fb) => {
                let bank = prototypes_outside_fold(fb, dim, folds, fold);
                let index = BankIndex::build(&bank, dim);
                (bank, index)
            }
            None => {
                let row = self.features.grid() * self.features.grid() * dim;
                let (bank, index, _) = self.build_bank(&rows_of(feats, row, folds, fold, false));
                (bank, index)
            }
        }
    }

    /// The folds, their number and the folds scored for `n` normal images ([`fold_plan`] with
    /// the model's seed).
    fn fold_plan(&self, n: usize) -> (Vec<usize>, usize, usize) {
        fold_plan(n, self.config.coreset.seed)
    }

    /// Out-of-fold `distance` image scores of the normal images whose patch features are
    /// `feats` (`[n * grid², dim]`), each fold scored against `full` less the prototypes of
    /// its own images, as [`calibrate`](Self::calibrate) scores them (images of folds not
    /// scored are left out). What the augmentation decision compares
    /// ([`crate::detector::augment`]).
    pub(crate) fn out_of_fold_distance(
        &self,
        class: &str,
        n: usize,
        feats: &[f32],
        full: &FullBank,
    ) -> Result<Vec<f32>> {
        let row = self.features.grid() * self.features.grid() * self.features.dim();
        let (folds, _, scored) = self.fold_plan(n);
        let mut scores = Vec::new();
        for fold in 0..scored {
            let (bank, index) = self.fold_bank(Some(full), feats, &folds, fold);
            let info = ClassInfo {
                name: class.to_string(),
                ..ClassInfo::default()
            };
            let model = ClassModel::new(info, bank, index, None);
            let f = rows_of(feats, row, &folds, fold, true);
            scores.extend(self.distance_image_scores(&model, &f)?);
        }
        Ok(scores)
    }

    /// Fills `info.thresholds`, `info.normal_scores` and `info.pixel_thresholds` (a quantile
    /// of a sample of the same out-of-fold maps' pixels) for every available score kind by
    /// k-fold over the normal images `images` (patch features `feats`, `[n * grid², dim]`).
    /// Every score must be finite: a NaN names the image, never becomes a threshold.
    pub(crate) fn calibrate(
        &self,
        info: &mut ClassInfo,
        images: &[NormalImage],
        feats: &[f32],
        full: Option<&FullBank>,
    ) -> Result<Calibrated> {
        let n = images.len();
        if n < 2 {
            return Err(Error::invalid(format!(
                "class '{}': calibration needs at least 2 normal images, got {n}",
                info.name
            )));
        }
        let kinds = self.available_scores();
        let size = self.config.features.input_size;
        let dim = self.features.dim();
        let row = self.features.grid() * self.features.grid() * dim;
        let (folds, k, scored) = self.fold_plan(n);
        let total = (0..n).filter(|&i| folds[i] < scored).count();
        // Out-of-fold scores, in image order (NaN: image in a fold not scored).
        let mut scores: Vec<Vec<f32>> = vec![vec![f32::NAN; n]; kinds.len()];
        // A sample of the out-of-fold map pixels per kind (for the pixel thresholds).
        let mut pixels: Vec<Vec<f32>> = vec![Vec::new(); kinds.len()];
        let mut residuals = Vec::new();
        let mut done = 0;
        for fold in 0..scored {
            let (bank, index) = self.fold_bank(full, feats, &folds, fold);
            let model = ClassModel::new(info.clone(), bank, index, None);
            let members: Vec<usize> = (0..n).filter(|&i| folds[i] == fold).collect();
            let fold_feats = rows_of(feats, row, &folds, fold, true);
            if fold == 0 {
                residuals = self.residuals_to(&model.bank, model.search_index(dim), &fold_feats);
            }
            for (ci, chunk) in members.chunks(BATCH).enumerate() {
                let chunk_images: Vec<NormalImage> = chunk.iter().map(|&i| images[i]).collect();
                let x = load_inputs(&chunk_images, size)?;
                let f = &fold_feats[ci * BATCH * row..(ci * BATCH + chunk.len()) * row];
                let maps = self
                    .maps_from_features(&model, &x, f, &kinds)
                    .map_err(|e| name_image(e, &chunk_images))?;
                for ((s, px), m) in scores.iter_mut().zip(&mut pixels).zip(maps) {
                    for (&i, m) in chunk.iter().zip(m) {
                        s[i] = m.score;
                        px.extend(sample_pixels(&m.values));
                    }
                }
                done += chunk.len();
                self.report("calibrate", done, total);
            }
        }
        info.thresholds.clear();
        info.normal_scores.clear();
        info.pixel_thresholds.clear();
        for ((kind, scores), px) in kinds.iter().zip(scores).zip(pixels) {
            let key = kind.name().to_string();
            let scores: Vec<f32> = (0..n)
                .filter(|&i| folds[i] < scored)
                .map(|i| scores[i])
                .collect();
            let t = quantile(&scores, self.config.threshold_quantile)
                .max(robust_upper(&scores, self.config.threshold_robust_z));
            if !t.is_finite() || scores.iter().any(|s| !s.is_finite()) {
                return Err(Error::invalid(format!(
                    "class '{}': the '{key}' threshold is not finite ({t}) from {total} \
                     normal images; nothing was registered",
                    info.name
                )));
            }
            let pt = quantile(&px, PIXEL_THRESHOLD_QUANTILE);
            if !pt.is_finite() || px.iter().any(|p| !p.is_finite()) {
                return Err(Error::invalid(format!(
                    "class '{}': the '{key}' pixel threshold is not finite ({pt}) from {total} \
                     normal images; nothing was registered",
                    info.name
                )));
            }
            info.pixel_thresholds.insert(key.clone(), pt);
            info.thresholds.insert(key.clone(), t);
            info.normal_scores.insert(key, scores);
        }
        info.calibration_folds = k;
        Ok(Calibrated { residuals })
    }

    /// Residuals to the nearest prototype of `bank` (searched through `index`) for patch
    /// features `[m, dim]`.
    fn residuals_to(&self, bank: &[f32], index: &BankIndex, feats: &[f32]) -> Vec<f32> {
        let dim = self.features.dim();
        let nn = index.nearest(feats);
        let mut r = feats.to_vec();
        for (row, &j) in r.chunks_mut(dim).zip(&nn.index) {
            let p = &bank[j as usize * dim..(j as usize + 1) * dim];
            row.iter_mut().zip(p).for_each(|(a, b)| *a -= b);
        }
        r
    }

    /// The out-of-bank residuals of `class`'s normal images, as `calibrate`
    /// returns them (fold 0 against a bank without fold 0), without calibrating: for a class
    /// registered by an earlier, resumed training run.
    pub fn out_of_bank_residuals(
        &self,
        class: &str,
        normal_images: &[PathBuf],
    ) -> Result<Vec<f32>> {
        let model = self.class(class)?;
        let feats = self.embed_paths(normal_images, "embed")?;
        let row = self.features.grid() * self.features.grid() * self.features.dim();
        let folds = fold_of(
            normal_images.len(),
            CALIBRATION_FOLDS,
            self.config.coreset.seed,
        );
        let full = Self::full_bank(
            &model.bank,
            model.source_image.as_deref(),
            model.info.n_train_images,
            normal_images.len(),
        );
        let (bank, index) = self.fold_bank(full.as_ref(), &feats, &folds, 0);
        Ok(self.residuals_to(&bank, &index, &rows_of(&feats, row, &folds, 0, true)))
    }

    /// A class's full `bank` with its prototypes' images, when they are known and the class
    /// was registered from (`registered_from`) as many images as are calibrated now
    /// (`n_images`); see `ClassModel::source_image`.
    fn full_bank<'a>(
        bank: &'a [f32],
        source_image: Option<&'a [u32]>,
        registered_from: usize,
        n_images: usize,
    ) -> Option<FullBank<'a>> {
        source_image
            .filter(|_| registered_from == n_images)
            .map(|s| FullBank {
                bank,
                source_image: s,
            })
    }

    /// Re-calibrates the thresholds of `class` from its normal images (the ones it was
    /// registered from), after a new flow or ViT was installed. Returns the out-of-bank
    /// residuals of the calibration (see [`Calibrated`]).
    pub fn recalibrate(&mut self, class: &str, normal_images: &[PathBuf]) -> Result<Calibrated> {
        self.class(class)?;
        let feats = self.embed_paths(normal_images, "embed")?;
        // Our own copy to change (a clone only if a caller still holds the old `Arc`).
        let mut model = Arc::unwrap_or_clone(self.take_class(class).expect("loaded above"));
        // Fold banks from the full bank when the prototypes' images are known, else fresh
        // coresets.
        let full = Self::full_bank(
            &model.bank,
            model.source_image.as_deref(),
            model.info.n_train_images,
            normal_images.len(),
        );
        let r = self
            .calibrate(
                &mut model.info,
                &NormalImage::files(normal_images),
                &feats,
                full.as_ref(),
            )
            .and_then(|c| self.save_class(&model).map(|_| c));
        self.install_class(model);
        r
    }

    /// Whether the stored thresholds of `class` cover every score this model can compute
    /// (a model trained further since the class was registered needs recalibrating).
    pub fn is_calibrated(&self, class: &str) -> Result<bool> {
        let kinds = self.available_scores();
        let model = self.class(class)?;
        let info = &model.info;
        Ok(kinds.iter().all(|k| info.thresholds.contains_key(k.name())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_are_balanced_seeded_and_cover_every_image() {
        for n in [2usize, 3, 7, 31, 50] {
            let f = fold_of(n, CALIBRATION_FOLDS, 7);
            let k = CALIBRATION_FOLDS.min(n);
            let mut sizes = vec![0; k];
            f.iter().for_each(|&i| sizes[i] += 1);
            let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(*lo >= 1 && hi - lo <= 1, "n {n}: {sizes:?}");
            assert_eq!(f, fold_of(n, CALIBRATION_FOLDS, 7));
        }
        assert_ne!(fold_of(31, 5, 1), fold_of(31, 5, 2));
    }

    #[test]
    fn fold_banks_leave_out_the_prototypes_of_the_folds_images() {
        // 4 prototypes of 2 values, taken from images 2, 0, 1, 2; image 2 is in fold 1.
        let bank = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5];
        let full = FullBank {
            bank: &bank,
            source_image: &[2, 0, 1, 2],
        };
        let folds = [0, 0, 1];
        assert_eq!(
            prototypes_outside_fold(&full, 2, &folds, 1),
            vec![1.0, 1.5, 2.0, 2.5]
        );
        assert_eq!(
            prototypes_outside_fold(&full, 2, &folds, 0),
            vec![0.0, 0.5, 3.0, 3.5]
        );
    }

    #[test]
    fn rows_of_splits_images_by_fold() {
        // 3 images of 2 values each; image 1 in fold 1.
        let feats = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5];
        let folds = [0, 1, 0];
        assert_eq!(rows_of(&feats, 2, &folds, 1, true), vec![1.0, 1.5]);
        assert_eq!(
            rows_of(&feats, 2, &folds, 1, false),
            vec![0.0, 0.5, 2.0, 2.5]
        );
    }
}
