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
}
