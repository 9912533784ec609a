//! The camera: a lighting gradient and vignette, global brightness and colour gain, then
//! sensor noise. Applied identically (same random draws) to a defective picture and to its
//! defect-free base, so they differ only where the defect is.

use super::canvas::Canvas;
use crate::data::image::RgbImage;
use crate::rng::Rng;

/// Lights, exposes and quantises `scene` to 8 bits; `gray` also drops the colour (luma).
pub fn camera(scene: &Canvas, rng: &mut Rng, gray: bool) -> RgbImage {
    let s = scene.size as f32;
    let (gx, gy) = (0.08 * rng.normal(), 0.08 * rng.normal());
    let vignette = rng.range(0.0, 0.25);
    let exposure = 1.0 + 0.04 * rng.normal();
    let gain = [
        1.0 + 0.01 * rng.normal(),
        1.0 + 0.01 * rng.normal(),
        1.0 + 0.01 * rng.normal(),
    ];
    let sigma = rng.range(0.004, 0.01);
    let mut out = Vec::with_capacity(scene.px.len() * 3);
    for (i, p) in scene.px.iter().enumerate() {
        let x = ((i % scene.size) as f32 + 0.5) / s - 0.5;
        let y = ((i / scene.size) as f32 + 0.5) / s - 0.5;
        let light = exposure * (1.0 + gx * x + gy * y - vignette * (x * x + y * y));
        if gray {
            let luma = 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
            let v = quantise(luma * light + sigma * sensor_noise(rng));
            out.extend([v, v, v]);
        } else {
            for c in 0..3 {
                out.push(quantise(p[c] * light * gain[c] + sigma * sensor_noise(rng)));
            }
        }
    }
    RgbImage {
        width: scene.size,
        height: scene.size,
        pixels: out,
    }
}

/// Unit-variance noise, roughly Gaussian: the sum of four 16-bit uniforms from one draw
/// (Irwin-Hall), several times cheaper than Box-Muller at a million draws per image.
fn sensor_noise(rng: &mut Rng) -> f32 {
    let r = rng.next_u64();
    let sum: u64 = (0..4).map(|k| (r >> (16 * k)) & 0xFFFF).sum();
    (sum as f32 / 65536.0 - 2.0) * 3.0f32.sqrt()
}

fn quantise(v: f32) -> u8 {
    (v * 255.0 + 0.5).clamp(0.0, 255.0) as u8
}
