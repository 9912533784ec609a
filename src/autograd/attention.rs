//! Multi-head self-attention on the fused, flash-style kernels of `ops::attention`, and the
//! split of a fused `qkv` projection into its three parts.
//!
//! `O = softmax(Q Kᵀ / √D) V` per (batch, head), with `q, k, v, o` laid out `[B, N, H*D]`.
//! The forward keeps each row's log-sum-exp so the backward can recompute the probabilities
//! `P` tile by tile: `dV = Pᵀ dO`, `dS = P ⊙ (dO Vᵀ - rowsum(dO ⊙ O))`, `dQ = dS K / √D`,
//! `dK = dSᵀ Q / √D` (see `ops::attention::attention_backward`).

use super::tape::{Tape, Var};
use crate::error::{Error, Result};
use crate::ops::attention::{AttnShape, attention_backward, attention_forward};
use std::sync::Arc;

impl Tape {
    /// Attention over `heads` heads; `q, k, v` are `[B, N, H*D]`, the result too.
    pub fn attention(&self, q: Var, k: Var, v: Var, heads: usize) -> Result<Var> {
        let shape = self.shape(q);
        let ok = shape.len() == 3 && self.shape(k) == shape && self.shape(v) == shape;
        if !ok || heads == 0 || !shape[2].is_multiple_of(heads) {
            return Err(Error::shape(format!(
                "attention q {shape:?} k {:?} v {:?} with {heads} heads",
                self.shape(k),
                self.shape(v)
            )));
        }
        let s = AttnShape {
            batch: shape[0],
            tokens: shape[1],
            heads,
            head_dim: shape[2] / heads,
        };
        let (qv, kv, vv) = (self.value(q), self.value(k), self.value(v));
        let n = qv.len();
        let mut o = vec![0.0; n];
        let mut lse = vec![0.0; s.batch * s.heads * s.tokens];
        attention_forward(&qv, &kv, &vv, s, &mut o, &mut lse);
        let o = Arc::new(o);
        let ov = o.clone();
        Ok(self.push_shared(o, shape, &[q, k, v], move |dy, g| {
            // The kernel overwrites its outputs, so it writes into scratch buffers that are
            // then added to the accumulated gradients.
            let (mut dq, mut dk, mut dv) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
            attention_backward(&qv, &kv, &vv, &ov, &lse, dy, s, &mut dq, &mut dk, &mut dv);
            g.add(q, &dq);
            g.add(k, &dk);
            g.add(v, &dv);
        }))
    }

    /// Splits the output of a fused `[.., 3W]` qkv projection into `q, k, v` of `[.., W]`
    /// (columns `0..W`, `W..2W`, `2W..3W`, the timm/BEiT order).
    pub fn split_qkv(&self, qkv: Var) -> Result<(Var, Var, Var)> {
        let d = self.last_dim(qkv);
        if !d.is_multiple_of(3) {
            return Err(Error::shape(format!(
                "split_qkv: last dimension of {:?} is not a multiple of 3",
                self.shape(qkv)
            )));
        }
        let w = d / 3;
        Ok((
            self.slice_cols(qkv, 0, w)?,
            self.slice_cols(qkv, w, 2 * w)?,
            self.slice_cols(qkv, 2 * w, 3 * w)?,
        ))
    }
}
