//! Cross-entropy over a chosen subset of rows (e.g. only the masked patches).
//!
//! `L = (1/|S|) Σ_{r∈S} (lse(x_r) - x_r[t_r])` with `lse` the stable log-sum-exp, and
//! `dL/dx_r = (softmax(x_r) - onehot(t_r)) / |S|` for `r ∈ S` (zero for other rows).

use super::tape::{Tape, Var};
use crate::error::{Error, Result};
use crate::ops::softmax::logsumexp;

impl Tape {
    /// Mean cross-entropy of `logits[.., V]` over the rows listed in `rows`; `targets[r]` is
    /// the class of row `r` (one entry per row of `logits`, as in `ops::cross_entropy`).
    pub fn cross_entropy_rows(
        &self,
        logits: Var,
        targets: &[usize],
        rows: &[usize],
    ) -> Result<Var> {
        let v = self.last_dim(logits);
        let n_rows = self.numel(logits) / v.max(1);
        if rows.is_empty() {
            return Err(Error::invalid("cross-entropy over no rows"));
        }
        if targets.len() != n_rows {
            return Err(Error::shape(format!(
                "{} targets for {n_rows} rows of logits {:?}",
                targets.len(),
                self.shape(logits)
            )));
        }
        for &r in rows {
            if r >= n_rows || targets[r] >= v {
                return Err(Error::shape(format!(
                    "row {r} / target {:?} out of [{n_rows}, {v}]",
                    targets.get(r)
                )));
            }
        }
        let xv = self.value(logits);
        let lse: Vec<f32> = rows
            .iter()
            .map(|&r| logsumexp(&xv[r * v..(r + 1) * v]))
            .collect();
        let total: f64 = rows
            .iter()
            .zip(&lse)
            .map(|(&r, &l)| (l - xv[r * v + targets[r]]) as f64)
            .sum();
        let loss = (total / rows.len() as f64) as f32;
        let (rows, targets) = (rows.to_vec(), targets.to_vec());
        Ok(self.push(vec![loss], vec![], &[logits], move |dy, g| {
            if !g.wants(logits) {
                return;
            }
            let c = dy[0] / rows.len() as f32;
            let gx = g.acc(logits);
            for (&r, &l) in rows.iter().zip(&lse) {
                let (xr, gr) = (&xv[r * v..(r + 1) * v], &mut gx[r * v..(r + 1) * v]);
                for j in 0..v {
                    gr[j] += c * (xr[j] - l).exp(); // softmax_j = exp(x_j - lse)
                }
                gr[targets[r]] -= c;
            }
        }))
    }
}
