//! One MBConv block fused on bands of rows: expand 1x1 (+ bias, act) -> depthwise kxk/s
//! (+ bias, act; TF-"same" padding) -> project 1x1 (+ bias, act) [+ the block input], the
//! inverted-residual block of EfficientNet-Lite, with the expanded maps never leaving the
//! cache.
//!
//! Why: run as three convs, each block writes its expanded map (4-6x the input's channels) to
//! memory, reads it back for the depthwise conv, writes that map and reads it for the
//! projection — at 112x112 and 56x56 the backbone is bound by that traffic, not by its
//! arithmetic. Here one task walks down one image (or one part of it, when there are fewer
//! images than threads) in bands of output rows:
//! 1. expand the input rows the band's depthwise window needs into `E [c_exp, rows, W]`
//!    (a GEMM on a block of rows of every input channel). Bands overlap by `k - stride` input
//!    rows: those are kept from the band before (moved to the top of `E`), not recomputed;
//! 2. depthwise conv of each channel's rows of `E` into `D [c_exp, band rows, OW]`, with the
//!    band's share of the padding (zero rows above the image, below it);
//! 3. project `D` straight into the band's rows of the output (a GEMM whose output rows are a
//!    whole plane apart), then bias, act and the skip on those rows.
//!
//! A band is sized so that `E` holds about [`BAND_BYTES`]. Every output value is computed by
//! the same kernels as the unfused convs (`gemm`, `src/ops/depthwise.rs`) on the same values;
//! only the GEMMs' blocking differs, so results agree to f32 rounding (tests below).

use std::cell::RefCell;

use rayon::prelude::*;

use crate::ops::conv::{Activation, ConvShape, Padding};
use crate::ops::depthwise::PlaneConv;
use crate::ops::elementwise::relu6_scalar;
use crate::ops::matmul::gemm_rows_serial;
use crate::ops::spare;

/// Target size of one band's expanded rows: about half of a Zen 4 core's L2. Measured on the
/// Lite0 backbone (`pmad bench`, 2 threads, best of 4 alternating rounds): 96 KiB and 192 KiB
/// bands gain little over the unfused convs (the GEMMs get too few columns per call), 512
/// KiB-1 MiB gain most, 2 MiB less again.
pub const BAND_BYTES: usize = 512 << 10;

/// Geometry of one fused block call.
#[derive(Clone, Copy, Debug)]
pub struct MbConvShape {
    pub batch: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    /// Channels after the expansion (the depthwise conv's).
    pub c_exp: usize,
    /// Depthwise kernel side and stride.
    pub k: usize,
    pub stride: usize,
    pub c_out: usize,
}

impl MbConvShape {
    /// The block on a `[batch, c_in, h, w]` input: channels `[c_in, c_exp, c_out]` through
    /// the expand, depthwise (`k`, `stride`) and project convs.
    pub fn new(
        batch: usize,
        (h, w): (usize, usize),
        [c_in, c_exp, c_out]: [usize; 3],
        (k, stride): (usize, usize),
    ) -> MbConvShape {
        MbConvShape {
            batch,
            c_in,
            h,
            w,
            c_exp,
            k,
            stride,
            c_out,
        }
    }

    pub fn out_h(&self) -> usize {
        self.h.div_ceil(self.stride)
    }
    pub fn out_w(&self) -> usize {
        self.w.div_ceil(self.stride)
    }
}

/// One layer's weights (`[c_out, c_in]` for a 1x1 conv, `[c, k*k]` for the depthwise one),
/// bias and activation.
#[derive(Clone, Copy)]
pub struct Layer<'a> {
    pub weight: &'a [f32],
    pub bias: &'a [f32],
    pub act: Activation,
}

/// A raw output pointer shared by the tasks, each writing its own rows.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint elements through it (see `mbconv_into`).
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

/// [`mbconv_into`] into a new output (a spare activation, `crate::ops::spare`: every value
/// is written by the projection's GEMM, beta = 0).
pub fn mbconv(
    x: &[f32],
    [expand, depthwise, project]: [Layer<'_>; 3],
    skip: bool,
    s: &MbConvShape,
) -> Vec<f32> {
    let mut y = spare::take(s.batch * s.c_out * s.out_h() * s.out_w());
    mbconv_into(x, expand, depthwise, project, skip, s, &mut y);
    y
}

/// `y [batch, c_out, OH, OW]` = the block of `x [batch, c_in, h, w]`; `skip` adds `x` at the
/// end (needs stride 1 and `c_in == c_out`).
pub fn mbconv_into(
    x: &[f32],
    expand: Layer<'_>,
    depthwise: Layer<'_>,
    project: Layer<'_>,
    skip: bool,
    s: &MbConvShape,
    y: &mut [f32],
) {
    let (oh, ow) = (s.out_h(), s.out_w());
    assert!(
        x.len() == s.batch * s.c_in * s.h * s.w
            && y.len() == s.batch * s.c_out * oh * ow
            && expand.weight.len() == s.c_exp * s.c_in
            && expand.bias.len() == s.c_exp
            && depthwise.weight.len() == s.c_exp * s.k * s.k
            && depthwise.bias.len() == s.c_exp
            && project.weight.len() == s.c_out * s.c_exp
            && project.bias.len() == s.c_out
            && s.stride >= 1
            && s.k >= s.stride
            && (!skip || (s.stride == 1 && s.c_in == s.c_out)),
        "mbconv: shapes disagree"
    );
    if y.is_empty() {
        return;
    }
    // Fewer images than threads: each image is cut into parts of rows (the parts recompute
    // `k - stride` expanded rows at their seams).
    let threads = rayon::current_num_threads().max(1);
    let parts = threads.div_ceil(s.batch).min(oh);
    let out = OutPtr(y.as_mut_ptr());
    (0..s.batch * parts).into_par_iter().for_each(|task| {
        let (img, part) = (task / parts, task % parts);
        let (r0, r1) = (part * oh / parts, (part + 1) * oh / parts);
        let layers = [expand, depthwise, project];
        BUFFERS.with_borrow_mut(|bufs| {
            // SAFETY: this task writes only rows r0..r1 of every output plane of image `img`;
            // the tasks' (img, rows) pairs are disjoint, and `y` outlives the parallel loop.
            unsafe { image_rows(x, layers, skip, s, img, (r0, r1), out, bufs) }
        });
    });
}

thread_local! {
    /// Each thread's band buffers (expanded rows, depthwise rows, the depthwise scratch),
    /// reused by every call: about [`BAND_BYTES`] plus a band of depthwise output per thread,
    /// instead of a fresh zeroed allocation per task.
    static BUFFERS: RefCell<Buffers> = const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// Expanded rows `E`, depthwise rows `D`, the depthwise scratch.
type Buffers = (Vec<f32>, Vec<f32>, Vec<f32>);

/// Output rows `r0..r1` of image `img`, band by band, in this thread's `bufs`.
///
/// # Safety
/// `out` points at the whole output `[batch, c_out, OH, OW]`; nothing else reads or writes
/// rows `r0..r1` of image `img`'s planes during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn image_rows(
    x: &[f32],
    [expand, depthwise, project]: [Layer<'_>; 3],
    skip: bool,
    s: &MbConvShape,
    img: usize,
    (r0, r1): (usize, usize),
    out: OutPtr,
    (e, d, scratch): &mut Buffers,
) {
    let (h, w, k, st) = (s.h, s.w, s.k, s.stride);
    let (oh, ow) = (s.out_h(), s.out_w());
    let pad = Padding::tf_same(h, w, k, st);
    let in_plane = h * w;
    let xi = &x[img * s.c_in * in_plane..(img + 1) * s.c_in * in_plane];
    // Band height: E's rows (band * stride + k - stride) about BAND_BYTES.
    let row_bytes = s.c_exp * w * std::mem::size_of::<f32>();
    let band = ((BAND_BYTES / row_bytes).saturating_sub(k - st) / st).clamp(1, r1 - r0);
    let cap = band * st + k - st; // most input rows one band reads
    // Stale values are fine: every value of `e` and `d` is written before it is read.
    e.resize(s.c_exp * cap * w, 0.0);
    d.resize(s.c_exp * band * ow, 0.0);
    // Input rows held in `e` (row `lo` at the top), none yet.
    let (mut lo, mut hi) = (0usize, 0usize);
    let mut o0 = r0;
    while o0 < r1 {
        let o1 = (o0 + band).min(r1);
        // Padded rows o0*st .. (o1-1)*st + k, i.e. image rows from o0*st - top.
        let first = (o0 * st) as isize - pad.top as isize;
        let need_lo = first.max(0) as usize;
        let need_hi = ((first + ((o1 - o0 - 1) * st + k) as isize).max(0) as usize).min(h);
        // 1. Expanded rows need_lo..need_hi: keep what `e` already holds, compute the rest.
        let keep_from = if need_lo >= lo && need_lo < hi {
            need_lo
        } else {
            hi
        };
        let kept = hi.max(keep_from) - keep_from;
        if kept > 0 && keep_from > lo {
            for c in 0..s.c_exp {
                let base = c * cap * w;
                e.copy_within(base + (keep_from - lo) * w..base + (hi - lo) * w, base);
            }
        }
        let new_from = need_lo + kept;
        if need_hi > new_from {
            let n = (need_hi - new_from) * w;
            let at = (new_from - need_lo) * w;
            // SAFETY: rows `at/w .. at/w + n/w` of each of the c_exp planes of `e` (cap rows
            // each): inside `e`, which this call borrows mutably.
            unsafe {
                gemm_rows_serial(
                    s.c_exp,
                    n,
                    s.c_in,
                    expand.weight,
                    s.c_in,
                    &xi[new_from * w..],
                    in_plane,
                    e.as_mut_ptr().add(at),
                    cap * w,
                )
            };
            for c in 0..s.c_exp {
                let seg = &mut e[c * cap * w + at..c * cap * w + at + n];
                act_rows(seg, expand.bias[c], expand.act, None);
            }
        }
        (lo, hi) = (need_lo, need_hi.max(need_lo));
        // 2. Depthwise over the band's rows, padding where the window leaves the image.
        let rows_in = hi - lo;
        let top = (-first).max(0) as usize;
        let dw_shape = ConvShape {
            batch: 1,
            c_in: 1,
            h: rows_in,
            w,
            c_out: 1,
            kh: k,
            kw: k,
            stride: st,
            groups: 1,
            pad: Padding {
                top,
                bottom: (o1 - o0 - 1) * st + k - top - rows_in,
                left: pad.left,
                right: pad.right,
            },
        };
        let plane = PlaneConv::new(&dw_shape);
        scratch.clear();
        scratch.resize(plane.scratch_len(), 0.0);
        let band_n = (o1 - o0) * ow;
        for c in 0..s.c_exp {
            plane.run(
                &e[c * cap * w..c * cap * w + rows_in * w],
                &depthwise.weight[c * k * k..(c + 1) * k * k],
                depthwise.bias[c],
                depthwise.act,
                &mut d[c * band_n..(c + 1) * band_n],
                scratch,
            );
        }
        // 3. Project into rows o0..o1 of every output plane, then bias, act, skip.
        let out_plane = oh * ow;
        let y0 = img * s.c_out * out_plane + o0 * ow;
        // SAFETY: rows o0..o1 (within r0..r1) of image `img`'s c_out planes: the caller's.
        unsafe {
            gemm_rows_serial(
                s.c_out,
                band_n,
                s.c_exp,
                project.weight,
                s.c_exp,
                d,
                band_n,
                out.0.add(y0),
                out_plane,
            )
        };
        for c in 0..s.c_out {
            // SAFETY: as above; one channel's rows o0..o1, contiguous.
            let seg =
                unsafe { std::slice::from_raw_parts_mut(out.0.add(y0 + c * out_plane), band_n) };
            let res = skip.then(|| &xi[c * in_plane + o0 * ow..c * in_plane + o0 * ow + band_n]);
            act_rows(seg, project.bias[c], project.act, res);
        }
        o0 = o1;
    }
}

/// `v = act(v + bias) (+ residual)`.
fn act_rows(v: &mut [f32], bias: f32, act: Activation, residual: Option<&[f32]>) {
    match act {
        Activation::None => v.iter_mut().for_each(|x| *x += bias),
        Activation::Relu6 => v.iter_mut().for_each(|x| *x = relu6_scalar(*x + bias)),
    }
    if let Some(r) = residual {
        v.iter_mut().zip(r).for_each(|(x, r)| *x += r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv::conv2d_into;
    use crate::ops::testutil::{assert_close, seeded};

    /// The three convs, unfused: the reference.
    fn unfused(x: &[f32], layers: [Layer<'_>; 3], skip: bool, s: &MbConvShape) -> Vec<f32> {
        let [e, d, p] = layers;
        let shape = |c_in, c_out, h, w, k: usize, st, groups| ConvShape {
            batch: s.batch,
            c_in,
            h,
            w,
            c_out,
            kh: k,
            kw: k,
            stride: st,
            groups,
            pad: Padding::tf_same(h, w, k, st),
        };
        let se = shape(s.c_in, s.c_exp, s.h, s.w, 1, 1, 1);
        let mut ye = vec![0.0; s.batch * s.c_exp * s.h * s.w];
        conv2d_into(x, e.weight, Some(e.bias), &se, e.act, &mut ye);
        let sd = shape(s.c_exp, s.c_exp, s.h, s.w, s.k, s.stride, s.c_exp);
        let mut yd = vec![0.0; s.batch * s.c_exp * s.out_h() * s.out_w()];
        conv2d_into(&ye, d.weight, Some(d.bias), &sd, d.act, &mut yd);
        let sp = shape(s.c_exp, s.c_out, s.out_h(), s.out_w(), 1, 1, 1);
        let mut yp = vec![0.0; s.batch * s.c_out * s.out_h() * s.out_w()];
        conv2d_into(&yd, p.weight, Some(p.bias), &sp, p.act, &mut yp);
        if skip {
            yp.iter_mut().zip(x).for_each(|(a, r)| *a += r);
        }
        yp
    }

    fn check(s: MbConvShape, skip: bool, threads: usize) {
        let x: Vec<f32> = seeded(s.batch * s.c_in * s.h * s.w, 1)
            .iter()
            .map(|v| 2.0 * v)
            .collect();
        let (we, be) = (seeded(s.c_exp * s.c_in, 2), seeded(s.c_exp, 3));
        let (wd, bd) = (seeded(s.c_exp * s.k * s.k, 4), seeded(s.c_exp, 5));
        let (wp, bp) = (seeded(s.c_out * s.c_exp, 6), seeded(s.c_out, 7));
        let layers = [
            Layer {
                weight: &we,
                bias: &be,
                act: Activation::Relu6,
            },
            Layer {
                weight: &wd,
                bias: &bd,
                act: Activation::Relu6,
            },
            Layer {
                weight: &wp,
                bias: &bp,
                act: Activation::None,
            },
        ];
        let want = unfused(&x, layers, skip, &s);
        let mut got = vec![f32::NAN; want.len()];
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| mbconv_into(&x, layers[0], layers[1], layers[2], skip, &s, &mut got));
        // Same products and sums as the unfused convs up to the GEMMs' blocking: f32
        // rounding of sums of at most c_exp terms.
        assert_close(&got, &want, 1e-5, 1e-5);
    }

    #[test]
    fn fused_equals_the_three_convs() {
        let shape = |batch, c_in, h, w, c_exp, k, stride, c_out| MbConvShape {
            batch,
            c_in,
            h,
            w,
            c_exp,
            k,
            stride,
            c_out,
        };
        // Ragged sides, both strides, both kernels, skip and not, one image over several
        // threads (parts with seams) and several images.
        for threads in [1, 3] {
            check(shape(1, 8, 13, 11, 24, 3, 1, 8), true, threads);
            check(shape(2, 8, 13, 11, 24, 3, 2, 12), false, threads);
            check(shape(1, 6, 17, 9, 36, 5, 2, 10), false, threads);
            check(shape(3, 10, 9, 14, 20, 5, 1, 10), true, threads);
            check(shape(1, 4, 1, 1, 8, 3, 1, 4), true, threads);
            check(shape(2, 4, 2, 3, 8, 5, 2, 6), false, threads);
        }
    }

    #[test]
    fn bands_roll_over_many_rows() {
        // Wide channels and a tall image: many bands per part, rows carried between bands.
        let s = MbConvShape {
            batch: 1,
            c_in: 16,
            h: 150,
            w: 112,
            c_exp: 96,
            k: 3,
            stride: 1,
            c_out: 16,
        };
        assert!(BAND_BYTES / (s.c_exp * s.w * 4) < s.h / 4, "several bands");
        check(s, true, 2);
        check(
            MbConvShape {
                stride: 2,
                k: 5,
                c_out: 24,
                ..s
            },
            false,
            2,
        );
    }
}
