//! [`InferOps`] on a CUDA device: the `src/cuda` launchers on device buffers. Weights are
//! uploaded once; activations stay on the device, and only the inputs, the index lists and
//! the entropies cross the bus.

use std::ops::Range;
use std::sync::Arc;

use super::ops::{Conv, ConvOps, InferOps, Linear, Norm, RowEntropy, SCORE_STAGES, ScoreOps};
use super::{DeviceBank, Precision};
use crate::cuda::attention::{AttentionDims, TC_MAX_HEAD_DIM, attention_fwd, attention_fwd_tc};
use crate::cuda::entropy::entropy_fwd;
use crate::cuda::glue::{
    DwConv2dDims, Im2colDims, avg_pool, bias_act_nchw, bias_residual_add, dwconv2d, gather_rows,
    gelu_fwd, im2col, layernorm_fwd, mask_rows, nchw_to_rows, resize_bilinear,
};
use crate::cuda::glue::{gaussian_blur, resize_bilinear as resize};
use crate::cuda::linear::{linear, pointwise_conv};
use crate::cuda::proto_nn::{proto_nn, proto_nn_tc};
use crate::cuda::score;
use crate::cuda::topk_mask::topk_mask;
use crate::cuda::{CudaDevice, CudaSlice};
use crate::detector::pipeline::ClassModel;
use crate::detector::scoring::{ImageScore, MapSpec};
use crate::error::{Error, Result};
use crate::ops::attention::AttnShape;
use crate::ops::conv::{Activation, Padding};

/// The CUDA op set on one device, its GEMMs in one [`Precision`].
#[derive(Clone)]
pub struct CudaOps {
    dev: Arc<CudaDevice>,
    precision: Precision,
}

impl CudaOps {
    pub fn new(dev: Arc<CudaDevice>, precision: Precision) -> CudaOps {
        CudaOps { dev, precision }
    }

    /// The number format of this op set's GEMMs.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Nearest prototype of each of the `rows` queries in a class's `bank` (`[np, dim]`):
    /// the f32 kernel, or in bf16 the tensor-core search, whose result is the same bit for
    /// bit (`proto_nn_tc`: re-ranked in f32 under an error bound, rescanned without one).
    pub(crate) fn nearest(
        &self,
        queries: &CudaSlice<f32>,
        bank: &CudaSlice<f32>,
        rows: usize,
        np: usize,
        dim: usize,
    ) -> Result<(CudaSlice<u32>, CudaSlice<f32>)> {
        Ok(match self.precision {
            Precision::F32 => proto_nn(&self.dev, queries, bank, rows, np, dim)?,
            Precision::Bf16 => {
                let (idx, dist2, _rescans) = proto_nn_tc(&self.dev, queries, bank, rows, np, dim)?;
                (idx, dist2)
            }
        })
    }

    /// The device these ops run on.
    pub fn device(&self) -> &Arc<CudaDevice> {
        &self.dev
    }
}

impl InferOps for CudaOps {
    type Weight = CudaSlice<f32>;
    type Act = CudaSlice<f32>;
    type Idx = CudaSlice<u32>;
    const CHUNK: usize = 64;

    fn weight(&self, param: &Arc<Vec<f32>>, range: Range<usize>) -> Result<CudaSlice<f32>> {
        Ok(self.dev.upload(&param[range])?)
    }

    fn input(&self, host: Vec<f32>) -> Result<CudaSlice<f32>> {
        Ok(self.dev.upload(&host)?)
    }

    fn indices(&self, host: Vec<u32>) -> Result<CudaSlice<u32>> {
        // The kernels read ids as `int`.
        if host.iter().any(|&i| i > i32::MAX as u32) {
            return Err(Error::invalid("row index over 2^31"));
        }
        Ok(self.dev.upload(&host)?)
    }

    fn to_host(&self, x: &CudaSlice<f32>) -> Result<Vec<f32>> {
        Ok(self.dev.download(x)?)
    }

    fn linear(
        &self,
        x: &CudaSlice<f32>,
        l: &Linear<CudaSlice<f32>>,
        residual: Option<&CudaSlice<f32>>,
        rows: usize,
    ) -> Result<CudaSlice<f32>> {
        Ok(linear(
            &self.dev,
            self.precision,
            x,
            &l.w,
            &l.b,
            residual,
            rows,
            l.inp,
            l.out,
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
        mask: &CudaSlice<u32>,
        token: &CudaSlice<f32>,
        cols: usize,
    ) -> Result<CudaSlice<f32>> {
        Ok(mask_rows(&self.dev, &x, mask, token, mask.len(), cols)?)
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
        // bf16: the tensor-core kernel where it applies (head dim <= 64, every ViT preset);
        // f32 otherwise.
        if self.precision == Precision::Bf16 && s.head_dim <= TC_MAX_HEAD_DIM {
            return Ok(attention_fwd_tc(&self.dev, q, k, v, dims, None)?);
        }
        let (o, _lse) = attention_fwd(&self.dev, q, k, v, dims, None)?;
        Ok(o)
    }

    fn gather_rows(
        &self,
        x: &CudaSlice<f32>,
        idx: &CudaSlice<u32>,
        cols: usize,
    ) -> Result<CudaSlice<f32>> {
        Ok(gather_rows(&self.dev, x, idx, x.len() / cols.max(1), cols)?)
    }

    fn entropy(
        &self,
        logits: &CudaSlice<f32>,
        rows: usize,
        vocab: usize,
        targets: Option<&CudaSlice<u32>>,
    ) -> Result<RowEntropy<CudaSlice<f32>>> {
        let out = entropy_fwd(&self.dev, logits, rows, vocab, targets, false)?;
        Ok((out.entropy, out.ce))
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
            pointwise_conv(
                dev,
                self.precision,
                x,
                &c.weight,
                batch,
                c.c_in,
                c.c_out,
                h * w,
            )?
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
            pointwise_conv(
                dev,
                self.precision,
                &cols,
                &c.weight,
                batch,
                k,
                c.c_out,
                oh * ow,
            )?
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

/// The scoring chain on the device: `proto_nn` over the class's bank copy, `topk_mask`, the
/// resize and blur of `glue.cu`, and the kernels of `score.cu`.
impl ScoreOps for CudaOps {
    fn nearest_distance(
        &self,
        class: &ClassModel,
        feats: &CudaSlice<f32>,
        rows: usize,
        dim: usize,
    ) -> Result<CudaSlice<f32>> {
        let bank = class.on_device.get_or_upload(&self.dev, &class.bank)?;
        let np = class.bank.len() / dim.max(1);
        let (_idx, dist2) = self.nearest(feats, &bank, rows, np, dim)?;
        Ok(score::sqrt(&self.dev, &dist2)?)
    }

    fn assign(
        &self,
        codes: &[f32],
        on_device: &DeviceBank,
        rows: &CudaSlice<f32>,
        n: usize,
        dim: usize,
    ) -> Result<CudaSlice<u32>> {
        let codes_dev = on_device.get_or_upload(&self.dev, codes)?;
        let k = codes.len() / dim.max(1);
        let (idx, _dist2) = proto_nn(&self.dev, rows, &codes_dev, n, k, dim)?;
        Ok(idx)
    }

    fn proposal_mask(
        &self,
        abnormality: &CudaSlice<f32>,
        images: usize,
        grid: usize,
        vgrid: usize,
        ratio: f32,
    ) -> Result<(CudaSlice<u32>, usize)> {
        let n = vgrid * vgrid;
        // The CPU's count (f32 `round(ratio · n)`), not the launcher's f64 one.
        let k = crate::recon::masking::count_for(ratio, n);
        let down = score::downsample_max(&self.dev, abnormality, images, grid, vgrid)?;
        Ok((topk_mask(&self.dev, &down, images, n, k)?, k))
    }

    fn masked_rows(
        &self,
        mask: &CudaSlice<u32>,
        images: usize,
        n: usize,
        k: usize,
    ) -> Result<CudaSlice<u32>> {
        Ok(score::masked_rows(&self.dev, mask, images, n, k)?)
    }

    fn pool_cells(
        &self,
        feats: &CudaSlice<f32>,
        images: usize,
        grid: usize,
        vgrid: usize,
        dim: usize,
    ) -> Result<CudaSlice<f32>> {
        Ok(score::pool_cells(
            &self.dev, feats, images, grid, vgrid, dim,
        )?)
    }

    fn scatter_rows(
        &self,
        v: &CudaSlice<f32>,
        idx: &CudaSlice<u32>,
        len: usize,
    ) -> Result<CudaSlice<f32>> {
        Ok(score::scatter_rows(&self.dev, v, idx, len)?)
    }

    fn upsample_product(
        &self,
        e: &CudaSlice<f32>,
        a: Option<&CudaSlice<f32>>,
        images: usize,
        vgrid: usize,
        grid: usize,
    ) -> Result<CudaSlice<f32>> {
        Ok(score::upsample_product(
            &self.dev, e, a, images, vgrid, grid,
        )?)
    }

    fn maps(
        &self,
        patches: &CudaSlice<f32>,
        images: usize,
        grid: usize,
        spec: &MapSpec,
    ) -> Result<CudaSlice<f32>> {
        let side = (spec.size, spec.size);
        let up = resize(&self.dev, patches, images, (grid, grid), side)?;
        let sigma = spec.sigma_at_256 * spec.size as f32 / 256.0;
        Ok(gaussian_blur(
            &self.dev,
            &up,
            images,
            spec.size,
            spec.size,
            sigma as f64,
        )?)
    }

    fn image_scores(
        &self,
        maps: &CudaSlice<f32>,
        images: usize,
        n: usize,
        kind: ImageScore,
    ) -> Result<CudaSlice<f32>> {
        let k = match kind {
            ImageScore::Max => 1,
            ImageScore::TopMean { q } => ImageScore::top_count(q, n),
        };
        Ok(score::image_score(&self.dev, maps, images, n, k)?)
    }

    fn record_nonfinite(
        &self,
        x: &CudaSlice<f32>,
        per: usize,
        flags: &mut CudaSlice<f32>,
        slot: usize,
    ) -> Result<()> {
        Ok(score::record_nonfinite(
            &self.dev,
            x,
            per,
            flags,
            SCORE_STAGES.len(),
            slot,
        )?)
    }
}
