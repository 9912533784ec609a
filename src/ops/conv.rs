//! 2-D convolution over NCHW tensors, with stride, groups (depthwise), explicit asymmetric
//! padding (so TF "SAME" can be expressed), and a fused bias + activation epilogue.
//!
//! Three kernels, chosen by shape:
//! - pointwise (1x1, stride 1, no padding, one group): a GEMM per image,
//!   `Y[Cout, HW] = W[Cout, Cin] · X[Cin, HW]`;
//! - depthwise (groups == Cin == Cout): [`crate::ops::depthwise`], SIMD rows over a
//!   zero-padded copy of each plane, or on narrow maps channels-last tiles of 8 planes;
//! - anything else (e.g. the 3x3 stem): im2col then a GEMM per image and group.
//!
//! Inference BatchNorm is folded into the weights beforehand ([`fold_batchnorm`]), so a
//! conv + BN + ReLU6 is one pass over memory.

use crate::error::{Error, Result};
use crate::ops::depthwise::depthwise_into;
use crate::ops::elementwise::relu6_scalar;
use crate::ops::matmul::{Trans, gemm};
use crate::tensor::Tensor;
use rayon::prelude::*;

/// Activation applied in the conv epilogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    None,
    Relu6,
}

/// Zero padding on each side of the spatial dims.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Padding {
    pub top: usize,
    pub bottom: usize,
    pub left: usize,
    pub right: usize,
}

impl Padding {
    pub fn symmetric(p: usize) -> Padding {
        Padding {
            top: p,
            bottom: p,
            left: p,
            right: p,
        }
    }

    /// TensorFlow "SAME": output `ceil(in / stride)`, total padding
    /// `max((out-1)*stride + k - in, 0)` split with the extra pixel at the bottom/right.
    pub fn tf_same(h: usize, w: usize, k: usize, stride: usize) -> Padding {
        let total = |n: usize| ((n.div_ceil(stride) - 1) * stride + k).saturating_sub(n);
        let (ph, pw) = (total(h), total(w));
        Padding {
            top: ph / 2,
            bottom: ph - ph / 2,
            left: pw / 2,
            right: pw - pw / 2,
        }
    }
}

/// Geometry of one conv call.
#[derive(Clone, Copy, Debug)]
pub struct ConvShape {
    pub batch: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub groups: usize,
    pub pad: Padding,
}

impl ConvShape {
    pub fn out_h(&self) -> usize {
        (self.h + self.pad.top + self.pad.bottom - self.kh) / self.stride + 1
    }
    pub fn out_w(&self) -> usize {
        (self.w + self.pad.left + self.pad.right - self.kw) / self.stride + 1
    }
    /// Multiply-accumulates of the call (for benchmarks).
    pub fn macs(&self) -> usize {
        self.batch
            * self.c_out
            * self.out_h()
            * self.out_w()
            * (self.c_in / self.groups)
            * self.kh
            * self.kw
    }
}

#[inline]
fn epilogue(v: &mut [f32], bias: f32, act: Activation) {
    match act {
        Activation::None => v.iter_mut().for_each(|x| *x += bias),
        Activation::Relu6 => v.iter_mut().for_each(|x| *x = relu6_scalar(*x + bias)),
    }
}

/// Slice kernel. `x` is `[B,Cin,H,W]`, `w` is `[Cout, Cin/groups, kh, kw]`, `y` is
/// `[B,Cout,OH,OW]`.
pub fn conv2d_into(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    s: &ConvShape,
    act: Activation,
    y: &mut [f32],
) {
    let (oh, ow) = (s.out_h(), s.out_w());
    let in_plane = s.c_in * s.h * s.w;
    let out_plane = s.c_out * oh * ow;
    let pointwise =
        s.kh == 1 && s.kw == 1 && s.stride == 1 && s.groups == 1 && s.pad == Padding::default();
    let depthwise = s.groups == s.c_in && s.groups == s.c_out && s.groups > 1;
    if depthwise {
        depthwise_into(x, w, bias, s, act, y);
        return;
    }
    let per_image = |(img, out): (usize, &mut [f32])| {
        let xi = &x[img * in_plane..(img + 1) * in_plane];
        if pointwise {
            gemm(
                s.c_out,
                oh * ow,
                s.c_in,
                w,
                Trans::N,
                xi,
                Trans::N,
                out,
                0.0,
            );
        } else {
            let cg_in = s.c_in / s.groups;
            let cg_out = s.c_out / s.groups;
            let rows = cg_in * s.kh * s.kw;
            let mut cols = vec![0.0; rows * oh * ow];
            for g in 0..s.groups {
                im2col(&xi[g * cg_in * s.h * s.w..], cg_in, s, &mut cols);
                gemm(
                    cg_out,
                    oh * ow,
                    rows,
                    &w[g * cg_out * rows..],
                    Trans::N,
                    &cols,
                    Trans::N,
                    &mut out[g * cg_out * oh * ow..(g + 1) * cg_out * oh * ow],
                    0.0,
                );
            }
        }
        for (c, plane) in out.chunks_mut(oh * ow).enumerate() {
            epilogue(plane, bias.map_or(0.0, |b| b[c]), act);
        }
    };
    if s.batch > 1 {
        y.par_chunks_mut(out_plane).enumerate().for_each(per_image);
    } else {
        // One image: let the GEMM thread internally instead.
        y.chunks_mut(out_plane).enumerate().for_each(per_image);
    }
}

/// Unfolds the receptive fields of `c` channels of one image into `[c*kh*kw, OH*OW]` (rows
/// by channel, then kernel row, then kernel column; zeros where the window reads padding).
/// Public as the CPU twin of the CUDA backend's `im2col` (`tests/cuda_parity.rs`).
pub fn im2col(x: &[f32], c: usize, s: &ConvShape, cols: &mut [f32]) {
    let (oh, ow, st) = (s.out_h(), s.out_w(), s.stride);
    for ci in 0..c {
        for ky in 0..s.kh {
            for kx in 0..s.kw {
                let row = (ci * s.kh + ky) * s.kw + kx;
                let dst = &mut cols[row * oh * ow..(row + 1) * oh * ow];
                // Output columns whose input column ox*S + kx - left lies in 0..w: lo..hi
                // (the same for every output row), the rest read padding.
                let lo = s.pad.left.saturating_sub(kx).div_ceil(st).min(ow);
                let hi = (s.w + s.pad.left)
                    .checked_sub(kx)
                    .map_or(0, |n| n.div_ceil(st))
                    .clamp(lo, ow);
                for (oy, out) in dst.chunks_exact_mut(ow).enumerate() {
                    let iy = (oy * st + ky) as isize - s.pad.top as isize;
                    if iy < 0 || iy as usize >= s.h || lo == hi {
                        out.fill(0.0);
                        continue;
                    }
                    let line = &x[(ci * s.h + iy as usize) * s.w..][..s.w];
                    out[..lo].fill(0.0);
                    out[hi..].fill(0.0);
                    let (out, src) = (&mut out[lo..hi], &line[lo * st + kx - s.pad.left..]);
                    match st {
                        1 => out.copy_from_slice(&src[..out.len()]),
                        // Every other value: pairs, which the compiler turns into shuffles;
                        // the last output may start a pair the line cuts short.
                        2 => {
                            let full = (src.len() / 2).min(out.len());
                            for (o, pair) in out[..full].iter_mut().zip(src.chunks_exact(2)) {
                                *o = pair[0];
                            }
                            if full < out.len() {
                                out[full] = src[2 * full];
                            }
                        }
                        _ => {
                            for (o, &v) in out.iter_mut().zip(src.iter().step_by(st)) {
                                *o = v;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Tensor-level conv2d.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    pad: Padding,
    groups: usize,
    act: Activation,
) -> Result<Tensor> {
    if x.rank() != 4 || w.rank() != 4 || groups == 0 || stride == 0 {
        return Err(Error::shape(format!(
            "conv2d x {:?} w {:?}",
            x.shape(),
            w.shape()
        )));
    }
    let s = ConvShape {
        batch: x.dim(0),
        c_in: x.dim(1),
        h: x.dim(2),
        w: x.dim(3),
        c_out: w.dim(0),
        kh: w.dim(2),
        kw: w.dim(3),
        stride,
        groups,
        pad,
    };
    let fits = s.c_in.is_multiple_of(groups)
        && s.c_out.is_multiple_of(groups)
        && w.dim(1) == s.c_in / groups
        && s.h + pad.top + pad.bottom >= s.kh
        && s.w + pad.left + pad.right >= s.kw
        && bias.is_none_or(|b| b.numel() == s.c_out);
    if !fits {
        return Err(Error::shape(format!(
            "conv2d x {:?} w {:?} groups {groups} pad {pad:?}",
            x.shape(),
            w.shape()
        )));
    }
    let mut y = vec![0.0; s.batch * s.c_out * s.out_h() * s.out_w()];
    let bv = bias.map(|b| b.f32s());
    conv2d_into(&x.f32s(), &w.f32s(), bv.as_deref(), &s, act, &mut y);
    Ok(Tensor::from_parts(
        y,
        vec![s.batch, s.c_out, s.out_h(), s.out_w()],
    ))
}

/// Folds inference BatchNorm into the preceding conv:
/// `BN(conv(x)) = conv_{w·γ/σ}(x) + (β - μ·γ/σ)`, `σ = sqrt(var + eps)`.
/// Returns the new weights (same layout, output channel first) and the bias.
pub fn fold_batchnorm(
    w: &[f32],
    c_out: usize,
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f32,
) -> (Vec<f32>, Vec<f32>) {
    let per = w.len() / c_out;
    let mut wf = w.to_vec();
    let mut bias = vec![0.0; c_out];
    for c in 0..c_out {
        let k = gamma[c] / (var[c] + eps).sqrt();
        wf[c * per..(c + 1) * per].iter_mut().for_each(|v| *v *= k);
        bias[c] = beta[c] - mean[c] * k;
    }
    (wf, bias)
}

/// Direct 7-loop convolution: the reference the fast kernels are tested against.
pub fn conv2d_naive(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    s: &ConvShape,
    act: Activation,
) -> Vec<f32> {
    let (oh, ow) = (s.out_h(), s.out_w());
    let (cg_in, cg_out) = (s.c_in / s.groups, s.c_out / s.groups);
    let mut y = vec![0.0; s.batch * s.c_out * oh * ow];
    for b in 0..s.batch {
        for co in 0..s.c_out {
            let g = co / cg_out;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = bias.map_or(0.0, |bv| bv[co]) as f64;
                    for ci in 0..cg_in {
                        for ky in 0..s.kh {
                            for kx in 0..s.kw {
                                let iy = (oy * s.stride + ky) as isize - s.pad.top as isize;
                                let ix = (ox * s.stride + kx) as isize - s.pad.left as isize;
                                if iy < 0 || ix < 0 || iy as usize >= s.h || ix as usize >= s.w {
                                    continue;
                                }
                                let xv = x[((b * s.c_in + g * cg_in + ci) * s.h + iy as usize)
                                    * s.w
                                    + ix as usize];
                                let wv = w[((co * cg_in + ci) * s.kh + ky) * s.kw + kx];
                                acc += (xv * wv) as f64;
                            }
                        }
                    }
                    let v = acc as f32;
                    y[((b * s.c_out + co) * oh + oy) * ow + ox] = match act {
                        Activation::None => v,
                        Activation::Relu6 => relu6_scalar(v),
                    };
                }
            }
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::{assert_close, seeded};

    fn check(s: ConvShape, act: Activation) {
        let x: Vec<f32> = seeded(s.batch * s.c_in * s.h * s.w, 1)
            .iter()
            .map(|v| v * 3.0)
            .collect();
        let w = seeded(s.c_out * (s.c_in / s.groups) * s.kh * s.kw, 2);
        let b = seeded(s.c_out, 3);
        let mut y = vec![0.0; s.batch * s.c_out * s.out_h() * s.out_w()];
        conv2d_into(&x, &w, Some(&b), &s, act, &mut y);
        assert_close(&y, &conv2d_naive(&x, &w, Some(&b), &s, act), 1e-4, 1e-4);
    }

    #[test]
    fn all_paths_match_naive() {
        let base = ConvShape {
            batch: 2,
            c_in: 6,
            h: 9,
            w: 11,
            c_out: 6,
            kh: 3,
            kw: 3,
            stride: 1,
            groups: 1,
            pad: Padding::default(),
        };
        // pointwise
        check(
            ConvShape {
                kh: 1,
                kw: 1,
                c_out: 5,
                ..base
            },
            Activation::Relu6,
        );
        // depthwise, stride 1 and 2, TF-SAME asymmetric padding, 3x3 and 5x5
        for (k, st) in [(3, 1), (3, 2), (5, 1), (5, 2)] {
            let pad = Padding::tf_same(9, 11, k, st);
            check(
                ConvShape {
                    kh: k,
                    kw: k,
                    stride: st,
                    groups: 6,
                    pad,
                    ..base
                },
                Activation::Relu6,
            );
        }
        // general: stem-like stride 2, grouped, batch 1
        check(
            ConvShape {
                c_in: 3,
                c_out: 8,
                stride: 2,
                pad: Padding::tf_same(9, 11, 3, 2),
                ..base
            },
            Activation::None,
        );
        check(
            ConvShape {
                groups: 2,
                c_out: 4,
                pad: Padding::symmetric(1),
                batch: 1,
                ..base
            },
            Activation::None,
        );
    }

    #[test]
    fn im2col_edges_match_naive() {
        // The unfold's column ranges at every edge: padding past the kernel's reach (whole
        // rows and columns of zeros), stride 3, non-square kernels, one-pixel and narrow
        // inputs, no padding at all.
        let base = ConvShape {
            batch: 1,
            c_in: 2,
            h: 7,
            w: 5,
            c_out: 3,
            kh: 3,
            kw: 3,
            stride: 1,
            groups: 1,
            pad: Padding::default(),
        };
        let pads = [
            Padding::symmetric(3),
            Padding {
                top: 0,
                bottom: 4,
                left: 5,
                right: 0,
            },
            Padding::default(),
        ];
        for pad in pads {
            for (kh, kw, stride) in [(3, 3, 1), (3, 5, 2), (5, 3, 3), (1, 3, 2)] {
                for (h, w) in [(7, 5), (1, 1), (2, 9)] {
                    let s = ConvShape {
                        h,
                        w,
                        kh,
                        kw,
                        stride,
                        pad,
                        ..base
                    };
                    if s.h + pad.top + pad.bottom < kh || s.w + pad.left + pad.right < kw {
                        continue; // no output
                    }
                    check(s, Activation::None);
                }
            }
        }
    }

    #[test]
    fn tf_same_padding_is_asymmetric_for_stride_two() {
        assert_eq!(
            Padding::tf_same(224, 224, 3, 2),
            Padding {
                top: 0,
                bottom: 1,
                left: 0,
                right: 1
            }
        );
        assert_eq!(
            Padding::tf_same(112, 112, 5, 2),
            Padding {
                top: 1,
                bottom: 2,
                left: 1,
                right: 2
            }
        );
        assert_eq!(Padding::tf_same(28, 28, 5, 1), Padding::symmetric(2));
    }

    #[test]
    fn folded_bn_equals_conv_then_bn() {
        let s = ConvShape {
            batch: 1,
            c_in: 4,
            h: 5,
            w: 5,
            c_out: 3,
            kh: 1,
            kw: 1,
            stride: 1,
            groups: 1,
            pad: Padding::default(),
        };
        let x = seeded(4 * 25, 1);
        let w = seeded(12, 2);
        let (g, b, m) = (
            vec![1.5, 0.5, -1.0],
            vec![0.1, 0.2, 0.3],
            vec![0.3, -0.2, 0.0],
        );
        let var = vec![0.5, 2.0, 1.0];
        let y = conv2d_naive(&x, &w, None, &s, Activation::None);
        let want: Vec<f32> = y
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let c = i / 25;
                (v - m[c]) / (var[c] + 1e-3f32).sqrt() * g[c] + b[c]
            })
            .collect();
        let (wf, bf) = fold_batchnorm(&w, 3, &g, &b, &m, &var, 1e-3);
        assert_close(
            &conv2d_naive(&x, &wf, Some(&bf), &s, Activation::None),
            &want,
            1e-5,
            1e-5,
        );
    }
}
