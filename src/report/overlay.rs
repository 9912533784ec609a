//! Heatmap overlays: an image with its anomaly map blended on top, as `pmad inspect --out`
//! writes them and as the eval report shows its worst cases.

use crate::data::RgbImage;
use crate::detector::scoring::AnomalyMap;
use crate::error::{Error, Result};
use std::path::Path;

/// Blue -> cyan -> yellow -> red ramp for t in [0, 1].
fn colormap(t: f32) -> [f32; 3] {
    let t = t.clamp(0.0, 1.0);
    let r = (1.5 - (4.0 * t - 3.0).abs()).clamp(0.0, 1.0);
    let g = (1.5 - (4.0 * t - 2.0).abs()).clamp(0.0, 1.0);
    let b = (1.5 - (4.0 * t - 1.0).abs()).clamp(0.0, 1.0);
    [r * 255.0, g * 255.0, b * 255.0]
}

/// `img` with `values` (one per pixel of `img`, row-major) blended on top. Colour scale: 0 at
/// zero, full red at twice the class's calibrated threshold — fixed per class (not per run:
/// `inspect --threshold` does not change it), so overlays are comparable across images and runs.
/// Without a usable threshold the scale is the image's own `score`.
pub fn blend(img: &RgbImage, values: &[f32], threshold: f32, score: f32) -> RgbImage {
    let scale = if threshold.is_finite() && threshold > 0.0 {
        2.0 * threshold
    } else {
        score.max(1e-6)
    };
    let mut pixels = vec![0u8; values.len() * 3];
    for (i, (&v, px)) in values.iter().zip(pixels.chunks_exact_mut(3)).enumerate() {
        let t = v / scale;
        let c = colormap(t);
        let alpha = 0.25 + 0.35 * t.clamp(0.0, 1.0);
        for ch in 0..3 {
            px[ch] = ((1.0 - alpha) * img.pixels[i * 3 + ch] as f32 + alpha * c[ch]).round() as u8;
        }
    }
    RgbImage {
        width: img.width,
        height: img.height,
        pixels,
    }
}

/// The image at the map's size with the map blended on top ([`blend`]).
pub fn overlay(img: &RgbImage, map: &AnomalyMap, threshold: f32) -> RgbImage {
    blend(
        &img.resize(map.size, map.size),
        &map.values,
        threshold,
        map.score,
    )
}

/// `img` encoded as PNG; `path` names it in errors.
pub fn encode_png(img: &RgbImage, path: &Path) -> Result<Vec<u8>> {
    let buf = image::RgbImage::from_raw(img.width as u32, img.height as u32, img.pixels.clone())
        .ok_or_else(|| Error::invalid("PNG buffer size"))?;
    let mut bytes = Vec::new();
    buf.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(|e| Error::format(path, format!("cannot encode PNG: {e}")))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_is_map_sized_and_reddens_high_scores() {
        let img = RgbImage {
            width: 4,
            height: 2,
            pixels: vec![128; 4 * 2 * 3],
        };
        let map = AnomalyMap {
            size: 2,
            values: vec![0.0, 0.0, 0.0, 2.0],
            score: 2.0,
        };
        let o = overlay(&img, &map, 1.0);
        assert_eq!((o.width, o.height, o.pixels.len()), (2, 2, 12));
        // Pixel 3 is at twice the threshold: full red blended in, red above blue.
        assert!(o.pixels[9] > o.pixels[11], "{:?}", o.pixels);
        // Pixel 0 is at zero: blue blended in.
        assert!(o.pixels[2] > o.pixels[0], "{:?}", o.pixels);
        let png = encode_png(&o, Path::new("x.png")).unwrap();
        assert_eq!(&png[1..4], b"PNG");
    }
}
