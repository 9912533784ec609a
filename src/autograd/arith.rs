//! Element-wise arithmetic: `add`, `sub`, `mul`, `scale`, `add_scalar`.
//!
//! Binary ops take `a` and `b` of the same shape, or `b` whose shape is a suffix of `a`'s
//! (`[D]` onto `[R, D]`, a `[N, D]` position embedding onto `[B, N, D]`): `b` is then repeated
//! over the leading dimensions — `a` is walked in blocks of `b.len()` elements, each block
//! meeting all of `b` — and `b`'s gradient sums over the blocks.

use super::tape::{Tape, Var};
use crate::error::{Error, Result};

impl Tape {
    /// Checks that `b` broadcasts onto `a` (equal shape or a suffix of it).
    fn check_suffix(&self, op: &str, a: Var, b: Var) -> Result<()> {
        let (sa, sb) = (self.shape(a), self.shape(b));
        if sb.len() > sa.len() || sa[sa.len() - sb.len()..] != sb[..] {
            return Err(Error::shape(format!(
                "{op}: {sb:?} does not broadcast onto {sa:?} (needs an equal shape or a suffix)"
            )));
        }
        Ok(())
    }

    /// `a + b` (b may broadcast). `da = dy`, `db = Σ_repeats dy`.
    pub fn add(&self, a: Var, b: Var) -> Result<Var> {
        self.add_scaled(a, b, 1.0, "add")
    }

    /// `a - b` (b may broadcast). `da = dy`, `db = -Σ_repeats dy`.
    pub fn sub(&self, a: Var, b: Var) -> Result<Var> {
        self.add_scaled(a, b, -1.0, "sub")
    }

    /// `a + c·b`, shared by `add` and `sub`.
    fn add_scaled(&self, a: Var, b: Var, c: f32, op: &str) -> Result<Var> {
        self.check_suffix(op, a, b)?;
        let (av, bv) = (self.value(a), self.value(b));
        let nb = bv.len().max(1);
        let mut y = Vec::with_capacity(av.len());
        for block in av.chunks(nb) {
            y.extend(block.iter().zip(bv.iter()).map(|(&x, &z)| x + c * z));
        }
        Ok(self.push(y, self.shape(a), &[a, b], move |dy, g| {
            g.add(a, dy);
            if g.wants(b) {
                let gb = g.acc(b);
                for dyb in dy.chunks(nb) {
                    for (gb, &d) in gb.iter_mut().zip(dyb) {
                        *gb += c * d;
                    }
                }
            }
        }))
    }

    /// Element-wise `a ⊙ b` (b may broadcast). `da = dy ⊙ b`, `db = Σ_repeats dy ⊙ a`.
    pub fn mul(&self, a: Var, b: Var) -> Result<Var> {
        self.check_suffix("mul", a, b)?;
        let (av, bv) = (self.value(a), self.value(b));
        let nb = bv.len().max(1);
        let mut y = Vec::with_capacity(av.len());
        for block in av.chunks(nb) {
            y.extend(block.iter().zip(bv.iter()).map(|(&x, &z)| x * z));
        }
        Ok(self.push(y, self.shape(a), &[a, b], move |dy, g| {
            if g.wants(a) {
                for (gab, dyb) in g.acc(a).chunks_mut(nb).zip(dy.chunks(nb)) {
                    for ((ga, &d), &z) in gab.iter_mut().zip(dyb).zip(bv.iter()) {
                        *ga += d * z;
                    }
                }
            }
            if g.wants(b) {
                let gb = g.acc(b);
                for (ab, dyb) in av.chunks(nb).zip(dy.chunks(nb)) {
                    for ((gb, &d), &x) in gb.iter_mut().zip(dyb).zip(ab) {
                        *gb += d * x;
                    }
                }
            }
        }))
    }

    /// `s · x` for a constant `s`. `dx = s · dy`.
    pub fn scale(&self, x: Var, s: f32) -> Var {
        let y: Vec<f32> = self.value(x).iter().map(|&v| s * v).collect();
        self.push(y, self.shape(x), &[x], move |dy, g| {
            if g.wants(x) {
                for (gx, &d) in g.acc(x).iter_mut().zip(dy) {
                    *gx += s * d;
                }
            }
        })
    }

    /// `x + c` for a constant `c`. `dx = dy`.
    pub fn add_scalar(&self, x: Var, c: f32) -> Var {
        let y: Vec<f32> = self.value(x).iter().map(|&v| v + c).collect();
        self.push(y, self.shape(x), &[x], move |dy, g| g.add(x, dy))
    }
}
