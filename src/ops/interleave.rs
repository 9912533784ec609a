//! Between NCHW planes and channels-last tiles (`[pixel][channel]`), the layout the depthwise
//! kernel of `src/ops/depthwise_cl.rs` runs fastest on, 8 channels at a time.
//!
//! Both directions are 8x8 transposes: 8 planes' next 8 pixels are loaded as 8 vectors and
//! transposed in registers into 8 pixels' 8 channels (and back). Groups of fewer than 8
//! planes take the scalar loops; the last `< 8` pixels of a row take masked loads on the way
//! in and 4-, 2- and 1-float stores on the way out ([`avx2::store_first`]).

/// Channels one transpose moves.
pub(crate) const GROUP: usize = 8;

/// Where a gather copies from and to: `lanes <= 8` planes of `src`, `plane` elements apart,
/// rows of `w`; image rows `0..rows` and columns `0..cols` land at tile pixel
/// `(top + r) * tile_cols + left + c` (8 values a pixel).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Gather {
    pub lanes: usize,
    pub plane: usize,
    pub w: usize,
    pub rows: usize,
    pub cols: usize,
    pub tile_cols: usize,
    pub top: usize,
    pub left: usize,
}

/// `tile[((top + r) * tile_cols + left + c) * 8 + lane] = src[lane * plane + r * w + c]`.
/// Tile cells outside the copied window and lanes past `lanes` are not written.
pub(crate) fn gather(src: &[f32], g: &Gather, tile: &mut [f32]) {
    if g.rows == 0 || g.cols == 0 || g.lanes == 0 {
        return;
    }
    assert!(
        g.lanes <= GROUP
            && g.cols <= g.w
            && g.left + g.cols <= g.tile_cols
            && src.len() >= (g.lanes - 1) * g.plane + (g.rows - 1) * g.w + g.cols
            && tile.len() >= ((g.top + g.rows - 1) * g.tile_cols + g.left + g.cols) * GROUP,
        "interleave::gather: short buffer {g:?}"
    );
    #[cfg(target_arch = "x86_64")]
    if g.lanes == GROUP && crate::ops::depthwise_cl::have_avx2() {
        // SAFETY: AVX2 was detected; the assert bounds every index.
        unsafe { avx2::gather(src, g, tile) };
        return;
    }
    for r in 0..g.rows {
        for c in 0..g.cols {
            let at = ((g.top + r) * g.tile_cols + g.left + c) * GROUP;
            for lane in 0..g.lanes {
                tile[at + lane] = src[lane * g.plane + r * g.w + c];
            }
        }
    }
}

/// `dst[lane * plane + p] = tile[p * 8 + lane]` for pixels `p < n`, lanes `< lanes <= 8`:
/// the way back from a channels-last tile.
pub(crate) fn scatter(tile: &[f32], n: usize, lanes: usize, dst: &mut [f32], plane: usize) {
    if n == 0 || lanes == 0 {
        return;
    }
    assert!(
        lanes <= GROUP && tile.len() >= n * GROUP && dst.len() >= (lanes - 1) * plane + n,
        "interleave::scatter: short buffer"
    );
    #[cfg(target_arch = "x86_64")]
    if lanes == GROUP && crate::ops::depthwise_cl::have_avx2() {
        // SAFETY: AVX2 was detected; the assert bounds every index.
        unsafe { avx2::scatter(tile, n, dst, plane) };
        return;
    }
    for p in 0..n {
        for lane in 0..lanes {
            dst[lane * plane + p] = tile[p * GROUP + lane];
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::{GROUP, Gather};
    use std::arch::x86_64::*;

    /// The 8x8 transpose: row `i` of the result is column `i` of `r`.
    #[target_feature(enable = "avx2")]
    fn transpose(r: [__m256; 8]) -> [__m256; 8] {
        // Pairs of rows interleaved, then pairs of pairs, then the 128-bit halves swapped:
        // after the two shuffles, s[j] holds column j (rows 0-3 or 4-7) in its low half and
        // column j + 4 in its high half.
        let t = [
            _mm256_unpacklo_ps(r[0], r[1]),
            _mm256_unpackhi_ps(r[0], r[1]),
            _mm256_unpacklo_ps(r[2], r[3]),
            _mm256_unpackhi_ps(r[2], r[3]),
            _mm256_unpacklo_ps(r[4], r[5]),
            _mm256_unpackhi_ps(r[4], r[5]),
            _mm256_unpacklo_ps(r[6], r[7]),
            _mm256_unpackhi_ps(r[6], r[7]),
        ];
        let s = [
            _mm256_shuffle_ps::<0x44>(t[0], t[2]),
            _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
            _mm256_shuffle_ps::<0x44>(t[1], t[3]),
            _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
            _mm256_shuffle_ps::<0x44>(t[4], t[6]),
            _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
            _mm256_shuffle_ps::<0x44>(t[5], t[7]),
            _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
        ];
        [
            _mm256_permute2f128_ps::<0x20>(s[0], s[4]),
            _mm256_permute2f128_ps::<0x20>(s[1], s[5]),
            _mm256_permute2f128_ps::<0x20>(s[2], s[6]),
            _mm256_permute2f128_ps::<0x20>(s[3], s[7]),
            _mm256_permute2f128_ps::<0x31>(s[0], s[4]),
            _mm256_permute2f128_ps::<0x31>(s[1], s[5]),
            _mm256_permute2f128_ps::<0x31>(s[2], s[6]),
            _mm256_permute2f128_ps::<0x31>(s[3], s[7]),
        ]
    }

    /// Lanes `0..n` set (`n <= 8`): a masked load reads just those floats.
    #[target_feature(enable = "avx2")]
    fn tail_mask(n: usize) -> __m256i {
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(n as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    }

    /// Stores the first `n` lanes of `v` (`n <= 8`) at `p`: whole, or as a 4-, 2- and 1-float
    /// store (a masked store, `vmaskmovps`, is microcoded and far slower on AMD cores).
    ///
    /// # Safety
    /// AVX2 present; `p` valid for `n` float writes.
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn store_first(p: *mut f32, v: __m256, n: usize) {
        // SAFETY (all stores): they write floats p..p+n, the caller's contract.
        if n >= 8 {
            unsafe { _mm256_storeu_ps(p, v) };
            return;
        }
        let (mut p, mut rest) = (p, n);
        let mut cur = _mm256_castps256_ps128(v);
        if rest >= 4 {
            unsafe { _mm_storeu_ps(p, cur) };
            cur = _mm256_extractf128_ps::<1>(v);
            // SAFETY: 4 of the n floats written, p + 4 still inside.
            p = unsafe { p.add(4) };
            rest -= 4;
        }
        if rest >= 2 {
            unsafe { _mm_store_sd(p.cast(), _mm_castps_pd(cur)) };
            cur = _mm_movehl_ps(cur, cur);
            // SAFETY: as above.
            p = unsafe { p.add(2) };
            rest -= 2;
        }
        if rest == 1 {
            unsafe { _mm_store_ss(p, cur) };
        }
    }

    /// Every row, 8 lanes; the last `< 8` columns of a row by masked loads.
    ///
    /// # Safety
    /// AVX2 present; `super::gather`'s assert holds.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn gather(src: &[f32], g: &Gather, tile: &mut [f32]) {
        let (sp, tp) = (src.as_ptr(), tile.as_mut_ptr());
        let (c_end, tail) = (g.cols / GROUP * GROUP, g.cols % GROUP);
        let mask = tail_mask(tail);
        for r in 0..g.rows {
            let at = |c: usize| ((g.top + r) * g.tile_cols + g.left + c) * GROUP;
            for c in (0..c_end).step_by(GROUP) {
                // SAFETY: lane < 8 planes, row r < rows, columns c..c+8 <= cols.
                let v = std::array::from_fn(|lane| unsafe {
                    _mm256_loadu_ps(sp.add(lane * g.plane + r * g.w + c))
                });
                for (j, &u) in transpose(v).iter().enumerate() {
                    // SAFETY: tile pixel of column c + j < cols: inside the window.
                    unsafe { _mm256_storeu_ps(tp.add(at(c) + j * GROUP), u) };
                }
            }
            if tail > 0 {
                let v = std::array::from_fn(|lane| {
                    // SAFETY: the mask reads columns c_end..cols of row r (none past them).
                    unsafe { _mm256_maskload_ps(sp.add(lane * g.plane + r * g.w + c_end), mask) }
                });
                for (j, &u) in transpose(v).iter().take(tail).enumerate() {
                    // SAFETY: tile pixel of column c_end + j < cols: inside the window.
                    unsafe { _mm256_storeu_ps(tp.add(at(c_end) + j * GROUP), u) };
                }
            }
        }
    }

    /// Pixels `0..n`, 8 lanes; the last `< 8` by partial stores.
    ///
    /// # Safety
    /// AVX2 present; `super::scatter`'s assert holds.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn scatter(tile: &[f32], n: usize, dst: &mut [f32], plane: usize) {
        let (tp, dp) = (tile.as_ptr(), dst.as_mut_ptr());
        for p in (0..n).step_by(GROUP) {
            let m = GROUP.min(n - p);
            let v = std::array::from_fn(|j| {
                if j < m {
                    // SAFETY: pixel p + j < n.
                    unsafe { _mm256_loadu_ps(tp.add((p + j) * GROUP)) }
                } else {
                    _mm256_setzero_ps()
                }
            });
            for (lane, &u) in transpose(v).iter().enumerate() {
                // SAFETY: lane < 8 planes, pixels p..p+m <= n.
                unsafe { store_first(dp.add(lane * plane + p), u, m) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_places_pixels_and_scatter_reads_them_back() {
        // 8 lanes (SIMD body + masked tail columns) and 5 lanes (scalar only).
        for lanes in [8, 5] {
            let (h, w, plane) = (5, 19, 5 * 19 + 3);
            let src: Vec<f32> = (0..lanes * plane).map(|i| i as f32 * 0.01 - 2.0).collect();
            let g = Gather {
                lanes,
                plane,
                w,
                rows: h,
                cols: 17,
                tile_cols: 21,
                top: 2,
                left: 3,
            };
            let mut tile = vec![-9.0f32; (h + 3) * 21 * GROUP];
            gather(&src, &g, &mut tile);
            for (i, &v) in tile.iter().enumerate() {
                let (pix, lane) = (i / GROUP, i % GROUP);
                let (r, c) = ((pix / 21) as isize - 2, (pix % 21) as isize - 3);
                let inside = lane < lanes && (0..h as isize).contains(&r) && (0..17).contains(&c);
                let want = if inside {
                    src[lane * plane + r as usize * w + c as usize]
                } else {
                    -9.0
                };
                assert_eq!(v, want, "lanes {lanes} tile element {i}");
            }
            // Back: pixels of the tile's rows in order, 47 (not a multiple of 8).
            let n = 2 * 21 + 5;
            let mut dst = vec![f32::NAN; lanes * 60];
            scatter(&tile, n, lanes, &mut dst, 60);
            for lane in 0..lanes {
                for p in 0..n {
                    assert_eq!(dst[lane * 60 + p], tile[p * GROUP + lane]);
                }
                assert!(
                    dst[lane * 60 + n..(lane + 1) * 60]
                        .iter()
                        .all(|v| v.is_nan())
                );
            }
        }
    }
}
