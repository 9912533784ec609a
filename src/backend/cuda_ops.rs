//! [`InferOps`] on a CUDA device: the `src/cuda` launchers on device buffers. Weights are
//! uploaded once; activations stay on the device, and only the inputs, the index lists and
//! the entropies cross the bus.

use std::ops::Range;
use std::sync::Arc;

use super::ops::{Conv, ConvOps, InferOps, Linear, Norm, RowEntropy};
use crate::cuda::attention::{AttentionDims, attention_fwd};
use crate::cuda::entropy::entropy_fwd;
use crate::cuda::glue::{
    DwConv2dDims, Im2colDims, avg_pool, bias_act_nchw, bias_residual_add, dwconv2d, gather_rows,
    gelu_fwd, im2col, layernorm_fwd, mask_rows, nchw_to_rows, resize_bilinear,
};
use crate::cuda::linear::{linear, pointwise_conv};
use crate::cuda::{CudaDevice, CudaSlice};
use crate::error::{Error, Result};
use crate::ops::attention::AttnShape;
use crate::ops::conv::{Activation, Padding};

/// The CUDA op set on one device.
#[derive(Clone)]
pub struct CudaOps {
    dev: Arc<CudaDevice>,
}

impl CudaOps {
    pub fn new(dev: Arc<CudaDevice>) -> CudaOps {
        CudaOps { dev }
    }

    /// The device these ops run on.
    pub fn device(&self) -> &Arc<CudaDevice> {
        &self.dev
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

/// The backbone's ops: a dense conv is one cuBLAS GEMM per image batch (`pointwise_conv`,
/// after `im2col` unless 1x1/1) followed by bias, ReLU6 and the skip in one elementwise kernel
/// (`bias_act_nchw`); a depthwise conv is `dwconv2d_f32` with bias and ReLU6 fused.
impl ConvOps for CudaOps {
    fn zeros(&self, len: usize) -> Result<CudaSlice<f32>> {
        Ok(self.dev.zeros::<f32>(len)?)
    }

    fn conv2d(
        &self,
        x: &CudaSlice<f32>,
        c: &Conv<CudaSlice<f32>>,
        batch: usize,
        (h, w): (usize, usize),
        residual: Option<&CudaSlice<f32>>,
    ) -> Result<CudaSlice<f32>> {
        let dev = &*self.dev;
        let pad = Padding::tf_same(h, w, c.kernel, c.stride);
        let (oh, ow) = (c.out_side(h), c.out_side(w));
        let relu6 = c.act == Activation::Relu6;
        if c.depthwise() {
            let (Some(bias), None) = (&c.bias, residual) else {
                return Err(Error::invalid(
                    "GPU conv2d: a depthwise conv needs a bias and takes no skip",
                ));
            };
            let dims = DwConv2dDims {
                batch,
                channels: c.c_in,
                in_h: h,
                in_w: w,
                k_h: c.kernel,
                k_w: c.kernel,
                stride_h: c.stride,
                stride_w: c.stride,
                pad: (pad.top, pad.bottom, pad.left, pad.right),
            };
            return Ok(dwconv2d(dev, x, &c.weight, bias, dims, relu6)?);
        }
        if c.groups != 1 {
            return Err(Error::invalid(format!(
                "GPU conv2d: grouped conv {} -> {} in {} groups is neither dense nor depthwise",
                c.c_in, c.c_out, c.groups
            )));
        }
        let gemm = if c.kernel == 1 && c.stride == 1 {
            pointwise_conv(dev, x, &c.weight, batch, c.c_in, c.c_out, h * w)?
        } else {
            let cols = im2col(
                dev,
                x,
                Im2colDims {
                    batch,
                    channels: c.c_in,
                    in_h: h,
                    in_w: w,
                    out_h: oh,
                    out_w: ow,
                    k_h: c.kernel,
                    k_w: c.kernel,
                    stride: c.stride,
                    pad_top: pad.top,
                    pad_left: pad.left,
                },
            )?;
            let k = c.c_in * c.kernel * c.kernel;
            pointwise_conv(dev, &cols, &c.weight, batch, k, c.c_out, oh * ow)?
        };
        match &c.bias {
            Some(bias) => Ok(bias_act_nchw(
                dev,
                &gemm,
                bias,
                residual,
                batch,
                c.c_out,
                oh * ow,
                relu6,
            )?),
            // A bare matrix product (a tap's projection).
            None if !relu6 && residual.is_none() => Ok(gemm),
            None => Err(Error::invalid(
                "GPU conv2d: an activation or skip without a bias",
            )),
        }
    }

    fn resample(
        &self,
        x: &CudaSlice<f32>,
        planes: usize,
        from: (usize, usize),
        to: (usize, usize),
        pool: usize,
    ) -> Result<Option<CudaSlice<f32>>> {
        let resized = match from == to {
            true => None,
            false => Some(resize_bilinear(&self.dev, x, planes, from, to)?),
        };
        if pool <= 1 {
            return Ok(resized);
        }
        let src = resized.as_ref().unwrap_or(x);
        Ok(Some(avg_pool(&self.dev, src, planes, to.0, to.1, pool)?))
    }

    fn nchw_to_rows(
        &self,
        x: &CudaSlice<f32>,
        rows: &mut CudaSlice<f32>,
        batch: usize,
        channels: usize,
        plane: usize,
        row_width: usize,
        col_offset: usize,
    ) -> Result<()> {
        Ok(nchw_to_rows(
            &self.dev, x, rows, batch, channels, plane, row_width, col_offset,
        )?)
    }
}
