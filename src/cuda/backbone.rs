//! The frozen backbone's feature extraction on the GPU: EfficientNet-Lite0 (BN folded, as
//! [`crate::models::EfficientNetLite`]) up to the deepest tap, then the PaDiM aggregation of
//! [`crate::detector::FeatureExtractor`] — each tap bilinearly resized to the feature grid,
//! 3x3 average-pooled and written into its columns of the `[B * grid², dim]` feature rows.
//! Weights are uploaded once; from the input upload to the feature rows nothing leaves the
//! device.
//!
//! Layers: the stem (dense 3x3 stride 2) is im2col + one strided-batched GEMM; expand and
//! project (1x1) are strided-batched GEMMs; each GEMM is followed by the per-channel bias
//! (folded BN), ReLU6 where the network has it, and the MBConv skip in one elementwise kernel;
//! depthwise convs are `dwconv2d_f32` (bias and ReLU6 fused). Padding is TF-"same", as on the
//! CPU ([`crate::ops::conv::Padding::tf_same`]).

use std::sync::Arc;

use super::CudaSlice;

use super::glue::{
    DwConv2dDims, Im2colDims, avg_pool, bias_act_nchw, dwconv2d, im2col, nchw_to_rows,
    resize_bilinear,
};
use super::linear::pointwise_conv;
use super::{CudaDevice, CudaError, CudaResult};
use crate::detector::features::FeatureExtractor;
use crate::models::efficientnet::{ConvBn, EfficientNetLite, TapPoint};
use crate::ops::conv::{Activation, Padding};

/// One folded conv layer on the device.
struct DeviceConv {
    weight: CudaSlice<f32>,
    bias: CudaSlice<f32>,
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    depthwise: bool,
    relu6: bool,
}

struct DeviceMbConv {
    expand: Option<DeviceConv>,
    depthwise: DeviceConv,
    project: DeviceConv,
    skip: bool,
}

/// A feature map on the device: `[batch, channels, h, w]`.
struct Map {
    data: CudaSlice<f32>,
    channels: usize,
    h: usize,
    w: usize,
}

/// [`FeatureExtractor`] on a GPU.
pub struct CudaFeatures {
    dev: Arc<CudaDevice>,
    stem: DeviceConv,
    /// Blocks up to the deepest tap.
    blocks: Vec<DeviceMbConv>,
    /// Block index (`None`: the stem) and first feature column of each tap (columns follow
    /// the spec's tap order).
    taps: Vec<(Option<usize>, usize)>,
    input_size: usize,
    grid: usize,
    dim: usize,
    pool: usize,
}

fn upload_conv(dev: &CudaDevice, c: &ConvBn) -> CudaResult<DeviceConv> {
    let depthwise = c.groups > 1;
    if depthwise && (c.groups != c.c_in || c.c_in != c.c_out) {
        return Err(CudaError::Invalid(format!(
            "backbone upload: grouped conv {} -> {} in {} groups is not depthwise",
            c.c_in, c.c_out, c.groups
        )));
    }
    Ok(DeviceConv {
        weight: dev.upload(&c.weight)?,
        bias: dev.upload(&c.bias)?,
        c_in: c.c_in,
        c_out: c.c_out,
        kernel: c.kernel,
        stride: c.stride,
        depthwise,
        relu6: c.act == Activation::Relu6,
    })
}

impl CudaFeatures {
    /// Uploads the backbone layers that `features` needs (up to its deepest tap).
    pub fn upload(dev: Arc<CudaDevice>, features: &FeatureExtractor) -> CudaResult<CudaFeatures> {
        let spec = features.spec();
        if spec.input_norm != crate::detector::features::InputNorm::Imagenet {
            return Err(CudaError::Invalid(
                "GPU features: only the 'imagenet' input normalisation runs on the GPU \
                 ('per-image' and 'both' do not); use --device cpu"
                    .into(),
            ));
        }
        let taps = spec
            .taps
            .iter()
            // Block outputs and the stem only: inner taps (`blocks.N.dw`) and projected taps
            // (`NAME:DIM`) run on the CPU backend for now.
            .map(|t| match TapPoint::parse(t) {
                Some(TapPoint::Stem) => Ok(None),
                Some(TapPoint::Block(n)) => Ok(Some(n)),
                _ => Err(CudaError::Invalid(format!(
                    "GPU features: tap '{t}' is not supported on the GPU (stem or blocks.N, \
                     unprojected); use --device cpu"
                ))),
            })
            .collect::<CudaResult<Vec<Option<usize>>>>()?;
        let net: &EfficientNetLite = features.net();
        // Blocks to run: up to the deepest tapped one (none when only the stem is tapped).
        let run_blocks = taps.iter().flatten().map(|&b| b + 1).max().unwrap_or(0);
        if run_blocks > net.blocks.len() {
            return Err(CudaError::Invalid(format!(
                "GPU features: the backbone has no block {}",
                run_blocks - 1
            )));
        }
        let mut column = 0;
        let taps = taps
            .into_iter()
            .map(|block| {
                let first = column;
                column += match block {
                    None => net.stem.c_out,
                    Some(b) => net.blocks[b].project.c_out,
                };
                (block, first)
            })
            .collect();
        let blocks = net.blocks[..run_blocks]
            .iter()
            .map(|b| {
                Ok(DeviceMbConv {
                    expand: b
                        .expand
                        .as_ref()
                        .map(|e| upload_conv(&dev, e))
                        .transpose()?,
                    depthwise: upload_conv(&dev, &b.depthwise)?,
                    project: upload_conv(&dev, &b.project)?,
                    skip: b.skip,
                })
            })
            .collect::<CudaResult<Vec<_>>>()?;
        Ok(CudaFeatures {
            stem: upload_conv(&dev, &net.stem)?,
            blocks,
            taps,
            input_size: spec.input_size,
            grid: features.grid(),
            dim: features.dim(),
            pool: spec.pool,
            dev,
        })
    }

    /// Feature rows `[B * grid², dim]` of the network inputs `x` (`[B, 3, S, S]` on the host),
    /// left on the device.
    pub fn extract(&self, x: &[f32], batch: usize) -> CudaResult<CudaSlice<f32>> {
        let s = self.input_size;
        super::check_len("features", "x", x.len(), batch * 3 * s * s)?;
        let dev = &*self.dev;
        let (g, dim) = (self.grid, self.dim);
        let mut rows = dev.zeros::<f32>(batch * g * g * dim)?;
        let input = Map {
            data: dev.upload(x)?,
            channels: 3,
            h: s,
            w: s,
        };
        let mut cur = self.conv(&self.stem, &input, batch, None)?;
        let mut written = self.write_taps(None, &cur, batch, &mut rows)?;
        for (i, b) in self.blocks.iter().enumerate() {
            let expanded = match &b.expand {
                Some(e) => Some(self.conv(e, &cur, batch, None)?),
                None => None,
            };
            let dw = self.conv(&b.depthwise, expanded.as_ref().unwrap_or(&cur), batch, None)?;
            let skip = if b.skip { Some(&cur.data) } else { None };
            cur = self.conv(&b.project, &dw, batch, skip)?;
            written += self.write_taps(Some(i), &cur, batch, &mut rows)?;
        }
        if written != dim {
            return Err(CudaError::Invalid(format!(
                "GPU features: taps gave {written} channels, the feature spec {dim}"
            )));
        }
        Ok(rows)
    }

    /// Writes `map` (the output of `block`, `None` = the stem) into the columns of every tap
    /// of it: resized to the grid, pooled. Returns the channels written.
    fn write_taps(
        &self,
        block: Option<usize>,
        map: &Map,
        batch: usize,
        rows: &mut CudaSlice<f32>,
    ) -> CudaResult<usize> {
        let dev = &*self.dev;
        let (g, dim) = (self.grid, self.dim);
        let mut written = 0;
        for &(_, col_offset) in self.taps.iter().filter(|(b, _)| *b == block) {
            let planes = batch * map.channels;
            let resized = if (map.h, map.w) == (g, g) {
                None
            } else {
                Some(resize_bilinear(
                    dev,
                    &map.data,
                    planes,
                    (map.h, map.w),
                    (g, g),
                )?)
            };
            let src = resized.as_ref().unwrap_or(&map.data);
            let pooled = if self.pool > 1 {
                Some(avg_pool(dev, src, planes, g, g, self.pool)?)
            } else {
                None
            };
            let src = pooled.as_ref().unwrap_or(src);
            nchw_to_rows(dev, src, rows, batch, map.channels, g * g, dim, col_offset)?;
            written += map.channels;
        }
        Ok(written)
    }

    /// One folded conv (+ bias, ReLU6 where the layer has it, + `residual`).
    fn conv(
        &self,
        c: &DeviceConv,
        x: &Map,
        batch: usize,
        residual: Option<&CudaSlice<f32>>,
    ) -> CudaResult<Map> {
        let dev = &*self.dev;
        let pad = Padding::tf_same(x.h, x.w, c.kernel, c.stride);
        let (oh, ow) = (x.h.div_ceil(c.stride), x.w.div_ceil(c.stride));
        let data = if c.depthwise {
            let dims = DwConv2dDims {
                batch,
                channels: c.c_in,
                in_h: x.h,
                in_w: x.w,
                k_h: c.kernel,
                k_w: c.kernel,
                stride_h: c.stride,
                stride_w: c.stride,
                pad: (pad.top, pad.bottom, pad.left, pad.right),
            };
            let y = dwconv2d(dev, &x.data, &c.weight, &c.bias, dims, c.relu6)?;
            match residual {
                // (Never taken in Lite0: the skip is on the project conv.)
                Some(_) => {
                    return Err(CudaError::Invalid(
                        "GPU features: skip after a depthwise conv".into(),
                    ));
                }
                None => y,
            }
        } else {
            let gemm = if c.kernel == 1 && c.stride == 1 {
                pointwise_conv(dev, &x.data, &c.weight, batch, c.c_in, c.c_out, x.h * x.w)?
            } else {
                let cols = im2col(
                    dev,
                    &x.data,
                    Im2colDims {
                        batch,
                        channels: c.c_in,
                        in_h: x.h,
                        in_w: x.w,
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
            bias_act_nchw(
                dev,
                &gemm,
                &c.bias,
                residual,
                batch,
                c.c_out,
                oh * ow,
                c.relu6,
            )?
        };
        Ok(Map {
            data,
            channels: c.c_out,
            h: oh,
            w: ow,
        })
    }
}
