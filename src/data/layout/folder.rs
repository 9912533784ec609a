//! The plain folder layout, one class per folder, as a practitioner sorts images by hand:
//!
//! ```text
//! DIR/good/*     normal images (registration reads these; eval scores them as normal)
//! DIR/bad/*      abnormal images (optional; eval needs some)
//! DIR/masks/STEM.png or STEM_mask.png    optional mask of bad/STEM.* (any image format)
//! ```
//!
//! Masks are all or nothing: without them eval reports image metrics only.

use crate::data::dataset::{
    ClassData, GOOD, TestItem, check_mask_size, check_masks_all_or_none, find_image, image_size,
    list_images,
};
use crate::error::{Error, Result};
use std::path::Path;

/// The folder of normal images (also what `--layout auto` looks for).
pub const GOOD_DIR: &str = "good";
/// The folder of abnormal images, and their defect name.
pub const BAD_DIR: &str = "bad";
/// The optional folder of masks.
pub const MASK_DIR: &str = "masks";

/// Lists and checks `dir` as class `class`; with `with_test`, `bad/` and `masks/` too.
pub fn open(dir: &Path, class: &str, with_test: bool) -> Result<ClassData> {
    if !dir.is_dir() {
        return Err(Error::format(dir, "dataset folder not found"));
    }
    if class.is_empty() || Path::new(class).file_name() != Some(class.as_ref()) {
        return Err(Error::invalid(format!(
            "class name '{class}' must be a plain name (no path separators)"
        )));
    }
    let good_dir = dir.join(GOOD_DIR);
    if !good_dir.is_dir() {
        return Err(Error::format(
            &good_dir,
            "missing folder of normal images (a folder dataset needs good/, and bad/ to evaluate)",
        ));
    }
    let good = list_images(&good_dir)?;
    if good.is_empty() {
        return Err(Error::format(
            &good_dir,
            "no images in the folder of normal images",
        ));
    }
    for p in &good {
        image_size(p)?;
    }
    let mut data = ClassData {
        name: class.to_string(),
        dir: dir.to_path_buf(),
        train: good.clone(),
        test: Vec::new(),
    };
    if !with_test {
        return Ok(data);
    }
    let mut test: Vec<TestItem> = good
        .into_iter()
        .map(|path| TestItem {
            path,
            defect: GOOD.to_string(),
            mask: None,
        })
        .collect();
    let bad_dir = dir.join(BAD_DIR);
    let mask_dir = dir.join(MASK_DIR);
    if bad_dir.is_dir() {
        for path in list_images(&bad_dir)? {
            let size = image_size(&path)?;
            let stem = path.file_stem().unwrap_or_default().to_string_lossy();
            let mask = find_image(&mask_dir, &stem)
                .or_else(|| find_image(&mask_dir, &format!("{stem}_mask")));
            if let Some(m) = &mask {
                check_mask_size(m, &path, size)?;
            }
            test.push(TestItem {
                path,
                defect: BAD_DIR.to_string(),
                mask,
            });
        }
    }
    check_masks_all_or_none(&test)?;
    data.test = test;
    Ok(data)
}
