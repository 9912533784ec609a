//! Per-image outputs of `pmad inspect` at the input image's own size: the anomaly map brought
//! to `width x height`, its encodings (16-bit PNG, `.npy`), the binary defect mask and its
//! regions. Pure functions from values to bytes; the CLI decides where the bytes go.

use crate::detector::scoring::AnomalyMap;
use crate::error::{Error, Result};
use crate::metrics::label_components;
use crate::ops::resize::bilinear_plane;

/// The map (square, `map.size` pixels a side, covering the whole image) bilinearly
/// resampled to the image's `width x height`, row-major. The backbone sees the whole image
/// squeezed to a square, so stretching the map back puts each value over the pixels it
/// describes.
pub fn upsample_map(map: &AnomalyMap, width: usize, height: usize) -> Vec<f32> {
    let mut out = vec![0.0; width * height];
    if width > 0 && height > 0 && map.size > 0 {
        bilinear_plane(&map.values, map.size, map.size, height, width, &mut out);
    }
    out
}

/// Encodes a PNG (`color` one of the image crate's types) and names `what` in errors.
fn encode_png<P, C>(buf: image::ImageBuffer<P, C>, what: &str) -> Result<Vec<u8>>
where
    P: image::Pixel + image::PixelWithColorType,
    [P::Subpixel]: image::EncodableLayout,
    C: std::ops::Deref<Target = [P::Subpixel]>,
{
    let mut bytes = Vec::new();
    buf.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(|e| Error::invalid(format!("cannot encode the {what} PNG: {e}")))?;
    Ok(bytes)
}

/// A map as a 16-bit grayscale PNG, with what it takes to read the values back.
pub struct Png16Map {
    pub bytes: Vec<u8>,
    /// `map = offset + png / 65535 * scale`.
    pub scale: f32,
    /// The map's minimum when it is negative (only `flow-nll` maps can be), else 0, so the
    /// usual reading is `map = png / 65535 * scale`.
    pub offset: f32,
}

/// Encodes `values` (`height x width`, row-major, finite) as a 16-bit PNG spanning
/// `[offset, offset + scale]`: `scale` is the map's own range above `offset` (its max for the
/// usual non-negative maps), so each image uses all 65536 levels (a quantisation step of
/// `scale / 65535`). A constant map gets scale 1 (every pixel 0 above the offset).
pub fn png16_map(values: &[f32], width: usize, height: usize) -> Result<Png16Map> {
    check_plane(values, width, height, "map")?;
    let (lo, hi) = values
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let offset = if lo < 0.0 { lo } else { 0.0 };
    let scale = if hi - offset > 0.0 { hi - offset } else { 1.0 };
    let px: Vec<u16> = values
        .iter()
        .map(|&v| ((v - offset) / scale * 65535.0).round().clamp(0.0, 65535.0) as u16)
        .collect();
    let buf =
        image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_raw(width as u32, height as u32, px)
            .ok_or_else(|| Error::invalid("16-bit map buffer size"))?;
    Ok(Png16Map {
        bytes: encode_png(buf, "16-bit map")?,
        scale,
        offset,
    })
}

/// Encodes `values` (`height x width`, row-major) as a NumPy `.npy` file, format v1.0:
/// little-endian float32, C order, shape `(height, width)`. The header is padded with
/// spaces and ends in a newline so that the data starts at a multiple of 64 bytes, as numpy
/// writes it.
pub fn npy_bytes(values: &[f32], width: usize, height: usize) -> Result<Vec<u8>> {
    check_plane(values, width, height, "map")?;
    let dict =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({height}, {width}), }}");
    // magic (6) + version (2) + header length (2) + dict + padding + '\n'
    let unpadded = 10 + dict.len() + 1;
    let header_len = dict.len() + 1 + (64 - unpadded % 64) % 64;
    let header_len16 =
        u16::try_from(header_len).map_err(|_| Error::invalid("npy header too long"))?;
    let mut out = Vec::with_capacity(10 + header_len + values.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&header_len16.to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.resize(10 + header_len - 1, b' ');
    out.push(b'\n');
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

/// Defective pixels: map value strictly above the pixel threshold (as an image is anomalous
/// strictly above its threshold).
pub fn defect_mask(values: &[f32], pixel_threshold: f32) -> Vec<bool> {
    values.iter().map(|&v| v > pixel_threshold).collect()
}

/// The mask as an 8-bit grayscale PNG: 255 defective, 0 not.
pub fn mask_png(mask: &[bool], width: usize, height: usize) -> Result<Vec<u8>> {
    check_plane(mask, width, height, "mask")?;
    let px: Vec<u8> = mask.iter().map(|&m| if m { 255 } else { 0 }).collect();
    let buf = image::GrayImage::from_raw(width as u32, height as u32, px)
        .ok_or_else(|| Error::invalid("mask buffer size"))?;
    encode_png(buf, "mask")
}

/// One 8-connected region of a defect mask, in image pixel coordinates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Region {
    /// Bounding box: left column, top row, width, height.
    pub bbox: [usize; 4],
    /// Defective pixels in the region.
    pub pixels: usize,
}

/// The mask's 8-connected regions, largest (most pixels) first; equal sizes keep raster
/// order of their first pixel.
pub fn regions(mask: &[bool], width: usize, height: usize) -> Result<Vec<Region>> {
    let c = label_components(mask, height, width)?;
    // Per label: min x, min y, max x, max y.
    let mut boxes = vec![[usize::MAX, usize::MAX, 0, 0]; c.count()];
    for (i, &l) in c.labels.iter().enumerate() {
        if l == 0 {
            continue;
        }
        let b = &mut boxes[l as usize - 1];
        let (y, x) = (i / width, i % width);
        *b = [b[0].min(x), b[1].min(y), b[2].max(x), b[3].max(y)];
    }
    let mut out: Vec<Region> = boxes
        .iter()
        .zip(&c.sizes)
        .map(|(b, &pixels)| Region {
            bbox: [b[0], b[1], b[2] - b[0] + 1, b[3] - b[1] + 1],
            pixels,
        })
        .collect();
    // Stable: ties stay in raster order.
    out.sort_by_key(|r| std::cmp::Reverse(r.pixels));
    Ok(out)
}

/// An error unless `values` holds `height x width` entries.
fn check_plane<T>(values: &[T], width: usize, height: usize, what: &str) -> Result<()> {
    if width.checked_mul(height) != Some(values.len()) || values.is_empty() {
        return Err(Error::shape(format!(
            "{what} of {} values is not {width}x{height}",
            values.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_v1_aligned_and_data_little_endian() {
        let v = [1.5f32, -2.0, 0.0, 3.25, 7.0, 1e-3];
        let b = npy_bytes(&v, 3, 2).unwrap();
        assert_eq!(&b[..8], b"\x93NUMPY\x01\x00");
        let hl = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + hl) % 64, 0, "data aligned to 64 bytes");
        let header = std::str::from_utf8(&b[10..10 + hl]).unwrap();
        assert!(header.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"));
        assert!(header.ends_with('\n'));
        let data: Vec<f32> = b[10 + hl..]
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(data, v);
        assert!(npy_bytes(&v, 4, 2).is_err(), "wrong shape");
    }

    #[test]
    fn png16_reads_back_within_one_level() {
        let v: Vec<f32> = (0..12).map(|i| i as f32 * 0.37).collect();
        let p = png16_map(&v, 4, 3).unwrap();
        assert_eq!((p.scale, p.offset), (11.0 * 0.37, 0.0));
        let img = image::load_from_memory(&p.bytes).unwrap().into_luma16();
        assert_eq!(img.dimensions(), (4, 3));
        for (x, px) in v.iter().zip(img.pixels()) {
            let back = p.offset + px.0[0] as f32 / 65535.0 * p.scale;
            assert!((back - x).abs() <= p.scale / 65535.0, "{back} vs {x}");
        }
        // Negative values (flow-nll) shift by the minimum; a constant map stays readable.
        let p = png16_map(&[-1.0, 1.0], 2, 1).unwrap();
        assert_eq!((p.scale, p.offset), (2.0, -1.0));
        let p = png16_map(&[0.0; 4], 2, 2).unwrap();
        assert_eq!((p.scale, p.offset), (1.0, 0.0));
    }

    #[test]
    fn regions_are_8_connected_boxes_largest_first() {
        #[rustfmt::skip]
        let rows = [
            "#.....",
            ".#..##",
            "....##",
            "...###",
        ];
        let m: Vec<bool> = rows
            .iter()
            .flat_map(|r| r.chars().map(|c| c == '#'))
            .collect();
        let r = regions(&m, 6, 4).unwrap();
        assert_eq!(
            r,
            vec![
                Region {
                    bbox: [3, 1, 3, 3],
                    pixels: 7
                },
                Region {
                    bbox: [0, 0, 2, 2],
                    pixels: 2
                },
            ]
        );
        assert!(regions(&[false; 6], 3, 2).unwrap().is_empty());
        assert!(regions(&[true; 6], 4, 2).is_err());
    }

    #[test]
    fn mask_is_strictly_above_threshold_and_upsampling_keeps_size() {
        assert_eq!(defect_mask(&[0.5, 1.0, 1.5], 1.0), vec![false, false, true]);
        let map = AnomalyMap {
            size: 2,
            values: vec![0.0, 1.0, 2.0, 3.0],
            score: 3.0,
        };
        let up = upsample_map(&map, 5, 3);
        assert_eq!(up.len(), 15);
        assert_eq!(up[0], 0.0);
        assert_eq!(up[14], 3.0);
        let png = mask_png(&[true, false, false, true], 2, 2).unwrap();
        let img = image::load_from_memory(&png).unwrap().into_luma8();
        assert_eq!(img.into_raw(), vec![255, 0, 0, 255]);
    }
}
