//! Image decoding and preprocessing.
//!
//! Resizing follows Pillow's `Image.resize(..., BILINEAR)`, which the reference pipeline used:
//! a separable triangle filter whose support *widens* by the scale factor when shrinking
//! (antialiasing), horizontal pass first, each pass rounded back to 8 bits. Using plain
//! 4-tap bilinear instead would alias on 512 -> 224 downsizing and shift the features.

#![warn(missing_docs)]

use crate::error::{Error, ImageOrigin, Result};
use crate::tensor::Tensor;
use std::path::Path;

/// An 8-bit RGB image, row-major, 3 bytes per pixel.
#[derive(Clone, Debug)]
pub struct RgbImage {
    /// Pixels per row.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// `width * height * 3` bytes: R, G, B of each pixel, rows top to bottom.
    pub pixels: Vec<u8>,
}

/// Decodes any PNG/JPEG/BMP/TIFF (gray, gray+alpha, RGB, RGBA, 8 or 16 bits) to 8-bit RGB.
/// Alpha is dropped; 16-bit samples are scaled to 8 bits; gray is repeated into R, G and B.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_rgb(&bytes, path)
}

/// [`load_rgb`] of bytes already in memory; `origin` names them in errors.
pub fn decode_rgb(bytes: &[u8], origin: &Path) -> Result<RgbImage> {
    let bad = |reason: String| Error::bad_image(ImageOrigin::File(origin.to_path_buf()), reason);
    let img =
        ::image::load_from_memory(bytes).map_err(|e| bad(format!("cannot decode image: {e}")))?;
    let rgb = img.to_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    if w == 0 || h == 0 {
        return Err(bad("image has no pixels".to_string()));
    }
    Ok(RgbImage {
        width: w,
        height: h,
        pixels: rgb.into_raw(),
    })
}

impl RgbImage {
    /// Checks that the image has pixels and exactly `width * height * 3` bytes of them.
    /// `RgbImage`'s fields are public, so the detector checks every image it is given with
    /// this before resizing (which indexes the buffer by the stated size).
    pub fn validate(&self) -> Result<()> {
        let needed = self
            .width
            .checked_mul(self.height)
            .and_then(|n| n.checked_mul(3));
        match needed {
            _ if self.width == 0 || self.height == 0 => Err(Error::bad_image(
                ImageOrigin::Memory,
                format!("image has no pixels ({}x{})", self.width, self.height),
            )),
            Some(n) if n == self.pixels.len() => Ok(()),
            _ => Err(Error::bad_image(
                ImageOrigin::Memory,
                format!(
                    "image {}x{} RGB needs {} bytes, has {}",
                    self.width,
                    self.height,
                    needed.map_or("too many".to_string(), |n| n.to_string()),
                    self.pixels.len()
                ),
            )),
        }
    }

    /// The centred square of side `min(w, h)`, offset `((w-c)/2, (h-c)/2)` as Pillow crops.
    pub fn center_square(&self) -> RgbImage {
        let c = self.width.min(self.height);
        let (x0, y0) = ((self.width - c) / 2, (self.height - c) / 2);
        let mut pixels = Vec::with_capacity(c * c * 3);
        for y in y0..y0 + c {
            let row = (y * self.width + x0) * 3;
            pixels.extend_from_slice(&self.pixels[row..row + c * 3]);
        }
        RgbImage {
            width: c,
            height: c,
            pixels,
        }
    }

    /// Pillow-style antialiased bilinear resize.
    ///
    /// # Panics
    /// If the buffer is shorter than the stated size: check outside input with
    /// [`validate`](Self::validate) first (the detector does).
    pub fn resize(&self, out_w: usize, out_h: usize) -> RgbImage {
        if out_w == self.width && out_h == self.height {
            return self.clone();
        }
        // Horizontal pass: [height, out_w]; then vertical: [out_h, out_w]. Each output is
        // its taps' weighted sum accumulated in tap order from 0 (so the bytes are the same
        // whatever the loop nesting), rounded to a byte after each pass as Pillow does.
        let hx = filter_taps(self.width, out_w);
        let mut tmp = vec![0u8; self.height * out_w * 3];
        let row_len = self.width * 3;
        for (row, out) in self
            .pixels
            .chunks_exact(row_len)
            .zip(tmp.chunks_exact_mut(out_w * 3))
        {
            for ((start, weights), px) in hx.iter().zip(out.chunks_exact_mut(3)) {
                let src = &row[start * 3..(start + weights.len()) * 3];
                let mut acc = [0.0f32; 3];
                for (wt, s) in weights.iter().zip(src.chunks_exact(3)) {
                    for ch in 0..3 {
                        acc[ch] += wt * s[ch] as f32;
                    }
                }
                for ch in 0..3 {
                    px[ch] = round_u8(acc[ch]);
                }
            }
        }
        // Vertical: whole rows per tap (contiguous, vectorised).
        let vy = filter_taps(self.height, out_h);
        let line = out_w * 3;
        let mut pixels = vec![0u8; out_h * line];
        let mut acc = vec![0.0f32; line];
        for ((start, weights), out) in vy.iter().zip(pixels.chunks_exact_mut(line)) {
            acc.fill(0.0);
            for (i, &wt) in weights.iter().enumerate() {
                let src = &tmp[(start + i) * line..(start + i + 1) * line];
                acc.iter_mut()
                    .zip(src)
                    .for_each(|(a, &v)| *a += wt * v as f32);
            }
            for (o, &a) in out.iter_mut().zip(&acc) {
                *o = round_u8(a);
            }
        }
        RgbImage {
            width: out_w,
            height: out_h,
            pixels,
        }
    }
}

/// Round half up to a byte, saturating: `floor(v + 0.5)` clamped to 0..=255. The cast
/// truncates toward zero, which is the floor for every value the clamp lets through (a
/// negative one becomes 0 either way; NaN becomes 0), so no `floorf` call is needed — the
/// baseline x86-64 target has no rounding instruction, and the call was 3% of `inspect`.
fn round_u8(v: f32) -> u8 {
    (v + 0.5).clamp(0.0, 255.0) as u8
}

/// Pillow's `precompute_coeffs` for the bilinear (triangle) filter: for every output index,
/// the first input index and the normalised weights of the inputs it reads.
fn filter_taps(n_in: usize, n_out: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = n_in as f64 / n_out as f64;
    let filter_scale = scale.max(1.0);
    let support = filter_scale; // triangle support 1.0, widened when shrinking
    (0..n_out)
        .map(|i| {
            let center = (i as f64 + 0.5) * scale;
            let lo = ((center - support + 0.5).floor().max(0.0)) as usize;
            let hi = ((center + support + 0.5).floor() as usize).min(n_in);
            let mut w: Vec<f64> = (lo..hi)
                .map(|x| {
                    let t = ((x as f64 - center + 0.5) / filter_scale).abs();
                    (1.0 - t).max(0.0)
                })
                .collect();
            let s: f64 = w.iter().sum();
            if s > 0.0 {
                w.iter_mut().for_each(|v| *v /= s);
            }
            (lo, w.into_iter().map(|v| v as f32).collect())
        })
        .collect()
}

/// `[3, h, w]` float planes with `(x - mean) / std` (EfficientNet-Lite: mean 127, std 128).
pub fn to_network_input(img: &RgbImage, mean: f32, std: f32) -> Vec<f32> {
    let n = img.width * img.height;
    let mut out = vec![0.0; 3 * n];
    for (p, px) in img.pixels.chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * n + p] = (px[c] as f32 - mean) / std;
        }
    }
    out
}

/// The classification preprocessing of the fixtures: centre square crop, Pillow bilinear
/// resize to `size`, `(x - 127) / 128`, NCHW with batch 1.
pub fn classification_input(img: &RgbImage, size: usize) -> Tensor {
    let sq = img.center_square().resize(size, size);
    Tensor::from_parts(to_network_input(&sq, 127.0, 128.0), vec![1, 3, size, size])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_u8_is_floor_of_v_plus_half_clamped() {
        let floor_form = |v: f32| (v + 0.5).floor().clamp(0.0, 255.0) as u8;
        let mut v = -3.0f32;
        while v < 259.0 {
            assert_eq!(round_u8(v), floor_form(v), "{v}");
            v += 0.03125;
        }
        for v in [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.5,
            -0.49,
            254.5,
            254.49,
            1e9,
        ] {
            assert_eq!(round_u8(v), floor_form(v), "{v}");
        }
    }

    #[test]
    fn resize_keeps_constant_and_weights_normalise() {
        let img = RgbImage {
            width: 50,
            height: 30,
            pixels: vec![77; 50 * 30 * 3],
        };
        let r = img.resize(20, 17);
        assert!(r.pixels.iter().all(|&p| p == 77));
        for (_, w) in filter_taps(512, 224)
            .iter()
            .chain(filter_taps(7, 19).iter())
        {
            assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn validate_catches_a_buffer_that_disagrees_with_the_size() {
        let img = |width, height, n| RgbImage {
            width,
            height,
            pixels: vec![0; n],
        };
        assert!(img(2, 2, 12).validate().is_ok());
        assert!(img(2, 2, 11).validate().is_err());
        assert!(img(2, 2, 13).validate().is_err());
        assert!(img(0, 2, 0).validate().is_err());
        assert!(img(usize::MAX, 2, 0).validate().is_err());
    }

    #[test]
    fn center_square_offsets() {
        let mut px = Vec::new();
        for y in 0..4u8 {
            for x in 0..6u8 {
                px.extend([x, y, 0]);
            }
        }
        let img = RgbImage {
            width: 6,
            height: 4,
            pixels: px,
        };
        let c = img.center_square();
        assert_eq!((c.width, c.height), (4, 4));
        assert_eq!(&c.pixels[..3], &[1, 0, 0]);
    }
}
