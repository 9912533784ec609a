//! [`InferOps`] on the CPU: the `src/ops` kernels (the reference) on host vectors. Each op
//! computes exactly what the autograd tape's op of the same name computes in its forward
//! pass (same kernels, same order of additions), so a model written on these ops matches its
//! tape forward to the bit, or up to GEMM blocking where a layer is split differently.

use std::ops::{Deref, Range};
use std::sync::Arc;

use rayon::prelude::*;

use super::ops::{InferOps, Linear, Norm, RowEntropy};
use crate::error::{Error, Result};
use crate::ops::attention::{AttnShape, attention_forward};
use crate::ops::elementwise::gelu_inplace;
use crate::ops::layernorm::layernorm_rows;
use crate::ops::matmul::linear_rows;
use crate::ops::softmax::{entropy_rows, logsumexp};

/// The CPU op set (no state: the kernels parallelise over rayon's pool).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuOps;

/// A weight on the CPU: a range of a parameter's buffer, shared with its store (no copy).
pub struct CpuWeight {
    buf: Arc<Vec<f32>>,
    range: Range<usize>,
}

impl Deref for CpuWeight {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        &self.buf[self.range.clone()]
    }
}

impl InferOps for CpuOps {
    type Weight = CpuWeight;
    type Act = Vec<f32>;
    const CHUNK: usize = 32;

    fn weight(&self, param: &Arc<Vec<f32>>, range: Range<usize>) -> Result<CpuWeight> {
        if range.start > range.end || range.end > param.len() {
            return Err(Error::invalid(format!(
                "weight {range:?} outside its parameter of {} values",
                param.len()
            )));
        }
        Ok(CpuWeight {
            buf: param.clone(),
            range,
        })
    }

    fn input(&self, host: Vec<f32>) -> Result<Vec<f32>> {
        Ok(host)
    }

    fn linear(
        &self,
        x: &Vec<f32>,
        l: &Linear<CpuWeight>,
        residual: Option<&Vec<f32>>,
        rows: usize,
    ) -> Result<Vec<f32>> {
        let mut y = vec![0.0; rows * l.out];
        linear_rows(x, &l.w, Some(&l.b), rows, l.inp, l.out, &mut y);
        // The tape adds the residual after the layer: `r + (x·wᵀ + b)`, same rounding.
        if let Some(r) = residual {
            y.iter_mut().zip(r).for_each(|(y, &r)| *y += r);
        }
        Ok(y)
    }

    fn layernorm(
        &self,
        x: &Vec<f32>,
        n: &Norm<CpuWeight>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<Vec<f32>> {
        let mut y = vec![0.0; rows * cols];
        layernorm_rows(x, &n.gamma, &n.beta, cols, eps, &mut y, None);
        Ok(y)
    }

    fn gelu(&self, mut x: Vec<f32>) -> Result<Vec<f32>> {
        gelu_inplace(&mut x);
        Ok(x)
    }

    fn add_bias(
        &self,
        mut x: Vec<f32>,
        bias: &CpuWeight,
        rows: usize,
        cols: usize,
    ) -> Result<Vec<f32>> {
        for row in x[..rows * cols].chunks_mut(cols) {
            row.iter_mut().zip(bias.iter()).for_each(|(x, &b)| *x += b);
        }
        Ok(x)
    }

    fn mask_rows(
        &self,
        mut x: Vec<f32>,
        mask: &[bool],
        token: &CpuWeight,
        cols: usize,
    ) -> Result<Vec<f32>> {
        for (row, _) in x.chunks_mut(cols).zip(mask).filter(|(_, m)| **m) {
            row.copy_from_slice(token);
        }
        Ok(x)
    }

    fn attention(
        &self,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        s: AttnShape,
    ) -> Result<Vec<f32>> {
        let mut o = vec![0.0; q.len()];
        // The log-sum-exp per query is for a backward pass; inference drops it.
        let mut lse = vec![0.0; s.batch * s.heads * s.tokens];
        attention_forward(q, k, v, s, &mut o, &mut lse);
        Ok(o)
    }

    fn gather_rows(&self, x: &Vec<f32>, idx: &[usize], cols: usize) -> Result<Vec<f32>> {
        let mut y = Vec::with_capacity(idx.len() * cols);
        for &i in idx {
            y.extend_from_slice(&x[i * cols..(i + 1) * cols]);
        }
        Ok(y)
    }

    fn entropy(
        &self,
        logits: &Vec<f32>,
        rows: usize,
        vocab: usize,
        targets: Option<&[u32]>,
    ) -> Result<RowEntropy> {
        let logits = &logits[..rows * vocab];
        let cross = targets.map(|t| {
            logits
                .par_chunks(vocab)
                .zip(t.par_iter())
                .map(|(row, &k)| logsumexp(row) - row[k as usize])
                .collect()
        });
        Ok((entropy_rows(logits, vocab), cross))
    }
}
