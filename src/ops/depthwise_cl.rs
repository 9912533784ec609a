//! Depthwise convolution over a **channels-last**, already padded tile: the kernel of the
//! NCHW op in `src/ops/depthwise.rs` on narrow maps, which interleaves 8 planes into a tile
//! (`src/ops/interleave.rs`) and transposes the result back. (The fused MBConv keeps the
//! planes kernel: tried there with the expanded rows channels-last, the transposes, or the
//! GEMMs on pixel-major operands, cost what the kernel saved.)
//!
//! ```text
//! out[oy, ox, ch] = act( bias[ch] + Σ_{ky,kx < k} wt[ky*k + kx, ch] · src[oy*S + ky, ox*S + kx, ch] )
//! ```
//!
//! Why channels-last: with the channels contiguous, one AVX2 vector is 8 channels of one
//! pixel, so every lane of every FMA is useful whatever the map's width (a 14-wide row of an
//! NCHW plane fills 14 of 16 lanes, and each output row re-reads `k` shifted input rows).
//! Register blocking: a block computes up to [`MAX_NX`] neighbouring output pixels of one row
//! for 8 channels; each kernel row's weight vectors are loaded once and used for all of
//! them, each input pixel is loaded once per kernel row (a sliding window, for k3/k5 and
//! strides 1/2), and the accumulators stay in registers until the epilogue (bias is the
//! starting value, ReLU6 clamps in registers). Rows are cut into near-equal blocks (14 = 7 + 7, not 8 + 4 + 2):
//! fewer than ~8 independent accumulators leave the FMA pipes waiting on their latency.
//!
//! Channels past the last multiple of 8 (none in the EfficientNet-Lite family, whose widths
//! are multiples of 8) run `rows_portable`, the scalar reference the SIMD kernel is tested
//! against.

use crate::ops::conv::Activation;
use crate::ops::elementwise::relu6_scalar;

/// f32 lanes of an AVX2 vector: channels per SIMD block.
pub(crate) const LANES: usize = 8;
/// Most output pixels one register block computes (8 accumulators + weight + input of 16).
const MAX_NX: usize = 8;

/// Where things are, in elements, for one call. The input is padded: output `(oy, ox)` reads
/// rows `oy*S .. oy*S + k` and columns `ox*S .. ox*S + k` of it, with no bounds to test.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ClGeom {
    /// Kernel rows and columns, and the stride.
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    /// Output rows and columns.
    pub oh: usize,
    pub ow: usize,
    /// Channels.
    pub c: usize,
    /// Between neighbouring input pixels of a row, and between input rows.
    pub in_px: usize,
    pub in_row: usize,
    /// Between neighbouring output pixels of a row, and between output rows (channels are
    /// contiguous: pixel-major, like the input).
    pub out_px: usize,
    pub out_row: usize,
}

impl ClGeom {
    /// Input elements a call may read (`src.len()` must be at least this).
    fn src_len(&self) -> usize {
        let st = self.stride;
        ((self.oh - 1) * st + self.kh - 1) * self.in_row
            + ((self.ow - 1) * st + self.kw - 1) * self.in_px
            + self.c
    }

    /// Output elements a call may write.
    fn out_len(&self) -> usize {
        (self.oh - 1) * self.out_row + (self.ow - 1) * self.out_px + self.c
    }
}

/// `out = act(depthwise(src, wt) + bias)` over the geometry `g`; `wt` is `[kh*kw, c]`
/// (tap-major: the transpose of the usual `[c, kh*kw]`), `bias` is `[c]`. Runs on the calling
/// thread, with the SIMD kernel when `simd` (AVX2 and FMA detected: [`have_avx2`]).
pub(crate) fn depthwise_cl_with(
    src: &[f32],
    wt: &[f32],
    bias: &[f32],
    g: &ClGeom,
    act: Activation,
    out: &mut [f32],
    simd: bool,
) {
    if g.oh == 0 || g.ow == 0 || g.c == 0 {
        return;
    }
    assert!(
        g.kh >= 1
            && g.kw >= 1
            && g.stride >= 1
            && g.in_px >= g.c
            && g.out_px >= g.c
            && src.len() >= g.src_len()
            && out.len() >= g.out_len()
            && wt.len() >= g.kh * g.kw * g.c
            && bias.len() >= g.c,
        "depthwise_cl: short buffer or bad geometry {g:?}"
    );
    let vec_c = if simd { g.c / LANES * LANES } else { 0 };
    #[cfg(target_arch = "x86_64")]
    if vec_c > 0 {
        // SAFETY: `simd` is only true when AVX2 and FMA were detected (`have_avx2`, or a test
        // that checked it); the assert above bounds every index the kernel forms.
        unsafe { avx2::rows(src, wt, bias, g, act == Activation::Relu6, vec_c, out) };
    }
    if vec_c < g.c {
        rows_portable(src, wt, bias, g, act, vec_c..g.c, out);
    }
}

/// Channels `chans` of every output, scalar code: the reference schedule.
fn rows_portable(
    src: &[f32],
    wt: &[f32],
    bias: &[f32],
    g: &ClGeom,
    act: Activation,
    chans: std::ops::Range<usize>,
    out: &mut [f32],
) {
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            let at = oy * g.out_row + ox * g.out_px;
            for ch in chans.clone() {
                let mut acc = bias[ch];
                for ky in 0..g.kh {
                    let row = (oy * g.stride + ky) * g.in_row;
                    for kx in 0..g.kw {
                        let x = src[row + (ox * g.stride + kx) * g.in_px + ch];
                        acc += wt[(ky * g.kw + kx) * g.c + ch] * x;
                    }
                }
                out[at + ch] = match act {
                    Activation::None => acc,
                    Activation::Relu6 => relu6_scalar(acc),
                };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{ClGeom, LANES, MAX_NX};
    use std::arch::x86_64::*;

    /// Channels `0..vec_c` (a multiple of [`LANES`]) of every output.
    ///
    /// # Safety
    /// AVX2 and FMA must be present; `src`, `wt`, `bias` and `out` hold what `g` says
    /// (`depthwise_cl_with` asserted it); `vec_c <= g.c`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn rows(
        src: &[f32],
        wt: &[f32],
        bias: &[f32],
        g: &ClGeom,
        relu6: bool,
        vec_c: usize,
        out: &mut [f32],
    ) {
        // The block for `NX` pixels: the sliding-window kernel for the kernel widths and
        // strides of the EfficientNet-Lite family, the general one otherwise.
        macro_rules! pick {
            ($nx:literal) => {
                match (g.kw, g.stride) {
                    (3, 1) => window::<$nx, 3, 1>,
                    (5, 1) => window::<$nx, 5, 1>,
                    (3, 2) => window::<$nx, 3, 2>,
                    (5, 2) => window::<$nx, 5, 2>,
                    _ => general::<$nx>,
                }
            };
        }
        // Near-equal blocks of at most MAX_NX pixels per row; each call runs its column of
        // blocks down every row (one indirect call per column, not per block).
        let blocks = g.ow.div_ceil(MAX_NX);
        for b in 0..blocks {
            let (x0, x1) = (b * g.ow / blocks, (b + 1) * g.ow / blocks);
            let f: Column = match x1 - x0 {
                8 => pick!(8),
                7 => pick!(7),
                6 => pick!(6),
                5 => pick!(5),
                4 => pick!(4),
                3 => pick!(3),
                2 => pick!(2),
                _ => pick!(1),
            };
            // SAFETY: pixels x0..x1 <= ow: the caller's contract.
            unsafe { f(src, wt, bias, g, relu6, vec_c, x0, out) };
        }
    }

    /// A column of register blocks: output pixels `x0 .. x0 + NX` of every row, channels
    /// `0..vec_c`.
    type Column = unsafe fn(&[f32], &[f32], &[f32], &ClGeom, bool, usize, usize, &mut [f32]);

    /// `acc` (through ReLU6 when asked) into output pixels `x0..` of row `oy`, channels
    /// `c0..c0+8`, one store per pixel.
    ///
    /// # Safety
    /// AVX2 present; the pixels and channels lie in `out` (`rows`' contract).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn store<const NX: usize>(
        acc: &[__m256; NX],
        g: &ClGeom,
        relu6: bool,
        oy: usize,
        x0: usize,
        c0: usize,
        out: &mut [f32],
    ) {
        let (zero, six) = (_mm256_setzero_ps(), _mm256_set1_ps(6.0));
        for (j, &a) in acc.iter().enumerate() {
            // max(0, a) then min(6, .) with `a` second: a NaN stays NaN, as in clamp.
            let y = if relu6 {
                _mm256_min_ps(six, _mm256_max_ps(zero, a))
            } else {
                a
            };
            let at = oy * g.out_row + (x0 + j) * g.out_px + c0;
            // SAFETY: the caller's contract.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(at), y) };
        }
    }

    /// The sliding window, for kernel width `KW` and stride `S` known at compile time: along
    /// each kernel row, input pixel `i` of the block's window is loaded once and feeds every
    /// output `j` with `i = j*S + kx` (up to `KW` of them), with the row's `KW` weight vectors
    /// held in registers. Per kernel row that is `(NX-1)*S + KW` input loads for `NX*KW`
    /// FMAs, where loading per tap would take one per FMA.
    ///
    /// # Safety
    /// As [`rows`], and `x0 + NX <= g.ow`, `g.kw == KW`, `g.stride == S`.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn window<const NX: usize, const KW: usize, const S: usize>(
        src: &[f32],
        wt: &[f32],
        bias: &[f32],
        g: &ClGeom,
        relu6: bool,
        vec_c: usize,
        x0: usize,
        out: &mut [f32],
    ) {
        let (sp, wp) = (src.as_ptr(), wt.as_ptr());
        for oy in 0..g.oh {
            for c0 in (0..vec_c).step_by(LANES) {
                // SAFETY (all loads below): channel c0 + 8 <= vec_c <= c; input row
                // oy*S + ky < (oh-1)*S + kh and column (x0+j)*S + kx < (ow-1)*S + kw: inside
                // the lengths `depthwise_cl_with` asserted.
                let mut acc = [unsafe { _mm256_loadu_ps(bias.as_ptr().add(c0)) }; NX];
                for ky in 0..g.kh {
                    let w: [__m256; KW] = std::array::from_fn(|kx| unsafe {
                        _mm256_loadu_ps(wp.add((ky * KW + kx) * g.c + c0))
                    });
                    let row = (oy * S + ky) * g.in_row + x0 * S * g.in_px + c0;
                    for i in 0..(NX - 1) * S + KW {
                        let x = unsafe { _mm256_loadu_ps(sp.add(row + i * g.in_px)) };
                        for (kx, &wv) in w.iter().enumerate() {
                            // Constant after unrolling: which output this tap of pixel i feeds.
                            if i >= kx && (i - kx) % S == 0 && (i - kx) / S < NX {
                                let j = (i - kx) / S;
                                acc[j] = _mm256_fmadd_ps(wv, x, acc[j]);
                            }
                        }
                    }
                }
                // SAFETY: output pixels (oy, x0..x0+NX), channels c0..c0+8: inside `out`.
                unsafe { store(&acc, g, relu6, oy, x0, c0, out) };
            }
        }
    }

    /// Any kernel width and stride: one load per FMA.
    ///
    /// # Safety
    /// As [`rows`], and `x0 + NX <= g.ow`.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn general<const NX: usize>(
        src: &[f32],
        wt: &[f32],
        bias: &[f32],
        g: &ClGeom,
        relu6: bool,
        vec_c: usize,
        x0: usize,
        out: &mut [f32],
    ) {
        let (sp, wp) = (src.as_ptr(), wt.as_ptr());
        let px_step = g.stride * g.in_px;
        for oy in 0..g.oh {
            for c0 in (0..vec_c).step_by(LANES) {
                // SAFETY (all loads below): as in `window`.
                let mut acc = [unsafe { _mm256_loadu_ps(bias.as_ptr().add(c0)) }; NX];
                for ky in 0..g.kh {
                    let row = (oy * g.stride + ky) * g.in_row + x0 * px_step + c0;
                    for kx in 0..g.kw {
                        let wv = unsafe { _mm256_loadu_ps(wp.add((ky * g.kw + kx) * g.c + c0)) };
                        let at = row + kx * g.in_px;
                        for (j, a) in acc.iter_mut().enumerate() {
                            let x = unsafe { _mm256_loadu_ps(sp.add(at + j * px_step)) };
                            *a = _mm256_fmadd_ps(wv, x, *a);
                        }
                    }
                }
                // SAFETY: output pixels (oy, x0..x0+NX), channels c0..c0+8: inside `out`.
                unsafe { store(&acc, g, relu6, oy, x0, c0, out) };
            }
        }
    }
}

/// `len` values of `buf` starting at a 64-byte boundary (the buffer grows as needed; its
/// contents are whatever it held). The kernel's 8-float loads then never straddle a cache
/// line when pixels are a multiple of 8 channels apart (a straddling load costs two).
pub(crate) fn aligned_mut(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    const ALIGN_F32: usize = 64 / std::mem::size_of::<f32>();
    if buf.len() < len + ALIGN_F32 {
        buf.resize(len + ALIGN_F32, 0.0);
    }
    let skip = buf.as_ptr().align_offset(64).min(ALIGN_F32);
    &mut buf[skip..skip + len]
}

/// Whether the AVX2 kernel can run here.
pub(crate) fn have_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::seeded;

    /// The output layouts a check writes: dense, and with gaps between pixels and rows that
    /// must stay untouched.
    fn layouts(ow: usize, c: usize) -> [(usize, usize); 2] {
        [(c, ow * c), (c + 2, ow * (c + 2) + 1)]
    }

    /// Both kernels against a direct sum in f64, on a tile with gaps between pixels and rows
    /// (strides past the data), so a wrong stride reads garbage, not a neighbour's zeros.
    fn check(kh: usize, kw: usize, stride: usize, oh: usize, ow: usize, c: usize, act: Activation) {
        let (rows, cols) = ((oh - 1) * stride + kh, (ow - 1) * stride + kw);
        for (out_px, out_row) in layouts(ow, c) {
            let g = ClGeom {
                kh,
                kw,
                stride,
                oh,
                ow,
                c,
                in_px: c + 3,
                in_row: cols * (c + 3) + 5,
                out_px,
                out_row,
            };
            let src: Vec<f32> = seeded(rows * g.in_row, 1).iter().map(|v| 3.0 * v).collect();
            let wt = seeded(kh * kw * c, 2);
            let bias = seeded(c, 3);
            let mut want = vec![f32::NAN; g.out_len()];
            for oy in 0..oh {
                for ox in 0..ow {
                    for ch in 0..c {
                        let mut acc = bias[ch] as f64;
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let x = src[(oy * stride + ky) * g.in_row
                                    + (ox * stride + kx) * g.in_px
                                    + ch];
                                acc += wt[(ky * kw + kx) * c + ch] as f64 * x as f64;
                            }
                        }
                        let v = acc as f32;
                        want[oy * out_row + ox * out_px + ch] = match act {
                            Activation::None => v,
                            Activation::Relu6 => relu6_scalar(v),
                        };
                    }
                }
            }
            let modes: &[bool] = if have_avx2() {
                &[false, true]
            } else {
                &[false]
            };
            for &simd in modes {
                let mut got = vec![f32::NAN; g.out_len()];
                depthwise_cl_with(&src, &wt, &bias, &g, act, &mut got, simd);
                // Every element: the outputs within f32 rounding, the gaps still NaN.
                // f32 sums of at most 25 products of |x| <= 3, |w| <= 1, bias <= 1.
                for (i, (&a, &b)) in got.iter().zip(&want).enumerate() {
                    let ok = if b.is_nan() {
                        a.is_nan()
                    } else {
                        (a - b).abs() <= 2e-5 + 1e-5 * b.abs()
                    };
                    assert!(
                        ok,
                        "k {kh}x{kw}/{stride} {oh}x{ow}x{c} layout ({out_px}, {out_row}) simd {simd}: element {i} {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn ragged_shapes_match_the_direct_sum() {
        // Widths that cut into blocks of 1-8 pixels, channel counts below / at / past a
        // vector with tails, both kernels and strides, non-square kernels, stride 3, one row
        // and one column.
        let cases = [
            (3, 3, 1, 5, 14, 8),
            (5, 5, 1, 7, 14, 16),
            (3, 3, 2, 4, 9, 13),
            (5, 5, 2, 3, 17, 24),
            (3, 3, 1, 1, 1, 3),
            (5, 5, 1, 2, 23, 40),
            (3, 3, 2, 6, 7, 7),
            (1, 1, 1, 2, 5, 9),
            (3, 5, 3, 4, 6, 16),
        ];
        for (i, &(kh, kw, st, oh, ow, c)) in cases.iter().enumerate() {
            let act = if i % 2 == 0 {
                Activation::Relu6
            } else {
                Activation::None
            };
            check(kh, kw, st, oh, ow, c, act);
        }
    }

    #[test]
    fn relu6_keeps_nan() {
        let g = ClGeom {
            kh: 3,
            kw: 3,
            stride: 1,
            oh: 2,
            ow: 2,
            c: 8,
            in_px: 8,
            in_row: 32,
            out_px: 8,
            out_row: 16,
        };
        let mut src = vec![0.5f32; 4 * 32];
        src[32 + 8 + 3] = f32::NAN; // pixel (1, 1), channel 3: read by every output
        let (wt, bias) = (vec![1.0f32; 72], vec![0.0f32; 8]);
        for simd in [false, have_avx2()] {
            let mut out = vec![0.0f32; 32];
            depthwise_cl_with(&src, &wt, &bias, &g, Activation::Relu6, &mut out, simd);
            for (i, v) in out.iter().enumerate() {
                assert_eq!(v.is_nan(), i % 8 == 3, "simd {simd} element {i}: {v}");
            }
        }
    }
}
