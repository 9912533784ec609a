//! Reductions: `sum`, `mean`, `sumsq` (to a scalar of shape `[]`) and `sum_rows` (over the
//! last dimension). Sums accumulate in f64. The gradient of a sum copies `dy` back to every
//! element it summed.

use super::tape::{Tape, Var};

impl Tape {
    /// `Σ_i x_i` -> `[]`. `dx_i = dy`.
    pub fn sum(&self, x: Var) -> Var {
        let s = self.value(x).iter().map(|&v| v as f64).sum::<f64>();
        self.push(vec![s as f32], vec![], &[x], move |dy, g| {
            if g.wants(x) {
                g.acc(x).iter_mut().for_each(|gx| *gx += dy[0]);
            }
        })
    }

    /// `(1/n) Σ_i x_i` -> `[]`. `dx_i = dy / n`.
    pub fn mean(&self, x: Var) -> Var {
        let xv = self.value(x);
        let n = xv.len().max(1) as f64;
        let m = xv.iter().map(|&v| v as f64).sum::<f64>() / n;
        self.push(vec![m as f32], vec![], &[x], move |dy, g| {
            if g.wants(x) {
                let d = (dy[0] as f64 / n) as f32;
                g.acc(x).iter_mut().for_each(|gx| *gx += d);
            }
        })
    }

    /// `Σ_i x_i²` -> `[]` (e.g. `|z|²` of a flow's output). `dx_i = 2 x_i dy`.
    pub fn sumsq(&self, x: Var) -> Var {
        let xv = self.value(x);
        let s = xv.iter().map(|&v| v as f64 * v as f64).sum::<f64>();
        self.push(vec![s as f32], vec![], &[x], move |dy, g| {
            if g.wants(x) {
                for (gx, &v) in g.acc(x).iter_mut().zip(xv.iter()) {
                    *gx += 2.0 * v * dy[0];
                }
            }
        })
    }

    /// Per-row sum over the last dimension: `[.., D]` -> `[..]` (e.g. a coupling layer's
    /// log-determinant `Σ_j s_j` per sample). `dx[r, j] = dy[r]`.
    pub fn sum_rows(&self, x: Var) -> Var {
        let d = self.last_dim(x).max(1);
        let xv = self.value(x);
        let y: Vec<f32> = xv
            .chunks(d)
            .map(|r| r.iter().map(|&v| v as f64).sum::<f64>() as f32)
            .collect();
        let mut shape = self.shape(x);
        shape.pop();
        self.push(y, shape, &[x], move |dy, g| {
            if g.wants(x) {
                for (row, &d) in g.acc(x).chunks_mut(d).zip(dy) {
                    row.iter_mut().for_each(|gx| *gx += d);
                }
            }
        })
    }
}
