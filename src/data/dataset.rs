//! Reader for datasets in the MVTec-AD folder layout:
//!
//! ```text
//! ROOT/CLASS/train/good/*.png                     normal training images
//! ROOT/CLASS/test/good/*.png                      normal test images (never have masks)
//! ROOT/CLASS/test/DEFECT/*.png                    defective test images
//! ROOT/CLASS/ground_truth/DEFECT/STEM_mask.png    mask of test/DEFECT/STEM.*
//! ```
//!
//! (any of [`IMAGE_EXTENSIONS`] for images and masks), and the file checks every layout
//! reader shares (see [`crate::data::layout`] for the others).
//!
//! Opening a class checks the whole layout up front (every defect image has a mask of its own
//! size, every image header decodes) so a bad dataset fails before any model work starts, with
//! an error naming the file. File lists are sorted byte-wise by name, so every run sees the
//! same order on every machine.

use super::image::{load_rgb, to_network_input};
use crate::error::{Error, ImageOrigin, Result};
use std::path::{Path, PathBuf};

/// File extensions read as images and masks (the decoders compiled in: PNG, JPEG, BMP, TIFF).
pub const IMAGE_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "bmp", "tif", "tiff"];

/// The test folder of normal images, and the defect name of every normal test image.
pub const GOOD: &str = "good";

/// The per-class folder tree of MVTec AD, which BTAD shares with other names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tree {
    /// The folder of normal images under `train/` and `test/` (`good`; BTAD `ok`).
    pub normal: &'static str,
    /// What follows the image stem in its mask's name (`_mask`; BTAD nothing).
    pub mask_suffix: &'static str,
}

/// `CLASS/train/good`, `CLASS/test/DEFECT`, `CLASS/ground_truth/DEFECT/STEM_mask.png`.
pub const MVTEC: Tree = Tree {
    normal: GOOD,
    mask_suffix: "_mask",
};

/// One test image: its defect type (`good` for normal) and, for defects, its mask file.
#[derive(Clone, Debug, PartialEq)]
pub struct TestItem {
    pub path: PathBuf,
    pub defect: String,
    pub mask: Option<PathBuf>,
}

impl TestItem {
    /// Whether this is a defective (anomalous) image.
    pub fn is_defective(&self) -> bool {
        self.defect != GOOD
    }
}

/// The file lists of one class.
#[derive(Clone, Debug)]
pub struct ClassData {
    pub name: String,
    pub dir: PathBuf,
    pub train: Vec<PathBuf>,
    pub test: Vec<TestItem>,
}

impl ClassData {
    /// Lists and checks `root/class`. `test/` is optional (a class registered from normal
    /// images only has none); `train/good` must hold at least one image.
    pub fn open(root: &Path, class: &str) -> Result<ClassData> {
        ClassData::open_tree(root, class, MVTEC)
    }

    /// [`ClassData::open`] of a class in `tree`'s folder names.
    pub fn open_tree(root: &Path, class: &str, tree: Tree) -> Result<ClassData> {
        let mut data = ClassData::open_tree_train(root, class, tree)?;
        data.test = list_test(&data.dir, tree)?;
        Ok(data)
    }

    /// Lists and checks only `root/class/train/good` (what registration reads): a missing
    /// or incomplete test set does not matter here. `test` is left empty.
    pub fn open_train(root: &Path, class: &str) -> Result<ClassData> {
        ClassData::open_tree_train(root, class, MVTEC)
    }

    /// [`ClassData::open_train`] of a class in `tree`'s folder names.
    pub fn open_tree_train(root: &Path, class: &str, tree: Tree) -> Result<ClassData> {
        let dir = class_dir(root, class, tree)?;
        let train_dir = dir.join("train").join(tree.normal);
        if !train_dir.is_dir() {
            return Err(Error::format(
                &train_dir,
                "missing folder of normal training images",
            ));
        }
        let train = list_images(&train_dir)?;
        if train.is_empty() {
            return Err(Error::format(
                &train_dir,
                format!(
                    "no images ({}) in the training folder",
                    IMAGE_EXTENSIONS.join("/")
                ),
            ));
        }
        for p in &train {
            image_size(p)?;
        }
        Ok(ClassData {
            name: class.to_string(),
            dir,
            train,
            test: Vec::new(),
        })
    }

    /// The defect types of the test set, sorted, without `good`.
    pub fn defect_types(&self) -> Vec<String> {
        let mut d: Vec<String> = self
            .test
            .iter()
            .filter(|t| t.is_defective())
            .map(|t| t.defect.clone())
            .collect();
        d.sort();
        d.dedup();
        d
    }

    /// Whether the defective test images have masks (then pixel metrics can be computed).
    /// The readers allow all or none: [`check_masks_all_or_none`].
    pub fn has_masks(&self) -> bool {
        let mut bad = self.test.iter().filter(|t| t.is_defective()).peekable();
        bad.peek().is_some() && bad.all(|t| t.mask.is_some())
    }
}

/// Either every defective image has a mask or none has: a partly masked test set would make
/// pixel metrics over a subset look like metrics over the whole set.
pub fn check_masks_all_or_none(test: &[TestItem]) -> Result<()> {
    let masked = test.iter().filter(|t| t.mask.is_some()).count();
    let defective = test.iter().filter(|t| t.is_defective()).count();
    if masked == 0 || masked == defective {
        return Ok(());
    }
    match test.iter().find(|t| t.is_defective() && t.mask.is_none()) {
        Some(t) => Err(Error::format(
            &t.path,
            format!(
                "defective image has no mask while {masked} of the {defective} others have \
                 one (give every defective image a mask, or none for image metrics only)"
            ),
        )),
        None => Ok(()),
    }
}

/// The class folder, or an error naming it and listing the classes that do exist.
fn class_dir(root: &Path, class: &str, tree: Tree) -> Result<PathBuf> {
    if !root.is_dir() {
        return Err(Error::format(root, "dataset root folder not found"));
    }
    let dir = root.join(class);
    let plain_name = !class.is_empty() && Path::new(class).file_name() == Some(class.as_ref());
    if plain_name && dir.is_dir() {
        return Ok(dir);
    }
    let known = list_classes_in(root, tree)?;
    let known = if known.is_empty() {
        "none".to_string()
    } else {
        known.join(", ")
    };
    Err(Error::format(
        &dir,
        format!("unknown class '{class}' (classes in this root: {known})"),
    ))
}

/// The class folders under `root` (those with a `train/good` folder), sorted.
pub fn list_classes(root: &Path) -> Result<Vec<String>> {
    list_classes_in(root, MVTEC)
}

/// The class folders under `root` with a `train/NORMAL` folder, sorted.
pub fn list_classes_in(root: &Path, tree: Tree) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for path in sorted_entries(root)? {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !name.starts_with('.') && path.join("train").join(tree.normal).is_dir() {
            names.push(name.to_string());
        }
    }
    Ok(names)
}

/// The test images of a class folder with their masks, every mask checked to exist and to
/// have the size of its image.
fn list_test(dir: &Path, tree: Tree) -> Result<Vec<TestItem>> {
    let test_dir = dir.join("test");
    if !test_dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut items = Vec::new();
    for defect_dir in sorted_entries(&test_dir)? {
        if !defect_dir.is_dir() {
            continue;
        }
        let Some(defect) = defect_dir.file_name().and_then(|n| n.to_str()) else {
            return Err(Error::format(
                &defect_dir,
                "defect folder name is not valid UTF-8",
            ));
        };
        let normal = defect == tree.normal;
        for path in list_images(&defect_dir)? {
            let size = image_size(&path)?;
            let mask = if normal {
                None
            } else {
                Some(find_mask(dir, defect, &path, size, tree)?)
            };
            items.push(TestItem {
                path,
                defect: if normal { GOOD } else { defect }.to_string(),
                mask,
            });
        }
    }
    Ok(items)
}

/// `ground_truth/DEFECT/STEM_mask.png` (or another image extension) for
/// `test/DEFECT/STEM.ext`, checked.
fn find_mask(
    dir: &Path,
    defect: &str,
    image: &Path,
    size: (u32, u32),
    tree: Tree,
) -> Result<PathBuf> {
    let stem = image.file_stem().unwrap_or_default().to_string_lossy();
    let gt = dir.join("ground_truth").join(defect);
    let name = format!("{stem}{}", tree.mask_suffix);
    let Some(mask) = find_image(&gt, &name) else {
        return Err(Error::format(
            image,
            format!(
                "defect image has no mask (expected {})",
                gt.join(format!("{name}.png")).display()
            ),
        ));
    };
    check_mask_size(&mask, image, size)?;
    Ok(mask)
}

/// `dir/STEM.EXT` for the first image extension (lower or upper case) that exists.
pub fn find_image(dir: &Path, stem: &str) -> Option<PathBuf> {
    IMAGE_EXTENSIONS
        .iter()
        .flat_map(|e| [e.to_string(), e.to_ascii_uppercase()])
        .map(|e| dir.join(format!("{stem}.{e}")))
        .find(|p| p.is_file())
}

/// A mask must have the size of its image (`size`, already read from the image header).
pub fn check_mask_size(mask: &Path, image: &Path, size: (u32, u32)) -> Result<()> {
    let msize = image_size(mask)?;
    if msize != size {
        return Err(Error::format(
            mask,
            format!(
                "mask is {}x{} but its image {} is {}x{}",
                msize.0,
                msize.1,
                image.display(),
                size.0,
                size.1
            ),
        ));
    }
    Ok(())
}

/// Image files (by extension, case-insensitive) directly in `dir`, sorted by name.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(sorted_entries(dir)?
        .into_iter()
        .filter(|p| {
            let ext = p
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or("")
                .to_ascii_lowercase();
            IMAGE_EXTENSIONS.contains(&ext.as_str()) && p.is_file()
        })
        .collect())
}

/// Every entry of `dir`, sorted byte-wise by file name.
pub fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut paths = Vec::new();
    for entry in rd {
        paths.push(entry.map_err(|e| Error::io(dir, e))?.path());
    }
    paths.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(paths)
}

/// Width and height from the image header (cheap: the pixels are not decoded).
pub fn image_size(path: &Path) -> Result<(u32, u32)> {
    let reader = ::image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| Error::io(path, e))?;
    let size = reader.into_dimensions().map_err(|e| {
        Error::bad_image(
            ImageOrigin::File(path.into()),
            format!("cannot read image: {e}"),
        )
    })?;
    if size.0 == 0 || size.1 == 0 {
        return Err(Error::bad_image(
            ImageOrigin::File(path.into()),
            "image has no pixels",
        ));
    }
    Ok(size)
}

/// The network input of an image: any size resized straight to `size`x`size` (no crop; Pillow
/// antialiased bilinear, as the reference `Image.resize((224, 224), BILINEAR)`), as `[3, size,
/// size]` planes `(x - 127) / 128`. Also returns the original `(width, height)`.
pub fn load_image_input(path: &Path, size: usize) -> Result<(Vec<f32>, (usize, usize))> {
    if size == 0 {
        return Err(Error::invalid("network input size must be positive"));
    }
    let img = load_rgb(path)?;
    let original = (img.width, img.height);
    let resized = img.resize(size, size);
    Ok((to_network_input(&resized, 127.0, 128.0), original))
}

/// A mask read as grayscale, resized to `w`x`h` by nearest neighbour (Pillow `NEAREST`: output
/// pixel `i` reads source `floor((i + 0.5) * in / out)`), foreground = value > 127. Row-major.
/// A mask whose brightest pixel is 1..=127 holds labels, not intensities (0/1 masks saved from
/// arrays, VisA's 0/label masks): there foreground = nonzero, where > 127 would find none.
pub fn load_mask(path: &Path, w: usize, h: usize) -> Result<Vec<bool>> {
    if w == 0 || h == 0 {
        return Err(Error::invalid("mask size must be positive"));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let img = ::image::load_from_memory(&bytes)
        .map_err(|e| Error::format(path, format!("cannot decode mask: {e}")))?
        .to_luma8();
    let (iw, ih) = (img.width() as usize, img.height() as usize);
    if iw == 0 || ih == 0 {
        return Err(Error::format(path, "mask has no pixels"));
    }
    let src = img.as_raw();
    let max = src.iter().copied().max().unwrap_or(0);
    let cut = if (1..=127).contains(&max) { 0 } else { 127 };
    let xs = nearest_indices(iw, w);
    let ys = nearest_indices(ih, h);
    let mut out = Vec::with_capacity(w * h);
    for &y in &ys {
        out.extend(xs.iter().map(|&x| src[y * iw + x] > cut));
    }
    Ok(out)
}

/// Pillow's nearest-neighbour source index for each of `n_out` outputs.
fn nearest_indices(n_in: usize, n_out: usize) -> Vec<usize> {
    let scale = n_in as f64 / n_out as f64;
    (0..n_out)
        .map(|i| (((i as f64 + 0.5) * scale) as usize).min(n_in - 1))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_matches_pillow_picks() {
        // Pillow: 4 -> 2 reads pixels 1 and 3; 2 -> 4 reads 0,0,1,1; 3 -> 2 reads 0 and 2.
        assert_eq!(nearest_indices(4, 2), vec![1, 3]);
        assert_eq!(nearest_indices(2, 4), vec![0, 0, 1, 1]);
        assert_eq!(nearest_indices(3, 2), vec![0, 2]);
        assert_eq!(nearest_indices(256, 256), (0..256).collect::<Vec<_>>());
    }
}
