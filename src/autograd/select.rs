//! Row selection: `gather_rows` / `embedding` (rows picked by index) and `mask_token_select`
//! (masked rows replaced by a learnable mask token). A row of `x` is a slice over its last
//! dimension; gradients go back to the rows they came from, summed where a row was picked
//! more than once.

use super::tape::{Tape, Var};
use crate::error::{Error, Result};

impl Tape {
    /// `out[i] = x[idx[i]]`: `x[R, D]` (any leading dims, viewed as rows) -> `[len(idx), D]`.
    /// `dx[idx[i]] += dy[i]`.
    pub fn gather_rows(&self, x: Var, idx: &[usize]) -> Result<Var> {
        let d = self.last_dim(x);
        let rows = self.numel(x) / d.max(1);
        if let Some(&bad) = idx.iter().find(|&&i| i >= rows) {
            return Err(Error::shape(format!(
                "gather_rows: row {bad} of {:?} ({rows} rows)",
                self.shape(x)
            )));
        }
        let xv = self.value(x);
        let mut y = Vec::with_capacity(idx.len() * d);
        for &i in idx {
            y.extend_from_slice(&xv[i * d..(i + 1) * d]);
        }
        let idx = idx.to_vec();
        Ok(self.push(y, vec![idx.len(), d], &[x], move |dy, g| {
            if g.wants(x) {
                let gx = g.acc(x);
                for (&i, dyr) in idx.iter().zip(dy.chunks(d)) {
                    for (a, &b) in gx[i * d..(i + 1) * d].iter_mut().zip(dyr) {
                        *a += b;
                    }
                }
            }
        }))
    }

    /// Embedding lookup: `table[V, D]`, token ids -> `[len(ids), D]` (a `gather_rows`).
    pub fn embedding(&self, table: Var, ids: &[usize]) -> Result<Var> {
        self.gather_rows(table, ids)
    }

    /// `out[i] = mask[i] ? token : x[i]` for rows `i` of `x[.., D]`, `token[D]`.
    /// `dx[i] = mask[i] ? 0 : dy[i]`, `dtoken = Σ_{i masked} dy[i]`.
    pub fn mask_token_select(&self, x: Var, token: Var, mask: &[bool]) -> Result<Var> {
        let d = self.last_dim(x);
        let rows = self.numel(x) / d.max(1);
        if self.numel(token) != d || mask.len() != rows || self.shape(x).is_empty() {
            return Err(Error::shape(format!(
                "mask_token_select: x {:?}, token {:?}, {} mask flags",
                self.shape(x),
                self.shape(token),
                mask.len()
            )));
        }
        let (xv, tv) = (self.value(x), self.value(token));
        let mut y = Vec::with_capacity(xv.len());
        for (r, &m) in mask.iter().enumerate() {
            y.extend_from_slice(if m { &tv[..] } else { &xv[r * d..(r + 1) * d] });
        }
        let mask = mask.to_vec();
        Ok(self.push(y, self.shape(x), &[x, token], move |dy, g| {
            for (r, (&m, dyr)) in mask.iter().zip(dy.chunks(d)).enumerate() {
                if m {
                    g.add(token, dyr);
                } else if g.wants(x) {
                    for (a, &b) in g.acc(x)[r * d..(r + 1) * d].iter_mut().zip(dyr) {
                        *a += b;
                    }
                }
            }
        }))
    }
}
