//! A printed circuit board filling the frame: green solder mask over copper traces, gold pads,
//! vias, white silkscreen outlines, and components (two ICs, passives, an electrolytic
//! capacitor). Every image shows the same board design (a fixed layout seed), as a product
//! line would; normal variation is a small shift, rotation and zoom, and colour jitter.

use super::canvas::{Canvas, Rgb, aa, box_sd, for_box, jitter, mix, scale, segment_distance};
use super::noise::Noise;
use super::scene::{Part, Scene, Shape};
use crate::rng::Rng;

/// The board design is the same for every dataset seed: it is the product, not a nuisance.
const LAYOUT_SEED: u64 = 20_230_207;

type Point = (f32, f32);

#[derive(Clone, Copy)]
enum Kind {
    Ic,
    Passive { ceramic: bool },
    Capacitor,
}

/// An axis-aligned component in board units (the board spans [0, 1] x [0, 1]).
struct Component {
    c: Point,
    half: (f32, f32),
    kind: Kind,
}

impl Component {
    /// Half extents including the pins (what a "missing" cut must remove).
    fn extent(&self) -> (f32, f32) {
        match self.kind {
            Kind::Ic if self.half.0 > self.half.1 => (self.half.0, self.half.1 + PIN_LEN),
            Kind::Ic => (self.half.0 + PIN_LEN, self.half.1),
            _ => self.half,
        }
    }

    /// IC pin centres and half extents (none for other kinds).
    fn pins(&self) -> Vec<(Point, (f32, f32))> {
        let Kind::Ic = self.kind else {
            return Vec::new();
        };
        let along_x = self.half.0 > self.half.1;
        let (long, short) = if along_x {
            (self.half.0, self.half.1)
        } else {
            (self.half.1, self.half.0)
        };
        let mut pins = Vec::new();
        for k in 0..PINS {
            let t = -long + (k as f32 + 0.5) * 2.0 * long / PINS as f32;
            for side in [-1.0, 1.0] {
                let off = side * (short + PIN_LEN / 2.0);
                let (c, half) = if along_x {
                    ((self.c.0 + t, self.c.1 + off), (PIN_HALF, PIN_LEN / 2.0))
                } else {
                    ((self.c.0 + off, self.c.1 + t), (PIN_LEN / 2.0, PIN_HALF))
                };
                pins.push((c, half));
            }
        }
        pins
    }

    /// Copper pads under the component: one per pin, or two at the ends of a passive.
    fn pads(&self) -> Vec<(Point, (f32, f32))> {
        match self.kind {
            Kind::Ic => self
                .pins()
                .into_iter()
                .map(|(c, h)| (c, (h.0 + 0.004, h.1 + 0.004)))
                .collect(),
            Kind::Passive { .. } | Kind::Capacitor => {
                let along_x = self.half.0 >= self.half.1;
                let (l, w) = if along_x {
                    (self.half.0, self.half.1)
                } else {
                    (self.half.1, self.half.0)
                };
                let pad = (0.4 * l, w + 0.006);
                [-1.0, 1.0]
                    .iter()
                    .map(|&side| {
                        let d = side * 0.8 * l;
                        if along_x {
                            ((self.c.0 + d, self.c.1), pad)
                        } else {
                            ((self.c.0, self.c.1 + d), (pad.1, pad.0))
                        }
                    })
                    .collect()
            }
        }
    }
}

const PINS: usize = 6;
const PIN_LEN: f32 = 0.022;
const PIN_HALF: f32 = 0.006;

struct Layout {
    parts: Vec<Component>,
    traces: Vec<(Point, Point)>,
    vias: Vec<Point>,
}

/// The board design: components on a jittered 4x4 grid, L-shaped traces between pads.
fn layout() -> Layout {
    let mut rng = Rng::new(LAYOUT_SEED);
    let mut slots: Vec<usize> = (0..16).collect();
    rng.shuffle(&mut slots);
    let mut parts = Vec::new();
    for (n, &slot) in slots.iter().take(9).enumerate() {
        let c = (
            0.14 + 0.24 * (slot % 4) as f32 + rng.range(-0.02, 0.02),
            0.14 + 0.24 * (slot / 4) as f32 + rng.range(-0.02, 0.02),
        );
        let flip = rng.uniform() < 0.5;
        let (kind, half) = match n {
            0 | 1 => (Kind::Ic, (0.085, 0.055)),
            2 => (Kind::Capacitor, (0.055, 0.055)),
            _ => (
                Kind::Passive {
                    ceramic: n % 2 == 0,
                },
                (0.034, 0.016),
            ),
        };
        let half = if flip { (half.1, half.0) } else { half };
        parts.push(Component { c, half, kind });
    }
    let pads: Vec<Point> = parts
        .iter()
        .flat_map(|p| p.pads())
        .map(|(c, _)| c)
        .collect();
    let mut traces = Vec::new();
    let mut vias = Vec::new();
    for _ in 0..18 {
        let a = pads[rng.below(pads.len())];
        let b = if rng.uniform() < 0.3 {
            let v = (rng.range(0.05, 0.95), rng.range(0.05, 0.95));
            vias.push(v);
            v
        } else {
            pads[rng.below(pads.len())]
        };
        let corner = if rng.uniform() < 0.5 {
            (b.0, a.1)
        } else {
            (a.0, b.1)
        };
        traces.push((a, corner));
        traces.push((corner, b));
    }
    Layout {
        parts,
        traces,
        vias,
    }
}

/// Board units <-> pixels: rotation `angle` about the pixel centre `c`, `px` pixels per unit.
struct Pose {
    c: Point,
    cos: f32,
    sin: f32,
    px: f32,
}

impl Pose {
    fn to_board(&self, x: f32, y: f32) -> Point {
        let (dx, dy) = (x - self.c.0, y - self.c.1);
        (
            (self.cos * dx + self.sin * dy) / self.px + 0.5,
            (-self.sin * dx + self.cos * dy) / self.px + 0.5,
        )
    }

    fn to_pixel(&self, p: Point) -> Point {
        let (u, v) = ((p.0 - 0.5) * self.px, (p.1 - 0.5) * self.px);
        (
            self.c.0 + self.cos * u - self.sin * v,
            self.c.1 + self.sin * u + self.cos * v,
        )
    }

    /// Paints a shape given by its signed distance in board units (`sd(u, v)`), within
    /// `reach` board units of `centre`, with `colour(u, v)`; max-accumulates its coverage.
    fn paint(
        &self,
        img: &mut Canvas,
        mut cov: Option<&mut [f32]>,
        centre: Point,
        reach: f32,
        sd: impl Fn(f32, f32) -> f32,
        colour: impl Fn(f32, f32) -> Rgb,
    ) {
        let p = self.to_pixel(centre);
        let m = reach * self.px + 2.0;
        let size = img.size;
        for_box(size, p.0 - m, p.1 - m, p.0 + m, p.1 + m, |idx, x, y| {
            let (u, v) = self.to_board(x, y);
            let a = aa(sd(u, v) * self.px);
            if a > 0.0 {
                img.px[idx] = mix(img.px[idx], colour(u, v), a);
                if let Some(cov) = cov.as_deref_mut() {
                    cov[idx] = cov[idx].max(a);
                }
            }
        });
    }
}

fn reach(half: (f32, f32)) -> f32 {
    (half.0 * half.0 + half.1 * half.1).sqrt()
}

pub fn pcb(rng: &mut Rng, size: usize) -> Scene {
    let s = size as f32;
    let angle = 0.012 * rng.normal();
    let pose = Pose {
        c: (
            s / 2.0 + 0.012 * s * rng.normal(),
            s / 2.0 + 0.012 * s * rng.normal(),
        ),
        cos: angle.cos(),
        sin: angle.sin(),
        px: s * (1.0 + 0.01 * rng.normal()),
    };
    let mask_green = jitter(rng, [0.09, 0.36, 0.17], 0.03);
    let trace_green = jitter(rng, [0.17, 0.52, 0.23], 0.03);
    let copper = jitter(rng, [0.82, 0.68, 0.36], 0.03);
    let silk = [0.93, 0.93, 0.89];
    let noise = Noise::new(rng);
    let board = layout();

    let mut under = Canvas::from_fn(size, |x, y| {
        let (u, v) = pose.to_board(x, y);
        scale(
            mask_green,
            1.0 + 0.05 * noise.fbm(u * 8.0, v * 8.0, 2) + 0.03 * noise.at(u * 90.0, v * 90.0),
        )
    });
    let w = 0.0045;
    for &(a, b) in &board.traces {
        let mid = ((a.0 + b.0) / 2.0, (a.1 + b.1) / 2.0);
        let r = reach(((a.0 - b.0) / 2.0, (a.1 - b.1) / 2.0)) + w;
        pose.paint(
            &mut under,
            None,
            mid,
            r,
            |u, v| segment_distance((u, v), a, b).0 - w,
            |_, _| trace_green,
        );
    }
    for &v0 in &board.vias {
        let ring = |u: f32, v: f32| {
            (((u - v0.0).powi(2) + (v - v0.1).powi(2)).sqrt() - 0.011).abs() - 0.005
        };
        pose.paint(&mut under, None, v0, 0.02, ring, |_, _| copper);
        let hole = |u: f32, v: f32| ((u - v0.0).powi(2) + (v - v0.1).powi(2)).sqrt() - 0.005;
        pose.paint(&mut under, None, v0, 0.01, hole, |_, _| [0.1, 0.1, 0.1]);
    }
    for part in &board.parts {
        let e = part.extent();
        let outline = |u: f32, v: f32| {
            box_sd(u - part.c.0, v - part.c.1, e.0 + 0.012, e.1 + 0.012).abs() - 0.0022
        };
        pose.paint(
            &mut under,
            None,
            part.c,
            reach(e) + 0.02,
            outline,
            |_, _| silk,
        );
        for (c, h) in part.pads() {
            pose.paint(
                &mut under,
                None,
                c,
                reach(h),
                |u, v| box_sd(u - c.0, v - c.1, h.0, h.1),
                |_, _| copper,
            );
        }
    }

    let mut image = under.clone();
    let mut cov = vec![0.0; size * size];
    let mut parts = Vec::new();
    for part in &board.parts {
        let (c, h) = (part.c, part.half);
        let body = |u: f32, v: f32| box_sd(u - c.0, v - c.1, h.0 - 0.004, h.1 - 0.004) - 0.004;
        match part.kind {
            Kind::Ic => {
                for (pc, ph) in part.pins() {
                    let pin = |u: f32, v: f32| box_sd(u - pc.0, v - pc.1, ph.0, ph.1);
                    pose.paint(&mut image, Some(&mut cov), pc, reach(ph), pin, |_, _| {
                        [0.78, 0.78, 0.8]
                    });
                }
                let dot = (c.0 - h.0 + 0.018, c.1 - h.1 + 0.018);
                let colour = |u: f32, v: f32| {
                    let d = ((u - dot.0).powi(2) + (v - dot.1).powi(2)).sqrt();
                    if d < 0.007 {
                        [0.25, 0.25, 0.27]
                    } else {
                        [0.07 + 0.1 * (c.1 - v).max(0.0), 0.07, 0.08]
                    }
                };
                pose.paint(&mut image, Some(&mut cov), c, reach(h), body, colour);
            }
            Kind::Passive { ceramic } => {
                let long_x = h.0 > h.1;
                let body_col = if ceramic {
                    [0.13, 0.12, 0.12]
                } else {
                    [0.74, 0.62, 0.45]
                };
                let colour = |u: f32, v: f32| {
                    let t = if long_x {
                        (u - c.0).abs() / h.0
                    } else {
                        (v - c.1).abs() / h.1
                    };
                    if t > 0.7 { [0.78, 0.78, 0.8] } else { body_col }
                };
                pose.paint(&mut image, Some(&mut cov), c, reach(h), body, colour);
            }
            Kind::Capacitor => {
                let r = h.0;
                let can = |u: f32, v: f32| ((u - c.0).powi(2) + (v - c.1).powi(2)).sqrt() - r;
                let colour = |u: f32, v: f32| {
                    let (du, dv) = (u - c.0, v - c.1);
                    let d = (du * du + dv * dv).sqrt() / r;
                    if d > 0.78 {
                        [0.14, 0.19, 0.45]
                    } else if du.abs() < 0.004 || dv.abs() < 0.004 {
                        [0.45, 0.46, 0.5] // the vent cross
                    } else {
                        scale([0.74, 0.76, 0.8], 1.05 - 0.25 * d)
                    }
                };
                pose.paint(&mut image, Some(&mut cov), c, r + 0.005, can, colour);
            }
        }
        let e = part.extent();
        parts.push(Part {
            c: pose.to_pixel(c),
            half: (e.0 * pose.px, e.1 * pose.px),
            angle,
        });
    }
    let n = size * size;
    Scene {
        image,
        fg: vec![1.0; n],
        under: Some(under),
        removable: cov,
        shape: Shape::Parts(parts),
    }
}
