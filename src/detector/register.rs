//! Registering a class from its normal images, with no retraining: prototypes by greedy
//! k-center coreset over all of them, a per-class threshold for every score by k-fold over
//! the same images (never test images; [`crate::detector::calibrate`]), outlier warnings
//! among the normal images, and an atomic swap of the stored class
//! ([`crate::detector::class_store`]).

#![warn(missing_docs)]

use crate::data::image::RgbImage;
use crate::data::view::ImageView;
use crate::detector::augment::Augment;
use crate::detector::calibrate::FullBank;
use crate::detector::class_store;
use crate::detector::model_dir::{self as md, ClassInfo, Outlier};
use crate::detector::normal_images::{self, NormalImage};
use crate::detector::pipeline::{ClassModel, Detector};
use crate::detector::scoring::quantile;
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Options of a registration.
#[derive(Clone, Debug, Default)]
pub struct RegisterOptions {
    /// The class's inference mask ratio (the fraction of patches the proposal stage masks;
    /// `None`: the model's default). Thresholds are calibrated with it.
    pub mask_ratio: Option<f32>,
    /// Leave the normal images flagged as outliers out of the bank and the calibration.
    pub drop_outliers: bool,
    /// Augmentation candidates to try for this class (`None`: the model's `augment`; see
    /// [`crate::detector::augment`]).
    pub augment: Option<Vec<Augment>>,
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
fn retain_images<'a>(
    images: &[NormalImage<'a>],
    feats: &[f32],
    keep: &[bool],
    row: usize,
) -> (Vec<NormalImage<'a>>, Vec<f32>) {
    let mut p = Vec::new();
    let mut f = Vec::new();
    for (i, image) in images.iter().enumerate() {
        if keep[i] {
            p.push(*image);
            f.extend_from_slice(&feats[i * row..(i + 1) * row]);
        }
    }
    (p, f)
}

/// What a registration produced.
pub struct Registration {
    /// The registered class's `class.json` (thresholds, outliers among the images).
    pub info: ClassInfo,
    /// Out-of-bank residuals of some of the normal images (`[m * grid², dim]`, see
    /// [`crate::detector::calibrate`]): what the ProtoFlow trains on.
    pub residuals: Vec<f32>,
}

impl Detector {
    /// Registers `class` from its normal images: prototypes by greedy k-center coreset, and a
    /// per-class threshold by k-fold over the same images (never test images). The stored class
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

    /// [`register`](Self::register) with options; also returns out-of-bank residuals of the
    /// calibration, which flow training uses. Outliers among the normal images are in `info.outliers`.
    pub fn register_with(
        &mut self,
        class: &str,
        normal_images: &[PathBuf],
        opts: &RegisterOptions,
    ) -> Result<Registration> {
        self.register_normal(class, &NormalImage::files(normal_images), opts)
    }

    /// Registers `class` from normal images already decoded in memory (camera frames, images
    /// another library loaded), exactly as [`register`](Self::register) does from files: the
    /// same images give the same prototypes and thresholds. A malformed image is an
    /// [`Error::BadImage`] naming its index; in `info.outliers` the images are named
    /// `<image i>`.
    pub fn register_images(&mut self, class: &str, images: &[RgbImage]) -> Result<ClassInfo> {
        self.register_images_with(class, images, &RegisterOptions::default())
            .map(|r| r.info)
    }

    /// [`register_images`](Self::register_images) with options (see
    /// [`register_with`](Self::register_with)).
    pub fn register_images_with(
        &mut self,
        class: &str,
        images: &[RgbImage],
        opts: &RegisterOptions,
    ) -> Result<Registration> {
        self.register_normal(class, &NormalImage::memory(images), opts)
    }

    /// [`register_images`](Self::register_images) of raw pixel buffers (see [`ImageView`]).
    pub fn register_views(&mut self, class: &str, views: &[ImageView]) -> Result<ClassInfo> {
        let images: Vec<RgbImage> = views.iter().map(ImageView::to_rgb).collect();
        self.register_images(class, &images)
    }

    /// The registration itself, for files and in-memory images alike.
    fn register_normal(
        &mut self,
        class: &str,
        normal_images: &[NormalImage],
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
        let dim = self.features.dim();
        let per = self.features.grid() * self.features.grid();
        let pool = self.embed_images(normal_images, "embed")?;

        // Normal images unlike the rest of the class (a corrupt file, a foreign object).
        let z = outlier_z(&image_descriptors(&pool, per, dim), dim);
        let outliers: Vec<Outlier> = normal_images
            .iter()
            .zip(&z)
            .filter(|(_, z)| **z > OUTLIER_Z)
            .map(|(p, &z)| Outlier {
                path: p.label(),
                z,
                dropped: opts.drop_outliers,
            })
            .collect();
        let (images, pool) = if opts.drop_outliers && !outliers.is_empty() {
            let keep: Vec<bool> = z.iter().map(|&z| z <= OUTLIER_Z).collect();
            let (images, pool) = retain_images(normal_images, &pool, &keep, per * dim);
            if images.len() < 2 {
                return Err(Error::invalid(format!(
                    "class '{class}': after dropping {} outliers fewer than 2 normal images \
                     are left; check the normal images or register without --drop-outliers",
                    outliers.len(),
                )));
            }
            (images, pool)
        } else {
            (normal_images.to_vec(), pool)
        };

        // The bank from every kept image (and the augmented copies the class's own held-out
        // images vote for); thresholds by k-fold over the same images.
        let candidates = opts.augment.as_ref().unwrap_or(&self.config.augment);
        let (bank, index, source_image, augmentation) = if candidates.is_empty() {
            self.report("coreset", 0, 1);
            let (bank, index, sel) = self.build_bank(&pool);
            self.report("coreset", 1, 1);
            let source: Vec<u32> = sel.iter().map(|&r| (r / per) as u32).collect();
            (bank, index, source, Vec::new())
        } else {
            let a = self.augmented_bank(class, &images, &pool, candidates)?;
            (a.bank, a.index, a.source_image, a.trials)
        };
        let mut model = ClassModel::new(
            ClassInfo {
                name: class.to_string(),
                n_train_images: images.len(),
                n_prototypes: bank.len() / dim,
                thresholds: BTreeMap::new(),
                normal_scores: BTreeMap::new(),
                flow_ref_ll: None,
                mask_ratio: opts.mask_ratio,
                outliers,
                calibration_folds: 0,
                pixel_thresholds: BTreeMap::new(),
                augmentation,
            },
            bank,
            index,
            Some(source_image),
        );
        // Fold banks are the full bank's prototypes of the other folds' images.
        let full = FullBank {
            bank: &model.bank,
            source_image: model.source_image.as_deref().unwrap_or_default(),
        };
        let cal = self.calibrate(&mut model.info, &images, &pool, Some(&full))?;
        drop(pool);
        self.save_class(&model)?;
        let info = model.info.clone();
        self.install_class(model);
        Ok(Registration {
            info,
            residuals: cal.residuals,
        })
    }

    /// Stores the class (a new version, swapped in atomically; see `class_store`).
    pub(crate) fn save_class(&self, model: &ClassModel) -> Result<()> {
        class_store::save(
            &self.dir,
            &model.info,
            &model.bank,
            &model.search_index(self.features.dim()).centroids(),
            model.source_image.as_deref(),
            self.features.dim(),
            None,
        )
    }
}

/// Turns "image i of the batch" in a non-finite error into the image's path.
pub(crate) fn name_image(e: Error, paths: &[PathBuf]) -> Error {
    normal_images::name_image(e, &NormalImage::files(paths))
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
