//! 2-D gradient (Perlin) noise and its fractal sum, the raw material of every texture.
//!
//! The permutation table and gradients are drawn from the seeded [`Rng`], so a texture is a
//! pure function of the seed.

use crate::rng::Rng;

/// A gradient-noise field with a 256-cell period.
pub struct Noise {
    perm: [u8; 256],
    grad: [[f32; 2]; 256],
}

impl Noise {
    pub fn new(rng: &mut Rng) -> Noise {
        let mut perm = [0u8; 256];
        for (i, p) in perm.iter_mut().enumerate() {
            *p = i as u8;
        }
        rng.shuffle(&mut perm);
        let mut grad = [[0.0f32; 2]; 256];
        for g in grad.iter_mut() {
            let a = rng.range(0.0, std::f32::consts::TAU);
            *g = [a.cos(), a.sin()];
        }
        Noise { perm, grad }
    }

    fn gradient(&self, ix: i32, iy: i32) -> [f32; 2] {
        let h = self.perm[(ix & 255) as usize] as usize;
        self.grad[self.perm[(h + (iy & 255) as usize) & 255] as usize]
    }

    /// Smooth noise in roughly [-1, 1], zero at lattice points, one lattice cell per unit.
    pub fn at(&self, x: f32, y: f32) -> f32 {
        let (ix, iy) = (floor(x), floor(y));
        let (fx, fy) = (ix as f32, iy as f32);
        let (dx, dy) = (x - fx, y - fy);
        let dot = |cx: i32, cy: i32| {
            let g = self.gradient(ix + cx, iy + cy);
            g[0] * (dx - cx as f32) + g[1] * (dy - cy as f32)
        };
        let (u, v) = (fade(dx), fade(dy));
        let a = lerp(dot(0, 0), dot(1, 0), u);
        let b = lerp(dot(0, 1), dot(1, 1), u);
        lerp(a, b, v) * 1.41
    }

    /// Fractal sum of `octaves` layers (each twice the frequency, half the amplitude),
    /// normalised to roughly [-1, 1].
    pub fn fbm(&self, x: f32, y: f32, octaves: usize) -> f32 {
        let (mut sum, mut amp, mut norm, mut f) = (0.0, 1.0, 0.0, 1.0);
        for o in 0..octaves {
            // Offset each octave so lattice zeros do not line up.
            let off = o as f32 * 17.31;
            sum += amp * self.at(x * f + off, y * f - off);
            norm += amp;
            amp *= 0.5;
            f *= 2.0;
        }
        sum / norm
    }
}

/// `x.floor()` as an integer without the libm call (x86-64 without SSE4.1 has no rounding
/// instruction); exact for |x| < 2^31.
fn floor(x: f32) -> i32 {
    let i = x as i32;
    if (i as f32) > x { i - 1 } else { i }
}

fn fade(t: f32) -> f32 {
    t * t * t * (t * (t * 6.0 - 15.0) + 10.0)
}

pub fn lerp(a: f32, b: f32, t: f32) -> f32 {
    a + (b - a) * t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_seeded() {
        let n = Noise::new(&mut Rng::new(3));
        let m = Noise::new(&mut Rng::new(3));
        for i in 0..2000 {
            let (x, y) = (i as f32 * 0.37, i as f32 * 0.11 - 50.0);
            let v = n.at(x, y);
            assert!(v.abs() <= 1.2, "{v}");
            assert_eq!(v, m.at(x, y));
            assert!(n.fbm(x, y, 4).abs() <= 1.2);
        }
    }
}
