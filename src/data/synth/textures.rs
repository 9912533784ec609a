//! The texture classes: stationary surfaces that fill the frame. Normal variation: a new
//! random field per image, small rotations and scale changes, colour jitter.

use super::canvas::{Blob, Canvas, Rgb, aa, for_box, jitter, mix, scale, smoothstep};
use super::noise::Noise;
use super::scene::Scene;
use crate::rng::Rng;
use std::f32::consts::PI;

/// Pixel `(x, y)` to texture coordinates: rotated by `angle` about the image centre, divided
/// by `unit` pixels, shifted by `offset`.
struct Frame {
    centre: f32,
    cos: f32,
    sin: f32,
    unit: f32,
    offset: (f32, f32),
}

impl Frame {
    fn new(rng: &mut Rng, size: usize, max_angle: f32, unit: f32) -> Frame {
        let a = rng.range(-max_angle, max_angle);
        Frame {
            centre: size as f32 / 2.0,
            cos: a.cos(),
            sin: a.sin(),
            unit,
            offset: (rng.range(0.0, 64.0), rng.range(0.0, 64.0)),
        }
    }

    fn map(&self, x: f32, y: f32) -> (f32, f32) {
        let (dx, dy) = (x - self.centre, y - self.centre);
        (
            (self.cos * dx + self.sin * dy) / self.unit + self.offset.0,
            (-self.sin * dx + self.cos * dy) / self.unit + self.offset.1,
        )
    }
}

/// Woven fabric, 2/2 twill: indigo warp and ecru weft threads crossing in diagonal ribs.
pub fn fabric(rng: &mut Rng, size: usize) -> Scene {
    let period = size as f32 / 256.0 * 9.0 * rng.range(0.95, 1.05);
    let frame = Frame::new(rng, size, 0.05, period);
    let warp = jitter(rng, [0.20, 0.27, 0.46], 0.04);
    let weft = jitter(rng, [0.80, 0.76, 0.66], 0.03);
    let noise = Noise::new(rng);
    let s = size as f32;
    Scene::texture(Canvas::from_fn(size, |x, y| {
        let (u, v) = frame.map(x, y);
        let (i, j) = (u.floor(), v.floor());
        let (fu, fv) = (u - i, v - j);
        let warp_up = (i as i64 - j as i64).rem_euclid(4) < 2;
        // Across a thread: a rounded profile with dark gaps; along it: fibres.
        let (across, along, colour, fibre) = if warp_up {
            (fu, fv, warp, noise.at(u * 5.0, v * 0.7))
        } else {
            (fv, fu, weft, noise.at(u * 0.7 + 91.0, v * 5.0))
        };
        let profile = (PI * across).sin().max(0.0).sqrt();
        let bulge = 0.88 + 0.12 * (PI * along).sin();
        let slub = 1.0 + 0.05 * noise.fbm(x / s * 3.0 + 40.0, y / s * 3.0, 2);
        scale(
            colour,
            (0.35 + 0.65 * profile * bulge + 0.07 * fibre) * slub,
        )
    }))
}

/// Plain-sawn wood: wavy growth rings (dark latewood bands) and fine pores along the grain.
pub fn wood(rng: &mut Rng, size: usize) -> Scene {
    let frame = Frame::new(rng, size, 0.08, size as f32);
    let rings = rng.range(6.0, 9.0);
    let wave = rng.range(0.0, 10.0);
    let light = jitter(rng, [0.83, 0.64, 0.43], 0.03);
    let dark = jitter(rng, [0.50, 0.31, 0.16], 0.03);
    let noise = Noise::new(rng);
    Scene::texture(Canvas::from_fn(size, |x, y| {
        let (u, v) = frame.map(x, y);
        let warp = 0.45 * noise.fbm(u * 1.2, v * 1.6 + 7.0, 3) + 0.08 * (u * 2.5 + wave).sin();
        let r = v * rings + warp;
        let ring = r - r.floor();
        let late = smoothstep(0.55, 0.85, ring) * (1.0 - smoothstep(0.92, 1.0, ring));
        let pores = noise.at(u * 7.0 + 300.0, v * 150.0);
        let figure = noise.fbm(u * 4.0, v * 14.0 + 50.0, 2);
        let t = (0.6 * late + 0.15 * pores + 0.12 * figure + 0.1).clamp(0.0, 1.0);
        mix(light, dark, t)
    }))
}

/// Brushed steel (grey): fine streaks along the brushing direction and a broad reflection band.
pub fn metal(rng: &mut Rng, size: usize) -> Scene {
    let frame = Frame::new(rng, size, 0.04, size as f32);
    let level = rng.range(0.48, 0.56);
    let band_at = rng.range(-0.3, 0.3);
    let band = rng.range(0.08, 0.16);
    let noise = Noise::new(rng);
    Scene::texture(Canvas::from_fn(size, |x, y| {
        let (u, v) = frame.map(x, y);
        let fine = noise.at(u * 3.0, v * 120.0);
        let medium = noise.at(u * 1.0 + 40.0, v * 35.0);
        let sheen = band * (-((v - frame.offset.1 - band_at) / 0.22).powi(2)).exp();
        let g = level
            + 0.05 * fine
            + 0.04 * medium
            + sheen
            + 0.03 * noise.fbm(u * 2.0 + 9.0, v * 2.0, 2);
        [g, g, g]
    }))
}

/// Terrazzo tile: a mottled beige ground with scattered stone chips of four colours.
pub fn tile(rng: &mut Rng, size: usize) -> Scene {
    let s = size as f32;
    let ground = jitter(rng, [0.76, 0.73, 0.67], 0.012);
    let noise = Noise::new(rng);
    let mut image = Canvas::from_fn(size, |x, y| {
        scale(ground, 1.0 + 0.06 * noise.fbm(x / s * 5.0, y / s * 5.0, 3))
    });
    const CHIPS: [Rgb; 4] = [
        [0.30, 0.30, 0.32],
        [0.95, 0.94, 0.91],
        [0.62, 0.40, 0.30],
        [0.12, 0.12, 0.13],
    ];
    let count = (260.0 * (s / 256.0).powi(2)) as usize;
    for _ in 0..count {
        let chip = CHIPS[rng.below(CHIPS.len())];
        let colour = jitter(rng, chip, 0.05);
        let t = rng.uniform();
        let r = s / 256.0 * (1.0 + 3.0 * t * t);
        let c = (rng.range(-4.0, s + 4.0), rng.range(-4.0, s + 4.0));
        let blob = Blob::random(rng, 0.35);
        let m = r * blob.max_factor() + 1.0;
        for_box(size, c.0 - m, c.1 - m, c.0 + m, c.1 + m, |idx, x, y| {
            let a = aa(blob.sd(x, y, c, r));
            if a > 0.0 {
                // A little shading so chips read as polished stone, not flat paint.
                let shade = 0.92 + 0.08 * ((x - c.0 - (y - c.1)) / (r + 1.0)).clamp(-1.0, 1.0);
                image.px[idx] = mix(image.px[idx], scale(colour, shade), a);
            }
        });
    }
    Scene::texture(image)
}
