//! The round and elongated object classes, seen from above on a plain background. Normal
//! variation: position shifts, rotation (free for the nut and screw, hidden by symmetry except
//! for the print on the cap), small size changes, colour jitter.

use super::canvas::{
    Canvas, Rgb, aa, box_sd, hexagon_sd, jitter, mix, scale, segment_distance, smoothstep,
};
use super::noise::Noise;
use super::scene::{Scene, Shape};
use crate::rng::Rng;
use std::f32::consts::{PI, TAU};

/// A plain background with a faint mottle and the soft shadow of a disc of radius `r` at `c`
/// (the shadow falls down-right, away from the top-left light).
fn background(size: usize, colour: Rgb, noise: &Noise, c: (f32, f32), r: f32) -> Canvas {
    let s = size as f32;
    let (sx, sy) = (c.0 + 0.025 * s, c.1 + 0.035 * s);
    Canvas::from_fn(size, |x, y| {
        let d = ((x - sx).powi(2) + (y - sy).powi(2)).sqrt();
        let shadow = 1.0 - 0.4 * (1.0 - smoothstep(r * 0.9, r * 1.15, d));
        scale(
            colour,
            shadow * (1.0 + 0.05 * noise.fbm(x / s * 6.0, y / s * 6.0, 3)),
        )
    })
}

/// A random object centre near the middle of the frame.
fn centre(rng: &mut Rng, s: f32, spread: f32) -> (f32, f32) {
    (
        s / 2.0 + spread * s * rng.normal(),
        s / 2.0 + spread * s * rng.normal(),
    )
}

/// A specular highlight of strength `k` at `(hx, hy)` with radius `w`.
fn highlight(x: f32, y: f32, hx: f32, hy: f32, w: f32, k: f32) -> f32 {
    k * (-((x - hx).powi(2) + (y - hy).powi(2)) / (w * w)).exp()
}

/// A red bottle cap from above on a dark conveyor: knurled rim, groove, domed face with a
/// ring of print and an orientation mark.
pub fn cap(rng: &mut Rng, size: usize) -> Scene {
    let s = size as f32;
    let c = centre(rng, s, 0.015);
    let r = 0.36 * s * (1.0 + 0.01 * rng.normal());
    let turn = rng.range(0.0, TAU);
    let red = jitter(rng, [0.72, 0.13, 0.11], 0.03);
    let ground = jitter(rng, [0.21, 0.22, 0.24], 0.03);
    let noise = Noise::new(rng);
    let under = background(size, ground, &noise, c, r);
    let mut cov = vec![0.0; size * size];
    let mut idx = 0;
    let image = Canvas::from_fn(size, |x, y| {
        let (dx, dy) = (x - c.0, y - c.1);
        let d = (dx * dx + dy * dy).sqrt();
        let a = aa(d - r);
        cov[idx] = a;
        let bg = under.px[idx];
        idx += 1;
        if a == 0.0 {
            return bg;
        }
        let rho = d / r;
        let ang = dy.atan2(dx) - turn;
        let (shade, mut colour) = if rho > 0.87 {
            let knurl = 0.5 + 0.5 * (72.0 * ang).cos();
            (0.55 + 0.3 * knurl - 0.3 * smoothstep(0.95, 1.0, rho), red)
        } else if rho > 0.81 {
            (0.5 + 0.2 * smoothstep(0.81, 0.87, rho), red)
        } else {
            let print =
                (0.52..0.64).contains(&rho) && (30.0 * ang).sin() > 0.1 && (4.0 * ang).sin() > -0.5;
            let (mx, my) = (rho * ang.cos() - 0.3, rho * ang.sin());
            let mark = mx * mx + my * my < 0.06 * 0.06;
            let ink = if print || mark {
                mix(red, [0.95, 0.93, 0.88], 0.85)
            } else {
                red
            };
            (0.8 + 0.12 * (1.0 - rho * rho), ink)
        };
        colour = scale(colour, shade);
        let spec = highlight(x, y, c.0 - 0.3 * r, c.1 - 0.3 * r, 0.22 * r, 0.3);
        colour = [colour[0] + spec, colour[1] + spec, colour[2] + spec];
        mix(bg, colour, a)
    });
    Scene::object(image, under, cov, Shape::Round { c, r })
}

/// A hexagonal steel nut from above on a white plate: chamfered corners, lathe-turned face,
/// threaded bore showing the plate through the hole.
pub fn nut(rng: &mut Rng, size: usize) -> Scene {
    let s = size as f32;
    let c = centre(rng, s, 0.015);
    let r = 0.34 * s * (1.0 + 0.01 * rng.normal());
    let turn = rng.range(0.0, PI / 3.0);
    let steel = jitter(rng, [0.60, 0.61, 0.64], 0.015);
    let ground = jitter(rng, [0.87, 0.87, 0.85], 0.01);
    let noise = Noise::new(rng);
    let under = background(size, ground, &noise, c, r);
    let (bore, thread) = (0.40 * r, 0.48 * r);
    let (cs, sn) = (turn.cos(), turn.sin());
    let mut cov = vec![0.0; size * size];
    let mut idx = 0;
    let image = Canvas::from_fn(size, |x, y| {
        let (dx, dy) = (x - c.0, y - c.1);
        let d = (dx * dx + dy * dy).sqrt();
        let (lx, ly) = (cs * dx + sn * dy, -sn * dx + cs * dy);
        let a = aa(hexagon_sd(lx, ly, r)) * aa(bore - d);
        cov[idx] = a;
        let bg = under.px[idx];
        idx += 1;
        if a == 0.0 {
            // Inside the bore the plate is in the nut's shadow.
            return if d < bore { scale(bg, 0.75) } else { bg };
        }
        let ang = dy.atan2(dx);
        let shade = if d < thread {
            0.42 + 0.2 * (0.5 + 0.5 * (d / r * TAU * 14.0).sin())
        } else if d > 0.84 * r {
            // The chamfer: a cone lit from the top left.
            0.62 + 0.18 * (ang + 2.3).cos()
        } else {
            0.86 + 0.05 * noise.at(d / r * 40.0, 3.3) - 0.08 * smoothstep(0.78, 0.84, d / r)
        };
        let spec = highlight(x, y, c.0 - 0.25 * r, c.1 - 0.3 * r, 0.3 * r, 0.18);
        let col = scale(steel, shade);
        mix(bg, [col[0] + spec, col[1] + spec, col[2] + spec], a)
    });
    Scene::object(image, under, cov, Shape::Round { c, r })
}

/// A steel screw lying on a pale blue plate, seen from the side: a flat head, a threaded
/// shaft and a pointed tip; any orientation.
pub fn screw(rng: &mut Rng, size: usize) -> Scene {
    let s = size as f32;
    let c = centre(rng, s, 0.02);
    let theta = rng.range(0.0, TAU);
    let len = 0.66 * s * (1.0 + 0.01 * rng.normal());
    let (head_len, head_half, shaft_half, tip_len, pitch) =
        (0.085 * s, 0.085 * s, 0.042 * s, 0.09 * s, 0.028 * s);
    let steel = jitter(rng, [0.58, 0.58, 0.61], 0.015);
    let ground = jitter(rng, [0.79, 0.82, 0.86], 0.01);
    let noise = Noise::new(rng);
    let (cs, sn) = (theta.cos(), theta.sin());
    let head = (c.0 - cs * len / 2.0, c.1 - sn * len / 2.0);
    let tip = (c.0 + cs * len / 2.0, c.1 + sn * len / 2.0);
    // The shadow of a rod: the background helper's disc shadow is replaced by a capsule here.
    let under = Canvas::from_fn(size, |x, y| {
        let (sx, sy) = (x - 0.02 * s, y - 0.03 * s);
        let (d, _) = segment_distance((sx, sy), head, tip);
        let shadow = 1.0 - 0.35 * (1.0 - smoothstep(0.02 * s, 0.09 * s, d));
        scale(
            ground,
            shadow * (1.0 + 0.05 * noise.fbm(x / s * 6.0, y / s * 6.0, 3)),
        )
    });
    let shaft_lo = -len / 2.0 + head_len;
    let shaft_hi = len / 2.0 - tip_len;
    let mut cov = vec![0.0; size * size];
    let mut idx = 0;
    let image = Canvas::from_fn(size, |x, y| {
        let (dx, dy) = (x - c.0, y - c.1);
        let (a, b) = (cs * dx + sn * dy, -sn * dx + cs * dy);
        // Half width of the outline at `a`: head, thread crests, then the taper to the point.
        let crest = 1.0 + 0.12 * (2.0 * ((a / pitch).rem_euclid(1.0) - 0.5).abs() * 2.0 - 1.0);
        let head_sd = box_sd(
            a - (-len / 2.0 + head_len / 2.0),
            b,
            head_len / 2.0 - 2.0,
            head_half - 2.0,
        ) - 2.0;
        let shaft_sd = ((a - (shaft_lo + shaft_hi) / 2.0).abs() - (shaft_hi - shaft_lo) / 2.0)
            .max(b.abs() - shaft_half * crest);
        let taper = shaft_half * crest * (1.0 - 0.9 * ((a - shaft_hi) / tip_len).clamp(0.0, 1.0));
        let tip_sd = (shaft_hi - a).max(a - len / 2.0).max(b.abs() - taper);
        let sd = head_sd.min(shaft_sd).min(tip_sd);
        let cover = aa(sd);
        cov[idx] = cover;
        let bg = under.px[idx];
        idx += 1;
        if cover == 0.0 {
            return bg;
        }
        let half = if a < shaft_lo { head_half } else { shaft_half };
        let across = (b / half).clamp(-1.0, 1.0);
        let mut shade = 0.45
            + 0.5 * (1.0 - across * across).sqrt()
            + 0.25 * (-((across + 0.35) / 0.2).powi(2)).exp();
        if a >= shaft_lo {
            let stripe = 0.5 + 0.5 * (TAU * (a + 0.35 * b) / pitch).sin();
            shade *= 0.72 + 0.28 * stripe;
        } else if a > shaft_lo - 0.012 * s {
            shade *= 0.7; // the bearing face of the head
        }
        mix(bg, scale(steel, shade), cover)
    });
    Scene::object(image, under, cov, Shape::Rod { head, tip })
}
