//! Helpers shared by the op tests: seeded inputs and a tolerance check that prints the worst
//! element (`|a-b| <= atol + rtol*|ref|`, as every parity test in pmad states it).

use crate::rng::Rng;

/// `n` values uniform in [-1, 1) from `seed`.
pub fn seeded(n: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.range(-1.0, 1.0)).collect()
}

/// Panics with the worst index when `got` and `want` differ beyond `atol + rtol*|want|`.
pub fn assert_close(got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "length");
    let mut worst = (0usize, 0.0f32);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let excess = (g - w).abs() - (atol + rtol * w.abs());
        // NaN anywhere counts as the worst possible mismatch.
        let excess = if excess.is_nan() {
            f32::INFINITY
        } else {
            excess
        };
        if excess > worst.1 {
            worst = (i, excess);
        }
    }
    assert!(
        worst.1 <= 0.0,
        "mismatch at {}: got {} want {} (atol {atol}, rtol {rtol})",
        worst.0,
        got[worst.0],
        want[worst.0]
    );
}
