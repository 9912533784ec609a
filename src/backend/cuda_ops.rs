//! [`InferOps`] on a CUDA device: the `src/cuda` launchers on device buffers. Weights are
//! uploaded once; activations stay on the device, and only the inputs, the index lists and
//! the entropies cross the bus.

use std::ops::Range;
use std::sync::Arc;

use super::ops::{InferOps, Linear, Norm, RowEntropy};
use crate::cuda::attention::{AttentionDims, attention_fwd};
use crate::cuda::entropy::entropy_fwd;
use crate::cuda::glue::{bias_residual_add, gather_rows, gelu_fwd, layernorm_fwd, mask_rows};
use crate::cuda::linear::linear;
use crate::cuda::{CudaDevice, CudaSlice};
use crate::error::Result;
use crate::ops::attention::AttnShape;

/// The CUDA op set on one device.
#[derive(Clone)]
pub struct CudaOps {
    dev: Arc<CudaDevice>,
}

impl CudaOps {
    pub fn new(dev: Arc<CudaDevice>) -> CudaOps {
        CudaOps { dev }
    }
}

/// Host indices as the kernels' `i32`s, uploaded.
fn upload_i32(dev: &CudaDevice, v: impl Iterator<Item = usize>) -> Result<CudaSlice<i32>> {
    let v = v
        .map(|i| crate::cuda::to_i32(i, "row index"))
        .collect::<std::result::Result<Vec<i32>, _>>()?;
    Ok(dev.upload(&v)?)
}

impl InferOps for CudaOps {
    type Weight = CudaSlice<f32>;
    type Act = CudaSlice<f32>;
    const CHUNK: usize = 64;

    fn weight(&self, param: &Arc<Vec<f32>>, range: Range<usize>) -> Result<CudaSlice<f32>> {
        Ok(self.dev.upload(&param[range])?)
    }

    fn input(&self, host: Vec<f32>) -> Result<CudaSlice<f32>> {
        Ok(self.dev.upload(&host)?)
    }

    fn linear(
        &self,
        x: &CudaSlice<f32>,
        l: &Linear<CudaSlice<f32>>,
        residual: Option<&CudaSlice<f32>>,
        rows: usize,
    ) -> Result<CudaSlice<f32>> {
        Ok(linear(
            &self.dev, x, &l.w, &l.b, residual, rows, l.inp, l.out,
        )?)
    }

    fn layernorm(
        &self,
        x: &CudaSlice<f32>,
        n: &Norm<CudaSlice<f32>>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<CudaSlice<f32>> {
        let (y, _mean, _rstd) = layernorm_fwd(&self.dev, x, &n.gamma, &n.beta, rows, cols, eps)?;
        Ok(y)
    }

    fn gelu(&self, x: CudaSlice<f32>) -> Result<CudaSlice<f32>> {
        Ok(gelu_fwd(&self.dev, &x)?)
    }

    fn add_bias(
        &self,
        x: CudaSlice<f32>,
        bias: &CudaSlice<f32>,
        rows: usize,
        cols: usize,
    ) -> Result<CudaSlice<f32>> {
        Ok(bias_residual_add(&self.dev, &x, bias, None, rows, cols)?)
    }

    fn mask_rows(
        &self,
        x: CudaSlice<f32>,
        mask: &[bool],
        token: &CudaSlice<f32>,
        cols: usize,
    ) -> Result<CudaSlice<f32>> {
        let flags = upload_i32(&self.dev, mask.iter().map(|&m| usize::from(m)))?;
        Ok(mask_rows(&self.dev, &x, &flags, token, mask.len(), cols)?)
    }

    fn attention(
        &self,
        q: &CudaSlice<f32>,
        k: &CudaSlice<f32>,
        v: &CudaSlice<f32>,
        s: AttnShape,
    ) -> Result<CudaSlice<f32>> {
        let dims = AttentionDims {
            batch: s.batch,
            seq: s.tokens,
            heads: s.heads,
            head_dim: s.head_dim,
        };
        let (o, _lse) = attention_fwd(&self.dev, q, k, v, dims, None)?;
        Ok(o)
    }

    fn gather_rows(
        &self,
        x: &CudaSlice<f32>,
        idx: &[usize],
        cols: usize,
    ) -> Result<CudaSlice<f32>> {
        let idx_dev = upload_i32(&self.dev, idx.iter().copied())?;
        Ok(gather_rows(&self.dev, x, &idx_dev, x.len() / cols, cols)?)
    }

    fn entropy(
        &self,
        logits: &CudaSlice<f32>,
        rows: usize,
        vocab: usize,
        targets: Option<&[u32]>,
    ) -> Result<RowEntropy> {
        let targets = match targets {
            Some(t) => Some(upload_i32(&self.dev, t.iter().map(|&t| t as usize))?),
            None => None,
        };
        let out = entropy_fwd(&self.dev, logits, rows, vocab, targets.as_ref(), false)?;
        let cross = match &out.ce {
            Some(ce) => Some(self.dev.download(ce)?),
            None => None,
        };
        Ok((self.dev.download(&out.entropy)?, cross))
    }
}
