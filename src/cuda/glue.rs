//! Launchers of `kernels/glue.cu`: layernorm, GELU (erf), bias + residual, depthwise conv2d
//! with folded-BN bias and ReLU6, bilinear resize (torch, `align_corners=False`) and the
//! separable Gaussian blur (scipy `reflect`), row selection (the ViT's `[M]` token, gathering
//! masked rows), and the backbone's glue (im2col, per-channel bias + ReLU6 + skip, 3x3 average
//! pooling, NCHW maps into feature rows). Row ops use one warp per row (8 rows per
//! 256-thread block); elementwise ops a grid-stride loop over at most `32 * SMs` blocks.

use super::CudaSlice;
use super::launch::KernelArg::{In, Out, Params};
use super::launch::launch;

use super::params::{BiasActParams, Im2colParams, PoolParams, ToRowsParams};
use super::params::{
    BiasResidualParams, BlurParams, ConvertParams, DwConv2dParams, GeluParams, LayerNormParams,
    ResizeBilinearParams, RowSelectParams,
};
use super::{
    CudaDevice, CudaError, CudaResult, KernelModule, check_len, grid_stride, to_i32, warp_per_row,
};

/// LayerNorm over the last dim of `x [rows, cols]`: `(y, mean [rows], rstd [rows])`.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_fwd(
    dev: &CudaDevice,
    x: &CudaSlice<f32>,
    gamma: &CudaSlice<f32>,
    beta: &CudaSlice<f32>,
    rows: usize,
    cols: usize,
    eps: f32,
) -> CudaResult<(CudaSlice<f32>, CudaSlice<f32>, CudaSlice<f32>)> {
    check_len("layernorm_fwd", "x", x.len(), rows * cols)?;
    check_len("layernorm_fwd", "gamma", gamma.len(), cols)?;
    check_len("layernorm_fwd", "beta", beta.len(), cols)?;
    to_i32(rows * cols, "layernorm rows*cols")?;
    let mut y = dev.alloc_out::<f32>(rows * cols)?;
    let mut mean = dev.alloc_out::<f32>(rows)?;
    let mut rstd = dev.alloc_out::<f32>(rows)?;
    if rows == 0 || cols == 0 {
        return Ok((y, mean, rstd));
    }
    let p = LayerNormParams {
        rows: to_i32(rows, "rows")?,
        cols: to_i32(cols, "cols")?,
        eps,
    };
    // SAFETY: `(x, gamma, beta, float* y, float* mean, float* rstd, LayerNormParams)`;
    // lengths checked/allocated above.
    unsafe {
        launch(
            dev,
            KernelModule::Glue,
            "layernorm_fwd_f32",
            warp_per_row(rows)?,
            &mut [
                In(x),
                In(gamma),
                In(beta),
                Out(&mut y),
                Out(&mut mean),
                Out(&mut rstd),
                Params(&p),
            ],
        )
    }?;
    Ok((y, mean, rstd))
}

/// `y = 0.5 x (1 + erf(x / sqrt 2))`.
pub fn gelu_fwd(dev: &CudaDevice, x: &CudaSlice<f32>) -> CudaResult<CudaSlice<f32>> {
    let n = x.len();
    let p = GeluParams {
        n: to_i32(n, "gelu n")?,
    };
    let mut y = dev.alloc_out::<f32>(n)?;
    if n == 0 {
        return Ok(y);
    }
    // SAFETY: `(const float* x, float* y, GeluParams)`, both n elements.
    unsafe {
        launch(
            dev,
            KernelModule::Glue,
            "gelu_fwd_f32",
            grid_stride(dev, n)?,
            &mut [In(x), Out(&mut y), Params(&p)],
        )
    }?;
    Ok(y)
}

/// `x` rounded to bfloat16 (nearest, ties to even; raw bits), the operands of the bf16 GEMMs
/// ([`super::linear`]); the host twin is [`crate::backend::bf16_bits`].
pub fn f32_to_bf16(dev: &CudaDevice, x: &CudaSlice<f32>) -> CudaResult<CudaSlice<u16>> {
    f32_to_bf16_range(dev, x, 0, x.len())
}

/// [`f32_to_bf16`] of `x[offset..offset + n]` (a chunk of rows).
pub fn f32_to_bf16_range(
    dev: &CudaDevice,
    x: &CudaSlice<f32>,
    offset: usize,
    n: usize,
) -> CudaResult<CudaSlice<u16>> {
    if offset + n > x.len() {
        return Err(CudaError::Invalid(format!(
            "f32_to_bf16: elements {offset}..{} of a buffer of {}",
            offset + n,
            x.len()
        )));
    }
    // The kernel indexes x[offset + i] in size_t, but both ends must fit its int fields.
    to_i32(offset + n, "f32_to_bf16 offset + n")?;
    let p = ConvertParams {
        n: to_i32(n, "f32_to_bf16 n")?,
        offset: to_i32(offset, "f32_to_bf16 offset")?,
    };
    let mut y = dev.alloc_out::<u16>(n)?;
    if n == 0 {
        return Ok(y);
    }
    // SAFETY: `(const float* x, unsigned short* y, ConvertParams)`: the kernel reads
    // x[offset..offset + n] (inside x, checked) and writes y's n elements.
    unsafe {
        launch(
            dev,
            KernelModule::Glue,
            "f32_to_bf16",
            grid_stride(dev, n)?,
            &mut [In(x), Out(&mut y), Params(&p)],
        )
    }?;
    Ok(y)
}

/// `y[r, c] = x[r, c] + bias[c] (+ residual[r, c])`.
pub fn bias_residual_add(
    dev: &CudaDevice,
    x: &CudaSlice<f32>,
    bias: &CudaSlice<f32>,
    residual: Option<&CudaSlice<f32>>,
    rows: usize,
    cols: usize,
) -> CudaResult<CudaSlice<f32>> {
    check_len("bias_residual_add", "x", x.len(), rows * cols)?;
    check_len("bias_residual_add", "bias", bias.len(), cols)?;
    if let Some(r) = residual {
        check_len("bias_residual_add", "residual", r.len(), rows * cols)?;
    }
    to_i32(rows * cols, "bias_residual_add rows*cols")?;
    let mut y = dev.alloc_out::<f32>(rows * cols)?;
    if rows * cols == 0 {
        return Ok(y);
    }
    let p = BiasResidualParams {
        rows: to_i32(rows, "rows")?,
        cols: to_i32(cols, "cols")?,
        has_residual: residual.is_some() as i32,
    };
    // Without a residual, `x` stands in for the unused pointer (never read: has_residual = 0).
    // SAFETY: `(x, bias, residual, float* y, BiasResidualParams)`; x/residual/y rows*cols and
    // bias cols elements, checked above.
    unsafe {
        launch(
            dev,
            KernelModule::Glue,
            "bias_residual_add_f32",
            grid_stride(dev, rows * cols)?,
            &mut [
                In(x),
                In(bias),
                In(residual.unwrap_or(x)),
                Out(&mut y),
                Params(&p),
            ],
        )
    }?;
    Ok(y)
}

/// Geometry of a depthwise convolution (NCHW, weight `[C, 1, KH, KW]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DwConv2dDims {
    pub batch: usize,
    pub channels: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub k_h: usize,
    pub k_w: usize,
    pub stride_h: usize,
    pub stride_w: usize,
    /// `(top, bottom, left, right)`.
    pub pad: (usize, usize, usize, usize),
}

impl DwConv2dDims {
    /// `(out_h, out_w)`; `None` when the padded input is smaller than the kernel.
    pub fn out_hw(&self) -> Option<(usize, usize)> {
        let (t, b, l, r) = self.pad;
        let ph = self.in_h + t + b;
        let pw = self.in_w + l + r;
        if self.k_h == 0 || self.k_w == 0 || self.stride_h == 0 || self.stride_w == 0 {
            return None;
        }
        if ph < self.k_h || pw < self.k_w {
            return None;
        }
        Some((
            (ph - self.k_h) / self.stride_h + 1,
            (pw - self.k_w) / self.stride_w + 1,
        ))
    }
}

/// Depthwise conv + per-channel bias (folded BN) + optional ReLU6: `y [N, C, OH, OW]`.
pub fn dwconv2d(
    dev: &CudaDevice,
    x: &CudaSlice<f32>,
    weight: &CudaSlice<f32>,
    bias: &CudaSlice<f32>,
    dims: DwConv2dDims,
    relu6: bool,
) -> CudaResult<CudaSlice<f32>> {
    let (oh, ow) = dims
        .out_hw()
        .ok_or_else(|| CudaError::Invalid(format!("dwconv2d: bad geometry {dims:?}")))?;
    let planes = dims.batch * dims.channels;
    check_len("dwconv2d", "x", x.len(), planes * dims.in_h * dims.in_w)?;
    check_len(
        "dwconv2d",
        "weight",
        weight.len(),
        dims.channels * dims.k_h * dims.k_w,
    )?;
    check_len("dwconv2d", "bias", bias.len(), dims.channels)?;
    to_i32(planes * dims.in_h * dims.in_w, "dwconv2d input size")?;
    let n_out = planes * oh * ow;
    to_i32(n_out, "dwconv2d output size")?;
    let mut y = dev.alloc_out::<f32>(n_out)?;
    if n_out == 0 {
        return Ok(y);
    }
    let (t, bo, l, r) = dims.pad;
    let p = DwConv2dParams {
        batch: to_i32(dims.batch, "batch")?,
        channels: to_i32(dims.channels, "channels")?,
        in_h: to_i32(dims.in_h, "in_h")?,
        in_w: to_i32(dims.in_w, "in_w")?,
        out_h: to_i32(oh, "out_h")?,
        out_w: to_i32(ow, "out_w")?,
        k_h: to_i32(dims.k_h, "k_h")?,
        k_w: to_i32(dims.k_w, "k_w")?,
        stride_h: to_i32(dims.stride_h, "stride_h")?,
        stride_w: to_i32(dims.stride_w, "stride_w")?,
        pad_top: to_i32(t, "pad_top")?,
        pad_bottom: to_i32(bo, "pad_bottom")?,
        pad_left: to_i32(l, "pad_left")?,
        pad_right: to_i32(r, "pad_right")?,
        relu6: relu6 as i32,
    };
    // SAFETY: `(x, w, bias, float* y, DwConv2dParams)`; all lengths checked; taps outside the
    // input are skipped in the kernel.
    unsafe {
        launch(
            dev,
            KernelModule::Glue,
            "dwconv2d_f32",
            grid_stride(dev, n_out)?,
            &mut [In(x), In(weight), In(bias), Out(&mut y), Params(&p)],
        )
    }?;
    Ok(y)
}

/// Bilinear resize of `planes` images `in_h x in_w` to `out_h x out_w` (torch
/// `F.interpolate(size=(out_h, out_w), mode="bilinear", align_corners=False)`).
pub fn resize_bilinear(
    dev: &CudaDevice,
    x: &CudaSlice<f32>,
    planes: usize,
    (in_h, in_w): (usize, usize),
    (out_h, out_w): (usize, usize),
) -> CudaResult<CudaSlice<f32>> {
    check_len("resize_bilinear", "x", x.len(), planes * in_h * in_w)?;
    if planes > 0 && (in_h == 0 || in_w == 0) && out_h * out_w > 0 {
        return Err(CudaError::Invalid(
            "resize_bilinear: empty input image".into(),
        ));
    }
    let n_out = planes * out_h * out_w;
    to_i32(n_out, "resize output size")?;
    to_i32(planes * in_h * in_w, "resize input size")?;
    let mut y = dev.alloc_out::<f32>(n_out)?;
    if n_out == 0 {
        return Ok(y);
    }
    let p = ResizeBilinearParams {
        planes: to_i32(planes, "planes")?,
        in_h: to_i32(in_h, "in_h")?,
        in_w: to_i32(in_w, "in_w")?,
        out_h: to_i32(out_h, "out_h")?,
        out_w: to_i32(out_w, "out_w")?,
        scale_h: in_h as f32 / out_h as f32,
        scale_w: in_w as f32 / out_w as f32,
    };
    // SAFETY: `(const float* x, float* y, ResizeBilinearParams)`; sizes checked; source
    // indices are clamped to the input in the kernel.
    unsafe {
        launch(
            dev,
            KernelModule::Glue,
            "resize_bilinear_f32",
            grid_stride(dev, n_out)?,
            &mut [In(x), Out(&mut y), Params(&p)],
        )
    }?;
    Ok(y)
}

/// scipy's Gaussian taps (`gaussian_filter(sigma, truncate=4.0)`): radius
/// `int(truncate * sigma + 0.5)`, weights `exp(-x^2 / 2 sigma^2)` normalised to sum 1,
/// computed in f64.
pub fn gaussian_taps(sigma: f64, truncate: f64) -> Vec<f32> {
    let radius = (truncate * sigma + 0.5) as usize;
    if sigma <= 0.0 || radius == 0 {
        return vec![1.0];
    }
    let w: Vec<f64> = (-(radius as i64)..=radius as i64)
        .map(|x| (-0.5 * (x * x) as f64 / (sigma * sigma)).exp())
        .collect();
    let s: f64 = w.iter().sum();
    w.iter().map(|v| (v / s) as f32).collect()
}

fn blur_pass(
    dev: &CudaDevice,
    name: &str,
    x: &CudaSlice<f32>,
    taps: &CudaSlice<f32>,
    planes: usize,
    h: usize,
    w: usize,
) -> CudaResult<CudaSlice<f32>> {
    check_len(name, "x", x.len(), planes * h * w)?;
    if taps.len().is_multiple_of(2) {
        return Err(CudaError::Invalid(format!(
            "{name}: taps must be odd, got {}",
            taps.len()
        )));
    }
    to_i32(planes * h * w, "blur size")?;
    let mut y = dev.alloc_out::<f32>(planes * h * w)?;
    if planes * h * w == 0 {
        return Ok(y);
    }
    let p = BlurParams {
        planes: to_i32(planes, "planes")?,
        h: to_i32(h, "h")?,
        w: to_i32(w, "w")?,
        radius: to_i32(taps.len() / 2, "radius")?,
    };
    // SAFETY: `(const float* x, const float* taps, float* y, BlurParams)`; x/y planes*h*w,
    // taps 2*radius+1 elements; reflected indices stay inside each row/column.
    unsafe {
        launch(
            dev,
            KernelModule::Glue,
            name,
            grid_stride(dev, planes * h * w)?,
            &mut [In(x), In(taps), Out(&mut y), Params(&p)],
        )
    }?;
    Ok(y)
}

/// Horizontal pass (along W) with the given odd-length taps.
pub fn blur_h(
    dev: &CudaDevice,
    x: &CudaSlice<f32>,
    taps: &CudaSlice<f32>,
    planes: usize,
    h: usize,
    w: usize,
) -> CudaResult<CudaSlice<f32>> {
    blur_pass(dev, "blur_h_f32", x, taps, planes, h, w)
}

/// Vertical pass (along H) with the given odd-length taps.
pub fn blur_v(
    dev: &CudaDevice,
    x: &CudaSlice<f32>,
    taps: &CudaSlice<f32>,
    planes: usize,
    h: usize,
    w: usize,
) -> CudaResult<CudaSlice<f32>> {
    blur_pass(dev, "blur_v_f32", x, taps, planes, h, w)
}

/// `scipy.ndimage.gaussian_filter(x, sigma, mode="reflect", truncate=4.0)` over each of
/// `planes` `h x w` images: the vertical pass, then the horizontal one (scipy's axis order).
pub fn gaussian_blur(
    dev: &CudaDevice,
    x: &CudaSlice<f32>,
    planes: usize,
    h: usize,
    w: usize,
    sigma: f64,
) -> CudaResult<CudaSlice<f32>> {
    let taps = dev.upload(&gaussian_taps(sigma, 4.0))?;
    let tmp = blur_v(dev, x, &taps, planes, h, w)?;
    blur_h(dev, &tmp, &taps, planes, h, w)
}

/// `y[r] = if mask[r] != 0 { token } else { x[r] }` for `x [rows, cols]`, `token [cols]`.
pub fn mask_rows(
    dev: &CudaDevice,
    x: &CudaSlice<f32>,
    mask: &CudaSlice<u32>,
    token: &CudaSlice<f32>,
    rows: usize,
    cols: usize,
) -> CudaResult<CudaSlice<f32>> {
    check_len("mask_rows", "x", x.len(), rows * cols)?;
    check_len("mask_rows", "mask", mask.len(), rows)?;
    check_len("mask_rows", "token", token.len(), cols)?;
    to_i32(rows * cols, "mask_rows rows*cols")?;
    let mut y = dev.alloc_out::<f32>(rows * cols)?;
    if rows * cols == 0 {
        return Ok(y);
    }
    let p = RowSelectParams {
        rows: to_i32(rows, "rows")?,
        cols: to_i32(cols, "cols")?,
        src_rows: to_i32(rows, "rows")?,
    };
    // SAFETY: `(const float* x, const int* mask, const float* token, float* y,
    // RowSelectParams)` (u32 flags read as int); x/y rows*cols, mask rows, token cols elements, checked above.
    unsafe {
        launch(
            dev,
            KernelModule::Glue,
            "mask_rows_f32",
            grid_stride(dev, rows * cols)?,
            &mut [In(x), In(mask), In(token), Out(&mut y), Params(&p)],
        )
    }?;
    Ok(y)
}

/// `y [idx.len(), cols]`, `y[r] = x[idx[r]]` for `x [src_rows, cols]`. Indices are checked
/// on the host side by the caller's construction; the kernel writes 0 for any outside
/// `[0, src_rows)` instead of reading out of bounds.
pub fn gather_rows(
    dev: &CudaDevice,
    x: &CudaSlice<f32>,
    idx: &CudaSlice<u32>,
    src_rows: usize,
    cols: usize,
) -> CudaResult<CudaSlice<f32>> {
    check_len("gather_rows", "x", x.len(), src_rows * cols)?;
    let rows = idx.len();
    to_i32(rows * cols, "gather_rows rows*cols")?;
    let mut y = dev.alloc_out::<f32>(rows * cols)?;
    if rows * cols == 0 {
        return Ok(y);
    }
    let p = RowSelectParams {
        rows: to_i32(rows, "rows")?,
        cols: to_i32(cols, "cols")?,
        src_rows: to_i32(src_rows, "src_rows")?,
    };
    // SAFETY: `(const float* x, const int* idx, float* y, RowSelectParams)` (u32 ids read as
    // int: above 2^31 they are negative, so not read); x holds
    // src_rows*cols, idx rows and y rows*cols elements; out-of-range indices are not read.
    unsafe {
        launch(
            dev,
            KernelModule::Glue,
            "gather_rows_f32",
            grid_stride(dev, rows * cols)?,
            &mut [In(x), In(idx), Out(&mut y), Params(&p)],
        )
    }?;
    Ok(y)
}

/// Geometry of [`im2col`]: NCHW input, `k_h x k_w` window, stride, top/left zero padding
/// (bottom/right follow from the output size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Im2colDims {
    pub batch: usize,
    pub channels: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub out_h: usize,
    pub out_w: usize,
    pub k_h: usize,
    pub k_w: usize,
    pub stride: usize,
    pub pad_top: usize,
    pub pad_left: usize,
}

impl Im2colDims {
    /// Elements of the column buffer: `B * C*KH*KW * OH*OW`.
    pub fn col_numel(&self) -> usize {
        self.batch * self.channels * self.k_h * self.k_w * self.out_h * self.out_w
    }
}

/// `x [B, C, H, W]` -> `col [B, C*KH*KW, OH*OW]` (see `kernels/glue.cu`).
pub fn im2col(dev: &CudaDevice, x: &CudaSlice<f32>, d: Im2colDims) -> CudaResult<CudaSlice<f32>> {
    check_len(
        "im2col",
        "x",
        x.len(),
        d.batch * d.channels * d.in_h * d.in_w,
    )?;
    let n = d.col_numel();
    to_i32(n, "im2col columns")?;
    let mut col = dev.alloc_out::<f32>(n)?;
    if n == 0 {
        return Ok(col);
    }
    let p = Im2colParams {
        batch: to_i32(d.batch, "batch")?,
        channels: to_i32(d.channels, "channels")?,
        in_h: to_i32(d.in_h, "in_h")?,
        in_w: to_i32(d.in_w, "in_w")?,
        out_h: to_i32(d.out_h, "out_h")?,
        out_w: to_i32(d.out_w, "out_w")?,
        k_h: to_i32(d.k_h, "k_h")?,
        k_w: to_i32(d.k_w, "k_w")?,
        stride_h: to_i32(d.stride, "stride")?,
        stride_w: to_i32(d.stride, "stride")?,
        pad_top: to_i32(d.pad_top, "pad_top")?,
        pad_left: to_i32(d.pad_left, "pad_left")?,
    };
    // SAFETY: `(const float* x, float* col, Im2colParams)`; x holds B*C*H*W and col
    // B*C*KH*KW*OH*OW elements (checked); reads are bounds-checked against in_h/in_w.
    unsafe {
        launch(
            dev,
            KernelModule::Glue,
            "im2col_f32",
            grid_stride(dev, n)?,
            &mut [In(x), Out(&mut col), Params(&p)],
        )
    }?;
    Ok(col)
}

/// `y = act(x + bias[c]) (+ residual)` over `x [B, C, plane]`, act = ReLU6 when `relu6`.
#[allow(clippy::too_many_arguments)]
pub fn bias_act_nchw(
    dev: &CudaDevice,
    x: &CudaSlice<f32>,
    bias: &CudaSlice<f32>,
    residual: Option<&CudaSlice<f32>>,
    batch: usize,
    channels: usize,
    plane: usize,
    relu6: bool,
) -> CudaResult<CudaSlice<f32>> {
    let n = batch * channels * plane;
    check_len("bias_act_nchw", "x", x.len(), n)?;
    check_len("bias_act_nchw", "bias", bias.len(), channels)?;
    if let Some(r) = residual {
        check_len("bias_act_nchw", "residual", r.len(), n)?;
    }
    to_i32(n, "bias_act_nchw elements")?;
    let mut y = dev.alloc_out::<f32>(n)?;
    if n == 0 {
        return Ok(y);
    }
    let p = BiasActParams {
        batch: to_i32(batch, "batch")?,
        channels: to_i32(channels, "channels")?,
        plane: to_i32(plane, "plane")?,
        relu6: relu6 as i32,
        has_residual: residual.is_some() as i32,
    };
    // Without a residual, `x` stands in for the unused pointer (never read).
    // SAFETY: `(x, bias, residual, float* y, BiasActParams)`; x/residual/y B*C*plane and bias
    // C elements, checked above.
    unsafe {
        launch(
            dev,
            KernelModule::Glue,
            "bias_act_nchw_f32",
            grid_stride(dev, n)?,
            &mut [
                In(x),
                In(bias),
                In(residual.unwrap_or(x)),
                Out(&mut y),
                Params(&p),
            ],
        )
    }?;
    Ok(y)
}

/// `k x k` average pooling (stride 1, `k/2` padding, `count_include_pad=False`) of each of
/// `planes` `h x w` planes; `k` odd.
pub fn avg_pool(
    dev: &CudaDevice,
    x: &CudaSlice<f32>,
    planes: usize,
    h: usize,
    w: usize,
    k: usize,
) -> CudaResult<CudaSlice<f32>> {
    check_len("avg_pool", "x", x.len(), planes * h * w)?;
    if k.is_multiple_of(2) {
        return Err(CudaError::Invalid(format!(
            "avg_pool: window {k} is not odd"
        )));
    }
    to_i32(planes * h * w, "avg_pool elements")?;
    let mut y = dev.alloc_out::<f32>(planes * h * w)?;
    if planes * h * w == 0 {
        return Ok(y);
    }
    let p = PoolParams {
        planes: to_i32(planes, "planes")?,
        h: to_i32(h, "h")?,
        w: to_i32(w, "w")?,
        k: to_i32(k, "k")?,
    };
    // SAFETY: `(const float* x, float* y, PoolParams)`, both planes*h*w elements; the window
    // is clipped to the plane.
    unsafe {
        launch(
            dev,
            KernelModule::Glue,
            "avg_pool_f32",
            grid_stride(dev, planes * h * w)?,
            &mut [In(x), Out(&mut y), Params(&p)],
        )
    }?;
    Ok(y)
}

/// Writes `x [B, C, plane]` into columns `col_offset..col_offset + C` of the feature rows
/// `rows [B * plane, row_width]` (row `b * plane + p`).
#[allow(clippy::too_many_arguments)]
pub fn nchw_to_rows(
    dev: &CudaDevice,
    x: &CudaSlice<f32>,
    rows: &mut CudaSlice<f32>,
    batch: usize,
    channels: usize,
    plane: usize,
    row_width: usize,
    col_offset: usize,
) -> CudaResult<()> {
    let n = batch * channels * plane;
    check_len("nchw_to_rows", "x", x.len(), n)?;
    check_len(
        "nchw_to_rows",
        "rows",
        rows.len(),
        batch * plane * row_width,
    )?;
    if col_offset + channels > row_width {
        return Err(CudaError::Invalid(format!(
            "nchw_to_rows: columns {col_offset}..{} exceed the row width {row_width}",
            col_offset + channels
        )));
    }
    to_i32(batch * plane * row_width, "nchw_to_rows output")?;
    if n == 0 {
        return Ok(());
    }
    let p = ToRowsParams {
        batch: to_i32(batch, "batch")?,
        channels: to_i32(channels, "channels")?,
        plane: to_i32(plane, "plane")?,
        row_width: to_i32(row_width, "row_width")?,
        col_offset: to_i32(col_offset, "col_offset")?,
    };
    // SAFETY: `(const float* x, float* y, ToRowsParams)`; x holds B*C*plane and y
    // B*plane*row_width elements (checked), and col_offset + C <= row_width, so every write
    // index is in bounds.
    unsafe {
        launch(
            dev,
            KernelModule::Glue,
            "nchw_to_rows_f32",
            grid_stride(dev, n)?,
            &mut [In(x), Out(rows), Params(&p)],
        )
    }?;
    Ok(())
}
