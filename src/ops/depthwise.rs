//! Depthwise convolution (`groups == c_in == c_out`: one `kh x kw` filter per channel) over
//! NCHW, the middle layer of every MBConv block, with the bias + activation epilogue fused.
//!
//! Each channel plane is first copied into a zero-padded scratch buffer (so the inner loops
//! have no bounds tests: TF-SAME's asymmetric padding is just where the copy lands), then
//! every output row is computed in registers as a sum of `kh * kw` shifted rows scaled by one
//! weight each, 8 outputs per AVX2 vector.
//!
//! Stride: the scratch row is stored split into `stride` *phases* (for stride 2, the even
//! columns then the odd ones). Output column `ox` reads padded column `ox*S + kx`, which is
//! element `ox + kx/S` of phase `kx % S`: consecutive outputs read consecutive elements, so a
//! strided conv loads contiguous vectors just like a stride-1 one.
//!
//! Register blocking: a call computes `NR` output rows x `NV` vectors of 8 columns at once;
//! each weight is broadcast once per block and used `NR*NV` times, and the accumulators never
//! leave registers until the epilogue (bias is the starting value; ReLU6 clamps in registers).
//! The scratch rows are `ow` rounded up to 8 (plus the kernel's reach) wide, so a block may
//! compute a few columns past `ow`; those are not stored (a partial store, `store_first`).
//!
//! The AVX2+FMA kernel is chosen at run time; other CPUs run `plane_portable`, the same
//! schedule in scalar code (the reference the SIMD kernel is tested against, with
//! `conv2d_naive`). Planes (batch x channel) are spread over rayon's threads.
//!
//! That is `Schedule::Planes`. On narrow maps (14x14, 7x7: a row is one or two vectors,
//! and each FMA needs a load of its own shifted row) `Schedule::Tiles` runs instead: 8
//! planes are interleaved into a channels-last tile and convolved with vectors across the
//! channels (`src/ops/depthwise_cl.rs`), then transposed back — about 1.7x the planes at
//! 14x14 (`pmad bench --filter dwconv`).

use crate::ops::conv::{Activation, ConvShape};
use crate::ops::depthwise_cl::{ClGeom, aligned_mut, depthwise_cl_with, have_avx2};
use crate::ops::elementwise::relu6_scalar;
use crate::ops::interleave::{GROUP, Gather, gather, scatter};
use rayon::prelude::*;

/// f32 lanes of an AVX2 vector.
const LANES: usize = 8;
/// Most vectors one register block holds per row (4 rows of 8 = 32 columns).
const MAX_NV: usize = 4;
/// Planes per rayon task: enough work to hide the task overhead on 14x14 maps.
const PLANES_PER_TASK: usize = 4;

/// Geometry of the padded, phase-split scratch plane for one conv call.
#[derive(Clone, Debug)]
struct Plan {
    oh: usize,
    ow: usize,
    /// Scratch rows: `(oh-1)*stride + kh` (rows past that feed no output).
    rows: usize,
    /// Elements in one phase of a scratch row: room for `ow` rounded up to [`LANES`] plus the
    /// kernel's reach `(kw-1)/stride`.
    phase_len: usize,
    /// `stride * phase_len`.
    row_len: usize,
    /// Per tap `ky*kw + kx`: where its input starts in the scratch, relative to the first
    /// input row of the output row (`ky*row_len + (kx % S)*phase_len + kx / S`), so the
    /// kernels do no division.
    tap_offset: Vec<usize>,
}

impl Plan {
    fn new(s: &ConvShape) -> Plan {
        let (oh, ow) = (s.out_h(), s.out_w());
        let phase_len = ow.next_multiple_of(LANES) + (s.kw - 1) / s.stride + 1;
        let row_len = s.stride * phase_len;
        let tap_offset = (0..s.kh * s.kw)
            .map(|t| {
                let (ky, kx) = (t / s.kw, t % s.kw);
                ky * row_len + (kx % s.stride) * phase_len + kx / s.stride
            })
            .collect();
        Plan {
            oh,
            ow,
            rows: (oh - 1) * s.stride + s.kh,
            phase_len,
            row_len,
            tap_offset,
        }
    }

    fn scratch_len(&self) -> usize {
        self.rows * self.row_len
    }
}

/// Copies one `h x w` plane into the scratch at its padded position, phase-split. Cells that
/// are padding are never written, so they keep the zeros the scratch was created with (every
/// plane of a call has the same geometry).
fn fill_scratch(src: &[f32], s: &ConvShape, p: &Plan, buf: &mut [f32]) {
    fill_scratch_with(src, s, p, buf, |from, to| to.copy_from_slice(from));
}

/// [`fill_scratch`] with the stride-1 row copy given (`copy(from, to)`, equal lengths): the
/// AVX2 build copies with vector moves instead of calling `memcpy` for rows of 14-112 values.
fn fill_scratch_with(
    src: &[f32],
    s: &ConvShape,
    p: &Plan,
    buf: &mut [f32],
    copy: impl Fn(&[f32], &mut [f32]),
) {
    let st = s.stride;
    // Padded columns past this one feed no output.
    let last_col = (p.ow - 1) * st + s.kw - 1;
    for r in 0..s.h {
        let pr = r + s.pad.top;
        if pr >= p.rows {
            break;
        }
        let row = &mut buf[pr * p.row_len..(pr + 1) * p.row_len];
        let line = &src[r * s.w..(r + 1) * s.w];
        let cols = s.w.min((last_col + 1).saturating_sub(s.pad.left));
        if st == 1 {
            copy(&line[..cols], &mut row[s.pad.left..s.pad.left + cols]);
        } else if st == 2 {
            deinterleave(&line[..cols], s.pad.left, p.phase_len, row);
        } else {
            // Padded column `pc` goes to phase `pc % st`, element `pc / st`; counted up
            // instead of divided (an integer division per pixel costs more than the conv).
            let (mut phase, mut idx) = (s.pad.left % st, s.pad.left / st);
            for &v in &line[..cols] {
                row[phase * p.phase_len + idx] = v;
                phase += 1;
                if phase == st {
                    phase = 0;
                    idx += 1;
                }
            }
        }
    }
}

/// Stride 2: splits `line` (whose first value is padded column `left`) into the even and the
/// odd padded columns of `row` (phase 0 at `row[0..]`, phase 1 at `row[phase_len..]`).
/// Source column `c` is padded column `c + left`: the source's even columns land in phase
/// `left % 2` from element `left / 2`, its odd ones in the other phase from `(left + 1) / 2`.
#[inline(always)]
fn deinterleave(line: &[f32], left: usize, phase_len: usize, row: &mut [f32]) {
    let (even_at, odd_at) = (
        (left % 2) * phase_len + left / 2,
        ((left + 1) % 2) * phase_len + left.div_ceil(2),
    );
    let (pairs, n_even) = (line.len() / 2, line.len().div_ceil(2));
    let (evens, odds) = if even_at < odd_at {
        let (a, b) = row.split_at_mut(odd_at);
        (&mut a[even_at..even_at + n_even], &mut b[..pairs])
    } else {
        let (a, b) = row.split_at_mut(even_at);
        (&mut b[..n_even], &mut a[odd_at..odd_at + pairs])
    };
    // `chunks_exact(2)` into two outputs: LLVM turns this into vector shuffles.
    for ((e, o), pair) in evens
        .iter_mut()
        .zip(odds.iter_mut())
        .zip(line.chunks_exact(2))
    {
        *e = pair[0];
        *o = pair[1];
    }
    if line.len() % 2 == 1 {
        evens[pairs] = line[line.len() - 1];
    }
}

/// Writes `v` (bias + sum) through the activation.
#[inline]
fn activate(v: f32, act: Activation) -> f32 {
    match act {
        Activation::None => v,
        Activation::Relu6 => relu6_scalar(v),
    }
}

/// One output plane from a filled scratch, scalar code: the reference schedule.
fn plane_portable(
    buf: &[f32],
    k: &[f32],
    bias: f32,
    s: &ConvShape,
    p: &Plan,
    act: Activation,
    out: &mut [f32],
) {
    for oy in 0..p.oh {
        let orow = &mut out[oy * p.ow..(oy + 1) * p.ow];
        orow.fill(bias);
        let rows = &buf[oy * s.stride * p.row_len..];
        for (&wv, &off) in k.iter().zip(&p.tap_offset) {
            let seg = &rows[off..][..p.ow];
            orow.iter_mut().zip(seg).for_each(|(o, &x)| *o += wv * x);
        }
        orow.iter_mut().for_each(|o| *o = activate(*o, act));
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{LANES, MAX_NV, Plan};
    use crate::ops::conv::{Activation, ConvShape};
    use crate::ops::interleave::avx2::store_first;
    use std::arch::x86_64::*;

    /// `NR` output rows from `oy0`, `NV` vectors from column `ox0`.
    ///
    /// # Safety
    /// AVX2 and FMA must be present; `buf` is a scratch of `p.scratch_len()` values laid out by
    /// `fill_scratch` for `s`; `oy0 + NR <= p.oh`; `ox0 + NV*LANES <= ow` rounded up to
    /// [`LANES`]; `out` is the `oh x ow` output plane.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block<const NR: usize, const NV: usize>(
        buf: &[f32],
        k: &[f32],
        bias: f32,
        s: &ConvShape,
        p: &Plan,
        relu6: bool,
        oy0: usize,
        ox0: usize,
        out: &mut [f32],
    ) {
        let mut acc = [[_mm256_set1_ps(bias); NV]; NR];
        let row0 = oy0 * s.stride * p.row_len + ox0;
        let row_step = s.stride * p.row_len;
        for (&w, &off) in k.iter().zip(&p.tap_offset) {
            let wv = _mm256_set1_ps(w);
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let base = row0 + r * row_step + off;
                debug_assert!(base + NV * LANES <= buf.len());
                for (v, a) in acc_r.iter_mut().enumerate() {
                    // SAFETY: the tap's row `(oy0+r)*S + ky < p.rows`, and within the row
                    // its phase offset + `ox0 + kx/S + NV*LANES <= ow8 + (kw-1)/S <
                    // phase_len` (the caller's contract), so the 8 floats lie in `buf`.
                    let x = unsafe { _mm256_loadu_ps(buf.as_ptr().add(base + v * LANES)) };
                    *a = _mm256_fmadd_ps(wv, x, *a);
                }
            }
        }
        let (zero, six) = (_mm256_setzero_ps(), _mm256_set1_ps(6.0));
        for (r, acc_r) in acc.iter().enumerate() {
            let orow = &mut out[(oy0 + r) * p.ow..(oy0 + r + 1) * p.ow];
            for (v, &a) in acc_r.iter().enumerate() {
                // max(0, a) then min(6, .) with `a` second: a NaN stays NaN, as in clamp.
                let y = if relu6 {
                    _mm256_min_ps(six, _mm256_max_ps(zero, a))
                } else {
                    a
                };
                let x0 = ox0 + v * LANES;
                // SAFETY: min(8, ow - x0) floats from `x0` lie inside this output row.
                unsafe { store_first(orow.as_mut_ptr().add(x0), y, (p.ow - x0).min(LANES)) };
            }
        }
    }

    /// Calls `block` for `NR` rows over the whole width, widest blocks first.
    ///
    /// # Safety
    /// As [`block`].
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn rows<const NR: usize>(
        buf: &[f32],
        k: &[f32],
        bias: f32,
        s: &ConvShape,
        p: &Plan,
        relu6: bool,
        oy0: usize,
        out: &mut [f32],
    ) {
        let vecs = p.ow.div_ceil(LANES);
        let mut v0 = 0;
        while v0 < vecs {
            let nv = (vecs - v0).min(MAX_NV);
            let ox0 = v0 * LANES;
            // SAFETY: `ox0 + nv*LANES <= vecs*LANES`, the caller's contract otherwise.
            unsafe {
                match nv {
                    4 => block::<NR, 4>(buf, k, bias, s, p, relu6, oy0, ox0, out),
                    3 => block::<NR, 3>(buf, k, bias, s, p, relu6, oy0, ox0, out),
                    2 => block::<NR, 2>(buf, k, bias, s, p, relu6, oy0, ox0, out),
                    _ => block::<NR, 1>(buf, k, bias, s, p, relu6, oy0, ox0, out),
                }
            }
            v0 += nv;
        }
    }

    /// `fill_scratch` compiled for AVX2 (its copies and stride-2 shuffles vectorise wider).
    ///
    /// # Safety
    /// AVX2 and FMA must be present.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn fill(src: &[f32], s: &ConvShape, p: &Plan, buf: &mut [f32]) {
        // SAFETY: AVX2 is present (this function's contract).
        super::fill_scratch_with(src, s, p, buf, |from, to| unsafe { copy_row(from, to) });
    }

    /// `to.copy_from_slice(from)` in 8-float moves, the last `< 8` one by one.
    ///
    /// # Safety
    /// AVX2 present.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn copy_row(from: &[f32], to: &mut [f32]) {
        assert_eq!(from.len(), to.len(), "copy_row: lengths differ");
        let n8 = from.len() / LANES * LANES;
        for i in (0..n8).step_by(LANES) {
            // SAFETY: i + 8 <= n8 <= both lengths.
            unsafe {
                let v = _mm256_loadu_ps(from.as_ptr().add(i));
                _mm256_storeu_ps(to.as_mut_ptr().add(i), v);
            }
        }
        for (t, &f) in to[n8..].iter_mut().zip(&from[n8..]) {
            *t = f;
        }
    }

    /// One output plane from a filled scratch. Narrow planes (at most 2 vectors a row) take
    /// 2 rows per block so each weight broadcast still feeds 4 FMAs.
    ///
    /// # Safety
    /// AVX2 and FMA must be present; `buf` laid out by `fill_scratch` for `s` and `p`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn plane(
        buf: &[f32],
        k: &[f32],
        bias: f32,
        s: &ConvShape,
        p: &Plan,
        act: Activation,
        out: &mut [f32],
    ) {
        assert!(buf.len() >= p.scratch_len() && out.len() >= p.oh * p.ow);
        let relu6 = act == Activation::Relu6;
        let pair = p.ow.div_ceil(LANES) <= 2;
        let mut oy = 0;
        // SAFETY: every call covers rows `oy..oy+NR <= oh`; the rest is the caller's contract.
        unsafe {
            while pair && oy + 2 <= p.oh {
                rows::<2>(buf, k, bias, s, p, relu6, oy, out);
                oy += 2;
            }
            while oy < p.oh {
                rows::<1>(buf, k, bias, s, p, relu6, oy, out);
                oy += 1;
            }
        }
    }
}

/// Depthwise conv: `x` is `[B,C,H,W]`, `w` is `[C,1,kh,kw]`, `y` is `[B,C,OH,OW]`. The caller
/// (`conv2d_into`) has checked the shape (`groups == c_in == c_out`).
pub fn depthwise_into(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    s: &ConvShape,
    act: Activation,
    y: &mut [f32],
) {
    depthwise_sched(x, w, bias, s, act, y, have_avx2(), schedule_for(s));
}

/// Which of the two schedules a call runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Schedule {
    /// Plane by plane, vectors along the rows (this file's kernels): best on wide maps.
    Planes,
    /// Groups of 8 planes interleaved into channels-last tiles, vectors across the channels
    /// (`src/ops/depthwise_cl.rs`): best on narrow maps, whose rows fill few vectors.
    Tiles,
}

/// Output width up to which [`Schedule::Tiles`] runs. Measured with `pmad bench --filter
/// dwconv` (2 threads, alternating rounds) on the Lite0 layers: at 14x14 (k5) the tiles ran
/// about 1.7x the planes, at 56x56 (k3) the two were even, at 112x112 (k3 stride 2, bound by
/// memory) the planes ran 1.25x the tiles.
const TILES_MAX_OW: usize = 28;

/// The schedule for `s`.
fn schedule_for(s: &ConvShape) -> Schedule {
    if s.out_w() <= TILES_MAX_OW {
        Schedule::Tiles
    } else {
        Schedule::Planes
    }
}

/// [`depthwise_into`] with the SIMD kernels on or off and the schedule chosen (tests run
/// every combination).
#[allow(clippy::too_many_arguments)]
pub(crate) fn depthwise_sched(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    s: &ConvShape,
    act: Activation,
    y: &mut [f32],
    simd: bool,
    schedule: Schedule,
) {
    let (in_plane, out_plane, taps) = (s.h * s.w, s.out_h() * s.out_w(), s.kh * s.kw);
    assert!(
        x.len() >= s.batch * s.c_in * in_plane && y.len() >= s.batch * s.c_out * out_plane,
        "depthwise: short buffer"
    );
    assert!(w.len() >= s.c_out * taps && bias.is_none_or(|b| b.len() >= s.c_out));
    if out_plane == 0 || s.batch * s.c_out == 0 {
        return;
    }
    match schedule {
        Schedule::Planes => planes(x, w, bias, s, act, y, simd),
        Schedule::Tiles => tiles(x, w, bias, s, act, y, simd),
    }
}

/// [`Schedule::Planes`].
fn planes(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    s: &ConvShape,
    act: Activation,
    y: &mut [f32],
    simd: bool,
) {
    let p = Plan::new(s);
    let (in_plane, out_plane, taps) = (s.h * s.w, p.oh * p.ow, s.kh * s.kw);
    y[..s.batch * s.c_out * out_plane]
        .par_chunks_mut(out_plane * PLANES_PER_TASK)
        .enumerate()
        .for_each_init(
            || vec![0.0f32; p.scratch_len()],
            |buf, (task, outs)| {
                for (i, out) in outs.chunks_mut(out_plane).enumerate() {
                    let bc = task * PLANES_PER_TASK + i;
                    let c = bc % s.c_out;
                    let k = &w[c * taps..(c + 1) * taps];
                    let b = bias.map_or(0.0, |b| b[c]);
                    let src = &x[bc * in_plane..(bc + 1) * in_plane];
                    #[cfg(target_arch = "x86_64")]
                    if simd {
                        // SAFETY: `simd` is only true when AVX2 and FMA were detected
                        // (`have_avx2`, or a test that checked it); `buf` is filled for this
                        // plan before the kernel reads it.
                        unsafe {
                            avx2::fill(src, s, &p, buf);
                            avx2::plane(buf, k, b, s, &p, act, out);
                        }
                        continue;
                    }
                    let _ = simd;
                    fill_scratch(src, s, &p, buf);
                    plane_portable(buf, k, b, s, &p, act, out);
                }
            },
        );
}

/// [`Schedule::Tiles`]: per task (one image, 8 channels) the planes are interleaved into a
/// zero-padded channels-last tile (`interleave::gather`), convolved there into a
/// channels-last result, which `interleave::scatter` transposes into the 8 output planes.
fn tiles(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    s: &ConvShape,
    act: Activation,
    y: &mut [f32],
    simd: bool,
) {
    let (oh, ow, st) = (s.out_h(), s.out_w(), s.stride);
    let (in_plane, out_plane, taps) = (s.h * s.w, oh * ow, s.kh * s.kw);
    // Weights tap-major per group of 8 channels, zero past the last channel.
    let groups = s.c_out.div_ceil(GROUP);
    let mut wt = vec![0.0f32; groups * taps * GROUP];
    let mut bt = vec![0.0f32; groups * GROUP];
    for c in 0..s.c_out {
        let (g, lane) = (c / GROUP, c % GROUP);
        for t in 0..taps {
            wt[(g * taps + t) * GROUP + lane] = w[c * taps + t];
        }
        bt[c] = bias.map_or(0.0, |b| b[c]);
    }
    // The padded tile: every row and column some output reads.
    let (rows, cols) = ((oh - 1) * st + s.kh, (ow - 1) * st + s.kw);
    let geom = ClGeom {
        kh: s.kh,
        kw: s.kw,
        stride: st,
        oh,
        ow,
        c: GROUP,
        in_px: GROUP,
        in_row: cols * GROUP,
        out_px: GROUP,
        out_row: ow * GROUP,
    };
    let window = Gather {
        lanes: GROUP,
        plane: in_plane,
        w: s.w,
        rows: s.h.min(rows.saturating_sub(s.pad.top)),
        cols: s.w.min(cols.saturating_sub(s.pad.left)),
        tile_cols: cols,
        top: s.pad.top,
        left: s.pad.left,
    };
    let image_out = s.c_out * out_plane;
    y[..s.batch * image_out]
        .par_chunks_mut(image_out)
        .enumerate()
        .for_each(|(b, yb)| {
            yb.par_chunks_mut(GROUP * out_plane)
                .enumerate()
                .for_each_init(
                    // Padding cells are never written: they keep these zeros for every task
                    // (the aligned window of each buffer is the same every time).
                    || (Vec::new(), Vec::new()),
                    |(tile, o), (g, yg)| {
                        let (tile, o) = (
                            aligned_mut(tile, rows * cols * GROUP),
                            aligned_mut(o, out_plane * GROUP),
                        );
                        let lanes = yg.len() / out_plane;
                        let src = &x[(b * s.c_in + g * GROUP) * in_plane..];
                        gather(src, &Gather { lanes, ..window }, tile);
                        let (wg, bg) = (
                            &wt[g * taps * GROUP..(g + 1) * taps * GROUP],
                            &bt[g * GROUP..(g + 1) * GROUP],
                        );
                        depthwise_cl_with(tile, wg, bg, &geom, act, o, simd);
                        scatter(o, out_plane, lanes, yg, out_plane);
                    },
                );
        });
}

/// One plane at a time, for callers that hold their planes elsewhere (the fused MBConv in
/// `src/ops/mbconv.rs`: a band of rows of each channel): the same plan and kernels as
/// [`depthwise_into`], on the calling thread.
pub(crate) struct PlaneConv {
    shape: ConvShape,
    plan: Plan,
    simd: bool,
}

impl PlaneConv {
    /// The plan for planes of `s` (`s.batch` and the channel counts are ignored).
    pub(crate) fn new(s: &ConvShape) -> PlaneConv {
        PlaneConv {
            shape: *s,
            plan: Plan::new(s),
            simd: have_avx2(),
        }
    }

    /// Scratch values [`run`](Self::run) needs. The scratch must be zero-filled whenever
    /// the geometry changes (padding cells are never written, only read as zeros).
    pub(crate) fn scratch_len(&self) -> usize {
        self.plan.scratch_len()
    }

    /// `out [oh * ow] = act(conv(src [h * w], k) + bias)`.
    pub(crate) fn run(
        &self,
        src: &[f32],
        k: &[f32],
        bias: f32,
        act: Activation,
        out: &mut [f32],
        buf: &mut [f32],
    ) {
        let (s, p) = (&self.shape, &self.plan);
        assert!(
            src.len() >= s.h * s.w
                && out.len() >= p.oh * p.ow
                && buf.len() >= p.scratch_len()
                && k.len() >= s.kh * s.kw,
            "depthwise plane: short buffer"
        );
        #[cfg(target_arch = "x86_64")]
        if self.simd {
            // SAFETY: `simd` is only true when AVX2 and FMA were detected (`have_avx2`);
            // `buf` is filled for this plan before the kernel reads it.
            unsafe {
                avx2::fill(src, s, p, buf);
                avx2::plane(buf, k, bias, s, p, act, out);
            }
            return;
        }
        fill_scratch(src, s, p, buf);
        plane_portable(buf, k, bias, s, p, act, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv::{Padding, conv2d_naive};
    use crate::ops::testutil::{assert_close, seeded};

    /// Both kernels against the 7-loop reference.
    fn check(s: ConvShape, act: Activation) {
        let x: Vec<f32> = seeded(s.batch * s.c_in * s.h * s.w, 1)
            .iter()
            .map(|v| v * 3.0)
            .collect();
        let w = seeded(s.c_out * s.kh * s.kw, 2);
        let b = seeded(s.c_out, 3);
        let want = conv2d_naive(&x, &w, Some(&b), &s, act);
        let modes: &[bool] = if have_avx2() {
            &[false, true]
        } else {
            &[false]
        };
        for &simd in modes {
            for schedule in [Schedule::Planes, Schedule::Tiles] {
                let mut y = vec![f32::NAN; want.len()];
                depthwise_sched(&x, &w, Some(&b), &s, act, &mut y, simd, schedule);
                // f32 sums of at most 25 products of |x| <= 3, |w| <= 1, in another order
                // than the f64 reference: a few ulp of the largest partial sum.
                assert_close(&y, &want, 2e-5, 1e-5);
            }
        }
    }

    fn shape(batch: usize, c: usize, h: usize, w: usize, k: usize, stride: usize) -> ConvShape {
        ConvShape {
            batch,
            c_in: c,
            h,
            w,
            c_out: c,
            kh: k,
            kw: k,
            stride,
            groups: c,
            pad: Padding::tf_same(h, w, k, stride),
        }
    }

    #[test]
    fn ragged_shapes_match_naive_at_every_kernel_and_stride() {
        // Odd sizes, widths below / at / past a vector and past a 4-vector block, channel
        // counts not a multiple of 8 (and of the 4 planes per task), batch 1 and 3.
        let sizes = [
            (1, 1),
            (3, 5),
            (7, 9),
            (8, 8),
            (14, 14),
            (9, 17),
            (13, 33),
            (6, 41),
        ];
        for k in [3, 5] {
            for stride in [1, 2] {
                for (i, &(h, w)) in sizes.iter().enumerate() {
                    let c = [1, 3, 5, 7, 9, 13, 2, 11][i];
                    let batch = 1 + 2 * (i % 2);
                    let act = if i % 3 == 0 {
                        Activation::None
                    } else {
                        Activation::Relu6
                    };
                    check(shape(batch, c, h, w, k, stride), act);
                }
            }
        }
    }

    #[test]
    fn explicit_padding_and_non_square_kernels() {
        // Symmetric and one-sided padding, no padding, kh != kw, stride 3.
        let cases = [
            (3, 3, 1, Padding::symmetric(1)),
            (5, 5, 2, Padding::default()),
            (3, 5, 1, Padding::symmetric(2)),
            (
                5,
                3,
                2,
                Padding {
                    top: 0,
                    bottom: 2,
                    left: 1,
                    right: 0,
                },
            ),
            (
                3,
                3,
                3,
                Padding {
                    top: 2,
                    bottom: 0,
                    left: 0,
                    right: 1,
                },
            ),
            (1, 1, 2, Padding::default()),
        ];
        for (kh, kw, stride, pad) in cases {
            let s = ConvShape {
                kh,
                kw,
                stride,
                pad,
                ..shape(2, 5, 11, 19, 3, 1)
            };
            check(s, Activation::Relu6);
        }
    }

    #[test]
    fn relu6_keeps_nan() {
        let s = shape(1, 2, 5, 9, 3, 1);
        let mut x = vec![0.5f32; 2 * 45];
        x[20] = f32::NAN;
        let w = vec![1.0f32; 18];
        let modes: &[bool] = if have_avx2() {
            &[false, true]
        } else {
            &[false]
        };
        for &simd in modes {
            for schedule in [Schedule::Planes, Schedule::Tiles] {
                let mut y = vec![0.0; 2 * 45];
                depthwise_sched(&x, &w, None, &s, Activation::Relu6, &mut y, simd, schedule);
                // Input (2, 2) of plane 0 reaches outputs (1..=3, 1..=3); plane 1 is clean.
                let at = format!("simd {simd} {schedule:?}");
                assert!(y[2 * 9 + 2].is_nan() && y[9 + 1].is_nan(), "{at}");
                assert!(y[45..].iter().all(|v| v.is_finite()), "{at}");
                assert_eq!(y[0], 2.0, "corner sums 4 taps of 0.5 ({at})");
            }
        }
    }
}
