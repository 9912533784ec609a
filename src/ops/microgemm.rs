//! A register-blocked AVX2 GEMM micro-kernel for the small products *inside* fused ops (the
//! score and value tiles of attention), where a general GEMM's per-call setup, packing and
//! threading cost more than the arithmetic.
//!
//! Shape: `C[rows, 16·panels] (=|+=) A[rows, k] · B[k, 16·panels]`, with `A` row-major (any
//! row stride) and `B` *packed* by the caller into panels of 16 columns, each panel `[k][16]`
//! contiguous (so the kernel streams it with two aligned-size loads per step). One call of the
//! inner kernel keeps an `R x 16` block of `C` in 2·R ymm registers (R <= 6: 12 accumulators,
//! 2 B loads and R broadcasts per k step), the classic 6x16 AVX2 shape.
//!
//! Callers pad `B`'s columns to a multiple of 16 with zeros and drop (or mask) the extra
//! columns of `C`. Only compiled on x86_64; callers check [`available`] and keep a portable path.

/// Columns of one packed `B` panel (two 8-float vectors).
pub const NR: usize = 16;
/// Most rows of `C` one inner call holds in registers.
pub const MR: usize = 6;

/// Whether the CPU runs this kernel (AVX2 and FMA).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Packs columns `0..cols` of the row-major `src` (`rows` rows, row stride `ld`) into panels
/// of [`NR`] columns: `dst[panel][r][j] = src[r][panel*NR + j]`, zero past `cols`. `dst` holds
/// `cols.div_ceil(NR) * rows * NR` values.
pub fn pack_cols(src: &[f32], rows: usize, cols: usize, ld: usize, dst: &mut [f32]) {
    let panels = cols.div_ceil(NR);
    assert!(dst.len() >= panels * rows * NR);
    for p in 0..panels {
        let (c0, w) = (p * NR, NR.min(cols - p * NR));
        let panel = &mut dst[p * rows * NR..(p + 1) * rows * NR];
        for (r, d) in panel.chunks_exact_mut(NR).enumerate() {
            let s = &src[r * ld + c0..][..w];
            if let (Ok(d), Ok(s)) = (
                <&mut [f32; NR]>::try_from(&mut *d),
                <&[f32; NR]>::try_from(s),
            ) {
                // A whole panel row: a fixed-size copy the compiler inlines (two vector moves
                // instead of a `memmove` call per 16 floats).
                *d = *s;
            } else {
                d[..w].copy_from_slice(s);
                d[w..].fill(0.0);
            }
        }
    }
}

/// Packs the *transpose* of row-major `src` (`rows x cols`, row stride `ld`): panel `p` holds
/// source rows `p*NR..p*NR+NR` as columns, `dst[p][c][j] = src[p*NR + j][c]`, zero past
/// `rows`. This is `Bᵀ` packed for `A · srcᵀ` (e.g. `Q · Kᵀ` with `K` as stored).
pub fn pack_rows_transposed(src: &[f32], rows: usize, cols: usize, ld: usize, dst: &mut [f32]) {
    let panels = rows.div_ceil(NR);
    assert!(dst.len() >= panels * cols * NR);
    if rows == 0 {
        return;
    }
    assert!(ld >= cols && src.len() >= (rows - 1) * ld + cols);
    for p in 0..panels {
        let panel = &mut dst[p * cols * NR..(p + 1) * cols * NR];
        let live = NR.min(rows - p * NR);
        // Columns `..done` of a full panel go through 8x8 AVX2 transposes.
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if live == NR && available() {
            done = cols / 8 * 8;
            for c0 in (0..done).step_by(8) {
                for j0 in [0, 8] {
                    // SAFETY: AVX2 detected; source rows `p*NR + j0 + 0..8 < rows`, columns
                    // `c0..c0+8 <= cols` (in `src`, asserted above); destination rows
                    // `c0..c0+8` of the panel, lanes `j0..j0+8 <= NR`.
                    unsafe {
                        x86::transpose8(
                            src.as_ptr().add((p * NR + j0) * ld + c0),
                            ld,
                            panel.as_mut_ptr().add(c0 * NR + j0),
                            NR,
                        )
                    };
                }
            }
        }
        if live < NR {
            panel.fill(0.0);
        }
        // The rest one output row (column `c` of the `live` source rows) at a time, so the
        // stores are contiguous.
        let src_rows: [&[f32]; NR] = std::array::from_fn(|j| {
            if j < live {
                &src[(p * NR + j) * ld..][..cols]
            } else {
                &[]
            }
        });
        for (c, out) in panel.chunks_exact_mut(NR).enumerate().skip(done) {
            for (o, row) in out.iter_mut().zip(&src_rows[..live]) {
                *o = row[c];
            }
        }
    }
}

/// `dst[c][r] = src[r][c]` for `r < rows`, `c < cols` (both multiples of 8), row strides
/// `lds` and `ldd`, through 8x8 AVX2 transposes.
///
/// # Safety
/// The CPU must have AVX2 ([`available`]). (Slice bounds are checked here.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub unsafe fn transpose(
    src: &[f32],
    rows: usize,
    cols: usize,
    lds: usize,
    dst: &mut [f32],
    ldd: usize,
) {
    assert!(
        rows.is_multiple_of(8) && cols.is_multiple_of(8),
        "transpose: 8x8 blocks"
    );
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(lds >= cols && ldd >= rows, "transpose: strides");
    assert!(
        src.len() >= (rows - 1) * lds + cols && dst.len() >= (cols - 1) * ldd + rows,
        "transpose: short buffer"
    );
    for r0 in (0..rows).step_by(8) {
        for c0 in (0..cols).step_by(8) {
            // SAFETY: block rows `r0..r0+8 <= rows`, columns `c0..c0+8 <= cols`, inside the
            // slices checked above; AVX2 by this function's contract.
            unsafe {
                x86::transpose8(
                    src.as_ptr().add(r0 * lds + c0),
                    lds,
                    dst.as_mut_ptr().add(c0 * ldd + r0),
                    ldd,
                )
            };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::NR;
    use std::arch::x86_64::*;

    /// Writes the transpose of the 8x8 block at `src` (row stride `lds`) to `dst` (row stride
    /// `ldd`): `dst[c][r] = src[r][c]`. The classic three rounds: interleave row pairs, then
    /// pairs of pairs within 128-bit lanes, then swap the lane halves.
    ///
    /// # Safety
    /// AVX2 present; `src` readable at `r*lds + c`, `dst` writable at `c*ldd + r`, `r, c < 8`.
    #[target_feature(enable = "avx2")]
    #[inline]
    pub(super) unsafe fn transpose8(src: *const f32, lds: usize, dst: *mut f32, ldd: usize) {
        // SAFETY: reads and writes in bounds by the contract above.
        unsafe {
            let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * lds)));
            // t(2i) = rows 2i, 2i+1 interleaved: columns 0,1 | 4,5; t(2i+1): columns 2,3 | 6,7.
            let t0 = _mm256_unpacklo_ps(r[0], r[1]);
            let t1 = _mm256_unpackhi_ps(r[0], r[1]);
            let t2 = _mm256_unpacklo_ps(r[2], r[3]);
            let t3 = _mm256_unpackhi_ps(r[2], r[3]);
            let t4 = _mm256_unpacklo_ps(r[4], r[5]);
            let t5 = _mm256_unpackhi_ps(r[4], r[5]);
            let t6 = _mm256_unpacklo_ps(r[6], r[7]);
            let t7 = _mm256_unpackhi_ps(r[6], r[7]);
            // u0 = column 0 of rows 0..4 | column 4; u1: columns 1 | 5; u2: 2 | 6; u3: 3 | 7;
            // u4..u7 the same for rows 4..8.
            let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            let cols = [
                _mm256_permute2f128_ps::<0x20>(u0, u4),
                _mm256_permute2f128_ps::<0x20>(u1, u5),
                _mm256_permute2f128_ps::<0x20>(u2, u6),
                _mm256_permute2f128_ps::<0x20>(u3, u7),
                _mm256_permute2f128_ps::<0x31>(u0, u4),
                _mm256_permute2f128_ps::<0x31>(u1, u5),
                _mm256_permute2f128_ps::<0x31>(u2, u6),
                _mm256_permute2f128_ps::<0x31>(u3, u7),
            ];
            for (c, v) in cols.into_iter().enumerate() {
                _mm256_storeu_ps(dst.add(c * ldd), v);
            }
        }
    }

    /// `C[R,16] (=|+=) A[R,k] · B[k,16]`.
    ///
    /// # Safety
    /// AVX2 and FMA present; `a` readable at `i*lda + p` for `i < R, p < k`; `b` readable for
    /// `k*16` values; `c` writable at `i*ldc + j` for `i < R, j < 16`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(super) unsafe fn tile<const R: usize>(
        k: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        // SAFETY (all pointer reads/writes): in bounds by the contract above.
        unsafe {
            for p in 0..k {
                let b0 = _mm256_loadu_ps(b.add(p * NR));
                let b1 = _mm256_loadu_ps(b.add(p * NR + 8));
                for (i, row) in acc.iter_mut().enumerate() {
                    let av = _mm256_set1_ps(*a.add(i * lda + p));
                    row[0] = _mm256_fmadd_ps(av, b0, row[0]);
                    row[1] = _mm256_fmadd_ps(av, b1, row[1]);
                }
            }
            for (i, row) in acc.iter().enumerate() {
                let ci = c.add(i * ldc);
                let (mut r0, mut r1) = (row[0], row[1]);
                if accumulate {
                    r0 = _mm256_add_ps(r0, _mm256_loadu_ps(ci));
                    r1 = _mm256_add_ps(r1, _mm256_loadu_ps(ci.add(8)));
                }
                _mm256_storeu_ps(ci, r0);
                _mm256_storeu_ps(ci.add(8), r1);
            }
        }
    }
}

/// `C[rows, 16·panels] (=|+=) A[rows, k] · B`, `B` packed as `panels` panels of `[k][16]`
/// (see [`pack_cols`]), panel `p` starting at `b[p * b_stride]` (`b_stride >= 16·k`: a caller
/// may use the first `k` rows of longer panels); `A` row stride `lda`, `C` row stride
/// `ldc >= 16·panels`. With `accumulate` the product is added to `C`, else it overwrites it.
///
/// Loop order: panels outer, blocks of [`MR`] rows inner, so one panel of `B` (`16·k` floats)
/// is read from memory once and reused from L1 by every row block; `A`'s `rows x k` should
/// fit L1 beside it (callers keep `rows` to a few blocks).
///
/// # Safety
/// The CPU must have AVX2 and FMA ([`available`]). (Slice bounds are checked here.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_packed(
    rows: usize,
    k: usize,
    panels: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    b_stride: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    if rows == 0 || panels == 0 {
        return;
    }
    assert!(
        ldc >= panels * NR && lda >= k && b_stride >= k * NR,
        "gemm_packed: strides"
    );
    assert!(
        a.len() >= (rows - 1) * lda + k
            && b.len() >= (panels - 1) * b_stride + k * NR
            && c.len() >= (rows - 1) * ldc + panels * NR,
        "gemm_packed: short buffer"
    );
    let (a, b, c) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
    for p in 0..panels {
        let mut i = 0;
        while i < rows {
            let r = (rows - i).min(MR);
            // SAFETY: rows `i..i+r <= rows`, panel `p < panels`, columns `p*16..p*16+16 <=
            // ldc`: inside the slices checked above; AVX2/FMA by this function's contract.
            unsafe {
                let (ai, bp, cp) = (a.add(i * lda), b.add(p * b_stride), c.add(i * ldc + p * NR));
                match r {
                    6 => x86::tile::<6>(k, ai, lda, bp, cp, ldc, accumulate),
                    5 => x86::tile::<5>(k, ai, lda, bp, cp, ldc, accumulate),
                    4 => x86::tile::<4>(k, ai, lda, bp, cp, ldc, accumulate),
                    3 => x86::tile::<3>(k, ai, lda, bp, cp, ldc, accumulate),
                    2 => x86::tile::<2>(k, ai, lda, bp, cp, ldc, accumulate),
                    _ => x86::tile::<1>(k, ai, lda, bp, cp, ldc, accumulate),
                }
            }
            i += r;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::matmul::{Trans, gemm_naive};
    use crate::ops::testutil::{assert_close, seeded};

    #[test]
    fn packing_matches_its_definition() {
        // Full and partial panels, column counts around the 8-wide transpose, ld > cols.
        for &(rows, cols, ld) in &[(16, 8, 8), (33, 64, 70), (5, 3, 3), (40, 19, 25), (1, 1, 1)] {
            let src = seeded((rows - 1) * ld + cols, 9);
            let panels = rows.div_ceil(NR);
            let mut t = vec![f32::NAN; panels * cols * NR];
            pack_rows_transposed(&src, rows, cols, ld, &mut t);
            for p in 0..panels {
                for c in 0..cols {
                    for j in 0..NR {
                        let r = p * NR + j;
                        let want = if r < rows { src[r * ld + c] } else { 0.0 };
                        assert_eq!(t[(p * cols + c) * NR + j], want, "transposed {rows}x{cols}");
                    }
                }
            }
            let cpanels = cols.div_ceil(NR);
            let mut k = vec![f32::NAN; cpanels * rows * NR];
            pack_cols(&src, rows, cols, ld, &mut k);
            for p in 0..cpanels {
                for r in 0..rows {
                    for j in 0..NR {
                        let c = p * NR + j;
                        let want = if c < cols { src[r * ld + c] } else { 0.0 };
                        assert_eq!(k[(p * rows + r) * NR + j], want, "cols {rows}x{cols}");
                    }
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn transpose_matches_its_definition() {
        if !available() {
            return;
        }
        let (rows, cols, lds, ldd) = (16, 24, 30, 19);
        let src = seeded((rows - 1) * lds + cols, 8);
        let mut dst = vec![f32::NAN; (cols - 1) * ldd + rows];
        // SAFETY: AVX2 checked above.
        unsafe { transpose(&src, rows, cols, lds, &mut dst, ldd) };
        for r in 0..rows {
            for c in 0..cols {
                assert_eq!(dst[c * ldd + r], src[r * lds + c]);
            }
        }
    }

    #[test]
    fn packed_products_match_naive() {
        if !available() {
            return;
        }
        for &(m, n, k) in &[(1, 1, 1), (5, 16, 3), (7, 33, 64), (13, 17, 49), (6, 48, 0)] {
            let a = seeded(m * k, 1);
            let bt = seeded(n * k, 2); // [n, k]: used as Bᵀ
            let b = seeded(k * n, 3); // [k, n]
            let panels = n.div_ceil(NR);
            let ldc = panels * NR;
            // A · btᵀ through pack_rows_transposed, overwriting garbage.
            let mut packed = vec![f32::NAN; panels * k * NR];
            pack_rows_transposed(&bt, n, k, k, &mut packed);
            let mut c = vec![f32::NAN; m * ldc];
            // SAFETY: AVX2/FMA checked above.
            unsafe { gemm_packed(m, k, panels, &a, k, &packed, k * NR, &mut c, ldc, false) };
            let got: Vec<f32> = (0..m * n).map(|i| c[i / n * ldc + i % n]).collect();
            assert_close(
                &got,
                &gemm_naive(m, n, k, &a, Trans::N, &bt, Trans::T),
                1e-5,
                1e-5,
            );
            // A · b accumulated onto ones through pack_cols.
            pack_cols(&b, k, n, n, &mut packed);
            let mut c = vec![1.0f32; m * ldc];
            // SAFETY: as above.
            unsafe { gemm_packed(m, k, panels, &a, k, &packed, k * NR, &mut c, ldc, true) };
            let got: Vec<f32> = (0..m * n).map(|i| c[i / n * ldc + i % n]).collect();
            let want: Vec<f32> = gemm_naive(m, n, k, &a, Trans::N, &b, Trans::N)
                .iter()
                .map(|v| v + 1.0)
                .collect();
            assert_close(&got, &want, 1e-5, 1e-5);
        }
    }
}
