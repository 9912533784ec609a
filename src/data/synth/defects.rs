//! The defect types and how each is drawn onto a scene.
//!
//! A defect is an alpha map `a` and a target appearance `t`: the defective picture is
//! `base * (1 - a) + t * a`. Alpha below [`MASK_ALPHA`] is set to zero and the mask is
//! `a > 0`, so pixels outside the mask are exactly the defect-free picture: the masks are
//! exact by construction, not annotated after the fact.

use super::canvas::{Blob, Canvas, Rgb, aa, box_sd, for_box, mix, smoothstep, stroke};
use super::noise::Noise;
use super::scene::{Scene, Shape};
use crate::rng::Rng;
use std::f32::consts::TAU;

/// Alpha at or below which a defect leaves the pixel untouched (and out of the mask).
pub const MASK_ALPHA: f32 = 0.1;

/// The defect types, also the test folder names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DefectKind {
    /// A thin curved line, brighter (bare metal) or darker than the surface.
    Scratch,
    /// A dark irregular blob: material gone, the dark behind showing.
    Hole,
    /// A soft tinted blotch that darkens the surface but keeps its texture.
    Stain,
    /// A dark branching jagged line.
    Crack,
    /// Part of the object gone (objects only): a rim sector, an end, or a component.
    Missing,
    /// A foreign particle or fibre lying on the surface.
    Extra,
}

impl DefectKind {
    pub const ALL: [DefectKind; 6] = [
        DefectKind::Scratch,
        DefectKind::Hole,
        DefectKind::Stain,
        DefectKind::Crack,
        DefectKind::Missing,
        DefectKind::Extra,
    ];

    /// The folder name (`scratch`, `hole`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DefectKind::Scratch => "scratch",
            DefectKind::Hole => "hole",
            DefectKind::Stain => "stain",
            DefectKind::Crack => "crack",
            DefectKind::Missing => "missing",
            DefectKind::Extra => "extra",
        }
    }

    pub fn from_name(name: &str) -> Option<DefectKind> {
        DefectKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// A drawn defect: per-pixel alpha (zero outside the mask) and the target appearance.
struct Mark {
    alpha: Vec<f32>,
    target: Canvas,
}

/// Draws a defect of `kind` onto `scene`: returns the defective picture and the alpha map
/// (its non-zero pixels are the mask). Retries placement until the mask is big enough.
pub fn apply(rng: &mut Rng, scene: &Scene, kind: DefectKind) -> (Canvas, Vec<f32>) {
    let size = scene.image.size;
    let min_pixels = (size * size / 4000).max(12);
    let mut mark = None;
    for _ in 0..40 {
        let mut m = draw(rng, scene, kind);
        let n = threshold(&mut m.alpha);
        if n >= min_pixels {
            mark = Some(m);
            break;
        }
    }
    // A particle is never clipped to the object, so it always lands (the loop above almost
    // always succeeds first; this only guards against pathological geometry).
    let mark = mark.unwrap_or_else(|| {
        let mut m = extra(rng, scene);
        threshold(&mut m.alpha);
        m
    });
    let mut image = scene.image.clone();
    image.blend(&mark.alpha, &mark.target);
    (image, mark.alpha)
}

/// Zeroes alpha at or below [`MASK_ALPHA`]; returns the number of mask pixels left.
fn threshold(alpha: &mut [f32]) -> usize {
    let mut n = 0;
    for a in alpha.iter_mut() {
        if *a <= MASK_ALPHA {
            *a = 0.0;
        } else {
            n += 1;
        }
    }
    n
}

fn draw(rng: &mut Rng, scene: &Scene, kind: DefectKind) -> Mark {
    let mut mark = match kind {
        DefectKind::Scratch => scratch(rng, scene),
        DefectKind::Hole => hole(rng, scene),
        DefectKind::Stain => stain(rng, scene),
        DefectKind::Crack => crack(rng, scene),
        DefectKind::Missing => return missing(rng, scene),
        DefectKind::Extra => return extra(rng, scene),
    };
    // Surface defects stay on the object.
    for (a, f) in mark.alpha.iter_mut().zip(&scene.fg) {
        *a *= f;
    }
    mark
}

/// Pixels per unit of a 256-pixel image, so defects scale with the image.
fn unit(scene: &Scene) -> f32 {
    scene.image.size as f32 / 256.0
}

fn fg_at(scene: &Scene, p: (f32, f32)) -> f32 {
    let size = scene.image.size;
    if p.0 < 0.0 || p.1 < 0.0 || p.0 >= size as f32 || p.1 >= size as f32 {
        return 0.0;
    }
    scene.fg[p.1 as usize * size + p.0 as usize]
}

/// A random point at least `margin` pixels inside the frame, on the object if possible.
fn pick_point(rng: &mut Rng, scene: &Scene, margin: f32) -> (f32, f32) {
    let s = scene.image.size as f32;
    let margin = margin.min(s * 0.4);
    let mut p = (s / 2.0, s / 2.0);
    for _ in 0..100 {
        p = (rng.range(margin, s - margin), rng.range(margin, s - margin));
        if fg_at(scene, p) > 0.99 {
            break;
        }
    }
    p
}

/// `target = f(base pixel)` wherever `alpha > 0`.
fn target_from(scene: &Scene, alpha: &[f32], f: impl Fn(Rgb, usize) -> Rgb) -> Canvas {
    let mut t = scene.image.clone();
    for (i, p) in t.px.iter_mut().enumerate() {
        if alpha[i] > 0.0 {
            *p = f(*p, i);
        }
    }
    t
}

fn scratch(rng: &mut Rng, scene: &Scene) -> Mark {
    let (u, size) = (unit(scene), scene.image.size);
    let mut len = scene.image.size as f32 * rng.range(0.12, 0.32);
    let p0 = pick_point(rng, scene, 8.0 * u);
    // Both ends on the object: on a thin object this turns the scratch along it.
    let mut p2 = p0;
    for _ in 0..30 {
        let a = rng.range(0.0, TAU);
        p2 = (p0.0 + len * a.cos(), p0.1 + len * a.sin());
        if fg_at(scene, p2) > 0.99 {
            break;
        }
        len *= 0.93;
    }
    let bend = rng.range(-0.25, 0.25);
    let mid = (
        (p0.0 + p2.0) / 2.0 - bend * (p2.1 - p0.1),
        (p0.1 + p2.1) / 2.0 + bend * (p2.0 - p0.0),
    );
    let width = u * rng.range(0.6, 1.3);
    let (mut pts, mut half) = (Vec::new(), Vec::new());
    for k in 0..=24 {
        let t = k as f32 / 24.0;
        let (a, b, c) = ((1.0 - t) * (1.0 - t), 2.0 * t * (1.0 - t), t * t);
        pts.push((
            a * p0.0 + b * mid.0 + c * p2.0,
            a * p0.1 + b * mid.1 + c * p2.1,
        ));
        half.push(width * (0.35 + 0.65 * (t * std::f32::consts::PI).sin()));
    }
    let mut alpha = vec![0.0; size * size];
    stroke(&mut alpha, size, &pts, &half);
    let strength = rng.range(0.55, 0.9);
    alpha.iter_mut().for_each(|a| *a *= strength);
    let bright = rng.uniform() < 0.6;
    let target = target_from(scene, &alpha, |p, _| {
        if bright {
            [
                0.4 + 0.6 * p[0].max(0.6),
                0.4 + 0.6 * p[1].max(0.6),
                0.4 + 0.6 * p[2].max(0.6),
            ]
        } else {
            mix(p, [0.05, 0.05, 0.05], 0.8)
        }
    });
    Mark { alpha, target }
}

fn hole(rng: &mut Rng, scene: &Scene) -> Mark {
    let (u, size) = (unit(scene), scene.image.size);
    let r = u * rng.range(5.0, 15.0);
    let c = pick_point(rng, scene, r + 4.0 * u);
    let blob = Blob::random(rng, 0.3);
    let mut alpha = vec![0.0; size * size];
    blob.fill(&mut alpha, size, c, r);
    let depth = rng.range(0.08, 0.3);
    let target = target_from(scene, &alpha, |p, i| {
        // Darkest in the middle; the rim keeps a little of the surface.
        let (x, y) = ((i % size) as f32 + 0.5, (i / size) as f32 + 0.5);
        let edge = smoothstep(0.0, 0.5 * r, -blob.sd(x, y, c, r));
        let k = depth * (1.0 - 0.6 * edge) + 0.1 * (1.0 - edge);
        [p[0] * k + 0.02, p[1] * k + 0.02, p[2] * k + 0.02]
    });
    Mark { alpha, target }
}

fn stain(rng: &mut Rng, scene: &Scene) -> Mark {
    const TINTS: [Rgb; 5] = [
        [0.55, 0.38, 0.18],
        [0.35, 0.35, 0.35],
        [0.75, 0.42, 0.18],
        [0.3, 0.36, 0.65],
        [0.45, 0.42, 0.25],
    ];
    let (u, size) = (unit(scene), scene.image.size);
    let r = u * rng.range(12.0, 32.0);
    let c = pick_point(rng, scene, 0.5 * r);
    let blob = Blob::random(rng, 0.45);
    let tint = TINTS[rng.below(TINTS.len())];
    let strength = rng.range(0.45, 0.8);
    let noise = Noise::new(rng);
    let mut alpha = vec![0.0; size * size];
    let m = r * blob.max_factor() + 1.0;
    for_box(size, c.0 - m, c.1 - m, c.0 + m, c.1 + m, |idx, x, y| {
        let inside = -blob.sd(x, y, c, r);
        if inside > 0.0 {
            let body =
                smoothstep(0.0, 0.5 * r, inside) * (0.8 + 0.2 * noise.at(x / r * 3.0, y / r * 3.0));
            alpha[idx] = strength * body.clamp(0.0, 1.0);
        }
    });
    // Darker than the tint alone: a stain soaks in, so it shows even on busy textures.
    let target = target_from(scene, &alpha, |p, _| {
        [
            0.8 * p[0] * tint[0],
            0.8 * p[1] * tint[1],
            0.8 * p[2] * tint[2],
        ]
    });
    Mark { alpha, target }
}

/// A jagged random walk from `start`, returning its points.
fn walk(
    rng: &mut Rng,
    start: (f32, f32),
    heading: f32,
    steps: usize,
    step: f32,
) -> Vec<(f32, f32)> {
    let (mut p, mut h) = (start, heading);
    let mut pts = vec![p];
    for _ in 0..steps {
        h += 0.45 * rng.normal();
        let len = step * rng.range(0.6, 1.4);
        p = (p.0 + len * h.cos(), p.1 + len * h.sin());
        pts.push(p);
        // Cracks wander but keep their general direction.
        h = h * 0.7 + heading * 0.3;
    }
    pts
}

fn crack(rng: &mut Rng, scene: &Scene) -> Mark {
    let (u, size) = (unit(scene), scene.image.size);
    let start = pick_point(rng, scene, 20.0 * u);
    let heading = rng.range(0.0, TAU);
    let steps = 10 + rng.below(16);
    let width = u * rng.range(0.6, 1.2);
    let main = walk(rng, start, heading, steps, 4.0 * u);
    let mut alpha = vec![0.0; size * size];
    let taper = |n: usize, w: f32| {
        (0..n)
            .map(|k| w * (1.0 - 0.6 * k as f32 / n as f32))
            .collect::<Vec<_>>()
    };
    stroke(&mut alpha, size, &main, &taper(main.len(), width));
    for _ in 0..1 + rng.below(3) {
        let at = main[2 + rng.below(main.len() - 2)];
        let side = if rng.uniform() < 0.5 { -1.0 } else { 1.0 };
        let turn = side * rng.range(0.5, 1.1);
        let branch = walk(rng, at, heading + turn, 3 + steps / 3, 3.5 * u);
        stroke(&mut alpha, size, &branch, &taper(branch.len(), 0.7 * width));
    }
    let strength = rng.range(0.7, 0.95);
    alpha.iter_mut().for_each(|a| *a *= strength);
    let target = target_from(scene, &alpha, |p, _| mix(p, [0.04, 0.03, 0.03], 0.85));
    Mark { alpha, target }
}

fn missing(rng: &mut Rng, scene: &Scene) -> Mark {
    let (Some(under), false) = (&scene.under, scene.removable.is_empty()) else {
        return hole(rng, scene); // textures have no parts to lose
    };
    let size = scene.image.size;
    let region: Box<dyn Fn(f32, f32) -> f32> = match &scene.shape {
        Shape::Round { c, r } => {
            // An annular sector of the rim, with a ragged inner (break) edge.
            let (c, r) = (*c, *r);
            let mid = rng.range(0.0, TAU);
            let half = rng.range(0.18, 0.45);
            let inner = r * rng.range(0.5, 0.8);
            let noise = Noise::new(rng);
            Box::new(move |x, y| {
                let (dx, dy) = (x - c.0, y - c.1);
                let rho = (dx * dx + dy * dy).sqrt();
                let off = (dy.atan2(dx) - mid + TAU * 1.5).rem_euclid(TAU) - TAU / 2.0;
                let ragged = inner * (1.0 + 0.08 * noise.at(off * 6.0, 0.5));
                ((off.abs() - half) * rho).max(ragged - rho)
            })
        }
        Shape::Rod { head, tip } => {
            // One end broken off along a slanted line.
            let (head, tip) = (*head, *tip);
            let (ax, ay) = (tip.0 - head.0, tip.1 - head.1);
            let at_tip = rng.uniform() < 0.65;
            let keep = if at_tip {
                1.0 - rng.range(0.1, 0.22)
            } else {
                rng.range(0.06, 0.12)
            };
            let slant = 0.35 * rng.normal();
            let axis = ay.atan2(ax) + slant;
            let (nx, ny) = (axis.cos(), axis.sin());
            let cut = (head.0 + ax * keep, head.1 + ay * keep);
            let sign = if at_tip { 1.0 } else { -1.0 };
            Box::new(move |x, y| -sign * ((x - cut.0) * nx + (y - cut.1) * ny))
        }
        Shape::Parts(parts) if !parts.is_empty() => {
            let p = parts[rng.below(parts.len())].clone();
            let (cs, sn) = (p.angle.cos(), p.angle.sin());
            Box::new(move |x, y| {
                let (dx, dy) = (x - p.c.0, y - p.c.1);
                box_sd(cs * dx + sn * dy, -sn * dx + cs * dy, p.half.0, p.half.1) - 1.5
            })
        }
        _ => return hole(rng, scene),
    };
    let mut alpha = vec![0.0; size * size];
    for (i, a) in alpha.iter_mut().enumerate() {
        let rem = scene.removable[i];
        if rem > 0.0 {
            *a = rem * aa(region((i % size) as f32 + 0.5, (i / size) as f32 + 0.5));
        }
    }
    Mark {
        alpha,
        target: under.clone(),
    }
}

fn extra(rng: &mut Rng, scene: &Scene) -> Mark {
    const COLOURS: [Rgb; 6] = [
        [0.28, 0.17, 0.08],
        [0.05, 0.05, 0.05],
        [0.93, 0.93, 0.88],
        [0.88, 0.48, 0.10],
        [0.12, 0.45, 0.52],
        [0.55, 0.55, 0.2],
    ];
    let (u, size) = (unit(scene), scene.image.size);
    let c = pick_point(rng, scene, 12.0 * u);
    let at = scene.image.px[(c.1 as usize).min(size - 1) * size + (c.0 as usize).min(size - 1)];
    // Of two random colours, the one further from the surface, so it is not invisible.
    let (a, b) = (
        COLOURS[rng.below(COLOURS.len())],
        COLOURS[rng.below(COLOURS.len())],
    );
    let dist = |q: Rgb| (0..3).map(|k| (q[k] - at[k]).abs()).sum::<f32>();
    let colour = if dist(a) >= dist(b) { a } else { b };
    let mut alpha = vec![0.0; size * size];
    if rng.uniform() < 0.35 {
        // A fibre: a short thick curve.
        let len = u * rng.range(15.0, 38.0);
        let h = rng.range(0.0, TAU);
        let pts = walk(rng, c, h, 8, len / 8.0);
        let w = u * rng.range(1.1, 2.0);
        stroke(&mut alpha, size, &pts, &vec![w; pts.len()]);
        let target = target_from(scene, &alpha, |_, _| colour);
        return Mark { alpha, target };
    }
    let r = u * rng.range(5.0, 13.0);
    let blob = Blob::random(rng, 0.5);
    blob.fill(&mut alpha, size, c, r);
    let target = target_from(scene, &alpha, |_, i| {
        // A lit lump: brighter towards the top left.
        let (x, y) = ((i % size) as f32 + 0.5, (i / size) as f32 + 0.5);
        let t = (((c.0 - x) + (c.1 - y)) / (2.0 * r)).clamp(-1.0, 1.0);
        let k = 0.85 + 0.25 * t;
        [colour[0] * k, colour[1] * k, colour[2] * k]
    });
    Mark { alpha, target }
}
