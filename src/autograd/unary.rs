//! Point-wise functions `y = f(x)`, each with its derivative: the backward pass is
//! `dx = dy ⊙ f'(x)` (chain rule, element by element).

use super::tape::{Tape, Var};
use crate::ops::elementwise::{gelu_grad_scalar, gelu_scalar};
use std::f32::consts::PI;
use std::sync::Arc;

impl Tape {
    /// Applies `f` element-wise; `df(x, y)` is the local derivative `f'(x)` (given `y = f(x)`
    /// too, since for `exp` and `tanh` the output is the cheaper form).
    pub fn map(
        &self,
        x: Var,
        f: impl Fn(f32) -> f32,
        df: impl Fn(f32, f32) -> f32 + 'static,
    ) -> Var {
        let xv = self.value(x);
        let y = Arc::new(xv.iter().map(|&v| f(v)).collect::<Vec<f32>>());
        let yv = y.clone();
        self.push_shared(y, self.shape(x), &[x], move |dy, g| {
            if g.wants(x) {
                let gx = g.acc(x);
                for i in 0..dy.len() {
                    gx[i] += dy[i] * df(xv[i], yv[i]);
                }
            }
        })
    }

    /// `exp(x)`; `d/dx = exp(x) = y`.
    pub fn exp(&self, x: Var) -> Var {
        self.map(x, f32::exp, |_, y| y)
    }

    /// `x²`; `d/dx = 2x`.
    pub fn square(&self, x: Var) -> Var {
        self.map(x, |v| v * v, |x, _| 2.0 * x)
    }

    /// `tanh(x)`; `d/dx = 1 - tanh²(x) = 1 - y²`.
    pub fn tanh(&self, x: Var) -> Var {
        self.map(x, f32::tanh, |_, y| 1.0 - y * y)
    }

    /// `max(x, 0)`; `d/dx = [x > 0]`.
    pub fn relu(&self, x: Var) -> Var {
        self.map(x, |v| v.max(0.0), |x, _| if x > 0.0 { 1.0 } else { 0.0 })
    }

    /// Exact GELU `x·Φ(x)`; `d/dx = Φ(x) + x·φ(x)`.
    pub fn gelu(&self, x: Var) -> Var {
        self.map(x, gelu_scalar, |x, _| gelu_grad_scalar(x))
    }

    /// Soft clamp of affine-coupling log-scales into `(-alpha, alpha)`:
    /// `y = (2α/π)·atan(x/α)`; `d/dx = (2/π) / (1 + (x/α)²)`.
    pub fn soft_clamp(&self, x: Var, alpha: f32) -> Var {
        self.map(
            x,
            move |v| 2.0 * alpha / PI * (v / alpha).atan(),
            move |x, _| 2.0 / PI / (1.0 + (x / alpha) * (x / alpha)),
        )
    }
}
