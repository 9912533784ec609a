//! A square float RGB canvas and the anti-aliased rasterisers the scenes and defects draw
//! with. Shapes are given as signed distances in pixels (negative inside); a pixel's coverage
//! is `clamp(0.5 - d, 0, 1)`, a one-pixel anti-aliased edge.

use crate::rng::Rng;

/// Linear RGB in [0, 1] (values outside are clamped on output).
pub type Rgb = [f32; 3];

/// A `size` x `size` image of floats, row-major.
#[derive(Clone, Debug)]
pub struct Canvas {
    pub size: usize,
    pub px: Vec<Rgb>,
}

impl Canvas {
    /// Evaluates `f(x, y)` at every pixel centre (`x + 0.5`, `y + 0.5`, in pixels).
    pub fn from_fn(size: usize, mut f: impl FnMut(f32, f32) -> Rgb) -> Canvas {
        let mut px = Vec::with_capacity(size * size);
        for y in 0..size {
            for x in 0..size {
                px.push(f(x as f32 + 0.5, y as f32 + 0.5));
            }
        }
        Canvas { size, px }
    }

    /// `self = self * (1 - alpha) + top * alpha`, per pixel.
    pub fn blend(&mut self, alpha: &[f32], top: &Canvas) {
        for ((p, &a), t) in self.px.iter_mut().zip(alpha).zip(&top.px) {
            if a > 0.0 {
                for c in 0..3 {
                    p[c] += (t[c] - p[c]) * a;
                }
            }
        }
    }
}

/// Coverage of a signed distance (pixels, negative inside): a one-pixel soft edge.
pub fn aa(sd: f32) -> f32 {
    (0.5 - sd).clamp(0.0, 1.0)
}

pub fn smoothstep(e0: f32, e1: f32, x: f32) -> f32 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

pub fn mix(a: Rgb, b: Rgb, t: f32) -> Rgb {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

pub fn scale(a: Rgb, s: f32) -> Rgb {
    [a[0] * s, a[1] * s, a[2] * s]
}

/// Colour jitter: each channel times `1 + N(0, sd)`.
pub fn jitter(rng: &mut Rng, c: Rgb, sd: f32) -> Rgb {
    [
        c[0] * (1.0 + sd * rng.normal()),
        c[1] * (1.0 + sd * rng.normal()),
        c[2] * (1.0 + sd * rng.normal()),
    ]
}

/// Calls `f(index, x, y)` for every pixel whose centre lies in the box (pixel coordinates,
/// clipped to the canvas).
pub fn for_box(
    size: usize,
    x0: f32,
    y0: f32,
    x1: f32,
    y1: f32,
    mut f: impl FnMut(usize, f32, f32),
) {
    let clip = |v: f32| (v.floor().max(0.0) as usize).min(size);
    let (xa, xb) = (clip(x0), clip(x1 + 1.0));
    let (ya, yb) = (clip(y0), clip(y1 + 1.0));
    for y in ya..yb {
        for x in xa..xb {
            f(y * size + x, x as f32 + 0.5, y as f32 + 0.5);
        }
    }
}

/// Distance from `p` to the segment `a`-`b`, and the position `t` in [0, 1] along it.
pub fn segment_distance(p: (f32, f32), a: (f32, f32), b: (f32, f32)) -> (f32, f32) {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 {
        (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (qx, qy) = (a.0 + t * dx - p.0, a.1 + t * dy - p.1);
    ((qx * qx + qy * qy).sqrt(), t)
}

/// Max-accumulates into `cov` a stroke along the polyline `pts`, with half width `half[i]` at
/// point `i` (linearly interpolated along each segment).
pub fn stroke(cov: &mut [f32], size: usize, pts: &[(f32, f32)], half: &[f32]) {
    for i in 1..pts.len() {
        let (a, b) = (pts[i - 1], pts[i]);
        let (ha, hb) = (half[i - 1], half[i]);
        let m = ha.max(hb) + 1.0;
        let (x0, x1) = (a.0.min(b.0) - m, a.0.max(b.0) + m);
        let (y0, y1) = (a.1.min(b.1) - m, a.1.max(b.1) + m);
        for_box(size, x0, y0, x1, y1, |idx, x, y| {
            let (d, t) = segment_distance((x, y), a, b);
            let c = aa(d - (ha + (hb - ha) * t));
            if c > cov[idx] {
                cov[idx] = c;
            }
        });
    }
}

/// An irregular closed outline: the radius at angle `a` is `r * factor(a)`.
#[derive(Clone, Debug)]
pub struct Blob {
    harmonics: Vec<(f32, f32)>,
}

impl Blob {
    /// Harmonics 2..=5 with amplitudes up to `roughness` (0 gives a circle).
    pub fn random(rng: &mut Rng, roughness: f32) -> Blob {
        let harmonics = (2..=5)
            .map(|k| {
                (
                    roughness * rng.uniform() / k as f32 * 2.0,
                    rng.range(0.0, std::f32::consts::TAU),
                )
            })
            .collect();
        Blob { harmonics }
    }

    pub fn factor(&self, angle: f32) -> f32 {
        let mut f = 1.0;
        for (k, &(amp, phase)) in self.harmonics.iter().enumerate() {
            f += amp * ((k as f32 + 2.0) * angle + phase).cos();
        }
        f.max(0.3)
    }

    /// Approximate signed distance (pixels) of `(x, y)` to the blob centred at `c`, radius `r`.
    pub fn sd(&self, x: f32, y: f32, c: (f32, f32), r: f32) -> f32 {
        let (dx, dy) = (x - c.0, y - c.1);
        (dx * dx + dy * dy).sqrt() - r * self.factor(dy.atan2(dx))
    }

    /// The largest radius factor, for bounding boxes.
    pub fn max_factor(&self) -> f32 {
        1.0 + self.harmonics.iter().map(|h| h.0.abs()).sum::<f32>()
    }

    /// Max-accumulates the blob's coverage into `cov`.
    pub fn fill(&self, cov: &mut [f32], size: usize, c: (f32, f32), r: f32) {
        let m = r * self.max_factor() + 1.0;
        for_box(size, c.0 - m, c.1 - m, c.0 + m, c.1 + m, |idx, x, y| {
            let v = aa(self.sd(x, y, c, r));
            if v > cov[idx] {
                cov[idx] = v;
            }
        });
    }
}

/// Signed distance to an axis-aligned box of half extents `(hx, hy)` centred at the origin.
pub fn box_sd(x: f32, y: f32, hx: f32, hy: f32) -> f32 {
    let (qx, qy) = (x.abs() - hx, y.abs() - hy);
    let outside = (qx.max(0.0).powi(2) + qy.max(0.0).powi(2)).sqrt();
    outside + qx.max(qy).min(0.0)
}

/// Signed distance to a regular hexagon of circumradius `r`, flat sides at top and bottom,
/// centred at the origin.
pub fn hexagon_sd(x: f32, y: f32, r: f32) -> f32 {
    let (kx, ky) = (-0.866_025_4f32, 0.5f32);
    let (mut px, mut py) = (x.abs(), y.abs());
    let d = 2.0 * (kx * px + ky * py).min(0.0);
    px -= d * kx;
    py -= d * ky;
    let inr = r * 0.866_025_4; // inscribed radius
    let cx = px.clamp(-0.5 * r, 0.5 * r);
    let (dx, dy) = (px - cx, py - inr);
    (dx * dx + dy * dy).sqrt() * dy.signum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert!((box_sd(3.0, 0.0, 1.0, 1.0) - 2.0).abs() < 1e-6);
        assert!((box_sd(0.0, 0.0, 1.0, 2.0) + 1.0).abs() < 1e-6);
        let r = 10.0;
        assert!((hexagon_sd(0.0, 0.0, r) + r * 0.866_025_4).abs() < 1e-4);
        assert!(hexagon_sd(0.0, 8.5, r) < 0.0 && hexagon_sd(0.0, 8.8, r) > 0.0);
        assert!(hexagon_sd(9.9, 0.0, r) < 0.0 && hexagon_sd(10.1, 0.0, r) > 0.0);
        assert_eq!(
            segment_distance((0.0, 1.0), (-1.0, 0.0), (1.0, 0.0)),
            (1.0, 0.5)
        );
    }
}
