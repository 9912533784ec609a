//! The worst cases' thumbnails: the test image, its heatmap overlay and its ground-truth
//! mask, each a `THUMB`-pixel square PNG (the network's view: the image squashed to a square,
//! as the detector resizes it).

use super::overlay::{encode_png, overlay};
use crate::data::{RgbImage, load_mask, load_rgb};
use crate::detector::evaluate::ImageRecord;
use crate::detector::scoring::AnomalyMap;
use crate::error::Result;
use std::path::Path;

/// Side of a thumbnail in pixels.
pub const THUMB: usize = 128;

/// The file names (relative to the report folder) of one case's thumbnails.
pub struct CaseThumbnails {
    pub image: String,
    pub overlay: String,
    /// `None` for a defective image without a mask file (a folder dataset without masks);
    /// a normal image's mask is all background.
    pub mask: Option<String>,
}

/// Writes `DIR/REL_STEM_{image,overlay,mask}.png` for one case; returns their names under DIR.
pub fn write_case(
    dir: &Path,
    rel_stem: &str,
    record: &ImageRecord,
    map: &AnomalyMap,
    threshold: f32,
) -> Result<CaseThumbnails> {
    let img = load_rgb(&record.path)?;
    let write = |suffix: &str, thumb: &RgbImage| -> Result<String> {
        let name = format!("{rel_stem}_{suffix}.png");
        let path = dir.join(&name);
        let png = encode_png(thumb, &path)?;
        std::fs::write(&path, png).map_err(|e| crate::Error::io(&path, e))?;
        Ok(name)
    };
    let image = write("image", &img.resize(THUMB, THUMB))?;
    let overlay = write(
        "overlay",
        &overlay(&img, map, threshold).resize(THUMB, THUMB),
    )?;
    let mask = match (&record.mask, record.defective) {
        (Some(m), _) => Some(load_mask(m, THUMB, THUMB)?),
        (None, false) => Some(vec![false; THUMB * THUMB]),
        (None, true) => None,
    };
    let mask = match mask {
        Some(m) => {
            let pixels = m
                .iter()
                .flat_map(|&on| [if on { 255 } else { 0 }; 3])
                .collect();
            let thumb = RgbImage {
                width: THUMB,
                height: THUMB,
                pixels,
            };
            Some(write("mask", &thumb)?)
        }
        None => None,
    };
    Ok(CaseThumbnails {
        image,
        overlay,
        mask,
    })
}
