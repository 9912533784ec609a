//! Few-shot registration: augmented copies of a class's normal images in its prototype bank,
//! each kept only if the class's own held-out normal images score lower with it.
//!
//! **Candidates** ([`Augment`]): a horizontal flip, a vertical flip, the three 90-degree
//! rotations, and two small shifts (half a feature cell, diagonally, edges replicated). They
//! are applied to the network input, so each copy goes through the backbone like a real image.
//!
//! **The decision** uses nothing but the class's normal training images. With the k-fold split
//! of the calibration, every candidate set gets out-of-fold scores: fold `f`'s images (never
//! augmented) are scored against the bank less every prototype taken from fold `f`'s images
//! *or from their augmented copies*, so no image is ever scored against a view of itself.
//! Candidates are tried one by one in a fixed order (greedy forward selection); one is kept if
//! the mean out-of-fold `distance` score falls with it.
//!
//! **Same bank size.** The coreset keeps as many prototypes as it would without augmentation
//! (`coreset ratio x un-augmented patches`), chosen from the augmented pool. That keeps
//! `inspect`'s search cost unchanged and gives the decision teeth: more patches in the pool can
//! only lower the distances to a bank built from all of them, so "lower with it" would accept
//! everything; at a fixed budget, copies unlike the class's real views (a rotated bottle's
//! label) take prototypes away from real views and raise the held-out scores, so they are
//! refused. The decision and its figures are recorded in `class.json` (`augmentation`).

use crate::detector::calibrate::FullBank;
use crate::detector::normal_images::{NormalImage, load_inputs, name_image};
use crate::detector::pipeline::{BATCH, Detector, check_finite};
use crate::error::{Error, Result};
use crate::ops::nn_search::BankIndex;
use crate::tensor::Tensor;

/// An augmentation candidate (one or more views of each normal image).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Augment {
    /// Mirror left-right (1 copy).
    Hflip,
    /// Mirror top-bottom (1 copy).
    Vflip,
    /// Rotations by 90, 180 and 270 degrees (3 copies).
    Rot90,
    /// Shifts by half a feature cell, down-right and up-left (2 copies).
    Shift,
}

/// Every candidate, in the order the decision tries them.
pub const ALL: [Augment; 4] = [
    Augment::Hflip,
    Augment::Vflip,
    Augment::Rot90,
    Augment::Shift,
];

/// One geometric view of a square `[3, S, S]` network input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    Hflip,
    Vflip,
    /// Counter-clockwise by `k x 90` degrees.
    Rot(u8),
    /// Content moved by `(dy, dx)` pixels; the border rows/columns are replicated.
    Shift(i32, i32),
}

impl Augment {
    pub fn name(self) -> &'static str {
        match self {
            Augment::Hflip => "hflip",
            Augment::Vflip => "vflip",
            Augment::Rot90 => "rot90",
            Augment::Shift => "shift",
        }
    }

    /// The views this candidate adds, for inputs of side `size` over a feature grid of side
    /// `grid` (a shift is half a cell: 4 px at 224 / 28).
    pub fn views(self, size: usize, grid: usize) -> Vec<View> {
        let h = (size / grid.max(1) / 2).max(1) as i32;
        match self {
            Augment::Hflip => vec![View::Hflip],
            Augment::Vflip => vec![View::Vflip],
            Augment::Rot90 => vec![View::Rot(1), View::Rot(2), View::Rot(3)],
            Augment::Shift => vec![View::Shift(h, h), View::Shift(-h, -h)],
        }
    }
}

impl std::str::FromStr for Augment {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        ALL.into_iter().find(|a| a.name() == s).ok_or_else(|| {
            format!(
                "augmentation '{s}': expected none, all, or a comma-separated list of \
                     hflip, vflip, rot90, shift"
            )
        })
    }
}

/// Parses `none` or a comma-separated list of candidates (each at most once).
pub fn parse_list(s: &str) -> std::result::Result<Vec<Augment>, String> {
    if s == "none" || s.is_empty() {
        return Ok(Vec::new());
    }
    if s == "all" {
        return Ok(ALL.to_vec());
    }
    let mut out: Vec<Augment> = Vec::new();
    for part in s.split(',') {
        let a: Augment = part.trim().parse()?;
        if out.contains(&a) {
            return Err(format!("augmentation '{part}' named twice"));
        }
        out.push(a);
    }
    Ok(out)
}

/// A parsed `--augment` value (a list of candidates; `none`: empty).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AugmentList(pub Vec<Augment>);

impl std::str::FromStr for AugmentList {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        parse_list(s).map(AugmentList)
    }
}

/// `view` of the network inputs `x` (`[n, 3, size, size]`, row-major), as a new buffer.
pub fn apply(view: View, x: &[f32], size: usize) -> Vec<f32> {
    let s = size as i32;
    let plane = size * size;
    let mut out = vec![0.0f32; x.len()];
    // Source pixel (y, x) of output pixel (i, j).
    let src = |i: i32, j: i32| -> (i32, i32) {
        match view {
            View::Hflip => (i, s - 1 - j),
            View::Vflip => (s - 1 - i, j),
            // Counter-clockwise: out(i, j) = in(j, s-1-i), applied k times.
            View::Rot(k) => (0..k).fold((i, j), |(a, b), _| (b, s - 1 - a)),
            View::Shift(dy, dx) => ((i - dy).clamp(0, s - 1), (j - dx).clamp(0, s - 1)),
        }
    };
    for (o, inp) in out.chunks_mut(plane).zip(x.chunks(plane)) {
        for i in 0..s {
            for j in 0..s {
                let (a, b) = src(i, j);
                o[(i * s + j) as usize] = inp[(a * s + b) as usize];
            }
        }
    }
    out
}

/// One candidate's trial at registration, recorded in `class.json`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AugmentTrial {
    pub augment: Augment,
    /// Mean out-of-fold `distance` score of the normal images with the candidates kept so far
    /// (before this one) and with this one added.
    pub mean_without: f32,
    pub mean_with: f32,
    /// Whether it was kept (`mean_with < mean_without`).
    pub kept: bool,
}

/// Greedy forward selection: tries `candidates` in order, each added to those kept so far, and
/// keeps it when `mean_oof(set)` (the mean out-of-fold score of the normal images with the
/// augmentation set `set`) is lower than without it. `mean_oof(&[])` is the baseline.
/// Deterministic for a deterministic `mean_oof`; a non-finite mean is an error.
pub fn choose<F>(candidates: &[Augment], mut mean_oof: F) -> Result<Vec<AugmentTrial>>
where
    F: FnMut(&[Augment]) -> Result<f32>,
{
    let mut finite = |set: &[Augment]| -> Result<f32> {
        let m = mean_oof(set)?;
        if m.is_finite() {
            Ok(m)
        } else {
            Err(Error::invalid(format!(
                "augmentation {:?}: mean out-of-fold score is {m}",
                set.iter().map(|a| a.name()).collect::<Vec<_>>()
            )))
        }
    };
    let mut kept: Vec<Augment> = Vec::new();
    let mut current = finite(&kept)?;
    let mut trials = Vec::new();
    for &a in candidates {
        let mut set = kept.clone();
        set.push(a);
        let with = finite(&set)?;
        let keep = with < current;
        trials.push(AugmentTrial {
            augment: a,
            mean_without: current,
            mean_with: with,
            kept: keep,
        });
        if keep {
            kept = set;
            current = with;
        }
    }
    Ok(trials)
}

/// One line on the decision: `hflip refused (mean 34.14 -> 34.61), shift kept (...)`.
pub fn summary(trials: &[AugmentTrial]) -> String {
    trials
        .iter()
        .map(|t| {
            format!(
                "{} {} (mean out-of-fold score {:.4} -> {:.4})",
                t.augment.name(),
                if t.kept { "kept" } else { "refused" },
                t.mean_without,
                t.mean_with
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The augmentations kept by `trials`, in order.
pub fn kept(trials: &[AugmentTrial]) -> Vec<Augment> {
    trials
        .iter()
        .filter(|t| t.kept)
        .map(|t| t.augment)
        .collect()
}

/// The bank a registration keeps after the augmentation decision.
pub(crate) struct AugmentedBank {
    pub bank: Vec<f32>,
    pub index: BankIndex,
    /// The normal image each prototype (or the augmented copy it came from) belongs to.
    pub source_image: Vec<u32>,
    pub trials: Vec<AugmentTrial>,
}

impl Detector {
    /// Patch features (`[n * grid², dim]`) of `view` of each image.
    fn embed_view(&self, images: &[NormalImage], view: View) -> Result<Vec<f32>> {
        let size = self.config.features.input_size;
        let per = self.features.grid() * self.features.grid() * self.features.dim();
        let mut out = Vec::with_capacity(images.len() * per);
        for chunk in images.chunks(BATCH) {
            let x = load_inputs(chunk, size)?;
            let x = Tensor::new(apply(view, &x.f32s(), size), &[chunk.len(), 3, size, size])?;
            let f = self.extract_features(&x)?;
            check_finite(&f, per, "", "backbone").map_err(|e| name_image(e, chunk))?;
            out.extend_from_slice(&f);
        }
        Ok(out)
    }

    /// Decides which of `candidates` to add to the bank of `class` (see the module docs) and
    /// returns that bank. `pool` holds the patch features of the normal images `images`
    /// (`[n * grid², dim]`, un-augmented); the bank keeps the coreset size of `pool` alone.
    pub(crate) fn augmented_bank(
        &self,
        class: &str,
        images: &[NormalImage],
        pool: &[f32],
        candidates: &[Augment],
    ) -> Result<AugmentedBank> {
        let dim = self.features.dim();
        let grid = self.features.grid();
        let per = grid * grid;
        let n = images.len();
        let rows = pool.len() / dim;
        let size =
            ((rows as f64 * self.config.coreset.ratio as f64).round() as usize).clamp(1, rows);
        let input = self.config.features.input_size;
        // Features of the candidates' views, embedded when first needed and dropped once the
        // candidate is refused; the banks of the kept set and of the set being tried.
        let mut views: Vec<(Augment, Vec<f32>)> = Vec::new();
        let mut banks: Vec<(Vec<Augment>, AugmentedBank)> = Vec::new();
        let mut tried = 0;
        let trials = choose(candidates, |set| {
            // `set` is the kept set plus the candidate tried (nothing for the baseline).
            let kept_so_far = &set[..set.len().saturating_sub(1)];
            banks.retain(|(s, _)| !set.is_empty() && s == kept_so_far);
            views.retain(|(a, _)| set.contains(a));
            let mut all = pool.to_vec();
            for &a in set {
                if !views.iter().any(|(b, _)| *b == a) {
                    let mut f = Vec::new();
                    for v in a.views(input, grid) {
                        f.extend(self.embed_view(images, v)?);
                    }
                    views.push((a, f));
                }
                let f = &views
                    .iter()
                    .find(|(b, _)| *b == a)
                    .expect("embedded above")
                    .1;
                all.extend_from_slice(f);
            }
            // Pool rows are [originals, then each view's copies]: row r is of image (r / per) % n.
            let (bank, index, sel) = self.build_bank_of_size(&all, Some(size));
            drop(all);
            let source_image: Vec<u32> = sel.iter().map(|&r| ((r / per) % n) as u32).collect();
            let full = FullBank {
                bank: &bank,
                source_image: &source_image,
            };
            let scores = self.out_of_fold_distance(class, n, pool, &full)?;
            let mean = scores.iter().map(|&v| v as f64).sum::<f64>() / scores.len().max(1) as f64;
            banks.push((
                set.to_vec(),
                AugmentedBank {
                    bank,
                    index,
                    source_image,
                    trials: Vec::new(),
                },
            ));
            tried += 1;
            self.report("augment", tried, candidates.len() + 1);
            Ok(mean as f32)
        })?;
        let keep = kept(&trials);
        let (_, mut chosen) = banks
            .into_iter()
            .find(|(s, _)| *s == keep)
            .expect("the kept set's bank is the last kept or the last tried");
        chosen.trials = trials;
        Ok(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_move_pixels_where_they_should() {
        // One 3x3 plane (x3 channels) with distinct values.
        let s = 3;
        let x: Vec<f32> = (0..27).map(|v| v as f32).collect();
        let at = |v: &[f32], c: usize, i: usize, j: usize| v[c * 9 + i * s + j];
        let h = apply(View::Hflip, &x, s);
        assert_eq!(at(&h, 1, 0, 0), at(&x, 1, 0, 2));
        let v = apply(View::Vflip, &x, s);
        assert_eq!(at(&v, 2, 0, 1), at(&x, 2, 2, 1));
        // Counter-clockwise 90: the top-right corner goes to the top-left.
        let r = apply(View::Rot(1), &x, s);
        assert_eq!(at(&r, 0, 0, 0), at(&x, 0, 0, 2));
        assert_eq!(at(&r, 0, 2, 0), at(&x, 0, 0, 0));
        // Rot(2) = hflip o vflip; four quarter turns are the identity.
        assert_eq!(apply(View::Rot(2), &x, s), apply(View::Hflip, &v, s));
        assert_eq!(apply(View::Rot(1), &apply(View::Rot(3), &x, s), s), x);
        // A shift down-right by 1 replicates the top row / left column.
        let sh = apply(View::Shift(1, 1), &x, s);
        assert_eq!(at(&sh, 0, 2, 2), at(&x, 0, 1, 1));
        assert_eq!(at(&sh, 0, 0, 0), at(&x, 0, 0, 0));
        assert_eq!(at(&sh, 0, 1, 0), at(&x, 0, 0, 0));
        assert_eq!(
            Augment::Shift.views(224, 28),
            vec![View::Shift(4, 4), View::Shift(-4, -4)]
        );
        assert_eq!(Augment::Rot90.views(224, 28).len(), 3);
    }

    #[test]
    fn choose_keeps_what_lowers_the_mean_greedily_and_deterministically() {
        // Baseline 1.0; hflip helps (0.9), vflip hurts on top of it (0.95), rot90 helps (0.8),
        // shift equal (0.8: not lower, refused).
        let oof = |set: &[Augment]| -> Result<f32> {
            Ok(match set {
                [] => 1.0,
                [Augment::Hflip] => 0.9,
                [Augment::Hflip, Augment::Vflip] => 0.95,
                [Augment::Hflip, Augment::Rot90] => 0.8,
                [Augment::Hflip, Augment::Rot90, Augment::Shift] => 0.8,
                other => panic!("unexpected set {other:?}"),
            })
        };
        let t = choose(&ALL, oof).unwrap();
        assert_eq!(kept(&t), vec![Augment::Hflip, Augment::Rot90]);
        assert_eq!(
            t.iter()
                .map(|t| (t.mean_without, t.mean_with))
                .collect::<Vec<_>>(),
            vec![(1.0, 0.9), (0.9, 0.95), (0.9, 0.8), (0.8, 0.8)]
        );
        assert_eq!(t, choose(&ALL, oof).unwrap(), "same inputs, same decision");
        assert!(choose(&ALL, |_| Ok(f32::NAN)).is_err(), "NaN never decides");
        assert!(choose(&[], oof).unwrap().is_empty());
    }

    #[test]
    fn lists_parse() {
        assert_eq!(parse_list("none").unwrap(), vec![]);
        assert_eq!(parse_list("all").unwrap(), ALL.to_vec());
        assert_eq!(
            parse_list("rot90,hflip").unwrap(),
            vec![Augment::Rot90, Augment::Hflip]
        );
        assert!(parse_list("hflip,hflip").is_err());
        assert!(parse_list("rotate").is_err());
    }
}
