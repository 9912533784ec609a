//! Layer normalisation over the last dimension, with a learnable scale and shift.
//!
//! Forward (per row of `D` features): `x̂ = (x - μ)·r`, `r = 1/sqrt(σ² + eps)`,
//! `y = γ ⊙ x̂ + β` (the `ops::layernorm` kernel, which also returns `μ` and `r`).
//! Backward, with `g = dy ⊙ γ` and means over the row's features:
//! `dx = r·(g - mean(g) - x̂·mean(g ⊙ x̂))`, `dγ = Σ_rows dy ⊙ x̂`, `dβ = Σ_rows dy`.

use super::tape::{Tape, Var};
use crate::error::{Error, Result};
use crate::ops::layernorm::layernorm_rows;

impl Tape {
    /// `LayerNorm(x)` over the last dimension with `gamma`, `beta` of shape `[D]`.
    pub fn layernorm(&self, x: Var, gamma: Var, beta: Var, eps: f32) -> Result<Var> {
        let d = self.last_dim(x);
        if self.shape(x).is_empty() || self.numel(gamma) != d || self.numel(beta) != d {
            return Err(Error::shape(format!(
                "layernorm of {:?} with gamma {:?}, beta {:?}",
                self.shape(x),
                self.shape(gamma),
                self.shape(beta)
            )));
        }
        let (xv, gv, bv) = (self.value(x), self.value(gamma), self.value(beta));
        let rows = xv.len() / d.max(1);
        let mut y = vec![0.0; xv.len()];
        let mut stats = vec![0.0; 2 * rows]; // means, then rstds
        layernorm_rows(&xv, &gv, &bv, d, eps, &mut y, Some(&mut stats));
        Ok(
            self.push(y, self.shape(x), &[x, gamma, beta], move |dy, g| {
                let (means, rstds) = stats.split_at(rows);
                let mut xhat = vec![0.0; d];
                let mut dgamma = vec![0.0; d];
                let mut dbeta = vec![0.0; d];
                let want_x = g.wants(x);
                for r in 0..rows {
                    let (xr, dyr) = (&xv[r * d..(r + 1) * d], &dy[r * d..(r + 1) * d]);
                    let (mean, rstd) = (means[r], rstds[r]);
                    let (mut mean_g, mut mean_gx) = (0.0f32, 0.0f32);
                    for j in 0..d {
                        xhat[j] = (xr[j] - mean) * rstd;
                        dgamma[j] += dyr[j] * xhat[j];
                        dbeta[j] += dyr[j];
                        let gj = dyr[j] * gv[j];
                        mean_g += gj;
                        mean_gx += gj * xhat[j];
                    }
                    if want_x {
                        mean_g /= d as f32;
                        mean_gx /= d as f32;
                        let dx = &mut g.acc(x)[r * d..(r + 1) * d];
                        for j in 0..d {
                            dx[j] += rstd * (dyr[j] * gv[j] - mean_g - xhat[j] * mean_gx);
                        }
                    }
                }
                g.add(gamma, &dgamma);
                g.add(beta, &dbeta);
            }),
        )
    }
}
