//! A branch-free `exp` for f32 slices that the compiler vectorises (std's `f32::exp` is a libm
//! call per element). Used where softmax-style code exponentiates whole rows.
//!
//! Method (Cephes `expf`): `exp(x) = 2^n · exp(r)` with `n = round(x / ln 2)` and
//! `r = x - n ln 2` (ln 2 split in two parts so `r` is exact to f32), `|r| <= ln2/2`;
//! `exp(r)` by a degree-6 polynomial; `2^n` built directly in the exponent bits.
//! Max relative error ~2 ulp on [-87, 88]; inputs below -87.3 give 0, above 88.7 give +inf
//! (like `f32::exp` at the ends of its range); NaN propagates.

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    5e-1,
];

/// `exp(x)`, written without branches so loops over it vectorise.
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    let xc = x.clamp(-87.336_55, 88.722_83);
    let n = (xc * LOG2E).round();
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = P[0];
    for &c in &P[1..] {
        p = p * r + c;
    }
    let e = p * r * r + r + 1.0;
    // 2^n through the exponent field; n is within [-126, 128] after the clamp.
    let scale = f32::from_bits(((n as i32 + 127).clamp(0, 255) as u32) << 23);
    let y = e * scale;
    // Outside the clamp range: exact limits; NaN stays NaN.
    if x > 88.722_83 {
        f32::INFINITY
    } else if x < -87.336_55 {
        0.0
    } else if x.is_nan() {
        x
    } else {
        y
    }
}

/// `x[i] = exp(x[i] - shift)` for a whole row; returns the sum of the results.
#[inline]
pub fn exp_shifted_sum(x: &mut [f32], shift: f32) -> f32 {
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = fast_exp(*v - shift);
        sum += *v;
    }
    sum
}

/// [`fast_exp`] on 8 lanes with AVX2+FMA: the same reduction and polynomial, except that `n`
/// is rounded to nearest-even (`vroundps`) instead of half-away-from-zero (the two differ only
/// at exact ties, where either `n` keeps `|r| <= ln2/2`), and the polynomial uses FMAs. Same
/// limits: 0 below -87.3, +inf above 88.7, NaN stays NaN.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
pub unsafe fn exp_avx2(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let (lo, hi) = (_mm256_set1_ps(-87.336_55), _mm256_set1_ps(88.722_83));
    // min/max with `x` second return `x` for a NaN, so NaN flows through to the blend below.
    let xc = _mm256_min_ps(hi, _mm256_max_ps(lo, x));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        xc,
        _mm256_set1_ps(LOG2E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), xc);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    let mut p = _mm256_set1_ps(P[0]);
    for &c in &P[1..] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let e = _mm256_fmadd_ps(
        _mm256_mul_ps(p, r),
        r,
        _mm256_add_ps(r, _mm256_set1_ps(1.0)),
    );
    // 2^n through the exponent field (n in [-126, 128] after the clamp; +127 fits 0..=255).
    let bits = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    let bits = _mm256_min_epi32(
        _mm256_max_epi32(bits, _mm256_setzero_si256()),
        _mm256_set1_epi32(255),
    );
    let y = _mm256_mul_ps(e, _mm256_castsi256_ps(_mm256_slli_epi32::<23>(bits)));
    // Exact limits outside the clamp range, NaN kept.
    let y = _mm256_blendv_ps(
        y,
        _mm256_set1_ps(f32::INFINITY),
        _mm256_cmp_ps::<_CMP_GT_OQ>(x, hi),
    );
    let y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps::<_CMP_LT_OQ>(x, lo));
    _mm256_blendv_ps(y, x, _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x))
}

/// [`exp_avx2`] for the shifted scores of a softmax (`x <= 0`, or a rounding error above):
/// the same reduction and polynomial without the overflow limit, the upper exponent clamp and
/// the NaN blend (a NaN input already yields NaN). About a quarter fewer instructions in the
/// loop that exponentiates every attention score. Bit-identical to `exp_avx2` for `x <= 88`
/// (0 below -87.3); above 88 the result is unspecified.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
pub unsafe fn exp_nonpositive_avx2(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let lo = _mm256_set1_ps(-87.336_55);
    // `x` second: a NaN passes through and poisons `e` below.
    let xc = _mm256_max_ps(lo, x);
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        xc,
        _mm256_set1_ps(LOG2E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), xc);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    let mut p = _mm256_set1_ps(P[0]);
    for &c in &P[1..] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let e = _mm256_fmadd_ps(
        _mm256_mul_ps(p, r),
        r,
        _mm256_add_ps(r, _mm256_set1_ps(1.0)),
    );
    // 2^n through the exponent field: n in [-126, 127] for x in [-87.3, 88], so n + 127 fits
    // the exponent field without a clamp.
    let bits = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    let y = _mm256_mul_ps(e, _mm256_castsi256_ps(_mm256_slli_epi32::<23>(bits)));
    // Exactly 0 below the clamp (the comparison is false for NaN, which stays).
    _mm256_andnot_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(x, lo), y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_std_exp() {
        let mut worst = 0.0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (fast_exp(x), x.exp());
            worst = worst.max(((a - b) / b).abs());
            x += 0.0137;
        }
        assert!(worst < 5e-7, "relative error {worst}");
        assert_eq!(fast_exp(-200.0), 0.0);
        assert_eq!(fast_exp(100.0), f32::INFINITY);
        assert_eq!(fast_exp(f32::NEG_INFINITY), 0.0);
        assert!(fast_exp(f32::NAN).is_nan());
        assert_eq!(fast_exp(0.0), 1.0);
    }
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_matches_scalar() {
        use std::arch::x86_64::*;
        if !(std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma"))
        {
            return;
        }
        let mut xs: Vec<f32> = (0..20_000).map(|i| -90.0 + i as f32 * 0.009_13).collect();
        xs.extend([
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            88.7,
            -87.3,
            1e30,
        ]);
        xs.resize(xs.len().next_multiple_of(8), 0.5);
        for chunk in xs.chunks_exact(8) {
            let mut out = [0.0f32; 8];
            // SAFETY: AVX2 and FMA checked above; `chunk` and `out` hold 8 floats.
            unsafe {
                _mm256_storeu_ps(out.as_mut_ptr(), exp_avx2(_mm256_loadu_ps(chunk.as_ptr())))
            };
            for (&x, &got) in chunk.iter().zip(&out) {
                let want = fast_exp(x);
                let ok = (got.is_nan() && want.is_nan())
                    || got == want
                    || ((got - want) / want).abs() < 4e-7;
                assert!(ok, "exp({x}): avx2 {got} scalar {want}");
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn nonpositive_avx2_matches_avx2() {
        use std::arch::x86_64::*;
        if !(std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma"))
        {
            return;
        }
        let mut xs: Vec<f32> = (0..20_000).map(|i| -95.0 + i as f32 * 0.009_15).collect();
        xs.extend([
            f32::NAN,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            -87.3,
            -87.4,
            -1e30,
            1e-6,
            88.0,
        ]);
        xs.resize(xs.len().next_multiple_of(8), -0.5);
        for chunk in xs.chunks_exact(8) {
            let (mut got, mut want) = ([0.0f32; 8], [0.0f32; 8]);
            // SAFETY: AVX2 and FMA checked above; `chunk`, `got` and `want` hold 8 floats.
            unsafe {
                let v = _mm256_loadu_ps(chunk.as_ptr());
                _mm256_storeu_ps(got.as_mut_ptr(), exp_nonpositive_avx2(v));
                _mm256_storeu_ps(want.as_mut_ptr(), exp_avx2(v));
            }
            for ((&x, &g), &w) in chunk.iter().zip(&got).zip(&want) {
                let ok = (g.is_nan() && w.is_nan()) || g.to_bits() == w.to_bits();
                assert!(ok, "exp({x}): nonpositive {g} general {w}");
            }
        }
    }
}
