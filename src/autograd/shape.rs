//! Shape ops that move values without arithmetic: `reshape`, `slice_cols`, `concat_cols`.
//! Their gradients move `dy` back to where each value came from.

use super::tape::{Tape, Var};
use crate::error::{Error, Result};

impl Tape {
    /// Same values, new shape (no copy). `dx = dy`.
    pub fn reshape(&self, x: Var, shape: &[usize]) -> Result<Var> {
        if shape.iter().product::<usize>() != self.numel(x) {
            return Err(Error::shape(format!(
                "cannot reshape {:?} to {shape:?}",
                self.shape(x)
            )));
        }
        Ok(
            self.push_shared(self.value(x), shape.to_vec(), &[x], move |dy, g| {
                g.add(x, dy)
            }),
        )
    }

    /// Columns `start..end` of the last dimension: `[.., D]` -> `[.., end-start]` (e.g. one
    /// half of the features in a coupling layer). `dx[.., start..end] += dy`.
    pub fn slice_cols(&self, x: Var, start: usize, end: usize) -> Result<Var> {
        let d = self.last_dim(x);
        if self.shape(x).is_empty() || start >= end || end > d {
            return Err(Error::shape(format!(
                "columns {start}..{end} of {:?}",
                self.shape(x)
            )));
        }
        let w = end - start;
        let y: Vec<f32> = self
            .value(x)
            .chunks(d)
            .flat_map(|row| row[start..end].iter().copied())
            .collect();
        let mut shape = self.shape(x);
        *shape.last_mut().unwrap() = w;
        Ok(self.push(y, shape, &[x], move |dy, g| {
            if g.wants(x) {
                for (gx, dyr) in g.acc(x).chunks_mut(d).zip(dy.chunks(w)) {
                    for (a, &b) in gx[start..end].iter_mut().zip(dyr) {
                        *a += b;
                    }
                }
            }
        }))
    }

    /// Concatenates along the last dimension; all parts share the leading dimensions.
    /// Each part's gradient is its block of columns of `dy`.
    pub fn concat_cols(&self, parts: &[Var]) -> Result<Var> {
        let first = *parts
            .first()
            .ok_or_else(|| Error::invalid("concat_cols of no parts"))?;
        let lead = self.shape(first);
        let lead = &lead[..lead.len().saturating_sub(1)];
        let mut widths = Vec::with_capacity(parts.len());
        for &p in parts {
            let s = self.shape(p);
            if s.is_empty() || s[..s.len() - 1] != *lead {
                return Err(Error::shape(format!(
                    "concat_cols: {s:?} does not fit {:?}",
                    self.shape(first)
                )));
            }
            widths.push(s[s.len() - 1]);
        }
        let total: usize = widths.iter().sum();
        let rows: usize = lead.iter().product();
        let values: Vec<_> = parts.iter().map(|&p| self.value(p)).collect();
        let mut y = Vec::with_capacity(rows * total);
        for r in 0..rows {
            for (v, &w) in values.iter().zip(&widths) {
                y.extend_from_slice(&v[r * w..(r + 1) * w]);
            }
        }
        let mut shape = lead.to_vec();
        shape.push(total);
        let parts = parts.to_vec();
        Ok(self.push(y, shape, &parts.clone(), move |dy, g| {
            let mut offset = 0;
            for (&p, &w) in parts.iter().zip(&widths) {
                if g.wants(p) {
                    let gp = g.acc(p);
                    for r in 0..rows {
                        let src = &dy[r * total + offset..r * total + offset + w];
                        for (a, &b) in gp[r * w..(r + 1) * w].iter_mut().zip(src) {
                            *a += b;
                        }
                    }
                }
                offset += w;
            }
        }))
    }
}
